"""The engine: schedules, atomic checkpoints, resume that continues exactly, the stop on a non-finite loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from seg_ext.config import merge_config
from seg_ext.methods import method_config
from seg_ext.engine import (
    Precision, Trainer, atomic_save, build_optimizer, load_checkpoint, lr_factor_fn, make_loader, native_bf16_cpu,
    resolve_precision,
)
from seg_ext.errors import ConfigError, TrainingStopped


def _schedule(cfg, iters_per_epoch):
    """The schedule a train block asks for (lr_factor_fn takes plain values)."""
    return lr_factor_fn(cfg["scheduler"], cfg["epochs"], iters_per_epoch, cfg["step_size"], cfg["gamma"],
                        cfg["warmup_iters"], cfg["warmup_factor"])


def test_schedules():
    cfg = method_config("semantic")["train"]
    cos = _schedule({**cfg, "scheduler": "cosine", "epochs": 4}, iters_per_epoch=5)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.5) and cos(20) == pytest.approx(0.0, abs=1e-12)
    step = _schedule({**cfg, "scheduler": "step", "step_size": 2, "gamma": 0.1, "epochs": 6}, iters_per_epoch=5)
    assert [step(i) for i in (0, 9, 10, 19, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    warm = _schedule({**cfg, "scheduler": "none", "warmup_iters": 10, "warmup_factor": 0.0}, iters_per_epoch=5)
    assert [warm(i) for i in (0, 5, 10, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ConfigError, match="train.scheduler"):  # checked when the config is loaded
        method_config("semantic", overrides=["train.scheduler=linear"])


def test_atomic_save_never_leaves_half_a_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises(Exception):
        atomic_save({"bad": lambda: 0}, path)  # cannot be pickled: fails midway
    assert torch.load(path)["a"].sum() == 2  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def _toy(tmp_path, epochs, nan_at_epoch=None, interrupt_at_epoch=None, best_metric="loss"):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 3), torch.randn(24, 1))
    model = torch.nn.Linear(3, 1)
    cfg = {**method_config("semantic")["train"], "epochs": epochs, "lr": 0.05}
    loader = make_loader(data, batch_size=4, shuffle=True, num_workers=0, seed=1)
    optimizer = build_optimizer(model.parameters(), cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["momentum"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, len(loader)))
    epoch_seen = {"n": 0}

    def loss_step(model, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(model(x), y)
        if nan_at_epoch is not None and trainer.state.epoch + 1 == nan_at_epoch:
            loss = loss * math.nan
        if interrupt_at_epoch is not None and trainer.state.epoch + 1 == interrupt_at_epoch:
            raise KeyboardInterrupt  # the run dies in the middle of this epoch
        return loss, {"mse": float(loss.detach())}

    def validate(model):
        epoch_seen["n"] += 1
        with torch.no_grad():
            x, y = data.tensors
            return {"loss": float(torch.nn.functional.mse_loss(model(x), y)), "score": -float(epoch_seen["n"])}

    trainer = Trainer(model, optimizer, scheduler, loader, loss_step, validate, tmp_path, epochs=epochs,
                      best_metric=best_metric, precision=Precision(torch.device("cpu")))
    return trainer


def test_resume_continues_exactly(tmp_path):
    straight = _toy(tmp_path / "a", epochs=3)
    straight.fit()
    first = _toy(tmp_path / "b", epochs=3, interrupt_at_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["epoch"] == 1
    resumed = _toy(tmp_path / "b", epochs=3)
    resumed.resume(tmp_path / "b" / "last.pt")
    resumed.fit()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert [h["epoch"] for h in resumed.progress()["history"]] == [1, 2, 3]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["epoch"] == 3
    assert (tmp_path / "b" / "best.pt").is_file()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _toy(tmp_path, epochs=4, nan_at_epoch=3)
    with pytest.raises(TrainingStopped, match=r"loss became nan at epoch 3.*last good checkpoint is .*last\.pt \(epoch 2\)"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 2


def test_best_metric_must_be_reported(tmp_path):
    trainer = _toy(tmp_path, epochs=1, best_metric="mIoU")
    with pytest.raises(ConfigError, match=r"train\.best_metric' is 'mIoU'.*expected one of: loss, score"):
        trainer.fit()


# ---- precision: autocast dtype and memory format ------------------------------------------------------------


def _resolve(train, device, model=None):
    return resolve_precision(train["amp"], train["channels_last"], device, model)


def _precision(**train):
    """The precision of the default config with ``train`` settings (checked when the config is loaded)."""
    return _resolve(merge_config(method_config("semantic"), {"train": train}, source="test")["train"], torch.device("cpu"))


def test_precision_settings_resolve_on_the_cpu():
    auto = _precision()
    # the CPU default: channels_last, with bf16 autocast where the CPU computes bf16 natively
    assert auto.channels_last and auto.amp_dtype == (torch.bfloat16 if native_bf16_cpu() else None)
    assert _precision(amp=True) == auto  # true is auto
    assert _precision(amp="bf16").amp_dtype == torch.bfloat16 and _precision(amp="fp16").needs_scaler
    assert not _precision(channels_last=False).channels_last and not _precision(channels_last="false").channels_last
    assert _precision(amp="off", channels_last=False).describe() == "fp32"
    assert _precision(amp="bf16").describe() == "bf16 autocast, channels_last"
    cfg = method_config("semantic", overrides=["train.amp=false", "train.channels_last=true"])["train"]
    assert _resolve(cfg, torch.device("cpu")) == Precision(torch.device("cpu"), None, True)
    with pytest.raises(ConfigError, match=r"config key 'train\.amp' is 'half'; expected one of: auto, off, fp16, bf16"):
        _precision(amp="half")
    with pytest.raises(ConfigError, match=r"config key 'train\.channels_last' is 'yes'; expected one of: auto, true"):
        _precision(channels_last="yes")


def _unet_and_batch():
    from seg_ext.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "unet", "base_width": 8, "depth": 2}, num_classes=3)
    x = torch.rand(2, 3, 32, 32)
    target = (x[:, 0] * 3).long().clamp(max=2)
    return model, x, target


def _steps(model, precision, x, target, steps: int = 3):
    from seg_ext.losses import weighted_cross_entropy

    model = precision.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        with precision.autocast():
            loss = weighted_cross_entropy(model(x).float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


def test_channels_last_trains_like_the_contiguous_layout():
    model, x, target = _unet_and_batch()
    twin = copy.deepcopy(model)
    plain, plain_losses = _steps(model, Precision(torch.device("cpu")), x, target)
    fast, fast_losses = _steps(twin, Precision(torch.device("cpu"), channels_last=True), x, target)
    assert next(p for p in fast.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    assert fast(x).is_contiguous(memory_format=torch.channels_last)  # the layout passes on to the outputs
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-4, atol=1e-6)
    for p, q in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    # a checkpoint of the channels_last model loads into a plain one and computes the same
    reloaded = _unet_and_batch()[0]
    reloaded.load_state_dict(fast.state_dict())
    torch.testing.assert_close(reloaded(x), plain(x), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_steps_track_fp32():
    model, x, target = _unet_and_batch()
    twin = copy.deepcopy(model)
    _, fp32 = _steps(model, Precision(torch.device("cpu")), x, target)
    _, bf16 = _steps(twin, Precision(torch.device("cpu"), torch.bfloat16), x, target)
    assert all(math.isfinite(v) for v in bf16)
    torch.testing.assert_close(bf16, fp32, rtol=0.02, atol=0.0)


def test_auto_keeps_models_marked_unsafe_in_bf16_in_fp32(monkeypatch):
    from seg_ext.engine import precision as engine
    from seg_ext.models import build_model
    from seg_ext.models.dual_unet import DualHeadUNet

    train = method_config("semantic")["train"]
    cpu = torch.device("cpu")
    unet = build_model({"name": "unet", "base_width": 8, "depth": 2}, num_classes=3)
    resnet_unet = build_model({"name": "smp_unet"}, num_classes=3, image_size=(64, 64))
    resnet_dual = DualHeadUNet(num_levels=4, encoder="resnet18", image_size=(64, 64))
    monkeypatch.setattr(engine, "native_bf16_cpu", lambda: True)
    assert _resolve(train, cpu, unet).amp_dtype == torch.bfloat16
    assert _resolve(train, cpu, resnet_unet).amp_dtype is None
    assert _resolve(train, cpu, resnet_dual).amp_dtype is None  # holds the same encoder
    assert _resolve({**train, "amp": "bf16"}, cpu, resnet_unet).amp_dtype == torch.bfloat16  # asked for
    monkeypatch.setattr(engine, "native_bf16_cpu", lambda: False)
    assert _resolve(train, cpu, unet) == Precision(cpu, None, True)


def test_a_second_ctrl_c_stops_at_once_and_the_handlers_come_back():
    """Real signals to this process: the first SIGINT asks the trainer to stop after its iteration, the second
    raises KeyboardInterrupt at once (the tools turn it into exit 130); leaving restores the earlier handlers."""
    import os
    import signal
    import time

    from seg_ext.engine.signals import StopOnSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopOnSignal()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # delivered at the next bytecode
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert {s: signal.getsignal(s) for s in before} == before

