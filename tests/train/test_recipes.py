"""Recipes: stage lengths and phases, the step arithmetic, data mixes, cut stages and the think mode."""

import random

import pytest

from echat.config import ThinkMode
from echat.data.schema import Record
from echat.train.recipes import Phase, mix_records, recipe, stage


def test_a_cut_stage_has_exactly_the_steps_asked_for_in_proportion():
    full = stage("mini", "text")
    for max_steps in (2, 3, 301, 999):
        cut = stage("mini", "text", max_steps=max_steps)
        assert cut.max_steps == max_steps and len(cut.phases) == len(full.phases)
        assert [p.mix for p in cut.phases] == [p.mix for p in full.phases]
        for phase, whole in zip(cut.phases, full.phases, strict=True):
            assert abs(phase.steps - max_steps * whole.steps / full.max_steps) < 1 or phase.steps == 1


def test_every_speech_output_phase_rehearses_the_understanding_tasks():
    understanding = {"asr", "asrp", "only_p"}
    for recipe_name in ("smoke", "mini"):
        for phase in stage(recipe_name, "generation").phases:
            weights = dict(phase.mix)
            share = sum(weights.get(f, 0.0) for f in understanding) / sum(weights.values())
            assert understanding <= weights.keys() and 0.2 <= share <= 0.4, (recipe_name, phase.mix)


def test_phase_arithmetic_finds_the_phase_of_every_step():
    for recipe_name in ("smoke", "mini"):
        for chosen in recipe(recipe_name):
            assert chosen.max_steps == sum(p.steps for p in chosen.phases)
            for index, phase in enumerate(chosen.phases):
                start = chosen.phase_start(index)
                assert chosen.phase_at(start) == (index, phase)
                assert chosen.phase_at(start + phase.steps - 1) == (index, phase)
            assert chosen.phase_at(chosen.max_steps + 5) == (len(chosen.phases) - 1, chosen.phases[-1])


def test_mixes_draw_every_present_family_by_weight():
    records = {"asr": [_record("a", "<TRANSCRIBE>")], "tts": [_record("t", "<TEXT2TOKEN>")]}
    phase = Phase((("asr", 3.0), ("tts", 1.0), ("s2s", 5.0)), steps=10)  # s2s has no record: left out
    drawn = mix_records(records, phase, 40, random.Random(0))
    assert len(drawn) == 40 and sum(r.key == "a" for r in drawn) == 30
    with pytest.raises(ValueError, match="no records for any family"):
        mix_records(records, Phase((("s2s", 1.0),), steps=1), 4, random.Random(0))


def test_a_cut_stage_keeps_its_settings_and_a_cap_at_its_length_changes_nothing():
    full = stage("smoke", "empathy", "language")
    assert stage("smoke", "empathy", "language", max_steps=full.max_steps) == full
    cut = stage("smoke", "empathy", "language", max_steps=2)
    assert cut.max_steps == 2 and cut.think is ThinkMode.LANGUAGE and cut.lr == full.lr
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        stage("smoke", "nope")
    with pytest.raises(ValueError, match="unknown recipe 'huge'"):
        recipe("huge")


def test_only_the_empathy_stage_teaches_the_think_and_carries_its_mode():
    for think in ThinkMode:
        stages = {s.name: s for s in recipe("mini", think)}
        assert [name for name, s in stages.items() if s.teaches_think] == ["empathy"]
        assert stages["empathy"].think is think and stages["text"].think is ThinkMode.NONE


def _record(key: str, task: str) -> Record:
    return Record(key=key, task=task, txt="hello", wav="a.wav" if task != "<TEXT2TOKEN>" else None)
