"""Log-mel front-end speed: echat's batched ``log_mel_batch`` against the reference's per-utterance loop.

The clips are real speech (the fixtures under ``data/fixtures/wav``, laid end to end and cut cyclically),
from 1 to 20 s, with lengths that are not multiples of the 160-sample hop. The reference loop is the
formula of the reference's processor (reference §1.2), one utterance at a time, then padded into a batch
as its collate pads; its Hann window and mel filters are made once, outside the timed loop (the fastest
form of that loop). Both get the same float32 tensors and return features (B, T_max, 80) and lengths (B,).
Prints both times (median over the repeats, the two timed in turn), their ratio, and the largest
difference; exits 1 when the difference exceeds 1e-4 or the lengths differ.

    .venv/bin/python benchmarks/frontend.py [--clips 20] [--threads 2] [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from echat.audio import SAMPLE_RATE_HZ, load_audio, log_mel_batch

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "wav"
SHORTEST_S, LONGEST_S = 1.0, 20.0
OFF_HOP_SAMPLES = 37  # clip b gets 37 * b extra samples, so most lengths are not a multiple of the hop
MAX_ABS_DIFF = 1e-4


def speech_clips(n_clips: int) -> list[torch.Tensor]:
    """``n_clips`` float32 waves ``(N_b,)`` of real speech, 1 to 20 s long, each cut from its own offset."""
    speech = np.concatenate([load_audio(path) for path in sorted(FIXTURES.glob("*.wav"))])  # (S,)
    seconds = np.linspace(SHORTEST_S, LONGEST_S, n_clips)
    clips = []
    for index, length_s in enumerate(seconds):
        n_samples = round(length_s * SAMPLE_RATE_HZ) + OFF_HOP_SAMPLES * index
        start = index * len(speech) // max(1, n_clips)
        clips.append(torch.from_numpy(np.take(speech, np.arange(start, start + n_samples), mode="wrap")))
    return clips


def reference_log_mel(wave: torch.Tensor, window: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The reference's formula for one utterance ``(N,)`` -> ``(T, 80)``, ``T = N // 160``."""
    stft = torch.stft(wave, 400, 160, window=window, return_complex=True)  # center=True, reflect padding
    magnitudes = stft[..., :-1].abs() ** 2  # (201, T)
    mel_spec = filters @ magnitudes  # (80, T)
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).transpose(0, 1)


def reference_loop(waves: list[torch.Tensor], window, filters) -> tuple[torch.Tensor, torch.Tensor]:
    """One utterance at a time, then zero padded: features ``(B, T_max, 80)`` and lengths ``(B,)``."""
    feats = [reference_log_mel(wave, window, filters) for wave in waves]
    return pad_sequence(feats, batch_first=True), torch.tensor([feat.shape[0] for feat in feats])


def wall_seconds(run) -> float:
    """Wall seconds of one ``run()``."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    waves = speech_clips(args.clips)
    window = torch.hann_window(400)
    filters = torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=400, n_mels=80))  # (80, 201)
    ref_feats, ref_lengths = reference_loop(waves, window, filters)  # also the warm-up of both
    feats, lengths = log_mel_batch(waves)
    diff = float((feats - ref_feats).abs().max())
    reference_s, batched_s = [], []
    for _ in range(args.repeats):  # in turn, so that a busy moment weighs on both
        reference_s.append(wall_seconds(lambda: reference_loop(waves, window, filters)))
        batched_s.append(wall_seconds(lambda: log_mel_batch(waves)))
    ref_ms, ours_ms = 1000 * np.median(reference_s), 1000 * np.median(batched_s)
    audio_s = sum(len(wave) for wave in waves) / SAMPLE_RATE_HZ
    print(f"{len(waves)} clips, {len(waves[0]) / SAMPLE_RATE_HZ:.1f}-{len(waves[-1]) / SAMPLE_RATE_HZ:.1f} s "
          f"({audio_s:.0f} s of audio), {args.threads} threads, median of {args.repeats}")
    print(f"reference per-utterance loop: {ref_ms:.1f} ms")
    print(f"echat log_mel_batch:          {ours_ms:.1f} ms")
    print(f"speed-up {ref_ms / ours_ms:.2f}x; max abs diff {diff:.1e} (limit {MAX_ABS_DIFF:.0e})")
    return 0 if diff <= MAX_ABS_DIFF and torch.equal(lengths, ref_lengths) else 1


if __name__ == "__main__":
    sys.exit(main())
