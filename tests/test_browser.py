"""The demo page and report.html as a person meets them: in a real headless browser (Debian's chromium, driven by
Selenium through chromedriver). The demo runs as a real process on a free port; an image is uploaded through the
page's file input and the mask offered for download must equal the Predictor's for that image. Without a browser
(or Selenium) these tests skip, saying what is missing; `.ci/run` installs both.

The demo's refusals (a port in use, a checkpoint that cannot be read) need no browser and run in the fast tier.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMEDRIVER, CHROMIUM, ROOT, call_tool, chromium
REAL_PENNFUDAN = ROOT.parent / "shared" / "data" / "PennFudanPed"
SEMANTIC = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "train.epochs=1",
            "model.base_width=4", "model.depth=2", "report.num_overlays=1", "report.num_worst=3"]
WATERSHED = ["data.val=2", "data.test=3", "data.batch_size=4", "data.num_workers=0", "train.epochs=2",
             "report.num_overlays=1", "watershed.input_size=[64,64]", "model.base_width=4", "model.depth=2", "train.lr=0.01"]


def _missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{path} is not installed (Debian packages chromium and chromium-driver; .ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -r requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    driver = chromium(1200, 1400)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def semantic_run(scenes_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "semantic"
    assert call_tool("train_semantic", ["--data-root", scenes_root, "--output-dir", out, "--opts", *SEMANTIC]) == 0
    return out


@pytest.fixture(scope="module")
def runs(semantic_run, pennfudan_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("browser") / "watershed"
    assert call_tool("train_instance", ["--method", "watershed", "--data-root", pennfudan_root, "--output-dir", out,
                                        "--opts", *WATERSHED]) == 0
    return {"semantic": semantic_run, "watershed": out}


def _penn_fudan_image(pennfudan_root: Path) -> Path:
    """A real Penn-Fudan photo where the dataset is beside the checkout, else one of the synthetic pedestrians."""
    real = REAL_PENNFUDAN / "PNGImages" / "FudanPed00001.png"
    return real if real.is_file() else sorted((pennfudan_root / "PNGImages").iterdir())[0]


class Demo:
    """tools/demo.py in its own process on a free port."""

    def __init__(self, checkpoints: list[Path]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        args = [sys.executable, str(ROOT / "tools" / "demo.py"), "--port", "0", "--device", "cpu"]
        for ckpt in checkpoints:
            args += ["--checkpoint", str(ckpt)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        line = self.process.stdout.readline()
        assert "serving" in line, line + self.process.stdout.read()
        self.url = line.split(" on ")[1].split()[0]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _upload(driver, demo: Demo, model: int, path: Path) -> str:
    """Choose model ``model``, upload ``path`` through the page's file input, wait; the result's state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if driver.current_url != demo.url:
        driver.get(demo.url)
    Select(driver.find_element(By.ID, "model")).select_by_index(model)
    result = driver.find_element(By.ID, "result")
    driver.execute_script("arguments[0].setAttribute('data-state', 'empty')", result)
    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 120).until(lambda d: result.get_attribute("data-state") in ("done", "error"))
    return result.get_attribute("data-state")


def _downloaded_png(driver) -> tuple[np.ndarray, str]:
    from selenium.webdriver.common.by import By

    link = driver.find_element(By.ID, "download")
    href = link.get_attribute("href")
    assert href.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1])))), link.get_attribute("download")


