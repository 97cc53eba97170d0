"""The full world on a GPU: the released OSUM-EChat checkpoint with CosyVoice-300M-25Hz, or random weights of the exact
same shapes when the files are absent (the output says which, and names the GPU).

Measures, on one CUDA device (bf16 LLM, fp32 token2wav):
- load time of the model and of the token2wav (seconds; random weights: building them on the GPU);
- peak GPU memory (``torch.cuda.max_memory_allocated``) after loading and over the two timed calls;
- an S2S-think turn on a spoken clip (default ``data/samples/hello.wav``) with the reference's decoding, seeded: time
  to the first text token, to the first speech token and to the first audio chunk (the first token2wav call on
  ``stream_chunk`` = 25 tokens), decoding tokens/s (token2wav time taken out), token2wav real-time factor;
  random weights never close their text, so their turn stops at ``--text-tokens`` and has no speech;
- a speech phase of exactly ``--speech-tokens`` tokens (TTS with the closing boundary pushed out of reach, as
  ``benchmarks/generation_speed.py`` does): speech tokens/s, first audio chunk, token2wav real-time factor.

On a machine without CUDA it prints one line and exits 0; ``--allow-cpu`` runs the smoke shape on the CPU instead
(random weights, seconds: a check that the script works, not a figure).

    .venv/bin/python benchmarks/full_model.py [--checkpoint tag_think_final.pt --cosyvoice CosyVoice-300M-25Hz]
        [--wav data/samples/hello.wav] [--text-tokens 100] [--speech-tokens 250] [--seed 0] [--out full.json]
        [--allow-cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from echat.config import GenerationOptions, preset
from echat.models.checkpoint import default_tokenizer, place_model
from echat.models.echat import EChat
from echat.prompts import default_options
from echat.tokens import TEXT2TOKEN, output_type
from echat.workbench.chat import chat_task, load_chat_model

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "data" / "samples" / "hello.wav"
TTS_TEXT = "I am here for you. Tell me what happened, and we will sort it out together."


class TimedToken2Wav:
    """A token2wav that adds up the seconds spent inside it (GPU work finished) and the audio it made."""

    def __init__(self, inner, device: str):
        self.inner, self.device, self.sample_rate = inner, device, inner.sample_rate
        self.seconds, self.samples = 0.0, 0

    def __call__(self, tokens, **kw):
        start = time.perf_counter()
        wave = self.inner(tokens, **kw)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.samples += int(wave.shape[0])
        return wave


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build(args, device: str) -> tuple[EChat, object, dict]:
    """The model and token2wav to measure, and how they were made (weights, shapes, load seconds)."""
    from echat.token2wav.cosyvoice import CosyVoiceToken2Wav

    released = bool(args.checkpoint and args.cosyvoice)
    size = "smoke" if device == "cpu" else "full"
    start = time.perf_counter()
    if released:
        model = load_chat_model(args.checkpoint, device)
    else:
        config = preset("smoke" if size == "smoke" else "osum-echat")
        with torch.device(device):  # initialised where it runs: no 14 GB fp32 copy in host memory
            model = EChat(config, default_tokenizer(config))
        model = place_model(model, device).eval()
    synchronize(device)
    loaded = time.perf_counter()
    if released:
        token2wav = CosyVoiceToken2Wav.from_dir(args.cosyvoice, device, torch.float32)
    else:
        token2wav = CosyVoiceToken2Wav.random(size, device=device)
    synchronize(device)
    weights = (f"released files: {args.checkpoint} + {args.cosyvoice}" if released else
               f"random weights of the exact {'full' if size == 'full' else 'smoke'} shape "
               f"({model.config.name} + CosyVoice-300M-25Hz {size}; the files were not given)")
    return model, token2wav, {"weights": weights, "model_load_s": loaded - start,
                              "token2wav_load_s": time.perf_counter() - loaded}


def timed_call(model, token2wav: TimedToken2Wav, device: str, **call) -> dict:
    """One streamed call: seconds to the first text piece, speech chunk and audio chunk; counts and rates."""
    token2wav.seconds, token2wav.samples = 0.0, 0
    firsts: dict[str, float] = {}
    synchronize(device)
    start = time.perf_counter()
    for event in model.stream(token2wav=token2wav, **call):
        firsts.setdefault(event.kind, time.perf_counter() - start)
        result = event.result if event.kind == "done" else None
    wall = time.perf_counter() - start
    n_tokens = result.timings.n_text + result.timings.n_speech
    audio_s = token2wav.samples / token2wav.sample_rate
    return {"first_text_token_s": firsts.get("text"), "first_speech_chunk_s": firsts.get("speech"),
            "first_audio_s": firsts.get("audio"), "text_tokens": result.timings.n_text,
            "speech_tokens": result.timings.n_speech, "wall_s": wall, "token2wav_s": token2wav.seconds,
            "audio_s": audio_s, "tokens_per_s": n_tokens / max(wall - token2wav.seconds, 1e-9),
            "token2wav_rtf": token2wav.seconds / audio_s if audio_s else None, "think": result.think,
            "reply": result.text}


def s2s_turn(model, token2wav, device: str, args) -> dict:
    """The S2S-think turn on ``args.wav`` with the reference's decoding (seeded; text capped at --text-tokens
    for random weights, which never close it)."""
    task = chat_task("s2s", "tag")
    options = dataclasses.replace(default_options(output_type(task)), seed=args.seed,
                                  max_speech_tokens=args.speech_tokens)
    if not (args.checkpoint and args.cosyvoice):
        options = dataclasses.replace(options, max_new_tokens=args.text_tokens)
    return timed_call(model, token2wav, device, audio=str(args.wav), task=task, think="tag", options=options)


def speech_phase(model, token2wav, device: str, n_tokens: int, seed: int) -> dict:
    """Exactly ``n_tokens`` speech tokens (TTS, the closing boundary out of reach), each chunk voiced as it comes."""
    boundary = model.config.speech.boundary_id
    options = GenerationOptions(do_sample=True, top_k=15, top_p=0.8, temperature=1.2, max_speech_tokens=n_tokens,
                                seed=seed)
    with torch.no_grad():
        saved = model.speech_head.bias[boundary].item()
        model.speech_head.bias[boundary] = -1e4
    try:
        return timed_call(model, token2wav, device, text=TTS_TEXT, task=TEXT2TOKEN, options=options)
    finally:
        with torch.no_grad():
            model.speech_head.bias[boundary] = saved


def run(args, device: str) -> dict:
    """Load, warm up, then the two timed calls; every figure in one dict."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, inner, report = build(args, device)
    token2wav = TimedToken2Wav(inner, device)
    report["device"] = torch.cuda.get_device_name() if cuda else "cpu (smoke shape: a check, not a figure)"
    report["peak_gpu_memory_after_load_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    speech_phase(model, token2wav, device, 25, args.seed)  # warm-up: kernels, caches, the first chunk's shapes
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    report["s2s_think_turn"] = s2s_turn(model, token2wav, device, args)
    report["speech_phase"] = speech_phase(model, token2wav, device, args.speech_tokens, args.seed)
    report["peak_gpu_memory_calls_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    return report


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="tag_think_final.pt (with --cosyvoice)")
    parser.add_argument("--cosyvoice", default=None, help="the unpacked CosyVoice-300M-25Hz folder")
    parser.add_argument("--wav", type=Path, default=CLIP, help="the spoken turn (default data/samples/hello.wav)")
    parser.add_argument("--text-tokens", type=int, default=100, help="text cap of a random-weight turn")
    parser.add_argument("--speech-tokens", type=int, default=250, help="speech tokens of the speech phase (10 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run the smoke shape on the CPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if bool(args.checkpoint) != bool(args.cosyvoice):
        raise SystemExit("benchmarks/full_model.py: give both --checkpoint and --cosyvoice, or neither "
                         "(random weights)")
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("benchmarks/full_model.py needs a CUDA GPU and this machine has none: nothing measured "
              "(--allow-cpu checks the script on the smoke shape)")
        return 0
    torch.manual_seed(args.seed)
    report = run(args, "cuda" if torch.cuda.is_available() else "cpu")
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
