"""Gymnasium environments: vectorized training envs, a greedy evaluator, Atari preprocessing, and
snapshots of pure-Python environments so that a resumed run continues its episodes exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from nas_cli.errors import UserError


@dataclass
class EnvSpec:
    """What to train on (``conf/env/``): a Gymnasium id, how many copies, how they are stepped."""

    id: str = "CartPole-v1"
    num_envs: int = 1
    asynchronous: bool = False
    atari: bool = False
    threshold: float | None = None  # the 'solved' return; None: the environment's own

    def make(self):
        return make_envs(self.id, self.num_envs, self.atari, self.asynchronous)

    def solved_at(self) -> float | None:
        return self.threshold if self.threshold is not None else reward_threshold(self.id)


# environments written in plain Python and numpy: their whole state is in their attributes
SNAPSHOT_MODULES = ("gymnasium.envs.classic_control", "gymnasium.envs.toy_text")
_PLAIN = (bool, int, float, str, type(None))


def _layers(env):
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


def env_state(env) -> list[dict] | None:
    """The state of ``env`` and its wrappers as checkpoint-safe values, or None when part of it lives
    outside Python (an emulator, a physics engine) and cannot be read."""
    if not type(env.unwrapped).__module__.startswith(SNAPSHOT_MODULES):
        return None
    layers = []
    for layer in _layers(env):
        saved = {}
        for name, value in vars(layer).items():
            if isinstance(value, np.random.Generator):
                saved[name] = {"rng": json.dumps(value.bit_generator.state)}
            elif isinstance(value, np.ndarray):
                saved[name] = {"array": torch.from_numpy(value.copy())}
            elif isinstance(value, np.generic):
                saved[name] = value.item()
            elif isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)):
                saved[name] = value
        layers.append(saved)
    return layers


def load_env_state(env, layers: list[dict]) -> None:
    for layer, saved in zip(_layers(env), layers):
        for name, value in saved.items():
            if isinstance(value, dict) and "rng" in value:
                state = json.loads(value["rng"])
                rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
                rng.bit_generator.state = state
                value = rng
            elif isinstance(value, dict) and "array" in value:
                value = value["array"].numpy().copy()
            setattr(layer, name, value)


def _atari_env(env_id: str, **kwargs) -> gym.Env:
    try:
        import ale_py
    except ImportError as ex:
        raise UserError("Atari needs the atari extra: pip install 'nas-cli[atari]' (ale-py, opencv)") from ex
    gym.register_envs(ale_py)
    # v5 environments skip 4 frames themselves: let AtariPreprocessing do it (with max-pooling)
    env = gym.make(env_id, frameskip=1, **kwargs)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=84, terminal_on_life_loss=False)
    return gym.wrappers.FrameStackObservation(env, 4)


class SyncEnvs:
    """``num_envs`` environments stepped in turn in this process, with gymnasium's vector API.

    As in gymnasium's own vector envs, the step after an episode ends is its reset (reward 0,
    not a transition). This does only that: gymnasium's ``SyncVectorEnv`` also merges infos,
    copies and checks, which doubles the cost of a CartPole step.
    """

    def __init__(self, make_env, num_envs: int):
        self.envs = [make_env() for _ in range(num_envs)]
        self.num_envs = num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self._ended = np.zeros(num_envs, dtype=bool)

    def reset(self, seed: int | None = None):
        obs = [env.reset(seed=None if seed is None else seed + i)[0] for i, env in enumerate(self.envs)]
        self._ended[:] = False
        return np.stack(obs), {}

    def step(self, actions: np.ndarray):
        n, space = self.num_envs, self.single_observation_space
        obs = np.empty((n, *space.shape), space.dtype)
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for i, env in enumerate(self.envs):
            if self._ended[i]:
                obs[i], _ = env.reset()
                self._ended[i] = False
            else:
                obs[i], rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
                self._ended[i] = terminated[i] or truncated[i]
        return obs, rewards, terminated, truncated, {}

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def state_dict(self) -> dict | None:
        """Every environment's state (None if one cannot be saved: see ``env_state``)."""
        states = [env_state(env) for env in self.envs]
        return None if any(s is None for s in states) else {"envs": states, "ended": self._ended.tolist()}

    def load_state_dict(self, state: dict) -> None:
        for env, saved in zip(self.envs, state["envs"]):
            load_env_state(env, saved)
        self._ended[:] = state["ended"]


def make_envs(env_id: str, num_envs: int, atari: bool = False, asynchronous: bool = False):
    """``num_envs`` copies of ``env_id`` (sync or async), autoresetting on the step after an episode ends."""
    if num_envs < 1:
        raise UserError(f"env.num_envs={num_envs}: use 1 or more")
    try:
        gym.spec(env_id) if not atari else None
        make_env = (lambda: _atari_env(env_id)) if atari else (lambda: gym.make(env_id))
        if asynchronous:
            return gym.vector.AsyncVectorEnv([make_env] * num_envs)
        return SyncEnvs(make_env, num_envs)
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound,
            gym.error.UnregisteredEnv) as ex:
        raise UserError(f"unknown environment '{env_id}': {str(ex).splitlines()[0]}") from ex


def reward_threshold(env_id: str) -> float | None:
    """The return at which the environment counts as solved (CartPole-v1: 475), if it names one."""
    try:
        return gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None


@torch.inference_mode()
def greedy_returns(q_net, env_id: str, episodes: int, seed: int, atari: bool = False,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Return of one greedy (epsilon = 0) episode in each of ``episodes`` environments run side by side."""
    envs = make_envs(env_id, episodes, atari)
    try:
        obs, _ = envs.reset(seed=seed)
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            actions = q_net(torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            returns += rewards * running
            running &= ~(terminated | truncated)
        return returns
    finally:
        envs.close()
