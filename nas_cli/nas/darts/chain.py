"""A second, simple search space: a chain of slots, each a softmax(alpha)-weighted mix of candidates.

Candidates are named ``linear_K`` (ReLU(Linear(in, K))) or ``residual_K`` (the input plus
ReLU(Linear(in, K))); a slot's output has the widest candidate's width, narrower outputs (and
inputs of another width, for the residual shortcut) are zero-padded or cut. Searched by the same
bilevel step (``nas_cli.nas.darts.architect``); each slot's derived choice is its arg-max.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError


def _fit(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x[:, :width]


class Candidate(nn.Module):
    def __init__(self, name: str, in_features: int, width: int):
        super().__init__()
        kind, _, units = name.partition("_")
        if kind not in ("linear", "residual") or not units.isdigit():
            raise UserError(f"supernet.candidates: '{name}' is not linear_K or residual_K")
        self.residual, self.width = kind == "residual", width
        self.linear = nn.Linear(in_features, int(units))

    def forward(self, x):
        out = _fit(F.relu(self.linear(x)), self.width)
        return out + _fit(x, self.width) if self.residual else out


class ChainArch(nn.Module):
    def __init__(self, slots: int, candidates: int):
        super().__init__()
        self.normal = nn.Parameter(1e-3 * torch.randn(slots, candidates))
        self.edge_norm = False


class ChainNetwork(nn.Module):
    arch: ChainArch  # set with object.__setattr__ in __init__, so that nn.Module does not register it

    def __init__(self, in_shape, num_classes: int, slots: int, candidates: list[str]):
        super().__init__()
        if slots < 1 or not candidates:
            raise UserError("supernet=chain needs supernet.slots >= 1 and a list of supernet.candidates")
        self.candidates = list(candidates)
        width = max(int(c.partition("_")[2] or 0) for c in candidates)
        object.__setattr__(self, "arch", ChainArch(slots, len(candidates)))
        self.detach_arch = False
        self.epoch = 0  # the epoch in progress (0-based), set by the engine: the arch warmup reads it
        features = math.prod(in_shape)
        self.slots = nn.ModuleList()
        for _ in range(slots):
            self.slots.append(nn.ModuleList(Candidate(c, features, width) for c in candidates))
            features = width
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        alpha = self.arch.normal.detach() if self.detach_arch else self.arch.normal
        weights = F.softmax(alpha, dim=-1)
        h = x.flatten(1)
        for slot, w in zip(self.slots, weights):
            h = sum(wk * op(h) for wk, op in zip(w, slot))
        return self.classifier(h)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training engine at each epoch's start (a resumed epoch included)."""
        self.epoch = epoch

    def to(self, *args, **kwargs):
        self.arch.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def derive(self) -> ChainGenotype:
        """The chosen candidate of every slot (arg-max of its alpha)."""
        return ChainGenotype([self.candidates[int(i)] for i in self.arch.normal.argmax(-1)])


class ChainGenotype:
    """The derived chain: one candidate per slot (``genotype.json``: space and choices)."""

    def __init__(self, choices: list[str]):
        self.choices = list(choices)

    def __str__(self) -> str:
        return "chain[" + " ".join(self.choices) + "]"

    def __eq__(self, other) -> bool:
        return isinstance(other, ChainGenotype) and other.choices == self.choices

    def skip_count(self, kind: str = "normal") -> int:
        return sum(c.startswith("residual") for c in self.choices)

    def to_dict(self) -> dict:
        return {"space": "chain", "choices": list(self.choices)}

    def save(self, path) -> None:
        import json
        from pathlib import Path

        from nas_cli.runs.record import atomic_write

        text = json.dumps(self.to_dict(), indent=2)
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))
