"""Weights & Biases tracking of runs and sweeps (``logger=wandb``; offline unless the user goes online).

* ``${dnl_wandb_group:}``, ``${dnl_wandb_tags:}``, ``${dnl_wandb_name:...}``, ``${dnl_wandb_offline:}``
  (``conf/logger/wandb.yaml``; registered by :mod:`denoise_lightning.training.resolvers`): the jobs of one Hydra
  multirun share a group (the sweep folder) and carry tags for the noise type, blind / non-blind, the loss (and its
  edge weight) and the architecture; offline by default.
* :func:`log_resolved_config`: the whole resolved Hydra config as the run's wandb config.
* :class:`WandbTracking`: a fixed panel of validation crops (noisy | denoised | clean) a few times per run, the
  per-stage table of a cascade, and the final test table.
* :func:`finish_wandb_run`: the job's wandb run is finished when the job ends, failed or not, so the next job in
  the same process (Ray reuses its worker processes) starts a new run instead of writing into this one.
* A run resumed from a checkpoint continues its wandb run: :class:`WandbTracking` records the run's id in every
  checkpoint (``"wandb_run_id"``), and ``dnl-train ckpt_path=...`` passes it back to the logger (``resume="allow"``,
  offline too: ``wandb sync`` then uploads both parts into the one run).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.image import peak_signal_noise_ratio

from denoise_lightning.models.complexity import count_parameters, macs_per_pixel
from denoise_lightning.training.callbacks import CascadeTraining

TEST_COLUMNS = ["set", "level", "psnr", "ssim", "psnr_noisy", "ssim_noisy"]
STAGE_COLUMNS = ["stage", "conv_layers", "blocks", "params", "macs_per_pixel", "val_psnr", "val_ssim", "epoch",
                 "global_step"]


# ---------------------------------------------------------------- group, tags, name
def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The sweep folder (``hydra.sweep.dir``) in a multirun, shared by all its jobs; None for a single run."""
    return str(HydraConfig.get().sweep.dir) if _in_multirun() else None


def run_name(name: str | None) -> str | None:
    """``name`` for a single run; ``<name>-job<N>`` for job N of a multirun (wandb would show equal names)."""
    if not _in_multirun():
        return name
    return f"{name or 'run'}-job{HydraConfig.get().job.num}"


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if target else "none"


def run_tags(*, _root_: DictConfig) -> list[str]:
    """Tags ``noise=..``, ``blind``/``non-blind``, ``loss=..``, ``edge_weight=..``, ``model=..``: the config group
    choices when Hydra composed the run, else the class names."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    noise, loss, model = (_root_.get(key) or {} for key in ("noise", "loss", "model"))
    tags = [f"noise={choices.get('noise') or _short(noise.get('_target_'))}"]
    if noise.get("blind") is not None:
        tags.append("blind" if noise.get("blind") else "non-blind")
    tags.append(f"loss={choices.get('loss') or _short(loss.get('_target_'))}")
    if loss.get("edge_weight") is not None:
        tags.append(f"edge_weight={float(loss.get('edge_weight')):g}")
    tags.append(f"model={choices.get('model') or _short(model.get('_target_'))}")
    if choices.get("experiment"):
        tags.append(f"experiment={choices['experiment']}")
    return tags


def offline() -> bool:
    """Offline unless the user chose ``WANDB_MODE=online`` (after ``wandb login``)."""
    return os.environ.get("WANDB_MODE", "offline") != "online"


# ---------------------------------------------------------------- run lifetime
WANDB_RUN_ID_KEY = "wandb_run_id"  # checkpoint key: the wandb run a resumed run continues


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def resume_wandb_run(cfg: DictConfig, checkpoint: dict) -> None:
    """Make ``cfg``'s wandb logger (if any) continue the run that wrote ``checkpoint``: its id, ``resume="allow"``.
    A checkpoint without a run id (written without wandb) leaves the config as it is: a new run starts."""
    run_id = checkpoint.get(WANDB_RUN_ID_KEY)
    if run_id and (cfg.get("logger") or {}).get("wandb"):
        OmegaConf.update(cfg, "logger.wandb.id", str(run_id), force_add=True)
        OmegaConf.update(cfg, "logger.wandb.resume", "allow", force_add=True)


def log_resolved_config(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Store the whole resolved config as the wandb config of the run (the module's hparams are only part of it)."""
    for logger in wandb_loggers(trainer):
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)


@contextmanager
def finish_wandb_run() -> Iterator[None]:
    """Finish the process's wandb run when the block ends: exit code 1 (run marked failed) on an exception."""
    try:
        yield
    except BaseException:
        _finish(exit_code=1)
        raise
    _finish(exit_code=0)


