"""The package's layering (docs/design.md), enforced with import-linter: nothing imports a layer above it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed; it is in requirements.txt (make venv)"
    return [exe, "--config", str(ROOT / ".importlinter")]


def test_layers_contract_is_kept():
    out = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The same check on a copy of the package with one import pointing up (engine -> tasks) fails."""
    shutil.copytree(ROOT / "seg_ext", tmp_path / "seg_ext")
    trainer = tmp_path / "seg_ext" / "engine" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\nfrom seg_ext.tasks import driver as _upward  # noqa\n")
    out = subprocess.run(_lint_imports()[:1] + ["--config", str(ROOT / ".importlinter")], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    assert "seg_ext.engine.trainer -> seg_ext.tasks.driver" in out.stdout
