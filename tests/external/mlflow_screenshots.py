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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's browser and server
from conftest import MlflowServer, chromium  # noqa: E402


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
    parser.add_argument("--columns", nargs="*", default=["final/val/mIoU", "final/test/mIoU", "final/test/IoU/person"],
                        help="metric columns of the runs table")
    parser.add_argument("--params", nargs="*", default=["train.lr", "train.seed"], help="param columns of the runs table")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    log = Path(tempfile.mkdtemp(prefix="mlflow_screenshots."))  # the server's log (the store is only read)
    server = MlflowServer(log, artifacts=None, store=args.store)
    uri = server.uri
    driver = chromium(1500, 640)
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(args.experiment)
        assert experiment is not None, f"no experiment {args.experiment!r} in {args.store}"
        driver.get(f"{uri}/#/experiments/{experiment.experiment_id}/runs")
        wait_for_text(driver, args.sweep)
        for label in ("Close", "Toggle sidebar"):  # the assistant's pane and the sidebar: room for the table
            for button in driver.find_elements(By.CSS_SELECTOR, f"button[aria-label='{label}']"):
                button.click()
        time.sleep(1)
        driver.find_elements(By.CSS_SELECTOR, "[data-testid='column-selection-dropdown']")[0].click()
        time.sleep(1)
        for column in ("Dataset", "Models", "Source", *args.params, *args.columns):  # untick three, tick the rest
            search = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']")  # (re-rendered)
            search.send_keys(Keys.CONTROL, "a")
            search.send_keys(Keys.BACKSPACE)
            search.send_keys(column)
            time.sleep(1)
            left, top = search.location["x"] - 40, search.location["y"]  # the menu's entries: below its search box
            matches = [e for e in driver.find_elements(By.XPATH, f"//*[text()='{column}']")  # the whole name, not
                       if e.is_displayed() and e.location["x"] >= left and e.location["y"] > top  # a highlighted part
                       and e.find_element(By.XPATH, "..").text.strip() == column]
            assert matches, f"no column {column!r} in the Columns menu"
            matches[0].click()
            time.sleep(0.5)
        driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']").send_keys(Keys.ESCAPE)
        time.sleep(1)
        name = driver.find_element(By.XPATH, f"//*[text()='{args.sweep}']")
        cell = name.find_element(By.XPATH, "./ancestor::div[contains(@class, 'ag-cell')][1]")
        cell.find_element(By.CSS_SELECTOR, "button").click()  # the sweep's row: expand its runs
        time.sleep(1)
        header = driver.find_element(By.XPATH, "//*[text()='Run Name']/ancestor::div[contains(@class, 'ag-header-cell')][1]")
        handle = header.find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")  # a wider name column
        ActionChains(driver).click_and_hold(handle).move_by_offset(110, 0).release().perform()
        ActionChains(driver).move_to_element(driver.find_element(By.XPATH, "//*[contains(text(), 'matching runs')]")).perform()
        time.sleep(2)
        args.output.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.output / "mlflow_sweep.png"))
        table = driver.find_element(By.XPATH, "//*[text()='Group by']")  # the view switch: table, chart, ...
        switch = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                       "return document.elementFromPoint(r.left + 41, r.top - 40);", table)
        switch.click()  # (the chart view: the second button above 'Group by')
        time.sleep(4)
        driver.set_window_size(1500, 800)
        driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']").send_keys(args.metric)
        time.sleep(2)
        for header in driver.find_elements(By.XPATH, "//*[normalize-space(text())='final/val']"):
            if header.is_displayed():  # fold the final metrics' section (its chevron): the epochs' chart shows
                driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                      "document.elementFromPoint(r.left - 31, r.top + r.height / 2)"
                                      ".dispatchEvent(new MouseEvent('click', {bubbles: true}));", header)
        ActionChains(driver).move_to_element(driver.find_element(By.XPATH, "//*[contains(text(), 'matching runs')]")).perform()
        time.sleep(5)
        driver.save_screenshot(str(args.output / "mlflow_charts.png"))
        print(f"wrote {args.output / 'mlflow_sweep.png'} and {args.output / 'mlflow_charts.png'}")
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main()
