"""``dnl-collect``: one tidy table from the runs of a sweep (or of any folders of runs), and the sweep summary.

    dnl-collect multirun/paper_grid/2026-01-01_12-00-00             # -> results.csv, stages.csv, sweep_summary.*
    dnl-collect outputs multirun --out analysis/                     # several roots into one table
    dnl-collect multirun/reproduce/2026-01-01_12-00-00 --claims      # + the claims report (sweeps/claims.py)

A run (job) is a folder holding ``.hydra/overrides.yaml``, ``results.json`` or ``job_status.json``. Written to the
output folder (default: the only root):

* ``results.csv``: one row per run x test set x level: the run's overrides (one column per key, e.g. ``noise``,
  ``noise.blind``, ``loss.edge_weight``), what it was (network, params, MACs per pixel, noise type, blind, loss,
  edge weight) and its test metrics (``psnr``, ``ssim``, ``psnr_noisy``, ``ssim_noisy``).
* ``stages.csv``: one row per run x cascade stage (conv layers, params, validation PSNR/SSIM at the stage's end,
  the epochs and optimizer steps it used and why it ended: ``epochs``, ``converged``, ``cap``, ...).
* ``sweep_summary.json`` / ``.md``: every job's status (completed / failed / incomplete / not started / stale /
  invalid) and, for a failed job, its exception. "not started" needs the sweep's ``multirun.yaml`` (Hydra's basic
  sweeper). A folder whose ``results.json`` cannot be reported as its own gives no rows and says why: "invalid" (not
  JSON, not an object, missing keys; also an unreadable ``job_status.json`` or ``run.json``), "stale" (its run id
  or config hash differs from the ``run.json`` / ``config.yaml`` beside it: another run wrote the config since).
  The rows of every other folder are still written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from denoise_lightning.files import atomic_write_text
from denoise_lightning.training.results import RUN_FILE, results_problem

METRICS = ("psnr", "ssim", "psnr_noisy", "ssim_noisy")
JOB_STATUS_FILE = "job_status.json"  # written per job by sweeps.status.SweepStatus
STAGE_FIELDS = ("stage", "epoch", "global_step", "conv_layers", "blocks", "params", "macs_per_pixel", "val_psnr",
                "val_ssim", "start_epoch", "epochs", "steps", "ended")


@dataclass
class Job:
    """One run folder: its overrides, status and (when it finished) its results and resolved config."""

    root: Path
    path: Path
    overrides: list[str]
    status: str                          # completed | failed | incomplete | stale | invalid
    error: str | None = None
    results: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The folder relative to its root (``"3"`` for job 3 of a sweep; ``"."`` for a single run)."""
        return self.path.relative_to(self.root).as_posix()


@dataclass
class Collection:
    """What :func:`collect` found and wrote."""

    summary: dict[str, Any]
    results_csv: Path
    stages_csv: Path
    summary_json: Path
    summary_md: Path


STATUSES = ("completed", "failed", "incomplete", "not_started", "stale", "invalid")


class InvalidRunFile(ValueError):
    """A file of a run folder that cannot be read (not JSON, or not the expected layout)."""


def _read_json(path: Path, kind: type = dict) -> Any:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRunFile(f"{path.name} is not valid JSON ({error}); delete it or rerun that job") from error
    if kind is not None and not isinstance(value, kind):
        raise InvalidRunFile(f"{path.name} holds a {type(value).__name__}, not an object")
    return value


def find_job_dirs(root: Path) -> list[Path]:
    """Run folders under ``root`` (itself included), in natural order (job 2 before job 10)."""
    markers = [*root.rglob(".hydra/overrides.yaml"), *root.rglob("results.json"), *root.rglob(JOB_STATUS_FILE)]
    folders = {marker.parent.parent if marker.parent.name == ".hydra" else marker.parent for marker in markers}
    return sorted(folders, key=lambda p: [(0, int(part), "") if part.isdigit() else (1, 0, part)  # 2 < 10 < "a"
                                          for part in p.relative_to(root).parts])


