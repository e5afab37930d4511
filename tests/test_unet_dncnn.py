"""UDnCNN / DUDnCNN: any image size, 33x33 receptive field, max-unpooling at the stored indices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, compose_config
from hydra.utils import instantiate
from torchmetrics.functional.image import peak_signal_noise_ratio

from denoise_lightning import load_model
from denoise_lightning.degradations.noise import GaussianNoise, deterministic_noisy
from denoise_lightning.models import DnCNN, DUDnCNN, UDnCNN
from denoise_lightning.training.data import load_source
from denoise_lightning.training.train import train


def _count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize("cls", [UDnCNN, DUDnCNN])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_has_the_input_size_on_odd_sizes(cls, channels):
    network = cls(in_channels=channels).eval()
    for height, width in [(37, 53), (5, 7), (64, 48)]:
        noisy = torch.rand(2, channels, height, width)
        with torch.no_grad():
            output = network(noisy)
        assert output.shape == noisy.shape and torch.isfinite(output).all()


def test_udncnn_pads_by_reflection_to_a_multiple_of_4_and_crops_back():
    network = UDnCNN().eval()
    noisy = torch.rand(1, 1, 37, 53)
    with torch.no_grad():
        padded = network(F.pad(noisy, (0, 3, 0, 3), mode="reflect"))  # 40 x 56
        torch.testing.assert_close(network(noisy), padded[..., :37, :53], rtol=0, atol=0)


def test_default_networks_have_8_convs_64_channels_and_dncnn_8_parameter_counts():
    """The U-shape adds no parameters: both equal an 8-conv DnCNN (223,169 grey, 225,475 RGB)."""
    for channels, expected in [(1, 223_169), (3, 225_475)]:
        for cls in (UDnCNN, DUDnCNN):
            network = cls(in_channels=channels)
            convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
            assert len(convs) == 8 and {c.out_channels for c in convs[:-1]} == {64}
            assert _count(network) == _count(DnCNN(in_channels=channels, num_layers=8)) == expected


def test_dudncnn_dilations_follow_the_poolings_of_udncnn():
    convs = [m for m in DUDnCNN().modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 4, 2, 1, 1]
    assert all(c.padding == c.dilation for c in convs)  # 'same' size everywhere
    assert all(c.dilation == (1, 1) for c in UDnCNN().modules() if isinstance(c, torch.nn.Conv2d))


def _receptive_field(network: torch.nn.Module, size: int = 65) -> tuple[int, int]:
    """Height and width of the input window that one central output pixel depends on (all weights positive,
    so no dependency cancels and every ReLU is active)."""
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.constant_(module.weight, 0.01)
            if module.bias is not None:
                torch.nn.init.constant_(module.bias, 0.01)
    network.eval()
    noisy = torch.rand(1, 1, size, size, requires_grad=True)
    network(noisy)[0, 0, size // 2, size // 2].backward()
    rows, cols = (noisy.grad[0, 0] != 0).nonzero().unbind(1)
    window = (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    assert int((noisy.grad[0, 0] != 0).sum()) == window[0] * window[1]  # a full window, no holes
    return window


def test_dudncnn_receptive_field_is_33x33():
    assert _receptive_field(DUDnCNN()) == (33, 33)
    assert _receptive_field(DnCNN(num_layers=8)) == (17, 17)  # the same depth without dilation


def _windows(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/2, W/2, 4): the four values of every 2x2 pooling window."""
    n, c, h, w = features.shape
    return features.unfold(2, 2, 2).unfold(3, 2, 2).reshape(n, c, h // 2, w // 2, 4)


def test_udncnn_unpools_at_the_stored_max_pool_indices():
    """Each decoder input is zero except where the matching encoder feature had its 2x2 maximum."""
    network = UDnCNN(num_layers=6).eval()  # one pooling: encoder[0] is unpooled into decoder[0]
    captured = {}
    network.encoder[0].register_forward_hook(lambda module, args, output: captured.update(encoder=output.clone()))
    network.decoder[0].register_forward_pre_hook(lambda module, args: captured.update(decoder=args[0].clone()))
    with torch.no_grad():
        network(torch.rand(1, 1, 32, 40))
    encoder, decoder = captured["encoder"], captured["decoder"]
    assert decoder.shape == encoder.shape
    argmax = _windows(encoder).argmax(-1, keepdim=True)
    unpooled = _windows(decoder)
    assert (unpooled.count_nonzero(-1) <= 1).all()
    assert unpooled.count_nonzero() > 0.3 * argmax.numel()
    off_max = unpooled.scatter(-1, argmax, 0.0)
    assert off_max.count_nonzero() == 0


def test_he_initialisation():
    network = DUDnCNN()
    middle = network.bottom[0][0]
    assert middle.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.05)
    assert network.bottom[0][1].weight.eq(1).all()  # BN starts as the identity


def _mean_psnr(network: torch.nn.Module, set_name: str, images: list) -> float:
    """Mean PSNR on the deterministic sigma-25 test noise of ``set_name`` (what dnl-eval scores)."""
    values = []
    for index, image in enumerate(images):
        clean = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        noisy = deterministic_noisy(GaussianNoise(sigma=25), clean, set_name, index, {"sigma": 25})
        with torch.no_grad():
            values.append(float(peak_signal_noise_ratio(network(noisy).clamp(0, 1), clean, data_range=1.0)))
    return sum(values) / len(values)


def test_every_parameter_gets_a_gradient_on_a_real_image():
    """No dead branch: the skips, the pooling indices and every conv carry gradient (grey camera crop)."""
    clean = torch.from_numpy(load_source("skimage://test", 1)[1][0][:61, :75]).permute(2, 0, 1)[None].float() / 255
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    for cls in (UDnCNN, DUDnCNN):
        network = cls()
        F.mse_loss(network(noisy), clean).backward()
        dead = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, (cls.__name__, dead)


@pytest.mark.parametrize("model", ["udncnn", "dudncnn"])
def test_short_training_from_the_config_learns_on_real_images(model, tmp_path):
    """conf/model/<model>.yaml trains through DenoiseModule (channels_last) on the embedded photos.

    A 40-step budget only shows that the pipeline learns (PSNR far above the untrained network's on the same noisy
    test images); beating the noisy input takes a few hundred steps (He-initialised U-nets start from a larger
    output scale than DnCNN), which the U-family training study measures.
    """
    cfg = compose_config("train", tmp_path, [*FAST, f"model={model}", "model.num_layers=6", "model.channels=16",
                                             "trainer.max_steps=40", "module.lr=2e-3", "data.val_max_images=1",
                                             "data.patches_per_image=32"])  # 24 steps an epoch: 2 validations
    results = train(cfg)
    assert results["model"]["class"] == {"udncnn": "UDnCNN", "dudncnn": "DUDnCNN"}[model]
    trained = results["test"]["embedded"]["sigma25"]["psnr"]
    names, images = load_source("skimage://test", 1)
    assert names == ["camera", "moon", "coins"]
    torch.manual_seed(0)
    untrained = _mean_psnr(instantiate(cfg.model).eval(), "embedded", images)
    assert trained == pytest.approx(_mean_psnr(load_model(results["checkpoint"]), "embedded", images), abs=1e-3)
    print(f"{model}: untrained {untrained:.2f} dB, 40 steps {trained:.2f} dB, noisy "
          f"{results['test']['embedded']['sigma25']['psnr_noisy']:.2f} dB")
    assert trained > untrained + 5.0
