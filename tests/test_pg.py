"""Policy gradients: returns-to-go, GAE and the loss against hand computation, the baseline's variance
reduction, truncation vs termination, Gaussian actions, the CartPole loop and the CLI."""

from __future__ import annotations

import math
from collections import deque

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TableNet, cli, compose_task, in_process, summary

from nas_cli.agents.envs import EnvSpec
from nas_cli.agents.pg import Loop, PolicyGradient, Rollout, collect, gae, returns_to_go, train
from nas_cli.runs.lifecycle import Run

GAMMA = 0.9


def tabular_agent(logits, values, **kwargs) -> PolicyGradient:
    """An agent over integer states whose policy logits and V are tables."""
    agent = PolicyGradient(**{"algo": "reinforce", "gamma": GAMMA, "max_grad_norm": None, **kwargs})
    agent.build(gym.spaces.Box(0, 3, (1,)), gym.spaces.Discrete(2), torch.device("cpu"))
    agent.net.policy = TableNet(logits)
    agent.net.value = TableNet([[v] for v in values])
    return agent


def episode(states, actions, rewards, terminated, truncated) -> Rollout:
    """One environment's episode as a (T, 1) rollout; ``states`` has T+1 entries (the last: after the end)."""
    t = torch.tensor
    ended = [a or b for a, b in zip(terminated, truncated)]
    return Rollout(
        t(states, dtype=torch.float32).view(-1, 1, 1),
        t(actions).view(-1, 1),
        t(rewards, dtype=torch.float32).view(-1, 1),
        t(terminated).view(-1, 1),
        t(ended).view(-1, 1),
        torch.ones(len(rewards), 1, dtype=torch.bool),
    )


LOGITS = [[0.0, 1.0], [2.0, -1.0], [0.5, 0.5], [0.0, 0.0]]
VALUES = [0.5, 1.0, -1.0, 4.0]


