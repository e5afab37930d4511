"""Import the published DnCNN weights (MatConvNet ``.mat``, MATLAB v7.3) as a denoise-lightning checkpoint.

    dnl-import-dncnn ../shared/data/weights/dncnn/dncnn_s25.mat dncnn_s25.ckpt      # sigma 25 from the name
    dnl-import-dncnn dncnn_b_gray.mat dncnn_b.ckpt                                 # blind: tested at 15/25/50
    dnl-eval ckpt=dncnn_s25.ckpt data=train400 trainer.precision=32-true           # same noisy images as ours

The named models (``load_model("dncnn-s-sigma25")``) do not need this command: ``make data`` converts the verified
release files once into the weights format (:func:`denoise_lightning.zoo.registry.install_published`), with this
module's reader.

The release files (Zhang et al., TIP 2017; see ``../shared/data/README.md``) hold a MatConvNet ``simplenn``
struct ``net.layers``: conv+ReLU, (D-2) x [conv (+bnorm) + ReLU], conv, optionally a final ``loss`` layer.
Filters are MATLAB arrays [H, W, Cin, Cout] (h5py reverses the axes; MATLAB drops trailing singleton axes) and
MatConvNet convolutions are cross-correlations, as in PyTorch. The network predicts the noise residual, so the
result is this package's :class:`~denoise_lightning.models.dncnn.DnCNN` with ``residual=True``:

* BN-merged files (every conv with a bias, no ``bnorm``) -> ``DnCNN(batch_norm=False)``, weights copied exactly;
* ``_bnorm`` files -> ``DnCNN(batch_norm=True)`` in eval mode, so the imported model can be fine-tuned like
  ours. MatConvNet's test-time BN is ``g * (x - mean) / std + b`` with ``std`` already holding its epsilon;
  PyTorch computes ``(x - running_mean) / sqrt(running_var + eps)``, so ``running_var = std^2 - eps``. The conv
  bias (a PyTorch BN layer's conv has none) is folded into ``running_mean = mean - bias``.

The written checkpoint is what ``DenoiseModule`` writes (``state_dict`` keyed ``network.*``, plain
``hyper_parameters`` with the network and noise ``_target_`` configs), so ``load_model``,
``DenoiseModule.load_from_checkpoint`` and ``dnl-eval`` read it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from denoise_lightning.files import atomic_output
from denoise_lightning.models.dncnn import DnCNN

NOISE_TARGET = "denoise_lightning.degradations.noise.GaussianNoise"
DNCNN_TARGET = "denoise_lightning.models.dncnn.DnCNN"
EXPECTED = ("a MatConvNet DnCNN model saved as MATLAB v7.3 (HDF5): a struct 'net' whose 'layers' cell array is "
            "conv, relu, (conv, [bnorm,] relu) x (D-2), conv [, loss], 3x3 filters, pad 1, stride 1")


class MatConvNetFormatError(ValueError):
    """A file that is not a MatConvNet DnCNN model; the message names the file and what was expected."""


@dataclass
class _Conv:
    weight: np.ndarray  # (Cout, Cin, 3, 3), PyTorch order
    bias: np.ndarray  # (Cout,)
    bnorm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)  # g, b, mean, std


# ---------------------------------------------------------------- reading the .mat file
def _text(node) -> str:
    """A MATLAB char array (uint16 codes) as a Python string."""
    return "".join(chr(int(c)) for c in np.asarray(node).ravel())


def _values(node) -> np.ndarray:
    """A MATLAB numeric array as float32; a MATLAB empty array (stored as its dimensions) gives shape (0,)."""
    if node.attrs.get("MATLAB_empty", 0):
        return np.zeros(0, dtype=np.float32)
    return np.asarray(node, dtype=np.float32)


def _conv_weight(array: np.ndarray, path: Path, index: int) -> np.ndarray:
    """h5py's view of a MATLAB [H, W, Cin, Cout] filter -> PyTorch (Cout, Cin, H, W).

    h5py returns the axes reversed, (Cout, Cin, W, H), without MATLAB's trailing singleton axes (Cout = 1 in the
    last layer gives (Cin, W, H)): restore them in front, then swap W and H.
    """
    if not 2 <= array.ndim <= 4:
        raise MatConvNetFormatError(f"{path}: layer {index + 1} (conv) has filters of shape {array.shape}; "
                                    f"expected {EXPECTED}")
    array = array.reshape((1,) * (4 - array.ndim) + array.shape)
    weight = np.ascontiguousarray(array.transpose(0, 1, 3, 2))
    if weight.shape[2:] != (3, 3):
        raise MatConvNetFormatError(f"{path}: layer {index + 1} (conv) has {weight.shape[2]}x{weight.shape[3]} "
                                    f"filters; expected {EXPECTED}")
    return weight


def _read_layers(path: Path) -> list[tuple[str, Any]]:
    """``[(type, payload)]`` of every layer: conv -> _Conv, bnorm -> (g, b, mean, std), relu / loss -> None."""
    import h5py

    if not path.is_file():
        raise MatConvNetFormatError(f"MatConvNet file not found: {path}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise MatConvNetFormatError(f"{path} is not a MATLAB v7.3 (HDF5) file ({error}); expected {EXPECTED}. "
                                    "Re-save older .mat files in MATLAB with save(..., '-v7.3').") from error
    with file:
        layers_node = file.get("net/layers") if isinstance(file.get("net"), h5py.Group) else None
        if not isinstance(layers_node, h5py.Dataset) or h5py.check_ref_dtype(layers_node.dtype) is None:
            raise MatConvNetFormatError(f"{path} has no 'net.layers' cell array (top-level entries: "
                                        f"{sorted(k for k in file.keys() if not k.startswith('#'))}); "
                                        f"expected {EXPECTED}")
        layers: list[tuple[str, Any]] = []
        for index, ref in enumerate(np.asarray(layers_node).ravel()):
            layer = file[ref]
            if not isinstance(layer, h5py.Group) or "type" not in layer:
                raise MatConvNetFormatError(f"{path}: layer {index + 1} is not a struct with a 'type'; "
                                            f"expected {EXPECTED}")
            kind = _text(layer["type"])
            if kind in ("conv", "bnorm"):
                weights = [_values(file[r]) for r in np.asarray(layer.get("weights", [])).ravel()]
            if kind == "conv":
                for key in ("pad", "stride", "dilate"):
                    if key in layer and not np.all(_values(layer[key]) == 1):  # 'same' 3x3, no dilation
                        raise MatConvNetFormatError(f"{path}: layer {index + 1} (conv) has {key} "
                                                    f"{_values(layer[key]).ravel().tolist()}; expected {EXPECTED}")
                if len(weights) != 2:
                    raise MatConvNetFormatError(f"{path}: layer {index + 1} (conv) holds {len(weights)} weight "
                                                f"arrays; expected filters and biases")
                weight = _conv_weight(weights[0], path, index)
                bias = weights[1].ravel() if weights[1].size else np.zeros(weight.shape[0], np.float32)
                if bias.shape != (weight.shape[0],):
                    raise MatConvNetFormatError(f"{path}: layer {index + 1} (conv) has {bias.size} biases for "
                                                f"{weight.shape[0]} filters")
                layers.append((kind, _Conv(weight, bias)))
            elif kind == "bnorm":
                if len(weights) != 3 or weights[2].shape != (2, weights[0].size):
                    raise MatConvNetFormatError(f"{path}: layer {index + 1} (bnorm) holds arrays of shapes "
                                                f"{[w.shape for w in weights]}; expected multiplier [C], bias [C], "
                                                "moments [C x 2] (mean, std)")
                gain, shift, moments = weights
                layers.append((kind, (gain.ravel(), shift.ravel(), moments[0].copy(), moments[1].copy())))
            elif kind == "relu":
                leak = float(np.sum(_values(layer["leak"]))) if "leak" in layer else 0.0
                if leak != 0.0:
                    raise MatConvNetFormatError(f"{path}: layer {index + 1} is a leaky ReLU (leak {leak}); "
                                                f"expected {EXPECTED}")
                layers.append((kind, None))
            elif kind == "loss":
                layers.append((kind, None))
            else:
                raise MatConvNetFormatError(f"{path}: layer {index + 1} has type {kind!r}; expected {EXPECTED}")
    return layers


def _parse_convs(layers: list[tuple[str, Any]], path: Path) -> list[_Conv]:
    """Check the layer sequence against the DnCNN graph; the convs with their bnorm (if any) attached."""
    if layers and layers[-1][0] == "loss":
        layers = layers[:-1]  # the training loss of the _bnorm file: not part of the network
    kinds = [kind for kind, _ in layers]
    convs: list[_Conv] = []
    position = 0
    while position < len(kinds):
        if kinds[position] != "conv":
            break
        conv = layers[position][1]
        position += 1
        if position < len(kinds) and kinds[position] == "bnorm":
            conv.bnorm = layers[position][1]
            position += 1
        convs.append(conv)
        if position == len(kinds):
            break  # the last conv: no ReLU after it
        if kinds[position] != "relu":
            break
        position += 1
    structure_ok = position == len(kinds) and len(convs) >= 2 and kinds[-1] == "conv"
    if not structure_ok:
        raise MatConvNetFormatError(f"{path}: layer sequence {' '.join(kinds) or '(empty)'} does not match "
                                    f"{EXPECTED}")
    middle = convs[1:-1]
    if convs[0].bnorm is not None or convs[-1].bnorm is not None:
        raise MatConvNetFormatError(f"{path}: a bnorm follows the first or last conv; expected {EXPECTED}")
    if any(c.bnorm is None for c in middle) and any(c.bnorm is not None for c in middle):
        raise MatConvNetFormatError(f"{path}: only some middle convs have a bnorm layer; expected all or none")
    in_channels, channels = convs[0].weight.shape[1], convs[0].weight.shape[0]
    expected_shapes = [(channels, in_channels)] + [(channels, channels)] * len(middle) + [(in_channels, channels)]
    for index, (conv, shape) in enumerate(zip(convs, expected_shapes, strict=True)):
        if conv.weight.shape[:2] != shape:
            raise MatConvNetFormatError(f"{path}: conv {index + 1} maps {conv.weight.shape[1]} -> "
                                        f"{conv.weight.shape[0]} channels; a DnCNN with {in_channels} image and "
                                        f"{channels} feature channels needs {shape[1]} -> {shape[0]}")
        if conv.bnorm is not None and any(a.shape != (channels,) for a in conv.bnorm):
            raise MatConvNetFormatError(f"{path}: bnorm after conv {index + 1} does not have {channels} channels")
    return convs


def read_matconvnet_dncnn(path: str | os.PathLike) -> DnCNN:
    """The DnCNN of a MatConvNet ``.mat`` file (DnCNN release format), in eval mode, float32.

    Raises :class:`MatConvNetFormatError` (a ``ValueError`` naming the file and what was expected) for anything
    else: a non-HDF5 file, no ``net.layers``, another layer sequence, non-3x3 filters, padding or stride != 1.
    """
    path = Path(path)
    convs = _parse_convs(_read_layers(path), path)
    batch_norm = convs[1].bnorm is not None if len(convs) > 2 else False
    network = DnCNN(in_channels=convs[0].weight.shape[1], num_layers=len(convs), channels=convs[0].weight.shape[0],
                    batch_norm=batch_norm, residual=True)
    targets = [m for m in network.body if isinstance(m, nn.Conv2d)]
    norms = iter(m for m in network.body if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        for conv, target in zip(convs, targets, strict=True):
            target.weight.copy_(torch.from_numpy(conv.weight))
            if conv.bnorm is None:
                target.bias.copy_(torch.from_numpy(conv.bias))
                continue
            gain, shift, mean, std = (torch.from_numpy(a).double() for a in conv.bnorm)
            norm = next(norms)
            variance = std.square() - norm.eps
            if bool((variance <= 0).any()):
                raise MatConvNetFormatError(f"{path}: a bnorm std is below sqrt(eps) = {norm.eps ** 0.5:g}; "
                                            "cannot express it as a PyTorch BatchNorm2d")
            norm.weight.copy_(gain)
            norm.bias.copy_(shift)
            norm.running_mean.copy_(mean - torch.from_numpy(conv.bias).double())
            norm.running_var.copy_(variance)
    return network.eval()


# ---------------------------------------------------------------- writing a checkpoint
def noise_config(sigma: float | None = None, blind: bool = False) -> dict[str, Any]:
    """Plain ``_target_`` config of the GaussianNoise a published model is tested with.

    Non-blind: trained and tested at ``sigma``. Blind (DnCNN-B, DnCNN-3): sigma in [0, 55], tested at 15 / 25 / 50.
    """
    if blind:
        return {"_target_": NOISE_TARGET, "sigma": 25.0, "blind": True, "sigma_range": [0.0, 55.0],
                "test_sigmas": [15.0, 25.0, 50.0]}
    if sigma is None:
        raise ValueError("a non-blind model needs its sigma (0-255 scale)")
    return {"_target_": NOISE_TARGET, "sigma": float(sigma), "blind": False, "sigma_range": [0.0, 55.0],
            "test_sigmas": None}


def noise_from_file_name(path: str | os.PathLike) -> dict[str, Any] | None:
    """Noise config from a release file name: ``dncnn_s25*`` -> sigma 25; ``dncnn_b*`` / ``dncnn3*`` -> blind."""
    name = Path(path).stem.lower()
    if match := re.search(r"dncnn_s(\d+)", name):
        return noise_config(sigma=float(match.group(1)))
    if re.search(r"dncnn_?b|dncnn3|blind", name):
        return noise_config(blind=True)
    return None


def dncnn_config(network: DnCNN) -> dict[str, Any]:
    """The ``_target_`` config that rebuilds ``network``'s architecture (as ``conf/model/dncnn.yaml`` would)."""
    convs = [m for m in network.body if isinstance(m, nn.Conv2d)]
    return {"_target_": DNCNN_TARGET, "in_channels": convs[0].in_channels, "num_layers": len(convs),
            "channels": convs[0].out_channels,
            "batch_norm": any(isinstance(m, nn.BatchNorm2d) for m in network.body), "residual": network.residual}


