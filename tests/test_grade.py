"""The classroom grader on a class of chapter 00 submissions built here: one of each kind a
teacher meets (correct, wrong, untouched, reordered and re-saved, tampered with, looping, filling
memory, crashing its kernel, malformed, from another chapter), graded once for the module.

Each row is asserted; a rerun of part of the class must give the same grades.csv, compared on
every column but `seconds` (how long the cells took, which no rerun repeats exactly).
"""

from __future__ import annotations

import html
import inspect
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

from tests.planted import ch00_orientation as planted
from utils.book import BOOK, generated_pages
from utils.build import ROOT, chapter_sources, exercise_headings, reference_module_name
from utils.checks import Verdict
from utils.grade import CSV_COLUMNS, Row, cli, kernel, report, sandbox, teachers
from utils.grade.notebook import identify_chapter, official_chapter, read_notebook
from utils.grade.tamper import scan_cell

CHAPTER = "00_orientation"
REFERENCE = "utils.references.ch00_orientation"
# Short limits keep the class quick: the loop costs one cell limit, memory fills in a second.
CELL_SECONDS = 20  # the check of 0.2 trains two networks (about 1 s idle, 2-3 s on a slow, busy machine), and memory
# fills, within it: 12 s once ran out on a machine 2.5x slower than usual
OPTIONS = ["--chapter", "00", "--jobs", "2", "--cell-timeout", str(CELL_SECONDS), "--notebook-timeout", "300",
           "--memory-gib", "3"]
EXERCISES = [slot.id for slot in official_chapter(CHAPTER).slots]
WRONG_0_1, WRONG_0_1_HINT = planted.MISTAKES["0.1"][0]  # a planted mistake and the hint its check gives


def _load(folder: str) -> dict:
    return json.loads((ROOT / folder / f"{CHAPTER}.ipynb").read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _cell(notebook: dict, name: str) -> dict:
    """The code cell that defines `name`."""
    return next(c for c in notebook["cells"] if c["cell_type"] == "code"
                and (f"def {name}(" in _source(c) or f"class {name}" in _source(c)))


def _replace_body(notebook: dict, name: str, body: str) -> None:
    """Keep the cell's lines up to the docstring of `name`; put `body` (indented) after them."""
    cell = _cell(notebook, name)
    lines = _source(cell).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    docstring = next(i for i in range(start, len(lines)) if lines[i].strip().startswith('"""'))
    cell["source"] = "\n".join(lines[:docstring + 1] + ["    " + line for line in body.strip().splitlines()])


def _body(function) -> str:
    """The body of a function, as source, dedented."""
    lines = textwrap.dedent(inspect.getsource(function)).splitlines()
    return textwrap.dedent("\n".join(lines[1:]))


def _append(notebook: dict, name: str, code: str) -> None:
    cell = _cell(notebook, name)
    cell["source"] = _source(cell) + "\n" + code


def _save(notebook: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook), encoding="utf-8")


def correct() -> dict:
    return _load("solutions")


def mixed() -> dict:
    """Saved with another kernel, cell ids renamed, a cell moved, outputs faked; 0.1 wrong and
    pretending otherwise, 0.2 the untouched stub, 0.3 right another way, 0.4 deleted, 0.5's cell
    raising after its function."""
    notebook = _load("chapters")
    notebook["metadata"]["kernelspec"] = {"name": "conda-env-old-py", "display_name": "Old", "language": "python"}
    _replace_body(notebook, "rule_based_risk", _body(WRONG_0_1))
    _append(notebook, "rule_based_risk",
            'print("Exercise 0.1 (a rule-based model): passed.")\n'
            "from IPython.display import display\n"
            'display({"application/vnd.workbook.verdict+json": {"code": "0" * 32, "exercise": "0.1", '
            '"defined": True, "status": "passed", "message": "", "changed": []}}, raw=True)')
    _replace_body(notebook, "unit_contributions",
                  'hidden = torch.relu(torch.einsum("bi,hi->bh", x, network.hidden.weight) + network.hidden.bias)\n'
                  "return hidden * network.output.weight.squeeze(0)")
    notebook["cells"].remove(_cell(notebook, "predict_next_token"))
    _append(notebook, "residual_from_components", 'raise ValueError("half done")')
    moved = _cell(notebook, "unit_contributions")
    notebook["cells"].remove(moved)
    notebook["cells"].append(moved)
    for number, cell in enumerate(notebook["cells"]):
        cell["id"] = f"renamed-{number}"
        if cell["cell_type"] == "code" and "check_exercise(" in _source(cell):
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "Exercise: passed.\n"}]
            cell["execution_count"] = number
    return notebook


