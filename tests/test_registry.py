"""Models by name: the published DnCNN weights converted once into safetensors + JSON, then loaded by name with
neither h5py, Hydra nor Lightning, exactly equal to the MatConvNet originals.

The conversion runs the user's path for a folder that already holds the release files: ``python -m
denoise_lightning.datasets.download --root <shared data> --sets dncnn-weights`` (verified by sha256, no download).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from denoise_lightning import load_model
from denoise_lightning.datasets.download import WEIGHTS_SET, download, load_manifest
from denoise_lightning.degradations.noise import GaussianNoise, deterministic_noisy
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.zoo.import_dncnn import noise_config, read_matconvnet_dncnn
from denoise_lightning.zoo.registry import (
    PUBLISHED_MODELS,
    ModelNotFoundError,
    available_models,
    install_published,
    zoo_models,
)
from denoise_lightning.zoo.weights import WeightsError, read_weights, save_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DNL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
MAT_DIR = SHARED_DATA / "weights" / "dncnn"
# DnCNN-S sigma 25 on BSD68 test001 with the package's deterministic test noise (index 0), fp32: recorded once with
# the .mat file. test001 is a hard image; the mean over the 68 images is 29.23 dB (published 29.23 dB).
TEST001_S25_PSNR = 25.93
TEST001_NOISY_PSNR = 20.50  # the noisy input, clipped to [0, 1]


def needs_weights() -> None:
    if not all((MAT_DIR / model.file).is_file() for model in PUBLISHED_MODELS.values()):
        pytest.skip(f"published DnCNN weights not found under {MAT_DIR}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A weights folder holding the six published models, converted from the shared .mat files, no network."""
    needs_weights()
    weights = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("the conversion tried to download"))
        assert download(SHARED_DATA, (WEIGHTS_SET,), weights_dir=weights) == []  # present and verified
    return weights


@pytest.fixture
def weights_env(converted, monkeypatch) -> Path:
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(converted))
    return converted


def bsd68_test001() -> torch.Tensor:
    """BSD68 test001.png (481 x 321 grey), (1, 1, H, W) float in [0, 1]."""
    path = SHARED_DATA / "test" / "bsd68" / "test001.png"
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0)[None, None]


def test_every_published_model_is_installed_and_equals_its_mat_file(weights_env):
    assert list(available_models()) == sorted([*PUBLISHED_MODELS, *zoo_models()])
    noise = 0.1 * torch.randn(1, 1, 48, 64, generator=torch.Generator().manual_seed(0))
    noisy = bsd68_test001()[..., 100:148, 200:264] + noise
    for name, published in PUBLISHED_MODELS.items():
        reference = read_matconvnet_dncnn(MAT_DIR / published.file)
        converted = read_weights(weights_env / f"{name}.json").network
        expected, actual = reference.state_dict(), converted.state_dict()
        assert list(actual) == list(expected), name
        assert all(torch.equal(actual[key], expected[key]) for key in expected), name  # bit for bit
        by_name = load_model(name)
        assert by_name.model_name == name and by_name.trained_noise == published.noise()
        with torch.no_grad():  # the .mat network run as load_model runs it (channels_last)
            expected_output = reference.to(memory_format=torch.channels_last)(noisy)
            torch.testing.assert_close(by_name(noisy), expected_output, rtol=0, atol=1e-6)


def test_dncnn_s25_by_name_denoises_a_bsd68_image_as_published(weights_env):
    network = load_model("dncnn-s-sigma25")
    clean = bsd68_test001()
    noisy = deterministic_noisy(GaussianNoise(sigma=25), clean, "bsd68", 0, {"sigma": 25})
    with torch.no_grad():
        denoised = network(noisy).clamp(0, 1)
    noisy_psnr = float(peak_signal_noise_ratio(noisy.clamp(0, 1), clean, data_range=1.0))
    psnr = float(peak_signal_noise_ratio(denoised, clean, data_range=1.0))
    assert noisy_psnr == pytest.approx(TEST001_NOISY_PSNR, abs=0.05)
    assert psnr == pytest.approx(TEST001_S25_PSNR, abs=0.01)
    assert psnr > noisy_psnr + 5.0


