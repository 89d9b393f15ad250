"""Shared fixtures: tiny datasets written in each on-disk format, once per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def pytest_collection_modifyitems(config, items):
    """The GPU tier (``cuda`` marker) skips, saying why, where no CUDA device is visible."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the GPU tier, make test-gpu); none is visible here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _generated_dir(tmp_path_factory):
    """Keep generated datasets of the tests out of the checkout."""
    path = tmp_path_factory.mktemp("generated")
    old = os.environ.get("SEG_EXT_GENERATED_DIR")
    os.environ["SEG_EXT_GENERATED_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SEG_EXT_GENERATED_DIR", None)
    else:
        os.environ["SEG_EXT_GENERATED_DIR"] = old


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory) -> Path:
    """Synthetic 9-class scenes in the plain folder format: 8 train, 4 val, 4 test, 64x80."""
    from seg_ext.data.synthetic import ensure_synthetic_scenes

    return ensure_synthetic_scenes(tmp_path_factory.mktemp("scenes") / "ds", 8, 4, 4, size=(64, 80), seed=1)


@pytest.fixture(scope="session")
def pennfudan_root(tmp_path_factory) -> Path:
    """Synthetic pedestrians in the Penn-Fudan layout: 12 images of 96-128 px."""
    from seg_ext.data.synthetic import write_pedestrians

    root = tmp_path_factory.mktemp("pennfudan") / "PennFudanPed"
    write_pedestrians(root, 12, seed=3, size_range=(96, 128))
    return root


@pytest.fixture(scope="session")
def stanford_root(tmp_path_factory) -> Path:
    """A tiny Stanford Background layout: images/<id>.jpg and labels/<id>.regions.txt with -1..7."""
    root = tmp_path_factory.mktemp("stanford") / "iccv09Data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = 40, 52
        labels = np.full((h, w), 0, np.int64)
        labels[h // 2 :] = rng.integers(1, 8)
        labels[:4, :4] = -1
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i:07d}.jpg")
        (root / "labels" / f"{i:07d}.regions.txt").write_text("\n".join(" ".join(map(str, r)) for r in labels) + "\n")
    return root


def write_folder_dataset(root: Path, masks: list[np.ndarray], classes: list[str], images: list[np.ndarray] | None = None) -> Path:
    """Write a plain folder dataset from label maps (random images unless given)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        image = images[i] if images is not None else rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"im{i:03d}.png")
    return root


ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """Import tools/<name>.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_tool(name: str, argv: list[str]) -> int:
    """Run a tool's main in this process the way its __main__ guard does; returns the exit code."""
    from seg_ext.cli import run_tool

    module = load_tool(name)
    return run_tool(module.main, module.get_args_parser().parse_args([str(a) for a in argv]))


def process(pid: int) -> tuple[str, int, str] | None:
    """A process as Linux's /proc shows it: (state, parent pid, command line with spaces); None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the command name
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), cmdline


def processes() -> dict[int, tuple[str, int, str]]:
    """Every process of the machine (pid -> :func:`process`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := process(int(entry.name))) is not None:
            found[int(entry.name)] = info
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    info = process(pid)
    return info is not None and info[0] != "Z"


# what a docs script run needs of the checkout, linked into its fresh folder (the folders the pages' commands name)
CHECKOUT_LINKS = ("tools", "configs", "benchmarks", "tests")
DOCS_PY = "PY=~/.cache/seg_ext/venv/bin/python"  # how the README and docs pages set $PY


def run_docs_script(script: str, folder: Path, generated: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a script of README or docs commands as a newcomer would in a checkout: ``bash -e -x`` in ``folder``
    (holding links to :data:`CHECKOUT_LINKS`), ``$PY`` this environment's Python, generated datasets in
    ``generated``, each traced command with the seconds since the start, and Ctrl-C as in a terminal whatever
    this process inherited."""
    for name in CHECKOUT_LINKS:
        (folder / name).symlink_to(ROOT / name)
    script = "PS4='+ [$SECONDS s] '\n" + script.replace(DOCS_PY, f"PY={sys.executable}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEG_EXT_GENERATED_DIR": str(generated)}
    return subprocess.run(["bash", "-e", "-x", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_tool_process(name: str, argv: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run tools/<name>.py in a process of its own, as a user would; returns the finished process (text output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *[str(a) for a in argv]],
                          capture_output=True, text=True, env=env, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium and chromium-driver


def chromium(width: int, height: int):
    """Debian's chromium, headless, through Selenium and the given chromedriver (Selenium Manager fetches
    nothing), with a window of ``width`` x ``height``."""
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


class MlflowServer:
    """``mlflow server`` on a free port of 127.0.0.1 over the SQLite store ``store/mlflow.db`` (default
    ``folder``; with ``artifacts``: serving the artifacts from that folder), its output in ``folder/server.log``;
    answering its health check when made."""

    def __init__(self, folder: Path, artifacts: Path | None = None, timeout: float = 180, store: Path | None = None,
                 port: int | None = None) -> None:
        self.uri = f"http://127.0.0.1:{port or free_port()}"
        self.log_path = folder / "server.log"
        self.log = open(self.log_path, "a")
        serve = ["--artifacts-destination", str(artifacts)] if artifacts is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", self.uri.rsplit(":", 1)[1],
             "--backend-store-uri", f"sqlite:///{(store or folder).resolve() / 'mlflow.db'}", *serve, "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(self.log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"mlflow server did not answer in {timeout:.0f} s: {self.log_path.read_text()[-3000:]}")

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
