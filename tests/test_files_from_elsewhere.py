"""Files from elsewhere are data: a run folder, a devkit or an annotations file never picks a Python callable
or a path outside the command's own folders. Each case builds the folder by hand (no training), checks that
the harmful content really would act if trusted, then that the command refuses it in one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import in_process
from hydra.utils import instantiate
from test_prep_imagenet import WNIDS, build_src, val_names, write_devkit

from nas_cli.data.coco import coco
from nas_cli.data.shapes import save_images
from nas_cli.detection.model import Detector
from nas_cli.detection.predict import DetectorMeta
from nas_cli.errors import UserError
from nas_cli.models.cnn import SmallCNN
from nas_cli.runs import checkpoint
from nas_cli.runs.files import CONFIG, DETECTOR, WEIGHTS
from nas_cli.tools.imagenet import labels
from nas_cli.tools.imagenet.prepare import DEVKIT, TRAIN_TAR, Options, prepare

SHAPE = [1, 8, 8]
DATA = {
    "_target_": "nas_cli.data.synthetic.synthetic",
    "shape": SHAPE,
    "num_classes": 3,
    "n_train": 16,
    "n_val": 8,
    "batch_size": 8,
    "on_device": False,
}
CNN = {"_target_": "nas_cli.models.cnn.SmallCNN", "width": 4, "hidden": 8}
DETECTOR_MODEL = {"_target_": "nas_cli.detection.model.Detector", "width": 8, "stride": 4, "head_width": None}


def writer(marker: Path) -> dict:
    """A node that writes ``marker`` when Hydra instantiates it: Path(marker).write_text("x")."""
    return {
        "_target_": "pathlib.Path.write_text",
        "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
        "data": "x",
    }


def trusted(node: dict, **kwargs) -> None:
    """What instantiating ``node`` as it stands would do (its own failure, once the harm is done, aside)."""
    try:
        instantiate(node, **kwargs)
    except Exception:
        pass


def error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


# ---------------------------------------------------------------- fuse-bn source=RUN


def train_run(folder: Path, model: dict, data: dict = DATA) -> Path:
    """A finished train run as fuse-bn reads it: .hydra/config.yaml and model.pt (a fresh SmallCNN's weights)."""
    (folder / CONFIG).parent.mkdir(parents=True)
    (folder / CONFIG).write_text(yaml.safe_dump({"seed": 0, "data": data, "model": model}))
    weights = SmallCNN(SHAPE, DATA["num_classes"], width=CNN["width"], hidden=CNN["hidden"]).state_dict()
    checkpoint.save(folder / WEIGHTS, {"model": weights})
    return folder


def fuse(run: Path, out: Path) -> int:
    return in_process(
        "fuse-bn",
        f"source={run}",
        "batch_sizes=[1]",
        "repeats=1",
        "progress=false",
        "device=cpu",
        f"hydra.run.dir={out}",
    )


def test_a_nested_target_would_write_and_fuse_bn_refuses_it(tmp_path, capsys):
    marker = tmp_path / "marker"
    model = {**CNN, "init": writer(marker)}
    trusted(model, in_shape=SHAPE, num_classes=3)
    assert marker.read_text() == "x"  # trusted, the file runs its callable
    marker.unlink()
    run = train_run(tmp_path / "run", model)
    assert fuse(run, tmp_path / "fused") == 2
    line = error_line(capsys)
    assert not marker.exists()
    assert str(run / CONFIG) in line and "model.init._target_=pathlib.Path.write_text" in line, line
    assert "nothing was run" in line and not (tmp_path / "fused" / "fused.pt").exists()


@pytest.mark.parametrize(
    "node, key",
    [
        ({"data": {**DATA, "_target_": "os.system"}}, "data._target_=os.system"),
        ({"model": {**CNN, "_target_": "builtins.exec"}}, "model._target_=builtins.exec"),
        ({"model": {**CNN, "_partial_": True}}, "model._partial_=True"),
        ({"data": {**DATA, "augment": {"cutout": writer(Path("/nonexistent/m"))}}}, "data.augment.cutout._target_"),
        ({"model": {**CNN, "width": "${oc.env:HOME}"}}, "model.width: Unsupported interpolation type oc.env"),
        ({"model": {**CNN, "init": "\\${oc.create:{}}"}}, "model.init='${oc.create:{}}' would be resolved again"),
    ],
)
def test_fuse_bn_refuses_targets_keys_and_resolvers_not_its_own(tmp_path, capsys, node, key):
    parts = {"model": CNN, "data": DATA, **node}
    run = train_run(tmp_path / "run", parts["model"], parts["data"])
    assert fuse(run, tmp_path / "fused") == 2
    line = error_line(capsys)
    assert str(run / CONFIG) in line and key in line, line


def test_fuse_bn_of_a_legit_run_follows_references(tmp_path):
    run = train_run(tmp_path / "run", {**CNN, "hidden": "${data.batch_size}"})  # saved unresolved, as Hydra does
    assert fuse(run, tmp_path / "fused") == 0
    summary = json.loads((tmp_path / "fused" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["pairs_fused"] == 2


# ---------------------------------------------------------------- detect mode=predict source=RUN


def detect_run(folder: Path, model: dict) -> Path:
    """A finished detect run as predict reads it: detector.json and model.pt (a fresh detector's weights)."""
    folder.mkdir(parents=True)
    DetectorMeta(model, [3, 32, 32], ["a", "b"], [0.5] * 3, [0.25] * 3).save(folder / DETECTOR)
    weights = Detector([3, 32, 32], 2, width=DETECTOR_MODEL["width"]).state_dict()
    checkpoint.save(folder / WEIGHTS, {"model": weights})
    return folder


def predict(run: Path, out: Path) -> int:
    images = out.parent / "images"
    if not images.is_dir():
        save_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), images)
    return in_process(
        "detect",
        "mode=predict",
        f"source={run}",
        f"images={images}",
        "progress=false",
        "device=cpu",
        f"hydra.run.dir={out}",
    )


def test_a_nested_target_or_resolver_in_detector_json_is_refused(tmp_path, capsys):
    marker = tmp_path / "marker"
    # a resolver in a JSON string builds a node at instantiate time: the same harm without a nested dict
    created = (
        "${oc.create:{_target_: pathlib.Path.write_text, self: {_target_: pathlib.Path, "
        f"_args_: ['{marker}']}}, data: x}}}}"
    )
    cases = [
        (
            {**DETECTOR_MODEL, "head_width": writer(marker)},
            "model.head_width._target_=pathlib.Path.write_text is not one of nas-cli's own model targets",
        ),
        ({**DETECTOR_MODEL, "head_width": created}, "model.head_width: Unsupported interpolation type oc.create"),
    ]
    for i, (model, key) in enumerate(cases):
        trusted({**model, "in_shape": [3, 32, 32], "num_classes": 2})
        assert marker.read_text() == "x"
        marker.unlink()
        run = detect_run(tmp_path / f"run{i}", model)
        assert predict(run, tmp_path / f"predict{i}") == 2
        line = error_line(capsys)
        assert not marker.exists() and not (tmp_path / f"predict{i}" / "detections.json").exists()
        assert str(run / DETECTOR) in line and key in line, line


def test_detect_refuses_a_foreign_top_level_target_and_predicts_with_its_own(tmp_path, capsys):
    run = detect_run(tmp_path / "bad", {**DETECTOR_MODEL, "_target_": "nas_cli.models.cnn.SmallCNN.__init__"})
    assert predict(run, tmp_path / "refused") == 2
    assert "model._target_=nas_cli.models.cnn.SmallCNN.__init__ is not one of" in error_line(capsys)
    assert predict(detect_run(tmp_path / "good", DETECTOR_MODEL), tmp_path / "predict") == 0
    found = json.loads((tmp_path / "predict" / "detections.json").read_text())
    assert [r["image"] for r in found] == ["000000.png", "000001.png"]


# ---------------------------------------------------------------- prep-imagenet: the devkit's synset table


def devkit_with(path: Path, bad: str) -> None:
    """build_src's devkit with the first class's WNID in meta.mat replaced by ``bad``."""
    write_devkit(path, max(int(n[15:23]) for n in val_names()), renamed={WNIDS[0]: bad})


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory) -> Path:
    return build_src(tmp_path_factory.mktemp("ilsvrc"), devkit=False)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_a_devkit_wnid_that_is_a_path_is_refused_before_anything_is_written(ilsvrc, tmp_path, capsys, kind):
    src = tmp_path / "src"
    src.mkdir()
    for name in os.listdir(ilsvrc):
        (src / name).symlink_to(ilsvrc / name)
    dst = tmp_path / "box" / "out"
    dst.parent.mkdir()
    # trusted, the images of that class go to tmp_path/escape, or from dst/.val.partial/ to box/escape
    escape = tmp_path / "escape" if kind == "absolute" else dst.parent / "escape"
    bad = str(escape) if kind == "absolute" else "../../escape"
    devkit_with(src / DEVKIT, bad)
    with pytest.raises(UserError, match="is not a WordNet id"):
        labels.from_devkit(src / DEVKIT)
    before = listing(tmp_path)
    assert (
        in_process(
            "prep-imagenet",
            f"src={src}",
            f"dst={dst}",
            "workers=1",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'box' / 'run'}",
        )
        == 2
    )
    line = error_line(capsys)
    assert f"{src / DEVKIT}: {labels.META}: WNID {bad!r}" in line, line
    assert not escape.exists() and not dst.exists()
    assert [p for p in listing(tmp_path) if p not in before and not p.startswith("box/run")] == []


