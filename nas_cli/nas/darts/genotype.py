"""Derive a discrete cell from alpha (the genotype itself, and its checks, are ``nas_cli.models.genotype``).

Each intermediate node keeps its two strongest incoming edges (strength: the edge's best
non-``none`` softmax weight, times its edge-normalisation weight when there is one), each with
its arg-max non-``none`` op. ``max_skip`` caps skip_connect in the normal cell: the weakest
skips give way to their edge's next op (or edge) until at most ``max_skip`` remain.
"""

from __future__ import annotations

from collections.abc import Container

import torch
import torch.nn.functional as F

from nas_cli.models.genotype import PUBLISHED, Genotype

__all__ = ["PUBLISHED", "Genotype", "alpha_entropy", "chosen_edges", "derive"]


def _parse(
    weights: torch.Tensor,
    primitives: list[str],
    nodes: int,
    edge_weights=None,
    banned: Container[tuple[int, str]] = frozenset(),
) -> list[tuple[str, int, int, float]]:
    """(op, input, edge index, strength) for each kept edge, two per node."""
    none = primitives.index("none") if "none" in primitives else None
    chosen, start = [], 0
    for i in range(nodes):
        candidates = []
        for j in range(2 + i):
            e = start + j
            best, best_k = -1.0, None
            for k, p in enumerate(primitives):
                if k == none or (e, p) in banned:
                    continue
                w = float(weights[e, k])
                if w > best:
                    best, best_k = w, k
            if best_k is None:
                continue
            scale = float(edge_weights[e]) if edge_weights is not None else 1.0
            candidates.append((best * scale, j, best_k, e))
        candidates.sort(key=lambda c: -c[0])
        for strength, j, k, e in candidates[:2]:
            chosen.append((primitives[k], j, e, strength))
        start += 2 + i
    return chosen


def derive(
    alpha_normal,
    alpha_reduce,
    primitives: list[str],
    nodes: int,
    max_skip: int | None = None,
    beta_normal=None,
    beta_reduce=None,
) -> Genotype:
    """The discrete genotype of an architecture (alphas as logits; betas already normalised weights)."""
    wn = F.softmax(torch.as_tensor(alpha_normal).detach().float().cpu(), dim=-1)
    wr = F.softmax(torch.as_tensor(alpha_reduce).detach().float().cpu(), dim=-1)
    banned: set[tuple[int, str]] = set()
    normal = _parse(wn, primitives, nodes, beta_normal, banned)
    while max_skip is not None and sum(op == "skip_connect" for op, *_ in normal) > max_skip:
        weakest = min(
            (c for c in normal if c[0] == "skip_connect"), key=lambda c: float(wn[c[2], primitives.index(c[0])])
        )
        banned.add((weakest[2], "skip_connect"))
        normal = _parse(wn, primitives, nodes, beta_normal, banned)
    reduce = _parse(wr, primitives, nodes, beta_reduce)
    concat = list(range(2, 2 + nodes))
    return Genotype([(o, j) for o, j, *_ in normal], [(o, j) for o, j, *_ in reduce], concat, list(concat))


def chosen_edges(genotype_cell: list[tuple[str, int]], nodes: int) -> list[tuple[int, str]]:
    """(edge index, op) of a derived cell's pairs, in the supernet's edge order."""
    out, start = [], 0
    for i in range(nodes):
        for op, j in genotype_cell[2 * i : 2 * i + 2]:
            out.append((start + j, op))
        start += 2 + i
    return out


def alpha_entropy(alpha: torch.Tensor) -> float:
    """Mean entropy (nats) of the per-edge op distributions."""
    p = F.softmax(alpha.detach().float(), dim=-1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
