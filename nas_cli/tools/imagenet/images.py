"""Which images are not plain JPEGs, found from their bytes, and their RGB JPEG rewrite.

ILSVRC2012 has 22 CMYK JPEGs and one PNG named ``.JPEG`` in train, and one CMYK JPEG in
val. ``kind`` reads the file's signature and, for a JPEG, its frame header (the number of
colour components): 3 (YCbCr/RGB) and 1 (grayscale, which every loader converts) are fine,
anything else (4: CMYK/YCCK) and any non-JPEG file is rewritten as an RGB JPEG.
"""

from __future__ import annotations

import io

JPEG_SIGNATURE = b"\xff\xd8\xff"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SIGNATURES = {b"\x89PNG": "png", b"GIF8": "gif", b"BM": "bmp", b"RIFF": "webp", b"II*\x00": "tiff", b"MM\x00*": "tiff"}


def jpeg_components(data: bytes) -> int | None:
    """The number of colour components in a JPEG's frame header, ``None`` if none is found."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            return data[i + 9] if i + 9 < n else None
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        i += 2 + length
    return None


def kind(data: bytes) -> str:
    """'jpeg' for a JPEG loaders read as-is; otherwise what the file is ('cmyk-jpeg', 'png', ...)."""
    if data.startswith(JPEG_SIGNATURE):
        components = jpeg_components(data)
        if components in (1, 3):
            return "jpeg"
        return "cmyk-jpeg" if components == 4 else f"jpeg-{components}-components"
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    return "unknown"


def to_rgb_jpeg(data: bytes, quality: int = 95) -> bytes:
    """The image re-encoded as a baseline RGB JPEG (raises if Pillow cannot decode it)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()
