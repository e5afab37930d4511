"""Speed of every network on this machine: latency, throughput, memory, training, BM3D, and the speed targets.

    python benchmarks/bench.py [--out bench] [--repeats 3] [--no-compile] [--quick]

Writes ``bench/results.json`` and ``bench/results.md``. Timings are never pass/fail: they are measured, written
and compared with the speed targets (ratios to DnCNN-S measured in the same run). Within each setting the
networks are timed round-robin (one call of each, repeated), so a load change on a shared machine hits all of
them alike; latencies are the median (and min) of ``--repeats`` calls after one warm-up call.
``--quick`` runs every part on tiny inputs (for tests; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from benchmarks.precision import bsd68_precision, data_root
from benchmarks.report import write_report
from denoise_lightning.degradations.noise import GaussianNoise, deterministic_noisy
from denoise_lightning.hardware import cpu_has_fast_bf16
from denoise_lightning.inference.speed import optimize_for_inference, retain_freed_memory
from denoise_lightning.models.complexity import count_parameters, macs_per_pixel
from denoise_lightning.provenance import environment
from denoise_lightning.training.data import DenoiseDataModule, load_image, load_source
from denoise_lightning.training.module import DenoiseModule
from denoise_lightning.training.train import CONF_DIR

SIGMA = 25.0
REFERENCE = "DnCNN-S"
# name -> (conf/model file, overrides): the default configs, as `dnl-train model=...` builds them.
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "DnCNN-S": ("dncnn", {}),
    "DN-ResNet-13": ("dn_resnet", {"blocks": ["res"] * 5}),
    "DS-DN-ResNet": ("dn_resnet", {"blocks": ["ds"] * 5}),
    "DS-DN-ResNet, separable head (opt-in)": ("dn_resnet", {"blocks": ["ds"] * 5, "separable_head": True}),
    "UDnCNN": ("udncnn", {}),
    "DUDnCNN": ("dudncnn", {}),
}
COMPILED = ("DnCNN-S", "DN-ResNet-13", "DS-DN-ResNet", "DS-DN-ResNet, separable head (opt-in)")
Call = Callable[[], Any]


def build_network(config: str, overrides: dict[str, Any]) -> torch.nn.Module:
    """The network of ``conf/model/<config>.yaml`` for grey images, with ``overrides``."""
    node = OmegaConf.merge({"data": {"channels": 1}}, {"model": OmegaConf.load(Path(CONF_DIR) / "model" /
                                                                                 f"{config}.yaml")})
    spec = OmegaConf.to_container(node.model, resolve=True)
    return instantiate({**spec, **overrides})


def timed(call: Call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def peak_bytes(call: Call) -> int:
    """Peak of tensor memory allocated during ``call`` above what was live before it, from the torch profiler's
    allocator events (temporaries freed inside one operator are not seen)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    level = peak = 0
    for event in events:
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def round_robin(calls: dict[str, Call], repeats: int, memory: bool = True) -> dict[str, dict[str, float]]:
    """One warm-up call each, profiled for peak memory when ``memory`` (the profiler does not see the buffers of
    compiled graphs), then ``repeats`` rounds of one timed call each."""
    stats: dict[str, dict[str, Any]] = {}
    for name, call in calls.items():
        if memory:
            stats[name] = {"peak_mib": peak_bytes(call) / 2**20}
        else:
            call()
            stats[name] = {"peak_mib": None}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed(call))
    for name, values in times.items():
        stats[name].update(seconds=statistics.median(values), min_seconds=min(values), runs=len(values))
    return stats


