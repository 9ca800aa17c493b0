"""Is the search searching, and is it collapsing? What search-darts records about alpha each epoch.

- **Entropy and argmax.** The mean entropy of the edges' softmax(alpha) starts at ln K (K ops: uniform); its
  drop, as a share of ln K, says how far alpha has moved from uniform, and the edges whose argmax still
  changes over the last epochs say whether the derived cell has settled.
- **The Hessian's dominant eigenvalue** of the architecture loss with respect to alpha, by power iteration
  on Hessian-vector products. Zela et al. (2020, RobustDARTS) showed that it grows as DARTS drifts to
  parameter-free cells, and stop the search once its windowed mean has grown by 1/0.75 (``HessianStop``).
- **Parameter-free share** of the derived cells' ops (pools, skip connections): the symptom itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from nas_cli.engine.early_stop import EarlyStopping
from nas_cli.errors import UserError

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"  # an op index a character: the argmax column stays short
PARAMETER_FREE = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
SEARCHING = 0.10  # an entropy drop below this share of ln K: alpha has barely left uniform
SETTLED = 0.10  # at most this share of the edges may change their argmax over the last 3 epochs of a settled search
POWER_ITERATIONS = 20  # Hessian-vector products per eigenvalue (RobustDARTS' analysis uses 20 too)


def argmax_string(alphas: Sequence[torch.Tensor]) -> str:
    """Each edge's strongest op as one character, the cell kinds joined by ``|`` (``"3401...|7730..."``)."""
    return "|".join("".join(DIGITS[int(i)] for i in a.detach().argmax(-1).flatten().tolist()) for a in alphas)


def argmax_changes(history: Sequence[str], last: int = 3) -> int | None:
    """Edges whose argmax changed at least once over the last ``last`` epochs (``history``: one
    ``argmax_string`` an epoch, oldest first); None before ``last + 1`` epochs exist."""
    if len(history) < last + 1:
        return None
    window = [s.replace("|", "") for s in history[-(last + 1) :]]
    return sum(len({s[e] for s in window}) > 1 for e in range(len(window[0])))


def entropy_drop(entropy: float, num_ops: int) -> float:
    """How far the mean edge entropy has fallen from uniform (ln K), as a share of ln K."""
    return (math.log(num_ops) - entropy) / math.log(num_ops)


def parameter_free_share(cells: Sequence[Sequence[tuple[str, int]]]) -> float:
    """The share of the derived cells' ops that hold no weights (pools, skip connections)."""
    ops = [op for cell in cells for op, _ in cell]
    return sum(op in PARAMETER_FREE for op in ops) / max(len(ops), 1)


def dominant_eigenvalue(
    loss: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    iterations: int = POWER_ITERATIONS,
    generator: torch.Generator | None = None,
) -> float:
    """The eigenvalue of largest magnitude of the Hessian of ``loss()`` with respect to ``params``, by power
    iteration: v <- Hv / |Hv| from a seeded random start, each Hv a double backward pass (Pearlmutter's
    trick: the gradient of g.v), never the Hessian itself. Returns the Rayleigh quotient v.Hv of the last v."""
    found = torch.autograd.grad(loss(), [p for p in params if p.requires_grad], create_graph=True, allow_unused=True)
    # alpha of a cell kind the network lacks (fewer than 3 cells: no reduction) plays no part
    params, grads = zip(*[(p, g) for p, g in zip([p for p in params if p.requires_grad], found) if g is not None])
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    eigenvalue = 0.0
    for i in range(iterations):
        norm = torch.stack([(u * u).sum() for u in v]).sum().sqrt()
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=i < iterations - 1)
        eigenvalue = float(torch.stack([(a * b).sum() for a, b in zip(v, hv)]).sum())
        v = [h.detach() for h in hv]
    return eigenvalue


class HessianStop(EarlyStopping):
    """RobustDARTS' early stop (DARTS-ES, Zela et al. 2020): with lambda-bar(i) the mean dominant eigenvalue of
    the last ``window`` measurements, stop at measurement i once lambda-bar(i - window) / lambda-bar(i) < 0.75;
    the search's result is then the architecture of the epoch of measurement i - window."""

    RATIO = 0.75

    def __init__(self, window: int = 5, monitor: str = "hessian_eigenvalue"):
        if int(window) < 1:
            raise UserError(f"arch.hessian_window={window}: must be 1 or more")
        super().__init__()
        self.window, self.hessian_monitor = int(window), monitor
        self.measured: list[tuple[int, float]] = []  # (epoch, eigenvalue) of every measurement
        self.chosen_epoch: int | None = None

    def fresh(self) -> HessianStop:
        return HessianStop(self.window, self.hessian_monitor)

    def update(self, row: dict) -> bool:
        value = row.get(self.hessian_monitor)
        if value is None or not math.isfinite(float(value)):
            return False
        self.measured.append((int(row["epoch"]), float(value)))
        k = self.window
        if len(self.measured) < 2 * k:
            return False
        values = [v for _, v in self.measured]
        before, now = sum(values[-2 * k : -k]) / k, sum(values[-k:]) / k
        if now > 0 and before / now < self.RATIO:
            self.stopped_epoch, self.chosen_epoch = int(row["epoch"]), self.measured[-k - 1][0]
            return True
        return False

    def reason(self) -> str:
        return (
            f"the Hessian's dominant eigenvalue grew by more than 1/{self.RATIO} over {self.window} measurements "
            f"(RobustDARTS' rule); the result is the architecture of epoch {self.chosen_epoch}"
        )

    def state_dict(self) -> dict:
        return {"measured": self.measured, "stopped_epoch": self.stopped_epoch, "chosen_epoch": self.chosen_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.measured = [(int(e), float(v)) for e, v in state.get("measured", [])]
        self.stopped_epoch, self.chosen_epoch = state.get("stopped_epoch"), state.get("chosen_epoch")

    def figures(self) -> dict:
        stopped = self.stopped_epoch is not None
        return {
            "stopped_early": stopped,
            **({"stopped_epoch": self.stopped_epoch, "stop_reason": self.reason()} if stopped else {}),
            "hessian_chosen_epoch": self.chosen_epoch,
        }
