"""A population of MLP policies as flat weight vectors, evaluated together: one batched forward per
environment step for every member and every episode.

The weights of ``P`` members are the rows of a ``(P, D)`` tensor. A row is laid out as
``torch.nn.utils.parameters_to_vector`` lays out a ``QNetwork`` (``nas_cli/agents/networks.py``) with the
same ``hidden`` sizes, so any row loads into that network (``best.pt``, ``nas-cli ga mode=eval``). For the
forward pass the rows are viewed layer by layer as ``(P, out, in)`` weights and ``(P, out)`` biases, and
one ``torch.baddbmm`` per layer acts for all ``P x E`` environments at once: a generation costs a few
large matrix products instead of ``P x E`` small ones.

Each member plays ``E`` episodes, each in its own environment started from its own seed. An
environment's seed alone decides its start, never its place in the batch, so a member scores the same
evaluated with the whole population, alone, or in a worker process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from nas_cli.agents.envs import EnvSpec
from nas_cli.agents.networks import QNetwork
from nas_cli.errors import UserError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "numpy", "python")


class PolicyLayout:
    """Where each layer's weight and bias sit in a flat weight vector of an MLP ``QNetwork``."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int]):
        self.obs_dim, self.num_actions, self.hidden = int(obs_dim), int(num_actions), list(hidden)
        template = self.network()
        # (weight, bias) shapes of every Linear, in the order of named_parameters (body..., head)
        linears = [m for m in template.modules() if isinstance(m, nn.Linear)]
        self.shapes = [(tuple(m.weight.shape), tuple(m.bias.shape)) for m in linears]
        self.size = sum(p.numel() for p in template.parameters())

    def network(self, flat: torch.Tensor | None = None) -> QNetwork:
        """A ``QNetwork`` of this shape, with the weights ``flat`` (a ``(D,)`` row) if given."""
        net = QNetwork((self.obs_dim,), self.num_actions, self.hidden)
        if flat is not None:
            nn.utils.vector_to_parameters(flat.detach().to("cpu", torch.float32), net.parameters())
        return net

    def layers(self, population: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``population`` (P, D) as views ``[(weight (P, out, in), bias (P, out)), ...]``."""
        out, start, p = [], 0, population.shape[0]
        for w_shape, b_shape in self.shapes:
            n_w, n_b = math.prod(w_shape), math.prod(b_shape)
            w = population[:, start : start + n_w].view(p, *w_shape)
            b = population[:, start + n_w : start + n_w + n_b]
            out.append((w, b))
            start += n_w + n_b
        return out

    def init(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` random members: every weight and bias uniform in +-1/sqrt(fan_in), the distribution
        ``nn.Linear`` draws from, here from ``generator`` so that a run is reproducible."""
        parts = []
        for (out_f, in_f), _ in self.shapes:
            bound = 1.0 / math.sqrt(in_f)
            n = out_f * in_f + out_f
            parts.append((torch.rand(count, n, generator=generator) * 2 - 1) * bound)
        return torch.cat(parts, 1)


def batched_actions(layers: list[tuple[torch.Tensor, torch.Tensor]], obs: torch.Tensor) -> torch.Tensor:
    """Greedy actions (P, E) of P members for observations (P, E, obs_dim): one ``baddbmm`` per layer."""
    h = obs
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h.relu_()
    return h.argmax(-1)


def check_env(env: EnvSpec) -> tuple[int, int]:
    """(observation size, number of actions) of ``env``; GA evolves MLPs with discrete actions."""
    probe = env.make_one()
    try:
        obs_space, act_space = probe.observation_space, probe.action_space
    finally:
        probe.close()
    if not isinstance(act_space, gym.spaces.Discrete):
        raise UserError(
            f"env.id={env.id}: ga evolves greedy policies over discrete actions, this one has "
            f"{type(act_space).__name__} actions"
        )
    shape = obs_space.shape  # None for spaces of no fixed shape (Graph, Sequence): not vectors either
    if shape is None or len(shape) != 1 or env.atari or env.frame_stack > 1:
        raise UserError(f"env.id={env.id}: ga evolves MLP policies, for vector observations (this one is {shape})")
    return int(shape[0]), int(act_space.n)


class Episodes:
    """``n`` environments, each playing one episode from its own seed, stepped side by side.

    ``numpy``: the environment's numpy vector implementation (gymnasium's ``vector_entry_point``, e.g.
    CartPole), all ``n`` copies in one array step; each copy's start is read from a one-copy instance
    reset with that copy's seed. ``python``: ``n`` ordinary environments (``EnvSpec.make_one``), only the
    running ones stepped. ``auto``: numpy where the environment has it.
    """

    def __init__(self, env: EnvSpec, n: int, backend: str = "auto"):
        if backend not in BACKENDS:
            raise UserError(f"agent.backend={backend}: use {', '.join(BACKENDS)}")
        self.env, self.n = env, n
        self.backend = "numpy" if backend in ("auto", "numpy") and numpy_ready(env) else "python"
        if backend == "numpy" and self.backend != "numpy":
            raise UserError(
                f"agent.backend=numpy: {env.id} has no numpy vector implementation in gymnasium (use auto or python)"
            )
        if self.backend == "numpy":
            # the environment's own numpy class (e.g. CartPoleVectorEnv): beyond VectorEnv's interface it
            # keeps ``state``, the array each copy's start is written into
            self.vec: Any = gym.make_vec(env.id, num_envs=n, vectorization_mode="vector_entry_point").unwrapped
            self.one: Any = gym.make_vec(env.id, num_envs=1, vectorization_mode="vector_entry_point").unwrapped
        else:
            self.envs = [env.make_one() for _ in range(n)]
        self.running = np.zeros(n, dtype=bool)

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        """Start every environment from its seed; the observations (n, obs_dim), float32."""
        self.running[:] = True
        if self.backend == "numpy":
            self.vec.reset(seed=0)
            obs = np.empty((self.n, *self.vec.single_observation_space.shape), np.float32)
            for i, s in enumerate(seeds):
                obs[i] = self.one.reset(seed=int(s))[0][0]
                self.vec.state[..., i] = self.one.state[..., 0]
            return obs
        return np.stack([e.reset(seed=int(s))[0] for e, s in zip(self.envs, seeds)]).astype(np.float32)

    def step(self, actions: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Act; (observations, rewards, ended at this step). Finished environments reward 0 and keep
        ``obs``'s row (numpy: they restart inside the vector env, and are no longer counted)."""
        rewards = np.zeros(self.n)
        ended = np.zeros(self.n, dtype=bool)
        if self.backend == "numpy":
            new_obs, r, terminated, truncated, _ = self.vec.step(actions)
            run = self.running
            rewards[run] = r[run]
            ended[run] = (terminated | truncated)[run]
            obs = np.where(run[:, None], new_obs, obs)
        else:
            obs = obs.copy()
            for i in np.flatnonzero(self.running):
                o, r, terminated, truncated, _ = self.envs[i].step(int(actions[i]))
                obs[i], rewards[i], ended[i] = o, r, terminated or truncated
        self.running &= ~ended
        return obs, rewards, ended

    def close(self) -> None:
        for e in [self.vec, self.one] if self.backend == "numpy" else self.envs:
            e.close()


def numpy_ready(env: EnvSpec) -> bool:
    """Whether ``env`` has a numpy vector implementation whose per-copy state this module can set."""
    if env.atari or env.episodic_life or env.fire_reset or env.frame_stack > 1:
        return False
    try:
        spec = gym.spec(env.id)
    except gym.error.Error:
        return False
    entry = spec.vector_entry_point
    if not isinstance(entry, str) or "jax" in entry.lower():
        return False
    probe = gym.make_vec(env.id, num_envs=2, vectorization_mode="vector_entry_point").unwrapped
    try:
        probe.reset(seed=0)
        state = getattr(probe, "state", None)
        return isinstance(state, np.ndarray) and state.shape[-1] == 2
    finally:
        probe.close()


@torch.inference_mode()
def play(
    act: Callable[[np.ndarray], np.ndarray], env: EnvSpec, seeds: np.ndarray, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of one episode per seed, ``act(obs (n, obs_dim)) -> actions (n,)`` choosing."""
    episodes = Episodes(env, len(seeds), backend)
    try:
        obs = episodes.reset(seeds)
        returns, lengths = np.zeros(len(seeds)), np.zeros(len(seeds), dtype=np.int64)
        while episodes.running.any():
            running = episodes.running.copy()
            obs, rewards, _ = episodes.step(act(obs), obs)
            returns += rewards
            lengths += running
        return returns, lengths
    finally:
        episodes.close()


def evaluate(
    population: torch.Tensor, layout: PolicyLayout, env: EnvSpec, seeds: np.ndarray, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths (P, E) of each of P members over E episodes, member p's episode e started from
    ``seeds[p, e]``; every step one batched forward of all P x E observations."""
    p, e = seeds.shape
    layers = layout.layers(population)
    device = population.device

    def act(obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(obs, device=device).view(p, e, -1)
        return batched_actions(layers, x).reshape(-1).cpu().numpy()

    returns, lengths = play(act, env, seeds.reshape(-1), backend)
    return returns.reshape(p, e), lengths.reshape(p, e)


def evaluate_one_by_one(
    population: torch.Tensor, layout: PolicyLayout, env: EnvSpec, seeds: np.ndarray, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """The same as ``evaluate``, a member at a time with its own ``QNetwork``: the loop that ``evaluate``
    replaces (the benchmark's baseline)."""
    returns, lengths = np.zeros(seeds.shape), np.zeros(seeds.shape, dtype=np.int64)
    for i, row in enumerate(population):
        net = layout.network(row).to(population.device).eval()

        def act(obs: np.ndarray, net=net) -> np.ndarray:
            return net(torch.as_tensor(obs, device=population.device)).argmax(1).cpu().numpy()

        returns[i], lengths[i] = play(act, env, seeds[i], backend)
    return returns, lengths