@pytest.mark.parametrize("truncated", [False, True], ids=["terminated", "truncated"])
def test_reinforce_loss_and_returns_to_go_match_hand_computation_on_a_3_step_episode(truncated):
    # states 0 -> 1 -> 2 -> 3 (the observation after the last step), actions 1, 0, 1, rewards 1, 2, 3
    batch = episode([0, 1, 2, 3], [1, 0, 1], [1.0, 2.0, 3.0], [False, False, not truncated], [False, False, truncated])
    # a terminated episode's tail is worth nothing; a truncated one's is worth V(s_3) = 4
    tail = GAMMA * VALUES[3] if truncated else 0.0
    g = [1 + GAMMA * 2 + GAMMA**2 * 3 + GAMMA**2 * tail, 2 + GAMMA * 3 + GAMMA * tail, 3 + tail]
    values = torch.tensor(VALUES, dtype=torch.float32).view(-1, 1)
    rtg = returns_to_go(batch.rewards, values[1:], batch.terminated, batch.ended, GAMMA)
    assert rtg.view(-1).tolist() == pytest.approx(g)

    agent = tabular_agent(LOGITS, VALUES, ent_coef=0.01)
    out = agent.losses(batch)
    logp = [
        math.log(math.exp(LOGITS[s][a]) / sum(math.exp(x) for x in LOGITS[s])) for s, a in zip([0, 1, 2], [1, 0, 1])
    ]
    adv = [g[t] - VALUES[t] for t in range(3)]
    entropy = [-sum(p * math.log(p) for p in np.exp(LOGITS[s]) / np.exp(LOGITS[s]).sum()) for s in range(3)]
    assert out.policy.item() == pytest.approx(-np.mean([lp * a for lp, a in zip(logp, adv)]), rel=1e-6)
    assert out.value.item() == pytest.approx(np.mean(np.square(adv)), rel=1e-6)
    assert out.entropy.item() == pytest.approx(np.mean(entropy), rel=1e-6)
    assert out.total.item() == pytest.approx(out.policy.item() + 0.5 * out.value.item() - 0.01 * out.entropy.item())
    # the score-function gradient: d(-log pi(a|s) A)/d logits = -(onehot(a) - pi(.|s)) A, averaged over the steps
    out.policy.backward()
    expected = np.zeros((4, 2))
    for t, (s, a) in enumerate(zip([0, 1, 2], [1, 0, 1])):
        pi = np.exp(LOGITS[s]) / np.exp(LOGITS[s]).sum()
        expected[s] -= (np.eye(2)[a] - pi) * adv[t] / 3
    np.testing.assert_allclose(agent.net.policy.values.grad.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert agent.net.value.values.grad is None or not agent.net.value.values.grad.any()  # A is a constant


def test_gae_matches_hand_computation():
    lam = 0.8
    # two environments, four steps; env 0's episode terminates at t=1, env 1's is truncated at t=2
    r = torch.tensor([[1.0, 0.5], [2.0, -1.0], [0.0, 3.0], [1.0, 1.0]])
    v = torch.tensor([[0.2, 0.1], [0.4, 0.3], [0.6, 0.5], [0.8, 0.7], [1.0, 0.9]])  # V of the 5 observations
    terminated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    truncated = torch.tensor([[False, False], [False, False], [False, True], [False, False]])
    ended = terminated | truncated
    out = gae(r, v[:-1], v[1:], terminated, ended, GAMMA, lam)

    def delta(t, e):  # bootstrap unless terminated (a truncation still bootstraps)
        return r[t, e].item() + GAMMA * v[t + 1, e].item() * (not terminated[t, e]) - v[t, e].item()

    def by_hand(t, e):  # A_t = sum_k (gamma lam)^k delta_{t+k}, up to the episode's end or the rollout's
        total, k = 0.0, 0
        while t + k < 4:
            total += (GAMMA * lam) ** k * delta(t + k, e)
            if ended[t + k, e]:
                break
            k += 1
        return total

    expected = [[by_hand(t, e) for e in range(2)] for t in range(4)]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    # lambda = 1: returns-to-go minus V (REINFORCE's advantage); lambda = 0: the one-step TD error
    rtg = returns_to_go(r, v[1:], terminated, ended, GAMMA)
    torch.testing.assert_close(gae(r, v[:-1], v[1:], terminated, ended, GAMMA, 1.0), rtg - v[:-1])
    np.testing.assert_allclose(
        gae(r, v[:-1], v[1:], terminated, ended, GAMMA, 0.0).numpy(),
        [[delta(t, e) for e in range(2)] for t in range(4)],
        rtol=1e-6,
    )


def policy_gradients(agent: PolicyGradient, batch: Rollout) -> np.ndarray:
    """One flattened policy gradient per environment column (one episode each)."""
    params = list(agent.net.policy.parameters())
    rows = []
    for j in range(batch.rewards.shape[1]):
        column = Rollout(
            *(
                x[:, j : j + 1]
                for x in (batch.obs, batch.actions, batch.rewards, batch.terminated, batch.ended, batch.valid)
            )
        )
        steps = int(column.valid.sum())  # the loss averages over steps: the episode's gradient is their sum
        grads = torch.autograd.grad(agent.losses(column).policy * steps, params)
        rows.append(torch.cat([g.flatten() for g in grads]).numpy())
    return np.stack(rows)


def episodes(agent: PolicyGradient, envs, n: int, seed: int) -> Rollout:
    loop = Loop(n, eval_every=10**9)
    loop.start_episodes(envs.reset(seed=seed)[0])
    return collect(agent, envs, loop, deque())


def test_the_learned_baseline_lowers_the_policy_gradients_variance(one_thread):
    """On a fixed policy, fit V to the returns of 100 episodes, then compare the spread of the one-episode
    gradients of 100 fresh episodes with and without subtracting it."""
    torch.manual_seed(0)
    n = 100
    agent = PolicyGradient(algo="reinforce", n_steps=None, episodes=n, gamma=0.99)
    envs = EnvSpec("CartPole-v1", num_envs=n).make()
    agent.build(envs.single_observation_space, envs.single_action_space, torch.device("cpu"))
    agent.sampler.manual_seed(0)
    with torch.no_grad():  # a fixed policy, not quite uniform
        agent.net.policy[-1].weight.mul_(5)
    fit = episodes(agent, envs, n, seed=0)
    value_opt = torch.optim.Adam(agent.net.value.parameters(), lr=0.03)
    for _ in range(100):  # the value net only: the policy stays fixed
        value_opt.zero_grad()
        agent.losses(fit).value.backward()
        value_opt.step()
    fresh = episodes(agent, envs, n, seed=1)
    with_baseline = policy_gradients(agent, fresh)
    agent.baseline = False
    without = policy_gradients(agent, fresh)
    envs.close()
    variance = {name: g.var(0, ddof=1).sum() for name, g in (("with", with_baseline), ("without", without))}
    assert variance["with"] < 0.6 * variance["without"], variance  # measured: 0.32
    # ...for the same expected gradient: a baseline that does not depend on the action adds zero on average,
    # so the two means differ by noise only (the norm of a mean of n draws: about sqrt(trace(cov) / n))
    gap = with_baseline - without
    assert np.linalg.norm(gap.mean(0)) < 2 * np.sqrt(gap.var(0, ddof=1).sum() / n)


def test_gaussian_policy_log_prob_entropy_and_clipped_actions_on_pendulum(tmp_path):
    agent = PolicyGradient(algo="a2c", n_steps=5, log_std_init=-0.5)
    env = EnvSpec("Pendulum-v1", num_envs=2)
    result = train(
        agent,
        env,
        Run(tmp_path, "pg", seed=0, device="cpu"),
        total_steps=400,
        eval_every=400,
        eval_episodes=1,
        log_every=100,
        progress=False,
    )
    assert result["steps"] == 400 and result["threshold"] is None
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["policy_loss"].notna().all() and rows["eval_return"].notna().sum() == 1
    # the diagonal Gaussian: log N(a; mu, sigma^2) summed over the action's dimensions, its entropy
    obs = torch.randn(6, 3)
    actions = torch.randn(6, 1) * 3
    dist, _ = agent.net(obs)
    mu, sigma = agent.net.policy(obs), agent.net.log_std.exp()
    logp = (-0.5 * ((actions - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(dist.log_prob(actions), logp)
    torch.testing.assert_close(dist.entropy(), (0.5 + 0.5 * math.log(2 * math.pi) + sigma.log()).sum().expand(6))
    assert agent.net.log_std.requires_grad and agent.net.log_std.item() != -0.5  # learned
    wild = np.array([[-7.0], [0.5], [9.0]])
    np.testing.assert_array_equal(agent.env_actions(wild), [[-2.0], [0.5], [2.0]])  # Pendulum's torque box


def test_reset_steps_are_not_transitions_and_episode_batches_are_whole():
    agent = PolicyGradient(algo="reinforce", n_steps=None, episodes=4)
    envs = EnvSpec("CartPole-v1", num_envs=2).make()
    agent.build(envs.single_observation_space, envs.single_action_space, torch.device("cpu"))
    agent.sampler.manual_seed(0)
    batch = episodes(agent, envs, 2, seed=0)
    envs.close()
    angle = 12 * 2 * math.pi / 360
    for j in range(2):
        valid = batch.valid[:, j]
        assert int((batch.ended[:, j] & valid).sum()) == 2  # two whole episodes from each environment
        last = int(valid.nonzero().max())
        assert batch.ended[last, j]  # ... and nothing after the second one's end is used
        # every used step starts inside CartPole's bounds: the step after an end (a reset) is never used
        obs = batch.obs[:-1, j][valid]
        assert ((obs[:, 0].abs() <= 2.4) & (obs[:, 2].abs() <= angle)).all()
        ends = (batch.ended[:-1, j] & valid[:-1]).nonzero().view(-1)
        assert not valid[ends + 1].any()


def test_a_time_limit_truncation_bootstraps_from_the_final_observation_in_the_loop():
    """CartPole cut at 5 steps: the rollout marks the cut as ended, not terminated, skips the reset step,
    and the value target there is r + gamma * V(final observation)."""
    from gymnasium.envs.classic_control import CartPoleEnv

    if "ShortCartPole-v0" not in gym.registry:
        gym.register("ShortCartPole-v0", entry_point=CartPoleEnv, max_episode_steps=5)
    agent = PolicyGradient(algo="a2c", n_steps=8, gamma=GAMMA)
    envs = EnvSpec("ShortCartPole-v0").make()
    agent.build(envs.single_observation_space, envs.single_action_space, torch.device("cpu"))
    loop = Loop(1, eval_every=10**9)
    loop.start_episodes(envs.reset(seed=3)[0])
    batch = collect(agent, envs, loop, deque())
    envs.close()
    ended, terminated, valid = batch.ended[:, 0], batch.terminated[:, 0], batch.valid[:, 0]
    assert ended.nonzero().view(-1).tolist() == [4] and not terminated.any()  # cut by the limit, not failed
    assert valid.tolist() == [True] * 5 + [False] + [True] * 2  # step 5 is the reset
    x, x_dot = batch.obs[4, 0, 0].item(), batch.obs[4, 0, 1].item()
    assert batch.obs[5, 0, 0].item() == pytest.approx(x + 0.02 * x_dot, abs=1e-6)  # obs[5] follows step 4 (Euler)
    with torch.no_grad():
        values = agent.net(batch.obs.flatten(0, 1))[1].view(9, 1)
        _, target = agent.advantages(batch, values)
    assert target[4, 0].item() == pytest.approx(1.0 + GAMMA * values[5, 0].item(), rel=1e-6)  # obs[5]: the final one
    assert target[3, 0].item() == pytest.approx(1.0 + GAMMA * target[4, 0].item(), rel=1e-6)  # lambda = 1: chained


@pytest.mark.slow
def test_default_a2c_solves_cartpole_quickly(tmp_path):
    """The shipped defaults reach the 475 threshold (greedy evaluation) within 50k steps on seed 0. With SB3's
    RMSprop eps 1e-5 (torch's 1e-8 had solved seed 0 by 5k steps) seeds 0, 1, 2 solved at 50k, 20k and 60k steps
    (evaluations every 10k; the zoo's CartPole budget is 500k)."""
    from nas_cli.commands import pg

    cfg = compose_task("pg", tmp_path, ["total_steps=50000", "eval.every=10000", "eval.episodes=10", "progress=false"])
    record = pg.task(cfg)
    assert record["status"] == "ok" and record["solved_step"] is not None and record["solved_step"] <= 50000
    assert record["best_eval_return"] >= 475


@pytest.mark.slow
def test_cartpole_cli_run_then_eval_mode(tmp_path):
    run = tmp_path / "run"
    out = cli(
        "pg",
        "total_steps=2000",
        "eval.every=1000",
        "eval.episodes=3",
        "log_every=400",
        "agent.algo=reinforce",
        "progress=false",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    record = summary(run)
    assert record["status"] == "ok" and record["steps"] >= 2000 and record["threshold"] == 475.0
    for name in ("metrics.csv", "best.pt", "checkpoints/last.pt", "returns.png"):
        assert (run / name).is_file(), name
    rows = pd.read_csv(run / "metrics.csv")
    assert {
        "step",
        "episodes",
        "return",
        "length",
        "policy_loss",
        "value_loss",
        "entropy",
        "eval_return",
        "eval_return_sampled",
        "steps_per_s",
    } <= set(rows)
    assert rows["eval_return"].notna().sum() == 2 and record["best_eval_return"] == rows["eval_return"].max()
    assert record["episodes"] == rows["episodes"].iloc[-1] >= 8  # at least one batch of 8 whole episodes

    out = cli("pg", "mode=eval", f"source={run}", "eval.episodes=4", f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ev = summary(tmp_path / "ev")
    assert ev["episodes"] == 4 and ev["eval_return_min"] <= ev["eval_return_mean"] <= ev["eval_return_max"]
    assert np.loadtxt(tmp_path / "ev" / "returns.txt").shape == (4, 2)  # greedy, sampled


@pytest.mark.parametrize(
    "args, message",
    [
        (["agent.algo=ppo"], "agent.algo=ppo"),
        (["agent.algo=reinforce", "agent.gae_lambda=0.95"], "agent.gae_lambda=0.95"),
        (["agent.algo=reinforce", "agent.episodes=3"], "agent.episodes=3"),
        (["agent.activation=gelu"], "agent.activation=gelu"),
        (["agent.baseline=false"], "agent.baseline=false"),
        (["mode=eval"], "mode=eval needs source"),
    ],
)
def test_pg_errors_are_one_line(tmp_path, args, message, capsys, one_thread):
    capsys.readouterr()
    code = in_process("pg", *args, "total_steps=100", "progress=false", f"hydra.run.dir={tmp_path / 'run'}")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


# -- per-environment A2C defaults (SB3 / rl-baselines3-zoo hyperparams/a2c.yml) -----------------------------------


def composed_pg(tmp_path, *overrides):
    from hydra.core.global_hydra import GlobalHydra

    try:
        return compose_task("pg", tmp_path, list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_env_atari_brings_the_zoos_a2c_atari_recipe(tmp_path):
    """rl-zoo's a2c.yml, atari: 16 envs, ent_coef 0.01, vf_coef 0.25, RMSprop eps 1e-5; SB3's A2C defaults for the
    rest: n_steps 5, lr 7e-4 (constant: the recipe names no schedule), alpha 0.99."""
    cfg = composed_pg(tmp_path, "env=atari")
    assert cfg.env.num_envs == 16 and cfg.env.atari
    agent = cfg.agent
    assert (agent.algo, agent.n_steps, agent.ent_coef, agent.vf_coef) == ("a2c", 5, 0.01, 0.25)
    assert (agent.gae_lambda, agent.gamma, agent.max_grad_norm, agent.normalize_advantage) == (1.0, 0.99, 0.5, False)
    assert agent.rms_prop_eps == 1e-5 and agent.lr_schedule == "constant" and list(agent.hidden) == [512]
    assert cfg.optim._target_ == "torch.optim.RMSprop" and cfg.optim.lr == 7e-4 and cfg.optim.alpha == 0.99
    cartpole = composed_pg(tmp_path)  # the CartPole recipe stays: 8 envs, no entropy bonus, vf_coef 0.5
    assert (cartpole.env.num_envs, cartpole.agent.ent_coef, cartpole.agent.vf_coef) == (8, 0.0, 0.5)
    assert cartpole.agent.rms_prop_eps == 1e-5 and cartpole.optim.lr == 7e-4


def test_an_atari_observation_builds_sb3s_shared_cnn_trunk_and_rmsprop_eps(tmp_path):
    from hydra.utils import instantiate

    cfg = composed_pg(tmp_path, "env=atari")
    agent = instantiate(cfg.agent)
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)  # what env=atari gives: no ROM needed
    agent.build(frames, gym.spaces.Discrete(4), torch.device("cpu"), instantiate(cfg.optim))
    net = agent.net
    kinds = [type(m).__name__ for m in net.trunk]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU"]
    assert (net.trunk[7].in_features, net.trunk[7].out_features) == (3136, 512)  # NatureCNN
    assert isinstance(net.policy[0], torch.nn.Linear) and len(net.policy) == 1 and net.policy[0].out_features == 4
    assert isinstance(net.value[0], torch.nn.Linear) and len(net.value) == 1 and net.value[0].in_features == 512
    # SB3's CnnPolicy for 4 actions: 8224 + 32832 + 36928 (convs) + 1606144 (512) + 2052 (pi) + 513 (V)
    assert sum(p.numel() for p in net.parameters()) == 1_686_693
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    dist, value = net(obs)
    assert dist.logits.shape == (2, 4) and value.shape == (2,)
    trunk = list(net.trunk.parameters())
    for loss in (dist.log_prob(torch.tensor([0, 3])).sum(), value.sum()):  # both heads train the one trunk
        assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, trunk, retain_graph=True))
    # SB3's init: orthogonal, gain 0.01 at the policy's output (rows orthogonal with norm 0.01)
    w = net.policy[0].weight
    torch.testing.assert_close(w @ w.T, 1e-4 * torch.eye(4), atol=1e-7, rtol=0)
    group = agent.optimizer.param_groups[0]
    assert type(agent.optimizer) is torch.optim.RMSprop
    assert (group["eps"], group["alpha"], group["lr"]) == (1e-5, 0.99, 7e-4)


def test_rmsprop_eps_and_the_linear_schedule(tmp_path):
    from functools import partial

    agent = PolicyGradient(lr_schedule="linear")
    agent.build(
        gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), torch.device("cpu"), partial(torch.optim.RMSprop, lr=1e-3)
    )
    assert agent.optimizer.param_groups[0]["eps"] == 1e-5  # SB3's A2C, not torch's 1e-8
    agent.set_progress(0.25)
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    agent.set_progress(-0.1)  # past the end (the last rollout overshoots): 0, never negative
    assert agent.optimizer.param_groups[0]["lr"] == 0.0
    named = PolicyGradient()
    named.build(
        gym.spaces.Box(-1, 1, (4,)),
        gym.spaces.Discrete(2),
        torch.device("cpu"),
        partial(torch.optim.RMSprop, lr=1e-3, eps=1e-8),
    )  # +optim.eps=1e-8: the config's own wins
    assert named.optimizer.param_groups[0]["eps"] == 1e-8
    constant = PolicyGradient()
    constant.build(
        gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), torch.device("cpu"), partial(torch.optim.Adam, lr=1e-3)
    )
    constant.set_progress(0.5)
    assert constant.optimizer.param_groups[0]["lr"] == 1e-3 and constant.optimizer.param_groups[0]["eps"] == 1e-8
