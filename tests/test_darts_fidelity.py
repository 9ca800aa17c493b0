"""DARTS / PC-DARTS fidelity: the unrolled step (code vs paper), the per-epoch lr, the arch warmup,
drop-path's exemptions, the auxiliary head's pooling, FBNet's latency loss, and the presets."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_task
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from nas_cli.engine.schedules import Cosine
from nas_cli.models.darts_ops import PRIMITIVES, FactorizedReduce
from nas_cli.nas.darts import search as search_module
from nas_cli.nas.darts.architect import Architect, exact_second_order
from nas_cli.nas.darts.genotype import PUBLISHED, Genotype
from nas_cli.nas.darts.latency import LatencyTerm
from nas_cli.nas.darts.search import BilevelStep
from nas_cli.nas.darts.supernet import SearchNetwork, num_edges

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_hydra():
    yield
    GlobalHydra.instance().clear()


def tiny_supernet(seed: int = 0, double: bool = True):
    torch.manual_seed(seed)
    net = SearchNetwork(
        (1, 6, 6),
        3,
        init_channels=2,
        layers=3,
        nodes=2,
        stem_multiplier=1,
        primitives=["none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3"],
    )
    return net.double() if double else net


def batches(dtype=torch.double):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (6,), generator=g)) for _ in range(2)
    ]


def sgd_with_momentum(net, lr=0.025, momentum=0.9, wd=3e-4):
    """DARTS's weight SGD, one step taken so that every weight has a momentum buffer."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    (x, y), _ = batches()
    F.cross_entropy(net(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def captured_unrolled(architect, xt, yt, xv, yv, xi):
    """The weights w' the architect evaluates L_val at inside its second-order gradient."""
    seen = {}
    real = architect.loss

    def spy(x, y, weights=None):
        if weights is not None:
            seen.update({k: v.detach().clone() for k, v in weights.items()})
        return real(x, y, weights)

    architect.loss = spy
    grads = architect.alpha_grads(xt, yt, xv, yv, xi)
    return seen, grads


def test_unrolled_code_is_the_sgd_momentum_step_and_paper_the_plain_step():
    net = tiny_supernet()
    opt = sgd_with_momentum(net)
    (xt, yt), (xv, yv) = batches()
    xi, mu, wd = 0.03, 0.9, 3e-4
    names, w = zip(*net.named_parameters())
    g = torch.autograd.grad(F.cross_entropy(net(xt), yt), w, allow_unused=True)
    code, _ = captured_unrolled(Architect(net, "second", unrolled="code", weight_optimizer=opt), xt, yt, xv, yv, xi)
    paper, _ = captured_unrolled(Architect(net, "second", unrolled="paper"), xt, yt, xv, yv, xi)
    moved = 0
    for n, p, gi in zip(names, w, g):
        if gi is None:  # a weight the loss does not reach stays put, as SGD leaves it
            torch.testing.assert_close(code[n], p.detach())
            continue
        buf = opt.state[p]["momentum_buffer"]
        torch.testing.assert_close(code[n], p.detach() - xi * (mu * buf + gi + wd * p.detach()))
        torch.testing.assert_close(paper[n], p.detach() - xi * gi)
        moved += 1
    assert moved > 10
    # and the code's w' is what SGD itself does next (clipping aside) with lr = xi
    twin = copy.deepcopy(net)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=xi, momentum=mu, weight_decay=wd)
    twin_opt.load_state_dict(opt.state_dict())
    for group in twin_opt.param_groups:
        group["lr"] = xi
    F.cross_entropy(twin(xt), yt).backward()
    twin_opt.step()
    for n, p in twin.named_parameters():
        torch.testing.assert_close(code[n], p.detach())


def test_code_unrolled_second_order_gradient_matches_autograd(monkeypatch):
    """The Hessian term is shared by both forms: the code form's finite-difference gradient matches
    autograd through w - xi (mu buf + g + wd w) as closely as the paper form's does."""
    monkeypatch.setattr(nn, "ReLU", lambda inplace=False: nn.Softplus(beta=4.0))  # smooth for finite differences
    net = tiny_supernet()
    with torch.no_grad():
        net.arch.normal.normal_(0, 0.5)
        net.arch.reduce.normal_(0, 0.5)
    opt = sgd_with_momentum(net)
    (xt, yt), (xv, yv) = batches()
    xi, mu, wd = 0.05, 0.9, 3e-4

    def by_hand(w, g, step):
        return [
            p if gi is None else p - step * (mu * opt.state[p]["momentum_buffer"] + gi + wd * p) for p, gi in zip(w, g)
        ]

    approx = Architect(net, "second", unrolled="code", weight_optimizer=opt).alpha_grads(xt, yt, xv, yv, xi)
    exact = exact_second_order(net, xt, yt, xv, yv, xi, unroll=by_hand)
    paper = exact_second_order(net, xt, yt, xv, yv, xi)
    scale = max(float(e.abs().max()) for e in exact)
    err = max(float((a - e).abs().max()) for a, e in zip(approx, exact))
    gap = max(float((p - e).abs().max()) for p, e in zip(paper, exact))
    assert err < 0.01 * scale, (err, scale)
    assert err < 0.1 * gap, (err, gap)  # the two forms really differ, by far more than the FD error


def test_unrolled_code_needs_sgd():
    from nas_cli.errors import UserError

    net = tiny_supernet()
    with pytest.raises(UserError, match="arch.unrolled=code"):
        Architect(net, "second", unrolled="code", weight_optimizer=torch.optim.Adam(net.parameters()))
    with pytest.raises(UserError, match="arch.unrolled=sideways"):
        Architect(net, "second", unrolled="sideways")


def test_per_epoch_lr_is_the_cosine_at_each_epoch_start():
    steps, epochs, base, floor = 3, 4, 0.025, 0.04
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = Cosine(min_factor=floor, every="epoch").build(opt, steps, epochs)
    seen = []
    for _ in range(steps * epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    eta_min = floor * base  # torch's CosineAnnealingLR(T_max=epochs, eta_min) at epoch e, as DARTS steps it
    for e in range(epochs):
        expected = eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2
        assert seen[e * steps : (e + 1) * steps] == pytest.approx([expected] * steps, rel=1e-12)
    per_step = Cosine(min_factor=floor).build(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base), steps, epochs)
    assert per_step.lr_lambdas[0](1) < per_step.lr_lambdas[0](0)  # every="step" (train's default) moves within an epoch
    # a warmup ramps per epoch too: epoch e gets (e + 1) / warmup_epochs of the lr (cosine starts after it)
    warm = (
        Cosine(warmup_epochs=2, every="epoch")
        .build(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base), steps, epochs)
        .lr_lambdas[0]
    )
    assert [warm(i) for i in range(steps * 4)] == pytest.approx([0.5] * steps + [1.0] * 2 * steps + [0.5] * steps)


