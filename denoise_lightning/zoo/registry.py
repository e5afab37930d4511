"""Models by name or path: the shipped model zoo, checkpoints, the weights format, published DnCNN ``.mat`` files.

:func:`load_model` (re-exported as ``denoise_lightning.load_model``) resolves a checkpoint path, a weights
``.json`` / ``.safetensors`` file, a MatConvNet ``.mat`` file, or a model name. Names come from two places
(:func:`available_models`):

- the *model zoo*: networks trained by this project and shipped inside the package, in :data:`ZOO_DIR`
  (``denoise_lightning/zoo/models/<name>.safetensors`` + ``<name>.json``, with a ``<name>.md`` model card each):
  ``dn-resnet13-sigma15`` / ``-sigma25`` / ``-sigma50`` (Gaussian, non-blind), ``dn-resnet13-blind`` (Gaussian, blind;
  :data:`DEFAULT_MODEL`), ... (:func:`zoo_models` lists what this installation ships). Always available, offline.
- models *installed* in the weights folder (:func:`~denoise_lightning.zoo.weights.weights_dir`: ``$DNL_WEIGHTS_DIR``,
  else ``~/.cache/denoise-lightning/weights``): the published DnCNN weights, which ``make data`` fetches once
  (checksummed) and :func:`install_published` converts, and any model saved there with
  :func:`~denoise_lightning.zoo.weights.save_weights`.

A name never downloads anything and needs neither h5py nor Hydra. :func:`nearest_gaussian_model` and
:func:`estimate_noise_sigma` pick a non-blind zoo model for an image (``dnl-denoise --model auto``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from denoise_lightning.zoo.weights import (
    WeightsError,
    read_metadata,
    read_weights,
    save_weights,
    sha256_of,
    weights_dir,
)

PAPER = ("K. Zhang, W. Zuo, Y. Chen, D. Meng, L. Zhang, \"Beyond a Gaussian Denoiser: Residual Learning of Deep CNN "
         "for Image Denoising\", IEEE Transactions on Image Processing 26(7):3142-3155, 2017")
FETCH_COMMAND = "make data"  # = python -m denoise_lightning.datasets.download (data sets + dncnn-weights)
FETCH_WEIGHTS_COMMAND = "python -m denoise_lightning.datasets.download --sets dncnn-weights"
# The model zoo: weights trained by this project, shipped inside the package (pyproject.toml package-data).
ZOO_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "dn-resnet13-blind"  # Gaussian, blind: dnl-denoise's model when none is given
GAUSSIAN_NOISE_CLASS = "GaussianNoise"  # the class name of the ``_target_`` of a Gaussian noise config
MIN_ESTIMATE_SIZE = 16  # pixels per side below which estimate_noise_sigma refuses an image


@dataclass(frozen=True)
class PublishedModel:
    """A published DnCNN model: its release file (as named under ``<data root>/weights/dncnn``, data set
    ``dncnn-weights`` of ``make data``) and the noise it was trained on (``sigma`` on the 0-255 scale, None: blind)."""

    file: str
    description: str
    sigma: float | None

    def noise(self) -> dict[str, Any]:
        from denoise_lightning.zoo.import_dncnn import noise_config

        return noise_config(sigma=self.sigma, blind=self.sigma is None)


PUBLISHED_MODELS: dict[str, PublishedModel] = {
    "dncnn-s-sigma15": PublishedModel("dncnn_s15.mat", "DnCNN-S, grey, non-blind, sigma 15", 15.0),
    "dncnn-s-sigma25": PublishedModel("dncnn_s25.mat", "DnCNN-S, grey, non-blind, sigma 25", 25.0),
    "dncnn-s-sigma25-bnorm": PublishedModel(
        "dncnn_s25_bnorm.mat", "DnCNN-S, grey, sigma 25, batch norm not merged (for fine-tuning)", 25.0),
    "dncnn-s-sigma50": PublishedModel("dncnn_s50.mat", "DnCNN-S, grey, non-blind, sigma 50", 50.0),
    "dncnn-b": PublishedModel("dncnn_b_gray.mat", "DnCNN-B, grey, blind (trained on sigma 0-55)", None),
    "dncnn-3": PublishedModel(
        "dncnn3.mat", "DnCNN-3, grey, blind denoising (sigma 0-55), super-resolution and JPEG deblocking", None),
}


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that resolves to nothing; the message lists the names available."""


