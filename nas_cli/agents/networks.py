"""Q-networks: an MLP for vector observations, the Nature CNN for Atari frames, plain or dueling heads."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from nas_cli.errors import UserError


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient flowing back is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class DuelingHead(nn.Module):
    """Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)   (or - max_a A(s, a) with ``aggregation='max'``).

    Subtracting the mean (or max) makes V and A identifiable: without it any constant
    could move between them. With ``rescale_grad`` the gradient the two streams send back into
    the shared trunk is multiplied by 1/sqrt(2) (Wang et al. 2016, Sec. 4.2): two streams feed
    it, so without the factor the trunk's updates are larger than in the single-stream network.
    """

    def __init__(self, features: int, num_actions: int, hidden: int, aggregation: str = "mean",
                 rescale_grad: bool = False):
        super().__init__()
        if aggregation not in ("mean", "max"):
            raise UserError(f"agent.aggregation={aggregation}: use mean or max")
        self.aggregation = aggregation
        self.grad_scale = 1 / math.sqrt(2) if rescale_grad else 1.0
        self.value = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.advantage = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))

    def advantages(self, h: torch.Tensor) -> torch.Tensor:
        """The centred advantages A(s, a) - mean/max_a A(s, a)."""
        a = self.advantage(h)
        return a - (a.mean(1, keepdim=True) if self.aggregation == "mean" else a.amax(1, keepdim=True))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.grad_scale != 1.0 and h.requires_grad:
            h = ScaleGrad.apply(h, self.grad_scale)
        return self.value(h) + self.advantages(h)


def nature_trunk(channels: int) -> nn.Sequential:
    """The Nature DQN's convolutions (Mnih et al. 2015): 32 8x8/4, 64 4x4/2, 64 3x3/1, flattened (3136 at 84x84)."""
    return nn.Sequential(nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())


class QNetwork(nn.Module):
    """Observation -> one value per action.

    Vector observations go through an MLP of ``hidden`` layers; image stacks (C, H, W), uint8,
    through the Nature DQN convolutions first, then the same ``hidden`` layers (Nature: [512]).
    A dueling head takes the last hidden width as its streams' width, so on Atari the shared trunk
    ends at the convolutions and each stream has its own 512 units, as in Wang et al. (2016).
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, hidden: list[int] = (120, 84),
                 dueling: bool = False, aggregation: str = "mean", dueling_rescale: bool = False):
        super().__init__()
        hidden = list(hidden)
        if dueling and not hidden:
            raise UserError("agent.dueling=true needs agent.hidden to name at least one layer (the streams' width)")
        if len(obs_shape) == 3:  # stacked frames, uint8 0..255
            layers = list(nature_trunk(obs_shape[0]))
            with torch.no_grad():
                features = nn.Sequential(*layers)(torch.zeros(1, *obs_shape)).shape[1]
            self.scale = 1 / 255.0
        else:
            layers, features, self.scale = [nn.Flatten()], math.prod(obs_shape), 1.0
        for width in hidden[:-1] if dueling else hidden:
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        self.body = nn.Sequential(*layers)
        self.head = (DuelingHead(features, num_actions, hidden[-1], aggregation, dueling_rescale) if dueling
                     else nn.Linear(features, num_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.float()
        return self.head(self.body(obs if self.scale == 1.0 else obs * self.scale))


class NumpyGreedy:
    """Greedy actions of an MLP ``QNetwork``, computed in numpy on views of its weights.

    Acting on one observation is the per-step cost DQN pays most often, and for a small
    MLP torch's per-op dispatch (microseconds each) outweighs the arithmetic. The views
    share the parameters' memory, so optimizer steps and ``load_state_dict`` (both in
    place) are seen without copying. A dueling net acts on its advantage stream alone:
    V(s) and the mean or max of A(s, .) shift every action's value alike.
    """

    def __init__(self, layers: list[nn.Linear]):
        self.layers = [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in layers]

    @classmethod
    def of(cls, net: QNetwork) -> NumpyGreedy | None:
        """The numpy policy of ``net``, or None where it does not apply (CNN, not on the CPU, not float32)."""
        modules = list(net.body) + list(net.head.advantage if isinstance(net.head, DuelingHead) else [net.head])
        if not all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for m in modules) or net.scale != 1.0:
            return None
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in net.parameters()):
            return None
        return cls([m for m in modules if isinstance(m, nn.Linear)])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        h = obs.reshape(len(obs), -1)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0, out=h)
        return h.argmax(1)
