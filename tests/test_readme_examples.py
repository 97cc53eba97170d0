"""README's examples run, so that README cannot go stale: its `echat` shell lines in a fresh folder, in order
(the smoke preset), then its Python blocks there (the mini preset), with `data/` of this checkout beside them.
`make` lines are checked against the Makefile by tests/test_readme.py; benchmark lines name existing scripts."""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echat.cli import QUICK_START

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)
# The subprocesses import this checkout's echat, wherever the editable install points.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
# The released checkpoint is 7 GB and wants a GPU: the full-world block loads a smoke-preset export of the same
# layout instead, written under the same name; these are the only words of the block that change.
FULL_WORLD_STANDIN = {'device="cuda"': 'device="cpu", config=preset("smoke")'}
WRITE_STANDIN = """
from echat import EChat
from echat.config import preset
from echat.models.checkpoint import save_reference_checkpoint
save_reference_checkpoint(EChat.from_preset("smoke"), "tag_think_final.pt")
"""


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def shell_commands() -> list[list[str]]:
    """Every command line of README's bash blocks, as words (comments dropped)."""
    return [words for block in blocks("bash") for line in block.splitlines()
            if (words := shlex.split(line, comments=True))]


def echat_commands() -> list[list[str]]:
    return [words for words in shell_commands() if words[0] == "echat"]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)


def test_every_shell_line_is_an_echat_command_a_make_target_or_a_benchmark():
    for words in shell_commands():
        if words[0] in ("echat", "make"):
            continue
        assert words[0] == ".venv/bin/python" and words[1].startswith("benchmarks/"), words
        assert (ROOT / words[1]).is_file(), f"README runs {words[1]}, which does not exist"


def test_the_first_run_is_what_echat_help_shows():
    assert [shlex.join(words) for words in echat_commands()] == list(QUICK_START)
    shown = subprocess.run([sys.executable, "-m", "echat", "--help"], capture_output=True, text=True, env=ENV)
    assert shown.returncode == 0 and all(command in shown.stdout for command in QUICK_START), shown.stdout


def test_the_python_example_names_files_that_exist():
    paths = re.findall(r'"(data/[^"]+)"', blocks("python")[0])
    assert paths and all((ROOT / p).is_file() for p in paths), paths


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A fresh folder where README's shell lines have run, in order, with this checkout's ``data/`` beside."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "data").symlink_to(ROOT / "data")
    for words in echat_commands():
        done = subprocess.run([sys.executable, "-m", "echat", *words[1:]], cwd=folder, env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(words)}:\n{done.stderr[-2000:]}"
    return folder


def test_the_shell_lines_write_the_run_folders_the_python_examples_name(first_run):
    named = {path for block in blocks("python") for path in re.findall(r'"(runs/quick/[^"]+)"', block)}
    assert named, "README's Python examples name no folder of the quick start"
    for path in named:
        folder = first_run / path
        written = [folder / "model.safetensors", folder / "final" / "model.safetensors", folder / "corpus.json"]
        assert any(f.is_file() for f in written), f"README names {path}; the commands did not write that run or corpus"


def test_the_app_example_builds_the_app_from_the_quick_start(first_run):
    block = next(b for b in blocks("python") if "echat.app.show" in b)
    done = run_python(block + "assert app.widget is not None and app.controller.model is not None\nprint('app')\n",
                      first_run)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("app")


def test_the_python_example_runs_in_seconds_on_the_mini_preset(first_run):
    start = time.perf_counter()
    done = run_python(blocks("python")[0], first_run)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "the example prints its result"
    assert seconds < 120, f"README's Python example took {seconds:.0f} s (denormals back?)"


def test_the_full_world_example_loads_a_reference_layout_file(first_run):
    block = next(b for b in blocks("python") if "from_reference_checkpoint" in b)
    for words, standin in FULL_WORLD_STANDIN.items():
        assert words in block
        block = block.replace(words, standin)
    done = run_python(WRITE_STANDIN + "from echat import EChat\n" + block + "assert real.config.llm.n_layers\n",
                      first_run)
    assert done.returncode == 0, done.stderr[-2000:]
