"""DN-ResNet, DS-ResBlocks and cascade training / DS evolution."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import FAST_RUN, compose_config
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from denoise_lightning import load_model
from denoise_lightning.models.complexity import count_parameters, macs_per_pixel
from denoise_lightning.models.dn_resnet import DNResNet
from denoise_lightning.training.callbacks import CascadeTraining
from denoise_lightning.training.data import load_source
from denoise_lightning.training.module import DenoiseModule
from denoise_lightning.training.train import train


@pytest.fixture(scope="module")
def camera() -> torch.Tensor:
    names, images = load_source("skimage://test")
    image = torch.from_numpy(images[names.index("camera")]).permute(2, 0, 1)[None].float() / 255
    return image[..., 128:256, 128:256] + 0.1 * torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))


def test_dn_resnet_13_and_ds_sizes_match_the_paper():
    dense, separable = DNResNet(blocks=["res"] * 5), DNResNet(blocks=["ds"] * 5)
    assert dense.num_layers == 13
    head_tail_params = (81 * 64 + 64) + (25 * 64 * 32 + 32) + (25 * 32 + 1)
    assert count_parameters(dense) == head_tail_params + 5 * 2 * (9 * 32 * 32 + 32)  # 149,761 (~150K)
    assert count_parameters(separable) == head_tail_params + 5 * 2 * (9 * 32 + 32 * 32 + 32)  # 70,721 (~71K)
    head_tail_macs = 81 * 64 + 25 * 64 * 32 + 25 * 32
    assert macs_per_pixel(dense) == head_tail_macs + 10 * 9 * 32 * 32
    assert macs_per_pixel(separable) == head_tail_macs + 10 * (9 * 32 + 32 * 32)  # depthwise counted


def test_network_is_rebuilt_from_its_spec():
    network = DNResNet(blocks=["res", "ds", "res"])
    assert network.spec == ["res", "ds", "res"]
    rebuilt = DNResNet(blocks=network.spec)
    rebuilt.load_state_dict(network.state_dict())  # same parameter names and shapes
    with pytest.raises(ValueError, match="model.blocks"):
        DNResNet(blocks=["resnet"])


def test_inserted_block_keeps_the_function_on_a_real_image(camera):
    torch.manual_seed(0)
    network = DNResNet(blocks=["res"]).eval()
    with torch.no_grad():
        before = network(camera)
        network.insert_blocks(1, init="normal", std=1e-3)
        after_normal = network(camera)
        network.insert_blocks(1, init="zero")
        after_zero = network(camera)
    assert network.spec == ["res"] * 3 and network.num_layers == 9
    assert (after_normal - before).abs().max() < 1e-3
    assert (after_normal - before).abs().max() > 0  # the paper's init is near, not exactly, the identity
    torch.testing.assert_close(after_zero, after_normal, rtol=0, atol=0)


def test_fit_init_approximates_the_dense_block_better_than_random(camera):
    torch.manual_seed(0)
    network = DNResNet(blocks=["res"]).eval()
    with torch.no_grad():
        for conv in (network.body[0].conv1, network.body[0].conv2):
            conv.weight.normal_(0, 0.05)
        reference = network(camera)
        fitted, random = DNResNet(blocks=["res"]).eval(), DNResNet(blocks=["res"]).eval()
        for copy in (fitted, random):
            copy.load_state_dict(network.state_dict())
        fitted.convert_block(0, init="fit")
        random.convert_block(0, init="random")
        error_fit = (fitted(camera) - reference).pow(2).mean()
        error_random = (random(camera) - reference).pow(2).mean()
    assert fitted.spec == ["ds"]
    assert error_fit < 0.5 * error_random


def test_cascade_refuses_multi_process_training():
    callback = CascadeTraining([{"epochs": 1, "blocks": []}])
    trainer = SimpleNamespace(world_size=2)
    with pytest.raises(MisconfigurationException, match="DDP"):
        callback.setup(trainer, SimpleNamespace(network=DNResNet()), "fit")


def test_cascade_rejects_impossible_transitions():
    callback = CascadeTraining([{"epochs": 1, "blocks": ["res", "res"]}, {"epochs": 1, "blocks": ["res"]}])
    with pytest.raises(MisconfigurationException, match="cannot turn"):
        callback._transform(DNResNet(blocks=["res", "res"]), ["res"])


STAGES = "[{epochs:1,blocks:[]},{epochs:2,blocks:[res]},{epochs:1,blocks:[res,res]}]"
CASCADE = [*FAST_RUN, "~experiment", "model=dn_resnet", "model.head_channels=16", "model.channels=8",
           "+callbacks.cascade._target_=denoise_lightning.training.callbacks.CascadeTraining",
           f"+callbacks.cascade.stages={STAGES}", "data.patches_per_image=4", "trainer.max_steps=-1",
           "data.val_max_images=1", "data.test_max_images=1", "module.lr=1e-3", "module.lr_min=1e-4"]


def test_killed_and_resumed_cascade_equals_an_uninterrupted_one(tmp_path):
    """3 steps per epoch; the first run stops after epoch 1, in the middle of the 2-epoch stage 1."""
    keep_all = "callbacks.best_checkpoint.save_top_k=-1"
    straight = train(compose_config("train", tmp_path / "straight", [*CASCADE, "trainer.max_epochs=4", keep_all]))
    killed = ["+callbacks.kill._target_=conftest.StopAfterEpoch", "+callbacks.kill.epoch=1"]
    train(compose_config("train", tmp_path / "first", [*CASCADE, "trainer.max_epochs=4", *killed]))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert load_model(last).spec == ["res"]
    resumed = train(compose_config("train", tmp_path / "resumed",
                                   [*CASCADE, "trainer.max_epochs=4", f"ckpt_path={last}"]))
    assert [row["blocks"] for row in straight["stages"]] == [[], ["res"], ["res", "res"]]
    assert [r["blocks"] for r in resumed["stages"]] == [r["blocks"] for r in straight["stages"]]
    a_ckpt = torch.load(straight["checkpoint"], weights_only=True)
    b_ckpt = torch.load(resumed["checkpoint"], weights_only=True)
    assert a_ckpt["epoch"] == b_ckpt["epoch"] and a_ckpt["global_step"] == b_ckpt["global_step"] == 12
    assert a_ckpt["network_config"]["blocks"] == b_ckpt["network_config"]["blocks"] == ["res", "res"]
    lr = [c["lr_schedulers"][0]["_last_lr"] for c in (a_ckpt, b_ckpt)]
    assert lr[0] == lr[1]
    for name, value in a_ckpt["state_dict"].items():
        torch.testing.assert_close(value, b_ckpt["state_dict"][name], rtol=1e-5, atol=1e-6)

    # every epoch's checkpoint reloads into the network of its stage
    expected = {0: [], 1: ["res"], 2: ["res"], 3: ["res", "res"]}
    for epoch, spec in expected.items():
        path = tmp_path / "straight" / "checkpoints" / f"best-epoch{epoch:03d}.ckpt"
        assert load_model(path).spec == spec
        assert DenoiseModule.load_from_checkpoint(path, map_location="cpu").network.spec == spec


def test_short_cascade_on_real_images_improves_from_first_to_last_stage(tmp_path):
    results = train(compose_config("train", tmp_path, [
        *FAST_RUN, "~experiment", "model=dn_resnet",
        "+callbacks.cascade._target_=denoise_lightning.training.callbacks.CascadeTraining",
        "+callbacks.cascade.stages=[{epochs:2,blocks:[]},{epochs:2,blocks:[res]},{epochs:2,blocks:[res,res]}]",
        "data.patches_per_image=6", "trainer.max_steps=-1", "trainer.max_epochs=6", "data.val_max_images=1",
        "data.test_max_images=1", "module.lr=2e-3", "module.lr_min=null", "test_ckpt=best"]))
    rows = results["stages"]
    assert [r["conv_layers"] for r in rows] == [3, 5, 7]
    assert rows[-1]["val_psnr"] > rows[0]["val_psnr"]
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    assert results["test"]["embedded"]["sigma25"]["psnr"] > results["test"]["embedded"]["sigma25"]["psnr_noisy"]


def test_head_evolution_is_recorded_and_rebuilt_from_the_checkpoint(tmp_path, camera):
    """DS evolution of the 5x5 head layer: the fit starts near the dense head, and the checkpoint's network config
    records ``separable_head`` so that load_model rebuilds the evolved network."""
    stages = "[{epochs:1,blocks:[ds]},{epochs:1,blocks:[ds],separable_head:true}]"
    result = train(compose_config("train", tmp_path, [
        *FAST_RUN, "~experiment", "model=dn_resnet", "model.head_channels=16", "model.channels=8", "model.blocks=[ds]",
        "+callbacks.cascade._target_=denoise_lightning.training.callbacks.CascadeTraining",
        "+callbacks.cascade.convert_init=fit", f"+callbacks.cascade.stages={stages}", "data.patches_per_image=4",
        "trainer.max_steps=-1", "trainer.max_epochs=2", "data.val_max_images=1", "data.test_max_images=1"]))
    assert [row["separable_head"] for row in result["stages"]] == [False, True]
    network = load_model(result["checkpoint"])
    assert network.separable_head and network.spec == ["ds"]
    assert count_parameters(network) == result["stages"][-1]["params"]

    torch.manual_seed(0)
    dense = DNResNet(blocks=["res"]).eval()
    with torch.no_grad():
        reference = dense(camera)
        fitted, random = DNResNet(blocks=["res"]).eval(), DNResNet(blocks=["res"]).eval()
        for copy in (fitted, random):
            copy.load_state_dict(dense.state_dict())
        fitted.convert_head(init="fit")
        random.convert_head(init="random")
        assert (fitted(camera) - reference).pow(2).mean() < 0.5 * (random(camera) - reference).pow(2).mean()
    with pytest.raises(ValueError, match="already"):
        fitted.convert_head()
    with pytest.raises(ValueError, match="separable_head"):
        CascadeTraining([{"epochs": 1, "blocks": [], "separable_head": True}, {"epochs": 1, "blocks": []}])
