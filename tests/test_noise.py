"""Degradations on real images: the noise has the statistics of its model, blind levels cover their range, test
noise is deterministic, bad levels fail at config time naming the key."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FAST, compose_config
from hydra.utils import instantiate

from denoise_lightning.degradations.noise import (
    Degradation,
    GaussianNoise,
    PoissonGaussianNoise,
    PoissonNoise,
    deterministic_noisy,
)
from denoise_lightning.training.data import load_source


@pytest.fixture(scope="module")
def camera() -> torch.Tensor:
    names, images = load_source("skimage://test")
    return torch.from_numpy(images[names.index("camera")]).permute(2, 0, 1)[None].float() / 255


def test_gaussian_noise_has_the_model_statistics_on_a_real_image(camera):
    noise = GaussianNoise(sigma=25)
    noisy = noise(camera, generator=torch.Generator().manual_seed(0))
    residual = noisy - camera
    assert abs(residual.mean().item()) < 2e-3
    assert residual.std().item() == pytest.approx(25 / 255, rel=0.01)
    assert noisy.min() < 0 and noisy.max() > 1  # not clipped


def test_blind_levels_stay_in_range_and_cover_it():
    noise = GaussianNoise(blind=True, sigma_range=(0, 55))
    sigmas = noise.sample_levels(20_000, torch.Generator().manual_seed(1), torch.device("cpu"))["sigma"]
    assert sigmas.min() >= 0 and sigmas.max() <= 55
    histogram = np.histogram(sigmas.numpy(), bins=11, range=(0, 55))[0]
    assert histogram.min() > 0.8 * histogram.mean()  # roughly uniform, every part of the range drawn


def test_blind_noise_is_per_image(camera):
    batch = camera.repeat(64, 1, 1, 1)
    noisy = GaussianNoise(blind=True)(batch, generator=torch.Generator().manual_seed(2))
    stds = (noisy - batch).flatten(1).std(dim=1) * 255
    assert stds.max() - stds.min() > 30


def test_test_noise_is_deterministic_and_keyed_by_set_image_and_level(camera):
    noise = GaussianNoise(sigma=25)
    first = deterministic_noisy(noise, camera, "bsd68", 3, {"sigma": 25})
    again = deterministic_noisy(GaussianNoise(sigma=25), camera.clone(), "bsd68", 3, {"sigma": 25})
    assert torch.equal(first, again)
    for other in (deterministic_noisy(noise, camera, "set12", 3, {"sigma": 25}),
                  deterministic_noisy(noise, camera, "bsd68", 4, {"sigma": 25})):
        assert not torch.equal(first, other)


def test_level_names_are_readable():
    assert Degradation.level_name({"sigma": 25.0}) == "sigma25"
    assert Degradation.level_name({"peak": 4, "sigma": 10}) == "peak4_sigma10"
    assert [Degradation.level_name(lv) for lv in GaussianNoise(blind=True).test_levels] == [
        "sigma15", "sigma25", "sigma50"]
    assert GaussianNoise(sigma=50).test_levels == [{"sigma": 50.0}]


@pytest.mark.parametrize("kwargs, key", [
    ({"sigma": -1}, "noise.sigma"),
    ({"sigma_range": (30, 10)}, "noise.sigma_range"),
    ({"test_sigmas": []}, "noise.test_sigmas"),
])
def test_invalid_levels_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        GaussianNoise(**kwargs)


@pytest.mark.parametrize("noise, sigma", [
    (PoissonNoise(peak=4), 0.0),
    (PoissonNoise(peak=30), 0.0),
    (PoissonGaussianNoise(peak=4, sigma=10), 10.0),
    (PoissonGaussianNoise(peak=30, sigma=25), 25.0),
])
def test_poisson_noise_has_the_model_statistics_on_a_real_image(camera, noise, sigma):
    """Per intensity band of the real image: residual mean 0 and variance x / peak + (sigma/255)^2."""
    clean = camera.repeat(2, 1, 1, 1)
    noisy = noise(clean, generator=torch.Generator().manual_seed(3))
    residual, expected_var = noisy - clean, clean / noise.peak + (sigma / 255) ** 2
    bands = torch.bucketize(clean, torch.linspace(0, 1, 9)[1:-1])
    checked = 0
    for band in range(8):
        inside = bands == band
        if inside.sum() < 10_000:
            continue
        checked += 1
        band_var = expected_var[inside].mean()
        assert abs(residual[inside].mean()) < 4 * (band_var / inside.sum()).sqrt()
        assert float(residual[inside].square().mean()) == pytest.approx(float(band_var), rel=0.05)
    assert checked >= 5  # the check covers dark to bright parts of the image
    if sigma == 0:  # photon counts are whole numbers
        counts = noisy * noise.peak
        assert torch.equal(counts, counts.round())


@pytest.mark.parametrize("noise", [PoissonNoise(blind=True, peak_range=(1, 30)),
                                   PoissonGaussianNoise(blind=True, peak_range=(1, 30), sigma_range=(0, 50))])
def test_blind_peaks_are_log_uniform_and_sigmas_uniform_in_their_ranges(noise):
    levels = noise.sample_levels(20_000, torch.Generator().manual_seed(4), torch.device("cpu"))
    peaks = levels["peak"]
    assert peaks.min() >= 1 and peaks.max() <= 30
    histogram = np.histogram(np.log(peaks.numpy()), bins=10, range=(0, np.log(30)))[0]
    assert histogram.min() > 0.85 * histogram.mean()  # every octave equally drawn, the whole range covered
    assert peaks.median() == pytest.approx(30 ** 0.5, rel=0.05)  # geometric middle (uniform would give 15.5)
    if "sigma" in levels:
        sigmas = levels["sigma"]
        assert sigmas.min() >= 0 and sigmas.max() <= 50
        histogram = np.histogram(sigmas.numpy(), bins=10, range=(0, 50))[0]
        assert histogram.min() > 0.85 * histogram.mean()


def test_blind_poisson_noise_draws_the_peak_per_image(camera):
    batch = camera.repeat(32, 1, 1, 1)
    noisy = PoissonNoise(blind=True, peak_range=(1, 30))(batch, generator=torch.Generator().manual_seed(5))
    inverse_peaks = (noisy - batch).flatten(1).var(dim=1) / batch.flatten(1).mean(dim=1)  # variance / mean = 1/peak
    assert inverse_peaks.max() / inverse_peaks.min() > 10


def test_non_blind_training_noise_uses_the_fixed_level():
    levels = PoissonGaussianNoise(peak=8, sigma=5).sample_levels(3, None, torch.device("cpu"))
    assert levels == {"peak": 8.0, "sigma": 5.0}


@pytest.mark.parametrize("noise, level", [(PoissonNoise(), {"peak": 4.0}),
                                          (PoissonGaussianNoise(), {"peak": 4.0, "sigma": 10.0})])
def test_poisson_test_noise_is_deterministic_per_set_image_and_level(camera, noise, level):
    first = deterministic_noisy(noise, camera, "bsd68", 3, level)
    again = deterministic_noisy(type(noise)(), camera.clone(), "bsd68", 3, level)
    assert torch.equal(first, again)
    other_level = {**level, "peak": 8.0}
    for other in (deterministic_noisy(noise, camera, "bsd68", 3, other_level),
                  deterministic_noisy(noise, camera, "bsd68", 4, level)):
        assert not torch.equal(first, other)


def test_poisson_levels_are_named_readably():
    assert [Degradation.level_name(lv) for lv in PoissonNoise().test_levels] == [
        "peak1", "peak2", "peak4", "peak8", "peak30"]
    assert PoissonNoise(peak=8).val_level == {"peak": 8.0}
    assert [Degradation.level_name(lv) for lv in PoissonGaussianNoise().test_levels] == [
        "peak1_sigma10", "peak4_sigma10", "peak30_sigma25"]
    assert PoissonGaussianNoise(peak=30, sigma=25).val_level == {"peak": 30.0, "sigma": 25.0}


@pytest.mark.parametrize("noise_class, kwargs, key", [
    (PoissonNoise, {"peak": 0}, "noise.peak"),
    (PoissonNoise, {"peak_range": (0, 30)}, "noise.peak_range"),
    (PoissonNoise, {"peak_range": (30, 1)}, "noise.peak_range"),
    (PoissonNoise, {"peak_range": ()}, "noise.peak_range"),
    (PoissonNoise, {"test_peaks": []}, "noise.test_peaks"),
    (PoissonNoise, {"test_peaks": [4, -1]}, "noise.test_peaks"),
    (PoissonGaussianNoise, {"peak": -1}, "noise.peak"),
    (PoissonGaussianNoise, {"sigma": -5}, "noise.sigma"),
    (PoissonGaussianNoise, {"sigma_range": (10, 5)}, "noise.sigma_range"),
    (PoissonGaussianNoise, {"peak_range": (2, 1)}, "noise.peak_range"),
    (PoissonGaussianNoise, {"test_levels": []}, "noise.test_levels"),
    (PoissonGaussianNoise, {"test_levels": [{"peak": 4}]}, "noise.test_levels"),
    (PoissonGaussianNoise, {"test_levels": [{"peak": 0, "sigma": 10}]}, "noise.test_levels peak"),
    (GaussianNoise, {"sigma_range": [5]}, "noise.sigma_range"),
])
def test_invalid_poisson_levels_name_the_key(noise_class, kwargs, key):
    with pytest.raises(ValueError, match=key):
        noise_class(**kwargs)


@pytest.mark.parametrize("name, noise_class", [("gaussian", GaussianNoise), ("poisson", PoissonNoise),
                                               ("poisson_gaussian", PoissonGaussianNoise)])
@pytest.mark.parametrize("blind", [True, False])
def test_every_noise_config_builds_blind_and_non_blind(name, noise_class, blind, tmp_path):
    cfg = compose_config("train", tmp_path, [f"noise={name}", f"noise.blind={blind}"])
    noise = instantiate(cfg.noise)
    assert type(noise) is noise_class and noise.blind is blind


def test_poisson_gaussian_test_levels_are_set_from_the_command_line(tmp_path):
    cfg = compose_config("train", tmp_path, ["noise=poisson_gaussian", "noise.test_levels=[{peak:2,sigma:5}]"])
    assert instantiate(cfg.noise).test_levels == [{"peak": 2.0, "sigma": 5.0}]


def test_dnl_train_rejects_a_bad_peak_naming_the_key(tmp_path):
    done = subprocess.run([sys.executable, "-m", "denoise_lightning.training.train", *FAST, "trainer.max_steps=1",
                           "noise=poisson", "noise.peak=-1", f"hydra.run.dir={tmp_path}/run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "noise.peak must be > 0" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_is_drawn_on_the_device_of_the_batch(camera):
    clean = camera.cuda()
    for noise in (PoissonNoise(blind=True), PoissonGaussianNoise(blind=True)):
        noisy = noise(clean, generator=torch.Generator(device="cuda").manual_seed(0))
        assert noisy.device == clean.device
