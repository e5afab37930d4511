"""``results.json``: the contract read by notebooks, sweeps and benchmarks, and its human-readable tables.

Layout::

    {"model": {"name", "params", "macs_per_pixel"},
     "noise": {...}, "test": {set: {level: {"psnr", "ssim", "psnr_noisy", "ssim_noisy"}}},
     "train_seconds", "checkpoint", "precision", "run": {"id", "config_sha256"}, ...}

A run folder holds the results of one run only. ``dnl-train`` starts by moving the ``results.json`` /
``results.md`` of an earlier run in its folder aside (``results.stale.json`` / ``.md``) and writing ``run.json``
(``{"id", "config_sha256", "started"}``) beside ``config.yaml``; the results it writes at the end carry the same
``run`` record. So a run that fails leaves no results, and a reader (``dnl-collect``) can check with
:func:`results_problem` that a ``results.json`` belongs to the ``config.yaml`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from denoise_lightning.files import atomic_write_text

RESULTS_FILES = ("results.json", "results.md")
RUN_FILE = "run.json"
REQUIRED_KEYS = ("model", "test")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def start_run(folder: str | os.PathLike, config_text: str) -> dict[str, str]:
    """Claim ``folder`` for a new run whose resolved config is ``config_text`` (the text of its ``config.yaml``).

    Moves the results of an earlier run aside (``results.json`` -> ``results.stale.json``, same for ``.md``) and
    writes ``run.json``; returns the run record ``{"id", "config_sha256", "started"}`` that :func:`write_results`
    callers store under ``"run"``. The id is a hash of the config and the start time: unique per run.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in RESULTS_FILES:
        old = folder / name
        if old.is_file():
            os.replace(old, old.with_name(f"{old.stem}.stale{old.suffix}"))
    started = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    config_sha256 = sha256_text(config_text)
    run = {"id": sha256_text(f"{config_sha256} {started} {os.getpid()}")[:16], "config_sha256": config_sha256,
           "started": started}
    atomic_write_text(folder / RUN_FILE, json.dumps(run, indent=2) + "\n")
    return run


def results_problem(results: Any, run: dict[str, Any] | None = None, config_text: str | None = None) -> str | None:
    """Why ``results`` (a parsed ``results.json``) cannot be reported for the run folder whose ``run.json`` is
    ``run`` and whose ``config.yaml`` text is ``config_text`` (None: the folder has no such file), or None if it
    can. Results written before run records existed (no ``"run"``) are checked for their layout only."""
    if not isinstance(results, dict):
        return f"results.json holds a {type(results).__name__}, not an object"
    missing = [key for key in REQUIRED_KEYS if key not in results]
    if missing:
        return f"results.json lacks {', '.join(missing)}"
    if not isinstance(results["test"], dict) or not all(isinstance(levels, dict) and
                                                        all(isinstance(row, dict) for row in levels.values())
                                                        for levels in results["test"].values()):
        return "results.json: 'test' is not {set: {level: {metric: value}}}"
    record = results.get("run")
    if record is None:
        return None
    if not isinstance(record, dict):
        return "results.json: 'run' is not an object"
    if run is not None and record.get("id") != run.get("id"):
        return f"stale: results.json is from run {record.get('id')}, run.json (config.yaml) from run {run.get('id')}"
    if config_text is not None and record.get("config_sha256") != sha256_text(config_text):
        return "stale: config.yaml was replaced after results.json was written (config hash differs)"
    return None


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
