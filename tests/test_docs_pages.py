"""Every shell block of docs/*.md runs as a newcomer types it (the full tier): each page top to bottom, its blocks in
order as one script, in a fresh folder beside a ``shared/`` folder (so ``../shared/data/...`` resolves as written),
with one change the test owns (:func:`shortened`): trainings of one epoch on the first 4 images of each split, one
seed and the first value of each grid key per sweep, and Penn-Fudan on 12 of its real images. A block marked on its
page (``<!-- test: gpu -->``, ``cluster``, ``hours``, ``your-data``, ``network``) is not run here; the fast tier
(``test_docs_commands.py``) checks its options like every other block's. A block marked ``<!-- test: serves URL -->``
runs in the background until URL answers, then gets Ctrl-C. The README's block is run by ``test_docs.py``."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import CHECKOUT_LINKS, ROOT, alive, run_docs_script

PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCED = re.compile(r"(?:<!-- test: ([^>]*?) -->\s*\n)?^( *)```bash\n(.*?)^\2```", re.S | re.M)
NOT_RUN = ("gpu", "cluster", "hours", "your-data", "network")  # a GPU, a cluster, hours, the reader's data or account
SERVES = re.compile(r"serves (http://\S+)")
REAL_SHARED = ROOT.parent / "shared"
PENNFUDAN = REAL_SHARED / "data" / "PennFudanPed"
# 12 of the real images: the files the pages name (FudanPed00001.png, PennPed0001*.png) among them
SUBSET = [f"FudanPed0000{i}" for i in range(1, 7)] + [f"PennPed0001{i}" for i in range(6)]
MAX_IMAGES = 4  # a training's splits cut to their first 4 images (data.max_images; a resume keeps its run's)


def blocks(page: Path) -> list[tuple[str | None, str]]:
    """The page's shell blocks in order, each with its mark (None: run)."""
    return [(m.group(1), m.group(3)) for m in FENCED.finditer(page.read_text())]


def _comment_start(line: str) -> int:
    """Where a shell comment starts on the line (outside quotes), or its length."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def _first_value(setting: str) -> str:
    """A grid's ``key=v1,v2,...`` (quoted or not; commas inside [...] belong to a value) as ``key=v1``."""
    quote = setting[0] if setting[:1] in "'\"" else ""
    key, values = setting.strip("'\"").split("=", 1)
    depth = 0
    for i, char in enumerate(values):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values = values[:i]
            break
    return f"{quote}{key}={values}{quote}"


def shortened(line: str) -> str:
    """The one change the test makes to a page's command: a training (``train_semantic``, ``train_instance``,
    ``sweep``; not ``--eval-only``) runs 1 epoch on the first 4 images of each split (``data.max_images``; a
    ``--resume`` continues its run to 2; ``train.epochs=0`` stays), a sweep 1 seed, the first value of each
    ``--grid`` key (the fast tier checks every value) and at most 2 trials of which the best 1 is rerun, a
    ``benchmarks/run.py`` its ``--smoke`` form (every step once, at the smallest sizes), and a command on ``$D`` (the
    test's 12 Penn-Fudan images) splits them 7 / 2 / 3."""
    cut = _comment_start(line)
    command, comment = line[:cut].rstrip(), line[cut:]
    on_pennfudan = "$D" in command
    if re.search(r"tools/(train_semantic|train_instance|sweep)\.py", command) and "--eval-only" not in command:
        resume = "--resume" in command
        epochs = 2 if resume else 0 if re.search(r"train\.epochs=0\b", command) else 1
        command = re.sub(r" --opts(?= --|$)", "", re.sub(r" train\.epochs=\S+", "", command))
        data = [f"data.max_images={MAX_IMAGES}"] + (["data.val=2", "data.test=3"] if on_pennfudan else [])
        extras = [f"train.epochs={epochs}"] + ([] if resume else data)  # a resume keeps its run's data
        if " --opts " in command:
            command = command.replace(" --opts ", f" --opts {' '.join(extras)} ", 1)
        else:
            command += f" --opts {' '.join(extras)}"
        command = re.sub(r" --seeds( \d+)+", " --seeds 0", command)
        command = re.sub(r" --trials \d+", " --trials 2", command)
        command = re.sub(r" --top \d+", " --top 1", command)
        command = re.sub(r"(?<= --grid ).*?(?= --|$)", lambda m: " ".join(_first_value(w) for w in m.group(0).split()),
                         command)
    elif "tools/convert_pennfudan_to_coco.py" in command and on_pennfudan:
        command += " --val 2 --test 3"
    elif "benchmarks/run.py" in command:
        command += " --smoke"
    return f"{command} {comment}".rstrip()


def script(page: Path, server_check: str) -> str:
    """The page's blocks that run, in order, shortened, the environment's Python as ``$PY``; a ``serves`` block's
    last command in the background, then ``server_check URL PID``."""
    parts = []
    for mark, text in blocks(page):
        if mark in NOT_RUN:
            continue
        lines = [shortened(line) for line in text.replace("\\\n", " ").splitlines()]
        if mark is not None:
            url = SERVES.fullmatch(mark)
            assert url, f"{page.name}: unknown mark <!-- test: {mark} -->; expected one of {NOT_RUN} or 'serves URL'"
            # job control on: a background job of a script otherwise ignores Ctrl-C (SIGINT), as bash sets it up
            lines[-1] = "set -m; " + lines[-1][:_comment_start(lines[-1])].rstrip() + " &"
            lines.append(f"set +m; {server_check} {url.group(1)} $!; wait $!")  # its exit status after Ctrl-C
        parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"


def _uses_pennfudan(page: Path) -> bool:
    return any(mark not in NOT_RUN and "$D" in text for mark, text in blocks(page))


