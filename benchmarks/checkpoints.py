"""Latency of trained checkpoints on a real test image, next to their params, MACs and receptive field.

    python -m benchmarks.checkpoints RUN_DIR_OR_CKPT... --image PATH --out bench/checkpoints

Every network runs in the same round robin (one warm-up each, then ``--repeats`` rounds of one timed call each,
median), fp32 + channels_last with batch norm folded (``speed.optimize_for_inference``) and freed memory kept
by the allocator (``speed.retain_freed_memory``), as the best eager setting of ``make bench``; all cores: the
ratios between networks hold on a busy machine, the absolute times less so. A colour image is fed to grey
networks as grey, as the data module converts it. Writes ``checkpoints.json`` and ``checkpoints.md`` atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench import inference_calls, round_robin
from denoise_lightning import load_model
from denoise_lightning.files import atomic_output
from denoise_lightning.inference.speed import retain_freed_memory
from denoise_lightning.inference.tiling import input_channels
from denoise_lightning.models.complexity import count_parameters, macs_per_pixel, receptive_field
from denoise_lightning.provenance import describe, environment
from denoise_lightning.training.data import load_image


def checkpoint_path(path: Path) -> Path:
    """A ``.ckpt`` as given, or ``checkpoints/last.ckpt`` of a run folder."""
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: give a .ckpt file or a run folder with "
                                "checkpoints/last.ckpt")
    return path


def image_tensor(path: Path, channels: int) -> torch.Tensor:
    """(1, channels, H, W) in [0, 1] (colour to grey as the data module does it)."""
    return torch.from_numpy(load_image(path, channels)).permute(2, 0, 1)[None].float().div(255)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (checkpoints/last.ckpt) or .ckpt files")
    parser.add_argument("--image", type=Path, required=True, help="test image (PNG/JPEG), timed as a whole")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/checkpoints"))
    args = parser.parse_args(argv)

    networks, rows = {}, []
    for run in args.runs:
        network = load_model(checkpoint_path(run))
        channels = input_channels(network)
        name = run.name if run.is_dir() else run.stem
        networks[name] = (network, channels)
    by_channels: dict[int, dict[str, torch.nn.Module]] = {}
    for name, (network, channels) in networks.items():
        by_channels.setdefault(channels, {})[name] = network
    retain_freed_memory()
    context = environment()  # in every row: a row copied elsewhere keeps the machine and versions it was timed on
    for channels, group in by_channels.items():
        image = image_tensor(args.image, channels)
        calls = inference_calls(group, image, "fp32 + channels_last, BN folded, heap allocator")
        stats = round_robin(calls, args.repeats, memory=False)
        for name, network in group.items():
            rows.append({"name": name, "class": type(network).__name__, "channels": channels,
                         "params": count_parameters(network), "macs_per_pixel": macs_per_pixel(network, channels),
                         "receptive_field": receptive_field(network, channels),
                         "image": f"{args.image.name} {image.shape[-1]}x{image.shape[-2]}",
                         "ms": stats[name]["seconds"] * 1e3, "min_ms": stats[name]["min_seconds"] * 1e3,
                         "threads": torch.get_num_threads(), "environment": context})
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / "checkpoints.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    lines = ["| network | class | params | MACs/pixel | receptive field | image | ms (median) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['class']} | {r['params']:,} | {r['macs_per_pixel'] / 1e3:.1f}K "
              f"| {r['receptive_field']} | {r['image']} | {r['ms']:.0f} |" for r in rows]
    lines += ["", f"fp32 on {describe(context)}."]
    with atomic_output(args.out / "checkpoints.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
