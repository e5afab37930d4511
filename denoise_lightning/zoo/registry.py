"""Models by name or path: checkpoints, the weights format of named models, published DnCNN ``.mat`` files.

:func:`load_model` (re-exported as ``denoise_lightning.load_model``) resolves a checkpoint path, a weights
``.json`` / ``.safetensors`` file, a MatConvNet ``.mat`` file, or the name of a model installed in the weights
folder (:func:`~denoise_lightning.zoo.weights.weights_dir`: ``$DNL_WEIGHTS_DIR``, else
``~/.cache/denoise-lightning/weights``). A name never downloads anything and needs neither h5py nor Hydra: ``make
data`` fetches the published DnCNN ``.mat`` files once (checksummed) and :func:`install_published` converts them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def available_models() -> dict[str, Path]:
    """Names usable with :func:`load_model` -> their ``.json`` in the weights folder (installed names only)."""
    folder = weights_dir()
    if not folder.is_dir():
        return {}
    return dict(sorted((path.stem, path) for path in folder.glob("*.json") if not path.name.startswith(".")))


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
    """What to do about a name that is not installed: the names known, installed or not, and how to get them."""
    installed = available_models()
    folder = weights_dir()
    if name in PUBLISHED_MODELS:
        return (f"{name!r} is a published model ({PUBLISHED_MODELS[name].description}) but is not installed in "
                f"{folder}. Fetch and convert the published weights once with `{FETCH_COMMAND}` (only the weights: "
                f"`{FETCH_WEIGHTS_COMMAND}`); with the .mat files already in DIR/weights/dncnn: "
                f"`{FETCH_WEIGHTS_COMMAND} --root DIR`.")
    published = ", ".join(f"{n} ({'installed' if n in installed else 'not installed'})" for n in PUBLISHED_MODELS)
    others = [n for n in installed if n not in PUBLISHED_MODELS]
    return (f"no model file or installed model name {name!r}. Give a checkpoint (.ckpt), a weights .json, a DnCNN "
            f".mat file, or one of the available names: {published}"
            + (f"; also installed: {', '.join(others)}" if others else "")
            + f". Names are read from {folder} ($DNL_WEIGHTS_DIR); `{FETCH_COMMAND}` fetches and converts the "
            "published ones.")


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
    (needs h5py), or a name from :func:`available_models` (``dncnn-s-sigma25``, ``dncnn-b``, ...: read from the
    weights format, with neither h5py nor Hydra). Nothing is downloaded. The network maps a noisy float tensor
    (N, C, H, W) in [0, 1] to the denoised tensor. Two plain attributes are attached: ``trained_noise`` (the
    ``_target_`` config of the noise it was trained on, or None) and ``model_name``.
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
