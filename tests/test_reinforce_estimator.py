"""grad-bench's ``reinforce``: the score-function estimator is unbiased for the stochastic network's expected loss.

The reference is exact: on a tiny network (d = 2) the expected loss under Bernoulli(sigmoid(a / T)) units is a
sum over all 4 x 4 sign patterns of both hidden layers, differentiated by autograd (``expected_loss``). The
estimator's mean over many independent draws must sit within a few standard errors of it, coordinate by
coordinate; the same test rejects a gradient 10% off, so it has the power to see a bias.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nas_cli.commands.grad_bench import shipped_settings
from nas_cli.errors import UserError
from nas_cli.gradients import problem, protocol
from nas_cli.gradients import reinforce as rf

D, N = 2, 3


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(problem.num_params(D), generator=g, dtype=torch.float64)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, D, generator=g, dtype=torch.float64)
    return theta, x, y


def exact_gradient(theta, x, y, temperature):
    w = theta.clone().requires_grad_(True)
    rf.expected_loss(w, x, y, temperature).backward()
    return w.grad


def draws(theta, x, y, baseline, temperature, repeats=200, population=1000):
    return torch.stack(
        [rf.reinforce_gradient(theta, x, y, population, baseline, temperature, seed=s) for s in range(repeats)]
    )


@pytest.mark.parametrize("baseline, temperature", [("loo", 1.0), ("none", 1.0), ("loo", 0.5)])
def test_the_mean_estimate_is_the_exact_gradient_of_the_expected_loss(tiny, baseline, temperature):
    theta, x, y = tiny
    exact = exact_gradient(theta, x, y, temperature)
    g = draws(theta, x, y, baseline, temperature)
    mean, se = g.mean(0), g.std(0) / len(g) ** 0.5
    z = (mean - exact) / se
    assert z.abs().max() < 4.5, z  # 12 coordinates, each within 4.5 standard errors
    assert ((mean - 0.9 * exact) / se).abs().max() > 10  # a 10% bias would be seen
    assert exact[: 2 * D * D].abs().max() > 0.05  # and the score-function part is not ~0 here


def test_the_leave_one_out_baseline_lowers_the_variance(tiny):
    theta, x, y = tiny
    loo, none = draws(theta, x, y, "loo", 1.0, 60), draws(theta, x, y, "none", 1.0, 60)
    score_part = slice(0, 2 * D * D)  # W3's gradient has no score term
    assert loo.var(0)[score_part].sum() < 0.7 * none.var(0)[score_part].sum()


def test_the_exact_reference_is_the_hard_sign_network_at_a_low_temperature(tiny):
    theta, x, y = tiny
    assert rf.expected_loss(theta, x, y, 1e-7).item() == pytest.approx(problem.loss(theta, x, y).item(), rel=1e-6)


def test_the_same_seed_gives_the_same_draws_in_any_chunking(tiny):
    theta, x, y = tiny
    whole = rf.reinforce_gradient(theta, x, y, 50, seed=3)
    assert torch.equal(whole, rf.reinforce_gradient(theta, x, y, 50, seed=3))
    assert not torch.equal(whole, rf.reinforce_gradient(theta, x, y, 50, seed=4))
    per_input = rf.reinforce_gradient(theta, x, y, 50, seed=3, chunk_elements=1)  # one input a chunk
    assert per_input.shape == whole.shape and torch.isfinite(per_input).all()


def test_reinforce_joins_the_protocol_with_its_cosine_to_cdg():
    s = shipped_settings(
        "num_dims=[2]",
        "estimators=[reinforce,cdg]",
        "num_init=1",
        "num_batch=1",
        "batch_size=500",
        "lr.grid=[0.1,1.0]",
        "reinforce.population=[4,16]",
    )
    rows = protocol.run(s, torch.device("cpu"))
    names = {r["estimator"] for r in rows}
    assert protocol.estimator_names(s) == ["reinforce_4", "reinforce_16", "cdg"] and names == set(
        protocol.estimator_names(s)
    )
    prob = problem.Problem(
        2, s.batch_size, s.seed, s.teacher.seed, s.teacher.scale, s.teacher.noise, s.init_scale, torch.device("cpu")
    )
    x, y = prob.batch(0)
    theta = prob.init(0)
    noise_seed = s.seed * 7919 + 2 * 131
    g = rf.reinforce_gradient(theta, x, y, 16, seed=noise_seed)
    row = next(r for r in rows if r["estimator"] == "reinforce_16" and r["lr"] == 1.0)
    assert row["loss_after"] == pytest.approx(problem.loss(theta - g, x, y).item(), rel=1e-5)
    cdg = protocol.gradients(dataclasses.replace(s, estimators=["cdg"]), theta, x, y, 0)["cdg"].grad
    cos = float(g.double() @ cdg.double() / (g.double().norm() * cdg.double().norm()))
    assert row["cosine_to_cdg"] == pytest.approx(cos, abs=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        ("reinforce.baseline=ema", "reinforce.baseline=ema is not one of loo, none"),
        ("reinforce.population=[1]", "reinforce.population=1 is too small"),
        ("reinforce.temperature=0.0", "reinforce.temperature=0.0 must be > 0"),
        ("reinforce.population=[]", "reinforce.population=[]"),
    ],
)
def test_bad_reinforce_settings_are_user_errors(change, message):
    s = shipped_settings("num_dims=[2]", "estimators=[reinforce]", change)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        protocol.validate(s)
