"""Shared fixtures: composed Hydra configs for fast runs, the real benchmark data root, a tiny trained checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "denoise_lightning" / "conf"
SHARED_DATA = Path(os.environ.get("DNL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
if SHARED_DATA.is_dir():
    os.environ.setdefault("DNL_DATA_DIR", str(SHARED_DATA))  # conf/data/train400.yaml reads it

# A small, fast network and budget for runs in tests (real images, real training, seconds not minutes): the
# small DnCNN of experiment=embedded_dncnn, shrunk further. fp32 always: the default precision follows the hardware
# (bf16-mixed on AMX / AVX512-BF16 CPUs), and a test must give the same numbers on every machine.
FAST_RUN = [
    "data.patch_size=32", "data.batch_size=16", "data.patches_per_image=8", "trainer.precision=32-true",
    "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
]
FAST = ["experiment=embedded_dncnn", "model.num_layers=5", "model.channels=16", "model.batch_norm=false", *FAST_RUN]


def compose_config(name: str, output_dir: Path, overrides: list[str] = ()):
    """Compose ``conf/<name>.yaml`` with overrides, writing into ``output_dir`` (no Hydra run dir)."""
    from denoise_lightning.training.resolvers import register_resolvers

    register_resolvers()  # as dnl-train / dnl-eval do before composing
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=[f"output_dir={output_dir}", *overrides])


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "test" / "bsd68").is_dir():
        pytest.skip(f"benchmark data not found under {SHARED_DATA} (set DNL_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short training run of a small DnCNN on the embedded photos (sigma 25); returns its results dict."""
    from denoise_lightning.training.train import train

    output_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_config("train", output_dir, [*FAST, "model.num_layers=6", "model.channels=24",
                                               "trainer.max_steps=147", "module.lr=2e-3"])
    return train(cfg)


class StopAfterEpoch(L.Callback):
    """Ends fit after epoch ``epoch`` as a killed job would (its last.ckpt written), for resume tests."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True
