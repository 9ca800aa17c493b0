"""The LSTM policies that ``controller=reinforce`` samples from, one per search space.

A policy walks a stacked LSTM through a child's decisions, layer by layer, and returns what it sampled (or
scores what it is given) with the log-probability, the entropy and the skip KL that REINFORCE needs
(``reinforce.py``). Both policies decide skips the same way: an anchor step gives layer i's hidden state
``h_i``, and earlier layer j feeds layer i with probability ``sigmoid(v^T tanh(W_prev h_j + W_curr h_i))``.

- ``ZophPolicy`` (Zoph & Le 2017, ``space=zoph``): per layer the anchor, then five tokens (filter height and
  width, stride height and width, filters), a softmax per token shared by all layers so the child can grow,
  each prediction embedded and fed back. It samples architectures (``arch.py`` layer lists) directly.
- ``EnasPolicy`` (Pham et al. 2018, ``space=enas_macro``; the reference code's ``GeneralController`` with
  ``search_whole_channels``): per layer one step emits the operation, a second one the anchor, whose attention
  over the earlier anchors gives the skips; the next layer's input is the mean of the chosen anchors' hidden
  states. It samples the space's choices (``[{"op", "skips"}, ...]``); ``to_arch`` / ``from_arch`` convert.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.nas.rl.spaces import TOKENS, EnasMacroSpace, ZophSpace

Squash = Callable[[torch.Tensor], torch.Tensor]
# (what was sampled or scored, log p, entropy, summed skip KL, skip decisions made)
Walk = tuple[list[dict], torch.Tensor, torch.Tensor, torch.Tensor, int]


class LstmPolicy(nn.Module):
    """The stacked LSTM both policies step through, and the skip decisions they share."""

    cells: nn.ModuleList
    start: nn.Parameter

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

    def init_uniform(self, init_range: float) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)

    def to_arch(self, sample: list[dict]) -> list[dict]:
        return sample

    def from_arch(self, arch: list[dict]) -> list[dict]:
        return arch


def skip_terms(logits: torch.Tensor, take: torch.Tensor, target: float):
    """Log p of the skip decisions ``take`` under independent Bernoullis of ``logits``, their entropy, and
    their summed KL(q || target)."""
    t = take.float()
    logp = (t * F.logsigmoid(logits) + (1 - t) * F.logsigmoid(-logits)).sum()
    q = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    rho = min(max(target, 1e-6), 1 - 1e-6)
    entropy = -(q * q.log() + (1 - q) * (1 - q).log()).sum()
    kl = (q * (q / rho).log() + (1 - q) * ((1 - q) / (1 - rho)).log()).sum()
    return logp, entropy, kl


def choose_skips(logits: torch.Tensor, given: list[int] | None, generator: torch.Generator) -> torch.Tensor:
    """Which earlier layers feed this one: sampled from ``sigmoid(logits)``, or the ``given`` ones."""
    if given is None:
        return torch.rand(len(logits), generator=generator) < torch.sigmoid(logits.detach())
    return torch.tensor([j in given for j in range(len(logits))])


def choose(log_probs: torch.Tensor, given: int | None, generator: torch.Generator) -> int:
    if given is None:
        return int(torch.multinomial(log_probs.detach().exp(), 1, generator=generator))
    return given


class ZophPolicy(LstmPolicy):
    def __init__(self, space: ZophSpace, hidden: int, layers: int, init_range: float):
        super().__init__()
        self.space = space
        self.cells = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(layers))
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.after_anchor = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.ModuleDict({t: nn.Embedding(len(space.choices[t]), hidden) for t in TOKENS})
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, len(space.choices[t])) for t in TOKENS})
        self.w_prev = nn.Linear(hidden, hidden, bias=False)
        self.w_curr = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.init_uniform(init_range)  # Zoph & Le: uniform in [-0.08, 0.08]

    def walk(self, arch: list[dict] | None, layers: int, generator: torch.Generator, squash: Squash, target: float):
        state = self.zero_state()
        x = self.start
        anchors: list[torch.Tensor] = []
        logp, entropy, kl, links = torch.zeros(()), torch.zeros(()), torch.zeros(()), 0
        out = []
        for i in range(layers):
            h, state = self.step(x, state)
            inputs: list[int] = []
            if i > 0:
                logits = squash(self.v(torch.tanh(torch.cat(anchors) + self.w_curr(h))).squeeze(1))  # (i,)
                take = choose_skips(logits, None if arch is None else arch[i]["inputs"], generator)
                inputs = [j for j in range(i) if take[j]]
                terms = skip_terms(logits, take, target)
                logp, entropy, kl, links = logp + terms[0], entropy + terms[1], kl + terms[2], links + i
            anchors.append(self.w_prev(h))
            x = self.after_anchor
            layer: dict[str, object] = {"type": "conv"}
            for tok in TOKENS:
                h, state = self.step(x, state)
                log_probs = torch.log_softmax(squash(self.heads[tok](h)), dim=1)[0]
                choices = self.space.choices[tok]
                given = None
                if arch is not None:
                    if arch[i][tok] not in choices:
                        raise UserError(f"layer {i}: {tok}={arch[i][tok]} is not among the choices {choices}")
                    given = choices.index(arch[i][tok])
                idx = choose(log_probs, given, generator)
                logp = logp + log_probs[idx]
                entropy = entropy - (log_probs.exp() * log_probs).sum()
                layer[tok] = int(choices[idx])
                x = self.embed[tok](torch.tensor([idx]))
            layer["inputs"] = inputs
            out.append(layer)
        return out, logp, entropy, kl, links


class EnasPolicy(LstmPolicy):
    """A skip's probability is ``sigmoid(2 s)``, ``s`` the squashed attention score: the reference code's
    two-way softmax over ``(-s, s)``."""

    def __init__(self, space: EnasMacroSpace, hidden: int, layers: int, init_range: float):
        super().__init__()
        self.space = space
        self.cells = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(layers))
        self.start = nn.Parameter(torch.zeros(1, hidden))  # g_emb: the first input, and layer 0's after its anchor
        self.op_embed = nn.Embedding(len(space.choices["op"]), hidden)
        self.head = nn.Linear(hidden, len(space.choices["op"]), bias=False)
        self.w_prev = nn.Linear(hidden, hidden, bias=False)  # w_attn_1, on the earlier anchors
        self.w_curr = nn.Linear(hidden, hidden, bias=False)  # w_attn_2, on this layer's
        self.v = nn.Linear(hidden, 1, bias=False)
        self.init_uniform(init_range)  # the reference code: uniform in [-0.1, 0.1]

    def to_arch(self, sample: list[dict]) -> list[dict]:
        return self.space.to_arch(sample)

    def from_arch(self, arch: list[dict]) -> list[dict]:
        return self.space.from_arch(arch)

    def walk(self, choice: list[dict] | None, layers: int, generator: torch.Generator, squash: Squash, target: float):
        ops = self.space.choices["op"]
        state = self.zero_state()
        x: torch.Tensor = self.start
        anchors: list[torch.Tensor] = []  # w_prev h_j, for the attention
        hiddens: list[torch.Tensor] = []  # h_j, averaged into the next input over the chosen skips
        logp, entropy, kl, links = torch.zeros(()), torch.zeros(()), torch.zeros(()), 0
        out = []
        for i in range(layers):
            h, state = self.step(x, state)
            log_probs = torch.log_softmax(squash(self.head(h)), dim=1)[0]
            given = None
            if choice is not None:
                if choice[i]["op"] not in ops:
                    raise UserError(f"layer {i}: operation {choice[i]['op']} is not among space.ops {ops}")
                given = ops.index(choice[i]["op"])
            idx = choose(log_probs, given, generator)
            logp = logp + log_probs[idx]
            entropy = entropy - (log_probs.exp() * log_probs).sum()
            h, state = self.step(self.op_embed(torch.tensor([idx])), state)
            skips: list[int] = []
            x = self.start
            if i > 0:
                logits = 2 * squash(self.v(torch.tanh(torch.cat(anchors) + self.w_curr(h))).squeeze(1))  # (i,)
                take = choose_skips(logits, None if choice is None else choice[i]["skips"], generator)
                skips = [j for j in range(i) if take[j]]
                terms = skip_terms(logits, take, target)
                logp, entropy, kl, links = logp + terms[0], entropy + terms[1], kl + terms[2], links + i
                x = (take.float() @ torch.cat(hiddens)).unsqueeze(0) / (1 + take.float().sum())  # the anchors' mean
            anchors.append(self.w_prev(h))
            hiddens.append(h)
            out.append({"op": ops[idx], "skips": skips})
        return out, logp, entropy, kl, links


POLICIES: dict[type, type] = {ZophSpace: ZophPolicy, EnasMacroSpace: EnasPolicy}


def policy_for(space, hidden: int, layers: int, init_range: float) -> ZophPolicy | EnasPolicy:
    for kind, policy in POLICIES.items():
        if isinstance(space, kind):
            return policy(space, hidden, layers, init_range)
    raise UserError(f"controller=reinforce proposes in space=zoph or space=enas_macro, not space={space.kind}")
