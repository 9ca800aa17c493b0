"""DQN family: replay, targets against hand computation, dueling centring, the CartPole loop, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TableNet, cli, summary

from nas_cli.agents.dqn import DQN, td_loss, train
from nas_cli.agents.envs import EnvSpec, make_envs
from nas_cli.agents.networks import DuelingHead, NumpyGreedy, QNetwork
from nas_cli.agents.replay import Batch, ReplayBuffer
from nas_cli.runs.lifecycle import Run


def test_replay_is_a_ring_and_samples_what_was_stored():
    rb = ReplayBuffer(5, (2,))
    for i in range(7):
        rb.add(np.array([[i, i]]), [i % 2], [float(i)], np.array([[i + 1, i + 1]]), [i == 6], [False])
    assert rb.size == 5 and rb.pos == 2
    assert sorted(rb.rewards.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]  # the two oldest were overwritten
    batch = rb.sample(64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.next_obs, batch.obs + 1)  # transitions stay whole
    torch.testing.assert_close(batch.obs[:, 0], batch.rewards)
    assert batch.terminated.equal(batch.rewards == 6)


def batch_of(obs, actions, rewards, next_obs, terminated, truncated) -> Batch:
    t = torch.tensor
    return Batch(
        t(obs, dtype=torch.float32).view(-1, 1),
        t(actions),
        t(rewards, dtype=torch.float32),
        t(next_obs, dtype=torch.float32).view(-1, 1),
        t(terminated),
        t(truncated),
    )


# states 0..2, actions 0..1
ONLINE = [[1.0, 2.0], [3.0, 0.5], [0.0, 4.0]]
TARGET = [[0.5, 1.5], [2.0, 10.0], [7.0, 1.0]]
BATCH = batch_of([0, 1, 2], [1, 0, 1], [1.0, 0.5, -1.0], [1, 2, 1], [False, False, True], [False, True, False])


@pytest.mark.parametrize("double", [False, True])
def test_td_targets_match_hand_computation(double):
    gamma = 0.9
    loss, q = td_loss(TableNet(ONLINE), TableNet(TARGET), BATCH, gamma, double)
    # vanilla: max of the target row; double: the target's value at the online arg-max
    next_values = [10.0, 7.0, 10.0] if not double else [2.0, 1.0, 2.0]
    # transition 2 terminated: no bootstrap; transition 1 was truncated: it still bootstraps
    targets = [1.0 + gamma * next_values[0], 0.5 + gamma * next_values[1], -1.0]
    taken = [2.0, 3.0, 4.0]
    assert q.tolist() == taken
    assert loss.item() == pytest.approx(np.mean([(t - v) ** 2 for t, v in zip(targets, taken)]))


def test_huber_loss_option():
    loss, q = td_loss(TableNet(ONLINE), TableNet(TARGET), BATCH, 0.9, False, loss="huber")
    diffs = np.array([2.0 - 10.0, 3.0 - 6.8, 4.0 + 1.0])
    expected = np.where(np.abs(diffs) < 1, 0.5 * diffs**2, np.abs(diffs) - 0.5).mean()
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_dueling_advantages_are_centred(aggregation):
    torch.manual_seed(0)
    head = DuelingHead(6, 4, hidden=8, aggregation=aggregation)
    h = torch.randn(5, 6)
    centred = head.advantages(h)
    raw = head.advantage(h)
    if aggregation == "mean":
        torch.testing.assert_close(centred.mean(1), torch.zeros(5), atol=1e-6, rtol=0)
        torch.testing.assert_close(centred, raw - raw.mean(1, keepdim=True))
    else:
        torch.testing.assert_close(centred.amax(1), torch.zeros(5))
        torch.testing.assert_close(centred, raw - raw.amax(1, keepdim=True))
    torch.testing.assert_close(head(h), head.value(h) + centred)


@pytest.mark.parametrize("dueling, aggregation", [(True, "mean"), (True, "max")])
def test_dueling_td_loss_uses_the_aggregated_q(dueling, aggregation):
    torch.manual_seed(1)
    net = QNetwork((3,), 2, hidden=[8, 8], dueling=dueling, aggregation=aggregation)
    target = QNetwork((3,), 2, hidden=[8, 8], dueling=dueling, aggregation=aggregation)
    batch = Batch(
        torch.randn(4, 3),
        torch.tensor([0, 1, 1, 0]),
        torch.randn(4),
        torch.randn(4, 3),
        torch.tensor([False, True, False, False]),
        torch.zeros(4, dtype=torch.bool),
    )
    loss, _ = td_loss(net, target, batch, 0.99, double=True)
    with torch.no_grad():
        nxt = target(batch.next_obs).gather(1, net(batch.next_obs).argmax(1, keepdim=True)).squeeze(1)
        y = batch.rewards + 0.99 * nxt * (~batch.terminated).float()
        q = net(batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
    assert loss.item() == pytest.approx(((q - y) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("dueling,aggregation", [(False, "mean"), (True, "mean"), (True, "max")])
def test_numpy_greedy_policy_matches_the_torch_network_and_follows_training(dueling, aggregation):
    torch.manual_seed(0)
    net = QNetwork((4,), 3, [32, 16], dueling, aggregation)
    greedy = NumpyGreedy.of(net)
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    np.testing.assert_array_equal(greedy(obs), net(torch.from_numpy(obs)).argmax(1).numpy())
    # the numpy views share the weights: an optimizer step and a load_state_dict are seen without a rebuild
    opt = torch.optim.Adam(net.parameters(), lr=0.5, fused=True)
    net(torch.from_numpy(obs)).pow(2).mean().backward()
    opt.step()
    np.testing.assert_array_equal(greedy(obs), net(torch.from_numpy(obs)).argmax(1).numpy())
    net.load_state_dict(QNetwork((4,), 3, [32, 16], dueling, aggregation).state_dict())
    np.testing.assert_array_equal(greedy(obs), net(torch.from_numpy(obs)).argmax(1).numpy())
    assert NumpyGreedy.of(QNetwork((4, 84, 84), 3)) is None  # the CNN acts through torch


def test_sync_envs_step_exactly_as_gymnasiums_vector_env():
    import gymnasium as gym

    ours, theirs = make_envs("CartPole-v1", 3), gym.make_vec("CartPole-v1", 3, vectorization_mode="sync")
    np.testing.assert_array_equal(ours.reset(seed=7)[0], theirs.reset(seed=7)[0])
    rng, ends = np.random.default_rng(0), 0
    for _ in range(300):
        actions = rng.integers(0, 2, 3)
        mine = ours.step(actions)[:4]
        for a, b in zip(mine, theirs.step(actions)[:4]):
            np.testing.assert_array_equal(a, b)
        ends += int(mine[2].sum())
    assert ends > 5  # episodes ended and autoreset along the way


def test_epsilon_falls_linearly_then_stays():
    agent = DQN(start_epsilon=1.0, end_epsilon=0.1, exploration_fraction=0.5)
    assert [agent.epsilon(s, 1000) for s in (0, 250, 500, 900)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_the_step_after_an_episode_end_is_not_stored(tmp_path):
    from nas_cli.runs import checkpoint

    env = EnvSpec("CartPole-v1", num_envs=2)
    agent = DQN(learning_starts=10_000, buffer_size=5000, hidden=[8])  # random play only
    result = train(
        agent,
        env,
        Run(tmp_path, "dqn", seed=0, device="cpu"),
        total_steps=1000,
        eval_every=1000,
        eval_episodes=1,
        log_every=500,
        progress=False,
    )
    replay = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["replay"]
    episodes = result["episodes"]
    # each finished episode costs its env one autoreset step, which is not a transition
    assert 1000 - episodes <= replay["size"] <= 1000 - episodes + 2
    # CartPole ends when |x| > 2.4 or |angle| > 12 degrees: a stored start state is never a terminal one
    angle = 12 * 2 * math.pi / 360
    inside = (replay["obs"][:, 0].abs() <= 2.4) & (replay["obs"][:, 2].abs() <= angle)
    assert inside.all()
    ends = replay["terminated"]
    outside_next = (replay["next_obs"][:, 0].abs() > 2.4) | (replay["next_obs"][:, 2].abs() > angle)
    assert ends.equal(outside_next) and int(ends.sum()) == episodes


@pytest.mark.slow
def test_cartpole_smoke_run_then_eval_mode(tmp_path):
    run = tmp_path / "run"
    out = cli(
        "dqn",
        "total_steps=3000",
        "eval.every=1500",
        "eval.episodes=3",
        "agent.learning_starts=500",
        "agent.train_frequency=4",
        "agent.gradient_steps=1",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    record = summary(run)
    assert record["status"] == "ok" and record["steps"] == 3000 and record["threshold"] == 475.0
    for name in ("metrics.csv", "best.pt", "checkpoints/last.pt", "returns.png"):
        assert (run / name).is_file(), name
    rows = pd.read_csv(run / "metrics.csv")
    assert {"step", "return", "length", "loss", "q_mean", "epsilon", "eval_return", "steps_per_s"} <= set(rows)
    assert rows["eval_return"].notna().sum() == 2
    assert record["best_eval_return"] == rows["eval_return"].max()

    out = cli("dqn", "mode=eval", f"source={run}", "eval.episodes=4", f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert summary(tmp_path / "ev")["episodes"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["env.id=CartPole-v99"], "unknown environment"),
        (["mode=eval"], "mode=eval needs source"),
        (["agent.aggregation=median", "agent.dueling=true"], "agent.aggregation=median"),
        (["agent.hidden=[]", "agent.dueling=true"], "agent.dueling=true needs agent.hidden"),
        (["env.num_envs=0"], "env.num_envs=0"),
    ],
)
@pytest.mark.slow
def test_dqn_errors_are_one_line(tmp_path, args, message):
    out = cli("dqn", *args, cwd=tmp_path)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


def test_nature_cnn_has_the_published_shape():
    net = QNetwork((4, 84, 84), 6, hidden=[512])
    convs = (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64)
    assert sum(p.numel() for p in net.parameters()) == convs + (3136 * 512 + 512) + (512 * 6 + 6)
    assert net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape == (2, 6)


def test_atari_loop_learns_from_frame_stacks(tmp_path):
    pytest.importorskip("ale_py")
    env = EnvSpec("ALE/Pong-v5", num_envs=2, atari=True, frame_stack=4, clip_rewards=True, fire_reset=True)
    agent = DQN(learning_starts=40, buffer_size=200, batch_size=8, train_frequency=20, gradient_steps=1, hidden=[512])
    result = train(
        agent,
        env,
        Run(tmp_path, "dqn", seed=0, device="cpu"),
        total_steps=80,
        eval_every=10_000,
        eval_episodes=1,
        log_every=40,
        progress=False,
    )
    assert result["steps"] == 80
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["loss"].notna().any()  # it learned from stacked frames
    assert agent.q.body[0].in_channels == 4
