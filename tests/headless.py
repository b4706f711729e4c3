"""A headless Chromium for the tests that drive a page in a real browser (JupyterLab, the app)."""
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
DRIVER = shutil.which("chromedriver")


def skip_without_browser() -> None:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no browser: install Debian's chromium and chromium-driver (.ci/run does) to run this test")
    pytest.importorskip("selenium", reason="selenium is not installed (it is in the dev extra)")


@contextmanager
def chrome():
    """A headless Chromium WebDriver, quit on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
