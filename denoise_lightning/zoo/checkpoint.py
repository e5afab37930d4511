"""Rebuild networks from checkpoints without Lightning, Hydra or pickled code (``torch.load(weights_only=True)``).

A checkpoint is data from anywhere, so its ``_target_`` configs never reach ``hydra.utils.instantiate``, which calls
any importable callable with any arguments (``pathlib.Path.write_text`` with nested ``_target_`` arguments writes a
``.pth`` file into site-packages: code execution at the next start of Python). :func:`build` calls only a class of
an allowlist (the package's networks, noise models and losses) with plain keyword values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoise_lightning.models import NETWORKS

# The values a config from a checkpoint may hold: these, and lists / tuples / str-keyed dicts of these.
PLAIN_TYPES = (bool, int, float, str, type(None))
# The most parameters + buffers a config may ask for (400 MB in fp32): the package's networks hold under 1M, the
# largest published denoisers ~30M. Checked on the meta device, before any memory is allocated.
MAX_ELEMENTS = 100_000_000
MAX_COUNT = 10_000  # the largest integer or list length in a network config (channels, layers, blocks)


class CheckpointError(ValueError):
    """A file that is not a usable denoise-lightning checkpoint; the message names it."""


def targets(classes: Iterable[type], *packages: str) -> dict[str, type]:
    """``_target_`` spellings -> class: each class by its defining module (``torch.nn.modules.loss.MSELoss``) and
    as re-exported by each of ``packages`` (``torch.nn.MSELoss``)."""
    return {f"{where}.{cls.__qualname__}": cls for cls in classes for where in (cls.__module__, *packages)}


def network_targets() -> dict[str, type[nn.Module]]:
    """The networks a checkpoint may name: :data:`denoise_lightning.models.NETWORKS`."""
    return targets(NETWORKS.values(), "denoise_lightning.models")


def _reserved(key: Any) -> bool:
    """Hydra's special keys: ``_target_``, ``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``, ..."""
    return isinstance(key, str) and len(key) > 2 and key.startswith("_") and key.endswith("_")


