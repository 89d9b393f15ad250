"""Every semantic model, every method, every dataset format and every evaluator through the same contract
(tests/contracts.py)."""

from __future__ import annotations

import pytest
import torch

from contracts import (
    EvaluatorContract, FormatContract, InstanceMethodContract, SemanticEvaluatorContract, SemanticModelContract,
)


class TestUNet(SemanticModelContract):
    block = {"name": "unet", "base_width": 4, "depth": 2}


class TestUNetWithoutBatchNorm(SemanticModelContract):
    block = {"name": "unet", "base_width": 4, "depth": 2, "batch_norm": False}


class TestBaseConv(SemanticModelContract):
    block = {"name": "baseconv"}


class TestSmpUNet(SemanticModelContract):
    block = {"name": "smp_unet"}


class TestPixelFrequencyBaseline(SemanticModelContract):
    block = {"name": "baseline"}


class TestMaskRCNN(InstanceMethodContract):
    method = "maskrcnn"
    opts = ["model.min_size=96", "model.max_size=128", "model.detections_per_img=20"]


class TestWatershed(InstanceMethodContract):
    method = "watershed"
    opts = ["watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2"]


class TestFolderFormat(FormatContract):
    format = "folder"

    @pytest.fixture
    def root(self, scenes_root):
        return scenes_root


class TestStanfordFormat(FormatContract):
    format = "stanford"

    @pytest.fixture
    def root(self, stanford_root):
        return stanford_root


class TestPennFudanFormat(FormatContract):
    format = "pennfudan"

    @pytest.fixture
    def root(self, pennfudan_root):
        return pennfudan_root


class TestSyntheticFormat(FormatContract):
    format = "synthetic"


class TestCocoFormat(FormatContract):
    format = "coco"

    @pytest.fixture
    def root(self, pennfudan_root, tmp_path_factory):
        """The images of a COCO dataset (Penn-Fudan's, converted), in a folder of no other layout."""
        from seg_ext.data.pennfudan import convert_pennfudan

        root = tmp_path_factory.mktemp("coco_format")
        (root / "PNGImages").symlink_to(pennfudan_root / "PNGImages")
        self._paths = convert_pennfudan(pennfudan_root, root / "annotations", seed=0, val=2, test=2)
        return root

    def files(self, root):
        return {s: str(p) for s, p in self._paths.items()}


class TestSemSegEvaluator(SemanticEvaluatorContract):
    evaluator = "semseg"
    best = "mIoU"


class TestCOCOEvaluator(EvaluatorContract):
    evaluator = "coco"
    best = "segm/AP"

    @pytest.fixture(autouse=True)
    def _data(self, pennfudan_root, tmp_path_factory):
        from seg_ext.data.coco import CocoInstanceDataset
        from seg_ext.data.pennfudan import convert_pennfudan

        paths = convert_pennfudan(pennfudan_root, tmp_path_factory.mktemp("coco_eval"), seed=0, val=2, test=2)
        self.dataset = CocoInstanceDataset(paths["train"], pennfudan_root)

    def context(self):
        return {"coco_gt": self.dataset.coco, "category_of": self.dataset.category_of, "mask_threshold": 0.5,
                "backend": "pycocotools", "num_classes": 2}

    def batches(self, perfect):
        out = []
        for i in range(len(self.dataset)):
            _, target = self.dataset[i]
            masks = target["masks"][:, None].float()
            if not perfect:
                masks = masks[:, :, :, torch.arange(masks.shape[-1]).roll(7)]  # shifted: a worse overlap
            out.append(([{"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(masks)),
                          "masks": masks}], [target]))
        return out
