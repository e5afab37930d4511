"""The weights format of named models: ``<name>.safetensors`` (the tensors) beside ``<name>.json`` (what they are).

A named model (``load_model("dncnn-s-sigma25")``) is a pair of files in the weights folder (:func:`weights_dir`)::

    dncnn-s-sigma25.safetensors   the network's state_dict (safetensors: tensors only, no pickle, no code)
    dncnn-s-sigma25.json          {"format": "denoise-lightning-weights", "format_version": 1,
                                   "name": "dncnn-s-sigma25",
                                   "network": {"_target_": "denoise_lightning.models.dncnn.DnCNN",
                                               "in_channels": 1, "num_layers": 17, "channels": 64,
                                               "batch_norm": false, "residual": true},
                                   "noise": {"_target_": "...GaussianNoise", "sigma": 25.0, "blind": false, ...},
                                   "tensors": {"file": "dncnn-s-sigma25.safetensors", "sha256": "..."},
                                   "provenance": {"source_file": ..., "source_sha256": ..., "archive": ...,
                                                  "paper": ..., "converted_by": ...},
                                   "card": {...}}   # models of the zoo only: their model card (zoo/build.py)

Reading one needs torch and safetensors only: the network is rebuilt from ``network`` by the allowlist builder of
:mod:`~denoise_lightning.zoo.checkpoint` (one of the package's networks, plain keyword values; no Hydra, no import of
a name taken from the file), the tensors are checked against the sha256 recorded in the JSON and loaded strictly.
Both files are written through :func:`~denoise_lightning.files.atomic_output`, tensors first: a JSON exists only once
its tensors are complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from denoise_lightning.files import atomic_output, atomic_write_text
from denoise_lightning.zoo.checkpoint import CheckpointError, build, network_targets

FORMAT = "denoise-lightning-weights"
FORMAT_VERSION = 1
WEIGHTS_DIR_VARIABLE = "DNL_WEIGHTS_DIR"


class WeightsError(ValueError):
    """A weights file that cannot be used as it is (unknown format or architecture, damaged tensors); the message
    names the file and the fix."""


@dataclass
class NamedWeights:
    """A network read from the weights format with what its JSON says about it."""

    network: nn.Module  # in eval mode, float32, on the CPU
    noise: dict[str, Any] | None  # ``_target_`` config of the noise it was trained on
    metadata: dict[str, Any]  # the whole JSON


def weights_dir() -> Path:
    """Folder of the named models: ``$DNL_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/denoise-lightning/weights``
    (``~/.cache/denoise-lightning/weights``). Independent of the data root, so a name works from any folder."""
    if folder := os.environ.get(WEIGHTS_DIR_VARIABLE):
        return Path(folder).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "denoise-lightning" / "weights"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build_network(config: Any, source: str | os.PathLike = "the weights config") -> nn.Module:
    """The network a ``{"_target_": ..., keyword: value}`` config describes, built without Hydra: only one of the
    package's networks (:data:`denoise_lightning.models.NETWORKS`) with plain keyword values; anything else raises
    :class:`WeightsError` naming ``source``."""
    try:
        return build(config, network_targets(), "network")
    except (CheckpointError, TypeError, ValueError) as error:  # refused config, or one that does not fit the class
        raise WeightsError(f"cannot rebuild the network of {source}: {error}") from error


def save_weights(network: nn.Module, network_config: Mapping[str, Any], directory: str | os.PathLike, name: str,
                 noise: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None,
                 card: Mapping[str, Any] | None = None) -> Path:
    """Write ``network`` as ``<directory>/<name>.safetensors`` + ``<name>.json``; returns the JSON's path.

    ``network_config`` must rebuild ``network`` through :func:`build_network` (checked: the state_dict is loaded
    strictly into the rebuilt network before anything is written). ``noise`` and ``provenance`` are stored as
    given (plain JSON values), and so is ``card``, a zoo model's card (:mod:`~denoise_lightning.zoo.build`), when given.
    """
    from safetensors.torch import save_file

    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"a weights name must be a plain file name, got {name!r}")
    network_config = dict(network_config)
    state = {key: value.detach().cpu().contiguous().clone() for key, value in network.state_dict().items()}
    build_network(network_config).load_state_dict(state)  # strict: the config really describes these tensors
    directory = Path(directory)
    tensors = directory / f"{name}.safetensors"
    with atomic_output(tensors) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "name": name})
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "network": network_config,
                "noise": dict(noise) if noise is not None else None,
                "tensors": {"file": tensors.name, "sha256": sha256_of(tensors)},
                "provenance": dict(provenance or {})}
    if card is not None:
        metadata["card"] = dict(card)
    json_path = directory / f"{name}.json"
    atomic_write_text(json_path, json.dumps(metadata, indent=1) + "\n")
    return json_path


def read_metadata(json_path: str | os.PathLike) -> dict[str, Any]:
    """The JSON of a named model, checked to be this format and version."""
    json_path = Path(json_path)
    try:
        metadata = json.loads(json_path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot read weights description {json_path}: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise WeightsError(f"{json_path} is not a {FORMAT} description (no \"format\": \"{FORMAT}\")")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{json_path} has format_version {metadata.get('format_version')!r}; this version of "
                           f"denoise-lightning reads {FORMAT_VERSION}: convert the weights again")
    return metadata


def read_weights(path: str | os.PathLike) -> NamedWeights:
    """Read a named model from its ``.json`` (or its ``.safetensors``, the JSON beside it): network in eval mode.

    The tensors file must hash to the sha256 in the JSON, hold exactly the network's tensors, and no more.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    json_path = path.with_suffix(".json") if path.suffix == ".safetensors" else path
    metadata = read_metadata(json_path)
    tensors = json_path.parent / Path(str(metadata.get("tensors", {}).get("file", ""))).name
    if not tensors.is_file():
        raise WeightsError(f"{json_path}: its tensors file {tensors} is missing; convert the weights again")
    if (digest := sha256_of(tensors)) != metadata["tensors"].get("sha256"):
        raise WeightsError(f"{tensors} is damaged: sha256 {digest}, but {json_path} records "
                           f"{metadata['tensors'].get('sha256')}; delete both files and convert the weights again")
    network = build_network(metadata.get("network"), json_path)
    try:
        state = load_file(str(tensors))
        network.load_state_dict(state)
    except (SafetensorError, RuntimeError) as error:
        raise WeightsError(f"{tensors} does not hold the tensors of {metadata['network']}: {error}") from error
    return NamedWeights(network=network.eval(), noise=metadata.get("noise"), metadata=metadata)
