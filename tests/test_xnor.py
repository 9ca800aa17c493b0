"""Binary networks in train: STE backwards, the XNOR conv, XNOR-ResNet-18, fine-tuning, the smoke sweep."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import cli

from nas_cli.engine import checkpoint, transfer
from nas_cli.errors import UserError
from nas_cli.models.binary import STE_VARIANTS, XNORConv2d, binary_sign, ste_grad
from nas_cli.models.resnet import resnet18
from nas_cli.models.xnor_resnet import xnor_resnet18

# smooth surrogates of sign whose derivatives the STEs are
SURROGATES = {
    "clipped": lambda x: F.hardtanh(x),
    "steep": lambda x: F.hardtanh(2.0 * x),  # k = 2
    "swishsign": lambda x: 2 * torch.sigmoid(5 * x) * (1 + 5 * x * (1 - torch.sigmoid(5 * x))) - 1,  # beta = 5
    "polynomial": lambda x: torch.where(x.abs() <= 1, 2 * x - x * x.abs(), torch.sign(x)),
}


@pytest.mark.parametrize("ste", STE_VARIANTS)
def test_ste_backward_is_the_surrogates_derivative(ste):
    x = torch.linspace(-1.7, 1.7, 341, dtype=torch.float64)
    x = x[(x.abs() - 1).abs() > 1e-3]  # off the kinks of the piecewise surrogates
    x = x[(x.abs() - 0.5).abs() > 1e-3]
    leaf = x.clone().requires_grad_(True)
    binary_sign(leaf, ste).backward(torch.ones_like(x))
    surrogate = x.clone().requires_grad_(True)
    SURROGATES[ste](surrogate).sum().backward()
    torch.testing.assert_close(leaf.grad, surrogate.grad)
    torch.testing.assert_close(leaf.grad, ste_grad(x, ste))
    # and by central finite differences of the surrogate
    h = 1e-6
    fd = (SURROGATES[ste](x + h) - SURROGATES[ste](x - h)) / (2 * h)
    torch.testing.assert_close(leaf.grad, fd, rtol=1e-4, atol=1e-5)


def test_binary_sign_outputs_plus_minus_one_with_zero_to_plus():
    out = binary_sign(torch.tensor([-2.0, -0.0, 0.0, 0.3]))
    assert out.tolist() == [-1.0, 1.0, 1.0, 1.0]
    with pytest.raises(UserError, match="not one of"):
        binary_sign(torch.zeros(1), "tanh")


def test_xnor_conv_equals_conv_with_scaled_sign_weights():
    torch.manual_seed(0)
    conv = XNORConv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = F.conv2d(x, torch.where(w >= 0, 1.0, -1.0) * alpha, padding=1)
    torch.testing.assert_close(conv(x), expected)
    # weight STE: the clipped identity lets gradient through where |w| <= 1 only
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 3.0
    conv(x).sum().backward()
    assert conv.weight.grad[0, 0, 0, 0] != 0  # alpha still depends on it
    assert torch.isfinite(conv.weight.grad).all()


def test_xnor_resnet18_keeps_first_conv_and_last_linear_full_precision():
    model = xnor_resnet18((1, 28, 28), 10, width=8)
    binary = [m for m in model.modules() if isinstance(m, XNORConv2d)]
    assert len(binary) == 16  # 8 blocks x 2 convs
    assert type(model.stem[0]) is torch.nn.Conv2d and type(model.head[-1]) is torch.nn.Linear
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # the inputs of every binary conv are binary
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(args[0])) for m in binary]
    model.eval()(torch.randn(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert all(set(t.unique().tolist()) <= {-1.0, 1.0} for t in seen)


def test_fine_tuning_from_a_full_precision_resnet(tmp_path):
    torch.manual_seed(0)
    source = resnet18((3, 32, 32), 10, width=8)
    checkpoint.save(tmp_path / "fp.pt", {"model": source.state_dict()})
    model = xnor_resnet18((3, 32, 32), 10, width=8)
    report = transfer.load_pretrained(model, tmp_path / "fp.pt")
    theirs = source.state_dict()
    for name, value in model.state_dict().items():
        if "conv" in name or name.startswith(("stem", "head")):
            torch.testing.assert_close(value, theirs[name])  # every conv and the classifier carried over
    assert any("bn1" in key for key in report["reshaped"])  # BatchNorms that moved before a wider conv


@pytest.mark.slow
def test_smoke_sweep_gives_the_width_by_weight_decay_table(tmp_path):
    sweep = tmp_path / "sweep"
    out = cli("train", "-m", "experiment=xnor_width_wd_smoke", "data.subset=100", "trainer.epochs=1",
              f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    out = cli("report", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(sweep / "report.csv", dtype=str)
    assert list(table.columns) == ["Width", "Weight Decay", "Training Loss", "Training Accuracy",
                                   "Validation Accuracy"]
    assert table[["Width", "Weight Decay"]].values.tolist() == [["4", "0"], ["4", "0.0001"], ["8", "0"],
                                                                ["8", "0.0001"]]
