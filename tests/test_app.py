"""The Gradio demo (`examples/app.py`) driven in headless Chromium: upload an image, read the score back.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Under CI (`CI=true`) a missing browser is
a failure; elsewhere the test is skipped without it.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "app.py")
IN_CI = os.environ.get("CI", "").lower() == "true"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if IN_CI:
        pytest.fail("CI needs chromium and chromedriver (apt-get install chromium chromium-driver)", pytrace=False)
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

if not IN_CI:
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from mpiqe_hf import MPIQEImageProcessor  # noqa: E402
from mpiqe_hf.pipeline_mpiqe import ImageQualityAssessmentPipeline  # noqa: E402


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from conftest import MPIQEModelTester

    folder = tmp_path_factory.mktemp("demo")
    model = MPIQEModelTester().model(mos_min=1.0, mos_max=5.0)
    model.save_pretrained(folder / "model")
    MPIQEImageProcessor(crop_size=30, num_crops=4).save_pretrained(folder / "model")
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    log = open(folder / "app.log", "w")
    process = subprocess.Popen(
        [sys.executable, APP, "--model", str(folder / "model"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the demo did not start:\n" + (folder / "app.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.5)
        yield url, model, folder
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_in_a_browser_shows_the_pipelines_score(demo, browser, tmp_path):
    url, model, folder = demo
    rng = np.random.default_rng(9)
    image_path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image_path)

    browser.get(url)
    wait = WebDriverWait(browser, 180)
    upload = wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))[0]
    upload.send_keys(str(image_path))
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#headline .value"))
    shown = float(browser.find_element(By.CSS_SELECTOR, "#score input").get_attribute("value"))
    headline = browser.find_element(By.CSS_SELECTOR, "#headline").text
    map_sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#map img")]
    screenshots = os.environ.get("MPIQE_SCREENSHOT_DIR")
    browser.save_screenshot(os.path.join(screenshots, "demo.png") if screenshots else str(tmp_path / "demo.png"))

    pipe = ImageQualityAssessmentPipeline(
        model=model, image_processor=MPIQEImageProcessor.from_pretrained(folder / "model")
    )
    expected = pipe(str(image_path))
    assert shown == pytest.approx(expected["score"], abs=1e-6)
    assert f"{expected['score']:.2f}" in headline and expected["quality"] in headline
    assert any(source for source in map_sources)  # the quality map was drawn
    labels = browser.find_element(By.CSS_SELECTOR, "#distortion").text
    assert expected["distortion"] in labels
