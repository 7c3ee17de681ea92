"""The notebooks' explorers (``wsss_core.widgets.explore``) in a real browser: JupyterLab serves a lesson
notebook, Playwright drives Debian's Chromium, runs every cell through the Run menu, and for each
explorer moves its main control and checks that the live figure changes.

Run it with ``make test-browser`` (or ``pytest -m browser tests/browser -q``); the default ``pytest``
run does not collect this folder. Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``;
Playwright's own browser download is not used) and the Python package ``playwright``
(``pip install -e .[browser]``); without either the test skips and says which.

How long each explorer takes from a control change to its new figure is a benchmark figure, written
to ``runs/browser/widget_latency.json`` (and to ``$WSSS_BROWSER_BENCH`` if set), not an assertion.

The notebooks run at the ``smoke`` profile from parameterised copies in a temporary folder, which is
the JupyterLab server's root (``--ServerApp.root_dir``): the committed notebooks are never touched,
and ``wsss_core`` imports from the editable install. The server runs WITHOUT ``$WSSS_STATIC_WIDGETS``,
since that variable would turn every explorer into its static fallback.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
# every lesson with an explorer, in course order: they share one OUT_DIR, so each reuses the models its
# predecessors trained
LESSONS = sorted(p.name for p in NOTEBOOKS.glob("0[0-9]_*.ipynb")
                 if "widgets.explore(" in p.with_suffix(".py").read_text(encoding="utf-8"))
BENCH = REPO / "runs" / "browser" / "widget_latency.json"
BENCH_COPY_ENV = "WSSS_BROWSER_BENCH"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RUN_ALL_TIMEOUT_S = float(os.environ.get("WSSS_BROWSER_RUN_TIMEOUT", 900))  # CPUs may be shared: be generous
FIGURE_TIMEOUT_S = 120.0           # one re-render (a benchmark, not a limit: only a hang fails)
MOVES = 3                          # control changes per explorer (the first draws the live figure)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(3600)]

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("no `chromium` on PATH: install Debian's Chromium (apt-get install chromium); "
                "Playwright's own browser download is not used", allow_module_level=True)
try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("the Python package `playwright` is missing: pip install -e .[browser] "
                "(do not run `playwright install`; the test drives the system chromium)", allow_module_level=True)
try:
    import jupyterlab  # noqa: F401
    import nbformat
    import papermill.iorw as pm_iorw
    import papermill.parameterize as pm_parameterize
except ImportError as e:  # pragma: no cover - all are core dependencies
    pytest.skip(f"{e.name} is missing: pip install -e .", allow_module_level=True)

# One record per explorer, filled by the tests and written once at the end of the module.
RESULTS: dict[str, dict] = {}


# --------------------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def kernel_states(self, notebook: str) -> list[str]:
        return [s["kernel"]["execution_state"] for s in self.api("/api/sessions")
                if s.get("path") == notebook and s.get("kernel")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    # Lab settings for this server only: every cell in the DOM (no virtual scrolling that detaches cells
    # out of view), no news / update check (the pop-up would cover the lower right corner).
    settings = tmp / "settings"
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        f = settings / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    port, token = _free_port(), os.urandom(16).hex()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.root_dir={root}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    env = dict(os.environ)
    env.pop("WSSS_STATIC_WIDGETS", None)  # the explorers must be live
    env["JUPYTER_CONFIG_DIR"] = str(tmp / "config")     # no user config, no user lab settings
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
    env.setdefault("PYTHONUNBUFFERED", "1")
    log = tmp / "jupyterlab.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(root, port, token, proc, log)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            server.api("/api/status")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                _stop(server)
                pytest.fail(f"JupyterLab did not answer on port {port} within 180 s:\n{server.log_tail()}")
            time.sleep(0.5)
    yield server
    _stop(server)


def _stop(server: Lab) -> None:
    """Shut the server down through its API (which stops its kernels), then signal its process group."""
    try:
        server.api("/api/shutdown", method="POST")
        server.proc.wait(timeout=30)
    except Exception:
        pass
    if server.proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(server.proc.pid, sig)
                server.proc.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


# --------------------------------------------------------------------------------------------------
# browser
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        RESULTS["_browser"] = {"chromium": b.version}
        yield b
        b.close()


def _smoke_copy(name: str, lab: Lab) -> tuple[str, Path]:
    """A copy of notebook ``name`` with PROFILE = "smoke" and OUT_DIR in the temp folder (papermill's
    injected-parameters cell, as the runner does), in the server's root."""
    nb = pm_iorw.load_notebook_node(str(NOTEBOOKS / name))  # adds the empty tags papermill expects
    out = lab.root.parent / "out"
    nb = pm_parameterize.parameterize_notebook(nb, {"PROFILE": "smoke", "OUT_DIR": str(out)})
    nb.metadata.pop("jupytext", None)   # a plain notebook here: no pairing with a .py beside it
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, lab.root / name)
    return name, out


