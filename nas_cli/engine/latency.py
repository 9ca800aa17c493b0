"""Eval-mode latency of models on the same input, measured in alternation so noise hits all alike."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.inference_mode()
def median_latencies(
    models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 30, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per forward of each model on ``x``; the models take turns every repeat."""
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
