"""Weight averaging (EMA / Polyak) and ensembles by averaged softmax."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from nas_cli.engine.distributed import all_reduce_sum
from nas_cli.errors import UserError


class EMA:
    """An exponential moving average of a model's weights, updated after every optimizer step.

    ``decay`` in (0, 1): ``avg = decay * avg + (1 - decay) * w``. ``decay="polyak"``:
    the plain running mean of all iterates (Polyak-Ruppert averaging). Buffers (BatchNorm
    statistics) are copied from the live model, as they are not trained weights.
    """

    def __init__(self, model: nn.Module, decay: float | str):
        if decay != "polyak" and not (0.0 < float(decay) < 1.0):
            raise UserError(f"ema.decay must be in (0, 1) or 'polyak', got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self._params, self._buffers = list(self.module.parameters()), list(self.module.buffers())
        for p in self._params:
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 / (self.updates + 1) if self.decay == "polyak" else 1.0 - float(self.decay)
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
    correct, seen = all_reduce_sum([correct.item(), seen], device)  # each process scored its shard
    return correct / max(seen, 1)
