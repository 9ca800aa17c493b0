"""Weight averaging (EMA / Polyak) and ensembles by averaged softmax."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from nas_cli.engine.distributed import all_reduce_sum
from nas_cli.errors import UserError


def check_decay(decay) -> float:
    """An EMA decay in (0, 1), or a UserError (also for a word other than 'polyak')."""
    try:
        value = float(decay)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:  # also false for nan
        raise UserError(f"ema.decay must be in (0, 1) or 'polyak', got {decay}")
    return value


class EMA:
    """An exponential moving average of a model's weights, updated after every optimizer step.

    ``decay`` in (0, 1): ``avg = decay * avg + (1 - decay) * w``, starting from the initial
    weights (the usual EMA, e.g. TensorFlow's ExponentialMovingAverage without its warm-up).
    ``decay="polyak"``: the plain running mean of the iterates after each step (Polyak-Ruppert
    averaging), ``mean(w_1..w_T)`` after T steps; the initial weights w_0 are not an iterate of
    the optimizer and carry no weight (the first update replaces them). Buffers (BatchNorm
    statistics) are copied from the live model, as they are not trained weights.
    """

    def __init__(self, model: nn.Module, decay: float | str):
        self.decay = decay if decay == "polyak" else check_decay(decay)
        self.module = copy.deepcopy(model).eval()
        self._params: list[torch.Tensor] = list(self.module.parameters())
        self._buffers = list(self.module.buffers())
        for p in self._params:
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # polyak: avg_t = avg_{t-1} + (w_t - avg_{t-1}) / t; at t = 1 the weight is 1, so avg_1 = w_1
        weight = 1.0 / self.updates if isinstance(self.decay, str) else 1.0 - self.decay  # a str is "polyak"
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], weight)  # one call a step
        if self._buffers:
            torch._foreach_copy_(self._buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@torch.inference_mode()
def ensemble_accuracy(models: Iterable[nn.Module], loader, device: torch.device) -> float:
    """Accuracy of the averaged softmax of ``models`` on ``loader``."""
    models = [m.eval() for m in models]
    correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        probs = torch.stack([m(x).softmax(dim=1) for m in models]).mean(0)
        correct += (probs.argmax(1) == y).sum()  # on the device: one sync at the end
        seen += len(y)
    total, count = all_reduce_sum([correct.item(), seen], device)  # each process scored its shard
    return total / max(count, 1)
