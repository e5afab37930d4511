"""Hostile checkpoints: nothing in a checkpoint file runs. A real checkpoint of a short training is tampered with the
gadgets ``hydra.utils.instantiate`` would call (``pathlib.Path.write_text`` with a nested ``_target_`` argument writes
a ``.pth`` file, which site-packages would execute at the next start of Python), and every path that rebuilds
something from a checkpoint refuses it: ``load_model`` (dnl-denoise, dnl-export, init_from), dnl-eval,
``DenoiseModule.load_from_checkpoint`` and a resumed run (``ckpt_path=``). Each error names the key and the value,
and no file is written."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config

from denoise_lightning import load_model
from denoise_lightning.inference.cli import main as denoise_main
from denoise_lightning.training.evaluate import evaluate
from denoise_lightning.training.module import DenoiseModule
from denoise_lightning.training.train import train
from denoise_lightning.zoo.checkpoint import CheckpointError


def gadgets(root: Path) -> dict[str, tuple[dict, Path]]:
    """name -> (a ``_target_`` config that writes a file when instantiated by Hydra, the path it would create)."""
    pth = root / "site-packages" / "dnl_owned.pth"
    pth.parent.mkdir(parents=True, exist_ok=True)
    return {
        "pathlib.Path.write_text": ({"_target_": "pathlib.Path.write_text",
                                     "self": {"_target_": "pathlib.Path", "_args_": [str(pth)]},
                                     "data": "import os; os.system('echo owned')\n"}, pth),
        "builtins.open": ({"_target_": "builtins.open", "file": str(pth), "mode": "w"}, pth),
        "os.makedirs": ({"_target_": "os.makedirs", "name": str(root / "made")}, root / "made"),
        "shutil.copyfile": ({"_target_": "shutil.copyfile", "src": __file__, "dst": str(pth)}, pth),
    }


@pytest.fixture
def checkpoint(trained_run) -> dict:
    return torch.load(trained_run["checkpoint"], map_location="cpu", weights_only=True)


def save(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


def tampered(checkpoint: dict, slot: str, config: dict) -> dict:
    """A copy of ``checkpoint`` with ``config`` at ``slot`` (``network_config`` or ``hyper_parameters.<key>``)."""
    hostile = copy.deepcopy(checkpoint)
    if slot == "network_config":
        hostile["network_config"] = config
    else:
        hostile.pop("network_config")  # load_model reads hyper_parameters.network when there is none
        hostile["hyper_parameters"][slot.split(".")[1]] = config
    return hostile


def refused(error: BaseException, where: str, value: object) -> bool:
    return f"{where}={value!r}" in str(error)


def test_a_pickle_payload_is_refused_by_weights_only(checkpoint, tmp_path):
    written = tmp_path / "site-packages" / "dnl_owned.pth"
    written.parent.mkdir()

    class Payload:
        def __reduce__(self):
            return Path.write_text, (written, "import os; os.system('echo owned')\n")

    path = save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "lr": Payload()}},
                tmp_path / "pickle.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_model(path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        DenoiseModule.load_from_checkpoint(path, map_location="cpu")
    assert not written.exists()


@pytest.mark.parametrize("slot", ["network_config", "hyper_parameters.network"])
@pytest.mark.parametrize("gadget", ["pathlib.Path.write_text", "builtins.open", "os.makedirs", "shutil.copyfile"])
def test_a_stdlib_target_is_refused_where_a_network_is_rebuilt(gadget, slot, checkpoint, tmp_path):
    config, written = gadgets(tmp_path)[gadget]
    path = save(tampered(checkpoint, slot, config), tmp_path / "hostile.ckpt")
    with pytest.raises(CheckpointError) as load_error:
        load_model(path)
    assert refused(load_error.value, f"{slot}._target_", gadget) and str(path) in str(load_error.value)
    where = "network_config" if slot == "network_config" else "network"  # the module builds hparams by name
    with pytest.raises(CheckpointError) as module_error:
        DenoiseModule.load_from_checkpoint(path, map_location="cpu")
    assert refused(module_error.value, f"{where}._target_", gadget)
    assert not written.exists()


@pytest.mark.parametrize("slot, key", [("hyper_parameters.noise", "sigma"), ("hyper_parameters.loss", "reduction")])
@pytest.mark.parametrize("gadget", ["pathlib.Path.write_text", "os.makedirs"])
def test_a_stdlib_target_is_refused_for_the_noise_and_the_loss(gadget, slot, key, checkpoint, tmp_path):
    config, written = gadgets(tmp_path)[gadget]
    name = slot.split(".")[1]
    path = save(tampered(checkpoint, slot, config), tmp_path / "hostile.ckpt")
    with pytest.raises(CheckpointError) as error:
        DenoiseModule.load_from_checkpoint(path, map_location="cpu")
    assert refused(error.value, f"{name}._target_", gadget)
    # an allowed class with a nested _target_ argument: the gadget hides one level down
    allowed = dict(checkpoint["hyper_parameters"][name])
    path = save(tampered(checkpoint, slot, {**allowed, key: config}), tmp_path / "nested.ckpt")
    with pytest.raises(CheckpointError) as error:
        DenoiseModule.load_from_checkpoint(path, map_location="cpu")
    assert refused(error.value, f"{name}.{key}._target_", gadget)
    assert not written.exists()


@pytest.mark.parametrize("nest", ["dict", "list"])
def test_a_nested_target_in_the_arguments_of_a_network_is_refused(nest, checkpoint, tmp_path):
    config, written = gadgets(tmp_path)["pathlib.Path.write_text"]
    network = dict(checkpoint["network_config"])
    network["channels"] = config if nest == "dict" else [1, config]
    key = "channels._target_" if nest == "dict" else "channels[1]._target_"
    path = save(tampered(checkpoint, "hyper_parameters.network", network), tmp_path / "hostile.ckpt")
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert refused(error.value, f"hyper_parameters.network.{key}", "pathlib.Path.write_text")
    assert not written.exists()


def test_a_hyper_parameter_that_is_not_plain_is_refused(checkpoint, tmp_path):
    network = {**checkpoint["network_config"], "channels": torch.tensor(3)}
    path = save(tampered(checkpoint, "network_config", network), tmp_path / "tensor.ckpt")
    with pytest.raises(CheckpointError, match=re.escape("network_config.channels=tensor(3)")):
        load_model(path)


@pytest.mark.parametrize("key, value", [("channels", 9_000), ("channels", 10**6), ("num_layers", 10**7)])
def test_an_oversized_network_is_refused_before_any_memory_is_allocated(key, value, checkpoint, tmp_path):
    """A config asking for ~10^14 parameters would exhaust memory while being built; it is measured on the meta
    device and refused, naming the key's network and the count."""
    network = {**checkpoint["network_config"], key: value}
    path = save(tampered(checkpoint, "network_config", network), tmp_path / "huge.ckpt")
    with pytest.raises(CheckpointError, match=rf"network_config(: .* would hold [\d,]+ parameters|\.{key}={value}: "
                                              "more than)"):
        load_model(path)


