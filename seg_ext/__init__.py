"""seg_ext: semantic and instance segmentation on PyTorch, torchvision and segmentation-models-pytorch."""

import os

# albumentations asks the package registry for its latest version on import; we never want that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.2.0"