def save_as_checkpoint(network: nn.Module, out_path: str | os.PathLike, noise: Mapping[str, Any],
                       name: str | None = None, network_config: Mapping[str, Any] | None = None,
                       source: str | os.PathLike | None = None) -> Path:
    """Write ``network`` as a ``DenoiseModule`` checkpoint (atomically: temp file + rename); returns the path.

    Args:
        network: the network; a :class:`DnCNN` describes itself, any other needs ``network_config``.
        noise: ``_target_`` config of the degradation it is tested with (see :func:`noise_config`).
        name: a readable model name, stored with the provenance under ``"imported"`` (``dnl-eval name=...``
            names the results).
        source: the file the weights came from (its name and SHA-256 are recorded).
    """
    from hydra.utils import instantiate

    from denoise_lightning.training.module import DenoiseModule

    if network_config is None:
        if not isinstance(network, DnCNN):
            raise TypeError(f"save_as_checkpoint needs network_config for a {type(network).__name__}")
        network_config = dncnn_config(network)
    network_config, noise = dict(network_config), dict(noise)
    rebuilt = instantiate(network_config)
    rebuilt.load_state_dict(network.state_dict())  # strict: the config really describes these weights
    module = DenoiseModule(network=network_config, noise=noise)  # its hparams are exactly what training stores
    import lightning

    checkpoint: dict[str, Any] = {
        "state_dict": {f"network.{k}": v.detach().cpu().contiguous().clone() for k, v in rebuilt.state_dict().items()},
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "imported": {"name": name or "", "source": Path(source).name if source else "",
                     "sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else ""},
    }
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        torch.save(checkpoint, tmp)
    return out_path


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dnl-import-dncnn",
        description="Convert a published DnCNN MatConvNet .mat file into a denoise-lightning checkpoint "
                    "(for dnl-eval / load_model). The noise level is read from the file name "
                    "(dncnn_s25 -> sigma 25; dncnn_b / dncnn3 -> blind) unless given.")
    parser.add_argument("mat", type=Path, help="MatConvNet .mat file (MATLAB v7.3)")
    parser.add_argument("ckpt", type=Path, help="checkpoint to write")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--sigma", type=float, help="non-blind model: its noise level (0-255 scale)")
    level.add_argument("--blind", action="store_true", help="blind model: tested at sigma 15, 25 and 50")
    parser.add_argument("--name", help="model name recorded in the checkpoint (default: the file stem)")
    args = parser.parse_args(argv)

    if args.sigma is not None or args.blind:
        noise = noise_config(sigma=args.sigma, blind=args.blind)
    else:
        noise = noise_from_file_name(args.mat)
        if noise is None:
            parser.error(f"cannot tell the noise level from the name {args.mat.name!r}: add --sigma S or --blind")
    try:
        network = read_matconvnet_dncnn(args.mat)
    except MatConvNetFormatError as error:
        print(f"dnl-import-dncnn: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    out = save_as_checkpoint(network, args.ckpt, noise, name=args.name or args.mat.stem, source=args.mat)
    config = dncnn_config(network)
    level_text = ("blind, tested at sigma " + "/".join(f"{s:g}" for s in noise["test_sigmas"]) if noise["blind"]
                  else f"sigma {noise['sigma']:g}")
    print(f"wrote {out}: DnCNN, {config['num_layers']} convs x {config['channels']} channels, "
          f"batch_norm={config['batch_norm']}, {sum(p.numel() for p in network.parameters()):,} parameters, "
          f"{level_text}")


if __name__ == "__main__":
    main()
