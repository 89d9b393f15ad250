#!/usr/bin/env python
"""The labelling loop measured: does labelling the images the model is least sure of (``tools/predict.py --rank``)
teach it more than labelling images chosen at random? For either task: the config's method says which.

Per seed: a first model trained on ``--k`` images drawn from the train split of a reference split (val and test
stay fixed: the reference run's ``splits.json``), then ``--m`` more images from the rest of the train split, chosen
by the first model's ranking or at random, and a model trained on from the first one's weights (``--init-from``)
on the ``k + m``; both arms scored on the same test images. The labels of the chosen images are the dataset's own
(a person's corrections, perfectly made). Prints the test metrics of the first model and of each arm (semantic:
mIoU and person IoU; instance: mask AP and AP50), per seed and as mean ± std.

    python benchmarks/labelling_loop.py --data-root ../shared/data/PennFudanPed --splits runs/pf/unet/splits.json \
        --config configs/semantic/pennfudan_unet.yaml --k 20 --m 20 --seeds 0 1 2 --output-dir runs/loop
    python benchmarks/labelling_loop.py --data-root ../shared/data/PennFudanPed --splits runs/pfi/watershed/splits.json \
        --config configs/instance/pennfudan_watershed_unet.yaml --k 20 --m 20 --seeds 0 1 2 --output-dir runs/loop_ws
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METRICS = {"semantic": ("mIoU", "IoU/person"), "instance": ("segm/AP", "segm/AP50")}


def tool(name: str, *args: object) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"tools/{name}.py failed:\n{done.stderr[-3000:]}")


def train(output: Path, splits: dict, args: argparse.Namespace, epochs: int, init_from: Path | None = None) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    split_file = output.parent / f"{output.name}_splits.json"
    split_file.write_text(json.dumps(splits))
    start = ["--init-from", init_from] if init_from else ["--config", args.config]
    tool(f"train_{args.task}", *start, "--data-root", args.data_root, "--output-dir", output, "--opts",
         f"data.splits_file={split_file}", f"train.epochs={epochs}", f"train.seed={args.train_seed}", *args.opts)
    return json.loads((output / "metrics.json").read_text())["test"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True, help="the reference split (a run's splits.json)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--k", type=int, default=20, help="images labelled first")
    parser.add_argument("--m", type=int, default=20, help="images labelled next")
    parser.add_argument("--epochs", type=int, default=40, help="the first model's epochs")
    parser.add_argument("--epochs-on", type=int, default=20, help="the epochs of training on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="draws of the first k and of the random m")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--opts", nargs="*", default=[], help="more config overrides for every training")
    args = parser.parse_args()
    from seg_ext.methods import method_class, resolve_method

    args.task = method_class(resolve_method(config=args.config)).task
    metrics = METRICS[args.task]

    reference = json.loads(args.splits.read_text())
    pool = sorted(reference["train"])
    images = {Path(str(i)).stem: i for i in pool}
    rows = []
    for seed in args.seeds:
        rng = random.Random(seed)
        first_ids = rng.sample(pool, args.k)
        rest = [i for i in pool if i not in first_ids]
        out = args.output_dir / f"seed{seed}"
        first = train(out / "first", {**reference, "train": first_ids}, args, args.epochs)
        predicted = out / "ranking"  # the first model's predictions, ranked (not the ranked arm's run folder)
        tool("predict", "--checkpoint", out / "first" / "best.pt", "--input",
             *[args.data_root / "PNGImages" / f"{Path(str(i)).stem}.png" for i in rest], "--output-dir", predicted,
             "--rank", "--no-overlays")
        ranked = [images[Path(e["file"]).stem] for e in sorted(
            json.loads((predicted / "predictions.json").read_text())["images"],
            key=lambda e: -e["uncertainty"]["uncertainty"])]
        chosen = {"ranked": ranked[:args.m], "random": rng.sample(rest, args.m)}
        row = {"seed": seed, "first": first}
        for arm, extra in chosen.items():
            row[arm] = train(out / arm, {**reference, "train": first_ids + extra}, args, args.epochs_on,
                             init_from=out / "first" / "best.pt")
        rows.append(row)
        print(json.dumps({"seed": seed, **{k: {m: round(v[m], 2) for m in metrics}
                                          for k, v in row.items() if k != "seed"}}), flush=True)
    (args.output_dir / "loop.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{args.k} labelled, then {args.m} more; test over seeds {args.seeds} (mean ± std)")
    print(f"| model | {' | '.join(f'test {m}' for m in metrics)} |\n|---|---|---|")
    for arm, name in (("first", f"first model ({args.k} images, {args.epochs} epochs)"),
                      ("ranked", f"+ {args.m} chosen by --rank, trained on {args.epochs_on} epochs"),
                      ("random", f"+ {args.m} chosen at random, trained on {args.epochs_on} epochs")):
        cells = []
        for metric in metrics:
            values = np.array([r[arm][metric] for r in rows])
            cells.append(f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}")
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
