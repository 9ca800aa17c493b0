"""``fuse-bn export=onnx|torchscript``: the written file runs without nas-cli and gives the fused model's outputs."""

from __future__ import annotations

import builtins
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from helpers import compose_task
from torch import nn

from nas_cli.commands import fuse_bn as command
from nas_cli.engine.device import seed_everything
from nas_cli.errors import UserError
from nas_cli.tools import export as exporter
from nas_cli.tools.fuse_bn import recipe
from nas_cli.tools.fuse_bn.fold import fuse_bn

ARGS = [  # resnet18 unless a test swaps the source for the tiny net
    "source=torchvision:resnet18",
    "num_classes=10",
    "input_shape=[3,32,32]",
    "repeats=2",
    "progress=false",
    "device=cpu",
]


def _tiny_net() -> nn.Module:
    """conv-BN-ReLU twice, pooled, then linear-BN: every kind of pair, with non-trivial BN statistics."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.BatchNorm1d(5),
    )
    recipe.randomize_bn_stats(net, seed=1)
    return net.eval()


@pytest.fixture(scope="module")
def fused_tiny():
    torch.manual_seed(0)
    net = _tiny_net()
    fused, report = fuse_bn(net)
    assert len(report.fused) == 3
    return net, fused


@pytest.mark.slow
def test_onnx_file_matches_the_unfused_torch_model_at_any_batch(fused_tiny, tmp_path):
    """The reference is the *unfused* net (independent of the fusion code); batch 1 and 7 were never exported."""
    import onnxruntime as ort

    net, fused = fused_tiny
    path = exporter.export(fused, torch.randn(3, 3, 16, 16), tmp_path / "tiny.onnx", "onnx", opset=18)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # one self-contained file, no temporary left
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # plain ORT, no wrapper
    for batch in (1, 7):
        x = torch.randn(batch, 3, 16, 16)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = net(x)
        rel = (expected - torch.from_numpy(got)).abs().max() / expected.abs().max()
        assert got.shape == (batch, 5) and rel <= 1e-4


@pytest.mark.slow
def test_torchscript_file_loads_in_a_fresh_process_without_nas_cli(fused_tiny, tmp_path):
    net, fused = fused_tiny
    path = exporter.export(fused, torch.randn(2, 3, 16, 16), tmp_path / "tiny.pt", "torchscript")
    x = torch.randn(5, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        model = torch.jit.load({str(path)!r})
        torch.save(model(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
        assert not any(m.startswith("nas_cli") for m in sys.modules), "nas_cli was imported"
    """)
    # -I: isolated mode, so neither the checkout nor PYTHONPATH can put nas_cli on the path
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), net(x), rtol=1e-4, atol=1e-5)


@pytest.fixture
def tiny_source(monkeypatch):
    """fuse-bn's source replaced by the tiny net and 4 seeded inputs (the command path, without resnet's cost)."""
    torch.manual_seed(0)
    net, inputs = _tiny_net(), torch.randn(4, 3, 16, 16)
    monkeypatch.setattr(recipe, "load_source", lambda source, batch, seed: (net, inputs, "tiny"))
    return net


def test_fuse_bn_export_onnx_writes_checks_and_times_the_file(tiny_source, tmp_path):
    """fused.onnx beside the untouched state_dict fused.pt, checked and timed at every batch size."""
    summary = command.task(compose_task("fuse_bn", tmp_path, [*ARGS, "batch_sizes=[1,6]", "export=onnx"]))
    assert summary["status"] == "ok" and summary["export_file"] == "fused.onnx"
    assert summary["export_opset"] == 18 and summary["export_runtime"] == "onnxruntime CPUExecutionProvider"
    assert summary["export_max_rel_diff"] <= 1e-4
    assert isinstance(torch.load(tmp_path / "fused.pt", weights_only=True)["model"], dict)  # fused.pt unchanged
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert list(rows["batch_size"]) == [1, 6] and (rows["latency_ms_onnxruntime"] > 0).all()
    assert (rows["export_max_rel_diff"] <= 1e-4).all()
    assert summary["export_max_rel_diff"] >= rows["export_max_rel_diff"].max()  # the worst of every check
    # independently: the file, run by plain onnxruntime, against the unfused net
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = tiny_source(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (expected - got).abs().max() / expected.abs().max() <= 1e-4


@pytest.mark.slow
def test_fuse_bn_export_onnx_of_resnet18(tmp_path):
    """torchvision resnet18 at 32x32 through the whole command: its fused.onnx against the unfused model."""
    summary = command.task(compose_task("fuse_bn", tmp_path, [*ARGS, "batch_sizes=[1,3]", "export=onnx"]))
    assert summary["status"] == "ok" and summary["pairs_fused"] == 20 and summary["export_max_rel_diff"] <= 1e-4
    # independently: the written file, run by plain onnxruntime, against the unfused resnet18 of the same seed
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32)
    seed_everything(0)  # the task's seed=0 draws the same random weights and BN statistics
    model, _, _ = recipe.load_source(
        recipe.Source("torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32)), 1, seed=0
    )
    with torch.no_grad():
        expected = model.eval()(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (expected - got).abs().max() / expected.abs().max() <= 1e-4


def test_a_file_that_disagrees_fails_the_run(tiny_source, tmp_path, monkeypatch):
    """A runtime that is off by 1e-3 relative must fail the run with the figure in the message."""
    real = exporter.load_exported

    def off_by_a_little(path, fmt, device):
        runner, name = real(path, fmt, device)
        return (lambda x: runner(x) * (1 + 1e-3)), name

    monkeypatch.setattr(exporter, "load_exported", off_by_a_little)
    cfg = compose_task("fuse_bn", tmp_path, [*ARGS, "batch_sizes=[1]", "export=torchscript"])
    with pytest.raises(UserError, match=r"differs from the fused torch model by 0\.001.*export_rtol=0\.0001"):
        command.task(cfg)
    assert not (tmp_path / "fused_torchscript.pt").exists()  # the file that failed its check is gone


def test_missing_onnxruntime_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    cfg = compose_task("fuse_bn", tmp_path, [*ARGS, "batch_sizes=[1]", "export=onnx"])
    with pytest.raises(UserError) as caught:
        command.task(cfg)
    message = str(caught.value)
    assert "\n" not in message and "onnxruntime" in message and "pip install 'nas-cli[onnx]'" in message
    assert not (tmp_path / "fused.onnx").exists()


def test_unknown_export_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="export=tflite: choose null, onnx or torchscript"):
        command.task(compose_task("fuse_bn", tmp_path, [*ARGS, "export=tflite"]))
