"""Instance-segmentation methods: one module per method, all following ``methods.base.InstanceMethod``."""

from seg_ext.methods.base import InstanceMethod
from seg_ext.methods.maskrcnn import MaskRCNNMethod
from seg_ext.methods.watershed import PostProcessing, WatershedMethod

__all__ = ["InstanceMethod", "MaskRCNNMethod", "PostProcessing", "WatershedMethod"]
