"""The README's "Use the library from Python" block runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- python-api:start -->\s*```python\n(.*?)```\s*<!-- python-api:end -->", text, re.S)
    assert match, "README.md has no python-api block"
    return match.group(1)


def test_readme_training_loop_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its run folder is relative
    exec(compile(_readme_block(), "README.md:python-api", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert re.search(r"best val mIoU \d+\.\d at epoch [12]", printed), printed
    history = [json.loads(line) for line in (tmp_path / "runs/from_python/metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all("val/mIoU" in h for h in history)
    assert (tmp_path / "runs/from_python/best.pt").is_file()
