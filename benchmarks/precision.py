"""bf16 versus fp32 inference: the change of BSD68 PSNR, with the published DnCNN-S (sigma 25) weights.

    python benchmarks/precision.py [--out bench/precision.json] [--max-images 68] [--crop 128]

Every image gets the same deterministic sigma-25 noise (``noise.deterministic_noisy``) and is denoised by the
published DnCNN-S twice per variant, in fp32 and under bf16 autocast (channels_last); PSNR is the mean of
per-image torchmetrics PSNR on outputs clipped to [0, 1]. Two variants: batch norm kept as separate layers
(``dncnn_s25_bnorm.mat``; batch norm runs in bf16) and folded into the convolutions (``dncnn_s25.mat``).
On CPUs without native bf16 (AVX2 only) bf16 convolutions are emulated and about 8x slower than fp32, so the
default scores a centred ``--crop`` of each image; ``--crop 0`` scores whole images (about an hour on 2 cores).
``make bench`` runs this on fewer, smaller crops (``benchmarks/bench.py``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from denoise_lightning.degradations.noise import GaussianNoise, deterministic_noisy
from denoise_lightning.files import atomic_write_text
from denoise_lightning.inference.speed import optimize_for_inference
from denoise_lightning.provenance import environment
from denoise_lightning.training.data import list_images, load_image
from denoise_lightning.zoo.import_dncnn import read_matconvnet_dncnn

SIGMA = 25.0
VARIANTS = {"batch norm in bf16 (dncnn_s25_bnorm.mat)": "dncnn_s25_bnorm.mat",
            "batch norm folded (dncnn_s25.mat)": "dncnn_s25.mat"}


def data_root() -> Path:
    """``$DNL_DATA_DIR``, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get("DNL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centred ``size`` x ``size`` crop of (C, H, W) (the whole image when ``size`` is 0 or larger)."""
    height, width = image.shape[-2:]
    if size <= 0 or (size >= height and size >= width):
        return image
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top:top + size, left:left + size]


@torch.inference_mode()
def bf16_psnr_change(network: torch.nn.Module, clean_images: list[torch.Tensor], set_name: str,
                     sigma: float = SIGMA) -> dict[str, Any]:
    """Mean PSNR (dB) of ``network`` in fp32 and in bf16 autocast on ``clean_images`` ((1, C, H, W) in [0, 1]),
    the same deterministic noise for both; ``delta_db`` = bf16 - fp32, ``max_abs_delta_db`` over images."""
    noise = GaussianNoise(sigma)
    level = {"sigma": sigma}
    scores: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for index, clean in enumerate(clean_images):
        noisy = deterministic_noisy(noise, clean, set_name, index, level).contiguous(memory_format=torch.channels_last)
        for name, enabled in (("fp32", False), ("bf16", True)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                output = network(noisy).float().clamp(0, 1)
            scores[name].append(float(peak_signal_noise_ratio(output, clean, data_range=1.0)))
    fp32, bf16 = (torch.tensor(scores[name], dtype=torch.float64) for name in ("fp32", "bf16"))
    return {"images": len(clean_images), "psnr_fp32": float(fp32.mean()), "psnr_bf16": float(bf16.mean()),
            "delta_db": float((bf16 - fp32).mean()), "max_abs_delta_db": float((bf16 - fp32).abs().max())}


def bsd68_precision(root: Path, max_images: int | None, crop: int) -> dict[str, Any]:
    """:func:`bf16_psnr_change` of both DnCNN-S variants on BSD68 (first ``max_images``, centred ``crop``)."""
    paths = list_images(root / "test" / "bsd68")[:max_images]
    images = [centre_crop(torch.from_numpy(load_image(path)).permute(2, 0, 1).float().div(255), crop)[None]
              for path in paths]
    result: dict[str, Any] = {"set": "bsd68", "sigma": SIGMA, "crop": crop or "whole images",
                              "autocast": "torch.autocast('cpu', torch.bfloat16), channels_last"}
    for name, file in VARIANTS.items():
        network = optimize_for_inference(read_matconvnet_dncnn(root / "weights" / "dncnn" / file), fold_bn=False)
        result[name] = bf16_psnr_change(network, images, "bsd68")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/precision.json")
    parser.add_argument("--max-images", type=int, default=None, help="first N BSD68 images (default: all 68)")
    parser.add_argument("--crop", type=int, default=128, help="centred crop size; 0 = whole images")
    parser.add_argument("--data-dir", type=Path, default=None, help="data root (default: $DNL_DATA_DIR)")
    args = parser.parse_args()
    result = {**bsd68_precision(args.data_dir or data_root(), args.max_images, args.crop), "environment": environment()}
    print(json.dumps(result, indent=2))
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
