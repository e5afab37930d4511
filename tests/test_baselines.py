"""BM3D / VST-BM3D baselines: the unbiased VST inverse, BM3D's accuracy on a real image, the missing-package message."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from denoise_lightning.baselines import (
    BM3D,
    BM3D_MISSING,
    generalized_anscombe,
    import_bm3d,
    inverse_generalized_anscombe,
)
from denoise_lightning.degradations.noise import GaussianNoise, PoissonGaussianNoise, PoissonNoise, deterministic_noisy
from denoise_lightning.training.data import load_image
from denoise_lightning.training.module import image_metrics


def psnr(output: np.ndarray, clean: torch.Tensor) -> float:
    """PSNR of an (H, W, C) output against a (1, C, H, W) clean image, with the project's metric code."""
    metrics = image_metrics()
    metrics.update(torch.from_numpy(output).float().permute(2, 0, 1)[None].clamp(0, 1), clean)
    return float(metrics.compute()["psnr"])


def grey(shared_data, name: str, crop: int | None = None) -> torch.Tensor:
    """A Set12 image as a (1, 1, H, W) float tensor in [0, 1], optionally its top-left ``crop`` x ``crop``."""
    image = torch.from_numpy(load_image(shared_data / "test" / "set12" / f"{name}.png")).permute(2, 0, 1)[None]
    return (image[..., :crop, :crop] if crop else image).float() / 255.0


@pytest.mark.parametrize(("noise", "level"), [
    (PoissonNoise(), {"peak": 0.5}), (PoissonNoise(), {"peak": 1.0}), (PoissonNoise(), {"peak": 2.0}),
    (PoissonNoise(), {"peak": 4.0}),
    (PoissonGaussianNoise(), {"peak": 2.0, "sigma": 64.0}),  # Gaussian part 0.5 counts
    (PoissonGaussianNoise(), {"peak": 4.0, "sigma": 64.0}),  # 1 count
])
def test_vst_inverse_is_unbiased_at_low_counts(noise, level):
    """Monte Carlo on a constant image x = 1: an ideal denoiser of the stabilised image returns D = E[f(z)]; the
    unbiased inverse maps D back to the mean count, the algebraic inverse (D/2)^2 - 3/8 - sigma^2 does not."""
    peak, sigma_counts = level["peak"], level["peak"] * level.get("sigma", 0.0) / 255.0
    noisy = noise.at_level(torch.ones(1, 1, 1000, 1000), level, torch.Generator().manual_seed(0))
    mean_transformed = generalized_anscombe(peak * noisy.double().numpy(), sigma_counts).mean()
    unbiased = inverse_generalized_anscombe(mean_transformed, sigma_counts) / peak
    algebraic = ((mean_transformed / 2) ** 2 - 3 / 8 - sigma_counts**2) / peak
    assert unbiased == pytest.approx(1.0, abs=0.02)
    assert abs(algebraic - 1.0) > 0.05


def test_vst_inverse_is_monotone_and_zero_at_no_signal():
    estimates = np.linspace(0.0, 12.0, 2000)
    inverse = inverse_generalized_anscombe(estimates)
    assert np.all(np.diff(inverse) >= 0) and inverse[0] == 0.0
    assert inverse_generalized_anscombe(generalized_anscombe(np.array(0.0))) == pytest.approx(0.0, abs=1e-12)
    assert inverse_generalized_anscombe(np.array(40.0)) == pytest.approx((40.0 / 2) ** 2 - 1 / 8, rel=1e-4)


def test_bm3d_on_cameraman_at_sigma25_matches_the_published_psnr(shared_data):
    """Set12 C.man (256x256), sigma 25, the evaluation's deterministic noise: BM3D published 29.45 dB (DnCNN
    paper, Table 3); one noise realisation moves it by a few hundredths."""
    clean = grey(shared_data, "01")
    level = {"sigma": 25.0}
    noisy = deterministic_noisy(GaussianNoise(), clean, "set12", 0, level)
    output = BM3D().denoise(noisy[0].permute(1, 2, 0).double().numpy(), level)
    assert output.shape == (256, 256, 1)
    assert psnr(output, clean) == pytest.approx(29.45, abs=0.15)
    assert psnr(output, clean) - psnr(noisy[0].permute(1, 2, 0).numpy(), clean) > 8.5


@pytest.mark.parametrize("level", [{"peak": 4.0}, {"peak": 4.0, "sigma": 10.0}])
def test_vst_bm3d_denoises_poisson_noise_without_darkening(shared_data, level):
    """Peak 4 (about 3 photons per pixel on this crop): large PSNR gain, and the mean intensity of the noisy image
    (its unbiased estimate) is kept; the algebraic inverse would darken the image by about 0.25 / peak = 0.06."""
    clean = grey(shared_data, "02", crop=96)
    noise = PoissonGaussianNoise() if "sigma" in level else PoissonNoise()
    noisy = deterministic_noisy(noise, clean, "set12", 1, level)[0].permute(1, 2, 0).double().numpy()
    output = BM3D().denoise(noisy, level)
    assert psnr(output, clean) - psnr(noisy, clean) > 7.0
    assert float(output.mean()) == pytest.approx(float(noisy.mean()), abs=0.015)


def test_missing_bm3d_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # as if not installed: `import bm3d` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'denoise-lightning\[baselines\]'") as raised:
        import_bm3d()
    assert str(raised.value) == BM3D_MISSING
    with pytest.raises(ImportError, match="baselines"):
        BM3D().denoise(np.zeros((16, 16, 1)), {"sigma": 25.0})


def test_bad_profile_and_unknown_level_are_clear_errors():
    with pytest.raises(ValueError, match="model.profile must be one of"):
        BM3D(profile="fast")
    with pytest.raises(ValueError, match=r"cannot denoise at level \{'quality': 10\}"):
        BM3D().denoise(np.zeros((16, 16, 1)), {"quality": 10})


def test_bm3d_denoises_rgb_images_with_cbm3d():
    """RGB goes through bm3d_rgb (opponent colour space): same shape out, a large gain on a real photo crop."""
    import skimage.data

    clean = torch.from_numpy(skimage.data.astronaut()[100:164, 180:244].copy()).permute(2, 0, 1)[None].float() / 255
    level = {"sigma": 25.0}
    noisy = deterministic_noisy(GaussianNoise(), clean, "rgb", 0, level)[0].permute(1, 2, 0).double().numpy()
    output = BM3D().denoise(noisy, level)
    assert output.shape == (64, 64, 3)
    assert psnr(output, clean) - psnr(noisy, clean) > 5.0
