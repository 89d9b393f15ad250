"""Plots for reports: loss curves, the confusion-matrix heatmap with AP and IoU columns, overlays."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

IGNORE_COLOUR = np.array([128, 128, 128], dtype=np.uint8)


def palette(num_classes: int) -> np.ndarray:
    """Distinct RGB colours, one per class. Shape: (num_classes, 3) uint8."""
    base = plt.get_cmap("tab10" if num_classes <= 10 else "tab20").colors
    colours = [base[i % len(base)] for i in range(num_classes)]
    return (np.array(colours) * 255).astype(np.uint8)


def byte_lookup(index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[index]`` for a uint8 (H, W) index map and a (256, 3) uint8 table, as one OpenCV LUT pass: about 6x
    faster than NumPy's fancy indexing, and it lets other threads run (prediction writes overlays in threads).
    Shape: (H, W) -> (H, W, 3)."""
    import cv2

    return cv2.LUT(cv2.cvtColor(np.ascontiguousarray(index), cv2.COLOR_GRAY2RGB), np.ascontiguousarray(table).reshape(256, 1, 3))


def colourize(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Class-id map to an RGB picture (ignored pixels grey). Shape: (H, W) -> (H, W, 3)."""
    pal = palette(num_classes)
    if mask.dtype == np.uint8 and num_classes <= 256:  # one table lookup (prediction writes one per image)
        table = np.tile(IGNORE_COLOUR, (256, 1))
        table[:num_classes] = pal
        return byte_lookup(mask, table)
    out = np.empty((*mask.shape, 3), np.uint8)
    valid = (mask >= 0) & (mask < num_classes)
    out[valid] = pal[mask[valid]]
    out[~valid] = IGNORE_COLOUR
    return out


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend a colour picture over an image. Shapes: (H, W, 3) uint8 both."""
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def _legend(fig: plt.Figure, class_names: Sequence[str]) -> None:
    pal = palette(len(class_names)) / 255.0
    handles = [Patch(color=pal[i], label=name) for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), fontsize=8, frameon=False)