def read_job(root: Path, path: Path) -> Job:
    """Status, overrides, results and config of one run folder."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = [str(item) for item in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    status_file, results_file, config_file = path / JOB_STATUS_FILE, path / "results.json", path / "config.yaml"
    config_text = config_file.read_text() if config_file.is_file() else None
    status_record, results, problem, config = {}, None, None, {}
    try:
        try:
            config = OmegaConf.to_container(OmegaConf.create(config_text)) if config_text else {}
        except Exception as error:  # noqa: BLE001 - any YAML / OmegaConf error: the file is unusable
            raise InvalidRunFile(f"config.yaml cannot be read ({type(error).__name__}: {error})") from error
        if not isinstance(config, dict):
            raise InvalidRunFile("config.yaml is not a mapping")
        status_record = _read_json(status_file) if status_file.is_file() else {}
        run = _read_json(path / RUN_FILE) if (path / RUN_FILE).is_file() else None
        results = _read_json(results_file, kind=None) if results_file.is_file() else None
        problem = results_problem(results, run, config_text) if results is not None else None
    except InvalidRunFile as error:
        problem = str(error)
    overrides = overrides or list(status_record.get("overrides", []))
    if problem is not None:  # nothing of this folder is reported as a result
        return Job(root, path, overrides, "stale" if problem.startswith("stale") else "invalid", problem, None,
                   config)
    # no job_status.json: written before this callback existed (or by dnl-eval), or the job is running / was killed
    status = status_record.get("status") or ("completed" if results is not None else "incomplete")
    return Job(root, path, overrides, status, status_record.get("error"), results, config)


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Override lists of every job of the sweep recorded in ``multirun.yaml`` (basic sweeper only), else None."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return None
    hydra_cfg = OmegaConf.load(multirun).hydra
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = hydra_cfg.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(hydra_cfg.overrides.task)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(parsed, None)[0]


def _override_columns(overrides: Sequence[str]) -> dict[str, str]:
    """``["noise=poisson", "+foo.bar=1"]`` -> ``{"noise": "poisson", "foo.bar": "1"}`` (deletions ``~key`` skipped)."""
    columns = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if not key.startswith("~"):
            columns[key.lstrip("+")] = value
    return columns


def _short(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def describe(job: Job) -> dict[str, Any]:
    """What the run was: network, size, noise, loss (from results.json and the saved config)."""
    results, config = job.results or {}, job.config
    model, noise, loss = results.get("model", {}), results.get("noise") or config.get("noise") or {}, config.get("loss")
    loss = loss or {}
    edge_weight = loss.get("edge_weight", 0.0 if _short(loss.get("_target_")) == "MSELoss" else None)
    return {"name": model.get("name"), "network": model.get("class") or _short(config.get("model", {}).get("_target_")),
            "params": model.get("params"), "macs_per_pixel": model.get("macs_per_pixel"),
            "noise_type": _short(noise.get("_target_")), "blind": noise.get("blind"),
            "loss_type": _short(loss.get("_target_")), "edge_weight": edge_weight}


def result_rows(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    """One row per job x test set x level (jobs without results.json give none)."""
    rows = []
    for job in jobs:
        if job.results is None:
            continue
        head = {"sweep": str(job.root), "job": job.name, "status": job.status, **_override_columns(job.overrides),
                **describe(job)}
        tail = {key: job.results.get(key) for key in ("train_seconds", "global_steps", "precision")}
        for set_name, levels in job.results.get("test", {}).items():
            for level, metrics in levels.items():
                rows.append({**head, "set": set_name, "level": level, **{k: metrics.get(k) for k in METRICS},
                             **tail, "output_dir": str(job.path)})
    return rows


def stage_rows(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    """One row per job x cascade stage (from ``results.json["stages"]``)."""
    rows = []
    for job in jobs:
        for stage in (job.results or {}).get("stages") or []:
            row = {"sweep": str(job.root), "job": job.name, **_override_columns(job.overrides), **describe(job)}
            row.update({key: stage.get(key) for key in STAGE_FIELDS})
            row["blocks"] = "+".join(stage.get("blocks") or []) or "base"
            rows.append(row)
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text with the union of the rows' keys as columns, in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def summarize(roots: Sequence[Path], jobs: Sequence[Job]) -> dict[str, Any]:
    """Counts and per-job status; jobs of a root's ``multirun.yaml`` with no folder are "not started"."""
    entries = [{"sweep": str(job.root), "job": job.name, "status": job.status, "overrides": job.overrides,
                **({"error": job.error} if job.error else {})} for job in jobs]
    for root in roots:
        expected = expected_jobs(root)
        seen = [sorted(job.overrides) for job in jobs if job.root == root]
        entries += [{"sweep": str(root), "job": None, "status": "not_started", "overrides": overrides}
                    for overrides in expected or [] if sorted(overrides) not in seen]
    counts = {status: sum(entry["status"] == status for entry in entries) for status in STATUSES}
    counts = {status: n for status, n in counts.items() if n or status not in ("stale", "invalid")}  # only if any
    return {"roots": [str(root) for root in roots], "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "counts": counts, "jobs": entries}


def swept_keys(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between the jobs (all keys when there is one job)."""
    values: dict[str, set[str]] = {}
    for entry in entries:
        for key, value in _override_columns(entry["overrides"]).items():
            values.setdefault(key, set()).add(value)
    varying = [key for key, seen in values.items() if len(seen) > 1 or len(entries) == 1]
    missing = [key for key in values if any(key not in _override_columns(e["overrides"]) for e in entries)]
    return list(dict.fromkeys(varying + missing))


def _job_label(entry: dict[str, Any], keys: Sequence[str]) -> str:
    columns = _override_columns(entry["overrides"])
    return " ".join(f"{key}={columns[key]}" for key in keys if key in columns)


def summary_markdown(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    keys = swept_keys(summary["jobs"])
    lines = [f"# Sweep summary: {', '.join(summary['roots'])}", "",
             " | ".join(f"{count} {status.replace('_', ' ')}" for status, count in counts.items()), "",
             "| job | status | overrides | error |", "|---|---|---|---|"]
    for entry in summary["jobs"]:
        error = (entry.get("error") or "").splitlines()[0][:200] if entry.get("error") else ""
        lines.append(f"| {entry['job'] or '-'} | {entry['status']} | {_job_label(entry, keys)} | "
                     f"{error.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def gather(roots: Sequence[str | Path]) -> tuple[list[Job], dict[str, Any]]:
    """Every run under ``roots`` and the summary of their status (nothing is written)."""
    roots = [Path(root) for root in roots]
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder: give a sweep folder (multirun/...) or a run folder")
    jobs = [read_job(root, path) for root in roots for path in find_job_dirs(root)]
    return jobs, summarize(roots, jobs)


def collect(roots: Sequence[str | Path], out_dir: str | Path | None = None) -> Collection:
    """Read every run under ``roots``; write results.csv, stages.csv and sweep_summary.{json,md} into ``out_dir``."""
    if out_dir is None and len(roots) != 1:
        raise ValueError("several folders to collect: choose where the tables go with --out FOLDER")
    jobs, summary = gather(roots)
    out_dir = Path(out_dir) if out_dir is not None else Path(roots[0])
    rows, stages = result_rows(jobs), stage_rows(jobs)
    collection = Collection(summary, out_dir / "results.csv", out_dir / "stages.csv",
                            out_dir / "sweep_summary.json", out_dir / "sweep_summary.md")
    summary.update(results_csv=str(collection.results_csv), result_rows=len(rows), stage_rows=len(stages))
    atomic_write_text(collection.results_csv, to_csv(rows))
    atomic_write_text(collection.stages_csv, to_csv(stages))
    atomic_write_text(collection.summary_json, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(collection.summary_md, summary_markdown(summary))
    return collection


def print_summary(collection: Collection, console: Console | None = None) -> None:
    """Job status table (failed jobs with their exception) and where the tables were written."""
    summary = collection.summary
    keys = swept_keys(summary["jobs"])
    table = Table(title=" | ".join(f"{n} {s.replace('_', ' ')}" for s, n in summary["counts"].items()))
    for column in ("job", "status", "overrides", "error"):
        table.add_column(column, overflow="fold")
    styles = {"completed": "green", "failed": "red", "incomplete": "yellow", "not_started": "yellow",
              "stale": "red", "invalid": "red"}
    for entry in summary["jobs"]:
        error = (entry.get("error") or "").splitlines()[0] if entry.get("error") else ""
        table.add_row(entry["job"] or "-", f"[{styles[entry['status']]}]{entry['status']}", _job_label(entry, keys),
                      error)
    console = console or Console()
    console.print(table)
    console.print(f"{summary['result_rows']} result rows -> {collection.results_csv}; summary -> "
                  f"{collection.summary_md}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dnl-collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="sweep folders (multirun/...) or folders of runs")
    parser.add_argument("--out", default=None, help="folder for the tables (default: the only root)")
    parser.add_argument("--claims", action="store_true",
                        help="also the claims report (sweeps.claims): per claim both arms over seeds, the difference "
                             "and a verdict -> claims.md / claims.json")
    args = parser.parse_args(argv)
    try:
        collection = collect(args.roots, args.out)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"dnl-collect: {error}\n")
    print_summary(collection)
    if args.claims:
        from denoise_lightning.sweeps.claims import print_claims, report  # claims reads runs through this module

        print_claims(report(args.roots, collection.summary_md.parent))
    counts = collection.summary["counts"]
    return 1 if counts["failed"] or counts.get("stale") or counts.get("invalid") else 0


if __name__ == "__main__":
    raise SystemExit(main())
