"""Inference latency of DnCNN-S on one 512x512 grey image per precision / memory format, on this machine.

    python benchmarks/precision.py [--out bench/precision.json] [--repeats 5]

Writes the median of ``--repeats`` timed runs after one warm-up, per setting, with the CPU's bf16 capability,
so the README's speed table can be regenerated anywhere. Timing lives here, never in pass/fail tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from denoise_lightning.hardware import cpu_has_fast_bf16
from denoise_lightning.models import DnCNN
from denoise_lightning.results import atomic_write_text


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/precision.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    torch.manual_seed(0)
    network = DnCNN(num_layers=17).eval()
    image = torch.rand(1, 1, args.size, args.size)
    rows = {}
    for name, channels_last, dtype in [("fp32", False, None), ("fp32 + channels_last", True, None),
                                       ("bf16 autocast", False, torch.bfloat16),
                                       ("bf16 autocast + channels_last", True, torch.bfloat16)]:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = network.to(memory_format=memory_format)
        x = image.contiguous(memory_format=memory_format)
        autocast = torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()

        def run(net=net, x=x, autocast=autocast):
            with torch.inference_mode(), autocast:
                net(x)

        rows[name] = median_seconds(run, args.repeats)
        print(f"{name:32s} {rows[name] * 1000:8.1f} ms  ({rows['fp32'] / rows[name]:.2f}x vs fp32)")
    result = {"network": "DnCNN-S (17 layers, 64 channels)", "image": f"{args.size}x{args.size} grey",
              "threads": torch.get_num_threads(), "cpu_fast_bf16": cpu_has_fast_bf16(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "seconds": rows}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
