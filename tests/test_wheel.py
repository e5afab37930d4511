"""A wheel works on its own: it holds every config and data file of the package, and once installed into a fresh
virtualenv (which sees the dependencies already installed here, but not this source tree) ``dnl-train`` and
``dnl-eval`` run from an empty folder, composing their configs from the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "denoise_lightning"
TRAIN = ["trainer.max_steps=1", "data.batch_size=4", "data.patch_size=32", "data.val_max_images=1",
         "data.test_max_images=1", "model.num_layers=5", "model.channels=16", "trainer.precision=32-true",
         "callbacks.progress_bar=null"]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the sources (the build leaves build/ and egg-info in the tree)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "-w", str(root / "dist"), str(source)], cwd=root)
    (built,) = (root / "dist").glob("denoise_lightning-*.whl")
    return built


def test_the_wheel_holds_every_config_and_data_file(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    needed = {path.relative_to(REPO_ROOT).as_posix() for pattern in ("conf/**/*.yaml", "datasets/*.json")
              for path in PACKAGE.glob(pattern)}
    assert len(needed) > 30 and "denoise_lightning/conf/__init__.py" in shipped
    assert not needed - shipped, sorted(needed - shipped)


def test_installed_wheel_trains_and_evaluates_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # installed before the dependencies are visible, so pip never sees (or touches) the editable install here
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
         str(wheel)], cwd=tmp_path)
    site_packages = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path).stdout.strip()
    # a plain path line: the directory joins sys.path, its own .pth files (the editable finder) are not processed
    (Path(site_packages) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(python), "-c", "import denoise_lightning; print(denoise_lightning.__file__)"], empty, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    run([str(venv / "bin" / "dnl-train"), *TRAIN, "hydra.run.dir=train"], empty, env)
    trained = json.loads((empty / "train" / "results.json").read_text())
    assert trained["global_steps"] == 1 and trained["model"]["class"] == "DnCNN"
    checkpoint = empty / "train" / "checkpoints" / "last.ckpt"
    run([str(venv / "bin" / "dnl-eval"), f"ckpt={checkpoint}", "data.test_max_images=1",
         "trainer.enable_progress_bar=false", "hydra.run.dir=eval"], empty, env)
    evaluated = json.loads((empty / "eval" / "results.json").read_text())["test"]["embedded"]["sigma25"]
    assert evaluated["psnr_noisy"] == trained["test"]["embedded"]["sigma25"]["psnr_noisy"]  # the same noisy image
