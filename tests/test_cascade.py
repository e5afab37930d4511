"""DN-ResNet, DS-ResBlocks and cascade training / DS evolution."""

from __future__ import annotations

import csv
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


# ---------------------------------------------------------------- stages that end on convergence
def _epoch_end(callback: CascadeTraining, epoch: int, step: int, psnr: float) -> str | None:
    """Feed one epoch's end to the callback as the trainer would (validation ran; val/psnr = ``psnr``)."""
    trainer = SimpleNamespace(current_epoch=epoch, global_step=step, should_stop=False, sanity_checking=False,
                              callback_metrics={"val/psnr": torch.tensor(psnr)})
    module = SimpleNamespace(network=DNResNet(channels=4, head_channels=8), log_dict=lambda *a, **k: None)
    callback.on_validation_end(trainer, module)
    callback.on_train_epoch_end(trainer, module)
    callback._validated = False
    return callback.rows[-1]["ended"], trainer.should_stop


def test_a_stage_converges_by_early_stopping_rules_or_reaches_its_cap():
    """min_delta 0.5 dB, patience 2: a gain of exactly min_delta is no improvement (EarlyStopping's rule), two such
    epochs in a row end the stage; a stage that keeps improving ends at its cap; the last stage ending stops the run."""
    callback = CascadeTraining([{"max_epochs": 10, "blocks": []}, {"max_epochs": 2, "blocks": []}],
                               convergence={"monitor": "val/psnr", "min_delta": 0.5, "patience": 2})
    ends = [_epoch_end(callback, epoch, 3 * (epoch + 1), psnr)
            for epoch, psnr in enumerate([20.0, 21.0, 21.5, 21.25])]
    assert ends == [(None, False), (None, False), (None, False), ("converged", False)]
    assert (callback.stage, callback.stage_start_epoch, callback.stage_start_step) == (1, 4, 12)
    assert callback.trigger.wait_count == 0  # a fresh trigger per stage
    assert _epoch_end(callback, 4, 15, 21.0) == (None, False)
    assert _epoch_end(callback, 5, 18, 22.0) == ("cap", True)
    assert [(r["stage"], r["start_epoch"], r["epochs"], r["steps"], r["ended"]) for r in callback.rows] == [
        (0, 0, 4, 12, "converged"), (1, 4, 2, 6, "cap")]


def test_convergence_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"stages\[0\].max_epochs.*convergence"):
        CascadeTraining([{"max_epochs": 3, "blocks": []}])
    with pytest.raises(ValueError, match=r"stages\[1\] needs exactly one of epochs"):
        CascadeTraining([{"epochs": 1, "blocks": []}, {"epochs": 1, "max_epochs": 2, "blocks": ["res"]}],
                        convergence={})
    with pytest.raises(ValueError, match="convergence: unknown keys"):
        CascadeTraining([{"epochs": 1, "blocks": []}], convergence={"monitr": "val/psnr"})
    assert CascadeTraining([{"epochs": 1, "blocks": []}], convergence={"monitor": "train/loss"}
                           ).convergence["mode"] == "min"


CONVERGING = "[{max_epochs:4,blocks:[]},{max_epochs:4,blocks:[res]},{max_epochs:1,blocks:[res,res]}]"
# min_delta 100 dB: the first check of a stage improves on -inf, every later one does not, so with patience 2 each
# converging stage lasts exactly 3 epochs: boundaries after epochs 2 and 5; the last stage reaches its cap of one
# epoch and ends the run (7 epochs, 21 steps, though trainer.max_epochs is 20)
CONVERGENCE = [*CASCADE, f"callbacks.cascade.stages={CONVERGING}", "trainer.max_epochs=20",
               "module.lr_schedule=restart",
               "+callbacks.cascade.convergence={monitor:val/psnr,min_delta:100,patience:2}"]


def test_killed_and_resumed_convergence_cascade_crosses_the_same_stage_boundaries(tmp_path):
    """Killed after epoch 4, in stage 1 with one check without improvement: the checkpoint holds the stage, its start
    and the trigger's wait count and best value, so the resumed run ends stage 1 one epoch later, as the
    uninterrupted one did (a fresh trigger would need three more epochs, a stage derived from the epoch would be 0),
    with the same weights and learning rate."""
    straight = train(compose_config("train", tmp_path / "straight", CONVERGENCE))
    rows = [(r["blocks"], r["start_epoch"], r["epochs"], r["steps"], r["ended"]) for r in straight["stages"]]
    assert rows == [([], 0, 3, 9, "converged"), (["res"], 3, 3, 9, "converged"), (["res", "res"], 6, 1, 3, "cap")]
    assert straight["global_steps"] == 21

    killed = ["+callbacks.kill._target_=conftest.StopAfterEpoch", "+callbacks.kill.epoch=4"]
    train(compose_config("train", tmp_path / "first", [*CONVERGENCE, *killed]))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["callbacks"]["CascadeTraining"]
    assert (state["stage"], state["stage_start_epoch"], state["stage_start_step"]) == (1, 3, 9)
    assert state["trigger"]["wait_count"] == 1 and torch.isfinite(state["trigger"]["best_score"])
    resumed = train(compose_config("train", tmp_path / "resumed", [*CONVERGENCE, f"ckpt_path={last}"]))
    assert resumed["stages"] == straight["stages"]
    a_ckpt = torch.load(straight["checkpoint"], weights_only=True)
    b_ckpt = torch.load(resumed["checkpoint"], weights_only=True)
    assert a_ckpt["global_step"] == b_ckpt["global_step"] == 21
    assert a_ckpt["lr_schedulers"][0]["_last_lr"] == b_ckpt["lr_schedulers"][0]["_last_lr"]
    for name, value in a_ckpt["state_dict"].items():
        torch.testing.assert_close(value, b_ckpt["state_dict"][name], rtol=1e-5, atol=1e-6)


def _learning_rates(output_dir) -> list[float]:
    """The learning rate of every optimizer step, from the CSV log (LearningRateMonitor, one row per step)."""
    with (output_dir / "csv" / "metrics.csv").open() as stream:
        rows = [row for row in csv.DictReader(stream) if row.get("lr-Adam")]
    return [float(row["lr-Adam"]) for row in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.parametrize("schedule", ["fixed", "restart", "global"])
def test_learning_rate_at_stage_boundaries_is_the_configured_choice(schedule, tmp_path):
    """Stages of 1, 2 and 1 epochs of 3 steps: fixed keeps lr; restart decays over each stage and starts again at lr
    at steps 3 and 9; global decays once over the 12 steps."""
    result = train(compose_config("train", tmp_path, [*CASCADE, "trainer.max_epochs=4", "trainer.log_every_n_steps=1",
                                                      f"module.lr_schedule={schedule}"]))
    assert result["global_steps"] == 12
    lr = _learning_rates(tmp_path)
    assert len(lr) == 12
    if schedule == "fixed":
        assert lr == [1e-3] * 12
    elif schedule == "restart":
        assert [lr[i] for i in (0, 3, 9)] == [1e-3] * 3
        assert lr[0] > lr[1] > lr[2] and lr[3] > lr[4] > lr[8] and lr[9] > lr[10] > lr[11]
    else:
        assert lr[0] == 1e-3 and all(a > b for a, b in zip(lr, lr[1:], strict=False))
