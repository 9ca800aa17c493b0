"""``controller=reinforce``: an LSTM controller trained with REINFORCE, Zoph & Le (2017).

Layer by layer a stacked LSTM (the paper's: two layers of 35 units; ``lstm_layers``, ``hidden``) emits
filter height, filter width, stride height, stride width and number of filters, a softmax per token
(shared by all layers, so the child can grow), each prediction embedded and fed back as the next
input. Before each layer's tokens an anchor step gives the top hidden state ``h_i``; earlier layer j
feeds layer i with probability ``sigmoid(v^T tanh(W_prev h_j + W_curr h_i))``.

Depth schedule (``depth_schedule``): the children start with ``start`` layers and get ``step`` more
after every ``every`` sampled architectures (the paper, on CIFAR-10: 6 layers, +2 every 1,600), at
most ``space.layers``; null: always ``space.layers``.

Reward: the controller learns from ``R = score ** reward_power``, the score being the child's
(``child.score``, over ``child.score_epochs``). The paper's is the maximum validation accuracy of the
last 5 epochs, cubed (``reward_power: 3``); 1 gives plain accuracy. The search's records keep the
score itself.

Training: ``loss = -A * log p(arch) - entropy_weight * H + skip_penalty * KL(q || skip_target)``
with the advantage ``A = R - b``, ``b`` an exponential moving average of past rewards (it starts at
the first reward), and the KL between each sampled connection probability and the target density,
averaged. With ``normalize`` the advantage is divided by the root of a moving average of past
squared advantages, so the step size does not depend on the scale of the rewards (accuracies of
similar children differ by hundredths; synthetic rewards by tenths).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nas_cli.errors import UserError
from nas_cli.nas.rl.controllers.base import Controller
from nas_cli.nas.rl.spaces import TOKENS, ZophSpace


class _Policy(nn.Module):
    def __init__(self, space: ZophSpace, hidden: int, layers: int):
        super().__init__()
        self.cells = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(layers))
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.after_anchor = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.ModuleDict({t: nn.Embedding(len(space.choices[t]), hidden) for t in TOKENS})
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, len(space.choices[t])) for t in TOKENS})
        self.w_prev = nn.Linear(hidden, hidden, bias=False)
        self.w_curr = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)  # Zoph & Le: uniform in [-0.08, 0.08]

    def step(self, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]]):
        """One time step of the stacked LSTM: the top hidden state and every layer's new (h, c)."""
        new = []
        for cell, hc in zip(self.cells, state):
            h, c = cell(x, hc)
            new.append((h, c))
            x = h
        return x, new

    def zero_state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        zero = torch.zeros_like(self.start)
        return [(zero, zero)] * len(self.cells)