def probe(quick: bool, repeats: int) -> dict[str, Any]:
    """GFLOP/s of a large compute-bound convolution (64 -> 64, 3x3, channels_last) in fp32 and bf16: the best
    (highest) of ``repeats`` calls, the machine's attainable convolution rate."""
    result = {}
    for dtype, size in ((torch.float32, 32 if quick else 256), (torch.bfloat16, 16 if quick else 128)):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
        x = torch.rand(1, 64, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
        flops = 2 * 64 * 64 * 9 * size * size
        with torch.inference_mode():
            conv(x)
            seconds = [timed(lambda conv=conv, x=x: conv(x)) for _ in range(max(repeats, 3))]
        result[str(dtype).removeprefix("torch.")] = {
            "shape": f"1x64x{size}x{size}", "gflops": flops / min(seconds) / 1e9,
            "median_gflops": flops / statistics.median(seconds) / 1e9}
    return result


def best_probe(*probes: dict[str, Any]) -> dict[str, Any]:
    """Per dtype, the probe with the highest rate: on a shared machine the least disturbed measurement."""
    return {dtype: max((p[dtype] for p in probes), key=lambda row: row["gflops"]) for dtype in probes[0]}


def test_image(size: int, root: Path) -> tuple[torch.Tensor, str]:
    """A real grey image cropped to ``size`` x ``size`` (Set12 Lena, else scikit-image's camera), (1, 1, H, W)."""
    lena = root / "test" / "set12" / "08.png"
    if lena.is_file():
        array, source = load_image(lena), "set12/08.png (Lena)"
    else:
        array, source = load_source("skimage://test")[1][0], "scikit-image camera"
    if min(array.shape[:2]) < size:
        raise ValueError(f"--size {size} is larger than the benchmark image {source} {array.shape[:2]}")
    return torch.from_numpy(array[:size, :size]).permute(2, 0, 1)[None].float().div(255), source


def inference_calls(networks: dict[str, torch.nn.Module], noisy: torch.Tensor, setting: str) -> dict[str, Call]:
    """One inference call per network in ``setting``; compiled networks are compiled here (first call timed)."""
    channels_last = setting != "fp32"
    x = noisy.contiguous(memory_format=torch.channels_last) if channels_last else noisy
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if setting.startswith("bf16") else nullcontext()
    calls = {}
    for name, network in networks.items():
        compiled = "compile" in setting
        if compiled and name not in COMPILED:
            continue
        runnable = optimize_for_inference(network, channels_last=channels_last, fold_bn="BN folded" in setting,
                                          compile=compiled)

        def call(runnable=runnable, x=x, autocast=autocast):
            with torch.inference_mode(), autocast:
                return runnable(x)

        calls[name] = call
    return calls


def inference(networks: dict[str, torch.nn.Module], macs: dict[str, float], noisy: torch.Tensor,
              args: argparse.Namespace, probe_result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Latency rows per setting. bf16 runs on a centred ``--bf16-size`` crop, scaled to the full image's pixels."""
    settings = ["fp32", "fp32 + channels_last", "fp32 + channels_last, BN folded, heap allocator",
                "bf16 autocast + channels_last, BN folded, heap allocator"]
    if args.compile:
        settings.append("fp32 + channels_last, BN folded, torch.compile, heap allocator")
    pixels = noisy.shape[-1] * noisy.shape[-2]
    results = {}
    for setting in settings:
        if "heap allocator" in setting:
            retain_freed_memory()  # one-way: every later setting runs with it
        image = noisy[..., :args.bf16_size, :args.bf16_size] if setting.startswith("bf16") else noisy
        scale = pixels / (image.shape[-1] * image.shape[-2])
        compile_seconds = {}
        calls = inference_calls(networks, image, setting)
        if "compile" in setting:
            compile_seconds = {name: timed(call) for name, call in calls.items()}
        stats = round_robin(calls, args.repeats, memory="compile" not in setting)
        peak = probe_result["bfloat16" if setting.startswith("bf16") else "float32"]["gflops"]
        for name, row in stats.items():
            for key in ("seconds", "min_seconds"):
                row[key] *= scale
            row["extrapolated_from"] = f"{image.shape[-2]}x{image.shape[-1]}" if scale != 1 else None
            row["megapixels_per_s"] = pixels / row["seconds"] / 1e6
            row["gflops"] = 2 * macs[name] * pixels / row["seconds"] / 1e9
            row["fraction_of_probe"] = row["gflops"] / peak
            row["compile_seconds"] = compile_seconds.get(name)
        reference = stats.get(REFERENCE)
        for row in stats.values():
            row["speedup_vs_dncnn_s"] = reference["seconds"] / row["seconds"] if reference else None
        results[setting] = stats
        print(f"[bench] {setting}: " + ", ".join(f"{n} {r['seconds'] * 1e3:.0f} ms" for n, r in stats.items()),
              flush=True)
    return results


def training_call(network: torch.nn.Module, patches: torch.Tensor) -> Call:
    """One optimizer step (Adam, MSE, sigma-25 noise, channels_last) on a batch of clean ``patches``."""
    network.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    clean = patches.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        noisy = clean + torch.randn(clean.shape, generator=generator) * (SIGMA / 255)
        loss = torch.nn.functional.mse_loss(network(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training(macs: dict[str, float], image: torch.Tensor, args: argparse.Namespace,
             probe_result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Patches/s of one training step per network; ``bound_patches_per_s``: what the fp32 probe's rate allows
    at 3x the forward FLOPs (forward + the two backward convolutions per layer)."""
    generator = torch.Generator().manual_seed(0)
    size, batch = args.patch_size, args.batch_size
    tops = torch.randint(0, image.shape[-2] - size + 1, (batch,), generator=generator)
    lefts = torch.randint(0, image.shape[-1] - size + 1, (batch,), generator=generator)
    patches = torch.stack([image[0, :, t:t + size, s:s + size] for t, s in zip(tops, lefts, strict=True)])
    calls = {name: training_call(build_network(*NETWORKS[name]), patches) for name in macs}
    stats = round_robin(calls, args.train_steps)
    pixels = batch * size * size
    for name, row in stats.items():
        flops = 3 * 2 * macs[name] * pixels
        row["patches_per_s"] = batch / row["seconds"]
        row["gflops"] = flops / row["seconds"] / 1e9
        row["fraction_of_probe"] = row["gflops"] / probe_result["float32"]["gflops"]
        row["bound_patches_per_s"] = probe_result["float32"]["gflops"] * 1e9 / flops * batch
    print("[bench] training: " + ", ".join(f"{n} {r['patches_per_s']:.1f} patches/s" for n, r in stats.items()),
          flush=True)
    return stats


class DataWait(L.Callback):
    """Step times and the time between steps (fetching the next batch from the DataLoader) in a real fit."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.waits: list[float] = []
        self._start = self._end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        if self._end is not None:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.steps.append(self._end - self._start)


def data_pipeline(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """DN-ResNet-13 trained by the real ``Trainer`` + ``DenoiseModule`` + ``DenoiseDataModule`` (Train400, else the
    embedded photos) for ``--pipeline-steps`` steps; the share of wall time spent waiting for data after step 1,
    and the patches/s of the DataLoader alone."""
    train400 = root / "train" / "train400"
    source = str(train400) if train400.is_dir() else "skimage://train"
    datamodule = DenoiseDataModule(train=[source], test_sets={"unused": source}, patch_size=args.patch_size,
                                   batch_size=args.batch_size, patches_per_image=128 if not args.quick else 2)
    config = {"_target_": "denoise_lightning.models.dn_resnet.DNResNet", "blocks": ["res"] * 5}
    noise = {"_target_": "denoise_lightning.degradations.noise.GaussianNoise", "sigma": SIGMA}
    module = DenoiseModule(config, noise, lr=1e-4)
    timer = DataWait()
    trainer = L.Trainer(max_steps=args.pipeline_steps, accelerator="cpu", precision="32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, datamodule=datamodule)
    waits, steps = timer.waits, timer.steps[1:]
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    start = time.perf_counter()
    fetched = sum(next(batches).shape[0] for _ in range(min(len(loader), 20)))
    loader_rate = fetched / (time.perf_counter() - start)
    return {"source": source, "batch_size": args.batch_size, "steps_measured": len(steps),
            "patches_per_s": args.batch_size * len(steps) / (sum(steps) + sum(waits)),
            "data_wait_fraction": sum(waits) / (sum(steps) + sum(waits)),
            "median_step_seconds": statistics.median(steps), "median_wait_seconds": statistics.median(waits),
            "dataloader_only_patches_per_s": loader_rate}


def bm3d_latency(noisy: torch.Tensor, repeats: int) -> dict[str, Any]:
    """BM3D (``bm3d`` package, default profile, both stages) on the same noisy image: median of ``repeats``."""
    import bm3d

    image = noisy[0, 0].double().numpy()
    seconds = [timed(lambda: bm3d.bm3d(image, sigma_psd=SIGMA / 255)) for _ in range(repeats)]
    pixels = image.size
    return {"seconds": statistics.median(seconds), "min_seconds": min(seconds), "runs": repeats,
            "megapixels_per_s": pixels / statistics.median(seconds) / 1e6}


def machine() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_fast_bf16": cpu_has_fast_bf16(),
            "load_average": os.getloadavg()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"), help="folder for results.json / results.md")
    parser.add_argument("--size", type=int, default=512, help="test image side (pixels)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per network and setting")
    parser.add_argument("--bf16-size", type=int, default=128, help="bf16 crop side (bf16 is slow without AMX)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per network")
    parser.add_argument("--pipeline-steps", type=int, default=6, help="steps of the real-data training run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=50)
    parser.add_argument("--bm3d-repeats", type=int, default=2)
    parser.add_argument("--psnr-images", type=int, default=68, help="BSD68 images for the bf16 PSNR check")
    parser.add_argument("--psnr-crop", type=int, default=32, help="their centred crop (bf16 is slow)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--quick", action="store_true", help="tiny everything: checks that the benchmark runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.bf16_size, args.train_steps, args.pipeline_steps = 32, 1, 16, 1, 3
        args.batch_size, args.patch_size, args.bm3d_repeats, args.psnr_images, args.psnr_crop = 2, 16, 1, 1, 16
        args.compile = False
    if args.pipeline_steps < 3 or min(args.repeats, args.train_steps, args.bm3d_repeats) < 1:
        parser.error("--pipeline-steps must be >= 3 (the first step is a warm-up) and every repeat count >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    root = data_root()
    torch.manual_seed(0)
    clean, image_source = test_image(args.size, root)
    noisy = deterministic_noisy(GaussianNoise(SIGMA), clean, "bench", 0, {"sigma": SIGMA})
    networks = {name: build_network(*spec).eval() for name, spec in NETWORKS.items()}
    macs = {name: macs_per_pixel(network) for name, network in networks.items()}
    started = time.perf_counter()
    command = "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"machine": machine(), "environment": environment(), "command": command,
                               "image": f"{args.size}x{args.size} grey, {image_source}, sigma {SIGMA:g}",
                               "quick": args.quick}
    first_probe = probe(args.quick, args.repeats)
    results["networks"] = {name: {"params": count_parameters(n), "macs_per_pixel": macs[name]}
                           for name, n in networks.items()}
    results["bm3d"] = bm3d_latency(noisy, args.bm3d_repeats)
    results["probe"] = best_probe(first_probe, probe(args.quick, args.repeats))
    results["inference"] = inference(networks, macs, noisy, args, results["probe"])
    results["training"] = training(macs, clean, args, results["probe"])
    results["training_setup"] = {"batch_size": args.batch_size, "patch_size": args.patch_size}
    results["data_pipeline"] = data_pipeline(args, root)
    results["precision"] = (bsd68_precision(root, args.psnr_images, args.psnr_crop)
                            if (root / "test" / "bsd68").is_dir() else None)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    write_report(args.out, results)
    return results


if __name__ == "__main__":
    main()
