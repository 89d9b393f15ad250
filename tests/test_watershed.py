"""The watershed method: energy targets and weights by hand, the loss, touching and overlapping shapes recovered
from oracle targets, and the oracle reaching its ceiling on a generated Penn-Fudan-layout dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import call_tool
from seg_ext.losses import watershed_loss, weighted_cross_entropy
from seg_ext.postprocess import expected_energy, full_resolution_labels, instances_from_labels, watershed_instances
from seg_ext.data.energy import energy_targets, quantize

DWT_EDGES = [0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 37, 45, 54]


def test_quantize_uses_lower_bin_edges():
    d = np.array([0, 0.5, 1, 4.9, 5, 6.9, 7, 53, 54, 500])
    np.testing.assert_array_equal(quantize(d, DWT_EDGES), [0, 0, 1, 4, 5, 5, 6, 14, 15, 15])


def test_energy_targets_of_a_square_by_hand():
    masks = np.zeros((1, 9, 9), np.uint8)
    masks[0, 1:8, 1:8] = 1  # 7x7 square: rings at distance 0 (edge), 1, 2 and the centre at 3
    fg, level, weight = energy_targets(masks, DWT_EDGES, level_weights=(3, 3, 3, 2), area_weighting=False)
    assert fg.sum() == 49 and fg[0].sum() == 0
    expected = np.zeros((9, 9), np.int64)
    for ring in range(4):
        expected[1 + ring : 8 - ring, 1 + ring : 8 - ring] = ring
    np.testing.assert_array_equal(level, expected)
    assert weight[1, 1] == 3 and weight[4, 4] == 2 and weight[0, 0] == 0  # low levels weighted up
    _, _, weighted = energy_targets(masks, DWT_EDGES, level_weights=(3, 3, 3, 2), area_weighting=True)
    np.testing.assert_allclose(weighted[fg.astype(bool)], weight[fg.astype(bool)] / 7.0)  # 1/sqrt(49)


def test_touching_instances_keep_their_own_boundaries():
    masks = np.zeros((2, 10, 20), np.uint8)
    masks[0, 2:9, 2:10] = 1
    masks[1, 2:9, 10:18] = 1  # touches the first along a column
    _, level, _ = energy_targets(masks, DWT_EDGES)
    assert level[5, 9] == 0 and level[5, 10] == 0  # both sides of the shared edge are boundary


def test_small_instances_weigh_more_per_pixel():
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 2:6, 2:6] = 1  # 16 px
    masks[1, 10:38, 10:38] = 1  # 784 px
    _, _, weight = energy_targets(masks, DWT_EDGES, level_weights=(1,), area_weighting=True)
    assert weight[3, 3] == pytest.approx(1 / 4) and weight[20, 20] == pytest.approx(1 / 28)


def _one_hot_outputs(masks):
    fg, level, _ = energy_targets(masks, DWT_EDGES)
    return fg.astype(np.float32), level.astype(np.float32)


def _best_iou(pred_labels, mask):
    ious = [((pred_labels == i) & mask).sum() / ((pred_labels == i) | mask).sum() for i in range(1, pred_labels.max() + 1)]
    return max(ious) if ious else 0.0


@pytest.mark.parametrize("shape", ["touching_squares", "overlapping_discs", "three_in_a_row"])
def test_oracle_recovers_touching_and_overlapping_shapes(shape):
    h, w = 60, 90
    yy, xx = np.mgrid[0:h, 0:w]
    if shape == "touching_squares":
        a = (yy >= 10) & (yy < 50) & (xx >= 5) & (xx < 45)
        b = (yy >= 15) & (yy < 55) & (xx >= 45) & (xx < 85)
        parts = [a, b]
    elif shape == "overlapping_discs":  # the second is drawn over the first, as a label map stores them
        a = (yy - 30) ** 2 + (xx - 30) ** 2 < 20**2
        b = (yy - 30) ** 2 + (xx - 58) ** 2 < 20**2
        parts = [a & ~b, b]
    else:
        parts = [(yy >= 10) & (yy < 50) & (xx >= 5 + 28 * k) & (xx < 5 + 28 * (k + 1)) for k in range(3)]
    masks = np.stack(parts).astype(np.uint8)
    fg, energy = _one_hot_outputs(masks)
    labels, scores = watershed_instances(fg, energy, marker_level=2, min_marker_area=5, min_instance_area=20)
    assert labels.max() == len(parts) and len(scores) == len(parts)
    for part in parts:
        assert _best_iou(labels, part) > 0.95
    assert np.all(scores > 0.9)


def _two_peaks(saddle_depth):
    """Two square bodies joined in one foreground blob (no zero-energy gap between them, as a network's smooth
    energy joins two people standing close), each with a peak of 8 levels; the energy between them dips to
    8 - saddle_depth."""
    h, w = 60, 100
    yy, xx = np.mgrid[0:h, 0:w]
    fg = ((yy >= 10) & (yy < 50) & (xx >= 10) & (xx < 90)).astype(np.float32)
    cone = np.maximum(8 - np.hypot(yy - 30, xx - 30) / 2.5, 8 - np.hypot(yy - 30, xx - 70) / 2.5)
    energy = np.where(fg > 0, np.maximum(cone, 8 - saddle_depth), 0).astype(np.float32)
    return fg, energy, (xx < 50) & (fg > 0), (xx >= 50) & (fg > 0)


def test_split_dynamic_splits_two_peaks_joined_above_the_cut_and_keeps_a_shallow_dip_whole():
    fg, energy, left, right = _two_peaks(saddle_depth=5)
    labels, _ = watershed_instances(fg, energy, marker_level=1)
    assert labels.max() == 1  # one connected marker: merged without splitting
    labels, scores = watershed_instances(fg, energy, marker_level=1, split_dynamic=3)
    assert labels.max() == 2 and len(scores) == 2
    assert _best_iou(labels, left) > 0.9 and _best_iou(labels, right) > 0.9
    # a dip of 2 levels (a neck between head and body) is not a split at dynamic 3
    fg, energy, _, _ = _two_peaks(saddle_depth=2)
    labels, _ = watershed_instances(fg, energy, marker_level=1, split_dynamic=3)
    assert labels.max() == 1


def test_scores_fall_with_a_fragments_size_and_peak_energy():
    h, w = 80, 120
    yy, xx = np.mgrid[0:h, 0:w]
    big = (yy >= 5) & (yy < 75) & (xx >= 5) & (xx < 45)  # a person: 2800 px, peak 9
    small = (yy >= 30) & (yy < 40) & (xx >= 80) & (xx < 88)  # a fragment: 80 px, peak 2
    fg = (big | small).astype(np.float32) * 0.9
    energy = np.where(big, 9.0, np.where(small, 2.0, 0.0)).astype(np.float32)
    labels, scores = watershed_instances(fg, energy, marker_level=1, min_instance_area=20)
    by_mask = {bool(big[labels == i].all()): s for i, s in zip(range(1, 3), scores)}
    assert by_mask[True] == pytest.approx(0.9) and by_mask[False] == pytest.approx(0.9)  # both saturate: a tie
    labels, scores = watershed_instances(fg, energy, marker_level=1, min_instance_area=20, score_energy=8,
                                         score_area=1000)
    by_mask = {bool(big[labels == i].all()): s for i, s in zip(range(1, 3), scores)}
    assert by_mask[True] == pytest.approx(0.9)
    assert by_mask[False] == pytest.approx(0.9 * (2 / 8) * np.sqrt(80 / 1000), rel=1e-5)


def test_full_resolution_outlines_follow_the_upsampled_foreground():
    # two discs drawn at 256x256; the network sees them at 32x32 (area-averaged: a soft foreground)
    size, small = 256, 32
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    discs = [(yy - 128) ** 2 + (xx - 70) ** 2 < 50**2, (yy - 128) ** 2 + (xx - 186) ** 2 < 50**2]
    factor = size // small
    fg = (discs[0] | discs[1]).reshape(small, factor, small, factor).mean((1, 3)).astype(np.float32)
    labels = np.zeros((small, small), np.int32)
    labels[fg >= 0.5] = 1
    labels[(fg >= 0.5) & (np.arange(small)[None, :] >= small // 2)] = 2
    scores = np.ones(2, np.float32)

    def ious(masks):
        return [max(((m > 0) & d).sum() / ((m > 0) | d).sum() for m in masks) for d in discs]

    nearest = instances_from_labels(labels, scores, (size, size))["masks"].numpy()
    full = instances_from_labels(labels, scores, (size, size), fg, 0.5)["masks"].numpy()
    assert len(full) == 2 and not (full[0] & full[1]).any()
    assert min(ious(full)) > 0.97 > max(ious(nearest))  # a staircase of 8-pixel steps against a smooth outline
    # pixels far from every instance stay background even where the foreground is high (a dropped fragment)
    far = fg.copy()
    far[0:3, 0:3] = 1.0
    assert full_resolution_labels(labels, far, (size, size))[:16, :16].max() == 0


def test_expected_energy():
    prob = np.zeros((4, 2, 2), np.float32)
    prob[1, 0, 0] = prob[3, 0, 0] = 0.5
    prob[0, 1:, :] = prob[0, 0, 1] = 1
    np.testing.assert_allclose(expected_energy(prob), [[2.0, 0.0], [0.0, 0.0]])


def test_watershed_loss_by_hand():
    torch.manual_seed(0)
    fg_logits, energy_logits = torch.randn(2, 2, 5, 6), torch.randn(2, 4, 5, 6)
    fg = torch.randint(0, 2, (2, 5, 6))
    level = torch.randint(0, 4, (2, 5, 6))
    weight = torch.rand(2, 5, 6) * fg
    total, parts = watershed_loss(fg_logits, energy_logits, fg, level, weight, 1.0, 0.5)
    ce = torch.nn.functional.cross_entropy(energy_logits, level, reduction="none")
    expected_energy_loss = (ce * weight).sum() / weight.sum()
    expected_fg = torch.nn.functional.cross_entropy(fg_logits, fg)
    assert parts["loss_energy"] == pytest.approx(float(expected_energy_loss), rel=1e-5)
    assert float(total) == pytest.approx(float(expected_fg + 0.5 * expected_energy_loss), rel=1e-5)
    no_fg, parts = watershed_loss(fg_logits, energy_logits, torch.zeros_like(fg), level, torch.zeros_like(weight))
    assert parts["loss_energy"] == 0.0 and float(no_fg) == pytest.approx(float(weighted_cross_entropy(fg_logits, torch.zeros_like(fg))))


def test_oracle_mode_reaches_its_ceiling(pennfudan_root, tmp_path, capsys):
    out = tmp_path / "oracle"
    code = call_tool("train_instance", ["--method", "watershed", "--oracle", "--data-root", pennfudan_root,
                                        "--output-dir", out, "--opts", "data.val=2", "data.test=4",
                                        "watershed.input_size=[256,256]", "watershed.min_instance_area=20"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["segm/AP"] >= 90 and metrics["val"]["segm/AP"] >= 90
    assert (out / "results_test_segm.json").is_file() and (out / "report.md").is_file()


def test_area_thresholds_are_in_the_maps_pixels_whatever_the_photos_size():
    """docs/training.md: the watershed's areas are pixels of the maps it runs on. The same maps of a 20x20 and a
    6x6 person give the same kept instances for a photo of 60x90 or of 600x900 (10x the side, 100x the area)."""
    from seg_ext.methods import WatershedMethod, build_method

    h, w = 60, 90
    yy, xx = np.mgrid[0:h, 0:w]
    big = (yy >= 10) & (yy < 30) & (xx >= 10) & (xx < 30)  # 400 map pixels
    small = (yy >= 40) & (yy < 46) & (xx >= 60) & (xx < 66)  # 36 map pixels: under min_instance_area 50
    fg, energy = _one_hot_outputs(np.stack([big, small]).astype(np.uint8))
    cfg = WatershedMethod.defaults()
    cfg["watershed"].update(marker_level=2, min_marker_area=5)
    method = build_method(cfg)
    for size in ((h, w), (10 * h, 10 * w)):
        out = method.instances(fg, energy, size)
        assert len(out["scores"]) == 1 and out["masks"].shape[-2:] == size  # only the 400-pixel person is kept
        kept = out["masks"][0].numpy()
        assert abs(int(kept.sum()) - 400 * (size[0] // h) ** 2) <= 0.05 * 400 * (size[0] // h) ** 2
