"""Cascade training and incremental DS evolution of DN-ResNet (paper section 3), as one callback.

A stage lasts either a fixed number of epochs (``epochs``) or until a monitored metric has converged (``max_epochs``:
the cap), as the authors' cascade-training patents grow the network "when the training error has converged". With
fixed stages only, the architecture is a function of the epoch; with convergence it depends on the metrics seen, so
the callback keeps its state (stage, the epoch and step it started at, the convergence trigger's best value and wait
count) in the checkpoint (:meth:`CascadeTraining.state_dict`): a resumed run crosses the same stage boundaries as an
uninterrupted one. The checkpoint also records the network's config (``DenoiseModule.on_save_checkpoint``), and the
module rebuilds that network before the weights load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from denoise_lightning.models.complexity import count_parameters, macs_per_pixel

# Why a stage ended (``ended`` of a stage row): its fixed number of epochs; its metric converged; its cap
# (``max_epochs``) came first; the metric became NaN / infinite (the run stops); the run ended first (the trainer's
# ``max_steps`` / ``max_epochs``).
STAGE_END_REASONS = ("epochs", "converged", "cap", "non_finite", "stopped")
# The monitor computed by the callback itself: the mean of the training loss over the epoch (the per-step value that
# training_step logs is one batch, too noisy to judge convergence on).
TRAIN_LOSS = "train/loss"


class CascadeTraining(L.Callback):
    """Grow (insert ResBlocks) or evolve (convert ResBlocks to DS-ResBlocks) the network at stage boundaries.

    Args:
        stages: list of ``{"epochs": E, "blocks": spec}`` (the network has ``spec`` for the next E epochs) or
            ``{"max_epochs": C, "blocks": spec}`` (until ``convergence`` says the monitored metric has converged,
            at most C epochs). Specs must follow each other by appending ``"res"`` blocks (cascade) or turning
            ``"res"`` into ``"ds"`` (evolution). After the last stage: a fixed last stage keeps its spec until the
            trainer stops (``trainer.max_epochs`` / ``max_steps``); a last stage that converges or reaches its cap
            ends the run. A stage may add ``"separable_head": true``: the second layer (conv5x5 64 -> 32) is then
            converted to a depthwise-separable one (ours, the opt-in ``separable_head`` variant reached by
            evolution); it stays converted in later stages.
        insert_init: ``"normal"`` (paper: N(0, insert_std^2)) or ``"zero"`` (exact identity) for new blocks.
        convert_init: ``"random"`` (paper) or ``"fit"`` (ours: least-squares fit of the dense block).
        convergence: the rule of ``max_epochs`` stages, with the meaning of Lightning's ``EarlyStopping`` (whose
            logic decides it): ``{"monitor": "val/psnr", "mode": "max", "min_delta": 0.01, "patience": 2}`` ends a
            stage once the monitor has not improved by more than ``min_delta`` (in the monitor's unit: dB for
            ``val/psnr``) for ``patience`` checks in a row. One check per epoch, at its end: for a validation metric
            (``val/psnr``, ``val/ssim``) only after epochs that validated (``trainer.check_val_every_n_epoch``); for
            ``train/loss`` the mean training loss of the epoch. ``mode`` defaults to ``min`` for a loss, else
            ``max``. The trigger restarts (best value and wait count cleared) at every stage.

    At a boundary the optimizer is rebuilt through ``configure_optimizers``; parameters that survive keep their
    Adam state. The learning rate follows ``module.lr_schedule``: ``global`` (a function of the global step, carries
    on), ``restart`` (restarts per stage over :meth:`lr_window`) or ``fixed``.
    """

    def __init__(self, stages: Sequence[Mapping[str, Any]], insert_init: str = "normal", insert_std: float = 1e-3,
                 convert_init: str = "random", convergence: Mapping[str, Any] | None = None) -> None:
        if not stages:
            raise ValueError("callbacks.cascade.stages must list at least one {epochs, blocks} stage")
        self.stages = [self._stage(index, stage) for index, stage in enumerate(stages)]
        for index, stage in enumerate(self.stages):
            if index and self.stages[index - 1]["separable_head"] and not stage["separable_head"]:
                raise ValueError(f"callbacks.cascade.stages[{index}].separable_head: a separable head cannot be "
                                 "turned back into a dense one; keep separable_head: true in every later stage")
            if stage["max_epochs"] is not None and convergence is None:
                raise ValueError(f"callbacks.cascade.stages[{index}].max_epochs: a stage that ends on convergence "
                                 "needs the rule, callbacks.cascade.convergence={monitor, min_delta, patience}")
        self.insert_init = insert_init
        self.insert_std = insert_std
        self.convert_init = convert_init
        self.convergence = self._convergence(convergence) if convergence is not None else None
        self.rows: list[dict[str, Any]] = []
        # the state a resumed run needs (saved by state_dict); fresh runs start at stage 0, epoch 0, step 0
        self.stage = 0
        self.stage_start_epoch = 0
        self.stage_start_step = 0
        self.trigger = self._new_trigger()
        self._loss_sum, self._loss_count = 0.0, 0
        self._validated = False
        self._stage_from_epoch = False  # a checkpoint without stage state (older version): derive it from the epoch
        self._steps_per_epoch: int | None = None

    @staticmethod
    def _stage(index: int, stage: Mapping[str, Any]) -> dict[str, Any]:
        where = f"callbacks.cascade.stages[{index}]"
        if ("epochs" in stage) == ("max_epochs" in stage):
            raise ValueError(f"{where} needs exactly one of epochs (a fixed length) or max_epochs (until "
                             f"convergence, capped), got {dict(stage)}")
        for key in ("epochs", "max_epochs"):
            if key in stage and int(stage[key]) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {stage[key]}")
        return {"epochs": int(stage["epochs"]) if "epochs" in stage else None,
                "max_epochs": int(stage["max_epochs"]) if "max_epochs" in stage else None,
                "blocks": list(stage["blocks"]), "separable_head": bool(stage.get("separable_head", False))}

    @staticmethod
    def _convergence(rule: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(rule) - {"monitor", "mode", "min_delta", "patience"}
        if unknown:
            raise ValueError(f"callbacks.cascade.convergence: unknown keys {sorted(unknown)} "
                             "(monitor, mode, min_delta, patience)")
        monitor = str(rule.get("monitor", "val/psnr"))
        mode = rule.get("mode") or ("min" if "loss" in monitor else "max")
        if mode not in ("min", "max"):
            raise ValueError(f"callbacks.cascade.convergence.mode must be min or max, got {mode!r}")
        patience, min_delta = int(rule.get("patience", 2)), float(rule.get("min_delta", 0.0))
        if patience < 1 or min_delta < 0:
            raise ValueError("callbacks.cascade.convergence: patience must be >= 1 and min_delta >= 0, got "
                             f"patience={patience}, min_delta={min_delta}")
        return {"monitor": monitor, "mode": mode, "min_delta": min_delta, "patience": patience}

    def _new_trigger(self) -> EarlyStopping | None:
        """A fresh convergence trigger: Lightning's EarlyStopping, used for its decision only (it is not one of the
        trainer's callbacks, so it stops nothing by itself)."""
        if self.convergence is None:
            return None
        return EarlyStopping(**self.convergence, strict=True, check_finite=True)

    # ---------------------------------------------------------------- schedule
    def stage_at(self, epoch: int) -> int:
        """The stage of ``epoch`` when every stage before it has a fixed number of epochs."""
        end = 0
        for index, stage in enumerate(self.stages):
            if stage["epochs"] is None:
                return index
            end += stage["epochs"]
            if epoch < end:
                return index
        return len(self.stages) - 1

    def lr_window(self, trainer: L.Trainer) -> tuple[int, int]:
        """(first optimizer step, length in optimizer steps) of the current stage, for a learning-rate schedule
        restarted per stage (``module.lr_schedule=restart``): a fixed stage's epochs, or the cap (``max_epochs``) of
        a stage that ends on convergence, times the optimizer steps per epoch."""
        if self._steps_per_epoch is None:
            _ = trainer.estimated_stepping_batches  # loads the training data when not loaded yet
            batches = trainer.num_training_batches
            if batches == float("inf"):
                raise MisconfigurationException("module.lr_schedule=restart needs a sized training dataloader")
            self._steps_per_epoch = max(1, -(-int(batches) // trainer.accumulate_grad_batches))
        stage = self.stages[self.stage]
        return self.stage_start_step, (stage["epochs"] or stage["max_epochs"]) * self._steps_per_epoch

    # ---------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            raise MisconfigurationException(
                "CascadeTraining changes the network between epochs; under multi-process strategies (DDP) the "
                "wrapped model and gradient buckets would not follow and ranks would diverge. Run the cascade on one "
                "device (trainer.devices=1), or grow by separate runs with init_from=CKPT.")
        if not hasattr(pl_module.network, "spec"):
            raise MisconfigurationException(
                f"CascadeTraining needs a growable network (DNResNet), got {type(pl_module.network).__name__}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._stage_from_epoch:
            self._stage_from_epoch = False
            self.stage = self.stage_at(epoch)
            self.stage_start_epoch = sum(s["epochs"] or 0 for s in self.stages[:self.stage])
            self.stage_start_step = trainer.global_step - (epoch - self.stage_start_epoch) * (
                trainer.num_training_batches // trainer.accumulate_grad_batches)
        self._loss_sum, self._loss_count, self._validated = 0.0, 0, False
        stage = self.stages[self.stage]
        convert_head = stage["separable_head"] and not pl_module.network.separable_head
        changed = pl_module.network.spec != stage["blocks"] or convert_head
        if changed:
            # new weights come from a generator seeded by (seed, epoch): a resumed run grows exactly the same blocks
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(pl_module.hparams.get("seed", 0) * 1_000_003 + epoch)
                self._transform(pl_module.network, stage["blocks"], convert_head)
            pl_module.format_network()
        if changed or (self.stage > 0 and epoch == self.stage_start_epoch):  # a restarted schedule starts anew
            self._rebuild_optimizer(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.convergence is None or self.convergence["monitor"] != TRAIN_LOSS:
            return
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += float(loss.detach().float())
            self._loss_count += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Decide whether the current stage ends with this epoch and update its row (after its last epoch it holds
        the end-of-stage figures). Runs before the epoch's checkpoints are written (Lightning calls ModelCheckpoint
        last), so they hold the decision."""
        index, epoch = self.stage, trainer.current_epoch
        ended = self._stage_end(trainer)
        row = {**self._row(trainer, pl_module, index), "start_epoch": self.stage_start_epoch,
               "epochs": epoch - self.stage_start_epoch + 1, "steps": trainer.global_step - self.stage_start_step,
               "ended": ended}
        self.rows = [r for r in self.rows if r["stage"] != row["stage"]] + [row]
        pl_module.log_dict({"stage/index": float(row["stage"]), "stage/conv_layers": float(row["conv_layers"]),
                            "stage/params": float(row["params"])})
        if ended is None:
            return
        if index + 1 < len(self.stages) and ended != "non_finite":
            self.stage, self.stage_start_epoch, self.stage_start_step = index + 1, epoch + 1, trainer.global_step
            self.trigger = self._new_trigger()
        elif ended != "epochs":  # the last stage converged or reached its cap, or the metric is not finite
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A stage the run ended before it did (``trainer.max_steps`` / ``max_epochs``) says so."""
        if self.rows and self.rows[-1]["ended"] is None:
            self.rows[-1] = {**self.rows[-1], "ended": "stopped"}

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "stage": self.stage, "stage_start_epoch": self.stage_start_epoch,
                "stage_start_step": self.stage_start_step,
                "trigger": self.trigger.state_dict() if self.trigger is not None else None,
                "loss_sum": self._loss_sum, "loss_count": self._loss_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        if "stage" not in state_dict:  # written before stages could end on convergence: fixed stages only
            self._stage_from_epoch = True
            return
        self.stage, self.stage_start_epoch = int(state_dict["stage"]), int(state_dict["stage_start_epoch"])
        self.stage_start_step = int(state_dict["stage_start_step"])
        if self.stage >= len(self.stages):
            raise MisconfigurationException(f"the checkpoint is at cascade stage {self.stage}, but "
                                            f"callbacks.cascade.stages lists {len(self.stages)}")
        self.trigger = self._new_trigger()
        if self.trigger is not None and state_dict.get("trigger") is not None:
            self.trigger.load_state_dict(state_dict["trigger"])
        self._loss_sum, self._loss_count = float(state_dict["loss_sum"]), int(state_dict["loss_count"])

    # ---------------------------------------------------------------- convergence
    def _stage_end(self, trainer: L.Trainer) -> str | None:
        """Why the current stage ends with this epoch (one of STAGE_END_REASONS), or None if it goes on."""
        stage = self.stages[self.stage]
        done = trainer.current_epoch - self.stage_start_epoch + 1
        if stage["epochs"] is not None:
            return "epochs" if done >= stage["epochs"] else None
        value = self._monitored(trainer)
        if value is not None:
            # EarlyStopping's own rule: improvement = better than the best by more than min_delta, else wait + 1;
            # patience waits in a row -> stop (here: the stage has converged)
            converged, _ = self.trigger._evaluate_stopping_criteria(value)
            if converged:
                reason = self.trigger.stopping_reason
                return "non_finite" if reason == EarlyStoppingReason.NON_FINITE_METRIC else "converged"
        return "cap" if done >= stage["max_epochs"] else None

    def _monitored(self, trainer: L.Trainer) -> torch.Tensor | None:
        """This epoch's value of the monitor (None: no check this epoch)."""
        monitor = self.convergence["monitor"]
        if monitor == TRAIN_LOSS:
            return torch.tensor(self._loss_sum / self._loss_count) if self._loss_count else None
        if not self._validated:
            return None
        metrics = trainer.callback_metrics
        if monitor not in metrics:
            raise MisconfigurationException(
                f"callbacks.cascade.convergence.monitor={monitor!r} is not a logged metric; logged: "
                f"{', '.join(sorted(metrics))} (or {TRAIN_LOSS!r}: the mean training loss of the epoch)")
        return metrics[monitor].detach().float().cpu().squeeze()

    # ---------------------------------------------------------------- work
    def _transform(self, network, target: list[str], convert_head: bool = False) -> None:
        current = network.spec
        if len(target) > len(current) and target[:len(current)] == current and set(target[len(current):]) == {"res"}:
            network.insert_blocks(len(target) - len(current), init=self.insert_init, std=self.insert_std)
        elif len(target) == len(current) and all(a == b or (a, b) == ("res", "ds") for a, b in zip(current, target,
                                                                                                    strict=True)):
            for index, (a, b) in enumerate(zip(current, target, strict=True)):
                if a != b:
                    network.convert_block(index, init=self.convert_init)
        else:
            raise MisconfigurationException(
                f"CascadeTraining cannot turn blocks {current} into {target}: a stage may only append 'res' blocks "
                "or convert 'res' blocks to 'ds'")
        if convert_head:
            network.convert_head(init=self.convert_init)

    @staticmethod
    def _rebuild_optimizer(trainer: L.Trainer) -> None:
        old = trainer.optimizers[0]
        state = {param: old.state[param] for group in old.param_groups for param in group["params"]
                 if param in old.state}
        trainer.strategy.setup_optimizers(trainer)
        new = trainer.optimizers[0]
        for group in new.param_groups:
            for param in group["params"]:
                if param in state:
                    new.state[param] = state[param]

    @staticmethod
    def _row(trainer: L.Trainer, pl_module: L.LightningModule, stage: int) -> dict[str, Any]:
        network = pl_module.network
        metrics = trainer.callback_metrics
        return {"stage": stage, "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                "conv_layers": network.num_layers, "blocks": network.spec,
                "separable_head": network.separable_head, "params": count_parameters(network),
                "macs_per_pixel": macs_per_pixel(network, network.tail.out_channels),
                "val_psnr": float(metrics["val/psnr"]) if "val/psnr" in metrics else None,
                "val_ssim": float(metrics["val/ssim"]) if "val/ssim" in metrics else None}
