"""The hearing test: the LLM path must read its audio.

A smoke-size adapter + LLM on the mini world's encoder (Whisper base, pre-trained and frozen) trains on
16 clips of the smoke corpus through the real trainer, then must answer them from their audio: the first
answer token (teacher forced) far above the most common guess, and answers that change when the audio
does. A deaf model — one whose answers do not depend on the audio, as stage 1 had with an encoder
trained from scratch or a linear adapter — stays at the guess and recites training sentences, and fails.
The issue's full target holds too: first token at least 0.95 and greedy CER at most 0.05. With the
reference's linear adapter in place of the token pack (the fix reverted) the first token stays at
0.31 against a guess of 0.19 and the tests fail (docs/hearing.md, E16 and E26). The report is checked
through the CLI. The ceiling ladder passes every rung on this model and shows the audio rung alone at
the guess when the clips are silenced; the only-P link is reported per cue field beside its guess, and the tag-row
cosine of a field reads near 1 once its tags share one embedding direction. The cue tags: stage 0 with the
tag tasks (labels drawn at random, random tags written into ASR transcripts) makes the LLM read every
field's tag from exact frames (docs/hearing.md E65-E68, §13, §14). Without the tagged transcripts it reads them on
only 4 of 8 runs (seeds 0-3, on one and on two threads), with them on 7 of 8 seeds (one thread; docs/hearing.md
E134): the recipe writes them, and that is what is tested.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from echat.config import preset, whisper_base_encoder
from echat.data.pipeline import load_split
from echat.eval.hearing import (
    ASRP_TASK,
    ONLY_P_FIELD_TASKS,
    as_task,
    distinct_clips,
    hearing_report,
    hearing_sets,
    render_hearing,
    tag_tokens,
)
from echat.models.echat import EChat
from echat.train.recipes import Phase, StageRecipe, _lr
from echat.train.run import init_encoder
from echat.train.trainer import Trainer

CLIPS = 16
DICTATION_STEPS = 1000  # stage 0: the LLM learns to repeat a packed token prefix and copy its end frame
STEPS = 120  # per stage-1 phase: the adapter learns to spell the audio
LADDER_STEPS = 60  # rung 1: the per-clip frames learned through the frozen LLM


def hearing_config():
    """The smoke preset on the mini world's encoder and bridge (Whisper base, frozen; the mini adapter's
    token pack with its cue and bigram frames), with an LLM big enough to hold 16 sentences."""
    config = preset("smoke")
    config.encoder = whisper_base_encoder()
    small = config.adapter  # every option of the mini adapter, at the smoke adapter's size
    config.adapter = dataclasses.replace(preset("mini").adapter, d_model=small.d_model, n_layers=small.n_layers,
                                         n_heads=small.n_heads, ffn_dim=small.ffn_dim,
                                         max_positions=small.max_positions)
    config.llm.hidden_size, config.llm.intermediate_size, config.llm.n_layers = 64, 128, 2
    return config


@pytest.fixture(scope="module")
def trained(smoke_corpus, tmp_path_factory):
    """Stage 0 (dictation: the LLM learns to read spelled tokens), then stage 1 (the adapter learns to
    spell the audio for the frozen LLM), both on the same 16 clips through the real trainer."""
    from echat.text_tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = EChat(hearing_config(), load_tokenizer(smoke_corpus / "text_tokenizer"))
    init_encoder(model)
    clips = distinct_clips(load_split(smoke_corpus, "train", model.config))[:CLIPS]
    assert len(clips) == CLIPS
    samples = [as_task(c, "<TRANSCRIBE>") for c in clips]
    asr = (("asr", 1.0),)
    stages = (StageRecipe("text", (Phase(asr, DICTATION_STEPS),), _lr(llm=1.0), lr=3e-3, warmup_steps=10,
                          epoch_size=CLIPS, dictation=True, shuffled_dictation=0.3),
              StageRecipe("understanding", (Phase(asr, STEPS, bridge_only=True), Phase(asr, STEPS)),
                          _lr(adapter=1.0), lr=3e-3, warmup_steps=10, epoch_size=CLIPS, bridge=1.0))
    out = tmp_path_factory.mktemp("hearing")
    for recipe in stages:
        Trainer(model, recipe, samples, out / recipe.name, eval_every=0, save_every=0, progress=False).fit()
    return model.eval(), clips, out


def test_the_llm_path_reads_its_clips(trained):
    model, clips, _ = trained
    report = hearing_report(model, {"train": clips})
    row = report["sets"]["train"]
    assert row["asr_first_token"] >= row["asr_first_token_guess"] + 0.5, render_hearing(report)
    assert row["asr_all_tokens"] >= 0.9, render_hearing(report)
    assert row["adapter_spelling_cer"] <= 0.05 and row["dictation_first_token"] >= 0.9, render_hearing(report)
    assert row["distinct_outputs"] >= CLIPS - 1


def test_the_llm_path_answers_its_clips_from_their_audio(trained):
    model, clips, _ = trained
    report = hearing_report(model, {"train": clips})
    row = report["sets"]["train"]
    assert row["asr_first_token"] >= 0.95, render_hearing(report)
    assert row["greedy_cer"] <= 0.05, (render_hearing(report), row["examples"])


def test_the_answers_change_when_the_audio_does(trained):
    model, clips, _ = trained
    swapped = [dataclasses.replace(c, audio=clips[(i + 1) % CLIPS].audio) for i, c in enumerate(clips)]
    rows = hearing_report(model, {"train": clips, "swapped": swapped}, greedy=False)["sets"]
    assert rows["train"]["asr_first_token"] >= rows["train"]["asr_first_token_guess"] + 0.5
    assert rows["swapped"]["asr_first_token"] < 0.5  # each clip now carries another clip's sentence


def test_report_sets_are_fixed_and_written(trained, smoke_corpus, capsys):
    from echat.cli import main

    model, _, out = trained
    train = load_split(smoke_corpus, "train", model.config)
    test = load_split(smoke_corpus, "test", model.config)
    sets = hearing_sets(train, test, size=4)
    assert [s.record.key for s in sets["train"]] == [s.record.key for s in hearing_sets(train, test, 4)["train"]]
    assert set(sets) >= {"train", "seen", "unseen"} and all(len(v) <= 4 for v in sets.values())
    argv = ["eval", "--stages", "hearing", "--run", str(out / "understanding"), "--data", str(smoke_corpus),
            "--limit", "4"]
    assert main(argv) == 0
    assert "asr_first_token" in capsys.readouterr().out
    saved = json.loads((out / "understanding" / "eval" / "hearing.json").read_text())
    assert saved["sets"]["seen"]["clips"] == len(sets["seen"])
    assert saved["sets"]["train"]["probe_cer"] is not None  # the run's bridge heads read the encoder
    assert (out / "understanding" / "eval" / "hearing.png").stat().st_size > 1000


def test_asrp_label_is_the_transcript_then_one_token_per_tag(trained):
    model, clips, _ = trained
    record = as_task(clips[0], ASRP_TASK).record
    extra = clips[0].record.extra
    assert record.txt.startswith(extra["q_txt"]) and record.txt.endswith(extra["gender"])
    assert tag_tokens(model) == 3


def test_the_ceiling_ladder_names_no_failing_link_on_a_model_that_hears(trained):
    from echat.eval.ladder import ladder_report, render_ladder

    model, clips, _ = trained
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    report = ladder_report(model, clips, steps=LADDER_STEPS, progress=False)
    rungs = report["rungs"]
    assert set(rungs) == {"lookup", "dictation", "audio"}
    for name, row in rungs.items():  # every rung far above the guess: no link fails
        assert row["first_token"] >= report["first_token_guess"] + 0.5, (name, render_ladder(report))
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before  # frozen for the lookup only


def test_the_ladder_shows_a_deaf_audio_path(trained):
    from echat.eval.ladder import ladder_report, render_ladder

    model, clips, _ = trained
    silent = [dataclasses.replace(c, audio=np.zeros_like(c.audio)) for c in clips]
    report = ladder_report(model, silent, steps=LADDER_STEPS, progress=False)
    rungs = report["rungs"]  # the same clips without their audio: only the audio rung drops to the guess
    assert rungs["audio"]["first_token"] <= report["first_token_guess"] + 0.2, render_ladder(report)
    assert rungs["dictation"]["first_token"] >= report["first_token_guess"] + 0.5, render_ladder(report)


def test_only_p_reading_is_reported_beside_its_guess(trained):
    model, clips, _ = trained
    row = hearing_report(model, {"train": clips}, greedy=False)["sets"]["train"]
    for field in ("gender", "age", "emotion", "event"):
        for key in (f"only_p_{field}", f"only_p_{field}_guess", f"dictation_only_p_{field}"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
    answers = [as_task(c, "<EMOTION>").record.txt for c in clips]
    assert all(a == c.record.extra["q_emotion"] for a, c in zip(answers, clips, strict=True))


def test_tag_rows_show_a_collapsed_field(trained):
    from echat.eval.hearing import tag_rows

    model, _, _ = trained
    rows = tag_rows(model)
    assert set(rows) >= {"gender_cosine", "age_cosine", "emotion_cosine", "event_cosine", "norm_ratio"}
    table = model.llm.get_input_embeddings().weight
    one, other = model.cue_token_ids()["gender"].tolist()
    saved = table.detach().clone()
    try:
        with torch.no_grad():
            table[other] = 2 * table[one]  # one direction for both gender tags: the field collapsed
        assert tag_rows(model)["gender_cosine"] > 0.999
    finally:
        with torch.no_grad():
            table.copy_(saved)
    assert tag_rows(model) == rows


def test_ladder_command_writes_its_report(trained, smoke_corpus, capsys):
    from echat.cli import main

    _, _, out = trained
    argv = ["eval", "--stages", "ladder", "--run", str(out / "understanding"), "--data", str(smoke_corpus),
            "--limit", "4"]
    assert main(argv) == 0
    assert "ceiling ladder" in capsys.readouterr().out
    saved = json.loads((out / "understanding" / "eval" / "ladder.json").read_text())
    assert saved["clips"] == 4 and set(saved["rungs"]) == {"lookup", "dictation", "audio"}
    assert saved["rungs"]["lookup"]["first_token"] >= saved["first_token_guess"]


TAG_STEPS = (400, 300)  # stage 0 with the tag tasks: ASR dictation, then ASR + ASR+P + only-P


def tag_reader(smoke_corpus, out, tagged: float) -> dict:
    """Stage 0 with the tag tasks on 16 clips (every cue label drawn at random, ``tagged``: the share of
    ASR transcripts with random tags written into them), run in ``out``; returns the hearing row of the
    16 clips (dictation only-P: does the LLM read the tag frames it is shown?)."""
    from echat.text_tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = EChat(hearing_config(), load_tokenizer(smoke_corpus / "text_tokenizer"))
    clips = distinct_clips(load_split(smoke_corpus, "train", model.config))[:CLIPS]
    samples = [as_task(c, t) for c in clips for t in ("<TRANSCRIBE>", ASRP_TASK, *ONLY_P_FIELD_TASKS.values())]
    mixed = (("asr", 1.0), ("asrp", 1.0), ("only_p", 2.0))
    recipe = StageRecipe("text", (Phase((("asr", 1.0),), TAG_STEPS[0]), Phase(mixed, TAG_STEPS[1])), _lr(llm=1.0),
                         lr=3e-3, warmup_steps=10, epoch_size=2 * CLIPS, dictation=True, shuffled_dictation=0.3,
                         random_tags=1.0, tagged_dictation=tagged)
    Trainer(model, recipe, samples, out, eval_every=0, save_every=0, progress=False).fit()
    return hearing_report(model.eval(), {"train": clips}, greedy=False)["sets"]["train"]


def test_the_llm_reads_every_cue_tag_it_is_shown(smoke_corpus, tmp_path):
    row = tag_reader(smoke_corpus, tmp_path, 0.5)
    reading = {field: row[f"dictation_only_p_{field}"] for field in ONLY_P_FIELD_TASKS}
    assert sum(reading.values()) / len(reading) >= 0.8, reading  # labels drawn at random: this is reading
    assert min(reading.values()) >= 0.6, reading  # every field, emotion and event included
