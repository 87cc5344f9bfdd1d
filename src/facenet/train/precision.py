"""Mixed-precision training: which precision a run uses, its autocast region and its gradient scaler.

Only the network runs in reduced precision (``autocast``); its output is cast back to float32
before the losses, which also force float32 for the triplet distances and the mining (see
``facenet.losses``), so a semi-hard selection does not depend on the precision.

* ``bf16``: the default on GPUs that support it (Ampere and later): float32's exponent range, so
  no loss scaling is needed. On CPUs with AVX-512 BF16 or AMX it is faster than float32 too.
* ``fp16``: for older GPUs (Volta, Turing). Its small range underflows small gradients, hence a
  ``GradScaler``, whose state is part of the checkpoint so a resumed run stays exact.
* ``fp32``: the default on CPUs (reduced precision is slower than float32 on CPUs without
  bfloat16 instructions, and the demo's figures are float32).
"""

from __future__ import annotations

import contextlib

import torch

from facenet.errors import TrainingError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run on ``device`` uses when ``requested`` (``auto`` picks as the module says)."""
    cuda = device.type == "cuda"
    if requested == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError(
            f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; "
            "use --precision fp16 (with loss scaling) or fp32"
        )
    return requested


def autocast(precision: str, device: torch.device):
    """The region where the network runs in ``precision`` (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16; a disabled scaler (plain backward and step) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
