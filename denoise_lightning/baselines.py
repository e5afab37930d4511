"""Classical baselines behind one denoiser interface: BM3D for Gaussian noise, VST + BM3D for Poisson and
Poisson-Gaussian noise.

A baseline is non-blind: ``baseline.denoise(noisy, level)`` maps one noisy image, an (H, W, C) float64 array on
the [0, 1] scale exactly as :mod:`denoise_lightning.degradations.noise` makes it (not clipped), and its true level
(a test level of ``noise.py``: ``{"sigma": 25}``, ``{"peak": 4}``, ``{"peak": 4, "sigma": 10}``) to an estimate of
the clean image of the same shape. :func:`denoise_cached` runs a baseline over many images in a process pool and
keeps every output on disk, keyed by (baseline version, set, level, image, noisy-image digest), so a rerun costs
nothing.

Poisson noise is stabilised before BM3D (Makitalo & Foi): with counts ``z = peak * y`` (our noisy image is
``y = Poisson(peak * x) / peak``), the generalized Anscombe transform ``f(z) = 2 sqrt(z + 3/8 + sigma_c^2)`` makes
the noise roughly N(0, 1), BM3D denoises ``f(z)`` at unit noise, and the closed-form approximation of the exact
unbiased inverse maps the estimate of ``E[f(z)]`` back to ``peak * x``. The algebraic inverse ``(D/2)^2 - 3/8``
is biased at low counts (it underestimates a mean of 1 count by about 18%, of 4 counts by 6%); the unbiased one
is within 1% there.
"""

from __future__ import annotations

import hashlib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType

import numpy as np
from rich.progress import Progress

from denoise_lightning.degradations.noise import Level
from denoise_lightning.files import atomic_output

BM3D_MISSING = ("the BM3D baselines need the optional bm3d package: pip install 'denoise-lightning[baselines]' "
                "(or `make install`, which installs the baselines extra)")

# Bump when the output of a baseline for the same input changes (VST, scaling, profile handling): old cache
# entries are then ignored instead of reused.
CACHE_VERSION = 1

# E[f(z)] of the Anscombe transform as the Poisson mean goes to 0: f(0) = 2 sqrt(3/8). The closed-form inverse
# is exactly 0 there and is not monotone below it, so smaller estimates map to 0.
ANSCOMBE_AT_ZERO = 2.0 * np.sqrt(3.0 / 8.0)


def import_bm3d() -> ModuleType:
    """The ``bm3d`` package, imported on first use so that networks need nothing beyond the core install."""
    try:
        import bm3d
    except ImportError as error:
        raise ImportError(BM3D_MISSING) from error
    return bm3d


