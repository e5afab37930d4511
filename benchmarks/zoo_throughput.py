"""How many zoo training jobs to pack on one accelerator: training steps/s per job and in total for N jobs sharing it.

    python benchmarks/zoo_throughput.py --out zoo-throughput        # on the GPU machine (DNL_DATA_DIR set)
    python benchmarks/zoo_throughput.py --quick --out /tmp/zt       # tiny settings: checks that it runs

For each N of ``--jobs`` and each setting of ``--precision``, one Hydra multirun through the project's Ray launcher
(``hydra/launcher=ray_local``) of N identical DN-ResNet-13 jobs, as ``make zoo`` runs them: ``experiment=zoo`` with
the arm ``dn_resnet13_sigma25``, seeds 0..N-1, ``trainer.max_steps=--steps``, no test checkpoint, one test image, no
step checkpoints. ``DNL_GPUS_PER_JOB=1/N`` (rounded down to Ray's 0.0001 resolution) gives each job that fraction
of the GPU, so all N share it (Ray fractional GPUs); only one GPU is shown to the multirun (``CUDA_VISIBLE_DEVICES``:
its first entry, else 0). Each setting writes into ``--out/jobsN/<precision>/`` (replaced when it exists), with the
multirun's output in ``multirun.log`` there.

The network is the whole DN-ResNet-13 (``callbacks.cascade=null``, five ResBlocks): the zoo's cascade starts at 3
layers and stays there for its first 2,400 steps, so a short run of it would time the smallest network only.
``--cascade`` keeps the zoo's schedule.

Reported per (precision, N), from each finished job's ``results.json`` and ``config.yaml``: steps/s per job
(``global_steps / train_seconds``, the fit including its start and the sanity validation; mean and min over the
jobs), in total (the sum over the jobs, and all jobs' steps / the wall time of the whole multirun, Ray and job
start-up and the test phase included), patches/s in total (x ``data.batch_size``), the machine (GPU name, else CPU)
and the ratio of the total to the same precision with one job. Written to ``--out/results.json`` and
``--out/results.md`` with the exact commands, the versions and the date, and printed. Timings are never pass/fail; a
job or setting that fails is a row marked failed (with its error), not a crash of the benchmark.

Not measured: ``torch.compile`` and CUDA graphs are not options of the training module yet. The numbers mean
something only on a GPU machine: on a CPU machine every job gets ``$DNL_CPUS_PER_JOB`` cores (default 1) and no GPU
is shared. ``--quick`` (experiment=zoo_smoke, 3 steps, jobs 1,2, 32-true unless given) is for tests; its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from denoise_lightning.files import atomic_write_text
from denoise_lightning.provenance import source, versions
from denoise_lightning.sweeps.collect import gather

ARM = "dn_resnet13_sigma25"
FULL_NETWORK = ["callbacks.cascade=null", "model.blocks=[res,res,res,res,res]"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")  # e.g. "ray.exceptions.RaySystemError: ..."


def gpu_fraction(jobs: int) -> str:
    """``$DNL_GPUS_PER_JOB`` for ``jobs`` jobs on one GPU: 1/jobs rounded down to Ray's resolution (0.0001), so that
    the fractions of all jobs add up to at most one GPU (1/6 rounded to 0.1667 would fit only 5)."""
    return f"{math.floor(10_000 / jobs) / 10_000:.4f}".rstrip("0").rstrip(".")


def one_gpu(environ: dict[str, str]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` that shows the multirun one GPU: the first one already visible (none when it is
    set empty), else 0."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return environ["CUDA_VISIBLE_DEVICES"].split(",")[0].strip()
    return "0"


def multirun_command(args: argparse.Namespace, jobs: int, precision: str, sweep_dir: Path) -> list[str]:
    """``python -m denoise_lightning.training.train -m ...`` for one setting (``--override`` items come last)."""
    return [sys.executable, "-m", "denoise_lightning.training.train", "-m", f"experiment={args.experiment}",
            f"+experiment/zoo_models={ARM}", "seed=" + ",".join(str(seed) for seed in range(jobs)),
            f"trainer.max_steps={args.steps}", f"trainer.precision={precision}", "test_ckpt=null",
            "data.test_max_images=1", "checkpoint_every_n_steps=null", *([] if args.cascade else FULL_NETWORK),
            "hydra/launcher=ray_local", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}",
            *args.override]


def run_multirun(command: list[str], environ: dict[str, str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run ``command`` with its output in ``log``; its exit status (None on timeout) and wall seconds. On timeout the
    multirun gets SIGINT (Ray shuts its workers down), then SIGKILL a minute later."""
    start = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, env=environ, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            returncode = None
    return returncode, time.perf_counter() - start


