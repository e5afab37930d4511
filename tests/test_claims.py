"""The claims report (sweeps/claims.py) on synthetic sweeps: every verdict branch, from run folders to the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, FAST_RUN, REPO_ROOT, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from denoise_lightning.sweeps.claims import (
    CLAIMS,
    FAILS,
    HOLDS,
    UNRESOLVED,
    Claim,
    claim_rows,
    report,
    runs_of,
    verdict,
)
from denoise_lightning.sweeps.collect import gather
from denoise_lightning.sweeps.collect import main as collect_main
from denoise_lightning.training.train import train


def _run(folder: Path, arm: str, seed: int, psnr: float, ssim: float = 0.8, steps: int = 100,
         levels: tuple[str, ...] = ("sigma25",)) -> None:
    """A completed run folder as dnl-train leaves it: config.yaml (seed) and results.json (name, test metrics)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\nname: {arm}\n")
    test = {"bsd68": {level: {"psnr": psnr, "ssim": ssim, "psnr_noisy": 20.0, "ssim_noisy": 0.3}
                      for level in levels}}
    (folder / "results.json").write_text(json.dumps({"model": {"name": arm}, "test": test, "global_steps": steps}))


def _sweep(root: Path, arms: dict[str, list[float]], **kwargs) -> Path:
    """One job folder per arm x seed; ``arms`` maps an arm to its PSNR per seed."""
    job = 0
    for arm, values in arms.items():
        for seed, psnr in enumerate(values):
            _run(root / str(job), arm, seed, psnr, **kwargs)
            job += 1
    return root


def claim_rows_for(root: Path, claims) -> list[dict]:
    """The claim rows of the runs under ``root``."""
    return claim_rows(runs_of(gather([root])[0]), claims)


PAIR = (Claim("a >= b", "a", "b", "psnr"),)


@pytest.mark.parametrize(("arms", "expected", "difference"), [
    ({"a": [29.0, 29.1, 29.2], "b": [28.5, 28.6, 28.7]}, HOLDS, 0.5),          # 0.5 dB apart, spread 0.08
    ({"a": [28.5, 28.6, 28.7], "b": [29.0, 29.1, 29.2]}, FAILS, -0.5),
    ({"a": [28.6, 29.1, 29.6], "b": [28.5, 29.0, 29.5]}, UNRESOLVED, 0.1),     # spread 0.41 > difference 0.1
    ({"a": [29.0], "b": [28.0, 28.1, 28.2]}, UNRESOLVED, 0.9),                 # one seed: no spread
])
def test_each_verdict_from_run_folders(tmp_path, arms, expected, difference):
    rows = claim_rows_for(_sweep(tmp_path, arms), PAIR)
    assert len(rows) == 1 and rows[0]["verdict"] == expected
    assert rows[0]["difference"] == pytest.approx(difference)
    assert rows[0]["arm_n"] == len(arms["a"]) and rows[0]["arm_seeds"] == list(range(len(arms["a"])))
    assert rows[0]["arm_steps"] == 100 and (rows[0]["set"], rows[0]["level"]) == ("bsd68", "sigma25")


def test_verdict_against_an_interval():
    """'PSNR within 0.1 dB' holds only when difference +- spread lies inside [-0.1, 0.1]; a claimed minimum gain
    (SSIM +0.005) fails when even difference + spread stays below it."""
    assert verdict(0.02, 0.03, -0.1, 0.1) == HOLDS
    assert verdict(0.08, 0.05, -0.1, 0.1) == UNRESOLVED
    assert verdict(-0.3, 0.05, -0.1, 0.1) == FAILS
    assert verdict(0.001, 0.001, 0.005) == FAILS
    assert verdict(0.008, 0.001, 0.005) == HOLDS
    assert verdict(0.1, 0.1, 0.0) == HOLDS and verdict(0.1, 0.1001, 0.0) == UNRESOLVED


def test_report_covers_every_claim_and_says_which_arm_is_missing(tmp_path, capsys, monkeypatch):
    """All arms but 'edge-b': every other claim gets its verdict; blind (tested at 15 / 25 / 50) is compared with the
    non-blind baseline at sigma25 only, the level both have. dnl-collect --claims prints it and writes claims.md."""
    monkeypatch.setenv("COLUMNS", "250")
    arms = {"cascade": [29.0, 29.1, 29.2], "oneshot": [29.3, 29.4, 29.5], "cascade-converged": [29.6, 29.5, 29.7],
            "oneshot-converged": [29.4, 29.5, 29.3], "ds-incremental": [29.0, 29.1, 29.2],
            "ds-oneshot": [28.5, 28.6, 28.4], "edge-a": [29.3, 29.4, 29.5]}
    _sweep(tmp_path, arms)
    for seed, psnr in enumerate([29.2, 29.3, 29.4]):
        _run(tmp_path / f"blind{seed}", "blind", seed, psnr, levels=("sigma15", "sigma25", "sigma50"))
    rows = report([tmp_path], tmp_path)
    verdicts = {row["claim"]: row["verdict"] for row in rows}
    assert set(verdicts) == {claim.name for claim in CLAIMS}
    assert verdicts["cascade >= one-shot, equal steps (PSNR)"] == FAILS
    assert verdicts["cascade >= one-shot, each to convergence (PSNR)"] == HOLDS
    assert verdicts["incremental DS loses < 0.1 dB vs DN-ResNet-13"] == HOLDS
    assert verdicts["incremental DS > one-shot DS (PSNR)"] == HOLDS
    assert verdicts["edge-a: PSNR within 0.1 dB of MSE"] == HOLDS
    assert verdicts["edge-a: SSIM +0.005 or more over MSE"] == FAILS      # identical SSIM: +0 +- 0
    assert verdicts["edge-b: SSIM +0.005 or more over MSE"] == "no runs of edge-b"
    blind = [row for row in rows if row["arm"] == "blind"]
    assert [(row["level"], row["verdict"]) for row in blind] == [("sigma25", UNRESOLVED)]  # -0.1 +- 0.08

    assert collect_main([str(tmp_path), "--claims"]) == 0
    printed = capsys.readouterr().out
    assert "cascade >= one-shot, equal steps" in printed and "does not hold" in printed
    markdown = (tmp_path / "claims.md").read_text()
    assert "| cascade >= one-shot, equal steps (PSNR) | bsd68 sigma25 | cascade: 29.10 +- 0.10 (n=3, 100 steps)" in (
        markdown)
    assert json.loads((tmp_path / "claims.json").read_text())[0]["verdict"] == FAILS


