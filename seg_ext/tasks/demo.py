"""A local demo page: drop an image, see the prediction of a checkpoint, download the mask ``predict.py`` writes.

The server is the standard library's (``http.server``), serving one self-contained page (no script or font from
the network) on 127.0.0.1 and a JSON endpoint; nothing to install beyond seg_ext. Gradio, the obvious choice, was
measured and not taken (docs/analysis.md, "Why not Gradio"): 23 more packages and about 190 MB in this
environment, a Pillow downgrade (13.0 -> 12.3), and 2.5 s to serve its first page.

Every upload goes through the same steps as ``tools/predict.py``: the one image reader (EXIF orientation
applied), the checkpoint's :class:`~seg_ext.inference.Predictor`, and the method's ``write_prediction``, whose
mask or instance PNG is the file offered for download. A file that is not an image, or is empty, gets a message
in the page and the server goes on.
"""

from __future__ import annotations

import base64
import errno
import html
import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, urlparse

from seg_ext.data.files import read_image
from seg_ext.errors import DatasetError, SegExtError
from seg_ext.inference import Predictor

logger = logging.getLogger(__name__)

MAX_UPLOAD = 64 * 1024 * 1024  # bytes
MAX_NAME, MAX_SUFFIX = 120, 10  # characters of an upload's name kept (said in messages, written as its mask's name)


@dataclass
class DemoModel:
    """A checkpoint the page offers: its label in the page and its predictor."""

    label: str
    path: Path
    predictor: Predictor

    def describe(self) -> dict[str, Any]:
        method = self.predictor.method
        return {"label": self.label, "task": self.predictor.task, "method": method.name,
                "classes": self.predictor.class_names}


def load_models(checkpoints: Sequence[Path], device: str = "auto") -> list[DemoModel]:
    """A predictor per checkpoint; labels are the file names, made unique with their folder where they clash.

    Raises:
        SegExtError: a checkpoint that cannot be read (the checkpoint boundary's sentence, naming the file).
    """
    models: list[DemoModel] = []
    for path in checkpoints:
        path = Path(path)
        if not path.is_file():
            raise SegExtError(f"checkpoint {path} does not exist; expected a best.pt or last.pt of a training run")
        predictor = Predictor.from_checkpoint(path, device=device)
        label = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        if any(m.label == label for m in models):
            label = str(path)
        models.append(DemoModel(label, path, predictor))
    return models


class DemoError(Exception):
    """A problem with one upload: shown in the page, the server goes on."""


def predict_upload(model: DemoModel, data: bytes, filename: str) -> dict[str, Any]:
    """What the page shows for one uploaded file: the overlay, the class shares or the instances, and the PNG
    ``predict.py`` would write for it (both as data URLs).

    Raises:
        DemoError: an empty file, or one that is not an image.
    """
    name = Path(filename or "upload").name or "upload"
    if len(name) > MAX_NAME:  # said and written shortened (a file name has at most 255 bytes)
        suffix = Path(name).suffix[:MAX_SUFFIX]
        name = name[:MAX_NAME - 1 - len(suffix)] + "~" + suffix
    if not data:
        raise DemoError(f"{name} is empty (0 bytes); choose a PNG or JPEG image")
    predictor, method = model.predictor, model.predictor.method
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).stem) or "upload"
    stem = stem.encode()[:246].decode(errors="ignore")  # 120 characters of another script can be 480 bytes
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="seg_ext_demo_") as tmp:
        folder = Path(tmp)
        source = folder / f"upload{suffix if 1 < len(suffix) <= MAX_SUFFIX else '.img'}"
        source.write_bytes(data)
        try:
            image = read_image(source)
        except DatasetError:
            raise DemoError(f"{name} is not an image seg_ext can read; choose a PNG or JPEG image") from None
        start = time.perf_counter()
        raw = predictor.run([predictor.prepare(image)], [image.shape[:2]])[0]
        result = predictor.result(raw)
        for sub in (*method.prediction_folders, "overlays"):
            (folder / sub).mkdir()
        entry = method.write_prediction(raw, result, image, stem, folder, predictor.class_names, overlays=True)
        seconds = time.perf_counter() - start
        mask_path = folder / method.prediction_folders[0] / f"{stem}.png"
        overlay = (folder / "overlays" / f"{stem}.jpg").read_bytes()
        return {
            "ok": True, "model": model.label, "task": predictor.task, "file": name,
            "size": [int(image.shape[0]), int(image.shape[1])], "seconds": round(seconds, 3),
            "overlay": "data:image/jpeg;base64," + base64.b64encode(overlay).decode("ascii"),
            "mask": "data:image/png;base64," + base64.b64encode(mask_path.read_bytes()).decode("ascii"),
            "mask_name": f"{stem}.png", "mask_kind": method.prediction_folders[0],
            **({"score_threshold": predictor.score_threshold} if method.coco_results else {}),
            **entry,
        }


