"""DARTS: supernet, second-order gradient, derivation, latency term, search + retrain smoke test."""

from __future__ import annotations

import json
import logging
import signal

import pandas as pd
import pytest
import torch
from helpers import compose_task
from hydra.core.global_hydra import GlobalHydra

from nas_cli.errors import UserError
from nas_cli.models.darts_ops import PRIMITIVES
from nas_cli.nas.darts import latency as lat
from nas_cli.nas.darts.architect import Architect, exact_second_order
from nas_cli.nas.darts.genotype import Genotype, derive
from nas_cli.nas.darts.latency import LatencyTerm
from nas_cli.nas.darts.supernet import SearchNetwork, num_edges
from nas_cli.runs.signals import Interrupted

TINY_SEARCH = [
    "data=synthetic",
    "data.shape=[1,8,8]",
    "data.n_train=96",
    "data.n_val=32",
    "data.batch_size=16",
    "data.noise=0.5",
    "supernet.layers=3",
    "supernet.init_channels=4",
    "supernet.nodes=2",
    "trainer.epochs=2",
    "progress=false",
    "device=cpu",
    "latency.repeats=1",
    "latency.batch=4",
]


def compose_search(run_dir, overrides):
    return compose_task("search_darts", run_dir, overrides)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def search_task():
    from nas_cli.commands import search_darts

    def run(run_dir, *overrides):
        tiny = (
            TINY_SEARCH
            if "supernet=chain" not in overrides
            else [o for o in TINY_SEARCH if not o.startswith("supernet.")]
        )  # the cells' keys are not the chain's
        return search_darts.task(compose_search(run_dir, [*tiny, *overrides]))

    yield run
    GlobalHydra.instance().clear()


def test_supernet_edges_alphas_and_shapes():
    torch.manual_seed(0)
    net = SearchNetwork((1, 8, 8), 10, init_channels=4, layers=3, nodes=4)
    assert num_edges(4) == 14
    assert net.arch.normal.shape == (14, len(PRIMITIVES)) == net.arch.reduce.shape
    assert net.arch.normal.abs().max() < 1e-2  # 1e-3 N(0, 1)
    assert [c.reduction for c in net.cells] == [False, True, True]
    assert not any(p is net.arch.normal for p in net.parameters())  # weights and alpha apart
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    pc = SearchNetwork((3, 9, 9), 4, init_channels=4, layers=3, nodes=2, partial_channels=2, edge_norm=True)
    assert pc(torch.randn(2, 3, 9, 9)).shape == (2, 4)


def test_second_order_gradient_matches_autograd_through_unrolled_step(monkeypatch):
    """Finite differences need a smooth loss: ReLU kinks are swapped for Softplus in this tiny net."""
    from torch import nn

    monkeypatch.setattr(nn, "ReLU", lambda inplace=False: nn.Softplus(beta=4.0))
    torch.manual_seed(0)
    prims = ["none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3"]
    net = SearchNetwork((1, 6, 6), 3, init_channels=2, layers=3, nodes=2, primitives=prims, stem_multiplier=1).double()
    with torch.no_grad():
        net.arch.normal.normal_(0, 0.5)
        net.arch.reduce.normal_(0, 0.5)
    xt, yt = torch.randn(6, 1, 6, 6, dtype=torch.double), torch.randint(0, 3, (6,))
    xv, yv = torch.randn(6, 1, 6, 6, dtype=torch.double), torch.randint(0, 3, (6,))
    xi = 0.05
    approx = Architect(net, order="second", unrolled="paper").alpha_grads(xt, yt, xv, yv, xi)
    exact = exact_second_order(net, xt, yt, xv, yv, xi)
    first = Architect(net, order="first").alpha_grads(xt, yt, xv, yv, xi)
    scale = max(float(e.abs().max()) for e in exact)
    err = max(float((a - e).abs().max()) for a, e in zip(approx, exact))
    gap = max(float((f - e).abs().max()) for f, e in zip(first, exact))
    assert err < 0.01 * scale, (err, scale)  # finite differences with eps = 0.01/||v||: O(eps^2) error
    assert err < 0.1 * gap, (err, gap)  # and the second-order term is far larger than that error


