"""The reference's fake data (``common_utils/fake_data``: raw list, shard tars, combine lists; reference
§6.1-§6.3), laid out as its repository holds it after its documented path fixes."""

import json
from pathlib import Path

from echat.data.schema import read_manifest
from echat.data.shards import SHARD_LIST, write_shards

from . import write_tone

THINK_TASK = "<S2TCHAT> <TEXT2TOKEN> <THINK>"
FAKE = Path("common_utils") / "fake_data"
REPLY = "你好呀姐妹，想加入专家服务系统呢"  # the opening of the reference's fake reply: its text is Chinese
SPEECH_TOKENS = [2164, 3, 1446, 4082, 1446]  # CosyVoice-300M-25Hz codes, as its records carry (0..4095)


def raw_records(n: int) -> list[dict]:
    """``n`` records shaped like the reference's ``data.list`` (its ten are identical but for the key here)."""
    extra = {"dataset": "fake", "age": "<ADULT>", "gender": "<FEMALE>", "think_str": "a calm adult woman",
             "question": "how do I join?", "speech_token": SPEECH_TOKENS}
    return [{"key": f"fake_{i}", "txt": REPLY, "wav": f"./{FAKE}/raw/wav/random.wav",
             "extra": extra, "tar_path_key": "sex_000000298", "task": THINK_TASK} for i in range(1, n + 1)]


def write_raw(root: Path, records: list[dict]) -> Path:
    """The raw layout under ``root`` (one 1 s wav that every record names); returns the list's path."""
    write_tone(root / FAKE / "raw" / "wav" / "random.wav", 1.0)
    raw = root / FAKE / "raw" / "data.list"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return raw


def write_shard_and_combine(root: Path) -> None:
    """The shard and combine layouts from the raw one; run from ``root``, whose paths the lists use."""
    write_shards(read_manifest(root / FAKE / "raw" / "data.list"), root / FAKE / "shard")
    (root / FAKE / "shard" / SHARD_LIST).write_text(f"./{FAKE}/shard/shards_000000000.tar\n")
    combine = root / FAKE / "combine"
    combine.mkdir()
    entries = [{"key": r["key"], "txt": r["txt"], "tas_tag": r["task"],  # the reference sample's misspelling
                "extra": {**r["extra"], "q_txt": r["extra"]["question"]}} for r in raw_records(4)]
    (combine / "shards_000000000.list").write_text("".join(json.dumps(e) + "\n" for e in entries))
    (combine / "combines_list.txt").write_text(f"./{FAKE}/combine/shards_000000000.list\n")
    (combine / "combines_tar_root.txt").write_text(f"./{FAKE}/shard\n")
