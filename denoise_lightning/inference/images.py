"""Image files in and out, as ``dnl-denoise`` handles them: PNG, JPEG and TIFF, 8 or 16 bit, grey, grey+alpha, RGB
or RGBA, with their metadata.

16-bit PNGs go through pypng (Pillow reads 16-bit colour PNGs as 8-bit), TIFFs through tifffile, the rest through
Pillow. Every reader refuses images above ``max_pixels`` from the header, before decoding (decompression bombs),
and animated / multi-frame files. :func:`write_image` writes through :func:`denoise_lightning.files.atomic_output`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from denoise_lightning.files import atomic_output

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
PIL_MODES = {"L", "LA", "RGB", "RGBA"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Decompression-bomb guard for every reader (Pillow, pypng, tifffile): width x height from the header, checked before
# any pixel is decoded. Pillow's own default limit (about 89 megapixels, 0.25 GB of 8-bit RGB).
DEFAULT_MAX_PIXELS = 89_478_485


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message names it."""


@dataclass
class ImageFile:
    """Decoded pixels (H, W) or (H, W, C), uint8 / uint16 / float32, and the metadata written back."""

    pixels: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading
def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse an image larger than ``max_pixels`` (None or 0: no limit) from its header, before decoding it."""
    if max_pixels and width * height > max_pixels:
        raise ImageFileError(f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                             f"pixels (a guard against decompression bombs); if you trust this file pass "
                             f"--max-pixels {width * height} (or max_pixels= to read_image)")


def _png_bit_depth(path: Path) -> int:
    """Bit depth from the PNG header (IHDR), 0 if the file is not a PNG."""
    with open(path, "rb") as stream:
        header = stream.read(26)
    return header[24] if header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR" else 0


def _read_png16(path: Path, max_pixels: int | None) -> ImageFile:
    import png

    reader = png.Reader(filename=str(path))
    reader.preamble()  # the header only: size checked before any row is decoded
    _check_pixels(path, reader.width, reader.height, max_pixels)
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    return ImageFile(pixels[:, :, 0] if planes == 1 else pixels)


def _read_tiff(path: Path, max_pixels: int | None) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1:
            raise ImageFileError(f"{path}: multi-page TIFF ({len(tif.pages)} pages); save each page separately")
        page = tif.pages[0]
        _check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
        series = tif.series[0]
        pixels = series.asarray()
        if series.axes == "SYX":
            pixels = np.moveaxis(pixels, 0, -1)
        elif series.axes not in ("YX", "YXS"):
            raise ImageFileError(f"{path}: TIFF with axes {series.axes}; expected a 2-D image (YX or YXS)")
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageFileError(f"{path}: TIFF samples of type {pixels.dtype}; expected uint8, uint16 or float32")
    return ImageFile(pixels)


# Serialises the rare opens that lift Pillow's own (module-global) limit; see _pillow_open.
_PILLOW_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Pillow's global MAX_IMAGE_PIXELS off while opening, under a lock. Only for an image above twice Pillow's limit,
    which Pillow refuses even when the caller raised ``max_pixels``: :func:`_check_pixels` applies that instead."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pillow_open(path: Path) -> Image.Image:
    """``Image.open`` (the header only), leaving Pillow's global limit alone in the common case, so other threads
    opening images meanwhile keep their protection. Pillow refuses an image above twice its limit: only then is it
    opened again with Pillow's limit lifted, for :func:`_check_pixels` to apply the caller's limit to its header.
    (Between once and twice its limit Pillow also warns, ``DecompressionBombWarning``; silencing that would change
    the process-wide warning filters, so the warning is left to show.)"""
    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        with _pillow_limit_off():
            return Image.open(path)


def _open_pillow(path: Path, max_pixels: int | None) -> Image.Image:
    """Open (header only) with the pixel limit and refuse animations: only the first frame would be denoised."""
    image = _pillow_open(path)
    try:
        _check_pixels(path, *image.size, max_pixels)
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image.format != "MPO":  # MPO: a camera JPEG with previews; its first frame is the photo
            raise ImageFileError(f"{path}: animated or multi-frame image ({frames} frames, {image.format}); only "
                                 "single images are denoised: save each frame as its own file")
    except BaseException:
        image.close()
        raise
    return image


def _read_pillow(path: Path, max_pixels: int | None) -> ImageFile:
    with _open_pillow(path, max_pixels) as image:
        metadata = {key: image.info[key] for key in ("exif", "icc_profile", "dpi") if key in image.info}
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode in ("P", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        elif image.mode.startswith("I"):  # 16-bit grey
            pixels = np.asarray(image)
            if pixels.min() < 0 or pixels.max() > 65535:
                raise ImageFileError(f"{path}: {image.mode} values outside 0..65535; expected 8- or 16-bit")
            return ImageFile(pixels.astype(np.uint16), metadata)
        if image.mode not in PIL_MODES:
            raise ImageFileError(f"{path}: unsupported image mode {image.mode}; convert it to grey or RGB first")
        return ImageFile(np.array(image), metadata)


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageFile:
    """Decode a PNG, JPEG or TIFF file; errors are :class:`ImageFileError` naming the file.

    ``max_pixels``: refuse images with more pixels (width x height, read from the header before decoding), whatever
    the reader; None or 0 for no limit. Animated / multi-frame files are refused."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ImageFileError(f"{path}: unsupported file type; accepted: {', '.join(sorted(FORMATS))}")
    try:
        if kind == "TIFF":
            return _read_tiff(path, max_pixels)
        if kind == "PNG" and _png_bit_depth(path) == 16:
            _open_pillow(path, max_pixels).close()  # size and animation (APNG) from the header; pypng ignores both
            return _read_png16(path, max_pixels)
        return _read_pillow(path, max_pixels)
    except ImageFileError:
        raise
    except FileNotFoundError:
        raise ImageFileError(f"{path}: file not found") from None
    except Exception as error:  # Pillow, pypng and tifffile each raise their own types for a corrupt file
        raise ImageFileError(f"{path}: cannot decode as {kind} ({type(error).__name__}: {error})") from error


