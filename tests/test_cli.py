"""The echat command: every subcommand's --help carries an example that parses; a bad argument or a
failing command is one line on stderr and a non-zero exit."""

import subprocess
import sys

import pytest

from echat.cli import EXAMPLES, build_parser, main

SUBCOMMANDS = ("data mini", "data check", "tokens extract", "train", "eval", "ablate", "demo", "layout", "download",
               "chat")


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echat", *argv], capture_output=True, text=True, timeout=120)


def test_every_subcommand_has_an_example():
    assert set(EXAMPLES) == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_shows_the_example(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command.split(), "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and EXAMPLES[command].splitlines()[0] in out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_example_line_parses_to_its_command(command):
    for line in EXAMPLES[command].splitlines():
        words = line.split(" > ")[0].split()  # a shell redirection is not an argument
        assert words[0] == "echat", line
        args = build_parser().parse_args(words[1:])
        assert args.command == command.split()[0] and callable(args.func)


@pytest.mark.parametrize("argv, message", [
    (("train", "--data", "D"), "the following arguments are required: --out"),
    (("train", "--data", "D", "--out", "R", "--recipe", "huge"), "invalid choice: 'huge'"),
    (("eval", "--run", "R", "--data", "D", "--think", "loud"), "invalid ThinkMode value: 'loud'"),
    (("data", "mini", "--out", "D", "--seed", "x"), "invalid int value: 'x'"),
    (("nope",), "invalid choice: 'nope'"),
])
def test_a_bad_argument_is_one_line_and_exit_2(argv, message):
    out = _run(*argv)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and message in out.stderr


def test_a_failing_command_is_one_line_and_exit_1(tmp_path):
    out = _run("eval", "--run", str(tmp_path / "missing"), "--data", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.strip() == f"echat: error: {tmp_path / 'missing'}: no such run or checkpoint folder"


@pytest.mark.parametrize("command", [("data", "mini", "--size", "smoke"), ("train", "--recipe", "smoke", "--data", "D"),
                                     ("demo", "--preset", "smoke")])
def test_an_out_that_is_a_file_is_one_line_and_exit_1(tmp_path, command):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    out = _run(*command, "--out", str(taken))
    assert out.returncode == 1
    assert out.stderr.strip() == f"echat: error: --out {taken}: is a file, not a folder"
    assert taken.read_text() == "mine"
