"""File writing that never leaves half a file, and JSON that has no NaN: the bottom layer, imported by all."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import numpy as np

from seg_ext.errors import SegExtError


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False, sync: bool = False) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash (or an exception in ``write``) never leaves half a file: ``path`` holds the old content or the new.
    ``sync`` flushes the data to disk before the rename (for checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (temporary file + rename)."""
    atomic_write(path, lambda fh: fh.write(text))


def to_jsonable(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically, NaN as null."""
    atomic_write_text(json.dumps(to_jsonable(obj), indent=2) + "\n", path)


def write_jsonl(records: list[Any], path: str | Path) -> None:
    """Write one JSON object per line, atomically, NaN as null."""
    atomic_write_text("".join(json.dumps(to_jsonable(r)) + "\n" for r in records), path)


def check_output_folder(path: Path | None, expected: str = "a folder (new or existing)") -> None:
    """``--output-dir`` must name a folder (or nothing yet), not a file.

    Raises:
        SegExtError: one sentence naming it.
    """
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise SegExtError(f"--output-dir {path} is a file; expected {expected}")



def write_csv(rows: list[dict[str, Any]], path: str | Path, digits: int = 4) -> None:
    """Rows of dicts as a CSV file (header: every key in first-seen order), atomically; floats rounded to
    ``digits`` decimals, NaN and None as empty cells."""
    import csv

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def cell(value: Any) -> Any:
        value = to_jsonable(value)
        if value is None:
            return ""
        return round(value, digits) if isinstance(value, float) else value

    def write(fh: IO) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row.get(k)) for k in columns])

    atomic_write(path, write)
