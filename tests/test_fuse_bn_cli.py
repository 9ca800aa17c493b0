"""``nas-cli fuse-bn`` end to end: a run of ours and a torchvision model, fused, checked, timed."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, cli, summary

from nas_cli.models.cnn import SmallCNN
from nas_cli.runs import checkpoint
from nas_cli.tools.fuse_bn.fold import fuse_bn


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    out = cli("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.slow
def test_fuse_bn_of_a_training_run(trained_run):
    out = cli(
        "fuse-bn",
        f"source={trained_run / 'run'}",
        "batch_sizes=[1,4]",
        "repeats=3",
        f"hydra.run.dir={trained_run / 'fused'}",
        cwd=trained_run,
    )
    assert out.returncode == 0, out.stderr
    record = summary(trained_run / "fused")
    assert record["pairs_fused"] == 2 and record["pairs_skipped"] == 0  # the SmallCNN's two conv+BN pairs
    assert record["max_rel_diff"] <= 1e-4
    assert record["params_after"] < record["params_before"]
    assert {"speedup_bs1", "speedup_bs4"} <= set(record)
    # the fused weights, loaded into the fused structure, reproduce the trained model
    trained = SmallCNN((1, 12, 12), 10, width=8, hidden=32)
    trained.load_state_dict(checkpoint.load(trained_run / "run" / "model.pt")["model"])
    structure, _ = fuse_bn(trained)
    structure.load_state_dict(checkpoint.load(trained_run / "fused" / "fused.pt")["model"])
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(structure(x), trained.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fuse_bn_of_a_torchvision_model(tmp_path):
    out = cli(
        "fuse-bn",
        "source=torchvision:resnet18",
        "num_classes=10",
        "input_shape=[3,32,32]",
        "batch_sizes=[2]",
        "repeats=2",
        f"hydra.run.dir={tmp_path / 'tv'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    record = summary(tmp_path / "tv")
    assert record["pairs_fused"] == 20 and record["max_rel_diff"] <= 1e-4  # resnet18 has 20 BatchNorms


@pytest.mark.parametrize(
    "args, message",
    [
        (["source=torchvision:resnet1000"], "unknown torchvision model"),
        (["source=nowhere.pt"], "no such run folder or file"),
        ([], "source has no default"),
    ],
)
@pytest.mark.slow
def test_fuse_bn_errors_are_one_line(tmp_path, args, message):
    out = cli("fuse-bn", *args, cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


def test_the_check_runs_without_tf32_and_restores_the_process_settings():
    from nas_cli.engine.device import full_precision

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, cudnn.deterministic, matmul.allow_tf32, torch.get_float32_matmul_precision())
    try:
        cudnn.allow_tf32, cudnn.deterministic, matmul.allow_tf32 = True, True, True
        torch.set_float32_matmul_precision("high")
        with full_precision():
            assert (cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision()) == (
                False,
                False,
                "highest",
            )
            assert cudnn.deterministic  # the other cudnn flags are left as they were
        assert (cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision()) == (True, True, "high")
    finally:
        cudnn.allow_tf32, cudnn.deterministic, matmul.allow_tf32 = saved[:3]
        torch.set_float32_matmul_precision(saved[3])


@pytest.mark.gpu
def test_the_cuda_check_means_what_the_cpu_check_means(tmp_path):
    """With TF32 the ResNet-50 check read ~1e-3 on an H100; in full fp32 it is float rounding."""
    out = cli(
        "fuse-bn",
        "source=torchvision:resnet50",
        "device=cuda",
        "batch_sizes=[8]",
        "repeats=2",
        f"hydra.run.dir={tmp_path / 'tv'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    record = summary(tmp_path / "tv")
    assert record["check_precision"] == "fp32, TF32 off" and record["max_rel_diff"] < 1e-5
