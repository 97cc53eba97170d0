"""The widget tree, driven as a user would (buttons clicked, values set), without a browser."""

import datetime

import ipywidgets as w
import numpy as np
import pytest

import echat.app
from echat.app.controller import Settings

# The recorder's own class (echat-record) is set by its browser side; the tree must hold the recorder itself.
CONTRACT_CLASSES = {"echat-sample", "echat-run", "echat-source", "echat-input-info", "echat-think", "echat-reply",
                    "echat-reply-audio", "echat-error", "echat-attention"}
GREEDY = Settings(task="S2S think", think="tag", decoding="greedy")


def classes(widget) -> set[str]:
    """Every DOM class in a widget tree."""
    found = set(getattr(widget, "_dom_classes", ()))
    for child in getattr(widget, "children", ()):
        found |= classes(child)
    return found


def descendants(widget) -> list:
    return [widget, *(d for child in getattr(widget, "children", ()) for d in descendants(child))]


def find(widget, css: str):
    if css in getattr(widget, "_dom_classes", ()):
        return widget
    return next((hit for child in getattr(widget, "children", ()) if (hit := find(child, css))), None)


@pytest.fixture
def app(scripted, tiny_corpus):
    return echat.app.show(model=scripted, corpus=tiny_corpus, settings=GREEDY, display=False)


def press(app, button: w.Button):
    button.click()
    app.wait(120)
    assert not app.busy


def test_the_tree_has_every_dom_hook_of_the_contract(app):
    assert CONTRACT_CLASSES <= classes(app.widget)
    assert any(d is app.recorder for d in descendants(app.widget))
    assert find(app.widget, "echat-source").options == ("sample", "upload", "microphone")
    assert len(find(app.widget, "echat-sample").options) == 2


def test_the_first_sample_is_picked_and_described(app):
    info = find(app.widget, "echat-input-info").value
    assert app.source.value == "sample" and "clip0" in info and f"{app.clip().seconds:.2f} s" in info
    assert app.picture.value[:4] == b"\x89PNG"


def test_run_fills_the_think_the_reply_the_audio_and_the_attention(app):
    press(app, find(app.widget, "echat-run"))
    assert find(app.widget, "echat-error").value == ""
    think = find(app.widget, "echat-think").value
    assert "<mark title='emotion'" in think and "&lt;SAD&gt;" in think
    assert "I&#x27;m sorry it was so hard." in find(app.widget, "echat-reply").value
    assert "<audio controls src='data:audio/wav;base64," in find(app.widget, "echat-reply-audio").value
    assert find(app.widget, "echat-attention").value[:4] == b"\x89PNG"
    assert "real-time factor" in app.panel.timings.value and app.status.value.startswith("done in")
    app.layer.value = 0  # another layer redraws the picture
    assert find(app.widget, "echat-attention").value[:4] == b"\x89PNG"


def test_filters_narrow_the_sample_picker(app):
    app.filters["gender"].value = "<MALE>"
    assert [label for label, _ in app.sample.options] == ["clip1 · sentence 1"]


def test_a_recording_switches_the_source_to_the_microphone(app):
    app.recorder.receive(np.zeros(48_000, dtype=np.float32).tobytes(), 48_000)
    assert app.source.value == "microphone" and "1.00 s" in find(app.widget, "echat-input-info").value


def test_a_bad_upload_is_one_line_in_the_app(app):
    app.upload.value = ({"name": "broken.wav", "type": "audio/wav", "size": 4, "content": memoryview(b"junk"),
                         "last_modified": datetime.datetime(2026, 1, 1)},)
    error = find(app.widget, "echat-error").value
    assert "broken.wav: unreadable or not audio" in error and "Traceback" not in error and "<br" not in error
    assert app.source.value == "sample"


def test_an_error_inside_a_run_is_one_line(app):
    app.source.value = "microphone"  # nothing recorded yet
    press(app, app.run_button)
    assert "this task listens" in find(app.widget, "echat-error").value
    app.run_path.value = "/nowhere/at/all"
    press(app, app.load_button)
    assert "cannot load a model: /nowhere/at/all: no such run" in find(app.widget, "echat-error").value


def test_ab_fills_both_sides(app):
    app.think_b.value = "language"
    press(app, app.compare_button)
    assert all("sorry it was so hard" in side.reply.value for side in app.sides.values())
    assert app.status.value.startswith("A ") and find(app.widget, "echat-error").value == ""


def test_chat_turns_are_listed_replayed_and_reset(app):
    press(app, app.say_button)
    press(app, app.say_button)
    assert len(app.history.children) == 2 and len(app.controller.chat.turns) == 2
    again = app.history.children[1].children[0]
    app.panel.clear()
    press(app, again)
    assert "sorry it was so hard" in app.panel.reply.value and len(app.controller.chat.turns) == 2
    app.reset_button.click()
    assert app.history.children == () and app.controller.chat.turns == []


def test_sections_choose_what_a_notebook_shows(scripted, tiny_corpus):
    app = echat.app.show(model=scripted, corpus=tiny_corpus, sections=("input", "compare"), display=False)
    assert "echat-run" not in classes(app.widget) and "echat-sample" in classes(app.widget)
    with pytest.raises(echat.app.AppError, match="unknown app sections"):
        echat.app.show(model=scripted, sections=("everything",), display=False)