def _named_json_files(folder: Path) -> dict[str, Path]:
    """``<name>.json`` files of ``folder`` (hidden files skipped), name -> path, sorted; empty if no such folder."""
    if not folder.is_dir():
        return {}
    return dict(sorted((path.stem, path) for path in folder.glob("*.json") if not path.name.startswith(".")))


def zoo_models() -> dict[str, Path]:
    """The models shipped in the package (:data:`ZOO_DIR`): name -> its ``.json``, sorted by name; empty when this
    installation ships none."""
    return _named_json_files(ZOO_DIR)


def available_models() -> dict[str, Path]:
    """Names usable with :func:`load_model` -> their ``.json``: the shipped zoo models (:func:`zoo_models`) and the
    models installed in the weights folder (:func:`weights_dir`), sorted by name. A shipped name wins over an
    installed file of the same name."""
    return dict(sorted({**_named_json_files(weights_dir()), **zoo_models()}.items()))


def gaussian_zoo_models() -> dict[str, float]:
    """The shipped models trained on non-blind Gaussian noise: name -> trained sigma (0-255 scale), sorted by sigma.

    Read from each JSON's ``noise``: a ``_target_`` whose class is ``GaussianNoise``, ``blind`` false, a ``sigma``.
    A JSON that is not a weights description raises :class:`WeightsError` naming it.
    """
    levels = {}
    for name, json_path in zoo_models().items():
        noise = read_metadata(json_path).get("noise") or {}
        target = str(noise.get("_target_", "")).rsplit(".", 1)[-1]
        if target == GAUSSIAN_NOISE_CLASS and not noise.get("blind", False) and noise.get("sigma") is not None:
            levels[name] = float(noise["sigma"])
    return dict(sorted(levels.items(), key=lambda item: (item[1], item[0])))


