"""DN-ResNet (Ren, El-Khamy, Lee, ACCV 2018): a 3-layer base grown by inserting ResBlocks before its last layer.

Base (paper Fig. 1): conv9x9 (C -> 64) + ReLU, conv5x5 (64 -> 32) + ReLU, conv5x5 (32 -> C). Blocks go between
the second and the last layer. The architecture is the serialisable ``blocks`` spec, e.g. ``["res"] * 5`` is
DN-ResNet-13 (13 convs, ~150K parameters grey) and ``["ds"] * 5`` DS-DN-ResNet (~71K): ``DNResNet(blocks=spec)``
rebuilds any stage. Growth happens in place through :meth:`insert_blocks` and :meth:`convert_block`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from denoise_lightning.models.blocks import BLOCKS, DSResBlock, ResBlock, SeparableConv


class DNResNet(nn.Module):
    """DN-ResNet denoiser.

    Args:
        in_channels: image channels C.
        blocks: block spec, each ``"res"`` (ResBlock) or ``"ds"`` (DSResBlock), in order before the last layer.
        channels: channels of the blocks (32 in the paper); ``head_channels`` of the first layer (64).
        residual: global residual learning (``y - net(y)``; ours, the paper is silent).
        separable_head: opt-in variant (ours, not in the paper): the second layer, conv5x5 64 -> 32, is
            depthwise-separable too, 64*25 + 64*32 MACs per pixel instead of 64*25*32. That layer is a third of
            DN-ResNet-13's MACs and over half of DS-DN-ResNet's, so DS blocks alone cannot make the network much
            faster (see ``make bench``).
    """

    def __init__(self, in_channels: int = 1, blocks: Sequence[str] = (), channels: int = 32,
                 head_channels: int = 64, residual: bool = True, separable_head: bool = False) -> None:
        super().__init__()
        unknown = sorted(set(blocks) - set(BLOCKS))
        if unknown:
            raise ValueError(f"model.blocks: unknown block kind(s) {unknown}; use {sorted(BLOCKS)}")
        second = (SeparableConv(head_channels, channels, kernel_size=5) if separable_head
                  else nn.Conv2d(head_channels, channels, 5, padding=2))
        self.head = nn.Sequential(nn.Conv2d(in_channels, head_channels, 9, padding=4), nn.ReLU(inplace=True),
                                  second, nn.ReLU(inplace=True))
        self.body = nn.Sequential(*(BLOCKS[kind](channels) for kind in blocks))
        self.tail = nn.Conv2d(channels, in_channels, 5, padding=2)
        self.channels = channels
        self.residual = residual

    @property
    def spec(self) -> list[str]:
        return ["ds" if isinstance(block, DSResBlock) else "res" for block in self.body]

    @property
    def separable_head(self) -> bool:
        """Whether the second layer (conv5x5 64 -> 32) is depthwise-separable (the opt-in variant)."""
        return isinstance(self.head[2], SeparableConv)

    @property
    def num_layers(self) -> int:
        """Conv layers counted as in the paper (a DS conv pair counts as one layer)."""
        return 3 + 2 * len(self.body)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        estimate = self.tail(self.body(self.head(noisy)))
        return noisy - estimate if self.residual else estimate

    @torch.no_grad()
    def insert_blocks(self, count: int = 1, init: str = "normal", std: float = 1e-3) -> list[nn.Module]:
        """Append ``count`` ResBlocks just before the last layer; returns the new blocks.

        ``init="normal"``: weights N(0, std^2), biases 0 (the paper, std = 0.001: the block starts close to the
        identity). ``init="zero"``: the second convolution is zero, so the block is exactly the identity.
        """
        if init not in ("normal", "zero"):
            raise ValueError(f"insert_blocks init must be 'normal' or 'zero', got {init!r}")
        reference = self.tail.weight
        new = []
        for _ in range(count):
            block = ResBlock(self.channels).to(reference.device, reference.dtype)
            for conv in (block.conv1, block.conv2):
                nn.init.normal_(conv.weight, 0.0, std)
                nn.init.zeros_(conv.bias)
            if init == "zero":
                nn.init.zeros_(block.conv2.weight)
            self.body.append(block)
            new.append(block)
        return new

    @torch.no_grad()
    def convert_block(self, index: int, init: str = "random") -> nn.Module:
        """Replace ResBlock ``index`` by a DSResBlock; returns it.

        ``init="random"``: PyTorch's default initialisation (the paper). ``init="fit"`` (ours): the DS convolutions
        start as the best rank-1-per-input-channel approximation of the dense ones (:meth:`SeparableConv.fit_`).
        """
        block = self.body[index]
        if not isinstance(block, ResBlock):
            raise ValueError(f"block {index} is {type(block).__name__}, not a ResBlock")
        if init == "fit":
            ds = DSResBlock.fitted_to(block)
        elif init == "random":
            ds = DSResBlock(self.channels).to(block.conv1.weight.device, block.conv1.weight.dtype)
        else:
            raise ValueError(f"convert_block init must be 'random' or 'fit', got {init!r}")
        self.body[index] = ds
        return ds

    @torch.no_grad()
    def convert_head(self, init: str = "random") -> nn.Module:
        """Replace the second layer (conv5x5 64 -> 32) by a depthwise-separable one (DS evolution of the head,
        ours); returns it. ``init`` as in :meth:`convert_block`."""
        dense = self.head[2]
        if not isinstance(dense, nn.Conv2d):
            raise ValueError("the head is already depthwise-separable")
        separable = SeparableConv(dense.in_channels, dense.out_channels, kernel_size=dense.kernel_size[0])
        separable = separable.to(dense.weight.device, dense.weight.dtype)
        if init == "fit":
            separable.fit_(dense)
        elif init != "random":
            raise ValueError(f"convert_head init must be 'random' or 'fit', got {init!r}")
        self.head[2] = separable
        return separable