def plot_loss_curves(history: Sequence[dict[str, Any]], path: str | Path, metrics: Sequence[str] = ()) -> None:
    """Train/val loss per epoch, and validation metrics per epoch beside it."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [h.get("train/loss") for h in history], "o-", label="train loss")
    val = [(h["epoch"], h["val/loss"]) for h in history if h.get("val/loss") is not None]
    if val:
        ax.plot(*zip(*val), "s-", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if metrics:
        ax = axes[0, 1]
        for key in metrics:
            pts = [(h["epoch"], h[f"val/{key}"]) for h in history if h.get(f"val/{key}") is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(
    confusion: np.ndarray,
    class_names: Sequence[str],
    ap: Sequence[float],
    iou: Sequence[float],
    path: str | Path,
    title: str = "",
) -> None:
    """Row-normalised confusion matrix (rows: ground truth) with the per-class AP and IoU columns beside it.

    ``ap`` and ``iou`` are percentages (NaN shown as n/a).
    """
    conf = confusion.astype(np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = max(4.0, 0.55 * n + 2.5)
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(size + 2.2, size), gridspec_kw={"width_ratios": [n, 2], "wspace": 0.05}
    )
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    side = np.array([ap, iou], dtype=np.float64).T / 100
    ax2.imshow(np.nan_to_num(side, nan=0.0), cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for i in range(n):
        for j in range(2):
            v = side[i, j]
            ax2.text(j, i, "n/a" if not np.isfinite(v) else f"{100 * v:.1f}", ha="center", va="center", fontsize=7,
                     color="white" if np.isfinite(v) and v > 0.5 else "black")
    ax2.set_xticks([0, 1], ["AP", "IoU"], fontsize=8)
    ax2.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_overlays(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: str | Path,
    ignore_index: int = 255,
    titles: Sequence[str] | None = None,
) -> None:
    """One row per example: the image, ground truth over it, prediction over it."""
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 0.6), squeeze=False)
    for r, (image, gt, pred) in enumerate(rows):
        panels = [
            (image, "image" if titles is None else titles[r]),
            (blend(image, colourize(gt, len(class_names), ignore_index)), "ground truth"),
            (blend(image, colourize(pred, len(class_names), ignore_index)), "prediction"),
        ]
        for c, (picture, label) in enumerate(panels):
            axes[r, c].imshow(picture)
            axes[r, c].set_title(label, fontsize=9)
            axes[r, c].axis("off")
    _legend(fig, class_names)
    fig.tight_layout(rect=(0, 0.6 / (3 * n + 0.6), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sample_grid(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: str | Path,
    columns: int = 4,
    ignore_index: int = 255,
    titles: Sequence[str] | None = None,
) -> None:
    """A grid of (image, mask) pairs, each drawn as the image with its mask blended over it and outlined."""
    from skimage.segmentation import find_boundaries

    n = len(samples)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image, mask) in enumerate(samples):
        picture = blend(image, colourize(mask, len(class_names), ignore_index), 0.45)
        picture[find_boundaries(mask, mode="inner")] = 255
        ax = axes[i // columns, i % columns]
        ax.imshow(picture)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    _legend(fig, class_names)
    fig.tight_layout(rect=(0, 0.6 / (3 * rows + 0.6), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def instance_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with each instance mask blended in its own colour and outlined.

    Shape:
        image: (H, W, 3) uint8; masks: (N, H, W) binary -> (H, W, 3) uint8
    """
    from skimage.segmentation import find_boundaries

    out = image.astype(np.float32)
    colours = (np.array(plt.get_cmap("tab20").colors) * 255).astype(np.float32)
    for i, mask in enumerate(masks.astype(bool)):
        out[mask] = out[mask] * (1 - alpha) + colours[i % len(colours)] * alpha
        out[find_boundaries(mask, mode="inner")] = 255
    return out.astype(np.uint8)


