"""The architecture description search-rl's controllers propose, and the child network it builds.

An architecture is a list of layers, each a dict with a ``type`` and its ``inputs`` (indices of
earlier layers whose outputs it reads):

- ``conv``: ``filters``, ``kh``, ``kw`` (filter height/width), ``sh``, ``sw`` (stride height/width);
  "same" padding, then BatchNorm and ReLU;
- ``pool``: ``kernel``, ``stride`` (max pooling; a kernel larger than its input shrinks to it);
- ``fc``: ``units`` (flatten, linear, ReLU);
- ``gap``: global average pooling.

The builder applies the three "compilation failure" rules of Zoph & Le (2017), so any
description builds a valid network on any input size:

1. a layer with no input takes the image;
2. every output nobody consumes is concatenated before the classifier;
3. inputs of different spatial sizes are zero-padded to the largest before depth concatenation.

The classifier global-average-pools the (padded, concatenated) feature maps, joins any flat
outputs, and ends in one linear layer.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.errors import UserError
from nas_cli.runs.files import BEST_ARCH
from nas_cli.runs.record import read_json

TYPES = ("conv", "pool", "fc", "gap")
SIZES = {"conv": ("filters", "kh", "kw", "sh", "sw"), "pool": ("kernel", "stride"), "fc": ("units",), "gap": ()}


def canonical(arch: list[dict]) -> list[dict]:
    """Plain, ordered dicts with sorted unique inputs: equal architectures compare (and hash) equal."""
    out = []
    for i, layer in enumerate(arch):
        kind = layer.get("type", "conv")
        if kind not in TYPES:
            raise UserError(f"architecture layer {i}: type '{kind}' is not one of {', '.join(TYPES)}")
        inputs = sorted({int(j) for j in layer.get("inputs", [i - 1] if i else [])})
        if any(j < 0 or j >= i for j in inputs):
            raise UserError(f"architecture layer {i}: inputs {inputs} must be earlier layers (0..{i - 1})")
        keys = SIZES[kind]
        try:
            entry = {"type": kind, **{k: int(layer[k]) for k in keys}, "inputs": inputs}
        except KeyError as ex:
            raise UserError(f"architecture layer {i} ({kind}) needs '{ex.args[0]}'") from ex
        if any(entry[k] < 1 for k in keys):
            raise UserError(f"architecture layer {i}: sizes must be positive ({entry})")
        out.append(entry)
    return out


def key(arch: list[dict]) -> str:
    """The cache key: the canonical description as compact JSON."""
    return json.dumps(canonical(arch), separators=(",", ":"))


def describe(arch: list[dict]) -> str:
    """A short human-readable string, e.g. ``C3x3/1x1:36<- | C5x5/1x1:24<0 | P3/2 | FC64 | GAP``."""
    parts = []
    for i, layer in enumerate(canonical(arch)):
        t = layer["type"]
        if t == "conv":
            s = f"C{layer['kh']}x{layer['kw']}/{layer['sh']}x{layer['sw']}:{layer['filters']}"
        elif t == "pool":
            s = f"P{layer['kernel']}/{layer['stride']}"
        elif t == "fc":
            s = f"FC{layer['units']}"
        else:
            s = "GAP"
        if layer["inputs"] != ([i - 1] if i else []):
            s += "<" + (",".join(map(str, layer["inputs"])) or "img")
        parts.append(s)
    return " | ".join(parts) or "(empty)"


def load_arch(source) -> list[dict]:
    """An architecture from a list, a ``best_arch.json`` (its ``arch`` key) or a JSON file holding the list,
    checked whole (``check_layers``) before any network is built."""
    if source is None:
        raise UserError("model.arch is not set: pass model.arch=PATH (a search's best_arch.json)")
    where, prefix = "model.arch", ""
    if isinstance(source, (str, Path)):
        file = Path(source) / BEST_ARCH if Path(source).is_dir() else Path(source)
        data = read_json(source, "model.arch", BEST_ARCH, "a search run folder or its best_arch.json")
        where = f"model.arch={file}"
        if isinstance(data, dict) and "arch" in data:
            data, prefix = data["arch"], "arch"
        source = data
    check_layers(source, where, prefix)
    return canonical([dict(layer) for layer in source])


def check_layers(layers, where: str = "model.arch", prefix: str = "") -> None:
    """A one-line ``UserError`` naming ``where`` (the file), the layer's key and the rule, for an architecture
    that someone wrote or edited: layer types, their sizes (whole numbers, 1 or more) and inputs (earlier
    layers only). A proposal of a controller needs no check: it is built by the rules."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UserError(f"{where}: {prefix or 'the architecture'} is not a non-empty list of layers")
    for i, layer in enumerate(layers):
        at = f"{where}: {prefix}[{i}]"
        if not isinstance(layer, dict):
            raise UserError(f"{at} is not a layer (a dict with a 'type' and its sizes)")
        kind = layer.get("type", "conv")
        if kind not in TYPES:
            raise UserError(f"{at}.type '{kind}' is not a layer type: use {', '.join(TYPES)}")
        for name in SIZES[kind]:
            if name not in layer:
                raise UserError(f"{at}: a {kind} layer needs '{name}' ({', '.join(SIZES[kind])})")
            if not _whole(layer[name]) or layer[name] < 1:
                raise UserError(f"{at}.{name} is {json.dumps(layer[name])}: a size is a whole number, 1 or more")
        inputs = layer.get("inputs", [])
        if not isinstance(inputs, (list, tuple)) or not all(_whole(j) and 0 <= j < i for j in inputs):
            rule = (
                "layer 0 reads the image alone: []"
                if i == 0
                else f"layer {i} reads earlier layers, 0..{i - 1} ([]: the image)"
            )
            raise UserError(f"{at}.inputs is {json.dumps(inputs)}: {rule}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Rule 3: zero-pad maps to the largest height and width, then concatenate along depth."""
    if len(tensors) == 1:
        return tensors[0]
    h = max(t.shape[2] for t in tensors)
    w = max(t.shape[3] for t in tensors)
    return torch.cat([F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2])) for t in tensors], dim=1)


