import numpy as np
import pytest
import torch

from denoise_lightning.data import load_source
from denoise_lightning.noise import Degradation, GaussianNoise, deterministic_noisy


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
    assert noisy.min() < 0 and noisy.max() > 1  # not clipped (SPEC section 1)


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
