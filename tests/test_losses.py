"""weighted_cross_entropy against PyTorch (values and gradients), and class weights on hand-made counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_ext.errors import ConfigError
from seg_ext.losses import class_weights, weighted_cross_entropy


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
def test_equals_pytorch_value_and_gradient(use_weight, ignore_frac):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 7, 5), generator=gen)
    target[torch.rand(target.shape, generator=gen) < ignore_frac] = 255
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64) if use_weight else None

    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = weighted_cross_entropy(ours_in, target, weight, ignore_index=255)
    ref = F.cross_entropy(ref_in, target, weight=weight, ignore_index=255)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_other_reductions_equal_pytorch(reduction):
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, :] = 255
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    ours = weighted_cross_entropy(logits, target, weight, 255, reduction=reduction)
    ref = F.cross_entropy(logits, target, weight=weight, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_all_ignored_is_nan_like_pytorch():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.full((1, 2, 2), 255)
    assert math.isnan(weighted_cross_entropy(logits, target).item())
    assert math.isnan(F.cross_entropy(logits, target, ignore_index=255).item())


def test_class_weights_by_hand():
    counts = np.array([600, 300, 100, 0])
    assert class_weights(counts, "none") is None
    inv = class_weights(counts, "inverse")
    # total 1000 over 4 classes: w_c = 1000 / (4 * n_c); absent class 0
    torch.testing.assert_close(inv, torch.tensor([1000 / 2400, 1000 / 1200, 1000 / 400, 0.0]))
    med = class_weights(counts, "median")
    # frequencies of present classes 0.6, 0.3, 0.1: median 0.3
    torch.testing.assert_close(med, torch.tensor([0.5, 1.0, 3.0, 0.0]))
    with pytest.raises(ConfigError, match="loss.class_weights"):
        class_weights(counts, "sqrt")
