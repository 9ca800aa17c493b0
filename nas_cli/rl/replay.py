"""Replay storage: preallocated ring buffers in torch tensors, sampled without copies of the whole store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype=torch.float32, device="cpu"):
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = torch.zeros(capacity, dtype=torch.long)
        self.rewards = torch.zeros(capacity, dtype=torch.float32)
        self.terminated = torch.zeros(capacity, dtype=torch.bool)
        self.truncated = torch.zeros(capacity, dtype=torch.bool)
        self.pos = 0
        self.size = 0

    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        """Add a batch of transitions (one per environment), given as numpy arrays or tensors."""
        n = len(actions)
        idx = (self.pos + torch.arange(n)) % self.capacity
        self.obs[idx] = torch.as_tensor(np.asarray(obs), dtype=self.obs.dtype)
        self.next_obs[idx] = torch.as_tensor(np.asarray(next_obs), dtype=self.obs.dtype)
        self.actions[idx] = torch.as_tensor(np.asarray(actions), dtype=torch.long)
        self.rewards[idx] = torch.as_tensor(np.asarray(rewards), dtype=torch.float32)
        self.terminated[idx] = torch.as_tensor(np.asarray(terminated), dtype=torch.bool)
        self.truncated[idx] = torch.as_tensor(np.asarray(truncated), dtype=torch.bool)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        d = self.device
        return Batch(self.obs[idx].to(d).float(), self.actions[idx].to(d), self.rewards[idx].to(d),
                     self.next_obs[idx].to(d).float(), self.terminated[idx].to(d), self.truncated[idx].to(d))

    def state_dict(self) -> dict:
        fields = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")
        return {**{f: getattr(self, f)[: self.size].clone() for f in fields}, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        for f in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated"):
            getattr(self, f)[: state["size"]] = state[f]
        self.pos, self.size = int(state["pos"]), int(state["size"])
