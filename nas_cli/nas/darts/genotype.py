"""Derive a discrete cell from alpha and keep it as JSON.

Each intermediate node keeps its two strongest incoming edges (strength: the edge's best
non-``none`` softmax weight, times its edge-normalisation weight when there is one), each with
its arg-max non-``none`` op. ``max_skip`` caps skip_connect in the normal cell: the weakest
skips give way to their edge's next op (or edge) until at most ``max_skip`` remain.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nas_cli.errors import UserError
from nas_cli.runs.record import read_json


@dataclass
class Genotype:
    normal: list[tuple[str, int]]  # (op, input state) pairs, two per node: inputs 0, 1 are the cell inputs
    reduce: list[tuple[str, int]]
    normal_concat: list[int] = field(default_factory=list)
    reduce_concat: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        def cell(pairs):
            return " ".join(f"{op}<{j}" for op, j in pairs)
        return f"normal[{cell(self.normal)}] reduce[{cell(self.reduce)}]"

    def skip_count(self, kind: str = "normal") -> int:
        return sum(op == "skip_connect" for op, _ in getattr(self, kind))

    def to_dict(self) -> dict:
        return {k: [list(p) for p in v] if k in ("normal", "reduce") else list(v) for k, v in asdict(self).items()}

    def save(self, path: str | Path) -> None:
        from nas_cli.runs.record import atomic_write

        text = json.dumps(self.to_dict(), indent=2)
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))

    @classmethod
    def from_dict(cls, data: dict) -> Genotype:
        try:
            return cls(normal=[(str(o), int(j)) for o, j in data["normal"]],
                       reduce=[(str(o), int(j)) for o, j in data["reduce"]],
                       normal_concat=[int(i) for i in data.get("normal_concat") or []],
                       reduce_concat=[int(i) for i in data.get("reduce_concat") or []])
        except (KeyError, TypeError, ValueError) as ex:
            raise UserError(f"not a DARTS genotype (needs 'normal' and 'reduce' lists of [op, input]): {ex}") from ex

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """A genotype.json, a search run folder holding one, or a published cell's name (``PUBLISHED``)."""
        if isinstance(path, str) and path.upper() in PUBLISHED:
            return cls.from_dict(PUBLISHED[path.upper()].to_dict())
        return cls.from_dict(read_json(path, "model.genotype", "genotype.json",
                                       "a search run folder or its genotype.json, or one of "
                                       + ", ".join(PUBLISHED)))


def _published(normal: str, reduce: str) -> Genotype:
    """A cell written as 'op<input op<input ...' (two pairs a node, the 4 nodes concatenated)."""
    def pairs(text):
        return [(op, int(j)) for op, j in (item.split("<") for item in text.split())]
    return Genotype(pairs(normal), pairs(reduce), [2, 3, 4, 5], [2, 3, 4, 5])


# The cells the papers retrain (from their reference code's genotypes.py), for `model.genotype=NAME`:
# DARTS_V1 / DARTS_V2: Liu et al. 2019, first / second order (CIFAR-10 test error 3.00 / 2.76 %);
# PC_DARTS: Xu et al. 2020 on CIFAR-10 (2.57 %).
PUBLISHED = {
    "DARTS_V1": _published(
        "sep_conv_3x3<1 sep_conv_3x3<0 skip_connect<0 sep_conv_3x3<1 skip_connect<0 sep_conv_3x3<1 "
        "sep_conv_3x3<0 skip_connect<2",
        "max_pool_3x3<0 max_pool_3x3<1 skip_connect<2 max_pool_3x3<0 max_pool_3x3<0 skip_connect<2 "
        "skip_connect<2 avg_pool_3x3<0"),
    "DARTS_V2": _published(
        "sep_conv_3x3<0 sep_conv_3x3<1 sep_conv_3x3<0 sep_conv_3x3<1 sep_conv_3x3<1 skip_connect<0 "
        "skip_connect<0 dil_conv_3x3<2",
        "max_pool_3x3<0 max_pool_3x3<1 skip_connect<2 max_pool_3x3<1 max_pool_3x3<0 skip_connect<2 "
        "skip_connect<2 max_pool_3x3<1"),
    "PC_DARTS": _published(
        "sep_conv_3x3<1 skip_connect<0 sep_conv_3x3<0 dil_conv_3x3<1 sep_conv_5x5<0 sep_conv_3x3<1 "
        "avg_pool_3x3<0 dil_conv_3x3<1",
        "sep_conv_5x5<1 max_pool_3x3<0 sep_conv_5x5<1 sep_conv_5x5<2 sep_conv_3x3<0 sep_conv_3x3<3 "
        "sep_conv_3x3<1 sep_conv_3x3<2"),
}


def _parse(weights: torch.Tensor, primitives: list[str], nodes: int, edge_weights=None,
           banned: set[tuple[int, str]] = frozenset()) -> list[tuple[str, int, int, float]]:
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


def derive(alpha_normal, alpha_reduce, primitives: list[str], nodes: int, max_skip: int | None = None,
           beta_normal=None, beta_reduce=None) -> Genotype:
    """The discrete genotype of an architecture (alphas as logits; betas already normalised weights)."""
    wn = F.softmax(torch.as_tensor(alpha_normal).detach().float().cpu(), dim=-1)
    wr = F.softmax(torch.as_tensor(alpha_reduce).detach().float().cpu(), dim=-1)
    banned: set[tuple[int, str]] = set()
    normal = _parse(wn, primitives, nodes, beta_normal, banned)
    while max_skip is not None and sum(op == "skip_connect" for op, *_ in normal) > max_skip:
        weakest = min((c for c in normal if c[0] == "skip_connect"), key=lambda c: float(wn[c[2], primitives.index(c[0])]))
        banned.add((weakest[2], "skip_connect"))
        normal = _parse(wn, primitives, nodes, beta_normal, banned)
    reduce = _parse(wr, primitives, nodes, beta_reduce)
    concat = list(range(2, 2 + nodes))
    return Genotype([(o, j) for o, j, *_ in normal], [(o, j) for o, j, *_ in reduce], concat, list(concat))


def chosen_edges(genotype_cell: list[tuple[str, int]], nodes: int) -> list[tuple[int, str]]:
    """(edge index, op) of a derived cell's pairs, in the supernet's edge order."""
    out, start = [], 0
    for i in range(nodes):
        for op, j in genotype_cell[2 * i:2 * i + 2]:
            out.append((start + j, op))
        start += 2 + i
    return out


def alpha_entropy(alpha: torch.Tensor) -> float:
    """Mean entropy (nats) of the per-edge op distributions."""
    p = F.softmax(alpha.detach().float(), dim=-1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
