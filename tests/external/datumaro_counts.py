"""Run with the Python of an environment holding Datumaro and Roboflow's supervision (a separate one: they pin
their own pillow and opencv): read each pre-annotation folder ``tools/predict.py --save-format`` wrote with those
libraries' importers (Datumaro: CVAT, COCO, VOC; supervision: YOLO segmentation, which Datumaro 1.13 reads only as
boxes) and print, as one JSON line, per format: the images, the annotations by type and the label names found.

    /path/to/datumaro-env/bin/python tests/external/datumaro_counts.py runs/x_pre

tests/test_external_readers.py runs it where ``SEG_EXT_DATUMARO_PYTHON`` names that Python, and compares the
counts with the package's own importers'.
"""

import json
import sys
from collections import Counter
from pathlib import Path

from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset

IMPORTERS = {"cvat": "cvat", "coco": "coco_instances", "voc": "voc_segmentation"}


def counts(folder: Path, importer: str) -> dict:
    try:
        dataset = Dataset.import_from(str(folder), importer)
        kinds = Counter(a.type.name for item in dataset for a in item.annotations)
        labels = dataset.categories().get(AnnotationType.label)
        return {"images": len(dataset), "annotations": dict(kinds), "labels": [c.name for c in labels] if labels else []}
    except Exception as exc:  # reported, not raised: one format's failure is a finding, not the end
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def yolo_counts(folder: Path) -> dict:
    try:
        import supervision as sv

        dataset = sv.DetectionDataset.from_yolo(str(folder / "images"), str(folder / "labels"), str(folder / "data.yaml"),
                                                force_masks=True)
        masks = sum(len(detections) for _, _, detections in dataset)
        return {"images": len(dataset), "annotations": {"mask": masks}, "labels": list(dataset.classes)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    found = {name: counts(root / name, importer) for name, importer in IMPORTERS.items() if (root / name).is_dir()}
    if (root / "yolo").is_dir():
        found["yolo"] = yolo_counts(root / "yolo")
    print(json.dumps(found))
