"""Display helpers of echat.workbench.display that need a model (built on the meta device: no memory)."""

import torch

from echat.config import preset
from echat.models.echat import EChat
from echat.workbench import display as show


def meta_model(config) -> EChat:
    with torch.device("meta"):
        return EChat(config)


def test_parameter_counts_add_up_and_count_the_tied_head_once():
    config = preset("smoke")
    model = meta_model(config)
    counts = show.parameter_counts(model)
    assert counts["LLM: text head"] == 0  # tied: the head is the text embedding
    assert counts["LLM: text embedding"] == config.llm.vocab_size * config.llm.hidden_size
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert "other" not in counts


def test_untied_head_and_stray_parameters_are_counted():
    config = preset("smoke")
    config.llm.tie_word_embeddings = False
    model = meta_model(config)
    model.extra = torch.nn.Parameter(torch.zeros(7, device="meta"))
    counts = show.parameter_counts(model)
    assert counts["LLM: text head"] == config.llm.vocab_size * config.llm.hidden_size
    assert counts["other"] == 7
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


def test_full_model_matches_the_reference_parameter_budget():
    counts = show.parameter_counts(meta_model(preset("osum-echat")))
    # Reference fact sheet (millions): encoder 305.68, down_sample_2 9.44, speech_transformer 38.85,
    # speech_llama_proj 2.10, speech_token_emded 8.39, speech_head 8.39, llama_model 3085.94 (tied).
    assert round(counts["encoder"] / 1e6, 2) == 305.68
    assert round(counts["adapter: downsampler"] / 1e6, 2) == 9.44
    assert round(counts["adapter: transformer"] / 1e6, 2) == 38.85
    assert round(counts["adapter: projection"] / 1e6, 2) == 2.10
    assert round(counts["speech embedding"] / 1e6, 2) == round(counts["speech head"] / 1e6, 2) == 8.39
    llm = sum(v for k, v in counts.items() if k.startswith("LLM"))
    assert round(llm / 1e6, 2) == 3085.94
    # 3.459 B in the reference includes its unused 2,048-parameter ln_speech, which we do not build.
    assert sum(counts.values()) + 2 * 1024 == 3_458_799_617


def test_audio_grid_embeds_every_clip_without_normalising(tmp_path):
    import numpy as np
    import soundfile as sf

    quiet = 0.1 * np.sin(np.linspace(0, 300, 1600)).astype(np.float32)  # 0.1 s at 16 kHz
    path = tmp_path / "clip.wav"
    sf.write(path, quiet, 16_000, subtype="PCM_16")
    view = show.audio_grid([("<SAD>", "quiet", quiet), ("file", "", path)], columns=2)
    assert view.html.count("<audio") == 2 and view.html.count(";base64,") == 2
    assert "&lt;SAD&gt;" in view.html and "repeat(2," in view.html
    assert str(view) == "<SAD>: quiet\nfile"
    # A peak-normalising player would embed a wave and its double identically: loudness is a cue here.
    assert show.audio_grid([("a", "", 2 * quiet)]).html != show.audio_grid([("a", "", quiet)]).html


def test_audio_grid_says_no_audio_for_an_empty_wave():
    import numpy as np

    view = show.audio_grid([("model reply", "nothing said", np.zeros(0, dtype=np.float32))])
    assert "<audio" not in view.html and "(no audio)" in view.html
    assert str(view) == "model reply: nothing said (no audio)"


def test_speech_token_plot_draws_a_row_per_sequence_without_boundary_ids():
    fig = show.speech_token_plot([("truth", [1, 2, 2, 3, 64]), ("model", [5] * 10)], codebook_size=64)
    axes = fig.get_axes()
    assert len(axes) == 2
    assert "4 tokens" in axes[0].get_title(loc="left") and "3 distinct" in axes[0].get_title(loc="left")
    assert len(axes[0].lines[0].get_xdata()) == 4  # the boundary id 64 is left out
    assert "10 tokens, 0.4 s, 1 distinct" in axes[1].get_title(loc="left")


def test_confusion_grid_has_a_panel_per_matrix():
    report = {"subsets": {s: {"understanding": {"labels": {
        f: {"accuracy": 0.5, "labels": ["<A>", "<B>"], "confusion": [[1, 1], [0, 2]]} for f in ("age", "gender")}}}
        for s in ("seen", "unseen")}}
    fig = show.confusion_grid(report)
    visible = [ax for ax in fig.get_axes() if ax.get_visible() and ax.get_title()]
    assert len(visible) == 4
    assert {ax.get_title() for ax in visible} >= {"age, seen: accuracy 0.50", "gender, unseen: accuracy 0.50"}


def test_the_mini_adapters_cue_classifiers_are_counted_as_adapter_parameters():
    """Notebook 05 maps every part to the module whose learning rate it shows by its name's prefix; on the mini
    preset the adapter's cue classifiers and token pack fell under ``other`` and the notebook failed."""
    model = meta_model(preset("mini"))
    counts = show.parameter_counts(model)
    rest = sum(p.numel() for p in model.adapter.parameters()) - sum(
        p.numel() for m in (model.adapter.downsample, model.adapter.transformer, model.adapter.proj)
        for p in m.parameters())
    assert rest > 0 and counts[show.ADAPTER_REST] == rest
    assert "other" not in counts
    assert all(name.split(":")[0].split()[0] in {"encoder", "adapter", "LLM", "speech"} for name in counts)
