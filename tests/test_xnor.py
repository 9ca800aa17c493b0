"""Binary networks in train: STE backwards, the XNOR conv (weight projection, activation scale K),
XNOR-ResNet-18, fine-tuning, the smoke sweep."""

from __future__ import annotations

import inspect

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import cli
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nas_cli.engine import transfer
from nas_cli.errors import UserError
from nas_cli.hydra_bridge import config_dir
from nas_cli.models.binary import STE_VARIANTS, XNORConv2d, binary_sign, ste_grad
from nas_cli.models.resnet import resnet18
from nas_cli.models.xnor_resnet import XNORBlock, xnor_resnet18
from nas_cli.runs import checkpoint

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


# -- latent-weight centring and clamping (reference code's BinOp) -------------------------------


def projected(w: torch.Tensor) -> torch.Tensor:
    """The reference order: subtract the mean over input channels (dim 1), then clamp to [-1, 1]."""
    return torch.clamp(w - w.mean(dim=1, keepdim=True), -1.0, 1.0)


def binarised(w: torch.Tensor) -> torch.Tensor:
    """sign(w) times the mean |w| of each output filter (sign(0) = +1)."""
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(w >= 0, 1.0, -1.0) * alpha


def test_clamp_weights_binarises_the_centred_clamped_weights_and_gradients_flow():
    torch.manual_seed(0)
    conv = XNORConv2d(4, 3, 3, padding=1, bias=False, clamp_weights=True).train()
    with torch.no_grad():
        conv.weight.mul_(0).add_(torch.randn_like(conv.weight) * 1.5)  # many |w - mean| > 1
    w0 = conv.weight.detach().clone()
    target = projected(w0)
    clamped = (w0 - w0.mean(dim=1, keepdim=True)).abs() > 1
    assert clamped.sum() > 10
    x, upstream = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
    out = conv(x)
    torch.testing.assert_close(out, F.conv2d(x, binarised(target), padding=1))
    torch.testing.assert_close(conv.weight.detach(), target)  # the latent weights were projected in place
    out.backward(upstream)
    # by hand: dL/dWb from the conv, then Wb = sign(W) * alpha(W) with the clipped STE (all |W| <= 1 now)
    wb = binarised(target).requires_grad_(True)
    F.conv2d(x, wb, padding=1).backward(upstream)
    n = target[0].numel()
    s = torch.where(target >= 0, 1.0, -1.0)
    alpha = target.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = wb.grad * alpha + s * (wb.grad * s).sum(dim=(1, 2, 3), keepdim=True) / n
    torch.testing.assert_close(conv.weight.grad, expected)
    assert (conv.weight.grad[clamped] != 0).all()  # the clamped weights still learn


def test_clamp_weights_projects_once_per_update_and_not_at_eval():
    torch.manual_seed(1)
    conv = XNORConv2d(3, 2, 3, bias=False, clamp_weights=True)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        conv.weight.mul_(4)
    w0 = conv.weight.detach().clone()
    # eval: the projected weights are binarised, the stored ones stay as they are
    torch.testing.assert_close(conv.eval()(x), F.conv2d(x, binarised(projected(w0))))
    assert torch.equal(conv.weight, w0)
    # train: two forwards before one backward (the second does not project again) ...
    conv.train()
    (conv(x).sum() + conv(x).square().sum()).backward()
    assert torch.equal(conv.weight.detach(), projected(w0))
    # ... and after an optimizer step the next forward projects the stepped weights
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    opt.step()
    stepped = conv.weight.detach().clone()
    assert not torch.equal(stepped, projected(stepped))
    torch.testing.assert_close(conv(x), F.conv2d(x, binarised(projected(stepped))))
    torch.testing.assert_close(conv.weight.detach(), projected(stepped))


def test_without_clamp_weights_the_conv_binarises_the_raw_weights():
    conv = XNORConv2d(3, 2, 3, bias=False).train()
    with torch.no_grad():
        conv.weight.mul_(4)
    w0 = conv.weight.detach().clone()
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, binarised(w0)))
    assert torch.equal(conv.weight, w0)


# -- activation scaling factor K (paper Sec. 3.2) ------------------------------------------------


