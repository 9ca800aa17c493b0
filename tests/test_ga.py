"""nas-cli ga: truncation selection with an unchanged elite heading the parents, the elite's separate test
evaluation as the reported return, mutation statistics, batched population evaluation
against each member played alone, worker processes, the run record and eval mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_task
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException

from nas_cli.agents import population as pop
from nas_cli.agents.envs import EnvSpec
from nas_cli.agents.ga import GA, TEST, Evaluator, Evolution, State, generation_seeds
from nas_cli.agents.networks import QNetwork
from nas_cli.errors import UserError
from nas_cli.runs.lifecycle import Run

TINY = [
    "agent.population=16",
    "agent.truncation=4",
    "agent.episodes=2",
    "agent.elite_candidates=3",
    "agent.elite_episodes=3",
    "agent.test_episodes=4",
    "agent.hidden=[8]",
    "generations=3",
    "progress=false",
    "device=cpu",
]


def test_truncation_selection_keeps_the_elite_unchanged_and_breeds_from_the_best():
    ga = GA(population=6, truncation=2, sigma=0.1, hidden=[4])
    members = torch.arange(6.0)[:, None].repeat(1, 3)  # member i: all weights i
    fitness = torch.tensor([1.0, 9.0, 3.0, 9.0, 0.0, 5.0])
    elite = torch.tensor([7.5, -2.25, 3.125])
    nxt = ga.next_generation(members, fitness, elite, None, 0.1, torch.Generator().manual_seed(0))
    assert nxt.shape == (6, 3) and torch.equal(nxt[0], elite)  # bit for bit
    nearest = (nxt[1:, :, None] - torch.tensor([1.0])).abs().argmin(2)  # each child from one parent
    assert (nearest == nearest[:, :1]).all()
    # the reference code's variant: every member a child of the elite or member 1 (the fittest), only
    ref = GA(population=6, truncation=2, sigma=1e-3, hidden=[4], elite_in_population=False)
    kids = ref.next_generation(members, fitness, elite, None, 1e-3, torch.Generator().manual_seed(0))
    parents = torch.stack([elite, members[1]])
    assert torch.cdist(kids, parents).min(1).values.max() < 0.01


# A constructed population of 8 (member i: all weights i), T = 3. The rule, from the paper's Algorithm 1
# (P <- [Elite, P - {Elite}], parents P_1..P_T) and the reference code's ga.py (population[:T] if the elite is
# among them, else [elite] + population[:T-1]): the elite, then the T-1 fittest other members; each parent once.
FITNESS = torch.tensor([4.0, 9.0, 1.0, 7.0, 8.0, 0.0, 6.0, 2.0])  # order: 1, 4, 3, 6, 0, 7, 2, 5
PARENT_CASES = [  # (elite: a member's index, or None: no member), the parents' weights in order
    (1, [1, 4, 3]),  # the fittest is the elite: the top 3, the elite once (not [1, 1, 4])
    (4, [4, 1, 3]),  # the elite among the top 3: still the top 3
    (3, [3, 1, 4]),  # the third fittest: the top 3
    (0, [0, 1, 4]),  # a re-selected elite with an unlucky score (fifth): a parent all the same, the third drops
    (5, [5, 1, 4]),  # the least fit member
    (None, [-1, 1, 4]),  # reference mode's previous elite (weights -1), no member of this population
]


@pytest.mark.parametrize("elite_in_population", [True, False])
@pytest.mark.parametrize("elite_index, expected", PARENT_CASES)
def test_the_parents_are_the_elite_and_the_t_minus_1_fittest_others(elite_index, expected, elite_in_population):
    ga = GA(population=8, truncation=3, sigma=1e-4, hidden=[4], elite_in_population=elite_in_population)
    members = torch.arange(8.0)[:, None].repeat(1, 5)
    elite = members[elite_index] if elite_index is not None else torch.full((5,), -1.0)
    rows = ga.parent_rows(members, FITNESS, elite, elite_index)
    assert rows[:, 0].tolist() == expected  # exactly the parent list: the elite first, each parent once
    kids = ga.next_generation(members, FITNESS, elite, elite_index, 1e-4, torch.Generator().manual_seed(0))
    if elite_in_population:
        assert torch.equal(kids[0], elite)
        kids = kids[1:]
    which = (kids[:, :1] - torch.tensor(expected, dtype=kids.dtype)).abs().argmin(1)
    assert (kids[:, :1] - torch.tensor(expected, dtype=kids.dtype)[which, None]).abs().max() < 1e-2
    counts = torch.bincount(which, minlength=3)
    assert counts.sum() == len(kids) and (counts > 0).all()  # every parent breeds, and nothing else does
    # each parent's share: 1/T (measured before on these draws: the elite's was 2/3 with T=3)
    big = ga.children(rows, 30_000, 1e-4, torch.Generator().manual_seed(1))
    share = torch.bincount((big[:, :1] - rows[:, :1].T).abs().argmin(1), minlength=3) / 30_000
    torch.testing.assert_close(share, torch.full((3,), 1 / 3), atol=0.015, rtol=0)


class ByWeights:
    """A stand-in evaluator: a member's returns are its weight 0 in the population's evaluation (1 episode),
    its weight 1 in the elite's re-evaluation (2 episodes) and its weight 2 in the elite's test (3 episodes),
    so every choice can be computed by hand."""

    def __call__(self, members, seeds):
        column = seeds.shape[1] - 1
        returns = members[:, column, None].repeat(1, seeds.shape[1]).numpy().astype(float)
        return returns, np.full(seeds.shape, 10)


def test_the_elite_is_the_best_re_evaluated_candidate_and_survives(tmp_path):
    ga = GA(
        population=5,
        truncation=2,
        sigma=0.1,
        episodes=1,
        elite_candidates=2,
        elite_episodes=2,
        hidden=[4],
        test_episodes=3,
    )
    env = EnvSpec(threshold=100.0)
    layout = pop.PolicyLayout(4, 2, [4])
    run = Run(tmp_path, "ga", seed=0, device="cpu")
    evolution = Evolution(ga, env, run, ByWeights(), layout)
    members = torch.zeros(5, layout.size)
    members[:, 0] = torch.tensor([1.0, 8.0, 6.0, 7.0, 2.0])  # the first evaluation: 1, 3 and 2 lead
    members[:, 1] = torch.tensor([0.0, 3.0, 50.0, 120.0, 99.0])  # re-evaluated: 3 beats 1 (2 is no candidate)
    members[:, 2] = torch.tensor([0.0, 0.0, 0.0, 101.0, 0.0])  # the elite's test: what is reported
    state = State(members.clone())
    row = evolution.generation(state, torch.Generator().manual_seed(0))
    assert row["best_fitness"] == 8.0 and row["elite_fitness"] == 120.0 and row["median_fitness"] == 6.0
    assert row["elite_test_return"] == 101.0
    assert torch.equal(state.elite, members[3]) and torch.equal(state.members[0], members[3])
    assert state.evaluations == 5 + 2 * 2 and state.env_steps == 10 * 9  # the test measures, it is not counted
    assert state.solved_generation == 1 and state.best_fitness == 101.0
    # next generation: the old elite (now member 0) is a candidate even when it evaluates badly
    state.members[0, 0], state.members[0, 1] = -5.0, 130.0
    state.members[1:, 1] = 0.0
    evolution.generation(state, torch.Generator().manual_seed(1))
    assert state.elite[1] == 130.0


class Noisy:
    """Every member is worth 0: a return is pure noise, N(0, 100^2) drawn from the episode's seed alone."""

    def __init__(self):
        self.calls = []

    def __call__(self, members, seeds):
        self.calls.append(seeds.copy())
        returns = np.array([[np.random.default_rng(int(s)).normal(0.0, 100.0) for s in row] for row in seeds])
        return returns, np.full(seeds.shape, 1)


