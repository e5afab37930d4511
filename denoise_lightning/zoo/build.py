"""Build the model zoo from the runs of ``make zoo``: measure every model, write its weights and its model card.

    python -m denoise_lightning.zoo.build multirun/zoo/<time> --install denoise_lightning/zoo/models --docs docs/zoo.md
    python -m denoise_lightning.zoo.build --render      # only re-render the cards' Markdown and docs/zoo.md

``ZOO_DIR`` holds the runs of ``make zoo``: ``parents/<name>/`` (DN-ResNet-13 by cascade training) and
``evolved/<name>/`` (DS-DN-ResNets by incremental evolution from a parent), one folder per model, named as the model.
For every model the builder

1. tests its last checkpoint with ``dnl-eval`` in fp32 on BSD68 and Set12 at every standard level of its noise
   (Gaussian sigma 15 / 25 / 50, Poisson peak 1 / 2 / 4 / 8 / 30, the Poisson-Gaussian test levels);
2. tests the references on the same deterministic noisy images, once per noise: BM3D / VST-BM3D given the true
   level, and for Gaussian noise the published DnCNN-S (each at its own sigma) and DnCNN-B;
3. measures the card's drift check: mean PSNR of the model on the first :data:`CHECK_IMAGES` BSD68 images at its
   check level (re-measured by the test suite, which fails when the shipped weights or the code drift);
4. writes ``<name>.safetensors`` + ``<name>.json`` (the weights format, with the card under ``"card"``) into a
   staging folder, copies them into ``--install`` only when every model succeeded, and renders each card
   ``<name>.md`` there from its JSON.

Everything a card states comes from the run folders (``results.json``: steps, wall time, precision, machine,
package versions, git commit; ``.hydra/overrides.yaml``: the exact training command) and from this build's
``dnl-eval`` results; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from denoise_lightning.zoo.cards import render_card, render_table
from denoise_lightning.zoo.checkpoint import network_from_checkpoint, read_checkpoint
from denoise_lightning.zoo.weights import read_metadata, save_weights

PHASES = {"parents": "cascade training", "evolved": "incremental evolution"}
TEST_SETS = ("bsd68", "set12")
CHECK_SET = "bsd68"
CHECK_IMAGES = 4
DNCNN_S_SIGMAS = (15, 25, 50)
PACKAGE_DIR = Path(__file__).parent / "models"
DOCS_TABLE = Path("docs/zoo.md")


@dataclass(frozen=True)
class Family:
    """How models of one noise are tested: the ``dnl-eval`` noise overrides and the references."""

    label: str
    eval_overrides: tuple[str, ...]
    references: tuple[str, ...]


FAMILIES = {
    "GaussianNoise": Family("Gaussian", ("noise=gaussian", "noise.test_sigmas=[15,25,50]"),
                            ("DnCNN-S", "DnCNN-B", "BM3D")),
    "PoissonNoise": Family("Poisson", ("noise=poisson", "noise.test_peaks=[1,2,4,8,30]"), ("VST-BM3D",)),
    "PoissonGaussianNoise": Family("Poisson-Gaussian", ("noise=poisson_gaussian",), ("VST-BM3D",)),
}


class ZooBuildError(RuntimeError):
    """A zoo folder the builder cannot use as it is; the message names the run and the fix."""


@dataclass
class Run:
    """One trained zoo model: its run folder and what the run recorded."""

    name: str
    phase: str
    folder: Path
    config: dict[str, Any]
    results: dict[str, Any]
    overrides: list[str]

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoints" / "last.ckpt"

    @property
    def noise(self) -> dict[str, Any]:
        return dict(self.config["module"]["noise"])

    @property
    def family(self) -> Family:
        return family_of(self.noise)


def family_of(noise: dict[str, Any]) -> Family:
    """The :class:`Family` of a noise ``_target_`` config."""
    kind = str(noise.get("_target_", "")).rsplit(".", 1)[-1]
    if kind not in FAMILIES:
        raise ZooBuildError(f"noise {noise.get('_target_')!r} has no zoo test protocol; known: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def find_runs(zoo_dir: Path) -> list[Run]:
    """The finished runs of ``zoo_dir`` (parents first); a run without results or checkpoint raises, naming it."""
    runs, problems = [], []
    for phase in PHASES:
        for folder in sorted(p for p in (zoo_dir / phase).glob("*") if (p / "config.yaml").is_file()):
            results_path = folder / "results.json"
            if not results_path.is_file() or not (folder / "checkpoints" / "last.ckpt").is_file():
                status = folder / "job_status.json"
                why = json.loads(status.read_text()).get("status", "?") if status.is_file() else "no job_status.json"
                problems.append(f"{folder}: no results.json or checkpoints/last.ckpt (job status: {why})")
                continue
            overrides_path = folder / ".hydra" / "overrides.yaml"
            overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else []
            runs.append(Run(folder.name, phase, folder, yaml.safe_load((folder / "config.yaml").read_text()),
                            json.loads(results_path.read_text()), [str(o) for o in overrides]))
    if problems:
        raise ZooBuildError("unfinished zoo runs (rerun `make zoo`, or resume a run with its own ckpt_path):\n  "
                            + "\n  ".join(problems))
    if not runs:
        raise ZooBuildError(f"{zoo_dir} holds no zoo runs (expected {'/ and '.join(PHASES)}/<name>/config.yaml, "
                            "as written by `make zoo`)")
    return runs


# ---------------------------------------------------------------- measuring
def dnl_eval(overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """Run ``dnl-eval`` with ``overrides`` into ``out_dir``; its ``test`` table ``{set: {level: {metric: value}}}``."""
    command = [sys.executable, "-m", "denoise_lightning.training.evaluate", *overrides, f"hydra.run.dir={out_dir}"]
    print("+ dnl-eval " + " ".join(overrides), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ZooBuildError(f"dnl-eval {' '.join(overrides)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out_dir / "results.json").read_text())["test"]


def eval_overrides(family: Family, test_max_images: int | None) -> list[str]:
    """The overrides every test of this build shares: Train400's test sets, fp32, at most ``test_max_images``."""
    return ["data=train400", f"sets=[{','.join(TEST_SETS)}]", "trainer.precision=32-true",
            f"data.test_max_images={'null' if test_max_images is None else test_max_images}",
            *family.eval_overrides]


