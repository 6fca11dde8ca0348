"""Colab: every chapter's first code cell installs the workbook there, and does nothing elsewhere.

The last test plays Colab for real: a throwaway environment that already has torch and the other
big packages (as Colab does), a fake `google.colab` module, and a git clone of this working tree as
the repository. It runs the first cell of Chapter 00 as Colab would, with no package index at all,
so pip can only install the workbook itself, and checks that `utils` then imports from the
installed package (with the model organism) and that torch is the one that was there before.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from utils.build import ROOT, chapter_sources
from utils.launch import (DISTRIBUTION, REPOSITORY, badges_markdown, binder_url, colab_setup_code, colab_url,
                          install_requirement)


def generated_notebooks() -> list[str]:
    return [f"{folder}/{source.stem}.ipynb" for source in chapter_sources() for folder in ("chapters", "solutions")]


def cells(notebook: str) -> list[dict]:
    return json.loads((ROOT / notebook).read_text(encoding="utf-8"))["cells"]


def first_code_cell(notebook: str) -> str:
    return "".join(next(cell for cell in cells(notebook) if cell["cell_type"] == "code")["source"])


@pytest.mark.parametrize("notebook", generated_notebooks())
def test_every_notebook_opens_with_its_badges_and_the_colab_step(notebook):
    first = cells(notebook)[0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith(badges_markdown(notebook))
    assert colab_url(notebook) in badges_markdown(notebook) and binder_url(notebook) in badges_markdown(notebook)
    assert first_code_cell(notebook).startswith(colab_setup_code() + "\n")


def test_badges_and_install_come_from_the_one_configured_repository():
    assert colab_url("chapters/00_orientation.ipynb") == (
        f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}"
        "/blob/main/chapters/00_orientation.ipynb")
    assert binder_url().startswith(f"https://mybinder.org/v2/gh/{REPOSITORY.removeprefix('https://github.com/')}/")
    assert install_requirement() == f"{DISTRIBUTION} @ git+{REPOSITORY}@main"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert badges_markdown() in readme, "README badges are stale: run `make build`"


def test_the_colab_step_needs_nothing_but_the_standard_library():
    code = colab_setup_code()
    imported = {word.strip(",") for line in code.splitlines() if line.startswith("import ")
                for word in line.split()[1:]}
    assert imported == {"importlib.metadata", "os", "subprocess", "sys"}
    assert "utils" not in code.replace(DISTRIBUTION, "")


def run_step(monkeypatch, colab: bool, installed: bool) -> list:
    """Exec the Colab step here with pip replaced by a recorder; returns the commands it ran."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append(command))
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    if not installed:
        others = [d for d in importlib.metadata.distributions() if d.metadata["Name"] != DISTRIBUTION]
        monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(others))
    exec(compile(colab_setup_code(), "<first cell>", "exec"), {})  # noqa: S102 - our own generated code
    return calls


def test_outside_colab_the_step_does_nothing(monkeypatch):
    assert run_step(monkeypatch, colab=False, installed=False) == []


def test_on_colab_with_the_workbook_installed_the_step_does_nothing(monkeypatch):
    assert run_step(monkeypatch, colab=True, installed=True) == []


def test_on_colab_the_step_installs_the_workbook_and_holds_torch(monkeypatch):
    calls = run_step(monkeypatch, colab=True, installed=False)
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", install_requirement(),
                      f"torch=={importlib.metadata.version('torch')}"]]


RUNNER = """
import json, sys
import google.colab  # a Colab kernel has imported it before the first cell runs
cell = open(sys.argv[1], encoding="utf-8").read()
exec(compile(cell, "<first cell of chapters/00_orientation.ipynb>", "exec"), namespace := {})
import torch, utils
from utils.models import ORGANISM_DIR
print(json.dumps({"utils": utils.__file__, "torch": torch.__file__, "torch_version": torch.__version__,
                  "in_colab": namespace["env"].in_colab, "renderer": namespace["env"].plot_renderer,
                  "organism_files": sorted(p.name for p in ORGANISM_DIR.glob("*") if p.is_file())}))
"""


def clone_working_tree(destination: Path) -> None:
    """A git repository holding this working tree as it is (tracked and new files), committed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    git = ["git", "-c", "user.name=workbook tests", "-c", "user.email=tests@invalid", "-c", "commit.gpgsign=false"]
    for command in (["init", "--quiet", "--initial-branch=main"], ["add", "--all"], ["commit", "--quiet", "-m", "snapshot"]):
        subprocess.run(git + command, cwd=destination, check=True, capture_output=True)


def colab_like_environment(where: Path) -> Path:
    """A throwaway venv that sees this environment's packages (torch, transformers, ...) as already
    installed, as Colab has its own, but not the workbook; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where / "venv")], check=True)
    python = where / "venv" / "bin" / "python"
    preinstalled = where / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("interp_workbook", "__editable__")):
            (preinstalled / entry.name).symlink_to(entry)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "colab_preinstalled.pth").write_text(f"{preinstalled}\n")
    return python


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the working tree")
@pytest.mark.slow
def test_simulated_colab_installs_the_workbook_and_runs_the_first_cell(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    clone_working_tree(clone)
    python = colab_like_environment(tmp_path)
    fake = tmp_path / "fake" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('"""Stands in for Colab\'s own module."""\n')
    cell = first_code_cell("chapters/00_orientation.ipynb")
    assert cell.count(install_requirement()) == 1
    (tmp_path / "cell.py").write_text(cell.replace(install_requirement(), f"{DISTRIBUTION} @ git+file://{clone}@main"))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV", "COLAB"))}
    env.update(PYTHONPATH=str(tmp_path / "fake"), PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1",
               PIP_NO_INDEX="1",  # nothing may be downloaded: only the workbook itself is new
               PIP_NO_BUILD_ISOLATION="0",  # pip's spelling: "0" turns isolation off (setuptools is there)
               WORKBOOK_PROGRESS=str(tmp_path / "progress.json"))
    result = subprocess.run([python, tmp_path / "runner.py", tmp_path / "cell.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    installed = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    assert Path(found["utils"]).is_relative_to(installed), f"utils came from {found['utils']}, not the install"
    assert Path(found["torch"]).resolve().is_relative_to(Path(sysconfig.get_paths()["purelib"])), "torch was reinstalled"
    assert found["torch_version"] == importlib.metadata.version("torch")
    assert found["in_colab"] and found["renderer"] == "colab"
    shipped = sorted(p.name for p in (ROOT / "utils" / "organism" / "model").glob("*") if p.is_file())
    assert found["organism_files"] == shipped, "the installed package lacks files of the model organism"
