"""A DARTS genotype: the discrete cell a search derives and ``model=darts`` retrains, kept as JSON.

A genotype read from JSON is someone's data: it is checked whole when loaded, before any run
starts, against the rules of quark0/darts' ``Cell``: node ``i`` (0-based) adds two ops, each on
a state that already exists, ``states[0..i+1]`` (0 and 1 are the cell's inputs, ``2 + k`` the
output of node ``k``); ops are DARTS ops other than ``none``; ``concat`` lists intermediate
nodes (2..nodes+1), left out for all of them. A genotype of a search that did not end ``ok``
(its folder's ``summary.json``) is refused: its alpha is not a result.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from nas_cli.errors import UserError
from nas_cli.models.darts_ops import PRIMITIVES
from nas_cli.runs.files import GENOTYPE, GENOTYPES
from nas_cli.runs.record import read_json, read_summary

OPS = [p for p in PRIMITIVES if p != "none"]  # what a derived cell's edge can hold: 'none' is no edge


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
    def from_dict(cls, data, source: str = "model.genotype") -> Genotype:
        """The genotype in ``data`` (a genotype.json's content), checked whole: a broken one is a one-line
        ``UserError`` that names ``source`` (the file), the key and the rule it breaks."""
        if not isinstance(data, dict) or "normal" not in data or "reduce" not in data:
            raise UserError(f"{source}: not a DARTS genotype (needs 'normal' and 'reduce' lists of [op, input] pairs)")
        cells = {kind: _cell(data[kind], kind, source) for kind in ("normal", "reduce")}
        return cls(
            normal=cells["normal"],
            reduce=cells["reduce"],
            normal_concat=_concat(data, "normal", len(cells["normal"]) // 2, source),
            reduce_concat=_concat(data, "reduce", len(cells["reduce"]) // 2, source),
        )

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """A genotype.json, a search run folder holding one, or a published cell's name (``PUBLISHED``)."""
        if isinstance(path, str) and path.upper() in PUBLISHED:
            return cls.from_dict(PUBLISHED[path.upper()].to_dict(), path.upper())
        file = Path(path) / GENOTYPE if Path(path).is_dir() else Path(path)
        _refuse_unfinished_search(path, file.parent)
        return cls.from_dict(
            read_json(
                path,
                "model.genotype",
                GENOTYPE,
                "a search run folder or its genotype.json, or one of " + ", ".join(PUBLISHED),
            ),
            f"model.genotype={file}",
        )


def random_genotype(
    nodes: int, primitives: list[str], generator: np.random.Generator | torch.Generator | int
) -> Genotype:
    """A cell pair drawn uniformly from the DARTS space, as random search samples it (Li & Talwalkar 2019).

    In each cell (normal, reduce), node ``i`` picks two distinct inputs uniformly among ``states[0..i+1]``
    and, for each, an op uniformly among ``primitives`` other than ``none``; every intermediate node is
    concatenated. ``generator``: a numpy or torch generator, or an int seed (a fresh numpy generator).
    """
    ops = [p for p in primitives if p != "none"]
    if nodes < 1 or not ops:
        raise ValueError(f"random_genotype needs nodes >= 1 and an op besides 'none' (nodes={nodes}, {primitives})")
    if isinstance(generator, torch.Generator):
        g = generator

        def choose(n: int, k: int) -> list[int]:
            return torch.randperm(n, generator=g)[:k].tolist()

        def pick(n: int) -> int:
            return int(torch.randint(n, (1,), generator=g).item())

    else:
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)

        def choose(n: int, k: int) -> list[int]:
            return [int(j) for j in rng.choice(n, size=k, replace=False)]

        def pick(n: int) -> int:
            return int(rng.integers(n))

    def cell() -> list[tuple[str, int]]:
        # node i reads states 0..i+1: its two distinct inputs, then an op for each
        return [(ops[pick(len(ops))], j) for i in range(nodes) for j in choose(i + 2, 2)]

    concat = list(range(2, 2 + nodes))
    normal = cell()
    return Genotype(normal=normal, reduce=cell(), normal_concat=concat, reduce_concat=list(concat))