def check_plain(value: Any, where: str) -> None:
    """Raise :class:`CheckpointError` naming ``where`` unless ``value`` is a bool, number, str or None, or a list,
    tuple or str-keyed dict of those (nested ``_target_`` or other Hydra keys refused)."""
    if isinstance(value, PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or _reserved(key):
                raise CheckpointError(f"{where}.{key}={item!r}: a nested {key!r} key is refused (a config from a "
                                      "checkpoint holds plain values only)")
            check_plain(item, f"{where}.{key}")
        return
    raise CheckpointError(f"{where}={value!r}: a {type(value).__name__} is refused (a config from a checkpoint "
                          "holds plain values only: numbers, strings, booleans, None, lists and dicts of those)")


def build(config: Any, allowed: Mapping[str, type], where: str) -> Any:
    """``cls(**kwargs)`` of a ``_target_`` config, where ``cls = allowed[config["_target_"]]`` and every keyword
    value passes :func:`check_plain`; anything else raises :class:`CheckpointError` naming ``where.key`` and the
    value. Errors of the constructor itself (an unknown keyword, an invalid value) propagate unchanged."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}={config!r}: expected a _target_ config (a dict)")
    target = config.get("_target_")
    cls = allowed.get(target) if isinstance(target, str) else None
    if cls is None:
        names = ", ".join(sorted({cls.__name__ for cls in allowed.values()}))
        raise CheckpointError(f"{where}._target_={target!r} is refused: only the classes {names} are built from a "
                              "config")
    kwargs = {}
    for key, value in config.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or not key.isidentifier() or _reserved(key):
            raise CheckpointError(f"{where}.{key}={value!r}: {key!r} is not a keyword argument of {target}")
        check_plain(value, f"{where}.{key}")
        kwargs[key] = value
    if cls in NETWORKS.values():
        _check_size(cls, kwargs, target, where)
    return cls(**kwargs)


def _check_size(cls: type[nn.Module], kwargs: dict[str, Any], target: str, where: str) -> None:
    """Refuse a config whose module would hold more than :data:`MAX_ELEMENTS` parameters and buffers (a hostile
    ``channels=10**6`` would otherwise exhaust memory while building), measured on the meta device."""
    for key, value in kwargs.items():  # a count in the millions would take minutes to build even on meta
        count = len(value) if isinstance(value, (list, tuple)) else value
        if isinstance(count, int) and count > MAX_COUNT:
            shown = count if isinstance(value, int) else f"[{count} items]"
            raise CheckpointError(f"{where}.{key}={shown}: more than the {MAX_COUNT:,} a network config may ask "
                                  "for; the file is damaged or hostile")
    try:
        with torch.device("meta"):
            probe = cls(**kwargs)
    except Exception:  # a bad argument: the real construction below reports it
        return
    elements = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if elements > MAX_ELEMENTS:
        raise CheckpointError(f"{where}: {target} with {kwargs} would hold {elements:,} parameters, more than the "
                              f"{MAX_ELEMENTS:,} a config may ask for; the file is damaged or hostile")


def _unreadable_message(path: Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) refused ``path``, without torch's advice to load with weights_only=False
    (which would run any code the file holds)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if found:
        return (f"{path} is a checkpoint that stores the Python object {found.group(1)} (not only tensors and plain "
                "values); it is refused because loading it could run arbitrary code. Re-save it with plain "
                "hyper-parameters (dicts, numbers, strings)")
    return (f"{path} is not a PyTorch checkpoint, or is damaged ({type(error).__name__}): expected a .ckpt written by "
            "dnl-train, a weights .json/.safetensors pair, a DnCNN .mat file, or a model name")


def _mismatch_message(path: Path, where: str, config: Any, expected: Mapping, given: Mapping) -> str | None:
    """The first difference between the network built from ``config`` and the checkpoint's weights, if any."""
    for key, tensor in expected.items():
        if key in given and tuple(given[key].shape) != tuple(tensor.shape):
            count = sum(1 for k, t in expected.items() if k in given and tuple(given[k].shape) != tuple(t.shape))
            return (f"{path}: the weights do not fit the architecture in its config ({where}={config!r}): {key} has "
                    f"shape {tuple(given[key].shape)} in the checkpoint but {tuple(tensor.shape)} in that network "
                    f"({count} tensor(s) differ); the config and the weights come from different networks")
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"{len(missing)} tensor(s) missing from the checkpoint, first {missing[0]}" if missing else "",
            f"{len(unexpected)} tensor(s) the network does not have, first {unexpected[0]}" if unexpected else "")
            if part)
        return (f"{path}: the weights do not fit the architecture in its config ({where}={config!r}): {detail}; the "
                "config and the weights come from different networks")
    return None


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """The contents of a checkpoint file, read with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for corrupt / foreign files
        raise CheckpointError(_unreadable_message(path, error)) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def network_from_checkpoint(path: str | os.PathLike, map_location: str = "cpu",
                            checkpoint: dict | None = None) -> nn.Module:
    """The ``network`` of a DenoiseModule checkpoint, rebuilt from its config by :func:`build` (one of the package's
    networks, plain arguments), weights loaded, in eval mode.
    ``checkpoint``: the already-read contents of ``path``, to avoid reading it twice."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path, map_location)
    hparams = checkpoint.get("hyper_parameters") or {}
    where, network_cfg = "network_config", checkpoint.get("network_config")
    if network_cfg is None and isinstance(hparams, Mapping):
        where, network_cfg = "hyper_parameters.network", hparams.get("network")
    if network_cfg is None:
        raise CheckpointError(f"{path} has no hyper_parameters.network config: it was not written by "
                              "DenoiseModule with a network config; use DenoiseModule.load_from_checkpoint(path, "
                              "network=...) instead")
    try:
        network = build(network_cfg, network_targets(), where)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (TypeError, ValueError) as error:  # the config does not fit the class
        raise CheckpointError(f"{path}: cannot rebuild the network from {where}={network_cfg!r}: {error}") from error
    prefix = "network."
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} has no state_dict")
    weights = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    message = _mismatch_message(path, where, network_cfg, network.state_dict(),
                                {k: v for k, v in weights.items() if hasattr(v, "shape")})
    if message is not None:
        raise CheckpointError(message)
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:  # anything the comparison above did not catch
        raise CheckpointError(f"{path}: the weights do not fit {where}: {error}") from error
    return network.to(map_location).eval()
