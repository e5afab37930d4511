"""``dnl-collect``: the tidy results table and the sweep summary, from the session's tiny Ray sweep."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from denoise_lightning.sweeps.collect import collect, main

pytest_plugins = ["sweep_fixtures"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_dnl_collect_writes_one_row_per_job_set_and_level(tiny_sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal width
    assert main([str(tiny_sweep.sweep_dir), "--out", str(tmp_path)]) == 1  # non-zero: the sweep has failed jobs
    printed = capsys.readouterr().out
    assert "2 completed | 2 failed" in printed and "noise.sigma must be >= 0" in printed
    rows = _read_csv(tmp_path / "results.csv")
    # non-blind: tested at its sigma 25; blind: at 15, 25 and 50; failed jobs have no results
    assert sorted((r["job"], r["noise.blind"], r["set"], r["level"]) for r in rows) == [
        ("0", "False", "embedded", "sigma25"), ("2", "True", "embedded", "sigma15"),
        ("2", "True", "embedded", "sigma25"), ("2", "True", "embedded", "sigma50")]
    for row in rows:
        results = json.loads((tiny_sweep.sweep_dir / row["job"] / "results.json").read_text())
        metrics = results["test"][row["set"]][row["level"]]
        assert {key: float(row[key]) for key in metrics} == metrics
        assert row["status"] == "completed" and row["noise.sigma"] == "25"
        assert (row["network"], row["noise_type"], row["loss_type"], row["edge_weight"]) == (
            "DNResNet", "GaussianNoise", "MSELoss", "0.0")
        assert int(row["params"]) == results["model"]["params"] and row["blind"] == row["noise.blind"]
    stages = _read_csv(tmp_path / "stages.csv")
    assert sorted((s["job"], s["conv_layers"], s["blocks"]) for s in stages) == [
        (job, layers, blocks) for job in sorted(tiny_sweep.completed_jobs)
        for layers, blocks in (("3", "base"), ("5", "res"))]
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert {e["job"] for e in summary["jobs"] if e["status"] == "failed"} == tiny_sweep.failed_jobs


def test_summary_tells_failed_incomplete_and_not_started_jobs_apart(tiny_sweep, tmp_path):
    """A killed job leaves a folder without job_status.json; a job the launcher never started leaves none."""
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(tiny_sweep.sweep_dir, sweep_dir, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    shutil.rmtree(sweep_dir / "3")                          # never started
    (sweep_dir / "2" / "job_status.json").unlink()          # killed mid-run
    (sweep_dir / "2" / "results.json").unlink()
    collection = collect([sweep_dir])
    assert collection.summary["counts"] == {"completed": 1, "failed": 1, "incomplete": 1, "not_started": 1}
    not_started = [e for e in collection.summary["jobs"] if e["status"] == "not_started"]
    assert "noise.blind=True" in not_started[0]["overrides"] and "noise.sigma=-5" in not_started[0]["overrides"]
    assert len(_read_csv(collection.results_csv)) == 1


def test_collect_errors_name_the_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_sweep"):
        collect([tmp_path / "no_such_sweep"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{truncated")
    collection = collect([tmp_path])  # marked invalid with the reason; the (empty) tables are still written
    assert collection.summary["jobs"][0]["status"] == "invalid"
    assert "results.json is not valid JSON" in collection.summary["jobs"][0]["error"]
    assert "results.json is not valid JSON" in collection.summary_md.read_text()
    assert collection.results_csv.exists()
    with pytest.raises(ValueError, match="--out"):
        collect([tmp_path, tmp_path / "run"])
