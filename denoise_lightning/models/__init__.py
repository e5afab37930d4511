"""Denoising networks: plain ``torch.nn.Module``s mapping a noisy (N, C, H, W) image to a clean estimate.

No training logic lives here; :class:`denoise_lightning.training.module.DenoiseModule` wraps any of them.
"""

from torch import nn

from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.models.dncnn import DnCNN
from denoise_lightning.models.unet_dncnn import DUDnCNN, UDnCNN

# The networks a config or a checkpoint may name by ``_target_`` (checkpoints are rebuilt from this list only,
# see :mod:`denoise_lightning.zoo.checkpoint`): a new network is added here.
NETWORKS: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (DnCNN, DNResNet, DUDnCNN, UDnCNN)}

__all__ = ["NETWORKS", "DNResNet", "DnCNN", "DUDnCNN", "UDnCNN"]
