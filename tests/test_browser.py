"""A learner's first steps, in a real browser: JupyterLab on 127.0.0.1 with a token, driven by a
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which .ci/run installs). It opens
``00_start_here.ipynb`` and a notebook with live sliders, runs all cells in smoke mode, and checks
that no cell shows an error, that the ipywidgets slider is drawn, and that moving it redraws the
picture. Screenshots go to the test's temporary folder (printed at the end)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from headless import chrome, skip_without_browser

ROOT = Path(__file__).resolve().parents[1]
SLIDER_NOTEBOOK = "1_foundations/01_python_numpy.ipynb"   # viz.slider(adjust, contrast=..., brightness=...)

# the notebook open in JupyterLab, through the app object (LabApp.expose_app_in_browser)
_STATE_JS = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.sessionContext || !nb.context.isReady) return null;
const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
const code = nb.content.widgets.filter(c => c.model.type === 'code');
return {
  kernel: kernel ? kernel.status : null,
  cells: code.length,
  run: code.filter(c => c.model.executionCount !== null).length,
  errors: code.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                     .map(o => o.ename + ': ' + o.evalue)),
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, seconds: float, probe):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of notebooks/ (so nothing is saved into the repo), smoke mode."""
    skip_without_browser()
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)   # every cell stays in the page, scrolled into view or not
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "COURSE_STATIC_WIDGETS")}  # live widgets
    env.update(COURSE_SMOKE="1", COURSE_OUTPUT_DIR=str(tmp_path / "outputs"), COURSE_CACHE_DIR=str(tmp_path / "cache"),
               OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"))
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            assert server.poll() is None, f"JupyterLab exited:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}"
            return False
    try:
        _wait("JupyterLab to start", 90, up)
        yield url, token, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def browser(lab):
    with chrome() as driver:
        yield driver


def _run_all(driver, url: str, token: str, notebook: str, seconds: float = 120) -> dict:
    """Open ``notebook`` in JupyterLab, run all cells, wait for the end (or an error)."""
    driver.get(f"{url}/lab/tree/{notebook}?token={token}&reset")
    _wait(f"{notebook} to open with an idle kernel", 90,
          lambda: (driver.execute_script(_STATE_JS) or {}).get("kernel") == "idle")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def finished():
        state = driver.execute_script(_STATE_JS)
        return state if state["errors"] or (state["run"] == state["cells"] and state["kernel"] == "idle") else None
    return _wait(f"{notebook} to run", seconds, finished)


@pytest.mark.timeout(180)
def test_start_here_and_a_slider_notebook_in_jupyterlab(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    url, token, out = lab
    shots = out / "screenshots"
    shots.mkdir()
    start = time.monotonic()

    state = _run_all(browser, url, token, "00_start_here.ipynb")
    browser.save_screenshot(str(shots / "00_start_here.png"))
    assert not state["errors"], f"00_start_here shows errors in JupyterLab: {state['errors']}"
    assert state["run"] == state["cells"] > 0

    state = _run_all(browser, url, token, SLIDER_NOTEBOOK)
    assert not state["errors"], f"{SLIDER_NOTEBOOK} shows errors in JupyterLab: {state['errors']}"
    sliders = _wait("an ipywidgets slider to be drawn", 30,
                    lambda: browser.find_elements(By.CSS_SELECTOR, ".widget-hslider .noUi-handle"))
    box = sliders[0].find_element(By.XPATH, "./ancestor::div[contains(@class, 'widget-vbox')][1]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)

    def picture():
        # the output is redrawn while the slider moves: an element found a moment ago may be gone
        from selenium.common.exceptions import StaleElementReferenceException
        try:
            handle = browser.find_elements(By.CSS_SELECTOR, ".widget-hslider .noUi-handle")[0]
            vbox = handle.find_element(By.XPATH, "./ancestor::div[contains(@class, 'widget-vbox')][1]")
            images = vbox.find_elements(By.CSS_SELECTOR, ".widget-output img")
            return images[0].get_attribute("src") if images else None
        except (StaleElementReferenceException, IndexError):
            return None
    before = _wait("the slider's picture", 30, picture)
    browser.save_screenshot(str(shots / "slider_before.png"))
    sliders[0].click()
    sliders[0].send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    _wait("the picture to change after moving the slider", 30, lambda: picture() not in (None, before))
    browser.save_screenshot(str(shots / "slider_after.png"))
    print(f"browser test: {time.monotonic() - start:.0f} s in the browser; screenshots in {shots}")