def test_reused_train_gradient_is_the_gradient_before_the_alpha_step():
    torch.manual_seed(0)
    net = SearchNetwork((1, 8, 8), 3, init_channels=4, layers=3, nodes=2).double()
    xt, yt = torch.randn(8, 1, 8, 8, dtype=torch.double), torch.randint(0, 3, (8,))
    xv, yv = torch.randn(8, 1, 8, 8, dtype=torch.double), torch.randint(0, 3, (8,))
    weights = [p for p in net.parameters() if p.requires_grad]
    loss_before = torch.nn.functional.cross_entropy(net(xt), yt)  # train-mode BN: batch statistics
    direct = torch.autograd.grad(loss_before, weights, allow_unused=True)
    alpha_before = net.arch.normal.detach().clone()
    architect = Architect(net, order="second", reuse_train_grad=True, unrolled="paper")
    architect.step(xt, yt, xv, yv, xi=0.025)
    assert not torch.equal(net.arch.normal, alpha_before)  # alpha moved in between
    loss, logits = architect.weight_loss_from_unrolled()
    torch.testing.assert_close(loss, loss_before.detach())
    loss.backward()
    for p, g in zip(weights, direct):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if g is None else g)
    assert architect.unrolled_train is None  # used once


def _hand_alpha(nodes, prims, picks):
    """Logits: 0 everywhere, ``picks`` = {(edge, op): value}."""
    a = torch.zeros(num_edges(nodes), len(prims))
    for (e, op), v in picks.items():
        a[e, prims.index(op)] = v
    return a


def test_derive_keeps_two_strongest_edges_and_argmax_non_none_op():
    prims = PRIMITIVES
    # node 0: edges 0, 1; node 1: edges 2, 3, 4
    normal = _hand_alpha(
        2,
        prims,
        {
            (0, "none"): 9.0,
            (0, "sep_conv_3x3"): 2.0,
            (1, "skip_connect"): 3.0,
            (2, "dil_conv_5x5"): 1.0,
            (3, "max_pool_3x3"): 4.0,
            (4, "sep_conv_5x5"): 5.0,
        },
    )
    reduce = _hand_alpha(
        2,
        prims,
        {(0, "avg_pool_3x3"): 3.0, (1, "dil_conv_3x3"): 2.0, (3, "skip_connect"): 1.0, (4, "max_pool_3x3"): 2.0},
    )
    g = derive(normal, reduce, prims, 2)
    # edge 0's 'none' is ignored: its strength is sep_conv_3x3's weight (small after softmax with none=9)
    assert g.normal == [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2), ("max_pool_3x3", 1)]
    assert g.reduce == [("avg_pool_3x3", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 2), ("skip_connect", 1)]
    assert g.normal_concat == [2, 3]
    capped = derive(_hand_alpha(2, prims, {(e, "skip_connect"): 5.0 for e in range(5)}), reduce, prims, 2, max_skip=1)
    assert capped.skip_count() == 1
    assert (
        derive(_hand_alpha(2, prims, {(e, "skip_connect"): 5.0 for e in range(5)}), reduce, prims, 2).skip_count() == 4
    )


def test_genotype_json_round_trip(tmp_path):
    g = Genotype([("sep_conv_3x3", 0), ("skip_connect", 1)], [("max_pool_3x3", 0), ("dil_conv_3x3", 1)], [2], [2])
    g.save(tmp_path / "genotype.json")
    assert Genotype.load(tmp_path / "genotype.json") == g
    assert Genotype.load(tmp_path) == g  # a search run folder names its genotype.json
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError):
        Genotype.load(tmp_path / "bad.json")
    (tmp_path / "torn.json").write_text('{"normal": [')
    for load, option in ((Genotype.load, "model.genotype"), (lat.load_table, "latency.table")):
        with pytest.raises(UserError, match=f"{option}=.*torn.json is not JSON"):
            load(tmp_path / "torn.json")
        with pytest.raises(UserError, match=f"{option}=.*missing.json: no such file"):
            load(tmp_path / "missing.json")


