"""The reference's three data layouts (raw list, shard tars, combine lists; reference §6.1-§6.3), built as its
fake data lays them out (after its documented path fixes; the ``reference_root`` fixture, tests/conftest.py)
and read from its repository's root."""

import dataclasses
import json
import re

import pytest

from echat.data.check import check_manifest
from echat.data.mixes import read_data_yaml
from echat.data.schema import read_manifest
from echat.data.shards import SHARD_LIST, ShardError, iter_shards, write_shards

from .reference import FAKE, THINK_TASK


def test_the_raw_and_shard_layouts_pass_the_check_from_the_reference_root(reference_root):
    for manifest in (FAKE / "raw" / "data.list", FAKE / "shard" / SHARD_LIST):
        report = check_manifest(manifest, codebook_size=4096)
        assert report.ok, report.render()
        assert report.records == 4 and report.tasks == {THINK_TASK: 4}
        assert report.seconds == pytest.approx(4.0, abs=1e-3)


def test_the_combine_layout_reads_metadata_from_its_jsonl_and_audio_from_the_tar(reference_root):
    listed = FAKE / "combine" / "combines_list.txt"
    strict = check_manifest(listed, codebook_size=4096)
    assert [p.message for p in strict.problems] == [
        "task: missing (give --default-task TASK to read such records as TASK)"] * 4
    report = check_manifest(listed, codebook_size=4096, default_task=THINK_TASK)
    assert report.ok and report.kind == "shards" and report.records == 4
    samples = list(iter_shards(listed, default_task=THINK_TASK))
    assert [s.record.extra["q_txt"] for s in samples] == ["how do I join?"] * 4  # from the JSONL, not the tar
    assert all(s.audio.shape == (16_000,) for s in samples)


def test_combine_lines_mix_with_plain_shards_and_name_what_is_wrong(reference_root, tmp_path):
    tar = reference_root / FAKE / "shard" / "shards_000000000.tar"
    metadata = tmp_path / "meta.jsonl"
    rows = [{"key": "fake_1", "txt": "a", "task": "<TRANSCRIBE>", "extra": {}},
            {"key": "fake_2", "task": "<TRANSCRIBE>", "extra": {}}, "{broken"]
    metadata.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows))
    listed = tmp_path / "data.list"
    listed.write_text(f"{metadata}|{tar}\n-|{tar}\n{tmp_path / 'gone.jsonl'}|{tar}\n")
    problems = []
    records = [s.record for s in iter_shards(listed, problems, codebook_size=4096)]
    assert [(r.key, r.task) for r in records] == [("fake_1", "<TRANSCRIBE>")] + [(f"fake_{i}", THINK_TASK)
                                                                                  for i in range(1, 5)]
    assert sorted(str(p) for p in problems) == sorted([
        f"{metadata}:3: -: malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"{tar}:6: fake_2: txt: missing in {metadata} (required in combine mode)",
        f"{tar}:11: fake_3: no entry with this key in {metadata}",
        f"{tar}:16: fake_4: no entry with this key in {metadata}",
        f"{listed}:3: -: combine JSONL not found: {tmp_path / 'gone.jsonl'}",
    ])


def test_a_data_list_yaml_repeats_subsamples_and_shuffles_with_a_seed(reference_root, tmp_path):
    """Reference §6.4: a whole-number weight repeats a source's tars, a weight in (0, 1) keeps that share."""
    for i in range(4):  # a second source of four tars
        records = [dataclasses.replace(r, key=f"more{i}_{r.key}") for r in read_manifest(FAKE / "raw" / "data.list")]
        write_shards(records, tmp_path / "more" / str(i))
    (tmp_path / "more" / SHARD_LIST).write_text("".join(f"{i}/shards_000000000.tar\n" for i in range(4)))
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"fake:\n  path: ./{FAKE}/shard/{SHARD_LIST}\n  weight: 3\n"
                   f"more:\n  path: {tmp_path / 'more' / SHARD_LIST}\n  weight: 0.5\n")
    entries = read_data_yaml(mix, seed=1)
    tars = [entry.tar.parent.name for entry in entries]
    assert tars.count("shard") == 3 and len(tars) == 5  # the weight-3 source three times
    others = [t for t in tars if t != "shard"]
    assert len(set(others)) == len(others) == 2  # half of the four, each once
    assert read_data_yaml(mix, seed=1) == entries and read_data_yaml(mix, seed=2) != entries
    report = check_manifest(mix, codebook_size=4096)
    assert report.ok and report.records == 4 * 3  # every distinct tar once


@pytest.mark.parametrize("body, message", [
    ("fake:\n  path: x.txt\n  weight: 1.5\n", "fake: weight: 1.5 is neither a whole number"),
    ("fake:\n  weight: 2\n", "fake: expected {path: <list file>, weight: <number>}"),
    ("- a\n- b\n", "expected a mapping name -> {path, weight}"),
])
def test_a_bad_data_list_yaml_names_its_source_and_field(tmp_path, body, message):
    mix = tmp_path / "mix.yaml"
    mix.write_text(body)
    with pytest.raises(ShardError, match=re.escape(message)):
        read_data_yaml(mix)
