"""Super-resolution input: bicubic upscaling with MATLAB's ``imresize``, the interpolation an SR network (trained
with ``noise=downscale``) learned to restore.

:func:`upscale` enlarges an image of any supported dtype by an integer ``scale``; :func:`sr_scales` reads the scales
a model was trained for from its recorded degradation, so ``dnl-denoise --scale`` can refuse a model that is not an
SR model and warn about a scale it never saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from denoise_lightning.degradations.resize import imresize

SR_TARGET = "denoise_lightning.degradations.resize.Downscale"


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` (H, W) or (H, W, C), uint8 / uint16 / float, enlarged ``scale`` times per side with MATLAB's bicubic;
    same dtype, integer outputs rounded and clipped, float outputs left unclipped (bicubic overshoots edges).
    With C = 2 or 4 the alpha channel is enlarged too."""
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    if image.size == 0:
        raise ValueError(f"cannot upscale an empty image of shape {image.shape}")
    planes = image if image.ndim == 3 else image[:, :, None]
    height, width = planes.shape[:2]
    peak = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    large = imresize(planes / peak, float(scale), (height * scale, width * scale)) * peak
    if np.issubdtype(image.dtype, np.integer):
        large = np.rint(np.clip(large, 0, peak))
    large = large.astype(image.dtype)
    return large if image.ndim == 3 else large[:, :, 0]


def sr_scales(trained_noise: dict[str, Any] | None) -> list[int] | None:
    """The scales a model restores (from its recorded ``noise`` config), or None if it is not an SR model."""
    if not trained_noise or trained_noise.get("_target_") != SR_TARGET:
        return None
    if trained_noise.get("blind"):
        return [int(s) for s in trained_noise.get("scales", (2, 3, 4))]
    return [int(trained_noise.get("scale", 2))]
