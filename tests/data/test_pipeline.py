"""Samples -> flat sequences -> homogeneous dynamic batches, on the real-speech fixtures."""

import dataclasses
import random

import pytest
import torch

from echat.config import preset
from echat.data.pipeline import DataPipeline, SampleEncoder, SkipSummary, dynamic_batches, load_samples
from echat.data.schema import read_manifest
from echat.tokens import IGNORE_INDEX, IM_END, OutputType, Stream
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def config():
    return preset("smoke")


@pytest.fixture(scope="module")
def records():
    return read_manifest(FIXTURES / "sample.jsonl")


@pytest.fixture(scope="module")
def samples(records, config):
    skipped = SkipSummary()
    loaded = list(load_samples(records, FIXTURES, config, skipped))
    assert skipped.total == 0, skipped.render()
    return loaded


def _by_task(samples, kind):
    return next(s for s in samples if s.record.output_type is kind)





def test_every_fixture_task_encodes_with_audio_at_the_adapter_rate(samples, config, mini_tok):
    encoder = SampleEncoder(config, mini_tok, think="tag")
    kinds = set()
    for sample in samples:
        ex = encoder.encode(sample, random.Random(0))
        kinds.add(ex.kind)
        n_audio = int((ex.stream == Stream.AUDIO).sum())
        assert n_audio == sum(config.llm_positions(f.shape[0]) for f in ex.feats)
        assert len(ex.ids) == len(ex.stream) == len(ex.labels)
        assert (ex.labels[ex.stream == Stream.AUDIO] == IGNORE_INDEX).all()
        assert (ex.labels != IGNORE_INDEX).any(), sample.record.key
    assert {OutputType.TEXT, OutputType.S2T_CHAT, OutputType.S2S_THINK, OutputType.S2S, OutputType.TTS,
            OutputType.T2T, OutputType.S2S_HISTORY} <= kinds


def test_text_lm_targets_every_text_position_of_text_only_samples_alone(samples, config, mini_tok):
    plain, lm = SampleEncoder(config, mini_tok), SampleEncoder(config, mini_tok, text_lm=True)
    t2t = _by_task(samples, OutputType.T2T)
    ex, whole = plain.encode(t2t, random.Random(0)), lm.encode(t2t, random.Random(0))
    assert int((whole.labels != IGNORE_INDEX).sum()) > int((ex.labels != IGNORE_INDEX).sum())
    assert (whole.labels[whole.stream == Stream.TEXT] != IGNORE_INDEX).all()  # plain language modelling
    heard = _by_task(samples, OutputType.TEXT)  # with audio: the answer stays the only target
    assert torch.equal(lm.encode(heard, random.Random(0)).labels, plain.encode(heard, random.Random(0)).labels)


def test_audio_clips_are_framed_by_the_speech_bos_and_eos(samples, config, mini_tok):
    encoder = SampleEncoder(config, mini_tok)
    ex = encoder.encode(_by_task(samples, OutputType.TEXT), random.Random(0))
    audio = (ex.stream == Stream.AUDIO).nonzero().flatten()
    first, last = int(audio[0]), int(audio[-1])
    assert ex.stream[first - 1] == Stream.SPEECH and ex.ids[first - 1] == config.speech.audio_bos_id
    assert ex.stream[last + 1] == Stream.SPEECH and ex.ids[last + 1] == config.speech.audio_eos_id


@pytest.mark.parametrize("think", ["none", "tag", "language"])
def test_bug1_only_p_labels_keep_their_tags_in_every_think_mode(records, config, mini_tok, think):
    record = next(r for r in records if r.task == "<AGE> <GENDER>")
    sample = next(s for s in load_samples([record], FIXTURES, config, SkipSummary()))
    ex = SampleEncoder(config, mini_tok, think=think).encode(sample, random.Random(0))
    target = ex.ids[ex.labels != IGNORE_INDEX].tolist()
    assert mini_tok.decode(target) == record.txt + IM_END


def test_speech_targets_sit_after_the_text_vocab_framed_by_boundaries(samples, config, mini_tok):
    sample = _by_task(samples, OutputType.S2S)
    ex = SampleEncoder(config, mini_tok).encode(sample, random.Random(0))
    speech_labels = ex.labels[(ex.stream == Stream.SPEECH) & (ex.labels != IGNORE_INDEX)] - config.llm.vocab_size
    tokens = sample.record.extra["speech_token"]
    assert speech_labels.tolist() == [config.speech.boundary_id, *tokens, config.speech.boundary_id]


def test_tts_predicts_speech_only(samples, config, mini_tok):
    ex = SampleEncoder(config, mini_tok).encode(_by_task(samples, OutputType.TTS), random.Random(0))
    assert (ex.labels[ex.labels != IGNORE_INDEX] >= config.llm.vocab_size).all()
    assert not (ex.stream == Stream.AUDIO).any()