def nearest_gaussian_model(sigma: float, levels: Mapping[str, float] | None = None) -> str:
    """The shipped non-blind Gaussian model whose trained sigma is nearest to ``sigma`` (0-255 scale): on a tie the
    lower trained sigma, and of models trained at the same sigma the first by name (``dn-resnet13-sigma25`` before
    ``ds-dn-resnet-sigma25``). :class:`ModelNotFoundError` when this installation ships none; ``ValueError`` for a
    sigma that is negative, NaN or infinite. ``levels``: :func:`gaussian_zoo_models` already read (default: read
    now), so a caller choosing for many images reads the JSON files once."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise TypeError(f"sigma must be a number (0-255 scale), got {type(sigma).__name__} {sigma!r}")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (0-255 scale), got {sigma!r}")
    levels = gaussian_zoo_models() if levels is None else levels
    if not levels:
        shipped = ", ".join(zoo_models()) or "none"
        raise ModelNotFoundError(f"no non-blind Gaussian model is shipped in {ZOO_DIR} (shipped: {shipped}), so "
                                 "none can be chosen by noise level: reinstall denoise-lightning (its wheel ships "
                                 "dn-resnet13-sigma15/25/50), or name a model yourself")
    return min(levels, key=lambda name: (abs(levels[name] - float(sigma)), levels[name]))


def estimate_noise_sigma(pixels: np.ndarray) -> float:
    """The standard deviation of the Gaussian noise in an image, on the 0-255 scale.

    ``pixels``: (H, W) or (H, W, C) with C in 1..4, float in [0, 1], or uint8 / uint16 (divided by 255 / 65535), as
    :func:`~denoise_lightning.inference.images.read_image` gives them. With C = 2 or 4 the last channel is alpha
    and is left out. The estimator is scikit-image's ``estimate_sigma`` (the median absolute deviation of the finest
    diagonal wavelet coefficients, D. L. Donoho and I. M. Johnstone, Biometrika 81(3):425-455, 1994), averaged over
    the colour channels. Image texture adds to the estimate and clipping at 0 and 1 removes from it. Measured on the
    68 BSD68 images, one noise draw each: unclipped, the estimate minus the truth spans -0.1..+5.4 at sigma 15 (mean
    +1.1) and -1.0..+2.3 at sigma 50; saved as 8-bit PNG (clipped), -3.9..+5.1 at sigma 15 and -20..-0.6 at sigma 50
    (mean -5.0); the nearest of 15 / 25 / 50 is still the true level for 66-67 of the 68 images at each level.
    """
    from skimage.restoration import estimate_sigma

    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy array (H, W) or (H, W, C), got {type(pixels).__name__}")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"pixels must be (H, W) or (H, W, C) with C in 1..4, got shape {pixels.shape}")
    if min(pixels.shape[:2]) < MIN_ESTIMATE_SIZE:
        raise ValueError(f"a {pixels.shape[0]}x{pixels.shape[1]} image is too small to estimate its noise level "
                         f"(at least {MIN_ESTIMATE_SIZE}x{MIN_ESTIMATE_SIZE} pixels): state the level instead")
    if pixels.dtype in (np.uint8, np.uint16):
        colour = pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max)
    elif np.issubdtype(pixels.dtype, np.floating):
        colour = pixels
    else:
        raise TypeError(f"pixels must be float (in [0, 1]), uint8 or uint16, got {pixels.dtype}")
    colour = colour if colour.ndim == 3 else colour[:, :, None]
    if colour.shape[2] in (2, 4):
        colour = colour[:, :, :-1]  # alpha
    if not np.isfinite(colour).all():
        raise ValueError("the image has NaN or infinite values; its noise level cannot be estimated: replace them "
                         "first (e.g. np.nan_to_num)")
    return float(estimate_sigma(colour, average_sigmas=True, channel_axis=-1)) * 255.0


def install_published(mat_dir: str | os.PathLike, directory: str | os.PathLike | None = None,
                      names: Iterable[str] | None = None,
                      sources: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Convert published DnCNN ``.mat`` files of ``mat_dir`` into the weights format, once; returns the names
    converted (an empty list: all were already in place).

    Args:
        mat_dir: folder holding the release files under the names of :data:`PUBLISHED_MODELS` (``dncnn_s25.mat``).
        directory: the weights folder (default :func:`weights_dir`).
        names: the models to convert (default: all published ones).
        sources: per release file name, provenance to record (``source_file`` in the upstream repository,
            ``archive`` URL); the file's sha256 and the paper are always recorded.

    A model whose JSON already records the sha256 of its ``.mat`` file, and whose tensors verify, is left alone.
    Reading ``.mat`` files needs h5py; loading the result does not.
    """
    from denoise_lightning.zoo.import_dncnn import dncnn_config, read_matconvnet_dncnn

    mat_dir = Path(mat_dir)
    directory = Path(directory) if directory is not None else weights_dir()
    names = list(PUBLISHED_MODELS) if names is None else list(names)
    if unknown := [name for name in names if name not in PUBLISHED_MODELS]:
        raise ModelNotFoundError(f"not published model name(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(PUBLISHED_MODELS)}")
    converted = []
    for name in names:
        published = PUBLISHED_MODELS[name]
        source = mat_dir / published.file
        if not source.is_file():
            raise ModelNotFoundError(f"{name}: release file {source} not found; fetch it with {FETCH_WEIGHTS_COMMAND}")
        digest = sha256_of(source)
        if _installed_from(directory / f"{name}.json", digest):
            continue
        network = read_matconvnet_dncnn(source)
        provenance = {"source_file": published.file, **dict((sources or {}).get(published.file, {})),
                      "source_sha256": digest, "paper": PAPER, "description": published.description,
                      "converted_by": "denoise_lightning.zoo.registry.install_published"}
        save_weights(network, dncnn_config(network), directory, name, noise=published.noise(), provenance=provenance)
        converted.append(name)
    return converted


def _installed_from(json_path: Path, source_sha256: str) -> bool:
    """True when ``json_path`` describes tensors converted from the file with ``source_sha256``, and they verify."""
    if not json_path.is_file():
        return False
    try:
        metadata = read_metadata(json_path)
    except WeightsError:
        return False
    tensors = json_path.parent / str(metadata.get("tensors", {}).get("file", ""))
    return (metadata.get("provenance", {}).get("source_sha256") == source_sha256 and tensors.is_file()
            and sha256_of(tensors) == metadata["tensors"].get("sha256"))


