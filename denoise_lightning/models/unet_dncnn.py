"""UDnCNN and DUDnCNN: DnCNN made U-shaped, with max-pooling or with dilated convolutions.

The U-family of the UCSD ECE 285 denoising study. With ``num_layers = 8`` (6 middle layers):

    h0 = ReLU(conv(y))                                         full resolution
    e1 = pool(conv+BN+ReLU(h0))      e2 = pool(conv+BN+ReLU(e1))      encoder, 2x2 max-pool (indices stored)
    h  = conv+BN+ReLU(conv+BN+ReLU(e2))                        1/4 resolution
    h  = conv+BN+ReLU(unpool((h + e2) / sqrt 2))               1/2 resolution, unpooled with e2's indices
    h  = conv+BN+ReLU(unpool((h + e1) / sqrt 2))               full resolution, unpooled with e1's indices
    x_hat = conv((h + h0) / sqrt 2) + y                        global residual

Skips are additions scaled by 1/sqrt(2), so a sum of two unit-variance features keeps unit variance.
:class:`DUDnCNN` is the same graph without pooling: every conv is instead dilated by 2^(poolings - unpoolings
before it), dilations [1, 1, 2, 4, 4, 2, 1, 1] for 8 convs, receptive field 33x33 at full resolution throughout.

``num_layers`` sets the depth: ``(num_layers - 4) // 2`` poolings (2 for 8 layers) and 2 convs at the bottom
(3 when ``num_layers`` is odd). UDnCNN pads its input (reflection) to a multiple of 2^poolings and crops back,
so any image size works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from denoise_lightning.models.blocks import he_init_

SKIP_SCALE = 1.0 / math.sqrt(2.0)


def _conv_block(in_channels: int, out_channels: int, dilation: int, batch_norm: bool) -> nn.Sequential:
    """conv3x3 (dilated, 'same' padding) [+ BN] + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                         bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _UShapedDnCNN(nn.Module):
    """The shared graph; subclasses choose pooling (UDnCNN) or dilation (DUDnCNN)."""

    pooled: bool

    def __init__(self, in_channels: int, num_layers: int, channels: int, batch_norm: bool, residual: bool) -> None:
        super().__init__()
        if num_layers < 4:
            raise ValueError(f"{type(self).__name__} num_layers must be >= 4 (first, 2 bottom, last conv), "
                             f"got {num_layers}")
        self.num_poolings = (num_layers - 4) // 2
        num_bottom = num_layers - 2 - 2 * self.num_poolings
        self.dilations = self.layer_dilations(num_layers) if not self.pooled else [1] * num_layers
        dilation = iter(self.dilations[1:-1])
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.encoder = nn.ModuleList(_conv_block(channels, channels, next(dilation), batch_norm)
                                     for _ in range(self.num_poolings))
        self.bottom = nn.Sequential(*(_conv_block(channels, channels, next(dilation), batch_norm)
                                      for _ in range(num_bottom)))
        self.decoder = nn.ModuleList(_conv_block(channels, channels, next(dilation), batch_norm)
                                     for _ in range(self.num_poolings))
        self.tail = nn.Conv2d(channels, in_channels, 3, padding=1)
        self.residual = residual
        self.reset_parameters()

    @staticmethod
    def layer_dilations(num_layers: int) -> list[int]:
        """Dilation of each conv: 2^(poolings - unpoolings before it) in the pooled graph; [1,1,2,4,4,2,1,1] for 8."""
        poolings = (num_layers - 4) // 2
        bottom = num_layers - 2 - 2 * poolings
        return ([1] + [2 ** i for i in range(poolings)] + [2 ** poolings] * bottom
                + [2 ** (poolings - 1 - i) for i in range(poolings)] + [1])

    @property
    def tile_multiple(self) -> int:
        """Tiles of an image must start at multiples of this for tiled inference to be exact: 2^poolings when
        pooling (the pooling grid must line up), else 1."""
        return 2 ** self.num_poolings if self.pooled else 1

    @property
    def receptive_radius(self) -> int:
        """How far (pixels) an output pixel can see into the input (used by tiled inference as its margin).

        Each 3x3 conv at scale s (dilation s, or s = 2^poolings at that depth of the pooled graph) reaches s pixels,
        and each unpooling to scale 2^k adds up to 2^(k-1) pixels of pooling-cell alignment: DUDnCNN-8 16,
        UDnCNN-8 16 + 1 + 2 = 19, reached by a single-pixel perturbation at some pooling phases (the field of
        the centre pixel measured by ``complexity.receptive_field``, 36x36, is one phase).
        """
        scales = self.layer_dilations(len(self.dilations))
        return sum(scales) + (2 ** self.num_poolings - 1 if self.pooled else 0)

    def reset_parameters(self) -> None:
        he_init_(self)

    def _body(self, noisy: torch.Tensor) -> torch.Tensor:
        h0 = F.relu(self.head(noisy))
        h = h0
        skips: list[tuple[torch.Tensor, torch.Tensor | None, torch.Size]] = []
        for block in self.encoder:
            h = block(h)
            size, indices = h.shape[-2:], None
            if self.pooled:
                h, indices = F.max_pool2d(h, 2, return_indices=True)
            skips.append((h, indices, size))
        h = self.bottom(h)
        for block, (skip, indices, size) in zip(self.decoder, reversed(skips), strict=True):
            h = (h + skip) * SKIP_SCALE
            if self.pooled:
                h = F.max_unpool2d(h, indices, 2, output_size=size)
            h = block(h)
        return self.tail((h + h0) * SKIP_SCALE)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        body = self._body(noisy)
        return noisy + body if self.residual else body


class UDnCNN(_UShapedDnCNN):
    """U-shaped DnCNN with 2x2 max-pooling and max-unpooling at the stored indices.

    Args:
        in_channels: image channels C (1 grey, 3 colour).
        num_layers: total number of convolutions (8 in the U-family study: 2 poolings).
        channels: feature channels.
        batch_norm: batch norm after every conv except the first and last.
        residual: global residual learning (``y + body(y)``); ``False`` predicts the clean image directly.

    Shapes: input and output (N, C, H, W), images in [0, 1]; any H, W (padded to a multiple of 2^poolings by
    reflection, cropped back).
    """

    pooled = True

    def __init__(self, in_channels: int = 1, num_layers: int = 8, channels: int = 64, batch_norm: bool = True,
                 residual: bool = True) -> None:
        super().__init__(in_channels, num_layers, channels, batch_norm, residual)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        multiple = self.tile_multiple
        height, width = noisy.shape[-2:]
        pad_h, pad_w = -height % multiple, -width % multiple
        if not pad_h and not pad_w:
            return super().forward(noisy)
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        padded = F.pad(noisy, (0, pad_w, 0, pad_h), mode=mode)
        return super().forward(padded)[..., :height, :width]


class DUDnCNN(_UShapedDnCNN):
    """Dilated U-shaped DnCNN: UDnCNN without pooling, each conv dilated instead (receptive field 33x33 for 8).

    Args and shapes as :class:`UDnCNN`; any H, W.
    """

    pooled = False

    def __init__(self, in_channels: int = 1, num_layers: int = 8, channels: int = 64, batch_norm: bool = True,
                 residual: bool = True) -> None:
        super().__init__(in_channels, num_layers, channels, batch_norm, residual)