def test_arch_warmup_freezes_alpha_then_lets_it_move():
    net = tiny_supernet(double=False)
    architect = Architect(net, "first", lr=0.05)
    (x, y), (xa, ya) = batches(torch.float)
    drawn = []

    class ArchBatches:
        def __next__(self):
            drawn.append(1)
            return xa, ya

    step = BilevelStep(net, architect, ArchBatches(), torch.optim.SGD(net.parameters(), lr=0.1), "cpu", warmup_epochs=2)
    start = (net.arch.normal.detach().clone(), net.arch.reduce.detach().clone())
    for epoch in (0, 1):
        net.set_epoch(epoch, 4)
        for _ in range(2):
            step(net.train(), x, y)[0].backward()
        assert torch.equal(net.arch.normal, start[0]) and torch.equal(net.arch.reduce, start[1])
    assert not drawn  # no architecture batches spent during the warmup
    net.set_epoch(2, 4)
    step(net.train(), x, y)
    assert not torch.equal(net.arch.normal, start[0]) and len(drawn) == 1


def test_drop_path_spares_identity_skips_and_drops_a_reduction_cells_factorized_skip(monkeypatch):
    from nas_cli.models import darts as darts_model

    genotype = Genotype(
        [("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("avg_pool_3x3", 1)],
        [("skip_connect", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 0)],
        [2, 3],
        [2, 3],
    )
    torch.manual_seed(0)
    net = darts_model.DARTSNetwork((1, 8, 8), 3, genotype.to_dict(), layers=3, init_channels=4, drop_path=0.5)
    made = {}  # id of an op's output -> the op's class
    for cell in net.cells:
        for op in cell.ops:
            op.register_forward_hook(lambda mod, args, out: made.__setitem__(id(out), type(mod)))
    dropped = []
    real = darts_model.drop_path

    def record(h, p):
        out = real(h, p)
        dropped.append((made[id(h)], bool((out.flatten(1).abs().sum(1) == 0).any())))
        return out

    monkeypatch.setattr(darts_model, "drop_path", record)
    net.train()(torch.randn(64, 1, 8, 8))
    kinds = [k for k, _ in dropped]
    assert nn.Identity not in kinds  # normal cells' skips (and a reduction cell's node-to-node skip) are kept
    assert FactorizedReduce in kinds  # the reduction cell's strided skip is an op like any other
    assert any(zeroed for k, zeroed in dropped if k is FactorizedReduce)  # and some samples lose it
    per_cell = {c: sum(not isinstance(op, nn.Identity) for op in cell.ops) for c, cell in enumerate(net.cells)}
    assert len(dropped) == sum(per_cell.values())
    assert net.cells[1].reduction and isinstance(net.cells[1].ops[0], FactorizedReduce)


def test_auxiliary_head_pools_5x5_stride_3_without_padding():
    from nas_cli.models.darts import DARTSNetwork

    torch.manual_seed(0)
    net = DARTSNetwork((3, 32, 32), 10, "DARTS_V2", layers=3, init_channels=4, auxiliary=True).train()
    pool = net.auxiliary.features[1]
    seen = {}
    pool.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
    net(torch.randn(2, 3, 32, 32))
    assert seen["x"].shape[-2:] == (8, 8) and seen["out"].shape[-2:] == (2, 2)  # CIFAR: 8x8 features -> 2x2
    torch.testing.assert_close(seen["out"], F.avg_pool2d(seen["x"], 5, 3, count_include_pad=False))
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 5, 3, count_include_pad=False))


