"""Model options: weight init, dropout, DropConnect, BatchNorm on/off, fractional pooling, stochastic depth.

Each test checks the defining property of the option (a formula, a mask, an expectation),
not only that a model with it runs.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from nas_cli.errors import UserError
from nas_cli.hydra_bridge import config_dir, one_line
from nas_cli.models.cnn import SmallCNN
from nas_cli.models.init import initialize
from nas_cli.models.layers import FMP_RATIO, DropConnectLinear, DropPath, FractionalMaxPool
from nas_cli.models.mlp import MLP
from nas_cli.models.resnet import BasicBlock, resnet18

SHAPE = (3, 8, 8)
# Small versions of the three models, built with extra keyword options.
BUILDERS = {
    "mlp": lambda **kw: MLP(SHAPE, 5, width=16, depth=2, **kw),
    "cnn": lambda **kw: SmallCNN(SHAPE, 5, width=4, hidden=16, **kw),
    "resnet18": lambda **kw: resnet18(SHAPE, 5, width=4, **kw),
}
SCHEMES = ["kaiming", "xavier", "orthogonal"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def fans(w: torch.Tensor) -> tuple[int, int]:
    receptive = w[0, 0].numel()
    return w.shape[1] * receptive, w.shape[0] * receptive


# -- config files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, keys",
    [
        ("mlp", {"dropout", "dropconnect", "batchnorm", "init"}),
        ("cnn", {"dropout", "dropconnect", "batchnorm", "pool", "init", "fmp_ratio"}),
        ("resnet18", {"dropout", "drop_path", "batchnorm", "init"}),
    ],
)
def test_yaml_exposes_the_options_with_the_constructor_defaults(name, keys):
    cfg = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    assert keys <= set(cfg)
    target = {"mlp": MLP, "cnn": SmallCNN, "resnet18": resnet18}[name]
    defaults = {k: p.default for k, p in inspect.signature(target).parameters.items()}
    for key in cfg:
        if key != "_target_":
            assert cfg[key] == defaults[key], f"{name}.yaml {key} differs from the constructor's default"
    cfg.width = 4
    model = instantiate(cfg, in_shape=SHAPE, num_classes=5)
    assert model(torch.randn(2, *SHAPE)).shape == (2, 5)


# -- 1. weight initialisation ------------------------------------------------------------------


def test_init_default_is_pytorchs_own():
    torch.manual_seed(0)
    ours = MLP((1, 8, 8), 10, width=16, depth=1, init="default")
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    assert not torch.equal(MLP((1, 8, 8), 10, width=16, depth=1, init="xavier")[1].weight, ref[1].weight)


@pytest.mark.parametrize("name", BUILDERS)
def test_init_orthogonal_gives_orthonormal_rows_or_columns(name):
    model = BUILDERS[name](init="orthogonal")
    for m in weighted(model):
        w = m.weight.detach().flatten(1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", BUILDERS)
def test_init_xavier_uniform_respects_its_bound(name):
    model = BUILDERS[name](init="xavier")
    for m in weighted(model):
        w = m.weight.detach()
        fan_in, fan_out = fans(w)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max() <= bound
        if w.numel() >= 1000:  # big enough to fill the interval: uniform std = bound / sqrt(3)
            assert w.abs().max() > 0.95 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.06)


def test_init_kaiming_std_matches_the_formula():
    mlp = MLP((2048,), 10, width=512, depth=1, init="kaiming")  # Linear: fan_in
    assert mlp[1].weight.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.02)
    cnn = SmallCNN((3, 8, 8), 10, width=64, init="kaiming")  # conv: fan_out = 128 x 3 x 3
    conv = cnn.features[2][0].weight
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)
    assert abs(conv.mean().item()) < 0.05 * conv.std().item()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", BUILDERS)
def test_init_zeroes_biases_and_resets_batchnorm(name, scheme):
    model = BUILDERS[name](batchnorm=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand_like(p) + 0.5)  # nothing is 0 or 1 any more
    initialize(model, scheme)
    biases = [m.bias for m in weighted(model) if m.bias is not None]
    assert biases and all(torch.all(b == 0) for b in biases)
    assert batchnorms(model)
    for bn in batchnorms(model):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize("name", BUILDERS)
def test_init_unknown_scheme_is_a_one_line_user_error(name):
    with pytest.raises(UserError, match="model.init=he is not one of default, kaiming, xavier, orthogonal, zeros, "):
        BUILDERS[name](init="he")
    cfg = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    cfg.init = "he"
    with pytest.raises(Exception) as info:  # through Hydra, as the CLI builds it
        instantiate(cfg, in_shape=SHAPE, num_classes=5)
    assert one_line(info.value) == "model.init=he is not one of default, kaiming, xavier, orthogonal, zeros, constant"


# -- 2. dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDERS)
def test_dropout_zeroes_and_rescales_in_train_and_is_identity_in_eval(name):
    p = 0.4
    model = BUILDERS[name](dropout=p)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(d.p == p for d in drops)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for d in drops:
        d.register_forward_hook(lambda m, inp, out: seen.append((inp[0].detach().clone(), out.detach())))
    x = torch.randn(64, *SHAPE)
    model.train()
    model(x)
    for inp, out in seen:
        live = inp != 0  # ReLU outputs: zeros are zero either way
        kept = live & (out != 0)
        torch.testing.assert_close(out[kept], inp[kept] / (1 - p))  # survivors scaled by 1/(1-p)
        assert (out[~kept] == 0).all()
        dropped = 1 - kept.sum().item() / live.sum().item()
        assert dropped == pytest.approx(p, abs=0.15)
    seen.clear()
    model.eval()
    assert torch.equal(model(x), model(x))
    for inp, out in seen:
        assert torch.equal(inp, out)


def test_resnet_dropout_sits_right_before_the_final_linear():
    model = resnet18(SHAPE, 5, width=4, dropout=0.5).train()
    got = {}
    drop = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    drop.register_forward_hook(lambda m, inp, out: got.update(dropped=out))
    model.head[-1].register_forward_hook(lambda m, inp, out: got.update(linear_in=inp[0]))
    model(torch.randn(4, *SHAPE))
    assert isinstance(model.head[-1], nn.Linear) and got["dropped"] is got["linear_in"]


# -- 3. DropConnect ----------------------------------------------------------------------------


def test_dropconnect_eval_is_the_plain_linear_map():
    layer = DropConnectLinear(6, 3, p=0.5).eval()
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_dropconnect_train_masks_weights_and_rescales_survivors():
    p = 0.3
    layer = DropConnectLinear(6, 40, bias=False, p=p).train()
    # One-hot inputs read the effective weight out column by column: out = (W * mask / (1-p))^T
    effective = layer(torch.eye(6)).detach().T
    w = layer.weight.detach()
    kept = effective != 0
    assert (effective[~kept] == 0).all()
    torch.testing.assert_close(effective[kept], w[kept] / (1 - p))
    assert 1 - kept.float().mean().item() == pytest.approx(p, abs=0.12)


def test_dropconnect_train_is_random_and_averages_to_the_eval_output():
    torch.manual_seed(0)
    layer = DropConnectLinear(8, 4, p=0.5)
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = layer.eval()(x)
        layer.train()
        assert not torch.equal(layer(x), layer(x))
        mean = torch.stack([layer(x) for _ in range(3000)]).mean(0)
    torch.testing.assert_close(mean, expected, atol=0.08, rtol=0)


def test_dropconnect_option_replaces_the_hidden_linears_only():
    mlp = MLP(SHAPE, 5, width=16, depth=2, dropconnect=0.25)
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    assert [type(m) for m in linears] == [DropConnectLinear, DropConnectLinear, nn.Linear]
    assert all(m.p == 0.25 for m in linears[:2])
    cnn = SmallCNN(SHAPE, 5, width=4, hidden=16, dropconnect=0.25)
    assert type(cnn.head[1]) is DropConnectLinear and type(cnn.head[-1]) is nn.Linear
    assert n_params(cnn) == n_params(SmallCNN(SHAPE, 5, width=4, hidden=16))
    x = torch.randn(4, *SHAPE)
    for model in (mlp, cnn):
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
    with pytest.raises(UserError, match="dropconnect"):
        MLP(SHAPE, 5, dropconnect=1.0)


# -- 4. BatchNorm on / off ---------------------------------------------------------------------


def test_batchnorm_switches_and_parameter_counts():
    assert not batchnorms(MLP(SHAPE, 5, width=16, depth=2))  # mlp default: off
    mlp = MLP((1, 8, 8), 10, width=16, depth=3, batchnorm=True)
    assert len(batchnorms(mlp)) == 3
    assert n_params(mlp) == (64 * 16 + 2 * 16) + 2 * (16 * 16 + 2 * 16) + (16 * 10 + 10)  # no bias before BN
    for name in BUILDERS:
        on, off = BUILDERS[name](batchnorm=True), BUILDERS[name](batchnorm=False)
        assert batchnorms(on) and not batchnorms(off)
        # Each BatchNorm(c) has 2c parameters; without it its layer keeps a bias of c
        assert n_params(off) == n_params(on) - sum(bn.num_features for bn in batchnorms(on))
    resnet = resnet18((3, 32, 32), 10, width=64, batchnorm=False)
    assert all(c.bias is not None for c in resnet.modules() if isinstance(c, nn.Conv2d))
    assert n_params(resnet) == 11_173_962 - 4_800  # 4,800 = channels of all 21 BatchNorms


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("name", BUILDERS)
def test_models_train_a_step_with_and_without_batchnorm(name, batchnorm):
    torch.manual_seed(0)
    model = BUILDERS[name](batchnorm=batchnorm).train()
    x, y = torch.randn(16, *SHAPE), torch.randint(0, 5, (16,))
    before = F.cross_entropy(model(x), y)
    before.backward()
    with torch.no_grad():  # one plain SGD step
        for p in model.parameters():
            p -= 0.05 * p.grad
    after = F.cross_entropy(model(x), y)
    assert torch.isfinite(after) and after < before


# -- 5. fractional max-pooling -----------------------------------------------------------------

RATIOS = [1.1, 1.25, math.sqrt(2), 1.5, 1.9]


def pooled_side(n: int, alpha: float) -> int:
    """Graham's N_out for N_in = n: the largest m with m * alpha <= n, i.e. floor(n / alpha)."""
    return max(m for m in range(n + 1) if m * alpha <= n)


