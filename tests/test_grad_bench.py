"""``grad-bench``: the STE backwards, CDG, NES, the batched loss, and a small end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_task
from hydra.core.global_hydra import GlobalHydra

from nas_cli.gradients import estimators as est
from nas_cli.gradients import problem, protocol
from nas_cli.models.binary import STE_VARIANTS, binary_sign, sign

K, BETA = 2.0, 5.0
SURROGATES = {  # the smooth functions whose derivative each STE passes backward
    "clipped": lambda x: F.hardtanh(x),
    "steep": lambda x: F.hardtanh(K * x),
    "swishsign": lambda x: 2 * torch.sigmoid(BETA * x) * (1 + BETA * x * (1 - torch.sigmoid(BETA * x))) - 1,
    "polynomial": lambda x: torch.where(x.abs() <= 1, 2 * x - x * x.abs(), torch.sign(x)),  # ApproxSign
}


@pytest.mark.parametrize("ste", STE_VARIANTS)
def test_ste_backward_is_the_surrogates_derivative(ste):
    x = torch.linspace(-2, 2, 4001, dtype=torch.float64)
    x = x[((x.abs() - 1).abs() > 1e-6) & ((x.abs() - 1 / K).abs() > 1e-6)]  # off the kinks
    upstream = torch.randn_like(x)
    a = x.clone().requires_grad_(True)
    out = binary_sign(a, ste, K, BETA)
    assert torch.equal(out.detach(), sign(x))  # forward: the hard sign
    out.backward(upstream)
    b = x.clone().requires_grad_(True)
    SURROGATES[ste](b).backward(upstream)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9)
    # and a central finite difference of the surrogate agrees too
    h = 1e-6
    fd = (SURROGATES[ste](x + h) - SURROGATES[ste](x - h)) / (2 * h)
    smooth = (x.abs() - 1).abs() > 1e-4
    torch.testing.assert_close(a.grad[smooth] / upstream[smooth], fd[smooth], rtol=1e-5, atol=1e-5)


def test_ste_gradient_of_the_network_uses_the_variant():
    d = 3
    g = torch.Generator().manual_seed(0)
    theta, x = torch.randn(problem.num_params(d), generator=g), torch.randn(64, d, generator=g)
    y = torch.randn(64, d, generator=g)
    grads = {v: est.ste_gradient(theta, x, y, v) for v in STE_VARIANTS}
    w3 = slice(2 * d * d, 3 * d * d)  # the last layer is linear: every STE gives its exact gradient
    for v in STE_VARIANTS[1:]:
        torch.testing.assert_close(grads[v][w3], grads["clipped"][w3])
    assert not torch.allclose(grads["clipped"][: d * d], grads["swishsign"][: d * d])


def test_cdg_on_a_smooth_function_is_the_analytic_gradient():
    a = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(rows):  # f(w) = w^T A w / 2 + b.w + sin(w0), row-wise
        return 0.5 * torch.einsum("mi,ij,mj->m", rows, a, rows) + rows @ b + torch.sin(rows[:, 0])

    w = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    analytic = a @ w + b + torch.tensor([torch.cos(w[0]), 0, 0], dtype=torch.float64)
    torch.testing.assert_close(est.cdg_gradient(f, w, delta=1e-4, coord_chunk=2), analytic, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("antithetic", [True, False])
def test_nes_converges_to_the_smoothed_gradient_of_a_quadratic(antithetic):
    c = torch.linspace(-1, 1, 8, dtype=torch.float64)
    w = torch.zeros(8, dtype=torch.float64) + 0.4
    exact = 2 * (w - c)  # grad of E||w + sigma eps - c||^2 = ||w - c||^2 + sigma^2 d

    def f(rows):
        return ((rows - c) ** 2).sum(1)

    errors = []
    for m in (100, 1000, 10000, 100000):
        g = est.nes_gradient(f, w, sigma=0.5, population=m, antithetic=antithetic, seed=3, pop_chunk=4096)
        errors.append(float((g - exact).norm() / exact.norm()))
    assert errors[-1] < 0.03, errors
    assert errors[-1] < errors[0] / 5, errors  # ~ 1/sqrt(M)


def test_nes_fitness_shaping_points_along_the_gradient():
    c = torch.arange(6, dtype=torch.float64)
    w = torch.zeros(6, dtype=torch.float64)
    g = est.nes_gradient(lambda r: ((r - c) ** 2).sum(1), w, 0.1, 20000, antithetic=True, fitness_shaping=True)
    assert est.cosine(g, 2 * (w - c)) > 0.99


def test_batched_losses_match_the_one_network_loss_in_any_chunking():
    d = 4
    g = torch.Generator().manual_seed(1)
    thetas = torch.randn(7, problem.num_params(d), generator=g)
    x, y = torch.randn(50, d, generator=g), torch.randn(50, d, generator=g)
    one = torch.stack([problem.loss(t, x, y).double() for t in thetas])
    for chunk in (1, 40, 1000, 1 << 20):
        torch.testing.assert_close(problem.batched_losses(thetas, x, y, chunk), one, rtol=1e-5, atol=1e-6)


def test_lr_grid_joins_the_coarse_and_refined_grids():
    grid = protocol.lr_grid(11, 9, 1e-5, 1.0, 1e-2)
    assert grid[0] == pytest.approx(1e-5) and grid[-1] == pytest.approx(1.0)
    assert sum(1e-2 <= lr <= 1 for lr in grid) == 9  # the coarse half decades in [1e-2, 1] are refined points
    assert len(grid) == 6 + 9
    assert grid == sorted(set(grid))


def _compose(run_dir, overrides):
    return compose_task("grad_bench", run_dir, overrides)


SMALL = [
    "num_dims=[2,3]",
    "num_init=2",
    "num_batch=2",
    "batch_size=300",
    "nes.population=[40,200]",
    "reinforce.population=[4,8]",
    "lr.coarse=6",
    "lr.refined=3",
    "device=cpu",
]


def test_a_small_run_writes_metrics_summary_and_plots(tmp_path):
    from nas_cli.commands import grad_bench

    try:
        result = grad_bench.task(_compose(tmp_path, SMALL))
    finally:
        GlobalHydra.instance().clear()
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert list(rows.columns) == protocol.COLUMNS
    names = [
        "ste_clipped",
        "ste_steep",
        "ste_swishsign",
        "ste_polynomial",
        "nes_40",
        "nes_200",
        "nes_natural_40",
        "nes_natural_200",
        "reinforce_4",
        "reinforce_8",
        "cdg",
    ]
    lrs = protocol.lr_grid(6, 3, 1e-5, 1.0, 1e-2)
    assert len(rows) == 2 * len(names) * len(lrs) * 2 * 2  # num_dim x estimator x lr x init x batch
    assert set(rows.estimator) == set(names) and sorted(rows.lr.unique()) == pytest.approx(lrs)
    assert list(rows[rows.estimator == "cdg"].cosine_to_cdg) == pytest.approx([1.0] * (len(rows) // len(names)))
    assert list(rows.loss_decrease) == pytest.approx(list(rows.loss_before - rows.loss_after))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rows"] == len(rows) and summary["estimators"] == names
    assert len(summary["best"]) == 2 * len(names)
    for d in (2, 3):
        assert summary["winner"][str(d)] in names
        for n in names:
            assert f"best_loss_decrease/d{d}/{n}" in summary and f"best_lr/d{d}/{n}" in summary
    best = pd.read_csv(tmp_path / "best.csv")
    assert {"num_dim", "estimator", "best_lr", "best_loss_decrease", "cosine_to_cdg"} <= set(best.columns)
    mean_at_best = rows[(rows.num_dim == 2) & (rows.estimator == "cdg")].groupby("lr").loss_decrease.mean().max()
    assert best[(best.num_dim == 2) & (best.estimator == "cdg")].best_loss_decrease.item() == pytest.approx(
        mean_at_best
    )
    for png in ("loss_decrease_vs_lr.png", "best_decrease_vs_num_dim.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert result["plots"] == ["loss_decrease_vs_lr.png", "best_decrease_vs_num_dim.png"]


RUN = (
    "import sys; from nas_cli import hydra_bridge; from nas_cli.commands import grad_bench as c; "
    "hydra_bridge.run('grad-bench', c.task, 'grad_bench', sys.argv[1:])"
)


@pytest.mark.parametrize(
    "args, message",
    [
        (["estimators=[clipped,adam]"], "estimators=[clipped, adam]: expected a list drawn from"),
        (["num_dims=[0]"], "num_dims=[0]"),
        (["nes.population=[1]"], "nes.population=[1]"),
    ],
)
@pytest.mark.slow
def test_grad_bench_errors_are_one_line(tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


def test_the_nes_natural_group_reaches_the_settings_and_bad_values_are_user_errors(tmp_path):
    from nas_cli.commands import grad_bench
    from nas_cli.errors import UserError

    try:
        cfg = _compose(
            tmp_path,
            [
                "nes.population=[30]",
                "nes.sigma=0.02",
                "nes_natural.fitness=ranks",
                "nes_natural.quantize_from=[mean,sample]",
                "nes_natural.lr_sigma=0.3",
            ],
        )
    finally:
        GlobalHydra.instance().clear()
    s = grad_bench.settings(cfg)
    n = s.nes_natural
    assert (n.fitness, n.fisher, n.sigma_update, n.lr_sigma, n.quantize_from) == (
        "ranks",
        "empirical",
        "additive",
        0.3,
        ["mean", "sample"],
    )
    assert s.natural_populations == [30] and s.natural_sigma == 0.02  # null: nes's population and sigma
    assert protocol.natural_lr_scale(s) == pytest.approx(1 / 0.02**2)
    assert "nes_natural_30" in protocol.estimator_names(s) and "nes_natural_30_sample" in protocol.estimator_names(s)
    for key, value, message in (
        ("fitness", "shaped", "nes_natural.fitness=shaped is not one of raw, baseline"),
        ("quantize_from", ["median"], "nes_natural.quantize_from=['median']: give mean"),
        ("sigma", 0.0, "nes_natural.sigma=0.0 must be > 0"),
        ("population", [1], "nes_natural.population=[1]: give population sizes >= 2"),
        ("sigma_update", "exp", "nes_natural.sigma_update=exp is not one of"),
    ):
        bad = dataclasses.replace(s, nes_natural=dataclasses.replace(n, **{key: value}))
        with pytest.raises(UserError, match=re.escape(message)):
            protocol.validate(bad)


def test_the_reinforce_group_reaches_the_settings(tmp_path):
    from nas_cli.commands import grad_bench

    try:
        cfg = _compose(
            tmp_path, ["reinforce.population=[6,60]", "reinforce.baseline=none", "reinforce.temperature=0.5"]
        )
    finally:
        GlobalHydra.instance().clear()
    s = grad_bench.settings(cfg)
    assert s.reinforce == protocol.ReinforceSettings(population=[6, 60], baseline="none", temperature=0.5)
    assert "reinforce" in s.estimators  # in the default run, beside the STEs, NES and CDG
    assert [n for n in protocol.estimator_names(s) if n.startswith("reinforce")] == ["reinforce_6", "reinforce_60"]
