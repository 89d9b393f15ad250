#!/usr/bin/env python
"""Run a trained model on your own images: label maps or instance maps at each image's own size, overlays,
predictions.json and (instances) COCO results files.

Everything needed comes from the checkpoint (task, config, classes, method); the training data is not needed.

Outputs in --output-dir:
    semantic:  masks/<stem>.png (class ids, palette PNG), overlays/<stem>.jpg, predictions.json
    instance:  instances/<stem>.png (16-bit ids, 1..N by decreasing score), overlays/<stem>.jpg,
               results_segm.json, results_bbox.json (COCO results, every detection), predictions.json;
               with --coco-gt: image ids from that file, and COCO AP printed and written to metrics.json, every
               image scored in per_image.csv, the error breakdown errors.png and the score calibration
    semantic with --gt MASK_FOLDER: IoU and pixel AP printed and written to metrics.json, per_image.csv, the
               confusion matrix and calibration plots
    --save-format labelme cvat coco yolo voc (any of them; masks/ and instances/ are always written): the
               predictions as pre-annotations a labelling tool opens, each in <format>/ laid out as the tool's own
               export (docs/labelling.md): labelme/<stem>.json + labels.txt; cvat/annotations.xml + images/;
               coco/annotations/instances_default.json + images/; yolo/images/ + labels/ + classes.txt;
               voc/JPEGImages/ + SegmentationClass/ (+ SegmentationObject/) + class_names.txt
    --rank: to_label_next.csv, the images by how unsure the model is of them (the reasons beside), most unsure first;
    --top N: also to_label_next/: those N images predicted again into a folder of their own, with the --save-format
               pre-annotations, to hand to the labelling tool

Examples:
    python tools/predict.py --checkpoint runs/x/best.pt --input photo.jpg --output-dir runs/x_pred
    python tools/predict.py --checkpoint runs/x/best.pt --input ../shared/data/PennFudanPed/PNGImages --output-dir runs/x_pred --tta
    python tools/predict.py --checkpoint runs/y/best.pt --input 'pics/*.png' --output-dir runs/y_pred --coco-gt runs/y/coco/instances_test.json
    python tools/predict.py --checkpoint runs/x/best.pt --input imgs --gt masks --output-dir runs/x_scored
    python tools/predict.py --checkpoint runs/x/best.pt --onnx runs/x.onnx --input pics --output-dir runs/x_onnx_pred
    python tools/predict.py --checkpoint runs/x/best.pt --input big_photo.jpg --output-dir runs/x_slide --opts eval.mode=slide
    python tools/predict.py --checkpoint runs/x/best.pt --input new_photos --output-dir runs/x_pre --save-format labelme cvat
    python tools/predict.py --checkpoint runs/x/best.pt --input unlabelled --output-dir runs/x_next --top 20 --save-format labelme
    python tools/predict.py --model runs/x_model --input photo.jpg --output-dir runs/x_pred   # a model folder

Exit codes: 0 done; 1 done, but some images could not be read (each named in a warning); 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    from seg_ext.data.preannotate import DEFAULT_MIN_AREA, DEFAULT_TOLERANCE, SAVE_FORMATS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a best.pt or last.pt of a training run")
    source.add_argument("--model", type=Path, metavar="FOLDER",
                        help="a model folder (tools/export.py --format folder, or a local snapshot of one from the Hub)")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files, folders (their images, sorted) or quoted globs such as 'dir/*.jpg'")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the outputs (created)")
    parser.add_argument("--coco-gt", type=Path, default=None,
                        help="instance checkpoints: a COCO instances file; image ids come from it (matched by base file "
                             "name) and COCO AP is printed and written")
    parser.add_argument("--gt", type=Path, default=None, metavar="MASK_FOLDER",
                        help="semantic checkpoints: a folder of label maps named like the images (<stem>.png, class ids, "
                             "255 ignored); IoU and pixel AP are printed and written, every image is scored in per_image.csv")
    parser.add_argument("--onnx", type=Path, default=None, help="run this ONNX export of the checkpoint with onnxruntime")
    parser.add_argument("--tta", action="store_true", help="horizontal-flip test-time augmentation")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the checkpoint's)")
    parser.add_argument("--num-workers", type=int, default=None, help="threads that read and prepare images (default: min(8, usable CPUs); 0: one batch at a time, "
                             "in the main thread)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="instances: the lowest score kept in instance maps, overlays and predictions.json "
                             "(default: the checkpoint's eval.score_threshold; COCO results keep every detection)")
    parser.add_argument("--no-overlays", action="store_true", help="do not write overlays/")
    parser.add_argument("--save-format", nargs="+", default=["masks"], metavar="FORMAT",
                        help=f"masks (default: the label maps or instance maps, always written) and any of "
                             f"{', '.join(SAVE_FORMATS[1:])}: the predictions as pre-annotations for a labelling tool, in "
                             "<output-dir>/<format>/")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="PIXELS",
                        help=f"pre-annotations: polygons simplified to this many pixels (default {DEFAULT_TOLERANCE:g}; 0: every corner)")
    parser.add_argument("--min-area", type=int, default=DEFAULT_MIN_AREA, metavar="PIXELS",
                        help=f"pre-annotations: pieces smaller than this are left out (default {DEFAULT_MIN_AREA})")
    parser.add_argument("--rank", action="store_true",
                        help="write to_label_next.csv: the images by the model's uncertainty, most uncertain first, with reasons")
    parser.add_argument("--top", type=int, default=None, metavar="N",
                        help="with --rank (implied): the N most uncertain images again into <output-dir>/to_label_next/, "
                             "with their --save-format pre-annotations")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the checkpoint's config that leave the network as it is (post-processing, evaluation), "
                             "e.g. eval.mask_threshold=0.4")
    return parser


def main(args: argparse.Namespace) -> int:
    from seg_ext.errors import SegExtError
    from seg_ext.inference import Predictor
    from seg_ext.data.preannotate import check_formats
    from seg_ext.tasks.predict import collect_inputs, predict_files

    setup_logging()
    if args.top is not None and args.top < 1:
        raise SegExtError(f"--top is {args.top}; expected 1 or more images")
    for name in ("batch_size", "num_workers"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "batch_size" else 0):
            raise SegExtError(f"--{name.replace('_', '-')} is {value}; expected {'1' if name == 'batch_size' else '0'} or more")
    formats = check_formats(args.save_format)
    files = collect_inputs(args.input)
    load = Predictor.from_checkpoint if args.model is None else Predictor.from_pretrained
    predictor = load(args.checkpoint or args.model, device=args.device, onnx=args.onnx, tta=args.tta,
                     score_threshold=args.score_threshold, opts=args.opts)
    data = predictor.cfg["data"]
    summary = predict_files(
        predictor, files, args.output_dir, batch_size=args.batch_size or data["batch_size"],
        num_workers="auto" if args.num_workers is None else args.num_workers, coco_gt=args.coco_gt,
        overlays=not args.no_overlays, gt=args.gt, save_formats=formats,
        tolerance=args.tolerance, min_area=args.min_area, rank=args.rank or args.top is not None,
    )
    print(f"{summary.images} image(s) in {summary.seconds:.1f}s ({summary.images / max(summary.seconds, 1e-9):.1f} images/s) "
          f"-> {args.output_dir}")
    if args.top is not None:
        chosen = summary.ranked[:args.top]
        predict_files(predictor, chosen, args.output_dir / "to_label_next", batch_size=args.batch_size or data["batch_size"],
                      num_workers="auto" if args.num_workers is None else args.num_workers, overlays=not args.no_overlays,
                      save_formats=formats, tolerance=args.tolerance, min_area=args.min_area, progress=False)
        print(f"the {len(chosen)} most uncertain image(s) of {summary.images} (to_label_next.csv) -> "
              f"{args.output_dir / 'to_label_next'}")
    if summary.failed:
        logging.getLogger(__name__).error("%d of %d image(s) could not be read (named above); the others were written",
                                          len(summary.failed), len(files))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