def test_a_train_class_that_is_not_a_wnid_and_a_link_out_of_dst_are_refused(ilsvrc, tmp_path):
    from test_prep_imagenet import class_files, tar_bytes

    src = build_src(tmp_path / "src", devkit=False, inner={"evil.tar": tar_bytes(class_files("evil", 5))})
    with pytest.raises(UserError, match="'evil.tar' is not a class archive"):
        prepare(Options(src=src, dst=tmp_path / "out", splits=("train",), workers=1, progress=False))
    assert not (tmp_path / "out").exists()
    dst, elsewhere = tmp_path / "linked", tmp_path / "elsewhere"
    dst.mkdir()
    elsewhere.mkdir()
    (dst / "train").symlink_to(elsewhere)  # the class folders would land outside dst
    with pytest.raises(UserError, match="outside dst"):
        prepare(Options(src=ilsvrc, dst=dst, splits=("train",), workers=1, progress=False))
    assert list(elsewhere.iterdir()) == [] and sorted(os.listdir(dst)) == ["train"]
    assert TRAIN_TAR in os.listdir(ilsvrc)


# ---------------------------------------------------------------- detect data=coco: annotations.json


def coco_folder(root: Path, file_name: str) -> Path:
    (root / "images").mkdir(parents=True)
    save_images(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), root / "images")
    (root / "annotations.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "000000.png"}, {"id": 2, "file_name": file_name}],
                "annotations": [],
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    return root


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_coco_file_name_outside_images_is_refused(tmp_path, kind):
    outside = save_images(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), tmp_path / "private")[0]
    name = "../../private/000000.png" if kind == "dotdot" else str(outside)
    root = coco_folder(tmp_path / "coco", name)
    assert (root / "images" / name).is_file()  # trusted, the name reaches a file outside images/
    with pytest.raises(UserError) as err:
        coco(root, image_size=16, val_size=0)
    assert "\n" not in str(err.value) and f"images[1].file_name={name!r} is not a name inside" in str(err.value)