JS_PROMPTS = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]
                       .map(e => e.textContent.trim())"""

JS_ERRORS = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
                      .map(e => e.innerText).filter(t => /Traceback|Error:/.test(t)).map(t => t.slice(-2000))"""


def _close_popups(page) -> None:
    """Dismiss toasts (the news question, update notices) and dialogs that could cover the controls."""
    for sel in (".Toastify__toast .jp-toast-button:has-text('No')", ".Toastify__close-button",
                ".jp-Notification-Toast-Close", ".jp-Dialog .jp-mod-reject"):
        loc = page.locator(sel)
        for i in range(loc.count()):
            try:
                if loc.nth(i).is_visible():
                    loc.nth(i).click(timeout=2000)
            except PlaywrightError:
                pass


def _run_all(page, lab: Lab, notebook: str) -> float:
    """Run → Run All Cells, then wait for every code cell to have run and the kernel to be idle."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.wait_for(timeout=120_000)
    # the kernel has started (the session exists and is idle) before anything is queued
    deadline = time.monotonic() + 180
    while lab.kernel_states(notebook) != ["idle"]:
        assert time.monotonic() < deadline, f"no idle kernel for {notebook}: {lab.kernel_states(notebook)}\n{lab.log_tail()}"
        time.sleep(0.5)
    _close_popups(page)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu .lm-Menu-item:has(.lm-Menu-itemLabel:text-is('Run All Cells'))").first.click()
    t0 = time.monotonic()
    # done: some cell has run, none is queued or running ([*]), and the kernel reports idle twice in a row
    page.wait_for_function(f"() => {{ const p = ({JS_PROMPTS})(); return p.some(t => /\\[\\d+\\]/.test(t)) && "
                           f"!p.some(t => t.includes('*')); }}", timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500)
    deadline = time.monotonic() + 120
    idle = 0
    while idle < 2:
        idle = idle + 1 if lab.kernel_states(notebook) == ["idle"] else 0
        assert time.monotonic() < deadline, f"kernel of {notebook} not idle after the run"
        time.sleep(0.5)
    seconds = time.monotonic() - t0
    prompts = page.evaluate(JS_PROMPTS)
    not_run = [i for i, t in enumerate(prompts) if not any(ch.isdigit() for ch in t)]
    assert not not_run, (f"{notebook}: code cells {not_run} did not run (an earlier cell failed?):\n"
                         + "\n---\n".join(page.evaluate(JS_ERRORS)))
    return seconds


# --------------------------------------------------------------------------------------------------
# one explorer
# --------------------------------------------------------------------------------------------------
JS_ARM = """([el, before]) => {
    const w = window.__wsss = {t0: null, t1: null, src: null};
    const mark = () => { if (w.t0 === null) w.t0 = performance.now(); };
    el.addEventListener('keydown', mark, {capture: true, once: true});
    el.addEventListener('change', mark, {capture: true, once: true});
    el.addEventListener('input', mark, {capture: true, once: true});
    const obs = new MutationObserver(() => {
        const img = el.querySelector('.widget-output img');
        if (img && img.getAttribute('src') && img.getAttribute('src') !== before && w.t1 === null) {
            w.t1 = performance.now(); w.src = img.getAttribute('src'); obs.disconnect();
        }
    });
    obs.observe(el, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
}"""


def _figure_src(explorer) -> str | None:
    img = explorer.locator(".widget-output img")
    return img.first.get_attribute("src") if img.count() else None


def _label(control) -> str:
    return control.evaluate("""c => { const box = c.closest('.widget-inline-hbox');
                                      const l = box && box.querySelector('.widget-label');
                                      return l ? l.textContent.trim() : ''; }""")


def _move(page, control, kind: str) -> str:
    """Move the control one step; returns what was done."""
    if kind == "dropdown":
        n = control.evaluate("s => s.options.length")
        assert n >= 2, "a dropdown with a single option cannot change the figure"
        i = (control.evaluate("s => s.selectedIndex") + 1) % n
        value = control.evaluate(f"s => s.options[{i}].value")
        control.select_option(value=value)
        return f"option {i}"
    now, top = (control.get_attribute(a) for a in ("aria-valuenow", "aria-valuemax"))
    key = "ArrowLeft" if now is not None and top is not None and float(now) >= float(top) else "ArrowRight"
    control.focus()
    page.keyboard.press(key)
    return key


def _kind(control) -> str:
    return "dropdown" if control.evaluate("c => c.tagName") == "SELECT" else "slider"


def _measure(page, explorer, control, moves: int, where: str) -> dict:
    """Move ``control`` ``moves`` times; each move must replace the explorer's figure by a new one."""
    kind, label = _kind(control), _label(control)
    seconds, srcs = [], []
    for move in range(moves):
        _close_popups(page)
        before = _figure_src(explorer)
        page.evaluate(JS_ARM, [explorer.element_handle(), before])
        action = _move(page, control, kind)
        try:
            page.wait_for_function("() => window.__wsss.t1 !== null", timeout=FIGURE_TIMEOUT_S * 1000, polling="raf")
        except PlaywrightError:
            text = explorer.locator(".widget-output").inner_text()
            pytest.fail(f"{where}: {kind} {label!r} moved ({action}, move {move + 1}) but the figure did not change "
                        f"within {FIGURE_TIMEOUT_S:.0f} s; output area says: {text[-1500:]!r}")
        w = page.evaluate("() => window.__wsss")
        assert w["t0"] is not None, f"{where}: the browser saw no input event on the {kind} {label!r}"
        assert w["src"] != before and w["src"].startswith("data:image/"), f"{where}: figure unchanged"
        seconds.append(round((w["t1"] - w["t0"]) / 1000, 4))
        srcs.append(w["src"])
    assert len(set(srcs)) == len(srcs), f"{where}: a move of {label!r} gave the same figure as the one before it"
    return {"control": label, "kind": kind, "moves": moves, "seconds": seconds,
            "first_s": seconds[0], "median_s": round(statistics.median(seconds), 4), "max_s": max(seconds)}


def _exercise(page, explorer, where: str) -> dict:
    """The explorer's main control (its first one, the first keyword of ``explore(...)``, e.g. ``index``)
    moved MOVES times: the benchmark. Then the first control of the other kind (a dropdown after a
    slider, or the reverse) once more, so that both ways of moving a control are checked; its seconds
    are recorded under ``other``. (Only these two: a later control may have no effect in some states,
    e.g. a threshold that another dropdown's mode ignores.)"""
    explorer.scroll_into_view_if_needed()
    controls = explorer.locator(".widget-dropdown select, .widget-slider .noUi-handle")
    assert controls.count(), f"{where}: no dropdown or slider in the explorer"
    main = controls.first
    rec = _measure(page, explorer, main, MOVES, where)
    other = explorer.locator(".widget-slider .noUi-handle" if rec["kind"] == "dropdown" else ".widget-dropdown select")
    if other.count():
        rec["other"] = _measure(page, explorer, other.first, 1, where)
    return rec


# --------------------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LESSONS, ids=[n[:2] for n in LESSONS])
def test_explorers_answer_in_jupyterlab(name, lab, browser):
    notebook, _out = _smoke_copy(name, lab)
    (BENCH.parent / f"{name[:-6]}-failure.png").unlink(missing_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{lab.base}/lab/tree/{notebook}?reset&token={lab.token}", timeout=120_000)
        run_all_s = _run_all(page, lab, notebook)
        explorers = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets.widget-vbox:has(.widget-output)")
        try:
            explorers.first.wait_for(timeout=60_000)
        except PlaywrightError:
            pytest.fail(f"{notebook}: no explorer (.jupyter-widgets.widget-vbox) after running all cells; "
                        f"is WSSS_STATIC_WIDGETS set for the server? browser console errors: {console_errors[-5:]}")
        n = explorers.count()
        for i in range(n):
            rec = _exercise(page, explorers.nth(i), f"{notebook} explorer {i}")
            RESULTS[f"{name[:-6]}#{i}"] = {"notebook": name, "explorer": i, "run_all_s": round(run_all_s, 1), **rec}
    except BaseException:
        shot = BENCH.parent / f"{name[:-6]}-failure.png"  # what the browser showed, for the failure report
        try:
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
        except Exception:
            pass
        raise
    finally:
        ctx.close()


@pytest.fixture(scope="module", autouse=True)
def write_benchmark(request):
    yield
    explorers = [v for k, v in RESULTS.items() if not k.startswith("_")]
    if not explorers:
        return
    import jupyterlab
    from importlib.metadata import version

    doc = {
        "what": "seconds from a control change (input event) to the new figure in the explorer's output "
                "(img inserted), JupyterLab + Chromium, notebooks at profile smoke; a benchmark, not a limit",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "chromium": RESULTS.get("_browser", {}).get("chromium"),
        "playwright": version("playwright"),
        "jupyterlab": jupyterlab.__version__,
        "explorers": explorers,
    }
    text = json.dumps(doc, indent=2) + "\n"
    BENCH.parent.mkdir(parents=True, exist_ok=True)
    BENCH.write_text(text)
    targets = [BENCH]
    copy = os.environ.get(BENCH_COPY_ENV)
    if copy:
        Path(copy).parent.mkdir(parents=True, exist_ok=True)
        Path(copy).write_text(text)
        targets.append(Path(copy))
    lines = []  # printed by tests/browser/conftest.py in the terminal summary
    request.config.wsss_widget_latency = lines
    lines.append("seconds from a control change to the new figure:")
    for e in explorers:
        lines.append(f"  {e['notebook']} explorer {e['explorer']} ({e['kind']} {e['control']!r}): "
                     f"first {e['first_s']:.3f}, median {e['median_s']:.3f}, max {e['max_s']:.3f}"
                     + (f"; {e['other']['kind']} {e['other']['control']!r} {e['other']['first_s']:.3f}" if "other" in e else ""))
    lines.append("written to " + ", ".join(str(t) for t in targets))
