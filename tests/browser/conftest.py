"""Fixtures of the browser tests: Chromium (skip when none is installed), one JupyterLab per session serving
copies of the notebooks, one Chromium per session with the fake microphone, a page per test, screenshots."""

import shutil

import pytest

from tests.browser import lab

ARTIFACTS = lab.ROOT / "runs" / "browser-artifacts"  # git-ignored; kept after the run for a look
VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable; skips the browser tests where none is installed."""
    path = lab.chromium_path()
    if path is None:
        pytest.skip("no Chromium on PATH (`chromium` or `chromium-browser`): `make test` installs Debian's "
                    "`chromium` as root where apt-get exists; elsewhere install it by hand")
    return path


@pytest.fixture(scope="session")
def jupyterlab(chromium, tmp_path_factory):
    """A JupyterLab serving a temporary folder laid out like the repository: ``notebooks/`` holds copies of
    the numbered notebooks (tests may edit or add notebooks there), ``data`` links to the repository's."""
    root = tmp_path_factory.mktemp("lab-root")
    shutil.copytree(lab.ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "data").symlink_to(lab.ROOT / "data", target_is_directory=True)
    server = lab.start_lab(root, tmp_path_factory.mktemp("lab-state"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser(chromium):
    """Headless Chromium with the issue's flags and a fake microphone playing ``data/samples/hello.wav``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium,
                                              args=lab.CHROMIUM_FLAGS + lab.FAKE_MICROPHONE_FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def screenshot(request, tmp_path):
    """``screenshot(page, name)`` saves a full-page PNG twice: under this test's pytest tmp folder
    (``screenshots/NAME.png``) and under ``runs/browser-artifacts/TEST/NAME.png`` in the repository."""
    folders = [tmp_path / "screenshots", ARTIFACTS / request.node.name.replace("/", "_")]
    return lambda page, name: lab.save_screenshot(page, folders, name)


@pytest.fixture
def page(browser, screenshot):
    """A fresh browser page (microphone allowed); its last state is saved as ``final.png``, pass or fail."""
    context = browser.new_context(viewport=VIEWPORT, permissions=["microphone"])
    tab = context.new_page()
    yield tab
    screenshot(tab, "final")
    context.close()
