"""Image datasets and the LightningDataModule.

Training draws random ``patch_size`` patches with one of the 8 flips/rotations from images decoded once and kept
in memory as uint8; a :class:`PatchSampler` in the main process decides every patch (image, position, transform)
from a generator seeded by (seed, epoch), so an epoch is reproducible and a resumed run sees the same patches. The
epoch is the trainer's ``current_epoch`` when an epoch's iteration starts (not the epoch Lightning passes to
``set_epoch``, which is one ahead after a resume from a checkpoint written at the end of an epoch).
Noise is added later, on the device, by the LightningModule.

Test sets are named folders evaluated on full images. A source is either a folder of images or ``skimage://train``
/ ``skimage://test``: the fixed split of natural photographs that ship inside scikit-image (the embedded default
data, usable without any download).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from denoise_lightning.degradations.array import image_level
from denoise_lightning.degradations.noise import Degradation

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}

# The embedded default data: natural photographs bundled inside scikit-image (no download), as a fixed split.
# The test images are held out from training. Only the left view of the stereo motorcycle pair is used.
EMBEDDED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
              "immunohistochemistry", "grass", "gravel", "brick", "page", "text"),
    "test": ("camera", "moon", "coins"),
}


def _embedded_image(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()
EMBEDDED_SCHEME = "skimage://"


class DataError(ValueError):
    """A data source that cannot be used; the message names the path and how to fix it."""


LUMA_CONVERSIONS = ("bt601", "ycbcr")


def studio_luma(rgb: np.ndarray) -> np.ndarray:
    """The Y channel of MATLAB's ``rgb2ycbcr`` for uint8 RGB (H, W, 3): ITU-R BT.601 *studio range* 16..235,
    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, rounded -> uint8 (H, W).

    The JPEG-deblocking and super-resolution benchmarks are scored on this Y (full-range luma puts DnCNN-3 on
    LIVE1 at quality 10 0.8 dB below its published figure)."""
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    return np.round(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0).clip(0, 255).astype(np.uint8)


def _to_channels(image: Image.Image, channels: int, source: str, luma: str = "bt601") -> np.ndarray:
    """PIL image -> uint8 array (H, W, channels).

    Grey from colour: ``luma="bt601"`` is full-range ITU-R BT.601 luma (PIL's ``convert("L")``); ``"ycbcr"`` the
    studio-range Y of MATLAB's ``rgb2ycbcr`` (:func:`studio_luma`), the convention of the JPEG and
    super-resolution benchmarks. A grey file stays as it is either way."""
    if luma not in LUMA_CONVERSIONS:
        raise DataError(f"data.luma must be one of {list(LUMA_CONVERSIONS)}, got {luma!r} (for {source})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    if channels == 1 and luma == "ycbcr" and image.mode not in ("L", "LA", "1"):
        array = studio_luma(np.asarray(image.convert("RGB")))[:, :, None]
    elif channels == 1:
        array = np.asarray(image.convert("L"))[:, :, None]
    elif channels == 3:
        array = np.asarray(image.convert("RGB"))
    else:
        raise DataError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels} for {source}")
    return np.array(array, order="C", copy=True)  # writable and owned: safe for torch.from_numpy


def load_image(path: str | os.PathLike, channels: int = 1, luma: str = "bt601") -> np.ndarray:
    """Decode one image file into a uint8 array (H, W, channels); errors name the file."""
    try:
        with Image.open(path) as image:
            return _to_channels(image, channels, str(path), luma)
    except FileNotFoundError as error:
        raise DataError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot decode image {path}: {error}. Remove or replace the file.") from error


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files of a folder. Hidden files are ignored; any other non-image file is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        hint = " Set DNL_DATA_DIR to your data root or run `make data`." if not folder.exists() else ""
        raise DataError(f"image folder does not exist or is not a folder: {folder}.{hint}")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file()]
    if others:
        raise DataError(
            f"non-image entries in image folder {folder}: {', '.join(p.name for p in others[:5])}"
            f"{' ...' if len(others) > 5 else ''}. Move them out (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    if not files:
        raise DataError(f"image folder is empty: {folder}")
    return files


def load_source(source: str, channels: int = 1, luma: str = "bt601") -> tuple[list[str], list[np.ndarray]]:
    """Names and uint8 (H, W, C) arrays of every image of a source (a folder or ``skimage://train|test``)."""
    if source.startswith(EMBEDDED_SCHEME):
        split = source[len(EMBEDDED_SCHEME):]
        if split not in EMBEDDED_SPLITS:
            raise DataError(f"unknown embedded split {source!r}; use one of "
                            f"{[EMBEDDED_SCHEME + s for s in EMBEDDED_SPLITS]}")
        names = list(EMBEDDED_SPLITS[split])
        arrays = [_to_channels(Image.fromarray(_embedded_image(name)), channels, source, luma) for name in names]
        return names, arrays
    paths = list_images(source)
    return [p.stem for p in paths], [load_image(p, channels, luma) for p in paths]


class PatchSampler(Sampler):
    """Yields ``(image, top, left, transform, patch_seed)`` for ``patches_per_image`` random patches of every image.

    The order and positions are a pure function of (seed, epoch). The epoch is read when an iteration starts: from
    ``epoch_source()`` when given (the data module passes the trainer's ``current_epoch``), else the value of
    :meth:`set_epoch`. An iteration yields the epoch's patches from index ``start`` on (0: all of them); a
    :class:`PatchLoader` resuming mid-epoch sets it to skip the patches already trained on. The length stays the
    whole epoch's, as Lightning counts a resumed epoch's batches from the restored batch index.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], patch_size: int, patches_per_image: int, seed: int = 0,
                 epoch_source: Callable[[], int | None] | None = None):
        self.sizes = list(sizes)
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.seed = seed
        self.epoch = 0
        self.epoch_source = epoch_source
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def current_epoch(self) -> int:
        """The epoch an iteration starting now draws."""
        epoch = self.epoch_source() if self.epoch_source is not None else None
        return self.epoch if epoch is None else epoch

    def __len__(self) -> int:
        return len(self.sizes) * self.patches_per_image

    def __iter__(self) -> Iterator[tuple[int, int, int, int, int]]:
        epoch, start = self.current_epoch(), self.start
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        heights, widths = (torch.tensor(v) for v in zip(*self.sizes, strict=True))
        images = torch.arange(len(self.sizes)).repeat_interleave(self.patches_per_image)
        images = images[torch.randperm(len(images), generator=generator)]
        unit = torch.rand(len(images), 2, generator=generator)
        tops = (unit[:, 0] * (heights[images] - self.patch_size + 1)).long()
        lefts = (unit[:, 1] * (widths[images] - self.patch_size + 1)).long()
        transforms = torch.randint(0, 8, (len(images),), generator=generator)
        # drawn last, so the patches above do not depend on it: seeds the level of a degradation applied in the
        # loader workers (JPEG, downscaling), drawn per patch
        patch_seeds = torch.randint(0, 2**62, (len(images),), generator=generator)
        # the whole epoch is drawn, then cut: the patches from ``start`` on are those of an uninterrupted epoch
        yield from itertools.islice(zip(images.tolist(), tops.tolist(), lefts.tolist(), transforms.tolist(),
                                        patch_seeds.tolist(), strict=True), start, None)


class PatchLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch: its state is its position, the epoch and the number of batches
    it has handed out in it; after :meth:`load_state_dict` its next iteration, when of that epoch, starts at the
    following batch (a :class:`PatchSampler` then skips the patches already trained on, so nothing is cropped or
    degraded twice; any other sampler's batches are loaded and dropped).

    This is Lightning's interface for a stateful loader: the fit loop saves the state with every checkpoint (under
    ``loops.fit_loop.combined_loader``) and restores its own batch counters; a loader without it would replay a
    resumed epoch from its first patch. The position counts the batches the training loop took (each is handed
    over as it is trained on), not those the workers prefetched.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = {"epoch": -1, "batches": 0}
        self._resume_at: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._resume_at = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[Any]:
        # a generator: runs at the first batch, when the trainer's epoch (read by the sampler) has been restored
        sampler = self.sampler
        epoch = sampler.current_epoch() if isinstance(sampler, PatchSampler) else getattr(sampler, "epoch", 0)
        resume, self._resume_at = self._resume_at, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self.position = {"epoch": epoch, "batches": skip}
        if isinstance(sampler, PatchSampler):
            sampler.start = skip * self.batch_size
            batches = super().__iter__()
        else:  # e.g. the distributed wrapper Lightning puts around the sampler under DDP
            batches = itertools.islice(super().__iter__(), skip, None)
        for batch in batches:
            self.position["batches"] += 1
            yield batch


def dihedral(patch: np.ndarray, transform: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (H, W, C) array: ``transform // 2`` quarter turns, then a flip if odd."""
    patch = np.rot90(patch, transform // 2, axes=(0, 1))
    return patch[:, ::-1] if transform % 2 else patch


class PatchDataset(Dataset):
    """Patches of in-memory uint8 images, addressed by the tuples of a :class:`PatchSampler`.

    Returns uint8 tensors (C, patch_size, patch_size); the module converts to float and adds noise on the device.
    With a ``degradation`` applied in the loader (``in_loader``: JPEG, downscaling, which run per image on the CPU),
    returns ``(clean uint8, degraded float32)`` instead, the level drawn from the patch's own seed, so the worker
    that computes it does not matter. A ``whole_image`` degradation (JPEG 2000, whose rate control cannot reach a
    compression ratio on a few thousand pixels) degrades the whole training image and the patch is cut from it.
    """

    def __init__(self, images: Sequence[np.ndarray], patch_size: int, degradation: Degradation | None = None):
        small = [i for i, image in enumerate(images) if min(image.shape[:2]) < patch_size]
        if small:
            raise DataError(f"data.patch_size={patch_size} is larger than training image(s) {small}; lower it")
        self.images = list(images)
        self.patch_size = patch_size
        self.degradation = degradation

    def __len__(self) -> int:  # the sampler defines an epoch
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int, int]) -> torch.Tensor:
        image, top, left, transform, patch_seed = key
        window = (slice(top, top + self.patch_size), slice(left, left + self.patch_size))
        patch = np.ascontiguousarray(dihedral(self.images[image][window], transform))
        if self.degradation is None:
            return torch.from_numpy(patch).permute(2, 0, 1)
        level = image_level(self.degradation.sample_levels(1, torch.Generator().manual_seed(patch_seed),
                                                           torch.device("cpu")), 0)
        if self.degradation.whole_image:  # a codec whose rate control needs more pixels than a patch (JPEG 2000)
            degraded = dihedral(self.degradation.degrade_array(self.images[image], level)[window], transform)
        else:
            degraded = self.degradation.degrade_array(patch, level)
        return (torch.from_numpy(patch).permute(2, 0, 1),
                torch.from_numpy(np.ascontiguousarray(degraded)).permute(2, 0, 1))


class ImageSetDataset(Dataset):
    """Full images of one named test set: ``(uint8 tensor (C, H, W), index)``."""

    def __init__(self, name: str, names: Sequence[str], images: Sequence[np.ndarray], max_images: int | None = None):
        self.name = name
        self.names = list(names)[:max_images]
        self.images = list(images)[:max_images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[index]).permute(2, 0, 1), index


class DenoiseDataModule(L.LightningDataModule):
    """Training patches from image folders, validation on one named set, test on every named set.

    Args:
        train: sources of training images (folders or ``skimage://train``).
        test_sets: set name -> source, each evaluated on full images with deterministic noise.
        val_set: name of the test set used for validation (``val/psnr``), capped at ``val_max_images`` images.
        channels: 1 (grey) or 3 (RGB).
        luma: how colour images become grey when ``channels`` is 1: ``"bt601"`` (full-range luma) or ``"ycbcr"``
            (the studio-range Y of MATLAB's ``rgb2ycbcr``, as the JPEG and super-resolution benchmarks use).
        patch_size, patches_per_image, batch_size: training patches per epoch = images x patches_per_image.
        num_workers: DataLoader workers for training patches (crops are cheap: 0 is usually enough).
        seed: seed of the patch sampler.
    """

    def __init__(
        self,
        train: Sequence[str],
        test_sets: Mapping[str, str],
        val_set: str | None = None,
        val_max_images: int | None = None,
        test_max_images: int | None = None,
        channels: int = 1,
        patch_size: int = 50,
        patches_per_image: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        luma: str = "bt601",
    ) -> None:
        super().__init__()
        if isinstance(train, str):
            train = [train]
        if not train:
            raise DataError("data.train must list at least one image folder")
        if not test_sets:
            raise DataError("data.test_sets must name at least one test set (name: folder)")
        if val_set is not None and val_set not in test_sets:
            raise DataError(f"data.val_set={val_set!r} is not one of data.test_sets {list(test_sets)}")
        self.train_sources = [str(s) for s in train]
        self.test_sources = {str(k): str(v) for k, v in test_sets.items()}
        self.val_set = val_set
        self.val_max_images = val_max_images
        self.test_max_images = test_max_images
        self.channels = channels
        if luma not in LUMA_CONVERSIONS:
            raise DataError(f"data.luma must be one of {list(LUMA_CONVERSIONS)}, got {luma!r}")
        self.luma = luma
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._train: PatchDataset | None = None
        self._tests: dict[str, ImageSetDataset] = {}

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_sources)

    def _test_set(self, name: str) -> ImageSetDataset:
        if name not in self._tests:
            names, images = load_source(self.test_sources[name], self.channels, self.luma)
            self._tests[name] = ImageSetDataset(name, names, images, self.test_max_images)
        return self._tests[name]

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self._train is None:
            images = [image for source in self.train_sources
                      for image in load_source(source, self.channels, self.luma)[1]]
            self._train = PatchDataset(images, self.patch_size, self._loader_degradation())

    def _loader_degradation(self) -> Degradation | None:
        """The model's degradation when it runs in the loader workers (codecs, resizing), else None (noise is added
        on the device by the module)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        degradation = getattr(module, "noise", None)
        if isinstance(degradation, Degradation) and degradation.in_loader:
            multiple = math.lcm(*(degradation.size_multiple(level) for level in degradation.training_levels))
            if self.patch_size % multiple:
                raise DataError(f"data.patch_size={self.patch_size} must be a multiple of {multiple} for "
                                f"{type(degradation).__name__} (levels {degradation.training_levels}); "
                                f"e.g. data.patch_size={self.patch_size // multiple * multiple or multiple}")
            return degradation
        return None

    def _trainer_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def train_dataloader(self) -> PatchLoader:
        """Patches of the epoch the trainer is in, from the position a resumed checkpoint recorded. The loader's own
        generator (not the global RNG) seeds its workers, which draw nothing random: every patch is decided by the
        sampler."""
        sampler = PatchSampler([im.shape[:2] for im in self._train.images], self.patch_size,
                               self.patches_per_image, self.seed, epoch_source=self._trainer_epoch)
        loader = PatchLoader(self._train, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                             num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                             generator=torch.Generator().manual_seed(self.seed))
        if self._train_position is not None:
            loader.load_state_dict(self._train_position)
            self._train_position = None
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        full = self._test_set(self.val_set)
        dataset = ImageSetDataset(full.name, full.names, full.images, self.val_max_images)
        return DataLoader(dataset, batch_size=1)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self._test_set(name), batch_size=1) for name in self.test_set_names]

    # ---------------------------------------------------------------- resuming mid-epoch
    _train_position: dict[str, int] | None = None  # restored by load_state_dict for the next train_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (:class:`PatchLoader`), saved with every checkpoint.

        Lightning's fit loop saves it too, but restores it only if the loader is built after the checkpoint is loaded,
        and ``configure_optimizers`` builds it earlier whenever it asks for ``trainer.estimated_stepping_batches`` of
        an epoch-limited run (Lightning issue 20550). A datamodule's state is restored first, either way."""
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        return {"train_loader": loader.state_dict()} if isinstance(loader, PatchLoader) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_loader")
        if position is None:
            return
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        if isinstance(loader, PatchLoader):  # already built: it has not started its iteration yet
            loader.load_state_dict(position)
        else:
            self._train_position = dict(position)
