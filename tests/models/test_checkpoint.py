"""Our checkpoints and the reference format: round trips, the golden layout, and every bad file."""

import json
import pathlib
import subprocess
import sys

import pytest
import torch

from echat.config import GenerationOptions, preset
from echat.models.checkpoint import (
    WEIGHTS,
    CheckpointError,
    read_full_weights,
    save_checkpoint,
    save_reference_checkpoint,
)
from echat.models.echat import EChat, reference_layout
from echat.tokens import OutputType

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "osum_echat_state_dict.tsv"
GREEDY = GenerationOptions(do_sample=False, max_new_tokens=20, max_speech_tokens=30)


def _outputs(model, batch, wave):
    loss = model(batch).loss
    result = model.generate(wave, task="<S2TCHAT> <TEXT2TOKEN>", options=GREEDY)
    return loss, result.text_ids, result.speech_tokens


def test_layout_command_prints_the_golden_layout_line_for_line():
    out = subprocess.run([sys.executable, "-m", "echat", "layout", "--preset", "osum-echat"],
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.splitlines() == GOLDEN.read_text().splitlines()
    assert len(out.stdout.splitlines()) == 888


def test_smoke_layout_has_the_same_keys_as_the_full_one():
    full = [line.split("\t")[0] for line in GOLDEN.read_text().splitlines()]
    smoke = [line.split("\t")[0] for line in reference_layout("smoke")]
    strip = lambda keys: sorted({k.split(".")[0] for k in keys})  # noqa: E731
    assert strip(full) == strip(smoke)


def test_reference_export_and_import_give_identical_outputs(smoke_model, batch_of, fixture_samples, tmp_path):
    batch = batch_of(OutputType.S2S)
    wave = fixture_samples[0].audio
    before = _outputs(smoke_model, batch, wave)
    path = save_reference_checkpoint(smoke_model, tmp_path / "model.pt", dtype=torch.float32)
    loaded = EChat.from_reference_checkpoint(path, tokenizer=smoke_model.tokenizer, config=smoke_model.config).eval()
    after = _outputs(loaded, batch, wave)
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]
    keys = list(torch.load(path, weights_only=True))
    assert "speech_token_emded.weight" in keys and "ln_speech.weight" in keys and "embed_tokens.weight" in keys


def test_a_token_pack_model_round_trips_through_the_reference_format(smoke_model, batch_of, tmp_path):
    config = preset("smoke")
    config.adapter.output = "token_pack"
    config.adapter.cue_frames = config.adapter.bigram_frames = True  # the mini preset's adapter
    torch.manual_seed(0)
    model = EChat(config, smoke_model.tokenizer).eval()
    batch = batch_of(OutputType.S2S)
    path = save_reference_checkpoint(model, tmp_path / "model.pt", dtype=torch.float32)
    saved = set(torch.load(path, weights_only=True))
    assert {"speech_mix_blank", "speech_mix_log_scale", "speech_cue_trunk.0.weight",
            "speech_cue_heads.emotion.weight"} <= saved
    loaded = EChat.from_reference_checkpoint(path, tokenizer=model.tokenizer, config=config).eval()
    assert torch.equal(model(batch).loss, loaded(batch).loss)