def test_the_headline_is_the_elites_separate_test_not_its_biased_selection_score(tmp_path):
    ga = GA(
        population=40,
        truncation=5,
        sigma=0.1,
        episodes=1,
        elite_candidates=10,
        elite_episodes=5,
        test_episodes=400,
        hidden=[4],
    )
    noisy = Noisy()
    evolution = Evolution(
        ga, EnvSpec(threshold=20.0), Run(tmp_path, "ga", seed=3, device="cpu"), noisy, pop.PolicyLayout(4, 2, [4])
    )
    state = State(torch.zeros(40, pop.PolicyLayout(4, 2, [4]).size))
    rows = [evolution.generation(state, torch.Generator().manual_seed(g)) for g in range(3)]
    population, selection, test = noisy.calls[-3:]
    assert test.shape == (1, 400)  # the elite alone, on seeds of its own
    assert not set(test.ravel()) & (set(selection.ravel()) | set(population.ravel()))
    np.testing.assert_array_equal(test, generation_seeds(3, 2, TEST, (1, 400)))
    for row in rows:  # the best of 10 means of 5 N(0, 100^2) draws: ~ +1.5 sd of a mean (~ +69)
        assert row["elite_fitness"] > 30 and abs(row["elite_test_return"]) < 20  # 400 draws: sd 5
    expected = np.array([np.random.default_rng(int(s)).normal(0.0, 100.0) for s in test[0]]).mean()
    assert rows[-1]["elite_test_return"] == pytest.approx(expected)
    assert state.best_fitness == max(r["elite_test_return"] for r in rows) < 20
    assert state.solved_generation is None  # the biased score would have "solved" it (threshold 20)


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
    assert list(rows.columns) == [
        "generation",
        "best_fitness",
        "mean_fitness",
        "median_fitness",
        "elite_fitness",
        "elite_test_return",
        "sigma",
        "evaluations",
        "env_steps",
        "seconds",
    ]
    assert rows["generation"].tolist() == [1, 2, 3] and (rows["evaluations"] == [41, 82, 123]).all()
    assert (rows["best_fitness"] >= rows["median_fitness"]).all() and (rows["sigma"] == 0.1).all()
    assert out["status"] == "ok" and out["best_eval_return"] == rows["elite_test_return"].max()
    assert out["env_steps"] == rows["env_steps"].iloc[-1] and (tmp_path / "run" / "fitness.png").stat().st_size
    saved = ga_task(tmp_path / "eval", "mode=eval", f"source={tmp_path / 'run'}", "eval.episodes=4")
    net = QNetwork((4,), 2, [8])
    net.load_state_dict(torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"])
    expected = alone(net, [20_000 + i for i in range(4)])  # seed 0 + 20000, one more per episode
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "eval" / "returns.txt"), expected)
    assert saved["eval_return_mean"] == pytest.approx(np.mean(expected))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["agent.truncation=17"], "agent.truncation=17"),
        (["env.id=Pendulum-v1"], "discrete actions"),
        (["mode=eval"], "needs source"),
        (["agent.backend=numpy", "env.id=Acrobot-v1"], "no numpy vector"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, overrides, message):
    with pytest.raises((UserError, InstantiationException), match=message):  # Hydra wraps the agent's
        ga_task(tmp_path / "run", *overrides)
