"""``results.json``: the contract read by notebooks, sweeps and benchmarks, and its human-readable tables.

Layout::

    {"model": {"name", "params", "macs_per_pixel"},
     "noise": {...}, "test": {set: {level: {"psnr", "ssim", "psnr_noisy", "ssim_noisy"}}},
     "train_seconds", "checkpoint", "precision", ...}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from denoise_lightning.files import atomic_write_text


def write_results(folder: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results.json`` and ``results.md`` into ``folder``; returns the JSON path."""
    folder = Path(folder)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(folder / "results.md", markdown_table(results) + "\n")
    return folder / "results.json"


def _rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    return [(name, level, row) for name, levels in results["test"].items() for level, row in levels.items()]


def heading(model: dict[str, Any]) -> str:
    """``**name** (params, MACs/pixel)`` for a network; a baseline (no parameters) says what it was given."""
    if model.get("params"):
        return (f"**{model.get('name', 'model')}** ({model['params']:,} params, "
                f"{model.get('macs_per_pixel', 0) / 1e3:.1f}K MACs/pixel)")
    given = "true noise level given" if model.get("oracle_level") else "no parameters"
    return f"**{model.get('name', 'model')}** (baseline, {given})"


def markdown_table(results: dict[str, Any]) -> str:
    lines = [heading(results.get("model", {})), "",
             "| set | level | PSNR noisy | PSNR output | SSIM noisy | SSIM output |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {level} | {row['psnr_noisy']:.2f} | {row['psnr']:.2f} | {row['ssim_noisy']:.4f} | "
              f"{row['ssim']:.4f} |" for name, level, row in _rows(results)]
    return "\n".join(lines)


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    """Print the test table (rows: set x level; PSNR/SSIM of noisy input and output)."""
    model = results.get("model", {})
    table = Table(title=f"{model.get('name', 'model')}: test results (PSNR dB / SSIM)")
    for column in ("set", "level", "PSNR in", "PSNR out", "gain", "SSIM in", "SSIM out"):
        table.add_column(column, justify="left" if column in ("set", "level") else "right", no_wrap=True)
    for name, level, row in _rows(results):
        table.add_row(name, level, f"{row['psnr_noisy']:.2f}", f"{row['psnr']:.2f}",
                      f"{row['psnr'] - row['psnr_noisy']:+.2f}", f"{row['ssim_noisy']:.4f}", f"{row['ssim']:.4f}")
    (console or Console()).print(table)
