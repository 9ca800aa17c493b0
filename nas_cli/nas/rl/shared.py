"""The weight-shared network of ENAS's macro space (Pham et al. 2018, Section 2.3): every child is a path in it.

Per layer it holds one module per operation of the space (``ops[i][name]``, built by ``arch.py`` as the
child's own layer would be) and one 1x1 merge conv whose weight has a block of ``width`` input channels
per earlier layer and one for the operation's output; a child (a choice, ``EnasMacroSpace``) runs its
operation of each layer and, where it has skips, the merge conv on the concatenation of the skipped layers'
outputs and the operation's, with the weight blocks of exactly those inputs. That is the 1x1 conv over a
concatenation that ``EnasMacroSpace.to_arch`` writes for the child, so the network scored during the search
and the one ``model=rl_child`` retrains compute the same function (the reference code's search sums the
skips instead, and its retraining concatenates them). The stem and the classifier are shared by all, and so
is a factorized reduction per (reduction, earlier layer) pair (``space.reductions``: ``reduce[f"{i}_{j}"]``
halves layer j's output after layer i).

BatchNorm here always normalizes with the batch's own statistics, in evaluation too: running averages would
mix the activations of every child sampled so far and fit none of them, and a child's score would depend on
which children trained before it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.models.arch import FactorizedReduce, build_layer
from nas_cli.nas.rl.spaces import EnasMacroSpace, enas_op_layer


def _batch_statistics(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm normalizing by the batch's statistics, in training and evaluation."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return module


class SharedNet(nn.Module):
    """ENAS's shared weights ``omega`` over ``space`` for inputs of shape ``in_shape``; ``forward(x, choice)``
    runs one child."""

    def __init__(self, space: EnasMacroSpace, in_shape, num_classes: int):
        super().__init__()
        self.space = space
        w = space.width
        channels = int(in_shape[0])  # flat features are the channels of a 1x1 image, as in arch.py
        stem = {"type": "conv", "filters": w, "kh": 3, "kw": 3, "sh": 1, "sw": 1}
        self.stem = _batch_statistics(build_layer(stem, channels))
        self.ops = nn.ModuleList(
            nn.ModuleDict({op: _batch_statistics(build_layer(enas_op_layer(op, w), w)) for op in space.choices["op"]})
            for _ in range(space.layers)
        )
        # layer i's merge reads up to i earlier layers and its operation: blocks 0..i-1, then block i
        self.merge = nn.ModuleList(nn.Conv2d(w * (i + 1), w, 1, bias=False) for i in range(space.layers))
        self.merge_bn = nn.ModuleList(_batch_statistics(nn.BatchNorm2d(w)) for _ in range(space.layers))
        self.reduce = nn.ModuleDict(
            {f"{i}_{j}": _batch_statistics(FactorizedReduce(w, w)) for i in space.reductions for j in range(i + 1)}
        )
        self.classifier = nn.Linear(w, num_classes)

    def forward(self, x: torch.Tensor, choice: list[dict]) -> torch.Tensor:
        if x.dim() == 2:
            x = x[:, :, None, None]
        w = self.space.width
        h = self.stem(x)
        outs: list[torch.Tensor] = []
        for i, layer in enumerate(choice):
            y = cast(nn.ModuleDict, self.ops[i])[layer["op"]](h)
            skips = sorted(layer["skips"])
            if skips:  # the child's inputs in arch.py's order: the skipped layers, then the operation
                blocks = [*skips, i]
                merge = cast(nn.Conv2d, self.merge[i]).weight
                weight = torch.cat([merge[:, b * w : (b + 1) * w] for b in blocks], dim=1)
                y = F.relu(self.merge_bn[i](F.conv2d(torch.cat([*(outs[j] for j in skips), y], dim=1), weight)))
            outs.append(y)
            for j in self.space.reduced_after(choice, i):
                outs[j] = self.reduce[f"{i}_{j}"](outs[j])
            h = outs[i]
        return self.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))
