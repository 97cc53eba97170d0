"""The training forward: embeddings by stream, loss only where targets are, padding-invariant."""

import dataclasses
import math

import pytest
import torch

from echat.config import preset
from echat.data.pipeline import collate
from echat.models.echat import EChat
from echat.tokens import IGNORE_INDEX, OutputType, Stream


@pytest.mark.parametrize("kind", [OutputType.TEXT, OutputType.S2S_THINK, OutputType.TTS, OutputType.T2T,
                                  OutputType.S2S_HISTORY, OutputType.S2T_CHAT])
def test_every_output_type_trains(smoke_model, batch_of, kind):
    batch = batch_of(kind)
    out = smoke_model.train()(batch)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert smoke_model.adapter.proj.weight.grad is not None or not kind.speech_in
    n_targets = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    assert out.n_text + out.n_speech == n_targets
    assert (out.n_speech > 0) == kind.speech_out


def test_random_model_loss_is_near_log_of_the_class_count(batch_of, mini_tok):
    torch.manual_seed(0)
    config = preset("smoke")
    model = EChat(config, mini_tok)
    out = model(batch_of(OutputType.T2T))
    assert abs(float(out.loss) - math.log(config.llm.vocab_size)) < 1.0


def test_audio_positions_are_filled_by_adapter_frames(smoke_model, batch_of):
    batch = batch_of(OutputType.TEXT)
    embeds = smoke_model.embed(batch.ids, batch.stream, batch.feats, batch.feat_lengths)
    frames = smoke_model.encode_audio(batch.feats, batch.feat_lengths)
    assert torch.equal(embeds[batch.stream == Stream.AUDIO], frames)
    text = smoke_model.llm.get_input_embeddings()(batch.ids)
    assert torch.equal(embeds[batch.stream == Stream.TEXT], text[batch.stream == Stream.TEXT])
    speech = smoke_model.speech_embedding(torch.where(batch.stream == Stream.SPEECH, batch.ids, 0))
    assert torch.equal(embeds[batch.stream == Stream.SPEECH], speech[batch.stream == Stream.SPEECH])


def test_a_layout_and_audio_that_disagree_is_a_clear_error(smoke_model, batch_of):
    batch = batch_of(OutputType.TEXT)
    broken = batch.stream.clone()
    broken[0, 0] = Stream.AUDIO
    with pytest.raises(ValueError, match="audio positions"):
        smoke_model.embed(batch.ids, broken, batch.feats, batch.feat_lengths)


def test_right_padding_and_batch_partners_do_not_change_a_row_loss(smoke_model, batch_of):
    batch = batch_of(OutputType.S2S_THINK)
    alone = smoke_model(batch)
    wider = dataclasses.replace(
        batch, ids=torch.nn.functional.pad(batch.ids, (0, 7)), stream=torch.nn.functional.pad(batch.stream, (0, 7)),
        labels=torch.nn.functional.pad(batch.labels, (0, 7), value=IGNORE_INDEX),
        attention_mask=torch.nn.functional.pad(batch.attention_mask, (0, 7)))
    padded = smoke_model(wider)
    assert torch.allclose(alone.loss, padded.loss, atol=1e-5)


def test_speech_loss_weight_scales_only_speech_terms(batch_of, mini_tok):
    batch = batch_of(OutputType.S2S)
    torch.manual_seed(0)
    model = EChat(preset("smoke"), mini_tok).eval()
    base = model(batch)
    model.config.train.speech_loss_weight = 0.0
    text_only = model(batch)
    n = base.n_text + base.n_speech
    assert torch.allclose(text_only.loss, base.text_loss * base.n_text / n, atol=1e-5)
    assert torch.allclose(base.loss, (base.text_loss * base.n_text + base.speech_loss * base.n_speech) / n,
                          atol=1e-5)


def test_two_rows_in_one_batch_give_the_same_losses_as_separately(smoke_model, fixture_samples, mini_tok):
    import random

    from echat.data.pipeline import SampleEncoder

    encoder = SampleEncoder(preset("smoke"), mini_tok)
    text_rows = [encoder.encode(s, random.Random(0)) for s in fixture_samples
                 if s.record.output_type is OutputType.TEXT]
    assert len(text_rows) >= 2
    together = smoke_model(collate(text_rows[:2], encoder.ids.pad))
    separate = [smoke_model(collate([row], encoder.ids.pad)) for row in text_rows[:2]]
    total = sum(float(o.loss) * (o.n_text + o.n_speech) for o in separate)
    count = sum(o.n_text + o.n_speech for o in separate)
    assert abs(float(together.loss) - total / count) < 1e-4


def test_building_a_model_flushes_subnormal_floats():
    """Subnormal arithmetic made one CPU generate 100x slower: building an EChat turns flushing on."""
    import subprocess
    import sys

    code = ("import torch\n"
            "tiny = torch.tensor([1e-39])\n"
            "assert (tiny * 1.0).item() != 0.0\n"
            "from echat.config import preset\n"
            "from echat.models.echat import EChat\n"
            "EChat(preset('smoke'))\n"
            "assert (tiny * 1.0).item() == 0.0\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
