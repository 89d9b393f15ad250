"""Every semantic model and every instance method through the same contract (tests/contracts.py)."""

from __future__ import annotations

from contracts import InstanceMethodContract, SemanticModelContract


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
