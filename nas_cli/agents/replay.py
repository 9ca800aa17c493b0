"""Replay storage: preallocated ring buffers that numpy writes and torch reads, sharing memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")


@dataclass
class Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor  # the episode ended: no bootstrap from next_obs
    truncated: torch.Tensor  # cut by a time limit: next_obs still has a value, so bootstrap


class ReplayBuffer:
    """A ring of the last ``capacity`` transitions.

    ``terminated`` and ``truncated`` are kept apart: a time-limit truncation is not
    the end of the task, so its target still bootstraps from the next state.
    Each field is one torch tensor with a numpy view of the same memory: the
    per-step ``add`` is a numpy store (a few hundred ns), ``sample`` a torch gather.

    With ``frame_stack`` (observations that are stacks of the last frames, first axis) the next
    observation of a transition is its observation moved on by one frame, so only its newest frame
    is kept: 5 frames a transition instead of 8 (35 instead of 56 GB for Atari's 1M transitions).
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype=torch.float32,
        device="cpu",
        frame_stack: bool = False,
    ):
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.frame_stack = frame_stack and len(obs_shape) > 1 and obs_shape[0] > 1
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        next_shape = (1, *obs_shape[1:]) if self.frame_stack else obs_shape
        self.next_obs = torch.zeros((capacity, *next_shape), dtype=obs_dtype)
        self.actions = torch.zeros(capacity, dtype=torch.long)
        self.rewards = torch.zeros(capacity, dtype=torch.float32)
        self.terminated = torch.zeros(capacity, dtype=torch.bool)
        self.truncated = torch.zeros(capacity, dtype=torch.bool)
        self._views = [getattr(self, f).numpy() for f in FIELDS]
        self.pos = 0
        self.size = 0

    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        """Add a batch of transitions (one per environment), given as numpy arrays or sequences."""
        n = len(actions)
        at = self.pos if n == 1 else (self.pos + np.arange(n)) % self.capacity
        if self.frame_stack:  # the newest frame is all that next_obs adds
            next_obs = np.asarray(next_obs)[:, -1:]
        for view, values in zip(self._views, (obs, next_obs, actions, rewards, terminated, truncated)):
            view[at] = values[0] if n == 1 else values
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """A uniform batch on ``device``; observations keep their storage dtype (the Q-network casts)."""
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        batch = {f: getattr(self, f).index_select(0, idx).to(self.device) for f in FIELDS}
        if self.frame_stack:
            batch["next_obs"] = torch.cat([batch["obs"][:, 1:], batch["next_obs"]], 1)
        return Batch(**batch)

    def state_dict(self) -> dict:
        return {**{f: getattr(self, f)[: self.size].clone() for f in FIELDS}, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        for f in FIELDS:
            getattr(self, f)[: state["size"]] = state[f]
        self.pos, self.size = int(state["pos"]), int(state["size"])
