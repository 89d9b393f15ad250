"""Evaluation of fixed semantic and COCO outputs through ``run_inference``: in one process (imported by
tests/test_distributed.py), or as one of several processes under torchrun (``python -m torch.distributed.run
--nproc_per_node=2 tests/distributed_eval_worker.py PENNFUDAN_ROOT OUT_DIR``: each writes ``OUT_DIR/rank<r>.json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from seg_ext import distributed
from seg_ext.data.coco import CocoInstanceDataset, collate_instances
from seg_ext.data.pennfudan import convert_pennfudan
from seg_ext.engine import make_loader
from seg_ext.evaluation import Evaluator, MeanMetric, SemSegEvaluator, run_inference
from seg_ext.evaluation.coco import COCOEvaluator

NUM_CLASSES = 3


def _loader(dataset, collate_fn=None):
    """In order, batches of 2; under torchrun this process's share (7 images: shares of 4 and 3)."""
    shard = distributed.shard(len(dataset)) if distributed.is_distributed() else None
    return make_loader(dataset, batch_size=2, shuffle=False, num_workers=0, seed=0, collate_fn=collate_fn, shard=shard)


def _semantic_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, NUM_CLASSES, 12, 10, generator=g) * 3
    target = torch.randint(0, NUM_CLASSES, (7, 12, 10), generator=g)
    target[:, :2, :2] = 255  # ignored pixels
    return TensorDataset(logits, target, torch.arange(7))


def semantic_metrics() -> dict[str, float]:
    loss = MeanMetric("loss", lambda out, tgt: (float(torch.nn.functional.cross_entropy(out, tgt, ignore_index=255)), len(tgt)))
    return run_inference(torch.nn.Identity(), _loader(_semantic_data()),
                         [SemSegEvaluator(NUM_CLASSES, 255), loss], lambda model, batch: (batch[0], batch[1]))


class PerImage(Evaluator):
    """Feeds a semantic evaluator image by image with names, as the final evaluation does (``process_image``)."""

    def __init__(self, evaluator: SemSegEvaluator) -> None:
        self.evaluator = evaluator

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, probs: torch.Tensor, targets: dict) -> None:
        for p, mask, name in zip(probs, targets["mask"], targets["name"]):
            self.evaluator.process_image(p, mask, name)

    def evaluate(self) -> dict:
        return self.evaluator.evaluate()

    def combine(self) -> None:
        self.evaluator.combine()


def analysis_metrics(pennfudan_root: Path, work: Path) -> dict[str, dict]:
    """The final evaluation's analysis of the same outputs: per-image semantic scores and calibration, and the
    COCO evaluator's per-image rows, error breakdown and score calibration."""
    def semantic(model, batch):
        return torch.softmax(batch[0], 1), {"mask": list(batch[1]), "name": [f"im{int(i)}" for i in batch[2]]}

    per_image = run_inference(torch.nn.Identity(), _loader(_semantic_data()), PerImage(SemSegEvaluator(NUM_CLASSES, 255)),
                              semantic)
    coco = coco_metrics(pennfudan_root, work, analyze=True)
    return {"semantic": {k: per_image[k] for k in ("per_image", "calibration")},
            "coco": {k: coco[k] for k in ("per_image", "calibration", "errors/segm", "errors/bbox")}}


def coco_metrics(pennfudan_root: Path, work: Path, analyze: bool = False) -> dict[str, float]:
    """Detections made from the ground truth, moved, rescored and some dropped (deterministic per image)."""
    paths = convert_pennfudan(pennfudan_root, work / "coco", seed=0, val=2, test=3)  # train: 7 images
    dataset = CocoInstanceDataset(paths["train"], pennfudan_root)

    def detections(model, batch):
        images, targets = batch
        outputs = []
        for target in targets:
            g = torch.Generator().manual_seed(int(target["image_id"]))
            n = len(target["labels"])
            keep = torch.rand(n, generator=g) > 0.2
            masks = torch.roll(target["masks"], shifts=int(torch.randint(-3, 4, (1,), generator=g)), dims=2)[keep]
            outputs.append({"boxes": target["boxes"][keep] + 2.0, "labels": target["labels"][keep],
                            "scores": torch.rand(n, generator=g)[keep], "masks": masks[:, None].float()})
        return outputs, targets

    evaluator = COCOEvaluator(dataset.coco, dataset.category_of, analyze=analyze)
    return run_inference(torch.nn.Identity(), _loader(dataset, collate_instances), evaluator, detections)


def both(pennfudan_root: Path, work: Path) -> dict[str, dict[str, float]]:
    metrics = {"semantic": semantic_metrics(), "coco": coco_metrics(pennfudan_root, work)}
    for values in metrics.values():
        values.pop("time/s_per_image")
    return metrics


if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    distributed.init(torch.device("cpu"), timeout_s=60)
    work = out / f"work{distributed.rank()}"
    result = both(root, work)
    result["shards"] = distributed.all_gather(list(distributed.shard(7)))
    result["analysis"] = analysis_metrics(root, out / f"analysis{distributed.rank()}")
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(result, default=float))
    distributed.shutdown()
