"""``nes_natural``: separable NES with natural-gradient steps of mu and sigma (``nas_cli.gradients.natural_nes``).

The hand computations below write separable NES's formulas (Wierstra et al. 2014) out in the density's own terms,
``d log p / d mu = (z - mu) / sigma^2`` and ``d log p / d sigma = ((z - mu)^2 - sigma^2) / sigma^3``, with plain
Python sums over the members, independently of the code's ``eps`` form and its chunked accumulation.
"""

from __future__ import annotations

import math

import pytest
import torch

from nas_cli.commands.grad_bench import shipped_settings
from nas_cli.gradients import estimators as est
from nas_cli.gradients import natural_nes, problem, protocol


def _loss(z: float) -> float:  # any non-quadratic loss of one weight
    return (z - 1.0) ** 2 + 0.5 * math.sin(3 * z)


def _drawn_eps(population: int, antithetic: bool, seed: int, pop_chunk: int) -> list[float]:
    """The noise ``estimate`` draws for one weight: chunk c from ``noise_chunk(c, ...)``, as documented."""
    base = population // 2 if antithetic else population
    eps: list[float] = []
    for c, start in enumerate(range(0, base, pop_chunk)):
        eps += est.noise_chunk(c, min(pop_chunk, base - start), 1, seed, "cpu", torch.float64)[:, 0].tolist()
    return eps


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("pop_chunk", [3, 64])
def test_the_natural_step_of_one_weight_equals_the_hand_computation(antithetic, pop_chunk):
    mu, sigma, lr_mu, lr_sigma, seed, population = 0.3, 0.5, 0.7, 0.2, 11, 10
    eps = _drawn_eps(population, antithetic, seed, pop_chunk)
    zs = [mu + sigma * e for e in eps] + ([mu - sigma * e for e in eps] if antithetic else [])
    fit = [-_loss(z) for z in zs]  # fitness = -loss, raw (the default)
    m = len(zs)
    dmu = [(z - mu) / sigma**2 for z in zs]
    dsig = [((z - mu) ** 2 - sigma**2) / sigma**3 for z in zs]
    g_mu = sum(f * d for f, d in zip(fit, dmu)) / m
    g_sig = sum(f * d for f, d in zip(fit, dsig)) / m
    fisher_mu = sum(d * d for d in dmu) / m
    fisher_sig = sum(d * d for d in dsig) / m
    want_mu = mu + lr_mu * g_mu / fisher_mu
    want_sigma = sigma + lr_sigma * g_sig / fisher_sig

    def f(rows):
        return torch.tensor([_loss(float(r)) for r in rows[:, 0]], dtype=torch.float64)

    theta = torch.tensor([mu], dtype=torch.float64)
    g = natural_nes.estimate(
        f, theta, torch.tensor([sigma], dtype=torch.float64), population, antithetic, seed=seed, pop_chunk=pop_chunk
    )
    for got, want in ((g.grad_mu, g_mu), (g.grad_sigma, g_sig), (g.fisher_mu, fisher_mu), (g.fisher_sigma, fisher_sig)):
        assert float(got) == pytest.approx(want, rel=1e-10)
    new_mu, new_sigma = natural_nes.update(theta, torch.tensor([sigma], dtype=torch.float64), g, lr_mu, lr_sigma)
    assert float(new_mu) == pytest.approx(want_mu, rel=1e-10)
    assert float(new_sigma) == pytest.approx(want_sigma, rel=1e-10)
    assert want_sigma != pytest.approx(sigma)  # sigma really moved
    # the explicit-sample entry point agrees (non-antithetic: its rows are the members)
    if not antithetic:
        same = natural_nes.from_samples(
            torch.tensor(eps, dtype=torch.float64)[:, None], torch.tensor([-v for v in fit], dtype=torch.float64), sigma
        )
        assert float(same.natural_mu) == pytest.approx(g_mu / fisher_mu, rel=1e-10)
        assert float(same.natural_sigma) == pytest.approx(g_sig / fisher_sig, rel=1e-10)
    # the multiplicative (SNES) form: sigma exp(eta natural_sigma / sigma)
    _, mult = natural_nes.update(
        theta, torch.tensor([sigma], dtype=torch.float64), g, lr_mu, lr_sigma, sigma_update="multiplicative"
    )
    assert float(mult) == pytest.approx(sigma * math.exp(lr_sigma * g_sig / fisher_sig / sigma), rel=1e-10)


