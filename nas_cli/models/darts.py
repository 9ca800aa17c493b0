"""The network a DARTS genotype describes, trained from scratch by ``nas-cli train model=darts``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import Container, OmegaConf
from torch import nn

from nas_cli.errors import UserError
from nas_cli.models.darts_ops import build_cells, make_op, preprocess, stem
from nas_cli.models.genotype import Genotype
from nas_cli.models.layers import check_prob, drop_path
from nas_cli.models.outputs import AuxiliaryLogits


class Cell(nn.Module):
    def __init__(self, pairs, concat, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = preprocess(c_pp, c_p, c, reduction_prev, affine=True)
        self.pairs = list(pairs)  # checked when the genotype was read (Genotype.from_dict)
        self.nodes = len(pairs) // 2
        self.concat = list(concat) or list(range(2, 2 + self.nodes))
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and j < 2 else 1, affine=True) for op, j in pairs)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(self.nodes):
            out = 0
            for k in (2 * i, 2 * i + 1):
                _, j = self.pairs[k]
                h = self.ops[k](states[j])
                # only identities are exempt: a reduction cell's skip_connect is a FactorizedReduce
                # (two strided 1x1 convs) and drops like any op, as in DARTS's reference code
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                out = out + h
            states.append(out)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryPool(nn.Module):
    """DARTS's auxiliary pooling: a 5x5 average window at stride 3, padding excluded, which turns the
    8x8 features of a 32x32 image into 2x2. Other sizes (8 to 10 px give 2x2 too) pool adaptively to 2x2,
    which the head's 2x2 convolution needs (the reference head supports CIFAR's 8x8 only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if all(8 <= side <= 10 for side in x.shape[-2:]):  # shapes are static: no host sync
            return F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False)
        return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHead(nn.Module):
    """A small classifier on the features after the second reduction (DARTS: weight 0.4 in the loss).

    ReLU, pool to 2x2 (``AuxiliaryPool``), 1x1 conv to 128, 2x2 conv to 768, linear. The first ReLU is
    not in place: it must not change the features the rest of the network reads.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            AuxiliaryPool(),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def read_genotype(genotype) -> Genotype:
    """``model.genotype``: a file, a search run folder, a published cell's name, or a dict written inline."""
    if genotype is None:
        raise UserError(
            "model=darts needs model.genotype=PATH (a genotype.json from nas-cli search-darts) "
            "or a published cell: DARTS_V1, DARTS_V2, PC_DARTS"
        )
    if isinstance(genotype, Container):
        genotype = OmegaConf.to_container(genotype, resolve=True)
    if isinstance(genotype, dict):
        return Genotype.from_dict(genotype)
    if not isinstance(genotype, (str, Path)):
        raise UserError(
            f"model.genotype={genotype}: use a genotype.json, a search run folder, DARTS_V1, DARTS_V2 "
            f"or PC_DARTS, or a dict with 'normal' and 'reduce'"
        )
    return Genotype.load(genotype)


class DARTSNetwork(nn.Module):
    """Stem, ``layers`` cells of the genotype (reductions at 1/3 and 2/3), pooling, linear classifier.

    Args:
        genotype: a ``genotype.json`` (or the search run folder holding one), a dict, or a published
            cell by name (``DARTS_V1``, ``DARTS_V2``, ``PC_DARTS``: see ``nas_cli.models.genotype``).
        drop_path: the final probability of dropping an op's path (every op but an identity skip); the
            trainer raises it linearly from 0 over the epochs through ``set_epoch`` (as is without a trainer).
        auxiliary: an auxiliary head after the second reduction; in training the model then
            returns ``AuxiliaryLogits`` and the loss adds ``auxiliary_weight`` times its cross-entropy.
    """

    def __init__(
        self,
        in_shape,
        num_classes: int,
        genotype,
        layers: int = 8,
        init_channels: int = 16,
        drop_path: float = 0.0,
        auxiliary: bool = False,
        auxiliary_weight: float = 0.4,
        stem_multiplier: int = 3,
    ):
        super().__init__()
        g = self.genotype = read_genotype(genotype)
        if len(in_shape) != 3:
            raise UserError(f"model=darts needs image inputs (C, H, W), got {tuple(in_shape)}")
        if auxiliary and layers < 3:
            raise UserError(f"model.auxiliary=true needs a second reduction: model.layers >= 3 (got {layers})")
        self.drop_path = self.drop_prob = check_prob("drop_path", float(drop_path))
        self.auxiliary_weight = float(auxiliary_weight)
        self.stem = stem(in_shape[0], stem_multiplier * init_channels)
        widths = []

        def make_cell(c_pp, c_p, c_curr, reduction, reduction_prev):
            pairs, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
            cell = Cell(pairs, concat, c_pp, c_p, c_curr, reduction, reduction_prev)
            widths.append(cell.multiplier * c_curr)
            return cell, widths[-1]

        self.cells, c_p = build_cells(layers, init_channels, stem_multiplier, make_cell)
        self.aux_at = 2 * layers // 3 if auxiliary else None  # the second reduction cell
        self.auxiliary = AuxiliaryHead(widths[self.aux_at], num_classes) if self.aux_at is not None else None
        self.classifier = nn.Linear(c_p, num_classes)

    @staticmethod
    def check_config(model) -> None:
        """``model.genotype`` read and checked from the config alone: before a run or its data exist."""
        read_genotype(model.get("genotype"))

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Drop-path schedule: 0 at the first epoch, rising linearly towards ``drop_path``."""
        self.drop_prob = self.drop_path * epoch / max(epochs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxiliaryLogits:
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_prob)
            if i == self.aux_at and self.training:
                assert self.auxiliary is not None  # aux_at is set only with the head
                aux = self.auxiliary(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
        return AuxiliaryLogits(logits, aux, self.auxiliary_weight) if aux is not None else logits
