"""Inference for users: tiling equals the whole-image result, dtypes and colour, models by name, dnl-denoise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tifffile
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from denoise_lightning import denoise, load_model
from denoise_lightning.inference.cli import main
from denoise_lightning.inference.images import read_image
from denoise_lightning.inference.tiling import (
    NoiseLevelWarning,
    NoiseMismatchError,
    check_noise,
    receptive_radius,
)
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.models.dncnn import DnCNN
from denoise_lightning.models.unet_dncnn import DUDnCNN, UDnCNN
from denoise_lightning.zoo.import_dncnn import noise_config, save_as_checkpoint
from denoise_lightning.zoo.registry import PUBLISHED_MODELS, ModelNotFoundError, install_published

SIGMA = 25.0


def noisy_photo(clean: np.ndarray, sigma: float = SIGMA, seed: int = 0) -> np.ndarray:
    """``clean`` (uint8) plus Gaussian noise, as float32 in [0, 1] (clipped, as a saved noisy photo is)."""
    noise = np.random.default_rng(seed).normal(0.0, sigma / 255.0, clean.shape)
    return np.clip(clean / 255.0 + noise, 0.0, 1.0).astype(np.float32)


def as_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(image * 255.0).astype(np.uint8)


@pytest.fixture(scope="module")
def model(trained_run):
    """The small DnCNN trained at sigma 25 by the session fixture."""
    return load_model(trained_run["checkpoint"])


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return skimage.data.camera()[96:352, 128:384]  # 256 x 256, grey uint8


# ---------------------------------------------------------------- receptive field and tiling
@pytest.mark.parametrize("network, tight", [
    (DnCNN(num_layers=6, channels=8, batch_norm=False), True),
    (DNResNet(blocks=["res", "ds"], channels=8, head_channels=8), True),
    (DUDnCNN(channels=8, batch_norm=False), True),
    (UDnCNN(channels=8, batch_norm=False), False),
], ids=["dncnn", "dn_resnet", "dudncnn", "udncnn"])
def test_receptive_radius_bounds_how_far_a_pixel_reaches(network, tight):
    torch.manual_seed(0)
    network = network.double().eval()
    radius = receptive_radius(network)
    size = 2 * radius + 25
    centre = size // 2
    noisy = torch.rand(1, 1, size, size, dtype=torch.float64)
    moved = noisy.clone()
    moved[..., centre, centre] += 1.0
    with torch.no_grad():
        changed = torch.nonzero((network(noisy) - network(moved))[0, 0].abs() > 0)
    reach = int((changed - centre).abs().max())
    assert reach <= radius
    if tight:
        assert reach == radius


def test_udncnn_radius_holds_at_every_pooling_phase():
    """The pooled bound is hand-derived (cell alignment): probe every position within a 4x4 pooling cell."""
    network = UDnCNN(channels=8, batch_norm=False).double().eval()
    radius, size, worst = receptive_radius(network), 64, 0
    for seed in range(4):
        torch.manual_seed(seed)
        noisy = torch.rand(1, 1, size, size, dtype=torch.float64)
        for offset in range(4):
            centre = 28 + offset
            moved = noisy.clone()
            moved[..., centre, centre] += 1.0
            with torch.no_grad():
                changed = torch.nonzero((network(noisy) - network(moved))[0, 0].abs() > 0)
            worst = max(worst, int((changed - centre).abs().max()))
    assert 17 <= worst <= radius


def test_receptive_radius_of_the_paper_networks():
    assert receptive_radius(DnCNN(num_layers=17)) == 17
    assert receptive_radius(DNResNet(blocks=["res"] * 5)) == 4 + 2 + 2 * 5 + 2
    assert receptive_radius(DNResNet(blocks=["ds"] * 5)) == 18
    assert receptive_radius(DUDnCNN()) == 16
    assert receptive_radius(UDnCNN()) == 19  # a bound: the measured receptive field is 36x36 (radius 18)


def test_tiled_equals_whole_image_on_a_real_photo(model, camera):
    noisy = noisy_photo(camera)
    whole = denoise(noisy, model, memory_mb=4096)
    tiled = denoise(noisy, model, tile_size=40)  # 7 x 7 tiles
    assert np.abs(tiled - whole).max() < 1e-4  # everywhere: the image border gets the same zero padding
    gain = peak_signal_noise_ratio(camera, as_uint8(tiled)) - peak_signal_noise_ratio(camera, as_uint8(noisy))
    assert gain > 3.0


@pytest.mark.parametrize("network", [DNResNet(blocks=["res", "ds"], channels=8, head_channels=8),
                                     UDnCNN(channels=8)], ids=["dn_resnet", "udncnn"])
def test_tiling_is_exact_for_odd_sizes_and_pooling(network, camera):
    torch.manual_seed(0)
    network.eval()
    noisy = noisy_photo(camera[:91, :117])
    whole = denoise(noisy, network, memory_mb=4096)
    assert np.abs(denoise(noisy, network, tile_size=24) - whole).max() < 1e-4


# ---------------------------------------------------------------- dtypes and colour
def test_dtypes_round_trip_and_agree(model, camera):
    noisy8 = as_uint8(noisy_photo(camera[:96, :96]))
    out8 = denoise(noisy8, model)
    out16 = denoise(noisy8.astype(np.uint16) * 257, model)
    out_float = denoise(noisy8.astype(np.float64) / 255.0, model)
    assert (out8.dtype, out16.dtype, out_float.dtype) == (np.uint8, np.uint16, np.float64)
    assert out8.shape == out16.shape == out_float.shape == noisy8.shape
    assert np.abs(out16 / 257.0 - out8).max() <= 0.5 + 1e-6  # same result, finer quantisation
    assert np.abs(out_float * 255.0 - out8).max() <= 0.5 + 1e-6
    assert peak_signal_noise_ratio(camera[:96, :96], out8) > peak_signal_noise_ratio(camera[:96, :96], noisy8) + 3


def test_grey_model_denoises_rgb_per_channel_and_keeps_alpha(model):
    rgb = as_uint8(noisy_photo(skimage.data.astronaut()[:80, 100:180]))
    alpha = np.linspace(0, 255, rgb.shape[0] * rgb.shape[1]).astype(np.uint8).reshape(*rgb.shape[:2], 1)
    rgba = np.concatenate([rgb, alpha], axis=2)
    out = denoise(rgba, model, tile_size=32)
    for channel in range(3):
        # each channel is the grey model's output; tiling and batching change float rounding (~1e-7), which can move
        # a pixel that sits on a uint8 rounding boundary by one level
        alone = denoise(rgb[:, :, channel], model).astype(int)
        assert np.abs(out[:, :, channel].astype(int) - alone).max() <= 1
        assert np.mean(out[:, :, channel] == alone) > 0.999
    np.testing.assert_array_equal(out[:, :, 3], alpha[:, :, 0])


def test_colour_model_on_a_grey_image_is_an_error():
    with pytest.raises(ValueError, match="3 input channels"):
        denoise(np.zeros((32, 32), np.uint8), DnCNN(in_channels=3, num_layers=3, channels=4).eval())


# ---------------------------------------------------------------- models by name, declared noise
@pytest.fixture
def published_s25(shared_data, tmp_path, monkeypatch) -> None:
    """$DNL_WEIGHTS_DIR: a folder holding dncnn-s-sigma25 converted from the shared .mat file (as `make data` does)."""
    mat_dir = shared_data / "weights" / "dncnn"
    if not (mat_dir / PUBLISHED_MODELS["dncnn-s-sigma25"].file).is_file():
        pytest.skip(f"published DnCNN weights not found under {mat_dir}")
    install_published(mat_dir, tmp_path / "weights", names=["dncnn-s-sigma25"])
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path / "weights"))


def test_published_model_by_name_reproduces_its_set12_result(shared_data, published_s25, tmp_path, capsys):
    network = load_model("dncnn-s-sigma25")
    assert network.trained_noise["sigma"] == 25.0 and network.model_name == "dncnn-s-sigma25"
    clean = np.asarray(Image.open(shared_data / "test" / "set12" / "01.png")) / 255.0  # C.man, 256 x 256
    noisy = clean + np.random.default_rng(0).normal(0.0, SIGMA / 255.0, clean.shape)  # not clipped, as trained
    psnr = peak_signal_noise_ratio(clean, denoise(noisy.astype(np.float32), network), data_range=1.0)
    assert psnr > 29.7  # published DnCNN-S, C.man at sigma 25: 30.18 dB (noisy: 20.2 dB)

    (tmp_path / "in").mkdir()  # the same name through dnl-denoise, on the photo saved as 8-bit PNG
    Image.fromarray(as_uint8(np.clip(noisy, 0.0, 1.0))).save(tmp_path / "in" / "cman.png")
    main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "dncnn-s-sigma25"])
    assert "with dncnn-s-sigma25" in capsys.readouterr().out
    clean8 = np.asarray(Image.open(shared_data / "test" / "set12" / "01.png"))
    assert peak_signal_noise_ratio(clean8, read_image(tmp_path / "out" / "cman.png").pixels) > 29.5


def test_unknown_model_name_lists_the_available_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("DNL_WEIGHTS_DIR", str(tmp_path))  # nothing installed: the published names are still listed
    with pytest.raises(ModelNotFoundError, match=r"dncnn-s-sigma25 \(not installed\).*dncnn-b.*make data"):
        load_model("dncnn-s-sigma30")


def test_declared_noise_is_checked_against_the_trained_noise(model):
    network = DnCNN(num_layers=3, channels=4).eval()
    network.model_name = "test"
    network.trained_noise = noise_config(sigma=SIGMA)
    assert check_noise(network, "gaussian", SIGMA) == []
    assert "non-blind" in check_noise(network, sigma=50.0)[0]
    with pytest.raises(NoiseMismatchError, match="trained on gaussian noise"):
        check_noise(network, "poisson", peak=4.0)
    network.trained_noise = noise_config(blind=True)
    assert check_noise(network, sigma=50.0) == []
    assert "outside the range [0, 55]" in check_noise(network, sigma=70.0)[0]
    with pytest.warns(NoiseLevelWarning, match="sigma 15 ignored"):
        denoise(np.zeros((16, 16), np.uint8), model, sigma=15.0)


# ---------------------------------------------------------------- dnl-denoise
def write_png16(path: Path, pixels: np.ndarray) -> None:
    """16-bit PNG through pypng (Pillow cannot write 16-bit colour)."""
    import png

    planes = 1 if pixels.ndim == 2 else pixels.shape[2]
    with open(path, "wb") as stream:
        png.Writer(pixels.shape[1], pixels.shape[0], greyscale=planes == 1, bitdepth=16).write(
            stream, pixels.reshape(pixels.shape[0], -1))


def write_inputs(folder: Path) -> dict[str, np.ndarray]:
    """Real photo crops in every supported format, bit depth and channel layout; returns name -> pixels."""
    grey = as_uint8(noisy_photo(skimage.data.camera()[100:164, 200:280]))
    rgb = as_uint8(noisy_photo(skimage.data.astronaut()[20:84, 200:280]))
    images = {"grey8.png": grey, "grey16.png": grey.astype(np.uint16) * 257, "rgb8.jpg": rgb,
              "rgb16.png": rgb.astype(np.uint16) * 257, "rgb16.tif": rgb.astype(np.uint16) * 257,
              "grey8.tif": grey, "sub/rgba8.png": np.concatenate([rgb, grey[:, :, None]], axis=2)}
    (folder / "sub").mkdir(parents=True)
    for name, pixels in images.items():
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, pixels)
        elif pixels.dtype == np.uint16:
            write_png16(folder / name, pixels)
        else:
            Image.fromarray(pixels).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return images


def test_cli_denoises_a_folder_keeping_format_and_depth_and_reports_broken_files(trained_run, tmp_path, capsys):
    images = write_inputs(tmp_path / "in")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", trained_run["checkpoint"],
              "--noise", "gaussian", "--sigma", "25", "--tile-size", "40"])
    assert exit_info.value.code == 1  # one file failed, the others were written
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "cannot decode" in captured.err
    assert "denoised 7 of 8 input(s)" in captured.out
    for name, pixels in images.items():
        out = read_image(tmp_path / "out" / name).pixels
        assert out.dtype == pixels.dtype and out.shape == pixels.shape, name
    clean = skimage.data.camera()[100:164, 200:280]
    grey8 = read_image(tmp_path / "out" / "grey8.png").pixels
    assert peak_signal_noise_ratio(clean, grey8) > peak_signal_noise_ratio(clean, images["grey8.png"]) + 3
    grey16 = read_image(tmp_path / "out" / "grey16.png").pixels
    assert np.abs(grey16 / 257.0 - grey8).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "rgb16.png").pixels,
                                  read_image(tmp_path / "out" / "rgb16.tif").pixels)
    assert not list((tmp_path / "out").rglob(".*"))  # no temporary files left


def test_cli_never_overwrites_an_input_unless_asked(trained_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    path = folder / "grey.png"
    Image.fromarray(as_uint8(noisy_photo(skimage.data.camera()[:48, :48]))).save(path)
    before = path.read_bytes()
    args = [str(folder), "-o", str(folder), "--model", trained_run["checkpoint"]]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1 and path.read_bytes() == before
    main([*args, "--overwrite"])
    assert path.read_bytes() != before


def test_cli_rejects_unknown_models_and_mismatched_noise(trained_run, tmp_path, capsys):
    for model, extra, expected in (("no-such-model", [], "available names"),
                                   (trained_run["checkpoint"], ["--noise", "poisson"], "trained on gaussian")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(tmp_path), "-o", str(tmp_path / "out"), "--model", str(model), *extra])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_24_megapixel_image_stays_under_2_gb(tmp_path):
    """dnl-denoise on a 6000 x 4000 grey photo with DN-ResNet-13 (64-channel head), peak RSS of the process."""
    photo = np.asarray(Image.fromarray(skimage.data.camera()).resize((6000, 4000), Image.BICUBIC))
    Image.fromarray(as_uint8(noisy_photo(photo))).save(tmp_path / "big.png")
    network = DNResNet(blocks=["res"] * 5).eval()
    config = {"_target_": "denoise_lightning.models.dn_resnet.DNResNet", "blocks": ["res"] * 5}
    save_as_checkpoint(network, tmp_path / "dn_resnet13.ckpt", noise_config(sigma=SIGMA), network_config=config)
    script = textwrap.dedent(f"""
        import resource, sys
        from denoise_lightning.inference.cli import main
        try:
            main([{str(tmp_path / 'big.png')!r}, "-o", {str(tmp_path / 'out')!r},
                  "--model", {str(tmp_path / 'dn_resnet13.ckpt')!r}])
        finally:
            print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mb = int(result.stdout.split("maxrss_kb")[-1]) / 1024
    print(f"peak RSS {peak_mb:.0f} MB for a 24-megapixel grey image")
    assert peak_mb < 2048
    assert read_image(tmp_path / "out" / "big.png").pixels.shape == (4000, 6000)
