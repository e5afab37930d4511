"""Inference: tiled denoising of images of any size, the ``dnl-denoise`` and ``dnl-export`` commands.

Needs torch and the networks only: nothing here imports Lightning or Hydra.
"""
