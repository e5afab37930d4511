"""The tiny sweep shared by test_sweep.py, test_collect.py and test_notebook.py (a pytest plugin: the session fixture
runs once however many of those modules are collected).

Four jobs through the Ray launcher (conf/hydra/launcher/ray_local.yaml) as a real `dnl-train -m` process: a
two-stage DN-ResNet cascade on the embedded photos, noise.blind=false,true x noise.sigma=25,-5, logged to wandb
offline. sigma -5 is invalid, so jobs 1 and 3 fail and jobs 0 and 2 complete. Ray is told this 2-core machine has
two GPUs (hydra.launcher.ray.init.num_gpus=2, remote.num_gpus=1), so the jobs take the one-GPU-per-job path of a
GPU machine: each gets one GPU id in CUDA_VISIBLE_DEVICES (the CPU build of torch ignores it). Worker processes
are reused (max_calls=0), as on a CPU machine, so the import of torch is paid once per worker, and a worker runs
several jobs one after another: each must start its own wandb run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SWEEP_OVERRIDES = [
    "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_gpus=2", "hydra.launcher.ray.remote.num_gpus=1",
    "+hydra.launcher.ray.remote.max_calls=0",  # reuse worker processes (Ray's default for GPU tasks is one job each)
    "experiment=embedded_dn_resnet_cascade", "logger=wandb",
    "model.channels=8", "model.head_channels=16",
    "data.patch_size=32", "data.batch_size=8", "data.patches_per_image=2",  # 12 photos x 2 / 8 = 3 steps per epoch
    "data.val_max_images=1", "data.test_max_images=1",
    "callbacks.cascade.stages=[{epochs:1,blocks:[]},{epochs:1,blocks:[res]}]", "trainer.max_epochs=2",
    "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "callbacks.wandb_tracking.panel_images=2", "callbacks.wandb_tracking.panel_crop=64",
    "noise.blind=false,true", "noise.sigma=25,-5",
]


@dataclass
class TinySweep:
    sweep_dir: Path
    returncode: int
    output: str
    seconds: float
    completed_jobs = {"0": "false", "2": "true"}   # job folder -> noise.blind
    failed_jobs = {"1", "3"}                        # noise.sigma=-5


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> TinySweep:
    script = shutil.which("dnl-train")
    assert script, "dnl-train is not installed: run `make install`"
    root = tmp_path_factory.mktemp("tiny_sweep")
    sweep_dir = root / "sweep"
    env = {**os.environ, "WANDB_SILENT": "true", "RAY_DEDUP_LOGS": "0"}
    env.pop("WANDB_MODE", None)
    start = time.perf_counter()
    done = subprocess.run([script, "-m", *SWEEP_OVERRIDES, f"hydra.sweep.dir={sweep_dir}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    return TinySweep(sweep_dir, done.returncode, done.stdout + done.stderr, time.perf_counter() - start)
