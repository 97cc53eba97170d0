"""Downloads of the released files through a fake hub (no network), their checks, and the safe tar extraction.

Released files are written as sparse files of their published size (no disk used); the CosyVoice tar is a
small real tar padded with zeros to its published size, which tarfile reads as the same archive.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from huggingface_hub.errors import HTTPError, LocalEntryNotFoundError

from echat import hub
from echat.cli import main

PUBLISHED = {"tag_think_final.pt": 6_990_000_000, "language_think_final.pt": 6_991_234_567,
             "CosyVoice-300M-25Hz.tar": 3_760_000_000, "prompt.wav": 893_702}


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space."""
    with open(path, "wb") as out:
        out.truncate(size)
    return path


def cosyvoice_tar(path: Path, top: str = "CosyVoice-300M-25Hz/", files=("flow.pt", "hift.pt", "cosyvoice.yaml"),
                  size: int | None = PUBLISHED["CosyVoice-300M-25Hz.tar"]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name in files:
            add_bytes(tar, top + name, name.encode())
    if size is not None:
        with open(path, "r+b") as out:
            out.truncate(size)  # zero blocks after the end marker: the same archive to tarfile
    return path


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


class FakeHub:
    """``hf_hub_download`` of the released repository, writing each file at its published size."""

    def __init__(self, sizes=None):
        self.calls, self.sizes = [], dict(PUBLISHED, **(sizes or {}))

    def __call__(self, repo_id, filename, *, local_dir):
        assert repo_id == hub.REPO_ID
        self.calls.append((filename, Path(local_dir)))
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        path = Path(local_dir) / filename
        if filename.endswith(".tar"):
            return str(cosyvoice_tar(path, size=self.sizes[filename]))
        return str(sparse(path, self.sizes[filename]))


def no_network(*args, **kwargs):
    raise AssertionError("the network was used")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "home"


@pytest.fixture
def fake_hub(monkeypatch, home):
    fake = FakeHub()
    monkeypatch.setattr(hub, "hf_hub_download", fake)
    return fake


# ----------------------------------------------------------------------------------------------
# Names, sizes, ECHAT_HOME
# ----------------------------------------------------------------------------------------------


def test_select_keeps_the_release_order_and_refuses_unknown_names():
    assert [r.filename for r in hub.select(["prompt", "tag"])] == ["tag_think_final.pt", "prompt.wav"]
    assert [r.name for r in hub.select()] == ["tag", "language", "cosyvoice", "prompt"]
    with pytest.raises(ValueError, match="unknown file 'tagg'; choose from tag, language, cosyvoice, prompt"):
        hub.select(["tagg"])


def test_published_sizes_are_ranges_that_hold_the_real_byte_counts():
    assert hub.RELEASED["tag"].size_range() == (6_985_000_000, 6_995_000_000)
    low, high = hub.RELEASED["prompt"].size_range()
    assert (low, high) == (893_500, 894_500) and low <= 893_702 < high  # the reference's tts/assert/prompt.wav


def test_echat_home_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHAT_HOME", str(tmp_path / "a"))
    assert hub.release_dir() == tmp_path / "a" / "OSUM-EChat"
    monkeypatch.setenv("ECHAT_HOME", str(tmp_path / "b"))
    assert hub.release_dir() == tmp_path / "b" / "OSUM-EChat"
    monkeypatch.delenv("ECHAT_HOME")
    assert hub.release_dir() == Path.home() / ".cache" / "echat" / "OSUM-EChat"


# ----------------------------------------------------------------------------------------------
# Downloads through the fake hub
# ----------------------------------------------------------------------------------------------


def test_fetch_downloads_into_echat_home(fake_hub, home):
    found = hub.fetch(["prompt", "tag"])
    assert found == {"tag": home / "OSUM-EChat" / "tag_think_final.pt", "prompt": home / "OSUM-EChat" / "prompt.wav"}
    assert fake_hub.calls == [("tag_think_final.pt", home / "OSUM-EChat"), ("prompt.wav", home / "OSUM-EChat")]


def test_fetch_unpacks_the_cosyvoice_tar_once(fake_hub, home, monkeypatch):
    folder = hub.fetch(["cosyvoice"])["cosyvoice"]
    assert folder == home / "OSUM-EChat" / "CosyVoice-300M-25Hz"
    assert (folder / "flow.pt").read_bytes() == b"flow.pt" and (folder / "hift.pt").is_file()
    assert not list((home / "OSUM-EChat").glob(".*partial"))
    monkeypatch.setattr(hub, "safe_extract", no_network)  # a second fetch reuses the unpacked folder
    assert hub.fetch(["cosyvoice"])["cosyvoice"] == folder
    assert hub.locate("cosyvoice") == folder


def test_a_truncated_download_is_refused_naming_its_size(monkeypatch, home):
    monkeypatch.setattr(hub, "hf_hub_download", FakeHub({"prompt.wav": 10}))
    with pytest.raises(hub.HubFileError, match=r"prompt.wav: 10 bytes, not the 894 kB on the hub"):
        hub.fetch(["prompt"])


@pytest.mark.parametrize("offline, error, why", [
    (True, LocalEntryNotFoundError("not in the cache"), "the hub is offline (HF_HUB_OFFLINE)"),
    (False, HTTPError("Name or service not known"), "the hub could not be reached or the download failed (HTTPError)"),
])
def test_an_unreachable_hub_is_one_error_naming_the_file_and_its_folder(monkeypatch, home, offline, error, why):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(hub, "hf_hub_download", failing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    with pytest.raises(hub.HubFileError) as caught:
        hub.fetch(["tag"])
    message = str(caught.value)
    assert message.startswith(f"tag_think_final.pt: {why}; expected in {home / 'OSUM-EChat'} (6.99 GB)")
    assert hub.RELEASED["tag"].url in message and "\n" not in message


def test_local_dir_checks_presence_and_sizes_without_the_network(monkeypatch, home, tmp_path):
    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    monkeypatch.setattr(hub, "HfApi", no_network)
    local = tmp_path / "elsewhere"
    local.mkdir()
    sparse(local / "tag_think_final.pt", PUBLISHED["tag_think_final.pt"])
    cosyvoice_tar(local / "CosyVoice-300M-25Hz.tar", top="", files=("flow.pt", "hift.pt"))  # files at the top
    found = hub.fetch(["tag", "cosyvoice"], local_dir=local)
    assert found == {"tag": local / "tag_think_final.pt", "cosyvoice": local / "CosyVoice-300M-25Hz"}
    assert (found["cosyvoice"] / "hift.pt").read_bytes() == b"hift.pt"
    with pytest.raises(hub.HubFileError, match=f"language_think_final.pt: not found; expected in {local} "):
        hub.fetch(["language"], local_dir=local)
    sparse(local / "prompt.wav", 1000)
    with pytest.raises(hub.HubFileError, match="prompt.wav: 1,000 bytes, not the 894 kB"):
        hub.fetch(["prompt"], local_dir=local)


def test_locate_never_downloads_and_says_how_to_get_a_missing_file(monkeypatch, home):
    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    with pytest.raises(hub.HubFileError, match="Run `echat download language` where the hub is reachable"):
        hub.locate("language")
    sparse((home / "OSUM-EChat").mkdir(parents=True) or home / "OSUM-EChat" / "prompt.wav", 893_702)
    assert hub.locate("prompt") == home / "OSUM-EChat" / "prompt.wav"
    with pytest.raises(ValueError, match="locate names one file: tag, language, cosyvoice, prompt"):
        hub.locate("all")


def test_a_tar_without_the_token2wav_files_is_refused_and_leaves_nothing(tmp_path):
    archive = cosyvoice_tar(tmp_path / "other.tar", files=("llm.pt",), size=None)
    with pytest.raises(hub.HubFileError, match="no folder with flow.pt and hift.pt inside"):
        hub.unpack_cosyvoice(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------


class FakeApi:
    asked: list = []

    def get_paths_info(self, repo_id, paths):
        assert repo_id == hub.REPO_ID
        FakeApi.asked.append(list(paths))
        return [type("RepoFile", (), {"path": p, "size": PUBLISHED[p]}) for p in paths]


def test_dry_run_online_lists_the_hubs_byte_counts_and_downloads_nothing(monkeypatch, home):
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    text = hub.render_plan(*hub.plan(["language", "prompt"]))
    lines = text.splitlines()
    assert FakeApi.asked[-1] == ["language_think_final.pt", "prompt.wav"]
    assert "6,991,234,567 bytes" in lines[0] and "missing" in lines[0]
    assert str(home / "OSUM-EChat" / "prompt.wav") in lines[1] and "893,702 bytes" in lines[1]
    assert lines[2] == "sizes from the hub (ASLP-lab/OSUM-EChat); nothing was downloaded"
    assert not (home / "OSUM-EChat").exists()


def test_dry_run_offline_names_each_file_and_where_it_goes_without_asking(monkeypatch, home):
    monkeypatch.setattr(hub, "HfApi", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sparse((home / "OSUM-EChat").mkdir(parents=True) or home / "OSUM-EChat" / "prompt.wav", 893_702)
    lines = hub.render_plan(*hub.plan()).splitlines()
    assert len(lines) == 5
    assert "tag_think_final.pt" in lines[0] and "6.99 GB" in lines[0] and "missing" in lines[0]
    assert "894 kB" in lines[3] and "present" in lines[3]
    assert "the hub was not asked (HF_HUB_OFFLINE is set)" in lines[4]


def test_dry_run_with_an_unreachable_hub_falls_back_to_the_published_sizes(monkeypatch, home):
    class Unreachable:
        def get_paths_info(self, *args, **kwargs):
            raise HTTPError("Name or service not known")

    monkeypatch.setattr(hub, "HfApi", Unreachable)
    planned, note = hub.plan(["cosyvoice"])
    assert planned[0].size == "3.76 GB" and "could not be reached (HTTPError)" in note


# ----------------------------------------------------------------------------------------------
# Safe tar extraction (crafted archives)
# ----------------------------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


UNSAFE = {
    "absolute": (_member("/tmp/evil.txt"), "/tmp/evil.txt: absolute member name refused"),
    "dotdot": (_member("../evil.txt"), "../evil.txt: member name with '..' refused"),
    "inner dotdot": (_member("CosyVoice-300M-25Hz/../../evil.txt"), "member name with '..' refused"),
    "symlink": (_member("flow.pt", tarfile.SYMTYPE, "/etc/passwd"), "flow.pt: link member refused (to /etc/passwd)"),
    "hardlink": (_member("hift.pt", tarfile.LNKTYPE, "/etc/passwd"), "hift.pt: link member refused"),
    "fifo": (_member("pipe", tarfile.FIFOTYPE), "pipe: device or fifo member refused"),
    "char device": (_member("null", tarfile.CHRTYPE), "null: device or fifo member refused"),
    "block device": (_member("disk", tarfile.BLKTYPE), "disk: device or fifo member refused"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_an_unsafe_member_is_refused_by_name_before_anything_is_written(tmp_path, case):
    member, message = UNSAFE[case]
    archive = tmp_path / f"{case}.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "ok/first.txt", b"written only if the archive is safe")
        tar.addfile(member, io.BytesIO(b"") if member.isfile() else None)
    with pytest.raises(hub.UnsafeArchiveError) as caught:
        hub.safe_extract(archive, tmp_path / "out")
    assert str(caught.value).startswith(f"{archive}: ") and message in str(caught.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_a_safe_tar_is_unpacked(tmp_path):
    archive = cosyvoice_tar(tmp_path / "cv.tar", size=None)
    out = hub.safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in (out / "CosyVoice-300M-25Hz").iterdir()) == ["cosyvoice.yaml", "flow.pt", "hift.pt"]


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="this Python's tarfile has no 'data' filter")
def test_pythons_data_filter_is_applied_too(tmp_path):
    archive = tmp_path / "modes.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "run.sh", b"#!/bin/sh\n", mode=0o6777)  # setuid, setgid, writable by all
    mode = stat.S_IMODE((hub.safe_extract(archive, tmp_path / "out") / "run.sh").stat().st_mode)
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH)


# ----------------------------------------------------------------------------------------------
# echat download
# ----------------------------------------------------------------------------------------------


def test_cli_downloads_and_prints_each_path(fake_hub, home, capsys):
    assert main(["download", "prompt", "cosyvoice"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"cosyvoice: {home / 'OSUM-EChat' / 'CosyVoice-300M-25Hz'}",
                   f"prompt: {home / 'OSUM-EChat' / 'prompt.wav'}"]


def test_cli_dry_run_offline_lists_every_file(monkeypatch, home, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    assert main(["download", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PUBLISHED) and "nothing was downloaded" in out


def _run(*argv: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echat", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_cli_offline_missing_file_is_one_line_and_exit_1(tmp_path):
    out = _run("download", "tag", env={"ECHAT_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"echat: error: tag_think_final.pt: the hub is offline (HF_HUB_OFFLINE); "
                                 f"expected in {tmp_path / 'OSUM-EChat'} (6.99 GB)")
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_unknown_file_is_one_line_and_exit_1(tmp_path):
    out = _run("download", "weights", env={"ECHAT_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1
    assert out.stderr.strip() == ("echat: error: unknown file 'weights'; choose from tag, language, cosyvoice, "
                                  "prompt or all")


def test_cli_unsafe_tar_in_local_dir_is_one_line_and_exit_1(tmp_path):
    archive = tmp_path / "CosyVoice-300M-25Hz.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(_member("../flow.pt", tarfile.SYMTYPE, "/etc/passwd"))
    with open(archive, "r+b") as out:
        out.truncate(PUBLISHED["CosyVoice-300M-25Hz.tar"])
    out = _run("download", "cosyvoice", "--local-dir", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1
    assert out.stderr.strip() == f"echat: error: {archive}: ../flow.pt: member name with '..' refused"
