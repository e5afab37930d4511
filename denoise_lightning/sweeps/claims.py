"""The paper's claims as measured verdicts: both arms' mean +- std over seeds, the difference and a verdict.

    dnl-collect multirun/reproduce_smoke/2026-01-01_12-00-00 --claims     # the tables of dnl-collect + this report
    python -m denoise_lightning.sweeps.claims multirun/reproduce/...      # the report only

Reads the runs of a sweep (``results.json`` of every completed job, as ``dnl-collect`` does). A run belongs to the
arm named by its ``name`` (``results.json["model"]["name"]``; the arms of ``experiment=reproduce`` are set in
``conf/experiment/reproduce_arms/``), and is one seed of it (``seed`` of its ``config.yaml``). For every claim of
:data:`CLAIMS`, every test set and every level both arms were tested at, one row:

* each arm's mean +- sample standard deviation over its runs, the number of seeds and the mean optimizer steps;
* ``difference`` = mean(arm) - mean(baseline), and ``spread`` = the standard error of that difference,
  sqrt(s_a^2 / n_a + s_b^2 / n_b): it shrinks as seeds are added, so "not resolved" means "not at this number of
  seeds";
* the verdict against the claim's interval [low, high] for the difference: **holds** when difference +- spread lies
  inside it, **does not hold** when it lies wholly outside, **not resolved** otherwise (for a claim "arm >= baseline":
  not resolved when the spread is larger than the difference), and also when an arm has fewer than 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from denoise_lightning.files import atomic_write_text
from denoise_lightning.sweeps.collect import Job, gather

HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved"
INF = math.inf


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: ``arm - baseline`` of ``metric`` lies in [low, high] (PSNR in dB, SSIM in [0, 1])."""

    name: str
    arm: str
    baseline: str
    metric: str
    low: float = 0.0
    high: float = INF


# The arm names are the ``name`` of the runs of experiment=reproduce (conf/experiment/reproduce_arms/*.yaml).
# Thresholds: the paper's numbers; 0.1 dB for "costs little" and "nearly unchanged" is ours.
CLAIMS = (
    Claim("cascade >= one-shot, equal steps (PSNR)", "cascade", "oneshot", "psnr"),
    Claim("cascade >= one-shot, each to convergence (PSNR)", "cascade-converged", "oneshot-converged", "psnr"),
    Claim("incremental DS loses < 0.1 dB vs DN-ResNet-13", "ds-incremental", "cascade", "psnr", -0.1),
    Claim("incremental DS loses < 0.002 SSIM vs DN-ResNet-13", "ds-incremental", "cascade", "ssim", -0.002),
    Claim("incremental DS > one-shot DS (PSNR)", "ds-incremental", "ds-oneshot", "psnr"),
    Claim("incremental DS > one-shot DS (SSIM)", "ds-incremental", "ds-oneshot", "ssim"),
    Claim("edge-a: SSIM +0.005 or more over MSE", "edge-a", "oneshot", "ssim", 0.005),
    Claim("edge-a: PSNR within 0.1 dB of MSE", "edge-a", "oneshot", "psnr", -0.1, 0.1),
    Claim("edge-b: SSIM +0.005 or more over MSE", "edge-b", "oneshot", "ssim", 0.005),
    Claim("edge-b: PSNR within 0.1 dB of MSE", "edge-b", "oneshot", "psnr", -0.1, 0.1),
    Claim("blind loses < 0.1 dB vs non-blind at its level", "blind", "oneshot", "psnr", -0.1),
)


@dataclass
class Run:
    """One completed run: its arm, seed, steps and test metrics ``{set: {level: {metric: value}}}``."""

    arm: str
    seed: int | None
    steps: int | None
    test: dict[str, dict[str, dict[str, float]]]


def runs_of(jobs: Iterable[Job]) -> list[Run]:
    """The completed jobs that name their arm, as :class:`Run`s (failed, stale or invalid jobs are left out)."""
    runs = []
    for job in jobs:
        results = job.results
        if job.status != "completed" or not results or not results.get("model", {}).get("name"):
            continue
        seed = job.config.get("seed")
        runs.append(Run(str(results["model"]["name"]), None if seed is None else int(seed),
                        results.get("global_steps"), results.get("test") or {}))
    return runs