def graham_regions(n: int, alpha: float, u: float, overlap: bool) -> list[range]:
    """Pooling regions of one axis written out: boundaries a_i = ceil(a' (i + u)) - ceil(a' u),
    a' = n / N_out, i = 0..N_out; region i is [a_i, a_{i+1}) or, overlapping, [a_i, a_{i+1}]."""
    m = pooled_side(n, alpha)
    scale = n / m
    a = [math.ceil(scale * (i + u)) - math.ceil(scale * u) for i in range(m)] + [n]
    return [range(a[i], min(a[i + 1] + overlap, n)) for i in range(m)]


@pytest.mark.parametrize("alpha", RATIOS)
@pytest.mark.parametrize("size", [2, 3, 5, 7, 12, 28])
def test_fractional_pool_output_side_is_floor_n_over_alpha(size, alpha):
    x = torch.randn(2, 3, size, size + 1)  # non-square, odd and even sides
    pool = FractionalMaxPool(alpha)
    expected = (2, 3, pooled_side(size, alpha), pooled_side(size + 1, alpha))
    assert pool.train()(x).shape == pool.eval()(x).shape == expected
    assert torch.equal(pool(x), pool(x))


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("alpha", [math.sqrt(2), 1.7])
def test_fractional_pool_eval_is_the_max_over_grahams_regions(alpha, overlap):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 11, 9)
    out = FractionalMaxPool(alpha, overlap=overlap).eval()(x)
    rows, cols = graham_regions(11, alpha, 0.5, overlap), graham_regions(9, alpha, 0.5, overlap)
    assert all(len(r) in ((1, 2) if not overlap else (2, 3)) for r in rows[:-1] + cols[:-1])
    if not overlap:  # disjoint regions tile the input
        assert [i for r in rows for i in r] == list(range(11))
    expected = torch.tensor(
        [
            [[[x[b, c, list(r)][:, list(q)].max().item() for q in cols] for r in rows] for c in range(2)]
            for b in range(2)
        ]
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("size", [6, 12, 28, 32])
def test_fractional_pool_regions_are_random_in_train(size):
    torch.manual_seed(0)
    pool = FractionalMaxPool().train()
    x = torch.randn(1, 1, size, size)
    assert len({tuple(pool(x).flatten().tolist()) for _ in range(10)}) > 1
    # every output is the max of some window of the input (here: values are all distinct)
    assert set(pool(x).flatten().tolist()) <= set(x.flatten().tolist())
    # and each output's gradient goes to exactly one input: its maximum
    leaf = x.clone().requires_grad_(True)
    out = pool(leaf)
    out.sum().backward()
    assert leaf.grad.sum().item() == pytest.approx(out.numel())
    assert set(x[leaf.grad > 0].tolist()) == set(out.flatten().tolist())


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5, 2.5, -1.4])
def test_fractional_pool_ratio_outside_one_two_is_a_user_error(alpha):
    with pytest.raises(UserError, match=rf"model.fmp_ratio={alpha} must be in \(1, 2\)"):
        FractionalMaxPool(alpha)
    with pytest.raises(UserError, match="model.fmp_ratio"):
        SmallCNN(SHAPE, 5, pool="fractional", fmp_ratio=alpha)


