"""Models by name or path: checkpoints, published DnCNN ``.mat`` files and the names of published weights.

:func:`load_model` (re-exported as ``denoise_lightning.load_model``) resolves a checkpoint path, a MatConvNet
``.mat`` file or the name of a published model found on disk (no download).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

# Published DnCNN weights (Zhang et al., TIP 2017) under $DNL_DATA_DIR/weights/dncnn, converted when loaded.
PUBLISHED_MODELS: dict[str, str] = {
    "dncnn-s-sigma15": "dncnn_s15.mat",
    "dncnn-s-sigma25": "dncnn_s25.mat",
    "dncnn-s-sigma25-bnorm": "dncnn_s25_bnorm.mat",
    "dncnn-s-sigma50": "dncnn_s50.mat",
    "dncnn-b": "dncnn_b_gray.mat",
    "dncnn-3": "dncnn3.mat",
}


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that resolves to nothing; the message lists the names available."""


def weights_dir() -> Path:
    """Folder of the published DnCNN weights: ``$DNL_DATA_DIR/weights/dncnn`` (else ``./data/weights/dncnn``)."""
    from denoise_lightning.datasets.download import default_root

    return default_root() / "weights" / "dncnn"


def available_models() -> dict[str, Path]:
    """Names usable with :func:`load_model` -> their weight files (only those present on disk)."""
    folder = weights_dir()
    return {name: folder / file for name, file in PUBLISHED_MODELS.items() if (folder / file).is_file()}


def _load_matconvnet(path: Path) -> tuple[nn.Module, dict | None]:
    """A published DnCNN ``.mat`` file -> (network, noise config from its name)."""
    try:
        from denoise_lightning.zoo.import_dncnn import noise_from_file_name, read_matconvnet_dncnn
        network = read_matconvnet_dncnn(path)
    except ImportError as error:  # h5py reads MATLAB v7.3 files
        raise ModelNotFoundError(f"reading {path} needs h5py ({error}); install it with `pip install h5py` or "
                                 "convert the file once with dnl-import-dncnn on a machine that has it") from error
    return network, noise_from_file_name(path)


def load_model(name_or_path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """A denoising network in eval mode and channels_last, from a checkpoint, a ``.mat`` file or a model name.

    ``name_or_path``: a ``DenoiseModule`` checkpoint (``.ckpt``, read with ``weights_only=True``), a published
    DnCNN MatConvNet file, or a name from :func:`available_models` (``dncnn-s-sigma25``, ``dncnn-b``, ...). Nothing
    is downloaded. The network maps a noisy float tensor (N, C, H, W) in [0, 1] to the denoised tensor. Two plain
    attributes are attached: ``trained_noise`` (the ``_target_`` config of the noise it was trained on, or None)
    and ``model_name``.
    """
    from denoise_lightning.zoo.checkpoint import network_from_checkpoint, read_checkpoint

    path = Path(name_or_path)
    if path.is_file():
        name = path.stem
        if path.suffix.lower() == ".mat":
            network, noise = _load_matconvnet(path)
        else:
            checkpoint = read_checkpoint(path, map_location)
            network = network_from_checkpoint(path, map_location, checkpoint=checkpoint)
            noise = checkpoint.get("hyper_parameters", {}).get("noise")
            name = (checkpoint.get("imported") or {}).get("name") or name
    elif str(name_or_path) in available_models():
        name = str(name_or_path)
        network, noise = _load_matconvnet(available_models()[name])
    else:
        names = ", ".join(available_models()) or f"none (no published weights under {weights_dir()})"
        raise ModelNotFoundError(f"no model file or known model name {str(name_or_path)!r}. Give a checkpoint path "
                                 f"(.ckpt) or one of the available names: {names}. Names resolve to the published "
                                 f"DnCNN weights in {weights_dir()} (set DNL_DATA_DIR to the data root).")
    network = network.to(map_location, memory_format=torch.channels_last).eval()
    network.trained_noise = dict(noise) if noise is not None else None
    network.model_name = name
    return network