def k_by_loops(
    a: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """A = sum_c |a_c| / c; K = A convolved with a kh x kw box of 1/(kh kw), zero padding, stride."""
    n, c, h, w = a.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    big_a = torch.zeros(n, h + 2 * ph, w + 2 * pw, dtype=a.dtype)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                big_a[b, i + ph, j + pw] = sum(abs(a[b, ch, i, j].item()) for ch in range(c)) / c
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    k = torch.zeros(n, 1, out_h, out_w, dtype=a.dtype)
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                window = big_a[b, i * sh : i * sh + kh, j * sw : j * sw + kw]
                k[b, 0, i, j] = window.sum() / (kh * kw)
    return k


@pytest.mark.parametrize(
    "kernel, stride, padding", [((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (0, 1))]
)
def test_activation_scale_is_the_box_filtered_channel_mean_of_abs_input(kernel, stride, padding):
    torch.manual_seed(0)
    conv = XNORConv2d(3, 4, kernel, stride=stride, padding=padding, bias=False)
    a = torch.randn(2, 3, 7, 6)
    k = conv.activation_scale(a)
    assert k.shape[-2:] == conv(torch.sign(a)).shape[-2:]
    torch.testing.assert_close(k, k_by_loops(a, kernel, stride, padding))


def test_block_with_act_scale_multiplies_each_binary_conv_by_k():
    torch.manual_seed(0)
    block = XNORBlock(3, 4, stride=2, activation={"ste": "clipped"}, act_scale=True, clamp_weights=True).eval()
    for bn in (block.bn1, block.bn2):  # non-trivial BatchNorm statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 7, 7)
    a1 = block.bn1(x)
    w1, w2 = (binarised(projected(c.weight.detach())) for c in (block.conv1, block.conv2))
    y1 = F.conv2d(torch.where(a1 >= 0, 1.0, -1.0), w1, stride=2, padding=1) * k_by_loops(a1, (3, 3), (2, 2), (1, 1))
    a2 = block.bn2(y1)
    y2 = F.conv2d(torch.where(a2 >= 0, 1.0, -1.0), w2, padding=1) * k_by_loops(a2, (3, 3), (1, 1), (1, 1))
    with torch.no_grad():
        torch.testing.assert_close(block(x), y2 + block.shortcut(x))
    block.act_scale = False
    with torch.no_grad():
        assert not torch.allclose(block(x), y2 + block.shortcut(x))
    # K is differentiable: the input's gradient includes the path through A
    block.act_scale = True
    x.requires_grad_(True)
    block(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_xnor_yaml_defaults_match_the_constructor_and_options_reach_the_layers():
    cfg = OmegaConf.load(config_dir() / "model" / "xnor_resnet18.yaml")
    defaults = {k: p.default for k, p in inspect.signature(xnor_resnet18).parameters.items()}
    for key in cfg:
        if key != "_target_":
            assert cfg[key] == defaults[key], f"xnor_resnet18.yaml {key} differs from the constructor's default"
    assert cfg.act_scale is False and cfg.clamp_weights is True  # reference code's choices
    cfg.width, cfg.act_scale, cfg.clamp_weights = 4, True, False
    model = instantiate(cfg, in_shape=(1, 8, 8), num_classes=3)
    blocks = [m for m in model.modules() if isinstance(m, XNORBlock)]
    convs = [m for m in model.modules() if isinstance(m, XNORConv2d)]
    assert len(blocks) == 8 and all(b.act_scale for b in blocks)
    assert len(convs) == 16 and not any(c.clamp_weights for c in convs)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


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
    out = cli(
        "train",
        "-m",
        "experiment=xnor_width_wd_smoke",
        "data.subset=100",
        "trainer.epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    out = cli("report", str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(sweep / "report.csv", dtype=str)
    assert list(table.columns) == ["Width", "Weight Decay", "Training Loss", "Training Accuracy", "Validation Accuracy"]
    assert table[["Width", "Weight Decay"]].values.tolist() == [
        ["4", "0"],
        ["4", "0.0001"],
        ["8", "0"],
        ["8", "0.0001"],
    ]
