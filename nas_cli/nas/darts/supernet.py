"""The DARTS supernet: mixed ops on every edge, weighted by softmax(alpha).

``alpha`` lives in ``ArchParams``, apart from the network's weights: ``network.parameters()``
are the weights alone (what SGD trains) and ``network.arch`` the architecture (what Adam trains).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.models.darts_ops import (
    PRIMITIVES,
    build_cells,
    make_op,
    preprocess,
    stem,
)


def num_edges(nodes: int) -> int:
    """Edges of a cell: node i (0-based) has 2 + i inputs."""
    return sum(2 + i for i in range(nodes))


def add_all(terms: list[torch.Tensor]) -> torch.Tensor:
    """The sum of ``terms`` from the first one on: ``sum()`` starts from 0, one more kernel for nothing."""
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ArchParams(nn.Module):
    """alpha (edges x ops) for normal and reduction cells, init 1e-3 N(0,1); beta (edges) with edge_norm."""

    def __init__(self, nodes: int, primitives: list[str], edge_norm: bool = False):
        super().__init__()
        edges = num_edges(nodes)
        self.nodes, self.primitives, self.edge_norm = nodes, list(primitives), edge_norm
        self.normal = nn.Parameter(1e-3 * torch.randn(edges, len(primitives)))
        self.reduce = nn.Parameter(1e-3 * torch.randn(edges, len(primitives)))
        if edge_norm:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(edges))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(edges))

    def alpha(self, reduction: bool) -> torch.Tensor:
        return self.reduce if reduction else self.normal

    def edge_weights(self, reduction: bool) -> torch.Tensor | None:
        """Per-edge weights: softmax of beta over each node's incoming edges (edge normalisation)."""
        if not self.edge_norm:
            return None
        beta = self.beta_reduce if reduction else self.beta_normal
        parts, start = [], 0
        for i in range(self.nodes):
            parts.append(F.softmax(beta[start : start + 2 + i], dim=-1))
            start += 2 + i
        return torch.cat(parts)


class MixedOp(nn.Module):
    """sum_k w_k op_k(x); with ``partial`` = K > 1, on 1/K of the channels (PC-DARTS) then shuffled.

    The ``none`` op adds w * 0: nothing, but a multiply and an add per edge (and their backward), the
    kernels that make a small supernet launch-bound on a GPU. It is left out of the sum, which gives the
    same floats (adding a zero is exact, and its weight's gradient was 0 either way) for finite inputs;
    it stays in ``ops`` so the modules, latency table and derivation still see every primitive.
    """

    def __init__(self, c: int, stride: int, primitives: list[str], partial: int = 1):
        super().__init__()
        self.partial, self.stride, self.primitives = partial, stride, list(primitives)
        self.ops = nn.ModuleList(make_op(p, c // partial, stride, affine=False, pool_bn=True) for p in primitives)
        self.live = [k for k, p in enumerate(primitives) if p != "none"]  # the ops that add something
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if partial > 1 and stride == 2 else None

    def mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k w_k op_k(x) over the ops other than ``none``."""
        if not self.live:  # a space of ``none`` alone: the zero of the right shape
            return self.ops[0](x) * weights[0]
        return add_all([weights[k] * self.ops[k](x) for k in self.live])

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial == 1:
            return self.mix(x, weights)
        k = x.shape[1] // self.partial
        xa, xb = x[:, :k], x[:, k:]
        out = self.mix(xa, weights)
        if self.pool is not None:
            xb = self.pool(xb)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.partial)


class SearchCell(nn.Module):
    def __init__(self, nodes, c_pp, c_p, c, reduction, reduction_prev, primitives, partial=1):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        self.pre0, self.pre1 = preprocess(c_pp, c_p, c, reduction_prev, affine=False)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(2 + i):
                self.edges.append(MixedOp(c, 2 if reduction and j < 2 else 1, primitives, partial))

    def forward(self, s0, s1, weights, edge_weights=None):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.nodes):
            terms = []
            for j, h in enumerate(states):
                out = self.edges[offset + j](h, weights[offset + j])
                terms.append(out if edge_weights is None else edge_weights[offset + j] * out)
            offset += len(states)
            states.append(add_all(terms))
        return torch.cat(states[2:], dim=1)


class SearchNetwork(nn.Module):
    """Stem, ``layers`` cells (reductions at 1/3 and 2/3), global pooling, linear classifier."""

    arch: ArchParams  # set with object.__setattr__ in __init__, so that nn.Module does not register it

    def __init__(
        self,
        in_shape,
        num_classes: int,
        init_channels: int = 16,
        layers: int = 8,
        nodes: int = 4,
        primitives: list[str] | None = None,
        stem_multiplier: int = 3,
        partial_channels: int = 1,
        edge_norm: bool = False,
    ):
        super().__init__()
        primitives = list(primitives or PRIMITIVES)
        unknown = [p for p in primitives if p not in PRIMITIVES]
        if unknown:
            raise UserError(f"supernet.primitives: unknown op(s) {unknown}; choose from {PRIMITIVES}")
        if len(in_shape) != 3:
            raise UserError(f"DARTS needs image inputs (C, H, W), got shape {tuple(in_shape)}")
        k = int(partial_channels or 1)
        if k < 1 or init_channels % k:
            raise UserError(f"supernet.partial_channels={k} must divide supernet.init_channels={init_channels}")
        self.primitives, self.nodes, self.layers = primitives, nodes, layers
        object.__setattr__(self, "arch", ArchParams(nodes, primitives, edge_norm))  # not a submodule
        self.detach_arch = False  # the weight step: alpha as constants (no wasted alpha gradients)
        self.epoch = 0  # the epoch in progress (0-based), set by the engine: the arch warmup reads it
        self.stem = stem(in_shape[0], stem_multiplier * init_channels)
        self.cells, c_p = build_cells(
            layers,
            init_channels,
            stem_multiplier,
            lambda c_pp, c_p, c_curr, reduction, reduction_prev: (
                SearchCell(nodes, c_pp, c_p, c_curr, reduction, reduction_prev, primitives, k),
                nodes * c_curr,
            ),
        )
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        cache = {}
        for cell in cast("Iterable[SearchCell]", self.cells):  # build_cells filled it with make_cell's SearchCells
            if cell.reduction not in cache:
                alpha, edge = self.arch.alpha(cell.reduction), self.arch.edge_weights(cell.reduction)
                if self.detach_arch:
                    alpha, edge = alpha.detach(), None if edge is None else edge.detach()
                cache[cell.reduction] = (F.softmax(alpha, dim=-1), edge)
            s0, s1 = s1, cell(s0, s1, *cache[cell.reduction])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training engine at each epoch's start (a resumed epoch included)."""
        self.epoch = epoch

    def to(self, *args, **kwargs):
        self.arch.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def derive(self, max_skip: int | None = None):
        """The genotype alpha stands for now: each node's two strongest edges, their best non-``none`` op."""
        from nas_cli.nas.darts.genotype import derive

        arch = self.arch
        normal, reduce = arch.edge_weights(False), arch.edge_weights(True)  # None without edge_norm
        edges = (
            (normal.detach().cpu(), reduce.detach().cpu())
            if normal is not None and reduce is not None
            else (None, None)
        )
        return derive(arch.normal, arch.reduce, self.primitives, self.nodes, max_skip, *edges)

    def double(self):
        self.arch.double()
        return super().double()