def test_latency_weight_derives_a_faster_cell():
    """Only the latency term drives alpha: a large lambda moves the derived cell to cheap ops."""
    prims = PRIMITIVES
    table_cost = {
        "none": 0.0,
        "max_pool_3x3": 1.0,
        "avg_pool_3x3": 1.0,
        "skip_connect": 0.5,
        "sep_conv_3x3": 8.0,
        "sep_conv_5x5": 12.0,
        "dil_conv_3x3": 5.0,
        "dil_conv_5x5": 7.0,
    }
    lat = torch.tensor([[table_cost[p] for p in prims]] * num_edges(2))
    results = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(1)
        net = SearchNetwork((1, 4, 4), 3, init_channels=2, layers=3, nodes=2)
        with torch.no_grad():  # a start that favours the costly ops
            for a in (net.arch.normal, net.arch.reduce):
                a[:, prims.index("sep_conv_5x5")] += 0.05
        term = LatencyTerm(net.arch, {False: lat, True: lat}, weight)
        arch = Architect(net, "first", lr=3e-2, objective=term)
        x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))
        for _ in range(6):
            arch.step(x, y, x, y, xi=0.0)
        g = derive(net.arch.normal, net.arch.reduce, prims, 2)
        results[weight] = term.derived(g, 2, prims)
    assert results[10.0] < results[0.0]
    mult = LatencyTerm(net.arch, {False: lat, True: lat}, 0.2, form="multiplicative", beta=0.6)
    ce = torch.tensor(2.0)
    assert torch.isclose(mult(ce), ce * 0.2 * torch.log(mult.expected() * 1e3) ** 0.6)  # FBNet, LAT in us
    assert mult(ce).requires_grad  # alpha gets a gradient from the multiplicative form too


@pytest.mark.slow
def test_search_writes_record_resumes_and_genotype_retrains(tmp_path, search_task, train_task):
    run = tmp_path / "search"
    summary = search_task(run, "arch.order=second", "latency.weight=0.1", "arch.max_skip=1")
    assert summary["status"] == "ok" and summary["epochs"] == 2
    m = pd.read_csv(run / "metrics.csv")
    for col in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "alpha_entropy_normal",
        "skip_count",
        "genotype",
        "expected_latency_ms",
    ):
        assert col in m.columns
    assert len(m) == 2 and (m.skip_count <= 1).all()
    for name in ("genotype.json", "alpha_normal.png", "alpha_reduce.png", "latency.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "summary.json").read_text())["genotype"] == Genotype.load(run).to_dict()
    assert summary["device_hours"] > 0 and summary["best_val_acc"] is not None
    # resume: extend the finished search by one epoch in its own folder, reusing the latency table
    more = search_task(
        run,
        "arch.order=second",
        "latency.weight=0.1",
        "arch.max_skip=1",
        "trainer.epochs=3",
        "resume=true",
        f"latency.table={run / 'latency.json'}",
    )
    assert more["epochs"] == 3 and list(pd.read_csv(run / "metrics.csv").epoch) == [1, 2, 3]
    GlobalHydra.instance().clear()
    # retrain the genotype through train's engine
    trained = train_task(
        tmp_path / "train",
        "model=darts",
        f"model.genotype={run / 'genotype.json'}",
        "model.layers=3",
        "model.init_channels=4",
        "model.drop_path=0.1",
        "data=synthetic",
        "data.shape=[1,8,8]",
        "data.n_train=64",
        "data.n_val=32",
        "data.batch_size=16",
        "trainer.epochs=1",
        "progress=false",
    )
    assert trained["status"] == "ok" and trained["epochs"] == 1
    GlobalHydra.instance().clear()
    with pytest.raises(UserError, match="needs arch.order=second"):
        search_task(tmp_path / "bad", "arch.reuse_train_grad=true")
    GlobalHydra.instance().clear()
    reused = search_task(tmp_path / "reuse", "arch.order=second", "arch.reuse_train_grad=true", "trainer.epochs=1")
    assert reused["status"] == "ok" and pd.read_csv(tmp_path / "reuse" / "metrics.csv").train_loss.notna().all()


@pytest.mark.slow
def test_resumed_search_matches_uninterrupted(tmp_path, search_task, monkeypatch):
    """SIGTERM in the middle of an epoch: a checkpoint at the next batch, and the resumed search
    ends exactly where the uninterrupted one does."""
    straight = search_task(tmp_path / "a", "arch.heatmap=false")
    calls = {"n": 0}
    real = Architect.step

    def step_then_sigterm(self, *args, **kwargs):
        calls["n"] += 1
        real(self, *args, **kwargs)
        if calls["n"] == 5:  # epoch 2 of 2, its second batch (3 weight batches an epoch)
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Architect, "step", step_then_sigterm)
    with pytest.raises(Interrupted):
        search_task(tmp_path / "b", "arch.heatmap=false")
    record = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert record["status"] == "interrupted" and record["epochs"] == 1
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["tally"]["loader"]["taken"] == 2  # stopped after batch 2 of epoch 2
    monkeypatch.setattr(Architect, "step", real)
    resumed = search_task(tmp_path / "b", "arch.heatmap=false", "resume=true")
    assert resumed["genotype"] == straight["genotype"]
    a, b = pd.read_csv(tmp_path / "a" / "metrics.csv"), pd.read_csv(tmp_path / "b" / "metrics.csv")
    pd.testing.assert_frame_equal(
        a.drop(columns=["epoch_time_s", "samples_per_s"]),
        b.drop(columns=["epoch_time_s", "samples_per_s"]),
        check_exact=True,
    )


