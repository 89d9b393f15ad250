"""SemSegEvaluator against sklearn's confusion matrix and a sort-based AP over pooled pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_curve

from seg_ext.evaluation import SemSegEvaluator
from seg_ext.evaluation.semantic import argmax_channels, average_precision_from_histograms

C, IGNORE = 5, 255


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC all-point interpolated AP from a PR curve ordered by increasing recall."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def sort_ap(scores: np.ndarray, positive: np.ndarray) -> float:
    """Every sample its own step, ranked by score (the reference assignment's way)."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    return voc_ap(tp / positive.sum(), tp / (tp + fp))


def tied_sort_ap(scores: np.ndarray, positive: np.ndarray) -> float:
    """Sort-based AP with equal scores as one step (sklearn's PR curve groups ties)."""
    precision, recall, _ = precision_recall_curve(positive, scores)
    return voc_ap(recall[::-1][1:], precision[::-1][1:])


def make_batches(seed: int, scale: float, n_batches: int = 4, ignore_frac: float = 0.1):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        target = rng.integers(0, C, size=(2, 24, 20))
        target[rng.random(target.shape) < ignore_frac] = IGNORE
        signal = np.eye(C)[np.where(target == IGNORE, 0, target)].transpose(0, 3, 1, 2)
        logits = scale * (rng.normal(size=(2, C, 24, 20)) + 1.5 * signal)
        batches.append((torch.tensor(logits, dtype=torch.float32), torch.tensor(target)))
    return batches


def reference(batches):
    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches]).numpy()
    valid = target != IGNORE
    prob = torch.softmax(logits, 1).numpy().transpose(0, 2, 3, 1)[valid]  # (P, C)
    labels = target[valid]
    pred = logits.argmax(1).numpy()[valid]
    return labels, pred, prob


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_matches_sklearn_confusion_and_sort_ap(scale):
    batches = make_batches(0, scale)
    ev = SemSegEvaluator(C, IGNORE, [f"c{i}" for i in range(C)])
    for logits, target in batches:
        ev.process(logits, target)
    labels, pred, prob = reference(batches)

    cm = confusion_matrix(labels, pred, labels=list(range(C)))
    np.testing.assert_array_equal(ev.confusion_matrix(), cm)

    res = ev.evaluate()
    diag = np.diag(cm).astype(float)
    iou = diag / np.maximum(cm.sum(0) + cm.sum(1) - diag, 1)
    for i in range(C):
        assert res[f"IoU/c{i}"] == pytest.approx(100 * iou[i], abs=1e-9)
        assert res[f"AP/c{i}"] == pytest.approx(100 * sort_ap(prob[:, i], labels == i), abs=0.1)
    assert res["mIoU"] == pytest.approx(100 * iou.mean(), abs=1e-9)
    assert res["pixel_acc"] == pytest.approx(100 * diag.sum() / cm.sum())
    assert res["fwIoU"] == pytest.approx(100 * (cm.sum(1) / cm.sum() * iou).sum())
    assert res["mean_acc"] == pytest.approx(100 * np.mean(diag / cm.sum(1)))
    aps = [res[f"AP/c{i}"] for i in range(C)]
    assert res["mAP"] == pytest.approx(np.mean(aps))


def test_saturated_scores_match_tie_aware_sort_ap():
    """Confident networks saturate float32 softmax at exactly 0 or 1: many tied scores."""
    batches = make_batches(1, scale=25.0)
    ev = SemSegEvaluator(C, IGNORE)
    for logits, target in batches:
        ev.process(logits, target)
    labels, _, prob = reference(batches)
    assert (prob == 1.0).mean() > 0.1  # the case is real: many ties at 1.0
    res = ev.evaluate()
    for i in range(C):
        assert res[f"AP/{i}"] == pytest.approx(100 * tied_sort_ap(prob[:, i], labels == i), abs=0.1)


def test_batching_does_not_change_results_and_memory_is_constant():
    batches = make_batches(2, 2.0, n_batches=6)
    one = SemSegEvaluator(C, IGNORE)
    sizes = [t.size for t in (one._confusion, one._all_hist, one._pos_hist)]
    for logits, target in batches:
        one.process(logits, target)
    assert [t.size for t in (one._confusion, one._all_hist, one._pos_hist)] == sizes
    whole = SemSegEvaluator(C, IGNORE)
    whole.process(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    a, b = one.evaluate(), whole.evaluate()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True)


def test_reset_and_perfect_prediction():
    target = torch.randint(0, C, (2, 16, 16))
    logits = 10 * torch.nn.functional.one_hot(target, C).permute(0, 3, 1, 2).float()
    ev = SemSegEvaluator(C, IGNORE)
    ev.process(torch.randn(2, C, 16, 16), torch.randint(0, C, (2, 16, 16)))
    ev.reset()
    ev.process(logits, target)
    res = ev.evaluate()
    assert res["mIoU"] == pytest.approx(100)
    assert res["mAP"] == pytest.approx(100)
    assert res["pixel_acc"] == pytest.approx(100)


def test_absent_class_has_nan_ap_excluded_from_map_and_zero_iou():
    target = torch.randint(0, 2, (1, 8, 8))  # classes 2..4 never appear
    logits = torch.randn(1, C, 8, 8)
    logits[:, 2:] -= 100  # and are never predicted
    ev = SemSegEvaluator(C, IGNORE)
    ev.process(logits, target)
    res = ev.evaluate()
    assert math.isnan(res["AP/3"])
    assert res["IoU/3"] == 0.0
    assert res["mAP"] == pytest.approx((res["AP/0"] + res["AP/1"]) / 2)