def generalized_anscombe(counts: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Generalized Anscombe transform (Murtagh, Starck & Bijaoui 1995) of ``counts = Poisson(lambda) + N(0, sigma^2)``
    with unit gain and zero offset: ``2 sqrt(max(counts + 3/8 + sigma^2, 0))``; ``sigma = 0`` is the Anscombe
    transform. ``sigma`` is in counts. The result has variance close to 1 (exactly 1 only asymptotically)."""
    return 2.0 * np.sqrt(np.maximum(counts + 3.0 / 8.0 + sigma**2, 0.0))


def inverse_generalized_anscombe(estimate: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of :func:`generalized_anscombe`.

    ``sigma = 0`` (Poisson): Makitalo & Foi, "A closed-form approximation of the exact unbiased inverse of the
    Anscombe variance-stabilizing transformation", IEEE TIP 2011:
    ``1/4 D^2 + 1/4 sqrt(3/2) D^-1 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8``.
    ``sigma > 0`` (Poisson-Gaussian): Makitalo & Foi, "Optimal inversion of the generalized Anscombe
    transformation for Poisson-Gaussian noise", IEEE TIP 2013, its closed-form approximation: the same
    expression minus ``sigma^2``, clipped at 0 (the code of their GenAnscombe_inverse_closed_form).

    Args:
        estimate: ``D``, an estimate of ``E[f(z)]`` (e.g. BM3D's output on the transformed image).
        sigma: the Gaussian standard deviation in counts.

    Returns:
        The estimate of the Poisson mean ``lambda`` (counts), >= 0.
    """
    d = np.maximum(estimate, ANSCOMBE_AT_ZERO)
    root = np.sqrt(1.5)
    poisson = 0.25 * d**2 + 0.25 * root / d - 11.0 / 8.0 / d**2 + 5.0 / 8.0 * root / d**3 - 1.0 / 8.0
    return np.maximum(poisson - sigma**2, 0.0)


class Baseline(ABC):
    """A classical denoiser of one image at its true noise level (non-blind: given the oracle level)."""

    oracle_level = True

    @abstractmethod
    def denoise(self, noisy: np.ndarray, level: Level) -> np.ndarray:
        """(H, W, C) float64 noisy image on the [0, 1] scale and its level -> estimate of the same shape."""

    @abstractmethod
    def method(self, level: Level) -> str:
        """Readable name of what runs at ``level`` (e.g. "Anscombe + BM3D")."""

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """A folder name that changes whenever the output for the same input may change (parameters, versions)."""


# bm3d's profiles by name (its own names). Its 'refilter' profile is left out: in bm3d 4.0.3 / bm4d 4.2.5 it fails
# on any image with a scalar sigma (a shape mismatch inside bm4d's residual refiltering).
BM3D_PROFILES = {"np": "BM3DProfile", "high": "BM3DProfileHigh", "vn": "BM3DProfileVN", "lc": "BM3DProfileLC"}


class BM3D(Baseline):
    """BM3D (Dabov et al. 2007; the ``bm3d`` package of Makinen, Azzari & Foi 2020), chosen by the level's keys:

    * ``{"sigma": s}`` (Gaussian): BM3D at sigma ``s / 255`` on the unclipped noisy image;
    * ``{"peak": p}`` (Poisson): Anscombe transform of the counts ``p * y``, BM3D at unit noise, closed-form unbiased
      inverse, divided by ``p``;
    * ``{"peak": p, "sigma": s}`` (Poisson-Gaussian): the same with the generalized Anscombe transform and its
      inverse, the Gaussian part being ``p * s / 255`` in counts.

    Grey images use ``bm3d.bm3d``, RGB images ``bm3d.bm3d_rgb`` (CBM3D in the opponent colour space).

    Args:
        profile: the bm3d profile: "np" (the package default, used for the reported numbers), "high" (slower),
            "vn" or "lc" (faster, lower complexity).
    """

    def __init__(self, profile: str = "np") -> None:
        if profile not in BM3D_PROFILES:
            raise ValueError(f"model.profile must be one of {sorted(BM3D_PROFILES)}, got {profile!r}")
        self.profile = profile

    @property
    def cache_key(self) -> str:
        return f"bm3d-{self.profile}-bm3d{version('bm3d')}-bm4d{version('bm4d')}-v{CACHE_VERSION}"

    def method(self, level: Level) -> str:
        if "peak" in level:
            transform = "generalized Anscombe" if level.get("sigma") else "Anscombe"
            return f"{transform} + BM3D ({self.profile}) + unbiased inverse"
        return f"BM3D ({self.profile})"

    def denoise(self, noisy: np.ndarray, level: Level) -> np.ndarray:
        if "peak" in level:
            peak = float(level["peak"])
            sigma_counts = peak * float(level.get("sigma", 0.0)) / 255.0
            return self._stabilised(peak * noisy, sigma_counts) / peak
        if "sigma" in level:
            return self._bm3d(noisy, float(level["sigma"]) / 255.0)
        raise ValueError(f"BM3D cannot denoise at level {level}: it knows 'sigma' (Gaussian, 0-255 scale), 'peak' "
                         "(Poisson) and 'peak' with 'sigma' (Poisson-Gaussian)")

    def _stabilised(self, counts: np.ndarray, sigma_counts: float) -> np.ndarray:
        """Poisson(-Gaussian) counts -> estimate of their mean, through the (generalized) Anscombe transform.

        The transformed image is scaled to [0, 1] before BM3D (as in Makitalo & Foi's demo code): BM3D's
        block-matching thresholds are absolute values tuned for images in [0, 1].
        """
        transformed = generalized_anscombe(counts, sigma_counts)
        low, high = float(transformed.min()), float(transformed.max())
        span = max(high - low, 1e-6)
        estimate = self._bm3d((transformed - low) / span, 1.0 / span) * span + low
        return inverse_generalized_anscombe(estimate, sigma_counts)

    def _bm3d(self, image: np.ndarray, sigma: float) -> np.ndarray:
        """BM3D of an (H, W, C) image with white Gaussian noise of std ``sigma``, single-threaded (deterministic;
        :func:`denoise_cached` parallelises over images instead)."""
        bm3d = import_bm3d()
        profile = getattr(bm3d, BM3D_PROFILES[self.profile])()
        profile.num_threads = 1
        if image.shape[2] == 1:
            return bm3d.bm3d(image[:, :, 0], sigma, profile=profile)[:, :, None]
        if image.shape[2] == 3:
            return bm3d.bm3d_rgb(image, sigma, profile=profile)
        raise ValueError(f"BM3D denoises grey or RGB images, got {image.shape[2]} channels")


@dataclass(frozen=True)
class Job:
    """One baseline call: a noisy (H, W, C) image, its level and the cache file of the output."""

    noisy: np.ndarray
    level: Level
    path: Path


def cache_path(root: str | os.PathLike, baseline: Baseline, set_name: str, level_name: str, index: int,
               image_name: str, noisy: np.ndarray) -> Path:
    """Cache file of one output. The digest of the noisy image keeps a stale entry (other image, other noise)
    from ever being reused."""
    digest = hashlib.sha256(np.ascontiguousarray(noisy).tobytes() + str(noisy.shape).encode()).hexdigest()[:16]
    folder = Path(root).expanduser() / baseline.cache_key / set_name / level_name
    return folder / f"{index:04d}_{image_name}_{digest}.npz"


def timed_denoise(baseline: Baseline, noisy: np.ndarray, level: Level) -> tuple[np.ndarray, float]:
    """Output (float32) and wall seconds of one call; a module-level function so a process pool can pickle it."""
    start = time.perf_counter()
    output = baseline.denoise(noisy.astype(np.float64), level)
    return output.astype(np.float32), time.perf_counter() - start


def _write_entry(path: Path, output: np.ndarray, seconds: float) -> None:
    """Write a cache entry through a temporary file and a rename: a crash never leaves half an entry."""
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, output=output, seconds=np.float64(seconds))


