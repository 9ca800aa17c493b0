"""search-darts' diagnostics: the Hessian's dominant eigenvalue against an explicit Hessian, RobustDARTS'
early stop on hand-computed windows, and the entropy / argmax / parameter-free figures."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nas_cli.nas.darts import diagnostics as diag
from nas_cli.nas.darts.supernet import SearchNetwork


def test_power_iteration_finds_a_quadratic_forms_largest_magnitude_eigenvalue(one_thread):
    """loss = x'Ax / 2 has Hessian A: the answer is A's eigenvalue of largest magnitude, sign included."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([0.5, -3.0, 1.0, 2.0, -0.2, 0.1], dtype=torch.float64)) @ q.T
    x = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    got = diag.dominant_eigenvalue(lambda: 0.5 * x @ a @ x, [x], iterations=60, generator=g)
    assert got == pytest.approx(-3.0, rel=1e-9)


def test_dominant_eigenvalue_of_a_supernet_matches_its_explicit_hessian(one_thread):
    """On a supernet small enough to form the Hessian of the loss in alpha (2 x 5 edges x 4 ops = 40 entries),
    power iteration on Hessian-vector products gives the eigenvalue of largest magnitude of that matrix. This
    seed's two largest magnitudes are 0.17 and 0.05: the default 20 iterations converge far below 1e-6."""
    torch.manual_seed(2)
    primitives = ["none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"]
    net = SearchNetwork((1, 6, 6), 3, init_channels=2, layers=3, nodes=2, primitives=primitives).double()
    with torch.no_grad():  # alpha away from uniform, so the Hessian has some structure
        for p in net.arch.parameters():
            p.normal_(0, 1.5)
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    params = [net.arch.normal, net.arch.reduce]
    shape = net.arch.normal.shape

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        """The loss as a function of alpha alone: the cells read these tensors in place of the parameters."""
        normal, reduce = flat.view(2, *shape)
        net.arch.alpha = lambda reduction: reduce if reduction else normal
        try:
            return F.cross_entropy(net(x), y)
        finally:
            del net.arch.alpha  # the class's own alpha() again

    flat = torch.cat([p.detach().flatten() for p in params])
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    eigenvalues = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    expected = float(eigenvalues[eigenvalues.abs().argmax()])
    got = diag.dominant_eigenvalue(
        lambda: F.cross_entropy(net(x), y), params, generator=torch.Generator().manual_seed(1)
    )
    assert abs(expected) > 1e-4
    assert got == pytest.approx(expected, rel=1e-6)


def test_hessian_stop_follows_robust_darts_rule_on_hand_computed_windows():
    """Window 2: stop at measurement i once mean(i-3, i-2) / mean(i-1, i) < 0.75; the result is measurement i-2's."""
    stop = diag.HessianStop(window=2)
    rows = [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.2), (5, 2.0)]
    decisions = [stop.update({"epoch": e, "hessian_eigenvalue": v}) for e, v in rows]
    # epoch 4: mean(1, 1) / mean(1, 1.2) = 0.909; epoch 5: mean(1, 1) / mean(1.2, 2.0) = 0.625 < 0.75
    assert decisions == [False, False, False, False, True]
    assert (stop.stopped_epoch, stop.chosen_epoch) == (5, 3)
    assert stop.figures()["stopped_early"] and stop.figures()["hessian_chosen_epoch"] == 3
    again = stop.fresh()
    again.load_state_dict(stop.state_dict())  # what a resumed run restores
    assert (again.measured, again.chosen_epoch) == (stop.measured, 3)


def test_epochs_without_a_measurement_do_not_count():
    stop = diag.HessianStop(window=1)
    assert not stop.update({"epoch": 1, "hessian_eigenvalue": 1.0})
    assert not stop.update({"epoch": 2})  # not measured this epoch (hessian_every=2)
    assert not stop.update({"epoch": 3, "hessian_eigenvalue": float("nan")})
    assert stop.update({"epoch": 4, "hessian_eigenvalue": 2.0})  # 1.0 / 2.0 < 0.75
    assert stop.chosen_epoch == 1


def test_entropy_argmax_and_parameter_free_figures():
    assert diag.entropy_drop(math.log(8), 8) == 0.0
    assert diag.entropy_drop(0.0, 8) == 1.0
    normal = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    reduce = torch.tensor([[0.0, 0.0, 1.0]])
    assert diag.argmax_string([normal, reduce]) == "10|2"
    history = ["10|2", "10|2", "11|2", "11|2", "11|1"]
    assert diag.argmax_changes(history[:3], 3) is None  # fewer than 4 epochs
    assert diag.argmax_changes(history, 3) == 2  # edge 1 (0 -> 1) and the reduce edge (2 -> 1)
    assert diag.argmax_changes(history[:2] + ["10|2"] * 3, 3) == 0
    cells = [[("skip_connect", 0), ("sep_conv_3x3", 1)], [("max_pool_3x3", 0), ("dil_conv_5x5", 2)]]
    assert diag.parameter_free_share(cells) == 0.5


