"""A run killed with SIGKILL and resumed from its last.ckpt equals the uninterrupted run bit for bit.

Real processes (``python -m denoise_lightning.training.train``), one thread each: the uninterrupted run, and the
same run killed (``kill -9``) as soon as its last.ckpt of epoch >= 1 exists, then resumed with ``ckpt_path`` into
the same folder. Proves that the patches (sampler), the training noise, the global RNGs, the optimizer and the
cosine schedule continue exactly (same final weights, same test PSNR), and that the CSV log keeps the rows written
before the kill and continues them with the same step numbers (same metrics.csv as the uninterrupted run).
last.ckpt is written at the end of every epoch: this is a resume at an epoch boundary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST

# 12 photos x 4 patches / 16 = 3 steps per epoch, 24 steps; validation every epoch; cosine learning-rate decay
CONFIG = [*FAST, "model.num_layers=3", "model.channels=8", "data.patches_per_image=4", "data.val_max_images=1",
          "data.test_max_images=1", "trainer.log_every_n_steps=1"]
# Lightning restores its loops differently when the run is limited by steps (as the experiments are) or by epochs
STEP_LIMITED = ["trainer.max_steps=24", "trainer.max_epochs=-1"]
EPOCH_LIMITED = ["trainer.max_steps=-1", "trainer.max_epochs=8"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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


@pytest.mark.parametrize("limit", [STEP_LIMITED, pytest.param(EPOCH_LIMITED, marks=pytest.mark.slow)],
                         ids=["max_steps", "max_epochs"])
def test_run_killed_with_sigkill_resumes_exactly(tmp_path, limit):
    straight = _run(tmp_path / "straight", *limit)
    killed_dir = tmp_path / "killed"
    checkpoint = _kill_after_epoch(killed_dir, 1, limit)
    assert 1 <= checkpoint["epoch"] < 7 and checkpoint["global_step"] == 3 * (checkpoint["epoch"] + 1)
    assert not (killed_dir / "results.json").exists()

    resumed = _run(killed_dir, *limit, f"ckpt_path={killed_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed["global_steps"] == straight["global_steps"] == 24
    assert resumed["test"] == straight["test"]  # same PSNR / SSIM, exactly
    a, b = _weights(tmp_path / "straight"), _weights(killed_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    # one metrics.csv: the rows before the kill, then the resumed ones, as the uninterrupted run logged them
    csv_log = "csv/metrics.csv"
    assert (killed_dir / csv_log).read_text() == (tmp_path / "straight" / csv_log).read_text()