def last_error(log: Path) -> str:
    """Why a multirun failed before its jobs ran, from its ``log``: the last Python exception line, else the first
    lines of the last paragraph (Hydra's own config errors), without Hydra's HYDRA_FULL_ERROR hint."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines() if "HYDRA_FULL_ERROR" not in line]
    exceptions = [line.strip() for line in lines if EXCEPTION_LINE.match(line.strip())]
    if exceptions:
        return exceptions[-1][:300]
    paragraphs = [block.strip().splitlines() for block in "\n".join(lines).split("\n\n") if block.strip()]
    return " ".join(line.strip() for line in paragraphs[-1][:3])[:300] if paragraphs else "no output"


def machine_name(results: dict[str, Any]) -> str:
    info = (results.get("environment") or {}).get("machine") or {}
    if info.get("cuda"):
        return f"GPU {info.get('gpu')}"
    return f"CPU {info.get('cpu')} ({info.get('cpu_count')} cores)" if info else "unknown"


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One dict per job folder of the multirun: its status, steps, seconds, steps/s, batch size and error."""
    jobs, _ = gather([sweep_dir]) if sweep_dir.is_dir() else ([], None)
    rows = []
    for job in jobs:
        results = job.results if job.status == "completed" and isinstance(job.results, dict) else None
        row = {"job": job.name, "status": job.status, "overrides": job.overrides, "error": job.error}
        if results is not None:
            steps, seconds = results.get("global_steps"), results.get("train_seconds")
            batch_size = (job.config.get("data") or {}).get("batch_size")
            if not steps or not seconds or not batch_size:
                row.update(status="invalid", error=f"results.json has global_steps={steps}, train_seconds={seconds}"
                                                   f", config.yaml data.batch_size={batch_size}")
            else:
                row.update(global_steps=steps, train_seconds=seconds, steps_per_s=steps / seconds,
                           batch_size=batch_size, precision=results.get("precision"), machine=machine_name(results))
        rows.append(row)
    return rows


def summarize(precision: str, jobs: int, rows: list[dict[str, Any]], returncode: int | None,
              wall_seconds: float, log: Path) -> dict[str, Any]:
    """The table row of one setting; jobs without a folder (the multirun failed before them) count as failed."""
    done = [row for row in rows if "steps_per_s" in row]
    errors = [row["error"] for row in rows if row.get("error")]
    if len(done) < jobs and not errors:
        errors.append("multirun timed out" if returncode is None else last_error(log))
    status = "ok" if len(done) == jobs else ("failed" if not done else "partial")
    summary: dict[str, Any] = {
        "precision": precision, "jobs": jobs, "status": status, "completed": len(done), "failed": jobs - len(done),
        "error": errors[0] if errors and status != "ok" else None, "returncode": returncode,
        "wall_seconds": round(wall_seconds, 2), "machine": done[0]["machine"] if done else None,
        "effective_precision": sorted({row["precision"] for row in done}) or None}
    if done:
        rates = [row["steps_per_s"] for row in done]
        summary.update(
            steps_per_job=max(row["global_steps"] for row in done), batch_size=done[0]["batch_size"],
            steps_per_s_per_job_mean=statistics.fmean(rates), steps_per_s_per_job_min=min(rates),
            steps_per_s_total=sum(rates),
            steps_per_s_total_wall=sum(row["global_steps"] for row in done) / wall_seconds,
            patches_per_s_total=sum(row["steps_per_s"] * row["batch_size"] for row in done),
            patches_per_s_total_wall=sum(row["global_steps"] * row["batch_size"] for row in done) / wall_seconds)
    summary["per_job"] = rows
    return summary


