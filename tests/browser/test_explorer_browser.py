"""Notebook 07's explorer in a real browser: JupyterLab on loopback, headless Chromium.

The test copies the notebook into a temporary folder, starts `jupyter lab` there (127.0.0.1, a
free port, a token, QUICK mode for the kernel), opens the notebook in Chromium through
selenium and chromedriver, runs all cells, and then checks what a user sees: the app's
controls are widgets (not the text of a VBox), its labels are not cut, the class menu is not
blank, the app shows its start scene, and changing the method and the layer redraws the figure
(the PNG behind the app's <img> changes), while an invalid combination shows only the message;
choosing the bundled ResNet in the model menu redraws it and puts the ResNet's layers in the
layer menu.

On failure the screenshots, the page source and the server's log stay in a temporary folder
whose path is printed; with FGCAM_BROWSER_ARTIFACTS=DIR they are written to DIR every time.
Without Chromium or chromedriver the test is skipped, unless FGCAM_BROWSER_REQUIRED is set
(as in `.ci/run`), then it fails. The server and the browser are stopped by their process ids.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "07_explorer.ipynb"
#: seconds: server start, opening the notebook, the whole Run All, one redraw of the app
START_S, OPEN_S, RUN_ALL_S, REDRAW_S = 90, 120, 600, 180
#: a laptop's browser window; JupyterLab's file browser stays open, as on a first start
WINDOW = (1280, 1000)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if path:
            return path
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("FGCAM_BROWSER_REQUIRED"):
        pytest.fail(f"{reason} (FGCAM_BROWSER_REQUIRED is set)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5, last: dict | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s
    (and with ``last["state"]``, where ``check`` keeps what it saw)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(every)
    seen = f" (last seen: {last.get('state')!r})" if last else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


# ----------------------------------------------------------------------------- the server
class Lab:
    """`jupyter lab` on 127.0.0.1 in ``work``/notebooks, stopped by its process id."""

    def __init__(self, work: Path) -> None:
        self.work, self.port, self.token = work, _free_port(), base64.b32encode(os.urandom(20)).decode().lower()
        self.root = work / "notebooks"
        self.log_path = work / "jupyter.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True)
        settings = self.work / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)   # no "get notified about Jupyter news?" toast over the page
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        shutil.copy(NOTEBOOK, self.root / NOTEBOOK.name)   # ../figures/quick lands in work/figures
        env = dict(os.environ, FGCAM_QUICK="1", MPLBACKEND="agg", PYTHONUNBUFFERED="1",
                   JUPYTER_RUNTIME_DIR=str(self.work / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(self.work / "lab-settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.work / "lab-workspaces"))
        env.pop("JUPYTER_TOKEN", None)
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--LabApp.expose_app_in_browser=True",   # window.jupyterapp: run all, kernel state
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.proc.returncode}; see {self.log_path}:\n"
                                     + self.log_path.read_text(errors="replace")[-3000:])
            try:
                return json.loads(self.api("status")) is not None
            except (OSError, ValueError):
                return False

        _wait("JupyterLab's /api/status", up, START_S)

    def api(self, path: str, method: str = "GET") -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{name}?token={self.token}"

    def stop(self) -> None:
        """Shut the kernels down through the API, then SIGTERM the server's pid, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                for kernel in json.loads(self.api("kernels")):
                    self.api(f"kernels/{kernel['id']}", method="DELETE")
            except (OSError, ValueError):
                pass
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


