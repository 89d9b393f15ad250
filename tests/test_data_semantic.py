"""Dataset formats, detection, splits, and the one-sentence errors for bad datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_folder_dataset
from seg_ext.data.semantic import (
    SemanticSegDataset,
    detect_format,
    make_splits,
    open_semantic_source,
    resolve_splits,
)
from seg_ext.errors import ConfigError, DatasetError


def test_detects_each_layout(scenes_root, pennfudan_root, stanford_root, tmp_path):
    assert detect_format(scenes_root) == "folder"
    assert detect_format(pennfudan_root) == "pennfudan"
    assert detect_format(stanford_root) == "stanford"
    with pytest.raises(DatasetError, match="no recognised layout"):
        detect_format(tmp_path)


def test_folder_format_reads_classes_and_split_files(scenes_root):
    source = open_semantic_source(scenes_root)
    assert source.format == "folder" and len(source.class_names) == 9
    splits = resolve_splits(source)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    ds = SemanticSegDataset(source, splits["train"])
    sample = ds[0]
    assert sample["image"].shape == (64, 80, 3) and sample["image"].dtype == np.uint8
    assert sample["mask"].shape == (64, 80) and int(sample["mask"].max()) < 9
    assert sample["file_name"].endswith(".png")


def test_pennfudan_as_person_background(pennfudan_root):
    source = open_semantic_source(pennfudan_root)
    assert source.class_names == ["background", "person"]
    ds = SemanticSegDataset(source, sorted(source.items))
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        instances = np.asarray(Image.open(source.items[ds.ids[i]][1]))
        np.testing.assert_array_equal(mask, (instances > 0).astype(np.uint8))
    # 12 images: the default split keeps 50 for test, more than there are, so ask for counts that fit
    splits = resolve_splits(source, val=2, test=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7, 2, 3]


def test_stanford_unknown_becomes_misc(stanford_root):
    source = open_semantic_source(stanford_root)
    assert source.class_names[-1] == "misc" and len(source.class_names) == 9
    ds = SemanticSegDataset(source, sorted(source.items))
    mask = ds.load_mask(0)
    assert mask.shape == (40, 52)
    assert (mask[:4, :4] == 8).all() and mask.max() <= 8


def test_splits_are_seeded_disjoint_and_complete():
    ids = [f"x{i}" for i in range(100)]
    a = make_splits(ids, 0.1, 20, seed=3)
    b = make_splits(list(reversed(ids)), 0.1, 20, seed=3)
    c = make_splits(ids, 0.1, 20, seed=4)
    assert a == b and a != c
    assert [len(a[s]) for s in ("train", "val", "test")] == [70, 10, 20]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)
    with pytest.raises(ConfigError, match="data.val"):
        make_splits(ids, 60, 50, seed=0)


def test_pennfudan_default_split_keeps_50_for_test(tmp_path):
    # the default split sizes on a Penn-Fudan-sized list of ids: 170 images -> 105 / 15 / 50
    from seg_ext.data.formats import FORMATS

    val, test = FORMATS["pennfudan"].default_split
    split = make_splits([f"p{i}" for i in range(170)], val, test, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [105, 15, 50]


# ---- bad input: one sentence naming the file and what was expected ----


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        open_semantic_source(tmp_path / "nope")


def test_image_without_mask(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [np.zeros((8, 8))] * 3, ["a", "b"])
    (root / "masks" / "im001.png").unlink()
    with pytest.raises(DatasetError, match=r"im001\.png has no mask; expected .*masks/im001\.png"):
        open_semantic_source(root)


def test_size_mismatch(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [np.zeros((8, 8))] * 3, ["a", "b"])
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "masks" / "im002.png")
    source = open_semantic_source(root)
    with pytest.raises(DatasetError, match=r"im002\.png is 8x9 but image .*im002\.png is 8x8; expected the same size"):
        SemanticSegDataset(source, sorted(source.items))


def test_label_value_out_of_range(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = 7
    root = write_folder_dataset(tmp_path / "ds", [np.zeros((8, 8)), mask], ["a", "b", "c"])
    ds = SemanticSegDataset(open_semantic_source(root), ["im000", "im001"])
    ds[0]
    with pytest.raises(DatasetError, match=r"im001\.png contains label value 7; expected class ids 0\.\.2 or the ignore index 255"):
        ds[1]


def test_unreadable_image(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [np.zeros((8, 8))] * 2, ["a", "b"])
    (root / "images" / "im001.png").write_bytes(b"not a png")
    source = open_semantic_source(root)
    with pytest.raises(DatasetError, match=r"cannot read image file .*im001\.png"):
        SemanticSegDataset(source, ["im001"])


def test_colour_mask_is_rejected(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [np.zeros((8, 8))] * 2, ["a", "b"])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "masks" / "im000.png")
    ds = SemanticSegDataset(open_semantic_source(root), ["im000"])
    with pytest.raises(DatasetError, match=r"im000\.png has image mode RGB; expected a single-channel PNG"):
        ds[0]


def test_missing_classes_file_and_bad_split_file(tmp_path):
    root = write_folder_dataset(tmp_path / "ds", [np.zeros((8, 8))] * 2, ["a", "b"])
    (root / "train.txt").write_text("im000\nghost\n")
    with pytest.raises(DatasetError, match=r"train\.txt names image id 'ghost'"):
        open_semantic_source(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="has no classes.txt"):
        open_semantic_source(root)


def test_stanford_bad_label_file(stanford_root, tmp_path):
    import shutil

    root = tmp_path / "st"
    shutil.copytree(stanford_root, root)
    path = sorted((root / "labels").iterdir())[0]
    path.write_text("0 1 x\n")
    ds = SemanticSegDataset(open_semantic_source(root), [path.name.split(".")[0]])
    with pytest.raises(DatasetError, match=r"regions\.txt is not a grid of integers"):
        ds.load_mask(0)
    path.write_text("0 1 9\n")
    with pytest.raises(DatasetError, match="contains label value 9; expected -1..7"):
        ds.load_mask(0)


def _generate_and_count(root: str) -> int:
    from seg_ext.data.synthetic import ensure_synthetic_scenes

    out = ensure_synthetic_scenes(Path(root), 8, 4, 4, size=(32, 40), seed=5)
    return len(list((out / "images").iterdir()))


def test_synthetic_data_generated_by_several_processes_at_once_is_whole_for_each(tmp_path):
    """The runs of a sweep (--jobs, Ray trials) may all generate the default data on first use: one generates, the
    others wait, and none deletes the folder another reads (real processes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        counts = list(pool.map(_generate_and_count, [str(tmp_path / "ds")] * 4))
    assert counts == [16, 16, 16, 16]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", "ds"]  # no temporary folder left


def test_max_images_cuts_each_split_to_its_first_images_for_both_tasks(scenes_root, pennfudan_root, tmp_path):
    import json

    from seg_ext.data.base import SPLITS, SplitRequest
    from seg_ext.data.formats import get_format
    from seg_ext.data.semantic import build_semantic_datasets
    from seg_ext.methods import method_config

    full = resolve_splits(open_semantic_source(scenes_root))
    datasets, cut = build_semantic_datasets(scenes_root, {}, max_images=3)
    assert cut == {s: ids[:3] for s, ids in full.items()} and [len(datasets[s]) for s in SPLITS] == [3, 3, 3]
    # instances: the COCO files a run trains and scores on hold each split's first images and only their instances
    pennfudan = get_format("pennfudan", "instance")
    whole, _ = pennfudan.coco_splits(pennfudan_root, tmp_path / "whole", SplitRequest(2, 3))
    first, _ = pennfudan.coco_splits(pennfudan_root, tmp_path / "first", SplitRequest(2, 3, max_images=2))
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    for split in SPLITS:
        kept = read(whole[split])["images"][:2]
        assert read(first[split])["images"] == kept
        assert read(first[split])["annotations"] and {a["image_id"] for a in read(first[split])["annotations"]} == {
            i["id"] for i in kept}
    # COCO files named in the config: cut copies in the run's coco/ folder, the files themselves untouched
    files = {"train": str(whole["train"]), "val": str(whole["val"]), "test": None}
    given, _ = get_format("coco", "instance").coco_splits(pennfudan_root, tmp_path / "run", SplitRequest(
        files=files, max_images=1))
    assert given["train"] == tmp_path / "run" / "coco" / "instances_train.json" and given["test"] is None
    assert [len(read(given[s])["images"]) for s in ("train", "val")] == [1, 1]
    assert len(read(whole["train"])["images"]) == 7
    for bad in ("0", "2.5", "all"):
        with pytest.raises(ConfigError, match=r"config key 'data\.max_images' is .*; expected null"):
            method_config("semantic", overrides=[f"data.max_images={bad}"])


def test_an_instance_split_is_written_as_ids_and_a_splits_file_reuses_it_exactly(pennfudan_root, tmp_path):
    """The labelling loop's instance arm: a run's ``splits.json`` (ids) fed back as ``data.splits_file`` gives the
    same COCO files; a subset of its train ids trains on those only; a file naming an unknown image is one sentence."""
    import json

    from seg_ext.data.base import SPLITS, SplitRequest
    from seg_ext.data.formats import get_format

    pennfudan = get_format("pennfudan", "instance")
    drawn, _ = pennfudan.coco_splits(pennfudan_root, tmp_path / "drawn", SplitRequest(2, 3, seed=5))
    ids = json.loads((tmp_path / "drawn" / "coco" / "splits.json").read_text())
    assert [len(ids[s]) for s in SPLITS] == [7, 2, 3] and sorted(sum(ids.values(), [])) == sorted(
        p.stem for p in (pennfudan_root / "PNGImages").iterdir())
    read = lambda path: {k: v for k, v in json.loads(path.read_text()).items() if k != "info"}  # noqa: E731
    again, _ = pennfudan.coco_splits(pennfudan_root, tmp_path / "again", SplitRequest(splits_file=tmp_path / "drawn" / "coco" / "splits.json"))
    assert all(read(again[s]) == read(drawn[s]) for s in SPLITS)
    fewer = {**ids, "train": ids["train"][:3]}
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    subset, _ = pennfudan.coco_splits(pennfudan_root, tmp_path / "fewer", SplitRequest(splits_file=tmp_path / "fewer.json"))
    assert [Path(i["file_name"]).stem for i in read(subset["train"])["images"]] == sorted(fewer["train"])
    assert read(subset["test"]) == read(drawn["test"])
    (tmp_path / "bad.json").write_text(json.dumps({**ids, "val": ["NoSuchImage"]}))
    with pytest.raises(DatasetError, match=r"splits file .*bad\.json names image id 'NoSuchImage', which is not in "):
        pennfudan.coco_splits(pennfudan_root, tmp_path / "bad", SplitRequest(splits_file=tmp_path / "bad.json"))
