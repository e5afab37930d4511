"""End to end: training on real images denoises, checkpoints reload, evaluation is deterministic, resume is exact.

Every config file composing and running: tests/test_configs.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config

from denoise_lightning import load_model
from denoise_lightning.training.evaluate import evaluate
from denoise_lightning.training.module import DenoiseModule
from denoise_lightning.training.train import train


def test_short_training_on_real_images_denoises(trained_run):
    row = trained_run["test"]["embedded"]["sigma25"]
    assert row["psnr"] > row["psnr_noisy"] + 3.0, row
    assert row["ssim"] > row["ssim_noisy"] + 0.1, row


def test_run_writes_results_json_and_checkpoints(trained_run):
    output_dir = Path(trained_run["output_dir"])
    on_disk = json.loads((output_dir / "results.json").read_text())
    assert on_disk["model"]["params"] == trained_run["model"]["params"] > 0
    assert on_disk["model"]["macs_per_pixel"] > 0 and on_disk["train_seconds"] > 0
    assert set(on_disk["test"]["embedded"]["sigma25"]) >= {"psnr", "ssim", "psnr_noisy"}
    assert (output_dir / "config.yaml").is_file() and (output_dir / "results.md").is_file()
    last = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == on_disk["global_steps"] == 147  # the end of the run, mid-epoch
    assert list((output_dir / "checkpoints").glob("best-*.ckpt"))


def test_checkpoint_reloads_into_an_identical_network(trained_run):
    path = Path(trained_run["output_dir"]) / "checkpoints" / "last.ckpt"
    raw = torch.load(path, weights_only=True, map_location="cpu")  # plain hparams only
    assert raw["hyper_parameters"]["network"]["_target_"].endswith("DnCNN")
    module = DenoiseModule.load_from_checkpoint(path, map_location="cpu").eval()
    network = load_model(path)
    assert not network.training
    state = {k.removeprefix("network."): v for k, v in raw["state_dict"].items() if k.startswith("network.")}
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    noisy = torch.rand(1, 1, 40, 48)
    with torch.no_grad():  # the module runs channels_last: same weights, float rounding may differ
        torch.testing.assert_close(module(noisy), network(noisy), rtol=0, atol=1e-5)


def test_evaluation_is_deterministic_and_matches_training_test(trained_run, tmp_path):
    common = [f"ckpt={trained_run['checkpoint']}", "trainer.enable_progress_bar=false",
              "trainer.precision=32-true"]  # as the training run (FAST_RUN) tested it
    first = evaluate(compose_config("eval", tmp_path / "a", common))
    second = evaluate(compose_config("eval", tmp_path / "b", common))
    assert first["test"] == second["test"]
    assert first["test"]["embedded"]["sigma25"]["psnr"] == pytest.approx(
        trained_run["test"]["embedded"]["sigma25"]["psnr"], abs=1e-4)
    assert json.loads((tmp_path / "a" / "results.json").read_text())["test"] == first["test"]


def test_bf16_evaluation_matches_fp32(trained_run, tmp_path):
    """Autocast must reach the network only: metrics (SSIM is a convolution) stay fp32."""
    common = [f"ckpt={trained_run['checkpoint']}", "data.test_max_images=1", "trainer.enable_progress_bar=false"]
    fp32 = evaluate(compose_config("eval", tmp_path / "fp32", [*common, "trainer.precision=32-true"]))
    bf16 = evaluate(compose_config("eval", tmp_path / "bf16", [*common, "trainer.precision=bf16-mixed"]))
    a, b = fp32["test"]["embedded"]["sigma25"], bf16["test"]["embedded"]["sigma25"]
    assert b["psnr"] == pytest.approx(a["psnr"], abs=0.05)
    assert b["ssim"] == pytest.approx(a["ssim"], abs=0.003)
    assert b["ssim_noisy"] == pytest.approx(a["ssim_noisy"], abs=1e-6)


def test_eval_at_other_levels_uses_the_same_noisy_images(trained_run, tmp_path):
    ckpt = trained_run["checkpoint"]
    results = evaluate(compose_config("eval", tmp_path, [f"ckpt={ckpt}", "noise=gaussian",
                                                         "noise.test_sigmas=[15,25,50]",
                                                         "trainer.enable_progress_bar=false"]))
    levels = results["test"]["embedded"]
    assert list(levels) == ["sigma15", "sigma25", "sigma50"]
    assert levels["sigma25"]["psnr_noisy"] == trained_run["test"]["embedded"]["sigma25"]["psnr_noisy"]
    assert levels["sigma15"]["psnr_noisy"] > levels["sigma25"]["psnr_noisy"] > levels["sigma50"]["psnr_noisy"]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """3 steps per epoch; the interrupted run stops after epoch 1 and is resumed from its last.ckpt."""
    common = [*FAST, "model.num_layers=3", "model.channels=8", "data.patches_per_image=4", "trainer.max_steps=-1",
              "data.val_max_images=1", "data.test_max_images=1", "module.lr_min=null"]
    straight = train(compose_config("train", tmp_path / "straight", [*common, "trainer.max_epochs=2"]))
    train(compose_config("train", tmp_path / "first", [*common, "trainer.max_epochs=1"]))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed_cfg = compose_config("train", tmp_path / "resumed", [*common, "trainer.max_epochs=2", f"ckpt_path={last}"])
    resumed = train(resumed_cfg)
    assert resumed["global_steps"] == straight["global_steps"] == 6
    a = load_model(straight["checkpoint"]).state_dict()
    b = load_model(resumed["checkpoint"]).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


def _cli(*args: str, cwd: Path, command: tuple[str, ...] = (sys.executable, "-m", "denoise_lightning.training.train")):
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_script_trains_and_writes_results(tmp_path):
    script = shutil.which("dnl-train")
    assert script, "dnl-train is not installed: run `make install`"
    done = _cli(*FAST, "model.num_layers=3", "trainer.max_steps=2", "data.test_max_images=1",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, command=(script,))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["global_steps"] == 2
    assert "PSNR out" in done.stdout


@pytest.mark.parametrize("override, message", [
    ("model=resnet_9000", "resnet_9000"),
    ("model.depth=3", "depth"),
    ("data.train=[/no/such/folder]", "/no/such/folder"),
    ("noise.sigma=-5", "noise.sigma"),
])
def test_bad_config_gives_a_clear_error(override, message, tmp_path):
    done = _cli(*FAST, "trainer.max_steps=1", override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "results.json").exists()


def test_wandb_logger_runs_offline_without_an_account(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config("train", tmp_path, [*FAST, "logger=wandb", "model.num_layers=3", "trainer.max_steps=2",
                                             "data.test_max_images=1", "data.val_max_images=1"])
    results = train(cfg)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    logged = list(runs[0].glob("*.wandb"))
    assert logged and logged[0].stat().st_size > 0
    assert results["global_steps"] == 2


@pytest.mark.slow
def test_training_on_train400_denoises_bsd68(tmp_path, shared_data):
    """Train400 -> BSD68 at sigma 25 with a small DnCNN for a few hundred steps (~3 minutes on 2 cores)."""
    cfg = compose_config("train", tmp_path, [
        "data=train400", "model.num_layers=8", "model.channels=32", "model.batch_norm=false", "module.lr=3e-3",
        "data.patch_size=40", "data.batch_size=32", "trainer.max_steps=500", "trainer.max_epochs=-1",
        "data.patches_per_image=16", "data.val_max_images=2", "data.test_max_images=20",
        "callbacks.progress_bar=null"])
    row = train(cfg)["test"]["bsd68"]["sigma25"]
    assert row["psnr"] > row["psnr_noisy"] + 6.0, row
