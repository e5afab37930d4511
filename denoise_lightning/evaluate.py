"""``dnl-eval``: evaluate a trained checkpoint on every test set x level, write ``results.json`` / ``results.md``.

    dnl-eval ckpt=outputs/.../checkpoints/last.ckpt data=train400
    dnl-eval ckpt=model.ckpt data=train400 noise=gaussian noise.blind=true   # test levels 15, 25, 50

Without ``noise=...`` the checkpoint's own noise config (and so its test levels) is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from denoise_lightning import load_model
from denoise_lightning.checkpoint import CheckpointError, read_checkpoint
from denoise_lightning.module import DenoiseModule
from denoise_lightning.results import print_results, write_results
from denoise_lightning.train import build_trainer, run_test


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise CheckpointError("dnl-eval needs a checkpoint: add ckpt=PATH/TO/FILE.ckpt")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    network = load_model(cfg.ckpt)
    noise = cfg.get("noise")
    if noise is None:
        noise = read_checkpoint(cfg.ckpt).get("hyper_parameters", {}).get("noise")
        if noise is None:
            raise CheckpointError(f"{cfg.ckpt} records no noise config: choose one, e.g. noise=gaussian")
    module = DenoiseModule(network=network, noise=noise, **OmegaConf.to_container(cfg.module, resolve=True))
    datamodule = instantiate(cfg.data)
    trainer = build_trainer(cfg)
    results = run_test(cfg, trainer, module, datamodule, ckpt_path=None)
    results.update(checkpoint=str(cfg.ckpt), output_dir=str(output_dir))
    if results["noise"] is None:
        results["noise"] = noise
    write_results(output_dir, results)
    print_results(results)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