def relative_to_one_job(rows: list[dict[str, Any]]) -> None:
    """``total_vs_one_job``: total steps/s (sum over jobs) over that of one job alone, same precision."""
    single = {row["precision"]: row.get("steps_per_s_total") for row in rows if row["jobs"] == 1}
    for row in rows:
        base = single.get(row["precision"])
        row["total_vs_one_job"] = row["steps_per_s_total"] / base if base and "steps_per_s_total" in row else None


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The table, then the setup, versions and the exact commands."""
    lines = ["| precision | jobs | status | machine | steps/s per job (mean / min) | steps/s total (sum / wall) | "
             "patches/s total (sum / wall) | total vs 1 job | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        error = (row["error"] or "")[:150].replace("|", "/")
        status = row["status"]
        if status != "ok":
            status += f": {row['failed']} of {row['jobs']} failed ({error})"
        lines.append(
            f"| {row['precision']} | {row['jobs']} | {status} | {row['machine'] or '-'} | "
            f"{_number(row.get('steps_per_s_per_job_mean'), 2)} / {_number(row.get('steps_per_s_per_job_min'), 2)} | "
            f"{_number(row.get('steps_per_s_total'), 2)} / {_number(row.get('steps_per_s_total_wall'), 2)} | "
            f"{_number(row.get('patches_per_s_total'))} / {_number(row.get('patches_per_s_total_wall'))} | "
            f"{_number(row.get('total_vs_one_job'), 2)} | {row['wall_seconds']:.0f} |")
    version = results["versions"]
    code = results["source"]
    commit = "no git checkout" if code["commit"] is None else code["commit"][:8] + (" (dirty)" if code["dirty"] else "")
    lines += ["", f"{results['date']}: `{results['command']}`; experiment={results['experiment']}, arm {ARM}, "
              f"{results['network']}, {results['steps']} steps per job; torch {version.get('torch')}, lightning "
              f"{version.get('lightning')}, hydra-core {version.get('hydra-core')}, commit {commit}."
              + (" Quick run: the numbers mean nothing." if results["quick"] else ""), "",
              "Per job: global_steps / train_seconds (the fit). Wall: all jobs' steps over the whole multirun "
              "(Ray and job start-up, test phase included). Total vs 1 job: steps/s summed over the jobs, over one "
              "job alone.", "", "Commands:", "", "```"]
    lines += [row["command"] for row in results["rows"]]
    return "\n".join(lines + ["```"]) + "\n"


def _csv_ints(text: str) -> list[int]:
    values = [int(item) for item in text.split(",") if item.strip()]
    if not values or min(values) < 1:
        raise ValueError
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("zoo-throughput"), help="folder for the runs and results")
    parser.add_argument("--jobs", help="comma-separated numbers of jobs sharing the GPU (default 1,4,8,16)")
    parser.add_argument("--steps", type=int, help="training steps per job (default 600)")
    parser.add_argument("--precision", help="comma-separated trainer.precision settings (default bf16-mixed,32-true)")
    parser.add_argument("--experiment", help="experiment config (default zoo)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every job (repeatable; applied last)")
    parser.add_argument("--cascade", action="store_true", help="keep the zoo's cascade (starts at 3 layers)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per multirun before it is stopped")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that the benchmark runs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.experiment = args.experiment or ("zoo_smoke" if quick else "zoo")
    args.steps = args.steps if args.steps is not None else (3 if quick else 600)
    try:
        args.jobs = _csv_ints(args.jobs or ("1,2" if quick else "1,4,8,16"))
    except ValueError:
        parser.error(f"--jobs must be comma-separated whole numbers >= 1 (e.g. 1,4,8,16), got {args.jobs!r}")
    args.precision = [item.strip() for item in (args.precision or ("32-true" if quick else "bf16-mixed,32-true"))
                      .split(",") if item.strip()]
    if not args.precision:
        parser.error("--precision must name at least one trainer.precision (e.g. bf16-mixed,32-true)")
    if args.steps < 1 or args.timeout <= 0:
        parser.error(f"--steps must be >= 1 and --timeout > 0, got {args.steps} and {args.timeout}")
    bad = [item for item in args.override if "=" not in item]
    if bad:
        parser.error(f"--override takes a Hydra override KEY=VALUE, got {bad[0]!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for precision in args.precision:
        for jobs in args.jobs:
            sweep_dir = out / f"jobs{jobs}" / precision
            if sweep_dir.exists():
                shutil.rmtree(sweep_dir)  # no results of an earlier run may be read as this one's
            sweep_dir.mkdir(parents=True)
            settings = {"DNL_GPUS_PER_JOB": gpu_fraction(jobs), "CUDA_VISIBLE_DEVICES": one_gpu(dict(os.environ))}
            command = multirun_command(args, jobs, precision, sweep_dir)
            label = f"{precision}, {jobs} job{'s' if jobs > 1 else ''}"
            print(f"[zoo_throughput] {label} -> {sweep_dir}", flush=True)
            log = sweep_dir / "multirun.log"
            returncode, wall = run_multirun(command, {**os.environ, **settings}, log, args.timeout)
            row = summarize(precision, jobs, job_rows(sweep_dir), returncode, wall, log)
            row["command"] = shlex.join([*(f"{key}={value}" for key, value in settings.items()), *command])
            row["sweep_dir"] = str(sweep_dir)
            rows.append(row)
            print(f"[zoo_throughput] {label}: {row['status']}, {row['completed']} of {jobs} completed, {wall:.0f} s",
                  flush=True)
    relative_to_one_job(rows)
    command = "python benchmarks/zoo_throughput.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "versions": versions(), "source": source(), "quick": args.quick, "experiment": args.experiment,
               "network": "zoo cascade" if args.cascade else "DN-ResNet-13 (no cascade)", "steps": args.steps,
               "overrides": args.override, "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    atomic_write_text(out / "results.md", table)
    print(table, flush=True)
    return results


if __name__ == "__main__":
    main()
