"""Training losses: the edge-aware loss of DN-ResNet (paper section 3); the plain loss is ``torch.nn.MSELoss``.

``L = MSE(x_hat, x) + w * MSE(M * x_hat, M * x)`` with ``M`` an edge map of the *clean* image ``x``, so errors on
edges cost ``1 + w * M^2`` times as much as elsewhere:

* ``edge="sobel"`` (edge-a): ``M`` = Sobel gradient magnitude, the classic unnormalised 3x3 kernels
  (``kornia.filters.sobel(normalized=False)``): 4 on each side of a unit step, 0 on flat regions; paper w = 0.025.
* ``edge="canny"`` (edge-b, *ours*): ``M`` = binary Canny edges (``kornia.filters.canny``, with hysteresis).

Colour images: ``M`` is computed once on the grey image (ITU-R 601 luma) and applied to every channel, so all
channels of an edge pixel are weighted alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.color import rgb_to_grayscale
from kornia.filters import canny, sobel
from torch import nn
from torch.nn import functional as F

EDGE_MAPS = ("sobel", "canny")


class EdgeAwareLoss(nn.Module):
    """``MSE(x_hat, x) + edge_weight * MSE(M * x_hat, M * x)``, called as ``loss(output, clean)`` like ``MSELoss``.

    Computed in fp32 with autocast disabled, also under bf16 mixed precision: the edge maps are convolutions, and
    under bf16 autocast (measured on ``camera``) the Sobel magnitudes move by 0.4% and ~10% of the Canny edge
    pixels change.

    Args:
        edge: ``"sobel"`` (gradient magnitude, edge-a) or ``"canny"`` (binary edges, edge-b).
        edge_weight: ``w`` >= 0; 0 gives plain MSE.
        canny_thresholds: (low, high) hysteresis thresholds of Canny on the gradient magnitude of the blurred
            [0, 1] image (kornia's defaults 0.1, 0.2); only used by ``edge="canny"``.
    """

    def __init__(self, edge: str = "sobel", edge_weight: float = 0.025,
                 canny_thresholds: Sequence[float] = (0.1, 0.2)) -> None:
        super().__init__()
        if edge not in EDGE_MAPS:
            raise ValueError(f"loss.edge must be one of {list(EDGE_MAPS)}, got {edge!r}")
        if not edge_weight >= 0:
            raise ValueError(f"loss.edge_weight must be >= 0, got {edge_weight}")
        thresholds = [float(t) for t in canny_thresholds]
        if len(thresholds) != 2 or not 0 < thresholds[0] <= thresholds[1]:
            raise ValueError(f"loss.canny_thresholds must be [low, high] with 0 < low <= high, got {thresholds}")
        self.edge = edge
        self.edge_weight = float(edge_weight)
        self.canny_thresholds = (thresholds[0], thresholds[1])

    @torch.no_grad()
    def edge_map(self, clean: torch.Tensor) -> torch.Tensor:
        """Edge map ``M`` (N, 1, H, W) of clean images (N, C, H, W) in [0, 1], C = 1 or 3, in fp32."""
        with torch.autocast(clean.device.type, enabled=False):
            grey = clean.float() if clean.shape[1] == 1 else rgb_to_grayscale(clean.float())
            if self.edge == "sobel":
                return sobel(grey, normalized=False, eps=0.0)
            low, high = self.canny_thresholds
            return canny(grey, low_threshold=low, high_threshold=high)[1]

    def forward(self, output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with torch.autocast(output.device.type, enabled=False):
            output, clean = output.float(), clean.float()
            edges = self.edge_map(clean)
            return F.mse_loss(output, clean) + self.edge_weight * F.mse_loss(edges * output, edges * clean)

    def extra_repr(self) -> str:
        return f"edge={self.edge!r}, edge_weight={self.edge_weight:g}"