RUNNABLE = [page for page in PAGES if any(mark not in NOT_RUN for mark, _ in blocks(page))]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A ``shared/`` folder as the pages expect beside the checkout: the annotation samples, and 12 real Penn-Fudan
    images (their masks and annotation files) linked from the real dataset."""
    folder = tmp_path_factory.mktemp("pages") / "shared"
    (folder / "data").mkdir(parents=True)
    if (REAL_SHARED / "data" / "annotation_samples").is_dir():
        (folder / "data" / "annotation_samples").symlink_to(REAL_SHARED / "data" / "annotation_samples")
    if PENNFUDAN.is_dir():
        subset = folder / "data" / "PennFudanPed"
        for sub, suffix in (("PNGImages", ".png"), ("PedMasks", "_mask.png"), ("Annotation", ".txt")):
            (subset / sub).mkdir(parents=True)
            for stem in SUBSET:
                (subset / sub / f"{stem}{suffix}").symlink_to(PENNFUDAN / sub / f"{stem}{suffix}")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("page", [pytest.param(p, id=p.name) for p in RUNNABLE])
def test_a_page_runs_top_to_bottom(page, shared, tmp_path):
    if _uses_pennfudan(page) and not PENNFUDAN.is_dir():
        pytest.skip(f"{page.name} runs on Penn-Fudan, which is not at {PENNFUDAN}")
    if "annotation_samples" in page.read_text() and not (shared / "data" / "annotation_samples").exists():
        pytest.skip(f"{page.name} runs on the annotation samples, which are not at {REAL_SHARED / 'data'}")
    checkout = shared.parent / f"checkout_{page.stem}"
    checkout.mkdir()
    text = script(page, f"{sys.executable} {Path(__file__).resolve()} serves")
    out = run_docs_script(text, checkout, tmp_path / "generated", timeout=900)
    (tmp_path / "trace.log").write_text(out.stderr)  # the page's commands with their start times, kept for a look
    assert out.returncode == 0, f"{page.name}, run as:\n{text}\n...\n{out.stderr[-6000:]}"
    assert not [p for p in checkout.iterdir() if p.name not in (*CHECKOUT_LINKS, "runs")], (
        f"{page.name} wrote outside runs/: {sorted(p.name for p in checkout.iterdir())}")


def serves(url: str, pid: int, timeout: float = 180.0) -> int:
    """Wait until ``url`` answers 200 while ``pid`` lives, then Ctrl-C it and wait for it to end: 0 if it served
    and ended, 1 otherwise (saying why)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if not alive(pid) or time.monotonic() > deadline:
            print(f"{url} never answered (server {pid})", file=sys.stderr)
            return 1
        time.sleep(0.5)
    os.kill(pid, signal.SIGINT)
    for _ in range(60):
        if not alive(pid):  # (a zombie until the page's shell reaps it)
            return 0
        time.sleep(0.5)
    print(f"the server {pid} did not end within 30 s of Ctrl-C", file=sys.stderr)
    os.kill(pid, signal.SIGKILL)
    return 1


def test_each_mark_is_known_and_each_page_sets_up_what_it_runs():
    """(Fast.) A typo in a mark would leave its block unrun or fail the page; a page whose first run block uses $PY
    must set it there."""
    for page in PAGES:
        for mark, _ in blocks(page):
            assert mark is None or mark in NOT_RUN or SERVES.fullmatch(mark), (
                f"{page.name}: unknown mark <!-- test: {mark} -->")
        run = [text for mark, text in blocks(page) if mark not in NOT_RUN]
        assert not run or "$PY" not in run[0] or "PY=" in run[0], f"{page.name}: its first block that runs uses $PY before setting it"
    assert len(RUNNABLE) >= 6


def test_the_shortening_is_what_the_test_says():
    assert shortened("$PY tools/train_semantic.py --output-dir runs/x  # note") == (
        "$PY tools/train_semantic.py --output-dir runs/x --opts train.epochs=1 data.max_images=4 # note")
    assert shortened("$PY tools/train_semantic.py --output-dir runs/x --resume --opts train.epochs=20") == (
        "$PY tools/train_semantic.py --output-dir runs/x --resume --opts train.epochs=2")
    assert shortened("$PY tools/sweep.py --data-root $D --seeds 0 1 2 --opts data.resize=squash train.epochs=50 --output-dir runs/s") == (
        "$PY tools/sweep.py --data-root $D --seeds 0 --opts train.epochs=1 data.max_images=4 data.val=2 data.test=3 data.resize=squash "
        "--output-dir runs/s")
    assert shortened('$PY tools/sweep.py --grid a.b=0,0.5 "c.d=null,[0.5,1]" --seeds 0 1 --output-dir o') == (
        '$PY tools/sweep.py --grid a.b=0 "c.d=null" --seeds 0 --output-dir o --opts train.epochs=1 data.max_images=4')
    assert shortened('$PY tools/sweep.py --grid "c.d=[0.5,1],null" --top 2') == (
        '$PY tools/sweep.py --grid "c.d=[0.5,1]" --top 1 --opts train.epochs=1 data.max_images=4')
    assert shortened("$PY tools/train_semantic.py --output-dir runs/i --opts train.epochs=0").endswith(
        " --opts train.epochs=0 data.max_images=4")
    assert shortened("$PY tools/train_semantic.py --eval-only --checkpoint runs/x/best.pt") == (
        "$PY tools/train_semantic.py --eval-only --checkpoint runs/x/best.pt")
    assert shortened('$PY tools/predict.py --input "a #b" # c') == '$PY tools/predict.py --input "a #b" # c'


if __name__ == "__main__" and sys.argv[1:2] == ["serves"]:
    sys.exit(serves(sys.argv[2], int(sys.argv[3])))
