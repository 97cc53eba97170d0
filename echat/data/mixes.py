"""Data-list yaml (reference §6.4): named shard lists, each with a weight, read as one training mix.

The reference's ``load_combine_type_yaml.py`` turns ``name: {path: <list file>, weight: <w>}`` into one list
of tars: a whole-number weight repeats the source's tars that many times, a weight between 0 and 1 keeps
that share of them (a random subset), and the result is shuffled. Its shuffle is seeded by the time; here
a ``seed`` makes the same yaml give the same mix.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from echat.data.schema import UNKNOWN_KEY, PathType, Problem
from echat.data.shards import ListEntry, ShardError, list_entries, listed_path


def _weight(name: str, source: object, where: str) -> tuple[str, float]:
    """The ``(path, weight)`` of one source; raises :class:`ShardError` naming the field."""
    def bad(message: str) -> ShardError:
        return ShardError([Problem(where, 0, name, message)])

    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        raise bad("expected {path: <list file>, weight: <number>}")
    weight = source.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise bad(f"weight: expected a number, got {weight!r}")
    if not (0 < weight < 1 or (weight >= 1 and float(weight).is_integer())):
        raise bad(f"weight: {weight} is neither a whole number (repeat) nor between 0 and 1 (a share)")
    return source["path"], float(weight)


def read_data_yaml(path: PathType, seed: int = 0) -> list[ListEntry]:
    """The tars of a data-list yaml, weighted and shuffled by ``seed``. Raises :class:`ShardError` (naming
    the yaml and the source) for a bad file, field or list."""
    where = str(path)
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ShardError([Problem(where, 0, UNKNOWN_KEY, f"cannot read data-list yaml: {err}")]) from None
    if not isinstance(spec, dict) or not spec:
        raise ShardError([Problem(where, 0, UNKNOWN_KEY, "expected a mapping name -> {path, weight}")])
    rng = random.Random(seed)
    mix: list[ListEntry] = []
    for name, source in spec.items():
        listed, weight = _weight(str(name), source, where)
        entries = list_entries(listed_path(listed, Path(path).parent))
        if weight < 1:
            mix += rng.sample(entries, max(1, round(weight * len(entries)))) if entries else []
        else:
            mix += entries * int(weight)
    rng.shuffle(mix)
    return mix


def is_data_yaml(path: PathType) -> bool:
    """True for a data-list yaml (by its extension, as the reference's scripts take one)."""
    return Path(path).suffix in (".yaml", ".yml")
