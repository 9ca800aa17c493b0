"""BatchNorm folding: per-layer math against PyTorch's reference fusers, whole models, and the graph rules."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from nas_cli.errors import UserError
from nas_cli.models.cnn import SmallCNN
from nas_cli.models.mlp import MLP
from nas_cli.models.resnet import resnet18
from nas_cli.tools.fuse_bn.fold import FuseReport, fold, fuse_bn


def randomize_bn(bn: _BatchNorm, gen: torch.Generator, negative: bool = True, zero_var: bool = False) -> None:
    n = bn.num_features
    with torch.no_grad():
        if bn.running_mean is not None:
            bn.running_mean.copy_(torch.randn(n, generator=gen))
            bn.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            if zero_var:
                bn.running_var[0] = 0.0
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
            if negative:
                bn.weight[: max(1, n // 3)] *= -1
            bn.bias.copy_(torch.randn(n, generator=gen))


def randomize_all(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            randomize_bn(m, gen)
    return model.eval()


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def n_bns(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


# ---------------------------------------------------------------- fold()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_fold_conv2d_matches_torch_reference(bias, groups):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias).eval()
    bn = nn.BatchNorm2d(6).eval()
    randomize_bn(bn, torch.Generator().manual_seed(2), negative=True, zero_var=True)
    assert (bn.weight < 0).any() and bn.running_var[0] == 0
    fused, large = fold(conv, bn)
    ref = fuse_conv_bn_eval(conv, bn)
    assert type(fused) is nn.Conv2d and fused.bias is not None and large == 0
    torch.testing.assert_close(fused.weight, ref.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.bias, ref.bias, rtol=1e-4, atol=1e-5)
    x = torch.randn(3, 4, 7, 7)
    with torch.no_grad():
        # float32: the zero-variance channel scales by ~500, so per-element float32 rounding of the
        # unfused and reference paths alone reaches ~1e-3 relative on near-zero outputs; compare
        # against the exact (float64) unfused pair relative to the output's scale
        exact = copy.deepcopy(bn).double()(copy.deepcopy(conv).double()(x.double()))
        assert max_rel_err(fused(x).double(), exact) <= 1e-5
        assert max_rel_err(ref(x).double(), exact) <= 1e-5
        # float64: elementwise, against PyTorch's fuser and the unfused pair
        conv64, bn64, x64 = copy.deepcopy(conv).double(), copy.deepcopy(bn).double(), x.double()
        fused64, _ = fold(conv64, bn64)
        torch.testing.assert_close(fused64(x64), fuse_conv_bn_eval(conv64, bn64)(x64), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused64(x64), bn64(conv64(x64)), rtol=1e-4, atol=1e-5)
    # the inputs are untouched
    assert conv.bias is None if not bias else conv.bias is not fused.bias


def test_fold_linear_matches_torch_reference():
    torch.manual_seed(3)
    lin = nn.Linear(10, 5, bias=False).eval()
    bn = nn.BatchNorm1d(5).eval()
    randomize_bn(bn, torch.Generator().manual_seed(4), zero_var=True)
    fused, _ = fold(lin, bn)
    lin_b = nn.Linear(10, 5, bias=True)  # the reference fuser needs a bias; zero it to compare
    with torch.no_grad():
        lin_b.weight.copy_(lin.weight)
        lin_b.bias.zero_()
    ref = fuse_linear_bn_eval(lin_b.eval(), bn)
    torch.testing.assert_close(fused.weight, ref.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.bias, ref.bias, rtol=1e-4, atol=1e-5)
    x = torch.randn(8, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(lin(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "cls,bn_cls,shape",
    [
        (nn.ConvTranspose1d, nn.BatchNorm1d, (2, 4, 9)),
        (nn.ConvTranspose2d, nn.BatchNorm2d, (2, 4, 5, 5)),
        (nn.ConvTranspose3d, nn.BatchNorm3d, (2, 4, 3, 4, 3)),
    ],
)
def test_fold_conv_transpose_with_groups(cls, bn_cls, shape):
    torch.manual_seed(5)
    layer = cls(4, 6, 3, stride=2, groups=2, bias=True).eval()  # weight (4, 3, k...): out channel in dim 1
    bn = bn_cls(6).eval()
    randomize_bn(bn, torch.Generator().manual_seed(6), zero_var=True)
    fused, _ = fold(layer, bn)
    assert type(fused) is cls
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(layer(x)), rtol=1e-4, atol=1e-5)


def test_fold_conv3d_and_conv1d():
    for conv, bn, x in [
        (nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), torch.randn(2, 3, 8)),
        (nn.Conv3d(3, 5, 3), nn.BatchNorm3d(5), torch.randn(2, 3, 5, 5, 5)),
    ]:
        randomize_bn(bn, torch.Generator().manual_seed(7))
        fused, _ = fold(conv.eval(), bn.eval())
        with torch.no_grad():
            torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-4, atol=1e-5)


def test_fold_bn_without_affine():
    conv = nn.Conv2d(3, 4, 3).eval()
    bn = nn.BatchNorm2d(4, affine=False).eval()
    randomize_bn(bn, torch.Generator().manual_seed(8))
    fused, _ = fold(conv, bn)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-4, atol=1e-5)


def test_fold_counts_large_scales_and_rejects_bad_pairs():
    conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, eps=1e-12)
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([1e-8, 1.0, 1e-8]))
    _, large = fold(conv, bn, scale_warn=1e3)
    assert large == 2
    with pytest.raises(UserError, match="running statistics"):
        fold(conv, nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(UserError, match="does not pair"):
        fold(conv, nn.BatchNorm1d(3))
    with pytest.raises(UserError, match="channel mismatch"):
        fold(conv, nn.BatchNorm2d(4))


def test_fold_keeps_dtype():
    conv = nn.Conv2d(2, 3, 1).double()
    bn = nn.BatchNorm2d(3).double()
    fused, _ = fold(conv, bn)
    assert fused.weight.dtype == torch.float64 and fused.bias.dtype == torch.float64


# ---------------------------------------------------------------- whole models

MODELS = {
    "resnet18": (lambda: resnet18((3, 32, 32), 10, width=8), (2, 3, 32, 32)),
    "smallcnn": (lambda: SmallCNN((1, 28, 28), 10), (2, 1, 28, 28)),
    "mlp": (lambda: MLP((1, 8, 8), 10, width=16, batchnorm=True), (4, 1, 8, 8)),
    "tv_resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), (1, 3, 64, 64)),
    "tv_mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", MODELS)
def test_whole_model_equal_and_all_bns_removed(name):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = randomize_all(make())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # fuse_bn must switch to eval itself
    fused, report = fuse_bn(model)
    assert model.training  # the input model is left as it was
    model.eval()
    assert isinstance(report, FuseReport) and report.method == "fx"
    assert not fused.training and all(not m.training for m in fused.modules())
    assert report.skipped == []
    assert report.n_bn_removed == n_bns(model) == len(report.fused) > 0
    assert n_bns(fused) == 0
    x = torch.randn(*shape)
    with torch.no_grad():
        assert max_rel_err(fused(x), model(x)) <= 1e-4
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_resnet_shortcut_pair_is_fused():
    model = randomize_all(resnet18((3, 32, 32), 10, width=8))
    fused, report = fuse_bn(model)
    pairs = {(p.layer, p.bn) for p in report.fused}
    assert ("stages.1.0.shortcut.0", "stages.1.0.shortcut.1") in pairs
    assert ("stages.1.0.conv1", "stages.1.0.bn1") in pairs
    kinds = {p.kind for p in report.fused}
    assert kinds == {"conv"}
    # the shortcut conv now carries the folded bias
    assert fused.get_submodule("stages.1.0.shortcut.0").bias is not None


def test_mlp_reports_linear_kind():
    _, report = fuse_bn(randomize_all(MLP((1, 8, 8), 10, width=16, batchnorm=True)))
    assert [p.kind for p in report.fused] == ["linear", "linear"]


# ---------------------------------------------------------------- graph rules


class ConvTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.conv(x)))


class ConvFeedsAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(self.conv2(x))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.other = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 4, 1)
        self.bn_head = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.body(x)
        if x.sum() > 0:  # data-dependent Python control flow: symbolic_trace fails
            y = y * 2
        return self.bn_head(self.head(self.other(y)))


class NoRunningStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn(self.conv(x))))


def check_equal(model: nn.Module, fused: nn.Module, shape=(2, 3, 8, 8)) -> None:
    x = torch.randn(*shape)
    with torch.no_grad():
        assert max_rel_err(fused(x), model.eval()(x)) <= 1e-4


def test_conv_called_twice_is_not_fused():
    model = randomize_all(ConvTwice())
    fused, report = fuse_bn(model)
    assert report.fused == [] and report.n_bn_removed == 0
    assert len(report.skipped) == 1
    assert report.skipped[0].bn == "bn" and report.skipped[0].layer == "conv"
    assert "called 2 times" in report.skipped[0].reason
    check_equal(model, fused)


def test_conv_output_feeding_bn_and_add_is_skipped():
    model = randomize_all(ConvFeedsAdd())
    fused, report = fuse_bn(model)
    assert [(p.layer, p.bn) for p in report.fused] == [("conv2", "bn2")]
    [skip] = report.skipped
    assert (skip.layer, skip.bn) == ("conv", "bn") and skip.reason.startswith("layer output also feeds")
    assert report.n_bn_removed == 1 and n_bns(fused) == 1
    check_equal(model, fused)


def test_untraceable_model_uses_module_order():
    model = randomize_all(Untraceable())
    fused, report = fuse_bn(model)
    assert report.method == "module-order"
    assert [(p.layer, p.bn) for p in report.fused] == [("body.0", "body.1")]
    skipped = {s.bn: s.reason for s in report.skipped}
    assert skipped == {
        "other.1": "untraceable model: not adjacent in a Sequential",
        "bn_head": "untraceable model: not adjacent in a Sequential",
    }
    assert isinstance(fused.body[1], nn.Identity) and not fused.training
    for sign in (1, -1):  # both branches of the Python `if`
        x = sign * (torch.rand(2, 3, 8, 8) + 0.1)
        with torch.no_grad():
            assert max_rel_err(fused(x), model(x)) <= 1e-4


def test_module_order_skips_shared_layer():
    conv = nn.Conv2d(3, 3, 1)

    class Shared(Untraceable):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(conv, nn.BatchNorm2d(3), conv)
            self.other = nn.Sequential(nn.Identity(), nn.Conv2d(3, 4, 1))

    model = randomize_all(Shared())
    fused, report = fuse_bn(model)
    assert report.method == "module-order" and report.fused == []
    assert any(s.bn == "body.1" and "appears 2 times" in s.reason for s in report.skipped)
    check_equal(model, fused)


def test_bn_without_running_stats_is_skipped():
    model = randomize_all(NoRunningStats())
    fused, report = fuse_bn(model)
    assert [(p.layer, p.bn) for p in report.fused] == [("conv2", "bn2")]
    [skip] = report.skipped
    assert skip.bn == "bn" and "track_running_stats=False" in skip.reason
    check_equal(model, fused)


def test_bn_after_non_layer_is_skipped():
    model = randomize_all(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)))
    fused, report = fuse_bn(model)
    [skip] = report.skipped
    assert skip.bn == "2" and skip.reason.startswith("input is not a foldable layer")
    check_equal(model, fused)


def test_bad_arguments_raise_user_error():
    with pytest.raises(UserError):
        fuse_bn(nn.Conv2d(1, 1, 1), scale_warn=0)
    with pytest.raises(UserError):
        fuse_bn("not a model")
