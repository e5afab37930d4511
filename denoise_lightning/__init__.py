"""denoise-lightning: Lightning + Hydra experiments for CNN image denoising (DnCNN family, DN-ResNet, BM3D).

``load_model`` and ``denoise`` need torch and the networks only: importing this package imports neither Lightning
nor Hydra nor OmegaConf (the training stack lives in :mod:`denoise_lightning.training`).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def load_model(name_or_path: str | os.PathLike, map_location: str = "cpu"):
    """A denoising network in eval mode: from a checkpoint, a published DnCNN ``.mat`` file or a model name.

    The returned ``torch.nn.Module`` maps a noisy float tensor (N, C, H, W) in [0, 1] to the denoised tensor.
    Checkpoints are read with ``weights_only=True`` (no code is executed from the file); names (``dncnn-s-sigma25``,
    ``dncnn-b``, ...) resolve to the published weights on disk, never a download. See
    :func:`denoise_lightning.zoo.registry.load_model`.
    """
    from denoise_lightning.zoo.registry import load_model as load

    return load(name_or_path, map_location=map_location)


def denoise(image, model, sigma: float | None = None, **options):
    """Denoise a numpy image (uint8 / uint16 / float in [0, 1], grey or RGB) in tiles; returns the same dtype.
    See :func:`denoise_lightning.inference.tiling.denoise` for the options."""
    from denoise_lightning.inference.tiling import denoise as run

    return run(image, model, sigma=sigma, **options)


__all__ = ["denoise", "load_model", "__version__"]
