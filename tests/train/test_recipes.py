"""Recipes: stage lengths and phases."""

from echat.train.recipes import stage


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
