"""Degradations applied on the fly to clean images.

Every degradation is a small ``nn.Module`` with explicit level parameters and one call shape,
``degradation(clean, generator=None) -> noisy`` for (N, C, H, W) images in [0, 1]:

* during training it draws the level per image when ``blind`` (DnCNN-B convention), else uses the fixed level;
* ``at_level(clean, level, generator)`` degrades at one named test level, a plain dict such as ``{"sigma": 25}``;
* ``test_levels`` lists the levels a model is evaluated at, ``level_name`` keys them readably (``sigma25``).

Noise is drawn with the explicit ``torch.Generator`` passed in, on the device of ``clean``.
Test noise is deterministic: :func:`noise_generator` seeds it from (set name, image index, level name), so
every network and baseline sees the same noisy images in every run.

Degradations: :class:`GaussianNoise` (sigma), :class:`PoissonNoise` (peak), :class:`PoissonGaussianNoise` (both).
Invalid levels raise ``ValueError`` at construction (Hydra instantiate time), naming the config key.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

Level = dict[str, float]


class Degradation(nn.Module):
    """Base class: subclasses implement ``sample_levels`` and ``apply``.

    Where a degradation runs: noise models (``in_loader = False``) are applied to the batch on the device, in the
    training step. Codecs and resizing (``in_loader = True``, subclasses of
    :class:`~denoise_lightning.degradations.array.ArrayDegradation`) work per image on ``uint8`` arrays, so the data
    loader workers apply them with :meth:`degrade_array`.
    """

    blind: bool
    in_loader: bool = False

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

    def size_multiple(self, level: Level) -> int:
        """Test images are cropped, top-left anchored (MATLAB ``modcrop``), to a multiple of this before degrading."""
        return 1

    def metric_border(self, level: Level) -> int:
        """Pixels cropped from each side of the output and the clean image before PSNR / SSIM."""
        return 0

    def degrade_array(self, image: np.ndarray, level: Level) -> np.ndarray:
        """Degrade one ``uint8`` image (H, W, C) at ``level`` (plain floats): ``float32`` (H, W, C) on the [0, 1] scale.

        Only for ``in_loader`` degradations, which the data loader workers apply image by image.
        """
        raise NotImplementedError(f"{type(self).__name__} is applied on the device, not to uint8 arrays")

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


def _level_range(values: Sequence[float], key: str, positive: bool) -> tuple[float, float]:
    """Validated ``(low, high)`` of a blind range: two numbers, ``0 <= low <= high`` (``0 < low`` if ``positive``)."""
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 2:
        low, high = float(values[0]), float(values[1])
        if (low > 0 if positive else low >= 0) and low <= high:
            return low, high
    raise ValueError(f"{key} must be [low, high] with {'0 <' if positive else '0 <='} low <= high, got {values!r}")


def _positive_peak(peak: float, key: str) -> float:
    """``peak`` as a float, or a ``ValueError`` naming ``key`` if it is not > 0."""
    if not peak > 0:
        raise ValueError(f"{key} must be > 0 (photons at intensity 1; larger = less noise), got {peak}")
    return float(peak)


def _non_negative_sigma(sigma: float, key: str) -> float:
    """``sigma`` as a float, or a ``ValueError`` naming ``key`` if it is negative."""
    if not sigma >= 0:
        raise ValueError(f"{key} must be >= 0 (0-255 scale), got {sigma}")
    return float(sigma)


def _uniform(low: float, high: float, batch: int, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """(batch,) values drawn uniformly from [low, high]."""
    return low + (high - low) * torch.rand(batch, generator=generator, device=device)


def _log_uniform(low: float, high: float, batch: int, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """(batch,) values whose logarithm is uniform in [log low, log high] (every octave of peaks equally likely)."""
    return torch.exp(_uniform(math.log(low), math.log(high), batch, generator, device))


def _poisson(clean: torch.Tensor, peak: float | torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``Poisson(peak * x) / peak``: photon counts at ``peak`` photons for intensity 1, back on the [0, 1] scale."""
    peak = _per_image(peak, clean)
    return torch.poisson(clean.clamp(min=0) * peak, generator=generator) / peak


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
        self.sigma = _non_negative_sigma(sigma, "noise.sigma")
        self.blind = bool(blind)
        self.sigma_range = _level_range(sigma_range, "noise.sigma_range", positive=False)
        if test_sigmas is not None and (len(test_sigmas) == 0 or min(test_sigmas) < 0):
            raise ValueError(f"noise.test_sigmas must be a non-empty list of sigmas >= 0, got {list(test_sigmas)}")
        default_tests = [15.0, 25.0, 50.0] if blind else [self.sigma]
        self.test_sigmas = [float(s) for s in (test_sigmas if test_sigmas is not None else default_tests)]

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"sigma": self.sigma}
        return {"sigma": _uniform(*self.sigma_range, batch, generator, device)}

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


