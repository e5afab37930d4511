"""Network complexity: parameter count and multiply-accumulates per pixel, and the receptive field."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@torch.no_grad()
def macs_per_pixel(network: nn.Module, channels: int = 1, size: int = 64) -> float:
    """MACs per output pixel of a fully convolutional network, counted by ``FlopCounterMode`` on a (1, C, size, size)
    input (1 MAC = 2 FLOPs). Border effects are nil for 'same'-padded convolutions."""
    parameter = next(network.parameters())
    sample = torch.zeros(1, channels, size, size, device=parameter.device, dtype=parameter.dtype)
    was_training = network.training
    network.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        network(sample)
    network.train(was_training)
    return counter.get_total_flops() / 2 / (size * size)


def receptive_field(network: nn.Module, channels: int = 1, size: int = 129, trials: int = 4) -> int:
    """Side of the square of input pixels that can influence one output pixel, measured by backpropagation.

    The gradient of the centre output pixel with respect to the input is nonzero exactly on the input pixels it
    depends on for that input. The probe is a copy with positive convolution weights (uniform in [0.1, 1], zero
    biases, batch norm reset) fed positive inputs, so no ReLU gates a path off: trained weights would under-report
    (dead units; a trained DN-ResNet-13 measured 33 instead of 37). Max-pooling still selects one pixel per cell,
    so the union over a few random inputs is taken, and the field depends on where the pixel sits in the pooling
    grid: this measures the centre pixel (UDnCNN-8: 36), while other phases reach up to 19 pixels on a side (the
    bound that tiled inference uses, ``UDnCNN.receptive_radius``). Works for any architecture (pooling, dilation,
    skips) without per-model bookkeeping; the result is a property of the architecture, not of the weights.
    """
    probe = copy.deepcopy(network).float().cpu().eval()
    weights = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(0.1 + 0.9 * torch.rand(module.weight.shape, generator=weights))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.reset_parameters()
    generator = torch.Generator().manual_seed(0)
    support = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(trials):
        sample = torch.rand(1, channels, size, size, generator=generator).requires_grad_(True)
        probe(sample)[0, :, size // 2, size // 2].sum().backward()
        support |= sample.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(dim=1).nonzero(), support.any(dim=0).nonzero()
    if rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1:
        return receptive_field(network, channels, 2 * size - 1, trials)  # reached the border: probe a larger input
    return int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1
