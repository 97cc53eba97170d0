"""Notebook 11's app in a real JupyterLab, on the smoke preset: a picked sample, then the fake microphone
(``data/samples/hello.wav``), each gets a think, a streamed reply and a reply ``<audio>`` (the issue's two cases).

The copied notebook's parameters cell is edited before it is opened (PRESET "smoke", RUN_DIR and CORPUS in
pytest's tmp folders); its cells run once for the module. The tests use the app's DOM hooks (CSS classes
``echat-*``, see ``echat/app/``). Screenshots go to each test's pytest tmp folder (``screenshots/``) and to
``runs/browser-artifacts/<test name>/``.
"""

import re

import pytest

from tests.browser import lab
from tests.browser.conftest import ARTIFACTS

NOTEBOOK = "11_interactive_demo.ipynb"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (lab.ROOT / "notebooks" / NOTEBOOK).exists(),
                                 reason=f"notebooks/{NOTEBOOK} is not in this checkout yet")]
RUN_ALL_S = 900  # corpus reused; the smoke recipe trained in the run folder
REPLY_S = 180
RECORD_S = 2.0
DURATION = re.compile(r"(\d+\.\d\d) s")


@pytest.fixture(scope="module")
def demo_tab(jupyterlab, browser, smoke_corpus, tmp_path_factory):
    """Notebook 11 opened and run to the end on the smoke preset, its app idle: one page for the module (a
    failure to get there leaves ``runs/browser-artifacts/notebook-11/run-all-failed.png``)."""
    lab.set_parameters(jupyterlab.root / "notebooks" / NOTEBOOK,
                       {"PRESET": "smoke", "RUN_DIR": str(tmp_path_factory.mktemp("demo-run")),
                        "CORPUS": str(smoke_corpus)})
    context = browser.new_context(viewport={"width": 1400, "height": 1600}, permissions=["microphone"])
    page = context.new_page()
    try:
        lab.open_notebook(page, jupyterlab, f"notebooks/{NOTEBOOK}")
        lab.run_all_cells(page, timeout_s=RUN_ALL_S)
        page.locator(".echat-run").wait_for(state="visible")
    except Exception:
        lab.save_screenshot(page, [ARTIFACTS / "notebook-11"], "run-all-failed")
        context.close()
        raise
    yield page
    context.close()


@pytest.fixture
def demo_page(demo_tab, screenshot):
    """The module's notebook-11 page; its state after each test is saved as ``final.png``, pass or fail."""
    yield demo_tab
    screenshot(demo_tab, "final")


def assert_a_full_reply(page) -> None:
    """The think block and the reply text have text, the reply audio a data URL, and no error line shows."""
    assert page.locator(".echat-think").inner_text().strip(), "empty think block"
    assert page.locator(".echat-reply").inner_text().strip(), "empty reply text"
    errors = page.locator(".echat-error")
    assert errors.count() == 0 or not errors.first.inner_text().strip(), errors.first.inner_text()


def test_a_picked_sample_gets_a_think_a_reply_and_audio(demo_page, screenshot):
    page = demo_page
    page.locator(".echat-source button", has_text=re.compile(r"^\s*sample\s*$")).click()
    picker = page.locator(".echat-sample select")
    picker.select_option(index=min(1, picker.locator("option").count() - 1))
    screenshot(page, "sample-picked")
    lab.run_and_wait_for_reply(page, REPLY_S)
    screenshot(page, "sample-replied")
    assert_a_full_reply(page)
    assert DURATION.search(page.locator(".echat-input-info").inner_text())


def test_a_recording_from_the_fake_microphone_reaches_the_model(demo_page, screenshot):
    page = demo_page
    lab.record(page, RECORD_S, screenshot)
    source = page.locator(".echat-source button.mod-active")
    source.filter(has_text="microphone").wait_for(timeout=20_000)
    info = page.locator(".echat-input-info")
    page.wait_for_function("() => /\\d+\\.\\d\\d s/.test(document.querySelector('.echat-input-info').innerText)",
                           timeout=20_000)
    seconds = float(DURATION.search(info.inner_text()).group(1))
    assert 0.5 < seconds < 4 * RECORD_S, info.inner_text()
    lab.run_and_wait_for_reply(page, REPLY_S)
    screenshot(page, "microphone-replied")
    assert_a_full_reply(page)
