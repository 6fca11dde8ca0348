"""A hidden class of chapter 00 submissions, graded the way a teacher would, with every row asserted.

The class (built by `build_class`, 18 notebooks) holds honest students (correct, alternative
answers, realistic mistakes, helpers in cells of their own, debugging magics, a redefinition
after the check, merged cells, odd file names, an nbformat 3 file), broken files and crashing
kernels, and students who cheat or attack: the reference fetched around the checks, the grader's
state patched, a forged verdict, the progress file rewritten, another student's notebook
overwritten, a detached process rewriting the grades, the grader killed through /proc, the
workbook's files edited, the network, a fork bomb. The attacks are real code with the class's real
paths in them; the operating system's walls (utils/grade/sandbox.py) are what stop them, so the
class needs bubblewrap and is skipped where the machine has none.

Behaviours that need no notebook of their own share one, so the class costs fewer kernels: one
tinkerer holds the helpers, the magics and the late redefinition, saved as dave's file in a folder
named after him; CAROL's nbformat 3 file holds the alternative answers; one notebook holds both the
merged cells and the renamed and broken ones; one intruder makes every attack that must leave the
notebook's grades alone. Loops, memory and `os._exit` inside an exercise are
test_grade.py's Runaway student.

Every row of every student is asserted, the files of the class and of the workbook are checked
unchanged, no process of a kernel survives, and a rerun of part of the class gives the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tests.planted import ch00_orientation as planted
from tests.test_grade import (CHAPTER, EXERCISES, _append, _body, _cell, _kernel_processes, _load, _replace_body,
                               _save, correct)
from utils.build import ROOT
from utils.grade import cli, report
from utils.grade import sandbox as walls



pytestmark = [pytest.mark.skipif(walls.find() is None, reason=f"no sandbox here: {walls.missing_reason()}"),
              pytest.mark.skipif(os.geteuid() == 0 and walls.closed_folder_above(ROOT, Path(sys.prefix)) is not None,
                                 reason="kernels run as other users cannot enter "
                                        f"{walls.closed_folder_above(ROOT, Path(sys.prefix))}")]

CELL_SECONDS = 20
OPTIONS = ["--chapter", "00", "--jobs", "2", "--cell-timeout", str(CELL_SECONDS), "--notebook-timeout", "400",
           "--memory-gib", "3"]
P, NA, W, E, T, M, OOM, X = "passed", "not attempted", "wrong", "error", "timeout", "missing", "out of memory", "tampered"
NAMES = {"0.1": "rule_based_risk", "0.2": "hidden_activations", "0.3": "unit_contributions",
         "0.4": "predict_next_token", "0.5": "residual_from_components"}


def _insert_above(notebook: dict, name: str, source: str) -> None:
    """A code cell of the student's own, just above the cell that defines `name`."""
    index = notebook["cells"].index(_cell(notebook, name))
    notebook["cells"].insert(index, {"cell_type": "code", "id": f"own-{index}", "metadata": {}, "outputs": [], "execution_count": None,
                                     "source": source})


def _add_last(notebook: dict, source: str) -> None:
    notebook["cells"].append({"cell_type": "code", "id": "own-last", "metadata": {}, "outputs": [], "execution_count": None,
                              "source": source})


def _check_cell(notebook: dict, exercise: str) -> dict:
    return next(c for c in notebook["cells"] if c["cell_type"] == "code"
                and f'check_exercise("{exercise}"' in "".join(c["source"]))


def _merge_with_check(notebook: dict, exercise: str) -> None:
    """What Shift+M does to an exercise cell and the check cell below it."""
    cell, check = _cell(notebook, NAMES[exercise]), _check_cell(notebook, exercise)
    cell["source"] = "".join(cell["source"]) + "\n\n" + "".join(check["source"])
    notebook["cells"].remove(check)


# --- honest students ------------------------------------------------------------------------------

