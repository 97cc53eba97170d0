"""The released OSUM-EChat files: download, check, locate; and the safe extraction of the CosyVoice tar.

Design choices:
- Where the names come from. The Hugging Face repository ``ASLP-lab/OSUM-EChat`` and its four released files
  (``tag_think_final.pt`` 6.99 GB, ``language_think_final.pt`` 6.99 GB, ``CosyVoice-300M-25Hz.tar`` 3.76 GB,
  ``prompt.wav`` 894 kB) were read from the hub's tree page https://huggingface.co/ASLP-lab/OSUM-EChat/tree/main,
  as recorded in the reference note (``../shared/reference/osum_echat_reference.md`` §2.1). The folder name
  ``CosyVoice-300M-25Hz`` is the one the reference's ``infer_runtime.py`` loads (``cosyvoice_model_path``,
  §8.4), and ``flow.pt`` / ``hift.pt`` are the files the token2wav loads from it (§3).
- Everything lands in ``$ECHAT_HOME/OSUM-EChat/`` (``ECHAT_HOME`` read at each call, default
  ``~/.cache/echat``) through ``hf_hub_download(local_dir=...)``, which resumes an interrupted download and
  draws a tqdm progress bar.
- Sizes. The hub's exact byte counts are asked for (``HfApi.get_paths_info``) only by ``--dry-run``; a file on
  disk must round to the size the tree page shows (3 significant figures, decimal units), so that a truncated
  file is caught offline too, without hashing 7 GB.
- ``--local-dir DIR`` (files fetched elsewhere) never touches the network: presence and sizes only.
- One exception for a file that is missing, truncated or unreachable: :class:`HubFileError` (a
  ``FileNotFoundError``), naming the file, the folder it is expected in and where to get it.
- The tar is checked member by member before anything is written: absolute names, ``..`` parts, symbolic
  and hard links, devices and fifos are refused by name (:class:`UnsafeArchiveError`); Python's own
  ``tarfile`` ``'data'`` filter (3.11.4+, 3.12) is applied as well where this Python has it. The tar is
  unpacked into a hidden sibling folder and renamed into place once complete, so a half-unpacked folder is
  never taken for a whole one.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, HTTPError

REPO_ID = "ASLP-lab/OSUM-EChat"
RELEASE_FOLDER = "OSUM-EChat"  # below $ECHAT_HOME
COSYVOICE_DIR = "CosyVoice-300M-25Hz"
COSYVOICE_FILES = ("flow.pt", "hift.pt")  # what the token2wav loads; the folder also holds campplus.onnx etc.
ALL = "all"
_OFFLINE_VALUES = ("1", "true", "yes", "on")
# What a failed hub call raises: OfflineModeIsEnabled and LocalEntryNotFoundError are OSErrors, a missing file an
# EntryNotFoundError, and an unreachable host during get_paths_info the HTTP client's own HTTPError.
_HUB_FAILURES = (OSError, EntryNotFoundError, HTTPError)
_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}


@dataclass(frozen=True)
class Released:
    """One released file: its short ``name`` (``echat download NAME``), hub ``filename``, the size the hub's
    tree page ``shows`` and what it is."""

    name: str
    filename: str
    shows: str
    what: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{REPO_ID}/resolve/main/{self.filename}"

    def size_range(self) -> tuple[int, int]:
        """Byte counts ``[low, high)`` that the tree page shows as :attr:`shows` (e.g. ``6.99 GB``)."""
        number, unit = self.shows.split()
        decimals = len(number.partition(".")[2])
        half = 0.5 * 10**-decimals
        return round((float(number) - half) * _UNITS[unit]), round((float(number) + half) * _UNITS[unit])


RELEASED = {r.name: r for r in (
    Released("tag", "tag_think_final.pt", "6.99 GB", "OSUM-EChat checkpoint with the tag think (bf16 state dict)"),
    Released("language", "language_think_final.pt", "6.99 GB",
             "OSUM-EChat checkpoint with the language think (bf16 state dict)"),
    Released("cosyvoice", "CosyVoice-300M-25Hz.tar", "3.76 GB",
             f"CosyVoice-300M-25Hz token2wav, unpacked into {COSYVOICE_DIR}/"),
    Released("prompt", "prompt.wav", "894 kB", "the reference's default prompt voice"),
)}


class HubFileError(FileNotFoundError):
    """A released file that is missing, truncated or cannot be downloaded; the message says where it goes."""


class UnsafeArchiveError(ValueError):
    """A tar member that could write outside its folder, or is a link or a device; the message names it."""


def echat_home() -> Path:
    """Cache root: ``$ECHAT_HOME``, default ``~/.cache/echat`` (read now, not at import)."""
    return Path(os.environ.get("ECHAT_HOME") or Path.home() / ".cache" / "echat").expanduser()


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set (now or when the hub was imported)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return hf_constants.HF_HUB_OFFLINE or any(os.environ.get(n, "").lower() in _OFFLINE_VALUES for n in names)


def release_dir(home: str | Path | None = None) -> Path:
    """The folder the released files are downloaded into: ``$ECHAT_HOME/OSUM-EChat``."""
    return Path(home or echat_home()) / RELEASE_FOLDER


def select(names: list[str] | tuple[str, ...] = (ALL,)) -> list[Released]:
    """The released files named (``all`` for every one), in the order of :data:`RELEASED`."""
    unknown = sorted(set(names) - set(RELEASED) - {ALL})
    if unknown:
        raise ValueError(f"unknown file {unknown[0]!r}; choose from {', '.join(RELEASED)} or {ALL}")
    return [r for r in RELEASED.values() if ALL in names or r.name in names]


def _missing(item: Released, folder: Path, why: str) -> HubFileError:
    return HubFileError(f"{item.filename}: {why}; expected in {folder} ({item.shows}). Run `echat download "
                        f"{item.name}` where the hub is reachable, or fetch {item.url} elsewhere and put it in that "
                        f"folder (then `echat download {item.name} --local-dir {folder}`)")


def check_file(item: Released, folder: str | Path) -> Path:
    """``folder/filename`` when it is there and has the published size, else :class:`HubFileError`."""
    folder = Path(folder)
    path = folder / item.filename
    if not path.is_file():
        raise _missing(item, folder, "not found")
    low, high = item.size_range()
    size = path.stat().st_size
    if not low <= size < high:
        raise _missing(item, folder, f"{size:,} bytes, not the {item.shows} on the hub (an interrupted download?)")
    return path


def download_file(item: Released, folder: str | Path) -> Path:
    """Download ``item`` into ``folder`` (resumed if interrupted, with a progress bar) and check its size."""
    folder = Path(folder)
    try:
        hf_hub_download(REPO_ID, item.filename, local_dir=folder)
    except _HUB_FAILURES as err:
        why = ("the hub is offline (HF_HUB_OFFLINE)" if hub_offline()
               else f"the hub could not be reached or the download failed ({type(err).__name__})")
        raise _missing(item, folder, why) from None
    return check_file(item, folder)


def fetch(names=(ALL,), local_dir: str | Path | None = None, home: str | Path | None = None) -> dict[str, Path]:
    """Name -> path of each released file asked for, downloaded into ``$ECHAT_HOME/OSUM-EChat`` or, with
    ``local_dir``, checked there without the network. ``cosyvoice`` maps to its unpacked folder."""
    folder = Path(local_dir) if local_dir is not None else release_dir(home)
    found = {}
    for item in select(list(names)):
        path = check_file(item, folder) if local_dir is not None else download_file(item, folder)
        found[item.name] = unpack_cosyvoice(path, folder) if item.name == "cosyvoice" else path
    return found


def locate(name: str, home: str | Path | None = None) -> Path:
    """The path of a released file already downloaded (``cosyvoice``: its unpacked folder), never downloading:
    :class:`HubFileError` saying how to get it otherwise."""
    if name == ALL:
        raise ValueError(f"locate names one file: {', '.join(RELEASED)}")
    (item,) = select([name])
    folder = release_dir(home)
    if item.name == "cosyvoice" and _is_cosyvoice_dir(folder / COSYVOICE_DIR):
        return folder / COSYVOICE_DIR
    path = check_file(item, folder)
    return unpack_cosyvoice(path, folder) if item.name == "cosyvoice" else path


# ----------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    """One line of a dry run: the file, its size (exact bytes from the hub, else as the tree page shows it),
    where it goes and whether it is there already."""

    item: Released
    size: str
    destination: Path
    present: bool


def plan(names=(ALL,), local_dir: str | Path | None = None,
         home: str | Path | None = None) -> tuple[list[PlannedFile], str]:
    """The files ``fetch`` would bring, and a note on where their sizes come from; asks the hub only when
    online and no ``local_dir`` is given."""
    items = select(list(names))
    folder = Path(local_dir) if local_dir is not None else release_dir(home)
    sizes, note = {}, "sizes as the hub's tree page shows them"
    if local_dir is not None:
        note += " (--local-dir: the hub is not asked)"
    elif hub_offline():
        note += "; the hub was not asked (HF_HUB_OFFLINE is set)"
    else:
        try:
            infos = HfApi().get_paths_info(REPO_ID, [i.filename for i in items])
            sizes, note = {i.path: f"{i.size:,} bytes" for i in infos}, f"sizes from the hub ({REPO_ID})"
        except _HUB_FAILURES as err:
            note += f"; the hub could not be reached ({type(err).__name__})"
    return [PlannedFile(i, sizes.get(i.filename, i.shows), folder / i.filename, _present(i, folder))
            for i in items], note


def _present(item: Released, folder: Path) -> bool:
    try:
        check_file(item, folder)
    except HubFileError:
        return False
    return True


def render_plan(planned: list[PlannedFile], note: str) -> str:
    """A dry run as text: one line per file, then the note."""
    lines = [f"{p.item.filename:<26} {p.size:>20}  {'present' if p.present else 'missing':<7}  {p.destination}"
             f"  ({p.item.what})" for p in planned]
    return "\n".join(lines + [note + "; nothing was downloaded"])


# ----------------------------------------------------------------------------------------------
# Safe tar extraction
# ----------------------------------------------------------------------------------------------


def check_member(member: tarfile.TarInfo) -> None:
    """:class:`UnsafeArchiveError` naming ``member`` when it is not a plain file or folder inside the archive."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(f"{name}: absolute member name refused")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeArchiveError(f"{name}: member name with '..' refused")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{name}: link member refused (to {member.linkname})")
    if member.isdev():
        raise UnsafeArchiveError(f"{name}: device or fifo member refused")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{name}: member of type {member.type!r} refused (only files and folders)")


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Unpack ``archive`` into ``dest`` after checking every member (:func:`check_member`); nothing is written
    when one is refused. Returns ``dest``."""
    dest = Path(dest)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            try:
                check_member(member)
            except UnsafeArchiveError as err:
                raise UnsafeArchiveError(f"{archive}: {err}") from None
        dest.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python before 3.11.4: the checks above are the whole defence
            tar.extractall(dest, members=members)
    return dest


def _is_cosyvoice_dir(folder: Path) -> bool:
    return all((folder / name).is_file() for name in COSYVOICE_FILES)


def unpack_cosyvoice(archive: str | Path, folder: str | Path) -> Path:
    """``folder/CosyVoice-300M-25Hz`` unpacked from ``archive`` (once: an unpacked folder is reused). The tar's
    files may sit at its top or in one folder; the folder holding ``flow.pt`` and ``hift.pt`` is kept."""
    target = Path(folder) / COSYVOICE_DIR
    if _is_cosyvoice_dir(target):
        return target
    partial = Path(folder) / f".{COSYVOICE_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    safe_extract(archive, partial)
    found = [p for p in (partial, *sorted(partial.iterdir())) if p.is_dir() and _is_cosyvoice_dir(p)]
    if not found:
        shutil.rmtree(partial, ignore_errors=True)
        raise HubFileError(f"{archive}: no folder with {' and '.join(COSYVOICE_FILES)} inside (not the "
                           f"CosyVoice-300M-25Hz tar?)")
    shutil.rmtree(target, ignore_errors=True)
    found[0].rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target