class DemoServer:
    """The page and its endpoint over a list of models (``serve_forever`` blocks; ``close`` stops it).

    Raises:
        SegExtError: the port is in use (or the address cannot be bound), in one sentence naming it.
    """

    def __init__(self, models: Sequence[DemoModel], host: str = "127.0.0.1", port: int = 7860) -> None:
        self.models = list(models)
        self.lock = threading.Lock()  # one prediction at a time: the model and its precision are shared
        handler = type("Handler", (_Handler,), {"demo": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SegExtError(f"port {port} on {host} is in use; stop what runs there or choose another with "
                                  "--port") from None
            raise SegExtError(f"cannot serve on {host}:{port} ({exc.strerror}); choose another --host or --port") from None
        self.host, self.port = host, self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def predict(self, index: int, data: bytes, filename: str) -> dict[str, Any]:
        with self.lock:
            return predict_upload(self.models[index], data, filename)


class _Handler(BaseHTTPRequestHandler):
    demo: DemoServer
    server_version = "seg_ext-demo"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, page(self.demo.models).encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/api/models":
            self._json(HTTPStatus.OK, [m.describe() for m in self.demo.models])
        else:
            self._json(HTTPStatus.NOT_FOUND, {"ok": False, "error": f"no such page: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path != "/api/predict":
            self._json(HTTPStatus.NOT_FOUND, {"ok": False, "error": f"no such endpoint: {url.path}"})
            return
        query = parse_qs(url.query)
        try:
            index = int(query.get("model", ["0"])[0])
            if not 0 <= index < len(self.demo.models):
                raise ValueError
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": "unknown model; choose one of the list"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"ok": False, "error": f"the file is {length / 2**20:.0f} MB; the demo takes up to {MAX_UPLOAD // 2**20} MB"})
            return
        data = self.rfile.read(length) if length else b""
        filename = query.get("name", ["upload"])[0]
        try:
            self._json(HTTPStatus.OK, self.demo.predict(index, data, filename))
        except DemoError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": str(exc)})
        except SegExtError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": str(exc)})
        except Exception as exc:  # the page says so; the server goes on (and the log has the traceback, not the page)
            logger.exception("prediction of %s failed", filename[:MAX_NAME])
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"ok": False, "error": f"prediction failed ({exc.__class__.__name__}); "
                                                          "the demo's log in its terminal has the details"})


def page(models: Sequence[DemoModel]) -> str:
    """The demo's one page: everything inline, nothing from the network."""
    def classes(n: int) -> str:
        return "1 class" if n == 1 else f"{n} classes"

    options = "".join(f'<option value="{i}">{html.escape(m.label)} ({html.escape(m.predictor.method.name)}, '
                      f'{classes(len(m.predictor.class_names))})</option>' for i, m in enumerate(models))
    return _PAGE.replace("{{OPTIONS}}", options)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seg_ext demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em}.muted{color:#666;font-size:.9em}
#drop{border:2px dashed #999;border-radius:8px;padding:1.6em;text-align:center;margin:1em 0;background:#fafafa;cursor:pointer}
#drop.over{background:#eef4ff;border-color:#4c72b0}
#message{padding:.6em .8em;border-radius:6px;margin:.6em 0;display:none}
#message.error{display:block;background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0}
#message.busy{display:block;background:#eef4ff;color:#234;border:1px solid #c9d8f0}
#result{display:none}#overlay{max-width:100%;height:auto;border:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
a.button{display:inline-block;padding:.45em .9em;background:#4c72b0;color:white;border-radius:5px;text-decoration:none;margin:.4em 0}
</style></head>
<body>
<h1>seg_ext demo</h1>
<div class="muted">Runs on this machine; nothing is sent anywhere else.</div>
<p><label for="model">Checkpoint: </label><select id="model">{{OPTIONS}}</select></p>
<div id="drop">Drop an image here, or <label for="file" style="text-decoration:underline;cursor:pointer">choose a file</label>
<input id="file" type="file" accept="image/*" style="display:none"></div>
<div id="message" role="status"></div>
<div id="result" data-state="empty">
  <p><b id="title"></b> <span class="muted" id="facts"></span></p>
  <a id="download" class="button" download href="#">Download the mask PNG</a>
  <div><img id="overlay" alt="prediction overlay"></div>
  <div id="details"></div>
</div>
<script>
var drop = document.getElementById('drop'), input = document.getElementById('file');
var message = document.getElementById('message'), result = document.getElementById('result');
function say(text, kind){ message.textContent = text; message.className = kind || ''; }
function esc(s){ var d = document.createElement('div'); d.textContent = String(s); return d.innerHTML; }
function table(headers, rows){
  return '<table><thead><tr>' + headers.map(function(h){return '<th>' + esc(h) + '</th>';}).join('') + '</tr></thead><tbody>' +
    rows.map(function(r){return '<tr>' + r.map(function(v){return typeof v === 'number' ?
      '<td class="num">' + esc(v) + '</td>' : '<td>' + esc(v) + '</td>';}).join('') + '</tr>';}).join('') + '</tbody></table>';
}
function show(out){
  document.getElementById('title').textContent = out.file + ' - ' + out.model;
  document.getElementById('facts').textContent = out.size[1] + ' x ' + out.size[0] + ' px, ' + out.seconds + ' s';
  var link = document.getElementById('download');
  link.href = out.mask; link.download = out.mask_name;
  link.textContent = 'Download ' + out.mask_kind + '/' + out.mask_name;
  document.getElementById('overlay').src = out.overlay;
  var details = '';
  if (out.class_share) {
    var rows = Object.keys(out.class_share).filter(function(k){return out.class_share[k] > 0;})
      .sort(function(a, b){return out.class_share[b] - out.class_share[a];})
      .map(function(k){return [k, Math.round(out.class_share[k] * 10000) / 100];});
    details = '<h3>Class shares (% of pixels)</h3>' + table(['class', '%'], rows);
  } else if (out.instances) {
    details = '<h3>' + out.instances.length + ' instance(s) with score &ge; ' + out.score_threshold + '</h3>' +
      table(['id', 'category', 'score', 'area (px)', 'box (x0, y0, x1, y1)'],
            out.instances.map(function(i){return [i.id, i.category, i.score, i.area, i.box.join(', ')];}));
  }
  document.getElementById('details').innerHTML = details;
  result.style.display = 'block';
  result.setAttribute('data-state', 'done');
}
function send(file){
  if (!file) return;
  say('Predicting ' + file.name + ' ...', 'busy');
  result.setAttribute('data-state', 'busy');
  var model = document.getElementById('model').value;
  fetch('/api/predict?model=' + encodeURIComponent(model) + '&name=' + encodeURIComponent(file.name),
        {method: 'POST', body: file})
    .then(function(r){ return r.json(); })
    .then(function(out){
      if (!out.ok) { say(out.error, 'error'); result.setAttribute('data-state', 'error'); return; }
      say(''); show(out);
    })
    .catch(function(e){ say('The demo server did not answer: ' + e, 'error'); result.setAttribute('data-state', 'error'); });
}
input.addEventListener('change', function(){ send(input.files[0]); input.value = ''; });
drop.addEventListener('click', function(e){ if (e.target === drop) input.click(); });
drop.addEventListener('dragover', function(e){ e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', function(){ drop.classList.remove('over'); });
drop.addEventListener('drop', function(e){ e.preventDefault(); drop.classList.remove('over'); send(e.dataTransfer.files[0]); });
</script>
</body></html>
"""