def alternatives() -> dict:
    notebook = correct()
    for exercise, function in [("0.1", planted.risk_with_where), ("0.2", planted.hidden_one_unit_at_a_time),
                               ("0.3", planted.contributions_with_einsum), ("0.4", planted.predict_with_topk_and_no_grad),
                               ("0.5", planted.residual_stacked_and_summed)]:
        _replace_body(notebook, NAMES[exercise], _body(function))
    return notebook


def mistakes() -> dict:
    """A realistic mistake in each exercise; 0.1 also prints a verdict it did not get."""
    notebook = correct()
    _replace_body(notebook, "rule_based_risk", _body(planted.risk_first_rule_only))
    _append(notebook, "rule_based_risk", 'print("Exercise 0.1 (a rule-based model): passed.")')
    _replace_body(notebook, "hidden_activations", _body(planted.hidden_without_bias))
    _replace_body(notebook, "unit_contributions", "return hidden_activations(network, x)")
    _replace_body(notebook, "predict_next_token", _body(planted.predict_from_first_position))
    _replace_body(notebook, "residual_from_components", _body(planted.residual_last_layer_only))
    return notebook


def tinkerer() -> dict:
    """Imports and a helper function in cells of their own, above the exercises that use them;
    `%matplotlib inline` inside an exercise cell and a debug cell with `%pip`, `%time` and
    vars(model.cfg); and, after all the checks, a redefinition to experiment with."""
    notebook = correct()
    _insert_above(notebook, "rule_based_risk", "import numpy as np\nYOUNG, POOR, VERY_POOR = 0.3, 0.5, 0.2")
    _replace_body(notebook, "rule_based_risk",
                  "return ((age < YOUNG) & (income < POOR)) | (income < VERY_POOR) | torch.from_numpy(np.zeros(age.shape, bool))")
    _insert_above(notebook, "unit_contributions",
                  "def centre(weights):\n    return weights - weights.mean() + weights.mean()")
    _replace_body(notebook, "unit_contributions",
                  "return hidden_activations(network, x) * centre(network.output.weight[0])")
    cell = _cell(notebook, "hidden_activations")
    cell["source"] = "%matplotlib inline\n" + "".join(cell["source"])
    _insert_above(notebook, "predict_next_token", "%pip install einops\nprint(vars(model.cfg))\n%time x = 1 + 1")
    _add_last(notebook, "def rule_based_risk(age, income):\n    return age < 0.5  # what if?")
    return notebook


def crashes() -> dict:
    """0.2's cell kills its own kernel; a cell of the student's own above 0.3 ends it with
    os._exit. Each costs its exercise only: the notebook runs three times."""
    notebook = correct()
    _replace_body(notebook, "hidden_activations", "import os as system\nsystem.kill(system.getpid(), 9)")
    _insert_above(notebook, "unit_contributions", "import os\nprint('checking')\nos._exit(2)")
    return notebook


def merged_renamed_and_broken() -> dict:
    """0.1's stub and 0.2's wrong answer each merged with their check cell (what Shift+M does);
    0.3, which calls 0.2's function, right (it runs on the reference: a wrong answer costs only its
    own exercise); 0.4's function renamed; a syntax error left at the end of 0.5's cell."""
    notebook = _load("chapters")
    for name in ("unit_contributions", "predict_next_token", "residual_from_components"):
        _cell(notebook, name)["source"] = "".join(_cell(correct(), name)["source"])
    _replace_body(notebook, "hidden_activations", _body(planted.hidden_without_relu))
    _merge_with_check(notebook, "0.1")
    _merge_with_check(notebook, "0.2")
    cell = _cell(notebook, "predict_next_token")
    cell["source"] = "".join(cell["source"]).replace("def predict_next_token(", "def next_token(")
    _append(notebook, "residual_from_components", "def oops(:\n    pass")
    return notebook


def nbformat3() -> str:
    """The alternative answers, saved in nbformat 3."""
    notebook = nbformat.reads(json.dumps(alternatives()), as_version=4)
    return nbformat.writes(nbformat.convert(notebook, 3), version=3)


