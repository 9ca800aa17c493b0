"""nas-cli ga: truncation selection with an unchanged elite, mutation statistics, batched population evaluation
against each member played alone, worker processes, the run record and eval mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_task
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException

from nas_cli.agents import population as pop
from nas_cli.agents.envs import EnvSpec
from nas_cli.agents.ga import GA, Evaluator, Evolution, State, generation_seeds
from nas_cli.agents.networks import QNetwork
from nas_cli.errors import UserError
from nas_cli.runs.lifecycle import Run

TINY = ["agent.population=16", "agent.truncation=4", "agent.episodes=2", "agent.elite_candidates=3",
        "agent.elite_episodes=3", "agent.hidden=[8]", "generations=3", "progress=false", "device=cpu"]


def test_truncation_selection_keeps_the_elite_unchanged_and_breeds_from_the_best():
    ga = GA(population=6, truncation=2, sigma=0.1, hidden=[4])
    members = torch.arange(6.0)[:, None].repeat(1, 3)  # member i: all weights i
    fitness = torch.tensor([1.0, 9.0, 3.0, 9.0, 0.0, 5.0])
    assert ga.parents(fitness).tolist() == [1, 3]  # the two fittest; a tie goes to the lower index
    elite = torch.tensor([7.5, -2.25, 3.125])
    nxt = ga.next_generation(members, fitness, elite, 0.1, torch.Generator().manual_seed(0))
    assert nxt.shape == (6, 3) and torch.equal(nxt[0], elite)  # bit for bit
    nearest = (nxt[1:, :, None] - torch.tensor([1.0, 3.0])).abs().argmin(2)  # each child from one parent
    assert (nearest == nearest[:, :1]).all()
    # the reference code's variant: every member a child, the elite one of the parents
    ref = GA(population=6, truncation=2, sigma=1e-3, hidden=[4], elite_in_population=False)
    kids = ref.next_generation(members, fitness, elite, 1e-3, torch.Generator().manual_seed(0))
    parents = torch.stack([elite, members[1]])
    assert torch.cdist(kids, parents).min(1).values.max() < 0.01  # near the elite or member 1 (the best), only


class ByWeights:
    """A stand-in evaluator: a member's returns are its weight 0 in the population's evaluation (1 episode)
    and its weight 1 in the elite's re-evaluation (2 episodes), so every choice can be computed by hand."""

    def __call__(self, members, seeds):
        column = 0 if seeds.shape[1] == 1 else 1
        returns = members[:, column, None].repeat(1, seeds.shape[1]).numpy().astype(float)
        return returns, np.full(seeds.shape, 10)


def test_the_elite_is_the_best_re_evaluated_candidate_and_survives(tmp_path):
    ga = GA(population=5, truncation=2, sigma=0.1, episodes=1, elite_candidates=2, elite_episodes=2, hidden=[4])
    env = EnvSpec(threshold=100.0)
    layout = pop.PolicyLayout(4, 2, [4])
    run = Run(tmp_path, "ga", seed=0, device="cpu")
    evolution = Evolution(ga, env, run, ByWeights(), layout)
    members = torch.zeros(5, layout.size)
    members[:, 0] = torch.tensor([1.0, 8.0, 6.0, 7.0, 2.0])  # the first evaluation: 1, 3 and 2 lead
    members[:, 1] = torch.tensor([0.0, 3.0, 50.0, 120.0, 99.0])  # re-evaluated: 3 beats 1 (2 is no candidate)
    state = State(members.clone())
    row = evolution.generation(state, torch.Generator().manual_seed(0))
    assert row["best_fitness"] == 8.0 and row["elite_fitness"] == 120.0 and row["median_fitness"] == 6.0
    assert torch.equal(state.elite, members[3]) and torch.equal(state.members[0], members[3])
    assert state.evaluations == 5 + 2 * 2 and state.env_steps == 10 * 9
    assert state.solved_generation == 1 and state.best_fitness == 120.0
    # next generation: the old elite (now member 0) is a candidate even when it evaluates badly
    state.members[0, 0], state.members[0, 1] = -5.0, 130.0
    state.members[1:, 1] = 0.0
    evolution.generation(state, torch.Generator().manual_seed(1))
    assert state.elite[1] == 130.0


def test_mutation_noise_is_gaussian_with_sigma():
    sigma = 0.07
    ga = GA(population=4001, truncation=1, sigma=sigma, hidden=[4])
    parent = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))
    noise = (ga.children(parent, 4000, sigma, torch.Generator().manual_seed(0)) - parent).double()
    assert abs(noise.mean().item()) < 4 * sigma / np.sqrt(noise.numel())
    assert noise.std().item() == pytest.approx(sigma, rel=0.01)  # 200k draws: std's error ~0.16%
    corr = torch.corrcoef(noise.T)  # weights mutate independently
    assert (corr - torch.eye(50, dtype=corr.dtype)).abs().max() < 0.07
    kurtosis = ((noise / noise.std()) ** 4).mean().item()  # 3 for a Gaussian (1.8 for a uniform)
    assert kurtosis == pytest.approx(3.0, abs=0.06)


def test_crossover_takes_each_weight_from_one_of_two_parents():
    ga = GA(population=9, truncation=2, sigma=1e-6, crossover=1.0, hidden=[4])
    parents = torch.stack([torch.zeros(400), torch.ones(400)])
    kids = ga.children(parents, 8, 1e-6, torch.Generator().manual_seed(0))
    rounded = kids.round()
    assert torch.allclose(kids, rounded, atol=1e-4)
    assert ((rounded.mean(1) > 0.3) & (rounded.mean(1) < 0.7)).sum() >= 4  # mixes, not copies


