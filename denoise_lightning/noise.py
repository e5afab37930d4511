"""Degradations applied on the fly to clean images (SPEC section 1).

Every degradation is a small ``nn.Module`` with explicit level parameters and one call shape,
``degradation(clean, generator=None) -> noisy`` for (N, C, H, W) images in [0, 1]:

* during training it draws the level per image when ``blind`` (DnCNN-B convention), else uses the fixed level;
* ``at_level(clean, level, generator)`` degrades at one named test level, a plain dict such as ``{"sigma": 25}``;
* ``test_levels`` lists the levels a model is evaluated at, ``level_name`` keys them readably (``sigma25``).

Noise is drawn with the explicit ``torch.Generator`` passed in, on the device of ``clean``.
Test noise is deterministic: :func:`noise_generator` seeds it from (set name, image index, level name), so
every network and baseline sees the same noisy images in every run.

Poisson and Poisson-Gaussian slot in as further subclasses of :class:`Degradation`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import nn

Level = dict[str, float]


class Degradation(nn.Module):
    """Base class: subclasses implement ``sample_levels`` and ``apply``."""

    blind: bool

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        """Per-image level parameters for a training batch, each a tensor of shape (batch,)."""
        raise NotImplementedError

    def apply(self, clean: torch.Tensor, level: Level, generator: torch.Generator | None) -> torch.Tensor:
        """Degrade ``clean`` at ``level`` (values are floats or (N,) tensors)."""
        raise NotImplementedError

    @property
    def test_levels(self) -> list[Level]:
        raise NotImplementedError

    @property
    def val_level(self) -> Level:
        """The level validation metrics are computed at."""
        raise NotImplementedError

    def forward(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(clean, self.sample_levels(clean.shape[0], generator, clean.device), generator)

    def at_level(self, clean: torch.Tensor, level: Level, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(clean, level, generator)

    @staticmethod
    def level_name(level: Level) -> str:
        """Readable key of a level: ``{"sigma": 25}`` -> ``sigma25``; ``{"peak": 4, "sigma": 10}`` -> ``peak4_sigma10``.
        """
        return "_".join(f"{key}{value:g}" for key, value in level.items())


def _per_image(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a scalar or an (N,) tensor of levels against an (N, C, H, W) batch."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return value


class GaussianNoise(Degradation):
    """Additive white Gaussian noise ``y = x + n``, ``n ~ N(0, (sigma/255)^2)``; ``y`` is not clipped.

    Args:
        sigma: noise level on the 0-255 scale. Non-blind: the training level. Blind: the validation level.
        blind: draw sigma per training image uniformly from ``sigma_range`` (DnCNN-B: [0, 55]).
        sigma_range: (low, high) on the 0-255 scale, used when ``blind``.
        test_sigmas: levels to test at; default ``[sigma]`` when non-blind and ``[15, 25, 50]`` when blind.
    """

    def __init__(
        self,
        sigma: float = 25.0,
        blind: bool = False,
        sigma_range: Sequence[float] = (0.0, 55.0),
        test_sigmas: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in sigma_range)
        if sigma < 0:
            raise ValueError(f"noise.sigma must be >= 0 (0-255 scale), got {sigma}")
        if not 0 <= low <= high:
            raise ValueError(f"noise.sigma_range must be [low, high] with 0 <= low <= high, got {list(sigma_range)}")
        if test_sigmas is not None and (len(test_sigmas) == 0 or min(test_sigmas) < 0):
            raise ValueError(f"noise.test_sigmas must be a non-empty list of sigmas >= 0, got {list(test_sigmas)}")
        self.sigma = float(sigma)
        self.blind = bool(blind)
        self.sigma_range = (low, high)
        default_tests = [15.0, 25.0, 50.0] if blind else [self.sigma]
        self.test_sigmas = [float(s) for s in (test_sigmas if test_sigmas is not None else default_tests)]

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"sigma": self.sigma}
        low, high = self.sigma_range
        return {"sigma": low + (high - low) * torch.rand(batch, generator=generator, device=device)}

    def apply(self, clean: torch.Tensor, level: Level, generator: torch.Generator | None) -> torch.Tensor:
        std = _per_image(level["sigma"], clean)
        return clean + torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype) * (
            std / 255.0
        )

    @property
    def test_levels(self) -> list[Level]:
        return [{"sigma": s} for s in self.test_sigmas]

    @property
    def val_level(self) -> Level:
        return {"sigma": self.sigma}

    def extra_repr(self) -> str:
        kind = f"blind, sigma in {list(self.sigma_range)}" if self.blind else f"sigma={self.sigma:g}"
        return f"{kind}, test_sigmas={self.test_sigmas}"


def noise_generator(
    set_name: str, image_index: int, level: Level, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of the test noise of one image at one level: seeded by (set, index, level) only."""
    key = f"{set_name}/{image_index}/{Degradation.level_name(level)}"
    return torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))


def deterministic_noisy(
    degradation: Degradation, clean: torch.Tensor, set_name: str, image_index: int, level: Level
) -> torch.Tensor:
    """Deterministic noisy version of one test image (1, C, H, W), identical on every device and run.

    The noise is drawn on the CPU (CPU and CUDA generators give different streams) and moved to ``clean``'s device.
    """
    noisy = degradation.at_level(clean.cpu().float(), level, noise_generator(set_name, image_index, level))
    return noisy.to(clean.device)