# ---------------------------------------------------------------------------- the browser
def start_browser(work: Path, chromium: str, chromedriver: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={work / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(executable_path=chromedriver, log_output=str(work / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(60)
    return driver


def browser_pid(work: Path) -> int | None:
    """Chromium's main process: its profile's SingletonLock links to ``host-pid``."""
    try:
        pid = int(os.readlink(work / "chromium-profile" / "SingletonLock").rsplit("-", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return pid if str(work / "chromium-profile") in _cmdline(pid) else None


def stop_browser(driver: Any, work: Path) -> None:
    """driver.quit(); then SIGKILL chromedriver's and Chromium's pids if they still run."""
    pids = [p for p in (browser_pid(work), getattr(driver.service.process, "pid", None)) if p]
    try:
        driver.quit()
    except Exception:  # noqa: BLE001 - a dead browser is what the pids below are for
        pass
    for pid in pids:
        end = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    if driver.service.process is not None:
        try:
            driver.service.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# ------------------------------------------------------------------------------- the page
JS_NOTEBOOK = """
const app = window.jupyterapp;
if (!app) return {state: 'no app'};
const w = Array.from(app.shell.widgets('main')).find(
  x => x.context && x.context.path === arguments[0] && x.content && x.sessionContext);
if (!w) return {state: 'no notebook'};
const dialog = document.querySelector('.jp-Dialog');
const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
return {
  state: 'notebook', path: w.context.path, dialog: dialog ? dialog.innerText : null,
  kernel: kernel ? kernel.status : null, ready: w.context.isReady,
  unrun: cells.filter(c => c.model.executionCount === null).length, cells: cells.length,
  running: cells.filter(c => c.model.executionState === 'running').length,
  errors: cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                .map(o => o.ename + ': ' + o.evalue)),
  runAll: window.__fgcamRunAll || null,
};
"""

JS_RUN_ALL = """
window.__fgcamRunAll = 'running';
const app = window.jupyterapp;
app.commands.execute('notebook:clear-all-cell-outputs')
  .then(() => app.commands.execute('notebook:run-all-cells'))
  .then(ok => { window.__fgcamRunAll = ok === false ? 'stopped' : 'done'; },
        err => { window.__fgcamRunAll = 'error: ' + err; });
"""

JS_IMAGE = """
const [img, done] = arguments;
fetch(img.src).then(r => r.arrayBuffer()).then(buf => {
  const u = new Uint8Array(buf); let s = '';
  for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
  done({src: img.src, data: btoa(s), width: img.naturalWidth, height: img.naturalHeight});
}, err => done({src: img.src, error: String(err)}));
"""

JS_LAYOUT = """
const app = arguments[0], area = app.getBoundingClientRect(), bad = [];
const name = e => (e.innerText || e.className).trim().split('\\n')[0];
const controls = Array.from(app.querySelectorAll(
  '.widget-dropdown, .widget-hslider, .widget-toggle-buttons, .widget-checkbox, .widget-text, .widget-button, .widget-upload'))
  .filter(e => e.offsetParent !== null);
for (const e of controls) {
  const r = e.getBoundingClientRect();
  if (r.right > area.right + 1 || r.left < area.left - 1) bad.push(name(e) + ' reaches outside the output area');
}
for (const [i, a] of controls.entries()) for (const b of controls.slice(i + 1)) {
  if (a.contains(b) || b.contains(a)) continue;
  const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
  const w = Math.min(p.right, q.right) - Math.max(p.left, q.left), h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
  if (w > 2 && h > 2) bad.push(name(a) + ' overlaps ' + name(b));
}
for (const b of app.querySelectorAll('.widget-box'))
  if (b.scrollWidth > b.clientWidth + 1) bad.push('a box of controls scrolls (' + b.scrollWidth + ' px in ' + b.clientWidth + ')');
return bad;
"""

JS_CUT_LABELS = """
return Array.from(arguments[0].querySelectorAll('.widget-label, .widget-label-basic, .widget-readout'))
  .filter(e => e.offsetParent !== null && e.innerText.trim())
  .filter(e => e.scrollWidth > e.clientWidth + 1)
  .map(e => e.innerText.trim() + ' (' + e.clientWidth + ' of ' + e.scrollWidth + ' px)');
"""


class Page:
    """The notebook in the browser and the explorer app in it."""

    def __init__(self, driver: Any, artifacts: Path) -> None:
        self.driver, self.artifacts, self.shots = driver, artifacts, 0

    def state(self) -> dict:
        return self.driver.execute_script(JS_NOTEBOOK, NOTEBOOK.name) or {}

    def kernel_idle(self) -> bool:
        return self.state().get("kernel") == "idle"

    def save(self, name: str, element: Any = None) -> Path:
        """A PNG of the window (or of ``element``) and the page's HTML under the artifacts folder."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.shots += 1
        png = self.artifacts / f"{self.shots:02d}_{name}.png"
        try:
            if element is not None:
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
                time.sleep(0.3)
                element.screenshot(str(png))
            else:
                self.driver.save_screenshot(str(png))
        except Exception as err:  # noqa: BLE001 - a missing picture must not hide the real failure
            print(f"screenshot {png.name} failed: {err}")
        (self.artifacts / f"{self.shots:02d}_{name}.html").write_text(self.driver.page_source)
        return png

    # -- the app's parts -------------------------------------------------------------
    def app(self) -> Any:
        """The output that holds the explorer's controls."""
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(
            By.XPATH, "//div[contains(@class, 'jp-OutputArea-output')][.//div[contains(@class, 'widget-dropdown')]]")
        assert len(found) == 1, f"expected one explorer app in the notebook, found {len(found)}"
        return found[0]

    def dropdown(self, label: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        xpath = (f".//div[contains(@class, 'widget-dropdown')][.//label[normalize-space()='{label}']]//select")
        found = self.app().find_elements(By.XPATH, xpath)
        assert len(found) == 1, f"expected one dropdown labelled {label!r}, found {len(found)}"
        return Select(found[0])

    def figure(self) -> Any:
        from selenium.webdriver.common.by import By

        found = self.app().find_elements(By.CSS_SELECTOR, "img.widget-image")
        assert len(found) == 1, f"expected the app's figure as one <img>, found {len(found)}"
        return found[0]

    def figure_png(self) -> dict:
        img = self.figure()
        got = self.driver.execute_async_script(JS_IMAGE, img)
        assert "error" not in got, f"cannot read the figure's bytes from {got['src']}: {got['error']}"
        data = base64.b64decode(got["data"])
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"the app's figure is not a PNG ({len(data)} bytes)"
        got.update(data=data, sha=hashlib.sha1(data).hexdigest()[:12], shown=img.is_displayed())
        return got

    def message(self) -> str:
        from selenium.webdriver.common.by import By

        return " ".join(e.text for e in self.app().find_elements(By.CSS_SELECTOR, ".widget-html-content")).strip()

    def choose(self, label: str, startswith: str) -> str:
        """Pick the first option of the ``label`` menu whose text starts with ``startswith``."""
        menu = self.dropdown(label)
        texts = [o.text for o in menu.options]
        match = [i for i, t in enumerate(texts) if t.startswith(startswith)]
        assert match, f"no {label!r} option starts with {startswith!r}; the menu lists {texts}"
        menu.select_by_index(match[0])
        return texts[match[0]]

    def redrawn(self, before: dict) -> dict:
        """Wait for the kernel to answer a control change with a new figure; return that figure."""
        def new_figure() -> dict | None:
            if not self.kernel_idle():
                return None
            if self.figure().get_attribute("src") == before["src"]:
                return None
            return self.figure_png()

        return _wait("the app to redraw its figure", new_figure, REDRAW_S)


# --------------------------------------------------------------------------------- the test
def test_explorer_in_chromium() -> None:
    chromium, chromedriver = _find("chromium", "chromium-browser"), _find("chromedriver")
    if not chromium or not chromedriver:
        _unavailable("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("selenium is not installed in this environment (pip install selenium)")

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fgcam-browser-"))
    keep = os.environ.get("FGCAM_BROWSER_ARTIFACTS")
    artifacts = Path(keep) if keep else work / "screenshots"
    lab, driver, page, ok = Lab(work), None, None, False
    try:
        lab.start()
        driver = start_browser(work, chromium, chromedriver)
        page = Page(driver, artifacts)
        run_notebook(page, lab)
        check_app(page, save_always=bool(keep))
        ok = True
    except BaseException:
        if page is not None:
            page.save("failure")
        print(f"\nbrowser test failed: screenshots and page source in {artifacts}, "
              f"server log {lab.log_path}, chromedriver log {work / 'chromedriver.log'}")
        raise
    finally:
        if driver is not None:
            stop_browser(driver, work)
        lab.stop()
        print(f"browser test: {time.monotonic() - t0:.0f} s")
        if ok:
            shutil.rmtree(work, ignore_errors=True)


def run_notebook(page: Page, lab: Lab) -> None:
    page.driver.get(lab.url(NOTEBOOK.name))

    def opened() -> dict | None:
        s = seen["state"] = page.state()
        assert not s.get("dialog"), f"JupyterLab shows a dialog: {s['dialog']}"
        return s if s.get("state") == "notebook" and s.get("ready") and s.get("kernel") == "idle" else None

    seen: dict = {}
    s = _wait("the notebook to open with an idle kernel", opened, OPEN_S, last=seen)
    assert s["path"] == NOTEBOOK.name, s

    # the saved notebook, before it runs: the app's cell shows a picture or the saved
    # widgets, never the repr of a VBox
    before = page.driver.find_element("css selector", ".jp-Notebook").text
    assert "VBox(children" not in before, "the saved app cell shows the text of a VBox"

    page.driver.execute_script(JS_RUN_ALL)

    def finished() -> dict | None:
        s = seen["state"] = page.state()
        assert not s.get("errors"), f"a cell raised: {s['errors']}"
        assert not str(s.get("runAll")).startswith("error"), s["runAll"]
        done = s.get("runAll") in ("done", "stopped") and s.get("kernel") == "idle"
        return s if done and not s["running"] and s["unrun"] == 0 else None

    s = _wait("Run All to finish", finished, RUN_ALL_S, every=1.0, last=seen)
    assert s["runAll"] == "done", s


def check_app(page: Page, save_always: bool) -> None:
    from selenium.webdriver.common.by import By

    from fgcam_lib.ui.settings import METHODS

    app = page.app()
    page.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", app)
    time.sleep(0.5)

    # controls rendered as widgets, not text
    text = page.driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
    for bad in ("VBox(children", "Error displaying widget", "Loading widget", "Explorer app:"):
        assert bad not in text, f"the notebook shows {bad!r} instead of the live app"
    count = {sel: len(app.find_elements(By.CSS_SELECTOR, sel)) for sel in
             (".widget-dropdown select", ".widget-toggle-buttons", ".widget-checkbox input[type=checkbox]",
              ".widget-hslider", ".widget-text input", ".widget-upload", "img.widget-image")}
    want = {".widget-dropdown select": 6, ".widget-toggle-buttons": 1, ".widget-checkbox input[type=checkbox]": 2,
            ".widget-hslider": 1, ".widget-text input": 1, ".widget-upload": 1, "img.widget-image": 1}
    assert count == want, f"the app's controls in the page: {count}, expected {want}"
    cut = page.driver.execute_script(JS_CUT_LABELS, app)
    assert not cut, f"labels cut in the browser: {cut}"
    squeezed = page.driver.execute_script(JS_LAYOUT, app)
    assert not squeezed, f"the app's controls do not fit a {WINDOW[0]} px wide window: {squeezed}"

    # the start scene: FG-CAM at the input, the predicted class selected (not a blank menu)
    assert page.dropdown("method").first_selected_option.text == METHODS["fg_cam"]
    assert page.dropdown("layer").first_selected_option.text.startswith("Input")
    assert page.dropdown("class").first_selected_option.text.startswith("predicted:")
    start = page.figure_png()
    assert start["shown"] and start["width"] > 300 and start["height"] > 200, \
        f"the app's figure is not shown at a useful size: {start['width']}x{start['height']}"
    assert page.message() == "", f"a message is shown over the start figure: {page.message()!r}"
    if save_always:
        page.save("window")
        page.save("app_start", app)

    # the method control redraws the figure
    page.choose("method", METHODS["lrp"])
    lrp = page.redrawn(start)
    assert lrp["sha"] != start["sha"], "the figure did not change with the method (FG-CAM -> LRP)"
    assert page.message() == ""

    # the layer control redraws it
    layer = page.choose("layer", "Layer13")
    lrp13 = page.redrawn(lrp)
    assert lrp13["sha"] not in (lrp["sha"], start["sha"]), f"the figure did not change with the layer ({layer})"
    if save_always:
        page.save("app_lrp_layer13", page.app())

    # a CAM method at an intermediate layer, then an invalid combination: only the message
    page.choose("method", METHODS["grad_cam"])
    cam13 = page.redrawn(lrp13)
    assert cam13["sha"] != lrp13["sha"], "the figure did not change with the method (LRP -> Grad-CAM)"
    page.choose("layer", "Input")

    def message_only() -> str | None:
        msg = page.message()
        return msg if page.kernel_idle() and msg and not page.figure().is_displayed() else None

    msg = _wait("the message for Grad-CAM at the input", message_only, REDRAW_S)
    assert "input" in msg.lower(), f"unexpected message for Grad-CAM at the input: {msg!r}"
    if save_always:
        page.save("app_message", page.app())
    # and the next valid setting shows a figure again
    page.choose("layer", "Layer13")
    again = _wait("the figure after the message", lambda: page.kernel_idle() and page.figure().is_displayed()
                  and page.figure_png(), REDRAW_S)
    assert again["sha"] == cam13["sha"], "Grad-CAM at Layer13 drew a different figure the second time"
    assert page.message() == ""

    # the model menu: the ResNet loads, the figure redraws, the layer menu lists its stages
    assert page.dropdown("model").first_selected_option.text.startswith("bundled:")
    page.choose("model", "bundled_resnet")
    resnet = page.redrawn(again)
    assert resnet["sha"] != again["sha"], "the figure did not change with the model (bundled -> bundled_resnet)"
    layers = [o.text for o in page.dropdown("layer").options]
    assert any(t.startswith("layer1") for t in layers) and not any(t.startswith("Layer13") for t in layers), layers
    assert page.dropdown("layer").first_selected_option.text.startswith("layer1"), layers
    assert page.message() == ""
    if save_always:
        page.save("app_resnet", page.app())
