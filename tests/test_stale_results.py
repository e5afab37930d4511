"""A run folder reports the results of its own run only: a failed rerun leaves no results of an earlier run under
the new config, and ``dnl-collect`` marks stale or invalid folders (with the reason) while writing the good rows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import FAST, compose_config

from denoise_lightning.sweeps.collect import collect, main
from denoise_lightning.training.train import train

TINY = [*FAST, "model.num_layers=3", "model.channels=8", "trainer.max_steps=2", "data.val_max_images=1",
        "data.test_max_images=1"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good") / "run"
    train(compose_config("train", folder, TINY))
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_results_carry_the_run_id_of_the_config_beside_them(good_run):
    results = json.loads((good_run / "results.json").read_text())
    run = json.loads((good_run / "run.json").read_text())
    assert results["run"] == {"id": run["id"], "config_sha256": run["config_sha256"]}
    assert collect([good_run]).summary["counts"]["completed"] == 1


def test_failed_rerun_leaves_no_results_of_the_earlier_run(good_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(good_run, folder)
    old = json.loads((folder / "results.json").read_text())
    with pytest.raises(Exception, match="sigma"):
        train(compose_config("train", folder, [*TINY, "noise.sigma=-5"]))
    assert not (folder / "results.json").exists() and not (folder / "results.md").exists()
    assert json.loads((folder / "results.stale.json").read_text()) == old  # kept, under a name nobody reads
    collection = collect([folder])
    assert collection.summary["counts"]["completed"] == 0 and collection.summary["result_rows"] == 0


def test_collect_marks_stale_and_invalid_folders_and_keeps_the_good_rows(good_run, tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    shutil.copytree(good_run, sweep / "0")
    for job in ("1", "2", "3", "4", "5"):
        shutil.copytree(good_run, sweep / job, ignore=shutil.ignore_patterns("checkpoints", "csv"))
    # 1: results of an earlier run, config.yaml + run.json of a later one (as left by a failed rerun before the fix)
    run = json.loads((sweep / "1" / "run.json").read_text())
    (sweep / "1" / "run.json").write_text(json.dumps({**run, "id": "0123456789abcdef"}))
    # 2: config.yaml replaced, run.json not (the config hash no longer matches)
    (sweep / "2" / "config.yaml").write_text((sweep / "2" / "config.yaml").read_text() + "extra: 1\n")
    (sweep / "3" / "results.json").write_text("{truncated")
    (sweep / "4" / "results.json").write_text("[1, 2]")
    results = json.loads((sweep / "5" / "results.json").read_text())
    del results["test"]
    (sweep / "5" / "results.json").write_text(json.dumps(results))

    monkeypatch.setenv("COLUMNS", "250")
    assert main([str(sweep)]) == 1
    printed = capsys.readouterr().out
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    status = {entry["job"]: (entry["status"], entry.get("error", "")) for entry in summary["jobs"]}
    assert status["0"] == ("completed", "")
    assert status["1"][0] == "stale" and "0123456789abcdef" in status["1"][1]
    assert status["2"][0] == "stale" and "config hash" in status["2"][1]
    assert status["3"][0] == "invalid" and "not valid JSON" in status["3"][1]
    assert status["4"][0] == "invalid" and "holds a list" in status["4"][1]
    assert status["5"][0] == "invalid" and "lacks test" in status["5"][1]
    assert summary["counts"] == {"completed": 1, "failed": 0, "incomplete": 0, "not_started": 0, "stale": 2,
                                 "invalid": 3}
    assert "2 stale" in printed and "3 invalid" in printed
    assert "holds a list" in (sweep / "sweep_summary.md").read_text()
    rows = _rows(sweep / "results.csv")
    assert rows and {row["job"] for row in rows} == {"0"}