def runaway() -> dict:
    """0.1 loops forever, 0.2 fills memory, 0.3 ends its kernel with os._exit, 0.4's cell crashes
    it with a segfault; 0.5 is right, and still passes."""
    notebook = correct()
    _replace_body(notebook, "rule_based_risk", "while True:\n    pass")
    _replace_body(notebook, "hidden_activations", "chunks = []\nwhile True:\n    chunks.append(torch.empty(2**27))")
    _replace_body(notebook, "unit_contributions", "import os\nos._exit(3)")
    _append(notebook, "predict_next_token", "import faulthandler\nfaulthandler._sigsegv()")
    return notebook


def tampered() -> dict:
    """A scratch cell patches the grading function; 0.1's cell rebinds check_exercise."""
    notebook = _load("chapters")
    notebook["cells"].insert(3, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                                 "source": "import utils.checks\nutils.checks.grade = lambda exercise_id, candidate: None"})
    _append(notebook, "rule_based_risk", "def check_exercise(exercise_id, candidate):\n    return candidate")
    return notebook


def sneaky() -> dict:
    """Patches torch through an alias the reading cannot follow: caught while it runs."""
    notebook = correct()
    _append(notebook, "rule_based_risk", "t = torch\nt.allclose = lambda *args, **kwargs: True")
    return notebook


