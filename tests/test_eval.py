"""``dnl-eval`` over the grid (sets x levels): baselines through the same noisy images, metrics and results files as
networks, their on-disk cache and process pool, and clear errors for wrong invocations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, compose_config
from PIL import Image

import denoise_lightning.baselines as baselines
from denoise_lightning.baselines import BM3D, read_entry
from denoise_lightning.degradations.noise import PoissonNoise, deterministic_noisy
from denoise_lightning.training.data import load_image
from denoise_lightning.training.evaluate import evaluate

QUIET = ["trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def set_root(tmp_path_factory):
    """Two test sets of real 64x64 crops of Set12 images: ``a`` (C.man, House) and ``b`` (Peppers)."""
    if not (SHARED_DATA / "test" / "set12").is_dir():
        pytest.skip(f"benchmark data not found under {SHARED_DATA} (set DNL_DATA_DIR)")
    root = tmp_path_factory.mktemp("sets")
    for set_name, names in {"a": ["01", "02"], "b": ["03"]}.items():
        (root / set_name).mkdir()
        for name in names:
            with Image.open(SHARED_DATA / "test" / "set12" / f"{name}.png") as image:
                image.crop((96, 96, 160, 160)).save(root / set_name / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def small_sets(set_root):
    """Overrides that replace the default test set by sets a and b."""
    return ["~data.test_sets.embedded", f"+data.test_sets.a={set_root / 'a'}", f"+data.test_sets.b={set_root / 'b'}"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def bm3d_config(output_dir, small_sets, cache_dir, noise: list[str], workers: int = 1):
    return compose_config("eval", output_dir, ["model=bm3d", *noise, *small_sets, f"cache_dir={cache_dir}",
                                               f"workers={workers}", *QUIET])


GAUSSIAN = ["noise=gaussian", "noise.test_sigmas=[15,50]"]


@pytest.fixture(scope="module")
def bm3d_grid(tmp_path_factory, small_sets, cache_dir):
    """BM3D over sets a, b x sigma 15, 50 (6 images, computed in this process), counting the BM3D calls."""
    calls = []
    counted = baselines.timed_denoise

    def counting(*args):
        calls.append(args[2])
        return counted(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baselines, "timed_denoise", counting)
        output_dir = tmp_path_factory.mktemp("bm3d")
        results = evaluate(bm3d_config(output_dir, small_sets, cache_dir, GAUSSIAN))
    return results, output_dir, calls


def test_baseline_writes_the_grid_with_the_oracle_level(bm3d_grid):
    results, output_dir, calls = bm3d_grid
    assert len(calls) == 6
    written = json.loads((output_dir / "results.json").read_text())
    assert written["test"] == results["test"]
    assert {name: list(levels) for name, levels in written["test"].items()} == {
        "a": ["sigma15", "sigma50"], "b": ["sigma15", "sigma50"]}
    assert written["model"]["oracle_level"] is True and written["model"]["method"] == "BM3D (np)"
    assert "true level given" in (output_dir / "results.md").read_text()
    for levels in written["test"].values():
        for row in levels.values():
            assert row["psnr"] > row["psnr_noisy"] + 5 and row["ssim"] > row["ssim_noisy"]


def test_rerun_reads_the_cache_and_calls_no_bm3d(bm3d_grid, small_sets, cache_dir, tmp_path, monkeypatch):
    def fail(*args):
        raise AssertionError("BM3D ran although every output is cached")

    monkeypatch.setattr(baselines, "timed_denoise", fail)
    monkeypatch.setattr(BM3D, "denoise", fail)
    rerun = evaluate(bm3d_config(tmp_path, small_sets, cache_dir, GAUSSIAN))
    assert rerun["test"] == bm3d_grid[0]["test"]
    assert len(list(cache_dir.rglob("*.npz"))) == 6 and not list(cache_dir.rglob("*.tmp"))


def test_network_and_baseline_are_scored_on_the_same_noisy_images(bm3d_grid, trained_run, small_sets, tmp_path):
    network = evaluate(compose_config("eval", tmp_path, [f"ckpt={trained_run['checkpoint']}", *GAUSSIAN,
                                                         *small_sets, *QUIET]))
    baseline = bm3d_grid[0]
    assert list(network["test"]) == ["a", "b"] and list(network["test"]["a"]) == ["sigma15", "sigma50"]
    for set_name, levels in baseline["test"].items():
        for level, row in levels.items():
            assert network["test"][set_name][level]["psnr_noisy"] == row["psnr_noisy"]
            assert network["test"][set_name][level]["ssim_noisy"] == row["ssim_noisy"]


def test_poisson_runs_vst_bm3d_in_a_process_pool(set_root, small_sets, tmp_path):
    """Two worker processes give exactly the outputs of an in-process call (BM3D runs single-threaded)."""
    cache = tmp_path / "cache"
    results = evaluate(bm3d_config(tmp_path / "out", small_sets, cache,
                                   ["noise=poisson", "noise.test_peaks=[4]", "sets=[a]"], workers=2))
    assert list(results["test"]) == ["a"] and list(results["test"]["a"]) == ["peak4"]
    assert results["model"]["method"] == "Anscombe + BM3D (np) + unbiased inverse"
    assert results["test"]["a"]["peak4"]["psnr"] > results["test"]["a"]["peak4"]["psnr_noisy"] + 5
    (entry,) = cache.rglob("0000_01_*.npz")  # image 0 of set a
    clean = torch.from_numpy(load_image(set_root / "a" / "01.png")).permute(2, 0, 1)[None].float() / 255.0
    noisy = deterministic_noisy(PoissonNoise(), clean, "a", 0, {"peak": 4.0})
    inline = BM3D().denoise(noisy[0].permute(1, 2, 0).double().numpy(), {"peak": 4.0}).astype(np.float32)
    np.testing.assert_array_equal(read_entry(entry)[0], inline)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=bm3d", "ckpt=some.ckpt", "noise=gaussian"], "not both"),
    ([], "either a checkpoint"),
    (["model=dncnn"], "is a network"),
    (["model=bm3d"], "needs a noise model"),
    (["model=bm3d", "noise=gaussian", "sets=[bsd100]"], r"\['bsd100'\] not in data.test_sets"),
])
def test_wrong_invocations_are_clear_errors(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        evaluate(compose_config("eval", tmp_path, [*overrides, f"cache_dir={tmp_path}", *QUIET]))