def alone(net: QNetwork, seeds) -> list[float]:
    """Each seed's episode with gymnasium's own CartPole-v1 (one env object), acting greedily with ``net``."""
    out = []
    for s in seeds:
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=int(s))
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = int(net(torch.as_tensor(obs[None])).argmax(1))
            obs, r, terminated, truncated, _ = env.step(action)
            total, done = total + r, terminated or truncated
        out.append(total)
    return out


@pytest.fixture(scope="module")
def varied():
    """12 members with episodes from ~10 to 500 steps: mutations of a member that balances the pole."""
    layout = pop.PolicyLayout(4, 2, [8])
    gen = torch.Generator().manual_seed(0)
    base = layout.init(1, gen)
    w, b = layout.layers(base)[-1]
    w.zero_(), b.zero_()
    first_w, first_b = layout.layers(base)[0]
    first_w.zero_(), first_b.zero_()
    first_w[0, 0] = torch.tensor([0.0, 0.2, 1.0, 0.5])  # unit 0 = a linear controller (positive part)
    first_w[0, 1] = -first_w[0, 0]  # unit 1: its negative part
    w[0, 1, 0], w[0, 0, 1] = 1.0, 1.0  # push right when the pole falls right
    scales = torch.linspace(0, 1.5, 12)[:, None]
    members = base + scales * torch.randn(12, layout.size, generator=gen)
    return layout, members, generation_seeds(7, 0, 0, (12, 3))


@pytest.mark.parametrize("backend", ["numpy", "python"])
def test_batched_population_evaluation_equals_each_member_alone(varied, backend):
    layout, members, seeds = varied
    returns, lengths = pop.evaluate(members, layout, EnvSpec(), seeds, backend)
    expected = np.array([alone(layout.network(row), s) for row, s in zip(members, seeds)])
    np.testing.assert_array_equal(returns, expected)
    np.testing.assert_array_equal(lengths, expected)  # CartPole: +1 a step
    assert expected.min() < 50 and expected.max() == 500  # short and whole episodes alike
    one_by_one, _ = pop.evaluate_one_by_one(members, layout, EnvSpec(), seeds, backend)
    np.testing.assert_array_equal(one_by_one, expected)


def test_the_batched_forward_is_each_members_network():
    layout = pop.PolicyLayout(5, 3, [7, 6])
    members = layout.init(4, torch.Generator().manual_seed(1))
    obs = torch.randn(4, 9, 5)
    h = obs
    for i, (w, b) in enumerate(layout.layers(members)):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        h = h.relu() if i < 2 else h
    for p in range(4):
        net = layout.network(members[p])
        torch.testing.assert_close(net(obs[p]), h[p])
        assert torch.equal(pop.batched_actions(layout.layers(members), obs)[p], net(obs[p]).argmax(1))
    bound = 1 / np.sqrt(5)  # nn.Linear's range: +-1/sqrt(fan_in)
    first = layout.layers(layout.init(2000, torch.Generator().manual_seed(0)))[0][0]
    assert first.abs().max() <= bound and first.abs().max() > 0.99 * bound


@pytest.mark.slow  # two spawned processes import torch: ~10 s
def test_worker_processes_give_the_same_returns(varied):
    layout, members, seeds = varied
    here = Evaluator(layout, EnvSpec(), "auto", workers=1)(members, seeds)
    pool = Evaluator(layout, EnvSpec(), "auto", workers=2)
    try:
        there = pool(members, seeds)
    finally:
        pool.close()
    np.testing.assert_array_equal(here[0], there[0])
    np.testing.assert_array_equal(here[1], there[1])


def ga_task(run_dir, *overrides):
    from nas_cli.commands import ga

    try:
        return ga.task(compose_task("ga", run_dir, [*TINY, *overrides]))
    finally:
        GlobalHydra.instance().clear()


def test_the_command_writes_its_record_and_best_pt_plays_in_eval_mode(tmp_path):
    out = ga_task(tmp_path / "run")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(rows.columns) == ["generation", "best_fitness", "mean_fitness", "median_fitness", "elite_fitness",
                                  "sigma", "evaluations", "env_steps", "seconds"]
    assert rows["generation"].tolist() == [1, 2, 3] and (rows["evaluations"] == [41, 82, 123]).all()
    assert (rows["best_fitness"] >= rows["median_fitness"]).all() and (rows["sigma"] == 0.1).all()
    assert out["status"] == "ok" and out["best_eval_return"] == rows["elite_fitness"].max()
    assert out["env_steps"] == rows["env_steps"].iloc[-1] and (tmp_path / "run" / "fitness.png").stat().st_size
    saved = ga_task(tmp_path / "eval", "mode=eval", f"source={tmp_path / 'run'}", "eval.episodes=4")
    net = QNetwork((4,), 2, [8])
    net.load_state_dict(torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"])
    expected = alone(net, [20_000 + i for i in range(4)])  # seed 0 + 20000, one more per episode
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "eval" / "returns.txt"), expected)
    assert saved["eval_return_mean"] == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("overrides, message", [
    (["agent.truncation=17"], "agent.truncation=17"),
    (["env.id=Pendulum-v1"], "discrete actions"),
    (["mode=eval"], "needs source"),
    (["agent.backend=numpy", "env.id=Acrobot-v1"], "no numpy vector"),
])
def test_bad_input_is_one_clear_error(tmp_path, overrides, message):
    with pytest.raises((UserError, InstantiationException), match=message):  # Hydra wraps the agent's
        ga_task(tmp_path / "run", *overrides)
