"""Run outputs a person reads: ``metrics.json`` and ``report.md`` (markdown with the plots beside it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from seg_ext.io import atomic_write_text


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: fixed digits, ``n/a`` for None or NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub-flavoured markdown table; numbers formatted with ``fmt``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


class Report:
    """A markdown report assembled section by section, saved as ``report.md``."""

    def __init__(self, title: str) -> None:
        self.parts: list[str] = [f"# {title}\n"]

    def heading(self, text: str, level: int = 2) -> "Report":
        self.parts.append(f"{'#' * level} {text}\n")
        return self

    def text(self, text: str) -> "Report":
        self.parts.append(text.rstrip() + "\n")
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> "Report":
        self.parts.append(markdown_table(headers, rows, digits) + "\n")
        return self

    def image(self, path: str, caption: str) -> "Report":
        self.parts.append(f"![{caption}]({path})\n\n*{caption}*\n")
        return self

    def bullets(self, items: Sequence[str]) -> "Report":
        self.parts.append("\n".join(f"- {item}" for item in items) + "\n")
        return self

    def save(self, path: str | Path) -> None:
        atomic_write_text("\n".join(self.parts), path)
