"""Packaging stays consistent: environment.yml mirrors pyproject.toml, the Makefile pins the same torch."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _env_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return [p for p in pip if not p.startswith("-e")]


def _makefile_torch() -> str:
    return re.search(r"^TORCH_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_environment_yml_lists_exactly_the_pyproject_requirements():
    project = _pyproject()
    extras = project["optional-dependencies"]
    wanted = {str(Requirement(r)) for r in project["dependencies"] + extras["dev"] + extras["eval"]
              if Requirement(r).name != "torch"}
    listed = {str(Requirement(r)) for r in _env_pip() if Requirement(r).name != "torch"}
    assert listed == wanted


def test_torch_pin_is_the_same_everywhere_and_satisfies_pyproject():
    pin = _makefile_torch()
    env_torch = [Requirement(r) for r in _env_pip() if Requirement(r).name == "torch"]
    assert [str(r.specifier) for r in env_torch] == [f"=={pin}"]
    declared = next(Requirement(r) for r in _pyproject()["dependencies"] if Requirement(r).name == "torch")
    assert declared.specifier.contains(pin)


def test_environment_yml_python_is_allowed_by_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(_pyproject()["requires-python"]).contains(python.split("=")[1])


def test_console_script_and_module_entry_point_show_help():
    for cmd in (["echat", "--help"], [sys.executable, "-m", "echat", "--help"]):
        exe = Path(sys.executable).parent / "echat" if cmd[0] == "echat" else None
        out = subprocess.run([str(exe), "--help"] if exe else cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "data" in out.stdout and "layout" in out.stdout


def test_make_setup_installs_every_extra():
    extras = set(_pyproject()["optional-dependencies"])
    installed = re.search(r'-e "\.\[([^\]]*)\]"', (ROOT / "Makefile").read_text()).group(1)
    assert set(installed.split(",")) == extras


def test_make_test_installs_chromium_for_the_browser_tests_first():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bbrowser\b", makefile, re.M), "make test must run the browser target"
    recipe = re.search(r"^browser:\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "command -v chromium" in recipe and "apt-get install -y -qq chromium" in recipe
    assert "playwright" in " ".join(_pyproject()["optional-dependencies"]["dev"])
