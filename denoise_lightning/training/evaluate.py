"""``dnl-eval``: evaluate a trained checkpoint or a classical baseline on every test set x level, write
``results.json`` / ``results.md`` (rows: set x level; columns: PSNR/SSIM of the noisy input and of the output).

    dnl-eval ckpt=outputs/.../checkpoints/last.ckpt data=train400
    dnl-eval ckpt=dn-resnet13-sigma25 data=train400 trainer.precision=32-true   # a model of the zoo, by name
    dnl-eval ckpt=model.ckpt data=train400 noise=gaussian noise.blind=true   # test levels 15, 25, 50
    dnl-eval model=bm3d noise=gaussian noise.test_sigmas=[15,25,50] data=train400 sets=[bsd68]
    dnl-eval model=bm3d noise=poisson noise.test_peaks=[1,4,30] data=train400

Without ``noise=...`` a checkpoint's own noise config (and so its test levels) is used. Both paths see the same
deterministic noisy images (:func:`~denoise_lightning.degradations.noise.deterministic_noisy`) and score them with
the same torchmetrics code (:func:`~denoise_lightning.training.module.image_metrics`,
:func:`~denoise_lightning.training.module.grid_row`).
A baseline is given the true noise level (``model.oracle_level`` in results.json); it runs in a process pool over
images and keeps its outputs under ``cache_dir``, so a rerun only recomputes the metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from denoise_lightning.baselines import Baseline, Job, cache_path, denoise_cached
from denoise_lightning.degradations.noise import Degradation, deterministic_noisy
from denoise_lightning.provenance import describe, environment
from denoise_lightning.training.module import (
    DenoiseModule,
    crop_to_multiple,
    grid_row,
    image_metrics,
    scored_region,
)
from denoise_lightning.training.resolvers import register_resolvers
from denoise_lightning.training.results import print_results, write_results
from denoise_lightning.training.train import CONFIG_PATH, build_trainer, test_and_report
from denoise_lightning.zoo.checkpoint import CheckpointError, network_from_checkpoint, read_checkpoint


def select_sets(cfg: DictConfig) -> None:
    """Keep only the test sets named by ``sets`` (all of ``data.test_sets`` when null)."""
    if not cfg.get("sets"):
        return
    available = dict(cfg.data.test_sets)
    unknown = [name for name in cfg.sets if name not in available]
    if unknown:
        raise ValueError(f"sets={list(cfg.sets)}: {unknown} not in data.test_sets {list(available)}")
    cfg.data.test_sets = {name: available[name] for name in cfg.sets}


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Test a network checkpoint (or a named model: ``ckpt=dn-resnet13-sigma25``, a weights ``.json``) through the
    Lightning test loop."""
    if Path(cfg.ckpt).suffix.lower() in (".json", ".safetensors") or not Path(cfg.ckpt).exists():
        from denoise_lightning.zoo.registry import load_model

        network = load_model(cfg.ckpt).float()
        trained_noise = network.trained_noise
    else:
        checkpoint = read_checkpoint(cfg.ckpt)
        network = network_from_checkpoint(cfg.ckpt, checkpoint=checkpoint)
        trained_noise = checkpoint.get("hyper_parameters", {}).get("noise")
    noise = cfg.get("noise")
    if noise is None:
        noise = trained_noise
        if noise is None:
            raise CheckpointError(f"{cfg.ckpt} records no noise config: choose one, e.g. noise=gaussian")
    module = DenoiseModule(network=network, noise=noise, **OmegaConf.to_container(cfg.module, resolve=True))
    datamodule = instantiate(cfg.data)
    trainer = build_trainer(cfg)
    return test_and_report(cfg, trainer, module, datamodule, checkpoint=str(cfg.ckpt))