def _cell(pairs, kind: str, source: str) -> list[tuple[str, int]]:
    """A cell's (op, input) pairs, two per node, each input a state that exists when the node runs."""
    if not isinstance(pairs, list) or not pairs or len(pairs) % 2:
        count = f"{len(pairs)} pairs" if isinstance(pairs, list) else f"a {type(pairs).__name__}"
        raise UserError(
            f"{source}: {kind} has {count}: a cell is a list of [op, input] pairs, two per node (at least one node)"
        )
    out = []
    for k, pair in enumerate(pairs):
        where = f"{source}: {kind}[{k}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise UserError(f"{where} is {json.dumps(pair)}: each entry is an [op, input] pair")
        op, j = pair
        if op not in OPS:
            raise UserError(f"{where}: '{op}' is not a DARTS op: use one of {', '.join(OPS)}")
        node = k // 2
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j <= node + 1:
            raise UserError(
                f"{where}: input {json.dumps(j)} is not a state node {node} can read: node i reads "
                f"0 or 1 (the cell's inputs) or 2..i+1 (an earlier node), so 0..{node + 1} here"
            )
        out.append((op, j))
    return out


def _concat(data: dict, kind: str, nodes: int, source: str) -> list[int]:
    """The nodes a cell concatenates (2..nodes+1); left out (or null): all of them."""
    name = f"{kind}_concat"
    concat = data.get(name)
    if concat is None:
        return list(range(2, 2 + nodes))
    rule = f"the intermediate nodes whose outputs the cell concatenates, 2..{nodes + 1} (leave it out for all)"
    if not isinstance(concat, list) or not concat:
        raise UserError(f"{source}: {name} is {json.dumps(concat)}: list {rule}")
    for i in concat:
        if isinstance(i, bool) or not isinstance(i, int) or not 2 <= i <= nodes + 1:
            raise UserError(f"{source}: {name} holds {json.dumps(i)}: list {rule}")
    return list(concat)


def _refuse_unfinished_search(source, folder: Path) -> None:
    """A genotype in a search-darts run folder is a result only if that search ended ``ok``."""
    summary = read_summary(folder)
    if not summary or summary.get("command") != "search-darts" or summary.get("status") == "ok":
        return
    status = str(summary.get("status"))
    error = " ".join(str(summary.get("error") or "see its log").split())[:200]
    why = {
        "diverged": "diverged (a non-finite loss)",
        "failed": f"failed ({error})",
        "interrupted": f"was interrupted: finish it with nas-cli search-darts resume={folder}",
        "running": "has not finished (running, or killed)",
    }.get(status, f"ended {status}")
    epochs = sorted((folder / GENOTYPES).glob("epoch_*.json"))
    instead = f"retrain an epoch's ({epochs[-1]}, ...) or search again" if epochs else "search again"
    raise UserError(
        f"model.genotype={source}: the search in {folder} {why}, so it has no genotype to retrain; {instead}"
    )


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
        "skip_connect<2 avg_pool_3x3<0",
    ),
    "DARTS_V2": _published(
        "sep_conv_3x3<0 sep_conv_3x3<1 sep_conv_3x3<0 sep_conv_3x3<1 sep_conv_3x3<1 skip_connect<0 "
        "skip_connect<0 dil_conv_3x3<2",
        "max_pool_3x3<0 max_pool_3x3<1 skip_connect<2 max_pool_3x3<1 max_pool_3x3<0 skip_connect<2 "
        "skip_connect<2 max_pool_3x3<1",
    ),
    "PC_DARTS": _published(
        "sep_conv_3x3<1 skip_connect<0 sep_conv_3x3<0 dil_conv_3x3<1 sep_conv_5x5<0 sep_conv_3x3<1 "
        "avg_pool_3x3<0 dil_conv_3x3<1",
        "sep_conv_5x5<1 max_pool_3x3<0 sep_conv_5x5<1 sep_conv_5x5<2 sep_conv_3x3<0 sep_conv_3x3<3 "
        "sep_conv_3x3<1 sep_conv_3x3<2",
    ),
}
