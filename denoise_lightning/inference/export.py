"""``dnl-export``: a trained network as an ONNX or TorchScript file, to run without this package.

    dnl-export outputs/run/checkpoints/last.ckpt --format onnx -o dn_resnet13.onnx
    dnl-export dncnn-s-sigma25 --format torchscript -o dncnn_s25.pt

The exported graph is the network alone: input ``noisy``, float32 (N, C, H, W) in [0, 1]; output ``denoised``, the
same shape, not clipped. N, H and W are dynamic. After writing, the file is run on a real photograph (scikit-image's
camera, cropped to a size the export never saw) and compared with the PyTorch network; a difference above
``TOLERANCE`` is an error and the file is removed.

ONNX uses PyTorch's ``torch.export``-based exporter (needs ``onnx`` and ``onnxscript``: ``pip install
'denoise-lightning[export]'``; the check also needs ``onnxruntime``). TorchScript uses ``torch.jit.trace``, which
PyTorch has deprecated; it cannot record UDnCNN's shape-dependent padding, so export UDnCNN as ONNX. (UDnCNN's
max-pooling picks one of tied maxima; on exactly flat, noise-free regions onnxruntime may pick another one than
PyTorch and the unpooled features then differ locally. Noisy inputs have no ties.)
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from denoise_lightning.files import atomic_output
from denoise_lightning.inference.tiling import input_channels, tile_multiple

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
EXAMPLE_SIZE = 64


class ExportError(RuntimeError):
    """A network that cannot be exported in the requested format, or an export that does not match PyTorch."""


class AlignedInput(nn.Module):
    """Pads H and W up to a multiple of ``multiple`` by reflection, runs ``network``, crops back.

    For pooled U-nets (UDnCNN), whose own padding branches on the input size in Python, which an exporter records
    for the example size only. Reflection is what UDnCNN does itself, so the output is unchanged.
    """

    def __init__(self, network: nn.Module, multiple: int) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        height, width = noisy.shape[-2:]
        pad_h, pad_w = (self.multiple - height % self.multiple) % self.multiple, \
            (self.multiple - width % self.multiple) % self.multiple
        padded = F.pad(noisy, (0, pad_w, 0, pad_h), mode="reflect")
        return self.network(padded)[..., :height, :width]


def _exportable(network: nn.Module) -> nn.Module:
    network = network.float().cpu().eval()
    multiple = tile_multiple(network)
    return AlignedInput(network, multiple).eval() if multiple > 1 else network


def _example(network: nn.Module) -> torch.Tensor:
    in_channels = input_channels(network)
    return torch.rand(2, in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE, generator=torch.Generator().manual_seed(0))


def _write_onnx(network: nn.Module, path: Path, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx.export's dynamo exporter needs it)
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({error}): pip install "
                          "'denoise-lightning[export]'") from error
    batch = torch.export.Dim("batch", min=1)
    height, width = (torch.export.Dim(name, min=8) for name in ("height", "width"))
    model = _exportable(network)
    torch.onnx.export(model, (_example(network),), str(path), dynamo=True, external_data=False, verbose=False,
                      opset_version=opset, input_names=["noisy"], output_names=["denoised"],
                      dynamic_shapes=({0: batch, 2: height, 3: width},))


def _write_torchscript(network: nn.Module, path: Path) -> None:
    model = _exportable(network)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated")
            traced = torch.jit.trace(model, _example(network))
    except (RuntimeError, TypeError) as error:
        raise ExportError(f"torch.jit.trace cannot record {type(network).__name__} ({error}); use --format onnx"
                          ) from error
    torch.jit.save(traced, str(path))


def export_network(network: nn.Module, path: str | os.PathLike, format: str, opset: int = 18) -> Path:
    """Write ``network`` (any size N, H, W) as ``format`` (onnx / torchscript) to ``path`` atomically."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    with atomic_output(path) as tmp:
        if format == "onnx":
            _write_onnx(network, tmp, opset)
        else:
            _write_torchscript(network, tmp)
    return path


def load_exported(path: str | os.PathLike, format: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function running an exported file on a float32 (N, C, H, W) array (onnxruntime or torch.jit)."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda noisy: session.run(["denoised"], {"noisy": noisy})[0]
    module = torch.jit.load(str(path), map_location="cpu")

    def run(noisy: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(noisy)).numpy()

    return run


def reference_input(network: nn.Module, height: int = 97, width: int = 131) -> np.ndarray:
    """A real photograph with Gaussian noise (sigma 25): scikit-image's camera (grey) or astronaut (RGB), cropped
    to ``height`` x ``width``, as float32 (1, C, H, W)."""
    import skimage.data

    in_channels = input_channels(network)
    photo = skimage.data.camera()[..., None] if in_channels == 1 else skimage.data.astronaut()
    if photo.shape[2] != in_channels:
        raise ExportError(f"no reference photograph with {in_channels} channels to check the export")
    clean = photo[200:200 + height, 150:150 + width].astype(np.float32) / 255.0
    noisy = clean + np.random.default_rng(0).normal(0.0, 25.0 / 255.0, clean.shape).astype(np.float32)
    return np.ascontiguousarray(noisy.transpose(2, 0, 1)[None])


def compare_export(network: nn.Module, path: str | os.PathLike, format: str) -> float:
    """Largest absolute difference between the exported file and the PyTorch network on :func:`reference_input`."""
    noisy = reference_input(network)
    with torch.inference_mode():
        expected = network.float().cpu()(torch.from_numpy(noisy)).numpy()
    return float(np.abs(load_exported(path, format)(noisy) - expected).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dnl-export",
        description="Export a trained network (checkpoint, DnCNN .mat file or model name, as for dnl-denoise) "
                    "to ONNX or TorchScript. Input 'noisy' float32 (N, C, H, W) in [0, 1], output 'denoised'; N, H, "
                    "W dynamic. The file is checked against PyTorch on a real photograph.")
    parser.add_argument("model", help="checkpoint (.ckpt), DnCNN .mat file, or a model name")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True, help="file to write (.onnx / .pt)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default %(default)s)")
    args = parser.parse_args(argv)

    from denoise_lightning.zoo.checkpoint import CheckpointError
    from denoise_lightning.zoo.registry import load_model
    from denoise_lightning.zoo.weights import WeightsError

    try:
        network = load_model(args.model)
        path = export_network(network, args.output, args.format, args.opset)
    except (FileNotFoundError, CheckpointError, WeightsError, ExportError) as error:
        print(f"dnl-export: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        difference = compare_export(network, path, args.format)
    except ImportError as error:
        print(f"wrote {path}; not checked ({error}: pip install onnxruntime)")
        return
    if not difference <= TOLERANCE:
        path.unlink()
        print(f"dnl-export: error: the exported {args.format} model differs from PyTorch by {difference:.2e} "
              f"(> {TOLERANCE:g}) on a real photograph; nothing written", file=sys.stderr)
        raise SystemExit(1)
    print(f"wrote {path} ({args.format}, {network.model_name}); max |exported - PyTorch| = {difference:.1e} on a "
          "97x131 photograph")


if __name__ == "__main__":
    main()