def test_detect_data_coco_error_is_one_line(tmp_path, capsys):
    root = coco_folder(tmp_path / "coco", "../x.png")
    assert (
        in_process(
            "detect",
            "data=coco",
            f"data.root={root}",
            "progress=false",
            "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
        == 2
    )
    assert "file_name='../x.png' is not a name inside" in error_line(capsys)


# -- a data folder's pickles ---------------------------------------------------------------------------------


class _WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # what a hostile pickle does: call a function of its choosing while it loads
        return (Path.write_text, (self.marker, "ran"))


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    import pickle

    from nas_cli.data.folders import read_cifar_pickle

    marker = tmp_path / "marker"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": _WritesMarker(marker), "labels": [0]}))
    pickle.loads(evil.read_bytes())  # trusted, it runs
    assert marker.read_text() == "ran"
    marker.unlink()
    with pytest.raises(UserError, match="pathlib"):
        read_cifar_pickle(evil, "labels")
    assert not marker.exists()
    # the real format, numpy arrays and all, still loads
    good = tmp_path / "good"
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    good.write_bytes(pickle.dumps({b"data": images, b"labels": [3, 4]}, protocol=2))
    x, y = read_cifar_pickle(good, "labels")
    assert torch.equal(x.flatten(1), torch.from_numpy(images)) and y.tolist() == [3, 4]


def test_a_checkpoint_s_environment_state_picks_no_callable_and_no_new_attribute():
    import gymnasium as gym

    from nas_cli.agents.envs import env_state, load_env_state

    env = gym.make("CartPole-v1")
    env.reset(seed=3)
    saved = env_state(env)
    fresh = gym.make("CartPole-v1")
    load_env_state(fresh, saved)  # the real round trip
    assert np.array_equal(fresh.unwrapped.state, env.unwrapped.state)
    layer = next(i for i, s in enumerate(saved) if any(isinstance(v, dict) and "rng" in v for v in s.values()))
    name = next(k for k, v in saved[layer].items() if isinstance(v, dict) and "rng" in v)
    for bad in (
        {**saved[layer], name: {"rng": json.dumps({"bit_generator": "default_rng"})}},
        {**saved[layer], "reset": 1},
        {**saved[layer], "__class__": "x"},
    ):
        with pytest.raises(UserError, match="environment state"):
            load_env_state(gym.make("CartPole-v1"), [*saved[:layer], bad, *saved[layer + 1 :]])
