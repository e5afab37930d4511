"""Degradations computed per image on ``uint8`` arrays (codecs, resizing), in the data loader workers.

A codec takes 8-bit pixels, so these degradations work on one ``uint8`` image (H, W, C) at a time with
:meth:`ArrayDegradation.degrade_array`. The data loader workers call it on each training patch (the level drawn
from the patch's own generator), so encoding never runs in the training step. :meth:`ArrayDegradation.apply` gives
the same result for a float batch (N, C, H, W) in [0, 1], for test images and for code that only has tensors: each
image is quantised to ``uint8`` (``round(clamp(x, 0, 1) * 255)``) and degraded at its own level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from denoise_lightning.degradations.noise import Degradation, Level


def image_level(level: Level, index: int) -> Level:
    """The level of image ``index`` as plain floats, from a level whose values are floats or (N,) tensors."""
    plain = {}
    for key, value in level.items():
        if isinstance(value, torch.Tensor):
            value = value.reshape(-1)[index] if value.numel() > 1 else value.reshape(-1)[0]
        plain[key] = float(value)
    return plain


def check_image(image: np.ndarray, channels: tuple[int, ...] | None = None) -> None:
    """``ValueError`` unless ``image`` is a ``uint8`` array (H, W, C), with C in ``channels`` when given."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 image (H, W, C), got {described}")
    if channels is not None and image.shape[2] not in channels:
        raise ValueError(f"expected {' or '.join(map(str, channels))} channels, got an image {image.shape}")


class ArrayDegradation(Degradation, ABC):
    """Base of the degradations applied per ``uint8`` image in the loader workers (abstract: not a config target).

    Subclasses implement :meth:`degrade_array`, ``sample_levels``, ``test_levels``, ``val_level`` and
    ``training_levels``; ``apply`` on a float batch is shared. The result does not depend on the generator: codecs
    and resizing are deterministic, only the blind level is random.
    """

    in_loader = True
    # True where the level means something only for a whole image (a JPEG 2000 rate counts the codestream headers):
    # the loader then degrades the whole training image and crops the patch after; False: patches are degraded alone
    whole_image: bool = False

    @abstractmethod
    def degrade_array(self, image: np.ndarray, level: Level) -> np.ndarray:
        """One ``uint8`` image (H, W, C) degraded at ``level`` (plain floats): ``float32`` (H, W, C), [0, 1] scale."""

    @property
    @abstractmethod
    def training_levels(self) -> list[Level]:
        """The levels training draws from (non-blind: the one level), e.g. for the patch size to be a multiple of
        every ``size_multiple``. A continuous range (a JPEG 2000 ratio) is given by its two ends."""

    def apply(self, clean: torch.Tensor, level: Level, generator: torch.Generator | None = None) -> torch.Tensor:
        """Degrade a float batch (N, C, H, W) in [0, 1] image by image; ``level`` values are floats or (N,) tensors.

        Returns a tensor of ``clean``'s shape (resizing back to size), device and dtype.
        """
        pixels = (clean.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        degraded = [self.degrade_array(np.ascontiguousarray(image), image_level(level, index))
                    for index, image in enumerate(pixels)]
        return torch.from_numpy(np.stack(degraded)).permute(0, 3, 1, 2).to(clean.device, clean.dtype)
