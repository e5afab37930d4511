"""The edge-aware loss on real images: MSE at weight 0, edge errors cost more, gradients weighted by the edge map,
fp32 under bf16 autocast, selectable and sweepable from the config; a fast run with Poisson noise and edge-a."""

import pytest
import torch
from conftest import FAST, compose_config
from hydra.utils import instantiate
from kornia.color import rgb_to_grayscale
from torch.nn import functional as F

from denoise_lightning.training.data import load_source
from denoise_lightning.training.losses import EdgeAwareLoss
from denoise_lightning.training.train import train

EDGES = ["sobel", "canny"]


@pytest.fixture(scope="module")
def camera() -> torch.Tensor:
    """The cameraman's head and camera, (1, 1, 128, 128) in [0, 1] (a crop: Canny's hysteresis is slow on CPU)."""
    names, images = load_source("skimage://test")
    return torch.from_numpy(images[names.index("camera")]).permute(2, 0, 1)[None, :, 64:192, 192:320].float() / 255


@pytest.fixture(scope="module")
def denoised(camera) -> torch.Tensor:
    """A stand-in network output: the clean image plus a small error everywhere."""
    return camera + 0.02 * torch.randn(camera.shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("edge", EDGES)
def test_zero_edge_weight_is_plain_mse(camera, denoised, edge):
    assert EdgeAwareLoss(edge, edge_weight=0)(denoised, camera) == F.mse_loss(denoised, camera)


@pytest.mark.parametrize("edge", EDGES)
def test_an_error_on_edges_costs_more_than_the_same_error_on_flat_regions(camera, edge):
    loss = EdgeAwareLoss(edge, edge_weight=0.025)
    edges = loss.edge_map(camera).flatten()
    count = 500
    order = edges.argsort()
    on_flat, on_edges = torch.zeros_like(camera).flatten(), torch.zeros_like(camera).flatten()
    on_flat[order[:count]] = 0.1
    on_edges[order[-count:]] = 0.1
    flat_output, edge_output = camera + on_flat.view_as(camera), camera + on_edges.view_as(camera)
    assert F.mse_loss(flat_output, camera).item() == pytest.approx(F.mse_loss(edge_output, camera).item(), rel=1e-5)
    assert loss(flat_output, camera).item() == pytest.approx(F.mse_loss(flat_output, camera).item(), rel=1e-3)
    assert loss(edge_output, camera) > 1.02 * loss(flat_output, camera)


@pytest.mark.parametrize("edge", EDGES)
def test_gradients_flow_weighted_by_the_edge_map(camera, denoised, edge):
    weight = 0.05
    loss = EdgeAwareLoss(edge, edge_weight=weight)
    output = denoised.clone().requires_grad_(True)
    loss(output, camera).backward()
    mse_gradient = 2 * (denoised - camera) / camera.numel()
    ratio = output.grad / mse_gradient  # 1 + w * M^2 per pixel
    assert torch.isfinite(output.grad).all()
    torch.testing.assert_close(ratio, 1 + weight * loss.edge_map(camera) ** 2, rtol=1e-4, atol=1e-4)
    assert ratio.min() == pytest.approx(1, abs=1e-4) and ratio.max() > 1 + weight * 0.9


@pytest.mark.parametrize("edge", EDGES)
def test_loss_runs_in_fp32_under_bf16_autocast(camera, denoised, edge):
    loss = EdgeAwareLoss(edge, edge_weight=0.025)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(denoised, camera)
    assert mixed.dtype == torch.float32
    assert mixed == loss(denoised, camera)


@pytest.mark.parametrize("edge", EDGES)
def test_colour_images_use_the_edge_map_of_the_grey_image(edge):
    names, images = load_source("skimage://test", channels=3)
    colour = torch.from_numpy(images[names.index("coins")][:96, :96]).permute(2, 0, 1)[None].float() / 255
    loss = EdgeAwareLoss(edge)
    edges = loss.edge_map(colour)
    assert edges.shape == (1, 1, *colour.shape[-2:])
    torch.testing.assert_close(edges, loss.edge_map(rgb_to_grayscale(colour)))


@pytest.mark.parametrize("kwargs, key", [
    ({"edge": "laplace"}, "loss.edge"),
    ({"edge_weight": -0.1}, "loss.edge_weight"),
    ({"canny_thresholds": (0.3, 0.1)}, "loss.canny_thresholds"),
    ({"canny_thresholds": (0.1,)}, "loss.canny_thresholds"),
])
def test_invalid_loss_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        EdgeAwareLoss(**kwargs)


@pytest.mark.parametrize("overrides, edge, weight", [
    (["loss=edge_a"], "sobel", 0.025),
    (["loss=edge_b"], "canny", 0.05),
    (["loss=edge_a", "loss.edge_weight=0.1"], "sobel", 0.1),
])
def test_loss_configs_select_and_sweep_the_edge_loss(overrides, edge, weight, tmp_path):
    loss = instantiate(compose_config("train", tmp_path, overrides).loss)
    assert isinstance(loss, EdgeAwareLoss) and (loss.edge, loss.edge_weight) == (edge, weight)
    assert isinstance(instantiate(compose_config("train", tmp_path, ["loss=mse"]).loss), torch.nn.MSELoss)


def test_blind_poisson_run_with_the_edge_loss(tmp_path):
    cfg = compose_config("train", tmp_path, [*FAST, "noise=poisson", "noise.blind=true", "loss=edge_a",
                                             "trainer.fast_dev_run=1", "data.test_max_images=1",
                                             "data.val_max_images=1"])
    results = train(cfg)
    assert results["global_steps"] == 1
    assert results["noise"]["_target_"] == "denoise_lightning.degradations.noise.PoissonNoise"
    assert results["noise"]["blind"]
    rows = results["test"]["embedded"]
    assert list(rows) == ["peak1", "peak2", "peak4", "peak8", "peak30"]
    psnr_noisy = [row["psnr_noisy"] for row in rows.values()]
    assert psnr_noisy == sorted(psnr_noisy)  # higher peak, less noise