@pytest.fixture
def tiny_search(one_thread):
    from hydra.core.global_hydra import GlobalHydra
    from test_search_darts import TINY_SEARCH, compose_search

    from nas_cli.commands import search_darts

    def run(run_dir, *overrides):
        return search_darts.task(compose_search(run_dir, [*TINY_SEARCH, "arch.heatmap=false", *overrides]))

    yield run
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_a_still_alpha_is_reported_and_the_columns_are_recorded(tmp_path, tiny_search, caplog):
    """arch.lr so small that alpha stays uniform: the summary says how little it moved and one warning names the
    keys to change; every epoch records the entropy drop, the argmax and the share of parameter-free ops."""
    summary = tiny_search(tmp_path / "run", "arch.lr=1e-9", "trainer.epochs=4")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert (
        summary["status"] == "ok" and summary["arch_steps"] == 4 * 3
    )  # 3 weight batches an epoch, one alpha step each
    assert 0 <= summary["alpha_entropy_drop"] < 1e-6
    assert summary["argmax_changes_last3"] == 0  # alpha did not move: no argmax changed
    assert rows["argmax_changes_last3"].isna().tolist() == [True, True, True, False]
    assert rows["alpha_argmax"].nunique() == 1 and rows["param_free_share"].between(0, 1).all()
    warnings = [r.message for r in caplog.records if "alpha barely moved" in r.message]
    assert len(warnings) == 1 and "arch.lr (now 1e-09)" in warnings[0] and "trainer.epochs (4)" in warnings[0]


@pytest.mark.slow
def test_hessian_eigenvalue_is_logged_and_leaves_the_network_as_it_was(tmp_path, tiny_search, monkeypatch):
    from nas_cli.nas.darts import search

    measured = []
    real = search.hessian_eigenvalue

    def spy(supernet, architect, batch, run):
        before = {k: v.clone() for k, v in supernet.state_dict().items()}
        value = real(supernet, architect, batch, run)
        after = supernet.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics put back
        measured.append(value)
        return value

    monkeypatch.setattr(search, "hessian_eigenvalue", spy)
    tiny_search(tmp_path / "run", "arch.hessian_every=2", "trainer.epochs=2")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert rows["hessian_eigenvalue"].isna().tolist() == [True, False]  # every second epoch
    assert rows["hessian_eigenvalue"].dropna().tolist() == pytest.approx(measured) and len(measured) == 1


@pytest.mark.slow
def test_hessian_stop_ends_the_search_and_keeps_the_earlier_epochs_cell(tmp_path, tiny_search, monkeypatch):
    """The eigenvalues 1, 1, 3: with window 1, epoch 3 has 1 / 3 < 0.75, so the search stops there and its result is
    the cell of epoch 2, the measurement a window before."""
    from nas_cli.nas.darts import search

    values = iter([1.0, 1.0, 3.0, 3.0, 3.0])
    monkeypatch.setattr(search, "hessian_eigenvalue", lambda *args: next(values))
    run = tmp_path / "run"
    summary = tiny_search(
        run, "arch.hessian_every=1", "arch.hessian_stop=true", "arch.hessian_window=1", "trainer.epochs=5"
    )
    assert summary["status"] == "ok" and summary["stopped_epoch"] == 3 and summary["hessian_chosen_epoch"] == 2
    assert len(pd.read_csv(run / "metrics.csv")) == 3
    chosen = json.loads((run / "genotypes" / "epoch_002.json").read_text())
    assert json.loads((run / "genotype.json").read_text()) == chosen


def test_hessian_stop_needs_a_measurement_and_no_other_early_stop(tmp_path, tiny_search):
    from nas_cli.errors import UserError

    with pytest.raises(UserError, match="give arch.hessian_every"):
        tiny_search(tmp_path / "a", "arch.hessian_stop=true")
    with pytest.raises(UserError, match="keep one"):
        tiny_search(
            tmp_path / "b", "arch.hessian_every=1", "arch.hessian_stop=true", "trainer.early_stop.monitor=val_loss"
        )


@pytest.mark.slow
def test_the_default_search_learns_alpha_and_settles_its_argmax(tmp_path, one_thread):
    """The default search on fewer digits (240 training images, batches of 32: 4 alpha steps an epoch, 20
    epochs): alpha's mean entropy falls by at least 10% of ln 8 and at most 10% of the edges change their
    argmax over the last 3 epochs, the rule the full default meets (seeds 0, 1, 2: 27-30%, no edge)."""
    from hydra.core.global_hydra import GlobalHydra
    from test_search_darts import compose_search

    from nas_cli.commands import search_darts

    run = tmp_path / "run"
    overrides = ["data.subset=240", "data.batch_size=32", "progress=false", "device=cpu", "arch.heatmap=false"]
    try:
        summary = search_darts.task(compose_search(run, overrides))
    finally:
        GlobalHydra.instance().clear()
    assert summary["status"] == "ok" and summary["arch_steps"] == 20 * 4
    assert summary["alpha_entropy_drop"] >= diag.SEARCHING
    assert summary["argmax_changes_last3"] <= diag.SETTLED * summary["edges"]
    rows = pd.read_csv(run / "metrics.csv")
    first, last = rows["alpha_argmax"].iloc[0], rows["alpha_argmax"].iloc[-1]
    assert first != last  # the cell the search ends with is not the one it started from