def plot_instances(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    score_threshold: float = 0.5,
) -> None:
    """One row per image: ground-truth instances, predicted instances (with scores), and an optional extra panel.

    Each row is a dict with ``image`` (H, W, 3) uint8, ``gt_masks`` (N, H, W), ``pred_masks`` (M, H, W),
    ``pred_scores`` (M,), ``title``, and optionally ``extra`` (an (H, W) float map, drawn with a colour map) with
    ``extra_title``. Predictions under ``score_threshold`` are not drawn.
    """
    columns = 3 if any("extra" in r for r in rows) else 2
    fig, axes = plt.subplots(len(rows), columns, figsize=(4.2 * columns, 4 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        keep = np.asarray(row["pred_scores"]) >= score_threshold
        pred_masks = np.asarray(row["pred_masks"])[keep]
        scores = np.asarray(row["pred_scores"])[keep]
        ax = axes[r, 0]
        ax.imshow(instance_overlay(row["image"], np.asarray(row["gt_masks"])))
        ax.set_title(f"{row.get('title', '')}: ground truth ({len(row['gt_masks'])})", fontsize=9)
        ax = axes[r, 1]
        ax.imshow(instance_overlay(row["image"], pred_masks))
        ax.set_title(f"predicted ({len(pred_masks)} with score >= {score_threshold:g})", fontsize=9)
        for mask, score in zip(pred_masks, scores):
            ys, xs = np.nonzero(mask)
            if len(xs):
                ax.text(xs.min(), ys.min(), f"{score:.2f}", fontsize=7, color="white", va="bottom",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
        if columns == 3:
            ax = axes[r, 2]
            if "extra" in row:
                shown = ax.imshow(row["extra"], cmap="magma")
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
                ax.set_title(row.get("extra_title", ""), fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@functools.lru_cache(maxsize=256)
def _text_strip(width: int, entries: tuple[tuple[tuple[int, int, int] | None, str], ...]) -> np.ndarray:
    """A white strip with coloured squares and labels, wrapped to ``width`` (drawn with PIL; cached, since most
    images of a folder share their width and classes). Read-only: callers copy it into their picture."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pad, box, line = 4, 10, 16
    widths = [box + 4 + int(font.getlength(text)) + 12 for _, text in entries]
    lines, x = 1, pad
    for w in widths:
        if x + w > width - pad and x > pad:
            lines, x = lines + 1, pad
        x += w
    strip = Image.new("RGB", (width, lines * line + 2 * pad), "white")
    draw = ImageDraw.Draw(strip)
    x, y = pad, pad
    for (colour, text), w in zip(entries, widths):
        if x + w > width - pad and x > pad:
            x, y = pad, y + line
        if colour is not None:
            draw.rectangle([x, y + 2, x + box, y + 2 + box], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + box + 4, y), text, fill="black", font=font)
        x += w
    array = np.asarray(strip)
    array.flags.writeable = False
    return array


def label_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class id of a label map (at least ``num_classes`` entries; a uint8 map by one OpenCV histogram,
    which neither widens the map nor holds the GIL)."""
    if labels.dtype == np.uint8:
        import cv2

        counts = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        return counts[:max(num_classes, int(np.flatnonzero(counts).max(initial=0)) + 1)]
    return np.bincount(labels.ravel(), minlength=num_classes)


def semantic_overlay_picture(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
                             counts: np.ndarray | None = None) -> np.ndarray:
    """The prediction blended over the image, with a legend of the classes present below it (``counts``: the
    map's ``label_counts``, when the caller has them).

    Shape:
        image: (H, W, 3) uint8; labels: (H, W) class ids -> (H + legend, W, 3) uint8
    """
    import cv2

    pal = palette(len(class_names))
    colour = colourize(labels, len(class_names))
    picture = cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, colour, alpha, 0.0)
    present = np.flatnonzero(label_counts(labels, len(class_names)) if counts is None else counts)
    legend = _text_strip(image.shape[1], tuple((tuple(int(v) for v in pal[c]), class_names[c])
                                               for c in present if c < len(class_names)))
    return np.concatenate([picture, legend], axis=0)


def instance_overlay_picture(image: np.ndarray, instance_map: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                             alpha: float = 0.55) -> np.ndarray:
    """Each instance of an instance-id map blended in its own colour and outlined in white, its score at its box's
    corner, and a count below (vectorised over the map: one pass however many instances).

    Shape:
        image: (H, W, 3) uint8; instance_map: (H, W), 0 background and 1..N; scores: (N,); boxes: (N, 4) xyxy
        -> (H + strip, W, 3) uint8
    """
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    colours = (np.array(plt.get_cmap("tab20").colors) * 255).astype(np.uint8)
    ids = instance_map
    if ids.size and int(ids.max()) < 256:  # instance k in colour (k - 1) % 20, by one byte lookup
        colour = byte_lookup(ids.astype(np.uint8), colours[(np.arange(256) - 1) % len(colours)])
    else:
        ids = ids.astype(np.int64)
        colour = colours[(ids - 1) % len(colours)]
    blended = cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, np.ascontiguousarray(colour), alpha, 0.0)
    inside = ids > 0
    picture = np.where(inside[..., None], blended, image)
    edge = np.zeros_like(inside)  # an instance pixel with a 4-neighbour of another id
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    picture[edge & inside] = 255
    canvas = Image.fromarray(picture)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for score, (x0, y0, _, _) in zip(scores, boxes):
        text = f"{float(score):.2f}"
        left, top = max(0, int(x0)), max(0, int(y0) - 12)
        draw.rectangle([left, top, left + int(font.getlength(text)) + 4, top + 12], fill="black")
        draw.text((left + 2, top), text, fill="white", font=font)
    strip = _text_strip(image.shape[1], ((None, f"{len(scores)} instance(s)"),))
    return np.concatenate([np.asarray(canvas), strip], axis=0)


def plot_score_histogram(values: Sequence[float], label: str, path: str | Path, title: str = "") -> None:
    """Histogram of per-image scores (0-100), the median marked."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=np.linspace(0, 100, 21), color="#4c72b0", edgecolor="white")
    if values.size:
        ax.axvline(float(np.median(values)), color="#c44e52", ls="--", label=f"median {np.median(values):.1f}")
        ax.legend(frameon=False)
    ax.set_xlabel(f"{label} per image")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.16, top=0.9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(reliability: dict[str, Any], path: str | Path, title: str = "", what: str = "confidence") -> None:
    """Reliability diagram: accuracy against mean confidence per bin (bars), the diagonal, the ECE in the title;
    beside it the share of samples per bin."""
    conf = np.asarray(reliability["confidence"], dtype=np.float64)
    acc = np.asarray(reliability["accuracy"], dtype=np.float64)
    count = np.asarray(reliability["count"], dtype=np.float64)
    bins = len(count)
    centres = (np.arange(bins) + 0.5) / bins
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax.bar(centres, np.nan_to_num(acc), width=1 / bins, edgecolor="white", color="#4c72b0", label="accuracy")
    low, high = np.nan_to_num(np.minimum(conf, acc)), np.nan_to_num(np.maximum(conf, acc))
    ax.bar(centres, high - low, bottom=low, width=1 / bins, color="#c44e52", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"{what} (bin)")
    ax.set_ylabel("accuracy")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title(f"{title} ECE {reliability['ece']:.2f}" if np.isfinite(reliability["ece"]) else title, fontsize=10)
    ax2.bar(centres, count / max(count.sum(), 1), width=1 / bins, color="#8c8c8c", edgecolor="white")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel(f"{what} (bin)")
    ax2.set_ylabel("share of samples")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.91, wspace=0.28)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_error_breakdown(breakdowns: dict[str, dict[str, Any]], names: dict[str, str], path: str | Path) -> None:
    """TIDE's AP cost of each error type (fixed alone), one group of bars per breakdown (e.g. mask, box)."""
    kinds = list(names)
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    width = 0.8 / max(len(breakdowns), 1)
    for k, (label, out) in enumerate(breakdowns.items()):
        values = [out.get("dAP", {}).get(t, 0.0) for t in kinds]
        xs = np.arange(len(kinds)) + (k - (len(breakdowns) - 1) / 2) * width
        ax.bar(xs, values, width=width, label=f"{label} (AP50 {out['AP50']:.1f})")
    ax.set_xticks(np.arange(len(kinds)), [names[t] for t in kinds], fontsize=8)
    ax.set_ylabel("AP50 gained if fixed")
    ax.legend(frameon=False, fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.14, top=0.95)
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: the colours of the error gallery: true positives green, each TIDE error type its own, missed objects red
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "tp": (44, 160, 44), "matched": (44, 160, 44), "cls": (148, 103, 189), "loc": (255, 127, 14),
    "both": (140, 86, 75), "dupe": (23, 190, 207), "bkg": (214, 39, 40), "missed": (214, 39, 40),
    "fixable": (255, 127, 14),
}
ERROR_LABELS = {"tp": "correct", "cls": "wrong class", "loc": "poorly placed", "both": "class + place",
                "dupe": "duplicate", "bkg": "background", "missed": "missed object", "fixable": "found, poorly"}


def _outlined(picture: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]],
              alpha: float = 0.3) -> np.ndarray:
    """Each mask tinted and outlined (3 px) in its colour."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    out = picture.astype(np.float32)
    for mask, colour in zip(masks, colours):
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        out[mask] = out[mask] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
        out[binary_dilation(find_boundaries(mask, mode="inner"), iterations=1)] = colour
    return out.astype(np.uint8)


def _side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str], legend: tuple) -> np.ndarray:
    """Panels of one height in a row, each titled above, a legend strip below (uint8 RGB)."""
    def row(parts: Sequence[np.ndarray]) -> np.ndarray:
        gap = np.full((parts[0].shape[0], 6, 3), 255, np.uint8)
        out = [parts[0]]
        for part in parts[1:]:
            out += [gap, part]
        return np.concatenate(out, axis=1)

    heads = [_text_strip(p.shape[1], ((None, title),)) for p, title in zip(panels, titles)]
    height = max(h.shape[0] for h in heads)
    heads = [np.pad(h, ((0, height - h.shape[0]), (0, 0), (0, 0)), constant_values=255) for h in heads]
    picture = row(list(panels))
    return np.concatenate([row(heads), picture, _text_strip(picture.shape[1], legend)], axis=0)


def semantic_error_picture(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_names: Sequence[str],
                           ignore_index: int = 255) -> np.ndarray:
    """The gallery's picture of one semantic prediction: image, ground truth, prediction, and the wrong pixels
    (red; ignored ones grey) over the darkened image.

    Shape:
        image: (H, W, 3) uint8; gt, pred: (H, W) class ids -> (h, 4W + gaps, 3) uint8
    """
    n = len(class_names)
    wrong = (gt != pred) & (gt != ignore_index)
    errors = (image.astype(np.float32) * 0.45).astype(np.uint8)
    errors[wrong] = (214, 39, 40)
    errors[gt == ignore_index] = IGNORE_COLOUR
    pal = palette(n)
    present = np.flatnonzero(np.bincount(np.concatenate([gt[gt < n].ravel(), pred[pred < n].ravel()]).astype(np.int64), minlength=n))
    legend = tuple((tuple(int(v) for v in pal[c]), class_names[c]) for c in present) + (((214, 39, 40), "wrong pixel"),)
    return _side_by_side([image, blend(image, colourize(gt, n, ignore_index)), blend(image, colourize(pred, n, ignore_index)), errors],
                         ["image", "ground truth", "prediction", f"wrong: {100 * wrong.sum() / max((gt != ignore_index).sum(), 1):.1f}% of pixels"],
                         legend)


def instance_error_picture(image: np.ndarray, gt_masks: np.ndarray, gt_kinds: Sequence[str], det_masks: np.ndarray,
                           det_kinds: Sequence[str], det_scores: Sequence[float]) -> np.ndarray:
    """The gallery's picture of one instance prediction: the objects (found green, missed red, found only
    poorly orange) and the detections outlined by their kind (TIDE's error types), each with its score.

    Shape:
        image: (H, W, 3) uint8; gt_masks: (G, H, W); det_masks: (D, H, W) -> (h, 2W + gap, 3) uint8
    """
    from PIL import Image, ImageDraw, ImageFont

    left = _outlined(image, gt_masks, [ERROR_COLOURS[k] for k in gt_kinds])
    right = _outlined(image, det_masks, [ERROR_COLOURS[k] for k in det_kinds])
    canvas = Image.fromarray(right)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for mask, kind, score in zip(det_masks, det_kinds, det_scores):
        ys, xs = np.nonzero(mask)
        if not len(xs):
            continue
        text = f"{float(score):.2f} {kind}"
        x, y = int(xs.min()), max(0, int(ys.min()) - 12)
        draw.rectangle([x, y, x + int(font.getlength(text)) + 4, y + 12], fill=ERROR_COLOURS[kind])
        draw.text((x + 2, y), text, fill="white", font=font)
    kinds = [k for k in ("tp", "cls", "loc", "both", "dupe", "bkg", "missed") if k in list(det_kinds) + list(gt_kinds)]
    legend = tuple((ERROR_COLOURS[k], ERROR_LABELS[k]) for k in kinds)
    found = sum(k == "matched" for k in gt_kinds)
    return _side_by_side([left, np.asarray(canvas)],
                         [f"objects: {found} of {len(gt_kinds)} found at IoU 0.5", f"{len(det_kinds)} detection(s) shown"], legend)