def measure_references(family: Family, work: Path, test_max_images: int | None) -> dict[str, dict[str, Any]]:
    """The references of ``family`` on the same noisy images: name -> test table (DnCNN-S: each sigma's model at its
    own sigma). Published DnCNN weights are read from ``$DNL_DATA_DIR/weights/dncnn``."""
    common = eval_overrides(family, test_max_images)
    folder = work / "references" / family.label
    tables: dict[str, dict[str, Any]] = {}
    mats = Path(os.environ.get("DNL_DATA_DIR", "data")) / "weights" / "dncnn"
    for reference in family.references:
        if reference in ("BM3D", "VST-BM3D"):
            tables[reference] = dnl_eval([*common, "model=bm3d"], folder / "bm3d")
        elif reference == "DnCNN-B":
            checkpoint = import_dncnn(mats / "dncnn_b_gray.mat", folder / "dncnn-b.ckpt", "--blind")
            tables[reference] = dnl_eval([*common, f"ckpt={checkpoint}"], folder / "dncnn-b")
        elif reference == "DnCNN-S":
            table: dict[str, dict[str, Any]] = {}
            for sigma in DNCNN_S_SIGMAS:
                checkpoint = import_dncnn(mats / f"dncnn_s{sigma}.mat", folder / f"dncnn-s{sigma}.ckpt",
                                          "--sigma", str(sigma))
                own_level = [o for o in common if not o.startswith("noise.test_sigmas=")]
                part = dnl_eval([*own_level, f"ckpt={checkpoint}", f"noise.test_sigmas=[{sigma}]"],
                                folder / f"dncnn-s{sigma}")
                for set_name, levels in part.items():
                    table.setdefault(set_name, {}).update(levels)
            tables[reference] = table
    return tables


def import_dncnn(mat: Path, checkpoint: Path, *options: str) -> Path:
    """A published DnCNN ``.mat`` file as a checkpoint dnl-eval reads (``dnl-import-dncnn``)."""
    if not mat.is_file():
        raise ZooBuildError(f"{mat}: published DnCNN weights not found; fetch them with `make data` (or set "
                            "DNL_DATA_DIR to the folder that holds weights/dncnn)")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "denoise_lightning.zoo.import_dncnn", str(mat), str(checkpoint),
                           *options], capture_output=True, text=True)
    if done.returncode != 0:
        raise ZooBuildError(f"dnl-import-dncnn {mat} failed:\n{done.stderr[-2000:]}")
    return checkpoint


def check_level(noise: dict[str, Any]) -> dict[str, float]:
    """The level a card's drift check is measured at: a non-blind model's own level, a blind model's validation
    level (sigma 25, peak 4, peak 4 + sigma 10)."""
    from denoise_lightning.training.module import NOISE_TARGETS
    from denoise_lightning.zoo.checkpoint import build

    return dict(build(noise, NOISE_TARGETS, "noise").val_level)


