"""``dnl-denoise``: denoise image files and folders with a trained network (a thin layer over
:func:`denoise_lightning.inference.tiling.denoise`).

    dnl-denoise photo.png scans/ -o denoised/ --model dncnn-s-sigma25
    dnl-denoise raw16.tif -o out/ --model outputs/run/checkpoints/last.ckpt --noise gaussian --sigma 25

Files keep their format family (PNG, JPEG, TIFF), bit depth (8 or 16) and channels (grey, grey+alpha, RGB, RGBA;
alpha is copied). EXIF and ICC profiles of PNG/JPEG files are copied. 16-bit PNGs go through pypng (Pillow reads
16-bit colour PNGs as 8-bit), TIFFs through tifffile, the rest through Pillow. Outputs are written through a
temporary file and a rename; an existing file (an input or an earlier output) is never replaced without
``--overwrite``. A file that fails is reported by name and the others are still processed; the exit code is 1
when any file failed.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from denoise_lightning.files import atomic_output

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
PIL_MODES = {"L", "LA", "RGB", "RGBA"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message names it."""


@dataclass
class ImageFile:
    """Decoded pixels (H, W) or (H, W, C), uint8 / uint16 / float32, and the metadata written back."""

    pixels: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading
def _png_bit_depth(path: Path) -> int:
    """Bit depth from the PNG header (IHDR), 0 if the file is not a PNG."""
    with open(path, "rb") as stream:
        header = stream.read(26)
    return header[24] if header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR" else 0


def _read_png16(path: Path) -> ImageFile:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    return ImageFile(pixels[:, :, 0] if planes == 1 else pixels)


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1:
            raise ImageFileError(f"{path}: multi-page TIFF ({len(tif.pages)} pages); save each page separately")
        series = tif.series[0]
        pixels = series.asarray()
        if series.axes == "SYX":
            pixels = np.moveaxis(pixels, 0, -1)
        elif series.axes not in ("YX", "YXS"):
            raise ImageFileError(f"{path}: TIFF with axes {series.axes}; expected a 2-D image (YX or YXS)")
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageFileError(f"{path}: TIFF samples of type {pixels.dtype}; expected uint8, uint16 or float32")
    return ImageFile(pixels)


def _read_pillow(path: Path) -> ImageFile:
    with Image.open(path) as image:
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


def read_image(path: str | os.PathLike) -> ImageFile:
    """Decode a PNG, JPEG or TIFF file; errors are :class:`ImageFileError` naming the file."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ImageFileError(f"{path}: unsupported file type; accepted: {', '.join(sorted(FORMATS))}")
    try:
        if kind == "TIFF":
            return _read_tiff(path)
        if kind == "PNG" and _png_bit_depth(path) == 16:
            return _read_png16(path)
        return _read_pillow(path)
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


def write_image(path: str | os.PathLike, image: ImageFile, jpeg_quality: int = 95) -> None:
    """Encode ``image`` in the format of ``path``'s suffix, atomically (:func:`atomic_output`)."""
    path = Path(path)
    kind = FORMATS[path.suffix.lower()]
    if kind == "JPEG" and image.pixels.dtype != np.uint8:
        raise ImageFileError(f"{path}: JPEG holds 8-bit images only, got {image.pixels.dtype}")
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        _write(stream, image, kind, jpeg_quality)