def test_the_fisher_estimates_approach_one_and_two_over_sigma_squared():
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    eps = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = natural_nes.from_samples(eps, torch.zeros(len(eps)), sigma)
    # relative std at M = 1e5: eps^2 (std 1.4, mean 1) 0.45 %, (eps^2-1)^2 (std 7.5, mean 2) 1.2 %
    torch.testing.assert_close(g.fisher_mu, 1 / sigma**2, rtol=0.02, atol=0)
    torch.testing.assert_close(g.fisher_sigma, 2 / sigma**2, rtol=0.05, atol=0)
    few = natural_nes.from_samples(eps[:20], torch.zeros(20), sigma)
    assert (few.fisher_sigma * sigma**2 - 2).abs().max() > 0.05  # an estimate, not the constant
    # the batched estimator (antithetic pairs) too, and fisher=exact is the closed form
    mu = torch.zeros(3, dtype=torch.float64)
    g = natural_nes.estimate(lambda r: r.sum(1), mu, sigma, 200_000, antithetic=True, seed=5, pop_chunk=100_000)
    torch.testing.assert_close(g.fisher_mu, 1 / sigma**2, rtol=0.02, atol=0)  # 1e5 distinct noise vectors
    torch.testing.assert_close(g.fisher_sigma, 2 / sigma**2, rtol=0.05, atol=0)
    exact = natural_nes.estimate(lambda r: r.sum(1), mu, sigma, 10, fisher="exact")
    torch.testing.assert_close(exact.fisher_mu, 1 / sigma**2)
    torch.testing.assert_close(exact.fisher_sigma, 2 / sigma**2)


A = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
W_STAR = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)


def _quadratic(rows):  # the loss; NES maximises its negative f(w) = -sum a_i (w_i - w*_i)^2
    return ((rows - W_STAR) ** 2 * A).sum(1)


@pytest.mark.parametrize(
    "fitness, sigma_update, steps, tol",
    [
        ("raw", "additive", 150, 0.02),  # the defaults: the plain estimator and step
        ("ranks", "multiplicative", 60, 1e-3),  # fitness shaping + SNES's sigma step: geometric convergence
    ],
)
def test_on_a_quadratic_mu_converges_to_the_optimum_and_sigma_shrinks(fitness, sigma_update, steps, tol):
    sigma0 = 0.5
    mu, sigma, history = natural_nes.optimize(
        _quadratic,
        torch.zeros(4, dtype=torch.float64),
        sigma0,
        steps,
        200,
        lr_mu=1.0,
        fitness=fitness,
        sigma_update=sigma_update,
        seed=1,
    )
    assert (mu - W_STAR).abs().max() < tol, mu
    assert (sigma < 0.5 * sigma0).all(), sigma
    assert history[-1]["loss"] < 1e-3 * float(_quadratic(torch.zeros(1, 4, dtype=torch.float64)))
    if fitness == "raw":  # the spread adapts per weight: narrower where the curvature a_i is larger
        assert torch.equal(sigma.argsort(), A.argsort(descending=True)), (sigma, A)


def test_with_the_exact_fisher_the_mean_step_is_the_fixed_sigma_nes_gradient():
    """Same seed, same noise: sigma^2 x (the natural gradient of E loss) is nes's plain estimate, so the grid
    lrs of nes and nes_natural (lr_scale 1/sigma^2) mean the same step; the empirical Fisher only rescales."""
    d = 3
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(problem.num_params(d), generator=g)
    x, y = torch.randn(200, d, generator=g), torch.randn(200, d, generator=g)
    s = shipped_settings(
        f"num_dims=[{d}]",
        "estimators=[nes,nes_natural]",
        "nes.population=[400]",
        "nes.sigma=0.05",
        "nes_natural.fisher=exact",
    )
    grads = protocol.gradients(s, theta, x, y, noise_seed=9)
    torch.testing.assert_close(grads["nes_natural_400"].grad, grads["nes_400"].grad, rtol=1e-4, atol=1e-6)
    s.nes_natural.fisher = "empirical"
    empirical = protocol.gradients(s, theta, x, y, noise_seed=9)["nes_natural_400"]
    assert est.cosine(empirical.grad, grads["nes_400"].grad) > 0.95
    assert not torch.allclose(empirical.grad, grads["nes_400"].grad)