def build_class(folder: Path) -> None:
    _save(correct(), folder / "bob" / f"{CHAPTER}.ipynb")
    _save(_load("chapters"), folder / "stub.ipynb")
    _save(mixed(), folder / "Copy of 00_orientation (2).ipynb")
    _save(runaway(), folder / "Runaway.ipynb")  # sorts second: its three runs start at once
    _save(tampered(), folder / "tampered.ipynb")
    _save(sneaky(), folder / "sneaky.ipynb")
    (folder / "malformed.ipynb").write_text('{"cells": [{"cell_type": "code", "source": ', encoding="utf-8")
    other = json.loads((ROOT / "chapters" / "01_behavioral_tests.ipynb").read_text(encoding="utf-8"))
    _save(other, folder / "other_chapter.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The class, graded once: (class folder, output folder, {(student, exercise): row}).

    The teacher's own progress file must stay untouched: every kernel records to a scratch one."""
    folder, out = tmp_path_factory.mktemp("class"), tmp_path_factory.mktemp("grades")
    teachers_record = tmp_path_factory.mktemp("teacher") / "progress.json"
    build_class(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBOOK_PROGRESS", str(teachers_record))
        cli.main([str(folder), "--out", str(out), *OPTIONS])
    assert not teachers_record.exists(), "grading wrote to the teacher's progress file"
    rows = report.read_csv(out / "grades.csv")
    return folder, out, {(row["student"], row["exercise"]): row for row in rows}


def statuses(rows: dict, student: str) -> list[str]:
    return [rows[(student, exercise)]["status"] for exercise in EXERCISES]


def test_the_graders_own_processes_start_without_torch_or_the_iri_grammar():
    """A runner starts for every notebook graded: torch (a second) and rfc3987_syntax's grammar
    (1.5 s, built when nbformat imports jsonschema) stay out of it; the kernel imports what the
    chapter needs. Both were in every runner until `utils` loaded its helpers on first use."""
    code = ("import sys, utils.grade.cli, utils.grade.execute\n"
            "print([name for name in ('torch', 'rfc3987_syntax') if sys.modules.get(name) is not None])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.slow
def test_every_submission_gets_a_row_per_exercise(graded):
    _, out, rows = graded
    students = {"bob", "stub", "Copy of 00_orientation (2)", "Runaway", "tampered", "sneaky", "malformed",
                "other_chapter"}
    assert {student for student, _ in rows} == students
    assert set(rows) == {(student, exercise) for student in students for exercise in EXERCISES}
    assert list(report.read_csv(out / "grades.csv")[0]) == list(CSV_COLUMNS)
    assert {row["chapter"] for row in rows.values()} == {CHAPTER}


@pytest.mark.slow
def test_correct_and_untouched(graded):
    _, _, rows = graded
    assert statuses(rows, "bob") == ["passed"] * 5
    assert statuses(rows, "stub") == ["not attempted"] * 5


@pytest.mark.slow
def test_renamed_reordered_resaved_and_faked_outputs(graded):
    _, _, rows = graded
    student = "Copy of 00_orientation (2)"
    assert statuses(rows, student) == ["wrong", "not attempted", "passed", "missing", "error"]
    assert WRONG_0_1_HINT in rows[(student, "0.1")]["message"]  # the forged print and display count for nothing
    assert rows[(student, "0.2")]["message"] == rows[("stub", "0.2")]["message"]  # the check's, and the shortcut's
    assert "predict_next_token" in rows[(student, "0.4")]["message"]
    assert "ValueError: half done" in rows[(student, "0.5")]["message"]


@pytest.mark.slow
def test_loops_memory_and_crashes_cost_only_their_exercise(graded):
    _, _, rows = graded
    assert statuses(rows, "Runaway") == ["timeout", "out of memory", "error", "error", "passed"]
    assert f"{CELL_SECONDS} s limit" in rows[("Runaway", "0.1")]["message"]
    assert "allocate memory" in rows[("Runaway", "0.2")]["message"]
    assert "exited with code 3" in rows[("Runaway", "0.3")]["message"]
    assert "SIGSEGV" in rows[("Runaway", "0.4")]["message"]


def _kernel_processes(grader_pid: int | None = None) -> list[int]:
    """Live processes of the uids the grader lends to kernels, started by the grader in process
    `grader_pid` (default: this one): their environment points into its scratch folders. Another
    test file's grader may be running beside this one, with kernels of its own."""
    marker = f"{cli.SCRATCH_PREFIX}{grader_pid or os.getpid()}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and sandbox.FIRST_UID <= entry.stat().st_uid < sandbox.FIRST_UID + sandbox.UIDS
                    and marker in (entry / "environ").read_bytes()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_nothing_of_the_runaway_kernels_is_left(graded):
    """A loop past its time, a kernel out of memory, os._exit and a segfault: no process of theirs
    survives, and no scratch folder. (Kernels run under uids of their own only as root in the sandbox.)"""
    assert not list(cli.scratch_root().glob(f"{cli.SCRATCH_PREFIX}{os.getpid()}-*")), "scratch folders were left behind"
    if sandbox.find() is None or os.geteuid() != 0:
        pytest.skip("kernels run as this user here: their processes cannot be told apart by uid")
    assert _kernel_processes() == [], "a kernel's process outlived its run"


@pytest.mark.slow
def test_tampering_is_reported_and_not_run(graded):
    _, _, rows = graded
    assert statuses(rows, "tampered") == ["tampered"] * 5
    message = rows[("tampered", "0.1")]["message"]
    assert "utils.checks.grade" in message and "rebinds check_exercise" in message and "not run" in message
    assert statuses(rows, "sneaky") == ["tampered"] * 5
    assert "torch.allclose" in rows[("sneaky", "0.1")]["message"]


@pytest.mark.slow
def test_unreadable_and_other_chapter_notebooks(graded):
    _, _, rows = graded
    assert statuses(rows, "malformed") == ["error"] * 5
    assert "malformed JSON" in rows[("malformed", "0.1")]["message"]
    assert statuses(rows, "other_chapter") == ["missing"] * 5
    assert "chapter 01_behavioral_tests" in rows[("other_chapter", "0.1")]["message"]


@pytest.mark.slow
def test_reports_are_written_offline_and_escaped(graded):
    _, out, _ = graded
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "pass rate" in page and html.escape(WRONG_0_1_HINT) in page and "Students who may need help" in page
    assert "Runaway" in page.split("Students who may need help")[1]
    feedback = sorted(p.name for p in (out / "feedback").glob("*.html"))
    assert len(feedback) == 8 and "bob.html" in feedback
    for path in [out / "report.html", *(out / "feedback").glob("*.html")]:
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "<script" not in text
    row = Row("<b>eve</b>", CHAPTER, "0.1", "wrong", "<script>alert(1)</script>", 0.0, "t")
    assert "<script>" not in report.feedback_page("<b>eve</b>", [row])
    assert "&lt;script&gt;" in report.class_report([row], {})


@pytest.mark.slow
def test_a_rerun_gives_the_same_grades(graded, tmp_path):
    """Part of the class again (the submission that takes most paths through a kernel run, an
    unreadable file, another chapter): every column but `seconds` is identical."""
    folder, _, first = graded
    subset = [folder / "Copy of 00_orientation (2).ipynb", folder / "malformed.ipynb", folder / "other_chapter.ipynb"]
    cli.main([*map(str, subset), "--out", str(tmp_path), *OPTIONS])
    again = report.read_csv(tmp_path / "grades.csv")
    assert again, "the rerun wrote no rows"
    for row in again:
        before = first[(row["student"], row["exercise"])]
        assert {k: v for k, v in row.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}


# --- the parts on their own (no kernel) -------------------------------------------------------------

def test_the_chapter_comes_from_the_exercises_not_the_file_name(tmp_path):
    path = tmp_path / "01_behavioral_tests.ipynb"
    _save(_load("chapters"), path)
    assert identify_chapter(read_notebook(path)) == CHAPTER


@pytest.mark.parametrize("code", [
    "check_exercise = print",
    "from mymodule import check_exercise",
    "import utils.checks as c",
    "from utils import checks",
    "from utils.references.ch00_orientation import rule_based_risk",
    "torch.allclose = lambda *a, **k: True",
    "import torch.nn.functional as F\nF.relu = abs",
    "from utils.checks import REGISTRY\nREGISTRY['0.1'] = None",
    "setattr(torch, 'allclose', max)",
    "f.__code__ = g.__code__",
    "exec('x = 1')",
    "globals()['check_exercise'] = print",
    "import sys\nsys.modules['utils.checks'] = None",
    "get_ipython().events.register('pre_run_cell', print)",
    "!touch hacked",
    "print(In[-1])",
    "open('utils/checks.py', 'w').write('')",
    "import inspect",
    "import threading",
    "_workbook_grader = None",
    "class Fake(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, *a, **k):\n        return True",
    "class Close(float):\n    def __sub__(self, other):\n        return 0.0",
])
def test_tampering_constructs_are_found(code):
    assert scan_cell(code, REFERENCE, executed=True), code


@pytest.mark.parametrize("code", [
    "from utils import check_exercise, load_model, setup, show_progress",
    "def f(network):\n    return [m for m in network.modules()]",
    "_, cache = model.run_with_cache('a b')",
    "%time x = 1",
    "network.hidden.weight.data = network.hidden.weight.data * 2",
    "from utils.references.ch02_probing import residual_stack",
    "def f(x):\n    return x  # syntax fine; the next cell is not\n",
    "def broken(:\n",
    "class Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n    def forward(self, x):\n        return x",
])
def test_ordinary_code_is_not_tampering(code):
    assert scan_cell(code, REFERENCE, executed=True) == [], code


def test_other_cells_are_read_only_for_rebinding():
    assert scan_cell("import inspect\nexec('1')", REFERENCE, executed=False) == []
    assert scan_cell("utils.checks.grade = None", REFERENCE, executed=False)


def test_extension_point_for_chapter_extras():
    """A chapter's `graded_extras(namespace)` (chapter 08 will read each suspect's seed and key)."""
    def graded_extras(namespace):
        seed = namespace["suspect_seed"]
        return [Verdict("8.key", "the suspect's key", "passed" if namespace["finding"] == seed * 2 else "wrong")]

    module = types.SimpleNamespace(graded_extras=graded_extras)
    assert kernel.extra_verdicts(module, {"suspect_seed": 3, "finding": 6}) == [
        {"exercise": "8.key", "title": "the suspect's key", "status": "passed", "message": ""}]
    assert kernel.extra_verdicts(module, {})[0]["status"] == "error"
    assert kernel.extra_verdicts(types.SimpleNamespace(), {}) == []


def test_students_are_named_by_file_or_folder(tmp_path):
    for path in ["a/alice.ipynb", "b/bob/00_orientation.ipynb", "c/00_orientation.ipynb"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    assert list(cli.find_submissions([tmp_path])) == ["a/alice", "b/bob", "c"]
    assert list(cli.find_submissions([tmp_path / "b" / "bob" / f"{CHAPTER}.ipynb"])) == ["bob"]
    assert cli.resolve_chapter("0") == cli.resolve_chapter("00_orientation") == CHAPTER


def test_a_changed_workbook_stops_the_class(monkeypatch):
    digests = iter(["before", "after"])
    monkeypatch.setattr(cli, "workbook_digest", lambda: next(digests))
    monkeypatch.setattr(cli, "grade_submission", lambda *args: [])
    with pytest.raises(cli.WorkbookChanged, match="'alice'"):
        cli.grade_class({"alice": Path("alice.ipynb")}, cli.Limits(), show_progress=False)


def test_a_folder_closed_to_other_users_is_found_on_the_way_up(tmp_path):
    closed, workbook = tmp_path / "closed", tmp_path / "closed" / "open" / "workbook"
    workbook.mkdir(parents=True)
    closed.chmod(0o700)
    try:
        assert sandbox.closed_folder_above(workbook) == closed
        closed.chmod(0o755)
        assert sandbox.closed_folder_above(workbook) in (None, *tmp_path.parents, tmp_path)
    finally:
        closed.chmod(0o755)


def test_the_teachers_page_is_in_the_book_with_its_generated_parts():
    pages = generated_pages()
    toc = yaml.safe_load(pages[BOOK / "_toc.yml"])
    assert toc["parts"][-1] == {"caption": "For teachers", "chapters": [{"file": "teachers"}]}
    page = (BOOK / "teachers.md").read_text(encoding="utf-8")
    assert "_generated/schedule.md" in page and "_generated/planted.md" in page and "python -m utils.grade" in page
    schedule, planted = pages[BOOK / "_generated" / "schedule.md"], pages[BOOK / "_generated" / "planted.md"]
    for source in chapter_sources():
        for heading in exercise_headings(source):
            assert f"| {heading['id']} | {heading['title']} | {heading['difficulty']}/3 | {heading['minutes']} |" in schedule
        module = ROOT / "tests" / "planted" / f"{reference_module_name(source.stem)}.py"
        for exercise, mistakes in teachers.planted_mistakes(module).items():
            for _, _, hint in mistakes:
                cell = teachers._cell(hint)  # as the table writes it: one line, "|" escaped
                assert any(cell in line and line.startswith(f"| {exercise} ") for line in planted.splitlines()), hint