def test_chain_space_searches_and_derives(tmp_path, search_task):
    summary = search_task(tmp_path / "chain", "supernet=chain", "supernet.slots=2", "arch.order=second")
    assert summary["status"] == "ok" and summary["genotype"]["space"] == "chain"
    assert len(summary["genotype"]["choices"]) == 2
    assert set(summary["genotype"]["choices"]) <= {"linear_20", "linear_30", "residual_20", "residual_30"}
    assert (tmp_path / "chain" / "alpha_chain.png").is_file()
    assert "alpha_entropy_normal" in pd.read_csv(tmp_path / "chain" / "metrics.csv").columns


GENOTYPE = Genotype(
    [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)],
    [("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 2), ("dil_conv_5x5", 1)],
    [2, 3],
    [2, 3],
)


def test_auxiliary_head_adds_its_weighted_loss_in_training_only():
    from nas_cli.engine.losses import AuxiliaryLogits, cross_entropy
    from nas_cli.models.darts import DARTSNetwork

    torch.manual_seed(0)
    net = DARTSNetwork(
        (1, 16, 16), 5, GENOTYPE.to_dict(), layers=4, init_channels=4, auxiliary=True, auxiliary_weight=0.3
    )
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 5, (6,))
    out = net.train()(x)
    assert isinstance(out, AuxiliaryLogits) and out.logits.shape == out.aux.shape == (6, 5)
    loss, logits = cross_entropy(net, x, y)
    expected = torch.nn.functional.cross_entropy(out.logits, y) + 0.3 * torch.nn.functional.cross_entropy(out.aux, y)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, out.logits)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.auxiliary.parameters())
    # the head reads the features after the second reduction (cell 2 of 4: 16 -> 8 -> 4 pixels)
    assert net.aux_at == 2 and net.cells[2].reduction
    assert isinstance(net.eval()(x), torch.Tensor)  # evaluation: logits alone, the head is not run


