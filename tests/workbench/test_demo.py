"""`echat demo` (what `make demo` calls) end to end on the smoke preset: corpus, recipe, evaluations,
figures and a notebook in one folder; a second run finds everything."""

import json

import pytest

from echat.cli import main
from echat.train.recipes import recipe


@pytest.mark.slow
def test_demo_end_to_end_on_smoke(tmp_path, smoke_corpus, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "echat-mini").symlink_to(smoke_corpus)  # the session's smoke corpus stands in for the build
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--limit", "1", "--only", "04"]) == 0
    printed = capsys.readouterr().out
    assert "[demo 5/5]" in printed and "figures.md" in printed and "index.html" in printed
    figures = json.loads((out / "figures.json").read_text())
    assert [s["stage"] for s in figures["training"]] == [s.name for s in recipe("smoke")]
    assert all(s["seconds"] is not None and s["final_train_loss"] is not None for s in figures["training"])
    assert set(figures["evaluation"]) == {"understanding", "generation", "empathy"}
    assert figures["evaluation"]["understanding"]["subsets"]["seen"]["items"] == 1
    assert [n["name"] for n in figures["notebooks"]] == ["04_stage0_text_pretraining"]
    assert figures["notebooks"][0]["ok"]
    text = (out / "figures.md").read_text()
    assert "## Training" in text and "ASR CER" in text and "loss.png" in text
    assert figures["bridge_probe"]["subsets"]["seen"]["clips"] == 1 and "gender_accuracy" in text
    assert 'href="figures.md"' in (out / "index.html").read_text()
    timings = json.loads((out / "recipe" / "timings.json").read_text())
    # a second run finds everything: nothing is trained or evaluated again, the timings stay
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--limit", "1", "--no-notebooks"]) == 0
    assert json.loads((out / "recipe" / "timings.json").read_text()) == timings
    again = json.loads((out / "figures.json").read_text())
    assert again["evaluation"] == figures["evaluation"]
    assert "stage text:" not in capsys.readouterr().out  # the trainer prints its recipe when it starts
