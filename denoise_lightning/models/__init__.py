"""Denoising networks: plain ``torch.nn.Module``s mapping a noisy (N, C, H, W) image to a clean estimate.

No training logic lives here; :class:`denoise_lightning.training.module.DenoiseModule` wraps any of them.
"""

from denoise_lightning.models.dncnn import DnCNN
from denoise_lightning.models.unet_dncnn import DUDnCNN, UDnCNN

__all__ = ["DnCNN", "DUDnCNN", "UDnCNN"]