class PoissonNoise(Degradation):
    """Poisson (shot) noise ``y = Poisson(peak * x) / peak``: mean ``x``, variance ``x / peak``.

    Args:
        peak: photon count of intensity 1; smaller is noisier. Non-blind: the training level. Blind: the
            validation level.
        blind: draw the peak per training image log-uniformly from ``peak_range`` (every octave equally likely).
        peak_range: (low, high) with 0 < low <= high, used when ``blind``.
        test_peaks: peaks to test at; default the published ones, 1, 2, 4, 8, 30 (blind or not).
    """

    def __init__(
        self,
        peak: float = 4.0,
        blind: bool = False,
        peak_range: Sequence[float] = (1.0, 30.0),
        test_peaks: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.peak = _positive_peak(peak, "noise.peak")
        self.blind = bool(blind)
        self.peak_range = _level_range(peak_range, "noise.peak_range", positive=True)
        test_peaks = [1.0, 2.0, 4.0, 8.0, 30.0] if test_peaks is None else list(test_peaks)
        if not test_peaks or not all(p > 0 for p in test_peaks):
            raise ValueError(f"noise.test_peaks must be a non-empty list of peaks > 0, got {test_peaks}")
        self.test_peaks = [float(p) for p in test_peaks]

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"peak": self.peak}
        return {"peak": _log_uniform(*self.peak_range, batch, generator, device)}

    def apply(self, clean: torch.Tensor, level: Level, generator: torch.Generator | None) -> torch.Tensor:
        return _poisson(clean, level["peak"], generator)

    @property
    def test_levels(self) -> list[Level]:
        return [{"peak": p} for p in self.test_peaks]

    @property
    def val_level(self) -> Level:
        return {"peak": self.peak}

    def extra_repr(self) -> str:
        kind = f"blind, peak log-uniform in {list(self.peak_range)}" if self.blind else f"peak={self.peak:g}"
        return f"{kind}, test_peaks={self.test_peaks}"


class PoissonGaussianNoise(Degradation):
    """Poisson-Gaussian noise ``y = Poisson(peak * x) / peak + N(0, (sigma/255)^2)``.

    Mean ``x``, variance ``x / peak + (sigma/255)^2``: shot noise plus signal-independent read noise.

    Args:
        peak: photon count of intensity 1 (training level when non-blind, validation level when blind).
        sigma: Gaussian read noise on the 0-255 scale (same roles as ``peak``).
        blind: draw both per training image: peak log-uniform in ``peak_range``, sigma uniform in ``sigma_range``.
        peak_range: (low, high) with 0 < low <= high.
        sigma_range: (low, high) with 0 <= low <= high, 0-255 scale.
        test_levels: (peak, sigma) levels to test at, as mappings ``{"peak": 4, "sigma": 10}``; default
            (1, 10), (4, 10), (30, 25).
    """

    def __init__(
        self,
        peak: float = 4.0,
        sigma: float = 10.0,
        blind: bool = False,
        peak_range: Sequence[float] = (1.0, 30.0),
        sigma_range: Sequence[float] = (0.0, 50.0),
        test_levels: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__()
        self.peak = _positive_peak(peak, "noise.peak")
        self.sigma = _non_negative_sigma(sigma, "noise.sigma")
        self.blind = bool(blind)
        self.peak_range = _level_range(peak_range, "noise.peak_range", positive=True)
        self.sigma_range = _level_range(sigma_range, "noise.sigma_range", positive=False)
        if test_levels is None:
            test_levels = [{"peak": 1, "sigma": 10}, {"peak": 4, "sigma": 10}, {"peak": 30, "sigma": 25}]
        self.test_pairs = self._test_pairs(test_levels)

    @staticmethod
    def _test_pairs(levels: Sequence[Mapping[str, float]]) -> list[tuple[float, float]]:
        """Validated (peak, sigma) pairs of ``noise.test_levels``."""
        levels = list(levels)
        form = "a non-empty list of {peak: P, sigma: S}, e.g. [{peak: 4, sigma: 10}]"
        if not levels or not all(isinstance(lv, Mapping) and set(lv) == {"peak", "sigma"} for lv in levels):
            raise ValueError(f"noise.test_levels must be {form}, got {levels}")
        return [(_positive_peak(lv["peak"], "noise.test_levels peak"),
                 _non_negative_sigma(lv["sigma"], "noise.test_levels sigma")) for lv in levels]

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"peak": self.peak, "sigma": self.sigma}
        return {"peak": _log_uniform(*self.peak_range, batch, generator, device),
                "sigma": _uniform(*self.sigma_range, batch, generator, device)}

    def apply(self, clean: torch.Tensor, level: Level, generator: torch.Generator | None) -> torch.Tensor:
        read_noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        return _poisson(clean, level["peak"], generator) + read_noise * (_per_image(level["sigma"], clean) / 255.0)

    @property
    def test_levels(self) -> list[Level]:
        return [{"peak": peak, "sigma": sigma} for peak, sigma in self.test_pairs]

    @property
    def val_level(self) -> Level:
        return {"peak": self.peak, "sigma": self.sigma}

    def extra_repr(self) -> str:
        kind = (f"blind, peak log-uniform in {list(self.peak_range)}, sigma in {list(self.sigma_range)}"
                if self.blind else f"peak={self.peak:g}, sigma={self.sigma:g}")
        return f"{kind}, test_levels={[self.level_name(lv) for lv in self.test_levels]}"


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
