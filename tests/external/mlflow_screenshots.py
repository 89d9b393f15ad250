"""The MLflow UI screenshots of docs/experiments.md ("Tracking with MLflow"): MLflow's own server over a tracking
store that seg_ext wrote, shown in headless chromium (Debian's chromium and chromedriver, through Selenium).

    PY=~/.cache/seg_ext/venv/bin/python
    $PY tests/external/mlflow_screenshots.py --store runs/mlflow --sweep pf_lr --output docs/figures

Writes ``mlflow_sweep.png`` (the experiment's runs table, the sweep's run expanded into its runs) and
``mlflow_charts.png`` (the chart view: ``--metric`` per epoch of every run). Not a test: the pictures are for a
person to look at, and they show whatever the store holds.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{store.resolve() / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start")


def browser(width: int, height: int):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: use the given driver, fetch nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_for_text(driver, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in driver.find_element("tag name", "body").text:
            return
        time.sleep(0.5)
    raise SystemExit(f"the page never showed {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="the folder of the SQLite store (its mlflow.db)")
    parser.add_argument("--sweep", required=True, help="the sweep's run name (its folder's name)")
    parser.add_argument("--experiment", default="seg_ext")
    parser.add_argument("--metric", default="val/mIoU", help="the chart view's metric")
    parser.add_argument("--columns", nargs="*", default=["final/test/mIoU", "final/test/IoU/person"],
                        help="metric columns of the runs table")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    proc, uri = start_server(args.store)
    driver = browser(1500, 760)
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(args.experiment)
        assert experiment is not None, f"no experiment {args.experiment!r} in {args.store}"
        eid = experiment.experiment_id
        columns = ",".join(f'"metrics.`{c}`"' for c in args.columns)
        driver.get(f"{uri}/#/experiments/{eid}?viewMode=TABLE&selectedColumns=[{columns}]")
        wait_for_text(driver, args.sweep)
        time.sleep(2)
        for button in driver.find_elements(By.CSS_SELECTOR, "button"):  # the sweep's row: expand its runs
            label = (button.get_attribute("aria-label") or "") + " " + (button.get_attribute("data-testid") or "")
            if "expand" in label.lower() or "nested" in label.lower():
                button.click()
                break
        time.sleep(3)
        args.output.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.output / "mlflow_sweep.png"))
        driver.get(f"{uri}/#/experiments/{eid}?viewMode=CHART")
        wait_for_text(driver, args.metric, timeout=90)
        time.sleep(4)
        driver.save_screenshot(str(args.output / "mlflow_charts.png"))
        print(f"wrote {args.output / 'mlflow_sweep.png'} and {args.output / 'mlflow_charts.png'}")
    finally:
        driver.quit()
        os.killpg(proc.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
