"""A run killed with SIGKILL and resumed from its last.ckpt equals the uninterrupted run bit for bit.

Real processes (``python -m denoise_lightning.training.train``), one thread each: the uninterrupted run, and the
same run killed (``kill -9``) as soon as its last.ckpt of epoch >= 1 exists, then resumed with ``ckpt_path`` into
the same folder. Proves that the patches (sampler), the training noise, the global RNGs, the optimizer and the
cosine schedule continue exactly (same final weights, same test PSNR), and that the CSV log keeps the rows written
before the kill and continues them with the same step numbers (same metrics.csv as the uninterrupted run).
last.ckpt is written at the end of every epoch (a resume at an epoch boundary) and every
``checkpoint_every_n_steps`` training steps: the second test kills a run after a mid-epoch checkpoint, and the resumed
run must take the epoch's remaining patches (the loader's saved position), not replay it from its first patch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST

# 12 photos x 4 patches / 16 = 3 steps per epoch, 24 steps; validation every epoch; cosine learning-rate decay
CONFIG = [*FAST, "model.num_layers=3", "model.channels=8", "data.patches_per_image=4", "data.val_max_images=1",
          "data.test_max_images=1", "trainer.log_every_n_steps=1"]
# Lightning restores its loops differently when the run is limited by steps (as the experiments are) or by epochs
STEP_LIMITED = ["trainer.max_steps=24", "trainer.max_epochs=-1"]
EPOCH_LIMITED = ["trainer.max_steps=-1", "trainer.max_epochs=8"]
# the tests folder is importable in the training process, for the SigkillAtStep callback below
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


def _command(output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "denoise_lightning.training.train", *CONFIG, f"hydra.run.dir={output_dir}", *extra]


def _load(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - absent or still being written
        return None


def _kill_after_epoch(output_dir: Path, epoch: int, limit: list[str], timeout: float = 240.0) -> dict:
    """Start the run, SIGKILL it once its last.ckpt of epoch >= ``epoch`` is complete; the checkpoint it left."""
    last = output_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_command(output_dir, *limit), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            checkpoint = _load(last) if last.is_file() else None
            if checkpoint is not None and checkpoint["epoch"] >= epoch:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        stderr = process.communicate()[1].decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, f"not killed (rc {process.returncode}): {stderr[-2000:]}"
    checkpoint = _load(last)
    assert checkpoint is not None, "last.ckpt unreadable after the kill"
    return checkpoint


def _run(output_dir: Path, *extra: str) -> dict:
    done = subprocess.run(_command(output_dir, *extra), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output_dir / "results.json").read_text())


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return _load(output_dir / "checkpoints" / "last.ckpt")["state_dict"]


def _assert_resumed_equals_straight(tmp_path: Path, straight: dict, resumed: dict) -> None:
    """The resumed run (in ``killed``) equals the uninterrupted one (in ``straight``): results, every weight and one
    metrics.csv holding the rows before the kill, then the resumed ones, as the uninterrupted run logged them."""
    assert resumed["global_steps"] == straight["global_steps"] == 24
    assert resumed["test"] == straight["test"]  # same PSNR / SSIM, exactly
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    csv_log = "csv/metrics.csv"
    assert (tmp_path / "killed" / csv_log).read_text() == (tmp_path / "straight" / csv_log).read_text()


@pytest.mark.parametrize("limit", [STEP_LIMITED, pytest.param(EPOCH_LIMITED, marks=pytest.mark.slow)],
                         ids=["max_steps", "max_epochs"])
def test_run_killed_with_sigkill_resumes_exactly(tmp_path, limit):
    straight = _run(tmp_path / "straight", *limit)
    killed_dir = tmp_path / "killed"
    checkpoint = _kill_after_epoch(killed_dir, 1, limit)
    assert 1 <= checkpoint["epoch"] < 7 and checkpoint["global_step"] == 3 * (checkpoint["epoch"] + 1)
    assert not (killed_dir / "results.json").exists()

    resumed = _run(killed_dir, *limit, f"ckpt_path={killed_dir / 'checkpoints' / 'last.ckpt'}")
    _assert_resumed_equals_straight(tmp_path, straight, resumed)


class SigkillAtStep(L.Callback):
    """SIGKILLs its own training process when batch ``step + 1`` is about to start: no hook, no flush, no cleanup
    runs, as when the machine or a scheduler kills the job (used by the training process, not by the test)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


# 3 steps per epoch, last.ckpt every 2 steps: at 2, 4, 8, 10 within epochs (6 is an epoch end: saved there)
EVERY_2_STEPS = ["checkpoint_every_n_steps=2"]


@pytest.mark.parametrize("limit", [STEP_LIMITED, pytest.param(EPOCH_LIMITED, marks=pytest.mark.slow)],
                         ids=["max_steps", "max_epochs"])
def test_run_killed_mid_epoch_resumes_exactly(tmp_path, limit):
    straight = _run(tmp_path / "straight", *limit, *EVERY_2_STEPS)
    killed_dir = tmp_path / "killed"
    # killed after step 11: last.ckpt is the one of step 10, after the first batch of epoch 3 (steps 10-12), and
    # the killed run had trained and logged step 11 past it
    kill = ["+callbacks.kill._target_=test_resume_kill.SigkillAtStep", "+callbacks.kill.step=11"]
    done = subprocess.run(_command(killed_dir, *limit, *EVERY_2_STEPS, *kill), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    checkpoint = _load(killed_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 10 and checkpoint["epoch"] == 3
    assert checkpoint["DenoiseDataModule"]["train_loader"] == {"epoch": 3, "batches": 1}
    assert not (killed_dir / "results.json").exists()

    resumed = _run(killed_dir, *limit, *EVERY_2_STEPS, f"ckpt_path={killed_dir / 'checkpoints' / 'last.ckpt'}")
    _assert_resumed_equals_straight(tmp_path, straight, resumed)


def test_resumed_run_continues_its_wandb_run_offline(tmp_path):
    """logger=wandb, offline: the run killed after its checkpoint of step 4 and its resumption write two offline
    folders of one wandb run (same id), which ``wandb sync`` uploads as one run."""
    output_dir = tmp_path / "run"
    wandb = ["logger=wandb", "callbacks.wandb_tracking.panel_images=1", "callbacks.wandb_tracking.panel_crop=32",
             "trainer.max_steps=8", "trainer.max_epochs=-1", *EVERY_2_STEPS]
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_API_KEY": ""}
    kill = ["+callbacks.kill._target_=test_resume_kill.SigkillAtStep", "+callbacks.kill.step=5"]
    done = subprocess.run(_command(output_dir, *wandb, *kill), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    checkpoint = _load(output_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4 and checkpoint["wandb_run_id"]
    first = list((output_dir / "wandb").glob("offline-run-*"))
    assert [path.name.rsplit("-", 1)[1] for path in first] == [checkpoint["wandb_run_id"]]

    done = subprocess.run(_command(output_dir, *wandb, f"ckpt_path={output_dir / 'checkpoints' / 'last.ckpt'}"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {path.name.rsplit("-", 1)[1] for path in runs} == {checkpoint["wandb_run_id"]}
    assert _load(output_dir / "checkpoints" / "last.ckpt")["wandb_run_id"] == checkpoint["wandb_run_id"]
    assert json.loads((output_dir / "results.json").read_text())["global_steps"] == 8
