"""Decoding speed of echat's generate() on the mini preset (CPU, fp32, 2 threads by default).

Prints three figures (random weights; speed does not depend on what the weights say):
1. text-only greedy decoding, 300 tokens: our generate() vs transformers' generate() on the same LLM;
2. the speech phase (TTS, 300 speech tokens) and the prompt latency of a spoken question (S2S,
   3 s of input audio: time to the first text token);
3. KV-cached vs uncached generate() over 300 tokens;
4. README's Python example as written (``EChat.from_preset("mini")``, then ``generate(audio=..., think="tag")``)
   on the clip it names (data/samples/hello.wav): its wall time and tokens/s; ``--flush-to-zero off`` runs
   it with subnormal floats kept (EChat() flushes them), to show what subnormal arithmetic would cost.

    .venv/bin/python benchmarks/generation_speed.py [--threads 2] [--tokens 300] [--readme-only]
        [--seed 0] [--flush-to-zero on|off]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from echat.config import GenerationOptions
from echat.models.echat import EChat
from echat.models.generate import GenerationResult, build_prompt, generate

README_CLIP = Path(__file__).resolve().parents[1] / "data" / "samples" / "hello.wav"


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


def readme_example(seed: int, flush_denormal: bool = True) -> tuple[float, float, GenerationResult]:
    """README's Python example on ``README_CLIP``: (from_preset seconds, generate wall seconds, its result)."""
    torch.manual_seed(seed)  # the random weights, so that every run decodes the same tokens
    start = time.perf_counter()
    model = EChat.from_preset("mini")
    built = time.perf_counter()
    torch.set_flush_denormal(flush_denormal)  # EChat() has turned it on
    try:
        result = model.generate(audio=str(README_CLIP), think="tag")
    finally:
        torch.set_flush_denormal(True)
    return built - start, time.perf_counter() - built, result


def print_readme_example(seed: int, flush_denormal: bool) -> None:
    build_s, wall_s, result = readme_example(seed, flush_denormal)
    t = result.timings
    print(f"README example (mini, seed {seed}, {README_CLIP.name}, think=tag, flush-to-zero "
          f"{'on' if flush_denormal else 'off'}): from_preset {build_s:.2f} s, generate {wall_s:.2f} s wall, "
          f"{t.n_text} text + {t.n_speech} speech tokens, {t.tokens_per_s:.0f} tok/s")


def decoding_sections(n_tokens: int) -> None:
    """Sections 1-3 of the module docstring."""
    model = _text_model(seed=0)
    ours, theirs = ours_vs_transformers(model, n_tokens)
    print(f"text-only greedy, {n_tokens} tokens: echat {ours:.0f} tok/s, transformers generate() "
          f"{theirs:.0f} tok/s, ratio {ours / theirs:.2f}x")
    t = speech_phase(model, n_tokens)
    print(f"speech phase (TTS), {t.n_speech} speech tokens: {t.tokens_per_s:.0f} tok/s, "
          f"first speech token after {t.first_speech_s * 1000:.0f} ms")
    print(f"S2S with 3 s of input audio: first text token after {spoken_question_latency(model) * 1000:.0f} ms")
    cached, uncached = cached_vs_uncached(model, n_tokens)
    print(f"{n_tokens} tokens: cached {cached:.2f} s, uncached {uncached:.2f} s, "
          f"speed-up {uncached / cached:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="the README example's random weights")
    parser.add_argument("--readme-only", action="store_true", help="only section 4, README's example")
    parser.add_argument("--flush-to-zero", choices=("on", "off"), default="on",
                        help="README's example with subnormal floats flushed (as EChat() sets) or kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.readme_only:
        decoding_sections(args.tokens)
    print_readme_example(args.seed, flush_denormal=args.flush_to_zero == "on")


if __name__ == "__main__":
    main()