# --- cheats and attacks ---------------------------------------------------------------------------

def reference_by_import() -> dict:
    notebook = correct()
    _replace_body(notebook, "rule_based_risk",
                  "import utils\nreturn utils.references.ch00_orientation.rule_based_risk(age, income)")
    return notebook


def reference_by_getattr() -> dict:
    """Around the reading: the module looked up by a name built at run time."""
    notebook = correct()
    _insert_above(notebook, "rule_based_risk", "from utils import references as shelf")
    _replace_body(notebook, "rule_based_risk",
                  'return getattr(shelf, "ch00_" + "orientation").rule_based_risk(age, income)')
    return notebook


def reference_from_fallback() -> dict:
    """Asks check_exercise for the reference (its fallback on a wrong answer) and returns it."""
    notebook = _load("chapters")
    _insert_above(notebook, "rule_based_risk", 'answer = check_exercise("0.1", None)\nprint("got", answer)')
    _replace_body(notebook, "rule_based_risk", "return answer(age, income)")
    return notebook


def grader_state() -> dict:
    """Reaches the grader through a function's globals, by a name the reading cannot see."""
    notebook = correct()
    _replace_body(notebook, "rule_based_risk", _body(planted.risk_first_rule_only))
    _append(notebook, "rule_based_risk",
            'state = getattr(check_exercise, "__glob" + "als__")["_state"]\n'
            'state["grade"] = lambda exercise_id, candidate: type("V", (), {"status": "passed", "message": "", '
            '"passed": True})()')
    return notebook


def forged_verdict() -> dict:
    """Displays a verdict of its own during the check, then stops the check with KeyboardInterrupt."""
    notebook = correct()
    _replace_body(notebook, "rule_based_risk", 'import json\nfrom IPython.display import display\n'
                  'body = json.dumps({"cell": 3, "exercise": "0.1", "defined": True, "status": "passed", '
                  '"message": "", "changed": []})\n'
                  'display({"application/vnd.workbook.verdict+json": {"body": body, "mac": "0" * 64}}, raw=True)\n'
                  "raise KeyboardInterrupt")
    return notebook


def intruder(victim: Path, out: Path) -> dict:
    """Every attack that must leave this notebook's own grades alone, one cell each above 0.1:
    the progress file rewritten, another student's notebook truncated, a process that leaves its
    kernel's group and for ten minutes rewrites the grades and points the report elsewhere, the
    grader killed through /proc, the workbook's checks and the suspect's key edited, the network."""
    notebook = correct()
    attacks = [
        "import os, json\nfrom pathlib import Path\n"
        "record = Path(os.environ.get('WORKBOOK_PROGRESS', Path.home() / '.interp_workbook' / 'progress.json'))\n"
        "with record.open('x') as f:\n    json.dump({'0.1': 'passed'}, f)",
        f"from pathlib import Path\nwith Path({str(victim)!r}).open('r+') as f:\n    f.truncate(0)",
        f"""import os as system, time
from pathlib import Path
if system.fork() == 0:
    system.setsid()
    for _ in range(600):
        try:
            with Path({str(out / 'grades.csv')!r}).open('a') as f:
                f.write('intruder,00_orientation,0.9,passed,,0.0\\n')
            system.symlink('/etc/hostname', {str(out / 'report.html')!r})
        except OSError:
            pass
        time.sleep(1)
    system._exit(0)""",
        """import os as system
for pid in system.listdir('/proc'):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            if b'utils.grade' in f.read():
                system.kill(int(pid), 9)
    except (OSError, ValueError):
        pass""",
        f"""from pathlib import Path
for target, text in [({str(ROOT / 'utils' / 'checks.py')!r}, '\\nraise SystemExit\\n'),
                     ({str(ROOT / 'utils' / 'organism' / 'suspect' / 'key.json')!r}, '{{}}')]:
    try:
        with Path(target).open('a') as f:
            f.write(text)
    except OSError as error:
        print(error)""",
        "import socket\n"
        "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=3)\n    print('online')\n"
        "except OSError as error:\n    print('offline', error)",
    ]
    for attack in attacks:
        _insert_above(notebook, "rule_based_risk", attack)
    return notebook


