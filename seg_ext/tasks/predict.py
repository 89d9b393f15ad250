"""Predict on image files with a :class:`~seg_ext.inference.Predictor` and write what a person or a program
reads: the method's per-image files at each image's own size (``Method.write_prediction``: label maps or
instance maps, overlays), ``predictions.json`` and, for methods whose predictions are COCO results, the results
files (scored against ``--coco-gt`` when given). Semantic predictions are scored against a folder of label maps
with ``--gt``. Either way every image is also scored on its own (``per_image.csv``) with the failure analysis of
the final evaluation (``seg_ext.evaluation.analysis``). What ``tools/predict.py`` calls.

Images are read and prepared by a pool of threads (``num_workers``, auto: ``engine.resolve_workers``), two
batches ahead of the network, which runs on batches in the main thread; each image's post-processing and file
writing go to a second pool of threads (one per usable CPU), so decoding, the network and writing overlap in one
process. Threads, not loader processes: decoding, resizing, PNG/JPEG encoding, the watershed and the tensor ops
release the GIL, and an image crossing processes (shared memory, pickling) cost more than it saved
(benchmarks/README.md, ``predict_throughput``). An unreadable image is named in a warning and skipped; every other
image is still written.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from seg_ext.data.base import IMAGE_EXTENSIONS, check_mask_values
from seg_ext.data.coco import coco_from_dict, load_coco_json
from seg_ext.data.files import read_image, read_label_png
from seg_ext.data.preannotate import DEFAULT_MIN_AREA, DEFAULT_TOLERANCE, PreAnnotator, check_formats
from seg_ext.engine import resolve_workers, usable_cpus
from seg_ext.errors import DatasetError, SegExtError
from seg_ext.evaluation.coco import COCOEvaluator, save_analysis
from seg_ext.evaluation.semantic import SUMMARY_KEYS, SemSegEvaluator
from seg_ext.evaluation.uncertainty import instance_uncertainty, semantic_uncertainty
from seg_ext.inference import Predictor
from seg_ext.io import check_output_folder, write_json

logger = logging.getLogger(__name__)

GLOB_CHARACTERS = set("*?[")


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files, folders (their images by extension, sorted; no recursion) and quoted globs.

    Raises:
        SegExtError: a path that does not exist, a folder without images, a glob that matches no image.
    """
    files: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise SegExtError(f"input folder {path} holds no images; expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
            files.extend(found)
        elif GLOB_CHARACTERS & set(text):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise SegExtError(f"input pattern {text} matches no image file")
            files.extend(found)
        else:
            raise SegExtError(f"input path {text} does not exist; expected an image, a folder of images or a quoted glob")
    return list(dict.fromkeys(files))


def output_names(files: Sequence[Path]) -> list[str]:
    """A file-name stem per input, unique (``name-2``, ... where two inputs share a stem)."""
    names, taken = [], set()
    for path in files:
        name, k = path.stem, 1
        while name in taken:
            k += 1
            name = f"{path.stem}-{k}"
        taken.add(name)
        names.append(name)
    return names


class ImageFiles(Dataset):
    """Reads and prepares one image per item; a file that cannot be read becomes an item with its ``error``."""

    def __init__(self, files: Sequence[Path], prepare: Any) -> None:
        self.files, self.prepare = list(files), prepare

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = read_image(self.files[index])
        except DatasetError as exc:
            return {"index": index, "error": str(exc)}
        return {"index": index, "input": self.prepare(image), "image": image}


def read_ahead(dataset: Dataset, batch_size: int, pool: Any, batches_ahead: int = 2) -> Iterator[list[Any]]:
    """The items of ``dataset`` in order, in lists of ``batch_size``, each read by ``pool`` (an executor) while
    up to ``batches_ahead`` (at least 1) batches before it are used; memory stays bounded by what is read ahead."""
    count, ahead = len(dataset), batches_ahead * batch_size
    queue: deque[Future] = deque()
    submitted = 0
    batch: list[Any] = []
    while submitted < count or queue:
        while submitted < count and len(queue) < ahead:
            queue.append(pool.submit(dataset.__getitem__, submitted))
            submitted += 1
        batch.append(queue.popleft().result())
        if len(batch) == batch_size or not queue:
            yield batch
            batch = []


@dataclass
class CocoTarget:
    """Image ids and category ids of a ground-truth COCO file, for results scored against it."""

    path: Path
    coco: Any
    image_ids: dict[str, int] = field(default_factory=dict)  # base file name -> image id

    @classmethod
    def load(cls, path: Path) -> "CocoTarget":
        coco = coco_from_dict(load_coco_json(path))
        ids: dict[str, int] = {}
        for image in coco.dataset["images"]:
            ids.setdefault(Path(str(image["file_name"])).name, int(image["id"]))
        return cls(Path(path), coco, ids)

    def category_of(self, class_names: Sequence[str]) -> dict[int, int]:
        """Model label (1..K) -> the category id of the same name in the file."""
        by_name = {c["name"]: int(c["id"]) for c in self.coco.dataset["categories"]}
        missing = [n for n in class_names if n not in by_name]
        if missing:
            raise SegExtError(f"--coco-gt {self.path} has no category named {missing[0]!r}; the model's categories are "
                              f"{list(class_names)}")
        return {k + 1: by_name[n] for k, n in enumerate(class_names)}


class MaskTarget:
    """Semantic ground truth for predicted images: a folder of label maps (class ids, 255 ignored) named like the
    images (``<stem>.png`` or another image extension), scored as the final evaluation scores a split."""

    def __init__(self, folder: Path, class_names: Sequence[str], ignore_index: int = 255) -> None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise SegExtError(f"--gt {folder} is not a folder; expected a folder of label maps named like the images")
        self.folder, self.num_classes, self.ignore_index = folder, len(class_names), ignore_index
        self.masks = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
        self.evaluator = SemSegEvaluator(len(class_names), ignore_index, class_names)
        self.lock = threading.Lock()  # images are scored from the writer threads

    def mask_of(self, image: Path) -> Path | None:
        return self.masks.get(image.stem)

    def score(self, probs: Any, image_path: Path, size: tuple[int, int], name: str) -> None:
        """Score one image's probabilities (C, H, W) against its mask.

        Raises:
            SegExtError: the mask is not the image's size, or holds values that are not class ids.
        """
        path = self.mask_of(image_path)
        mask = read_label_png(path)
        if mask.shape[:2] != tuple(size):
            raise SegExtError(f"mask file {path} is {mask.shape[1]}x{mask.shape[0]} (W x H) but image {image_path} is "
                              f"{size[1]}x{size[0]}; expected a mask of the image's size")
        mask = torch.from_numpy(check_mask_values(mask, path, self.num_classes, self.ignore_index).astype(np.int64))
        with self.lock:
            self.evaluator.process_image(probs.float().cpu(), mask, name)


@dataclass
class PredictSummary:
    images: int
    failed: list[str]
    seconds: float
    metrics: dict[str, float] | None = None
    ranked: list[Path] | None = None  # with ``rank``: the images, most uncertain first


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    output_dir: Path,
    batch_size: int = 8,
    num_workers: int | str = "auto",
    coco_gt: Path | None = None,
    overlays: bool = True,
    progress: bool = True,
    gt: Path | None = None,
    writers: int | None = None,
    save_formats: Sequence[str] = ("masks",),
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: int = DEFAULT_MIN_AREA,
    rank: bool = False,
) -> PredictSummary:
    """Predict every file and write the outputs into ``output_dir`` (see the module docstring).

    ``num_workers``: threads that read and prepare images (``auto``: ``engine.resolve_workers``; 0: in the main
    thread, each batch when the network wants it);
    ``writers``: threads that post-process and write (None: one per usable CPU, at least 2; 0: in the main
    thread, one image after the other: the serial reference of ``benchmarks/run.py --only predict_throughput``);
    ``save_formats``: besides the method's own files (``masks``), the labelling tools' formats the predictions are
    written in as pre-annotations (``seg_ext.data.preannotate``: ``<output_dir>/<format>/``), their polygons
    simplified to ``tolerance`` pixels, pieces under ``min_area`` pixels dropped;
    ``rank``: each image's uncertainty (``seg_ext.evaluation.uncertainty``) in its entry and ``to_label_next.csv``,
    the most uncertain first.

    Returns:
        How many images were written, the files that could not be read, the time, and the metrics against
        ``coco_gt`` (COCO AP) or ``gt`` (a folder of label maps: IoU, pixel AP).
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir)
    method = predictor.method
    if coco_gt is not None and not method.coco_results:
        raise SegExtError(f"--coco-gt is for checkpoints whose predictions are COCO results; method {method.name} "
                          f"writes {', '.join(method.prediction_folders)}/ files (score those with --gt)")
    if gt is not None and predictor.task != "semantic":
        raise SegExtError(f"--gt (a folder of label maps) is for semantic checkpoints; method {method.name} predicts "
                          "instances: score those with --coco-gt")
    target = CocoTarget.load(coco_gt) if coco_gt is not None else None
    masks = MaskTarget(gt, predictor.class_names) if gt is not None else None
    if masks is not None:
        lacking = [f for f in files if masks.mask_of(f) is None]
        if len(lacking) == len(files):
            raise SegExtError(f"--gt {gt} has no mask for any input image (masks are matched by file stem, e.g. "
                              f"{files[0].stem}.png)")
        if lacking:
            shown = ", ".join(f.name for f in lacking[:20]) + (f" and {len(lacking) - 20} more" if len(lacking) > 20 else "")
            logger.warning("%d input image(s) have no mask in %s and are predicted but not scored: %s", len(lacking), gt, shown)
    names = output_names(files)
    if target is not None:
        image_ids = [target.image_ids.get(f.name) for f in files]
        unknown = [f for f, i in zip(files, image_ids) if i is None]
        if len(unknown) == len(files):
            raise SegExtError(f"no input image is in --coco-gt {coco_gt} (images are matched by base file name, e.g. "
                              f"{files[0].name})")
        if unknown:
            logger.warning("%d input image(s) are not in %s (e.g. %s): they are predicted, but left out of the COCO "
                           "results and AP", len(unknown), coco_gt, unknown[0].name)
        category_of = target.category_of(predictor.class_names)
    else:
        image_ids = list(range(1, len(files) + 1))
        category_of = {k + 1: int(c) for k, c in enumerate(predictor.categories)}
    preannotator = PreAnnotator(output_dir, predictor.task, list(predictor.class_names), check_formats(save_formats),
                          tolerance, min_area)
    folders = list(method.prediction_folders) + (["overlays"] if overlays else [])
    for folder in folders:
        (output_dir / folder).mkdir(parents=True, exist_ok=True)

    num_workers = resolve_workers(num_workers)
    writers = max(2, usable_cpus()) if writers is None else int(writers)
    images = ImageFiles(files, predictor.prepare)
    entries: list[dict[str, Any] | None] = [None] * len(files)
    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
    failed: list[str] = []
    pending: list[Future] = []
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(files), desc="predict", unit="img", disable=None if progress else True, leave=False, dynamic_ncols=True)
    with _threads(writers, "write") as pool, _threads(num_workers, "read") as readers:
        for batch in read_ahead(images, batch_size, readers, 2 if num_workers else 1):
            good = []
            for item in batch:
                if "error" in item:
                    logger.warning("skipped: %s", item["error"])
                    failed.append(str(files[item["index"]]))
                else:
                    good.append(item)
            if good:
                t0 = time.perf_counter()
                inputs = [item["input"] for item in good]
                outputs = predictor.forward(inputs)
                network_seconds = (time.perf_counter() - t0) / len(good)
                for i, item in enumerate(good):
                    k = item["index"]
                    pending.append(pool.submit(
                        _finish, k, predictor, outputs, i, item["image"], files[k], names[k], image_ids[k],
                        category_of, output_dir, overlays, network_seconds, masks, preannotator, rank))
            # collect what is done, keeping memory bounded and errors prompt
            pending = _collect(pending, entries, results, keep=4 * batch_size)
            bar.update(len(batch))
        _collect(pending, entries, results, keep=0)
    bar.close()
    seconds = time.perf_counter() - start
    written = [e for e in entries if e is not None]
    pre_annotations = preannotator.close() if preannotator.writers else None
    write_json({"checkpoint_task": predictor.task, "method": method.name, "classes": predictor.class_names,
                "images": written, "failed": failed, "seconds": round(seconds, 3),
                **({"pre_annotations": pre_annotations} if pre_annotations else {})}, output_dir / "predictions.json")
    ranked = [Path(e["file"]) for e in write_ranking(written, output_dir / "to_label_next.csv")] if rank else None
    if pre_annotations:
        shapes = sum(e.get("shapes", 0) for e in written)
        print(f"pre-annotations: {shapes} shape(s) in {', '.join(f'{output_dir / f}/' for f in pre_annotations['formats'])} "
              f"(polygons simplified to {tolerance:g} px; " +
              (", ".join(f"{n} {k}" for k, n in pre_annotations["dropped"].items()) or "nothing dropped") + ")")
    metrics = None
    if method.coco_results:
        for iou_type in ("segm", "bbox"):
            write_json(results[iou_type], output_dir / f"results_{iou_type}.json")
        if target is not None:
            scored = [image_ids[i] for i, e in enumerate(entries) if e is not None and image_ids[i] is not None]
            evaluator = COCOEvaluator(target.coco, category_of, analyze=True, score_threshold=predictor.score_threshold)
            evaluator.results, evaluator.image_ids = results, scored
            metrics = evaluator.evaluate()
            for iou_type in ("segm", "bbox"):
                print(f"IoU type: {iou_type} ({len(results[iou_type])} results, {len(scored)} of "
                      f"{len(target.image_ids)} ground-truth images)")
                print(evaluator.summaries[iou_type])
            save_analysis(evaluator.rows, metrics, output_dir)
            write_json(metrics, output_dir / "metrics.json")
    if masks is not None:
        metrics = masks.evaluator.evaluate()
        masks.evaluator.save(output_dir, "", metrics)
        print(f"{len(masks.evaluator.image_rows())} image(s) scored against {gt}: " +
              "  ".join(f"{k} {metrics[k]:.2f}" for k in SUMMARY_KEYS))
        write_json(metrics, output_dir / "metrics.json")
    return PredictSummary(len(written), failed, seconds, metrics, ranked)


def _threads(count: int, name: str) -> Any:
    """A pool of ``count`` threads whose tensor ops run on one core each (the threads are the parallelism; torch's
    own threads per op would oversubscribe the cores the network and the other threads use); 0: inline."""
    if not count:
        return InlineExecutor()
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix=name, initializer=torch.set_num_threads,
                              initargs=(1,))


class InlineExecutor:
    """An executor that runs each task at once in the calling thread (``writers=0``)."""

    def __enter__(self) -> "InlineExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # raised again by result(), as a thread pool's would be
            future.set_exception(exc)
        return future


def _collect(pending: list[Future], entries: list, results: dict[str, list], keep: int) -> list[Future]:
    """Take in the finished images in input order (the COCO results files come out the same however the threads
    ran), waiting for the oldest only while more than ``keep`` are in flight: memory stays bounded and errors
    come promptly, while the writers never run dry."""
    for k, future in enumerate(pending):
        if not future.done() and len(pending) - k <= keep:
            return pending[k:]
        index, entry, bbox, segm = future.result()
        entries[index] = entry
        results["bbox"].extend(bbox)
        results["segm"].extend(segm)
    return []


def _finish(index: int, predictor: Predictor, outputs: Any, i: int, image: np.ndarray, path: Path, name: str, image_id: int | None,
            category_of: dict[int, int], output_dir: Path, overlays: bool, network_seconds: float,
            masks: MaskTarget | None = None, preannotator: PreAnnotator | None = None, rank: bool = False) -> tuple:
    """Post-process image ``i`` of a batch, write its files and score it against its mask (``masks``); returns
    its predictions.json entry and results."""
    t0 = time.perf_counter()
    method = predictor.method
    size = image.shape[:2]
    scored = masks is not None and masks.mask_of(path) is not None
    raw = predictor.postprocess(outputs, i, size, probs=scored or (rank and predictor.task == "semantic"))
    if scored:
        masks.score(raw["probs"], path, size, name)
    uncertainty = None
    if rank:
        uncertainty = (semantic_uncertainty(raw["probs"]) if predictor.task == "semantic" else
                       instance_uncertainty(raw, predictor.score_threshold, method.mask_threshold))
    result = predictor.result(raw)
    entry: dict[str, Any] = {"file": str(path), "name": name, "size": [int(size[0]), int(size[1])]}
    bbox: list[dict[str, Any]] = []
    segm: list[dict[str, Any]] = []
    entry.update(method.write_prediction(raw, result, image, name, output_dir, predictor.class_names, overlays))
    if preannotator is not None and preannotator.writers:
        entry.update(preannotator.add(path, name, result))
    if method.coco_results:
        if image_id is not None:  # None: not in --coco-gt
            bbox, segm = method.coco_results_of(raw, image_id, category_of)
        entry["image_id"] = None if image_id is None else int(image_id)
        entry["score_threshold"] = predictor.score_threshold
    if uncertainty is not None:
        entry["uncertainty"] = uncertainty
    entry["seconds"] = round(network_seconds + time.perf_counter() - t0, 4)
    return index, entry, bbox, segm


def write_ranking(entries: Sequence[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """``to_label_next.csv``: the images by decreasing uncertainty (ties in input order), with the reasons;
    returns the entries in that order."""
    import csv

    ranked = sorted(entries, key=lambda e: -e["uncertainty"]["uncertainty"])
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["rank", "image", "uncertainty", "reasons"])
        for k, entry in enumerate(ranked, start=1):
            out.writerow([k, entry["file"], entry["uncertainty"]["uncertainty"], entry["uncertainty"]["reasons"]])
    return ranked