def test_failed_jobs_are_not_counted(tmp_path):
    _sweep(tmp_path, {"a": [29.0, 29.1, 29.2], "b": [28.5, 28.6, 28.7]})
    (tmp_path / "0" / "job_status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    rows = claim_rows_for(tmp_path, PAIR)
    assert rows[0]["arm_n"] == 2 and rows[0]["arm_seeds"] == [1, 2]


# ---------------------------------------------------------------- the claims grid (experiment=reproduce*)
ARMS_DIR = CONF_DIR / "experiment" / "reproduce_arms"
ARMS = sorted(p.stem for p in ARMS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("budget", ["reproduce_smoke", "reproduce"])
def test_the_grid_runs_every_arm_of_every_claim_with_three_seeds(budget):
    """The sweep lists every arm file, at least 3 seeds; each arm composes, names the arm a claim reads, and the
    one-shot / cascade pairs train for the same number of epochs."""
    params = OmegaConf.load(CONF_DIR / "experiment" / f"{budget}.yaml").hydra.sweeper.params
    assert sorted(params["+experiment/reproduce_arms"].split(",")) == ARMS
    assert len(str(params.seed).split(",")) >= 3
    names, epochs = {}, {}
    for arm in ARMS:
        arm_cfg = compose_config("train", Path("unused"), [f"experiment={budget}", f"+experiment/reproduce_arms={arm}"])
        names[arm] = arm_cfg.name
        epochs[arm_cfg.name] = arm_cfg.trainer.max_epochs
        stages = instantiate(arm_cfg.callbacks.cascade).stages
        assert stages[0]["blocks"] == list(arm_cfg.model.blocks)  # no transformation before the first epoch
    assert {c.arm for c in CLAIMS} | {c.baseline for c in CLAIMS} == set(names.values())
    assert epochs["cascade"] == epochs["oneshot"] == epochs["edge-a"] == epochs["blind"]
    assert epochs["ds-incremental"] == epochs["ds-oneshot"]


def test_an_arm_trained_to_convergence_records_why_each_stage_ended(tmp_path):
    """The cascade-converged arm of the smoke grid, shrunk (3 stages, 8-channel blocks): every stage row says how it
    ended and how many steps it used, and the steps add up to the run's."""
    stages = "[{max_epochs:2,blocks:[]},{max_epochs:2,blocks:[res]},{max_epochs:2,blocks:[res,res]}]"
    cfg = compose_config("train", tmp_path, [
        "experiment=reproduce_smoke", "+experiment/reproduce_arms=cascade_converged", *FAST_RUN,
        "model.channels=8", "model.head_channels=16", "data.patches_per_image=4", "data.test_max_images=1",
        f"callbacks.cascade.stages={stages}"])
    results = train(cfg)
    rows = results["stages"]
    assert [row["blocks"] for row in rows] == [[], ["res"], ["res", "res"]]
    assert all(row["ended"] in ("converged", "cap") for row in rows)
    assert sum(row["steps"] for row in rows) == results["global_steps"] == 3 * sum(row["epochs"] for row in rows)


@pytest.mark.slow
def test_make_reproduce_smoke_runs_the_grid_and_reports_every_claim(tmp_path):
    """`make reproduce` (smoke budget, Ray launcher on this machine): 27 jobs complete and the report gives every
    claim a verdict over 3 seeds (several minutes on 2 cores)."""
    sweep = tmp_path / "sweep"
    done = subprocess.run(["make", "-C", str(REPO_ROOT), "reproduce", f"PYTHON={sys.executable}",
                           f"REPRODUCE_DIR={sweep}", "ARGS=trainer.precision=32-true callbacks.progress_bar=null "
                           "trainer.enable_progress_bar=false"], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"]["completed"] == 27
    rows = json.loads((sweep / "claims.json").read_text())
    assert {row["claim"] for row in rows} == {claim.name for claim in CLAIMS}
    assert all(row["verdict"] in (HOLDS, FAILS, UNRESOLVED) and row["arm_n"] == row["baseline_n"] == 3
               for row in rows)