def _as_map(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 4 else t.flatten(1)[:, :, None, None]


class _Pool(nn.Module):
    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        kh, kw = min(self.kernel, x.shape[2]), min(self.kernel, x.shape[3])
        return F.max_pool2d(x, (kh, kw), self.stride, ceil_mode=True)


def pool_size(n: int, kernel: int, stride: int) -> int:
    """The side a pool layer leaves (the same arithmetic as the child's pooling)."""
    k = min(kernel, n)
    return max(1, math.ceil((n - k) / stride) + 1)


class ArchNet(nn.Module):
    """The child network of an architecture description, for inputs of shape ``in_shape``."""

    def __init__(self, arch: list[dict], in_shape, num_classes: int):
        super().__init__()
        self.arch = canonical(arch)
        consumed = {j for layer in self.arch for j in layer["inputs"]}
        self.dangling = [i for i in range(len(self.arch)) if i not in consumed]  # rule 2
        self.layers = nn.ModuleList()
        probe = torch.zeros(1, *in_shape)
        if probe.dim() == 2:  # flat features: one 1x1 "image"
            probe = probe[:, :, None, None]
        outs: list[torch.Tensor] = []
        # a shape-only dry run: oneDNN's per-shape set-up would cost more than the convolutions
        # (torch warns about oneDNN's TF32 setting whenever the flags change: irrelevant on a CPU probe)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                for layer in self.arch:
                    x = self._gather(probe, outs, layer)
                    module = self._make(layer, x)
                    module.eval()
                    outs.append(module(x))
                    self.layers.append(module)
                features = self._head_features(probe, outs)
        self.classifier = nn.Linear(features.shape[1], num_classes)

    @staticmethod
    def _gather(image: torch.Tensor, outs: list[torch.Tensor], layer: dict) -> torch.Tensor:
        sources = [outs[j] for j in layer["inputs"]] or [image]  # rule 1
        if layer["type"] == "fc":
            return torch.cat([s.flatten(1) for s in sources], dim=1)
        return _pad_cat([_as_map(s) for s in sources])

    @staticmethod
    def _make(layer: dict, x: torch.Tensor) -> nn.Module:
        t = layer["type"]
        if t == "conv":
            return nn.Sequential(
                nn.Conv2d(
                    x.shape[1],
                    layer["filters"],
                    (layer["kh"], layer["kw"]),
                    (layer["sh"], layer["sw"]),
                    padding=(layer["kh"] // 2, layer["kw"] // 2),
                    bias=False,
                ),
                nn.BatchNorm2d(layer["filters"]),
                nn.ReLU(inplace=True),
            )
        if t == "pool":
            return _Pool(layer["kernel"], layer["stride"])
        if t == "fc":
            return nn.Sequential(nn.Linear(x.shape[1], layer["units"]), nn.ReLU(inplace=True))
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def _head_features(self, image: torch.Tensor, outs: list[torch.Tensor]) -> torch.Tensor:
        if not outs:  # softmax as the first layer (MetaQNN allows it): the classifier reads the input itself
            return image.flatten(1)
        maps = [outs[i] for i in self.dangling if outs[i].dim() == 4]
        flat = [outs[i] for i in self.dangling if outs[i].dim() == 2]
        parts = ([F.adaptive_avg_pool2d(_pad_cat(maps), 1).flatten(1)] if maps else []) + flat
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x[:, :, None, None]
        outs: list[torch.Tensor] = []
        for layer, module in zip(self.arch, self.layers):
            outs.append(module(self._gather(x, outs, layer)))
        return self.classifier(self._head_features(x, outs))
