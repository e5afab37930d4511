"""benchmarks/zoo_throughput.py runs real Hydra multiruns through the Ray launcher (``--quick``: the smoke budget, 3
steps per job; no timing is ever asserted): a row per (precision, jobs) computed from the jobs' own results, and a
setting whose jobs fail is a row marked failed, not a crash of the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

BAD_PRECISION = "no-such-precision"


@pytest.mark.slow
def test_quick_zoo_throughput_reports_every_setting_and_failed_ones(tmp_path, shared_data):
    """Four multiruns (2-3 minutes on 2 loaded cores): the failing precision goes first, so the benchmark must carry
    on past it."""
    env = {**os.environ, "DNL_DATA_DIR": str(shared_data), "DNL_CPUS_PER_JOB": "1"}
    done = subprocess.run([sys.executable, "benchmarks/zoo_throughput.py", "--quick", "--precision",
                           f"{BAD_PRECISION},32-true", "--out", str(tmp_path)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "results.md").read_text()
    rows = {(row["precision"], row["jobs"]): row for row in results["rows"]}
    assert list(rows) == [(BAD_PRECISION, 1), (BAD_PRECISION, 2), ("32-true", 1), ("32-true", 2)]
    assert results["versions"]["torch"] and results["versions"]["lightning"] and results["date"]

    for jobs in (1, 2):
        row = rows["32-true", jobs]
        assert row["status"] == "ok" and row["completed"] == jobs and row["failed"] == 0
        assert len(row["per_job"]) == jobs and row["effective_precision"] == ["32-true"]
        assert row["machine"].startswith(("CPU", "GPU"))
        assert f"DNL_GPUS_PER_JOB={1 / jobs:g}" in row["command"]
        assert "seed=" + ",".join(map(str, range(jobs))) in row["command"]
        rates = []
        for job in row["per_job"]:  # each job's rate is its own results.json's steps over its fit seconds
            own = json.loads((tmp_path / f"jobs{jobs}" / "32-true" / job["job"] / "results.json").read_text())
            assert own["global_steps"] == job["global_steps"] == 3
            assert job["steps_per_s"] == pytest.approx(3 / own["train_seconds"]) and job["batch_size"] == 64
            rates.append(job["steps_per_s"])
        assert 0 < row["steps_per_s_per_job_min"] == pytest.approx(min(rates))
        assert row["steps_per_s_per_job_mean"] == pytest.approx(sum(rates) / jobs)
        assert row["steps_per_s_total"] == pytest.approx(sum(rates))
        assert row["patches_per_s_total"] == pytest.approx(64 * sum(rates))
        assert 0 < row["steps_per_s_total_wall"] == pytest.approx(3 * jobs / row["wall_seconds"], rel=1e-3)
        assert f"| 32-true | {jobs} | ok |" in markdown
    assert rows["32-true", 1]["total_vs_one_job"] == pytest.approx(1.0)

    for jobs in (1, 2):
        row = rows[BAD_PRECISION, jobs]
        assert row["status"] == "failed" and row["completed"] == 0 and row["failed"] == jobs
        assert BAD_PRECISION in row["error"]
        assert "steps_per_s_total" not in row and row["total_vs_one_job"] is None
        assert f"| {BAD_PRECISION} | {jobs} | failed: {jobs} of {jobs} failed" in markdown
    assert "| precision | jobs | status |" in done.stdout
