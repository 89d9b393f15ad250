"""The method protocol: everything that differs between ways of segmenting, for both tasks.

A method says, as attributes and methods of its class (nothing else in the package asks for its name):

* config: :meth:`Method.defaults` (its blocks with their defaults) and :meth:`Method.validate`;
* data: :meth:`Method.datasets` (the train/val/test datasets from the format table, ``seg_ext.data.formats``)
  and :meth:`Method.collate`;
* model: :attr:`Method.models` (name -> builder for the config's ``model`` block), :meth:`Method.build_model`,
  :meth:`Method.size_multiple`, :attr:`Method.network_keys` (config keys that shape the network);
* training: :meth:`Method.loss` (the loss step, with its state made in its constructor) and
  :meth:`Method.trainer`;
* prediction: :meth:`Method.prepare` (one image -> the network's input; runs in loader workers),
  :meth:`Method.forward` (a batch, with or without test-time augmentation: :attr:`Method.supports_tta`),
  :meth:`Method.postprocess` (one image at its own size), :meth:`Method.result` (the API's NumPy result),
  :meth:`Method.write_prediction` (the files ``tools/predict.py`` writes);
* evaluation: :meth:`Method.evaluators` (the evaluator registry's for its task, ``seg_ext.evaluation``) and
  :meth:`Method.evaluate`;
* report: :attr:`Method.title`, :meth:`Method.draw_overlays`, :meth:`Method.write_report`, :meth:`Method.facts`;
* export: :attr:`Method.onnx_outputs`, :meth:`Method.export_module`, :attr:`Method.export_fixed_size`.

Two families implement most of it: :class:`~seg_ext.methods.semantic.SemanticMethod` (per-pixel classes) and
:class:`~seg_ext.methods.instance.InstanceMethod` (instances scored with COCO AP, whose subclasses bring the
network, its loss and its post-processing). A new method is a subclass in its own module plus one entry in
``seg_ext.methods.METHODS`` (or :func:`~seg_ext.methods.register_method` from a plugin); its tests come from
subclassing a contract test in ``tests/contracts.py``.

The driver (``seg_ext.tasks.driver``) hands a method its run: an object with ``cfg``, ``output_dir``,
``device``, ``precision``, ``data`` (:class:`RunData`), ``loaders`` and ``loader(dataset, train, collate_fn)``
(:class:`RunLike`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seg_ext.config import compile_mode
from seg_ext.data.scale import Scale
from seg_ext.dense import DensePlan, crop_size, dense_plan, ignored_keys, predict_dense, resolve_eval_mode, window_and_stride
from seg_ext.engine import Precision, Trainer, check_compiler
from seg_ext.evaluation import Evaluator
from seg_ext.models import build_from_block

# model-block keys that name pretrained weights to fetch: a checkpoint holds the trained weights already
WEIGHT_KEYS = ("weights", "backbone_weights", "encoder_weights")


@dataclass
class RunData:
    """A method's data for a run: the datasets of each split (None for one the data lacks), what the model's
    head needs, and what the run folder and the checkpoints keep of it.

    Attributes:
        datasets: ``train``, ``val``, ``test``.
        class_names: semantic: every class; instance: the categories (model label k is ``class_names[k - 1]``).
        num_classes: classes of the model's head (instance: with the background).
        description: the data as the report names it.
        split_sizes: images per split, for ``metrics.json``.
        files: JSON files to write into the run folder (name -> content), e.g. ``splits.json``.
        checkpoint_facts: what checkpoints hold besides config and class names (COCO categories, ...).
    """

    datasets: dict[str, Dataset | None]
    class_names: list[str]
    num_classes: int
    description: str
    split_sizes: dict[str, int]
    files: dict[str, Any] = field(default_factory=dict)
    checkpoint_facts: dict[str, Any] = field(default_factory=dict)


class RunLike(Protocol):
    """What a method reads of the driver's run (``seg_ext.tasks.run.Run``)."""

    cfg: dict[str, Any]
    output_dir: Path
    command: str
    device: torch.device
    precision: Precision
    data: RunData
    loaders: dict[str, DataLoader]

    def loader(self, dataset: Dataset, train: bool = False, collate_fn: Callable | None = None) -> DataLoader: ...

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def scheduler(self, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> Any: ...


LossStep = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


def training_note(summary: dict[str, Any]) -> str:
    """The report's line on the training: epochs, the best epoch, how long, where (device, precision, machine)."""
    where = summary["precision"] + (f"; {summary['machine']}" if summary.get("machine") else "")
    return (f"training: {summary['epochs']} epoch(s), best epoch {summary['best_epoch']} by val {summary['best_metric']}, "
            f"{summary['train_seconds']:.0f} s of training on {summary['device']} ({where})")


def init_note(summary: dict[str, Any]) -> list[str]:
    """The report's line on a run started from another run's weights (``--init-from``), if it was."""
    if not summary.get("init_from"):
        return []
    return [f"started from the weights of `{summary['init_from']}` (--init-from), with a new optimiser and schedule"]


class Method:
    """Base class of the methods (see the module docstring).

    Attributes:
        name: the config's ``method`` and the tools' ``--method``.
        task: ``semantic`` or ``instance``: which tool trains it and what the data must hold.
        title: the report's title.
        models: model names -> builders for the config's ``model`` block.
        supports_tta: ``forward(..., tta=True)`` averages with the horizontally flipped images.
        supports_oracle: :meth:`oracle_outputs` turns ground truth into outputs (``--oracle``).
        onnx_outputs: the exported network's output names (:meth:`export_module` returns them in this order).
        export_fixed_size: the export takes one image size and batch 1 (torchvision's detectors).
        network_keys: config keys besides the ``model`` block whose values shape the network (a resume or
            ``--opts`` that changes them is refused before any weights are loaded).
        context_keys: config keys of the builder arguments the method supplies (for error messages).
        fixed_train_size: every training batch has the same shape (cuDNN's autotuner is then on for CUDA runs).
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""
    title: ClassVar[str] = ""
    models: ClassVar[dict[str, Callable[..., nn.Module]]] = {}
    supports_tta: ClassVar[bool] = True
    supports_oracle: ClassVar[bool] = False
    onnx_outputs: ClassVar[tuple[str, ...]] = ()
    export_fixed_size: ClassVar[bool] = False
    network_keys: ClassVar[tuple[str, ...]] = ()
    context_keys: ClassVar[dict[str, str]] = {}
    fixed_train_size: ClassVar[bool] = True
    #: the method's own config blocks (name -> defaults), e.g. ``watershed``
    config_blocks: ClassVar[dict[str, dict[str, Any]]] = {}
    #: renamed keys of the method's blocks ((block, old) -> new), for configs saved before the rename
    renamed_keys: ClassVar[dict[tuple[str, str], str]] = {}

    def __init__(self, cfg: dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
        self.validate(cfg)
        self.cfg, self.device = cfg, device
        data = cfg.get("data", {})
        #: the training scale with ``data.resize: scale`` (None with ``squash``)
        self.scale: Scale | None = Scale.parse(data.get("scale", 1.0)) if data.get("resize", "squash") == "scale" else None

    # ---- config -------------------------------------------------------------------------------------------

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The method's whole default config (a fresh copy)."""
        raise NotImplementedError

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        """Check the keys that are the method's (the common ones are checked by ``config.validate_config``).

        Raises:
            ConfigError: naming the key and what was expected.
        """

    @classmethod
    def ignored_keys(cls, cfg: dict[str, Any]) -> dict[str, str]:
        """The keys that the config's modes (``data.resize``, ``eval.mode``, ...) leave unused, each with why."""
        return ignored_keys(cfg)

    @classmethod
    def ignored_settings(cls, cfg: dict[str, Any], before: dict[str, Any]) -> list[str]:
        """One sentence for each key that differs from ``before`` (the config without the command line's
        overrides) and that the config's modes ignore: a run warns with them (a sweep over such a key is refused
        in ``tasks.sweep``: every value would give the same numbers)."""
        out = []
        for key, why in cls.ignored_keys(cfg).items():
            block, name = key.split(".", 1)
            value = cfg.get(block, {}).get(name)
            if value != before.get(block, {}).get(name):
                out.append(f"config key '{key}' is {value!r}, but {why}: the setting has no effect")
        return out

    # ---- data ---------------------------------------------------------------------------------------------

    def datasets(self, output_dir: Path) -> RunData:
        """The run's datasets (training ones augmented), from the format table."""
        raise NotImplementedError

    def collate(self, batch: list[Any]) -> Any:
        """Batch the samples of the datasets (default: PyTorch's)."""
        return torch.utils.data.default_collate(batch)

    # ---- model --------------------------------------------------------------------------------------------

    @classmethod
    def postprocess_keys(cls) -> tuple[str, ...]:
        """Config keys of the post-processing, which may change without retraining
        (``tools/tune_postprocess.py`` tunes them on val)."""
        return ()

    @classmethod
    def head_classes(cls, class_names: Sequence[str]) -> int:
        """The classes of the model's head for a run's class names (instance methods add the background)."""
        return len(class_names)

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        """What the method tells the model builder besides the config's ``model`` block."""
        return {"num_classes": num_classes}

    def build_model(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        """The network of the config's ``model`` block; ``pretrained`` False leaves out pretrained weights (a
        checkpoint brings the trained ones)."""
        block = self.cfg["model"] if pretrained else without_weights(self.cfg["model"])
        keys = dict(self.context_keys)
        if self.scale is not None and self.cfg["data"].get("crop_size") is not None:
            keys["image_size"] = "data.crop_size"  # the size the network trains at is the crop's
        return build_from_block(self.models, block, self.model_arguments(num_classes), context_keys=keys)

    def size_multiple(self, model: nn.Module) -> int | None:
        """The multiple that input height and width must be of (1: any size; None: only the trained size)."""
        inner = getattr(model, "module", model)  # DistributedDataParallel
        return getattr(getattr(inner, "_orig_mod", inner), "size_multiple", 1)  # torch.compile

    @property
    def network_size(self) -> tuple[int, int] | None:
        """The (H, W) images are resized to with ``data.resize: squash`` (None: each image at its own size)."""
        return None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The (H, W) the network sees: ``network_size``, or with ``data.resize: scale`` the window of the
        prediction (``eval.window``, by default the training crop)."""
        if self.scale is None or self.network_size is None:
            return self.network_size
        return window_and_stride(self.cfg, self.network_size)[0]

    @property
    def train_size(self) -> tuple[int, int] | None:
        """The (H, W) of the training inputs: ``network_size``, or with ``data.resize: scale`` the crop."""
        if self.scale is None or self.network_size is None:
            return self.network_size
        return crop_size(self.cfg, self.network_size)

    # ---- the training scale and whole / sliding-window prediction (seg_ext.dense) ----------------------------

    def dense_plan(self, model: nn.Module) -> DensePlan | None:
        """How ``eval.mode`` whole or slide runs ``model`` (None for resize)."""
        if self.scale is None or self.network_size is None:
            return None
        return dense_plan(self.cfg, self.network_size, self.size_multiple(model))

    def data_notes(self) -> list[str]:
        """Report lines on what the run's data leaves out (``data.max_images``), said beside its numbers."""
        cut = self.cfg["data"].get("max_images")
        return [f"`data.max_images={cut}`: each split cut to its first {cut} images, a quick try of the pipeline; "
                "these numbers measure no model"] if cut is not None else []

    def size_description(self) -> str | None:
        """How images meet the network, for the report (None: each image as it is, e.g. Mask R-CNN)."""
        if self.network_size is None:
            return None
        if self.scale is None:
            h, w = self.network_size
            return f"images squashed to {h}x{w} (H x W, data.resize: squash)"
        ch, cw = self.train_size
        mode = resolve_eval_mode(self.cfg)
        window, stride = window_and_stride(self.cfg, self.network_size)
        how = f"windows of {list(window)} every {list(stride)}" if mode == "slide" else "the whole image in one pass"
        return (f"training on {ch}x{cw} crops of each image scaled by data.scale {self.scale} (aspect ratio kept); "
                f"evaluation and prediction at that scale, eval.mode {mode}: {how}")

    def dense_forward(self, model: nn.Module, images: Sequence[torch.Tensor] | torch.Tensor,
                      fn: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """``fn``'s dense outputs (C, h, w) of each prepared image at the training scale, whole or by windows."""
        plan = self.dense_plan(model)
        assert plan is not None
        return [predict_dense(fn, image.to(self.device, non_blocking=True), plan) for image in images]

    # ---- training -----------------------------------------------------------------------------------------

    def loss(self, data: RunData) -> LossStep:
        """The training loss step ``loss(model, batch) -> (loss, parts)``."""
        raise NotImplementedError

    def trainer(self, run: RunLike, model: nn.Module, loss: LossStep, meta: dict[str, Any]) -> Trainer:
        """A gradient-descent trainer with the default hooks, validating on val (its step compiled as
        ``train.compile`` says, checked before any loader starts: evaluation alone never compiles)."""
        t = run.cfg["train"]
        mode = compile_mode(t["compile"])
        check_compiler(mode, run.device)
        train_loader = run.loader(run.data.datasets["train"], train=True, collate_fn=self.collate)
        optimizer = run.optimizer(model)
        scheduler = run.scheduler(optimizer, len(train_loader))
        return Trainer(
            model, optimizer, scheduler, train_loader, loss, lambda m: self.evaluate(run, m, "val"),
            run.output_dir, epochs=t["epochs"], best_metric=t["best_metric"], precision=run.precision,
            grad_clip=t["grad_clip"], eval_every=t["eval_every"], meta=meta, checkpoint_every=t["checkpoint_every"],
            compile=mode,
        )

    # ---- prediction ---------------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The network input of one HxWx3 uint8 RGB image, as evaluation prepares it. Runs in loader workers."""
        raise NotImplementedError

    def forward(self, model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], tta: bool = False) -> Any:
        """The network's outputs for a batch of prepared images (a stacked tensor or a list), in whatever form
        :meth:`postprocess` takes; ``tta``: averaged with the horizontally flipped images'. Callers run it
        without gradients and in the run's precision."""
        raise NotImplementedError

    def postprocess(self, outputs: Any, index: int, size: tuple[int, int], probs: bool = False) -> dict[str, Any]:
        """Image ``index`` of :meth:`forward`'s outputs at the image's own ``size`` (H, W), as tensors."""
        raise NotImplementedError

    def predict(self, model: nn.Module, images: Any, sizes: Sequence[tuple[int, int]], tta: bool = False) -> list[dict[str, Any]]:
        """:meth:`forward`, then :meth:`postprocess` of every image."""
        outputs = self.forward(model, images, tta)
        return [self.postprocess(outputs, i, tuple(size)) for i, size in enumerate(sizes)]

    def result(self, raw: dict[str, Any], score_threshold: float = 0.5) -> dict[str, np.ndarray]:
        """A :meth:`postprocess` output as the Python API's NumPy result."""
        raise NotImplementedError

    #: the folders ``tools/predict.py`` writes per-image files into (besides ``overlays/``)
    prediction_folders: ClassVar[tuple[str, ...]] = ()
    #: whether predictions are COCO results (``results_*.json``; ``--coco-gt`` scores them)
    coco_results: ClassVar[bool] = False

    def write_prediction(self, raw: dict[str, Any], result: dict[str, np.ndarray], image: np.ndarray, name: str,
                         output_dir: Path, class_names: Sequence[str], overlays: bool) -> dict[str, Any]:
        """Write one image's files for ``tools/predict.py``; return its ``predictions.json`` entry."""
        raise NotImplementedError

    # ---- evaluation and report -----------------------------------------------------------------------------

    def evaluators(self, dataset: Dataset) -> list[Evaluator]:
        """The evaluators of a split (``seg_ext.evaluation.EVALUATORS`` of the method's task, plus its own)."""
        raise NotImplementedError

    def evaluate(self, run: RunLike, model: nn.Module, split: str, final: bool = False) -> dict[str, float]:
        """The metrics of ``split``; ``final``: the final evaluation, which also writes the split's files."""
        raise NotImplementedError

    def draw_overlays(self, run: RunLike, model: nn.Module, split: str) -> None:
        """Predictions drawn over a few images of ``split`` (``overlays_<split>.png``)."""

    def error_picture(self, run: RunLike, model: nn.Module, split: str, row: dict[str, Any]) -> np.ndarray | None:
        """The gallery's picture of one image of ``split`` (``row``: its per-image scores): the image, its ground
        truth and the prediction with the errors marked (None: the method draws none)."""
        return None

    def draw_worst(self, run: RunLike, model: nn.Module, split: str, metrics: dict[str, Any]) -> None:
        """Draw the worst images of ``split`` (``metrics["per_image"]["worst"]``, from the final evaluation) into
        ``worst_<split>/`` with :meth:`error_picture`, for the report's gallery (:func:`gallery_items`)."""
        from PIL import Image

        folder = Path(run.output_dir) / f"worst_{split}"
        for old in folder.glob("*.jpg"):
            old.unlink()
        was_training = model.training
        model.eval()
        try:
            for k, row in enumerate(metrics.get("per_image", {}).get("worst", [])):
                picture = self.error_picture(run, model, split, row)
                if picture is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(picture).save(folder / gallery_file(k, row), quality=88)
        finally:
            model.train(was_training)

    def write_report(self, run: RunLike, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``report.md`` of a finished run."""
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        """The method's entries of ``metrics.json``."""
        return {}

    # ---- export and the oracle -----------------------------------------------------------------------------

    def export_module(self, model: nn.Module) -> nn.Module:
        """The network as ONNX exports it: prepared images in, the :attr:`onnx_outputs` out (a tuple)."""
        return model

    def oracle_outputs(self, target: dict[str, Any]) -> dict[str, Any]:
        """What :meth:`postprocess` would give for a perfect network, from one evaluation target."""
        raise NotImplementedError(f"method {self.name} has no oracle")

    def oracle_facts(self) -> dict[str, Any]:
        """What the oracle's ``metrics.json`` says of the method's settings."""
        return {}

    def write_oracle_report(self, output_dir: Path, summary: dict[str, Any], description: str, command: str) -> None:
        """``report.md`` of ``--oracle``."""
        raise NotImplementedError(f"method {self.name} has no oracle")

    def show_augmentations(self, output: Path, num_images: int = 4, per_image: int = 4) -> Path:
        """A picture of training samples as the augmentation makes them, to check their alignment."""
        from seg_ext.errors import SegExtError

        raise SegExtError(f"method {self.name} cannot show its augmentations; tools/show_augmentations.py draws the "
                          "semantic method's")


def without_weights(block: dict[str, Any]) -> dict[str, Any]:
    """A ``model`` block with its pretrained-weight keys emptied."""
    block = copy.deepcopy(block)
    for key in WEIGHT_KEYS:
        if block.get(key):
            block[key] = None
    return block


def overlay_indices(count: int, length: int) -> list[int]:
    """``count`` image indices spread over a split of ``length`` images."""
    if count <= 0 or length <= 0:
        return []
    return [int(i) for i in np.linspace(0, length - 1, min(count, length)).round().astype(int)]


def report_split(run: RunLike) -> str:
    """The split the report shows (its figures, gallery and examples): test where it has images, else val."""
    return "test" if "test" in run.loaders else "val"


def gallery_file(k: int, row: dict[str, Any]) -> str:
    """The file name of the ``k``-th worst image's picture (its rank, then its name made safe)."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(str(row["image"])).stem)[:60]
    return f"{k + 1:02d}_{stem}.jpg"


def report_per_image(report: Any, output_dir: Path, summary: dict[str, Any], label: str) -> None:
    """The report's per-image section of the test split (else val): the histogram of the per-image score, the
    worst images with their scores, and their gallery pictures (:meth:`Method.draw_worst`)."""
    from seg_ext.report import GalleryItem, shown_split

    split = shown_split(summary, "per_image")
    if split is None:
        return
    info = summary[split]["per_image"]
    key, worst = info["score"], info["worst"]
    report.heading(f"Per image ({split})")
    median = info.get("median")
    report.text(f"Every {split} image scored on its own: `per_image_{split}.csv` (one row per image, sortable). "
                f"{len(worst)} worst of {info['images']} by {label}" +
                (f"; the median image is `{median['image']}` ({label} {median[key]:.1f})." if median else "."))
    if (Path(output_dir) / f"per_image_{split}.png").is_file():
        report.image(f"per_image_{split}.png", f"{split}: {label} per image")
    if not worst:
        return
    columns = [k for k in worst[0] if k not in ("image", "image_id")]
    report.table(["image", *columns], [[r["image"], *[r.get(c) for c in columns]] for r in worst], digits=1)
    items = []
    for k, row in enumerate(worst):
        path = f"worst_{split}/{gallery_file(k, row)}"
        if (Path(output_dir) / path).is_file():
            items.append(GalleryItem(path, f"{k + 1}. {row['image']}", {c: row.get(c) for c in columns if "/" not in c}))
    if items:
        report.heading(f"The {len(items)} worst {split} images", level=3)
        report.gallery(items)
