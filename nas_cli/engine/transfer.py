"""Transfer learning: start from an earlier run's weights, freeze parts, slow down the backbone."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from nas_cli.errors import UserError
from nas_cli.runs import checkpoint
from nas_cli.runs.files import BEST, CHECKPOINT, WEIGHTS

PICKS = ("last", "best")  # which weights of a run folder: the final model.pt, or best.pt (trainer.best)

log = logging.getLogger(__name__)


def head_name(model: nn.Module) -> str:
    """The classifier: the last ``nn.Linear`` in the model."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no linear layer to treat as its head")
    return names[-1]


def weights_file(path: str | Path, pick: str = "last", key: str = "init_from") -> Path:
    """The weights a run folder stands for, or ``path`` itself when it is a file.

    ``pick="last"``: the final model.pt, else the last checkpoint (an unfinished run); ``"best"``: best.pt,
    the best epoch's weights (``trainer.best``). ``key`` names the option in the error lines.
    """
    if pick not in PICKS:
        raise UserError(f"{key}_weights={pick}: use last (model.pt) or best (best.pt)")
    path = Path(path)
    if path.is_dir() and pick == "best":
        if not (path / BEST).is_file():
            raise UserError(
                f"{key}={path}: no {BEST} in that run folder (trained with trainer.best.monitor=null?); "
                f"use {key}_weights=last"
            )
        return path / BEST
    if path.is_dir():
        for candidate in (path / WEIGHTS, path / CHECKPOINT):
            if candidate.is_file():
                return candidate
        raise UserError(f"{key}={path}: no {WEIGHTS} or {CHECKPOINT} in that run folder")
    if not path.is_file():
        raise UserError(f"{key}={path}: no such run folder or weights file")
    return path


def load_pretrained(model: nn.Module, path: str | Path, pick: str = "last") -> dict[str, list[str]]:
    """Copy every weight whose name and shape match; report what was skipped. ``pick``: see ``weights_file``.

    A head with another class count has another shape, so it keeps its fresh
    initialization: that is how the head gets replaced.
    """
    source = checkpoint.load(weights_file(path, pick))["model"]
    own = model.state_dict()
    loaded = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    report = {
        "reshaped": sorted(k for k in source if k in own and own[k].shape != source[k].shape),
        "missing": sorted(k for k in own if k not in source),
        "unexpected": sorted(k for k in source if k not in own),
    }
    if not loaded:
        raise UserError(f"init_from={path}: no weight matches this model (is it the same architecture?)")
    model.load_state_dict(loaded, strict=False)
    log.info(
        f"init_from {path}: loaded {len(loaded)}/{len(own)} tensors"
        + "".join(f"; {kind}: {', '.join(keys)}" for kind, keys in report.items() if keys)
    )
    return report


def freeze(model: nn.Module, prefixes: list[str] | str | None) -> list[str]:
    """Stop training parameters whose names start with one of ``prefixes`` (``all_but_head``: all but the head).

    Frozen BatchNorm layers also stop updating their running statistics.
    """
    if not prefixes:
        return []
    if prefixes == "all_but_head" or prefixes == ["all_but_head"]:
        head = head_name(model)
        match = lambda name: not name.startswith(head + ".")  # noqa: E731
    else:
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        names = [n for n, _ in model.named_parameters()]
        for prefix in prefixes:
            if not any(n.startswith(prefix) for n in names):
                raise UserError(
                    f"freeze: no parameter name starts with '{prefix}' "
                    f"(top-level modules: {', '.join(n for n, _ in model.named_children())})"
                )
        match = lambda name: any(name.startswith(p) for p in prefixes)  # noqa: E731
    frozen = [n for n, p in model.named_parameters() if match(n)]
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and all(not p.requires_grad for p in m.parameters()):
            m.momentum = 0.0  # running stats stay as loaded
    return frozen


def param_groups(model: nn.Module, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters, the backbone's lr scaled by ``backbone_lr_scale`` relative to the head's."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise UserError("every parameter is frozen: nothing to train")
    if backbone_lr_scale == 1.0:
        return [{"params": [p for _, p in trainable]}]
    head = head_name(model) + "."
    groups = [
        {"params": [p for n, p in trainable if n.startswith(head)], "lr_scale": 1.0},
        {"params": [p for n, p in trainable if not n.startswith(head)], "lr_scale": backbone_lr_scale},
    ]
    return [g for g in groups if g["params"]]


def apply_lr_scale(optimizer: torch.optim.Optimizer) -> None:
    """Turn each group's ``lr_scale`` into its lr (the optimizer fills in the base lr first)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.pop("lr_scale", 1.0)
