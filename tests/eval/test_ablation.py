"""The ablation grid: its graph, the paired comparison, and `echat ablate --recipe smoke` end to end."""

from __future__ import annotations

import json

import pytest

from echat.cli import main
from echat.config import ThinkMode
from echat.eval import ablation
from echat.eval.ablation import NODES, VARIANTS, Variant, needed_nodes, paired_difference
from echat.models.checkpoint import FINAL


def test_every_variant_runs_from_the_graph_and_shared_stages_are_trained_once():
    names = [n.name for n in NODES]
    assert len(names) == len(set(names))
    for node in NODES:  # parents come first
        assert node.parent is None or names.index(node.parent) < names.index(node.name)
    assert [n.name for n in needed_nodes()] == names
    no_u = needed_nodes((Variant("x", "3_empathy-none-no_u", ThinkMode.NONE),))
    assert [n.name for n in no_u] == ["0_text", "2_generation-no_u", "3_empathy-none-no_u"]
    assert sum(n.stage == "generation" for n in NODES) == 2 and sum(n.stage == "text" for n in NODES) == 1
    by_name = {n.name: n for n in NODES}
    for variant in VARIANTS:
        assert by_name[variant.node].think is variant.think


def _rows(system: str, scores: list[int], seed: int = 0) -> list[dict]:
    return [{"system": system, "key": f"k{i}", "score": s, "seed": seed} for i, s in enumerate(scores)]


def test_paired_difference_reads_the_same_items_of_both_systems():
    rows = _rows("a", [5, 5, 4, 5] * 5) + _rows("b", [3, 2, 3, 3] * 5)
    out = paired_difference(rows, "a", "b")
    assert out["n"] == 20 and out["mean"] == pytest.approx(20 * 2.0) and out["verdict"] == "holds"
    assert out["low"] <= out["mean"] <= out["high"]
    assert paired_difference(rows, "b", "a")["verdict"] == "reversed"
    tied = _rows("a", [3, 4] * 10) + _rows("b", [4, 3] * 10)
    assert paired_difference(tied, "a", "b")["verdict"].startswith("not resolved")
    failed = _rows("a", [5, 5]) + [{"system": "b", "key": "k0", "score": None, "seed": 0}]
    assert paired_difference(failed, "a", "b")["n"] == 0  # a failed item is compared with nothing
    two_seeds = _rows("a", [5] * 4) + _rows("b", [1] * 4) + _rows("a", [5] * 4, seed=1) + _rows("b", [5] * 4, seed=1)
    first, again = paired_difference(two_seeds, "a", "b"), paired_difference(two_seeds, "a", "b")
    assert first == again and first["n"] == 8  # the bootstrap is seeded: the same interval every time
    # each seed's items are resampled among themselves (each seed is constant here): pooled, they would spread
    assert first["low"] == first["mean"] == first["high"] == pytest.approx(40.0)


def test_drills_belong_to_the_tag_think_only():
    from echat.train.recipes import stage

    assert stage("mini", "empathy", ThinkMode.TAG).think_drills > 0
    assert stage("mini", "empathy", ThinkMode.LANGUAGE).think_drills == 0
    assert stage("mini", "empathy", ThinkMode.NONE).think_drills == 0


def test_echat_ablate_smoke_trains_the_grid_once_evaluates_and_reruns_without_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ablate"
    args = ["ablate", "--recipe", "smoke", "--out", str(out), "--seeds", "0", "--limit", "1"]
    assert main(args) == 0
    for node in NODES:
        assert (ablation.run_dir(out, 0, node.name) / FINAL / "model.safetensors").is_file(), node.name
    result = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    assert set(result["summary"]["systems"]) == {v.name for v in VARIANTS}
    assert [c["better"] for c in result["claims"]] == [b for b, _ in ablation.CLAIMS]
    assert set(result["training_seconds"]["0"]) == {"corpus", *(n.name for n in NODES)}
    assert result["understanding"]["0"]  # stage 1's figures beside the table
    report = (out / "ablation.md").read_text(encoding="utf-8")
    for text in ("| EChat-mini |", "− dual think − U-driven", "paired over the same items", "OSUM-EChat",
                 "What the full model hears"):
        assert text in report
    assert (out / "ablation.png").stat().st_size > 0 and json.loads((out / "configs.json").read_text())["runs"]
    items = (out / "seed0" / "benchmark" / "items.jsonl").read_text(encoding="utf-8")
    finals = {n.name: (ablation.run_dir(out, 0, n.name) / FINAL / "model.safetensors").stat().st_mtime for n in NODES}
    capsys.readouterr()
    loaded = []
    monkeypatch.setattr(ablation, "load_model", lambda run: loaded.append(run))
    assert main(args) == 0  # everything found: no run trained, no model loaded, no item judged, the same table
    assert loaded == []
    assert "[ablate]" not in capsys.readouterr().out
    assert (out / "seed0" / "benchmark" / "items.jsonl").read_text(encoding="utf-8") == items
    assert {n.name: (ablation.run_dir(out, 0, n.name) / FINAL / "model.safetensors").stat().st_mtime
            for n in NODES} == finals
    again = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    assert again["summary"] == result["summary"] and again["claims"] == result["claims"]
