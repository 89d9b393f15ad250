"""docs/results.md's "runs are deterministic on a given machine", on the real path: two separate tool processes with
the same config, loader workers (persistent over epochs) and augmentation, give the same per-epoch losses and the
same final metrics, bit for bit."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool_process

pytestmark = pytest.mark.slow  # two real tool processes with loader workers

# the CPU's claim, also where CUDA is visible (on a GPU, exact repeats need train.deterministic: tests/test_gpu.py)
SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=4", "model.base_width=4", "model.depth=2",
            "report.num_overlays=0", "train.device=cpu"]
WATERSHED = ["--method", "watershed", "--opts", "data.val=2", "data.test=3", "data.batch_size=4",
             "watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2", "report.num_overlays=0",
             "train.device=cpu"]


def _without_timings(value):
    """Metrics and history with the wall-clock entries left out (everything else must repeat exactly)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k and "time/" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _run(tool: str, args: list, out) -> tuple[list, dict]:
    proc = run_tool_process(tool, [*args, "--output-dir", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return _without_timings(history), _without_timings(json.loads((out / "metrics.json").read_text()))


@pytest.mark.parametrize("tool, args, data", [
    ("train_semantic", ["--opts", *SEMANTIC], "scenes_root"),
    ("train_instance", WATERSHED, "pennfudan_root"),
], ids=["semantic", "watershed"])
def test_two_runs_with_loader_workers_are_identical(tool, args, data, request, tmp_path):
    root = request.getfixturevalue(data)
    common = ["--data-root", root] + args + ["train.epochs=2", "data.num_workers=2"]
    first = _run(tool, common, tmp_path / "a")
    second = _run(tool, common, tmp_path / "b")
    assert len(first[0]) == 2 and all("train/loss" in h for h in first[0])
    assert first == second
