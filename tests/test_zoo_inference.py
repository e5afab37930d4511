"""The model zoo in use: shipped names resolve offline and win over installed ones, ``dnl-denoise`` defaults to the
blind Gaussian zoo model, ``--model auto`` estimates each image's noise level and picks the nearest non-blind model,
``dnl-export`` exports a zoo model by name.

The real shipped weights are not used: each test points :data:`~denoise_lightning.zoo.registry.ZOO_DIR` at a small
zoo of untrained networks (a different seed each, so their outputs tell them apart) written into a temporary folder.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denoise_lightning import denoise, load_model
from denoise_lightning.degradations.noise import GaussianNoise, deterministic_noisy
from denoise_lightning.inference import cli
from denoise_lightning.inference.images import ImageFile, read_image
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.zoo import registry
from denoise_lightning.zoo.import_dncnn import noise_config
from denoise_lightning.zoo.registry import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    available_models,
    estimate_noise_sigma,
    nearest_gaussian_model,
    zoo_models,
)
from denoise_lightning.zoo.weights import save_weights

NOISE = "denoise_lightning.degradations.noise."
POISSON_BLIND = {"_target_": NOISE + "PoissonNoise", "peak": 4.0, "blind": True, "peak_range": [1.0, 30.0]}
PG_BLIND = {"_target_": NOISE + "PoissonGaussianNoise", "peak": 4.0, "sigma": 10.0, "blind": True,
            "peak_range": [1.0, 30.0], "sigma_range": [0.0, 50.0]}
ZOO = {  # the zoo names, with their noise as the shipped JSONs state it
    "dn-resnet13-sigma15": noise_config(sigma=15.0),
    "dn-resnet13-sigma25": noise_config(sigma=25.0),
    "dn-resnet13-sigma50": noise_config(sigma=50.0),
    "dn-resnet13-blind": noise_config(blind=True),
    "dn-resnet13-poisson-blind": POISSON_BLIND,
    "dn-resnet13-pg-blind": PG_BLIND,
    "ds-dn-resnet-sigma25": noise_config(sigma=25.0),
    "ds-dn-resnet-blind": noise_config(blind=True),
}


def save_small(folder: Path, name: str, noise: dict, seed: int, blocks: tuple[str, ...] = ("res",)) -> Path:
    """An untrained small DN-ResNet (weights from ``seed``) saved as ``folder/name``.{safetensors,json}."""
    torch.manual_seed(seed)
    network = DNResNet(blocks=list(blocks), channels=8, head_channels=8).eval()
    config = {"_target_": "denoise_lightning.models.dn_resnet.DNResNet", "blocks": list(blocks), "channels": 8,
              "head_channels": 8}
    return save_weights(network, config, folder, name, noise=noise, provenance={"test": "untrained"})


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    for seed, (name, noise) in enumerate(ZOO.items()):
        save_small(folder, name, noise, seed, ("ds",) if name.startswith("ds-") else ("res",))
    (folder / f"{DEFAULT_MODEL}.md").write_text("# a model card\n")
    (folder / ".dn-resnet13-sigma99.json").write_text("{}")  # hidden: a temporary file, never a model
    return folder


@pytest.fixture
def zoo(zoo_folder, tmp_path, monkeypatch) -> Path:
    """The small zoo as the shipped one; an empty weights folder (nothing installed)."""
    monkeypatch.setattr(registry, "ZOO_DIR", zoo_folder)
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path / "installed"))
    return zoo_folder


def bsd68_noisy(shared_data: Path, number: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """BSD68 ``test<number>.png`` (grey, float in [0, 1]) and the package's deterministic test noise at ``sigma``
    added (unclipped)."""
    clean = np.asarray(Image.open(shared_data / "test" / "bsd68" / f"test{number:03d}.png"), dtype=np.float32) / 255
    noisy = deterministic_noisy(GaussianNoise(sigma=sigma), torch.from_numpy(clean)[None, None], "bsd68", number - 1,
                                {"sigma": sigma})
    return clean, noisy[0, 0].numpy()


def as_png(path: Path, noisy: np.ndarray) -> np.ndarray:
    """Save a noisy float image as an 8-bit PNG (clipped and rounded, as a noisy photo is); returns its pixels."""
    pixels = np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


# ---------------------------------------------------------------- names
def test_zoo_names_resolve_offline(zoo, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a zoo name tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert zoo_models() == {name: zoo / f"{name}.json" for name in sorted(ZOO)}  # hidden file and card left out
    assert available_models() == zoo_models()
    network = load_model("dn-resnet13-sigma25")
    assert network.model_name == "dn-resnet13-sigma25" and network.trained_noise["sigma"] == 25.0
    expected = load_model(zoo / "dn-resnet13-sigma25.safetensors")  # the same tensors, by path
    other = load_model("dn-resnet13-sigma15")
    noisy = torch.rand(1, 1, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(network(noisy), expected(noisy), rtol=0, atol=0)
        assert (network(noisy) - other(noisy)).abs().max() > 1e-3  # the names load different networks


def test_zoo_is_empty_when_no_models_are_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "missing")
    assert zoo_models() == {}
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / ".partial.json").write_text("{}")
    assert zoo_models() == {}


def test_a_shipped_name_wins_over_an_installed_one(zoo, tmp_path):
    installed = tmp_path / "installed"
    save_small(installed, "dn-resnet13-sigma25", noise_config(sigma=30.0), seed=99)  # same name, other model
    save_small(installed, "my-model", noise_config(sigma=35.0), seed=98)
    models = available_models()
    assert models["dn-resnet13-sigma25"] == zoo / "dn-resnet13-sigma25.json"
    assert models["my-model"] == installed / "my-model.json"  # installed names still count
    assert list(models) == sorted([*ZOO, "my-model"])
    assert load_model("dn-resnet13-sigma25").trained_noise["sigma"] == 25.0  # the shipped one
    assert load_model("my-model").trained_noise["sigma"] == 35.0


def test_unknown_name_message_lists_the_zoo_names(zoo, tmp_path):
    save_small(tmp_path / "installed", "my-model", noise_config(sigma=35.0), seed=98)
    with pytest.raises(ModelNotFoundError) as unknown:
        load_model("dn-resnet13-sigma30")
    message = str(unknown.value)
    assert f"shipped: {', '.join(sorted(ZOO))};" in message
    assert "dncnn-s-sigma25 (not installed)" in message and "also installed: my-model" in message
    assert str(zoo) in message and "make data" in message


def test_a_missing_default_model_says_it_is_not_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "models")
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path / "installed"))
    with pytest.raises(ModelNotFoundError, match=rf"default model '{DEFAULT_MODEL}' is not shipped .*reinstall"):
        load_model(DEFAULT_MODEL)


# ---------------------------------------------------------------- choosing by noise level
def test_nearest_gaussian_model_picks_the_nearest_non_blind_level(zoo):
    assert registry.gaussian_zoo_models() == {"dn-resnet13-sigma15": 15.0, "dn-resnet13-sigma25": 25.0,
                                              "ds-dn-resnet-sigma25": 25.0, "dn-resnet13-sigma50": 50.0}
    for sigma, expected in ((0.0, 15), (12, 15), (19.9, 15), (20.0, 15), (20.1, 25), (25, 25), (37.4, 25),
                            (37.6, 50), (75.0, 50), (np.float32(49.0), 50)):
        assert nearest_gaussian_model(sigma) == f"dn-resnet13-sigma{expected}", sigma


def test_nearest_gaussian_model_errors_without_candidates(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"no non-blind Gaussian model is shipped .*\(shipped: none\)"):
        nearest_gaussian_model(25.0)
    save_small(tmp_path, "dn-resnet13-blind", noise_config(blind=True), seed=0)  # blind: not a candidate
    save_small(tmp_path, "dn-resnet13-poisson-blind", POISSON_BLIND, seed=1)
    with pytest.raises(ModelNotFoundError, match=r"\(shipped: dn-resnet13-blind, dn-resnet13-poisson-blind\)"):
        nearest_gaussian_model(25.0)
    save_small(tmp_path, "dn-resnet13-sigma50", noise_config(sigma=50.0), seed=2)
    assert nearest_gaussian_model(5.0) == "dn-resnet13-sigma50"
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            nearest_gaussian_model(bad)


@pytest.mark.parametrize("sigma", [15.0, 25.0, 50.0])
def test_estimate_noise_sigma_on_a_real_photo(shared_data, sigma):
    clean, noisy = bsd68_noisy(shared_data, 3, sigma)
    assert estimate_noise_sigma(clean) < 3.0  # a smooth photo: little "noise" of its own
    estimate = estimate_noise_sigma(noisy)
    assert abs(estimate - sigma) < 3.0, estimate
    # the same image as 8-bit pixels (uint8 read as 0-255), and with an alpha channel, which is left out
    pixels = np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    assert estimate_noise_sigma(pixels) == pytest.approx(estimate_noise_sigma(pixels / np.float32(255.0)), abs=1e-3)
    alpha = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)  # would read as huge noise
    assert estimate_noise_sigma(np.stack([pixels, alpha], axis=2)) == pytest.approx(estimate_noise_sigma(pixels))


def test_estimate_noise_sigma_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="too small"):
        estimate_noise_sigma(np.zeros((8, 64), np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        estimate_noise_sigma(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        estimate_noise_sigma(np.zeros((32, 32, 5), np.float32))


# ---------------------------------------------------------------- dnl-denoise
def test_dnl_denoise_uses_the_default_zoo_model_without_model(zoo, shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert all(name in cli.build_parser().format_help() for name in ZOO)  # listed, and not broken at a hyphen
    _, noisy = bsd68_noisy(shared_data, 3, 25.0)
    pixels = as_png(tmp_path / "in" / "photo.png", noisy[:96, :128])
    cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert f"denoised 1 of 1 input(s) into {tmp_path / 'out'} with {DEFAULT_MODEL}" in capsys.readouterr().out
    output = read_image(tmp_path / "out" / "photo.png").pixels.astype(int)
    assert np.abs(output - denoise(pixels, load_model(DEFAULT_MODEL))).max() <= 1
    assert np.abs(output - denoise(pixels, load_model("dn-resnet13-sigma25"))).max() > 3  # not any zoo model


def test_dnl_denoise_auto_picks_a_model_per_image(zoo, shared_data, tmp_path, capsys, monkeypatch):
    inputs = {"low.png": (3, 15.0), "high.png": (10, 50.0), "low2.png": (4, 15.0)}  # BSD68 number, sigma
    pixels = {name: as_png(tmp_path / "in" / name, bsd68_noisy(shared_data, number, sigma)[1])
              for name, (number, sigma) in inputs.items()}
    loaded, original = [], registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda name, **kw: loaded.append(name) or original(name, **kw))
    cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "auto"])
    captured = capsys.readouterr()
    lines = re.findall(r"(\S+\.png): estimated sigma (\d+\.\d) -> (\S+)", captured.err)
    choices = {name: model_name for name, _, model_name in lines}
    assert choices == {"low.png": "dn-resnet13-sigma15", "high.png": "dn-resnet13-sigma50",
                       "low2.png": "dn-resnet13-sigma15"}, captured.err
    estimates = {name: float(sigma) for name, sigma, _ in lines}
    assert abs(estimates["low.png"] - 15.0) < 3 and 40.0 < estimates["high.png"] < 53.0  # clipped at 0 and 255
    assert sorted(loaded) == ["dn-resnet13-sigma15", "dn-resnet13-sigma50"]  # each model loaded once
    assert ("denoised 3 of 3 input(s) into " + str(tmp_path / "out")
            + " with dn-resnet13-sigma15 (2 files), dn-resnet13-sigma50 (1 file)") in captured.out
    for name, model_name in choices.items():
        output = read_image(tmp_path / "out" / name).pixels.astype(int)
        assert np.abs(output - denoise(pixels[name], load_model(model_name))).max() <= 1, name


def test_auto_estimates_every_input_format_on_the_same_scale(zoo, shared_data):
    """8- and 16-bit integers, floats on 0-1 and floats on 0-255 (--input-range): one estimate, one choice."""
    _, noisy = bsd68_noisy(shared_data, 10, 50.0)
    pixels = np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    inputs = {"8-bit": (pixels, "0-1"), "16-bit": (pixels.astype(np.uint16) * 257, "0-1"),
              "float": (pixels / np.float32(255.0), "0-1"), "float 0-255": (pixels.astype(np.float32), "0-255"),
              "grey+alpha": (np.stack([pixels, np.full_like(pixels, 255)], axis=2), "0-1")}
    lines = []
    for name, (image, input_range) in inputs.items():
        auto = cli.AutoModel("cpu", input_range, None, None, report=lines.append, warn=pytest.fail)
        assert auto(Path(f"{name}.png"), ImageFile(image)).model_name == "dn-resnet13-sigma50"
    assert lines == [f"{name}.png: estimated sigma 47.9 -> dn-resnet13-sigma50" for name in inputs]


def test_dnl_denoise_auto_with_sigma_uses_it_instead_of_estimating(zoo, shared_data, tmp_path, capsys):
    _, noisy = bsd68_noisy(shared_data, 3, 15.0)
    pixels = as_png(tmp_path / "in" / "photo.png", noisy[:96, :128])
    cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "auto", "--sigma", "45"])
    captured = capsys.readouterr()
    assert "--sigma 45 given, the noise level is not estimated -> dn-resnet13-sigma50" in captured.err
    assert "estimated sigma" not in captured.err
    assert "sigma 45 ignored: model dn-resnet13-sigma50 is non-blind" in captured.err  # the usual level check
    assert "with dn-resnet13-sigma50" in captured.out
    output = read_image(tmp_path / "out" / "photo.png").pixels.astype(int)
    assert np.abs(output - denoise(pixels, load_model("dn-resnet13-sigma50"))).max() <= 1


@pytest.mark.parametrize("extra, expected", [
    (["--noise", "poisson"], r"--model auto chooses among the Gaussian .* --noise poisson: .*"
                             r"\(shipped: dn-resnet13-poisson-blind\)"),
    (["--noise", "jpeg"], r"--noise jpeg: .*\(none is shipped; train one with noise=jpeg\)"),
    (["--scale", "2"], r"--model auto chooses a denoiser, not a super-resolution model: with --scale 2"),
])
def test_dnl_denoise_auto_refuses_options_it_cannot_honour(zoo, tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path), "-o", str(tmp_path / "out"), "--model", "auto", *extra])
    assert exit_info.value.code == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_dnl_denoise_auto_without_gaussian_models_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path / "zoo")
    save_small(tmp_path / "zoo", "dn-resnet13-blind", noise_config(blind=True), seed=0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path), "-o", str(tmp_path / "out"), "--model", "auto"])
    assert exit_info.value.code == 2
    assert "no non-blind Gaussian model is shipped" in capsys.readouterr().err


# ---------------------------------------------------------------- dnl-export
def test_dnl_export_exports_a_zoo_model_by_name(zoo, tmp_path, capsys):
    from denoise_lightning.inference.export import main as export_main

    path = tmp_path / "sigma25.pt"
    export_main(["dn-resnet13-sigma25", "--format", "torchscript", "-o", str(path)])
    assert "dn-resnet13-sigma25" in capsys.readouterr().out
    noisy = torch.rand(1, 1, 37, 53, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = load_model(zoo / "dn-resnet13-sigma25.json")(noisy)
        torch.testing.assert_close(torch.jit.load(str(path)).eval()(noisy), expected, rtol=0, atol=1e-5)
