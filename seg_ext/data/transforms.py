"""albumentations pipelines that move image and masks together.

Training: ``RandomResizedCrop`` (scale and aspect ratio from the config; masks resampled with nearest
neighbour, so class ids and the ignore label survive) and ``HorizontalFlip``. Evaluation: a plain resize to the
configured size, no random operation. Both end with ImageNet normalisation and conversion to a tensor.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_COLOUR = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # padding: 0 after normalisation, as prediction pads


def build_transforms(
    image_size: tuple[int, int],
    train: bool,
    crop_scale: tuple[float, float] | None = (0.5, 1.0),
    crop_ratio: tuple[float, float] = (0.75, 4 / 3),
    hflip_prob: float = 0.5,
    normalize: bool = True,
    seed: int | None = None,
) -> A.Compose:
    """The albumentations pipeline for training (random crop + flip) or evaluation (resize only).

    Args:
        image_size: (H, W) of the crop (training) or the resize (evaluation).
        train: whether to build the training pipeline.
        crop_scale, crop_ratio: ``RandomResizedCrop``'s area and aspect-ratio ranges (``crop_scale`` None: no
            crop, the whole image resized as for evaluation); hflip_prob: flip probability.
        normalize: end with ImageNet normalisation and ``ToTensorV2``; without, images stay uint8 HWC (for
            looking at augmented samples).
        seed: seed of the pipeline's random generators (training loaders re-seed it for every sample, see
            ``engine.loader.SeededSamples``).
    """
    h, w = (int(v) for v in image_size)
    if train:
        ops: list[Any] = [
            A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST) if crop_scale is None
            else A.RandomResizedCrop(
                size=(h, w),
                scale=tuple(float(v) for v in crop_scale),
                ratio=tuple(float(v) for v in crop_ratio),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.HorizontalFlip(p=float(hflip_prob)),
        ]
    else:
        ops = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    if normalize:
        ops += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    return A.Compose(ops, seed=seed)


def build_scaled_transforms(
    scale: Any,
    crop_size: tuple[int, int],
    scale_jitter: tuple[float, float] = (1.0, 1.0),
    hflip_prob: float = 0.5,
    fill_mask: int = 255,
    instances: bool = False,
    normalize: bool = True,
    seed: int | None = None,
) -> Any:
    """Training at a chosen scale (``data.resize: scale``): each image scaled keeping its aspect ratio
    (``scale``, a :class:`~seg_ext.data.scale.Scale`), rescaled at random within ``scale_jitter``, then a random
    crop of ``crop_size`` (padded with the mean colour and, in the masks, with ``fill_mask``, where the image is
    smaller; the pad's place is random) and a horizontal flip. ``instances``: call it with ``masks``, ``bboxes``
    (pascal_voc), ``labels`` and ``instance_ids``, as :func:`build_instance_transforms`' result."""
    from seg_ext.data.scale import ScaledPipeline

    h, w = (int(v) for v in crop_size)
    low, high = (float(v) for v in scale_jitter)
    ops: list[Any] = []
    if (low, high) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(low - 1, high - 1), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, area_for_downscale="image", p=1.0))
    ops += [
        A.RandomCrop(h, w, pad_if_needed=True, pad_position="random", border_mode=cv2.BORDER_CONSTANT,
                     fill=MEAN_COLOUR, fill_mask=fill_mask),
        A.HorizontalFlip(p=float(hflip_prob)),
    ]
    if normalize and not instances:
        ops += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels", "instance_ids"], min_area=1.0, clip=True) if instances else None
    return ScaledPipeline(scale, A.Compose(ops, bbox_params=bbox, seed=seed))


def normalize_tensor(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (3, H, W) float image in [0, 1] (what ``Normalize`` + ``ToTensorV2`` give)."""
    return (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo ``Normalize`` + ``ToTensorV2``: a 3xHxW float tensor back to HxWx3 uint8.

    Shape:
        image: (3, H, W) -> (H, W, 3)
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = (image.detach().cpu().float() * std + mean).clamp(0, 1) * 255
    return out.permute(1, 2, 0).round().to(torch.uint8).numpy()


def build_instance_transforms(
    train: bool,
    hflip_prob: float = 0.5,
    scale_jitter: tuple[float, float] = (1.0, 1.0),
    crop_fraction: float = 0.0,
    seed: int | None = None,
) -> A.Compose | None:
    """albumentations pipeline for instance data: flip and scale/crop jitter that keep image, instance masks,
    boxes and labels together. Evaluation gets no transform, so predictions stay in the image's own pixels.

    Call it as ``transform(image=..., masks=[...], bboxes=[...] (pascal_voc), labels=[...], instance_ids=[...])``;
    a box that leaves the picture is dropped with its label and id, and ``instance_ids`` says which masks remain.
    """
    if not train:
        return None
    low, high = (float(v) for v in scale_jitter)
    crop, flip = float(crop_fraction), float(hflip_prob)
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
