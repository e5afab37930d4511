"""Bicubic downscaling as MATLAB's imresize: the published Set5 bicubic PSNRs, mirrored borders, sizes that are
multiples of the scale, blind scales drawn reproducibly, a batch equal to its images degraded one by one."""

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, SHARED_DATA
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from denoise_lightning.degradations.resize import Downscale, imresize

SET5 = SHARED_DATA / "test" / "set5"
# Set5 bicubic PSNR (Y channel, s border pixels cropped), x2 / x3 / x4: measured on the float image clipped to
# [0, 1] by an independent implementation of the protocol, and published (SRCNN / VDSR tables), which round the
# bicubic image to 8 bits first
FLOAT_SET5_BICUBIC = {2: 33.69, 3: 30.41, 4: 28.43}
PUBLISHED_SET5_BICUBIC = {2: 33.66, 3: 30.39, 4: 28.42}


def studio_y(rgb: np.ndarray) -> np.ndarray:
    """Y of MATLAB's rgb2ycbcr for uint8 RGB (H, W, 3): 16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded."""
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    return np.round(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).astype(np.uint8)[:, :, None]


@pytest.fixture(scope="module")
def set5_y() -> list[np.ndarray]:
    if not SET5.is_dir():
        pytest.skip(f"benchmark data not found under {SET5} (set DNL_DATA_DIR)")
    return [studio_y(np.asarray(Image.open(path).convert("RGB"))) for path in sorted(SET5.glob("*.png"))]


def _psnr(image: np.ndarray, clean: np.ndarray, border: int) -> float:
    """torchmetrics PSNR (data range 1) of float (H, W, 1) images without ``border`` pixels on each side."""
    crop = lambda a: torch.from_numpy(np.ascontiguousarray(a[border:-border, border:-border], np.float64))  # noqa: E731
    return float(peak_signal_noise_ratio(crop(image).clamp(0, 1), crop(clean), data_range=1.0))


def test_set5_bicubic_psnr_is_the_published_one(set5_y):
    downscale = Downscale(test_scales=[2, 3, 4])
    for level in downscale.test_levels:
        scale = downscale.size_multiple(level)
        border = downscale.metric_border(level)
        assert scale == border == level["scale"]
        clipped, rounded = [], []
        for y in set5_y:
            height, width = y.shape[:2]
            clean = y[: height - height % scale, : width - width % scale]  # MATLAB modcrop
            output = downscale.degrade_array(clean, level).astype(np.float64)
            assert output.shape == clean.shape
            clipped.append(_psnr(output, clean / 255.0, border))
            rounded.append(_psnr(np.round(output.clip(0, 1) * 255) / 255, clean / 255.0, border))
        assert np.mean(clipped) == pytest.approx(FLOAT_SET5_BICUBIC[scale], abs=0.05), (scale, np.mean(clipped))
        assert np.mean(rounded) == pytest.approx(PUBLISHED_SET5_BICUBIC[scale], abs=0.02), (scale, np.mean(rounded))


def test_borders_are_mirrored_and_bicubic_overshoots():
    flat = np.full((24, 36, 1), 200, np.uint8)
    for scale in (2, 3, 4):  # zero padding would darken the border
        np.testing.assert_allclose(Downscale().degrade_array(flat, {"scale": scale}), 200 / 255, atol=1e-6)
    edge = np.zeros((24, 24, 1), np.uint8)
    edge[:, 13:] = 255
    output = Downscale().degrade_array(edge, {"scale": 2})
    assert output.min() < -0.01 and output.max() > 1.01  # cubic ringing, not clipped (MATLAB's double result)
    # MATLAB's grid: output pixel i of a downscale by 2 is centred on input 2 i + 0.5, so a ramp x_j = j becomes
    # 2 i + 0.5 away from the borders (the normalised, symmetric kernel keeps linear functions)
    ramp = np.tile(np.arange(16, dtype=np.float64), (16, 1))[:, :, None]
    np.testing.assert_allclose(imresize(ramp, 0.5, (8, 8))[:, 2:-2, 0],
                               np.broadcast_to(np.arange(2, 6) * 2 + 0.5, (8, 4)), atol=1e-12)


def test_sizes_not_a_multiple_of_the_scale_are_refused():
    image = np.zeros((30, 31, 1), np.uint8)
    with pytest.raises(ValueError, match="multiple of 2"):
        Downscale().degrade_array(image, {"scale": 2})
    with pytest.raises(ValueError, match="multiple of 3"):
        Downscale().apply(torch.zeros(1, 1, 32, 33), {"scale": 3}, None)
    assert Downscale().degrade_array(image[:, :30], {"scale": 3}).shape == (30, 30, 1)


def test_blind_scales_are_drawn_from_the_list_reproducibly():
    downscale = Downscale(blind=True, scales=[2, 4])
    draw = lambda seed: downscale.sample_levels(4000, torch.Generator().manual_seed(seed), torch.device("cpu"))  # noqa: E731
    scales = draw(0)["scale"]
    assert set(scales.tolist()) == {2.0, 4.0}
    assert (scales == 2).float().mean() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(scales, draw(0)["scale"]) and not torch.equal(scales, draw(1)["scale"])
    assert downscale.training_levels == [{"scale": 2.0}, {"scale": 4.0}]
    assert Downscale(scale=3).sample_levels(2, None, torch.device("cpu")) == {"scale": 3.0}
    assert [Downscale.level_name(level) for level in downscale.test_levels] == ["scale2", "scale3", "scale4"]


def test_batch_with_per_image_scales_equals_each_image_alone(set5_y):
    crops = [np.ascontiguousarray(y[:72, :96]) for y in set5_y]
    clean = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    levels = {"scale": torch.tensor([2.0, 3.0, 4.0, 3.0, 2.0])}
    batch = Downscale(blind=True).at_level(clean, levels)
    assert batch.shape == clean.shape and batch.dtype == torch.float32
    for index, crop in enumerate(crops):
        alone = Downscale().degrade_array(crop, {"scale": float(levels["scale"][index])})
        assert torch.equal(batch[index], torch.from_numpy(alone).permute(2, 0, 1))


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"scale": 1}, "noise.scale"),
    ({"scale": 2.5}, "noise.scale"),
    ({"scale": "2"}, "noise.scale"),
    ({"scales": []}, "noise.scales"),
    ({"scales": [2, 1]}, "noise.scales"),
    ({"test_scales": [0]}, "noise.test_scales"),
])
def test_invalid_scales_fail_at_construction_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Downscale(**kwargs)


def test_config_builds_the_downscale():
    downscale = instantiate(OmegaConf.load(CONF_DIR / "noise" / "downscale.yaml"))
    assert isinstance(downscale, Downscale) and downscale.in_loader and downscale.scale == 2
    assert [level["scale"] for level in downscale.test_levels] == [2, 3, 4]
