#!/usr/bin/env python
"""Export a checkpoint's network to ONNX, checked with onnxruntime against PyTorch on a real image.

For the semantic models and the dual-head UNet (watershed). The graph takes the network's prepared input
(``images``: N x 3 x H x W, normalised as tools/predict.py prepares it) and returns its raw outputs; run it with
``tools/predict.py --onnx FILE``, which adds the same preparation and post-processing. The batch size is always
dynamic; --dynamic makes height and width dynamic too (any size for the hand-written UNet and BaseConv,
multiples of 32 for models with a ResNet encoder). Mask R-CNN: torchvision's path is tried (batch 1, fixed
size); when it fails or does not match, the tool says so and writes nothing.

--format folder writes a model folder instead (seg_ext.model_folder): model.safetensors, config.json and a model
card (README.md) from the run's report, with model.onnx too when --onnx is given. Every tool that takes a
checkpoint takes the folder; tools/predict.py --model FOLDER and Predictor.from_pretrained(FOLDER) load it.

Examples:
    python tools/export.py --checkpoint runs/x/best.pt --output runs/x.onnx
    python tools/export.py --checkpoint runs/x/best.pt --output runs/x.onnx --dynamic --image photo.jpg
    python tools/export.py --checkpoint runs/x/best.pt --format folder --output runs/x_model --onnx --dynamic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt of a training run")
    parser.add_argument("--output", type=Path, required=True,
                        help="the .onnx file to write (--format folder: the model folder)")
    parser.add_argument("--format", choices=["onnx", "folder"], default="onnx",
                        help="onnx: one ONNX file (default); folder: a model folder (safetensors, config.json, model card)")
    parser.add_argument("--onnx", action="store_true", help="--format folder: add model.onnx to the folder")
    parser.add_argument("--dynamic", action="store_true", help="dynamic height and width (where the model allows)")
    parser.add_argument("--image", type=Path, default=None,
                        help="a real image to check the export on (default: the first image of the checkpoint's data)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.export import RELATIVE_TOLERANCE, export_onnx

    setup_logging()
    if args.format == "folder":
        from seg_ext.model_folder import export_folder

        written = export_folder(args.checkpoint, args.output, onnx=args.onnx, dynamic=args.dynamic, image=args.image,
                                opset=args.opset)
        print(f"wrote model folder {written['output']}: {', '.join(written['files'])}")
        if written["onnx"] is None:
            return
        report = written["onnx"]
    elif args.onnx:
        from seg_ext.errors import SegExtError

        raise SegExtError("--onnx adds model.onnx to a model folder (--format folder); with --format onnx, --output "
                          "is the ONNX file")
    else:
        report = export_onnx(args.checkpoint, args.output, dynamic=args.dynamic, image=args.image, opset=args.opset)
    print(f"wrote {report['output']}: outputs {', '.join(report['outputs'])}, input {report['input_size'][0]}x"
          f"{report['input_size'][1]}" + (f", dynamic height and width (multiples of {report['size_multiple']})"
                                          if report["dynamic"] else ", fixed height and width" +
                                          (", batch 1" if report.get("batch") == 1 else "; dynamic batch")))
    if "max_abs_difference" in report:
        print(f"checked with onnxruntime on {report['image']} at {report['checked_shapes']}: largest difference from "
              f"PyTorch {report['max_abs_difference']:.3g} ({report['max_relative_difference']:.3g} of the largest output; "
              f"limit {RELATIVE_TOLERANCE:g})")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
