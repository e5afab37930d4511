"""The benchmark runs end to end and writes its files (``--quick``: tiny inputs; no timing is ever asserted), and the
inference speed-ups of ``denoise_lightning.inference.speed`` keep the function of real trained weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

from denoise_lightning.inference.speed import fold_batch_norm, optimize_for_inference
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.zoo.import_dncnn import read_matconvnet_dncnn


def test_quick_benchmark_writes_every_section(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(tmp_path)], cwd=REPO_ROOT,
                   check=True, capture_output=True, text=True)
    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "results.md").read_text()
    for section in ("probe", "bm3d", "inference", "training", "data_pipeline", "targets"):
        assert results[section], section
    assert set(results["inference"]["fp32"]) == set(results["networks"])
    for stats in results["inference"].values():
        assert all(row["seconds"] > 0 and row["peak_mib"] >= 0 for row in stats.values())
        assert stats["DnCNN-S"]["speedup_vs_dncnn_s"] == pytest.approx(1.0)
    assert results["data_pipeline"]["steps_measured"] == 2
    assert 0 <= results["data_pipeline"]["data_wait_fraction"] < 1
    assert "| DN-ResNet-13 | 149,761 |" in markdown and "**Targets**" in markdown


def test_folding_batch_norm_keeps_the_published_dncnn(shared_data, camera_crop):
    """DnCNN-S with separate batch norm, folded, equals the release file with batch norm merged by its authors."""
    weights = shared_data / "weights" / "dncnn"
    with_bn = read_matconvnet_dncnn(weights / "dncnn_s25_bnorm.mat")
    folded = fold_batch_norm(with_bn)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())  # the original is untouched
    merged = read_matconvnet_dncnn(weights / "dncnn_s25.mat")
    with torch.no_grad():
        torch.testing.assert_close(folded(camera_crop), merged(camera_crop), atol=2e-5, rtol=0)
        torch.testing.assert_close(folded(camera_crop), with_bn(camera_crop), atol=2e-5, rtol=0)


@pytest.mark.parametrize("blocks", [["res"] * 2, ["ds"] * 2])
def test_inference_copy_and_in_place_residual_keep_the_function(blocks, camera_crop):
    torch.manual_seed(0)
    network = DNResNet(blocks=blocks).eval()
    reference = network.head(camera_crop)
    for block in network.body:
        reference = reference + block.conv2(block.relu(block.conv1(reference)))
    reference = camera_crop - network.tail(reference)
    fast = optimize_for_inference(network)
    with torch.no_grad():
        torch.testing.assert_close(fast(camera_crop.contiguous(memory_format=torch.channels_last)), reference)
    assert network.head[0].weight.requires_grad  # a copy: the trained network is unchanged


@pytest.fixture
def camera_crop() -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(skimage.data.camera()[200:264, 200:264]).float().div(255)[None, None]


def test_checkpoint_latency_writes_its_table(tmp_path):
    """benchmarks.checkpoints times trained checkpoints (here a DN-ResNet and a grey UDnCNN) on a real image."""
    from denoise_lightning.models.unet_dncnn import UDnCNN
    from denoise_lightning.zoo.import_dncnn import noise_config, save_as_checkpoint

    runs = []
    for name, network, target in [("dn_resnet", DNResNet(blocks=["ds"], channels=8, head_channels=8),
                                   {"_target_": "denoise_lightning.models.dn_resnet.DNResNet", "blocks": ["ds"],
                                    "channels": 8, "head_channels": 8}),
                                  ("udncnn", UDnCNN(channels=8),
                                   {"_target_": "denoise_lightning.models.unet_dncnn.UDnCNN", "channels": 8})]:
        runs.append(save_as_checkpoint(network.eval(), tmp_path / f"{name}.ckpt", noise_config(sigma=25),
                                       network_config=target))
    image = tmp_path / "camera.png"
    import skimage
    from PIL import Image
    Image.fromarray(skimage.data.camera()[:100, :124]).save(image)
    subprocess.run([sys.executable, "-m", "benchmarks.checkpoints", *map(str, runs), "--image", str(image),
                    "--repeats", "2", "--out", str(tmp_path / "out")], cwd=REPO_ROOT, check=True,
                   capture_output=True, text=True)
    rows = json.loads((tmp_path / "out" / "checkpoints.json").read_text())
    assert [r["name"] for r in rows] == ["dn_resnet", "udncnn"]
    assert all(r["ms"] > 0 and r["image"] == "camera.png 124x100" for r in rows)
    from denoise_lightning.models.complexity import count_parameters
    assert rows[0]["params"] == count_parameters(DNResNet(blocks=["ds"], channels=8, head_channels=8))
    assert rows[1]["receptive_field"] == 36
    assert "| udncnn | UDnCNN |" in (tmp_path / "out" / "checkpoints.md").read_text()
