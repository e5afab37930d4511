import numpy as np
import pytest
import torch
from PIL import Image

from denoise_lightning.training.data import (
    EMBEDDED_SPLITS,
    DataError,
    DenoiseDataModule,
    PatchDataset,
    PatchSampler,
    dihedral,
    list_images,
    load_image,
    load_source,
)


def test_embedded_split_is_fixed_and_disjoint():
    assert not set(EMBEDDED_SPLITS["train"]) & set(EMBEDDED_SPLITS["test"])
    names, images = load_source("skimage://test")
    assert names == list(EMBEDDED_SPLITS["test"])
    assert all(image.dtype == np.uint8 and image.shape[2] == 1 for image in images)


def test_grey_conversion_is_bt601_luma(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    grey = load_image(tmp_path / "x.png", channels=1)[:, :, 0].astype(int)
    expected = (rgb @ np.array([0.299, 0.587, 0.114])).round()
    assert np.abs(grey - expected).max() <= 1


def test_patch_sampler_is_a_pure_function_of_seed_and_epoch():
    sizes = [(180, 180), (100, 60)]
    sampler = PatchSampler(sizes, patch_size=50, patches_per_image=64, seed=3)
    first = list(sampler)
    assert list(sampler) == first and len(first) == 128
    sampler.set_epoch(1)
    assert list(sampler) != first
    for image, top, left, transform, _ in first:
        height, width = sizes[image]
        assert 0 <= top <= height - 50 and 0 <= left <= width - 50 and 0 <= transform < 8
    assert {key[3] for key in first} == set(range(8))


def test_dihedral_gives_the_8_distinct_flips_and_rotations():
    patch = np.arange(12).reshape(3, 4, 1)
    variants = {dihedral(patch, t).tobytes() + bytes(dihedral(patch, t).shape) for t in range(8)}
    assert len(variants) == 8


def test_patches_come_from_the_image():
    image = np.random.default_rng(0).integers(0, 256, (60, 70, 1), dtype=np.uint8)
    patch = PatchDataset([image], patch_size=20)[(0, 5, 7, 0)]
    assert patch.dtype == torch.uint8 and patch.shape == (1, 20, 20)
    assert np.array_equal(patch[0].numpy(), image[5:25, 7:27, 0])


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        list_images(tmp_path / "nope")


def test_empty_folder_names_the_path(tmp_path):
    with pytest.raises(DataError, match="empty"):
        list_images(tmp_path)


def test_non_image_file_names_the_file(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        list_images(tmp_path)


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    module = DenoiseDataModule(train=[str(tmp_path)], test_sets={"t": str(tmp_path)})
    with pytest.raises(DataError, match="broken.png"):
        module.setup("fit")


def test_val_set_must_be_a_test_set():
    with pytest.raises(DataError, match="val_set"):
        DenoiseDataModule(train=["skimage://train"], test_sets={"a": "skimage://test"}, val_set="b")


def test_real_benchmark_folders_load(shared_data):
    module = DenoiseDataModule(train=[str(shared_data / "train" / "train400")],
                               test_sets={"bsd68": str(shared_data / "test" / "bsd68")}, patches_per_image=2,
                               batch_size=8)
    module.setup("fit")
    assert len(module._train.images) == 400
    batch = next(iter(module.train_dataloader()))
    assert batch.shape == (8, 1, 50, 50) and batch.dtype == torch.uint8
    images, index = module.test_dataloader()[0].dataset[0]
    assert images.shape[0] == 1 and min(images.shape[1:]) == 321
