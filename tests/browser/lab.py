"""JupyterLab and Chromium for the browser tests: start a server, open a notebook, run it, take pictures.

:func:`start_lab` runs ``python -m jupyterlab`` on 127.0.0.1 on a free port (no token, no browser,
``--allow-root`` when root) with its settings, workspaces and runtime files in a temporary folder, and the
repository first on the kernels' ``PYTHONPATH`` so that they import the code under test. Chromium is the
Debian package, found on ``PATH`` (``playwright install`` cannot download browsers here).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
# The flags: no GPU, no sandbox (root in CI), and nothing that reaches the network by itself.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A fake microphone that plays a committed EChat-mini clip (5.3 s, looped) and grants the permission unasked.
MICROPHONE_CLIP = ROOT / "data" / "samples" / "hello.wav"
FAKE_MICROPHONE_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                         f"--use-file-for-fake-audio-capture={MICROPHONE_CLIP}"]
IDLE = "Python 3 (ipykernel) | Idle"
SERVER_START_S = 120


def chromium_path() -> str | None:
    """The Chromium executable on PATH (Debian's ``chromium``, else ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: its ``url`` (no trailing slash), the ``root`` folder it serves, its process."""

    url: str
    root: Path
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Terminate the server (and its kernels), then kill it if it lingers."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


def _lab_environment(state: Path) -> dict[str, str]:
    """The server's environment: offline hub, private Jupyter folders under ``state``, the repository importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(state / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # No "would you like news?" toast over the widgets.
    news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    # Every cell in the page (no virtual scrolling), so that the tests can find any widget.
    windowing = state / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    windowing.parent.mkdir(parents=True, exist_ok=True)
    windowing.write_text('{"windowingMode": "none"}')
    return env


def start_lab(root: Path, state: Path) -> Lab:
    """Start JupyterLab serving ``root`` and return once ``/api/status`` answers (or raise with its log's tail)."""
    port = free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--ServerApp.root_dir={root}", "--IdentityProvider.token=", "--ServerApp.password=",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = state / "jupyterlab.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=root, env=_lab_environment(state), stdout=out,
                                   stderr=subprocess.STDOUT)
    lab = Lab(f"http://127.0.0.1:{port}", root, process, log)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status", timeout=2) as answer:
                if answer.status == 200:
                    return lab
        except OSError:
            time.sleep(0.5)
    lab.stop()
    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s: {log.read_text()[-2000:]}")


def write_notebook(path: Path, sources: list[str], parameters: str | None = None) -> Path:
    """A notebook of code cells ``sources`` (the first tagged ``parameters`` when given), kernel python3."""
    notebook = nbformat.v4.new_notebook()
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells.append(cell)
    notebook.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path


def set_parameters(path: Path, values: dict[str, object]) -> None:
    """Rewrite the ``parameters`` cell of the notebook at ``path``: each ``NAME = ...`` line of ``values``
    gets the new value (``repr``), as papermill would inject it."""
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line)]
        assert found, f"{path.name}: no {name} in the parameters cell"
        lines[found[0]] = f"{name} = {value!r}"
    cell.source = "\n".join(lines)
    nbformat.write(notebook, path)


# ----------------------------------------------------------------------------------------------
# Driving the page (Playwright's sync API)
# ----------------------------------------------------------------------------------------------

_ALL_PROMPTS_DONE = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
  return prompts.length > 0 && prompts.every((p) => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
}"""


_PROMPT_RAN = """([index, before]) => {
  const prompt = document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')[index];
  const text = prompt.textContent.trim();
  return text !== before && /^\\[\\d+\\]:$/.test(text);
}"""


_FRESH_REPLY = """() => {
  const audio = document.querySelector('.echat-reply-audio audio:not([data-stale])');
  const src = audio ? audio.getAttribute('src') || '' : '';
  return src.startsWith('data:audio/wav;base64,') && src.length > 'data:audio/wav;base64,'.length;
}"""


def wait_idle(page, timeout_s: float) -> None:
    """Wait until the status bar says the kernel is idle."""
    page.locator(".jp-StatusBar-Widget").get_by_text(IDLE, exact=True).wait_for(state="visible",
                                                                                  timeout=timeout_s * 1000)


def open_notebook(page, lab: Lab, name: str, timeout_s: float = 120) -> None:
    """Open ``name`` (relative to the lab's root) alone (``?reset``: no tab of an earlier test comes back) and
    wait for its kernel to be idle."""
    page.goto(f"{lab.url}/lab/tree/{name}?reset")
    page.locator(".jp-Notebook").first.wait_for(state="visible", timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)


def run_all_cells(page, timeout_s: float) -> None:
    """Run menu → Run All Cells, then wait until every code cell shows its execution count and the kernel is idle."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(_ALL_PROMPTS_DONE, timeout=timeout_s * 1000, polling=500)
    wait_idle(page, timeout_s)


def run_cell(page, index: int, timeout_s: float = 60) -> None:
    """Select code cell ``index`` (0-based, in the page) by its prompt, run it with Shift+Enter, and wait until
    its prompt shows a new execution count and the kernel is idle."""
    prompt = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").nth(index)
    before = prompt.text_content().strip()
    prompt.click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(_PROMPT_RAN, arg=[index, before], timeout=timeout_s * 1000, polling=250)
    wait_idle(page, timeout_s)


def run_and_wait_for_reply(page, timeout_s: float) -> None:
    """Press the app's Run (``echat-run``) and wait for a reply audio that was not there before (earlier replies
    are marked stale), then for the kernel to be idle."""
    page.evaluate("() => document.querySelectorAll('.echat-reply-audio audio')"
                  ".forEach((a) => { a.dataset.stale = '1'; })")
    page.locator(".echat-run").click()
    page.wait_for_function(_FRESH_REPLY, timeout=timeout_s * 1000, polling=500)
    wait_idle(page, timeout_s)


def save_screenshot(page, folders: list[Path], name: str) -> list[Path]:
    """Save a full-page PNG of ``page`` as ``NAME.png`` in each of ``folders`` (made when missing)."""
    png = page.screenshot(full_page=True)
    paths = [Path(folder) / f"{name}.png" for folder in folders]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return paths


def record(page, seconds: float, screenshot=None) -> None:
    """Press Record in the ``echat-record`` widget, let the (fake) microphone play ``seconds``, press Stop, and
    wait until Python has the recording (the widget's status line says "recorded ...")."""
    button = page.locator(".echat-record button")
    assert button.text_content() == "Record"
    button.click()
    page.locator(".echat-record button", has_text="Stop").wait_for(timeout=20_000)
    page.wait_for_timeout(seconds * 1000)
    if screenshot is not None:
        screenshot(page, "recording")
    button.click()
    page.locator(".echat-record-status", has_text="recorded").wait_for(timeout=20_000)
    assert button.text_content() == "Record"
