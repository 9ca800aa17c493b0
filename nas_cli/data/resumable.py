"""Passes over a loader that can be saved mid-way and resumed at the very same batch.

A loader's order (and any per-pass randomness it draws from its generator) is fixed by its
generator's state when the pass begins; that state plus the number of batches taken says
exactly where a pass stands. A resumed pass restores the state and draws the same batches
again, discarding those already used: augmentation draws from torch's global RNG on the way,
so the caller restores the global RNG after the pass has caught up. A loader with ``iter_from``
(``TensorLoader``) starts at the batch directly, making none of the skipped ones.
"""

from __future__ import annotations

import torch


class LoaderPass:
    """One pass over ``loader``; ``state_dict()`` says where it stands, ``state=`` resumes it there."""

    def __init__(self, loader, generator: torch.Generator | None, state: dict | None = None):
        if state and generator is not None:
            generator.set_state(state["start"].cpu())
        self.start = generator.get_state() if generator is not None else None
        self.taken = int(state["taken"]) if state else 0
        start = getattr(loader, "iter_from", None)
        if start is not None:
            self._it = start(self.taken)
            return
        self._it = iter(loader)
        for _ in range(self.taken):
            next(self._it)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self.taken += 1
        return batch

    def state_dict(self) -> dict:
        return {"start": self.start, "taken": self.taken}


class BatchStream:
    """Endless batches from ``loader``, pass after pass (search-darts' architecture batches)."""

    def __init__(self, loader, generator: torch.Generator | None):
        self.loader, self.generator = loader, generator
        self._pass: LoaderPass | None = None

    def __next__(self):
        if self._pass is not None:
            try:
                return next(self._pass)
            except StopIteration:
                pass
        self._pass = LoaderPass(self.loader, self.generator)
        return next(self._pass)

    def state_dict(self) -> dict:
        return self._pass.state_dict() if self._pass is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._pass = LoaderPass(self.loader, self.generator, state) if state else None
