"""The recorder in a real JupyterLab: Chromium's fake microphone (``data/samples/hello.wav``) reaches Python.

A notebook written by the test shows a ``Recorder``; the test presses Record, waits 2 s, presses Stop, runs
the cell that prints the received duration and peak, and reads them (the clip is speech, so not silence).
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


def test_recording_from_the_fake_microphone_reaches_python(jupyterlab, page, screenshot):
    lab.write_notebook(jupyterlab.root / "notebooks" / "recorder_check.ipynb", [SHOW, PRINT])
    lab.open_notebook(page, jupyterlab, "notebooks/recorder_check.ipynb")
    lab.run_all_cells(page, timeout_s=120)
    assert "no recording" in page.locator(".jp-OutputArea-output").last.text_content()
    lab.record(page, RECORD_S, screenshot)
    lab.run_cell(page, 1)
    screenshot(page, "received")
    printed = page.locator(".jp-OutputArea-output").last.text_content()
    seconds, peak = map(float, re.search(r"received ([\d.]+) s at 16 kHz, peak ([\d.]+)", printed).groups())
    assert 0.5 < seconds < 4 * RECORD_S
    assert peak > 0.05, "the fake microphone's clip arrived as silence"
