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
    studio_luma,
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
    patch = PatchDataset([image], patch_size=20)[(0, 5, 7, 0, 0)]
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


def test_studio_luma_is_matlab_rgb2ycbcr_y():
    """Black -> 16, white -> 235, and the BT.601 weights; rounded as MATLAB rounds uint8 results."""
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]],
                   dtype=np.uint8)
    expected = [16, 235, round(16 + 65.481), round(16 + 128.553), round(16 + 24.966),
                round(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255)]
    assert studio_luma(rgb)[0].tolist() == expected


def test_ycbcr_luma_reads_colour_as_studio_y_and_keeps_grey_files(shared_data):
    """LIVE1 (colour) becomes studio-range Y (within 16..235, not full-range luma); Classic5 (grey files) is read
    unchanged, as the JPEG and super-resolution benchmarks read them."""
    colour = list_images(shared_data / "test" / "live1")[0]
    y = load_image(colour, 1, luma="ycbcr")[:, :, 0]
    with Image.open(colour) as image:
        rgb = np.asarray(image.convert("RGB"))
        full = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(y, studio_luma(rgb))
    assert 16 <= y.min() and y.max() <= 235 and not np.array_equal(y, full)
    grey = list_images(shared_data / "test" / "classic5")[0]
    with Image.open(grey) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(load_image(grey, 1, luma="ycbcr")[:, :, 0], np.asarray(image))
    with pytest.raises(DataError, match="data.luma"):
        load_image(grey, 1, luma="studio")


def test_patch_loader_resumes_mid_epoch_at_the_next_batch():
    """A loader given the state of one that handed out 2 batches of epoch 0 continues with batch 3 of that epoch,
    then gives whole epochs."""
    from denoise_lightning.training.data import PatchLoader

    images = list(np.random.default_rng(0).integers(0, 256, (3, 60, 70, 1), dtype=np.uint8))

    def loader() -> PatchLoader:
        sampler = PatchSampler([(60, 70)] * 3, patch_size=32, patches_per_image=8, seed=1)
        return PatchLoader(PatchDataset(images, 32), batch_size=4, sampler=sampler, drop_last=True, collate_fn=list)

    whole = list(loader())
    killed = loader()
    batches = iter(killed)
    next(batches), next(batches)
    assert killed.state_dict() == {"epoch": 0, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(killed.state_dict())
    rest = list(resumed)
    assert len(whole) == 6 and len(rest) == 4
    assert all(torch.equal(a, b) for x, y in zip(whole[2:], rest, strict=True) for a, b in zip(x, y, strict=True))
    assert resumed.state_dict() == {"epoch": 0, "batches": 6}
    assert len(list(resumed)) == 6  # the next iteration is a whole epoch
