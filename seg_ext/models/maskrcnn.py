"""torchvision Mask R-CNN with a configurable backbone; pretrained weights only when asked for.

Backbones: ``resnet18_fpn`` (light, for CPUs), ``resnet50_fpn`` (torchvision's v1) and ``resnet50_fpn_v2``
(torchvision's improved v2). Weights:

* ``weights``: the whole detector: ``coco`` (torchvision's COCO weights, by name: from torch's cache, or downloaded
  when online) or the path of a Mask R-CNN state dict. The box and mask predictors are replaced when the number
  of classes differs, as torchvision's fine-tuning tutorial does.
* ``backbone_weights``: the ResNet only: ``imagenet`` (by name) or the path of a torchvision ResNet state dict.

With nothing pretrained every layer trains and the backbone uses ordinary batch norm (or group norm with
``norm: group``, better for small batches); with pretrained weights batch norm is frozen and 3 stages train,
torchvision's defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from seg_ext.errors import ArgumentError, WeightsError
from seg_ext.models.weights import load_into, load_state_dict_file

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18_fpn", "resnet50_fpn", "resnet50_fpn_v2")
NORMS = ("auto", "batch", "frozen", "group")


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen":
        from torchvision.ops import misc as misc_nn_ops

        return misc_nn_ops.FrozenBatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(32, channels)
    return nn.BatchNorm2d


def _fetch(weights_enum: Any, key: str) -> dict[str, torch.Tensor]:
    """State dict of a torchvision weights enum from torch's cache, downloading when online; a clear error offline."""
    url = weights_enum.url
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib raises many types when offline
        raise WeightsError(
            f"could not get {weights_enum} from torch's cache or {url} ({exc.__class__.__name__}); without network, "
            f"download that file on another machine and set {key}=/path/to/{url.rsplit('/', 1)[1]}"
        ) from None


def _load_detector(model: MaskRCNN, state: dict[str, torch.Tensor], source: str, num_classes: int) -> None:
    """Load a whole-detector state dict; predictors whose class count differs keep their fresh init."""
    own = model.state_dict()
    predictor = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")
    mismatched = [k for k in state if k.startswith(predictor) and k in own and state[k].shape != own[k].shape]
    if mismatched:
        logger.info("%s: box and mask predictors re-initialised for %d classes", source, num_classes)
        state = {k: v for k, v in state.items() if not k.startswith(predictor)}
        state.update({k: v for k, v in own.items() if k.startswith(predictor)})
    load_into(model, state, source, "a torchvision Mask R-CNN state dict of the same backbone")


def maskrcnn(
    num_classes: int,
    backbone: str = "resnet18_fpn",
    weights: str | None = None,
    backbone_weights: str | None = None,
    norm: str = "auto",
    trainable_backbone_layers: int | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    detections_per_img: int = 100,
    box_batch_size_per_image: int = 512,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    box_score_thresh: float = 0.05,
) -> MaskRCNN:
    """Build a Mask R-CNN. ``num_classes`` counts the background.

    The last four arguments are torchvision's, with its defaults: sampled RoIs per image for the box and mask
    heads, proposals kept after the RPN's NMS in training and testing, and the lowest score kept. Smaller values
    make training and inference much cheaper on a CPU (the mask head runs once per positive RoI).

    Shape:
        train: ``model(images, targets)`` -> dict of losses; eval: ``model(images)`` -> list of dicts with
        ``boxes`` (N, 4), ``labels`` (N,), ``scores`` (N,), ``masks`` (N, 1, H, W) probabilities, in the input
        images' pixels.
    """
    # torchvision (and the torch._dynamo it pulls in, about 1.5 s) is imported here: runs of the other methods
    # start without it
    from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

    if backbone not in BACKBONES:
        raise ArgumentError("backbone", f"is {backbone!r}; expected one of: {', '.join(BACKBONES)}")
    if norm not in NORMS:
        raise ArgumentError("norm", f"is {norm!r}; expected one of: {', '.join(NORMS)}")
    if weights not in (None, "coco") and not Path(str(weights)).expanduser().suffix:
        raise ArgumentError("weights", f"is {weights!r}; expected null, coco, or the path of a .pth file")
    if weights == "coco" and backbone == "resnet18_fpn":
        raise ArgumentError("weights", "is 'coco' but torchvision has no COCO Mask R-CNN with resnet18_fpn; use resnet50_fpn(_v2) or backbone_weights")
    if weights is not None and backbone_weights is not None:
        raise ArgumentError("backbone_weights", "must be null when weights is set: whole-detector weights include the backbone")
    pretrained = weights is not None or backbone_weights is not None
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if pretrained else 5
    if not 0 <= trainable_backbone_layers <= 5:
        raise ArgumentError("trainable_backbone_layers", f"is {trainable_backbone_layers}; expected 0..5")
    sizes = dict(
        min_size=min_size, max_size=max_size, box_detections_per_img=detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test, box_score_thresh=box_score_thresh,
        rpn_pre_nms_top_n_train=max(rpn_post_nms_top_n_train, 1), rpn_pre_nms_top_n_test=max(rpn_post_nms_top_n_test, 1),
    )

    if backbone == "resnet50_fpn_v2":
        if norm not in ("auto", "batch"):
            raise ArgumentError("norm", "must be auto or batch for resnet50_fpn_v2 (torchvision's builder fixes it)")
        if backbone_weights is not None:
            raise ArgumentError("backbone_weights", "is not supported for resnet50_fpn_v2; use model.weights")
        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes,
                                         trainable_backbone_layers=trainable_backbone_layers if pretrained else None, **sizes)
        coco_enum = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
    else:
        if norm == "auto":
            norm = "frozen" if pretrained else "batch"
        resnet_fn, imagenet_enum = (
            (resnet18, ResNet18_Weights.IMAGENET1K_V1) if backbone == "resnet18_fpn" else (resnet50, ResNet50_Weights.IMAGENET1K_V1)
        )
        body = resnet_fn(weights=None, norm_layer=_norm_layer(norm))
        if backbone_weights is not None:
            what = f"a torchvision-format {backbone[:-4]} state dict"
            if backbone_weights == "imagenet":
                state, source = _fetch(imagenet_enum, "model.backbone_weights"), str(imagenet_enum)
            else:
                source = str(Path(backbone_weights).expanduser())
                state = load_state_dict_file(source, what)
            # the classifier is not used by the detector: take it from the file when there, else keep ours
            own_fc = {k: v for k, v in body.state_dict().items() if k.startswith("fc.")}
            load_into(body, {**own_fc, **state}, source, what)
        model = MaskRCNN(_resnet_fpn_extractor(body, trainable_backbone_layers), num_classes=num_classes, **sizes)
        coco_enum = MaskRCNN_ResNet50_FPN_Weights.COCO_V1

    if weights is not None:
        if weights == "coco":
            state, source = _fetch(coco_enum, "model.weights"), str(coco_enum)
        else:
            source = str(Path(weights).expanduser())
            state = load_state_dict_file(source, "a torchvision Mask R-CNN state dict")
        _load_detector(model, state, source, num_classes)
        if backbone == "resnet50_fpn":
            overwrite_eps(model, 0.0)  # torchvision's v1 COCO weights were trained with eps 0, as its builder sets
    # on CUDA fastest in fp16 autocast without channels_last (172 images/s on an H200; with it 148; docs/gpu.md)
    model.cuda_amp, model.cuda_channels_last = "fp16", False
    return model
