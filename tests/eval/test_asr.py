"""The offline Whisper base recognizer: the weight mapping, bad waves, and real speech."""

import time

import numpy as np
import pytest

from echat.eval.asr import transcribe, whisper_base
from echat.eval.metrics import per_utterance_wer, wer
from echat.eval.whisper_ct2 import read_ct2_model, whisper_base_files

SENTENCES = [
    "I'm so sorry to hear that you had such a difficult day.",
    "Please take a deep breath and try to relax.",
    "Thank you for sharing this with me.",
]


def test_bad_waves_are_rejected_before_loading_anything():
    with pytest.raises(ValueError, match="longer than Whisper's 30 s window"):
        transcribe([np.zeros(31 * 16_000, np.float32)])
    with pytest.raises(ValueError, match="mono 1-D"):
        transcribe([np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        transcribe([np.full(100, np.nan, np.float32)])
    with pytest.raises(ValueError, match="batch_size"):
        transcribe([np.zeros(100, np.float32)], batch_size=0)
    assert transcribe([]) == []


# ----------------------------------------------------------------------------------------------
# The real model
# ----------------------------------------------------------------------------------------------


def test_weights_are_mapped_split_and_tied():
    model, processor = whisper_base()
    assert whisper_base() is whisper_base()  # cached per process
    variables = read_ct2_model(whisper_base_files().model_parts)
    qkv = variables["encoder/layer_3/self_attention/linear_0/weight"].astype(np.float32)
    attn = model.model.encoder.layers[3].self_attn
    for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        np.testing.assert_array_equal(proj.weight.detach().numpy(), qkv[i * 512:(i + 1) * 512])
    assert attn.k_proj.bias is None
    kv = variables["decoder/layer_5/attention/linear_1/bias"].astype(np.float32)
    np.testing.assert_array_equal(model.model.decoder.layers[5].encoder_attn.v_proj.bias.detach().numpy(), kv[512:])
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.config.num_mel_bins == 80 and model.config.vocab_size == 51865
    assert processor.tokenizer.convert_tokens_to_ids("<|en|>") == 50259
    assert model.generation_config.lang_to_id["<|en|>"] == 50259


@pytest.fixture(scope="module")
def espeak_transcripts():
    from echat.data.mini.espeak import Voice, synthesize

    waves = [synthesize(text, Voice("en-us+m3")) for text in SENTENCES]
    whisper_base()  # load outside the timing
    start = time.perf_counter()
    # batch_size=2 with waves of different lengths: two batches, reordered by length inside transcribe
    hyps = transcribe(waves, batch_size=2)
    return hyps, time.perf_counter() - start


def test_transcribes_real_espeak_speech(espeak_transcripts):
    hyps, seconds = espeak_transcripts
    assert len(hyps) == len(SENTENCES) and all(isinstance(h, str) for h in hyps)
    error = wer(SENTENCES, hyps)
    assert error < 0.25, (error, hyps)
    assert max(per_utterance_wer(SENTENCES, hyps)) < 0.5, hyps  # the output order matches the input order


def test_transcription_is_deterministic_and_handles_empty_and_silent_waves(espeak_transcripts):
    hyps, _ = espeak_transcripts
    from echat.data.mini.espeak import Voice, synthesize

    empty = np.zeros(0, np.float32)
    again = transcribe([empty, synthesize(SENTENCES[2], Voice("en-us+m3")), np.zeros(16_000, np.float32)],
                       progress=False)
    assert again[0] == ""  # zero samples: not decoded
    assert again[1] == hyps[2]  # greedy decoding, same batch composition or not
    assert len(again[2].split()) <= 3  # Whisper hallucinates a word on silence ("you"), never a loop
    assert transcribe([empty, empty]) == ["", ""]
