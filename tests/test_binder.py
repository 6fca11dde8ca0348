"""Binder builds `binder/` with repo2docker: the workbook's pins, a CPU torch, the workbook itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from utils.build import ROOT

BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def requirement_lines(path: Path) -> list[str]:
    """The lines of a requirements file, comments and blanks dropped."""
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pins(path: Path) -> dict[str, str]:
    """{canonical name: exact version} of a requirements file, following `-r` as pip does."""
    found = {}
    for line in requirement_lines(path):
        if line.startswith(("-r ", "--requirement ")):
            found.update(pins((path.parent / line.split(maxsplit=1)[1]).resolve()))
        elif not line.startswith("-"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line!r} is not an exact pin"
            found[canonicalize_name(requirement.name)] = specifier.version  # a later pin of a name wins
    return found


def test_binder_pins_the_versions_of_requirements_txt_with_a_cpu_torch():
    binder, tested = pins(BINDER / "requirements.txt"), pins(ROOT / "requirements.txt")
    assert set(binder) == set(tested)
    assert binder["torch"] == tested["torch"].split("+")[0] + "+cpu"
    assert {name: version for name, version in binder.items() if name != "torch"} == \
        {name: version for name, version in tested.items() if name != "torch"}


def test_binder_installs_torch_from_the_cpu_index_under_the_project_constraints():
    lines = requirement_lines(BINDER / "requirements.txt")
    assert f"--extra-index-url {CPU_INDEX}" in lines
    constraints = [line.split(maxsplit=1)[1] for line in lines if line.startswith("-c ")]
    assert [(BINDER / c).resolve() for c in constraints] == [ROOT / "constraints.txt"]


def test_binder_python_is_one_the_project_supports():
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime
    requires = re.search(r'^requires-python = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert SpecifierSet(requires).contains(runtime.removeprefix("python-") + ".0")


def test_postbuild_installs_the_workbook_without_touching_the_pins():
    script = BINDER / "postBuild"
    assert os.access(script, os.X_OK), "repo2docker runs postBuild only when it is executable"
    commands = [line for line in script.read_text(encoding="utf-8").splitlines() if "pip install" in line]
    assert commands and all("--no-deps" in line and line.rstrip().endswith(" -e .") for line in commands)


def test_pip_reads_the_binder_requirements_and_the_tested_environment_satisfies_them():
    """pip itself parses binder/requirements.txt (-r, -c, both torch pins) and, with no index at all,
    finds every pin already met by this environment: nothing to download, nothing in conflict."""
    if not version("torch").endswith("+cpu"):
        pytest.skip(f"this environment has torch {version('torch')}, not the CPU build Binder pins")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
         "-r", str(BINDER / "requirements.txt")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Would install" not in result.stdout, result.stdout
