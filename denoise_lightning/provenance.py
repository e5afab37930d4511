"""Where a number came from: package versions, the source commit and the machine.

Recorded as ``"environment"`` in every ``results.json`` (dnl-train, dnl-eval) and bench file, next to the effective
``"precision"``, so that two runs giving different numbers are explainable: the trainer's default precision follows
the hardware (bf16-mixed on AMX / AVX512-BF16 CPUs and bf16 GPUs, else fp32, see :mod:`denoise_lightning.hardware`),
and kernels differ between CPUs and library versions. Standard library only at import time; torch is imported when
the machine is described.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The distributions whose versions change results (the numerical stack) or name the code (denoise-lightning).
PACKAGES = ("torch", "lightning", "hydra-core", "omegaconf", "torchmetrics", "kornia", "numpy", "denoise-lightning")
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout for an editable install, site-packages otherwise


def versions() -> dict[str, str | None]:
    """``{"python": "3.11.7", "torch": "2.13.0+cpu", ...}``; None for a package that is not installed."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source() -> dict[str, Any]:
    """``{"commit": 40 hex digits, "dirty": bool}`` when the package runs from a git checkout, else both None.

    ``dirty``: tracked files differ from the commit (as ``git describe --dirty``; untracked files are ignored).
    Only a checkout whose top level holds this package counts, not an install inside some other repository.
    """
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top and Path(top).resolve() == SOURCE_ROOT else None
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU name and count, torch's threads, whether bf16 is native on the CPU, CUDA and the GPU name."""
    import torch

    from denoise_lightning.hardware import cpu_has_fast_bf16

    cuda = torch.cuda.is_available()
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_fast_bf16": cpu_has_fast_bf16(), "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "platform": platform.platform()}


def environment() -> dict[str, Any]:
    """Plain (JSON-ready) dict: ``{"versions": {...}, "source": {"commit", "dirty"}, "machine": {...}}``."""
    return {"versions": versions(), "source": source(), "machine": machine()}


def describe(environment: dict[str, Any], precision: str | None = None) -> str:
    """One line for a run's output, e.g. ``precision 32-true on AMD EPYC (2 CPUs, bf16 emulated, no CUDA),
    torch 2.13.0+cpu, commit ac7b63b4 (dirty)``."""
    info, code = environment["machine"], environment["source"]
    gpu = f"GPU {info['gpu']}" if info["cuda"] else "no CUDA"
    bf16 = "bf16 native" if info["cpu_fast_bf16"] else "bf16 emulated"
    commit = "no git checkout" if code["commit"] is None else (
        f"commit {code['commit'][:8]}" + (" (dirty)" if code["dirty"] else ""))
    head = f"precision {precision} on " if precision else ""
    return (f"{head}{info['cpu']} ({info['cpu_count']} CPUs, {bf16}, {gpu}), "
            f"torch {environment['versions']['torch']}, {commit}")
