"""The grader's parts that keep a class's grades trustworthy, each on its own (no notebook is graded):
the sandbox's walls, the reading of debugging code and of ways round the checks, which cells a
student's answer and helpers are, old and odd files, signed verdicts, reports that a planted link
cannot redirect, stale scratch folders, and the chapter payload interface (chapter 08)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import nbformat
import pytest

from tests.test_grade import CHAPTER, REFERENCE, _load, _save, correct
from utils.build import ROOT
from utils.checks import Verdict
from utils.grade import Row, cli, execute, kernel, report
from utils.grade import sandbox as walls
from utils.grade.notebook import helper_cells, match_exercises, official_chapter, read_notebook
from utils.grade.tamper import runnable_source, scan_cell

needs_sandbox = pytest.mark.skipif(walls.find() is None, reason=f"no sandbox here: {walls.missing_reason()}")


# --- the sandbox ----------------------------------------------------------------------------------

PROBE = textwrap.dedent("""
    import json, os, socket, sys, time
    seen = {"uid": os.getuid()}
    open("mine.txt", "w").write("ok")
    seen["own folder"] = open("mine.txt").read()
    def refused(action):
        try:
            action()
        except OSError as error:
            return type(error).__name__
        return "allowed"
    seen["workbook"] = refused(lambda: open(sys.argv[1] + "/utils/checks.py", "a"))
    seen["secret"] = refused(lambda: open(sys.argv[2]).read())
    seen["network"] = refused(lambda: socket.create_connection(("1.1.1.1", 80), timeout=2))
    seen["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if os.fork() == 0:          # a detached child that would outlive a plain process group
        os.setsid()
        time.sleep(120)
        os._exit(0)
    print(json.dumps(seen))
""")


@needs_sandbox
def _live_processes_of(uid: int) -> list[int]:
    """The pids running as `uid` that are not zombies waiting to be reaped."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid and "\nState:\tZ" not in (entry / "status").read_text():
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


@needs_sandbox
def test_a_kernel_sees_only_its_own_folder_and_processes(tmp_path):
    sandbox = walls.find()
    work, secret = tmp_path / "work", tmp_path / "class" / "alice.ipynb"
    work.mkdir()
    secret.parent.mkdir()
    secret.write_text("alice's answers")
    uid = walls.lend_uid() if sandbox.as_root else None
    walls.give_to(work, uid)
    command = walls.kernel_command(sandbox, [sys.executable, "-c", PROBE, str(ROOT), str(secret)], root=ROOT,
                                   writable=[work], hidden=[secret.parent], workdir=work, uid=uid, memory_gib=2,
                                   cpu_seconds=60)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["own folder"] == "ok" and (work / "mine.txt").exists()
    assert seen["workbook"] in ("OSError", "PermissionError")  # a read-only file system, or not its file
    assert seen["secret"] == "FileNotFoundError"  # the class folder is not there at all
    assert seen["network"] != "allowed"
    assert len(seen["processes"]) <= 3, seen["processes"]  # bubblewrap's init and itself: no grader, no other kernel
    if uid is not None:
        assert seen["uid"] == uid
        # The namespace's processes are killed as its init exits; give a busy machine a moment to reap them.
        deadline = time.monotonic() + 15
        while _live_processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = _live_processes_of(uid)
        walls.kill_user(uid)
        assert not survivors, f"the detached child outlived its sandbox: {survivors}"


def test_without_a_sandbox_grading_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(walls, "_found", lambda: (None, "bubblewrap (bwrap) is not installed: install it"))
    monkeypatch.setattr(cli, "grade_submission", lambda *args: [])
    cli.grade_class({"alice": Path("alice.ipynb")}, cli.Limits(), show_progress=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "WITHOUT isolation" in lines[0] and "bubblewrap" in lines[0]


def test_stale_scratch_folders_of_a_killed_grader_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "scratch_root", lambda: tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f"{cli.SCRATCH_PREFIX}{dead.pid}-abc", tmp_path / f"{cli.SCRATCH_PREFIX}{os.getpid()}-abc"
    for folder in (stale, live):
        (folder / "work").mkdir(parents=True)
        (folder / "work" / "student.py").write_text("x = 1")
    cli.remove_stale_scratch()
    assert not stale.exists() and live.exists()


# --- reading: debugging is not tampering; the ways round the checks are ---------------------------

@pytest.mark.parametrize("code", [
    "%matplotlib inline\ndef f(x):\n    return x",
    "print(vars(model.cfg))",
    "%pip install einops",
    "%load_ext autoreload\n%autoreload 2",
    "from utils import references\nprint(references.__name__)",
])
def test_debugging_is_not_tampering(code):
    assert scan_cell(code, REFERENCE, executed=True) == [], code


@pytest.mark.parametrize("code", [
    "import utils\nutils.references.ch00_orientation.rule_based_risk(1, 2)",
    "from utils import references as r\nr.ch00_orientation.rule_based_risk",
    "import utils.references as shelf\nshelf.ch00_orientation",
    "import utils\nutils.checks.REGISTRY",
    "vars(torch)['allclose'] = max",
    "_workbook_grader.check('0.1', 'f', 3)",
])
def test_ways_round_the_checks_are_found(code):
    assert scan_cell(code, REFERENCE, executed=True), code


def test_merged_check_lines_and_setup_magics_are_dropped_before_running():
    cell = 'def f(x):\n    return x\n%matplotlib inline\nf = check_exercise("0.1", f)\nanswer = check_exercise("0.1", None)'
    assert runnable_source(cell) == 'def f(x):\n    return x\nanswer = check_exercise("0.1", None)'


# --- which cells are the student's answer and helpers ---------------------------------------------

def _code(source: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": source}


def test_the_answer_is_the_definition_the_check_saw_and_helpers_travel():
    notebook = _load("solutions")
    cells = notebook["cells"]
    first = next(i for i, c in enumerate(cells) if "def rule_based_risk(" in "".join(c["source"]))
    cells.insert(first, _code("import numpy as np\nLIMIT = 0.3"))
    cells.insert(first, _code("x = 1  # scratch"))
    cells.append(_code("def rule_based_risk(age, income):\n    return age < 0.5"))  # experiment after the check
    cells.append(_code("print(rule_based_risk)"))  # below every exercise: runs nowhere
    node = nbformat.from_dict(notebook)
    chapter = official_chapter(CHAPTER)
    matches = match_exercises(node, chapter)
    assert "age < 0.3" in matches["0.1"].source and matches["0.1"].cell == first + 3
    helpers = helper_cells(node, chapter, matches)
    assert [source for _, source in helpers["0.1"]] == ["x = 1  # scratch", "import numpy as np\nLIMIT = 0.3"]
    assert all("age < 0.5" not in s and "print(rule_based_risk)" not in s for v in helpers.values() for _, s in v)


def test_old_nbformat_and_upper_case_names_are_read(tmp_path):
    old = nbformat.writes(nbformat.convert(nbformat.reads(json.dumps(correct()), as_version=4), 3), version=3)
    (tmp_path / "old.ipynb").write_text(old, encoding="utf-8")
    assert match_exercises(read_notebook(tmp_path / "old.ipynb"), official_chapter(CHAPTER))["0.1"].source
    _save(correct(), tmp_path / "NAME.IPYNB")
    _save(correct(), tmp_path / "carol" / "00_orientation.IPYNB")
    assert list(cli.find_submissions([tmp_path])) == ["NAME", "carol", "old"]


# --- verdicts and reports -------------------------------------------------------------------------

def test_only_a_verdict_signed_with_the_key_counts():
    key, body = b"k" * 32, json.dumps({"cell": 7, "exercise": "0.1", "status": "passed"})
    signed = {"body": body, "mac": kernel._signer(key)(body)}
    assert execute.verify(signed, key)["status"] == "passed"
    assert execute.verify({"body": body, "mac": kernel._signer(b"x" * 32)(body)}, key) is None
    assert execute.verify({**signed, "body": body.replace("7", "8")}, key) is None
    assert execute.verify({"code": "0" * 32, "status": "passed"}, key) is None
    result = execute.CellResult(0.1, [{"output_type": "display_data", "data": {kernel.MIMETYPE: signed}}] * 2)
    assert execute.signed_verdicts(result, key, 7) == ([json.loads(body)] * 2, 0)
    assert execute.signed_verdicts(result, key, 8) == ([], 2)  # replayed into another cell


def test_reports_replace_a_planted_link_and_never_follow_it(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("the teacher's file")
    out = tmp_path / "grades"
    out.mkdir()
    (out / "report.html").symlink_to(outside)
    (out / "grades.csv").symlink_to(outside)
    report.write_reports([Row("alice", CHAPTER, "0.1", "passed", "", 0.1, "t")], out)
    assert outside.read_text() == "the teacher's file"
    assert not (out / "report.html").is_symlink() and "alice" in (out / "grades.csv").read_text()


# --- the chapter payload interface (chapter 08) ---------------------------------------------------

def test_a_chapter_payload_is_graded_in_the_grader_after_the_kernel(monkeypatch, tmp_path):
    """`graded_payload(namespace)` runs in the kernel; `graded_extras_from_payload(payload, keys,
    student)` in the grader's process, with the --keys folder and the student's name lower-cased."""
    calls = []

    def graded_payload(namespace):
        return {"answer": namespace["report"]}

    def graded_extras_from_payload(payload, keys, student):
        calls.append((payload, keys, student))
        key = json.loads((keys / student / "key.json").read_text())
        return [Verdict("8.report.x", "the report", "passed" if payload["answer"] == key["answer"] else "wrong")]

    fake = types.SimpleNamespace(graded_payload=graded_payload, graded_extras_from_payload=graded_extras_from_payload)
    assert kernel.chapter_payload(fake, {"report": 42}) == ({"answer": 42}, [])
    assert kernel.chapter_payload(fake, {"report": object()})[1][0]["status"] == "error"  # not JSON
    assert kernel.chapter_payload(types.SimpleNamespace(graded_payload=lambda ns: [1]), {})[1][0]["status"] == "error"

    keys = tmp_path / "keys"
    (keys / "alice").mkdir(parents=True)
    (keys / "alice" / "key.json").write_text(json.dumps({"answer": 42}))
    real_import = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: fake if name == f"utils.exercises.ch{CHAPTER}" else real_import(name))
    own = [Row("Alice", CHAPTER, "0.1", "passed", "", 0.1, "t")]
    monkeypatch.setattr(cli, "run_job", lambda job, limits: (list(own), {"answer": 42}))
    _save(correct(), tmp_path / "Alice.ipynb")
    rows = cli.grade_submission("Alice", tmp_path / "Alice.ipynb", cli.Setting(cli.Limits(), CHAPTER, keys))
    assert calls == [({"answer": 42, "passed": ["0.1"]}, keys, "alice")]  # "passed": the grader's, from signed verdicts
    assert [(r.exercise, r.status) for r in rows] == [("0.1", "passed"), ("8.report.x", "passed")]

    # A file that keeps the chapter's name is named by its folder: the key is the folder's student's.
    (keys / "bob").mkdir()
    (keys / "bob" / "key.json").write_text(json.dumps({"answer": 42}))
    _save(correct(), tmp_path / "Bob" / f"{CHAPTER}_chapter.ipynb")
    cli.grade_submission("Bob", tmp_path / "Bob" / f"{CHAPTER}_chapter.ipynb", cli.Setting(cli.Limits(), CHAPTER, keys))
    assert calls[-1] == ({"answer": 42, "passed": ["0.1"]}, keys, "bob")

    monkeypatch.setattr(cli, "run_job", lambda job, limits: (list(own), {"answer": 41}))
    assert cli.grade_submission("Alice", tmp_path / "Alice.ipynb", cli.Setting(cli.Limits(), CHAPTER, keys))[1].status == "wrong"
    broken = types.SimpleNamespace(graded_payload=graded_payload, graded_extras_from_payload=lambda p, k, s: 1 / 0)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: broken)
    row = cli.rows_from_payload("Alice", CHAPTER, {"answer": 1}, keys, "alice")[0]
    assert row.status == "error" and "ZeroDivisionError" in row.message


@needs_sandbox
@pytest.mark.slow
def test_a_killed_grader_leaves_nothing_running_and_its_scratch_goes_next_time(tmp_path, monkeypatch):
    """SIGKILL the grader while a kernel runs: the runner and the kernel die with it, and the next
    grader removes the scratch folder it left."""
    _save(correct(), tmp_path / "class" / "alice.ipynb")
    grader = subprocess.Popen([sys.executable, "-m", "utils.grade", str(tmp_path / "class"), "--out", str(tmp_path / "out"),
                               "--jobs", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    pattern = f"{cli.SCRATCH_PREFIX}{grader.pid}-*"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(cli.scratch_root().glob(f"{pattern}/kernel/connection.json")):
        time.sleep(0.5)
    scratch = list(cli.scratch_root().glob(pattern))
    assert scratch, "the grader started no kernel"
    grader.kill()
    grader.wait()
    assert _gone_within(str(scratch[0]), 30), "the runner or the kernel outlived the grader"
    cli.remove_stale_scratch()
    assert not any(folder.exists() for folder in scratch)


def _gone_within(text: str, seconds: float) -> bool:
    """Whether every process that mentions `text` ends within `seconds` (a SIGKILL chain takes a
    moment on a busy machine; a process that lost the race with its parent's death stays for good)."""
    deadline = time.monotonic() + seconds
    while _running_with(text):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_the_kernel_guard_dies_with_its_parent_and_refuses_an_orphaned_start(tmp_path):
    """The prefix that wraps every walled kernel: it arms the parent-death signal before anything
    runs, so a SIGKILLed parent takes the command with it, even one killed the moment the command
    was started (without the guard, that command ran on for good)."""
    for wait_for_the_child in (True, False):
        marker = f"workbook-guard-{tmp_path.name}-{wait_for_the_child}"
        parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os, signal, subprocess, sys, time
            from utils.grade.sandbox import orphan_guard
            subprocess.Popen([*orphan_guard(), "prlimit", "--core=0", "--", sys.executable, "-c",
                              "import time; time.sleep(300)", "{marker}"])
            if not {wait_for_the_child}:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(300)
        """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
        if wait_for_the_child:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(_running_with(marker)) < 2:  # the parent and its child
                time.sleep(0.2)
            assert len(_running_with(marker)) == 2, "the guarded child never started"
            parent.kill()
        parent.wait()
        assert _gone_within(marker, 30), f"the guarded child outlived its parent (waited for it: {wait_for_the_child})"

    orphaned = subprocess.run([*walls.orphan_guard(parent=1), "true"], capture_output=True, text=True, timeout=60)
    assert orphaned.returncode != 0 and "the grader is gone" in orphaned.stderr
    kept = subprocess.run([*walls.orphan_guard(), sys.executable, "-c", "print('ran')"], capture_output=True, text=True,
                          timeout=60)
    assert kept.stdout.strip() == "ran"


def _running_with(text: str) -> list[int]:
    """Processes whose command line mentions `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
