"""What a Hydra multirun needs while it runs: per-job resources for the Ray launcher and the job-status callback.

* :func:`gpus_per_job` / :func:`cpus_per_job`: the ``${dnl_gpus_per_job:}`` / ``${dnl_cpus_per_job:}`` resolvers
  of ``conf/hydra/launcher/ray_local.yaml`` (registered by :mod:`denoise_lightning.training.resolvers`): one GPU per
  job on a GPU machine, or the fraction ``$DNL_GPUS_PER_JOB`` (Ray then queues the jobs that do not fit), no GPU on
  a CPU machine; CPUs per job from ``$DNL_CPUS_PER_JOB``, else the machine's cores shared evenly between the jobs
  that fit on its GPUs, else 1.
* :class:`SweepStatus`, a Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``): every job writes
  ``job_status.json`` (completed / failed with the exception and its traceback) into its own folder, wherever it
  ran; the process that ran the multirun then writes the sweep's tables and summary
  (:mod:`denoise_lightning.sweeps.collect`) also when jobs failed. Hydra skips ``on_multirun_end`` as soon as one
  job failed, so the summary is written at interpreter exit in that case.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from denoise_lightning.files import atomic_write_text
from denoise_lightning.sweeps.collect import JOB_STATUS_FILE


def gpus_per_job() -> float:
    """GPUs per job on a GPU machine: ``$DNL_GPUS_PER_JOB`` (a fraction such as 0.125 packs 8 small jobs on one GPU:
    Ray fractional GPUs), else 1; 0 on a machine without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return 0
    if not os.environ.get("DNL_GPUS_PER_JOB"):
        return 1
    text = os.environ["DNL_GPUS_PER_JOB"]
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1 and not (value > 1 and value.is_integer()):
        raise ValueError(f"DNL_GPUS_PER_JOB must be a fraction in (0, 1] (e.g. 0.125: 8 jobs per GPU) or a whole "
                         f"number of GPUs, got {text!r}")
    return int(value) if value.is_integer() else value


def cpus_per_job() -> int:
    """``$DNL_CPUS_PER_JOB``; else the cores divided evenly between the jobs that fit on the GPUs (GPU machine:
    GPUs / :func:`gpus_per_job` of them); else 1 (CPU machine).

    On a GPU machine the even split guarantees the CPU requests never keep a job off a free GPU (share).
    """
    if os.environ.get("DNL_CPUS_PER_JOB"):
        value = int(os.environ["DNL_CPUS_PER_JOB"])
        if value < 1:
            raise ValueError(f"DNL_CPUS_PER_JOB must be >= 1, got {value}")
        return value
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return 1
    jobs = max(1, int(gpus / gpus_per_job()))
    return max(1, (os.cpu_count() or 1) // jobs)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def job_status_record(config: DictConfig, job_return: JobReturn, started: str | None = None) -> dict[str, Any]:
    """The content of ``job_status.json``: status, overrides and, for a failed job, the exception."""
    record: dict[str, Any] = {
        "status": job_return.status.name.lower(),  # completed | failed
        "overrides": list(job_return.overrides or []),
        "job_num": OmegaConf.select(config, "hydra.job.num"),
        "host": socket.gethostname(),
        "pid": os.getpid(),  # Ray runs several jobs in one worker process
        "started": started,
        "finished": _now(),
        # what the launcher gave the job: Ray sets CUDA_VISIBLE_DEVICES to its GPU and OMP_NUM_THREADS to its CPUs
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
    }
    if job_return.status == JobStatus.FAILED:
        error = job_return._return_value  # .return_value re-raises the job's exception
        record["error"] = one_line(root_cause(error))
        record["exception"] = one_line(error)
        record["traceback"] = "".join(traceback.format_exception(error))
    return record


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (Hydra wraps a config error in two InstantiationExceptions)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return error


def one_line(error: BaseException) -> str:
    """``"ValueError: noise.sigma must be >= 0 ..."`` on one line."""
    return " ".join(f"{type(error).__name__}: {error}".split())


class SweepStatus(Callback):
    """Hydra callback: ``job_status.json`` per job; results.csv and sweep_summary.{json,md} after a multirun."""

    def __init__(self) -> None:
        self._pending: Path | None = None
        self._started: str | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = _now()  # jobs run one after another in a process, so one slot is enough

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        record = job_status_record(config, job_return, self._started)
        atomic_write_text(Path(config.hydra.runtime.output_dir) / JOB_STATUS_FILE, json.dumps(record, indent=2) + "\n")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = Path(config.hydra.sweep.dir)
        atexit.register(self._summarize)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._summarize)
        self._summarize()

    def _summarize(self) -> None:
        """Write the sweep's tables and summary (once), and print where they are."""
        if self._pending is None or not self._pending.is_dir():
            return
        from denoise_lightning.sweeps.collect import collect, print_summary

        sweep_dir, self._pending = self._pending, None
        print_summary(collect([sweep_dir], sweep_dir))
