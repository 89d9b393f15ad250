"""Contract tests in smp's style: every semantic model, every method, every dataset format and every evaluator
passes the same class of tests. A new one gets its tests by subclassing (see tests/test_contracts.py):

    class TestMyModel(SemanticModelContract):
        block = {"name": "my_model", "width": 8}

    class TestMyMethod(InstanceMethodContract):
        method = "my_method"
        opts = ["my_method.some_key=3"]

    class TestMyFormat(FormatContract):
        format = "my_format"          # plus a `root` fixture writing a tiny dataset in the layout

    class TestMyMetric(EvaluatorContract):
        evaluator = "my_metric"       # plus `perfect_batches` giving outputs that score the best value

Methods go through the library as a run does: config -> the one build path (``build_run``) -> the method's
trainer and its own step -> predictions -> evaluation, checking the documented keys, shapes and dtypes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_ext.data.base import Format
from seg_ext.data.formats import FORMATS, find_format
from seg_ext.evaluation import EVALUATORS, Evaluator
from seg_ext.methods import METHODS, Method, merge_checked, method_config
from seg_ext.tasks.run import build_run

COMMON = ["data.num_workers=0", "data.batch_size=2", "train.amp=off"]


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def _capabilities(model: torch.nn.Module) -> None:
    """The capability flags are declared on the class (with defaults), not attached to an instance."""
    for flag in ("fitted_by_counting", "bf16_safe"):
        value = getattr(type(model), flag, None)
        if value is not None or flag in vars(model):  # torchvision's models declare none
            assert isinstance(value, bool), f"{type(model).__name__} does not declare {flag}"
            assert flag not in vars(model), f"{flag} attached to the instance"


class MethodContract:
    """What every method must do (its family's subclass adds the family's checks). Subclasses set ``method``,
    ``opts`` and the ``data_root`` fixture."""

    method = ""
    opts: list[str] = []

    @pytest.fixture
    def data_root(self):
        return None

    @pytest.fixture
    def run(self, data_root, tmp_path):
        cfg = method_config(self.method, overrides=COMMON + list(self.opts))
        cfg = merge_checked(cfg, {"data": {"root": str(data_root) if data_root else None}}, "contract test")
        return build_run(cfg, tmp_path)

    def test_declares_the_protocol(self, run):
        method = run.method
        assert METHODS[self.method] is type(method) and isinstance(method, Method)
        assert method.task in ("semantic", "instance") and method.title
        assert method.models and all(callable(b) for b in method.models.values())
        defaults = type(method).defaults()
        assert defaults["method"] == self.method and defaults["model"]["name"] in method.models
        assert method.onnx_outputs and method.prediction_folders
        for key in method.network_keys:
            block, _, name = key.partition(".")
            assert name in defaults[block], f"network key {key} is not in the defaults"
        _capabilities(run.model)

    def test_dataset_collate_and_a_training_step(self, run):
        trainer = run.method.trainer(run, run.model, run.loss, meta={})
        batch = next(iter(trainer.train_loader))
        self.check_batch(run, batch)
        before = {k: v.clone() for k, v in run.model.state_dict().items()}
        value, parts = trainer.run_step(batch)
        if getattr(type(run.model), "fitted_by_counting", False):
            assert value is None  # a counting step has no loss
        else:
            assert value is not None and math.isfinite(value)
        assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
        assert _changed(before, run.model), "the step changed nothing"

    def check_batch(self, run, batch) -> None:
        """Family checks of a training batch."""

    def test_predictions_and_evaluation(self, run):
        dataset = run.datasets["val"]
        sizes, images = [], []
        for i in range(min(2, len(dataset))):
            image = self.raw_image(dataset, i)
            sizes.append(image.shape[:2])
            images.append(run.method.prepare(image))
        run.model.eval()
        with torch.no_grad():
            raws = run.method.predict(run.model, images, sizes)
        assert len(raws) == len(sizes)
        for raw, size in zip(raws, sizes):
            self.check_prediction(run, raw, size)
            result = run.method.result(raw)
            assert all(isinstance(v, np.ndarray) for v in result.values())
        metrics = run.method.evaluate(run, run.model, "val")
        for cls in (c for c in EVALUATORS.values() if c.task == run.method.task):
            assert set(cls.summary) <= set(metrics), f"{cls.__name__}'s summary keys are not all reported"

    def raw_image(self, dataset, index: int) -> np.ndarray:
        raise NotImplementedError

    def check_prediction(self, run, raw, size) -> None:
        raise NotImplementedError

    def test_state_dict_round_trip_and_export_outputs(self, run):
        twin = run.place(run.method.build_model(run.data.num_classes, pretrained=False))
        twin.load_state_dict(run.model.state_dict())
        image = run.method.prepare(self.raw_image(run.datasets["val"], 0))[None].to(run.device)  # the model's device
        run.model.eval(), twin.eval()
        with torch.no_grad():
            a, b = run.method.export_module(run.model)(image), run.method.export_module(twin)(image)
        a, b = ((a,) if isinstance(a, torch.Tensor) else tuple(a)), ((b,) if isinstance(b, torch.Tensor) else tuple(b))
        assert len(a) == len(run.method.onnx_outputs)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


class SemanticModelContract(MethodContract):
    """What every semantic model must do. Subclasses set ``block`` (the config's ``model`` block)."""

    method = "semantic"
    block: dict = {}
    image_size = (64, 64)

    @pytest.fixture
    def data_root(self, scenes_root):
        return scenes_root

    @pytest.fixture
    def run(self, data_root, tmp_path):
        h, w = self.image_size
        cfg = method_config("semantic", overrides=COMMON + [f"data.image_size=[{h},{w}]"])
        cfg = merge_checked(cfg, {"data": {"root": str(data_root)}, "model": self.block}, "contract test")
        return build_run(cfg, tmp_path)

    def check_batch(self, run, batch) -> None:
        n = len(batch["image"])
        assert batch["image"].dtype == torch.float32 and tuple(batch["image"].shape) == (n, 3, *self.image_size)
        assert batch["mask"].dtype == torch.int64 and tuple(batch["mask"].shape) == (n, *self.image_size)

    def raw_image(self, dataset, index: int) -> np.ndarray:
        return dataset.load_image(index)

    def check_prediction(self, run, raw, size) -> None:
        assert raw["labels"].dtype == torch.int64 and tuple(raw["labels"].shape) == tuple(size)
        assert int(raw["labels"].max()) < run.data.num_classes

    def test_logits_and_evaluation_keys(self, run):
        batch = next(iter(run.loaders["val"]))
        run.model.eval()
        with torch.no_grad():
            logits = run.model(batch["image"].to(run.device))
        classes = run.data.num_classes
        assert logits.is_floating_point() and tuple(logits.shape) == (len(batch["image"]), classes, *self.image_size)
        metrics = run.method.evaluate(run, run.model, "val")
        for key in ("mIoU", "mAP", "loss", *(f"IoU/{c}" for c in run.data.class_names)):
            assert key in metrics
        assert 0 <= metrics["mAP"] <= 100


class InstanceMethodContract(MethodContract):
    """What every instance method must do. Subclasses set ``method`` and small-model ``opts``."""

    @pytest.fixture
    def data_root(self, pennfudan_root):
        return pennfudan_root

    @pytest.fixture
    def run(self, data_root, tmp_path):
        cfg = method_config(self.method, overrides=COMMON + ["data.val=2", "data.test=2", *self.opts])
        cfg = merge_checked(cfg, {"data": {"root": str(data_root)}}, "contract test")
        return build_run(cfg, tmp_path)

    def raw_image(self, dataset, index: int) -> np.ndarray:
        return dataset.raw(index)[0]

    def check_prediction(self, run, out, size) -> None:
        n = len(out["scores"])
        assert out["boxes"].dtype == torch.float32 and tuple(out["boxes"].shape) == (n, 4)
        assert out["labels"].dtype == torch.int64 and tuple(out["labels"].shape) == (n,)
        assert out["scores"].dtype == torch.float32
        masks = out["masks"]
        assert masks.shape[0] == n and tuple(masks.shape[-2:]) == tuple(size) and masks.dim() in (3, 4)

    def test_prepare_gives_what_the_evaluation_dataset_gives(self, run):
        """Prediction on a file prepares the image as evaluation does (the one-path property's first half)."""
        dataset = run.datasets["val"]
        image, _ = dataset[0]
        raw, _ = dataset.raw(0)
        torch.testing.assert_close(run.method.prepare(raw), image, rtol=0, atol=0)


class FormatContract:
    """What every dataset format must do. Subclasses set ``format`` and a ``root`` fixture (a tiny dataset in
    its layout, or None for one that needs no folder)."""

    format = ""

    @pytest.fixture
    def root(self):
        return None

    def test_is_in_the_table_and_declares_itself(self):
        cls = FORMATS[self.format]
        assert issubclass(cls, Format) and cls.name == self.format and cls.layout
        assert cls.serves and set(cls.serves) <= {"semantic", "instance"}
        val, test = cls.default_split
        assert val >= 0 and test >= 0

    def test_recognises_its_layout(self, root):
        if root is None:
            pytest.skip("this format needs no folder")
        for task in FORMATS[self.format].serves:
            assert find_format(Path(root), "auto", task, self.files(root)).name == self.format

    def files(self, root) -> dict | None:
        return None

    def test_serves_what_it_declares(self, root, tmp_path):
        fmt = FORMATS[self.format]()
        if "semantic" in fmt.serves:
            source = fmt.semantic_source(Path(root) if root else None)
            assert len(source.class_names) >= 2 and source.items
            image_id = sorted(source.items)[0]
            image_path, label_path = source.items[image_id]
            mask = source.mask_reader(label_path, len(source.class_names), source.ignore_index)
            assert mask.dtype == np.uint8 and mask.ndim == 2
            assert ((mask < len(source.class_names)) | (mask == source.ignore_index)).all()
        if "instance" in fmt.serves:
            from seg_ext.data.base import SplitRequest
            from seg_ext.data.coco import CocoInstanceDataset

            paths, image_root = fmt.coco_splits(Path(root) if root else None, tmp_path,
                                                SplitRequest(val=1, test=1, files=self.files(root)))
            dataset = CocoInstanceDataset(paths["train"], image_root)
            assert len(dataset) and dataset.class_names
            masks, boxes, labels = dataset.load_instances(0)
            assert masks.shape[1:] == dataset.load_image(0).shape[:2] and len(masks) == len(boxes) == len(labels)


class EvaluatorContract:
    """What every registered evaluator must do. Subclasses set ``evaluator``, ``best`` (a key of its results) with
    the value a perfect prediction scores there (``perfect``, 100 by default; ``higher_is_better``), and implement
    ``context`` (the arguments a method would give) and ``batches(perfect)`` (outputs and targets; ``perfect``:
    predictions that equal the ground truth)."""

    evaluator = ""
    best = ""
    perfect = 100.0
    higher_is_better = True

    def context(self) -> dict:
        raise NotImplementedError

    def batches(self, perfect: bool) -> list[tuple]:
        raise NotImplementedError

    def _evaluate(self, perfect: bool) -> dict[str, float]:
        ev = EVALUATORS[self.evaluator].from_context(**self.context())
        ev.reset()
        for outputs, targets in self.batches(perfect):
            ev.process(outputs, targets)
        return ev.evaluate()

    def test_declares_itself(self):
        cls = EVALUATORS[self.evaluator]
        assert issubclass(cls, Evaluator) and cls.task in ("semantic", "instance") and cls.summary

    def test_perfect_predictions_score_best_and_the_summary_keys_are_reported(self):
        metrics = self._evaluate(perfect=True)
        assert metrics[self.best] == pytest.approx(self.perfect)
        assert set(EVALUATORS[self.evaluator].summary) <= set(metrics)
        assert set(EVALUATORS[self.evaluator].comparison_keys(metrics)) <= set(metrics)

    def test_worse_predictions_score_worse_and_reset_forgets(self):
        worse = self._evaluate(perfect=False)[self.best]
        assert worse < self.perfect if self.higher_is_better else worse > self.perfect
        ev = EVALUATORS[self.evaluator].from_context(**self.context())
        for outputs, targets in self.batches(False):
            ev.process(outputs, targets)
        ev.reset()
        for outputs, targets in self.batches(True):
            ev.process(outputs, targets)
        assert ev.evaluate()[self.best] == pytest.approx(self.perfect)

    def test_report_section_renders(self, tmp_path):
        from seg_ext.report import Report

        metrics = self._evaluate(perfect=True)
        report = Report("contract")
        EVALUATORS[self.evaluator].report(report, {"val": metrics, "test": metrics})
        report.save(tmp_path / "report.md")
        assert (tmp_path / "report.md").read_text().count("|") > 0


class SemanticEvaluatorContract(EvaluatorContract):
    """The contract for a semantic evaluator, with its inputs: batches of logits over 3 classes and their targets
    (perfect: the targets' one-hot, scaled; else with noise of the given ``noise`` standard deviation)."""

    noise = 8.0

    def context(self) -> dict:
        return {"num_classes": 3, "ignore_index": 255, "class_names": ["a", "b", "c"]}

    def batches(self, perfect: bool) -> list[tuple]:
        rng = np.random.default_rng(0)
        out = []
        for _ in range(2):
            target = torch.from_numpy(rng.integers(0, 3, (2, 8, 9)))
            logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
            if not perfect:
                logits = logits + torch.from_numpy(rng.normal(0, self.noise, logits.shape)).float()
            out.append((logits, target))
        return out
