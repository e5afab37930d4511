"""Shared network pieces: the DnCNN-family initialisation, and the residual blocks of DN-ResNet
(Ren et al., ACCV 2018, Fig. 1b) with their depthwise-separable version.

The blocks keep the spatial size ('same' padding) and the channel count, and have no batch norm and no ReLU after the
addition, so a block whose last convolution is near zero is near the identity: that is what lets cascade training
insert blocks without disturbing what the network has already learned.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def he_init_(network: nn.Module) -> None:
    """He (Kaiming) normal initialisation of every convolution, zero biases; batch norm starts as the identity.
    The initialisation of the DnCNN family (Zhang et al. 2017, and the U-family study)."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResBlock(nn.Module):
    """``x + conv3x3(relu(conv3x3(x)))`` with ``channels`` -> ``channels``."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_add(self.conv2(self.relu(self.conv1(x))), x)


def residual_add(branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``branch + x``, written into ``branch`` (a convolution's fresh output, which autograd does not keep) when the
    dtypes allow: a block output then needs no new allocation (a 512x512 activation with 32 channels is 32 MiB)."""
    return branch.add_(x) if branch.dtype == torch.promote_types(branch.dtype, x.dtype) else branch + x


class SeparableConv(nn.Sequential):
    """A KxK convolution M -> N factorised (MobileNet) into a depthwise KxK (groups = M) and a pointwise 1x1 M -> N:
    M*K*K + M*N MACs per pixel instead of M*K*K*N. ``out_channels`` defaults to ``channels``, K to 3."""

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3) -> None:
        super().__init__(nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                                   bias=False),
                         nn.Conv2d(channels, out_channels or channels, 1))

    @property
    def depthwise(self) -> nn.Conv2d:
        return self[0]

    @property
    def pointwise(self) -> nn.Conv2d:
        return self[1]

    @torch.no_grad()
    def fit_(self, conv: nn.Conv2d) -> None:
        """Set the factors to the best approximation of a dense KxK ``conv`` (ours, ``init=fit``).

        For each input channel m, ``W[:, m]`` (N x K*K) is approximated by the rank-1 product
        ``pointwise[:, m] x depthwise[m]``: its truncated SVD, optimal in the Frobenius norm per input channel.
        """
        weight = conv.weight.double()                                         # (N, M, K, K)
        n_out, n_in, size = weight.shape[:3]
        per_input = weight.permute(1, 0, 2, 3).reshape(n_in, n_out, size * size)  # (M, N, K*K)
        u, s, vh = torch.linalg.svd(per_input, full_matrices=False)
        scale = s[:, 0].sqrt()
        self.depthwise.weight.copy_((vh[:, 0, :] * scale[:, None]).reshape(n_in, 1, size, size))
        self.pointwise.weight.copy_((u[:, :, 0] * scale[:, None]).T.reshape(n_out, n_in, 1, 1))
        self.pointwise.bias.copy_(conv.bias if conv.bias is not None else torch.zeros(n_out))


class DSResBlock(nn.Module):
    """ResBlock with each 3x3 convolution depthwise-separable (DS-DN-ResNet, paper section 3.2)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = SeparableConv(channels)
        self.conv2 = SeparableConv(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_add(self.conv2(self.relu(self.conv1(x))), x)

    @classmethod
    def fitted_to(cls, block: ResBlock) -> DSResBlock:
        """A DS block whose factors approximate ``block``'s dense convolutions."""
        ds = cls(block.conv1.in_channels)
        ds.conv1.fit_(block.conv1)
        ds.conv2.fit_(block.conv2)
        return ds.to(block.conv1.weight.device, block.conv1.weight.dtype)


BLOCKS: dict[str, type[nn.Module]] = {"res": ResBlock, "ds": DSResBlock}
