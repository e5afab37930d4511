"""Denoise images with a trained network: tiled inference with bounded memory.

:func:`denoise` runs a network over a numpy image of any size in overlapping tiles and returns the same dtype.

Tiling is exact, not blended: each tile's *window* extends the tile's *core* by the network's receptive-field
radius on every side that is not an image border, so every output pixel of a core sees exactly the input pixels
it sees in a whole-image pass (and the image borders get the same zero padding). Tiled and whole-image outputs
differ only by floating-point reordering: no seams, no blending weights.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

NOISE_KINDS = ("gaussian", "poisson", "poisson_gaussian", "jpeg", "jpeg2000", "heif")
# degradation class name (lower case) -> the kind of input a model restores, for the codecs
CODEC_KINDS = {"jpegcompression": "jpeg", "jpeg2000compression": "jpeg2000", "heifcompression": "heif",
               "downscale": "downscale"}

# Peak activation memory of one forward pass, in units of (max feature channels x dtype bytes) per input pixel.
# Measured with ru_maxrss on 512x512 fp32 channels_last inputs: DnCNN-17 and DN-ResNet-13 2.1, DS-DN-ResNet 2.7,
# UDnCNN 5.6, DUDnCNN 6.2 (the U-nets keep their skip tensors alive). 8 leaves a margin for the allocator.
ACTIVATION_COPIES = 8
DEFAULT_MEMORY_MB = 512
MAX_WINDOW = 1024  # larger windows gain nothing on the overlap and only make a batch coarser


class NoiseMismatchError(ValueError):
    """The declared noise of the input is not the noise the model was trained on."""


class NoiseLevelWarning(UserWarning):
    """A declared noise level the model cannot use (non-blind model) or was not trained for."""


# ---------------------------------------------------------------- the declared noise against the trained noise
def noise_kind(config: dict[str, Any] | None) -> str | None:
    """``gaussian`` / ``poisson`` / ``poisson_gaussian`` / ``jpeg`` / ``jpeg2000`` / ``heif`` / ``downscale`` from a
    noise ``_target_`` config (class name), else None."""
    if not config or "_target_" not in config:
        return None
    name = str(config["_target_"]).rsplit(".", 1)[-1].lower().replace("_", "")
    if name in CODEC_KINDS:
        return CODEC_KINDS[name]
    if "poisson" in name:
        return "poisson_gaussian" if "gaussian" in name else "poisson"
    return "gaussian" if "gaussian" in name else None


def _level_messages(model_name: str, config: dict[str, Any], key: str, value: float) -> list[str]:
    """Why a declared level ``key=value`` (sigma or peak) does not reach the network, if it does not."""
    flag = f"{key} {value:g}"
    if key not in config:
        return [f"{flag} ignored: model {model_name} was trained without a {key} (noise {noise_kind(config)})"]
    if not config.get("blind", False):
        trained = float(config[key])
        if not math.isclose(value, trained):
            return [f"{flag} ignored: model {model_name} is non-blind, trained at {key} {trained:g}, and takes no "
                    f"noise level as input; expect poorer results on other levels (use a blind model or one "
                    f"trained at {key} {value:g})"]
        return []
    low, high = (float(v) for v in config.get(f"{key}_range", (value, value)))
    if not low <= value <= high:
        return [f"{flag} is outside the range [{low:g}, {high:g}] blind model {model_name} was trained on; "
                "expect poorer results"]
    return []


def check_noise(model: nn.Module, noise: str | None = None, sigma: float | None = None,
                peak: float | None = None) -> list[str]:
    """Compare the declared noise of the input with the noise ``model`` was trained on.

    The networks take only the noisy image: the declared levels never change the output. A different noise
    kind raises :class:`NoiseMismatchError`; a level a non-blind model was not trained at, or outside a blind
    model's training range, gives a message (returned, for the caller to show).
    """
    for key, value in (("sigma", sigma), ("peak", peak)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"{key} must be a number, got {type(value).__name__} {value!r}")
    if noise is not None and noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if sigma is not None and sigma < 0:
        raise ValueError(f"sigma must be >= 0 (0-255 scale), got {sigma:g}")
    if peak is not None and peak <= 0:
        raise ValueError(f"peak must be > 0, got {peak:g}")
    config = getattr(model, "trained_noise", None)
    name = getattr(model, "model_name", type(model).__name__)
    if config is None:
        declared = noise is not None or sigma is not None or peak is not None
        return [f"model {name} records no training noise: the declared noise is not checked"] if declared else []
    trained_kind = noise_kind(config)
    if noise is not None and trained_kind is not None and noise != trained_kind:
        raise NoiseMismatchError(f"model {name} was trained on {trained_kind} noise but the input is declared "
                                 f"{noise}: use a model trained on {noise} noise (dnl-train noise={noise}) or drop "
                                 "the noise option")
    messages = []
    for key, value in (("sigma", sigma), ("peak", peak)):
        if value is not None:
            messages += _level_messages(name, config, key, float(value))
    return messages


# ---------------------------------------------------------------- receptive field and tiles
def input_channels(network: nn.Module) -> int:
    """Image channels a network takes: those of its first convolution."""
    return next(m for m in network.modules() if isinstance(m, nn.Conv2d)).in_channels


def tile_multiple(network: nn.Module) -> int:
    """Tile origins must be multiples of this for exact tiling: a network's ``tile_multiple`` (a pooled U-net
    states 2^poolings), else 1."""
    return int(getattr(network, "tile_multiple", 1))


def receptive_radius(network: nn.Module) -> int:
    """An upper bound on how far (pixels) an output pixel sees into the input, derived from the layers.

    A network may state it as a ``receptive_radius`` attribute (the U-nets do: UDnCNN-8 19 with its pooling-cell
    alignment, DUDnCNN-8 16). Otherwise: the sum over its convolutions of ``dilation * (kernel - 1) / 2``, exact for
    chains and residual blocks (DnCNN-17 gives 17, DN-ResNet with ``b`` ResBlocks 4 + 2 + 2b + 2).
    """
    stated = getattr(network, "receptive_radius", None)
    if stated is not None:
        return int(stated)
    return sum(max(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size, strict=True))
               for module in network.modules() if isinstance(module, nn.Conv2d))


@dataclass(frozen=True)
class Tile:
    """One tile: ``core`` (rows, cols) is written to the output; ``window`` (rows, cols) is fed to the network."""

    core: tuple[slice, slice]
    window: tuple[slice, slice]

    @property
    def window_shape(self) -> tuple[int, int]:
        return self.window[0].stop - self.window[0].start, self.window[1].stop - self.window[1].start

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """The core, in the window's coordinates."""
        return tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(self.core, self.window, strict=True))


