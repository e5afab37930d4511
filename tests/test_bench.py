"""The benchmark runs end to end and writes its files (``--quick``: tiny inputs; no timing is ever asserted), and the
inference speed-ups of ``denoise_lightning.speed`` keep the function of real trained weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

from denoise_lightning.import_dncnn import read_matconvnet_dncnn
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.speed import fold_batch_norm, optimize_for_inference


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