def fork_bomb() -> dict:
    """0.5 starts processes, which start processes, until the system refuses (wrong: the check
    gets BlockingIOError) or the cell's time runs out first on a slow machine (timeout)."""
    notebook = correct()
    _replace_body(notebook, "residual_from_components", "import os as system, time\nwhile True:\n"
                  "    if system.fork() == 0:\n        try:\n            while True:\n                system.fork()\n"
                  "        finally:\n            time.sleep(600)\n            system._exit(0)")
    return notebook


def monkeypatch_grade() -> dict:
    notebook = correct()
    _append(notebook, "rule_based_risk", "import utils.checks\nutils.checks.grade = lambda exercise_id, candidate: None")
    return notebook


# --- the class --------------------------------------------------------------------------------

ALL = ([P] * 5)
EXPECTED = {
    "alice": ALL, "stub": [NA] * 5, "mistakes": [W] * 5, "crashes": [P, E, E, P, P],
    "merged_renamed_and_broken": [NA, W, P, M, E], "CAROL": ALL, "dave": ALL, "malformed": [E] * 5, "empty": [E] * 5, "other_chapter": [M] * 5,
    "reference_by_import": [X] * 5, "reference_by_getattr": [X] * 5, "reference_from_fallback": [W, NA, NA, NA, NA],
    "grader_state": [X] * 5, "forged_verdict": [X] * 5, "intruder": ALL,
    "fork_bomb": [P, P, P, P, (W, T)], "monkeypatch_grade": [X] * 5,
}


def build_class(folder: Path, out: Path) -> None:
    _save(correct(), folder / "alice.ipynb")
    _save(_load("chapters"), folder / "stub.ipynb")
    for name, make in [("mistakes", mistakes), ("crashes", crashes), ("merged_renamed_and_broken", merged_renamed_and_broken),
                       ("reference_by_import", reference_by_import), ("reference_by_getattr", reference_by_getattr),
                       ("reference_from_fallback", reference_from_fallback), ("grader_state", grader_state),
                       ("forged_verdict", forged_verdict), ("fork_bomb", fork_bomb), ("monkeypatch_grade", monkeypatch_grade)]:
        _save(make(), folder / f"{name}.ipynb")
    _save(intruder(folder / "alice.ipynb", out), folder / "intruder.ipynb")
    (folder / "CAROL.IPYNB").write_text(nbformat3(), encoding="utf-8")  # nbformat 3, named as some platforms download it
    _save(tinkerer(), folder / "dave" / f"{CHAPTER}.ipynb")  # named by its folder
    (folder / "malformed.ipynb").write_text('{"cells": [{"cell_type": "code", "source": ', encoding="utf-8")
    (folder / "empty.ipynb").write_text("", encoding="utf-8")
    _save(json.loads((ROOT / "chapters" / "01_behavioral_tests.ipynb").read_text(encoding="utf-8")),
          folder / "other_chapter.ipynb")


