"""``echat train --data MANIFEST``: one smoke stage trained from the reference's own fake data (raw list,
shard tars, combine lists, a data-list yaml over them; reference §6.1-§6.4), run from its repository's root
(the ``reference_root`` fixture, tests/conftest.py), offline, in seconds."""

import dataclasses
import json
import math

import pytest

from echat.cli import main
from echat.data.schema import read_manifest
from echat.data.shards import COMBINES_LIST, SHARD_LIST, write_shards
from echat.models.checkpoint import FINAL
from echat.models.echat import EChat
from echat.text_tokenizer import save_tokenizer

from ..data.reference import FAKE, REPLY, SPEECH_TOKENS, THINK_TASK, raw_records

MANIFESTS = {"raw": FAKE / "raw" / "data.list", "shard": FAKE / "shard" / SHARD_LIST,
             "combine": FAKE / "combine" / COMBINES_LIST}


def _train(data, out, *more: str) -> int:
    """``echat train`` of two smoke empathy steps (the fake records are S2S think dialogues)."""
    return main(["train", "--stage", "empathy", "--preset", "smoke", "--max-steps", "2", "--data", str(data),
                 "--out", str(out), *more])


def _losses(run) -> list[float]:
    return [record["loss"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in record]


@pytest.mark.parametrize("layout", ["raw", "shard", "combine"])
def test_each_reference_layout_trains_a_smoke_stage_from_the_reference_root(reference_root, capsys, layout):
    assert _train(MANIFESTS[layout], "exp/run", "--default-task", THINK_TASK) == 0
    printed = capsys.readouterr().out
    assert f"training data: 4 samples (4 records) from {MANIFESTS[layout]}; no dev data" in printed
    losses = _losses(reference_root / "exp" / "run")
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    model = EChat.from_checkpoint(reference_root / "exp" / "run" / FINAL)
    assert model.config.name == "smoke" and model.config.speech.codebook_size == 4096  # the reference's codes
    pieces = model.tokenizer.tokenize(REPLY)
    assert len(pieces) < len(REPLY.encode("utf-8")) / 4  # a BPE trained on the manifest's Chinese text


def test_a_data_list_yaml_trains_as_its_weights_mix_it(reference_root, capsys):
    """Weight 2 lists the combine source's tar twice; a second source with its own keys once."""
    more = [dataclasses.replace(r, key=f"more_{r.key}") for r in read_manifest(MANIFESTS["raw"])]
    write_shards(more, reference_root / "more")
    (reference_root / "mix.yaml").write_text(f"combine:\n  path: ./{MANIFESTS['combine']}\n  weight: 2\n"
                                             f"more:\n  path: ./more/{SHARD_LIST}\n  weight: 1\n")
    assert _train("mix.yaml", "exp/mix", "--default-task", THINK_TASK, "--dev", str(MANIFESTS["shard"])) == 0
    printed = capsys.readouterr().out
    assert f"training data: 12 samples (8 records) from mix.yaml; dev: 4 samples from {MANIFESTS['shard']}" in printed
    assert all(math.isfinite(loss) for loss in _losses(reference_root / "exp" / "mix"))


def test_records_without_a_task_are_refused_with_one_line_each_named(reference_root, capsys):
    assert _train(MANIFESTS["combine"], "exp/run") == 1
    error = capsys.readouterr().err
    assert error == (f"echat: error: {FAKE}/shard/shards_000000000.tar:1: fake_1: task: missing (give --default-task"
                     " TASK to read such records as TASK) (and 3 more problem(s): `echat data check` lists every "
                     "one)\n")
    assert not (reference_root / "exp" / "run").exists()


def test_a_speech_token_past_the_checkpoints_codebook_stops_the_run_naming_it(reference_root, capsys):
    assert _train(MANIFESTS["raw"], "exp/first") == 0
    records = raw_records(2)
    records[1]["extra"] = {**records[1]["extra"], "speech_token": [*SPEECH_TOKENS, 4096]}
    (reference_root / "big.list").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert _train("big.list", "exp/next", "--init", "exp/first") == 1
    assert capsys.readouterr().err == ("echat: error: big.list:2: fake_2: extra.speech_token: speech token 4096 "
                                       "out of range [0, 4096) at index 5\n")


def test_a_tokenizer_folder_is_read_as_given(reference_root, mini_tok, capsys):
    save_tokenizer(mini_tok, reference_root / "tok")
    assert _train(MANIFESTS["shard"], "exp/tok", "--tokenizer", "tok") == 0
    assert EChat.from_checkpoint(reference_root / "exp" / "tok" / FINAL).tokenizer.get_vocab() == mini_tok.get_vocab()
    assert _train(MANIFESTS["shard"], "exp/again", "--tokenizer", "tok", "--init", "exp/tok") == 1
    assert "--tokenizer is for a fresh model" in capsys.readouterr().err


def test_a_corpus_folder_takes_no_manifest_options(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    for name in ("train.jsonl", "dev.jsonl", "text_tokenizer"):
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).touch()
    assert _train(corpus, tmp_path / "run", "--dev", "dev.list") == 1
    assert "is a corpus folder: --dev, --tokenizer and --base are for a manifest" in capsys.readouterr().err


def test_a_stage_whose_tasks_the_data_lacks_stops_before_its_first_step(reference_root, capsys):
    assert _train(MANIFESTS["raw"], "exp/u", "--stage", "understanding") == 1
    assert capsys.readouterr().err == (f"echat: error: {MANIFESTS['raw']}: stage understanding trains on asr, asrp, "
                                       "only_p, but the data has only s2s_think\n")


def test_a_recipe_asks_for_a_corpus_folder_not_a_manifest(reference_root, capsys):
    assert main(["train", "--recipe", "smoke", "--data", str(MANIFESTS["raw"]), "--out", "exp/r"]) == 1
    assert "a file, not a corpus folder (a recipe trains on an EChat-mini corpus; train one stage from a manifest " \
           "with --stage)" in capsys.readouterr().err
