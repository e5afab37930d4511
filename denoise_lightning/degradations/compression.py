"""Lossy compression artifacts: encode and decode each image in memory with a real codec (paper Sec. 5, Table 6).

* :class:`JPEGCompression`: JPEG through Pillow (libjpeg, IJG quality scale), quality ``q``. The JPEG-deblocking
  benchmarks (DnCNN-3, ARCNN) encode grey images at q = 10, 20, 30, 40.
* :class:`JPEG2000Compression`: JPEG 2000 through Pillow's OpenJPEG, at a compression ratio.
* :class:`HEIFCompression`: HEVC intra coding in a HEIF file through ``pillow-heif`` (libheif + x265). The paper
  restores BPG images, which are HEVC intra frames too, but BPG has no installable codec: HEIF is the nearest
  installable stand-in, and results on it are not BPG results.

Levels: ``{"quality": q}`` (JPEG, HEIF; ``quality10``) and ``{"ratio": r}`` (JPEG 2000; ``ratio40``). The codecs
are deterministic, so test images need no seed; blind training draws the level per patch from the generator passed
in. Grey images (C = 1) are coded as one-channel images, RGB (C = 3) with each codec's default chroma handling
(JPEG and HEIF: YCbCr 4:2:0; JPEG 2000: the irreversible colour transform, full-resolution chroma).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from denoise_lightning.degradations.array import ArrayDegradation, check_image
from denoise_lightning.degradations.noise import Level, _level_range, _log_uniform


class CodecUnavailableError(RuntimeError):
    """A codec this degradation needs is not installed; the message says how to install it."""


HEIF_INSTALL = ("HEIFCompression needs pillow-heif with its HEVC (x265) encoder: "
                "pip install 'denoise-lightning[heif]' (or pip install pillow-heif)")


def _pil_image(image: np.ndarray) -> Image.Image:
    """uint8 (H, W, 1) -> a mode "L" image; (H, W, 3) -> mode "RGB"."""
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def _as_float(decoded: Image.Image, channels: int) -> np.ndarray:
    """A decoded image as float32 (H, W, channels) on the [0, 1] scale."""
    array = np.asarray(decoded.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return array[:, :, None] if channels == 1 else array


def _number(value: object) -> float:
    """``value`` as a float; NaN for what is not a number (a string, a bool, None)."""
    if isinstance(value, (bool, str)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _quality(value: float, key: str) -> int:
    """An integer quality in [1, 100], or a ``ValueError`` naming ``key``."""
    number = _number(value)
    if not (number.is_integer() and 1 <= number <= 100):
        raise ValueError(f"{key} must be an integer quality in [1, 100] (larger = better), got {value!r}")
    return int(number)


def _quality_range(values: Sequence[float], key: str) -> tuple[int, int]:
    """Validated ``(low, high)`` qualities, ``1 <= low <= high <= 100``."""
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 2:
        try:
            low, high = _quality(values[0], key), _quality(values[1], key)
        except ValueError:
            pass
        else:
            if low <= high:
                return low, high
    raise ValueError(f"{key} must be [low, high], integer qualities with 1 <= low <= high <= 100, got {values!r}")


def _levels(values: Sequence[float] | None, default: Sequence[float], key: str, check) -> list:
    """The validated, non-empty list of test levels (``default`` when None)."""
    values = list(default if values is None else values)
    if not values:
        raise ValueError(f"{key} must be a non-empty list, got []")
    return [check(value, key) for value in values]


def _random_integers(low: int, high: int, batch: int, generator: torch.Generator | None,
                     device: torch.device) -> torch.Tensor:
    """(batch,) integers drawn uniformly from {low, ..., high}, as floats."""
    return torch.randint(low, high + 1, (batch,), generator=generator, device=device).float()


class _QualityCodec(ArrayDegradation):
    """A codec with an integer quality level (JPEG, HEIF): ``{"quality": q}``; blind draws q uniformly."""

    def __init__(self, quality: int, blind: bool, quality_range: Sequence[int],
                 test_qualities: Sequence[int] | None, default_tests: Sequence[int]) -> None:
        super().__init__()
        self.quality = _quality(quality, "noise.quality")
        self.blind = bool(blind)
        self.quality_range = _quality_range(quality_range, "noise.quality_range")
        self.test_qualities = _levels(test_qualities, default_tests, "noise.test_qualities", _quality)

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"quality": float(self.quality)}
        return {"quality": _random_integers(*self.quality_range, batch, generator, device)}

    @property
    def test_levels(self) -> list[Level]:
        return [{"quality": float(q)} for q in self.test_qualities]

    @property
    def val_level(self) -> Level:
        return {"quality": float(self.quality)}

    @property
    def training_levels(self) -> list[Level]:
        low, high = self.quality_range if self.blind else (self.quality, self.quality)
        return [{"quality": float(q)} for q in range(low, high + 1)]

    def extra_repr(self) -> str:
        kind = f"blind, quality in {list(self.quality_range)}" if self.blind else f"quality={self.quality}"
        return f"{kind}, test_qualities={self.test_qualities}"


class JPEGCompression(_QualityCodec):
    """JPEG encode-decode with Pillow (libjpeg, IJG quality scale), as the JPEG-deblocking benchmarks do.

    With grey images this reproduces the published DnCNN-3 inputs (MATLAB ``imwrite`` uses the same IJG quality
    scaling of the standard tables). RGB uses Pillow's defaults (YCbCr, 4:2:0 chroma subsampling).

    Args:
        quality: IJG quality in [1, 100]; the training level, or the validation level when ``blind``.
        blind: draw an integer quality per training image uniformly from ``quality_range`` (both ends included).
        quality_range: (low, high) with 1 <= low <= high <= 100.
        test_qualities: qualities to test at; default the benchmarks' 10, 20, 30, 40 (blind or not).
    """

    def __init__(
        self,
        quality: int = 10,
        blind: bool = False,
        quality_range: Sequence[int] = (5, 95),
        test_qualities: Sequence[int] | None = None,
    ) -> None:
        super().__init__(quality, blind, quality_range, test_qualities, default_tests=(10, 20, 30, 40))

    def degrade_array(self, image: np.ndarray, level: Level) -> np.ndarray:
        check_image(image, (1, 3))
        buffer = io.BytesIO()
        _pil_image(image).save(buffer, format="JPEG", quality=_quality(level["quality"], "the quality level"))
        with Image.open(buffer) as decoded:
            return _as_float(decoded, image.shape[2])


class HEIFCompression(_QualityCodec):
    """HEVC intra coding in a HEIF file (libheif + x265 through ``pillow-heif``): the installable stand-in for BPG.

    The paper's BPG images are HEVC intra frames as well, but BPG has no Python package; this codec is the nearest
    one that installs, so results on it are HEIF results, not BPG ones. The quality is libheif's (1-100, larger is
    better). The paper does not publish its BPG levels; the default test qualities 10, 20, 30, 40 (*ours*) span
    about 26.7 to 35.4 dB on Classic5, the range of JPEG q10-40 (27.8-32.4 dB) and a little above.

    Args:
        quality: libheif quality in [1, 100]; the training level, or the validation level when ``blind``.
        blind: draw an integer quality per training image uniformly from ``quality_range``.
        quality_range: (low, high) with 1 <= low <= high <= 100.
        test_qualities: qualities to test at; default 10, 20, 30, 40.

    Raises:
        CodecUnavailableError: pillow-heif is not installed or has no HEVC encoder (the message says how to install).
    """

    def __init__(
        self,
        quality: int = 30,
        blind: bool = False,
        quality_range: Sequence[int] = (5, 50),
        test_qualities: Sequence[int] | None = None,
    ) -> None:
        _heif_codec()
        super().__init__(quality, blind, quality_range, test_qualities, default_tests=(10, 20, 30, 40))

    def degrade_array(self, image: np.ndarray, level: Level) -> np.ndarray:
        check_image(image, (1, 3))
        pillow_heif = _heif_codec()
        buffer = io.BytesIO()
        pillow_heif.from_pillow(_pil_image(image)).save(buffer, quality=_quality(level["quality"], "the quality level"))
        decoded = pillow_heif.open_heif(io.BytesIO(buffer.getvalue()), convert_hdr_to_8bit=True)
        return _as_float(decoded.to_pillow(), image.shape[2])


def _heif_codec():
    """The ``pillow_heif`` module, or :class:`CodecUnavailableError` if it or its HEVC encoder is missing."""
    try:
        import pillow_heif
    except ImportError as error:
        raise CodecUnavailableError(f"{HEIF_INSTALL} ({error})") from error
    if not pillow_heif.libheif_info().get("HEIF"):
        raise CodecUnavailableError(f"{HEIF_INSTALL}: this pillow-heif (libheif {pillow_heif.libheif_version()}) "
                                    "has no HEVC encoder; install the PyPI wheel, which bundles x265")
    return pillow_heif


# JPEG 2000 rates count the whole codestream, headers included: about 180 bytes for one grey component with the
# default 6 resolution levels. Below this budget the rate cannot be met and the codec falls back to its minimum.
MIN_JPEG2000_BYTES = 256


def _ratio(value: float, key: str) -> float:
    """A compression ratio > 1, or a ``ValueError`` naming ``key``."""
    number = _number(value)
    if not 1 < number < math.inf:
        raise ValueError(f"{key} must be a compression ratio > 1 (raw 8-bit size / coded size), got {value!r}")
    return number


class JPEG2000Compression(ArrayDegradation):
    """JPEG 2000 encode-decode with Pillow's OpenJPEG at a fixed compression ratio (one quality layer).

    Lossy JPEG 2000 as it is usually run: the irreversible CDF 9/7 wavelet (and, for RGB, the irreversible colour
    transform), 6 resolution levels, one layer at ``ratio`` = raw 8-bit size / codestream size, i.e. ``8 / ratio``
    bits per pixel and channel. The codestream is written without the JP2 container, so no box headers eat the
    budget. The paper's JPEG 2000 levels are not published: the default test ratios 20, 40, 80 (0.4, 0.2, 0.1 bpp
    for grey; *ours*) measure 32.2, 29.3 and 26.9 dB on Classic5, about the range of the JPEG benchmarks
    (q10-40: 27.8-32.4 dB).

    A rate counts the codestream headers (about 180 bytes), so the same ratio is a much stronger degradation on a
    small image than on a large one, and a training patch of 40-64 pixels cannot be coded at these ratios at all:
    ``whole_image`` is True, i.e. degrade whole training images (Train400: 180 x 180) and crop the patches after.
    ``degrade_array`` raises a ``ValueError`` when the image is too small for the ratio (budget under
    ``MIN_JPEG2000_BYTES``).

    Args:
        ratio: compression ratio > 1; the training level, or the validation level when ``blind``.
        blind: draw the ratio per training image log-uniformly from ``ratio_range`` (every octave equally likely).
        ratio_range: (low, high) with 1 < low <= high; default (10, 100), 0.8 to 0.08 bpp.
        test_ratios: ratios to test at; default 20, 40, 80 (blind or not).
    """

    whole_image = True

    def __init__(
        self,
        ratio: float = 40.0,
        blind: bool = False,
        ratio_range: Sequence[float] = (10.0, 100.0),
        test_ratios: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ratio = _ratio(ratio, "noise.ratio")
        self.blind = bool(blind)
        self.ratio_range = _level_range(ratio_range, "noise.ratio_range", positive=True)
        if not self.ratio_range[0] > 1:
            raise ValueError(f"noise.ratio_range must be [low, high] with 1 < low <= high, got {ratio_range!r}")
        self.test_ratios = _levels(test_ratios, (20.0, 40.0, 80.0), "noise.test_ratios", _ratio)

    def sample_levels(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Level:
        if not self.blind:
            return {"ratio": self.ratio}
        return {"ratio": _log_uniform(*self.ratio_range, batch, generator, device)}

    @property
    def test_levels(self) -> list[Level]:
        return [{"ratio": r} for r in self.test_ratios]

    @property
    def val_level(self) -> Level:
        return {"ratio": self.ratio}

    @property
    def training_levels(self) -> list[Level]:
        return [{"ratio": r} for r in self.ratio_range] if self.blind else [self.val_level]

    def degrade_array(self, image: np.ndarray, level: Level) -> np.ndarray:
        check_image(image, (1, 3))
        ratio = _ratio(level["ratio"], "the ratio level")
        if image.size / ratio < MIN_JPEG2000_BYTES:
            side = math.ceil(math.sqrt(MIN_JPEG2000_BYTES * ratio / image.shape[2]))
            raise ValueError(
                f"a {image.shape[0]}x{image.shape[1]} image is too small for JPEG 2000 at ratio {ratio:g}: "
                f"{image.size / ratio:.0f} bytes, less than the codestream headers need; degrade whole images "
                f"(at least about {side}x{side} at this ratio), then crop")
        buffer = io.BytesIO()
        _pil_image(image).save(buffer, format="JPEG2000", no_jp2=True, irreversible=True, mct=int(image.shape[2] == 3),
                               quality_mode="rates", quality_layers=[ratio])
        with Image.open(buffer) as decoded:
            return _as_float(decoded, image.shape[2])

    def extra_repr(self) -> str:
        kind = f"blind, ratio log-uniform in {list(self.ratio_range)}" if self.blind else f"ratio={self.ratio:g}"
        return f"{kind}, test_ratios={self.test_ratios}"
