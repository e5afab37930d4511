"""The shipped model zoo: every model loads offline, its weights are the ones its card describes, it denoises real
test images at its level, its card's drift check still measures the same, and the cards and docs table are in sync
with the weights JSON. Plus the zoo builder on its own (smoke-budget `make zoo` end to end is a slow test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from denoise_lightning.zoo.build import (
    CHECK_IMAGES,
    ZooBuildError,
    check_level,
    check_psnr,
    describe,
    find_runs,
    render_docs,
)
from denoise_lightning.zoo.cards import render_card, render_table
from denoise_lightning.zoo.registry import DEFAULT_MODEL, ZOO_DIR, load_model, zoo_models
from denoise_lightning.zoo.weights import read_metadata, sha256_of

REPO_ROOT = Path(__file__).resolve().parents[1]
ZOO_NAMES = ("dn-resnet13-sigma15", "dn-resnet13-sigma25", "dn-resnet13-sigma50", "dn-resnet13-blind",
             "dn-resnet13-poisson-blind", "dn-resnet13-pg-blind", "ds-dn-resnet-sigma25", "ds-dn-resnet-blind")
DS_PARENTS = {"ds-dn-resnet-sigma25": "dn-resnet13-sigma25", "ds-dn-resnet-blind": "dn-resnet13-blind"}


def shipped() -> dict[str, dict]:
    return {name: read_metadata(path) for name, path in zoo_models().items()}


def test_the_whole_zoo_ships_with_weights_cards_and_the_default_model():
    models = zoo_models()
    assert set(models) == set(ZOO_NAMES) and DEFAULT_MODEL in models
    for name, path in models.items():
        metadata = read_metadata(path)
        tensors = path.parent / metadata["tensors"]["file"]
        assert sha256_of(tensors) == metadata["tensors"]["sha256"], name  # the card's sha256 is the shipped file's
        assert (path.parent / f"{name}.md").read_text() == render_card(metadata), f"{name}.md is out of date"
        card = metadata["card"]
        assert card["name"] == name and card["optimizer_steps"] > 0 and card["patches_seen"] > 0
        for set_name in ("bsd68", "set12"):  # every standard level of its noise, on both sets, with references
            assert set(card["test"][set_name]) == set(next(iter(card["references"].values()))[set_name])
    total = sum((ZOO_DIR / f"{name}.safetensors").stat().st_size for name in models)
    assert total < 8e6  # small enough to ship inside the package


def test_the_docs_table_is_generated_from_the_shipped_cards():
    items = [metadata for _, metadata in sorted(shipped().items())]
    assert (REPO_ROOT / "docs" / "zoo.md").read_text() == render_table(items)


def test_evolved_models_state_their_parents_history():
    models = shipped()
    for name, parent in DS_PARENTS.items():
        history = models[name]["card"]["history"]
        assert [entry["model"] for entry in history] == [parent, name]
        assert history[0] == models[parent]["card"]["history"][0]
        assert history[1]["init_from"] == parent
        assert models[name]["card"]["params"] < 0.5 * models[parent]["card"]["params"]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_model_denoises_real_images_and_its_drift_check_holds(name, shared_data):
    """Re-measures the card's figure (the first BSD68 images at its check level, fp32) and fails on drift; the
    output must beat the noisy input by a clear margin."""
    metadata = read_metadata(zoo_models()[name])
    check = metadata["card"]["check"]
    network = load_model(name)
    assert network.model_name == name and network.trained_noise == metadata["noise"]
    psnr = check_psnr(network, metadata["noise"], check["level"], shared_data, images=check["images"])
    assert psnr == pytest.approx(check["psnr"], abs=0.02)
    level = "_".join(f"{key}{value:g}" for key, value in check["level"].items())
    row = metadata["card"]["test"]["bsd68"][level]
    assert row["psnr"] > row["psnr_noisy"] + 2.0


def test_check_level_is_the_trained_or_validation_level():
    gaussian = "denoise_lightning.degradations.noise.GaussianNoise"
    assert check_level({"_target_": gaussian, "sigma": 15, "blind": False}) == {"sigma": 15}
    assert check_level({"_target_": gaussian, "sigma": 25, "blind": True}) == {"sigma": 25}
    poisson_gaussian = {"_target_": "denoise_lightning.degradations.noise.PoissonGaussianNoise", "peak": 4,
                        "sigma": 10, "blind": True}
    assert check_level(poisson_gaussian) == {"peak": 4, "sigma": 10}


def test_describe_names_network_and_noise():
    gaussian = {"_target_": "denoise_lightning.degradations.noise.GaussianNoise", "sigma": 25, "blind": True,
                "sigma_range": [0, 55]}
    assert describe("x", {"blocks": ["res"] * 5}, gaussian) == "DN-ResNet-13, grey, Gaussian noise, blind (sigma 0-55)"
    poisson = {"_target_": "denoise_lightning.degradations.noise.PoissonNoise", "peak": 4, "blind": False}
    assert describe("x", {"blocks": ["ds"] * 5}, poisson).endswith("Poisson noise, non-blind, peak 4")


def test_find_runs_names_unfinished_runs(tmp_path):
    with pytest.raises(ZooBuildError, match="holds no zoo runs"):
        find_runs(tmp_path)
    run = tmp_path / "parents" / "dn-resnet13-sigma25"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: dn-resnet13-sigma25\n")
    (run / "job_status.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(ZooBuildError, match=r"dn-resnet13-sigma25: no results.json.*job status: failed"):
        find_runs(tmp_path)


def test_render_rewrites_cards_and_table(tmp_path):
    install = tmp_path / "models"
    shutil.copytree(ZOO_DIR, install)
    for card in install.glob("*.md"):
        card.write_text("stale\n")
    render_docs(install, tmp_path / "zoo.md")
    for name in ZOO_NAMES:
        assert (install / f"{name}.md").read_text() == (ZOO_DIR / f"{name}.md").read_text()
    assert (tmp_path / "zoo.md").read_text() == (REPO_ROOT / "docs" / "zoo.md").read_text()


def test_dnl_eval_takes_a_zoo_name(tmp_path, shared_data):
    """`dnl-eval ckpt=NAME` measures a shipped model: the card's BSD68 figures on its first images."""
    name = "dn-resnet13-sigma25"
    metadata = read_metadata(zoo_models()[name])
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "denoise_lightning.training.evaluate", f"ckpt={name}", "data=train400",
               "sets=[bsd68]", f"data.test_max_images={CHECK_IMAGES}", "trainer.precision=32-true",
               f"hydra.run.dir={out}"]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "DNL_DATA_DIR": str(shared_data)})
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["bsd68"]["sigma25"]["psnr"] == pytest.approx(metadata["card"]["check"]["psnr"], abs=0.02)


@pytest.mark.slow
def test_make_zoo_smoke_builds_cards_end_to_end(tmp_path, shared_data):
    """`make zoo ZOO_BUDGET=smoke` trains, evolves, measures and installs the whole zoo into a folder of its own."""
    install, docs = tmp_path / "models", tmp_path / "zoo.md"
    env = {**os.environ, "DNL_DATA_DIR": str(shared_data), "DNL_CPUS_PER_JOB": "1"}
    subprocess.run(["make", "zoo", "ZOO_BUDGET=smoke", f"ZOO_DIR={tmp_path / 'zoo'}", f"ZOO_INSTALL={install}",
                    f"ZOO_DOCS={docs}", f"PYTHON={sys.executable}"], check=True, cwd=REPO_ROOT, env=env)
    built = {path.stem for path in install.glob("*.json")}
    assert built == set(ZOO_NAMES)
    for name in ZOO_NAMES:
        metadata = read_metadata(install / f"{name}.json")
        assert metadata["card"]["zoo_command"].startswith("make zoo ZOO_BUDGET=smoke")
        assert torch.isfinite(torch.tensor(metadata["card"]["check"]["psnr"]))
    assert "ds-dn-resnet-blind" in docs.read_text()