def _axis(length: int, core: int, margin: int) -> list[tuple[slice, slice]]:
    """(core, window) intervals along one axis: cores of ``core`` pixels, windows ``margin`` wider, clipped."""
    return [(slice(start, min(start + core, length)), slice(max(0, start - margin), min(length, start + core + margin)))
            for start in range(0, length, core)]


def plan_tiles(height: int, width: int, core: int, margin: int) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` image with ``core`` x ``core`` cores and ``margin`` overlap."""
    return [Tile((rows, cols), (row_window, col_window))
            for rows, row_window in _axis(height, core, margin) for cols, col_window in _axis(width, core, margin)]


def bytes_per_pixel(network: nn.Module) -> int:
    """Estimated peak activation bytes per input pixel of one forward pass (see ``ACTIVATION_COPIES``)."""
    channels = max((m.out_channels for m in network.modules() if isinstance(m, nn.Conv2d)), default=1)
    return ACTIVATION_COPIES * channels * _parameter(network).element_size()


def _parameter(network: nn.Module) -> torch.Tensor:
    try:
        return next(network.parameters())
    except StopIteration:
        raise ValueError(f"{type(network).__name__} has no parameters: not a denoising network") from None


def choose_tiling(network: nn.Module, height: int, width: int, tile_size: int | None = None,
                  memory_mb: float = DEFAULT_MEMORY_MB, samples_per_window: int = 1) -> tuple[int, int, int]:
    """(core size, margin, windows per batch) keeping one batch's activations within ``memory_mb``.

    ``tile_size``: the core size; by default the largest window that fits the budget (at most ``MAX_WINDOW``).
    The margin is the receptive radius rounded up to :func:`tile_multiple`, and so is the core size.
    ``samples_per_window``: network inputs per window (3 when a grey model denoises an RGB image).
    """
    multiple = tile_multiple(network)
    margin = -(-receptive_radius(network) // multiple) * multiple
    budget_pixels = int(memory_mb * 2**20 / bytes_per_pixel(network) / samples_per_window)
    if tile_size is None:
        side = min(MAX_WINDOW, math.isqrt(budget_pixels))
        if side - 2 * margin < max(16, margin):
            raise ValueError(f"a memory budget of {memory_mb:g} MB gives {side}-pixel windows, too small for a "
                             f"receptive radius of {margin} pixels; raise the budget")
        tile_size = min(side - 2 * margin, max(height, width))
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    core = -(-tile_size // multiple) * multiple
    window_pixels = min(core + 2 * margin, height) * min(core + 2 * margin, width)
    return core, margin, max(1, budget_pixels // window_pixels)


# ---------------------------------------------------------------- denoise
INPUT_RANGES = {"0-1": 1.0, "0-255": 255.0}
# Float inputs may overshoot their range by this fraction of it on either side: the noise of an unclipped noisy
# image. Checked on the 0.1% and 99.9% quantiles, so a few extreme noise samples never count: 0.75 is 3.5 sigma at
# sigma 55 (0-255 scale), the top level of DnCNN-B. Further out the range is wrong (0-255, -1..1) and it is an error.
RANGE_MARGIN = 0.75
RANGE_QUANTILES = (0.001, 0.999)


def _scale_of(dtype: np.dtype, input_range: str = "0-1") -> float:
    """Full-scale value of an image dtype: 255 (uint8), 65535 (uint16), 1 or 255 (float, per ``input_range``)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return INPUT_RANGES[input_range]
    raise TypeError(f"image dtype must be uint8, uint16 or float (values in [0, 1]), got {dtype}")


def _check_image(image: Any, input_range: str) -> float:
    """Refuse what :func:`denoise` would get silently wrong; returns the full-scale value of ``image``."""
    if not isinstance(image, np.ndarray):
        hint = ("convert it with tensor.cpu().numpy() (and permute (C, H, W) to (H, W, C))"
                if isinstance(image, torch.Tensor) else "convert it with np.asarray(image, dtype=np.float32)")
        raise TypeError(f"image must be a numpy array (H, W) or (H, W, C), got {type(image).__name__}: {hint}")
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {sorted(INPUT_RANGES)}, got {input_range!r}")
    scale = _scale_of(image.dtype, input_range)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape}): nothing to denoise")
    if np.issubdtype(image.dtype, np.floating):
        colour = image[:, :, :-1] if image.ndim == 3 and image.shape[2] in (2, 4) else image
        finite = np.isfinite(colour)
        if not finite.all():
            where = tuple(int(i) for i in np.argwhere(~finite)[0][:2])
            raise ValueError(f"image has {int(finite.size - finite.sum())} NaN or infinite value(s) (first at "
                             f"row, column {where}); the network would spread each over its receptive field: "
                             "replace them first (e.g. np.nan_to_num)")
        step = max(1, math.isqrt(colour.shape[0] * colour.shape[1] // 2**20))  # quantiles of at most ~1M pixels
        low, high = (float(q) for q in np.quantile(colour[::step, ::step], RANGE_QUANTILES))
        margin = RANGE_MARGIN * scale
        if low < -margin or high > scale + margin:
            looks_255 = input_range == "0-1" and high > 1.0 + RANGE_MARGIN
            fix = ("the values look like the 0-255 scale: pass input_range='0-255' (dnl-denoise --input-range 0-255)"
                   if looks_255 else f"rescale the image to {input_range} first")
            raise ValueError(f"float image values span [{float(colour.min()):g}, {float(colour.max()):g}] (99.8% "
                             f"within [{low:g}, {high:g}]), outside the input range {input_range} (allowed overshoot "
                             f"{margin:g} on either side, for noise); {fix}")
    return scale


def _batches(tiles: list[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Tiles grouped by window shape (so they stack) in chunks of ``batch_size``."""
    groups: dict[tuple[int, int], list[Tile]] = defaultdict(list)
    for tile in tiles:
        groups[tile.window_shape].append(tile)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def denoise(image: np.ndarray, model: nn.Module, sigma: float | None = None, noise: str | None = None,
            peak: float | None = None, tile_size: int | None = None, memory_mb: float = DEFAULT_MEMORY_MB,
            clip: bool = True, progress: Callable[[int, int], None] | None = None,
            input_range: str = "0-1") -> np.ndarray:
    """Denoise one image with ``model``; returns an array of the same shape and dtype.

    Args:
        image: (H, W) or (H, W, C) numpy array, uint8 (0-255), uint16 (0-65535) or float (in [0, 1], or
            [0, 255] with ``input_range="0-255"``). With C = 2 or 4 the last channel is alpha and is passed through.
            Float colour values must be finite, and their 0.1% / 99.9% quantiles within the range widened by
            ``RANGE_MARGIN`` of it on each side (the overshoot of unclipped noise); otherwise, and for empty images,
            a ``ValueError`` says what was found and the fix. Not a numpy array: ``TypeError``. A grey model (1 input
            channel) denoises each colour channel separately; a colour model (3 input channels) takes RGB directly.
        model: a network in eval mode (see :func:`load_model`); it runs in its own dtype and device.
        sigma, noise, peak: the noise of the input as declared by the caller, checked by :func:`check_noise`
            (a :class:`NoiseLevelWarning` when the model cannot use the level). They do not change the output.
        tile_size: tile core size in pixels; by default derived from ``memory_mb``.
        memory_mb: budget for the network's activations of one batch of tiles (MB).
        clip: clip float outputs to the input range (integer outputs are always clipped and rounded).
        progress: called as ``progress(tiles_done, tiles_total)`` after each batch of tiles.
        input_range: ``"0-1"`` (default) or ``"0-255"``: the scale of a float image (output on the same scale).
    """
    scale = _check_image(image, input_range)
    if model.training:
        raise ValueError("model is in training mode (batch norm would use tile statistics): call model.eval()")
    for message in check_noise(model, noise, sigma, peak):
        warnings.warn(message, NoiseLevelWarning, stacklevel=2)
    planes = image if image.ndim == 3 else image[:, :, None]
    alpha = planes.shape[2] in (2, 4)
    colour = planes[:, :, :-1] if alpha else planes
    parameter = _parameter(model)
    in_channels = input_channels(model)
    if in_channels not in (1, colour.shape[2]):
        raise ValueError(f"a model with {in_channels} input channels cannot denoise an image with "
                         f"{colour.shape[2]} colour channel(s): use a grey model or an RGB image")
    height, width = colour.shape[:2]
    samples = colour.shape[2] // in_channels  # network inputs per window: the colour planes for a grey model
    core, margin, batch_size = choose_tiling(model, height, width, tile_size, memory_mb, samples)

    output = np.empty_like(planes)
    if alpha:
        output[:, :, -1] = planes[:, :, -1]
    tiles = plan_tiles(height, width, core, margin)
    done = 0
    with torch.inference_mode():
        for batch in _batches(tiles, batch_size):
            windows = np.stack([colour[tile.window] for tile in batch])            # (B, h, w, C)
            inputs = torch.from_numpy(windows).to(parameter.device, torch.float32).div_(scale)
            inputs = inputs.permute(0, 3, 1, 2).reshape(-1, in_channels, *windows.shape[1:3])
            inputs = inputs.to(parameter.dtype).contiguous(memory_format=torch.channels_last)
            result = model(inputs).float().reshape(len(batch), -1, *windows.shape[1:3]).permute(0, 2, 3, 1)
            result = result.cpu().numpy()
            for tile, tile_result in zip(batch, result, strict=True):
                output[tile.core][:, :, :colour.shape[2]] = _to_dtype(tile_result[tile.core_in_window], image.dtype,
                                                                      scale, clip)
            done += len(batch)
            if progress is not None:
                progress(done, len(tiles))
    return output if image.ndim == 3 else output[:, :, 0]


def _to_dtype(values: np.ndarray, dtype: np.dtype, scale: float, clip: bool) -> np.ndarray:
    """Float values in [0, 1] -> ``dtype`` on the input's scale: integers are clipped, scaled and rounded."""
    if np.issubdtype(dtype, np.integer):
        return np.rint(np.clip(values, 0.0, 1.0) * scale).astype(dtype)
    return ((np.clip(values, 0.0, 1.0) if clip else values) * scale).astype(dtype)