def test_dnl_eval_dnl_denoise_and_a_resumed_run_refuse_a_hostile_checkpoint(checkpoint, tmp_path, capsys):
    config, written = gadgets(tmp_path)["pathlib.Path.write_text"]
    gadget = "pathlib.Path.write_text"
    network_hostile = save(tampered(checkpoint, "hyper_parameters.network", config), tmp_path / "network.ckpt")
    with pytest.raises(CheckpointError) as error:
        evaluate(compose_config("eval", tmp_path / "eval", [f"ckpt={network_hostile}",
                                                            "trainer.enable_progress_bar=false"]))
    assert refused(error.value, "hyper_parameters.network._target_", gadget)
    noise_hostile = save(tampered(checkpoint, "hyper_parameters.noise", config), tmp_path / "noise.ckpt")
    with pytest.raises(CheckpointError) as error:
        evaluate(compose_config("eval", tmp_path / "eval", [f"ckpt={noise_hostile}",
                                                            "trainer.enable_progress_bar=false"]))
    assert refused(error.value, "noise._target_", gadget)

    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        denoise_main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(network_hostile)])
    assert exit_info.value.code == 2
    assert f"hyper_parameters.network._target_={gadget!r}" in capsys.readouterr().err

    resume_hostile = save(tampered(checkpoint, "network_config", config), tmp_path / "resume.ckpt")
    cfg = compose_config("train", tmp_path / "resumed", [*FAST, "model.num_layers=6", "model.channels=24",
                                                         "trainer.max_steps=150", f"ckpt_path={resume_hostile}"])
    with pytest.raises(CheckpointError) as error:
        train(cfg)
    assert refused(error.value, "network_config._target_", gadget)
    assert not written.exists() and not os.listdir(written.parent)
