"""Q-networks: an MLP for vector observations, the Nature CNN for Atari frames, plain or dueling heads."""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    def __init__(
        self, features: int, num_actions: int, hidden: int, aggregation: str = "mean", rescale_grad: bool = False
    ):
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
    return nn.Sequential(
        nn.Conv2d(channels, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
    )


class QNetwork(nn.Module):
    """Observation -> one value per action.

    Vector observations go through an MLP of ``hidden`` layers; image stacks (C, H, W), uint8,
    through the Nature DQN convolutions first, then the same ``hidden`` layers (Nature: [512]).
    A dueling head takes the last hidden width as its streams' width, so on Atari the shared trunk
    ends at the convolutions and each stream has its own 512 units, as in Wang et al. (2016).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        hidden: Sequence[int] = (120, 84),
        dueling: bool = False,
        aggregation: str = "mean",
        dueling_rescale: bool = False,
    ):
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
        self.head = (
            DuelingHead(features, num_actions, hidden[-1], aggregation, dueling_rescale)
            if dueling
            else nn.Linear(features, num_actions)
        )

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


# -- policy-gradient agents (nas-cli pg) -------------------------------------------------------------------------

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(
    features: int, hidden: Sequence[int], outputs: int, activation: str = "tanh", out_gain: float = 1.0
) -> nn.Sequential:
    """``features -> hidden... -> outputs`` with orthogonal weights and zero biases, as SB3's actor-critic
    initialises them: gain sqrt(2) in the hidden layers, ``out_gain`` at the output (0.01 for the policy, so
    the first policy is close to uniform; 1 for the value)."""
    if activation not in ACTIVATIONS:
        raise UserError(f"agent.activation={activation}: use {' or '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(features, width), ACTIVATIONS[activation]()]
        features = width
    layers.append(nn.Linear(features, outputs))
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        nn.init.orthogonal_(m.weight, out_gain if i == len(linears) - 1 else math.sqrt(2))
        nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """A policy head and a state-value head V(s) over one observation.

    Vector observations: two separate MLPs (SB3's default for A2C: the value's regression does not pull
    on the policy's features). Image stacks: the Nature DQN convolutions shared by both heads, as in A2C
    on Atari (Mnih et al. 2016). Discrete actions: one logit per action (categorical). Continuous
    actions (``action_dim``): a diagonal Gaussian with a learned, state-independent log standard
    deviation starting at ``log_std_init`` (SB3, CleanRL).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        num_actions: int | None = None,
        action_dim: int | None = None,
        log_std_init: float = 0.0,
    ):
        super().__init__()
        if (num_actions is None) == (action_dim is None):
            raise ValueError("give num_actions (discrete) or action_dim (continuous)")
        self.continuous = action_dim is not None
        outputs = action_dim if action_dim is not None else num_actions
        assert outputs is not None  # exactly one of the two is given (checked above)
        self.trunk: nn.Module
        if len(obs_shape) == 3:  # stacked uint8 frames
            self.trunk = nature_trunk(obs_shape[0])
            with torch.no_grad():
                features = self.trunk(torch.zeros(1, *obs_shape)).shape[1]
            self.scale = 1 / 255.0
        else:
            self.trunk, features, self.scale = nn.Flatten(), math.prod(obs_shape), 1.0
        self.policy = mlp(features, list(hidden), outputs, activation, out_gain=0.01)
        self.value = mlp(features, list(hidden), 1, activation, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((outputs,), float(log_std_init))) if self.continuous else None

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.float()
        return self.trunk(obs if self.scale == 1.0 else obs * self.scale)

    def distribution(self, h: torch.Tensor) -> torch.distributions.Distribution:
        """pi(.|s) from the features ``h``: Categorical, or a diagonal Normal (log-probs summed over dims)."""
        out = self.policy(h)
        if not self.continuous:
            return torch.distributions.Categorical(logits=out)
        assert self.log_std is not None  # a continuous head has one
        return torch.distributions.Independent(torch.distributions.Normal(out, self.log_std.exp().expand_as(out)), 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """pi(.|s) and V(s)."""
        h = self.features(obs)
        return self.distribution(h), self.value(h).squeeze(-1)

    def most_likely(self, obs: torch.Tensor) -> torch.Tensor:
        """The greedy action: the arg-max logit, or the Gaussian's mean."""
        out = self.policy(self.features(obs))
        return out if self.continuous else out.argmax(-1)
