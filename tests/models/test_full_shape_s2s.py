"""One spoken turn of the full-size pipeline, for shapes only: the released EChat (osum-echat preset, 3.5 B) and
CosyVoice-300M-25Hz's flow and HiFT, all built on the meta device (no memory), run a real clip's S2S-think prompt
through the encoder, the adapter, the LLM and both heads, and the produced speech tokens through token2wav."""

import pytest
import torch

from echat.audio import load_audio
from echat.config import preset
from echat.models.echat import EChat
from echat.models.generate import build_prompt
from echat.sequence import clip_pack_layouts
from echat.token2wav.flow import CosyVoiceFlow, FlowConfig, mel_frames
from echat.token2wav.hift import HiFTConfig, HiFTVocoder
from echat.tokens import Stream
from tests.conftest import ROOT

S2S_THINK = "<S2TCHAT> <TEXT2TOKEN> <THINK>"
REPLY_TOKENS = 50  # 2 s of speech at 25 Hz
PROMPT_TOKENS, PROMPT_FRAMES = 20, 68  # a prompt voice: 0.8 s, mel_frames(20) frames


@pytest.fixture(scope="module")
def full(qwen):
    with torch.device("meta"):
        return EChat(preset("osum-echat"), qwen).eval()


def embed_prompt(model, ids, stream, clips):
    """The prompt's input embeddings (1, L, H): text and speech ids from their tables, the clip's adapter frames at
    its AUDIO positions (one contiguous block; on meta tensors there are no values to count, so the block comes
    from the prompt's own stream, which is real)."""
    audio = (stream == Stream.AUDIO).nonzero().flatten().tolist()
    start, n_audio = audio[0], len(audio)
    assert audio == list(range(start, start + n_audio)) and clips.embeddings.shape[1] == n_audio
    ids, stream = ids[None].to("meta"), stream[None].to("meta")
    is_text = stream == Stream.TEXT
    text = model.llm.get_input_embeddings()(torch.where(is_text, ids, 0))
    speech = model.speech_embedding(torch.where(stream == Stream.SPEECH, ids, 0))
    tokens = torch.where(is_text[..., None], text, speech)  # (1, L, H)
    return torch.cat([tokens[:, :start], clips.embeddings, tokens[:, start + n_audio:]], dim=1)


def test_one_s2s_turn_of_the_full_model_on_the_meta_device(full):
    wave = load_audio(ROOT / "data" / "samples" / "hello.wav")
    kind, ids, stream, feats = build_prompt(full, audio=wave, task=S2S_THINK, think="tag")
    layouts = torch.tensor(clip_pack_layouts(full.config, S2S_THINK, kind, 1), device="meta")
    clips = full.encode_clips(feats[0][None].to("meta"), torch.tensor([feats[0].shape[0]], device="meta"), layouts)
    assert clips.embeddings.shape == (1, full.config.llm_positions(feats[0].shape[0]), 2048)  # 12.5 Hz frames
    embeds = embed_prompt(full, ids, stream, clips)
    assert embeds.shape == (1, ids.shape[0], 2048)
    with torch.no_grad():
        # the causal mask given whole (1, 1, L, L): transformers would read a 2-D mask's values to build it
        mask = torch.ones(embeds.shape[1], embeds.shape[1], dtype=torch.bool, device="meta").tril()[None, None]
        hidden = full.causal_lm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[:, -1]  # (1, 2048)
        text_logits, speech_logits = full.causal_lm.lm_head(last), full.speech_head(last)
        next_input = full.speech_embedding(speech_logits.argmax(-1, keepdim=True))
    assert hidden.shape == (1, ids.shape[0], 2048) and hidden.is_meta
    assert text_logits.shape == (1, 151_936) and speech_logits.shape == (1, 4097) and next_input.shape == (1, 1, 2048)
    assert all(p.is_meta for p in full.parameters())  # 3.5 B parameters, no storage


def test_the_produced_tokens_through_the_full_size_cosyvoice_on_the_meta_device(full, monkeypatch):
    with torch.device("meta"):
        flow, hift = CosyVoiceFlow(FlowConfig.full()).eval(), HiFTVocoder(HiFTConfig.full()).eval()
        last = torch.empty(1, 2048)
        prompt_tokens, prompt_mel, speaker = torch.zeros(1, PROMPT_TOKENS, dtype=torch.long), torch.empty(
            1, PROMPT_FRAMES, 80), torch.empty(1, 192)
    with torch.no_grad():
        tokens = full.speech_head(last)[:, :4096].argmax(-1, keepdim=True).expand(1, REPLY_TOKENS)  # (1, T) codes
        mu, spks, cond = flow.conditions(tokens, prompt_tokens, prompt_mel, speaker)
        mel = flow.decoder(mu, spks, cond, 10, 0.7, 1.0, None)[:, :, PROMPT_FRAMES:]
        # torch.istft has no meta kernel (it compares windows by value): its output shape stands in for it
        monkeypatch.setattr(torch, "istft", lambda spec, n_fft, hop, win, window: torch.empty(
            spec.shape[0], (spec.shape[-1] - 1) * hop, device=spec.device))
        output = hift.inference(mel)
    frames = mel_frames(REPLY_TOKENS)
    assert mu.shape == (1, 80, PROMPT_FRAMES + frames) and mel.shape == (1, 80, frames) == (1, 80, 172)
    assert output.f0.shape == (1, frames) and output.source.shape == output.wave.shape == (1, frames * 256)
    assert abs(output.wave.shape[1] - REPLY_TOKENS * 22050 / 25) <= 256  # tokens x 22050 / 25 samples, +- a hop