def test_multiplicative_latency_is_fbnet_ce_alpha_log_lat_beta():
    torch.manual_seed(0)
    prims = PRIMITIVES
    net = SearchNetwork((1, 4, 4), 3, init_channels=2, layers=3, nodes=2)
    with torch.no_grad():
        net.arch.normal.normal_(0, 1.0)
        net.arch.reduce.normal_(0, 1.0)
    lat = {False: torch.rand(num_edges(2), len(prims)) * 3, True: torch.rand(num_edges(2), len(prims)) * 5}
    ce = torch.tensor(1.7)
    lat_ms = sum((F.softmax(a, -1) * lat[r]).sum() for r, a in ((False, net.arch.normal), (True, net.arch.reduce)))
    for alpha, beta in ((0.2, 0.6), (0.5, 1.0)):
        term = LatencyTerm(net.arch, lat, alpha, form="multiplicative", beta=beta)
        torch.testing.assert_close(term(ce), ce * alpha * torch.log(lat_ms * 1e3) ** beta)  # LAT in microseconds


def test_published_genotypes_have_the_papers_sizes():
    """The retraining preset's network (20 cells, 36 channels) has the papers' parameter counts."""
    from nas_cli.models.darts import DARTSNetwork

    def millions(name):
        net = DARTSNetwork((3, 32, 32), 10, name, layers=20, init_channels=36, auxiliary=True)
        return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("auxiliary")) / 1e6

    assert millions("DARTS_V2") == pytest.approx(3.3, abs=0.05)  # Liu et al. Table 1: 3.3M
    assert millions("pc_darts") == pytest.approx(3.6, abs=0.05)  # Xu et al. Table 1: 3.6M
    assert Genotype.load("DARTS_V1") == PUBLISHED["DARTS_V1"] and PUBLISHED["DARTS_V1"].skip_count() == 3


# -- presets: composed as the paper has them, then run shrunk on synthetic data -----------------------
SHRINK = [
    "data=synthetic",
    "~data.val_size",
    "data.shape=[1,8,8]",
    "data.n_train=96",
    "data.n_val=32",
    "data.noise=0.5",
    "data.batch_size=16",
    "data.augment.hflip=false",
    "data.augment.crop_padding=1",
    "progress=false",
    "device=cpu",
]  # synthetic has no val_size (n_val instead): the preset's is dropped
SEARCH_SHRINK = [
    *SHRINK,
    "supernet.layers=3",
    "supernet.init_channels=4",
    "supernet.nodes=2",
    "trainer.epochs=2",
    "arch.heatmap=false",
]


