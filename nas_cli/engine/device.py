"""Device, precision and seeding: the parts every command shares."""

from __future__ import annotations

import contextlib
import random

import torch

from nas_cli.errors import UserError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but no CUDA GPU is visible; use device=auto or device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device=mps asked for, but MPS is not available; use device=auto or device=cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """Mixed precision context for ``trainer.amp`` (none, bf16, fp16)."""
    if amp not in AMP_DTYPES:
        raise UserError(f"trainer.amp={amp} is not one of {', '.join(AMP_DTYPES)}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise UserError("trainer.amp=fp16 needs a CUDA GPU; on CPU use trainer.amp=bf16 or none")
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and torch; return the generator that orders the training data."""
    random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