def test_cnn_too_small_input_is_a_user_error_naming_the_pool():
    with pytest.raises(UserError, match=r"features.3 \(pool 2\): a 1x1 input is too small"):
        SmallCNN((1, 2, 2), 5, pool="fractional")  # 2 -> 1 -> nothing
    with pytest.raises(UserError, match=r"features.3 \(pool 2\): a 1x1 input is too small for 2x2 max"):
        SmallCNN((1, 3, 3), 5, pool="max")  # 3 -> 1 -> nothing
    with pytest.raises(UserError, match=r"features.1 \(pool 1\): a 1x8 input"):
        SmallCNN((1, 1, 8), 5, pool="fractional")
    model = SmallCNN((1, 3, 3), 5, width=4, hidden=8, pool="fractional")  # 3 -> 2 -> 1 -> (4 x 4)
    assert model(torch.randn(2, 1, 3, 3)).shape == (2, 5)
    with pytest.raises(UserError, match=r"features.1 \(pool 1\): a 1x1 input"):  # checked at run time too
        model(torch.randn(2, 1, 1, 1))


def test_cnn_fractional_pool_is_random_in_train_and_repeatable_in_eval():
    torch.manual_seed(0)
    model = SmallCNN((1, 28, 28), 10, width=4, hidden=16, pool="fractional")
    pools = [m for m in model.modules() if isinstance(m, FractionalMaxPool)]
    assert len(pools) == 2 and all(p.ratio == FMP_RATIO == math.sqrt(2) for p in pools)
    x = torch.randn(2, 1, 28, 28)
    assert model.features[:2](x).shape == (2, 4, 19, 19)  # floor(28 / sqrt 2) = 19
    assert model.features[:4](x).shape == (2, 8, 13, 13)  # floor(19 / sqrt 2) = 13
    assert SmallCNN((1, 28, 28), 10, width=4, pool="fractional", fmp_ratio=1.9).features[:4](x).shape[-1] == 7
    model.train()
    assert not torch.equal(model.features(x), model.features(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    with pytest.raises(UserError, match="model.pool=avg is not one of max, fractional"):
        SmallCNN(SHAPE, 5, pool="avg")
    cfg = OmegaConf.load(config_dir() / "model" / "cnn.yaml")
    cfg.pool, cfg.fmp_ratio, cfg.width = "fractional", 1.25, 4
    built = instantiate(cfg, in_shape=(1, 12, 12), num_classes=3)  # through Hydra, as the CLI builds it
    assert [m.ratio for m in built.modules() if isinstance(m, FractionalMaxPool)] == [1.25, 1.25]
    cfg.fmp_ratio = 2
    with pytest.raises(Exception) as info:
        instantiate(cfg, in_shape=(1, 12, 12), num_classes=3)
    assert one_line(info.value).startswith("model.fmp_ratio=2 must be in (1, 2)")


# -- 6. stochastic depth -----------------------------------------------------------------------


def blocks(model: nn.Module) -> list[BasicBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


def test_drop_path_probabilities_grow_linearly_to_the_last_block():
    model = resnet18(SHAPE, 5, width=4, drop_path=0.4)
    assert [b.drop_path.p for b in blocks(model)] == pytest.approx([0.4 * k / 8 for k in range(1, 9)])
    assert all(b.drop_path.p == 0 for b in blocks(resnet18(SHAPE, 5, width=4)))
    with pytest.raises(UserError, match="drop_path"):
        resnet18(SHAPE, 5, width=4, drop_path=1.0)


def test_drop_path_eval_is_deterministic_and_equals_no_drop_path():
    model = resnet18(SHAPE, 5, width=4, drop_path=0.5)
    plain = resnet18(SHAPE, 5, width=4)
    plain.load_state_dict(model.state_dict())  # same keys: DropPath has no state
    model.eval(), plain.eval()
    x = torch.randn(4, *SHAPE)
    assert torch.equal(model(x), model(x)) and torch.equal(model(x), plain(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_drop_path_drops_the_residual_branch_of_whole_samples():
    torch.manual_seed(0)
    p = 0.9
    block = BasicBlock(4, 4, drop_path=p).train()
    seen = {}
    block.drop_path.register_forward_hook(lambda m, inp, out: seen.update(branch=inp[0], out=out))
    x = torch.randn(64, 4, 6, 6)
    y = block(x).detach()
    branch, out = seen["branch"].detach(), seen["out"].detach()
    dropped = (out.flatten(1) == 0).all(1)
    assert 0 < dropped.sum() < 64 and (branch.flatten(1) != 0).any(1).all()
    torch.testing.assert_close(out[~dropped], branch[~dropped] / (1 - p))  # kept branches rescaled
    assert torch.equal(y[dropped], F.relu(x[dropped]))  # dropped: the block is its (identity) shortcut


def test_drop_path_is_unbiased():
    torch.manual_seed(0)
    layer = DropPath(0.3).train()
    x = torch.randn(8, 5)
    samples = torch.stack([layer(x) for _ in range(4000)])
    torch.testing.assert_close(samples.mean(0), x, atol=0.1, rtol=0)
    dropped = (samples == 0).all(-1).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.02)
    assert torch.equal(layer.eval()(x), x)
