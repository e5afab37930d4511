"""Rebuild networks from checkpoints without Lightning or pickled code (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn


class CheckpointError(ValueError):
    """A file that is not a usable denoise-lightning checkpoint; the message names it."""


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for corrupt / foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def network_from_checkpoint(path: str | os.PathLike, map_location: str = "cpu",
                            checkpoint: dict | None = None) -> nn.Module:
    """The ``network`` of a DenoiseModule checkpoint, rebuilt from its hparams, weights loaded, in eval mode.
    ``checkpoint``: the already-read contents of ``path``, to avoid reading it twice."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path, map_location)
    network_cfg = checkpoint.get("network_config") or checkpoint.get("hyper_parameters", {}).get("network")
    if network_cfg is None:
        raise CheckpointError(f"{path} has no hyper_parameters.network config: it was not written by "
                              "DenoiseModule with a network config; use DenoiseModule.load_from_checkpoint(path, "
                              "network=...) instead")
    network = instantiate(network_cfg)
    prefix = "network."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    network.load_state_dict(state)
    return network.to(map_location).eval()
