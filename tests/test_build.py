"""The single-source build: committed notebooks match their sources, rebuilds are identical,
stubs replace solutions, and a learner's notebook is never overwritten."""

from __future__ import annotations

import json
import re
import shutil
import textwrap

import pytest

from utils import build


def test_generated_files_match_their_sources():
    stale = build.build_all(check=True)
    assert not stale, f"regenerate with `make build`: {[str(p) for p in stale]}"


def test_committed_notebooks_have_no_outputs():
    for folder in ("chapters", "solutions"):
        for path in (build.ROOT / folder).glob("*.ipynb"):
            notebook = json.loads(path.read_text())
            for cell in notebook["cells"]:
                assert not cell.get("outputs") and cell.get("execution_count") is None, path


def _make_root(tmp_path, source: str):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "utils" / "references").mkdir(parents=True)
    (tmp_path / "solutions" / "09_demo.py").write_text(textwrap.dedent(source))
    return tmp_path


DEMO = '''\
    # %% [markdown]
    # ### Exercise 9.1: double it (difficulty 1/3, ~2 min)

    # %% tags=["export"]
    def double(x):
        """Twice x."""
        ### BEGIN SOLUTION
        return 2 * x
        ### END SOLUTION

    # %%
    double = check_exercise("9.1", double)
    '''


def test_student_stub_solution_and_reference(tmp_path):
    root = _make_root(tmp_path, DEMO)
    build.build_all(root)
    student = json.loads((root / "chapters" / "09_demo.ipynb").read_text())
    solution = json.loads((root / "solutions" / "09_demo.ipynb").read_text())
    student_code = "".join(student["cells"][1]["source"])
    solution_code = "".join(solution["cells"][1]["source"])
    assert "raise NotImplementedError" in student_code and "2 * x" not in student_code
    assert "return 2 * x" in solution_code and "BEGIN SOLUTION" not in solution_code
    assert student["cells"][1]["metadata"] == {}  # the export tag stays out of notebooks
    reference = (root / "utils" / "references" / "ch09_demo.py").read_text()
    assert "return 2 * x" in reference and "check_exercise" not in reference
    assert build.exercise_headings(root / "solutions" / "09_demo.py") == [
        {"id": "9.1", "title": "double it", "difficulty": "1", "minutes": "2"}]


def test_rebuild_is_byte_identical(tmp_path):
    root = _make_root(tmp_path, DEMO)
    build.build_all(root)
    first = {p: p.read_bytes() for p in root.rglob("*.ipynb")}
    assert build.build_all(root) == []
    assert {p: p.read_bytes() for p in root.rglob("*.ipynb")} == first


def test_learner_notebook_is_never_overwritten(tmp_path, capsys):
    root = _make_root(tmp_path, DEMO)
    build.build_all(root)
    student = root / "chapters" / "09_demo.ipynb"
    notebook = json.loads(student.read_text())
    notebook["cells"][1]["source"] = "def double(x):\n    return x + x\n"
    student.write_text(json.dumps(notebook))
    (root / "solutions" / "09_demo.py").write_text(DEMO.replace("Twice x", "Two times x"))
    build.build_all(root)
    assert "return x + x" in student.read_text()
    assert "left chapters/09_demo.ipynb alone" in capsys.readouterr().out
    build.build_all(root, force=True)
    assert "return x + x" not in student.read_text()


@pytest.mark.parametrize("broken, message", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "inside a function"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without"),
])
def test_broken_markers_are_reported(broken, message):
    with pytest.raises(build.BuildError, match=message):
        build.split_solution(broken, "demo.py cell 1")


def test_chapter_stems_are_ascii_snake_case():
    for source in build.chapter_sources():
        assert source.stem.isascii() and source.stem[:3].rstrip("_").isdigit()
        assert source.stem == source.stem.lower() and " " not in source.stem


LADDER_CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10")  # every chapter follows the full ladder


def _exercise_blocks(text: str) -> dict[str, str]:
    """Each exercise's markdown, from its heading to the next code cell."""
    blocks = {}
    for match in build.EXERCISE_HEADING.finditer(text):
        end = text.find("\n# %%", match.end())
        blocks[match["id"]] = text[match.end():end]
    return blocks


def test_every_exercise_has_a_three_step_hint_ladder_and_the_chapter_says_how_long_run_all_takes():
    """A gentle hint, a middle step (a plan or the shapes) and nearly the answer, each folded in a
    <details> block; and a line near the top giving the time of Run All."""
    sources = [source for source in build.chapter_sources() if source.stem[:2] in LADDER_CHAPTERS]
    assert len(sources) == len(LADDER_CHAPTERS)
    for source in sources:
        text = source.read_text()
        blocks = _exercise_blocks(text)
        assert blocks, source.name
        for exercise, block in blocks.items():
            hints = [int(n) for n in re.findall(r"<details><summary>Hint (\d)</summary>", block)]
            assert hints[:3] == [1, 2, 3], (source.name, exercise, hints)
            assert block.count("<details>") == block.count("</details>"), (source.name, exercise)
        top = text[:text.find("\n# %%", text.find("# %% [markdown]") + 1)]
        assert re.search(r"\*Run All\* takes (under|at most) ", top), source.name
