"""``echat train --init FILE.pt``: a stage starts from a file in the released layout (what ``tag_think_final.pt``
holds; here a smoke-size export by :func:`save_reference_checkpoint`), from the reference's fake data, with full
fine-tuning or LoRA; a file of another layout is one line naming it."""

import torch

from echat.cli import main
from echat.config import preset
from echat.models.checkpoint import FINAL, save_reference_checkpoint
from echat.models.echat import EChat

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
