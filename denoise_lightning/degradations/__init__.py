"""Degradations: what turns a clean image into the network's input, one small class each, one interface.

* ``noise``: the base class :class:`~denoise_lightning.degradations.noise.Degradation` and the noise models
  (Gaussian, Poisson, Poisson-Gaussian), applied to batches on the device;
* ``array``: the base of the degradations applied per ``uint8`` image in the data loader workers;
* ``compression``: JPEG, JPEG 2000 and HEIF (HEVC intra, the stand-in for BPG) encode-decode;
* ``resize``: bicubic down- and up-scaling as MATLAB's ``imresize`` (super-resolution input).
"""
