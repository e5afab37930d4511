"""Cascade training and incremental DS evolution of DN-ResNet (paper section 3), as one callback.

The target architecture is a pure function of the epoch (``stages``), so a resumed run needs no hidden state:
the checkpoint records the network's config (``DenoiseModule.on_save_checkpoint``), the module rebuilds that
network before the weights load, and this callback carries on from the epoch it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from denoise_lightning.models.complexity import count_parameters, macs_per_pixel


class CascadeTraining(L.Callback):
    """Grow (insert ResBlocks) or evolve (convert ResBlocks to DS-ResBlocks) the network at stage boundaries.

    Args:
        stages: list of ``{"epochs": E, "blocks": spec}``: the network has ``spec`` for the next E epochs. Specs
            must follow each other by appending ``"res"`` blocks (cascade) or turning ``"res"`` into ``"ds"``
            (evolution). After the last stage the last spec stays. A stage may add ``"separable_head": true``:
            the second layer (conv5x5 64 -> 32) is then converted to a depthwise-separable one (ours, the
            opt-in ``separable_head`` variant reached by evolution); it stays converted in later stages.
        insert_init: ``"normal"`` (paper: N(0, insert_std^2)) or ``"zero"`` (exact identity) for new blocks.
        convert_init: ``"random"`` (paper) or ``"fit"`` (ours: least-squares fit of the dense block).

    At a boundary the optimizer is rebuilt through ``configure_optimizers``; parameters that survive keep their
    Adam state, and the learning rate, a function of the global step, carries on.
    """

    def __init__(self, stages: Sequence[Mapping[str, Any]], insert_init: str = "normal", insert_std: float = 1e-3,
                 convert_init: str = "random") -> None:
        if not stages:
            raise ValueError("callbacks.cascade.stages must list at least one {epochs, blocks} stage")
        self.stages = [{"epochs": int(s["epochs"]), "blocks": list(s["blocks"]),
                        "separable_head": bool(s.get("separable_head", False))} for s in stages]
        for index, stage in enumerate(self.stages):
            if stage["epochs"] < 1:
                raise ValueError(f"callbacks.cascade.stages[{index}].epochs must be >= 1, got {stage['epochs']}")
            if index and self.stages[index - 1]["separable_head"] and not stage["separable_head"]:
                raise ValueError(f"callbacks.cascade.stages[{index}].separable_head: a separable head cannot be "
                                 "turned back into a dense one; keep separable_head: true in every later stage")
        self.insert_init = insert_init
        self.insert_std = insert_std
        self.convert_init = convert_init
        self.rows: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- schedule
    def stage_at(self, epoch: int) -> int:
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage["epochs"]
            if epoch < end:
                return index
        return len(self.stages) - 1

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
        stage = self.stages[self.stage_at(trainer.current_epoch)]
        convert_head = stage["separable_head"] and not pl_module.network.separable_head
        if pl_module.network.spec == stage["blocks"] and not convert_head:
            return
        # new weights come from a generator seeded by (seed, epoch): a resumed run grows exactly the same blocks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(pl_module.hparams.get("seed", 0) * 1_000_003 + trainer.current_epoch)
            self._transform(pl_module.network, stage["blocks"], convert_head)
        pl_module.format_network()
        self._rebuild_optimizer(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Update the row of the current stage: after its last epoch it holds the end-of-stage figures."""
        row = self._row(trainer, pl_module, self.stage_at(trainer.current_epoch))
        self.rows = [r for r in self.rows if r["stage"] != row["stage"]] + [row]
        pl_module.log_dict({"stage/index": float(row["stage"]), "stage/conv_layers": float(row["conv_layers"]),
                            "stage/params": float(row["params"])})

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

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
