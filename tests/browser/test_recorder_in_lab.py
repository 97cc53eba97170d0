"""The recorder in a real JupyterLab: Chromium's fake microphone (``data/samples/hello.wav``) reaches Python.

A notebook written by the test shows a ``Recorder``; the test presses Record, waits 2 s, presses Stop, runs
the cell that prints the received duration and peak, and reads them (the clip is speech, so not silence). A
second notebook's recorder, limited to 1 s, stops by itself.
Screenshots go to the test's pytest tmp folder (``screenshots/``) and to ``runs/browser-artifacts/<test name>/``.
"""

import re

import pytest

from tests.browser import lab

pytestmark = pytest.mark.browser

RECORD_S = 2.0
SHOW = "from echat.app.recorder import Recorder\nrecorder = Recorder()\nrecorder"
PRINT = ('wave = recorder.wave()\n'
         'print("no recording" if wave is None else '
         'f"received {wave.shape[0] / 16000:.2f} s at 16 kHz, peak {abs(wave).max():.3f}")')


def received(page) -> tuple[float, float]:
    """(seconds, peak) that the print cell wrote: the last output of the page."""
    printed = page.locator(".jp-OutputArea-output").last.text_content()
    found = re.search(r"received ([\d.]+) s at 16 kHz, peak ([\d.]+)", printed)
    assert found, f"the print cell wrote {printed!r}"
    return float(found.group(1)), float(found.group(2))


def test_recording_from_the_fake_microphone_reaches_python(jupyterlab, page, screenshot):
    lab.write_notebook(jupyterlab.root / "notebooks" / "recorder_check.ipynb", [SHOW, PRINT])
    lab.open_notebook(page, jupyterlab, "notebooks/recorder_check.ipynb")
    lab.run_all_cells(page, timeout_s=120)
    assert "no recording" in page.locator(".jp-OutputArea-output").last.text_content()
    lab.record(page, RECORD_S, screenshot)
    lab.run_cell(page, 1)
    screenshot(page, "received")
    seconds, peak = received(page)
    assert 0.5 < seconds < 4 * RECORD_S
    assert peak > 0.05, "the fake microphone's clip arrived as silence"


def test_a_recording_stops_by_itself_after_max_seconds(jupyterlab, page, screenshot):
    lab.write_notebook(jupyterlab.root / "notebooks" / "recorder_limit.ipynb",
                       [SHOW.replace("Recorder()", "Recorder(max_seconds=1.0)"), PRINT])
    lab.open_notebook(page, jupyterlab, "notebooks/recorder_limit.ipynb")
    lab.run_all_cells(page, timeout_s=120)
    page.locator(".echat-record button").click()
    page.locator(".echat-record-status", has_text="recorded").wait_for(timeout=20_000)
    assert page.locator(".echat-record button").text_content() == "Record"
    lab.run_cell(page, 1)
    screenshot(page, "received")
    seconds, _ = received(page)
    assert 0.9 < seconds < 1.5
