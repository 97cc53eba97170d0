"""Make README's screenshot of the app (``docs/app.png``): a trained model's S2S-with-think reply in JupyterLab.

It writes a temporary notebook that calls ``echat.app.show(run=RUN, corpus=CORPUS)``, opens it in JupyterLab
(127.0.0.1, no token) in headless Chromium driven by Playwright (Debian's ``chromium``, as the browser tests:
:mod:`tests.browser.lab`), runs all cells, picks a test clip (``--sample KEY``; default the first unseen clip
whose emotion is ``<SAD>``, else the first unseen clip), chooses the task "S2S think" with the tag think,
presses Run, waits for the reply audio and the attention picture, and saves a PNG of the app's output area,
colour-quantized when it would be larger than ``--max-kb``. From the repository's root::

    HF_HUB_OFFLINE=1 python -m docs.app_screenshot --run runs/demo/recipe/3_empathy \\
        --corpus runs/demo/echat-mini --out docs/app.png
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
from pathlib import Path

from echat.app.inputs import corpus_samples, record_labels
from tests.browser import lab

TASK, THINK = "S2S think", "tag"
WIDTH = 1100  # px of the browser window: narrow enough for a small PNG, wide enough for the app's rows
RUN_ALL_S, REPLY_S = 900, 600
FAILED = lab.ROOT / "runs" / "browser-artifacts" / "app-screenshot"  # git-ignored: the page where it failed
_ATTENTION_DONE = """() => {
  const img = document.querySelector('img.echat-attention');
  return img !== null && img.complete && img.naturalWidth > 0;
}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--run``, ``--corpus``, ``--out``, ``--sample``, ``--max-kb``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder or checkpoint (e.g. runs/demo/recipe/3_empathy)")
    parser.add_argument("--corpus", required=True, help="the EChat-mini folder whose test clips the app offers")
    parser.add_argument("--out", default="docs/app.png", help="the PNG to write")
    parser.add_argument("--sample", help="the test clip's key (default: an unseen <SAD> clip)")
    parser.add_argument("--max-kb", type=int, default=400, help="quantize the PNG's colours above this size")
    return parser.parse_args(argv)


def choose_sample(corpus: Path, key: str | None) -> str:
    """``key`` if the corpus's test clips hold it, else the first unseen ``<SAD>`` clip, else the first unseen."""
    records = corpus_samples(corpus)
    if key is not None:
        if key not in {r.key for r in records}:
            raise SystemExit(f"{key}: not a test clip of {corpus}")
        return key
    unseen = [r for r in records if record_labels(r)["subset"] == "unseen"] or records
    sad = [r for r in unseen if record_labels(r)["emotion"] == "<SAD>"]
    return (sad or unseen)[0].key


def write_app_notebook(folder: Path, run: Path, corpus: Path) -> Path:
    """The notebook that shows the app on ``run`` and ``corpus`` (absolute paths, in a temporary folder)."""
    parameters = f"RUN = {str(run)!r}\nCORPUS = {str(corpus)!r}"
    cell = "import echat.app\n\napp = echat.app.show(run=RUN, corpus=CORPUS)"
    return lab.write_notebook(folder / "app.ipynb", [cell], parameters=parameters)


def labelled(page, kind: str, label: str):
    """The ipywidgets control of class ``widget-KIND`` whose description is exactly ``label``."""
    return page.locator(f".widget-{kind}", has=page.locator("label", has_text=re.compile(rf"^{label}$")))


def choose(page, key: str) -> None:
    """Pick the clip ``key`` in the sample dropdown, the task and the tag think."""
    picker = page.locator(".echat-sample select")
    # ipywidgets writes the labels' spaces as no-break spaces: match the key and any white space after it
    index = picker.evaluate("(s, key) => [...s.options].findIndex((o) => new RegExp('^' + key + '\\\\s')"
                            ".test(o.text))", key)
    if index < 0:
        raise SystemExit(f"{key}: not in the app's sample list")
    picker.select_option(index=index)
    labelled(page, "dropdown", "task").locator("select").select_option(label=TASK)
    labelled(page, "toggle-buttons", "think").locator("button", has_text=re.compile(rf"^\s*{THINK}\s*$")).click()
    page.locator(".echat-input-info", has_text=key).wait_for(timeout=60_000)


def run_app(page, key: str) -> None:
    """Choose the clip and settings, press Run and wait for the reply audio and the attention picture."""
    choose(page, key)
    lab.run_and_wait_for_reply(page, REPLY_S)
    page.wait_for_function(_ATTENTION_DONE, timeout=REPLY_S * 1000, polling=500)
    page.get_by_text(re.compile(r"^done in \d+\.\d+ s$")).wait_for(timeout=REPLY_S * 1000)
    errors = page.locator(".echat-error")
    if errors.count() and errors.first.inner_text().strip():
        raise SystemExit(f"the app says: {errors.first.inner_text().strip()}")


def app_picture(page) -> bytes:
    """A PNG of the app's output area, the window made tall enough to hold all of it."""
    app = page.locator(".jp-OutputArea-output", has=page.locator(".echat-run")).first
    height = int(app.bounding_box()["height"])
    page.set_viewport_size({"width": WIDTH, "height": height + 400})
    app.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    return app.screenshot()


def small_png(png: bytes, max_kb: int) -> bytes:
    """``png`` as it is when under ``max_kb``, else with its colours quantized to a 256-colour palette."""
    if len(png) <= max_kb * 1024:
        return png
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def drive(page, server: lab.Lab, key: str) -> bytes:
    """Open the notebook, run it and the app, and return the app's PNG; on a failure, save the page as
    ``runs/browser-artifacts/app-screenshot/failed.png`` first."""
    try:
        lab.open_notebook(page, server, "app.ipynb")
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()  # fold the file browser
        lab.run_all_cells(page, timeout_s=RUN_ALL_S)
        run_app(page, key)
        return app_picture(page)
    except Exception:
        print(f"failed: see {lab.save_screenshot(page, [FAILED], 'failed')[0]}", file=sys.stderr)
        raise


def screenshot(run: Path, corpus: Path, key: str, chromium: str) -> bytes:
    """Start JupyterLab and Chromium, show the app on ``run`` and ``corpus``, run ``key``: the app's PNG."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root, state = Path(tmp) / "lab", Path(tmp) / "state"
        root.mkdir()
        state.mkdir()
        write_app_notebook(root, run, corpus)
        server = lab.start_lab(root, state)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=lab.CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": WIDTH, "height": 1600})
                png = drive(page, server, key)
                browser.close()
        finally:
            server.stop()
    return png


def main(argv: list[str] | None = None) -> None:
    """Make the screenshot and say where it went, its size and the clip it shows."""
    args = parse_args(argv)
    chromium = lab.chromium_path()
    if chromium is None:
        raise SystemExit("no Chromium on PATH (`chromium` or `chromium-browser`): install Debian's `chromium`")
    run, corpus = Path(args.run).resolve(), Path(args.corpus).resolve()
    key = choose_sample(corpus, args.sample)
    png = small_png(screenshot(run, corpus, key, chromium), args.max_kb)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    print(f"{out}: {len(png) / 1024:.0f} KB, clip {key}, task {TASK}, think {THINK}", file=sys.stderr)


if __name__ == "__main__":
    main()
