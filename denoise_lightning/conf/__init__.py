"""Hydra configs, a package so that Hydra finds them as ``pkg://denoise_lightning.conf`` in an installed wheel."""