def evaluate_baseline(cfg: DictConfig) -> dict[str, Any]:
    """Run the baseline ``cfg.model`` at the true level on every test image x level (cached), then score it."""
    if cfg.get("noise") is None:
        raise ValueError("a baseline needs a noise model: add noise=gaussian, noise=poisson or noise=poisson_gaussian")
    baseline = instantiate(cfg.model)
    noise: Degradation = instantiate(cfg.noise)
    datamodule = instantiate(cfg.data)
    levels = noise.test_levels
    cells: list[tuple[str, str, int, list[torch.Tensor], list[torch.Tensor]]] = []  # (set, level, border, clean, noisy)
    jobs: list[Job] = []
    for set_name, loader in zip(datamodule.test_set_names, datamodule.test_dataloader(), strict=True):
        images = [(images.float() / 255.0, int(index[0])) for images, index in loader]
        for level in levels:
            level_name = Degradation.level_name(level)
            cleans = [crop_to_multiple(clean, noise.size_multiple(level)) for clean, _ in images]
            noisy = [deterministic_noisy(noise, clean, set_name, index, level)
                     for clean, (_, index) in zip(cleans, images, strict=True)]
            cells.append((set_name, level_name, noise.metric_border(level), cleans, noisy))
            for (_, index), image in zip(images, noisy, strict=True):
                array = image[0].permute(1, 2, 0).numpy()
                path = cache_path(cfg.cache_dir, baseline, set_name, level_name, index,
                                  loader.dataset.names[index], array)
                jobs.append(Job(array, level, path))
    outputs = iter(denoise_cached(baseline, jobs, cfg.get("workers"), description=baseline.method(levels[0])))

    test: dict[str, dict[str, dict[str, float]]] = {}
    seconds: list[float] = []
    for set_name, level_name, border, cleans, noisies in cells:
        metrics = {"output": image_metrics(), "noisy": image_metrics()}
        for clean, noisy in zip(cleans, noisies, strict=True):
            output, time_taken = next(outputs)
            seconds.append(time_taken)
            # scored exactly as DenoiseModule.denoise_test_image + test_step score a network
            output = torch.from_numpy(output).permute(2, 0, 1)[None].clamp(0, 1)
            clean = scored_region(clean, border)
            metrics["output"].update(scored_region(output, border), clean)
            metrics["noisy"].update(scored_region(noisy.clamp(0, 1), border), clean)
        test.setdefault(set_name, {})[level_name] = grid_row(metrics)

    method = baseline.method(levels[0])
    results = {
        "model": {"name": cfg.get("name") or f"{method}, true level given", "class": type(baseline).__name__,
                  "method": method, "params": 0, "macs_per_pixel": 0, "oracle_level": baseline.oracle_level,
                  "config": OmegaConf.to_container(cfg.model, resolve=True)},
        "noise": OmegaConf.to_container(cfg.noise, resolve=True),
        "test": test,
        "seconds_per_image": round(float(np.mean(seconds)), 3),  # one process per image, as first computed
        "precision": "64-true",  # the baseline computes in float64 (numpy); its outputs are stored as float32
        "environment": environment(),
        "cache_dir": str(Path(cfg.cache_dir).expanduser() / baseline.cache_key),
        "checkpoint": None,
        "output_dir": str(cfg.output_dir),
    }
    write_results(cfg.output_dir, results)
    print_results(results)
    print(describe(results["environment"], results["precision"]))
    return results


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``ckpt=...`` (a network) or ``model=...`` (a baseline such as bm3d) over the test grid."""
    has_model, has_ckpt = cfg.get("model") is not None, bool(cfg.get("ckpt"))
    if has_model == has_ckpt:
        raise ValueError("dnl-eval evaluates either a checkpoint (ckpt=PATH/TO/FILE.ckpt) or a baseline "
                              f"(model=bm3d){', not both' if has_model else ''}")
    select_sets(cfg)
    if has_ckpt:
        return evaluate_checkpoint(cfg)
    target = cfg.model.get("_target_", "")
    if not issubclass(hydra.utils.get_class(target), Baseline):
        raise ValueError(f"model={target} is a network: train it with dnl-train and evaluate its checkpoint with "
                         "ckpt=PATH; dnl-eval model=... takes a baseline such as model=bm3d")
    return evaluate_baseline(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def run(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """``dnl-eval``: the resolvers are registered before Hydra composes."""
    register_resolvers()
    run()


if __name__ == "__main__":
    main()