def summarize(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def verdict(difference: float, spread: float | None, low: float, high: float = INF) -> str:
    """holds / does not hold / not resolved for ``difference +- spread`` against the interval [low, high]."""
    if spread is None or not math.isfinite(difference):
        return UNRESOLVED
    if low <= difference - spread and difference + spread <= high:
        return HOLDS
    if difference + spread < low or difference - spread > high:
        return FAILS
    return UNRESOLVED


def _arm_stats(runs: Sequence[Run], set_name: str, level: str, metric: str) -> dict[str, Any]:
    values = [run.test[set_name][level][metric] for run in runs]
    mean, std = summarize(values)
    steps = [run.steps for run in runs if run.steps is not None]
    return {"mean": mean, "std": std, "n": len(values), "seeds": sorted({r.seed for r in runs if r.seed is not None}),
            "steps": round(statistics.fmean(steps)) if steps else None}


def claim_rows(runs: Sequence[Run], claims: Sequence[Claim] = CLAIMS) -> list[dict[str, Any]]:
    """One row per claim x test set x level that both arms were tested at; a claim with an arm without runs gives
    one row saying so."""
    by_arm: dict[str, list[Run]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    rows = []
    for claim in claims:
        arm, baseline = by_arm.get(claim.arm, []), by_arm.get(claim.baseline, [])
        head = {"claim": claim.name, "arm": claim.arm, "baseline": claim.baseline, "metric": claim.metric,
                "low": claim.low, "high": claim.high}
        if not arm or not baseline:
            missing = [name for name, found in ((claim.arm, arm), (claim.baseline, baseline)) if not found]
            rows.append({**head, "set": None, "level": None, "verdict": f"no runs of {', '.join(missing)}"})
            continue
        for set_name, level in _common_levels(arm + baseline, claim.metric):
            a = _arm_stats(arm, set_name, level, claim.metric)
            b = _arm_stats(baseline, set_name, level, claim.metric)
            difference = a["mean"] - b["mean"]
            spread = (math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
                      if a["std"] is not None and b["std"] is not None else None)
            rows.append({**head, "set": set_name, "level": level, **{f"arm_{k}": v for k, v in a.items()},
                         **{f"baseline_{k}": v for k, v in b.items()}, "difference": difference, "spread": spread,
                         "verdict": verdict(difference, spread, claim.low, claim.high)})
    return rows


def _common_levels(runs: Sequence[Run], metric: str) -> list[tuple[str, str]]:
    """(set, level) pairs at which every run has ``metric``, in the order of the first run."""
    pairs = [(s, level) for s, levels in runs[0].test.items() for level in levels]
    return [(s, level) for s, level in pairs
            if all(metric in run.test.get(s, {}).get(level, {}) for run in runs)]


def _number(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "-"
    digits = 2 if metric == "psnr" else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _arm_text(row: dict[str, Any], side: str) -> str:
    metric = row["metric"]
    text = f"{_number(row[f'{side}_mean'], metric)} +- {_number(row[f'{side}_std'], metric)} (n={row[f'{side}_n']}"
    return text + (f", {row[f'{side}_steps']} steps)" if row[f"{side}_steps"] is not None else ")")


def _claimed(row: dict[str, Any]) -> str:
    metric = row["metric"]
    if row["high"] == INF:
        return f">= {_number(row['low'], metric, signed=True)}"
    return f"{_number(row['low'], metric, signed=True)} .. {_number(row['high'], metric, signed=True)}"


def claims_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The report as a Markdown table (for docs and the sweep folder)."""
    lines = ["| claim | set / level | arm: mean +- std (seeds, steps) | baseline: mean +- std (seeds, steps) | "
             "difference +- spread | claimed | verdict |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["set"] is None:
            lines.append(f"| {row['claim']} | - | {row['arm']}: - | {row['baseline']}: - | - | {_claimed(row)} | "
                         f"{row['verdict']} |")
            continue
        metric = row["metric"]
        lines.append(f"| {row['claim']} | {row['set']} {row['level']} | {row['arm']}: {_arm_text(row, 'arm')} | "
                     f"{row['baseline']}: {_arm_text(row, 'baseline')} | "
                     f"{_number(row['difference'], metric, True)} +- {_number(row['spread'], metric)} | "
                     f"{_claimed(row)} | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


def print_claims(rows: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(title="Claims: arm - baseline over seeds (spread: standard error of the difference)")
    for column in ("claim", "set / level", "arm", "baseline", "difference", "claimed", "verdict"):
        table.add_column(column, overflow="fold")
    styles = {HOLDS: "green", FAILS: "red"}
    for row in rows:
        verdict_text = f"[{styles.get(row['verdict'], 'yellow')}]{row['verdict']}"
        if row["set"] is None:
            table.add_row(row["claim"], "-", row["arm"], row["baseline"], "-", _claimed(row), verdict_text)
            continue
        metric = row["metric"]
        table.add_row(row["claim"], f"{row['set']} {row['level']}", f"{row['arm']}: {_arm_text(row, 'arm')}",
                      f"{row['baseline']}: {_arm_text(row, 'baseline')}",
                      f"{_number(row['difference'], metric, True)} +- {_number(row['spread'], metric)}",
                      _claimed(row), verdict_text)
    (console or Console()).print(table)


def report(roots: Sequence[str | Path], out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Claim rows of the runs under ``roots``; written to ``out_dir``/claims.{json,md} when given."""
    jobs, _ = gather(roots)
    rows = claim_rows(runs_of(jobs))
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_text(out_dir / "claims.json", json.dumps(rows, indent=2, default=str) + "\n")
        atomic_write_text(out_dir / "claims.md", claims_markdown(rows))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m denoise_lightning.sweeps.claims",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="sweep folders (multirun/reproduce/...) or folders of runs")
    parser.add_argument("--out", default=None, help="write claims.json / claims.md here (default: the only root)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else (args.roots[0] if len(args.roots) == 1 else None)
    try:
        rows = report(args.roots, out)
    except FileNotFoundError as error:
        parser.exit(2, f"claims: {error}\n")
    print_claims(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
