"""Faster inference with the same function: batch-norm folding, channels_last, compilation, allocator settings.

Nothing here changes a trained network or its checkpoint: :func:`optimize_for_inference` works on a copy. Measured
on this project's 2-core AVX2 CPU by ``make bench`` (``benchmarks/bench.py``; numbers in the README, "Speed"):

* batch norm folded into the preceding convolution (``fold_batch_norm``) removes a memory pass per DnCNN layer and
  is the fair way to compare DnCNN with DN-ResNet, which has no batch norm;
* channels_last makes oneDNN's convolutions about 2x faster than the default NCHW layout;
* ``torch.compile`` (inductor with ``freezing``: weights pre-packed, ReLU and the residual addition fused into the
  convolutions) saves the memory passes of the element-wise operations;
* :func:`retain_freed_memory`: a 512x512 activation with 32 channels is 32 MiB, above glibc's largest ``mmap``
  threshold, so by default every layer output is a fresh ``mmap`` whose pages fault in one by one; keeping freed
  memory in the heap removes that cost, which dominates the cheap depthwise and pointwise layers of DS-DN-ResNet.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` in eval mode in which every ``BatchNorm2d`` that directly follows a ``Conv2d`` inside an
    ``nn.Sequential`` is folded into that convolution (its running statistics and affine parameters become the
    convolution's weight scale and bias) and replaced by ``nn.Identity``. Same outputs in eval mode up to float
    rounding; the original network is not modified. Networks without batch norm come back as an eval-mode copy."""
    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
    return folded


def optimize_for_inference(network: nn.Module, channels_last: bool = True, fold_bn: bool = True,
                           compile: bool = False) -> nn.Module:
    """An inference-only copy of ``network``: batch norm folded, weights in channels_last, optionally compiled.

    Args:
        network: any (N, C, H, W) -> (N, C, H, W) denoiser; it is not modified.
        channels_last: put the weights in channels_last (feed channels_last inputs too for the fast path).
        fold_bn: fold batch norm into the convolutions (:func:`fold_batch_norm`).
        compile: ``torch.compile`` with inductor ``freezing`` (weights become constants, so the result is only
            valid for inference under ``torch.no_grad()``). The first call of each input shape compiles (tens of
            seconds on 2 cores); ``dynamic=False`` so each new shape compiles once, as tiles of one size do.
    """
    optimized = fold_batch_norm(network) if fold_bn else copy.deepcopy(network).eval()
    optimized.requires_grad_(False)
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    if compile:
        optimized = torch.compile(optimized, dynamic=False, options={"freezing": True})
    return optimized


def retain_freed_memory() -> bool:
    """Make glibc serve every allocation from its heap and keep freed memory there for reuse (``M_MMAP_MAX = 0``,
    no trimming), instead of an ``mmap`` per large tensor whose pages fault in on first touch. Process-wide and
    one-way (the memory is reused, never returned to the OS before exit), so meant for inference and benchmark
    processes; the environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` do the same from
    outside. Returns ``False`` (and changes nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
