"""The one LightningModule: wraps any denoising network, degrades clean patches on the fly, measures PSNR/SSIM.

Metrics follow the papers: PSNR per image on the output clipped to [0, 1] with data range 1,
averaged over images (torchmetrics ``dim=(1, 2, 3)``); SSIM with the standard 11x11 Gaussian window, sigma 1.5.
The noisy input is scored the same way (clipped to [0, 1], as it would be saved to disk).

Hyper-parameters are plain values only: the network, noise and loss are stored as their ``_target_`` configs
(dicts), so checkpoints load with ``torch.load(weights_only=True)`` and ``load_from_checkpoint(path)`` rebuilds
everything. A network passed as an ``nn.Module`` instance is not in the hparams; pass it again when loading.
Configs are built by :func:`denoise_lightning.zoo.checkpoint.build`, never by ``hydra.utils.instantiate``: the hparams
of a checkpoint come from a file, so they may name only the package's networks (``models.NETWORKS``), noise models
(``degradations.noise``) and losses (``training.losses``, ``torch.nn.MSELoss`` / ``L1Loss``); any other object is
passed as an instance.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from denoise_lightning.degradations import compression, resize
from denoise_lightning.degradations import noise as noise_models
from denoise_lightning.degradations.noise import Degradation, deterministic_noisy
from denoise_lightning.training import losses
from denoise_lightning.training.callbacks import CascadeTraining
from denoise_lightning.zoo.checkpoint import CheckpointError, build, network_targets, targets


def _classes(module: Any, base: type) -> list[type]:
    """The public, concrete subclasses of ``base`` defined in ``module`` (``base`` itself excluded)."""
    return [cls for cls in vars(module).values() if isinstance(cls, type) and issubclass(cls, base)
            and cls is not base and cls.__module__ == module.__name__ and not cls.__name__.startswith("_")
            and not inspect.isabstract(cls)]


# The classes the ``noise`` and ``loss`` configs (hparams) may name.
NOISE_TARGETS = targets([cls for module in (noise_models, compression, resize)
                         for cls in _classes(module, Degradation)])
LR_SCHEDULES = ("global", "restart", "fixed")  # module.lr_schedule: see DenoiseModule
LOSS_TARGETS = {**targets(_classes(losses, nn.Module)), **targets([nn.MSELoss, nn.L1Loss], "torch.nn")}


def cosine_factor(step: int, total: int, floor: float) -> float:
    """Learning-rate factor at ``step`` of a cosine decay from 1 to ``floor`` over ``total`` steps."""
    progress = min(step, total) / total
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def restarted_cosine_factor(step: int, window: Callable[[], tuple[int, int]], floor: float) -> float:
    """Learning-rate factor at global ``step`` of a cosine decay from 1 to ``floor`` restarted at every cascade stage:
    ``window()`` gives the current stage's (first step, length in steps)."""
    start, total = window()
    return cosine_factor(max(0, step - start), max(1, total), floor)


def image_metrics() -> MetricCollection:
    """PSNR (mean of per-image values) and SSIM on images in [0, 1]."""
    return MetricCollection(
        {
            "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean"),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
        }
    )


def grid_row(metrics: Mapping[str, MetricCollection]) -> dict[str, float]:
    """One row of the test grid from the metrics of one (set, level): ``{"output": ..., "noisy": ...}``."""
    output = {k: float(v) for k, v in metrics["output"].compute().items()}
    noisy = {k: float(v) for k, v in metrics["noisy"].compute().items()}
    return {"psnr": output["psnr"], "ssim": output["ssim"], "psnr_noisy": noisy["psnr"], "ssim_noisy": noisy["ssim"]}


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """(N, C, H, W) cropped at the bottom and right to a multiple of ``multiple`` (MATLAB ``modcrop``): the image a
    downscale-by-``multiple`` benchmark starts from."""
    if multiple <= 1:
        return image
    height, width = image.shape[-2:]
    return image[..., : height - height % multiple, : width - width % multiple]


def scored_region(image: torch.Tensor, border: int) -> torch.Tensor:
    """(N, C, H, W) without ``border`` pixels on every side: the region a benchmark scores (super-resolution
    ignores ``scale`` pixels at the border)."""
    return image[..., border:-border, border:-border] if border > 0 else image


def _build(spec: Mapping | DictConfig | nn.Module, allowed: Mapping[str, type],
           where: str) -> tuple[nn.Module, dict | None]:
    """Object from a ``_target_`` config naming a class of ``allowed`` (the config is returned as a plain dict for
    the hparams), or an instance as is."""
    if isinstance(spec, nn.Module):
        return spec, None
    plain = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    return build(plain, allowed, where), plain


