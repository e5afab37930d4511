"""Loggers: Lightning's CSVLogger made to keep its rows across a kill and a resume."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, made to survive a kill and a resume (conf/logger/csv.yaml).

    * Rows are written to ``metrics.csv`` whenever a checkpoint is saved (not only every 100 steps), so after a
      ``kill -9`` the file holds every row up to the last checkpoint.
    * A run resumed from a checkpoint (:meth:`keep_rows_before`) keeps the rows logged before the checkpoint's step,
      read from ``metrics.csv`` in its own log folder or, when that has none, in the checkpoint's run folder (the
      same relative path); Lightning's CSVLogger would delete them. Later rows (logged after the checkpoint by the
      killed run) are dropped: the resumed run logs them again. One file holds the whole run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept_rows: list[dict[str, str]] | None = None

    def keep_rows_before(self, step: int, checkpoint: str | os.PathLike) -> None:
        """Keep the earlier rows (``step`` < ``step``) of the run the checkpoint ``checkpoint`` belongs to."""
        own = Path(self.log_dir) / "metrics.csv"
        run_dir = Path(checkpoint).resolve().parent.parent  # <run>/checkpoints/last.ckpt
        try:
            relative = own.resolve().relative_to(Path(self.save_dir).resolve())
        except ValueError:
            relative = None
        sources = [own] + ([run_dir / relative] if relative is not None else [])
        source = next((path for path in sources if path.is_file()), None)
        if source is not None:
            with source.open(newline="") as stream:
                self._kept_rows = [row for row in csv.DictReader(stream) if row.get("step", "").isdigit()
                                   and int(row["step"]) < step]

    @property
    def experiment(self) -> Any:
        writer = super().experiment  # creating the writer deletes an earlier metrics.csv
        rows, self._kept_rows = self._kept_rows, None
        if rows and hasattr(writer, "metrics"):
            writer.metrics = rows + writer.metrics
            writer.save()
        return writer

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()
