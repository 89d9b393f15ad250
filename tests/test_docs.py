"""The code that README.md and docs/*.md say runs does run, as written: every block marked ``<!-- test: run -->``
(Python, executed in a fresh folder holding a short run's checkpoint as ``runs/x/best.pt`` and an image as
``photo.jpg``), and the README's ``<!-- test: run-in-order -->`` shell block (every command, in order, in a fresh
folder, on the built-in synthetic data). And the README stays short."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil

import pytest

from conftest import DOCS_PY, ROOT, call_tool, run_docs_script

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- test: (run|run-in-order) -->\s*```(\w+)\n(.*?)```", re.S)


def _blocks(kind: str, language: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for i, match in enumerate(MARKED.finditer(path.read_text())):
            if match.group(1) == kind and match.group(2) == language:
                found.append((f"{path.relative_to(ROOT)}#{i}", match.group(3)))
    return found


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, scenes_root):
    """A fresh folder with a short semantic run as runs/x and an image as photo.jpg."""
    folder = tmp_path_factory.mktemp("docs")
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", folder / "runs" / "x", "--opts",
                                        "train.epochs=1", "data.image_size=[32,32]", "data.num_workers=0",
                                        "model.base_width=4", "model.depth=2", "report.num_overlays=0"]) == 0
    shutil.copy(sorted((scenes_root / "images").iterdir())[0], folder / "photo.jpg")
    return folder


@pytest.mark.parametrize("name, code", [pytest.param(n, c, id=n) for n, c in _blocks("run", "python")])
def test_python_blocks_run_as_written(name, code, workdir, monkeypatch, capsys):
    """... and leave no process behind: a run trained in-process ends its loader workers (left to the garbage
    collector they cost a later step 5 s each)."""
    monkeypatch.chdir(workdir)
    exec(compile(code, name, "exec"), {"__name__": "docs"})
    assert multiprocessing.active_children() == []


# the one change the test makes to the README's block: shorter trainings on fewer images (the default run 2
# epochs instead of 12, continued to 3 instead of 14; the watershed 1 epoch instead of 3; each split cut to its first
# 8 images by data.max_images, which a resume and an evaluation of the checkpoint keep); the commands, their order
# and their folders as written
SHORTER = {"$PY tools/train_semantic.py --output-dir runs/sem\n":
           "$PY tools/train_semantic.py --output-dir runs/sem --opts train.epochs=2 data.max_images=8\n",
           "--resume --output-dir runs/sem --opts train.epochs=14": "--resume --output-dir runs/sem --opts train.epochs=3",
           "--output-dir runs/ws --opts train.epochs=3": "--output-dir runs/ws --opts train.epochs=1 data.max_images=8",
           "--oracle --output-dir runs/oracle\n": "--oracle --output-dir runs/oracle --opts data.max_images=8\n",
           "data.image_size=[64,64] --output-dir": "data.image_size=[64,64] data.max_images=8 --output-dir"}


def test_the_readme_commands_run_in_order(tmp_path):
    (block_name, script), = _blocks("run-in-order", "bash")
    assert DOCS_PY in script, f"the README's block no longer sets {DOCS_PY}"
    for written, shorter in SHORTER.items():
        assert script.count(written) == 1, f"the README's block no longer holds {written!r}; update SHORTER"
        script = script.replace(written, shorter)
    out = run_docs_script(script, tmp_path, tmp_path / "datasets" / "generated", timeout=1200)
    (tmp_path / "trace.log").write_text(out.stderr)  # the commands with their start times, kept for a look
    assert out.returncode == 0, out.stderr[-4000:]
    for path in ("runs/sem/metrics.json", "runs/ws/metrics.json", "runs/sem_eval/metrics.json", "runs/oracle/metrics.json",
                 "runs/pred/predictions.json", "runs/ws_pred/metrics.json", "runs/sem.onnx", "runs/pred_onnx/predictions.json",
                 "runs/sweep/comparison.md", "runs/compare.md", "runs/ws_post.md", "runs/coco/annotations/instances_all.json",
                 "runs/augmentations.png"):
        assert (tmp_path / path).is_file(), path
    from seg_ext.tasks.sweep import threads_per_run

    threads = int(os.environ.get("OMP_NUM_THREADS") or threads_per_run(2))  # --jobs 2: the CPUs shared out
    sweep_runs = sorted((tmp_path / "runs" / "sweep").glob("*/seed*/metrics.json"))
    assert len(sweep_runs) == 4 and all(json.loads(m.read_text())["threads"] == threads for m in sweep_runs)
