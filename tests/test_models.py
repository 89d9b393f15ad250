"""Model output shapes, the builder's errors, the frequency baseline, and encoder weights from a local file."""

from __future__ import annotations

import pytest
import torch
import torchvision

from seg_ext.errors import ConfigError, WeightsError
from seg_ext.models import build_model
from seg_ext.models.baseline import PixelFrequencyBaseline
from seg_ext.models.unet import UNet


@pytest.mark.parametrize(
    "block",
    [
        {"name": "baseline"},
        {"name": "baseconv", "width": 8, "depth": 2},
        {"name": "unet", "base_width": 8, "depth": 3},
        {"name": "unet", "base_width": 8, "depth": 2, "batch_norm": False},
        {"name": "smp_unet"},
    ],
)
def test_output_shapes(block):
    model = build_model(block, num_classes=5, image_size=(64, 96))
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5, 64, 96)


@pytest.mark.parametrize("size", [(33, 47), (64, 65), (17, 17)])
def test_unet_takes_any_size(size):
    model = UNet(num_classes=3, base_width=4, depth=3).eval()
    assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_unet_without_batch_norm_has_none():
    model = UNet(num_classes=3, base_width=4, depth=2, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_builder_errors_list_the_options():
    with pytest.raises(ConfigError, match=r"'model\.name' is 'unte'; expected one of: baseline, baseconv, unet, smp_unet"):
        build_model({"name": "unte"}, num_classes=2)
    with pytest.raises(ConfigError, match=r"'model\.widht' is not an argument of model 'unet'; expected one of: .*base_width"):
        build_model({"name": "unet", "widht": 3}, num_classes=2)
    with pytest.raises(ConfigError, match=r"data\.image_size.*multiples of 32"):
        build_model({"name": "smp_unet"}, num_classes=2, image_size=(100, 100))


def test_baseline_counts_per_pixel_frequencies():
    # top row always class 0; bottom row class 1 in 3 of 4 masks, class 2 in the other; one ignored pixel
    masks = torch.zeros(4, 2, 3, dtype=torch.long)
    masks[:3, 1] = 1
    masks[3, 1] = 2
    masks[0, 0, 0] = 255
    model = PixelFrequencyBaseline(num_classes=3, image_size=(2, 3), pseudo_count=0.0)
    model.fit([masks[:2], masks[2:]])
    freq = model.frequencies()
    torch.testing.assert_close(freq[:, 0, 1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(freq[:, 0, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # 3 of 3 counted
    torch.testing.assert_close(freq[:, 1, 2], torch.tensor([0.0, 0.75, 0.25], dtype=torch.float64))
    out = model(torch.zeros(5, 3, 2, 3))
    assert out.shape == (5, 3, 2, 3)
    torch.testing.assert_close(torch.softmax(out[4], 0).double(), freq, atol=1e-6, rtol=0)
    assert model(torch.zeros(1, 3, 4, 6)).shape == (1, 3, 4, 6)  # other sizes: resized


def test_smp_encoder_loads_a_torchvision_state_dict(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # with fc.*, as torchvision's files have
    model = build_model({"name": "smp_unet", "encoder_weights": str(path)}, num_classes=2)
    torch.testing.assert_close(model.encoder.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.encoder.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_smp_freeze_encoder():
    model = build_model({"name": "smp_unet", "freeze_encoder": True}, num_classes=2)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.train()
    assert not model.encoder.bn1.training  # frozen batch-norm statistics stay fixed


def test_smp_bad_weight_files(tmp_path):
    with pytest.raises(WeightsError, match=r"missing\.pth does not exist; expected a torchvision-format resnet18 state dict"):
        build_model({"name": "smp_unet", "encoder_weights": str(tmp_path / "missing.pth")}, num_classes=2)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*junk\.pth"):
        build_model({"name": "smp_unet", "encoder_weights": str(junk)}, num_classes=2)
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(WeightsError, match=r"r34\.pth does not fit \(unexpected key 'layer1\.2"):
        build_model({"name": "smp_unet", "encoder_weights": str(other)}, num_classes=2)


def test_smp_imagenet_offline_says_how_to_supply_the_file(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth.*model\.encoder_weights=/path/to/"):
        build_model({"name": "smp_unet", "encoder_weights": "imagenet"}, num_classes=2)


def test_maskrcnn_weights_from_local_files(tmp_path):
    from seg_ext.models.maskrcnn import maskrcnn

    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    model = maskrcnn(2, backbone="resnet18_fpn", backbone_weights=str(tmp_path / "r18.pth"), min_size=64, max_size=96)
    torch.testing.assert_close(model.backbone.body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert isinstance(model.backbone.body.bn1, torchvision.ops.FrozenBatchNorm2d)  # pretrained: frozen statistics
    assert not model.backbone.body.conv1.weight.requires_grad  # 3 trainable stages by default

    # a whole detector trained for 5 classes, loaded into a 2-class one: predictors start fresh, the rest is kept
    other = maskrcnn(5, backbone="resnet18_fpn", norm="frozen")
    torch.save(other.state_dict(), tmp_path / "det.pth")
    model = maskrcnn(2, backbone="resnet18_fpn", weights=str(tmp_path / "det.pth"), norm="frozen")
    torch.testing.assert_close(model.rpn.head.conv[0][0].weight, other.rpn.head.conv[0][0].weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2


def test_maskrcnn_coco_weights_offline_say_which_file(monkeypatch, tmp_path):
    import urllib.error

    from seg_ext.models.maskrcnn import maskrcnn

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import torchvision.models._api as weights_api

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)  # what WeightsEnum.get_state_dict calls
    with pytest.raises(WeightsError, match=r"maskrcnn_resnet50_fpn_coco-bf2d0c1e\.pth.*model\.weights=/path/to/"):
        maskrcnn(2, backbone="resnet50_fpn", weights="coco")
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth.*model\.backbone_weights=/path/to/"):
        maskrcnn(2, backbone="resnet18_fpn", backbone_weights="imagenet")


@pytest.mark.slow  # a Mask R-CNN forward of several image sizes, ~5 s: the full tier (the fast tier keeps under 90 s)
def test_maskrcnn_detections_of_an_image_do_not_depend_on_its_batch():
    """torchvision pads a batch to its largest image, which changes group norm's statistics and the features near
    the border: the method runs one image per network call, so an image's detections are the same alone or in a
    batch with a larger image (the evaluation and tools/predict.py then agree whatever the batch)."""
    from seg_ext.methods import MaskRCNNMethod, build_method
    from seg_ext.models.maskrcnn import maskrcnn

    torch.manual_seed(0)
    model = maskrcnn(2, backbone="resnet18_fpn", norm="group", min_size=64, max_size=128).eval()
    method = build_method(MaskRCNNMethod.defaults())
    small, large = torch.rand(3, 70, 50), torch.rand(3, 90, 120)
    with torch.no_grad():
        alone = method.forward(model, [small])[0]
        batched = method.forward(model, [small, large])[0]
    assert len(alone["boxes"]) > 0  # an untrained detector still finds boxes above the 0.05 score threshold
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(batched[key], alone[key], rtol=0, atol=0)