def test_names_load_in_a_fresh_process_without_h5py_hydra_or_lightning(converted, tmp_path):
    """A user's process: the weights folder holds only converted files, the data root is empty, h5py is blocked."""
    crop = bsd68_test001()[..., :96, :128]
    noisy = crop + 0.1 * torch.randn(crop.shape, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "noisy.npy", noisy.numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["h5py"] = None  # import h5py now raises ImportError
        import numpy as np, torch
        from denoise_lightning import load_model
        from denoise_lightning.zoo.registry import available_models
        names = sorted(available_models())
        network = load_model("dncnn-s-sigma25")
        with torch.no_grad():
            np.save({str(tmp_path / "out.npy")!r}, network(torch.from_numpy(np.load({str(tmp_path / "noisy.npy")!r})))
                    .numpy())
        print("names", " ".join(names))
        print("imported", " ".join(m for m in ("h5py", "hydra", "lightning") if sys.modules.get(m) is not None))
    """)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "DNL_WEIGHTS_DIR": str(converted), "DNL_DATA_DIR": str(empty), "HOME": str(empty),
           "XDG_CACHE_HOME": str(empty)}
    result = subprocess.run([sys.executable, "-c", script], cwd=empty, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"names {' '.join(sorted([*PUBLISHED_MODELS, *zoo_models()]))}" in result.stdout
    assert result.stdout.splitlines()[-1].strip() == "imported"  # none of the three
    with torch.no_grad():
        expected = load_model(MAT_DIR / "dncnn_s25.mat")(noisy).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-6)


def test_missing_names_say_which_are_installed_and_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert available_models() == zoo_models()  # only the models shipped with the package
    with pytest.raises(ModelNotFoundError) as unknown:
        load_model("dncnn-s-sigma30")
    message = str(unknown.value)
    assert all(f"{name} (not installed)" in message for name in PUBLISHED_MODELS)
    assert "make data" in message and str(tmp_path / "weights") in message
    with pytest.raises(ModelNotFoundError, match=r"published model .* not installed .*make data.*--sets dncnn-weights"):
        load_model("dncnn-b")


def test_damaged_tensors_are_refused_and_reconverted(converted, tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    for suffix in ("json", "safetensors"):
        (folder / f"dncnn-s-sigma15.{suffix}").write_bytes((converted / f"dncnn-s-sigma15.{suffix}").read_bytes())
    tensors = folder / "dncnn-s-sigma15.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-100] ^= 0xFF
    tensors.write_bytes(bytes(data))
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(folder))
    with pytest.raises(WeightsError, match=r"dncnn-s-sigma15\.safetensors is damaged.*convert the weights again"):
        load_model("dncnn-s-sigma15")
    assert install_published(MAT_DIR, folder, names=["dncnn-s-sigma15"]) == ["dncnn-s-sigma15"]
    assert install_published(MAT_DIR, folder, names=["dncnn-s-sigma15"]) == []
    assert load_model("dncnn-s-sigma15").trained_noise["sigma"] == 15.0


def test_a_weights_file_cannot_name_arbitrary_code(converted, tmp_path):
    metadata = json.loads((converted / "dncnn-s-sigma25.json").read_text())
    (tmp_path / "dncnn-s-sigma25.safetensors").write_bytes((converted / "dncnn-s-sigma25.safetensors").read_bytes())
    for network in ({"_target_": "os.system", "command": "touch pwned"},
                    {**metadata["network"], "channels": {"_target_": "builtins.eval", "source": "1"}}):
        (tmp_path / "dncnn-s-sigma25.json").write_text(json.dumps({**metadata, "network": network}))
        with pytest.raises(WeightsError, match="refused"):
            load_model(tmp_path / "dncnn-s-sigma25.json")
    assert not (tmp_path / "pwned").exists()


def test_any_package_network_saves_and_loads_by_name(tmp_path, monkeypatch):
    network = DNResNet(blocks=["res", "ds"], channels=8, head_channels=8).eval()
    config = {"_target_": "denoise_lightning.models.dn_resnet.DNResNet", "blocks": ["res", "ds"], "channels": 8,
              "head_channels": 8}
    save_weights(network, config, tmp_path, "my-dn-resnet", noise=noise_config(sigma=15), provenance={"run": "x"})
    assert not list(tmp_path.glob(".*"))  # written through temporary files and renames
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path))
    assert set(available_models()) == {"my-dn-resnet", *zoo_models()}
    loaded = load_model("my-dn-resnet")
    assert loaded.trained_noise["sigma"] == 15.0 and loaded.model_name == "my-dn-resnet"
    noisy = torch.rand(1, 1, 40, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(noisy), network(noisy), rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="size mismatch"):  # a config that does not describe the tensors: no file
        save_weights(network, {**config, "channels": 16}, tmp_path, "wrong")
    assert not list(tmp_path.glob("wrong*"))


def test_published_names_and_manifest_agree():
    weights = load_manifest()[WEIGHTS_SET]
    assert sorted(model.file for model in PUBLISHED_MODELS.values()) == sorted(weights.files)
    assert weights.members["dncnn_s25.mat"] == "model/specifics/sigma=25.mat"
