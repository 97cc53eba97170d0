"""The bridge probe: a trained run's heads read per test subset, and a clear error without heads."""

import pytest

from echat.eval.probe import probe_run, render_probe


def test_probe_reads_a_trained_runs_heads_per_subset(smoke_corpus, tmp_path):
    from echat.train.recipes import stage
    from echat.train.run import train_stage

    final = train_stage(stage("smoke", "understanding", max_steps=3), smoke_corpus, tmp_path / "run", "smoke",
                        progress=False)
    report = probe_run(final, smoke_corpus, limit=4)
    assert report["checkpoint"].endswith("step_000003")
    assert set(report["subsets"]) == {"seen", "unseen"}
    for scores in report["subsets"].values():
        assert 0 < scores["clips"] <= 4 and scores["char_cer"] >= 0
        assert all(0 <= scores[f"{name}_accuracy"] <= 1 for name in ("gender", "age", "emotion", "event"))
    assert "gender_accuracy" in render_probe(report)


def test_probe_refuses_a_stage_without_bridge_heads(smoke_corpus, tmp_path):
    from echat.train.recipes import stage
    from echat.train.run import train_stage

    final = train_stage(stage("smoke", "text", max_steps=2), smoke_corpus, tmp_path / "run", "smoke", progress=False)
    with pytest.raises(ValueError, match="trained no bridge heads"):
        probe_run(final, smoke_corpus)