def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class, graded once; the files of the class and the workbook before and after."""
    folder, out = tmp_path_factory.mktemp("hidden-class"), tmp_path_factory.mktemp("hidden-grades")
    teachers_record = tmp_path_factory.mktemp("teacher") / "progress.json"
    build_class(folder, out)
    watched = [*folder.rglob("*"), *(ROOT / "utils").rglob("*.py"), ROOT / "utils" / "organism" / "suspect" / "key.json"]
    before = _digest(watched)
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBOOK_PROGRESS", str(teachers_record))
        cli.main([str(folder), "--out", str(out), *OPTIONS])
    seconds = time.monotonic() - started
    print(f"\n{len(EXPECTED)} submissions graded in {seconds:.0f} s, {seconds / len(EXPECTED):.1f} s each (2 at once)")
    time.sleep(3)  # a detached writer that survived would have written by now
    rows = report.read_csv(out / "grades.csv")
    return {"folder": folder, "out": out, "rows": {(r["student"], r["exercise"]): r for r in rows}, "list": rows,
            "before": before, "after": _digest(watched), "record": teachers_record}


@pytest.mark.slow
def test_every_row_of_the_hidden_class(graded):
    rows = graded["rows"]
    assert {student for student, _ in rows} == set(EXPECTED)
    assert len(graded["list"]) == len(EXPECTED) * len(EXERCISES)  # nothing added by an attacker
    wrong = {student: got for student, expected in EXPECTED.items()
             for got in [[rows[(student, e)]["status"] for e in EXERCISES]]
             if not all(g == x or (isinstance(x, tuple) and g in x) for g, x in zip(got, expected))}
    assert not wrong, {s: (got, EXPECTED[s], [rows[(s, e)]["message"] for e in EXERCISES]) for s, got in wrong.items()}


@pytest.mark.slow
def test_the_messages_name_what_happened(graded):
    rows = graded["rows"]
    assert planted.MISTAKES["0.1"][1][1] in rows[("mistakes", "0.1")]["message"]  # the printed "passed" counts for nothing
    assert "SIGKILL" in rows[("crashes", "0.2")]["message"] and "memory" not in rows[("crashes", "0.2")]["status"]
    assert "a cell of yours above it" in rows[("crashes", "0.3")]["message"]
    assert "predict_next_token" in rows[("merged_renamed_and_broken", "0.4")]["message"]
    assert "SyntaxError" in rows[("merged_renamed_and_broken", "0.5")]["message"]
    assert "malformed JSON" in rows[("malformed", "0.1")]["message"]
    assert "chapter 01_behavioral_tests" in rows[("other_chapter", "0.1")]["message"]
    assert "utils.references.ch00_orientation" in rows[("reference_by_import", "0.1")]["message"]
    assert "reference solutions" in rows[("reference_by_getattr", "0.1")]["message"]
    assert "the grader's grade" in rows[("grader_state", "0.1")]["message"]
    assert "forged verdict" in rows[("forged_verdict", "0.1")]["message"]
    assert "utils.checks" in rows[("monkeypatch_grade", "0.1")]["message"]
    assert "expected a function" in rows[("reference_from_fallback", "0.1")]["message"] or \
        "NoneType" in rows[("reference_from_fallback", "0.1")]["message"]


@pytest.mark.slow
def test_no_student_changed_another_file_the_grades_or_the_workbook(graded):
    assert graded["after"] == graded["before"], "a file of the class or of the workbook changed"
    assert not graded["record"].exists(), "grading wrote to the teacher's progress file"
    out = graded["out"]
    assert not (out / "report.html").is_symlink() and "Class report" in (out / "report.html").read_text(encoding="utf-8")
    assert "intruder,00_orientation,0.9" not in (out / "grades.csv").read_text(encoding="utf-8")
    assert _kernel_processes() == [], "a kernel's process outlived its run"
    assert not list(cli.scratch_root().glob(f"{cli.SCRATCH_PREFIX}{os.getpid()}-*")), "scratch folders were left behind"


@pytest.mark.slow
def test_a_rerun_of_part_of_the_class_matches(graded, tmp_path):
    """Kernels that die (run three times), a forged verdict, an unreadable file and nbformat 3
    again: the same rows."""
    folder = graded["folder"]
    subset = ["crashes", "forged_verdict", "malformed"]
    cli.main([*(str(folder / f"{name}.ipynb") for name in subset), str(folder / "CAROL.IPYNB"), "--out", str(tmp_path), *OPTIONS])
    again = report.read_csv(tmp_path / "grades.csv")
    assert {row["student"] for row in again} == {*subset, "CAROL"}
    for row in again:
        before = graded["rows"][(row["student"], row["exercise"])]
        assert {k: v for k, v in row.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