def _unknown_name_message(name: str) -> str:
    """What to do about a name that is not available: the names known (shipped, installed or not), how to get them."""
    installed = _named_json_files(weights_dir())
    shipped = zoo_models()
    folder = weights_dir()
    if name in PUBLISHED_MODELS:
        return (f"{name!r} is a published model ({PUBLISHED_MODELS[name].description}) but is not installed in "
                f"{folder}. Fetch and convert the published weights once with `{FETCH_COMMAND}` (only the weights: "
                f"`{FETCH_WEIGHTS_COMMAND}`); with the .mat files already in DIR/weights/dncnn: "
                f"`{FETCH_WEIGHTS_COMMAND} --root DIR`.")
    if name == DEFAULT_MODEL:
        return (f"the default model {name!r} is not shipped in this installation (no {ZOO_DIR / (name + '.json')}); "
                "reinstall denoise-lightning from a wheel that ships the model zoo, or name another model "
                f"(shipped: {', '.join(shipped) or 'none'}; installed: {', '.join(installed) or 'none'})")
    published = ", ".join(f"{n} ({'installed' if n in installed else 'not installed'})" for n in PUBLISHED_MODELS)
    others = [n for n in installed if n not in PUBLISHED_MODELS and n not in shipped]
    return (f"no model file or model name {name!r}. Give a checkpoint (.ckpt), a weights .json, a DnCNN .mat file, "
            f"or one of the available names: shipped: {', '.join(shipped) or 'none'}; published: {published}"
            + (f"; also installed: {', '.join(others)}" if others else "")
            + f". Shipped names are read from {ZOO_DIR}, installed ones from {folder} ($DNL_WEIGHTS_DIR); "
            f"`{FETCH_COMMAND}` fetches and converts the published ones.")


def _load_matconvnet(path: Path) -> tuple[nn.Module, dict | None]:
    """A published DnCNN ``.mat`` file -> (network, noise config from its name)."""
    try:
        from denoise_lightning.zoo.import_dncnn import noise_from_file_name, read_matconvnet_dncnn
        network = read_matconvnet_dncnn(path)
    except ImportError as error:  # h5py reads MATLAB v7.3 files
        raise ModelNotFoundError(f"reading {path} needs h5py ({error}); install it with `pip install h5py`, or "
                                 f"use the converted published weights by name (`{FETCH_COMMAND}` converts them "
                                 "once, on a machine that has h5py)") from error
    return network, noise_from_file_name(path)


def load_model(name_or_path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """A denoising network in eval mode and channels_last, from a checkpoint, a weights file, a ``.mat`` file or a
    model name.

    ``name_or_path``: a ``DenoiseModule`` checkpoint (``.ckpt``, read with ``weights_only=True``), a weights
    ``.json`` / ``.safetensors`` pair (:mod:`~denoise_lightning.zoo.weights`), a published DnCNN MatConvNet file
    (needs h5py), or a name from :func:`available_models` (a shipped zoo model such as ``dn-resnet13-blind``, or an
    installed one such as ``dncnn-s-sigma25``: read from the weights format, with neither h5py nor Hydra). Nothing is
    downloaded. The network maps a noisy float tensor (N, C, H, W) in [0, 1] to the denoised tensor. Two plain
    attributes are attached: ``trained_noise`` (the ``_target_`` config of the noise it was trained on, or None) and
    ``model_name``.
    """
    path = Path(name_or_path)
    if path.is_file():
        name = path.stem
        if path.suffix.lower() == ".mat":
            network, noise = _load_matconvnet(path)
        elif path.suffix.lower() in (".json", ".safetensors"):
            weights = read_weights(path)
            network, noise, name = weights.network, weights.noise, weights.metadata.get("name") or name
        else:
            from denoise_lightning.zoo.checkpoint import network_from_checkpoint, read_checkpoint

            checkpoint = read_checkpoint(path, map_location)
            network = network_from_checkpoint(path, map_location, checkpoint=checkpoint)
            noise = checkpoint.get("hyper_parameters", {}).get("noise")
            name = (checkpoint.get("imported") or {}).get("name") or name
    elif (json_path := available_models().get(str(name_or_path))) is not None:
        weights = read_weights(json_path)
        network, noise, name = weights.network, weights.noise, str(name_or_path)
    else:
        raise ModelNotFoundError(_unknown_name_message(str(name_or_path)))
    network = network.to(map_location, memory_format=torch.channels_last).eval()
    network.trained_noise = dict(noise) if noise is not None else None
    network.model_name = name
    return network