def test_histogram_ap_by_hand():
    # scores in 3 bins (low..high); positives 1, 0, 2; negatives 1, 2, 0
    # ranking high -> low: bin2 (2 pos) p=1 r=0.5; bin1 (2 neg) p=0.5 r=0.5; bin0 (1 pos, 1 neg) p=0.5 r=0.75... over 3 positives
    pos, neg = np.array([1, 0, 2]), np.array([1, 2, 0])
    # recall steps: 2/3 at precision 1, then 1/3 at precision 3/6
    assert average_precision_from_histograms(pos, neg) == pytest.approx(2 / 3 * 1 + 1 / 3 * 0.5)
    assert math.isnan(average_precision_from_histograms(np.zeros(3), neg))


def test_rejects_bad_shapes_and_labels():
    ev = SemSegEvaluator(C, IGNORE)
    with pytest.raises(ValueError):
        ev.process(torch.randn(1, C + 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        ev.process(torch.randn(1, C, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        ev.process(torch.randn(1, C, 4, 4), torch.full((1, 4, 4), 7))


def straightforward_histograms(ev: SemSegEvaluator, batches):
    """The same histograms the slow, obvious way: NumPy float32 odds per pixel and class, np.add.at."""
    c, b = ev.num_classes, ev.num_bins
    confusion = np.zeros((c, c), np.int64)
    all_hist, pos_hist = np.zeros((c, b), np.int64), np.zeros((c, b), np.int64)
    for logits, target in batches:
        prob = torch.softmax(logits, 1).numpy()
        t = target.numpy()
        valid = t != IGNORE
        np.add.at(confusion, (t[valid], logits.argmax(1).numpy()[valid]), 1)
        for k in range(c):
            p = prob[:, k][valid].astype(np.float32)
            with np.errstate(divide="ignore"):  # p = 1: infinite odds, the top bin
                odds = np.float32(2.0**-85) + p / ((np.float32(1) - p) * np.float32(2.0**-64))
            bins = (odds.view(np.int32) >> ev.shift) - ev.bin_base
            np.add.at(all_hist[k], bins, 1)
            np.add.at(pos_hist[k], bins[t[valid] == k], 1)
    return confusion, all_hist, pos_hist


@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])
def test_optimised_path_equals_the_straightforward_one(scale):
    batches = make_batches(7, scale, n_batches=3)
    ev = SemSegEvaluator(C, IGNORE)
    for logits, target in batches:
        ev.process(logits, target)
    confusion, all_hist, pos_hist = straightforward_histograms(ev, batches)
    np.testing.assert_array_equal(ev.confusion_matrix(), confusion)
    np.testing.assert_array_equal(ev._all_hist.reshape(C, -1), all_hist)
    np.testing.assert_array_equal(ev._pos_hist.reshape(C, -1), pos_hist)


def test_argmax_channels_equals_argmax_with_ties():
    x = torch.randint(0, 3, (2, 6, 9, 7)).float()  # many ties: the lowest index wins, as in argmax
    torch.testing.assert_close(argmax_channels(x), x.argmax(1))


def test_bins_increase_with_probability_and_cover_the_extremes():
    ev = SemSegEvaluator(2, IGNORE)
    gaps = torch.tensor([-200.0, -103.0, -90.0, -30.0, -5.0, -0.1, 0.0, 0.1, 5.0, 15.0, 16.5, 30.0, 200.0])
    logits = torch.stack([torch.zeros_like(gaps), gaps]).view(1, 2, 1, -1)  # p(class 1) = sigmoid(gap)
    bins = ev.score_bins(logits)[0, 1, 0].tolist()
    assert bins == sorted(bins) and bins[0] >= 0 and bins[-1] == ev.num_bins - 1
    assert len(set(bins[1:-2])) == len(bins) - 3  # distinct where float32 probabilities are distinct


def test_per_image_rows_add_up_to_the_split_and_a_perfect_image_scores_100():
    from seg_ext.evaluation.semantic import SemSegEvaluator

    torch.manual_seed(0)
    ev = SemSegEvaluator(3, ignore_index=255, class_names=["a", "b", "c"], num_worst=2)
    perfect = torch.randint(0, 3, (6, 5))
    ev.process_image(torch.nn.functional.one_hot(perfect, 3).permute(2, 0, 1).float(), perfect, "perfect")
    for k in range(3):
        target = torch.randint(0, 3, (6, 5))
        target[0, 0] = 255
        ev.process_image(torch.softmax(torch.randn(3, 6, 5), 0), target, f"noise{k}")
    metrics = ev.evaluate()
    rows = {r["image"]: r for r in ev.image_rows()}
    assert rows["perfect"]["mIoU"] == 100 and rows["perfect"]["pixel_acc"] == 100 and rows["noise0"]["pixels"] == 29
    assert sum(c.sum() for _, c in ev._images) == ev.confusion_matrix().sum() == 30 + 3 * 29
    ranked = sorted(rows.values(), key=lambda r: (r["mIoU"], r["pixel_acc"]))
    assert [w["image"] for w in metrics["per_image"]["worst"]] == [r["image"] for r in ranked[:2]]
    assert metrics["per_image"]["worst"][0]["mIoU"] == min(r["mIoU"] for r in rows.values())
    assert sum(metrics["calibration"]["count"]) == 30 + 3 * 29
    # a confident, right prediction is perfectly calibrated
    sure = SemSegEvaluator(3, class_names=["a", "b", "c"])
    sure.process_image(torch.nn.functional.one_hot(perfect, 3).permute(2, 0, 1).float(), perfect, "x")
    assert sure.evaluate()["calibration"]["ece"] == pytest.approx(0)
