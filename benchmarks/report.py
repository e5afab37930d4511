"""The speed targets evaluated on a ``bench/results.json`` dict, and its markdown tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from denoise_lightning.files import atomic_write_text
from denoise_lightning.provenance import describe

TARGET_TRAINING = 400.0      # patches/s, DN-ResNet-13, 50x50, batch 64
TARGET_DNR_VS_DNCNN = 3.5    # DN-ResNet-13 speed-up over DnCNN-S, one image
TARGET_DS_VS_DNR = 1.5       # DS-DN-ResNet speed-up over DN-ResNet-13
TARGET_BF16_DB = 0.01        # |bf16 - fp32| BSD68 PSNR


def best_fp32(results: dict[str, Any], name: str) -> tuple[float, str]:
    """Fastest fp32 latency of ``name`` over the settings, and that setting."""
    rows = [(stats[name]["seconds"], setting) for setting, stats in results["inference"].items()
            if name in stats and setting.startswith("fp32")]
    return min(rows)


def speedup(results: dict[str, Any], fast: str, slow: str) -> dict[str, Any]:
    """Speed-up of ``fast`` over ``slow`` per setting (both timed round-robin in it) and best against best."""
    per_setting = {setting: stats[slow]["seconds"] / stats[fast]["seconds"]
                   for setting, stats in results["inference"].items() if fast in stats and slow in stats}
    (fast_s, fast_setting), (slow_s, slow_setting) = best_fp32(results, fast), best_fp32(results, slow)
    return {"best": slow_s / fast_s, "best_settings": [fast_setting, slow_setting], "per_setting": per_setting}


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with its measured value and ``met``; out-of-reach ones carry the bound from the probe."""
    out: dict[str, dict[str, Any]] = {}
    for key, fast, slow, goal in (("dn_resnet13_vs_dncnn_s", "DN-ResNet-13", "DnCNN-S", TARGET_DNR_VS_DNCNN),
                                  ("ds_dn_resnet_vs_dn_resnet13", "DS-DN-ResNet", "DN-ResNet-13", TARGET_DS_VS_DNR),
                                  ("ds_separable_head_vs_dn_resnet13", "DS-DN-ResNet, separable head (opt-in)",
                                   "DN-ResNet-13", TARGET_DS_VS_DNR)):
        value = speedup(results, fast, slow)
        out[key] = {"target": goal, "measured": value["best"], "met": value["best"] >= goal, **value}
    train = results["training"]["DN-ResNet-13"]
    pipeline = results["data_pipeline"]
    macs = results["networks"]["DN-ResNet-13"]["macs_per_pixel"]
    setup = results["training_setup"]
    patch_flops = 3 * 2 * macs * setup["patch_size"] ** 2
    out["dn_resnet13_training"] = {
        "target": TARGET_TRAINING, "measured": train["patches_per_s"], "with_data_pipeline": pipeline["patches_per_s"],
        "data_wait_fraction": pipeline["data_wait_fraction"], "met": train["patches_per_s"] >= TARGET_TRAINING,
        "gflops_needed": TARGET_TRAINING * patch_flops / 1e9, "probe_gflops": results["probe"]["float32"]["gflops"],
        "bound_patches_per_s": train["bound_patches_per_s"]}
    precision = results.get("precision")
    if precision:
        deltas = {name: row["delta_db"] for name, row in precision.items() if isinstance(row, dict)}
        out["bf16_psnr_change"] = {"target": TARGET_BF16_DB, "measured": deltas,
                                   "met": all(abs(d) < TARGET_BF16_DB for d in deltas.values())}
    return out


def _mib(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.0f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.0f}"


