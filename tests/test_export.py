"""dnl-export: the exported ONNX / TorchScript file computes what the PyTorch network computes, at any image size."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import skimage.data
import torch

from denoise_lightning import load_model
from denoise_lightning.inference.export import main
from denoise_lightning.models.unet_dncnn import UDnCNN
from denoise_lightning.zoo.import_dncnn import noise_config, read_matconvnet_dncnn, save_as_checkpoint
from denoise_lightning.zoo.registry import install_published


def run_exported(path, format: str, noisy: np.ndarray) -> np.ndarray:
    """Run the file with its own runtime (onnxruntime / torch.jit), independently of the package."""
    if format == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"noisy": noisy})[0]
    with torch.inference_mode():
        return torch.jit.load(str(path)).eval()(torch.from_numpy(noisy)).numpy()


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_exported_model_matches_pytorch_on_a_real_photo(trained_run, tmp_path, format, capsys):
    path = tmp_path / f"model.{format}"
    main([trained_run["checkpoint"], "--format", format, "-o", str(path)])
    assert "max |exported - PyTorch|" in capsys.readouterr().out
    network = load_model(trained_run["checkpoint"])
    photo = skimage.data.camera().astype(np.float32) / 255.0
    rng = np.random.default_rng(1)
    for height, width in ((120, 88), (65, 201)):  # neither is the export's example size: H and W are dynamic
        clean = np.stack([photo[100:100 + height, 50:50 + width], photo[300:300 + height, 200:200 + width]])
        noisy = (clean + rng.normal(0.0, 25.0 / 255.0, clean.shape)).astype(np.float32)[:, None]
        with torch.inference_mode():
            expected = network(torch.from_numpy(noisy)).numpy()
        exported = run_exported(path, format, noisy)
        assert exported.shape == noisy.shape
        assert np.abs(exported - expected).max() < 1e-4
        assert np.abs(expected - noisy).mean() > 0.01  # the network really changes the image


def test_published_model_exports_by_name(shared_data, tmp_path, monkeypatch, capsys):
    """dnl-export dncnn-s-sigma25: the name reads the converted weights; the file computes what the .mat model does."""
    mat = shared_data / "weights" / "dncnn" / "dncnn_s25.mat"
    if not mat.is_file():
        pytest.skip(f"published DnCNN weights not found: {mat}")
    install_published(mat.parent, tmp_path / "weights", names=["dncnn-s-sigma25"])
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path / "weights"))
    main(["dncnn-s-sigma25", "--format", "torchscript", "-o", str(tmp_path / "dncnn_s25.pt")])
    assert "dncnn-s-sigma25" in capsys.readouterr().out
    clean = skimage.data.camera()[None, None, 100:164, 200:280].astype(np.float32) / 255.0
    noisy = (clean + np.random.default_rng(3).normal(0.0, 25.0 / 255.0, clean.shape)).astype(np.float32)
    with torch.inference_mode():
        expected = read_matconvnet_dncnn(mat)(torch.from_numpy(noisy)).numpy()
    assert np.abs(run_exported(tmp_path / "dncnn_s25.pt", "torchscript", noisy) - expected).max() < 1e-4


def test_unsupported_export_fails_clearly_and_writes_nothing(tmp_path, capsys):
    config = {"_target_": "denoise_lightning.models.unet_dncnn.UDnCNN", "channels": 8}
    checkpoint = save_as_checkpoint(UDnCNN(channels=8).eval(), tmp_path / "unet.ckpt", noise_config(sigma=25),
                                    network_config=config)
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), "--format", "torchscript", "-o", str(tmp_path / "unet.pt")])
    assert exit_info.value.code == 1
    assert "use --format onnx" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.ckpt"]


def test_a_file_that_is_not_a_checkpoint_is_named_so_without_unsafe_advice(tmp_path, capsys):
    (tmp_path / "notes.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "notes.ckpt"), "--format", "onnx", "-o", str(tmp_path / "model.onnx")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "notes.ckpt is not a PyTorch checkpoint" in err
    assert "weights_only" not in err  # torch's advice to load with weights_only=False would run the file's code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.ckpt"]


@pytest.mark.slow
def test_pooled_unet_exports_to_onnx_for_any_size(tmp_path):
    """UDnCNN pads to a multiple of 4 in Python code: the export wraps it so that odd sizes stay exact.
    (On noisy input: on exactly flat regions max-pooling ties may pick other positions in onnxruntime.)"""
    config = {"_target_": "denoise_lightning.models.unet_dncnn.UDnCNN", "channels": 8}
    checkpoint = save_as_checkpoint(UDnCNN(channels=8).eval(), tmp_path / "unet.ckpt", noise_config(sigma=25),
                                    network_config=config)
    main([str(checkpoint), "--format", "onnx", "-o", str(tmp_path / "unet.onnx")])
    network = load_model(checkpoint)
    clean = skimage.data.camera()[None, None, 200:267, 150:195] / 255.0
    noisy = (clean + np.random.default_rng(0).normal(0.0, 25.0 / 255.0, clean.shape)).astype(np.float32)
    with torch.inference_mode():
        expected = network(torch.from_numpy(noisy)).numpy()
    assert np.abs(run_exported(tmp_path / "unet.onnx", "onnx", noisy) - expected).max() < 1e-4
