"""The architecture description search-rl's controllers propose, and the child network it builds.

An architecture is a list of layers, each a dict with a ``type`` and its ``inputs`` (indices of
earlier layers whose outputs it reads):

- ``conv``: ``filters``, ``kh``, ``kw`` (filter height/width), ``sh``, ``sw`` (stride height/width);
  "same" padding, then BatchNorm and ReLU;
- ``sep``: ``filters``, ``kh``, ``kw``: a depthwise-separable convolution (Chollet 2017), as in ENAS's
  search spaces (Pham et al. 2018): a depthwise ``kh x kw`` convolution (one filter per input channel,
  "same" padding, stride 1), then a pointwise 1x1 convolution to ``filters``, BatchNorm and ReLU;
- ``pool``: ``kernel``, ``stride``, and two optional keys: ``mode`` (``max``, the default, or ``avg``) and
  ``padding`` (``valid``, the default: no padding, a last partial window kept; or ``same``: padded, as
  TensorFlow's "SAME", to ``ceil(side / stride)``, the padding never counted in an average). A kernel
  larger than its input shrinks to it. A key at its default is left out of the canonical description,
  so pool layers written before these keys existed keep their description (and cache key);
- ``reduce``: ``filters``: ENAS's factorized reduction (Pham et al. 2018), halving the height and width: two
  1x1 convolutions of stride 2, one on the input and one on the input shifted by a pixel, each giving half of
  the ``filters``, concatenated, then BatchNorm;
- ``fc``: ``units`` (flatten, linear, ReLU);
- ``gap``: global average pooling.

The builder applies the three "compilation failure" rules of Zoph & Le (2017), so any
description builds a valid network on any input size:

1. a layer with no input takes the image;
2. every output nobody consumes is concatenated before the classifier;
3. inputs of different spatial sizes are zero-padded to the largest before depth concatenation.

The classifier global-average-pools the (padded, concatenated) feature maps, joins any flat
outputs, and ends in one linear layer.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.runs.files import BEST_ARCH
from nas_cli.runs.record import read_json

TYPES = ("conv", "sep", "pool", "reduce", "fc", "gap")
SIZES = {
    "conv": ("filters", "kh", "kw", "sh", "sw"),
    "sep": ("filters", "kh", "kw"),
    "pool": ("kernel", "stride"),
    "reduce": ("filters",),
    "fc": ("units",),
    "gap": (),
}
# a layer type's word-valued keys: their choices, the first being the default (left out of the canonical form)
OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {"pool": {"mode": ("max", "avg"), "padding": ("valid", "same")}}


def canonical(arch: list[dict]) -> list[dict]:
    """Plain, ordered dicts with sorted unique inputs: equal architectures compare (and hash) equal."""
    out = []
    for i, layer in enumerate(arch):
        kind = layer.get("type", "conv")
        if kind not in TYPES:
            raise UserError(f"architecture layer {i}: type '{kind}' is not one of {', '.join(TYPES)}")
        inputs = sorted({int(j) for j in layer.get("inputs", [i - 1] if i else [])})
        if any(j < 0 or j >= i for j in inputs):
            raise UserError(f"architecture layer {i}: inputs {inputs} must be earlier layers (0..{i - 1})")
        keys = SIZES[kind]
        try:
            sizes = {k: int(layer[k]) for k in keys}
        except KeyError as ex:
            raise UserError(f"architecture layer {i} ({kind}) needs '{ex.args[0]}'") from ex
        if any(v < 1 for v in sizes.values()):
            raise UserError(f"architecture layer {i}: sizes must be positive ({sizes})")
        options = {}
        for name, choices in OPTIONS.get(kind, {}).items():
            value = layer.get(name, choices[0])
            if value not in choices:
                raise UserError(f"architecture layer {i}: {name} '{value}' is not one of {', '.join(choices)}")
            if value != choices[0]:  # a default is left out: older descriptions keep their form
                options[name] = value
        out.append({"type": kind, **sizes, **options, "inputs": inputs})
    return out


def key(arch: list[dict]) -> str:
    """The cache key: the canonical description as compact JSON."""
    return json.dumps(canonical(arch), separators=(",", ":"))


def describe(arch: list[dict]) -> str:
    """A short human-readable string, e.g. ``C3x3/1x1:36<- | C5x5/1x1:24<0 | P3/2 | FC64 | GAP``; a separable
    conv reads ``S5x5:36``, an average pool ``AP3/1``, a same-padded pool ``P3/1(same)``, a factorized
    reduction ``R:36``."""
    parts = []
    for i, layer in enumerate(canonical(arch)):
        t = layer["type"]
        if t == "conv":
            s = f"C{layer['kh']}x{layer['kw']}/{layer['sh']}x{layer['sw']}:{layer['filters']}"
        elif t == "sep":
            s = f"S{layer['kh']}x{layer['kw']}:{layer['filters']}"
        elif t == "pool":
            s = f"{'A' if layer.get('mode') == 'avg' else ''}P{layer['kernel']}/{layer['stride']}"
            s += "(same)" if layer.get("padding") == "same" else ""
        elif t == "reduce":
            s = f"R:{layer['filters']}"
        elif t == "fc":
            s = f"FC{layer['units']}"
        else:
            s = "GAP"
        if layer["inputs"] != ([i - 1] if i else []):
            s += "<" + (",".join(map(str, layer["inputs"])) or "img")
        parts.append(s)
    return " | ".join(parts) or "(empty)"


def load_arch(source) -> list[dict]:
    """An architecture from a list, a ``best_arch.json`` (its ``arch`` key) or a JSON file holding the list,
    checked whole (``check_layers``) before any network is built."""
    if source is None:
        raise UserError("model.arch is not set: pass model.arch=PATH (a search's best_arch.json)")
    where, prefix = "model.arch", ""
    if isinstance(source, (str, Path)):
        file = Path(source) / BEST_ARCH if Path(source).is_dir() else Path(source)
        data = read_json(source, "model.arch", BEST_ARCH, "a search run folder or its best_arch.json")
        where = f"model.arch={file}"
        if isinstance(data, dict) and "arch" in data:
            data, prefix = data["arch"], "arch"
        source = data
    check_layers(source, where, prefix)
    return canonical([dict(layer) for layer in source])


def check_layers(layers, where: str = "model.arch", prefix: str = "") -> None:
    """A one-line ``UserError`` naming ``where`` (the file), the layer's key and the rule, for an architecture
    that someone wrote or edited: layer types, their sizes (whole numbers, 1 or more) and inputs (earlier
    layers only). A proposal of a controller needs no check: it is built by the rules."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UserError(f"{where}: {prefix or 'the architecture'} is not a non-empty list of layers")
    for i, layer in enumerate(layers):
        at = f"{where}: {prefix}[{i}]"
        if not isinstance(layer, dict):
            raise UserError(f"{at} is not a layer (a dict with a 'type' and its sizes)")
        kind = layer.get("type", "conv")
        if kind not in TYPES:
            raise UserError(f"{at}.type '{kind}' is not a layer type: use {', '.join(TYPES)}")
        for name in SIZES[kind]:
            if name not in layer:
                raise UserError(f"{at}: a {kind} layer needs '{name}' ({', '.join(SIZES[kind])})")
            if not _whole(layer[name]) or layer[name] < 1:
                raise UserError(f"{at}.{name} is {json.dumps(layer[name])}: a size is a whole number, 1 or more")
        for name, choices in OPTIONS.get(kind, {}).items():
            if name in layer and layer[name] not in choices:
                raise UserError(
                    f"{at}.{name} is {json.dumps(layer[name])}: use {' or '.join(choices)} (default {choices[0]})"
                )
        inputs = layer.get("inputs", [])
        if not isinstance(inputs, (list, tuple)) or not all(_whole(j) and 0 <= j < i for j in inputs):
            rule = (
                "layer 0 reads the image alone: []"
                if i == 0
                else f"layer {i} reads earlier layers, 0..{i - 1} ([]: the image)"
            )
            raise UserError(f"{at}.inputs is {json.dumps(inputs)}: {rule}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Rule 3: zero-pad maps to the largest height and width, then concatenate along depth."""
    if len(tensors) == 1:
        return tensors[0]
    h = max(t.shape[2] for t in tensors)
    w = max(t.shape[3] for t in tensors)
    return torch.cat([F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2])) for t in tensors], dim=1)


