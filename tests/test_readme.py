"""README stays true: its layout table names every module of echat/ (and only files that exist), its
command table every echat subcommand, and its two commands are Makefile targets that CI runs."""

import re
from pathlib import Path

from echat.cli import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def layout_paths() -> set[str]:
    """The files the layout table names: ``echat/x.py`` cells, and ``y.py`` names inside a folder's row
    (or after a first cell's file, in the same folder)."""
    named = set()
    for row in _section("Layout").splitlines():
        cells = row.split("|")[1:-1]
        if not row.startswith("| `echat/") or len(cells) < 2:
            continue
        first = re.findall(r"`([^`]+)`", cells[0])
        folder = first[0] if first[0].endswith("/") else first[0].rsplit("/", 1)[0] + "/"
        names = first if not first[0].endswith("/") else re.findall(r"`(\w+\.py)`", cells[1])
        named |= {n if n.startswith("echat/") else folder + n for n in names}
    return named


def test_the_layout_table_names_every_module_and_nothing_else():
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "echat").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    named = layout_paths()
    assert not named - modules, f"named in README but not in echat/: {sorted(named - modules)}"
    assert not modules - named, f"in echat/ but not in README's layout table: {sorted(modules - named)}"


def test_the_command_table_lists_every_subcommand():
    rows = re.findall(r"^\| `echat ([a-z]+(?: [a-z]+)?)", _section("Command line (`echat` or `python -m echat`)"),
                      re.M)
    listed = {" ".join(r.split()[:2]) if r.split()[0] in ("data", "tokens") else r.split()[0] for r in rows}
    assert listed == set(EXAMPLES)


def test_the_two_readme_commands_are_makefile_targets_that_ci_runs():
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    commands = set(re.findall(r"^make (\w+)", _section("Two commands"), re.M))
    assert commands == {"demo", "test"} <= targets
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"
    assert re.search(r"^demo: setup\n\t.*echat demo ", (ROOT / "Makefile").read_text(), re.M)
