"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser", IEEE TIP 2017).

conv3x3 + ReLU, (num_layers - 2) x [conv3x3 + BN + ReLU], conv3x3, with global residual learning:
the body predicts the noise and the network returns ``noisy - body(noisy)`` (paper Eq. 1).
DnCNN-S is ``num_layers=17`` (about 556K parameters, grey), DnCNN-B/3 ``num_layers=20``.
"""

from __future__ import annotations

import torch
from torch import nn

from denoise_lightning.models.blocks import he_init_


class DnCNN(nn.Module):
    """DnCNN denoiser.

    Args:
        in_channels: image channels C (1 grey, 3 colour).
        num_layers: total number of convolutions D (17 for DnCNN-S).
        channels: feature channels of the hidden layers.
        batch_norm: batch norm after every middle convolution, as in the paper.
        residual: global residual learning (``y - body(y)``); ``False`` predicts the clean image directly.

    Shapes: input and output (N, C, H, W), images in [0, 1]; any H, W.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_layers: int = 17,
        channels: int = 64,
        batch_norm: bool = True,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"DnCNN num_layers must be >= 2 (first and last conv), got {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(num_layers - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(channels, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.residual = residual
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_init_(self)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return noisy - self.body(noisy)
        return self.body(noisy)
