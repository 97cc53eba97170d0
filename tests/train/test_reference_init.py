"""``echat train --init FILE.pt``: a stage starts from a file in the released layout (what ``tag_think_final.pt``
holds; here a smoke-size export by :func:`save_reference_checkpoint`), from the reference's fake data, with full
fine-tuning or LoRA; a file of another layout is one line naming it. The ``osum-echat`` stages (the released
model's fine-tuning) run at the reference's optimiser settings with the paper's trainable sets."""

import json

import pytest
import torch

from echat.cli import main
from echat.config import TrainConfig, preset
from echat.models.checkpoint import FINAL, save_reference_checkpoint
from echat.models.echat import EChat
from echat.train import run
from echat.train.recipes import recipe
from echat.train.stages import trainable_modules

from ..data.reference import FAKE, THINK_TASK

RAW = FAKE / "raw" / "data.list"


def _released_layout_file(folder):
    """A smoke model in the layout of the released checkpoints (the reference's 4096 speech codes), its tensors."""
    config = preset("smoke")
    config.speech = preset("osum-echat").speech
    torch.manual_seed(7)
    model = EChat.from_preset(config)
    path = save_reference_checkpoint(model, folder / "tag_think_final.pt", dtype=torch.float32)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def _train(init, out, *more: str) -> int:
    return main(["train", "--stage", "empathy", "--preset", "smoke", "--max-steps", "2", "--data", str(RAW),
                 "--default-task", THINK_TASK, "--init", str(init), "--out", str(out), *more])


def test_a_stage_starts_from_a_released_layout_pt_file(reference_root):
    path, source = _released_layout_file(reference_root)
    assert _train(path, "exp/pt") == 0
    trained = EChat.from_checkpoint(reference_root / "exp" / "pt" / FINAL).state_dict()
    frozen = [k for k in source if k.startswith("encoder.")]
    assert frozen and all(torch.equal(trained[k], source[k]) for k in frozen)  # the file's weights, kept frozen
    assert not torch.equal(trained["speech_head.weight"], source["speech_head.weight"])  # and trained on


def test_lora_from_a_released_layout_pt_file(reference_root):
    path, _ = _released_layout_file(reference_root)
    assert _train(path, "exp/lora", "--lora") == 0
    model = EChat.from_checkpoint(reference_root / "exp" / "lora" / FINAL)
    assert model.config.llm.lora.enabled and any("lora_" in k for k in model.state_dict())


def test_a_pt_file_of_another_layout_is_one_line_naming_it(reference_root, capsys):
    path, _ = _released_layout_file(reference_root)
    assert main(["train", "--stage", "empathy", "--preset", "mini", "--max-steps", "1", "--data", str(RAW),
                 "--default-task", THINK_TASK, "--init", str(path), "--out", "exp/mini"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"echat: error: {path}: ") and "mini" in error and error.count("\n") == 1


def test_a_corpus_stage_starts_from_a_released_layout_pt_file(smoke_corpus, tmp_path):
    torch.manual_seed(7)
    source = EChat.from_preset("smoke")
    path = save_reference_checkpoint(source, tmp_path / "tag_think_final.pt", dtype=torch.float32)
    assert main(["train", "--stage", "empathy", "--preset", "smoke", "--max-steps", "1", "--data", str(smoke_corpus),
                 "--init", str(path), "--out", str(tmp_path / "run")]) == 0
    trained = EChat.from_checkpoint(tmp_path / "run" / FINAL).state_dict()
    assert all(torch.equal(trained[k], v) for k, v in source.state_dict().items() if k.startswith("encoder."))


def test_the_osum_echat_stages_run_at_the_reference_optimiser_with_the_papers_trainable_sets():
    reference = TrainConfig()
    stages = recipe("osum-echat", "language")
    assert [s.name for s in stages] == ["understanding", "generation", "empathy"]
    for chosen in stages:
        assert (chosen.lr, chosen.warmup_steps, chosen.scheduler) == (1e-6, 2000, "inverse_sqrt")
        assert (chosen.lr, chosen.scheduler) == (reference.lr, reference.scheduler)
        assert {m for m, scale in chosen.module_lr if scale} == trainable_modules(chosen.name)
        assert not (chosen.bridge or chosen.dictation or chosen.think_drills)
    assert stages[-1].think == "language" and stages[-1].teaches_think


@pytest.mark.parametrize("preset_name, lr", [("osum-echat", 1e-6), ("smoke", 1e-3)])
def test_a_stage_takes_its_presets_recipe(monkeypatch, tmp_path, preset_name, lr):
    chosen = {}
    monkeypatch.setattr(run, "train_stage", lambda stage, *args, **kwargs: chosen.update(stage=stage) or tmp_path)
    assert main(["train", "--stage", "generation", "--preset", preset_name, "--data", "d.list", "--lora",
                 "--max-steps", "5", "--out", str(tmp_path / "run")]) == 0
    assert (chosen["stage"].lr, chosen["stage"].lora, chosen["stage"].max_steps) == (lr, True, 5)


def test_the_osum_echat_stage_trains_from_a_released_layout_file(reference_root):
    path, _ = _released_layout_file(reference_root)
    assert _train(path, "exp/ref", "--recipe-of-stage", "osum-echat") == 0
    logged = [json.loads(line) for line in (reference_root / "exp" / "ref" / "metrics.jsonl").read_text().splitlines()]
    rates = [record["lr"] for record in logged if "lr" in record]
    assert rates == pytest.approx([2e-6 / 2000, 3e-6 / 2000])  # the reference's warm-up (logged after each step)
