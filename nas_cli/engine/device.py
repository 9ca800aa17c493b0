"""Device, precision and seeding: the parts every command shares."""

from __future__ import annotations

import contextlib
import logging
import random

import torch

from nas_cli.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def effective_precision(device: torch.device, precision: str) -> str:
    """``trainer.precision`` as it will run here: fp16 autocast and loss scaling need a GPU.

    On a CPU fp16 is a no-op (fp32, with a note), so the same config runs everywhere.
    """
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        log.warning("trainer.precision=fp16 needs a CUDA GPU: running fp32 here (bf16 works on CPUs)")
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """Mixed precision context for an effective ``trainer.precision`` (fp32: none)."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def set_determinism(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels (reproducible, sometimes slower) or cuDNN's autotuner (fastest)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and torch; return the generator that orders the training data."""
    random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextlib.contextmanager
def full_precision():
    """fp32 matmuls and convolutions without TF32, whatever this process set.

    CUDA runs fp32 convolutions in TF32 by default (10-bit mantissa): a check that two models
    compute the same thing would then measure TF32's rounding (~1e-3), not the models.
    """
    matmul_tf32, precision = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        # every cudnn flag passed as it is: flags() resets the ones it is not given
        with cudnn.flags(
            enabled=cudnn.enabled,
            benchmark=cudnn.benchmark,
            benchmark_limit=cudnn.benchmark_limit,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.set_float32_matmul_precision(precision)
