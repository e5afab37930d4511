"""How the package imports: inference needs torch and the networks, not the training stack (in a fresh interpreter,
loading a real checkpoint, denoising an image, dnl-denoise and dnl-export leave Lightning, Hydra and OmegaConf out
of ``sys.modules``); importing a module registers no OmegaConf resolver (``register_resolvers`` does, in one place);
the module-level imports of the package form no cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "denoise_lightning"

TRAINING_STACK = ("lightning", "lightning_fabric", "pytorch_lightning", "hydra", "omegaconf")

INFERENCE = """
import json, sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from denoise_lightning import denoise, load_model
from denoise_lightning.inference import cli, export

checkpoint, folder = sys.argv[1], Path(sys.argv[2])
clean = skimage.data.camera()[100:164, 200:280]
noise = np.random.default_rng(0).normal(0, 25, clean.shape)
noisy = np.clip(clean + noise, 0, 255).round().astype(np.uint8)
denoised = denoise(noisy, load_model(checkpoint))
(folder / "in").mkdir()
Image.fromarray(noisy).save(folder / "in" / "noisy.png")
cli.main([str(folder / "in"), "-o", str(folder / "out"), "--model", checkpoint])
export.main([checkpoint, "--format", "torchscript", "-o", str(folder / "network.pt")])
print(json.dumps({"psnr_noisy": peak_signal_noise_ratio(clean, noisy),
                  "psnr_denoised": peak_signal_noise_ratio(clean, denoised),
                  "imported": sorted(name for name in sys.modules if name.split(".")[0] in sys.argv[3].split(","))}))
"""


def test_inference_imports_no_training_stack(trained_run, tmp_path):
    done = subprocess.run([sys.executable, "-c", INFERENCE, trained_run["checkpoint"], str(tmp_path),
                           ",".join(TRAINING_STACK)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["psnr_denoised"] > report["psnr_noisy"] + 3.0, report  # the checkpoint really was loaded and ran
    assert (tmp_path / "out" / "noisy.png").is_file() and (tmp_path / "network.pt").is_file()
    assert report["imported"] == [], f"inference imported the training stack: {report['imported'][:10]}"


REGISTRATION = """
import importlib, json, pkgutil
from omegaconf import OmegaConf
import denoise_lightning

modules = [info.name for info in pkgutil.walk_packages(denoise_lightning.__path__, "denoise_lightning.")]
for name in modules:
    importlib.import_module(name)
from denoise_lightning.training.resolvers import RESOLVERS, register_resolvers

on_import = [name for name in RESOLVERS if OmegaConf.has_resolver(name)]
register_resolvers()
print(json.dumps({"modules": modules, "on_import": on_import,
                  "registered": [name for name in RESOLVERS if OmegaConf.has_resolver(name)]}))
"""


def test_importing_registers_no_resolver_and_register_resolvers_registers_all():
    done = subprocess.run([sys.executable, "-c", REGISTRATION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "denoise_lightning.sweeps.status" in report["modules"] and len(report["modules"]) > 30
    assert report["on_import"] == [], "registered at import time"
    assert set(report["registered"]) >= {"dnl_precision", "dnl_gpus_per_job", "dnl_cpus_per_job", "dnl_wandb_tags"}


def _module_imports(path: Path) -> set[str]:
    """The package modules that ``path`` imports at module level (imports inside functions run later)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if (PACKAGE.parent / node.module.replace(".", "/") / alias.name
                                                       ).with_suffix(".py").is_file() else node.module
                      for alias in node.names}
    return {name for name in found if name.split(".")[0] == PACKAGE.name}


def test_the_package_has_no_import_cycles():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _module_imports(path)
    assert len(graph) > 30 and "denoise_lightning.training.resolvers" in graph["denoise_lightning.training.train"]
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join([*path, module])}"
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