def markdown(results: dict[str, Any]) -> str:
    machine, probe = results["machine"], results["probe"]
    lines = [f"Machine: {machine['cpu_count']} CPUs, {machine['threads']} torch threads, "
             f"{machine['cpu_capability']}, native bf16: {machine['cpu_fast_bf16']}, torch {machine['torch']}; "
             f"load average {machine['load_average'][0]:.1f} at start, {machine['load_average_end'][0]:.1f} at end. "
             f"Image: {results['image']}. Command: `{results['command']}` ({results['seconds']:.0f} s).", "",
             *([f"Environment: {describe(results['environment'])}.", ""] if results.get("environment") else []),
             "Probe (conv 64->64 3x3, channels_last, best call): " + ", ".join(
                 f"{dtype} {row['gflops']:.1f} GFLOP/s ({row['shape']})" for dtype, row in probe.items()), ""]
    bm3d, setup = results["bm3d"], results["training_setup"]
    for setting, stats in results["inference"].items():
        lines += [f"**{setting}**", "",
                  "| network | params | MACs/pixel | latency ms (median / min) | MP/s | GFLOP/s | of probe "
                  "| speed-up vs DnCNN-S | peak MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, row in stats.items():
            net = results["networks"][name]
            note = f" (from {row['extrapolated_from']})" if row["extrapolated_from"] else ""
            note += f", compile {row['compile_seconds']:.0f} s" if row["compile_seconds"] else ""
            ratio = row["speedup_vs_dncnn_s"]
            lines.append(f"| {name} | {net['params']:,} | {net['macs_per_pixel'] / 1e3:.1f}K | "
                         f"{_ms(row['seconds'])} / {_ms(row['min_seconds'])}{note} | {row['megapixels_per_s']:.3f} | "
                         f"{row['gflops']:.1f} | {row['fraction_of_probe']:.0%} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}x'} | {_mib(row['peak_mib'])} |")
        lines.append("")
    lines += [f"BM3D (bm3d package, both stages): {_ms(bm3d['seconds'])} ms median of {bm3d['runs']} "
              f"({bm3d['megapixels_per_s']:.3f} MP/s)", "",
              f"**Training step** (Adam, MSE, fp32 + channels_last, batch {setup['batch_size']} x "
              f"{setup['patch_size']}^2 patches)", "",
              "| network | patches/s | step ms (median / min) | GFLOP/s | of probe | probe-bound patches/s "
              "| peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["training"].items():
        lines.append(f"| {name} | {row['patches_per_s']:.1f} | {_ms(row['seconds'])} / {_ms(row['min_seconds'])} | "
                     f"{row['gflops']:.1f} | {row['fraction_of_probe']:.0%} | {row['bound_patches_per_s']:.1f} | "
                     f"{_mib(row['peak_mib'])} |")
    pipeline = results["data_pipeline"]
    lines += ["", f"Real data pipeline (Trainer + DenoiseModule + DenoiseDataModule on {pipeline['source']}, "
              f"DN-ResNet-13, {pipeline['steps_measured']} steps): {pipeline['patches_per_s']:.1f} patches/s, "
              f"waiting for data {pipeline['data_wait_fraction']:.1%} of the time; the DataLoader alone delivers "
              f"{pipeline['dataloader_only_patches_per_s']:,.0f} patches/s.", "", "**Targets**", "",
              "| target | goal | measured | met |", "|---|---:|---|---|"]
    for key, row in targets(results).items():
        if key == "dn_resnet13_training":
            measured = (f"{row['measured']:.1f} patches/s ({row['with_data_pipeline']:.1f} with the real pipeline); "
                        f"needs {row['gflops_needed']:.0f} GFLOP/s, the probe gives {row['probe_gflops']:.0f}: "
                        f"bound {row['bound_patches_per_s']:.0f} patches/s")
        elif key == "bf16_psnr_change":
            measured = "; ".join(f"{name}: {delta:+.4f} dB" for name, delta in row["measured"].items())
        else:
            measured = f"{row['measured']:.2f}x best vs best (" + ", ".join(
                f"{setting}: {value:.2f}x" for setting, value in row["per_setting"].items()) + ")"
        lines.append(f"| {key} | {row['target']:g} | {measured} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(lines)


def write_report(folder: str | Path, results: dict[str, Any]) -> Path:
    """``results.json`` (with the evaluated targets) and ``results.md`` into ``folder``; returns the JSON path."""
    folder = Path(folder)
    results = {**results, "targets": targets(results)}
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(folder / "results.md", markdown(results) + "\n")
    return folder / "results.json"