def read_entry(path: Path) -> tuple[np.ndarray, float]:
    """(output, seconds the original call took) of a cache entry."""
    with np.load(path) as entry:
        return entry["output"], float(entry["seconds"])


def denoise_cached(baseline: Baseline, jobs: Sequence[Job], workers: int | None = None,
                   description: str = "baseline") -> list[tuple[np.ndarray, float]]:
    """Run ``baseline`` on every job whose output is not cached yet, then return (output, seconds) of every job
    read back from the cache (so a fresh and a cached run give bit-identical results).

    Args:
        workers: processes over images (``None``: all cores). 1 runs in this process.
    """
    missing = [job for job in jobs if not job.path.is_file()]
    workers = min(workers or os.cpu_count() or 1, max(len(missing), 1))
    if missing:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{description}: {len(missing)} images on {workers} process(es)",
                                     total=len(missing))
            if workers == 1:
                for job in missing:
                    _write_entry(job.path, *timed_denoise(baseline, job.noisy, job.level))
                    progress.advance(task)
            else:
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                    futures = {pool.submit(timed_denoise, baseline, job.noisy, job.level): job for job in missing}
                    for future in as_completed(futures):
                        _write_entry(futures[future].path, *future.result())
                        progress.advance(task)
    return [read_entry(job.path) for job in jobs]
