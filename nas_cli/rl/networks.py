"""Q-networks: an MLP for vector observations, the Nature CNN for Atari frames, plain or dueling heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from nas_cli.errors import UserError


class DuelingHead(nn.Module):
    """Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)   (or - max_a A(s, a) with ``aggregation='max'``).

    Subtracting the mean (or max) makes V and A identifiable: without it any constant
    could move between them.
    """

    def __init__(self, features: int, num_actions: int, hidden: int, aggregation: str = "mean"):
        super().__init__()
        if aggregation not in ("mean", "max"):
            raise UserError(f"agent.aggregation={aggregation}: use mean or max")
        self.aggregation = aggregation
        self.value = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.advantage = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))

    def advantages(self, h: torch.Tensor) -> torch.Tensor:
        """The centred advantages A(s, a) - mean/max_a A(s, a)."""
        a = self.advantage(h)
        return a - (a.mean(1, keepdim=True) if self.aggregation == "mean" else a.amax(1, keepdim=True))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.value(h) + self.advantages(h)


class QNetwork(nn.Module):
    """Observation -> one value per action.

    Vector observations go through an MLP of ``hidden`` layers; image stacks (C, 84, 84)
    through the Nature DQN CNN (3 convs, 512 units).
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, hidden: list[int] = (120, 84),
                 dueling: bool = False, aggregation: str = "mean"):
        super().__init__()
        hidden = list(hidden)
        if len(obs_shape) == 3:  # stacked frames, uint8 0..255
            self.body = nn.Sequential(
                nn.Conv2d(obs_shape[0], 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(),
                nn.LazyLinear(512), nn.ReLU())
            self.body(torch.zeros(1, *obs_shape))  # materialize the lazy layer
            features, self.scale = 512, 1 / 255.0
        else:
            layers, features = [nn.Flatten()], math.prod(obs_shape)
            for width in hidden[:-1] if dueling else hidden:
                layers += [nn.Linear(features, width), nn.ReLU()]
                features = width
            self.body, self.scale = nn.Sequential(*layers), 1.0
        self.head = (DuelingHead(features, num_actions, hidden[-1], aggregation) if dueling
                     else nn.Linear(features, num_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(obs.float() * self.scale))