# ---------------------------------------------------------------- files
def collect_jobs(inputs: list[Path], output_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(source, destination) pairs and error lines. A folder contributes its image files (recursively, hidden
    files skipped) under the same relative paths; a file goes to ``output_dir / name``."""
    jobs: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not files:
                errors.append(f"{item}: no image files ({', '.join(sorted(FORMATS))}) in this folder")
            jobs += [(path, output_dir / path.relative_to(item)) for path in files]
        elif item.is_file():
            jobs.append((item, output_dir / item.name))
        else:
            errors.append(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    unique = []
    for source, destination in jobs:
        key = destination.resolve()
        if key in seen:
            errors.append(f"{source}: its output {destination} is also the output of {seen[key]}; denoise them "
                          "into separate output folders")
            continue
        seen[key] = source
        unique.append((source, destination))
    return unique, errors


def denoise_file(source: Path, destination: Path, model, overwrite: bool, jpeg_quality: int, **options) -> None:
    """Read, denoise and write one file; raises :class:`ImageFileError` / ``ValueError`` naming it."""
    from denoise_lightning.inference.tiling import denoise

    if destination.exists() and not overwrite:
        same = destination.resolve() == source.resolve()
        raise ImageFileError(f"{source}: {'this input would be replaced' if same else f'{destination} exists'}; "
                             "pass --overwrite to replace it")
    image = read_image(source)
    try:
        image.pixels = denoise(image.pixels, model, **options)
    except ValueError as error:
        raise ImageFileError(f"{source}: {error}") from error
    write_image(destination, image, jpeg_quality)


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from denoise_lightning.inference.tiling import DEFAULT_MEMORY_MB, NOISE_KINDS
    from denoise_lightning.zoo.registry import PUBLISHED_MODELS

    parser = argparse.ArgumentParser(
        prog="dnl-denoise",
        description="Denoise PNG, JPEG and TIFF images (8- or 16-bit, grey or RGB) with a trained network. "
                    "Outputs keep the format, bit depth and channels of their input. Colour: a grey model "
                    "(all published DnCNN weights, and models trained with data.channels=1) denoises each RGB "
                    "channel separately; a colour model (data.channels=3) takes RGB directly. Alpha is copied. "
                    "Large images are processed in overlapping tiles whose result equals the whole-image result.",
        epilog="Noise options describe the input; the networks take only the image, so they are checked against "
               "the noise the model was trained on: a different --noise is an error; a non-blind model ignores "
               "--sigma/--peak (with a warning if they differ from its trained level); a blind model warns when "
               "they are outside its training range. Model names: " + ", ".join(PUBLISHED_MODELS)
               + " (the published DnCNN weights, installed by `make data` into $DNL_WEIGHTS_DIR, default "
               "~/.cache/denoise-lightning/weights; never downloaded here).")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("-m", "--model", required=True, help="checkpoint (.ckpt), DnCNN .mat file, or a model name")
    parser.add_argument("--noise", choices=NOISE_KINDS, help="noise of the input (checked against the model's)")
    parser.add_argument("--sigma", type=float, help="Gaussian noise level of the input, 0-255 scale")
    parser.add_argument("--peak", type=float, help="Poisson peak of the input (photons at white)")
    parser.add_argument("--tile-size", type=int, help="tile size in pixels (default: from --memory-mb)")
    parser.add_argument("--memory-mb", type=float, default=DEFAULT_MEMORY_MB,
                        help="memory budget for the network's activations per batch of tiles (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files, inputs included")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="quality of JPEG outputs (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from denoise_lightning.inference.tiling import NoiseMismatchError, check_noise
    from denoise_lightning.zoo.checkpoint import CheckpointError
    from denoise_lightning.zoo.registry import load_model

    args = build_parser().parse_args(argv)
    # soft_wrap: a message is one line, never hard-wrapped at the terminal width (80 columns when not a tty), so a
    # path in it stays whole and greppable; escape: a "[" in a path is text, not rich markup
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        model = load_model(args.model, map_location=args.device)
        messages = check_noise(model, args.noise, args.sigma, args.peak)
    except (FileNotFoundError, CheckpointError, NoiseMismatchError, ValueError) as error:
        console.print(f"[red]dnl-denoise: error:[/red] {escape(str(error))}")
        raise SystemExit(2) from None
    for message in messages:
        console.print(f"[yellow]dnl-denoise: warning:[/yellow] {escape(message)}")

    jobs, errors = collect_jobs(args.inputs, args.output)
    for error in errors:
        console.print(f"[red]error:[/red] {escape(str(error))}")
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("files", total=len(jobs))
        tiles = progress.add_task("tiles", total=None)
        for source, destination in jobs:
            progress.update(task, description=source.name)
            progress.reset(tiles)
            try:
                denoise_file(source, destination, model, args.overwrite, args.jpeg_quality,
                             tile_size=args.tile_size, memory_mb=args.memory_mb,
                             progress=lambda done, total: progress.update(tiles, completed=done, total=total))
            except (ImageFileError, OSError) as error:
                failed += 1
                progress.console.print(f"[red]error:[/red] {escape(str(error))}")
            progress.advance(task)
    errors_total = failed + len(errors)
    print(f"denoised {len(jobs) - failed} of {len(jobs) + len(errors)} input(s) into {args.output} with "
          f"{model.model_name}" + (f"; {errors_total} error(s)" if errors_total else ""))
    if errors_total:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
