"""The published DnCNN weights (MatConvNet .mat) import exactly and reproduce the paper's BSD68 numbers.

Full runs (all 68 BSD68 images, fp32, the package's deterministic test noise, ``dnl-eval ... data=train400
trainer.precision=32-true``): DnCNN-S 31.74 / 29.23 / 26.22 dB at sigma 15 / 25 / 50 (published 31.73 / 29.23 /
26.23), DnCNN-B 31.62 / 29.17 / 26.21 (published 31.61 / 29.16 / 26.23). The test noise of an image depends only on
(set, index, level), so the first three images score in the full run exactly what they score here.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import compose_config
from torchmetrics.functional.image import peak_signal_noise_ratio

from denoise_lightning import load_model
from denoise_lightning.degradations.noise import GaussianNoise, deterministic_noisy
from denoise_lightning.models.dncnn import DnCNN
from denoise_lightning.training.data import list_images, load_image
from denoise_lightning.training.evaluate import evaluate
from denoise_lightning.training.module import DenoiseModule
from denoise_lightning.zoo.import_dncnn import MatConvNetFormatError, main, read_matconvnet_dncnn

# Mean PSNR of the imported DnCNN-S sigma 25 on BSD68 test001..test003 (sorted folder, indices 0-2, the images the
# full run scores first: 25.93, 30.24, 30.09 dB), recorded once in fp32.
BSD68_FIRST3_S25_PSNR = 28.7537


def _weights(shared_data: Path, name: str) -> Path:
    path = shared_data / "weights" / "dncnn" / name
    if not path.is_file():
        pytest.skip(f"DnCNN weights not found: {path}")
    return path


def _bsd68(shared_data: Path, count: int) -> list[torch.Tensor]:
    """The first ``count`` BSD68 images of the sorted folder, (1, 1, H, W) float in [0, 1]."""
    return [torch.from_numpy(load_image(p, 1)).permute(2, 0, 1)[None].float() / 255
            for p in list_images(shared_data / "test" / "bsd68")[:count]]


def _psnr(output: torch.Tensor, clean: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(output.clamp(0, 1), clean, data_range=1.0))


def test_dncnn_s25_reproduces_the_recorded_bsd68_psnr(shared_data):
    network = read_matconvnet_dncnn(_weights(shared_data, "dncnn_s25.mat"))
    assert isinstance(network, DnCNN) and not network.training
    assert sum(p.numel() for p in network.parameters()) == 555_137  # 17 convs, BN merged into the biases
    outputs, inputs = [], []
    for index, clean in enumerate(_bsd68(shared_data, 3)):
        noisy = deterministic_noisy(GaussianNoise(sigma=25), clean, "bsd68", index, {"sigma": 25})
        with torch.no_grad():
            outputs.append(_psnr(network(noisy), clean))
        inputs.append(_psnr(noisy, clean))
    assert np.mean(outputs) == pytest.approx(BSD68_FIRST3_S25_PSNR, abs=0.01)
    assert np.mean(outputs) > np.mean(inputs) + 8.0  # ~20.6 dB noisy


def test_bnorm_file_gives_the_same_outputs_as_the_merged_file(shared_data):
    merged = read_matconvnet_dncnn(_weights(shared_data, "dncnn_s25.mat"))
    unmerged = read_matconvnet_dncnn(_weights(shared_data, "dncnn_s25_bnorm.mat"))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unmerged.modules())  # trainable like ours
    clean = _bsd68(shared_data, 1)[0]
    noisy = deterministic_noisy(GaussianNoise(sigma=25), clean, "bsd68", 0, {"sigma": 25})
    with torch.no_grad():
        torch.testing.assert_close(unmerged(noisy), merged(noisy), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- synthetic MatConvNet files
def _matlab_array(group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
    """Store a MATLAB array as MATLAB v7.3 does: trailing singleton axes dropped, axes reversed for HDF5."""
    shape = list(array.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return group.create_dataset(name, data=array.reshape(shape).T.astype(np.float32))


def _write_mat(path: Path, layers: list[tuple[str, list[np.ndarray]]]) -> None:
    """A MATLAB v7.3 file holding ``net.layers``: a cell array of structs with 'type' and 'weights'."""
    with h5py.File(path, "w") as file:
        refs = file.create_group("#refs#")
        cell = file.create_dataset("net/layers", (len(layers), 1), dtype=h5py.ref_dtype)
        for index, (kind, weights) in enumerate(layers):
            layer = refs.create_group(f"layer{index}")
            layer.create_dataset("type", data=np.array([ord(c) for c in kind], dtype=np.uint16)[:, None])
            if kind == "conv":
                layer.create_dataset("pad", data=np.ones((1, 1)))
                layer.create_dataset("stride", data=np.ones((1, 1)))
            if weights:
                stored = [_matlab_array(refs, f"w{index}_{k}", w).ref for k, w in enumerate(weights)]
                cell_of_weights = layer.create_dataset("weights", (len(stored), 1), dtype=h5py.ref_dtype)
                for k, ref in enumerate(stored):
                    cell_of_weights[k, 0] = ref
            cell[index, 0] = layer.ref


def test_filters_are_read_in_matlab_axis_order(tmp_path):
    """MATLAB [H, W, Cin, Cout] (stored reversed by HDF5, Cout = 1 dropped) -> PyTorch (Cout, Cin, H, W)."""
    rng = np.random.default_rng(0)
    filters = [rng.normal(size=(3, 3, 1, 4)), rng.normal(size=(3, 3, 4, 4)), rng.normal(size=(3, 3, 4, 1))]
    biases = [rng.normal(size=(4, 1)), rng.normal(size=(4, 1)), rng.normal(size=(1, 1))]
    layers = [("conv", [filters[0], biases[0]]), ("relu", []), ("conv", [filters[1], biases[1]]), ("relu", []),
              ("conv", [filters[2], biases[2]])]
    _write_mat(tmp_path / "tiny.mat", layers)
    network = read_matconvnet_dncnn(tmp_path / "tiny.mat")
    convs = [m for m in network.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.shape for c in convs] == [(4, 1, 3, 3), (4, 4, 3, 3), (1, 4, 3, 3)]
    for conv, matlab, bias in zip(convs, filters, biases, strict=True):
        expected = torch.from_numpy(matlab.transpose(3, 2, 0, 1)).float()  # MatConvNet [H, W, Cin, Cout] read reversed
        torch.testing.assert_close(conv.weight.data, expected, rtol=0, atol=0)
        torch.testing.assert_close(conv.bias.data, torch.from_numpy(bias.ravel()).float(), rtol=0, atol=0)


@pytest.mark.parametrize("layers, message", [
    ([("conv", [np.ones((3, 3, 1, 4)), np.zeros((4, 1))]), ("pool", [])], "'pool'"),
    ([("conv", [np.ones((3, 3, 1, 4)), np.zeros((4, 1))]), ("relu", [])], "layer sequence conv relu"),
    ([("conv", [np.ones((5, 5, 1, 4)), np.zeros((4, 1))]), ("relu", []),
      ("conv", [np.ones((5, 5, 4, 1)), np.zeros((1, 1))])], "5x5 filters"),
    ([("conv", [np.ones((3, 3, 1, 4)), np.zeros((4, 1))]), ("relu", []),
      ("conv", [np.ones((3, 3, 4, 2)), np.zeros((2, 1))])], "needs 4 -> 1"),
], ids=["unknown-layer", "no-last-conv", "5x5-filters", "wrong-channels"])
def test_wrong_structure_is_rejected_with_a_clear_message(tmp_path, layers, message):
    path = tmp_path / "odd.mat"
    _write_mat(path, layers)
    with pytest.raises(MatConvNetFormatError, match=message) as error:
        read_matconvnet_dncnn(path)
    assert str(path) in str(error.value)


def test_hdf5_without_net_layers_is_rejected(tmp_path):
    path = tmp_path / "other.mat"
    with h5py.File(path, "w") as file:
        file.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(MatConvNetFormatError, match="no 'net.layers'") as error:
        read_matconvnet_dncnn(path)
    assert str(path) in str(error.value) and "['weights']" in str(error.value)


def test_non_hdf5_file_is_rejected_naming_the_file(tmp_path, capsys):
    path = tmp_path / "dncnn_s25.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + bytes(200))  # a pre-v7.3 .mat
    with pytest.raises(MatConvNetFormatError, match="not a MATLAB v7.3 \\(HDF5\\) file") as error:
        read_matconvnet_dncnn(path)
    assert str(path) in str(error.value)
    with pytest.raises(SystemExit) as exit_info:  # the command says the same on stderr, no checkpoint written
        main([str(path), str(tmp_path / "out.ckpt")])
    assert exit_info.value.code == 1
    assert str(path) in capsys.readouterr().err and not (tmp_path / "out.ckpt").exists()


def test_command_needs_a_noise_level_it_cannot_guess(tmp_path, shared_data, capsys):
    source = tmp_path / "mymodel.mat"
    source.write_bytes(_weights(shared_data, "dncnn_s25.mat").read_bytes())
    with pytest.raises(SystemExit):
        main([str(source), str(tmp_path / "out.ckpt")])
    assert "--sigma S or --blind" in capsys.readouterr().err
    main([str(source), str(tmp_path / "out.ckpt"), "--sigma", "25"])
    assert torch.load(tmp_path / "out.ckpt", weights_only=True)["hyper_parameters"]["noise"]["sigma"] == 25


# ---------------------------------------------------------------- the written checkpoint
def test_checkpoint_loads_everywhere_and_dnl_eval_reproduces_the_recorded_psnr(shared_data, tmp_path):
    source = _weights(shared_data, "dncnn_s25.mat")
    ckpt = tmp_path / "dncnn_s25.ckpt"
    main([str(source), str(ckpt)])
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["network"] == {
        "_target_": "denoise_lightning.models.dncnn.DnCNN", "in_channels": 1, "num_layers": 17, "channels": 64,
        "batch_norm": False, "residual": True}
    assert raw["hyper_parameters"]["noise"]["sigma"] == 25 and not raw["hyper_parameters"]["noise"]["blind"]
    assert raw["imported"]["source"] == "dncnn_s25.mat" and len(raw["imported"]["sha256"]) == 64
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file and a rename

    reference = read_matconvnet_dncnn(source)
    network = load_model(ckpt)
    module = DenoiseModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    noisy = _bsd68(shared_data, 1)[0][..., :96, :128] + 0.1 * torch.randn(1, 1, 96, 128)
    with torch.no_grad():
        # load_model and the module run channels_last: same function, other summation order
        torch.testing.assert_close(network(noisy), reference(noisy), rtol=0, atol=1e-5)
        torch.testing.assert_close(module(noisy), reference(noisy), rtol=0, atol=1e-5)

    results = evaluate(compose_config("eval", tmp_path / "eval", [
        f"ckpt={ckpt}", "data=train400", "data.test_max_images=3", "~data.test_sets.set12",
        "trainer.precision=32-true", "trainer.enable_progress_bar=false"]))
    assert list(results["test"]) == ["bsd68"] and list(results["test"]["bsd68"]) == ["sigma25"]
    assert results["test"]["bsd68"]["sigma25"]["psnr"] == pytest.approx(BSD68_FIRST3_S25_PSNR, abs=0.01)


def test_blind_model_is_tested_at_the_three_standard_levels(shared_data, tmp_path):
    ckpt = tmp_path / "dncnn_b.ckpt"
    main([str(_weights(shared_data, "dncnn_b_gray.mat")), str(ckpt)])
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["network"]["num_layers"] == 20
    assert hparams["noise"]["blind"] and hparams["noise"]["test_sigmas"] == [15, 25, 50]
    assert sum(p.numel() for p in load_model(ckpt).parameters()) == 665_921
