"""Augmentation keeps image and mask aligned: crops, flips, nearest-neighbour masks, the ignore label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from seg_ext.methods import method_config
from seg_ext.data.transforms import build_transforms, denormalize
from seg_ext.errors import ConfigError

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def transforms_of(cfg, train, normalize=True, seed=None):
    """The pipeline a config asks for (the config is checked when loaded; build_transforms takes plain values)."""
    aug = cfg["augment"]
    return build_transforms(cfg["data"]["image_size"], train, aug["crop_scale"], aug["crop_ratio"], aug["hflip_prob"],
                            normalize=normalize, seed=seed)


def coded_pair(h: int = 90, w: int = 120, seed: int = 0):
    """An image whose colour encodes the mask's class, blocks of several sizes, and an ignore region."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        mask[y : y + rng.integers(8, 40), x : x + rng.integers(8, 40)] = rng.integers(1, 4)
    image = COLOURS[mask]
    mask[:6, :6] = 255  # ignored pixels keep the colour of class 0
    return image, mask


@pytest.mark.parametrize("seed", range(5))
def test_random_crop_and_flip_keep_alignment(seed):
    cfg = method_config("semantic", overrides=["data.image_size=[64,48]", "augment.crop_scale=[0.2,1.0]", "augment.hflip_prob=0.5"])
    transform = transforms_of(cfg, train=True, normalize=False, seed=seed)
    image, mask = coded_pair(seed=seed)
    for _ in range(10):
        out = transform(image=image, mask=mask)
        img, m = out["image"], out["mask"]
        assert img.shape == (64, 48, 3) and m.shape == (64, 48)
        assert set(np.unique(m)) <= {0, 1, 2, 3, 255}  # nearest neighbour: no blended ids
        for c in range(4):
            inner = binary_erosion(m == c, iterations=3)  # away from edges (the image is interpolated there)
            if inner.any():
                np.testing.assert_allclose(img[inner].astype(int), np.broadcast_to(COLOURS[c], img[inner].shape), atol=2)


def test_flip_with_full_crop_is_an_exact_mirror():
    cfg = method_config("semantic", 
        overrides=["data.image_size=[90,120]", "augment.crop_scale=[1.0,1.0]", "augment.crop_ratio=[1.3333333,1.3333334]",
                   "augment.hflip_prob=1.0"]
    )
    image, mask = coded_pair()
    out = transforms_of(cfg, train=True, normalize=False)(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    np.testing.assert_array_equal(out["image"], image[:, ::-1])


def test_eval_transform_is_deterministic_and_normalised():
    cfg = method_config("semantic", overrides=["data.image_size=[32,40]"])
    transform = transforms_of(cfg, train=False)
    image, mask = coded_pair()
    a, b = transform(image=image, mask=mask), transform(image=image, mask=mask)
    assert isinstance(a["image"], torch.Tensor) and a["image"].shape == (3, 32, 40)
    torch.testing.assert_close(a["image"], b["image"])
    np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
    # normalisation round trip
    restored = denormalize(a["image"])
    plain = transforms_of(cfg, train=False, normalize=False)(image=image, mask=mask)["image"]
    assert np.abs(restored.astype(int) - plain.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "override, key",
    [("augment.crop_scale=[0.0,1.0]", "augment.crop_scale"), ("augment.hflip_prob=1.5", "augment.hflip_prob"),
     ("data.image_size=[4,4]", "data.image_size"), ("augment.crop_ratio=[1]", "augment.crop_ratio")],
)
def test_bad_augment_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        transforms_of(method_config("semantic", overrides=[override]), train=True)


def test_crop_scale_null_trains_on_the_whole_image_resized():
    cfg = method_config("semantic", overrides=["augment.crop_scale=null", "augment.hflip_prob=0", "data.image_size=[48,64]"])
    assert cfg["augment"]["crop_scale"] is None
    image, mask = coded_pair()
    plain = transforms_of(cfg, train=False, normalize=False)(image=image, mask=mask)
    for seed in range(3):  # nothing random is left but the flip (off here)
        out = transforms_of(cfg, train=True, normalize=False, seed=seed)(image=image, mask=mask)
        assert np.array_equal(out["image"], plain["image"]) and np.array_equal(out["mask"], plain["mask"])
    with pytest.raises(ConfigError, match="or null for no crop"):
        method_config("semantic", overrides=["augment.crop_scale=[0,1]"])