def test_retraining_schedules_drop_path_and_trains_the_auxiliary_head(tmp_path, train_task, monkeypatch):
    from nas_cli.models.darts import DARTSNetwork

    seen = []
    original = DARTSNetwork.set_epoch

    def record(self, epoch, epochs):
        original(self, epoch, epochs)
        seen.append(self.drop_prob)

    monkeypatch.setattr(DARTSNetwork, "set_epoch", record)
    GENOTYPE.save(tmp_path / "genotype.json")
    trained = train_task(
        tmp_path / "train",
        "model=darts",
        f"model.genotype={tmp_path / 'genotype.json'}",
        "model.layers=3",
        "model.init_channels=4",
        "model.drop_path=0.3",
        "model.auxiliary=true",
        "data=synthetic",
        "data.shape=[1,8,8]",
        "data.n_train=32",
        "data.n_val=16",
        "data.batch_size=16",
        "trainer.epochs=3",
        "progress=false",
    )
    assert trained["status"] == "ok" and trained["epochs"] == 3
    assert seen == pytest.approx([0.0, 0.1, 0.2])  # 0.3 * epoch / epochs, from 0
    with pytest.raises(UserError, match="auxiliary"):
        DARTSNetwork((1, 8, 8), 2, GENOTYPE.to_dict(), layers=2, auxiliary=True)


def test_drop_last_counts_only_the_images_trained_on(tmp_path, search_task):
    """100 training images: 50 train the weights, 50 alpha, in batches of 16. Dropping the last partial batch
    (static shapes for a compiled step) leaves 3 full batches (48 images) an epoch, and metrics.csv says so;
    the eager default keeps the partial batch of 2 (4 batches, 50 images), as quark0/darts does."""
    kept = search_task(tmp_path / "kept", "data.n_train=100", "arch.heatmap=false", "trainer.epochs=1")
    GlobalHydra.instance().clear()
    dropped = search_task(
        tmp_path / "dropped", "data.n_train=100", "arch.heatmap=false", "trainer.epochs=1", "search.drop_last=true"
    )
    assert kept["status"] == dropped["status"] == "ok"
    m_kept, m_dropped = (pd.read_csv(tmp_path / d / "metrics.csv").iloc[0] for d in ("kept", "dropped"))
    assert (m_kept.samples_seen, m_kept.iterations) == (50, 4)
    assert (m_dropped.samples_seen, m_dropped.iterations) == (48, 3)


@pytest.mark.slow
def test_compiled_search_matches_eager_search(tmp_path, search_task, caplog):
    """search.compile=true (aot_eager: dynamo's and AOTAutograd's capture, the part that could change the
    results) through the whole command: the same metrics as the eager search, to float rounding."""
    small = [
        "supernet.nodes=1",
        "supernet.primitives=[none,max_pool_3x3,skip_connect,sep_conv_3x3]",
        "arch.heatmap=false",
        "trainer.epochs=1",
        "search.drop_last=true",
    ]
    eager = search_task(tmp_path / "eager", *small)
    GlobalHydra.instance().clear()
    torch._dynamo.reset()
    caplog.set_level(logging.INFO, logger="nas_cli.nas.darts.search")
    compiled = search_task(tmp_path / "compiled", *small, "search.compile=true", "search.backend=aot_eager")
    assert compiled["genotype"] == eager["genotype"]
    assert any("the first epoch, compiling included, took" in r.message for r in caplog.records)
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("eager", "compiled"))
    for col in ("train_loss", "val_loss", "val_acc", "alpha_entropy_normal", "alpha_entropy_reduce"):
        assert abs(a[col] - b[col]).max() < 1e-5, col
    GlobalHydra.instance().clear()
    with pytest.raises(UserError, match="search.backend"):
        search_task(tmp_path / "bad", *small, "search.compile=true", "search.backend=tvm")
    GlobalHydra.instance().clear()
    with pytest.raises(UserError, match="search.compile=true on the CPU: inductor's C.. code generation"):
        search_task(tmp_path / "slow", *small, "search.compile=true")  # inductor, the default backend
    assert not (tmp_path / "slow" / "metrics.csv").exists()
