"""Gymnasium environments: vectorized training envs, a greedy evaluator, Atari preprocessing, and
snapshots of pure-Python environments so that a resumed run continues its episodes exactly.

Atari follows the DeepMind/CleanRL stack (``dqn_atari.py`` with SB3's wrappers): 30 random no-ops at
reset, 4-frame skip with a max over the last two frames, 84x84 grey (gymnasium's ``AtariPreprocessing``),
then a lost life ends the episode for learning (``EpisodicLife``), FIRE after every reset where the game
needs it (``FireReset``) and the last 4 frames stacked (gymnasium's ``FrameStackObservation``).
Rewards are clipped to their sign where they enter the replay, not here: the environment hands back the
game's own rewards, so logged returns are the real game's score.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from nas_cli.errors import UserError

LIFE_LOSS = "life_loss"  # info key: this termination was a lost life, the game goes on


@dataclass
class EnvSpec:
    """What to train on (``conf/env/``): a Gymnasium id, how many copies, how they are stepped and wrapped.

    ``atari`` builds the id through ale-py with ``AtariPreprocessing`` (``noop_max``, ``frame_skip``,
    ``screen_size``); ``episodic_life``, ``fire_reset`` and ``frame_stack`` wrap any environment (they act
    only where the game reports lives / has a FIRE action). ``clip_rewards`` stores sign(r) in the replay.
    """

    id: str = "CartPole-v1"
    num_envs: int = 1
    asynchronous: bool = False
    atari: bool = False
    threshold: float | None = None  # the 'solved' return; None: the environment's own
    clip_rewards: bool = False
    episodic_life: bool = False
    fire_reset: bool = False
    frame_stack: int = 1
    noop_max: int = 30
    frame_skip: int = 4
    screen_size: int = 84

    def __post_init__(self):
        if self.frame_stack < 1:
            raise UserError(f"env.frame_stack={self.frame_stack}: use 1 (no stacking) or more")

    def make(self, num_envs: int | None = None, asynchronous: bool | None = None):
        """``num_envs`` copies (default: the spec's own), autoresetting on the step after an episode ends."""
        num_envs = self.num_envs if num_envs is None else num_envs
        asynchronous = self.asynchronous if asynchronous is None else asynchronous
        if num_envs < 1:
            raise UserError(f"env.num_envs={num_envs}: use 1 or more")
        try:
            if not self.atari:
                gym.spec(self.id)  # an unknown id fails here, in this process, with gymnasium's message
            if asynchronous:
                return gym.vector.AsyncVectorEnv([self.make_one] * num_envs)
            return SyncEnvs(self.make_one, num_envs)
        except (
            gym.error.NameNotFound,
            gym.error.NamespaceNotFound,
            gym.error.VersionNotFound,
            gym.error.UnregisteredEnv,
        ) as ex:
            raise UserError(f"unknown environment '{self.id}': {str(ex).splitlines()[0]}") from ex

    def make_one(self) -> gym.Env:
        """One environment with this spec's wrappers."""
        env = _ale_env(self.id, self.noop_max, self.frame_skip, self.screen_size) if self.atari else gym.make(self.id)
        if self.episodic_life:
            env = EpisodicLife(env)
        if self.fire_reset and FireReset.needed(env):
            env = FireReset(env)
        if self.frame_stack > 1:
            env = gym.wrappers.FrameStackObservation(env, self.frame_stack)
        return env

    def solved_at(self) -> float | None:
        return self.threshold if self.threshold is not None else reward_threshold(self.id)


def game_over(terminated: np.ndarray, truncated: np.ndarray, info: dict) -> np.ndarray:
    """Which environments finished a whole game: ended, and not only by a lost life (see ``EpisodicLife``)."""
    ended = terminated | truncated
    lost = info.get(LIFE_LOSS)
    return ended if lost is None else ended & ~lost


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode for learning but not the game (Mnih et al. 2015; SB3's EpisodicLifeEnv).

    ``step`` returns ``terminated=True`` when a life is lost, so the TD target does not bootstrap across
    it, and marks it with ``info['life_loss']``; the ``reset`` that follows then takes one no-op step
    instead of restarting the game. Only the real end of the game resets it. Lives are read from
    ``info['lives']`` (ALE puts them there); an environment without lives passes through unchanged.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = int(info.get("lives", 0))
        lost = not self.game_over and 0 < lives < self.lives
        self.lives = lives
        info[LIFE_LOSS] = lost
        return obs, reward, terminated or lost, truncated, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:  # the game goes on: one no-op moves past the lost life
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        self.lives, self.game_over = int(info.get("lives", 0)), False
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE (then action 2) after every reset, as SB3's FireResetEnv does: games such as Breakout
    stand still until FIRE. Outside ``EpisodicLife`` it also relaunches the game after each lost life."""

    @staticmethod
    def needed(env: gym.Env) -> bool:
        meanings: list[str] = getattr(env.unwrapped, "get_action_meanings", lambda: [])()
        return len(meanings) >= 3 and meanings[1] == "FIRE"

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.env.reset(seed=seed, options=options)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


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
        saved: dict[str, object] = {}
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


BIT_GENERATORS = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def load_env_state(env, layers: list[dict]) -> None:
    """Put back what ``env_state`` saved. A checkpoint may come from someone else: it sets only data attributes
    (no method or class attribute is shadowed), plain values where the layer holds plain values, and names no
    callable beyond numpy's bit generators."""
    for layer, saved in zip(_layers(env), layers):
        have = vars(layer)
        for name, value in saved.items():
            current = have.get(name)
            if name.startswith("__") or callable(getattr(type(layer), name, None)):
                raise UserError(
                    f"the checkpoint's environment state sets {type(layer).__name__}.{name}, "
                    "which is not a data attribute of this environment"
                )
            if isinstance(value, dict) and "rng" in value and isinstance(current, (np.random.Generator, type(None))):
                state = json.loads(value["rng"])
                kind = state.get("bit_generator") if isinstance(state, dict) else None
                make = BIT_GENERATORS.get(kind) if isinstance(kind, str) else None
                if make is None:
                    raise UserError(f"the checkpoint's environment state names an unknown bit generator for {name}")
                rng = np.random.Generator(make())
                rng.bit_generator.state = state
                value = rng
            elif isinstance(value, dict) and "array" in value and isinstance(current, (np.ndarray, type(None))):
                value = value["array"].numpy().copy()
            elif not isinstance(value, _PLAIN + (tuple,)) or not isinstance(current, _PLAIN + (tuple, np.generic)):
                raise UserError(
                    f"the checkpoint's environment state sets {type(layer).__name__}.{name}, "
                    "which this environment does not hold as a plain value"
                )
            setattr(layer, name, value)


def _ale_env(env_id: str, noop_max: int, frame_skip: int, screen_size: int) -> gym.Env:
    """An ALE game at one frame a step, then gymnasium's ``AtariPreprocessing`` (no-op starts, frame skip
    with a max over the last two frames, grey ``screen_size`` squares)."""
    try:
        import ale_py
    except ImportError as ex:
        raise UserError("Atari needs the atari extra: pip install 'nas-cli[atari]' (ale-py, opencv)") from ex
    gym.register_envs(ale_py)
    # v5 ids skip 4 frames themselves: let AtariPreprocessing do it (with the max over the last two frames)
    env = gym.make(env_id, frameskip=1)
    return gym.wrappers.AtariPreprocessing(
        env, noop_max=noop_max, frame_skip=frame_skip, screen_size=screen_size, terminal_on_life_loss=False
    )


class SyncEnvs:
    """``num_envs`` environments stepped in turn in this process, with gymnasium's vector API.

    As in gymnasium's own vector envs, the step after an episode ends is its reset (reward 0,
    not a transition). This does only that, and passes on one info key (``life_loss``):
    gymnasium's ``SyncVectorEnv`` also merges every info, copies and checks, which doubles the
    cost of a CartPole step.
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
        lost = np.zeros(n, dtype=bool)
        for i, env in enumerate(self.envs):
            if self._ended[i]:
                obs[i], _ = env.reset()
                self._ended[i] = False
            else:
                obs[i], rewards[i], terminated[i], truncated[i], info = env.step(actions[i])
                lost[i] = info.get(LIFE_LOSS, False)
                self._ended[i] = terminated[i] or truncated[i]
        return obs, rewards, terminated, truncated, {LIFE_LOSS: lost}

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
    """``num_envs`` plain copies of ``env_id`` (see ``EnvSpec.make`` for the wrapped ones)."""
    return EnvSpec(env_id, num_envs, asynchronous, atari).make()


def reward_threshold(env_id: str) -> float | None:
    """The return at which the environment counts as solved (CartPole-v1: 475), if it names one."""
    try:
        return gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None


@torch.inference_mode()
def greedy_returns(
    q_net, env: EnvSpec, episodes: int, seed: int, device: torch.device | str = "cpu", epsilon: float = 0.0
) -> np.ndarray:
    """Return of one whole game in each of ``episodes`` environments run side by side, acting greedily
    (or epsilon-greedily: the Nature DQN evaluates Atari with epsilon 0.05, so that a policy stuck
    waiting cannot stall a game until its time limit)."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        q = q_net(torch.as_tensor(obs, device=device))
        actions = q.argmax(1).cpu().numpy()
        if epsilon > 0:
            explore = rng.random(len(obs)) < epsilon
            actions = np.where(explore, rng.integers(0, q.shape[1], len(obs)), actions)
        return actions

    return policy_returns(act, env, episodes, seed)


@torch.inference_mode()
def policy_returns(act: Callable[[np.ndarray], np.ndarray], env: EnvSpec, episodes: int, seed: int) -> np.ndarray:
    """Return of one whole game in each of ``episodes`` environments run side by side, with the actions
    ``act(observations)`` picks (a batch of observations in, a batch of actions out)."""
    envs = env.make(num_envs=episodes, asynchronous=False)
    try:
        obs, _ = envs.reset(seed=seed)
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            obs, rewards, terminated, truncated, info = envs.step(act(obs))
            returns += rewards * running
            running &= ~game_over(terminated, truncated, info)
        return returns
    finally:
        envs.close()


def start_episodes(envs, loop, seed: int, saved: dict | None) -> None:
    """Start the episodes of a run, or continue a checkpoint's (``saved``) where it stopped.

    Environments whose state can be saved (``env_state``) resume mid-episode; the others restart
    from a reset, seeded by the step reached, and the log says so.
    """
    if saved is not None and saved.get("envs") is not None:
        envs.load_state_dict(saved["envs"])
    elif saved is not None:
        loop.start_episodes(envs.reset(seed=seed + loop.step)[0])
        logging.getLogger(__name__).info(
            f"resumed at step {loop.step}: this environment's state cannot be saved, "
            f"so its episodes restart from a reset"
        )
    else:
        loop.start_episodes(envs.reset(seed=seed)[0])


def episode_figures(loop, env: EnvSpec, threshold: float | None, wall_time: float) -> dict:
    """The summary figures of an agent's run (dqn, pg): its episodes, best evaluation and when it was solved."""
    recent = [r for r, _ in loop.episodes[-100:]]
    return {
        "env": env.id,
        "steps": loop.step,
        "episodes": len(loop.episodes),
        "train_return_last100": float(np.mean(recent)) if recent else None,
        "best_eval_return": loop.best_eval if loop.best_step is not None else None,
        "best_eval_step": loop.best_step,
        "threshold": threshold,
        "solved_step": loop.solved_step,
        "steps_per_s": loop.step / max(wall_time, 1e-9),
    }
