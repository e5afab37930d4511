"""``provenance.environment()``: real versions, the commit of this checkout, the machine; recorded in results.json."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import lightning
import numpy
import pytest
import torch
from conftest import REPO_ROOT, compose_config

import denoise_lightning
from denoise_lightning import hardware, provenance
from denoise_lightning.training.evaluate import evaluate


def git(folder: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", "-C", str(folder), *identity, *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def test_versions_are_those_of_the_imported_packages():
    versions = provenance.versions()
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__
    assert versions["lightning"] == lightning.__version__
    assert versions["numpy"] == numpy.__version__
    assert versions["denoise-lightning"] == denoise_lightning.__version__
    assert all(versions[name] for name in provenance.PACKAGES), versions


def test_commit_of_this_checkout():
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not running from a git checkout")
    source = provenance.source()
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["commit"] == git(REPO_ROOT, "rev-parse", "HEAD")
    assert isinstance(source["dirty"], bool)


def test_dirty_follows_tracked_changes_and_no_checkout_gives_null(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "model.py").write_text("CHANNELS = 64\n")
    git(repo, "add", "model.py")
    git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "SOURCE_ROOT", repo.resolve())
    assert provenance.source() == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "notes.txt").write_text("untracked files do not count\n")
    assert provenance.source()["dirty"] is False
    (repo / "model.py").write_text("CHANNELS = 32\n")
    assert provenance.source()["dirty"] is True
    # installed inside some other repository (e.g. site-packages of a .venv in a checkout): not this package's commit
    (repo / "site-packages").mkdir()
    monkeypatch.setattr(provenance, "SOURCE_ROOT", (repo / "site-packages").resolve())
    assert provenance.source() == {"commit": None, "dirty": None}
    monkeypatch.setattr(provenance, "SOURCE_ROOT", tmp_path.resolve())
    assert provenance.source() == {"commit": None, "dirty": None}


def test_machine_is_this_machine():
    machine = provenance.machine()
    assert machine["cpu_count"] == os.cpu_count() and machine["torch_threads"] == torch.get_num_threads()
    assert machine["cpu_fast_bf16"] is hardware.cpu_has_fast_bf16()
    assert machine["cuda"] is torch.cuda.is_available()
    assert (machine["gpu"] is None) is not machine["cuda"]
    assert machine["cpu"]


def test_a_training_run_records_its_environment_next_to_its_precision(trained_run):
    on_disk = json.loads((Path(trained_run["output_dir"]) / "results.json").read_text())
    assert on_disk["precision"] == "32-true"  # tests train in fp32 on every machine (conftest.FAST_RUN)
    environment, now = on_disk["environment"], json.loads(json.dumps(provenance.environment()))
    assert (environment["versions"], environment["machine"]) == (now["versions"], now["machine"])  # same process
    assert environment["versions"]["torch"] == torch.__version__
    assert environment["machine"]["cpu_fast_bf16"] is hardware.cpu_has_fast_bf16()


def test_evaluation_records_it_and_prints_precision_and_machine(trained_run, tmp_path, capsys):
    results = evaluate(compose_config("eval", tmp_path, [f"ckpt={trained_run['checkpoint']}", "data.test_max_images=1",
                                                         "trainer.precision=bf16-mixed",
                                                         "trainer.enable_progress_bar=false"]))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["precision"] == results["precision"] == "bf16-mixed"
    assert on_disk["environment"]["versions"]["lightning"] == lightning.__version__
    line = provenance.describe(on_disk["environment"], "bf16-mixed")
    assert line in capsys.readouterr().out
    assert line.startswith(f"precision bf16-mixed on {provenance.cpu_model()} ({os.cpu_count()} CPUs, ")
