"""denoise-lightning: Lightning + Hydra experiments for CNN image denoising (DnCNN family, DN-ResNet, BM3D)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from denoise_lightning.hardware import default_precision

__version__ = "0.1.0"

# ``${dnl_precision:}`` in conf/trainer: bf16-mixed where bf16 is native to the hardware, else 32-true.
OmegaConf.register_new_resolver("dnl_precision", default_precision, replace=True)


def load_model(path: str | os.PathLike, map_location: str = "cpu"):
    """The network of a ``DenoiseModule`` checkpoint, in eval mode.

    The returned ``torch.nn.Module`` maps a noisy float tensor (N, C, H, W) in [0, 1] to the denoised tensor.
    The checkpoint is read with ``weights_only=True`` (no code is executed from the file).
    """
    from denoise_lightning.checkpoint import network_from_checkpoint

    return network_from_checkpoint(path, map_location=map_location)


__all__ = ["load_model", "__version__"]
