"""last.ckpt within an epoch, so a killed run loses at most a few hundred steps (``checkpoint_every_n_steps``).

A checkpoint written after a training step is a mid-epoch one: Lightning restores its loop counters, the training
loader (:class:`~denoise_lightning.training.data.PatchLoader`) its position in the epoch, and the run continues with
the patches and noise an uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with ``every_n_train_steps``, except after the step that ends an epoch or the run.

    The epoch-end checkpoint (``last_checkpoint``) follows that step, after the validation and the epoch-end hooks;
    a checkpoint written before them would make a resumed run skip them (no validation row for that epoch, no
    epoch-end update of a cascade), so that step is left to the epoch-end checkpoint.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        last_of_run = 0 <= trainer.max_steps <= trainer.global_step
        if not (last_of_epoch or last_of_run):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
