"""``dnl-eval``: evaluate a trained checkpoint on every test set x level, write ``results.json`` / ``results.md``.

    dnl-eval ckpt=outputs/.../checkpoints/last.ckpt data=train400
    dnl-eval ckpt=model.ckpt data=train400 noise=gaussian noise.blind=true   # test levels 15, 25, 50

Without ``noise=...`` the checkpoint's own noise config (and so its test levels) is used.
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from denoise_lightning.checkpoint import CheckpointError, network_from_checkpoint, read_checkpoint
from denoise_lightning.module import DenoiseModule
from denoise_lightning.train import CONF_DIR, build_trainer, test_and_report


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise CheckpointError("dnl-eval needs a checkpoint: add ckpt=PATH/TO/FILE.ckpt")
    checkpoint = read_checkpoint(cfg.ckpt)
    network = network_from_checkpoint(cfg.ckpt, checkpoint=checkpoint)
    noise = cfg.get("noise")
    if noise is None:
        noise = checkpoint.get("hyper_parameters", {}).get("noise")
        if noise is None:
            raise CheckpointError(f"{cfg.ckpt} records no noise config: choose one, e.g. noise=gaussian")
    module = DenoiseModule(network=network, noise=noise, **OmegaConf.to_container(cfg.module, resolve=True))
    datamodule = instantiate(cfg.data)
    trainer = build_trainer(cfg)
    return test_and_report(cfg, trainer, module, datamodule, checkpoint=str(cfg.ckpt))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
