"""``dnl-denoise``: denoise image files and folders with a trained network (a thin layer over
:func:`denoise_lightning.inference.tiling.denoise`).

    dnl-denoise photo.png scans/ -o denoised/                 # the blind Gaussian zoo model, dn-resnet13-blind
    dnl-denoise photo.png scans/ -o denoised/ --model auto    # per image: estimated sigma -> nearest non-blind model
    dnl-denoise photo.png scans/ -o denoised/ --model dncnn-s-sigma25
    dnl-denoise raw16.tif -o out/ --model outputs/run/checkpoints/last.ckpt --noise gaussian --sigma 25

Without ``--model`` the shipped blind Gaussian model (:data:`~denoise_lightning.zoo.registry.DEFAULT_MODEL`) denoises.
``--model auto`` estimates each image's Gaussian noise level on the image as read
(:func:`~denoise_lightning.zoo.registry.estimate_noise_sigma`) and denoises it with the shipped non-blind Gaussian
model trained nearest to it (:func:`~denoise_lightning.zoo.registry.nearest_gaussian_model`); with ``--sigma`` that
level replaces the estimate for every image.

Files keep their format family (PNG, JPEG, TIFF), bit depth (8 or 16) and channels (grey, grey+alpha, RGB, RGBA;
alpha is copied). EXIF and ICC profiles of PNG/JPEG files are copied. 16-bit PNGs go through pypng (Pillow reads
16-bit colour PNGs as 8-bit), TIFFs through tifffile, the rest through Pillow. Outputs are written through a
temporary file (``.dnl-tmp.<pid>@<host>.*``; those left by a killed run are removed by the next run in that folder) and
a create-exclusive link: an existing file (an input, an earlier output, or one another run wrote meanwhile) is never
replaced without ``--overwrite``. Every reader refuses images above ``--max-pixels`` from the header, before decoding
(decompression bombs), and animated / multi-frame files. Float TIFFs are read as 0-1 unless ``--input-range 0-255``;
values far outside the range, NaN and infinities are errors. An output folder inside an input folder is skipped
when recursing. A file that fails is reported by name and the others are still processed; the exit code is 1
when any file failed.
"""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from denoise_lightning.files import remove_stale_temp_files
from denoise_lightning.inference.images import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    ImageFile,
    ImageFileError,
    read_image,
    write_image,
)

AUTO = "auto"  # --model auto: a shipped non-blind Gaussian model per image, by estimated noise level


