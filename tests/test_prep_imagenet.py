"""``nas-cli prep-imagenet`` on ILSVRC-shaped archives built here: a few classes of tiny JPEGs
(one CMYK, one PNG named .JPEG), real validation file names with their real labels, a devkit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import cli, summary
from PIL import Image

from nas_cli.errors import UserError
from nas_cli.tools.imagenet import extract, labels, prepare
from nas_cli.tools.imagenet.archives import ArchiveError
from nas_cli.tools.imagenet.images import kind
from nas_cli.tools.imagenet.prepare import DEVKIT, STATE, TRAIN_TAR, VAL_TAR, Options

N_TRAIN = 5  # images per class
N_VAL = 3  # validation images per class
SHIPPED = labels.shipped()
WNIDS = sorted({SHIPPED[labels.val_name(i)] for i in (1, 2, 3, 4)})  # real classes with real val files


def jpeg(seed: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "CMYK": 4}[mode]
    im = Image.fromarray(rng.integers(0, 255, (8, 8, channels), dtype=np.uint8), mode=mode)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def tar_bytes(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return out.getvalue()


def class_files(wnid: str, k: int) -> dict[str, bytes]:
    files = {f"{wnid}_{i + 1}.JPEG": jpeg(k * 100 + i) for i in range(N_TRAIN)}
    if k == 0:
        files[f"{wnid}_{N_TRAIN + 1}.JPEG"] = jpeg(7, mode="CMYK")  # a CMYK JPEG
    if k == 1:
        files[f"{wnid}_2933.JPEG"] = jpeg(8, fmt="PNG")  # a PNG named .JPEG
    return files


def val_names() -> dict[str, str]:
    """N_VAL real validation file names per class (the first ones), with their real labels."""
    chosen: dict[str, str] = {}
    seen: Counter = Counter()
    for i in range(1, labels.N_VAL + 1):
        name = labels.val_name(i)
        wnid = SHIPPED[name]
        if wnid in WNIDS and seen[wnid] < N_VAL:
            chosen[name] = wnid
            seen[wnid] += 1
        if len(chosen) == N_VAL * len(WNIDS):
            return chosen
    raise AssertionError("not enough validation names")


def write_devkit(path: Path, upto: int, renamed: dict[str, str] | None = None) -> None:
    """A devkit like the real one: meta.mat's synsets (ids 1..1000 in wnid order) and the ground truth;
    ``renamed`` writes other names than the real WNIDs into meta.mat (a hostile or broken devkit)."""
    from scipy.io import savemat

    all_wnids = sorted(set(SHIPPED.values()))
    synsets = np.zeros((len(all_wnids) + 2, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for i, wnid in enumerate(all_wnids):
        synsets[i, 0] = (i + 1, (renamed or {}).get(wnid, wnid))
    synsets[-2, 0] = (1001, "n00001740")  # non-leaf synsets follow the classes in the real file
    synsets[-1, 0] = (1002, "n00002137")
    mat = io.BytesIO()
    savemat(mat, {"synsets": synsets})
    ids = {w: i + 1 for i, w in enumerate(all_wnids)}
    truth = "".join(f"{ids[SHIPPED[labels.val_name(i)]]}\n" for i in range(1, upto + 1)).encode()
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (
            ("ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue()),
            ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def build_src(root: Path, devkit: bool = True, inner: dict[str, bytes] | None = None) -> Path:
    """ILSVRC-shaped archives in ``root``; ``inner`` replaces class archives by raw bytes."""
    root.mkdir(parents=True, exist_ok=True)
    classes = {f"{w}.tar": tar_bytes(class_files(w, k)) for k, w in enumerate(WNIDS)}
    classes.update(inner or {})
    (root / TRAIN_TAR).write_bytes(tar_bytes(classes))
    vals = val_names()
    cmyk = sorted(vals)[1]
    (root / VAL_TAR).write_bytes(
        tar_bytes({n: jpeg(9, "CMYK") if n == cmyk else jpeg(1000 + i) for i, n in enumerate(sorted(vals))})
    )
    if devkit:
        write_devkit(root / DEVKIT, max(int(n[15:23]) for n in vals))
    return root


def fingerprint(folder: Path) -> dict[str, tuple]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
    }


def tree(dst: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dst)): p.read_bytes() for p in sorted(dst.rglob("*")) if p.is_file() and p.name != STATE}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return build_src(tmp_path_factory.mktemp("ilsvrc"))


def run(src: Path, dst: Path, **kw) -> dict:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return prepare.prepare(Options(src=src, dst=dst, **kw))


def test_layout_counts_and_fixed_images(src, tmp_path):
    before = fingerprint(src)
    out = run(src, tmp_path / "out", workers=2, fix_images=True, verify=True)
    assert out["status"] == "ok" and out["verify"]["mismatches"] == []
    dst = tmp_path / "out"
    assert sorted(os.listdir(dst / "train")) == WNIDS and sorted(os.listdir(dst / "val")) == WNIDS
    counts = {w: len(os.listdir(dst / "train" / w)) for w in WNIDS}
    assert counts == {w: N_TRAIN + (k < 2) for k, w in enumerate(WNIDS)}
    vals = val_names()
    for name, wnid in vals.items():  # every validation image in its real class
        assert (dst / "val" / wnid / name).is_file()
    assert out["train_images"] == sum(counts.values()) and out["val_images"] == len(vals)
    # the CMYK and PNG images, found by their bytes, are RGB JPEGs now
    fixed = {(x["split"], x["file"], x["was"]) for x in out["fixed"]}
    assert fixed == {
        ("train", f"{WNIDS[0]}_{N_TRAIN + 1}.JPEG", "cmyk-jpeg"),
        ("train", f"{WNIDS[1]}_2933.JPEG", "png"),
        ("val", sorted(vals)[1], "cmyk-jpeg"),
    }
    assert out["images_fixed"] == 3
    for split, name, _ in fixed:
        path = next((dst / split).rglob(name))
        assert kind(path.read_bytes()) == "jpeg" and Image.open(path).mode == "RGB"
    assert fingerprint(src) == before  # the source archives are never touched
    assert not [p for p in dst.rglob("*.partial")]


def test_labels_from_devkit_and_shipped_mapping_agree(src, tmp_path):
    devkit = labels.from_devkit(src / DEVKIT)
    assert len(devkit) > 0 and all(SHIPPED[name] == wnid for name, wnid in devkit.items())
    a = run(src, tmp_path / "a", splits=["val"], labels="devkit")
    b = run(src, tmp_path / "b", splits=["val"], labels="shipped")
    assert a["labels"].startswith("devkit") and b["labels"].startswith("shipped")
    assert tree(tmp_path / "a") == tree(tmp_path / "b") and len(tree(tmp_path / "a")) == len(val_names())
    # without a devkit in src, auto falls back to the shipped mapping
    nodevkit = build_src(tmp_path / "src2", devkit=False)
    assert run(nodevkit, tmp_path / "c", splits=["val"])["labels"].startswith("shipped")


def test_rerun_of_a_finished_job_does_nothing(src, tmp_path):
    dst = tmp_path / "out"
    run(src, dst, workers=2)
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    again = run(src, dst, workers=2, verify=True)
    assert again["files_written"] == 0 and again["classes_extracted"] == 0 and not again["val_extracted"]
    assert again["classes_already_done"] == len(WNIDS) and again["verify"]["mismatches"] == []
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == stamps  # not even the state file


def test_interruption_then_resume(src, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run(src, reference)
    dst = tmp_path / "out"
    real = extract.extract_class
    calls = []

    def crash_in_second_class(train_tar, offset, size, wnid, root, *rest):
        calls.append(wnid)
        if len(calls) == 2:  # killed half way through a class: a partial folder is left behind
            partial = extract.partial_dir(Path(root), wnid)
            partial.mkdir(parents=True)
            (partial / "half.JPEG").write_bytes(b"\xff\xd8")
            raise KeyboardInterrupt  # a hard stop: nothing after the last recorded class is trusted
        return real(train_tar, offset, size, wnid, root, *rest)

    monkeypatch.setattr(prepare, "extract_class", crash_in_second_class)
    with pytest.raises(KeyboardInterrupt):
        run(src, dst)
    state = json.loads((dst / STATE).read_text())
    assert list(state["train"]) == [WNIDS[0]] and (dst / "train" / f".{WNIDS[1]}.partial").is_dir()
    # a class folder that no record vouches for (renamed, then killed before recording) is redone too
    (dst / "train" / WNIDS[2]).mkdir()
    (dst / "train" / WNIDS[2] / "stale.JPEG").write_bytes(b"x")
    monkeypatch.setattr(prepare, "extract_class", real)
    resumed = run(src, dst, verify=True)
    assert resumed["classes_already_done"] == 1 and resumed["classes_extracted"] == len(WNIDS) - 1
    assert resumed["verify"]["mismatches"] == []
    assert tree(dst) == tree(reference) and not list(dst.rglob("*.partial"))


def _info(name: str, type_=tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = type_, linkname, size
    return info


@pytest.mark.parametrize(
    "bad, message",
    [
        (_info("/tmp/evil.JPEG", size=3), "absolute path"),
        (_info("../../evil.JPEG", size=3), "'..'"),
        (_info("link.JPEG", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_info("hard.JPEG", tarfile.LNKTYPE, "../../outside"), "is a link"),
        (_info("tty", tarfile.CHRTYPE), "device"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, bad, message):
    wnid = WNIDS[1]
    src = build_src(tmp_path / "src", devkit=False, inner={f"{wnid}.tar": tar_bytes(class_files(wnid, 1), extra=[bad])})
    dst = tmp_path / "box" / "out"
    with pytest.raises(ArchiveError, match=message) as err:
        run(src, dst, workers=2)
    assert repr(bad.name) in str(err.value) and f"{wnid}.tar" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["out"]  # nothing outside dst
    assert not (tmp_path / "evil.JPEG").exists() and not (tmp_path / "outside").exists()
    assert not (dst / "train" / wnid).exists() and not list(dst.rglob("*.partial"))
    state = json.loads((dst / STATE).read_text())
    assert wnid not in state["train"]  # the others finished and stay recorded
    assert all((dst / "train" / w).is_dir() for w in state["train"])


def test_unsafe_member_of_the_outer_archive_is_refused_before_any_work(tmp_path):
    src = build_src(tmp_path / "src", devkit=False)
    (src / TRAIN_TAR).write_bytes(
        tar_bytes({f"{WNIDS[0]}.tar": tar_bytes(class_files(WNIDS[0], 0))}, extra=[_info("../escape.tar", size=4)])
    )
    with pytest.raises(ArchiveError, match="'..'"):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_class_archive_names_the_member_and_keeps_finished_classes(tmp_path):
    wnid = WNIDS[-1]
    raw = bytearray(tar_bytes(class_files(wnid, 2)))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tf:
        third_header = tf.getmembers()[2].offset
    raw[third_header : third_header + 20] = b"garbage-not-a-header"
    src = build_src(tmp_path / "src", devkit=False, inner={f"{wnid}.tar": bytes(raw)})
    dst = tmp_path / "out"
    with pytest.raises(ArchiveError, match=f"{wnid}.tar: corrupt header after member '{wnid}_2.JPEG'"):
        run(src, dst, workers=2)
    state = json.loads((dst / STATE).read_text())
    assert sorted(state["train"]) == WNIDS[:-1] and all((dst / "train" / w).is_dir() for w in WNIDS[:-1])
    assert not (dst / "train" / wnid).exists() and not list(dst.rglob("*.partial"))


def test_truncated_archive_is_an_error_before_any_work(tmp_path):
    src = build_src(tmp_path / "src", devkit=False)
    data = (src / TRAIN_TAR).read_bytes()
    with tarfile.open(src / TRAIN_TAR) as tf:
        cut = tf.getmember(f"{WNIDS[1]}.tar").offset_data + 700  # in the middle of the second class
    (src / TRAIN_TAR).write_bytes(data[:cut])
    with pytest.raises(ArchiveError, match=rf"{TRAIN_TAR}: .*member '{WNIDS[1]}\.tar'.*truncated"):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_subset_classes_and_per_class(src, tmp_path):
    dst = tmp_path / "mini"
    out = run(src, dst, classes=2, per_class=2, verify=True)
    assert out["verify"]["mismatches"] == []
    chosen = sorted(os.listdir(dst / "train"))
    assert len(chosen) == 2 and set(chosen) <= set(WNIDS) and sorted(os.listdir(dst / "val")) == chosen
    for w in chosen:
        assert sorted(os.listdir(dst / "train" / w)) == sorted(class_files(w, WNIDS.index(w)))[:2]
        assert len(os.listdir(dst / "val" / w)) == 2
    assert run(src, dst, classes=2, per_class=2)["files_written"] == 0  # same subset: nothing to do
    with pytest.raises(UserError, match="another dst"):
        run(src, dst, classes=3)


def test_missing_inputs_full_disk_and_dry_run(src, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=f"missing {VAL_TAR}"):
        run(tmp_path, tmp_path / "out", splits=["val"])
    with pytest.raises(UserError, match="no such folder"):
        run(tmp_path / "nowhere", tmp_path / "out")
    unlabeled = build_src(tmp_path / "src2", devkit=False)
    (unlabeled / VAL_TAR).write_bytes(tar_bytes({"ILSVRC2012_val_99999999.JPEG": jpeg(1)}))
    with pytest.raises(UserError, match="no label for 'ILSVRC2012_val_99999999.JPEG'"):
        run(unlabeled, tmp_path / "out", splits=["val"])
    plan = run(src, tmp_path / "dry", dry_run=True)
    assert plan["status"] == "dry_run" and plan["train_classes_todo"] == len(WNIDS)
    assert not (tmp_path / "dry").exists()
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(UserError, match="needs about .* GB, only .* GB free"):
        run(src, tmp_path / "full")
    assert not (tmp_path / "full").exists()


def test_disk_full_while_writing_cleans_the_class(src, tmp_path, monkeypatch):
    def no_space(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extract, "_write", no_space)
    with pytest.raises(UserError, match="disk full while writing"):
        run(src, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.partial")) and not list((tmp_path / "out" / "train").iterdir())


def test_fix_images_on_a_tree_extracted_without_it(src, tmp_path):
    dst = tmp_path / "out"
    assert run(src, dst)["images_fixed"] == 0
    out = run(src, dst, fix_images=True)
    assert out["files_written"] == 0 and out["images_fixed"] == 3
    assert all(kind(p.read_bytes()) == "jpeg" for p in dst.rglob("*.JPEG"))
    assert run(src, dst, fix_images=True)["images_fixed"] == 0  # checked once


@pytest.mark.slow
def test_cli_prepares_fixes_and_verifies(src, tmp_path):
    out = cli(
        "prep-imagenet",
        f"src={src}",
        f"dst={tmp_path / 'out'}",
        "workers=2",
        "fix_images=true",
        "verify=true",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    record = summary(tmp_path / "run")
    assert record["status"] == "ok" and record["images_fixed"] == 3 and record["val_images"] == len(val_names())
    assert record["train_images"] == len(WNIDS) * N_TRAIN + 2 and record["mb_per_s"] > 0
    assert sorted(os.listdir(tmp_path / "out" / "train")) == WNIDS


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    out = cli(
        "prep-imagenet",
        f"src={tmp_path / 'nowhere'}",
        f"dst={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "no such folder" in lines[0], out.stderr
