"""A smoke-size model whose heads follow a script (a tag think, a reply, then speech codes), and a real clip."""

import json
import random

import pytest
import torch

from echat.audio import load_audio
from echat.config import preset
from echat.models.echat import EChat
from echat.prompts import Cues, format_reply
from tests.conftest import FIXTURES

SCRIPTED_REPLY = "<COMFORTING>I'm sorry it was so hard."
SCRIPTED_CUES = Cues(age="<ADULT>", gender="<FEMALE>", emotion="<SAD>", event="<SIGH>")
SPEECH_CODES = 30  # the scripted speech phase: codes 1..30, then the boundary


def script_heads(model, answer_text: str, speech_codes: int = SPEECH_CODES) -> list[int]:
    """Make ``model`` answer ``answer_text`` (then ``<|im_end|>``) and speak codes 1..``speech_codes``, whatever
    it hears; returns the answer's token ids. Each call starts the script again at its first text step."""
    tokenizer = model.tokenizer
    ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    im_end, boundary = tokenizer.convert_tokens_to_ids("<|im_end|>"), model.config.speech.boundary_id
    lm_head, speech_head = model.causal_lm.lm_head, model.speech_head
    state = {"text": 0, "speech": 0}

    def text_head(h):
        out = torch.zeros(*h.shape[:-1], lm_head.out_features)
        step = state["text"]
        out[..., ids[step] if step < len(ids) else im_end] = 100.0
        state["text"] = step + 1 if step < len(ids) else 0  # after <|im_end|> the next call starts again
        return out

    def speech_fn(h):
        out = torch.zeros(*h.shape[:-1], speech_head.out_features)
        step = state["speech"] + 1
        out[..., step if step <= speech_codes else boundary] = 100.0
        state["speech"] = step if step <= speech_codes else 0
        return out

    lm_head.forward, speech_head.forward = text_head, speech_fn
    return ids


@pytest.fixture
def scripted(mini_tok, tokenizer):
    """A seeded smoke EChat answering a tag think and a reply, speaking through a mini token2wav."""
    from echat.token2wav.mini import MiniToken2Wav

    torch.manual_seed(0)
    model = EChat(preset("smoke"), mini_tok).eval()
    answer = format_reply(SCRIPTED_REPLY, "tag", "mini", cues=SCRIPTED_CUES, rng=random.Random(1))
    model.token2wav = MiniToken2Wav(tokenizer, n_iter=4)
    model.scripted_ids = script_heads(model, answer)
    model.scripted_answer = answer
    return model


@pytest.fixture(scope="session")
def hello():
    """A real EChat-mini clip (16 kHz)."""
    return load_audio(FIXTURES / "wav" / "asrp_0002.wav")


LABELS = [("<FEMALE>", "<ADULT>", "<SAD>", "<SIGH>", "seen"), ("<MALE>", "<CHILD>", "<HAPPY>", "<LAUGH>", "unseen")]


@pytest.fixture
def tiny_corpus(tmp_path):
    """A two-clip test split in the EChat-mini layout (labelled S2T records), on the fixture wavs."""
    lines = []
    for i, (gender, age, emotion, event, subset) in enumerate(LABELS):
        extra = {"q_txt": f"sentence {i}", "gender": gender, "age": age, "q_emotion": emotion, "caption": event,
                 "subset": subset}
        wav = FIXTURES / "wav" / ("asrp_0002.wav" if i == 0 else "asr_0001.wav")
        lines.append(json.dumps({"key": f"clip{i}", "wav": str(wav), "txt": "<COMFORTING>ok",
                                 "task": "<S2TCHAT>", "extra": extra}))
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path
