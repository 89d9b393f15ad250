"""segmentation-models-pytorch UNet with a ResNet encoder, with weights only from where the user says."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from seg_ext.errors import ArgumentError, WeightsError
from seg_ext.models.weights import RESNET18_URL, load_into, load_state_dict_file

logger = logging.getLogger(__name__)


_SMP_UNET: type | None = None


def _smp_unet_class() -> type:
    """smp's ``Unet`` with the project's capability flags declared (smp is imported on first use: it is slow)."""
    global _SMP_UNET
    if _SMP_UNET is None:
        import segmentation_models_pytorch as smp

        class SmpUNet(smp.Unet):
            """smp's Unet. bf16 autocast bends this network's gradient more than the engine accepts (cosine 0.975
            to fp32's in the cpu_throughput benchmark; the hand-written models stay above 0.998), so
            ``train.amp=auto`` keeps it in fp32 on the CPU; models holding it (dual_unet with an encoder) inherit
            this."""

            fitted_by_counting = False
            bf16_safe = False
            size_multiple = 32  # the ResNet encoder halves the size five times

        _SMP_UNET = SmpUNet
    return _SMP_UNET


def smp_unet(
    num_classes: int,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    freeze_encoder: bool = False,
    in_channels: int = 3,
    image_size: tuple[int, int] | None = None,
) -> nn.Module:
    """smp ``Unet`` with a ResNet encoder.

    Args:
        encoder_weights: ``None`` (random init), ``"imagenet"`` (smp's cache, or the Hugging Face hub when
            online: asked for by name), or the path of a torchvision-format ResNet state dict (``fc.*`` dropped).
        freeze_encoder: keep the encoder's weights and batch-norm statistics fixed.
        image_size: the (H, W) the model will see; both must be multiples of 32.

    Shape:
        input (N, in_channels, H, W) -> logits (N, num_classes, H, W); H and W multiples of 32.
    """
    import segmentation_models_pytorch as smp

    if image_size is not None and any(int(s) % 32 for s in image_size):
        raise ArgumentError("image_size", f"is {list(image_size)}; the smp UNet needs height and width that are multiples of 32")
    if encoder_name not in smp.encoders.get_encoder_names():
        raise ArgumentError("encoder_name", f"is {encoder_name!r}; expected an smp encoder like resnet18")
    kwargs = dict(encoder_name=encoder_name, in_channels=in_channels, classes=num_classes)
    if encoder_weights == "imagenet":
        logger.info("encoder %s: ImageNet weights asked for by name; from smp's cache or the Hugging Face hub", encoder_name)
        try:
            model = _smp_unet_class()(encoder_weights="imagenet", **kwargs)
        except Exception as exc:  # the hub client raises many types when offline
            raise WeightsError(
                f"could not get ImageNet weights for {encoder_name} from smp's cache or the Hugging Face hub "
                f"({exc.__class__.__name__}); without network, download {RESNET18_URL} on another machine and set "
                "model.encoder_weights=/path/to/resnet18-f37072fd.pth"
            ) from None
    else:
        model = _smp_unet_class()(encoder_weights=None, **kwargs)
        if encoder_weights:
            path = Path(str(encoder_weights)).expanduser()
            what = f"a torchvision-format {encoder_name} state dict (like {RESNET18_URL.rsplit('/', 1)[1]})"
            load_into(model.encoder, load_state_dict_file(path, what), path, what, drop_prefixes=("fc.",))
            logger.info("encoder %s: weights from %s", encoder_name, path)
    if freeze_encoder:
        model.freeze_encoder()
    return model
