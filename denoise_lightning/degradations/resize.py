"""Downscaling for super-resolution: bicubic down by ``s`` and back up, as MATLAB's ``imresize`` does it.

The super-resolution benchmarks (SRCNN, VDSR, DnCNN-3; the paper's 19-layer DN-ResNet) make the network input with
MATLAB: ``imresize(imresize(x, 1/s, 'bicubic'), s, 'bicubic')`` on the double image in [0, 1], no rounding in
between. MATLAB's bicubic is the Keys cubic (a = -0.5), widened by ``s`` when shrinking (antialiasing), with mirrored
(symmetric) borders. :func:`imresize` reproduces it with the ``resize-right`` package, whose grid and kernels are
MATLAB's; its default zero padding is not, so it is called with symmetric padding on NumPy arrays (checked against
a direct port of MATLAB's ``contributions`` to 2e-15, and by the Set5 bicubic PSNRs in ``tests/test_downscale.py``).

Level ``{"scale": s}`` (``scale2``). The image must be a multiple of ``s`` in both sizes: test images are cropped to
one first (MATLAB ``modcrop``, :meth:`Downscale.size_multiple`) and scored without ``s`` border pixels
(:meth:`Downscale.metric_border`), as the benchmarks do.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from resize_right import interp_methods, resize

from denoise_lightning.degradations.array import ArrayDegradation, check_image
from denoise_lightning.degradations.noise import Level


def imresize(image: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` of a float (H, W, C) array to ``size`` = (height, width).

    Antialiased when shrinking, symmetric borders; float64 in and out, not clipped. ``size`` is given (rather than
    computed as ``ceil(scale * H)``) so that floating-point rounding of ``1 / 3`` cannot change it.
    """
    return resize(np.asarray(image, dtype=np.float64), scale_factors=[scale, scale], out_shape=list(size),
                  interp_method=interp_methods.cubic, antialiasing=True, pad_mode="symmetric")


def _scale(value: float, key: str) -> int:
    """An integer scale >= 2, or a ``ValueError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (float(value).is_integer() and value >= 2):
        raise ValueError(f"{key} must be an integer scale >= 2, got {value!r}")
    return int(value)


def _scales(values: Sequence[float] | None, default: Sequence[int], key: str) -> list[int]:
    """A validated non-empty list of scales (``default`` when None)."""
    values = default if values is None else values
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{key} must be a non-empty list of integer scales >= 2, got {values!r}")
    return [_scale(value, key) for value in values]


class Downscale(ArrayDegradation):
    """Bicubic downscaling by ``s`` and bicubic upscaling back to the original size (MATLAB ``imresize``).

    The network restores the upscaled image, of the size of the clean one (the VDSR / DnCNN-3 convention).
    Output is float32 on the [0, 1] scale, not clipped (bicubic overshoots at edges, as in MATLAB).

    Args:
        scale: the factor s, an integer >= 2; the training level, or the validation level when ``blind``.
        blind: draw s per training image uniformly from ``scales`` (one model for every scale, as DnCNN-3 / VDSR).
        scales: the scales a blind model trains on; default 2, 3, 4.
        test_scales: scales to test at; default the benchmarks' 2, 3, 4 (blind or not).
    """

    def __init__(
        self,
        scale: int = 2,
        blind: bool = False,
        scales: Sequence[int] = (2, 3, 4),
        test_scales: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.scale = _scale(scale, "noise.scale")
        self.blind = bool(blind)
        self.scales = _scales(scales, (), "noise.scales")
        self.test_scales = _scales(test_scales, (2, 3, 4), "noise.test_scales")

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"scale": float(self.scale)}
        choice = torch.randint(0, len(self.scales), (batch,), generator=generator, device=device)
        return {"scale": torch.tensor(self.scales, dtype=torch.float32, device=device)[choice]}

    @property
    def test_levels(self) -> list[Level]:
        return [{"scale": float(s)} for s in self.test_scales]

    @property
    def val_level(self) -> Level:
        return {"scale": float(self.scale)}

    @property
    def training_levels(self) -> list[Level]:
        return [{"scale": float(s)} for s in self.scales] if self.blind else [self.val_level]

    def size_multiple(self, level: Level) -> int:
        return _scale(level["scale"], "the scale level")

    def metric_border(self, level: Level) -> int:
        return _scale(level["scale"], "the scale level")

    def degrade_array(self, image: np.ndarray, level: Level) -> np.ndarray:
        check_image(image)
        scale = _scale(level["scale"], "the scale level")
        height, width = image.shape[:2]
        if height % scale or width % scale:
            raise ValueError(f"a {height}x{width} image cannot be downscaled by {scale}: crop it to a multiple of "
                             f"{scale} first (size_multiple), e.g. to "
                             f"{height - height % scale}x{width - width % scale}")
        small = imresize(image / 255.0, 1.0 / scale, (height // scale, width // scale))
        return imresize(small, float(scale), (height, width)).astype(np.float32)

    def extra_repr(self) -> str:
        kind = f"blind, scale in {self.scales}" if self.blind else f"scale={self.scale}"
        return f"{kind}, test_scales={self.test_scales}"