def test_quantize_from_measures_the_new_mean_or_one_sample_of_the_new_distribution():
    d, lrs, seed = 2, [0.1, 1.0], 0
    s = shipped_settings(
        f"num_dims=[{d}]",
        "estimators=[nes_natural,cdg]",
        "nes.population=[30]",
        "num_init=1",
        "num_batch=1",
        "batch_size=100",
        f"lr.grid={lrs}",
        "nes.sigma=0.2",
        f"seed={seed}",
        "nes_natural.quantize_from=[mean,sample]",
        "nes_natural.lr_sigma=0.5",
    )
    rows = protocol.run(s, torch.device("cpu"))
    prob = problem.Problem(
        d, s.batch_size, seed, s.teacher.seed, s.teacher.scale, s.teacher.noise, s.init_scale, torch.device("cpu")
    )
    theta, (x, y) = prob.init(0), prob.batch(0)
    noise_seed = seed * 7919 + d * 131  # the block's seed (init 0, batch 0)

    def f(r):
        return problem.batched_losses(r, x, y)

    g = natural_nes.estimate(f, theta, torch.full_like(theta, 0.2), 30, seed=noise_seed)
    eps_star = natural_nes.sample_noise(theta.numel(), noise_seed, theta.device)
    sigma_new = (0.2 + 0.5 * g.natural_sigma).float()  # the same sigma step at every grid lr
    by_name = {(r["estimator"], r["lr"]): r for r in rows}
    for lr in lrs:
        mu_new = (theta.double() + lr / 0.2**2 * g.natural_mu).float()  # lr_scale = 1 / sigma^2
        mean_row, sample_row = by_name[("nes_natural_30", lr)], by_name[("nes_natural_30_sample", lr)]
        assert mean_row["loss_after"] == pytest.approx(float(problem.loss(mu_new, x, y)), rel=1e-5)
        sample = mu_new + sigma_new * eps_star
        assert sample_row["loss_after"] == pytest.approx(float(problem.loss(sample, x, y)), rel=1e-5)
        assert sample_row["loss_after"] != pytest.approx(mean_row["loss_after"], rel=1e-3)
        assert sample_row["loss_before"] == mean_row["loss_before"] == pytest.approx(float(problem.loss(theta, x, y)))
    # final_weights itself: the mean untouched, the sample mu + sigma eps
    mu, sig = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.1])
    e = torch.tensor([2.0, -3.0])
    assert torch.equal(natural_nes.final_weights(mu, sig, "mean", e), mu)
    torch.testing.assert_close(natural_nes.final_weights(mu, sig, "sample", e), torch.tensor([2.0, -2.3]))


@pytest.mark.parametrize("lam", [2, 5, 6, 10, 51])
def test_snes_utilities_are_the_papers_formula_sum_to_zero_and_fall_with_rank(lam):
    """u_k = max(0, log(lambda/2 + 1) - log k) / sum_j max(0, log(lambda/2 + 1) - log j) - 1/lambda (Wierstra et al.
    2014, fitness shaping), k = 1 the best, written out here with Python's math."""
    top = [max(0.0, math.log(lam / 2 + 1) - math.log(k)) for k in range(1, lam + 1)]
    want = [t / sum(top) - 1 / lam for t in top]
    got = natural_nes.snes_utilities(lam).tolist()
    assert got == pytest.approx(want, abs=1e-15)
    assert sum(got) == pytest.approx(0, abs=1e-12)
    assert all(a >= b for a, b in zip(got, got[1:])) and got[0] > got[-1]
    assert got[-1] == pytest.approx(-1 / lam)  # the worse half: only the -1/lambda
    # shape_fitness hands member i lambda u_(its rank): the lowest loss the most
    losses = torch.randperm(lam, generator=torch.Generator().manual_seed(lam)).double() * 0.3 + 1
    shaped = natural_nes.shape_fitness(losses, "utilities")
    ranks = losses.argsort().argsort()  # 0: the lowest loss
    assert shaped.tolist() == pytest.approx([lam * want[int(r)] for r in ranks], abs=1e-12)