def depth_at(schedule: dict | None, sampled: int, most: int) -> int:
    """Child layers for the architecture sampled after ``sampled`` others: start + step per ``every``, capped."""
    if schedule is None:
        return most
    return min(most, int(schedule["start"]) + int(schedule["step"]) * (sampled // int(schedule["every"])))


class Reinforce(Controller):
    name = "reinforce"

    def __init__(
        self,
        space: ZophSpace,
        seed: int = 0,
        hidden: int = 35,
        lstm_layers: int = 2,
        lr: float = 0.01,
        baseline_decay: float = 0.8,
        entropy_weight: float = 1e-4,
        skip_penalty: float = 0.0,
        skip_target: float = 0.4,
        normalize: bool = True,
        reward_power: float = 3.0,
        depth_schedule: dict | None = None,
    ):
        if not isinstance(space, ZophSpace):
            raise UserError("controller=reinforce proposes in the Zoph space: use space=zoph")
        if int(hidden) < 1 or int(lstm_layers) < 1:
            raise UserError(f"controller.hidden={hidden}, controller.lstm_layers={lstm_layers}: use 1 or more")
        if float(reward_power) <= 0:
            raise UserError(f"controller.reward_power={reward_power}: use a positive power (1: the score itself)")
        super().__init__(space, seed)
        self.depth_schedule = _check_depth_schedule(depth_schedule)
        self.reward_power = float(reward_power)
        self.sampled = 0  # architectures sampled so far (the depth schedule's clock)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = _Policy(space, int(hidden), int(lstm_layers))
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=float(lr))
        self.baseline_decay, self.entropy_weight = float(baseline_decay), float(entropy_weight)
        self.skip_penalty, self.skip_target = float(skip_penalty), float(skip_target)
        self.normalize = bool(normalize)
        self.baseline: float | None = None
        self.advantage_sq: float | None = None  # moving average of squared advantages (normalize)

    def depth(self) -> int:
        """Layers of the next sampled architecture (the depth schedule)."""
        return depth_at(self.depth_schedule, self.sampled, self.space.layers)

    def run(self, arch: list[dict] | None = None, layers: int | None = None):
        """Sample an architecture of ``layers`` layers (``arch=None``; default ``space.layers``) or score a
        given one; returns (arch, log p, entropy, skip KL)."""
        p = self.policy
        space = self.space
        layers = len(arch) if arch is not None else (space.layers if layers is None else int(layers))
        state = p.zero_state()
        x = p.start
        anchors: list[torch.Tensor] = []
        logp, entropy, kl, n_links = torch.zeros(()), torch.zeros(()), torch.zeros(()), 0
        out = []
        rho = min(max(self.skip_target, 1e-6), 1 - 1e-6)
        for i in range(layers):
            h, state = p.step(x, state)
            inputs: list[int] = []
            if i > 0:
                logits = p.v(torch.tanh(torch.cat(anchors) + p.w_curr(h))).squeeze(1)  # (i,)
                probs = torch.sigmoid(logits)
                if arch is None:
                    take = torch.rand(i, generator=self.generator) < probs.detach()
                else:
                    take = torch.tensor([j in arch[i]["inputs"] for j in range(i)])
                inputs = [j for j in range(i) if take[j]]
                t = take.float()
                logp = logp + (t * nn.functional.logsigmoid(logits) + (1 - t) * nn.functional.logsigmoid(-logits)).sum()
                q = probs.clamp(1e-6, 1 - 1e-6)
                entropy = entropy - (q * q.log() + (1 - q) * (1 - q).log()).sum()
                kl = kl + (q * (q / rho).log() + (1 - q) * ((1 - q) / (1 - rho)).log()).sum()
                n_links += i
            anchors.append(p.w_prev(h))
            x = p.after_anchor
            layer: dict[str, object] = {"type": "conv"}
            for tok in TOKENS:
                h, state = p.step(x, state)
                log_probs = torch.log_softmax(p.heads[tok](h), dim=1)[0]
                choices = space.choices[tok]
                if arch is None:
                    idx = int(torch.multinomial(log_probs.detach().exp(), 1, generator=self.generator))
                else:
                    try:
                        idx = choices.index(arch[i][tok])
                    except ValueError as ex:
                        raise UserError(f"layer {i}: {tok}={arch[i][tok]} is not among the choices {choices}") from ex
                logp = logp + log_probs[idx]
                entropy = entropy - (log_probs.exp() * log_probs).sum()
                layer[tok] = int(choices[idx])
                x = p.embed[tok](torch.tensor([idx]))
            layer["inputs"] = inputs
            out.append(layer)
        return out, logp, entropy, kl / max(n_links, 1)

    def propose(self) -> list[dict]:
        layers = self.depth()
        self.sampled += 1
        with torch.no_grad():
            return self.run(layers=layers)[0]

    def log_prob(self, arch: list[dict]) -> float:
        with torch.no_grad():
            return float(self.run(arch)[1])

    def advantage(self, reward: float) -> float:
        """``R - b`` (normalized if asked), then the moving averages take ``R`` in."""
        reward = float(reward)
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        if self.normalize and advantage != 0.0:
            sq = advantage * advantage
            self.advantage_sq = (
                sq
                if self.advantage_sq is None
                else (self.baseline_decay * self.advantage_sq + (1 - self.baseline_decay) * sq)
            )
            advantage /= self.advantage_sq**0.5
        return advantage

    def observe(self, arch: list[dict], reward: float) -> None:
        advantage = self.advantage(math.copysign(abs(float(reward)) ** self.reward_power, reward))  # sign kept
        _, logp, entropy, kl = self.run(arch)
        loss = -advantage * logp - self.entropy_weight * entropy + self.skip_penalty * kl
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def extra_state(self) -> dict:
        return {"baseline": self.baseline, "advantage_sq": self.advantage_sq, "sampled": self.sampled}

    def load_extra_state(self, state: dict) -> None:
        self.baseline, self.advantage_sq, self.sampled = state["baseline"], state["advantage_sq"], state["sampled"]

    def tensor_state(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_tensor_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def _check_depth_schedule(schedule: dict | None) -> dict | None:
    if schedule is None:
        return None
    try:
        out = {k: int(schedule[k]) for k in ("start", "step", "every")}
    except (KeyError, TypeError, ValueError) as ex:
        raise UserError(
            "controller.depth_schedule: give {start: LAYERS, step: LAYERS, every: ARCHITECTURES} or null"
        ) from ex
    if out["start"] < 1 or out["step"] < 0 or out["every"] < 1:
        raise UserError(f"controller.depth_schedule={schedule}: need start >= 1, step >= 0, every >= 1")
    return out