def test_reference_export_defaults_to_bf16_and_keeps_aliases_shared(smoke_model, tmp_path):
    path = save_reference_checkpoint(smoke_model, tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    assert state["embed_tokens.weight"].data_ptr() == state["llama_model.model.embed_tokens.weight"].data_ptr()


def test_our_checkpoint_round_trip(smoke_model, batch_of, fixture_samples, tmp_path):
    batch = batch_of(OutputType.S2S)
    before = _outputs(smoke_model, batch, fixture_samples[0].audio)
    save_checkpoint(smoke_model, tmp_path / "ckpt")
    save_checkpoint(smoke_model, tmp_path / "ckpt")  # overwriting is atomic too
    loaded = EChat.from_checkpoint(tmp_path / "ckpt").eval()
    assert loaded.config == smoke_model.config
    assert _outputs(loaded, batch, fixture_samples[0].audio)[1:] == before[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_wrong_shapes_are_reported_with_the_key(smoke_model, tmp_path):
    path = save_reference_checkpoint(smoke_model, tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)
    state["speech_head.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"speech_head.bias \(3,\)"):
        EChat.from_reference_checkpoint(tmp_path / "bad.pt", tokenizer=smoke_model.tokenizer, config=preset("smoke"))


def test_missing_and_unexpected_keys_are_reported_in_one_error(smoke_model, tmp_path):
    state = torch.load(save_reference_checkpoint(smoke_model, tmp_path / "m.pt"), weights_only=True)
    del state["speech_head.weight"]
    state["extra.thing"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"1 missing key.*speech_head.weight.*1 unexpected key.*extra.thing"):
        EChat.from_reference_checkpoint(tmp_path / "bad.pt", tokenizer=smoke_model.tokenizer, config=preset("smoke"))


def test_a_checkpoint_of_another_preset_is_rejected(smoke_model, tmp_path):
    path = save_reference_checkpoint(smoke_model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="does not match the mini layout: 139 missing"):
        EChat.from_reference_checkpoint(path, tokenizer=smoke_model.tokenizer, config=preset("mini"))
    one_layer_mini = preset("mini")
    one_layer_mini.encoder.n_layers = one_layer_mini.adapter.n_layers = one_layer_mini.llm.n_layers = 1
    one_layer_mini.adapter.output = "linear"  # the smoke checkpoint has no token-mix or cue-frame weights
    one_layer_mini.adapter.cue_frames = one_layer_mini.adapter.bigram_frames = one_layer_mini.adapter.hard_pack = False
    one_layer_mini.adapter.end_frame = one_layer_mini.adapter.cue_mel_stats = False
    with pytest.raises(CheckpointError, match="wrong shape"):
        EChat.from_reference_checkpoint(path, tokenizer=smoke_model.tokenizer, config=one_layer_mini)


def test_truncated_and_non_checkpoint_files_are_clear_errors(smoke_model, tmp_path):
    path = save_reference_checkpoint(smoke_model, tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint")
    for bad in ("cut.pt", "text.pt", "absent.pt"):
        with pytest.raises(CheckpointError, match=bad) as caught:
            EChat.from_reference_checkpoint(tmp_path / bad, tokenizer=smoke_model.tokenizer, config=preset("smoke"))
        assert "weights_only" not in str(caught.value) and len(str(caught.value).splitlines()) == 1
    with pytest.raises(CheckpointError, match="not an echat checkpoint"):
        EChat.from_checkpoint(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_no_pickle_code_runs_from_an_untrusted_file(tmp_path, smoke_model):
    marker = tmp_path / "pwned"
    torch.save({"encoder.x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt") as caught:
        EChat.from_reference_checkpoint(tmp_path / "evil.pt", tokenizer=smoke_model.tokenizer, config=preset("smoke"))
    assert not marker.exists() and "weights_only" not in str(caught.value)


def test_a_config_with_a_size_that_is_not_positive_names_the_field(tmp_path):
    from echat.config import EChatConfig

    for field, value in (("hidden_size", 0), ("n_heads", -2)):
        data = preset("smoke").to_dict()
        data["llm"][field] = value
        (tmp_path / "config.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match=rf"config\.llm\.{field}: must be a positive integer, got {value}"):
            EChatConfig.load(tmp_path / "config.json")


def test_a_bf16_reference_file_loads_in_place_without_a_float32_copy_or_ln_speech(smoke_model, tmp_path, monkeypatch):
    from echat.models import checkpoint

    path = save_reference_checkpoint(smoke_model, tmp_path / "m.pt")  # bf16, as released
    read = {}

    def remembering(*args):
        read.update(ours := checkpoint.reference_weights(*args))
        return ours

    monkeypatch.setattr("echat.models.echat.reference_weights", remembering)
    model = EChat.from_reference_checkpoint(path, tokenizer=smoke_model.tokenizer, config=smoke_model.config,
                                            dtype=torch.bfloat16)
    assert not any(k.startswith("ln_speech") for k in read) and "ln_speech.weight" in torch.load(path, mmap=True)
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    # every weight is the memory-mapped tensor of the file itself: moved (to a GPU) once, never copied on the way
    assert all(params[k].data_ptr() == t.data_ptr() for k, t in read.items() if k in params)


def test_moving_to_bf16_keeps_the_rotary_frequencies_float32(smoke_model):
    from echat.models.checkpoint import place_model

    exact = smoke_model.causal_lm.model.rotary_emb.inv_freq.clone()
    model = place_model(smoke_model, "cpu", torch.bfloat16)
    rotary = model.causal_lm.model.rotary_emb
    assert model.dtype == torch.bfloat16 and rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, exact)


def test_gathered_weights_write_the_same_file_as_the_model_and_read_back_whole(smoke_model, tmp_path):
    # what FSDP hands the main rank: every tensor a separate copy (ties broken), here views into one big buffer
    state = smoke_model.state_dict()
    flat = torch.cat([t.detach().flatten() for t in state.values()])
    gathered, start = {}, 0
    for name, tensor in state.items():
        gathered[name] = flat[start:start + tensor.numel()].view(tensor.shape)
        start += tensor.numel()
    save_checkpoint(smoke_model, tmp_path / "model")
    save_checkpoint(smoke_model, tmp_path / "gathered", weights=gathered)
    assert (tmp_path / "gathered" / WEIGHTS).read_bytes() == (tmp_path / "model" / WEIGHTS).read_bytes()
    whole = read_full_weights(smoke_model, tmp_path / "gathered")
    assert whole.keys() == state.keys() and all(torch.equal(whole[k], state[k]) for k in state)
