#!/usr/bin/env python
"""How much two prediction modes of one checkpoint agree (e.g. eval.mode whole against slide): the share of pixels
with the same label, per image and over all of them, and what each mode costs (seconds per image, median).

Semantic checkpoints compare class labels; instance checkpoints compare foreground (any instance) against
background, and count the images whose number of instances differs.

Examples:
    python tools/compare_modes.py --checkpoint runs/x/best.pt --input ../shared/data/PennFudanPed/PNGImages
    python tools/compare_modes.py --checkpoint runs/x/best.pt --input pics --a eval.mode=whole --b eval.mode=slide eval.stride=[64,64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a best.pt of a run trained with data.resize: scale")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image files, folders or quoted globs")
    parser.add_argument("--a", nargs="+", default=["eval.mode=whole"], metavar="KEY=VALUE", help="the first mode's overrides")
    parser.add_argument("--b", nargs="+", default=["eval.mode=slide"], metavar="KEY=VALUE", help="the second mode's overrides")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-image figures here")
    return parser


def main(args: argparse.Namespace) -> int:
    from seg_ext.data.files import read_image
    from seg_ext.inference import Predictor
    from seg_ext.tasks.predict import collect_inputs

    setup_logging()
    files = collect_inputs(args.input)
    first = Predictor.from_checkpoint(args.checkpoint, device=args.device, opts=args.a)
    second = Predictor.from_checkpoint(args.checkpoint, device=args.device, opts=args.b)
    semantic = first.task == "semantic"
    same = total = count_differs = 0
    rows, seconds = [], ([], [])
    for path in files:
        image = read_image(path)
        start = time.perf_counter()
        a = first(image)
        middle = time.perf_counter()
        b = second(image)
        seconds[0].append(middle - start)
        seconds[1].append(time.perf_counter() - middle)
        if semantic:
            la, lb = a["labels"], b["labels"]
        else:
            la, lb = a["instance_map"] > 0, b["instance_map"] > 0
            count_differs += int(len(a["scores"]) != len(b["scores"]))
        agree = int((la == lb).sum())
        same, total = same + agree, total + la.size
        rows.append({"image": str(path), "agreement": agree / la.size,
                     **({} if semantic else {"instances_a": len(a["scores"]), "instances_b": len(b["scores"])})})
    share = 100 * same / max(total, 1)
    worst = min(rows, key=lambda r: r["agreement"])
    what = "class labels" if semantic else "foreground / background"
    print(f"{' '.join(args.a)} vs {' '.join(args.b)}: {share:.3f}% of {total:,} pixels get the same {what} over "
          f"{len(rows)} image(s); lowest {100 * worst['agreement']:.2f}% ({Path(worst['image']).name})"
          + ("" if semantic else f"; {count_differs} image(s) with a different number of instances"))
    cost = [statistics.median(s) for s in seconds]
    print(f"seconds per image (median): {cost[0]:.4f} ({' '.join(args.a)}), {cost[1]:.4f} ({' '.join(args.b)}): "
          f"{cost[1] / max(cost[0], 1e-9):.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"a": args.a, "b": args.b, "agreement": share / 100, "seconds_per_image": cost,
                                         "images": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
