"""Run outputs a person reads: ``metrics.json``, ``report.md`` (markdown with the plots beside it) and
``report.html`` (the same report as one self-contained page: pictures embedded, tables sortable, no network).

A report is assembled section by section (:class:`Report`); :meth:`Report.save` writes both renderings from the
same parts, so they never disagree.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
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


def shown_split(summary: dict[str, Any], key: str) -> str | None:
    """The split a report section shows: test where the run's summary has ``key`` for it, else val (None: neither)."""
    return next((s for s in ("test", "val") if key in summary.get(s, {})), None)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub-flavoured markdown table; numbers formatted with ``fmt``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


@dataclass
class GalleryItem:
    """One picture of a gallery: its file (relative to the report), a title and its scores (label -> value)."""

    path: str
    title: str
    scores: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Part:
    kind: str  # heading, text, table, image, bullets, gallery
    content: Any
    extra: Any = None


class Report:
    """A report assembled section by section, saved as ``report.md`` and ``report.html``."""

    def __init__(self, title: str, folder: str | Path = ".") -> None:
        self.title, self.folder = title, Path(folder)  # folder: where the report's pictures are
        self.parts: list[_Part] = []

    def heading(self, text: str, level: int = 2) -> "Report":
        self.parts.append(_Part("heading", text, level))
        return self

    def text(self, text: str) -> "Report":
        self.parts.append(_Part("text", text.rstrip()))
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> "Report":
        self.parts.append(_Part("table", (list(headers), [list(r) for r in rows]), digits))
        return self

    def image(self, path: str, caption: str) -> "Report":
        self.parts.append(_Part("image", path, caption))
        return self

    def bullets(self, items: Sequence[str]) -> "Report":
        self.parts.append(_Part("bullets", list(items)))
        return self

    def gallery(self, items: Sequence[GalleryItem], digits: int = 1) -> "Report":
        """Pictures with their titles and scores (the worst images of a split, say)."""
        self.parts.append(_Part("gallery", list(items), digits))
        return self

    # ---- markdown

    def markdown(self) -> str:
        out = [f"# {self.title}\n"]
        for part in self.parts:
            if part.kind == "heading":
                out.append(f"{'#' * part.extra} {part.content}\n")
            elif part.kind == "text":
                out.append(part.content + "\n")
            elif part.kind == "table":
                out.append(markdown_table(*part.content, digits=part.extra) + "\n")
            elif part.kind == "image":
                out.append(f"![{part.extra}]({part.content})\n\n*{part.extra}*\n")
            elif part.kind == "bullets":
                out.append("\n".join(f"- {item}" for item in part.content) + "\n")
            elif part.kind == "gallery":
                for item in part.content:
                    scores = ", ".join(f"{k} {fmt(v, part.extra)}" for k, v in item.scores.items())
                    out.append(f"![{item.title}]({item.path})\n\n*{item.title}*" + (f": {scores}" if scores else "") + "\n")
        return "\n".join(out)

    # ---- HTML

    def html(self, base: Path) -> str:
        """The report as one page; pictures (paths relative to ``base``) embedded as data URLs."""
        body = [f"<h1>{_e(self.title)}</h1>"]
        for part in self.parts:
            if part.kind == "heading":
                body.append(f"<h{part.extra}>{_inline(part.content)}</h{part.extra}>")
            elif part.kind == "text":
                body.append(f"<p>{_inline(part.content)}</p>")
            elif part.kind == "table":
                headers, rows = part.content
                head = "".join(f'<th title="click to sort">{_e(h)}</th>' for h in headers)
                lines = "".join("<tr>" + "".join(_cell(v, part.extra) for v in row) + "</tr>" for row in rows)
                body.append(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>')
            elif part.kind == "image":
                body.append(f'<figure><img src="{_data_url(base / part.content)}" alt="{_e(part.extra)}">'
                            f"<figcaption>{_e(part.extra)}</figcaption></figure>")
            elif part.kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in part.content) + "</ul>")
            elif part.kind == "gallery":
                figures = []
                for item in part.content:
                    scores = "".join(f"<tr><th>{_e(k)}</th>{_cell(v, part.extra)}</tr>" for k, v in item.scores.items())
                    figures.append(f'<figure class="gallery-item"><img src="{_data_url(base / item.path)}" alt="{_e(item.title)}">'
                                   f"<figcaption>{_e(item.title)}<table class=\"scores\">{scores}</table></figcaption></figure>")
                body.append('<div class="gallery">' + "".join(figures) + "</div>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(self.title)}</title>"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head>"
                f"<body>{''.join(body)}<script>{_SORT_JS}</script></body></html>\n")

    def save(self, path: str | Path) -> None:
        """Write ``path`` (markdown) and, beside it, the same report as ``.html``."""
        path = Path(path)
        atomic_write_text(self.markdown(), path)
        atomic_write_text(self.html(path.parent), path.with_suffix(".html"))


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Markdown's inline code (`x`) as HTML; everything else escaped."""
    pieces = str(text).split("`")
    if len(pieces) % 2 == 0:  # an unpaired backtick: no code spans
        return _e(text)
    return "".join(f"<code>{_e(p)}</code>" if k % 2 else _e(p) for k, p in enumerate(pieces))


def _cell(value: Any, digits: int) -> str:
    """A table cell; numbers carry their value for sorting."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        sort = value if math.isfinite(float(value)) else ""
        return f'<td class="num" data-sort="{sort}">{_e(fmt(value, digits))}</td>'
    return f"<td>{_inline(fmt(value, digits))}</td>"


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}


def _data_url(path: Path) -> str:
    """The file as a data URL (an empty picture when it is missing, so the page still opens)."""
    if not path.is_file():
        return ""
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;display:block;overflow-x:auto;max-width:100%}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e4e4e4}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1em}
.gallery-item{margin:0;border:1px solid #ddd;padding:.5em;background:#fafafa}
table.scores{font-size:.85em;margin-top:.3em}table.scores th{text-align:left;font-weight:normal}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row){var c = row.cells[col]; if(!c) return ''; var v = c.getAttribute('data-sort');
        return v === null ? c.textContent.trim().toLowerCase() : (v === '' ? NaN : parseFloat(v));}
      rows.sort(function(a, b){
        var x = key(a), y = key(b);
        if (typeof x === 'number' && typeof y === 'number') {
          if (isNaN(x)) return 1; if (isNaN(y)) return -1; return asc ? x - y : y - x;
        }
        return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""