def collect_jobs(inputs: list[Path], output_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(source, destination) pairs and error lines. A folder contributes its image files (recursively; hidden files
    and an ``output_dir`` inside the folder skipped) under the same relative paths; a file goes to
    ``output_dir / name``."""
    jobs: list[tuple[Path, Path]] = []
    errors: list[str] = []
    output_root = output_dir.resolve()
    for item in inputs:
        if item.is_dir():
            # an output folder inside the input folder holds earlier outputs: never denoise them again
            inner_output = output_root if item.resolve() in output_root.parents else None
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts)
                           and (inner_output is None or inner_output not in p.resolve().parents))
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


def denoise_file(source: Path, destination: Path, model, overwrite: bool, jpeg_quality: int,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, scale: int | None = None, **options) -> str:
    """Read, restore and write one file (``scale``: bicubic upscaling first, for a super-resolution model); returns
    the name of the model used; raises :class:`ImageFileError` naming the file (and its output).

    ``model``: a network, or a function ``(source, image as read) -> network`` that chooses one per image
    (:class:`AutoModel`)."""
    from torch import nn

    from denoise_lightning.inference.tiling import denoise
    from denoise_lightning.inference.upscale import upscale

    if destination.exists() and not overwrite:
        same = destination.resolve() == source.resolve()
        raise ImageFileError(f"{source}: {'this input would be replaced' if same else f'{destination} exists'}; "
                             "pass --overwrite to replace it")
    image = read_image(source, max_pixels)
    try:
        network = model if isinstance(model, nn.Module) else model(source, image)
        if scale is not None:
            if max_pixels and image.pixels.shape[0] * image.pixels.shape[1] * scale**2 > max_pixels:
                raise ValueError(f"upscaled by {scale} it would have more than --max-pixels {max_pixels} pixels; "
                                 "raise --max-pixels or crop it")
            image.pixels = upscale(image.pixels, scale)
        image.pixels = denoise(image.pixels, network, **options)
    except ValueError as error:
        raise ImageFileError(f"{source}: {error}") from error
    try:
        write_image(destination, image, jpeg_quality, overwrite=overwrite)
    except FileExistsError:
        raise ImageFileError(f"{source}: {destination} was created by another process while this one was "
                             "denoising; kept it (pass --overwrite to replace it)") from None
    except OSError as error:  # name the input and the output, not the hidden temporary file
        raise ImageFileError(f"{source}: cannot write {destination}: {error.strerror or error}") from None
    return getattr(network, "model_name", type(network).__name__)


class AutoModel:
    """``--model auto``: per image, the shipped non-blind Gaussian model trained nearest to the image's estimated
    noise level. Each model is loaded once; ``report`` gets one line per image (estimate and choice), ``warn`` the
    messages of :func:`~denoise_lightning.inference.tiling.check_noise` once per model."""

    def __init__(self, device: str, input_range: str, noise: str | None, peak: float | None,
                 report: Callable[[str], None], warn: Callable[[str], None]) -> None:
        self.device, self.input_range, self.noise, self.peak = device, input_range, noise, peak
        self.report, self.warn = report, warn
        self.models: dict = {}
        from denoise_lightning.zoo.registry import gaussian_zoo_models

        self.levels = gaussian_zoo_models()  # the candidates, read once for all images

    def load(self, name: str):
        """The zoo model ``name``, loaded on first use (its noise checked against the declared one, warnings out)."""
        from denoise_lightning.inference.tiling import check_noise
        from denoise_lightning.zoo.registry import load_model

        if name not in self.models:
            self.models[name] = load_model(name, map_location=self.device)
            for message in check_noise(self.models[name], self.noise, None, self.peak):
                self.warn(message)
        return self.models[name]

    def __call__(self, source: Path, image: ImageFile):
        import numpy as np

        from denoise_lightning.inference.tiling import INPUT_RANGES
        from denoise_lightning.zoo.registry import estimate_noise_sigma, nearest_gaussian_model

        pixels = image.pixels
        if np.issubdtype(pixels.dtype, np.floating) and INPUT_RANGES[self.input_range] != 1.0:
            pixels = pixels / INPUT_RANGES[self.input_range]
        sigma = estimate_noise_sigma(pixels)
        name = nearest_gaussian_model(sigma, self.levels)
        self.report(f"{source.name}: estimated sigma {sigma:.1f} -> {name}")
        return self.load(name)


def check_scale(model, scale: int | None) -> list[str]:
    """``ValueError`` when ``--scale`` and the model disagree (an SR model needs a scale, a denoiser takes none);
    a message when the scale is not one the SR model was trained for."""
    from denoise_lightning.inference.upscale import sr_scales

    name = getattr(model, "model_name", type(model).__name__)
    scales = sr_scales(getattr(model, "trained_noise", None))
    if scales is None and scale is not None:
        raise ValueError(f"--scale {scale}: model {name} is not a super-resolution model (train one with "
                         "noise=downscale, e.g. experiment=sr_dn_resnet19); drop --scale to denoise")
    if scales is not None and scale is None:
        raise ValueError(f"model {name} restores bicubic-upscaled images (scales {scales}): pass --scale S")
    if scales is not None and scale not in scales:
        return [f"--scale {scale}: model {name} was trained on scales {scales}; expect poorer results"]
    return []


# ---------------------------------------------------------------- command line
def _int_in(low: int, high: int | None):
    """An argparse type: an integer in low..high (high None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{'' if high is None else high}")
        return value
    return parse


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but wrapping only at spaces: a model name (``dn-resnet13-sigma15``) stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from denoise_lightning.inference.tiling import DEFAULT_MEMORY_MB, INPUT_RANGES, NOISE_KINDS
    from denoise_lightning.zoo.registry import DEFAULT_MODEL, PUBLISHED_MODELS, ZOO_DIR, zoo_models

    shipped = (f" (model cards beside the weights in {ZOO_DIR}): {', '.join(zoo_models())}" if zoo_models()
               else f": none in this installation (no models in {ZOO_DIR})")

    parser = argparse.ArgumentParser(
        prog="dnl-denoise", formatter_class=_HelpFormatter,
        description="Denoise PNG, JPEG and TIFF images (8- or 16-bit, grey or RGB) with a trained network, remove "
                    "compression artifacts with a model trained on them (noise=jpeg, jpeg2000, heif), or enlarge "
                    "them with a super-resolution model (--scale). "
                    "Outputs keep the format, bit depth and channels of their input. Colour: a grey model "
                    "(all published DnCNN weights, and models trained with data.channels=1) denoises each RGB "
                    "channel separately; a colour model (data.channels=3) takes RGB directly. Alpha is copied. "
                    "Large images are processed in overlapping tiles whose result equals the whole-image result.",
        epilog="Noise options describe the input; the networks take only the image, so they are checked against "
               "the noise the model was trained on: a different --noise is an error; a non-blind model ignores "
               "--sigma/--peak (with a warning if they differ from its trained level); a blind model warns when "
               "they are outside its training range. Model names: the model zoo, shipped in the package" + shipped
               + "; the published DnCNN weights, installed by `make data` into $DNL_WEIGHTS_DIR (default "
               "~/.cache/denoise-lightning/weights; never downloaded here): " + ", ".join(PUBLISHED_MODELS)
               + ". --model auto estimates each image's "
               "Gaussian noise level (on the image as read) and picks the shipped non-blind Gaussian model trained "
               "nearest to it; with --sigma it uses that level for every image instead.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL,
                        help="checkpoint (.ckpt), weights .json, DnCNN .mat file, a model name (see below), or "
                             f"'{AUTO}': a non-blind Gaussian zoo model per image by its estimated noise level "
                             "(default %(default)s, the blind Gaussian zoo model)")
    parser.add_argument("--noise", choices=NOISE_KINDS, help="noise of the input (checked against the model's)")
    parser.add_argument("--sigma", type=float, help="Gaussian noise level of the input, 0-255 scale")
    parser.add_argument("--peak", type=float, help="Poisson peak of the input (photons at white)")
    parser.add_argument("--scale", type=_int_in(2, 8),
                        help="super-resolution: enlarge by this factor (MATLAB bicubic), then restore with an SR model "
                             "(one trained with noise=downscale)")
    parser.add_argument("--tile-size", type=int, help="tile size in pixels (default: from --memory-mb)")
    parser.add_argument("--memory-mb", type=float, default=DEFAULT_MEMORY_MB,
                        help="memory budget for the network's activations per batch of tiles (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files, inputs included")
    parser.add_argument("--jpeg-quality", type=_int_in(1, 100), default=95,
                        help="quality of JPEG outputs, 1-100 (default %(default)s; Pillow advises at most 95)")
    parser.add_argument("--max-pixels", type=_int_in(0, None), default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels (width x height, read before decoding: a guard against "
                             "decompression bombs); 0 for no limit (default %(default)s, Pillow's)")
    parser.add_argument("--input-range", choices=INPUT_RANGES, default="0-1",
                        help="value range of float (32-bit TIFF) inputs; outputs keep it (default %(default)s)")
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

    def warn(message: str) -> None:
        console.print(f"[yellow]dnl-denoise: warning:[/yellow] {escape(message)}")

    try:
        if args.model == AUTO:
            model = _auto_model(args, console, warn)
        else:
            model = load_model(args.model, map_location=args.device)
        messages = ([] if isinstance(model, AutoModel)
                    else check_noise(model, args.noise, args.sigma, args.peak) + check_scale(model, args.scale))
    except (FileNotFoundError, CheckpointError, NoiseMismatchError, ValueError) as error:
        console.print(f"[red]dnl-denoise: error:[/red] {escape(str(error))}")
        raise SystemExit(2) from None
    for message in messages:
        warn(message)
    if args.output.exists() and not args.output.is_dir():
        console.print(f"[red]dnl-denoise: error:[/red] -o {escape(str(args.output))} is an existing file; -o takes "
                      "a folder (it is created if missing)")
        raise SystemExit(2)

    jobs, errors = collect_jobs(args.inputs, args.output)
    for error in errors:
        console.print(f"[red]error:[/red] {escape(str(error))}")
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("files", total=len(jobs))
        tiles = progress.add_task("tiles", total=None)
        cleaned: set[Path] = set()
        used: Counter[str] = Counter()  # model name -> files denoised with it
        for source, destination in jobs:
            progress.update(task, description=source.name)
            progress.reset(tiles)
            if destination.parent not in cleaned:  # leftovers of a killed earlier run
                cleaned.add(destination.parent)
                for stale in remove_stale_temp_files(destination.parent):
                    progress.console.print(f"removed {escape(str(stale))}, left by an interrupted run")
            try:
                name = denoise_file(source, destination, model, args.overwrite, args.jpeg_quality, args.max_pixels,
                                    args.scale, input_range=args.input_range, tile_size=args.tile_size,
                                    memory_mb=args.memory_mb,
                                    progress=lambda done, total: progress.update(tiles, completed=done, total=total))
            except (ImageFileError, OSError) as error:
                failed += 1
                progress.console.print(f"[red]error:[/red] {escape(str(error))}")
            else:
                used[name] += 1
            progress.advance(task)
    errors_total = failed + len(errors)
    if isinstance(model, AutoModel):
        models = (", ".join(f"{name} ({count} file{'s' if count != 1 else ''})" for name, count in sorted(used.items()))
                  or f"no model (--model {AUTO} chose none)")
    else:
        models = model.model_name
    print(f"denoised {len(jobs) - failed} of {len(jobs) + len(errors)} input(s) into {args.output} with {models}"
          + (f"; {errors_total} error(s)" if errors_total else ""))
    if errors_total:
        raise SystemExit(1)


def _auto_model(args: argparse.Namespace, console: Console, warn: Callable[[str], None]):
    """``--model auto``: an :class:`AutoModel` choosing per image, or with ``--sigma`` the shipped model nearest to
    it. ``ValueError`` for options it cannot honour (another noise, ``--scale``), ``FileNotFoundError`` when no model
    can be chosen."""
    from denoise_lightning.zoo.registry import load_model, nearest_gaussian_model

    if args.noise not in (None, "gaussian"):
        raise ValueError(f"--model {AUTO} chooses among the Gaussian denoisers of the model zoo, but the input is "
                         f"declared --noise {args.noise}: name a model trained on {args.noise} noise with --model "
                         f"{_zoo_suggestion(args.noise)}")
    if args.scale is not None:
        raise ValueError(f"--model {AUTO} chooses a denoiser, not a super-resolution model: with --scale "
                         f"{args.scale} name a model trained with noise=downscale with --model")
    if args.sigma is not None:
        name = nearest_gaussian_model(args.sigma)
        console.print(f"--model {AUTO}: --sigma {args.sigma:g} given, the noise level is not estimated -> {name}")
        return load_model(name, map_location=args.device)
    nearest_gaussian_model(0.0)  # fails now, not once per file, when no model can be chosen
    return AutoModel(args.device, args.input_range, args.noise, args.peak,
                     report=lambda line: console.print(escape(line)), warn=warn)


def _zoo_suggestion(noise: str) -> str:
    """The shipped models trained on ``noise`` (a kind of :data:`NOISE_KINDS`), as a hint, or how to train one."""
    from denoise_lightning.inference.tiling import noise_kind
    from denoise_lightning.zoo.registry import zoo_models
    from denoise_lightning.zoo.weights import WeightsError, read_metadata

    matching = []
    for name, json_path in zoo_models().items():
        try:
            if noise_kind(read_metadata(json_path).get("noise")) == noise:
                matching.append(name)
        except WeightsError:
            continue
    return f"(shipped: {', '.join(matching)})" if matching else f"(none is shipped; train one with noise={noise})"


if __name__ == "__main__":
    main()
