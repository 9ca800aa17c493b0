"""Atari DQN fidelity: reward clipping, episodic life, frame stacks, the Nature settings that env=atari brings,
the dueling gradient rescale, and the dqn_atari preset on a real ALE game (ale-py ships its ROMs)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_task
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nas_cli.agents.dqn import DQN, LOSSES, train
from nas_cli.agents.envs import LIFE_LOSS, EnvSpec, EpisodicLife, SyncEnvs
from nas_cli.agents.networks import QNetwork
from nas_cli.agents.replay import ReplayBuffer
from nas_cli.runs import checkpoint
from nas_cli.runs.lifecycle import Run

LIFE = 4  # agent steps a life lasts in the scripted game below...
LIVES = 3
REWARDS = [5.0, -2.0, 0.0, 3.0]  # ...and the reward of its n-th step overall is REWARDS[(n - 1) % 4]


class LivesGame(gym.Env):
    """A scripted game with lives, actions ignored: after step n, lives = 3 - n // 4; the game ends at n = 12.

    The observation is [n, lives], so a stack of observations can be checked by hand.
    """

    observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.n, self.resets = 0, 0

    def _obs(self):
        return np.array([self.n, self.lives], dtype=np.float32)

    @property
    def lives(self) -> int:
        return LIVES - self.n // LIFE

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n, self.resets = 0, self.resets + 1
        return self._obs(), {"lives": self.lives}

    def step(self, action):
        self.n += 1
        return self._obs(), REWARDS[(self.n - 1) % 4], self.lives == 0, False, {"lives": self.lives}


GAME_ID = "NasCliTest/LivesGame-v0"
if GAME_ID not in gym.registry:
    gym.register(GAME_ID, entry_point=LivesGame, disable_env_checker=True)


def test_a_lost_life_is_terminal_but_does_not_reset_the_game():
    game = LivesGame()
    env = EpisodicLife(game)
    env.reset(seed=0)
    outcomes = [env.step(0) for _ in range(LIFE)]
    assert [o[2] for o in outcomes] == [False, False, False, True]  # the 4th step loses a life: terminal
    assert outcomes[-1][4][LIFE_LOSS] and not outcomes[-1][3]
    obs, info = env.reset()  # the next reset goes on with the same game: one no-op step
    assert game.resets == 1 and obs.tolist() == [LIFE + 1, LIVES - 1] and info["lives"] == LIVES - 1
    # the last life: the game's own end is terminal without a life-loss mark, and only it resets the game
    outcomes = [env.step(0) for _ in range(3)]
    assert outcomes[-1][2] and outcomes[-1][4][LIFE_LOSS]
    env.reset()
    outcomes = [env.step(0) for _ in range(3)]
    assert outcomes[-1][2] and not outcomes[-1][4][LIFE_LOSS] and game.n == 3 * LIFE
    assert game.resets == 1
    env.reset()
    assert game.resets == 2 and game.n == 0


def test_frame_stack_is_the_last_frames_stacked_by_hand_across_lives():
    envs = SyncEnvs(EnvSpec(GAME_ID, episodic_life=True, frame_stack=4).make_one, 1)
    obs, _ = envs.reset(seed=0)
    frame = lambda n: [n, LIVES - n // LIFE]  # noqa: E731  the game's observation after its step n
    stack = [frame(0)] * 4  # gymnasium pads a fresh stack with the reset observation
    np.testing.assert_array_equal(obs[0], stack)
    # loop steps: the game's steps, and after each end the autoreset: a no-op (a lost life) or a new game,
    # either way a fresh stack
    script = [
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 1),
        (6, 0),
        (7, 0),
        (8, 0),
        (9, 1),
        (10, 0),
        (11, 0),
        (12, 0),
        (0, 1),
        (1, 0),
    ]
    for n, fresh in script:
        obs, *_ = envs.step(np.zeros(1, dtype=int))
        stack = [frame(n)] * 4 if fresh else [*stack[1:], frame(n)]
        np.testing.assert_array_equal(obs[0], stack, err_msg=f"after game step {n}")


def test_frame_stack_replay_keeps_one_new_frame_and_samples_the_same_transitions():
    envs = SyncEnvs(EnvSpec(GAME_ID, episodic_life=True, frame_stack=4).make_one, 1)
    full, lean = ReplayBuffer(64, (4, 2)), ReplayBuffer(64, (4, 2), frame_stack=True)
    obs, _ = envs.reset(seed=0)
    ended = np.zeros(1, dtype=bool)
    for _ in range(40):  # three games: across lost lives and new games
        next_obs, rewards, terminated, truncated, _ = envs.step(np.zeros(1, dtype=int))
        if not ended[0]:  # the autoreset step is not a transition
            for replay in (full, lean):
                replay.add(obs, [0], rewards, next_obs, terminated, truncated)
        obs, ended = next_obs, terminated | truncated
    assert lean.next_obs.shape[1:] == (1, 2) and full.size == lean.size == 31
    a, b = (r.sample(256, torch.Generator().manual_seed(1)) for r in (full, lean))
    for field in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field))


def test_replay_holds_clipped_rewards_while_logged_games_are_whole_and_raw(tmp_path):
    env = EnvSpec(GAME_ID, episodic_life=True, clip_rewards=True)
    agent = DQN(learning_starts=10_000, buffer_size=1000, hidden=[8])  # random play, no updates
    steps = 100
    result = train(
        agent,
        env,
        Run(tmp_path, "dqn", seed=0, device="cpu"),
        total_steps=steps,
        eval_every=steps,
        eval_episodes=1,
        log_every=50,
        progress=False,
    )
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    # a game: life 1 is agent steps 1-4; the reset after a lost life takes step 5 as a no-op (its reward is not
    # the agent's); life 2 is steps 6-8, the no-op 9, life 3 steps 10-12: 10 transitions
    played = [1, 2, 3, 4, 6, 7, 8, 10, 11, 12]
    raw = [REWARDS[(n - 1) % 4] for n in played]
    ends = [n % LIFE == 0 for n in played]
    # one loop step per transition plus one autoreset step after each of the 3 ends: 13 a game
    games = steps // 13
    assert result["episodes"] == games
    replay = saved["replay"]
    np.testing.assert_array_equal(replay["rewards"][: 10 * games].numpy(), np.tile(np.sign(raw), games))
    np.testing.assert_array_equal(replay["terminated"][: 10 * games].numpy(), np.tile(ends, games))
    # the record: whole games (3 lives, 10 steps) at their raw score, not 3 lives of clipped per-life returns
    assert sum(raw) == 8.0 and sum(np.sign(raw)) == 1.0
    assert saved["loop"]["episodes"] == [(8.0, 10)] * games
    assert result["train_return_last100"] == 8.0


def _composed(tmp_path, *overrides):
    return compose_task("dqn", tmp_path, ["progress=false", "device=cpu", "threads=1", *overrides])


def test_env_atari_brings_the_nature_cleanrl_settings(tmp_path):
    cfg = _composed(tmp_path, "env=atari")
    agent: DQN = instantiate(cfg.agent)
    total = 10_000_000
    assert (agent.buffer_size, agent.learning_starts, agent.train_frequency, agent.gradient_steps) == (
        1_000_000,
        80_000,
        4,
        1,
    )
    assert (agent.target_update, agent.tau, agent.batch_size, agent.gamma) == (1000, 1.0, 32, 0.99)
    assert LOSSES[agent.loss] is torch.nn.functional.smooth_l1_loss and agent.grad_clip is None
    # epsilon: 1 -> 0.01 linearly over the first 10% of the run, then flat
    assert [agent.epsilon(s, total) for s in (0, total // 20, total // 10, total // 2)] == pytest.approx(
        [1.0, 0.505, 0.01, 0.01]
    )
    optimizer = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-4
    env = EnvSpec(**OmegaConf.to_container(cfg.env))
    assert env.atari and env.clip_rewards and env.episodic_life and env.fire_reset
    assert (env.frame_stack, env.noop_max, env.frame_skip, env.screen_size) == (4, 30, 4, 84)
    assert (cfg.eval.epsilon, agent.hidden) == (0.05, [512])
    # and CartPole keeps its own recipe
    cart = _composed(tmp_path, "env=cartpole")
    assert cart.optim.lr == 0.0023 and cart.agent.learning_starts == 1000 and not cart.env.clip_rewards


@pytest.mark.parametrize("obs_shape, hidden", [((4, 36, 36), [16]), ((6,), [16, 16])])
def test_dueling_rescale_scales_the_trunks_gradient_by_one_over_root_two(obs_shape, hidden):
    torch.manual_seed(0)
    plain = QNetwork(obs_shape, 3, hidden=hidden, dueling=True)  # trunk: the convolutions / the first layer
    scaled = QNetwork(obs_shape, 3, hidden=hidden, dueling=True, dueling_rescale=True)
    scaled.load_state_dict(plain.state_dict())
    obs = torch.randint(0, 255, (5, *obs_shape)).float()
    weights = torch.randn(5, 3)

    def grads(net):
        net.zero_grad()
        h = net.body(obs * net.scale)
        q = net.head(h)
        (dh,) = torch.autograd.grad((q * weights).sum(), h, retain_graph=True)
        (q * weights).sum().backward()
        return (
            q.detach(),
            dh,
            [p.grad.clone() for p in net.body.parameters()],
            [p.grad.clone() for p in net.head.parameters()],
        )

    q0, dh0, body0, head0 = grads(plain)
    q1, dh1, body1, head1 = grads(scaled)
    torch.testing.assert_close(q1, q0)  # the forward pass is unchanged
    torch.testing.assert_close(dh1, dh0 / math.sqrt(2))  # the gradient entering the trunk
    for g1, g0 in zip(body1, body0):
        torch.testing.assert_close(g1, g0 / math.sqrt(2))
    for g1, g0 in zip(head1, head0):  # the streams themselves get the plain network's gradients
        torch.testing.assert_close(g1, g0)


def test_frame_stack_on_a_real_ale_game_is_the_last_four_preprocessed_frames():
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    ours = EnvSpec("PongNoFrameskip-v4", atari=True, frame_stack=4).make_one()
    bare = gym.wrappers.AtariPreprocessing(gym.make("PongNoFrameskip-v4"), noop_max=30, frame_skip=4, screen_size=84)
    obs, _ = ours.reset(seed=3)
    frame, _ = bare.reset(seed=3)
    frames = [frame] * 4
    np.testing.assert_array_equal(obs, np.stack(frames))
    for action in np.random.default_rng(0).integers(0, 6, 12):
        obs = ours.step(action)[0]
        frames.append(bare.step(action)[0])
        np.testing.assert_array_equal(obs, np.stack(frames[-4:]))
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8


@pytest.mark.slow
def test_dqn_atari_preset_runs_a_real_game_with_the_papers_network(tmp_path, monkeypatch):
    pytest.importorskip("ale_py")
    from nas_cli.commands import dqn

    cfg = _composed(tmp_path, "experiment=dqn_atari")
    assert cfg.total_steps == 10_000_000 and cfg.env.id == "BreakoutNoFrameskip-v4" and cfg.optim.lr == 1e-4
    built = {}

    def keep(agent, env, run, **kwargs):
        built.update(agent=agent, env=env)
        return train(agent, env, run, **kwargs)

    monkeypatch.setattr(dqn, "train", keep)
    steps = 300
    summary = dqn.task(
        _composed(
            tmp_path,
            "experiment=dqn_atari",
            f"total_steps={steps}",
            "agent.buffer_size=400",
            "agent.learning_starts=200",
            "agent.batch_size=8",
            f"eval.every={steps}",
            "eval.episodes=1",
            "log_every=100",
        )
    )
    assert summary["status"] == "ok" and summary["steps"] == steps
    agent = built["agent"]
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in agent.q.body if isinstance(m, torch.nn.Conv2d)
    ]
    assert convs == [(4, 32, (8, 8), (4, 4)), (32, 64, (4, 4), (2, 2)), (64, 64, (3, 3), (1, 1))]
    assert agent.q.body[-2].out_features == 512 and agent.optimizer.param_groups[0]["lr"] == 1e-4
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["loss"].notna().any() and rows["epsilon"].iloc[-1] == pytest.approx(0.01)
    replay = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["replay"]
    assert replay["obs"].dtype == torch.uint8 and set(replay["rewards"].unique().tolist()) <= {-1.0, 0.0, 1.0}
