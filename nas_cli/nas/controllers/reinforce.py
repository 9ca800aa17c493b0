"""``controller=reinforce``: an LSTM controller trained with REINFORCE, Zoph & Le (2017).

Layer by layer the LSTM emits filter height, filter width, stride height, stride width and number
of filters, a softmax per token, each prediction embedded and fed back as the next input. Before
each layer's tokens an anchor step gives the hidden state ``h_i``; earlier layer j feeds layer i
with probability ``sigmoid(v^T tanh(W_prev h_j + W_curr h_i))``.

Training: ``loss = -A * log p(arch) - entropy_weight * H + skip_penalty * KL(q || skip_target)``
with the advantage ``A = R - b``, ``b`` an exponential moving average of past rewards (it starts at
the first reward), and the KL between each sampled connection probability and the target density,
averaged. With ``normalize`` the advantage is divided by the root of a moving average of past
squared advantages, so the step size does not depend on the scale of the rewards (accuracies of
similar children differ by hundredths; synthetic rewards by tenths).
"""

from __future__ import annotations

import torch
from torch import nn

from nas_cli.errors import UserError
from nas_cli.nas.controllers.base import Controller
from nas_cli.nas.spaces import TOKENS, ZophSpace


class _Policy(nn.Module):
    def __init__(self, space: ZophSpace, hidden: int):
        super().__init__()
        self.cell = nn.LSTMCell(hidden, hidden)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.after_anchor = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.ModuleDict({t: nn.Embedding(len(space.choices[t]), hidden) for t in TOKENS})
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, len(space.choices[t])) for t in TOKENS})
        self.w_prev = nn.Linear(hidden, hidden, bias=False)
        self.w_curr = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)  # Zoph & Le: uniform in [-0.08, 0.08]; close enough and symmetric


class Reinforce(Controller):
    name = "reinforce"

    def __init__(self, space: ZophSpace, seed: int = 0, hidden: int = 35, lr: float = 0.01,
                 baseline_decay: float = 0.8, entropy_weight: float = 1e-4, skip_penalty: float = 0.0,
                 skip_target: float = 0.4, normalize: bool = True):
        if not isinstance(space, ZophSpace):
            raise UserError("controller=reinforce proposes in the Zoph space: use space=zoph")
        super().__init__(space, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = _Policy(space, int(hidden))
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=float(lr))
        self.baseline_decay, self.entropy_weight = float(baseline_decay), float(entropy_weight)
        self.skip_penalty, self.skip_target = float(skip_penalty), float(skip_target)
        self.normalize = bool(normalize)
        self.baseline: float | None = None
        self.advantage_sq: float | None = None  # moving average of squared advantages (normalize)

    def run(self, arch: list[dict] | None = None):
        """Sample an architecture (``arch=None``) or score a given one; returns (arch, log p, entropy, skip KL)."""
        p = self.policy
        space = self.space
        h = c = torch.zeros_like(p.start)
        x = p.start
        anchors: list[torch.Tensor] = []
        logp, entropy, kl, n_links = torch.zeros(()), torch.zeros(()), torch.zeros(()), 0
        out = []
        rho = min(max(self.skip_target, 1e-6), 1 - 1e-6)
        for i in range(space.layers):
            h, c = p.cell(x, (h, c))
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
            layer = {"type": "conv"}
            for tok in TOKENS:
                h, c = p.cell(x, (h, c))
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
        with torch.no_grad():
            return self.run()[0]

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
            self.advantage_sq = sq if self.advantage_sq is None else (
                self.baseline_decay * self.advantage_sq + (1 - self.baseline_decay) * sq)
            advantage /= self.advantage_sq ** 0.5
        return advantage

    def observe(self, arch: list[dict], reward: float) -> None:
        advantage = self.advantage(reward)
        _, logp, entropy, kl = self.run(arch)
        loss = -advantage * logp - self.entropy_weight * entropy + self.skip_penalty * kl
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def extra_state(self) -> dict:
        return {"baseline": self.baseline, "advantage_sq": self.advantage_sq}

    def load_extra_state(self, state: dict) -> None:
        self.baseline, self.advantage_sq = state["baseline"], state.get("advantage_sq")

    def tensor_state(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_tensor_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