def check_psnr(network: nn.Module, noise: dict[str, Any], level: dict[str, float], data_dir: str | os.PathLike,
               images: int = CHECK_IMAGES, set_name: str = CHECK_SET) -> float:
    """Mean PSNR (dB, fp32) of ``network`` on the first ``images`` images of ``set_name`` (under
    ``data_dir/test``) with the deterministic test noise at ``level``: the same images, noise and metric as
    ``dnl-eval``."""
    from denoise_lightning.training.data import ImageSetDataset, load_source
    from denoise_lightning.training.module import DenoiseModule, image_metrics

    names, clean_images = load_source(str(Path(data_dir) / "test" / set_name), channels=1)
    dataset = ImageSetDataset(set_name, names, clean_images, images)
    module = DenoiseModule(network=network.float(), noise=noise).eval()
    metric = image_metrics()["psnr"]
    with torch.inference_mode():
        for index in range(len(dataset)):
            image, _ = dataset[index]
            clean, _, output = module.denoise_test_image(image[None].float() / 255, set_name, index, level)
            metric.update(output, clean)
    return round(float(metric.compute()), 4)


# ---------------------------------------------------------------- cards
def training_entry(run: Run) -> dict[str, Any]:
    """What one training run of a model did, from its run folder."""
    results, data, module = run.results, run.config["data"], run.config["module"]
    environment = results.get("environment") or {}
    steps = int(results["global_steps"])
    return {
        "model": run.name,
        "procedure": PHASES[run.phase],
        "command": "dnl-train " + " ".join(o for o in run.overrides if not o.startswith("zoo.parents_dir=")),
        "init_from": (run.config.get("zoo") or {}).get("parent"),
        "optimizer_steps": steps,
        "epochs": results.get("epochs"),
        "batch_size": int(data["batch_size"]),
        "patch_size": int(data["patch_size"]),
        "patches_seen": steps * int(data["batch_size"]),
        "optimizer": {"name": "Adam", "lr": module["lr"], "lr_schedule": module.get("lr_schedule"),
                      "lr_min": module.get("lr_min")},
        "precision": results.get("precision"),
        "train_seconds": results.get("train_seconds"),
        "machine": environment.get("machine"),
        "versions": environment.get("versions"),
        "source": environment.get("source"),
        "stages": [{key: row.get(key) for key in ("stage", "blocks", "steps", "global_step", "params", "val_psnr",
                                                   "val_ssim", "ended")} for row in results.get("stages") or []],
    }


def curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation PSNR at the end of every stage of every run of a model's history, against patches seen since
    the first run started."""
    points, offset = [], 0
    for entry in history:
        for stage in entry["stages"]:
            points.append({"patches_seen": offset + int(stage["global_step"]) * entry["batch_size"],
                           "model": entry["model"], "blocks": stage["blocks"], "params": stage["params"],
                           "val_psnr": stage["val_psnr"]})
        offset += entry["patches_seen"]
    return points


def build_card(run: Run, network_config: dict[str, Any], test: dict[str, Any],
                references: dict[str, Any], history: list[dict[str, Any]], check: dict[str, Any],
                eval_command: str, zoo_command: str) -> dict[str, Any]:
    """The card of one model (stored under ``"card"`` in its weights JSON)."""
    stats = run.results["model"]
    return {
        "name": run.name,
        "description": describe(run.name, network_config, run.noise),
        "network": network_config,
        "params": stats["params"],
        "macs_per_pixel": stats["macs_per_pixel"],
        "receptive_field": stats.get("receptive_field"),
        "noise": run.noise,
        "family": run.family.label,
        "train_data": "Train400 (400 grey 180x180 images of BSDS500 train + test; no overlap with BSD68)",
        "history": history,
        "optimizer_steps": sum(entry["optimizer_steps"] for entry in history),
        "patches_seen": sum(entry["patches_seen"] for entry in history),
        "train_seconds": round(sum(entry["train_seconds"] or 0 for entry in history), 1),
        "zoo_command": zoo_command,
        "eval_command": eval_command,
        "test": test,
        "references": references,
        "curve": curve(history),
        "check": check,
    }


def describe(name: str, network_config: dict[str, Any], noise: dict[str, Any]) -> str:
    """One line: the network and the noise it was trained on."""
    blocks = network_config.get("blocks") or []
    network = ("DS-DN-ResNet (DN-ResNet-13 with depthwise-separable ResBlocks)" if "ds" in blocks
               else f"DN-ResNet-{3 + 2 * len(blocks)}")
    kind = family_of(noise).label
    if noise.get("blind"):
        ranges = ", ".join(f"{key.removesuffix('_range')} {value[0]:g}-{value[1]:g}"
                           for key, value in noise.items() if key.endswith("_range") and value)
        level = f"blind ({ranges})"
    else:
        level = "non-blind, " + ", ".join(f"{key} {noise[key]:g}" for key in ("peak", "sigma") if key in noise)
    return f"{network}, grey, {kind} noise, {level}"


def build(zoo_dir: Path, install: Path, docs: Path | None, zoo_command: str) -> list[Path]:
    """Measure every run of ``zoo_dir`` and install its weights + card into ``install``; returns the JSON paths."""

    runs = find_runs(zoo_dir)
    work = zoo_dir / "build"
    staging = work / "package"
    if staging.exists():
        shutil.rmtree(staging)
    data_dir = os.environ.get("DNL_DATA_DIR", "data")
    references_by_family: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    written = []
    for run in runs:
        family = run.family
        max_images = run.config["data"].get("test_max_images")
        if family.label not in references_by_family:
            references_by_family[family.label] = measure_references(family, work, max_images)
        overrides = [*eval_overrides(family, max_images), f"ckpt={run.checkpoint}"]
        test = dnl_eval(overrides, work / "eval" / run.name)
        checkpoint = read_checkpoint(run.checkpoint)
        network = network_from_checkpoint(run.checkpoint, checkpoint=checkpoint)
        network_config = dict(checkpoint.get("network_config") or checkpoint["hyper_parameters"]["network"])
        parent = (run.config.get("zoo") or {}).get("parent")
        if parent is not None and parent not in histories:
            raise ZooBuildError(f"{run.folder}: its parent {parent} is not among the parents of {zoo_dir}")
        history = [*(histories.get(parent) or []), training_entry(run)]
        histories[run.name] = history
        level = check_level(run.noise)
        check = {"set": CHECK_SET, "images": CHECK_IMAGES, "level": level,
                 "psnr": check_psnr(network, run.noise, level, data_dir)}
        eval_command = "dnl-eval " + " ".join(o for o in overrides if not o.startswith("ckpt=")) + f" ckpt={run.name}"
        card = build_card(run, network_config, test, references_by_family[family.label], history, check,
                           eval_command, zoo_command)
        provenance = {"trained_by": "make zoo (denoise_lightning.zoo.build)", "zoo_command": zoo_command,
                      "source": history[-1]["source"]}
        written.append(save_weights(network, network_config, staging, run.name, noise=run.noise,
                                    provenance=provenance, card=card))
        print(f"{run.name}: {check_summary(card)}", flush=True)
    install.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.iterdir()):
        shutil.copy2(path, install / path.name)
    render_docs(install, docs)
    return [install / path.name for path in written]


def check_summary(card: dict[str, Any]) -> str:
    """A line for the build log: the model's BSD68 PSNR at every level."""
    bsd68 = card["test"].get(CHECK_SET, {})
    return "BSD68 " + ", ".join(f"{level} {row['psnr']:.2f} dB" for level, row in bsd68.items())


def render_docs(install: Path, docs: Path | None) -> None:
    """Render every card's Markdown in ``install`` from its JSON, and the zoo table ``docs`` (None: no table)."""
    from denoise_lightning.files import atomic_write_text

    metadata = [read_metadata(path) for path in sorted(install.glob("*.json"))]
    metadata = [m for m in metadata if m.get("card")]
    for item in metadata:
        atomic_write_text(install / f"{item['name']}.md", render_card(item))
    if docs is not None:
        atomic_write_text(docs, render_table(metadata))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m denoise_lightning.zoo.build",
                                     description="Measure the runs of `make zoo` and install their weights and model "
                                                 "cards; or (--render) re-render the installed cards.")
    parser.add_argument("zoo_dir", type=Path, nargs="?", help="the folder of a `make zoo` run (parents/, evolved/)")
    parser.add_argument("--install", type=Path, default=PACKAGE_DIR,
                        help="where the weights and cards go (default: the package's zoo, %(default)s)")
    parser.add_argument("--docs", type=Path, default=DOCS_TABLE, help="the zoo table to write (default %(default)s)")
    parser.add_argument("--command", default="make zoo", help="the command that trained the zoo, for the cards")
    parser.add_argument("--render", action="store_true", help="only re-render the cards' Markdown and the table")
    args = parser.parse_args(argv)
    try:
        if args.render:
            render_docs(args.install, args.docs)
        elif args.zoo_dir is None:
            parser.error("give the zoo folder (or --render)")
        else:
            build(args.zoo_dir, args.install, args.docs, args.command)
    except ZooBuildError as error:
        print(f"zoo build: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
