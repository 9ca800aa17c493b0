"""Fold BatchNorm layers into the conv / linear layer that feeds them (inference only).

For a layer ``y = W x + b`` followed by an eval-mode BatchNorm
``z = (y - mu) / sqrt(var + eps) * gamma + beta`` the pair equals one layer with
``W' = W * s`` (``s = gamma / sqrt(var + eps)`` along the output channels) and
``b' = (b - mu) * s + beta``. The math is done in float64 and cast back.

``fuse_bn`` only folds pairs it can prove: it traces the model with ``torch.fx``
and folds a BatchNorm whose sole input is a layer called once in the whole graph
and whose output feeds nothing but that BatchNorm. When tracing fails it falls
back to adjacent (layer, BatchNorm) pairs inside ``nn.Sequential`` containers.
Every BatchNorm that is not folded is reported with the reason.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeGuard

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from nas_cli.errors import UserError

__all__ = ["FusedPair", "SkippedPair", "FuseReport", "fold", "fuse_bn"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_BY_DIM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@dataclass
class FusedPair:
    layer: str
    bn: str
    kind: str  # "conv", "conv_transpose" or "linear"
    large_scale_channels: int  # channels whose |gamma / sqrt(var + eps)| exceeded scale_warn


@dataclass
class SkippedPair:
    layer: str  # "" when no candidate layer could be named
    bn: str
    reason: str


@dataclass
class FuseReport:
    fused: list[FusedPair] = field(default_factory=list)
    skipped: list[SkippedPair] = field(default_factory=list)
    method: str = "fx"  # "fx" or "module-order"

    @property
    def n_bn_removed(self) -> int:
        """BatchNorm modules no longer in the model: fused everywhere they were called."""
        return len({p.bn for p in self.fused} - {s.bn for s in self.skipped})


def _foldable(layer: nn.Module) -> TypeGuard[nn.Linear | _ConvNd]:
    """A layer a BatchNorm can fold into: a convolution (1d to 3d, transposed or not) or a linear layer."""
    return isinstance(layer, (*_CONV, *_CONV_T, nn.Linear))


def _kind(layer: nn.Module) -> str:
    """The kind of a layer ``_foldable`` accepts: conv, conv_transpose or linear."""
    if isinstance(layer, _CONV_T):
        return "conv_transpose"
    return "linear" if isinstance(layer, nn.Linear) else "conv"


def _out_channels(layer: nn.Linear | _ConvNd) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _pair_problem(layer: nn.Module, bn: nn.Module) -> str | None:
    """Why ``layer -> bn`` cannot be folded, or None when it can."""
    if not _foldable(layer):
        return f"input is not a foldable layer ({type(layer).__name__})"
    expected: type[_BatchNorm]
    if isinstance(layer, nn.Linear):
        expected = nn.BatchNorm1d
    else:
        expected = _BN_BY_DIM[len(layer.kernel_size)]
    if not isinstance(bn, (expected, nn.SyncBatchNorm)):
        return f"input is not a foldable layer ({type(layer).__name__} does not pair with {type(bn).__name__})"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    if bn.num_features != _out_channels(layer):
        return f"channel mismatch: layer has {_out_channels(layer)} output channels, BatchNorm has {bn.num_features}"
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        return "layer is lazy and not initialized"
    return None


def fold(layer: nn.Module, bn: _BatchNorm, scale_warn: float = 1e3) -> tuple[nn.Module, int]:
    """New layer (same class, bias always present) with the BN folded in; also the count of
    channels whose |scale| > scale_warn."""
    if not isinstance(bn, _BatchNorm):
        raise UserError(f"cannot fold {type(bn).__name__}: not a BatchNorm layer")
    problem = _pair_problem(layer, bn)
    if problem is not None:
        raise UserError(f"cannot fold {type(layer).__name__} -> {type(bn).__name__}: {problem}")
    # what _pair_problem has just checked, stated for the type checker
    assert _foldable(layer) and bn.running_mean is not None and bn.running_var is not None
    dtype, device = layer.weight.dtype, layer.weight.device
    with torch.no_grad():
        w = layer.weight.detach().to(torch.float64)
        n_out = _out_channels(layer)
        b = (
            layer.bias.detach().to(torch.float64)
            if layer.bias is not None
            else torch.zeros(n_out, dtype=torch.float64, device=device)
        )
        mu = bn.running_mean.detach().to(device=device, dtype=torch.float64)
        var = bn.running_var.detach().to(device=device, dtype=torch.float64)
        if bn.affine:
            gamma = bn.weight.detach().to(device=device, dtype=torch.float64)
            beta = bn.bias.detach().to(device=device, dtype=torch.float64)
        else:
            gamma = torch.ones_like(mu)
            beta = torch.zeros_like(mu)
        s = gamma / torch.sqrt(var + bn.eps)
        if isinstance(layer, _CONV_T):
            # weight is (in, out/groups, *k); output channel g*(out/groups) + j lives at group g, dim 1 index j
            g = layer.groups
            grouped = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
            scale = s.reshape(g, 1, w.shape[1], *([1] * (w.dim() - 2)))
            w_new = (grouped * scale).reshape(w.shape)
        else:
            w_new = w * s.reshape(-1, *([1] * (w.dim() - 1)))
        b_new = (b - mu) * s + beta
        large = int((s.abs() > scale_warn).sum().item())

    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(w_new.to(dtype), requires_grad=layer.weight.requires_grad)
    new.bias = nn.Parameter(b_new.to(dtype), requires_grad=layer.weight.requires_grad)
    return new, large


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _bn_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def _fuse_fx(gm: torch.fx.GraphModule, all_bns: list[str], scale_warn: float) -> FuseReport:
    report = FuseReport(method="fx")
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    fused_bn_targets = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        bn = modules[node.target]
        bn_name = str(node.target)  # a call_module node's target is the module's qualified name
        inp = node.args[0] if node.args else node.kwargs.get("input")
        layer_name = str(inp.target) if isinstance(inp, torch.fx.Node) and inp.op == "call_module" else ""

        def skip(reason: str, layer_name: str = layer_name, bn_name: str = bn_name) -> None:
            report.skipped.append(SkippedPair(layer_name, bn_name, reason))

        if bn.running_mean is None or bn.running_var is None:
            skip("BatchNorm has no running statistics (track_running_stats=False)")
            continue
        if not layer_name:
            what = inp.name if isinstance(inp, torch.fx.Node) else repr(inp)
            skip(f"input is not a foldable layer (it is {what})")
            continue
        layer = modules[layer_name]
        problem = _pair_problem(layer, bn)
        if problem is not None:
            skip(problem)
            continue
        if calls[layer_name] != 1:
            skip(f"layer is called {calls[layer_name]} times")
            continue
        others = [u.name for u in inp.users if u is not node]
        if others:
            skip(f"layer output also feeds {', '.join(others)}")
            continue
        new, large = fold(layer, bn, scale_warn)
        _set_module(gm, layer_name, new)
        modules[layer_name] = new
        node.replace_all_uses_with(inp)
        gm.graph.erase_node(node)
        fused_bn_targets.add(node.target)
        report.fused.append(FusedPair(layer_name, bn_name, _kind(layer), large))

    still_called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for target in fused_bn_targets - still_called:
        gm.delete_submodule(target)
    seen = {p.bn for p in report.fused} | {s.bn for s in report.skipped}
    for name in all_bns:
        if name not in seen:
            report.skipped.append(SkippedPair("", name, "BatchNorm is never called as a module in forward"))
    gm.graph.lint()
    gm.recompile()
    return report


def _fuse_module_order(model: nn.Module, all_bns: list[str], scale_warn: float) -> FuseReport:
    report = FuseReport(method="module-order")
    occurrences = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    handled: set[int] = set()  # BatchNorm objects already reported
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (layer_key, layer), (bn_key, bn) in zip(children, children[1:]):
            if not isinstance(bn, _BatchNorm) or not _foldable(layer) or id(bn) in handled:
                continue
            prefix = f"{seq_name}." if seq_name else ""
            layer_name, bn_name = prefix + layer_key, prefix + bn_key
            problem = _pair_problem(layer, bn)
            if problem is None and occurrences[id(layer)] != 1:
                problem = f"layer module appears {occurrences[id(layer)]} times in the model"
            if problem is None and occurrences[id(bn)] != 1:
                problem = f"BatchNorm module appears {occurrences[id(bn)]} times in the model"
            handled.add(id(bn))
            if problem is not None:
                report.skipped.append(SkippedPair(layer_name, bn_name, problem))
                continue
            new, large = fold(layer, bn, scale_warn)
            setattr(seq, layer_key, new)
            setattr(seq, bn_key, nn.Identity())
            report.fused.append(FusedPair(layer_name, bn_name, _kind(layer), large))
    seen = {p.bn for p in report.fused} | {s.bn for s in report.skipped}
    for name in all_bns:
        if name not in seen:
            report.skipped.append(SkippedPair("", name, "untraceable model: not adjacent in a Sequential"))
    return report


def fuse_bn(model: nn.Module, scale_warn: float = 1e3) -> tuple[nn.Module, FuseReport]:
    """Deep-copies the model, puts it in eval mode, folds every provable layer->BN pair, returns (fused, report)."""
    if not isinstance(model, nn.Module):
        raise UserError(f"fuse_bn needs a torch.nn.Module, got {type(model).__name__}")
    if not scale_warn > 0:
        raise UserError(f"scale_warn must be positive, got {scale_warn}")
    work = copy.deepcopy(model).eval()
    all_bns = _bn_names(work)
    try:
        gm = torch.fx.symbolic_trace(work)
    except Exception:  # any tracing failure (data-dependent control flow, unsupported ops): fall back
        report = _fuse_module_order(work, all_bns, scale_warn)
        return work.eval(), report
    gm.eval()
    report = _fuse_fx(gm, all_bns, scale_warn)
    return gm.eval(), report
