"""dnl-denoise and denoise() against inputs that used to go wrong silently or with misleading errors: decompression
bombs, out-of-range / non-finite / empty / wrongly typed images, concurrent runs, killed runs, nested output folders,
animations, and errors that must name the right file and the right fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tifffile
import torch
from PIL import Image

from denoise_lightning import denoise, load_model
from denoise_lightning.files import TEMP_PREFIX, atomic_output, writer_tag
from denoise_lightning.inference import tiling
from denoise_lightning.inference.cli import main
from denoise_lightning.inference.images import ImageFileError, read_image
from denoise_lightning.models.dncnn import DnCNN
from denoise_lightning.zoo.import_dncnn import noise_config, save_as_checkpoint

DNCNN = "denoise_lightning.models.dncnn.DnCNN"


def small_dncnn(channels: int = 8) -> DnCNN:
    torch.manual_seed(0)
    return DnCNN(num_layers=3, channels=channels, batch_norm=False).eval()


@pytest.fixture(scope="module")
def network() -> DnCNN:
    return small_dncnn()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A small untrained DnCNN checkpoint: these tests are about files and errors, not denoising quality."""
    path = tmp_path_factory.mktemp("model") / "small.ckpt"
    config = {"_target_": DNCNN, "num_layers": 3, "channels": 8, "batch_norm": False}
    return str(save_as_checkpoint(small_dncnn(), path, noise_config(sigma=25.0), network_config=config))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.camera()[100:148, 200:264]  # 48 x 64 grey uint8


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code
    return 0


