"""Training samples from a manifest in the reference's formats: what ``echat train --data MANIFEST`` reads.

A manifest is anything :mod:`echat.data.check` reads: a raw JSON-lines list (§6.1), a ``shards_list.txt``
(§6.2), combine lines or a reference ``combines_list.txt`` (§6.3), or a data-list yaml (§6.4).

Design choices:
- Training refuses exactly what ``echat data check`` refuses: the manifest is checked first (record fields,
  speech tokens within the model's codebook, audio headers and lengths, duplicate keys, tar members), and
  any problem stops the run with its ``file:line: key: field: message`` line (:class:`RefusedData`).
- A data-list yaml's weights are kept: each tar is read once, and its samples appear as many times as the
  mix lists the tar (a whole-number weight repeats, a share subsamples), in the mix's order, shuffled by
  ``seed`` (the reference seeds with the time).
- Relative audio paths of a raw list are found as the check finds them: the working directory, then the
  manifest's folder, or only ``base_dir`` (reference §6.1). Records that share a file share one array.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from echat.audio import AudioError, load_audio
from echat.config import EChatConfig
from echat.data.check import check_manifest, is_shard_list
from echat.data.mixes import is_data_yaml, read_data_yaml
from echat.data.pipeline import Sample
from echat.data.schema import AudioNotFoundError, ManifestError, PathType, Problem, Record, read_manifest
from echat.data.shards import ListEntry, iter_entry_samples, list_entries


class RefusedData(ManifestError):
    """A manifest training will not read; the message is one line: the first problem and how many more."""

    def __str__(self) -> str:
        more = len(self.problems) - 1
        tail = f" (and {more} more problem(s): `echat data check` lists every one)" if more > 0 else ""
        return f"{self.problems[0]}{tail}"


def read_samples(manifest: PathType, config: EChatConfig, *, default_task: str | None = None,
                 base_dir: PathType | None = None, seed: int = 0) -> list[Sample]:
    """Every sample of ``manifest`` with its audio decoded (16 kHz float32), repeated as a data-list yaml
    weighs it. Speech tokens must lie within ``config.speech.codebook_size``; audio within
    ``config.audio``'s limits. Raises :class:`RefusedData` when ``echat data check`` would find a problem."""
    manifest = Path(manifest)
    report = check_manifest(manifest, codebook_size=config.speech.codebook_size,
                            min_samples=config.audio.min_samples, max_seconds=config.audio.max_seconds,
                            default_task=default_task, base_dir=base_dir)
    if not report.ok:
        raise RefusedData(report.problems)
    problems: list[Problem] = []
    if is_shard_list(manifest):
        samples = _shard_samples(manifest, config, default_task, seed, problems)
    else:
        records = read_manifest(manifest, codebook_size=config.speech.codebook_size, default_task=default_task)
        samples = list(_raw_samples(records, config, base_dir, problems))
    if problems:
        raise RefusedData(problems)
    return samples


def _shard_samples(manifest: Path, config: EChatConfig, default_task: str | None, seed: int,
                   problems: list[Problem]) -> list[Sample]:
    """The samples of every tar the list (or the weighted mix) names, each tar decoded once."""
    entries = read_data_yaml(manifest, seed) if is_data_yaml(manifest) else list_entries(manifest)
    by_entry: dict[ListEntry, list[Sample]] = {}
    for entry in dict.fromkeys(entries):
        found = iter_entry_samples([entry], problems, codebook_size=config.speech.codebook_size,
                                   sample_rate=config.audio.sample_rate_hz, default_task=default_task)
        by_entry[entry] = [Sample(s.record, s.audio, s.history_audio) for s in found]
    return [sample for entry in entries for sample in by_entry[entry]]


def _raw_samples(records: Iterable[Record], config: EChatConfig, base_dir: PathType | None,
                 problems: list[Problem]) -> Iterator[Sample]:
    """Records of a raw list with their audio (and their history turns' audio) decoded."""
    decoded: dict[Path, np.ndarray] = {}

    def load(record: Record, wav: str) -> np.ndarray:
        path = record.locate(wav, base_dir)
        if path not in decoded:
            decoded[path] = load_audio(path, config.audio.sample_rate_hz, config.audio.min_samples,
                                       config.audio.max_seconds)
        return decoded[path]

    for record in records:
        try:
            audio = load(record, record.wav) if record.wav is not None else None
            history = [load(record, turn["wav"]) for turn in record.history]
        except (AudioError, AudioNotFoundError) as err:
            problems.append(Problem(record.source, record.line, record.key, str(err)))
            continue
        yield Sample(record, audio, history)


def sample_texts(samples: Iterable[Sample]) -> list[str]:
    """The texts of ``samples`` the LLM reads or writes (transcript or reply, question, think, history
    turns), each distinct text once: what a mini BPE for this data is trained on."""
    texts: dict[str, None] = {}
    for sample in samples:
        record = sample.record
        fields = [record.txt, *(turn["txt"] for turn in record.history)]
        fields += [record.extra.get(name) for name in ("question", "q_txt", "think_str")]
        texts.update((text, None) for text in fields if isinstance(text, str) and text)
    return list(texts)
