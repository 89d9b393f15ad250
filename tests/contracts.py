"""Contract tests in smp's style: every semantic model and every instance method passes the same class of tests.

A new model or method gets its tests by subclassing (see tests/test_contracts.py):

    class TestMyModel(SemanticModelContract):
        block = {"name": "my_model", "width": 8}

    class TestMyMethod(InstanceMethodContract):
        method = "my_method"
        opts = ["my_method.some_key=3"]

Each goes through the library as a run does: config -> Run -> task datasets -> collate -> the trainer's own step
-> predictions, checking the documented keys, shapes and dtypes.
"""

from __future__ import annotations

import math

import pytest
import torch

from seg_ext.config import instance_defaults, load_config, merge_config
from seg_ext.methods import InstanceMethod
from seg_ext.tasks.instance import InstanceTask
from seg_ext.tasks.run import Run
from seg_ext.tasks.semantic import SemanticTask

COMMON = ["data.num_workers=0", "data.batch_size=2", "train.amp=off"]


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def _capabilities(model: torch.nn.Module) -> None:
    """The capability flags are declared on the class (with defaults), not attached to an instance."""
    for flag in ("fitted_by_counting", "bf16_safe"):
        assert isinstance(getattr(type(model), flag), bool), f"{type(model).__name__} does not declare {flag}"
        assert flag not in vars(model), f"{flag} attached to the instance"


class SemanticModelContract:
    """What every semantic model must do. Subclasses set ``block`` (the config's ``model`` block)."""

    block: dict = {}
    image_size = (64, 64)

    @pytest.fixture
    def setup(self, scenes_root, tmp_path):
        h, w = self.image_size
        cfg = load_config(overrides=COMMON + [f"data.image_size=[{h},{w}]"])
        cfg = merge_config(cfg, {"data": {"root": str(scenes_root)}, "model": self.block}, "contract test")
        run = Run.start(cfg, tmp_path)
        task = SemanticTask()
        task.build_datasets(run)
        model = run.place(task.build_model(run))
        run.loaders = {"val": run.loader(run.datasets["val"])}
        task.prepare(run)
        return run, task, model

    def test_declares_its_capabilities(self, setup):
        _capabilities(setup[2])

    def test_dataset_collate_and_a_training_step(self, setup):
        run, task, model = setup
        trainer = task.build_trainer(run, model, meta={})
        batch = next(iter(trainer.train_loader))
        n = len(batch["image"])
        assert batch["image"].dtype == torch.float32 and tuple(batch["image"].shape) == (n, 3, *self.image_size)
        assert batch["mask"].dtype == torch.int64 and tuple(batch["mask"].shape) == (n, *self.image_size)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        value, parts = trainer.run_step(batch)
        if type(model).fitted_by_counting:
            assert value is None  # a counting step has no loss
        else:
            assert value is not None and math.isfinite(value)
        assert all(isinstance(v, float) for v in parts.values())
        assert _changed(before, model), "the step changed nothing"

    def test_predictions_and_evaluation(self, setup):
        run, task, model = setup
        batch = next(iter(run.loaders["val"]))
        model.eval()
        with torch.no_grad():
            logits = model(batch["image"].to(run.device))
        classes = run.datasets["train"].num_classes
        assert logits.is_floating_point() and tuple(logits.shape) == (len(batch["image"]), classes, *self.image_size)
        metrics = task.evaluate(run, model, "val")
        for key in ("mIoU", "mAP", "loss", *(f"IoU/{c}" for c in run.datasets["train"].class_names)):
            assert key in metrics
        assert 0 <= metrics["mAP"] <= 100

    def test_state_dict_round_trip(self, setup):
        run, task, model = setup
        twin = run.place(task.build_model(run))
        twin.load_state_dict(model.state_dict())
        x = next(iter(run.loaders["val"]))["image"]
        model.eval(), twin.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)


class InstanceMethodContract:
    """What every instance method must do. Subclasses set ``method`` and small-model ``opts``."""

    method = ""
    opts: list[str] = []

    @pytest.fixture
    def setup(self, pennfudan_root, tmp_path):
        overrides = COMMON + ["data.val=2", "data.test=2", *self.opts]
        cfg = load_config(overrides=overrides, defaults=instance_defaults(self.method))
        cfg = merge_config(cfg, {"data": {"root": str(pennfudan_root)}}, "contract test")
        run = Run.start(cfg, tmp_path)
        task = InstanceTask()
        task.build_datasets(run)
        model = run.place(task.build_model(run))
        run.loaders = {"val": run.loader(run.datasets["val"], collate_fn=task.collate)}
        return run, task, model

    def test_declares_the_protocol(self, setup):
        method = setup[1].method
        assert isinstance(method, InstanceMethod) and method.name == self.method
        assert method.models and all(callable(b) for b in method.models.values())

    def test_dataset_collate_and_a_finite_training_step(self, setup):
        run, task, model = setup
        trainer = task.build_trainer(run, model, meta={})
        batch = next(iter(trainer.train_loader))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        value, parts = trainer.run_step(batch)
        assert value is not None and math.isfinite(value)
        assert parts and all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
        assert _changed(before, model)

    def test_predictions_have_the_documented_keys_and_dtypes(self, setup):
        run, task, model = setup
        images, targets = next(iter(run.loaders["val"]))
        sizes = [t["orig_size"] for t in targets]
        model.eval()
        with torch.no_grad():
            outputs = task.method.predict(model, images, sizes)
        assert len(outputs) == len(targets)
        for out, size in zip(outputs, sizes):
            n = len(out["scores"])
            assert out["boxes"].dtype == torch.float32 and tuple(out["boxes"].shape) == (n, 4)
            assert out["labels"].dtype == torch.int64 and tuple(out["labels"].shape) == (n,)
            assert out["scores"].dtype == torch.float32
            masks = out["masks"]
            assert masks.shape[0] == n and tuple(masks.shape[-2:]) == tuple(size) and masks.dim() in (3, 4)
        metrics = task.evaluate(run, model, "val")
        assert "segm/AP" in metrics and "bbox/AP" in metrics

    def test_prepare_gives_what_the_evaluation_dataset_gives(self, setup):
        """Prediction on a file prepares the image as evaluation does (the one-path property's first half)."""
        run, task, _ = setup
        dataset = run.datasets["val"]
        image, _ = dataset[0]
        raw, _ = dataset.raw(0)
        torch.testing.assert_close(task.method.prepare(raw), image, rtol=0, atol=0)
