"""Decoding speed of echat's generate() on the mini preset (CPU, fp32, 2 threads by default).

Prints three figures (random weights; speed does not depend on what the weights say):
1. text-only greedy decoding, 300 tokens: our generate() vs transformers' generate() on the same LLM;
2. the speech phase (TTS, 300 speech tokens) and the prompt latency of a spoken question (S2S,
   3 s of input audio: time to the first text token);
3. KV-cached vs uncached generate() over 300 tokens.

    .venv/bin/python benchmarks/generation_speed.py [--threads 2] [--tokens 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from echat.config import GenerationOptions
from echat.models.echat import EChat
from echat.models.generate import build_prompt, generate


def _text_model(seed: int) -> EChat:
    """A mini model whose greedy text never ends early (so every run decodes the full length)."""
    torch.manual_seed(seed)
    model = EChat.from_preset("mini").eval()
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():  # push <|im_end|> out of reach of greedy decoding (tied head: embedding row)
        model.causal_lm.lm_head.weight[im_end].mul_(0.0)
    return model


def ours_vs_transformers(model: EChat, n_tokens: int, repeats: int = 3) -> tuple[float, float]:
    options = GenerationOptions(do_sample=False, max_new_tokens=n_tokens)
    generate(model, text="warm up", task="<TEXT2TEXT>", options=dataclasses.replace(options, max_new_tokens=5))
    ours, theirs = [], []
    for _ in range(repeats):
        result = generate(model, text="Tell me a story.", task="<TEXT2TEXT>", options=options)
        assert len(result.text_ids) == n_tokens, len(result.text_ids)
        ours.append(n_tokens / result.timings.total_s)
        _, ids, codes, _ = build_prompt(model, text="Tell me a story.", task="<TEXT2TEXT>")
        with torch.inference_mode():
            start = time.perf_counter()
            embeds = model.embed(ids[None], codes[None])
            out = model.causal_lm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids[None]),
                                           max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
            theirs.append(out.shape[1] / (time.perf_counter() - start))
    return float(np.median(ours)), float(np.median(theirs))


def speech_phase(model: EChat, n_tokens: int):
    """TTS timings with the stop (boundary) pushed out of reach, so exactly ``n_tokens`` are spoken."""
    options = GenerationOptions(do_sample=False, max_speech_tokens=n_tokens)
    boundary = model.config.speech.boundary_id
    with torch.no_grad():
        saved = model.speech_head.bias[boundary].item()
        model.speech_head.bias[boundary] = -1e4
    try:
        generate(model, text="warm up", task="<TEXT2TOKEN>", options=dataclasses.replace(options, max_speech_tokens=5))
        return generate(model, text="Tell me a story.", task="<TEXT2TOKEN>", options=options).timings
    finally:
        with torch.no_grad():
            model.speech_head.bias[boundary] = saved


def spoken_question_latency(model: EChat, seconds: float = 3.0) -> float:
    """Seconds from the call to the first text token of an S2S reply to ``seconds`` of audio."""
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype(np.float32)
    options = GenerationOptions(do_sample=False, max_new_tokens=1)
    generate(model, wave, task="<S2TCHAT> <TEXT2TOKEN>", options=options)
    return generate(model, wave, task="<S2TCHAT> <TEXT2TOKEN>", options=options).timings.first_text_s


def cached_vs_uncached(model: EChat, n_tokens: int) -> tuple[float, float]:
    options = GenerationOptions(do_sample=False, max_new_tokens=n_tokens)
    times = []
    for use_cache in (True, False):
        start = time.perf_counter()
        generate(model, text="Tell me a story.", task="<TEXT2TEXT>",
                 options=dataclasses.replace(options, use_cache=use_cache))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _text_model(seed=0)
    ours, theirs = ours_vs_transformers(model, args.tokens)
    print(f"text-only greedy, {args.tokens} tokens: echat {ours:.0f} tok/s, transformers generate() "
          f"{theirs:.0f} tok/s, ratio {ours / theirs:.2f}x")
    t = speech_phase(model, args.tokens)
    print(f"speech phase (TTS), {t.n_speech} speech tokens: {t.tokens_per_s:.0f} tok/s, "
          f"first speech token after {t.first_speech_s * 1000:.0f} ms")
    print(f"S2S with 3 s of input audio: first text token after {spoken_question_latency(model) * 1000:.0f} ms")
    cached, uncached = cached_vs_uncached(model, args.tokens)
    print(f"{args.tokens} tokens: cached {cached:.2f} s, uncached {uncached:.2f} s, "
          f"speed-up {uncached / cached:.1f}x")


if __name__ == "__main__":
    main()
