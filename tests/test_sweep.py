"""Hydra multiruns through the Ray launcher, the job status / sweep summary, launcher configs and wandb tracking."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from denoise_lightning.sweeps import status as sweep
from denoise_lightning.sweeps.collect import expected_jobs
from denoise_lightning.training.resolvers import register_resolvers
from denoise_lightning.training.tracking import finish_wandb_run

pytest_plugins = ["sweep_fixtures"]  # the session's one tiny sweep, shared with test_collect.py, test_notebook.py


# ---------------------------------------------------------------- reading a .wandb file back
def wandb_records(path: Path) -> Iterator:
    """The protobuf records (wandb's own ``wandb_internal_pb2.Record``) of a ``run-*.wandb`` transaction log.

    wandb >= 0.2x dropped its Python reader (``wandb.sdk.internal.datastore``); the file is a LevelDB-style log:
    a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks (crc32, length, type) that
    assemble into serialized records.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a wandb transaction log"
    position, record = 7, b""
    while position + 7 <= len(data):
        space = 32768 - position % 32768
        checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if space < 7 or (length, kind) == (0, 0):  # block trailer / padding
            position += space
            continue
        chunk = data[position + 7:position + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"corrupt chunk at {position} in {path}"
        position += 7 + length
        record = chunk if kind in (1, 2) else record + chunk  # FULL / FIRST start a record, MIDDLE / LAST extend it
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed


def read_run(run_dir: Path) -> dict:
    """run (group, tags), config, history rows and exit code of an offline wandb run folder."""
    (log,) = run_dir.glob("run-*.wandb")
    run: dict = {"config": {}, "history": [], "exit_code": None}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(group=record.run.run_group, tags=list(record.run.tags))
            run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


# ---------------------------------------------------------------- the tiny Ray sweep
def test_ray_sweep_keeps_finished_results_when_jobs_fail(tiny_sweep):
    assert "Ray Launcher is launching 4 jobs" in tiny_sweep.output, tiny_sweep.output[-3000:]
    assert tiny_sweep.returncode == 1, "a sweep with failed jobs must exit non-zero"
    for job, blind in tiny_sweep.completed_jobs.items():
        folder = tiny_sweep.sweep_dir / job
        results = json.loads((folder / "results.json").read_text())
        assert results["global_steps"] == 6 and [s["conv_layers"] for s in results["stages"]] == [3, 5]
        assert results["noise"]["blind"] is (blind == "true")
        status = json.loads((folder / "job_status.json").read_text())
        assert status["status"] == "completed" and f"noise.blind={blind.capitalize()}" in status["overrides"]
    for job in tiny_sweep.failed_jobs:
        folder = tiny_sweep.sweep_dir / job
        assert not (folder / "results.json").exists()
        status = json.loads((folder / "job_status.json").read_text())
        assert status["status"] == "failed"
        assert status["error"] == "ValueError: noise.sigma must be >= 0 (0-255 scale), got -5"
        assert "Traceback" in status["traceback"] and "noise.sigma=-5" in status["overrides"]


def test_sweep_summary_names_the_failed_jobs_and_why(tiny_sweep):
    """Hydra skips on_multirun_end after a failed job; the summary is still written when the sweep process exits."""
    summary = json.loads((tiny_sweep.sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 2, "failed": 2, "incomplete": 0, "not_started": 0}
    failed = {entry["job"]: entry for entry in summary["jobs"] if entry["status"] == "failed"}
    assert set(failed) == tiny_sweep.failed_jobs
    assert all("noise.sigma must be >= 0" in entry["error"] for entry in failed.values())
    markdown = (tiny_sweep.sweep_dir / "sweep_summary.md").read_text()
    assert "2 completed | 2 failed" in markdown
    assert "| 3 | failed | noise.blind=True noise.sigma=-5 | ValueError: noise.sigma must be >= 0" in markdown
    assert (tiny_sweep.sweep_dir / "results.csv").is_file()


def test_each_job_holds_exactly_one_gpu_at_a_time(tiny_sweep):
    """Ray (told the machine has 2 GPUs) gives each job one GPU id; two jobs never hold the same one at once."""
    records = [json.loads(path.read_text()) for path in tiny_sweep.sweep_dir.glob("*/job_status.json")]
    assert len(records) == 4
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for record in records:
        assert record["cuda_visible_devices"] in ("0", "1")
        assert record["torch_threads"] == 1  # one CPU per job: Ray set OMP_NUM_THREADS=1
        spans.setdefault(record["cuda_visible_devices"], []).append(
            (datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["finished"])))
    for gpu, intervals in spans.items():
        intervals.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in pairwise(intervals)), (gpu, intervals)


def test_wandb_offline_runs_hold_group_tags_metrics_images_and_tables(tiny_sweep):
    for job, blind in tiny_sweep.completed_jobs.items():
        run_dirs = list((tiny_sweep.sweep_dir / job / "wandb").glob("offline-run-*"))
        assert len(run_dirs) == 1, run_dirs  # a reused worker process started a new run for this job
        run = read_run(run_dirs[0])
        assert run["group"] == str(tiny_sweep.sweep_dir)
        assert {"noise=gaussian", "blind" if blind == "true" else "non-blind", "loss=mse", "model=dn_resnet"} <= set(
            run["tags"]), run["tags"]
        assert run["config"]["noise"]["blind"] is (blind == "true")  # the resolved Hydra config
        assert run["config"]["data"]["patch_size"] == 32 and run["exit_code"] == 0
        history = run["history"]
        psnr = [row["val/psnr"] for row in history if "val/psnr" in row]
        assert len(psnr) == 2 and all(10 < value < 40 for value in psnr)
        assert any("test/embedded/sigma25/psnr" in row for row in history)
        assert [row["stage/conv_layers"] for row in history if "stage/conv_layers" in row] == [3, 5]
        panels = [row for row in history if row.get("val/panel/_type") == "images/separated"]
        assert len(panels) == 2  # after each half of the 6 steps (panel_times=3: due at steps 3 and 6)
        files = run_dirs[0] / "files"
        for panel in panels:
            (name,) = panel["val/panel/filenames"]
            image = Image.open(files / name)
            assert image.size == (3 * 64 + 2 * 4, 64)  # noisy | denoised | clean, 64-pixel crops, 4-pixel gaps
            assert "denoised" in panel["val/panel/captions"][0]
        tables = {row_key.split("/_type")[0]: row[row_key.replace("_type", "path")]
                  for row in history for row_key in row if row_key.endswith("/_type") and row[row_key] == "table-file"}
        test_table = json.loads((files / tables["test/results"]).read_text())
        assert test_table["columns"][:3] == ["set", "level", "psnr"]
        assert len(test_table["data"]) == (3 if blind == "true" else 1)
        stages_table = json.loads((files / tables["cascade/stages"]).read_text())
        assert [row[1] for row in stages_table["data"]] == [3, 5]


def test_finish_wandb_run_marks_a_failed_job_and_frees_the_process(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(RuntimeError, match="job failed"), finish_wandb_run():
        wandb.init(mode="offline", dir=tmp_path, project="test")
        wandb.log({"loss": 1.0})
        raise RuntimeError("job failed")
    assert wandb.run is None  # the next job's WandbLogger starts a new run
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_run(run_dir)
    assert run["exit_code"] == 1 and run["history"][0]["loss"] == 1.0


# ---------------------------------------------------------------- launcher configs and resources
def test_job_resources_one_gpu_per_job_or_cpus_per_job(monkeypatch):
    monkeypatch.delenv("DNL_CPUS_PER_JOB", raising=False)
    monkeypatch.delenv("DNL_GPUS_PER_JOB", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 64)
    assert (sweep.gpus_per_job(), sweep.cpus_per_job()) == (1, 8)  # 8 jobs fill 8 GPUs and 64 cores exactly
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 16)
    monkeypatch.setenv("DNL_GPUS_PER_JOB", "0.125")  # 8 small jobs share the one GPU and its 16 cores
    assert (sweep.gpus_per_job(), sweep.cpus_per_job()) == (0.125, 2)
    for bad in ("0", "1.5", "eight"):
        monkeypatch.setenv("DNL_GPUS_PER_JOB", bad)
        with pytest.raises(ValueError, match="DNL_GPUS_PER_JOB"):
            sweep.gpus_per_job()
    monkeypatch.delenv("DNL_GPUS_PER_JOB")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (sweep.gpus_per_job(), sweep.cpus_per_job()) == (0, 1)
    monkeypatch.setenv("DNL_CPUS_PER_JOB", "3")
    assert sweep.cpus_per_job() == 3
    monkeypatch.setenv("DNL_CPUS_PER_JOB", "0")
    with pytest.raises(ValueError, match="DNL_CPUS_PER_JOB"):
        sweep.cpus_per_job()


def _hydra_config(overrides: list[str]):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_launcher_configs(monkeypatch):
    monkeypatch.delenv("DNL_CPUS_PER_JOB", raising=False)
    local = _hydra_config(["hydra/launcher=ray_local"]).hydra.launcher
    assert local._target_.endswith("RayLauncher") and local.ray.init.address is None
    expected = {"num_gpus": int(torch.cuda.is_available()), "num_cpus": sweep.cpus_per_job()}
    assert OmegaConf.to_container(local.ray.remote, resolve=True) == expected
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    cluster = _hydra_config(["hydra/launcher=ray_cluster"]).hydra.launcher
    assert OmegaConf.to_container(cluster.ray, resolve=True) == {
        "init": {"address": "10.1.2.3:6379", "object_store_memory": None}, "remote": {"num_gpus": 1, "num_cpus": 4}}
    slurm = _hydra_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and (slurm.gpus_per_node, slurm.tasks_per_node) == (1, 1)
    assert slurm.partition == "gpu"


def _grid(experiment: str, folder: Path) -> list[list[str]]:
    OmegaConf.save(_hydra_config([f"experiment={experiment}"]), folder / "multirun.yaml")  # as Hydra writes it
    return expected_jobs(folder)


def test_paper_grid_is_noise_x_blind_x_edge_weight(tmp_path):
    """Both budgets of the paper grid expand to the same 18 jobs, and the jobs compose to the intended runs."""
    expected = {(f"noise={noise}", f"noise.blind={blind}", "loss=edge_a", f"loss.edge_weight={weight}")
                for noise in ("gaussian", "poisson", "poisson_gaussian") for blind in ("True", "False")
                for weight in ("0", "0.025", "0.1")}
    for experiment in ("paper_grid", "paper_grid_smoke"):
        (tmp_path / experiment).mkdir()
        jobs = _grid(experiment, tmp_path / experiment)
        assert len(jobs) == 18
        assert {tuple(o for o in job if o != f"experiment={experiment}") for job in jobs} == expected
    classes = {"gaussian": "GaussianNoise", "poisson": "PoissonNoise", "poisson_gaussian": "PoissonGaussianNoise"}
    for job in (jobs[0], jobs[10], jobs[17]):  # one job per noise type
        overrides = dict(override.split("=") for override in job)
        cfg = _hydra_config(job)
        assert cfg.noise._target_.endswith(classes[overrides["noise"]])
        assert cfg.noise.blind == (overrides["noise.blind"] == "True")
        assert cfg.loss.edge_weight == float(overrides["loss.edge_weight"]) and cfg.loss.edge == "sobel"
        assert cfg.model._target_.endswith("DNResNet") and len(cfg.callbacks.cascade.stages) == 6
