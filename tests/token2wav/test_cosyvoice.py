"""CosyVoiceToken2Wav: a smoke-size CosyVoice folder written here (flow.pt, hift.pt in the released naming, tiny ONNX
graphs with the ranks of speech_tokenizer_v1.onnx and campplus.onnx, prompt.wav) loads and speaks; the protocol,
skipped and refused ids, missing files, the prompt, streaming, and the full size on the meta device."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper

from echat.audio import load_audio
from echat.token2wav import CosyVoiceToken2Wav, Token2Wav
from echat.token2wav.cosyvoice import StreamOptions, check_dtype, default_prompt_wav
from echat.token2wav.cosyvoice_prompt import CosyVoiceFileError, Prompt, speaker_features
from echat.token2wav.flow import CosyVoiceFlow, FlowConfig, mel_frames
from echat.token2wav.hift import HiFTConfig, HiFTVocoder, legacy_state_dict

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "hello.wav"  # real speech, 16 kHz
HOP = 256
SAMPLES_PER_TOKEN = 22050 / 25
SMOKE_VOCAB = FlowConfig.smoke().vocab_size
OPSET = 18  # ReduceMean takes its axes as an input from opset 18


def tokenizer_graph(vocab: int) -> onnx.ModelProto:
    """feats (1, 128, T) float32, feats_length (1,) int32 -> indices (1, T // 4) int64 in [0, vocab): 25 Hz ids."""
    nodes = [
        helper.make_node("ReduceMean", ["feats", "axis1"], ["band"], keepdims=1),  # (1, 1, T)
        helper.make_node("AveragePool", ["band"], ["pooled"], kernel_shape=[4], strides=[4]),  # (1, 1, T // 4)
        helper.make_node("Squeeze", ["pooled", "axis1"], ["level"]),  # (1, T // 4)
        helper.make_node("Mul", ["level", "scale"], ["scaled"]),
        helper.make_node("Abs", ["scaled"], ["magnitude"]),
        helper.make_node("Cast", ["magnitude"], ["whole"], to=TensorProto.INT64),
        helper.make_node("Mod", ["whole", "vocab"], ["indices"]),
    ]
    constants = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("scale", TensorProto.FLOAT, [], [1000.0]),
                 helper.make_tensor("vocab", TensorProto.INT64, [], [vocab])]
    graph = helper.make_graph(
        nodes, "speech_tokenizer", [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
                                    helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "T4"])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def campplus_graph() -> onnx.ModelProto:
    """input (1, T, 80) float32 -> output (1, 192): the time mean through a fixed random projection."""
    projection = np.random.default_rng(0).standard_normal((80, 192)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["input", "axis1"], ["mean"], keepdims=0),  # (1, 80)
             helper.make_node("MatMul", ["mean", "projection"], ["output"])]  # (1, 192)
    constants = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("projection", TensorProto.FLOAT, [80, 192], projection.ravel())]
    graph = helper.make_graph(nodes, "campplus", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, "T", 80])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def write_smoke_folder(folder: Path, seed: int = 0) -> Path:
    """A CosyVoice folder of the smoke variant, in the released file names and key naming."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(CosyVoiceFlow(FlowConfig.smoke()).state_dict(), folder / "flow.pt")
    torch.save(legacy_state_dict(HiFTVocoder(HiFTConfig.smoke())), folder / "hift.pt")
    onnx.save(tokenizer_graph(SMOKE_VOCAB), folder / "speech_tokenizer_v1.onnx")
    onnx.save(campplus_graph(), folder / "campplus.onnx")
    shutil.copy(SAMPLE, folder / "prompt.wav")
    return folder


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    return write_smoke_folder(tmp_path_factory.mktemp("cosyvoice") / "CosyVoice-300M-25Hz")


@pytest.fixture(scope="module")
def smoke_t2w(smoke_dir) -> CosyVoiceToken2Wav:
    return CosyVoiceToken2Wav.from_dir(smoke_dir, config="smoke")


def ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, SMOKE_VOCAB, n)


@pytest.mark.parametrize("n_tokens", [1, 7, 45, 100])  # 45 and 100: the flow's head / middle / tail regulator
def test_folder_loads_and_speaks_tokens_times_882_samples(smoke_t2w, n_tokens):
    wave = smoke_t2w(ids(n_tokens))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - n_tokens * SAMPLES_PER_TOKEN) <= HOP
    assert len(wave) == mel_frames(n_tokens) * HOP
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 0.99 and np.abs(wave).max() > 0


def test_it_is_a_token2wav_at_22050_hz(smoke_t2w):
    assert isinstance(smoke_t2w, Token2Wav) and smoke_t2w.sample_rate == 22050


def test_loaded_weights_are_the_files_and_the_same_tokens_give_the_same_wave(smoke_t2w, smoke_dir):
    saved = torch.load(smoke_dir / "flow.pt", weights_only=True)
    for key, value in smoke_t2w.flow.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    assert str(smoke_t2w.hift.stft_window.device) == "cpu" and smoke_t2w.hift.stft_window.sum() > 0
    np.testing.assert_array_equal(smoke_t2w(ids(20)), smoke_t2w(ids(20)))


def test_default_prompt_is_made_from_prompt_wav(smoke_t2w, smoke_dir):
    prompt = smoke_t2w.prompt
    wave_16k = load_audio(SAMPLE)
    wave_22k = load_audio(SAMPLE, sample_rate=22050)
    assert prompt.mel.shape == (1, len(wave_22k) // HOP, 80)
    assert prompt.tokens.shape[0] == 1 and prompt.tokens.dtype == torch.int64
    assert abs(prompt.tokens.shape[1] - len(wave_16k) / 16000 * 25) <= 1  # the tokenizer graph's 25 Hz
    assert prompt.speaker.shape == (1, 192) and prompt.speaker.abs().sum() > 0
    again = smoke_t2w.prompt_from_wav(wave_16k, 16000)
    torch.testing.assert_close(again.tokens, prompt.tokens)


def test_the_prompt_conditions_the_output(smoke_t2w):
    tokens = ids(12)
    own = smoke_t2w(tokens)
    other = smoke_t2w(tokens, speaker=torch.randn(1, 192, generator=torch.Generator().manual_seed(5)))
    assert own.shape == other.shape and not np.allclose(own, other)


def test_prompt_wav_argument_and_the_folder_beside(smoke_dir, tmp_path):
    assert default_prompt_wav(smoke_dir) == smoke_dir / "prompt.wav"
    release = tmp_path / "OSUM-EChat"
    inner = write_smoke_folder(release / "CosyVoice-300M-25Hz")
    (inner / "prompt.wav").rename(release / "prompt.wav")  # echat download's layout: the prompt beside the folder
    assert default_prompt_wav(inner) == release / "prompt.wav"
    short = tmp_path / "short.wav"
    sf.write(short, load_audio(SAMPLE)[:8000], 16000)
    t2w = CosyVoiceToken2Wav.from_dir(inner, config="smoke", prompt_wav=short)
    assert t2w.prompt.mel.shape[1] == int(0.5 * 22050) // HOP


def test_ids_beyond_the_vocabulary_are_skipped_and_negative_ids_refused(smoke_t2w):
    tokens = ids(10)
    with_boundaries = [4096, *tokens[:5], SMOKE_VOCAB, 4097, *tokens[5:], 4096]
    np.testing.assert_array_equal(smoke_t2w(with_boundaries), smoke_t2w(tokens))
    assert smoke_t2w([4096, 4096]).shape == (0,)
    with pytest.raises(ValueError, match="non-negative, got -3"):
        smoke_t2w([1, -3, 2])


@pytest.mark.parametrize("name", ["flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v1.onnx"])
def test_a_missing_file_is_named_with_its_folder(smoke_dir, tmp_path, name):
    folder = tmp_path / "partial"
    shutil.copytree(smoke_dir, folder)
    (folder / name).unlink()
    with pytest.raises(CosyVoiceFileError, match=rf"{name} not found in {folder}.*echat download cosyvoice"):
        CosyVoiceToken2Wav.from_dir(folder, config="smoke")


def test_without_a_prompt_wav_calls_need_a_voice(smoke_dir, tmp_path):
    folder = tmp_path / "no_prompt" / "CosyVoice-300M-25Hz"
    shutil.copytree(smoke_dir, folder)
    (folder / "prompt.wav").unlink()
    t2w = CosyVoiceToken2Wav.from_dir(folder, config="smoke")
    with pytest.raises(ValueError, match="no prompt voice: pass prompt=.*no prompt.wav in or beside"):
        t2w(ids(5))
    assert len(t2w(ids(5), speaker=torch.randn(1, 192))) == mel_frames(5) * HOP


def test_half_precision_is_for_cuda_only(smoke_dir):
    with pytest.raises(ValueError, match="dtype torch.bfloat16 is not supported on cpu"):
        CosyVoiceToken2Wav.from_dir(smoke_dir, config="smoke", dtype=torch.bfloat16)
    assert check_dtype(torch.device("cuda"), torch.bfloat16) == torch.bfloat16
    assert check_dtype(torch.device("cpu"), None) == torch.float32


def test_a_shape_mismatch_fails_the_strict_load(smoke_dir):
    with pytest.raises(RuntimeError, match="size mismatch"):
        CosyVoiceToken2Wav.from_dir(smoke_dir)  # the full-size model cannot take the smoke files


def test_speaker_features_are_a_mean_normalised_kaldi_fbank():
    wave = load_audio(SAMPLE)
    feats = speaker_features(wave)
    assert feats.shape == (1, 1 + (len(wave) - 400) // 160, 80) and feats.dtype == np.float32
    np.testing.assert_allclose(feats.mean(axis=1), 0, atol=1e-4)
    assert feats.std() > 0.5  # a log-power spectrum of speech, not silence


def test_prompt_shapes_are_checked():
    with pytest.raises(ValueError, match=r"Prompt speaker must be \(1, 192\)"):
        Prompt.speaker_only(torch.zeros(80))
    with pytest.raises(ValueError, match=r"Prompt mel must be \(1, Tm, 80\)"):
        Prompt(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, 64), torch.zeros(1, 192))


def test_random_smoke_model_needs_no_files():
    t2w = CosyVoiceToken2Wav.random("smoke", seed=3)
    assert len(t2w(ids(9))) == mel_frames(9) * HOP
    with pytest.raises(ValueError, match="no prompt encoder"):
        t2w.prompt_from_wav(np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="config must be one of"):
        CosyVoiceToken2Wav.random("large")


def test_full_size_builds_on_the_meta_device_without_memory():
    t2w = CosyVoiceToken2Wav.random("full", device="meta")
    assert sum(p.numel() for p in t2w.flow.parameters()) == 104_874_752
    assert sum(p.numel() for p in t2w.hift.state_dict().values()) == 20_460_591
    assert all(p.is_meta for p in t2w.flow.parameters()) and t2w.vocab_size == 4096
    assert t2w.mel(np.arange(30), t2w.voice()).shape == (1, 80, mel_frames(30))  # shapes only
    with pytest.raises(ValueError, match="meta device holds shapes only"):
        t2w([1, 2, 3])


def chunks_of(tokens: np.ndarray, size: int, seen: list[int]):
    """Yield ``tokens`` in chunks, recording in ``seen`` how many have been handed out."""
    for start in range(0, len(tokens), size):
        seen.append(start + size)
        yield tokens[start : start + size]


@pytest.mark.parametrize("n_tokens", [13, 60, 101])
def test_stream_starts_early_and_adds_up_to_the_one_shot_length(smoke_t2w, n_tokens):
    tokens, seen, heard = ids(n_tokens), [], []
    pieces = []
    for piece in smoke_t2w.stream(chunks_of(tokens, 6, seen), options=StreamOptions(chunk_tokens=12)):
        pieces.append(piece)
        heard.append(seen[-1])
    assert sum(map(len, pieces)) == len(smoke_t2w(tokens)) == mel_frames(n_tokens) * HOP
    if n_tokens > 24:
        assert len(pieces) > 2 and heard[0] < n_tokens  # the first audio came before the last token
    assert all(p.dtype == np.float32 for p in pieces)


def test_one_stream_run_is_the_one_shot_wave(smoke_t2w):
    tokens = ids(40)
    pieces = list(smoke_t2w.stream([tokens[:20], tokens[20:]], options=StreamOptions(chunk_tokens=100)))
    assert len(pieces) == 1
    np.testing.assert_array_equal(pieces[0], smoke_t2w(tokens))


def test_the_streamer_pushed_by_hand_gives_what_stream_gives(smoke_t2w):
    tokens, options = ids(50), StreamOptions(chunk_tokens=12)
    streamer = smoke_t2w.streamer(options=options)
    pushed = [streamer.push(tokens[at:at + 7]) for at in range(0, 50, 7)] + [streamer.finish()]
    streamed = list(smoke_t2w.stream([tokens[at:at + 7] for at in range(0, 50, 7)], options=options))
    np.testing.assert_array_equal(np.concatenate(pushed), np.concatenate(streamed))
    assert sum(p.size > 0 for p in pushed) == len(streamed)


def test_stream_skips_boundaries_and_flushes_its_tail(smoke_t2w):
    tokens = ids(30)
    options = StreamOptions(chunk_tokens=10, lookahead_frames=0)
    pieces = list(smoke_t2w.stream([tokens[:10], tokens[10:30], [4096]], options=options))
    assert sum(map(len, pieces)) == mel_frames(30) * HOP
    assert list(smoke_t2w.stream([[4096]])) == []
    with pytest.raises(ValueError, match="context_frames .1. must cover fade_frames .2."):
        StreamOptions(context_frames=1, fade_frames=2)


def test_synthesize_takes_the_call_apart(smoke_t2w):
    tokens = ids(15)
    synthesis = smoke_t2w.synthesize(tokens)
    frames = mel_frames(15)
    assert len(synthesis.steps) == FlowConfig.smoke().n_steps
    assert all(step.shape == (80, frames) for step in synthesis.steps)
    assert synthesis.f0.shape == (frames,) and synthesis.source.shape == synthesis.wave.shape == (frames * HOP,)
    np.testing.assert_array_equal(synthesis.wave, smoke_t2w(tokens))
    with pytest.raises(ValueError, match="at least one speech id"):
        smoke_t2w.synthesize([4096])