@pytest.mark.slow
def test_demo_page_upload_gives_the_predictors_mask(browser, runs, pennfudan_root, tmp_path):
    from selenium.webdriver.common.by import By

    from seg_ext.inference import Predictor

    image_path = _penn_fudan_image(pennfudan_root)
    checkpoints = [runs["semantic"] / "best.pt", runs["watershed"] / "best.pt"]
    demo = Demo(checkpoints)
    try:
        browser.get(demo.url)
        options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
        assert len(options) == 2 and "semantic" in options[0] and "watershed" in options[1]

        # semantic: the class-id PNG equals the Predictor's labels for the same file
        assert _upload(browser, demo, 0, image_path) == "done"
        mask, name = _downloaded_png(browser)
        expected = Predictor.from_checkpoint(checkpoints[0], device="cpu")(image_path)["labels"]
        assert name == f"{image_path.stem}.png" and mask.shape == expected.shape
        np.testing.assert_array_equal(mask, expected)
        assert "Class shares" in browser.find_element(By.ID, "details").text
        assert browser.execute_script("return document.getElementById('overlay').naturalWidth") > 0

        # an upload that is not an image, and an empty one: a message in the page; the server goes on
        text = tmp_path / "notes.png"
        text.write_text("not a picture")
        assert _upload(browser, demo, 0, text) == "error"
        assert "notes.png is not an image" in browser.find_element(By.ID, "message").text
        empty = tmp_path / "empty.jpg"
        empty.write_bytes(b"")
        assert _upload(browser, demo, 1, empty) == "error"
        assert "empty.jpg is empty (0 bytes)" in browser.find_element(By.ID, "message").text
        assert demo.process.poll() is None

        # the second checkpoint, chosen in the page: the instance PNG equals the Predictor's instance map
        assert _upload(browser, demo, 1, image_path) == "done"
        ids, _ = _downloaded_png(browser)
        expected = Predictor.from_checkpoint(checkpoints[1], device="cpu")(image_path)["instance_map"]
        assert expected.max() > 0  # at least one instance: the comparison is not of two empty maps
        np.testing.assert_array_equal(ids, expected)
        assert "instance(s) with score" in browser.find_element(By.ID, "details").text
        browser.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        demo.close()


@pytest.mark.slow
def test_report_html_renders_its_pictures_and_sorts_its_tables(browser, runs, tmp_path):
    from selenium.webdriver.common.by import By

    for kind, run in runs.items():
        page = run / "report.html"
        moved = tmp_path / kind  # opened from anywhere, without the run folder beside it
        moved.mkdir()
        shutil.copy(page, moved / "report.html")
        browser.get((moved / "report.html").as_uri())
        images = browser.find_elements(By.TAG_NAME, "img")
        gallery = browser.find_elements(By.CSS_SELECTOR, ".gallery img")
        assert len(gallery) == 3 and len(images) > len(gallery)
        deadline = time.time() + 30
        while time.time() < deadline and not all(browser.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images):
            time.sleep(0.2)
        widths = [browser.execute_script("return arguments[0].naturalWidth", img) for img in images]
        assert all(w > 0 for w in widths), widths
    # the per-image table sorts by a clicked column (the semantic report is the last page opened: see above)
    browser.get((tmp_path / "semantic" / "report.html").as_uri())
    table = next(t for t in browser.find_elements(By.CSS_SELECTOR, "table.sortable")
                 if "pixel_acc" in t.find_element(By.TAG_NAME, "thead").text)
    header = next(h for h in table.find_elements(By.TAG_NAME, "th") if h.text.strip() == "pixel_acc")
    column = [h.text for h in table.find_elements(By.TAG_NAME, "th")].index(header.text)

    def values() -> list[float]:
        return [float(r.find_elements(By.TAG_NAME, "td")[column].text)
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    header.click()
    assert values() == sorted(values())
    header.click()
    assert values() == sorted(values(), reverse=True)


def test_demo_refuses_an_unreadable_checkpoint_and_a_port_in_use(semantic_run, tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    assert call_tool("demo", ["--checkpoint", bad, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert call_tool("demo", ["--checkpoint", tmp_path / "missing.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert call_tool("demo", ["--checkpoint", semantic_run / "best.pt", "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["p" * 5000 + ".jpg", "\u884c\u4eba" * 2000 + ".png", "photo." + "x" * 3000])
def test_a_long_upload_name_is_shortened_not_a_server_error(name, semantic_run, scenes_root):
    from seg_ext.tasks.demo import load_models, predict_upload

    model, = load_models([semantic_run / "best.pt"], device="cpu")
    data = sorted((scenes_root / "images").iterdir())[0].read_bytes()
    out = predict_upload(model, data, name)
    assert out["ok"] and len(out["file"]) <= 120 and out["file"][:5] == name[:5]
    assert len(out["mask_name"].encode()) <= 250 and out["mask_name"].endswith(".png")
    assert out["mask"].startswith("data:image/png;base64,")