def test_unknown_tag_pieces_are_kept_as_input_but_never_targets(samples, config, mini_tok):
    class AlwaysUnknown(random.Random):
        def random(self):
            return 0.0

    sample = _by_task(samples, OutputType.S2S_THINK)
    stripped = dataclasses.replace(sample.record, extra={k: v for k, v in sample.record.extra.items()
                                                         if k not in ("age", "caption")})
    ex = SampleEncoder(config, mini_tok, think="tag").encode(dataclasses.replace(sample, record=stripped),
                                                              AlwaysUnknown())
    unknown = mini_tok.convert_tokens_to_ids("&&")
    assert (ex.ids == unknown).sum() == 2
    assert (ex.labels[ex.ids == unknown] == IGNORE_INDEX).all()


def test_history_turns_are_context_only(samples, config, mini_tok):
    ex = SampleEncoder(config, mini_tok).encode(_by_task(samples, OutputType.S2S_HISTORY), random.Random(0))
    assert len(ex.feats) == 2
    first_target = int((ex.labels != IGNORE_INDEX).nonzero()[0])
    audio = (ex.stream == Stream.AUDIO).nonzero().flatten()
    assert int(audio[-1]) < first_target


def test_dynamic_batches_are_homogeneous_and_keep_every_sample(samples, config, mini_tok):
    pipe = DataPipeline(config, mini_tok, think="tag")
    examples = list(pipe.examples(samples * 3))
    batches = list(dynamic_batches(examples, max_tokens=600, max_frames=10_000, pad_id=0))
    keys = sorted(k for b in batches for k in b.keys)
    assert keys == sorted(e.key for e in examples)
    for batch in batches:
        assert batch.ids.shape == batch.labels.shape == batch.attention_mask.shape
        assert batch.ids.shape[0] == 1 or batch.ids.numel() <= 600
        assert batch.feats.shape[0] == len(batch.feat_lengths)
        kinds = {ex.kind for ex in examples if ex.key in batch.keys}
        assert kinds == {batch.kind}


def test_the_same_seed_gives_the_same_batches_and_another_epoch_another_order(samples, config, mini_tok):
    def run(epoch):
        pipe = DataPipeline(config, mini_tok, think="tag")
        return [(b.keys, b.ids, b.feats) for b in pipe.batches(samples * 2, epoch=epoch)]

    first, again, other = run(0), run(0), run(1)
    assert [k for k, _, _ in first] == [k for k, _, _ in again]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert [k for k, _, _ in first] != [k for k, _, _ in other] or any(
        not torch.equal(a[2], b[2]) for a, b in zip(first, other))


def test_spec_augment_masks_training_features_only(samples, config, mini_tok):
    sample = _by_task(samples, OutputType.TEXT)
    encoder = SampleEncoder(config, mini_tok)
    plain = encoder.encode(sample, random.Random(0)).feats[0]
    masked = encoder.encode(sample, random.Random(0), torch.Generator().manual_seed(1)).feats[0]
    assert plain.shape == masked.shape and not torch.equal(plain, masked)
    assert (masked == 0).sum() > (plain == 0).sum()


def test_bad_audio_and_overlong_samples_are_skipped_counted_and_nothing_else_is_lost(records, config, mini_tok,
                                                                                  tmp_path):
    broken = dataclasses.replace(records[0], key="broken", wav="wav/does_not_exist.wav")
    skipped = SkipSummary()
    loaded = list(load_samples([broken, *records], FIXTURES, config, skipped))
    assert len(loaded) == len(records) and skipped.counts["audio"] == 1
    assert "broken" in skipped.render() and "does_not_exist.wav" in skipped.render()

    short = preset("smoke")
    short.train.max_seq_len = 120
    pipe = DataPipeline(short, mini_tok)
    kept = list(pipe.examples(loaded))
    assert pipe.skipped.counts["too long"] >= 1
    assert len(kept) + pipe.skipped.total == len(loaded)


def test_training_refuses_records_without_a_task_unless_a_default_is_given(smoke_corpus, tmp_path):
    """A record without a task names its line; ``--default-task`` (``default_task``) reads it as that task."""
    import json

    from echat.data.pipeline import load_split
    from echat.data.schema import ManifestError

    lines = (smoke_corpus / "train.jsonl").read_text().splitlines()[:6]
    records = [json.loads(line) for line in lines]
    for record in records:
        record["wav"] = str(smoke_corpus / record["wav"]) if record.get("wav") else record.get("wav")
    del records[2]["task"]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = preset("smoke")
    with pytest.raises(ManifestError, match=rf"train.jsonl:3: {records[2]['key']}: task: missing"):
        load_split(tmp_path, "train", config)
    samples = load_split(tmp_path, "train", config, default_task="<TRANSCRIBE>")
    assert len(samples) == 6 and samples[2].record.task == "<TRANSCRIBE>"
