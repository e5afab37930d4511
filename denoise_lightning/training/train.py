"""``dnl-train``: train a denoiser with the composed Hydra config, test it, write ``results.json``.

    dnl-train                                   # DnCNN-S on the embedded images (no experiment)
    dnl-train model=dn_resnet                   # any network of conf/model
    dnl-train experiment=embedded_dn_resnet_cascade   # make train: the DN-ResNet cascade
    dnl-train experiment=dncnn_s_train400       # DnCNN-S on Train400 -> BSD68 + Set12
    python -m denoise_lightning.training.train trainer.max_steps=100 noise.sigma=50
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from denoise_lightning import load_model
from denoise_lightning.files import atomic_write_text
from denoise_lightning.models.complexity import count_parameters, macs_per_pixel, receptive_field
from denoise_lightning.provenance import describe, environment
from denoise_lightning.training.callbacks import CascadeTraining
from denoise_lightning.training.loggers import ResumableCSVLogger
from denoise_lightning.training.resolvers import register_resolvers
from denoise_lightning.training.results import print_results, start_run, write_results
from denoise_lightning.training.tracking import finish_wandb_run, log_resolved_config, resume_wandb_run

# The configs ship inside the package (conf/__init__.py makes it one), so an installed wheel finds them wherever it
# is installed and whichever way the app starts (console script, python -m). CONF_DIR: the same folder on disk.
CONFIG_PATH = "pkg://denoise_lightning.conf"
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Trainer with the callbacks and loggers of ``cfg`` (each a dict of ``_target_`` nodes; null entries skipped)."""
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node]
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false also drops ours
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def model_summary(module: L.LightningModule, name: str, channels: int) -> dict[str, Any]:
    return {"name": name, "class": type(module.network).__name__, "params": count_parameters(module.network),
            "macs_per_pixel": macs_per_pixel(module.network, channels),
            "receptive_field": receptive_field(module.network, channels)}


def test_and_report(cfg: DictConfig, trainer: L.Trainer, module, datamodule, ckpt_path: str | None = None,
                    **extra: Any) -> dict[str, Any]:
    """Test on every set x level, then write ``results.json`` / ``results.md`` and print the table (rank 0),
    with a footer line naming the effective precision and the machine (recorded in full as ``"environment"``)."""
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    results = {
        "model": model_summary(module, cfg.get("name") or type(module.network).__name__, datamodule.channels),
        "noise": module.hparams.get("noise"),
        "test": module.test_results,
        "precision": str(trainer.precision),
        "environment": environment(),  # versions, commit, CPU / GPU: why two machines may give other numbers
        "checkpoint": trainer.ckpt_path,  # the file tested; None when the weights in memory were tested
        "output_dir": str(cfg.output_dir),
        **extra,
    }
    if trainer.is_global_zero:
        write_results(cfg.output_dir, results)
        print_results(results)
        print(describe(results["environment"], results["precision"]))
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test (on the checkpoint named by ``test_ckpt``), write and return the results."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = None
    if rank_zero_only.rank == 0:  # one run record per run, also under DDP (every rank runs train)
        # results of an earlier run in this folder are moved aside first: a run that fails leaves none
        config_text = OmegaConf.to_yaml(cfg, resolve=True)
        run = start_run(output_dir, config_text)
        atomic_write_text(output_dir / "config.yaml", config_text)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, _recursive_=False)
    resumed = None
    if cfg.get("ckpt_path") and Path(cfg.ckpt_path).is_file():  # before any logging: the logs continue
        resumed = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        resume_wandb_run(cfg, resumed)
    trainer = build_trainer(cfg)
    for logger in trainer.loggers if resumed is not None else []:
        if isinstance(logger, ResumableCSVLogger):
            logger.keep_rows_before(resumed["global_step"], cfg.ckpt_path)
    log_resolved_config(trainer, cfg)
    if cfg.get("init_from"):
        # start from a trained network (e.g. DN-ResNet-13 for DS evolution); its architecture must match the model
        module.network.load_state_dict(load_model(cfg.init_from).state_dict())

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - start

    test_ckpt = cfg.get("test_ckpt")
    if trainer.checkpoint_callback is None or trainer.fast_dev_run:
        test_ckpt = None  # nothing was saved: test the weights in memory
    stages = [row for callback in trainer.callbacks if isinstance(callback, CascadeTraining) for row in callback.rows]
    return test_and_report(cfg, trainer, module, datamodule, test_ckpt, train_seconds=round(train_seconds, 2),
                           global_steps=trainer.global_step, epochs=trainer.current_epoch, stages=stages,
                           run=run and {"id": run["id"], "config_sha256": run["config_sha256"]})


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def run(cfg: DictConfig) -> None:
    """One job: also in a launcher's worker process (Ray), which composes nothing and so registers here."""
    register_resolvers()
    with finish_wandb_run():  # also when train fails: the next job in this process starts a new wandb run
        train(cfg)


def main() -> None:
    """``dnl-train``: the resolvers are registered before Hydra composes (the launcher config resolves some)."""
    register_resolvers()
    run()


if __name__ == "__main__":
    main()