@pytest.mark.slow
def test_darts_search_preset(tmp_path, monkeypatch):
    cfg = compose_task("search_darts", tmp_path / "c", ["experiment=darts_search_cifar10"])
    assert (cfg.supernet.layers, cfg.supernet.init_channels, cfg.data.batch_size, cfg.trainer.epochs) == (8, 16, 64, 50)
    assert (cfg.data.val_size, cfg.arch.fraction, cfg.arch.unrolled, cfg.sched.every) == (0, 0.5, "code", "epoch")
    assert (cfg.arch.lr, cfg.arch.lr_schedule, cfg.arch.betas, cfg.arch.weight_decay) == (
        3e-4,
        "constant",
        [0.5, 0.999],
        1e-3,
    )
    from nas_cli.commands import search_darts

    built = []
    monkeypatch.setattr(search_module, "Architect", lambda *a, **k: built.append(Architect(*a, **k)) or built[-1])
    for order, epochs in (("first", 2), ("second", 1)):
        run = tmp_path / order
        summary = search_darts.task(
            compose_task(
                "search_darts",
                run,
                ["experiment=darts_search_cifar10", *SEARCH_SHRINK, f"arch.order={order}", f"trainer.epochs={epochs}"],
            )
        )
        assert summary["status"] == "ok"
        architect = built[-1]
        assert architect.order == order and architect.unrolled == "code"
        adam = architect.optimizer.param_groups[0]
        assert (adam["lr"], adam["betas"], adam["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
        sgd = architect.weight_optimizer.param_groups[0]
        assert (sgd["momentum"], sgd["weight_decay"], sgd["initial_lr"]) == (0.9, 3e-4, 0.025)
        # the weight lr of each epoch: DARTS's cosine (0.025 -> 0.001 over 2 epochs) at the epoch's start
        lrs = pd.read_csv(run / "metrics.csv").lr.tolist()
        assert lrs == pytest.approx([0.025, 0.001 + 0.024 * (1 + math.cos(math.pi / 2)) / 2][:epochs])


def test_pc_darts_search_preset_waits_for_the_warmup(tmp_path, monkeypatch):
    cfg = compose_task("search_darts", tmp_path / "c", ["experiment=pc_darts_search_cifar10"])
    assert (cfg.supernet.partial_channels, cfg.supernet.edge_norm, cfg.arch.warmup_epochs) == (4, True, 15)
    assert (cfg.optim.lr, cfg.arch.lr, cfg.data.batch_size, cfg.arch.order) == (0.1, 6e-4, 256, "first")
    from nas_cli.commands import search_darts

    steps_at = []
    real = Architect.step

    def step(self, *args, **kwargs):
        steps_at.append(self.model.epoch)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Architect, "step", step)
    run = tmp_path / "pc"
    summary = search_darts.task(
        compose_task(
            "search_darts", run, ["experiment=pc_darts_search_cifar10", *SEARCH_SHRINK, "arch.warmup_epochs=1"]
        )
    )
    assert summary["status"] == "ok"
    per_epoch = pd.read_csv(run / "metrics.csv").iterations.diff().fillna(0).tolist()[-1]
    assert per_epoch > 0 and steps_at == [1] * int(per_epoch)  # nothing in epoch 1 (index 0), every batch of 2
    assert summary["genotype"] is not None


def test_darts_retrain_preset(tmp_path):
    cfg = compose_task("train", tmp_path / "c", ["experiment=darts_retrain_cifar10"])
    m = cfg.model
    assert (m.genotype, m.layers, m.init_channels, m.drop_path, m.auxiliary, m.auxiliary_weight) == (
        "DARTS_V2",
        20,
        36,
        0.2,
        True,
        0.4,
    )
    assert (cfg.data.batch_size, cfg.data.augment.cutout, cfg.optim.lr, cfg.trainer.epochs, cfg.trainer.grad_clip) == (
        96,
        16,
        0.025,
        600,
        5.0,
    )
    from nas_cli.commands import train

    summary = train.task(
        compose_task(
            "train",
            tmp_path / "r",
            [
                "experiment=darts_retrain_cifar10",
                *SHRINK,
                "data.augment.cutout=2",
                "model.layers=3",
                "model.init_channels=4",
                "trainer.epochs=2",
            ],
        )
    )
    assert summary["status"] == "ok" and summary["epochs"] == 2
