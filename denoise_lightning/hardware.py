"""Precision defaults from what the hardware does fast.

bf16 autocast pays off only where the matrix units support it: NVIDIA GPUs with bf16, and x86 CPUs with
AMX or AVX512-BF16. On other CPUs (e.g. AVX2-only AMD EPYC) bf16 convolutions are emulated and, measured on
this project's 2-core AVX2 machine, about 10x *slower* than fp32 (see README, "Speed"); there we use fp32.
channels_last is used everywhere (1.8x faster fp32 convolutions on that CPU; the preferred layout of cuDNN/AMP).
"""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU executes bf16 matrix products natively (AMX tiles or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def default_precision() -> str:
    """Lightning ``precision`` string: ``bf16-mixed`` where bf16 is native, else ``32-true``."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
