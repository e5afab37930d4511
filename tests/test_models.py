import pytest
import torch

from denoise_lightning.models import DnCNN
from denoise_lightning.models.complexity import count_parameters, macs_per_pixel, receptive_field
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.models.unet_dncnn import DUDnCNN, UDnCNN


def test_dncnn_s_matches_the_paper_size():
    network = DnCNN(in_channels=1, num_layers=17, channels=64)
    assert count_parameters(network) == 556_097  # the paper's ~556K (BN shift/scale included)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in network.modules()) == 17
    # 15 x 64*64*9 + 2 x 64*9 MACs per pixel: what FlopCounterMode must count
    assert macs_per_pixel(network) == pytest.approx(15 * 64 * 64 * 9 + 2 * 64 * 9)


@pytest.mark.parametrize("channels", [1, 3])
def test_dncnn_keeps_any_size_and_learns_the_residual(channels):
    network = DnCNN(in_channels=channels, num_layers=4, channels=8).eval()
    noisy = torch.rand(2, channels, 37, 21)
    with torch.no_grad():
        out = network(noisy)
        body = network.body(noisy)
    assert out.shape == noisy.shape
    torch.testing.assert_close(out, noisy - body)


def test_dncnn_rejects_too_few_layers():
    with pytest.raises(ValueError, match="num_layers"):
        DnCNN(num_layers=1)


@pytest.mark.parametrize(("network", "channels", "expected"), [
    (DnCNN(num_layers=17), 1, 35),                         # 17 3x3 convs: 2 * 17 + 1
    (DNResNet(blocks=["res"] * 5), 1, 37),                 # 9x9 + 5x5 + 10 x 3x3 + 5x5: 1 + 8 + 4 + 20 + 4
    (DNResNet(blocks=["ds"] * 5), 1, 37),                  # depthwise-separable blocks keep the 3x3 footprint
    (DUDnCNN(in_channels=3), 3, 33),                       # dilations [1, 1, 2, 4, 4, 2, 1, 1]: 1 + 2 * 16
    (UDnCNN(in_channels=3), 3, 36),                        # 3x3 at scales 1, 1, 2, 4, 4, 2, 1, 1 plus two pools
])
def test_receptive_field_is_measured_for_every_architecture(network, channels, expected):
    assert receptive_field(network, channels) == expected


def test_receptive_field_is_the_architecture_not_the_trained_weights():
    """A ResBlock whose first ReLU is dead (as happens in trained networks) must not shrink the reported field."""
    network = DNResNet(blocks=["res"])
    with torch.no_grad():
        network.body[0].conv1.bias.fill_(-1e3)
    assert receptive_field(network) == 1 + 8 + 4 + 4 + 4
