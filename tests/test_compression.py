"""Codec degradations on real images: JPEG reproduces the published Classic5 JPEG inputs, stronger compression
lowers PSNR, blind levels are integers drawn reproducibly, a batch equals its images degraded one by one, and
bad levels fail at config time naming the key; HEIF works or skips saying how to install it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, SHARED_DATA
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from denoise_lightning.degradations.array import ArrayDegradation
from denoise_lightning.degradations.compression import (
    CodecUnavailableError,
    HEIFCompression,
    JPEG2000Compression,
    JPEGCompression,
)
from denoise_lightning.degradations.noise import GaussianNoise

CLASSIC5 = SHARED_DATA / "test" / "classic5"
# The JPEG rows of the deblocking papers (ARCNN, DnCNN): Classic5 PSNR of the decoded JPEG, q = 10, 20, 30, 40
PUBLISHED_CLASSIC5_JPEG = {10: 27.82, 20: 30.12, 30: 31.48, 40: 32.43}


def _grey_images(folder: Path) -> list[np.ndarray]:
    if not folder.is_dir():
        pytest.skip(f"benchmark data not found under {folder} (set DNL_DATA_DIR)")
    return [np.asarray(Image.open(path).convert("L"))[:, :, None] for path in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def classic5() -> list[np.ndarray]:
    return _grey_images(CLASSIC5)


def _psnr(degraded: np.ndarray, clean: np.ndarray) -> float:
    """dB, data range 1, of a float [0, 1] image against a uint8 one."""
    mse = np.mean((degraded.astype(np.float64) - clean / 255.0) ** 2)
    return float(10 * np.log10(1.0 / mse))


def _mean_psnr(degradation: ArrayDegradation, images: list[np.ndarray], level: dict) -> float:
    return float(np.mean([_psnr(degradation.degrade_array(image, level), image) for image in images]))


def test_jpeg_reproduces_the_published_classic5_inputs_and_quality_orders_them(classic5):
    jpeg = JPEGCompression()
    measured = {q: _mean_psnr(jpeg, classic5, {"quality": q}) for q in PUBLISHED_CLASSIC5_JPEG}
    for quality, published in PUBLISHED_CLASSIC5_JPEG.items():
        assert measured[quality] == pytest.approx(published, abs=0.02), measured
    assert measured[10] < measured[20] < measured[30] < measured[40]


def test_jpeg_on_a_tensor_batch_is_deterministic_and_in_range(classic5):
    jpeg = JPEGCompression(quality=10)
    clean = torch.from_numpy(np.stack(classic5[:2])).permute(0, 3, 1, 2).float() / 255
    first = jpeg(clean, generator=torch.Generator().manual_seed(0))
    second = jpeg.at_level(clean, {"quality": 10}, torch.Generator().manual_seed(1))
    assert first.shape == clean.shape and first.dtype == clean.dtype
    assert torch.equal(first, second)  # the codec, not the generator, decides
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first * 255, (first * 255).round())  # decoded 8-bit pixels
    assert (first - clean).abs().mean() > 0.01


def test_batch_with_per_image_levels_equals_each_image_alone(classic5):
    jpeg = JPEGCompression(blind=True, quality_range=(5, 40))
    crops = [np.ascontiguousarray(image[:96, :128]) for image in classic5]
    clean = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    levels = jpeg.sample_levels(len(crops), torch.Generator().manual_seed(3), torch.device("cpu"))
    batch = jpeg.apply(clean, levels, None)
    for index, crop in enumerate(crops):
        alone = jpeg.degrade_array(crop, {"quality": float(levels["quality"][index])})
        assert torch.equal(batch[index], torch.from_numpy(alone).permute(2, 0, 1))
    assert len(set(levels["quality"].tolist())) > 1


def test_blind_quality_is_an_integer_drawn_uniformly_and_reproducibly():
    jpeg = JPEGCompression(blind=True, quality_range=(5, 95))
    draw = lambda seed: jpeg.sample_levels(20_000, torch.Generator().manual_seed(seed), torch.device("cpu"))["quality"]  # noqa: E731
    qualities = draw(0)
    assert torch.equal(qualities, qualities.round())
    assert set(qualities.long().tolist()) == set(range(5, 96))  # both ends included
    assert torch.equal(qualities, draw(0)) and not torch.equal(qualities, draw(1))
    assert JPEGCompression(quality=30).sample_levels(4, None, torch.device("cpu")) == {"quality": 30.0}
    assert [JPEGCompression.level_name(level) for level in jpeg.test_levels] == [
        "quality10", "quality20", "quality30", "quality40"]


def test_jpeg2000_larger_ratio_is_worse_and_too_small_images_are_refused(classic5):
    codec = JPEG2000Compression()
    images = [np.ascontiguousarray(image[:256, :256]) for image in classic5[:3]]
    psnr = [_mean_psnr(codec, images, level) for level in codec.test_levels]
    assert [level["ratio"] for level in codec.test_levels] == [20, 40, 80]
    assert psnr[0] > psnr[1] + 1.5 and psnr[1] > psnr[2] + 1.5, psnr
    out = codec.degrade_array(images[0], {"ratio": 40})
    assert out.dtype == np.float32 and out.shape == images[0].shape
    with pytest.raises(ValueError, match="too small for JPEG 2000 at ratio 40"):
        codec.degrade_array(np.ascontiguousarray(images[0][:48, :48]), {"ratio": 40})
    assert codec.whole_image and not JPEGCompression.whole_image
    ratios = JPEG2000Compression(blind=True).sample_levels(5000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert 10 <= ratios["ratio"].min() and ratios["ratio"].max() <= 100
    assert (ratios["ratio"] < 31.6).float().mean() == pytest.approx(0.5, abs=0.03)  # log-uniform: sqrt(10 * 100)


def test_rgb_images_keep_their_channels(classic5):
    grey = np.ascontiguousarray(classic5[3][:128, :128])
    rgb = np.ascontiguousarray(np.repeat(grey, 3, axis=2))  # all of it in luma, no chroma to code
    for codec, level in [(JPEGCompression(), {"quality": 20}), (JPEG2000Compression(), {"ratio": 20})]:
        out = codec.degrade_array(rgb, level)
        assert out.shape == rgb.shape and out.dtype == np.float32
        assert _psnr(out, rgb) > _psnr(codec.degrade_array(grey, level), grey) - 0.5


def test_heif_works_or_skips_saying_how_to_install(classic5):
    try:
        heif = HEIFCompression()
    except CodecUnavailableError as error:
        pytest.skip(str(error))
    images = [np.ascontiguousarray(image[:128, :128]) for image in classic5[:2]]
    low, high = (_mean_psnr(heif, images, {"quality": q}) for q in (10, 40))
    assert 20 < low < high - 3, (low, high)
    out = heif.degrade_array(images[0], {"quality": 20})
    assert out.shape == images[0].shape and out.dtype == np.float32
    assert np.array_equal(out, heif.degrade_array(images[0], {"quality": 20}))  # deterministic
    assert type(instantiate(OmegaConf.load(CONF_DIR / "noise" / "heif.yaml"))) is HEIFCompression


def test_heif_without_pillow_heif_names_the_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pillow_heif", None)  # import pillow_heif -> ImportError
    with pytest.raises(CodecUnavailableError, match=r"pip install 'denoise-lightning\[heif\]'"):
        HEIFCompression()


@pytest.mark.parametrize(("make", "key"), [
    (lambda: JPEGCompression(quality=0), "noise.quality"),
    (lambda: JPEGCompression(quality=10.5), "noise.quality"),
    (lambda: JPEGCompression(quality="10"), "noise.quality"),
    (lambda: JPEGCompression(quality_range=(50, 10)), "noise.quality_range"),
    (lambda: JPEGCompression(quality_range=(0, 10)), "noise.quality_range"),
    (lambda: JPEGCompression(test_qualities=[]), "noise.test_qualities"),
    (lambda: JPEGCompression(test_qualities=[10, 101]), "noise.test_qualities"),
    (lambda: JPEG2000Compression(ratio=1), "noise.ratio"),
    (lambda: JPEG2000Compression(ratio_range=(1, 10)), "noise.ratio_range"),
    (lambda: JPEG2000Compression(test_ratios=[0.5]), "noise.test_ratios"),
])
def test_invalid_levels_fail_at_construction_naming_the_key(make, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make()


def test_configs_build_the_codecs_and_noise_models_stay_on_the_device():
    for name, cls in [("jpeg", JPEGCompression), ("jpeg2000", JPEG2000Compression)]:
        degradation = instantiate(OmegaConf.load(CONF_DIR / "noise" / f"{name}.yaml"))
        assert type(degradation) is cls and degradation.in_loader and not degradation.blind
        assert degradation.size_multiple(degradation.val_level) == 1 and degradation.metric_border(
            degradation.val_level) == 0
    with pytest.raises(TypeError, match="abstract"):
        ArrayDegradation()
    gaussian = GaussianNoise()
    assert not gaussian.in_loader and gaussian.size_multiple({"sigma": 25}) == 1
    assert gaussian.metric_border({"sigma": 25}) == 0
    with pytest.raises(NotImplementedError):
        gaussian.degrade_array(np.zeros((8, 8, 1), np.uint8), {"sigma": 25})
