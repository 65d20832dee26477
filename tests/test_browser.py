"""The notebook as a reader meets it: JupyterLab in headless Chromium, every cell run.

Starts a fresh deterministic embedded cloud in a temporary LABKIT_HOME and JupyterLab
(headless, token, a temporary copy of notebooks/), opens a notebook with Debian's
Chromium driven by Playwright, runs all cells from the Run menu, and checks that every
code cell ran, an ipywidgets widget rendered and no cell shows an error. Then it uses
the notebook's widget as a reader would: 01-authentication.ipynb's sign-in widget,
02-request-and-scheduling.ipynb's scheduler playground, 04-port-wiring.ipynb's VLAN
playground and packet walk stepper. Screenshots go to artifacts/browser/.

Playwright never downloads a browser here: it drives /usr/bin/chromium (Debian's
`chromium`, installed by `make setup`; LABKIT_CHROMIUM names another). Without Chromium
or Playwright the test is skipped, unless LABKIT_REQUIRE_BROWSER=1 (as in `make test`)
or CI is set, when it fails. LABKIT_BROWSER_NOTEBOOK runs it on another notebook.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from labkit.cloud import process
from labkit.cloud.settings import CloudSettings

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK = Path(os.environ.get("LABKIT_BROWSER_NOTEBOOK")
                or NOTEBOOKS / "01-authentication.ipynb")
SCHEDULING_NOTEBOOK = NOTEBOOKS / "02-request-and-scheduling.ipynb"
ARTIFACTS = REPO / "artifacts" / "browser"

# As root, headless, with nothing reaching out to the network (it is closed here).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WIDGET = ".jupyter-widgets, .widget-dropdown, .widget-box, .widget-slider"
RUN_TIMEOUT = 300  # seconds for Run All Cells to finish

# JupyterLab settings for the test: render every cell (no virtual scrolling, so every
# widget is in the DOM and in the screenshot) and no news or update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}


def _unavailable(reason: str) -> None:
    required = os.environ.get("LABKIT_REQUIRE_BROWSER") == "1" or os.environ.get("CI")
    if required:
        pytest.fail(f"{reason} (run `make setup`)")
    pytest.skip(reason)


def _chromium() -> str:
    for candidate in (os.environ.get("LABKIT_CHROMIUM"), "/usr/bin/chromium",
                      "/usr/bin/chromium-browser"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _unavailable("Chromium is not installed (Debian package `chromium`)")
    raise AssertionError  # not reached


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Path]:
    """A fresh deterministic embedded cloud; yields its LABKIT_HOME."""
    home = tmp_path / "labkit-home"
    info = process.up(CloudSettings.from_env(home=home, deterministic=True, port=0))
    try:
        yield info.home
    finally:
        process.down(home)


class Lab:
    def __init__(self, url: str, token: str, root: Path, proc: subprocess.Popen,
                 log: Path) -> None:
        self.url, self.token, self.root, self.proc, self.log = url, token, root, proc, log

    def api(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"},
                         timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def lab(cloud: Path, tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on a free loopback port, serving a copy of notebooks/ (and NOTEBOOK's folder)."""
    root = tmp_path / "notebooks"
    for folder in dict.fromkeys([NOTEBOOKS, NOTEBOOK.parent]):
        shutil.copytree(folder, root, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    jupyter = tmp_path / "jupyter"  # config, data, runtime and settings of this server only
    for rel, settings in LAB_SETTINGS.items():
        path = jupyter / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "JUPYTER", "LABKIT_"))}
    env.update(LABKIT_HOME=str(cloud), LABKIT_DETERMINISTIC="1",
               JUPYTER_CONFIG_DIR=str(jupyter / "config"),
               JUPYTER_DATA_DIR=str(jupyter / "data"),
               JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyter.log"
    args = [sys.executable, "-m", "jupyterlab", "--no-browser",
            f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={jupyter / 'settings'}",
            f"--LabApp.workspaces_dir={jupyter / 'workspaces'}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, root, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if server.api("/api/status").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within 60 s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        _stop_lab(server, jupyter / "runtime")


def _stop_lab(server: Lab, runtime: Path) -> None:
    """Shut JupyterLab down with its kernels; kill whatever of ours is left."""
    try:
        httpx.post(f"{server.url}/api/shutdown",
                   headers={"Authorization": f"token {server.token}"}, timeout=10)
        server.proc.wait(timeout=20)
    except (httpx.HTTPError, subprocess.TimeoutExpired):
        pass
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    # kernels run in sessions of their own; ours are the ones whose connection file
    # lies in this server's runtime folder
    for pid in _pids_mentioning(str(runtime)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


# Per cell, in notebook order: its input prompt and the error outputs it shows.
NOTEBOOK_JS = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook')"
CELL_STATE_JS = """
() => [...""" + NOTEBOOK_JS + """.querySelectorAll('.jp-Cell.jp-Notebook-cell')]
  .map(cell => ({
    code: cell.classList.contains('jp-CodeCell'),
    prompt: (cell.querySelector('.jp-InputPrompt') || {}).textContent || '',
    errors: [
      ...cell.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"],'
        + '.jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]'),
      ...[...cell.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .filter(el => el.textContent.includes('Traceback')),
      ...[...cell.querySelectorAll('.jupyter-widgets, .jp-OutputArea-output')]
        .filter(el => el.textContent.includes('Error displaying widget')),
    ].map(el => el.textContent.slice(0, 2000)),
  }))
"""


def _kernel_busy(lab: Lab) -> bool:
    answer = lab.api("/api/kernels")
    if answer.status_code != 200:
        # jupyter_server can answer 500 while it removes a kernel another notebook left
        # (its list races the shutdown): ask again, within the caller's deadline
        return True
    kernels = answer.json()
    return not kernels or any(k["execution_state"] != "idle" for k in kernels)


def _has_count(cell: dict) -> bool:
    return any(ch.isdigit() for ch in cell["prompt"])


def _wait_until_run(page: Any, lab: Lab, nb: nbformat.NotebookNode,
                    may_raise: list[bool]) -> list[dict]:
    """Wait until the kernel is idle, no cell is queued or running and every code cell has
    an execution count (or a cell shows an error, which stops Run All), twice in a row."""
    deadline = time.monotonic() + RUN_TIMEOUT
    to_run = {i for i, cell in enumerate(nb.cells)
              if cell.cell_type == "code" and cell.source.strip()}
    quiet = 0
    while quiet < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"the notebook did not finish within {RUN_TIMEOUT} s")
        time.sleep(0.5)
        cells = page.evaluate(CELL_STATE_JS)
        code = [c for c in cells if c["code"]]
        running = any("*" in c["prompt"] for c in code)
        all_counted = len(cells) == len(nb.cells) and all(_has_count(cells[i]) for i in to_run)
        stopped = any(c["errors"] and not may_raise[i] for i, c in enumerate(cells)
                      if i < len(may_raise))
        done = (all_counted or (stopped and any(_has_count(c) for c in code)))
        quiet = quiet + 1 if done and not running and not _kernel_busy(lab) else 0
    return cells


@contextlib.contextmanager
def _notebook_page(lab: Lab, notebook: Path, shot: Path) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page with `notebook` open in JupyterLab and its kernel ready, and the
    list the page's uncaught errors go to.

    Whatever fails inside leaves a full-page screenshot of the moment at `shot`.
    """
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # Playwright gives it a fresh, empty --user-data-dir of its own
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS,
                                    headless=True)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console_errors: list[str] = []
            page.on("pageerror", lambda exc: console_errors.append(str(exc)))
            page.goto(f"{lab.url}/lab/tree/{notebook.name}?token={lab.token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
            # a kernel started for it and ready (a notebook without kernelspec metadata
            # asks which kernel to start: take the default, Python 3)
            deadline = time.monotonic() + 60
            while _kernel_busy(lab):
                accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
                if accept.count():
                    accept.first.click()
                if time.monotonic() > deadline:
                    pytest.fail(f"the kernel did not start within 60 s (screenshot: {shot})\n"
                                f"{lab.log_tail()}")
                time.sleep(0.3)
            yield page, console_errors
        except BaseException:  # leave a picture of what went wrong
            if page is not None:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"screenshot of the failure: {shot}")
            raise
        finally:
            browser.close()


def _run_all(page: Any, lab: Lab, nb: nbformat.NotebookNode) -> list[dict]:
    """Run > Run All Cells, as a reader would; the cells' state once all have run."""
    may_raise = _may_raise(nb)
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    return _wait_until_run(page, lab, nb, may_raise)


def _may_raise(nb: nbformat.NotebookNode) -> list[bool]:
    # as nbval and nbclient allow: tagged cells may show their error
    return ["raises-exception" in cell.metadata.get("tags", []) for cell in nb.cells]


def _check_cells(nb: nbformat.NotebookNode, cells: list[dict], shot: Path) -> None:
    """Every code cell ran and none shows an error it is not tagged to raise."""
    assert len(cells) == len(nb.cells), f"JupyterLab shows {len(cells)} cells, the file has " \
                                        f"{len(nb.cells)}"
    may_raise = _may_raise(nb)
    errors = {i: c["errors"] for i, c in enumerate(cells) if c["errors"] and not may_raise[i]}
    shown = "\n".join(f"cell {i}: {text}" for i, texts in errors.items() for text in texts)
    assert not errors, f"cells show errors (screenshot: {shot}):\n{shown}"
    not_run = [i for i, c in enumerate(cells)
               if c["code"] and not _has_count(c) and nb.cells[i].source.strip()]
    assert not not_run, f"cells {not_run} did not run (screenshot: {shot})"


def _try_the_sign_in_widget(page: Any) -> list[str]:
    """Use notebook 01's sign-in widget as a reader would; what it answered, in order.

    Returns [] when the notebook has no such widget.
    """
    button = page.locator(".jupyter-widgets button", has_text="Sign in")
    if not button.count():
        return []
    box = button.first.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
    answers = []

    def answer(expect: str) -> None:
        box.get_by_text(expect).last.wait_for(timeout=30_000)
        answers.append(expect)

    button.first.click()  # the first lab user, with its own password
    answer("201 Created")
    box.locator("button", has_text="List users with it").click()
    answer("GET /v3/users")
    box.locator("input[type=text]").fill("not-the-password")
    button.first.click()
    answer("401")
    return answers


@pytest.mark.skipif(not NOTEBOOK.exists(), reason=f"{NOTEBOOK} does not exist yet")
def test_notebook_runs_in_jupyterlab(lab: Lab) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    shot = ARTIFACTS / f"{NOTEBOOK.stem}.png"

    with _notebook_page(lab, NOTEBOOK, shot) as (page, console_errors):
        cells = _run_all(page, lab, nb)
        page.wait_for_timeout(500)  # widget views render after their model arrives
        cells = page.evaluate(CELL_STATE_JS)
        widget_count = page.locator(WIDGET).count()
        signed_in = _try_the_sign_in_widget(page)

        # the whole notebook in one picture: a window as tall as its content
        height = page.evaluate(f"""() => {{
            const nb = {NOTEBOOK_JS};
            const cells = nb.querySelectorAll('.jp-Cell.jp-Notebook-cell');
            const scroller = nb.querySelector('.jp-WindowedPanel-outer') || nb;
            const last = cells[cells.length - 1].getBoundingClientRect();
            return Math.ceil(last.bottom + scroller.scrollTop + 60);
        }}""")
        page.set_viewport_size({"width": 1400, "height": max(1000, min(height, 12000))})
        page.wait_for_timeout(500)
        # Run All left it scrolled to the last cell: back to the top, or the picture
        # shows the end of the notebook above a blank window
        page.evaluate(f"""() => {{
            const nb = {NOTEBOOK_JS};
            for (let el = nb; el; el = el.parentElement) el.scrollTop = 0;
            nb.querySelectorAll('.jp-WindowedPanel-outer').forEach(el => el.scrollTop = 0);
        }}""")
        page.wait_for_timeout(300)
        page.screenshot(path=str(shot), full_page=True)

    _check_cells(nb, cells, shot)
    assert widget_count > 0, f"no ipywidgets widget rendered (screenshot: {shot})"
    if NOTEBOOK.name == "01-authentication.ipynb":
        assert signed_in == ["201 Created", "GET /v3/users", "401"], \
            f"the sign-in widget did not answer as keystone does: {signed_in} ({shot})"
    assert not console_errors, f"the page raised errors: {console_errors}"


# -- notebook 02: the scheduler playground -----------------------------------------------------

PLAYGROUND_WAIT = 60_000  # ms for the kernel to redraw the playground after a change


def _playground(page: Any) -> Any:
    """The scheduler playground's output: the widget with a flavor dropdown and host tabs."""
    return (page.locator(".jp-CodeCell .jp-OutputArea-output")
            .filter(has=page.locator(".widget-tab"))
            .filter(has=page.locator(".widget-dropdown", has_text="flavor")))


def _choose_flavor(playground: Any, name: str) -> None:
    select = playground.locator(".widget-dropdown", has_text="flavor").locator("select")
    select.select_option(label=name)


def _printed(page: Any, prefix: str) -> str:
    """The rest of the line a cell printed after `prefix` (the first such line)."""
    out = page.locator(".jp-OutputArea-output", has_text=prefix).first.inner_text()
    return next(line for line in out.splitlines() if prefix in line).split(prefix, 1)[1]


@pytest.mark.skipif(not SCHEDULING_NOTEBOOK.exists(),
                    reason=f"{SCHEDULING_NOTEBOOK} does not exist yet")
def test_scheduler_playground_answers_in_jupyterlab(lab: Lab) -> None:
    from playwright.sync_api import expect

    nb = nbformat.read(SCHEDULING_NOTEBOOK, as_version=4)
    shot = ARTIFACTS / f"{SCHEDULING_NOTEBOOK.stem}.png"

    with _notebook_page(lab, SCHEDULING_NOTEBOOK, shot) as (page, console_errors):
        cells = _run_all(page, lab, nb)
        _check_cells(nb, cells, shot)

        playground = _playground(page)
        playground.first.wait_for(timeout=PLAYGROUND_WAIT)  # views render after their models
        assert playground.count() == 1, f"{playground.count()} scheduler playgrounds ({shot})"
        playground.scroll_into_view_if_needed()
        # it starts on a flavor that fits: a host chosen, nothing refused
        expect(playground).to_contain_text("nova would choose", timeout=PLAYGROUND_WAIT)
        expect(playground).not_to_contain_text("No valid host")
        blank = playground.locator(".widget-dropdown select").evaluate_all(
            "selects => selects.filter(s => s.selectedIndex < 0).map(s => "
            "s.closest('.widget-dropdown').innerText.split('\\n')[0])")
        assert not blank, f"dropdowns that show no choice: {blank} ({shot})"

        _choose_flavor(playground, "m1.xlarge")
        expect(playground).to_contain_text("No valid host", timeout=PLAYGROUND_WAIT)
        expect(playground).not_to_contain_text("nova would choose")

        _choose_flavor(playground, "m1.small")
        expect(playground).to_contain_text("nova would choose", timeout=PLAYGROUND_WAIT)
        expect(playground).not_to_contain_text("No valid host")
        # the host the notebook's own predict() printed for m1.small, a cell further down
        predicted = _printed(page, "the playground predicts:").split()[0]
        chosen = playground.inner_text().split("nova would choose", 1)[1].split()[0]

        # the playground in one picture: its cell scrolled to the top of a window tall
        # enough for all of it, down to the end of the funnel
        height = 1000
        for _ in range(3):  # resizing lays the notebook out again: measure, resize, repeat
            page.set_viewport_size({"width": 1400, "height": height})
            page.wait_for_timeout(300)
            bottom = playground.evaluate("""el => {
                el.closest('.jp-Cell').scrollIntoView({block: 'start'});
                return Math.ceil(el.getBoundingClientRect().bottom);
            }""")
            if bottom + 40 <= height:
                break
            height = min(bottom + 80, 8000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(shot))
        cells = page.evaluate(CELL_STATE_JS)

    _check_cells(nb, cells, shot)  # using the widget raised nothing either
    assert chosen == predicted, \
        f"the playground chose {chosen} for m1.small, predict() {predicted} ({shot})"
    assert not console_errors, f"the page raised errors: {console_errors}"


# -- notebook 04: the local VLAN playground and the packet walk stepper ------------------------

PORT_WIRING_NOTEBOOK = NOTEBOOKS / "04-port-wiring.ipynb"

# A widget output's HTML table as rows of cell texts, its header row first.
TABLE_JS = """
table => [...table.querySelectorAll('tr')]
  .map(tr => [...tr.querySelectorAll('th, td')].map(cell => cell.innerText.trim()))
"""

# The rows of the packet walk table (the one with a "what happens" column) shown last
# before the cell of the widget `el`: the walk that cell's stepper steps through.
WALK_BEFORE_JS = """
el => {
  const cells = [...el.closest('.jp-Notebook').querySelectorAll('.jp-Cell.jp-Notebook-cell')];
  for (let i = cells.indexOf(el.closest('.jp-Cell')) - 1; i >= 0; i--) {
    const walks = [...cells[i].querySelectorAll('.jp-OutputArea-output table')]
      .filter(t => [...t.querySelectorAll('th')].some(th => th.innerText.includes('what happens')));
    if (walks.length) {
      return [...walks[walks.length - 1].querySelectorAll('tr')]
        .map(tr => [...tr.querySelectorAll('th, td')].map(cell => cell.innerText.trim()));
    }
  }
  return [];
}
"""


def _widget_output(page: Any, button: str) -> Any:
    """The outputs of code cells that show an ipywidgets button labelled `button`."""
    return (page.locator(".jp-CodeCell .jp-OutputArea-output")
            .filter(has=page.locator(".widget-button", has_text=button)))


def _cell_of(locator: Any) -> Any:
    return locator.locator(
        "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' jp-Cell ')][1]")


def _column(rows: list[list[str]], header: str) -> dict[str, str]:
    """Network name -> the text under `header`, from a VLAN table's rows."""
    at = rows[0].index(header)
    return {row[0]: row[at] for row in rows[1:]}


def _lowest_free_tag(tags: Any) -> int:
    used = {int(t.split()[1]) for t in tags if t.startswith("VLAN ")}
    return next(tag for tag in range(1, 4095) if tag not in used)


def _screenshot_cell(page: Any, widget: Any, shot: Path) -> None:
    """A picture of the widget's cell, in a window tall enough for all of it."""
    cell = _cell_of(widget)
    height = min(max(1000, math.ceil(cell.bounding_box()["height"]) + 80), 8000)
    page.set_viewport_size({"width": 1400, "height": height})
    cell.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)  # resizing lays the notebook out again
    cell.screenshot(path=str(shot))


@pytest.mark.skipif(not PORT_WIRING_NOTEBOOK.exists(),
                    reason=f"{PORT_WIRING_NOTEBOOK} does not exist yet")
def test_vlan_playground_and_walk_stepper_answer_in_jupyterlab(lab: Lab) -> None:
    from playwright.sync_api import expect

    nb = nbformat.read(PORT_WIRING_NOTEBOOK, as_version=4)
    shot = ARTIFACTS / f"{PORT_WIRING_NOTEBOOK.stem}.png"
    stepper_shot = ARTIFACTS / f"{PORT_WIRING_NOTEBOOK.stem}-stepper.png"

    with _notebook_page(lab, PORT_WIRING_NOTEBOOK, shot) as (page, console_errors):
        def on_console(msg: Any) -> None:  # besides uncaught errors, any the page logs
            if msg.type == "error":
                console_errors.append(f"console: {msg.text}")

        page.on("console", on_console)
        cells = _run_all(page, lab, nb)
        _check_cells(nb, cells, shot)

        # the VLAN playground: a what-if server on a new network on compute-1
        playground = _widget_output(page, "boot a server here")
        playground.first.wait_for(timeout=PLAYGROUND_WAIT)  # views render after their models
        assert playground.count() == 1, f"{playground.count()} VLAN playgrounds ({shot})"
        playground.scroll_into_view_if_needed()
        table = playground.locator(".widget-html table").first
        table.wait_for(timeout=PLAYGROUND_WAIT)
        before = table.evaluate(TABLE_JS)
        assert "compute-1" in before[0], f"the VLAN table has no compute-1 column: {before}"
        assert "what-if-net-1" not in _column(before, "compute-1"), before
        expected_tag = f"VLAN {_lowest_free_tag(_column(before, 'compute-1').values())}"
        blank = playground.locator(".widget-dropdown select").evaluate_all(
            "selects => selects.filter(s => s.selectedIndex < 0).map(s => "
            "s.closest('.widget-dropdown').innerText.split('\\n')[0])")
        assert not blank, f"dropdowns that show no choice: {blank} ({shot})"

        playground.locator(".widget-dropdown", has_text="network").locator("select") \
            .select_option(label="(a new network)")
        playground.locator(".widget-dropdown", has_text="on host").locator("select") \
            .select_option(label="compute-1")
        playground.locator(".widget-button", has_text="boot a server here").click()
        expect(table).to_contain_text("what-if-net-1", timeout=PLAYGROUND_WAIT)
        after = table.evaluate(TABLE_JS)
        log = playground.locator(".widget-html").last
        expect(log).to_contain_text("lowest free tag", timeout=PLAYGROUND_WAIT)
        log_text = log.inner_text()
        _screenshot_cell(page, playground, shot)

        # the first walk stepper: two hops on, it shows the walk's third hop
        stepper = _widget_output(page, "next ▶").first
        stepper.scroll_into_view_if_needed()
        walk = stepper.evaluate(WALK_BEFORE_JS)
        assert len(walk) > 3, f"no packet walk of 3 hops or more before the stepper: {walk}"
        devices = [row[walk[0].index("device")] for row in walk[1:]]
        panel = stepper.locator(".widget-html")
        path = panel.locator(".widget-html-content > div").first
        expect(path).to_have_text(devices[0], timeout=PLAYGROUND_WAIT)
        first_hop = panel.inner_text()
        for _ in range(2):
            stepper.locator(".widget-button", has_text="next ▶").click()
        expect(path).to_have_text(" → ".join(devices[:3]), timeout=PLAYGROUND_WAIT)
        expect(stepper.locator(".widget-slider .widget-readout")).to_have_text("3")
        third_hop = panel.inner_text()
        _screenshot_cell(page, stepper, stepper_shot)
        cells = page.evaluate(CELL_STATE_JS)

    _check_cells(nb, cells, shot)  # using the widgets raised nothing either
    compute_1 = _column(after, "compute-1")
    assert compute_1.get("what-if-net-1") == expected_tag, \
        f"what-if-net-1 on compute-1 is {compute_1.get('what-if-net-1')}, the lowest free " \
        f"tag there is {expected_tag}: {after} ({shot})"
    assert [row[0] for row in after[1:]] == [row[0] for row in before[1:]] + ["what-if-net-1"], \
        f"the table did not gain exactly one row: {before} -> {after}"
    assert "what-if-net-1's first port on compute-1" in log_text and expected_tag in log_text, \
        f"the playground's log: {log_text!r}"
    assert third_hop != first_hop and devices[2] in third_hop.splitlines()[1], \
        f"the stepper does not show hop 3 ({devices[2]}) after two clicks: {third_hop!r}"
    assert not console_errors, f"the page raised errors: {console_errors}"