def _as_map(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 4 else t.flatten(1)[:, :, None, None]


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of a side ``n`` (before, after): the output has ``ceil(n / s)`` places."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class _Pool(nn.Module):
    """Max or average pooling, ``valid`` (a last partial window kept: ceil mode) or ``same``-padded."""

    def __init__(self, kernel: int, stride: int, mode: str = "max", padding: str = "valid"):
        super().__init__()
        self.kernel, self.stride, self.mode, self.padding = kernel, stride, mode, padding

    def forward(self, x):
        kh, kw = min(self.kernel, x.shape[2]), min(self.kernel, x.shape[3])
        if self.padding == "valid":
            pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
            return pool(x, (kh, kw), self.stride, ceil_mode=True)
        (top, bottom), (left, right) = _same_pad(x.shape[2], kh, self.stride), _same_pad(x.shape[3], kw, self.stride)
        pad = (left, right, top, bottom)
        if self.mode == "max":  # padded with -inf: a window's maximum is over the image alone
            return F.max_pool2d(F.pad(x, pad, value=-math.inf), (kh, kw), self.stride)
        # the mean over each window's image part: window sums over zero padding, divided by the image count
        ones = F.pad(torch.ones_like(x[:1, :1]), pad)
        return F.avg_pool2d(F.pad(x, pad), (kh, kw), self.stride) / F.avg_pool2d(ones, (kh, kw), self.stride)


class FactorizedReduce(nn.Module):
    """Half the height and width at ``filters`` channels (ENAS's reference code, ``_factorized_reduction``):
    1x1 convolutions of stride 2 on the even pixels and on the odd ones (the input shifted by one, zero-padded
    at the far edge), concatenated, then BatchNorm. Both halves have ``ceil(side / 2)`` places."""

    def __init__(self, channels: int, filters: int):
        super().__init__()
        self.even = nn.Conv2d(channels, (filters + 1) // 2, 1, bias=False)
        self.odd = nn.Conv2d(channels, filters // 2, 1, bias=False) if filters > 1 else None
        self.bn = nn.BatchNorm2d(filters)

    def forward(self, x):
        paths = [self.even(x[:, :, ::2, ::2])]
        if self.odd is not None:
            paths.append(self.odd(F.pad(x, (0, 1, 0, 1))[:, :, 1::2, 1::2]))
        return self.bn(torch.cat(paths, dim=1))


def pool_size(n: int, kernel: int, stride: int, padding: str = "valid") -> int:
    """The side a pool layer leaves (the same arithmetic as the child's pooling)."""
    if padding == "same":
        return math.ceil(n / stride)
    k = min(kernel, n)
    return max(1, math.ceil((n - k) / stride) + 1)


def build_layer(layer: dict, channels: int) -> nn.Module:
    """The module of one (canonical) layer reading ``channels`` input channels (features, for ``fc``): the
    child's, and the weight-shared search's (``nas_cli/nas/rl/shared.py``) for the same operation."""
    t = layer["type"]
    if t == "conv":
        return nn.Sequential(
            nn.Conv2d(
                channels,
                layer["filters"],
                (layer["kh"], layer["kw"]),
                (layer["sh"], layer["sw"]),
                padding=(layer["kh"] // 2, layer["kw"] // 2),
                bias=False,
            ),
            nn.BatchNorm2d(layer["filters"]),
            nn.ReLU(inplace=True),
        )
    if t == "sep":  # depthwise (one filter per channel), then pointwise
        return nn.Sequential(
            nn.Conv2d(
                channels,
                channels,
                (layer["kh"], layer["kw"]),
                padding=(layer["kh"] // 2, layer["kw"] // 2),
                groups=channels,
                bias=False,
            ),
            nn.Conv2d(channels, layer["filters"], 1, bias=False),
            nn.BatchNorm2d(layer["filters"]),
            nn.ReLU(inplace=True),
        )
    if t == "pool":
        return _Pool(layer["kernel"], layer["stride"], layer.get("mode", "max"), layer.get("padding", "valid"))
    if t == "reduce":
        return FactorizedReduce(channels, layer["filters"])
    if t == "fc":
        return nn.Sequential(nn.Linear(channels, layer["units"]), nn.ReLU(inplace=True))
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ArchNet(nn.Module):
    """The child network of an architecture description, for inputs of shape ``in_shape``."""

    def __init__(self, arch: list[dict], in_shape, num_classes: int):
        super().__init__()
        self.arch = canonical(arch)
        consumed = {j for layer in self.arch for j in layer["inputs"]}
        self.dangling = [i for i in range(len(self.arch)) if i not in consumed]  # rule 2
        self.layers = nn.ModuleList()
        probe = torch.zeros(1, *in_shape)
        if probe.dim() == 2:  # flat features: one 1x1 "image"
            probe = probe[:, :, None, None]
        outs: list[torch.Tensor] = []
        # a shape-only dry run: oneDNN's per-shape set-up would cost more than the convolutions
        # (torch warns about oneDNN's TF32 setting whenever the flags change: irrelevant on a CPU probe)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                for layer in self.arch:
                    x = self._gather(probe, outs, layer)
                    module = self._make(layer, x)
                    module.eval()
                    outs.append(module(x))
                    self.layers.append(module)
                features = self._head_features(probe, outs)
        self.classifier = nn.Linear(features.shape[1], num_classes)

    @staticmethod
    def _gather(image: torch.Tensor, outs: list[torch.Tensor], layer: dict) -> torch.Tensor:
        sources = [outs[j] for j in layer["inputs"]] or [image]  # rule 1
        if layer["type"] == "fc":
            return torch.cat([s.flatten(1) for s in sources], dim=1)
        return _pad_cat([_as_map(s) for s in sources])

    @staticmethod
    def _make(layer: dict, x: torch.Tensor) -> nn.Module:
        return build_layer(layer, x.shape[1])

    def _head_features(self, image: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        if not outs:  # softmax as the first layer (MetaQNN allows it): the classifier reads the input itself
            return image.flatten(1)
        maps = [outs[i] for i in self.dangling if outs[i].dim() == 4]
        flat = [outs[i] for i in self.dangling if outs[i].dim() == 2]
        parts = ([F.adaptive_avg_pool2d(_pad_cat(maps), 1).flatten(1)] if maps else []) + flat
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x[:, :, None, None]
        outs: list[torch.Tensor] = []
        for layer, module in zip(self.arch, self.layers):
            outs.append(module(self._gather(x, outs, layer)))
        return self.classifier(self._head_features(x, outs))
