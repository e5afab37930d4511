"""The ``${dnl_*:}`` OmegaConf resolvers of the configs, registered in this one place.

:func:`register_resolvers` is called by the Hydra apps (``dnl-train``, ``dnl-eval``) before they compose a config,
and by anything else that composes ``conf/`` (the tests). Importing a module registers nothing: the inference path
(``load_model``, ``denoise``, ``dnl-denoise``) never imports OmegaConf.

* ``${dnl_precision:}`` (``conf/trainer``): bf16-mixed where bf16 is native to the hardware, else 32-true.
* ``${dnl_gpus_per_job:}`` / ``${dnl_cpus_per_job:}`` (``conf/hydra/launcher/ray_local.yaml``): Ray resources per job.
* ``${dnl_wandb_group:}`` / ``${dnl_wandb_offline:}`` / ``${dnl_wandb_tags:}`` / ``${dnl_wandb_name:}``
  (``conf/logger/wandb.yaml``): the wandb run of a job.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from denoise_lightning.hardware import default_precision
from denoise_lightning.sweeps.status import cpus_per_job, gpus_per_job
from denoise_lightning.training.tracking import offline, run_name, run_tags, sweep_group

RESOLVERS = {
    "dnl_precision": default_precision,
    "dnl_gpus_per_job": gpus_per_job,
    "dnl_cpus_per_job": cpus_per_job,
    "dnl_wandb_group": sweep_group,
    "dnl_wandb_offline": offline,
    "dnl_wandb_tags": run_tags,
    "dnl_wandb_name": run_name,
}


def register_resolvers() -> None:
    """Register every ``dnl_*`` resolver with OmegaConf (again: a no-op that keeps the same functions)."""
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
