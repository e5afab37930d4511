"""Network complexity: parameter count and multiply-accumulates per pixel (SPEC section 4)."""

from __future__ import annotations

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