# ---------------------------------------------------------------- 1. decompression bombs, every reader
def png16_bomb(path: Path, side: int) -> None:
    """A 16-bit grey PNG of ``side`` x ``side`` zeros: a few hundred KB on disk, side^2 * 2 bytes decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([16, 0, 0, 0, 0])
    compressor, row = zlib.compressobj(9), bytes(1 + 2 * side)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_16bit_png_bomb_is_refused_from_the_header_at_pillows_default_limit(tmp_path):
    path = tmp_path / "bomb16.png"
    png16_bomb(path, 10_000)  # 100 megapixels > Pillow's 89.5; about 200 KB on disk
    with pytest.raises(ImageFileError, match=r"bomb16\.png: 10000x10000 = 100000000 pixels .*--max-pixels"):
        read_image(path)


@pytest.mark.parametrize("name", ["grey8.png", "grey16.png", "rgb16.tif", "grey8.jpg"])
def test_every_reader_enforces_the_pixel_limit_before_decoding(tmp_path, name):
    pixels = np.zeros((1000, 1200), np.uint16 if "16" in name else np.uint8)
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, np.stack([pixels] * 3, axis=-1), photometric="rgb")
    elif pixels.dtype == np.uint16:
        png16_bomb(path, 1100)  # 1.21 megapixels
    else:
        Image.fromarray(pixels).save(path)
    with pytest.raises(ImageFileError, match=rf"{name}: .* pixels exceeds the limit of 1000000 .*--max-pixels"):
        read_image(path, max_pixels=1_000_000)
    assert read_image(path, max_pixels=2_000_000).pixels.size >= 1_200_000  # a raised limit reads it


def test_cli_pixel_limit_is_an_option(checkpoint, photo, tmp_path, capsys):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    args = [str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--model", checkpoint]
    assert run_cli([*args, "--max-pixels", "1000"]) == 1
    assert "64x48 = 3072 pixels exceeds the limit of 1000" in capsys.readouterr().err
    assert run_cli([*args, "--max-pixels", "0"]) == 0 and (tmp_path / "out" / "photo.png").is_file()


# ---------------------------------------------------------------- 2. values denoise() would get silently wrong
def test_float_image_on_the_0_255_scale_is_an_error_or_an_explicit_range(network, photo):
    image = photo.astype(np.float64)  # 0..255 floats: used to come out 95% white
    with pytest.raises(ValueError, match=r"span \[7, 212\] .*outside the input range 0-1.*input_range='0-255'"):
        denoise(image, network)
    scaled = denoise(image, network, input_range="0-255")
    reference = denoise(image / 255.0, network)
    assert scaled.dtype == np.float64 and scaled.max() > 2
    np.testing.assert_allclose(scaled / 255.0, reference, atol=1e-5)


def test_negative_nan_and_empty_images_are_errors(network, photo):
    image = photo / 255.0
    with pytest.raises(ValueError, match=r"span \[-0.945098, 0.662745\] .*outside the input range 0-1"):
        denoise(image * 2.0 - 1.0, network)
    with_nan = image.copy()
    with_nan[10, 20] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) \(first at row, column \(10, 20\)\)"):
        denoise(with_nan, network)
    for shape in ((0, 16), (16, 0), (0, 0, 3)):
        with pytest.raises(ValueError, match="empty"):
            denoise(np.zeros(shape, np.float32), network)


def test_unclipped_noisy_floats_are_still_accepted(network, photo):
    dark = np.full((256, 256), 0.02)  # the worst case: a black region with DnCNN-B's top noise level, unclipped
    noisy = dark + np.random.default_rng(0).normal(0.0, 55 / 255.0, dark.shape)
    assert noisy.min() < -0.8
    assert denoise(noisy.astype(np.float32), network).shape == dark.shape


def test_wrong_types_are_type_errors(network, photo):
    with pytest.raises(TypeError, match=r"numpy array .*got Tensor.*\.numpy\(\)"):
        denoise(torch.from_numpy(photo / 255.0), network)
    with pytest.raises(TypeError, match=r"numpy array .*got list.*np\.asarray"):
        denoise((photo / 255.0).tolist(), network)
    with pytest.raises(TypeError, match="sigma must be a number, got str"):
        denoise(photo, network, sigma="25")


def test_cli_float_tiff_range_is_checked_and_selectable(checkpoint, photo, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "in.tif", photo.astype(np.float32))  # 0..255 floats
    args = [str(tmp_path / "in.tif"), "-o", str(tmp_path / "out"), "--model", checkpoint]
    assert run_cli(args) == 1 and not (tmp_path / "out" / "in.tif").exists()
    assert "in.tif: float image values span" in capsys.readouterr().err
    assert run_cli([*args, "--input-range", "0-255"]) == 0
    out = read_image(tmp_path / "out" / "in.tif").pixels
    expected = denoise(photo.astype(np.float32) / 255.0, load_model(checkpoint)) * 255.0
    assert out.dtype == np.float32 and out.max() > 2
    np.testing.assert_allclose(out, expected, atol=1e-3)


# ---------------------------------------------------------------- 3. the no-overwrite promise, leftovers, recursion
def test_exclusive_output_never_replaces_a_file_that_appears_meanwhile(tmp_path):
    target = tmp_path / "result.png"
    with pytest.raises(FileExistsError), atomic_output(target, overwrite=False) as tmp:
        tmp.write_bytes(b"second")
        target.write_bytes(b"first")  # another process finished first
    assert target.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]
    with atomic_output(target) as tmp:  # the default still replaces
        tmp.write_bytes(b"replaced")
    assert target.read_bytes() == b"replaced"


def test_cli_keeps_an_output_another_run_wrote_while_it_was_denoising(checkpoint, photo, tmp_path, monkeypatch,
                                                                      capsys):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    destination = tmp_path / "out" / "photo.png"
    run_denoise = tiling.denoise

    def concurrent(*args, **kwargs):
        destination.parent.mkdir(exist_ok=True)
        destination.write_bytes(b"the other run's output")
        return run_denoise(*args, **kwargs)

    monkeypatch.setattr(tiling, "denoise", concurrent)
    assert run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--model", checkpoint]) == 1
    assert destination.read_bytes() == b"the other run's output"
    assert "created by another process" in capsys.readouterr().err
    assert [p.name for p in destination.parent.iterdir()] == ["photo.png"]


def test_temp_files_of_a_killed_run_are_removed_by_the_next_run(checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = writer_tag().split("@", 1)[1]
    killed = out / f"{TEMP_PREFIX}{dead.pid}@{host}.photo.k2j4.tmp.png"  # what kill -9 during a write leaves
    old = out / f"{TEMP_PREFIX}{os.getpid()}@{host}.photo.a8f1.tmp.png"  # pid alive (reused?) but two hours old
    # the same dead pid on another machine sharing the folder: that process may still be writing
    elsewhere = out / f"{TEMP_PREFIX}{dead.pid}@other-{host}.photo.x9q2.tmp.png"
    for leftover in (killed, old, elsewhere):
        leftover.write_bytes(b"half a png")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (out / ".keep").write_text("not ours")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert run_cli([str(tmp_path / "photo.png"), "-o", str(out), "--model", checkpoint]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([".keep", "photo.png", elsewhere.name])
    assert "left by an interrupted run" in capsys.readouterr().err


def test_output_folder_inside_the_input_folder_is_not_denoised_again(checkpoint, photo, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "a.png")
    args = [str(folder), "-o", str(folder / "denoised"), "--model", checkpoint, "--overwrite"]
    assert run_cli(args) == 0 and run_cli(args) == 0
    assert not (folder / "denoised" / "denoised").exists()
    assert capsys.readouterr().out.count("denoised 1 of 1 input(s)") == 2


@pytest.mark.parametrize("name", ["anim.png", "anim.gif.png"])
def test_animated_images_are_refused_not_cut_to_their_first_frame(photo, tmp_path, name):
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    frames[0].save(tmp_path / name, format="GIF" if "gif" in name else "PNG", save_all=True,
                   append_images=frames[1:])
    with pytest.raises(ImageFileError, match=r"animated or multi-frame image \(2 frames"):
        read_image(tmp_path / name)


# ---------------------------------------------------------------- 4. errors that point to the right fix
def test_unwritable_output_names_the_input_and_output_not_the_temp_file(checkpoint, photo, tmp_path, monkeypatch,
                                                                        capsys):
    import tempfile

    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}x1y2{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # as a read-only folder does (tests run as root here)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--model", checkpoint]) == 1
    err = capsys.readouterr().err
    assert f"photo.png: cannot write {tmp_path / 'out' / 'photo.png'}: Permission denied" in err
    assert TEMP_PREFIX not in err


def test_output_option_naming_an_existing_file_is_a_clear_error(checkpoint, photo, tmp_path, capsys):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    (tmp_path / "taken").write_text("a file")
    assert run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "taken"), "--model", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "is an existing file; -o takes a folder" in err and "Errno" not in err


def test_checkpoint_of_another_architecture_names_the_first_mismatch(photo, tmp_path, capsys):
    config = {"_target_": DNCNN, "num_layers": 3, "channels": 16, "batch_norm": False}
    path = save_as_checkpoint(small_dncnn(channels=16), tmp_path / "wide.ckpt", noise_config(sigma=25.0),
                              network_config=config)
    contents = torch.load(path, weights_only=True)
    contents["network_config"] = {**config, "channels": 8}  # a config edited by hand, or weights from another run
    torch.save(contents, path)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the weights do not fit the architecture in its config" in err
    assert "has shape (16, 1, 3, 3) in the checkpoint but (8, 1, 3, 3)" in err
    assert "size mismatch" not in err and len(err.strip().splitlines()) == 1


def test_a_random_file_as_model_is_not_a_checkpoint_and_no_unsafe_advice(photo, tmp_path, capsys):
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert run_cli([str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"), "--model",
                    str(tmp_path / "random.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "random.ckpt is not a PyTorch checkpoint" in err and "weights_only" not in err


@pytest.mark.parametrize("quality, ok", [("500", False), ("0", False), ("100", True)])
def test_jpeg_quality_is_limited_to_1_100(checkpoint, photo, tmp_path, capsys, quality, ok):
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    code = run_cli([str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out"), "--model", checkpoint,
                    "--jpeg-quality", quality])
    assert (code == 0) == ok
    if not ok:
        assert code == 2 and "outside 1..100" in capsys.readouterr().err


def test_reading_leaves_pillows_global_limit_alone_unless_pillow_refuses(tmp_path, monkeypatch):
    """Other threads opening images meanwhile keep Pillow's own protection: an ordinary image is opened with Pillow's
    limit in place; only an image above twice that limit, which the caller allowed, is opened with it lifted."""
    seen = []
    real_open = Image.open

    def recording_open(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "small.png")
    read_image(tmp_path / "small.png")
    assert seen == [Image.MAX_IMAGE_PIXELS] and seen[0] is not None

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # so that a small file is "above twice Pillow's limit"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "large.png")
    seen.clear()
    assert read_image(tmp_path / "large.png", max_pixels=0).pixels.shape == (40, 50)
    assert seen == [900, None] and Image.MAX_IMAGE_PIXELS == 900  # lifted for the second open only, then restored
    with pytest.raises(ImageFileError, match=r"large\.png: 50x40 = 2000 pixels exceeds the limit of 1000"):
        read_image(tmp_path / "large.png", max_pixels=1000)
