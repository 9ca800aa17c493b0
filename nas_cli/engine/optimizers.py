"""L-BFGS as a training mode: deterministic, full-batch (or fixed mini-batches), one closure per step."""

from __future__ import annotations

import torch

from nas_cli.data.bundle import TensorLoader
from nas_cli.errors import UserError


class LBFGS(torch.optim.LBFGS):
    """``torch.optim.LBFGS`` plus ``batch``: ``full`` (the whole training set per step) or N samples per step.

    Each engine iteration is one ``step(closure)``, in which L-BFGS runs up to
    ``max_iter`` evaluations with its line search.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        max_iter: int = 20,
        history_size: int = 100,
        line_search_fn: str | None = "strong_wolfe",
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        batch: str | int = "full",
        weight_decay: float = 0.0,
    ):
        if weight_decay:
            raise UserError("optim=lbfgs has no weight_decay: use regularizer.l2 instead")
        super().__init__(
            params,
            lr=lr,
            max_iter=max_iter,
            history_size=history_size,
            line_search_fn=line_search_fn,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
        )
        if batch != "full" and not (isinstance(batch, int) and batch > 0):
            raise UserError(f"optim.batch={batch}: use 'full' or a positive number of samples")
        self.batch = batch


def closure_batches(optimizer: LBFGS, loader, model) -> TensorLoader:
    """The batches L-BFGS steps on, after checking it can work with this run."""
    if not isinstance(loader, TensorLoader):
        raise UserError("optim=lbfgs needs in-memory data (mnist5k, digits, synthetic, cifar10), not a folder loader")
    if getattr(loader, "augment", None) is not None:
        raise UserError("optim=lbfgs is deterministic: turn data augmentation off (data.augment.*)")
    noisy = [type(m).__name__ for m in model.modules() if getattr(m, "p", 0)]  # Dropout, DropConnect
    if noisy:
        raise UserError(
            f"optim=lbfgs needs a deterministic loss: set the model's dropout/dropconnect to 0 "
            f"(found {', '.join(sorted(set(noisy)))})"
        )
    size = len(loader.x) if optimizer.batch == "full" else int(optimizer.batch)
    return TensorLoader(
        loader.x,
        loader.y,
        size,
        shuffle=optimizer.batch != "full",
        generator=loader.generator,
        mean=loader.mean,
        std=loader.std,
        on_device=loader.on_device,
    )
