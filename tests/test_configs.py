"""Every config file composes with the default config and runs: each experiment and each trainable network of
``conf/model`` one real training step (``fast_dev_run``: one batch of train, validation and test), each baseline one
image through ``dnl-eval``. The lists are globbed, so a new file is tested without touching this one."""

from __future__ import annotations

from pathlib import Path

import pytest
import skimage.data
import torch
from conftest import CONF_DIR, compose_config
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image

from denoise_lightning.baselines import Baseline
from denoise_lightning.training.evaluate import evaluate
from denoise_lightning.training.train import train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
ONE_STEP = ["trainer.fast_dev_run=1", "data.batch_size=4", "data.test_max_images=1", "data.val_max_images=1",
            "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "trainer.precision=32-true"]


@pytest.fixture(scope="module")
def tiny_test_set(tmp_path_factory) -> Path:
    """A folder holding one real 64x64 crop (scikit-image's camera photo), to validate and test on in a blink."""
    folder = tmp_path_factory.mktemp("tiny_test_set")
    Image.fromarray(skimage.data.camera()[160:224, 200:264]).save(folder / "camera.png")
    return folder


def test_the_default_config_names_no_experiment():
    """The default run is a plain composition: an experiment is chosen explicitly (make train passes one)."""
    cfg = compose_config("train", Path("unused"))
    assert "cascade" not in cfg.callbacks and cfg.get("name") is None
    assert cfg.model._target_ == "denoise_lightning.models.dncnn.DnCNN"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_runs_with_the_default_config(model, tmp_path, tiny_test_set):
    """A network trains one step; a baseline (bm3d) is refused by training with a clear error and denoises one image
    through dnl-eval instead."""
    test_set = f"data.test_sets.embedded={tiny_test_set}"
    cfg = compose_config("train", tmp_path, [f"model={model}", *ONE_STEP, "data.patch_size=32", test_set])
    cls = get_class(cfg.model._target_)
    if not issubclass(cls, Baseline):
        results = train(cfg)
        assert results["global_steps"] == 1 and results["model"]["class"] == cls.__name__
        assert results["test"]["embedded"]["sigma25"]["psnr"] > 0
        return
    with pytest.raises(Exception, match="not trainable"):  # Hydra wraps it in an InstantiationException
        train(cfg)
    pytest.importorskip("bm3d", reason="the baselines extra is not installed: pip install '.[baselines]'")
    results = evaluate(compose_config("eval", tmp_path / "eval", [
        f"model={model}", "noise=gaussian", test_set, f"cache_dir={tmp_path / 'cache'}", "workers=1",
        "trainer.enable_progress_bar=false"]))
    row = results["test"]["embedded"]["sigma25"]
    assert row["psnr"] > row["psnr_noisy"] + 3.0, row


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_one_step(experiment, tmp_path):
    cfg = compose_config("train", tmp_path, [f"experiment={experiment}", *ONE_STEP])
    missing = [p for p in cfg.data.train if not p.startswith("skimage://") and not Path(p).is_dir()]
    if missing:
        pytest.skip(f"benchmark data not found: {missing} (set DNL_DATA_DIR)")
    if OmegaConf.is_missing(cfg, "init_from"):  # DS evolution starts from a trained DN-ResNet-13: fake one
        network_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        state = {f"network.{k}": v for k, v in instantiate(network_cfg).state_dict().items()}
        torch.save({"state_dict": state, "hyper_parameters": {"network": network_cfg}}, tmp_path / "init.ckpt")
        cfg.init_from = str(tmp_path / "init.ckpt")
    results = train(cfg)
    assert results["test"] and results["global_steps"] == 1