def _finish(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")  # never import wandb for a run that did not use it
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
        wandb.teardown()  # stop wandb's service process now, not at the exit of a (Ray worker) process it outlived


# ---------------------------------------------------------------- the callback
def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, C) uint8 for wandb.Image."""
    array = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


class WandbTracking(L.Callback):
    """Log to every :class:`WandbLogger` of the trainer what its scalars do not show.

    * a fixed panel: the first ``panel_images`` validation images, centre crops of ``panel_crop`` pixels, each shown
      as noisy | denoised | clean (deterministic noise at the validation level, so every panel of the run and of
      every run of a sweep shows the same noisy input), logged at the validations after each ``1/panel_times`` of
      the training steps and at the end of training (at most ``panel_times + 1`` panels);
    * ``cascade/stages``: the per-stage table of
      :class:`~denoise_lightning.training.callbacks.CascadeTraining`, at the end;
    * ``test/results``: the final test table (set x level), and the network's size in the run summary.
    """

    def __init__(self, panel_images: int = 3, panel_crop: int = 128, panel_times: int = 3) -> None:
        for key, value in (("panel_images", panel_images), ("panel_crop", panel_crop), ("panel_times", panel_times)):
            if value < 1:
                raise ValueError(f"callbacks.wandb_tracking.{key} must be >= 1, got {value}")
        self.panel_images = panel_images
        self.panel_crop = panel_crop
        self.panel_times = panel_times
        self._panels_due = 0
        self._last_panel_step: int | None = None

    # ---------------------------------------------------------------- hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not wandb_loggers(trainer):
            return
        total = trainer.estimated_stepping_batches
        due = math.floor(self.panel_times * trainer.global_step / total) if math.isfinite(total) and total else 0
        if due > self._panels_due:
            self._panels_due = due
            self.log_panel(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        if self._last_panel_step != trainer.global_step:
            self.log_panel(trainer, pl_module)
        stages = [row for callback in trainer.callbacks if isinstance(callback, CascadeTraining)
                  for row in callback.rows]
        if stages:
            data = [[row[c] if c != "blocks" else "+".join(row[c]) or "base" for c in STAGE_COLUMNS] for row in stages]
            for logger in loggers:
                logger.log_table("cascade/stages", columns=STAGE_COLUMNS, data=data)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        loggers = wandb_loggers(trainer)
        if loggers:  # read back by dnl-train on resume (resume_wandb_run), so the same wandb run continues
            checkpoint[WANDB_RUN_ID_KEY] = loggers[0].version

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer)
        results = getattr(pl_module, "test_results", None)
        if not loggers or not results:
            return
        data = [[set_name, level, *(row[key] for key in TEST_COLUMNS[2:])]
                for set_name, levels in results.items() for level, row in levels.items()]
        channels = getattr(trainer.datamodule, "channels", 1)
        size = {"model/params": count_parameters(pl_module.network),
                "model/macs_per_pixel": macs_per_pixel(pl_module.network, channels)}
        for logger in loggers:
            logger.log_table("test/results", columns=TEST_COLUMNS, data=data)
            logger.experiment.summary.update(size)

    # ---------------------------------------------------------------- the panel
    def _panel_inputs(self, trainer: L.Trainer) -> tuple[str, list[tuple[torch.Tensor, int]]] | None:
        """(set name, [(clean crop (1, C, h, w) float in [0, 1], image index)]) of the validation set, or None."""
        loaders = trainer.val_dataloaders  # None when no validation ran yet (no sanity check, short run)
        if loaders is None and trainer.datamodule is not None:
            loaders = trainer.datamodule.val_dataloader()
        loader = loaders[0] if isinstance(loaders, list | tuple) and loaders else loaders
        set_name = getattr(trainer.datamodule, "val_set", None)
        if loader is None or not set_name:
            rank_zero_warn("WandbTracking: no validation set (data.val_set), so no image panel is logged")
            return None
        crops = []
        for position in range(min(self.panel_images, len(loader.dataset))):
            image, index = loader.dataset[position]
            height, width = image.shape[-2:]
            size_h, size_w = min(self.panel_crop, height), min(self.panel_crop, width)
            top, left = (height - size_h) // 2, (width - size_w) // 2
            crop = image[:, top:top + size_h, left:left + size_w].float().div(255.0).unsqueeze(0)
            crops.append((crop, int(index)))
        return set_name, crops

    @torch.inference_mode()
    def log_panel(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the panel at the current step; rows noisy | denoised | clean with their PSNR in the caption."""
        inputs = self._panel_inputs(trainer)
        if inputs is None:
            return
        set_name, crops = inputs
        level = pl_module.noise.val_level
        was_training = pl_module.training
        pl_module.eval()
        images, captions = [], []
        for clean, index in crops:
            clean = clean.to(pl_module.device)
            clean, noisy, output = pl_module.denoise_test_image(clean, set_name, index, level)
            gap = torch.ones_like(clean[0, :, :, :4])
            images.append(_to_uint8(torch.cat([noisy[0], gap, output[0], gap, clean[0]], dim=-1)))
            captions.append(f"{set_name}[{index}] noisy {peak_signal_noise_ratio(noisy, clean, data_range=1.0):.2f} "
                            f"dB | denoised {peak_signal_noise_ratio(output, clean, data_range=1.0):.2f} dB | clean")
        pl_module.train(was_training)
        for logger in wandb_loggers(trainer):
            logger.log_image("val/panel", images, step=trainer.global_step, caption=captions)
        self._last_panel_step = trainer.global_step
