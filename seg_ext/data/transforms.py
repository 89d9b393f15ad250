"""albumentations pipelines that move image and masks together.

Training: ``RandomResizedCrop`` (scale and aspect ratio from the config; masks resampled with nearest
neighbour, so class ids and the ignore label survive) and ``HorizontalFlip``. Evaluation: a plain resize to the
configured size, no random operation. Both end with ImageNet normalisation and conversion to a tensor.
"""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from seg_ext.config import pair
from seg_ext.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_size_from(cfg: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) of ``data.image_size``."""
    value = cfg["data"]["image_size"]
    if isinstance(value, int):
        value = [value, value]
    h, w = pair(value, "data.image_size")
    if h < 8 or w < 8 or not float(h).is_integer() or not float(w).is_integer():
        raise ConfigError(f"config key 'data.image_size' is {value!r}; expected [height, width] in whole pixels >= 8")
    return int(h), int(w)


def build_transforms(cfg: dict[str, Any], train: bool, normalize: bool = True, seed: int | None = None) -> A.Compose:
    """The albumentations pipeline for training (random crop + flip) or evaluation (resize only).

    Args:
        cfg: the experiment config (``data.image_size`` and the ``augment`` block are read).
        train: whether to build the training pipeline.
        normalize: end with ImageNet normalisation and ``ToTensorV2``; without, images stay uint8 HWC (for
            looking at augmented samples).
        seed: seed of the pipeline's random generators (DataLoader workers re-seed it, see ``seed_worker``).
    """
    h, w = image_size_from(cfg)
    if train:
        aug = cfg["augment"]
        scale = pair(aug["crop_scale"], "augment.crop_scale")
        ratio = pair(aug["crop_ratio"], "augment.crop_ratio")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"config key 'augment.crop_scale' is {list(scale)}; expected 0 < low <= high <= 1")
        if not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"config key 'augment.crop_ratio' is {list(ratio)}; expected 0 < low <= high")
        flip = float(aug["hflip_prob"])
        if not 0 <= flip <= 1:
            raise ConfigError(f"config key 'augment.hflip_prob' is {flip}; expected a probability in [0, 1]")
        ops: list[Any] = [
            A.RandomResizedCrop(
                size=(h, w),
                scale=scale,
                ratio=ratio,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.HorizontalFlip(p=flip),
        ]
    else:
        ops = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    if normalize:
        ops += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    return A.Compose(ops, seed=seed)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo ``Normalize`` + ``ToTensorV2``: a 3xHxW float tensor back to HxWx3 uint8.

    Shape:
        image: (3, H, W) -> (H, W, 3)
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = (image.detach().cpu().float() * std + mean).clamp(0, 1) * 255
    return out.permute(1, 2, 0).round().to(torch.uint8).numpy()


def seed_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's albumentations pipeline its own seed.

    albumentations 2.x keeps its random generators in the pipeline object, which every worker inherits
    identically; without this, all workers would draw the same crops. torch's per-worker seed is derived from
    the loader's generator, so a seeded run draws the same crops every time.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def build_instance_transforms(cfg: dict[str, Any], train: bool, seed: int | None = None) -> A.Compose | None:
    """albumentations pipeline for instance data: flip and scale/crop jitter that keep image, instance masks,
    boxes and labels together. Evaluation gets no transform, so predictions stay in the image's own pixels.

    Call it as ``transform(image=..., masks=[...], bboxes=[...] (pascal_voc), labels=[...], instance_ids=[...])``;
    a box that leaves the picture is dropped with its label and id, and ``instance_ids`` says which masks remain.
    """
    if not train:
        return None
    aug = cfg["augment"]
    flip = float(aug["hflip_prob"])
    if not 0 <= flip <= 1:
        raise ConfigError(f"config key 'augment.hflip_prob' is {flip}; expected a probability in [0, 1]")
    low, high = pair(aug["scale_jitter"], "augment.scale_jitter")
    if not 0 < low <= high:
        raise ConfigError(f"config key 'augment.scale_jitter' is {[low, high]}; expected 0 < low <= high, e.g. [0.8, 1.2]")
    crop = float(aug["crop_fraction"])
    if not 0 <= crop < 0.5:
        raise ConfigError(f"config key 'augment.crop_fraction' is {crop}; expected a fraction in [0, 0.5)")
    ops: list[Any] = []
    if (low, high) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(low - 1, high - 1), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    if crop > 0:
        ops.append(A.RandomCropFromBorders(crop_left=crop, crop_right=crop, crop_top=crop, crop_bottom=crop, p=1.0))
    ops.append(A.HorizontalFlip(p=flip))
    return A.Compose(
        ops,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "instance_ids"], min_area=1.0, clip=True),
        seed=seed,
    )