# ---------------------------------------------------------------- writing
def _write_png16(stream, pixels: np.ndarray) -> None:
    import png

    planes = 1 if pixels.ndim == 2 else pixels.shape[2]
    writer = png.Writer(pixels.shape[1], pixels.shape[0], greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16)
    writer.write(stream, pixels.reshape(pixels.shape[0], -1))


def _write(stream, image: ImageFile, kind: str, jpeg_quality: int) -> None:
    pixels = image.pixels
    if kind == "TIFF":
        import tifffile

        alpha = pixels.ndim == 3 and pixels.shape[2] in (2, 4)
        tifffile.imwrite(stream, pixels, photometric="rgb" if pixels.ndim == 3 and pixels.shape[2] >= 3
                         else "minisblack", extrasamples=("unassalpha",) if alpha else None)
    elif kind == "PNG" and pixels.dtype == np.uint16:
        _write_png16(stream, pixels)
    else:
        options = {"quality": jpeg_quality} if kind == "JPEG" else {}
        Image.fromarray(pixels).save(stream, format=kind, **image.metadata, **options)


def write_image(path: str | os.PathLike, image: ImageFile, jpeg_quality: int = 95, overwrite: bool = True) -> None:
    """Encode ``image`` in the format of ``path``'s suffix, atomically (:func:`atomic_output`).

    ``overwrite=False``: never replace an existing ``path``, even one created by another process while encoding
    (``FileExistsError``)."""
    path = Path(path)
    kind = FORMATS[path.suffix.lower()]
    if kind == "JPEG" and image.pixels.dtype != np.uint8:
        raise ImageFileError(f"{path}: JPEG holds 8-bit images only, got {image.pixels.dtype}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as stream:
        _write(stream, image, kind, jpeg_quality)


# ---------------------------------------------------------------- files
