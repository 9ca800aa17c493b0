"""The network a DARTS genotype describes, trained from scratch by ``nas-cli train model=darts``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.nas.darts.genotype import Genotype
from nas_cli.nas.darts.ops import PRIMITIVES, build_cells, make_op, preprocess, stem


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero whole samples with probability p (scaling the rest by 1/(1-p))."""
    keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Cell(nn.Module):
    def __init__(self, pairs, concat, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = preprocess(c_pp, c_p, c, reduction_prev, affine=True)
        if len(pairs) % 2:
            raise UserError("genotype: every node needs two (op, input) pairs")
        for op, _ in pairs:
            if op not in PRIMITIVES or op == "none":
                raise UserError(f"genotype: '{op}' is not a DARTS op (or is 'none')")
        self.pairs = list(pairs)
        self.nodes = len(pairs) // 2
        self.concat = list(concat) or list(range(2, 2 + self.nodes))
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and j < 2 else 1, affine=True) for op, j in pairs)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(self.nodes):
            out = 0
            for k in (2 * i, 2 * i + 1):
                op_name, j = self.pairs[k]
                if j >= len(states):
                    raise UserError(f"genotype: node {i} reads state {j}, which does not exist yet")
                h = self.ops[k](states[j])
                if self.training and drop_prob > 0 and op_name != "skip_connect":
                    h = drop_path(h, drop_prob)
                out = out + h
            states.append(out)
        return torch.cat([states[i] for i in self.concat], dim=1)


class DARTSNetwork(nn.Module):
    """Stem, ``layers`` cells of the genotype (reductions at 1/3 and 2/3), pooling, linear classifier.

    Args:
        genotype: a ``genotype.json`` (or the search run folder holding one), or a dict.
        drop_path: the probability of dropping a path, raised linearly over ``epochs`` by ``set_epoch``
            when the caller does; used as is otherwise.
        auxiliary: not supported yet (must be false).
    """

    def __init__(self, in_shape, num_classes: int, genotype, layers: int = 8, init_channels: int = 16,
                 drop_path: float = 0.0, auxiliary: bool = False, stem_multiplier: int = 3):
        super().__init__()
        if genotype is None:
            raise UserError("model=darts needs model.genotype=PATH (a genotype.json from nas-cli search-darts)")
        if auxiliary:
            raise UserError("model.auxiliary=true is not supported yet; use false")
        if len(in_shape) != 3:
            raise UserError(f"model=darts needs image inputs (C, H, W), got {tuple(in_shape)}")
        g = Genotype.from_dict(dict(genotype)) if not isinstance(genotype, (str, bytes)) and hasattr(
            genotype, "keys") else Genotype.load(genotype)
        self.genotype = g
        self.drop_path = float(drop_path)
        self.stem = stem(in_shape[0], stem_multiplier * init_channels)

        def make_cell(c_pp, c_p, c_curr, reduction, reduction_prev):
            pairs, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
            cell = Cell(pairs, concat, c_pp, c_p, c_curr, reduction, reduction_prev)
            return cell, cell.multiplier * c_curr

        self.cells, c_p = build_cells(layers, init_channels, stem_multiplier, make_cell)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
