import torch

from denoise_lightning import hardware


def test_precision_default_follows_native_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert hardware.default_precision() == "bf16-mixed"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert hardware.default_precision() == "32-true"


def test_precision_resolver_is_used_by_the_trainer_config(tmp_path):
    from conftest import compose_config
    from omegaconf import OmegaConf

    cfg = compose_config("train", tmp_path)
    assert OmegaConf.to_container(cfg.trainer, resolve=True)["precision"] == hardware.default_precision()
    cfg = compose_config("train", tmp_path, ["trainer.precision=bf16-mixed"])
    assert cfg.trainer.precision == "bf16-mixed"