def test_one_snes_step_with_utilities_and_a_multiplicative_sigma_is_the_papers_update():
    """SNES (Wierstra et al. 2014), one step on a 2-weight problem with lambda = 6 members z_k = mu + sigma s_k:
    sort by fitness, u_k by rank, grad_mu J = sum u_k s_k, grad_sigma J = sum u_k (s_k^2 - 1),
    mu <- mu + eta_mu sigma grad_mu J, sigma <- sigma exp(eta_sigma / 2 grad_sigma J), per weight, by hand."""
    lam, d, seed = 6, 2, 4
    mu, sigma = [0.3, -1.2], [0.5, 0.2]
    eta_mu, eta_sigma = 1.0, natural_nes.snes_lr_sigma(d)

    def loss(z):  # any non-quadratic loss of two weights
        return (z[0] - 1.0) ** 2 + 2 * (z[1] + 0.5) ** 2 + 0.3 * math.sin(3 * z[0] * z[1])

    s = est.noise_chunk(0, lam, d, seed, "cpu", torch.float64).tolist()  # the noise estimate draws
    z = [[mu[i] + sigma[i] * sk[i] for i in range(d)] for sk in s]
    order = sorted(range(lam), key=lambda k: loss(z[k]))  # best (lowest loss) first
    top = [max(0.0, math.log(lam / 2 + 1) - math.log(r)) for r in range(1, lam + 1)]
    u = [t / sum(top) - 1 / lam for t in top]
    g_mu = [sum(u[r] * s[k][i] for r, k in enumerate(order)) for i in range(d)]
    g_sigma = [sum(u[r] * (s[k][i] ** 2 - 1) for r, k in enumerate(order)) for i in range(d)]
    want_mu = [mu[i] + eta_mu * sigma[i] * g_mu[i] for i in range(d)]
    want_sigma = [sigma[i] * math.exp(eta_sigma / 2 * g_sigma[i]) for i in range(d)]

    def f(rows):
        return torch.tensor([loss(r.tolist()) for r in rows], dtype=torch.float64)

    theta, spread = torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    g = natural_nes.estimate(f, theta, spread, lam, antithetic=False, fitness="utilities", fisher="exact", seed=seed)
    new_mu, new_sigma = natural_nes.update(theta, spread, g, eta_mu, eta_sigma, sigma_update="multiplicative")
    assert new_mu.tolist() == pytest.approx(want_mu, rel=1e-12)
    assert new_sigma.tolist() == pytest.approx(want_sigma, rel=1e-12)
    assert new_sigma.tolist() != pytest.approx(sigma, rel=1e-3)  # sigma really moved
    # from given samples, the same step
    same = natural_nes.from_samples(
        torch.tensor(s, dtype=torch.float64), f(torch.tensor(z, dtype=torch.float64)), spread, "utilities", "exact"
    )
    again = natural_nes.update(theta, spread, same, eta_mu, eta_sigma, sigma_update="multiplicative")
    assert again[0].tolist() == pytest.approx(want_mu, rel=1e-12)
    assert again[1].tolist() == pytest.approx(want_sigma, rel=1e-12)


def test_snes_converges_on_a_quadratic():
    mu, sigma, _ = natural_nes.optimize(
        _quadratic,
        torch.zeros(4, dtype=torch.float64),
        0.5,
        120,
        20,
        lr_mu=1.0,
        antithetic=False,
        fitness="utilities",
        fisher="exact",
        sigma_update="multiplicative",
        seed=3,
    )
    assert (mu - W_STAR).abs().max() < 1e-3, mu
    assert (sigma < 0.05).all(), sigma