def global_rng_states() -> dict[str, Any]:
    """The state of the global torch (CPU and CUDA), numpy and Python RNGs, as tensors and plain values only (a
    checkpoint holding it still loads with ``torch.load(weights_only=True)``)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)),
                                                                       position, has_gauss, cached],
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`global_rng_states` returned."""
    torch.set_rng_state(states["torch"].cpu())
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def _undo_extra_step_count(checkpoint: dict) -> None:
    """Lightning (2.6) adds one to ``_batches_that_stepped`` (the ``step`` of logged rows) when a step-limited run
    (``max_steps``) resumes from a checkpoint written in ``on_train_epoch_end``, as last.ckpt is: take it off
    beforehand, so the resumed run logs the steps of an uninterrupted one."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, state = loops.get("epoch_progress", {}).get("total"), loops.get("epoch_loop.state_dict")
    if epochs and state and "_batches_that_stepped" in state and (
            epochs["ready"] == epochs["started"] == epochs["processed"] == epochs["completed"] + 1):
        state["_batches_that_stepped"] -= 1


class DenoiseModule(L.LightningModule):
    """Train / validate / test any image-to-image denoiser.

    Args:
        network: ``_target_`` config of the network, or an ``nn.Module`` mapping (N, C, H, W) -> (N, C, H, W).
        noise: ``_target_`` config of a :class:`~denoise_lightning.degradations.noise.Degradation`, or an instance.
        loss: ``_target_`` config of the loss ``loss(output, clean)``, or an instance (default MSE).
        lr: Adam learning rate.
        lr_min: final learning rate of the cosine schedule over the whole run; ``None`` keeps ``lr`` constant.
        weight_decay: Adam weight decay.
        channels_last: run the network in channels_last memory format (faster convolutions on CPU and GPU).
        seed: base seed of the training noise (the generator of step ``s`` on rank ``r`` is seeded by (seed, s, r),
            so a resumed run draws the same noise as an uninterrupted one).
        lr_schedule: the learning rate across cascade stages: ``"global"`` (one cosine decay from ``lr`` to
            ``lr_min`` over the whole run), ``"restart"`` (the cosine decay restarted at every stage, over the
            stage's length: see ``CascadeTraining.lr_window``) or ``"fixed"`` (``lr`` throughout, the paper's
            constant 1e-4). ``lr_min=None`` also keeps ``lr`` constant.
    """

    def __init__(
        self,
        network: Mapping | nn.Module,
        noise: Mapping | Degradation,
        loss: Mapping | nn.Module | None = None,
        lr: float = 1e-3,
        lr_min: float | None = 1e-5,
        weight_decay: float = 0.0,
        channels_last: bool = True,
        seed: int = 0,
        lr_schedule: str = "global",
    ) -> None:
        super().__init__()
        try:
            self.network, network_cfg = _build(network, network_targets(), "network")
        except CheckpointError as error:
            raise CheckpointError(f"{error}. A baseline (model=bm3d) is not trainable: evaluate it with `dnl-eval "
                                  "model=... noise=...`; any other network is passed as an nn.Module") from None
        self.noise, noise_cfg = _build(noise, NOISE_TARGETS, "noise")
        self.loss, loss_cfg = _build(loss if loss is not None else {"_target_": "torch.nn.MSELoss"}, LOSS_TARGETS,
                                     "loss")
        if not isinstance(self.noise, Degradation):
            raise TypeError("noise must be a denoise_lightning.degradations.noise.Degradation, "
                            f"got {type(self.noise).__name__}")
        hparams: dict[str, Any] = dict(lr=lr, lr_min=lr_min, weight_decay=weight_decay,
                                       channels_last=channels_last, seed=seed, lr_schedule=lr_schedule)
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"module.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        for key, cfg in (("network", network_cfg), ("noise", noise_cfg), ("loss", loss_cfg)):
            if cfg is not None:
                hparams[key] = cfg
        self.save_hyperparameters(hparams)
        self.format_network()
        self.val_metrics = image_metrics()
        self.test_metrics: dict[tuple[str, str], dict[str, MetricCollection]] = {}
        self.test_results: dict[str, dict[str, dict[str, float]]] = {}

    # ---------------------------------------------------------------- helpers
    def format_network(self) -> None:
        """Put the network (also after it was rebuilt or grown) in the configured memory format."""
        if self.hparams.channels_last:
            self.network.to(memory_format=torch.channels_last)

    def _as_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) from the data module -> float in [0, 1] in the network's memory format."""
        images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _full_precision(self) -> torch.autocast:
        """Metrics run in fp32 even under bf16 autocast: SSIM's Gaussian filter is a convolution, and in bf16
        it loses 0.15 SSIM (measured on BSD68) while PSNR barely moves."""
        return torch.autocast(self.device.type, enabled=False)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.network(noisy)

    def denoise_test_image(self, clean: torch.Tensor, set_name: str, index: int, level: dict) -> tuple:
        """(clean, noisy, output) of one test image at one level, float32, the last two clipped to [0, 1], each
        cropped as the benchmark scores it (:func:`scored_region`: e.g. super-resolution crops the image to a
        multiple of the scale, then ``scale`` pixels off every side)."""
        clean = crop_to_multiple(clean, self.noise.size_multiple(level))
        noisy = deterministic_noisy(self.noise, clean, set_name, index, level)
        if self.hparams.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        output = self(noisy).float()
        border = self.noise.metric_border(level)
        return (scored_region(clean, border), scored_region(noisy.clamp(0, 1), border),
                scored_region(output.clamp(0, 1), border))

    # ---------------------------------------------------------------- training
    def training_step(self, batch: torch.Tensor | list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """``batch``: clean uint8 patches, degraded here on the device; or ``(clean, degraded)`` when the
        degradation runs in the loader workers (codecs, resizing: ``noise.in_loader``)."""
        if isinstance(batch, (list, tuple)):
            clean, noisy = self._as_input(batch[0]), self._as_input(batch[1])
        else:
            clean = self._as_input(batch)
            seed = (self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank
            noisy = self.noise(clean, generator=torch.Generator(device=clean.device).manual_seed(seed))
        loss = self.loss(self(noisy).float(), clean)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        """Adam; the learning rate of ``lr_schedule``, written as a function of the global step, so that an
        optimizer rebuilt mid-run (cascade growth) or restored from a checkpoint continues at the same rate:
        ``global``: cosine decay from ``lr`` to ``lr_min`` over the run; ``restart``: the same decay over each
        cascade stage, from the stage's first step (the window is read from the callback at every step, so it follows
        a stage boundary and a resumed callback state); ``fixed`` (or ``lr_min=None``): constant ``lr``."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = self.hparams.get("lr_schedule", "global")  # checkpoints of earlier versions: global
        if self.hparams.lr_min is None or schedule == "fixed":
            return {"optimizer": optimizer}
        for group in optimizer.param_groups:
            group["initial_lr"] = self.hparams.lr
        floor = self.hparams.lr_min / self.hparams.lr
        if schedule == "restart":
            cascade = next((c for c in self.trainer.callbacks if isinstance(c, CascadeTraining)), None)
            if cascade is None:
                raise MisconfigurationException("module.lr_schedule=restart restarts the schedule at every cascade "
                                                "stage: it needs callbacks.cascade (else use global or fixed)")
            factor = partial(restarted_cosine_factor, window=partial(cascade.lr_window, self.trainer), floor=floor)
        else:
            factor = partial(cosine_factor, total=max(1, int(self.trainer.estimated_stepping_batches)), floor=floor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=self.global_step - 1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- checkpoints
    def network_config(self) -> dict | None:
        """The ``_target_`` config of the network as it is now (a grown DNResNet records its current blocks)."""
        config = self.hparams.get("network")
        if config is None:
            return None
        config = dict(config)
        if hasattr(self.network, "spec"):
            config["blocks"] = list(self.network.spec)
        if getattr(self.network, "separable_head", False):  # evolved during training (CascadeTraining)
            config["separable_head"] = True
        return config

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["network_config"] = self.network_config()
        checkpoint["rng_states"] = global_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuild the network of the checkpoint's stage before its weights are loaded; restore the global RNGs.

        Patches and training noise come from generators seeded by (seed, epoch) and (seed, step, rank), so they
        need no saved state; the global torch / numpy / Python RNGs (used by e.g. the initialisation of blocks a
        cascade inserts) are restored as they were when the checkpoint was written."""
        if self._trainer is not None and self._trainer.state.fn == "fit":  # resuming, not loading weights to test
            if checkpoint.get("rng_states") is not None:
                set_global_rng_states(checkpoint["rng_states"])
            if self._trainer.max_steps != -1:
                _undo_extra_step_count(checkpoint)
        saved = checkpoint.get("network_config")
        if saved is not None and saved != self.network_config():
            self.network = build(saved, network_targets(), "network_config").to(self.device)
            self.format_network()

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, indices = batch
        clean = self._as_input(images)
        set_name = self.trainer.datamodule.val_set if self.trainer.datamodule else "val"
        clean, _, output = self.denoise_test_image(clean, set_name, int(indices[0]), self.noise.val_level)
        with self._full_precision():
            self.val_metrics.update(output, clean.float())
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.items()}, on_epoch=True, prog_bar=True,
                      batch_size=clean.shape[0])

    # ---------------------------------------------------------------- test
    def on_test_epoch_start(self) -> None:
        names = self.trainer.datamodule.test_set_names
        self.test_metrics = {
            (name, Degradation.level_name(level)): {"output": image_metrics().to(self.device),
                                                    "noisy": image_metrics().to(self.device)}
            for name in names for level in self.noise.test_levels
        }

    def test_step(self, batch: tuple, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, indices = batch
        clean = self._as_input(images).float()
        set_name = self.trainer.datamodule.test_set_names[dataloader_idx]
        for level in self.noise.test_levels:
            scored, noisy, output = self.denoise_test_image(clean, set_name, int(indices[0]), level)
            metrics = self.test_metrics[(set_name, Degradation.level_name(level))]
            with self._full_precision():
                metrics["output"].update(output, scored)
                metrics["noisy"].update(noisy, scored)

    def on_test_epoch_end(self) -> None:
        self.test_results = {}
        for (set_name, level_name), metrics in self.test_metrics.items():
            row = grid_row(metrics)
            self.test_results.setdefault(set_name, {})[level_name] = row
            self.log_dict({f"test/{set_name}/{level_name}/{key}": value for key, value in row.items()})
