"""`python -m utils.grade SUBMISSIONS... --out DIR`: grade every notebook, write the reports.

SUBMISSIONS are notebooks or folders of them (searched recursively; `.ipynb` in any case). A
student is named by the submission's path below the folder given, without `.ipynb`
(`class/alice.ipynb` -> `alice`); a file named like a chapter (`alice/00_orientation.ipynb`) is
named by its folder (`alice`). Several notebooks run at once, up to the cores available (`--jobs`).
Each kernel runs walled in by the operating system (`sandbox.py`); where the machine cannot, one
line says so before grading. Only this process writes the grades, once every kernel is gone.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.build import ROOT, reference_module_name
from utils.grade import ERROR, MISSING, NOT_ATTEMPTED, PASSED, TAMPERED, TIMEOUT, Row
from utils.grade import sandbox as walls
from utils.grade.execute import Limits, tampered_rows
from utils.grade.kernel import FROM_PAYLOAD_HOOK, INPUTS_HOOK
from utils.grade.notebook import (Unreadable, chapter_stems, helper_cells, identify_chapter, match_exercises,
                                  missing_message, official_chapter, read_notebook, submitted_code_cells)
from utils.grade.tamper import runnable_source, scan_submission

SCRATCH_PREFIX = "workbook-grade-"  # + the grader's pid: a folder left by a grader that was killed is removed


@dataclass
class Setting:
    """What every submission of one class is graded with."""

    limits: Limits
    chapter: str | None = None
    keys: Path | None = None          # the folder --keys names (chapter 08's keys, one per student)
    sandbox: walls.Sandbox | None = None
    hidden: tuple[str, ...] = ()      # folders the kernels must not see (the class, the grades)

STUB_MESSAGE = "Replace the NotImplementedError with your code"  # utils.checks.grade's verdict on a stub



def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def find_submissions(paths: list[Path]) -> dict[str, Path]:
    """{student name: notebook}, in name order; a folder is searched recursively."""
    found: list[tuple[Path, Path]] = []  # (notebook, the folder it was named from)
    for path in paths:
        if path.is_dir():
            found += [(nb, path) for nb in sorted(path.rglob("*")) if nb.suffix.lower() == ".ipynb" and nb.is_file()
                      and ".ipynb_checkpoints" not in nb.parts]
        else:
            found.append((path, path.parent))
    students: dict[str, Path] = {}
    for notebook, base in found:
        parts = list(notebook.relative_to(base).with_suffix("").parts)
        if re.match(r"\d\d_", parts[-1]):  # named like a chapter: the folder names the student
            parts = parts[:-1] or [notebook.parent.name]
        name = "/".join(parts)
        unique, n = name, 2
        while unique in students:
            unique, n = f"{name} ({n})", n + 1
        students[unique] = notebook
    return dict(sorted(students.items()))


def _rows_for(student: str, stem: str, status: str, message: str) -> list[Row]:
    return [Row(student, stem, slot.id, status, message, 0.0, slot.title) for slot in official_chapter(stem).slots]


def grade_submission(student: str, path: Path, setting: Setting | Limits, chapter: str | None = None) -> list[Row]:
    """Every row of one submission, graded with `setting` (a bare Limits: no sandbox, no keys)."""
    if isinstance(setting, Limits):
        setting = Setting(setting, chapter)
    chapter = setting.chapter
    try:
        notebook = read_notebook(path)
    except Unreadable as error:
        return _rows_for(student, chapter, ERROR, str(error)) if chapter else [Row(student, "", "", ERROR, str(error))]
    found = identify_chapter(notebook)
    if chapter and found != chapter:
        what = f"the exercises of chapter {found}" if found else "no exercise of any chapter"
        return _rows_for(student, chapter, MISSING, f"this notebook holds {what}, not those of chapter {chapter}")
    if found is None:
        return [Row(student, "", "", ERROR, "this notebook holds no exercise of any chapter")]
    official = official_chapter(found)
    matches = match_exercises(notebook, official)
    helpers = helper_cells(notebook, official, matches)
    executed = {m.cell for m in matches.values() if m.cell is not None}
    executed |= {number for cells in helpers.values() for number, _ in cells}
    findings = scan_submission(submitted_code_cells(notebook), official.code_sources, executed,
                               f"utils.references.{reference_module_name(found)}")
    if findings:
        more = f" (and {len(findings) - 3} more)" if len(findings) > 3 else ""
        return _rows_for(student, found, TAMPERED, "; ".join(findings[:3]) + more + "; the notebook was not run")
    if all(matches[slot.id].source is None or matches[slot.id].source.strip() == slot.stub_source.strip()
           for slot in official.slots):
        return untouched_rows(student, official, matches)  # nothing to run: what the checks say of stubs
    try:
        inputs = chapter_inputs(found, setting.keys, student.lower())
    except FileNotFoundError as error:  # the notebook runs without it; the chapter's rows say what it audited
        print(f"warning: {student}: {error}", file=sys.stderr, flush=True)
        inputs = {}
    job = {"student": student, "chapter": found, "limits": asdict(setting.limits),
           "sources": {key: None if m.source is None else runnable_source(m.source) for key, m in matches.items()},
           "cells": {key: m.cell for key, m in matches.items()},
           "helpers": {key: [runnable_source(source) for _, source in cells] for key, cells in helpers.items()},
           "sandbox": asdict(setting.sandbox) if setting.sandbox else None, "hidden": list(setting.hidden),
           "inputs": inputs}
    rows, payload = run_job(job, setting.limits)
    if payload is not None:
        # which exercises passed, as the signed verdicts say: the chapter's hook can trust this, not the kernel
        payload = {**payload, "passed": [row.exercise for row in rows if row.status == PASSED]}
        extras = rows_from_payload(student, found, payload, setting.keys, student.lower())
        if any(row.status == TAMPERED for row in rows):
            extras = tampered_rows(extras, [rows[0].message.removeprefix("changed at run time: ")])
        rows += extras
    return rows


def chapter_inputs(stem: str, keys: Path | None, name: str) -> dict[str, str]:
    """The folders the chapter's `graded_inputs(keys, name)` says this student's kernel reads, by
    environment variable, as absolute paths ({} for a chapter without the hook). The hook raises,
    with a message for the teacher, when a student's input is missing."""
    module = importlib.import_module(f"utils.exercises.{reference_module_name(stem)}")
    hook = getattr(module, INPUTS_HOOK, None)
    return {} if hook is None else {str(variable): str(Path(folder).resolve())
                                    for variable, folder in hook(keys, name).items()}


def rows_from_payload(student: str, stem: str, payload: dict, keys: Path | None, name: str) -> list[Row]:
    """The rows the chapter grades from its payload, here in the grader's process, after the
    kernel is gone: `graded_extras_from_payload(payload, keys, name)`. A hook that fails gives
    one error row."""
    try:
        module = importlib.import_module(f"utils.exercises.{reference_module_name(stem)}")
        verdicts = getattr(module, FROM_PAYLOAD_HOOK)(payload, keys, name)
        return [Row(student, stem, str(v.exercise), str(v.status), str(v.message), 0.0, str(v.title)) for v in verdicts]
    except Exception as error:  # noqa: BLE001 - a broken hook or payload must not lose the other rows
        return [Row(student, stem, "extras", ERROR, f"{FROM_PAYLOAD_HOOK} failed: {type(error).__name__}: {error}"[:300],
                    0.0, "extra checks")]


def untouched_rows(student: str, chapter, matches: dict) -> list[Row]:
    """The rows of a submission with no exercise attempted: each stub "not attempted" (the
    verdict `utils.checks.grade` gives a stub), each absent function "missing"."""
    rows = []
    for slot in chapter.slots:
        if matches[slot.id].source is None:
            rows.append(Row(student, chapter.stem, slot.id, MISSING, missing_message(slot), 0.0, slot.title))
        else:
            rows.append(Row(student, chapter.stem, slot.id, NOT_ATTEMPTED, STUB_MESSAGE, 0.0, slot.title))
    return rows


def kernel_environment(workdir: Path) -> dict[str, str]:
    """The runner's environment (the kernel gets its own, `execute.Place.environment`): offline,
    one thread, a scratch progress file, the workbook importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WORKBOOK_PROGRESS=str(workdir / "progress.json"), TQDM_DISABLE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def scratch_root() -> Path:
    return Path(tempfile.gettempdir())


def remove_stale_scratch() -> None:
    """Remove the scratch folders of graders that are no longer running (killed before they could)."""
    for folder in scratch_root().glob(f"{SCRATCH_PREFIX}*"):
        match = re.match(rf"{SCRATCH_PREFIX}(\d+)-", folder.name)
        if not match or not folder.is_dir():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # another user's grader, still running


def run_job(job: dict, limits: Limits) -> tuple[list[Row], dict | None]:
    """Run `python -m utils.grade.execute` on one job in its own session; whatever it leaves
    behind is killed with it. A runner that fails or overruns still gives every row.
    Returns the rows and the chapter's payload (None when it sent none)."""
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=scratch_root()) as scratch:
        workdir = Path(scratch)
        (workdir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        result = workdir / "result.json"
        with open(workdir / "runner.log", "w", encoding="utf-8") as log:
            runner = subprocess.Popen([sys.executable, "-m", "utils.grade.execute", str(workdir / "job.json"), str(result),
                                       str(os.getpid())],
                                      cwd=workdir, env=kernel_environment(workdir), stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log, start_new_session=True)
            try:
                runner.wait(timeout=limits.notebook_seconds + 120)
                overran = False
            except subprocess.TimeoutExpired:
                overran = True
            finally:
                try:
                    os.killpg(runner.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                runner.wait()
        if overran:
            return _rows_for(job["student"], job["chapter"], TIMEOUT,
                             f"the notebook ran past its {limits.notebook_seconds:g} s limit"), None
        try:
            written = json.loads(result.read_text(encoding="utf-8"))
            payload = written.get("payload")
            return [Row(**row) for row in written["rows"]], payload if isinstance(payload, dict) else None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            tail = (workdir / "runner.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            return _rows_for(job["student"], job["chapter"], ERROR,
                             f"the grader could not run this notebook ({tail[0][:200] if tail else 'no log'})"), None


class WorkbookChanged(RuntimeError):
    """The workbook's own code changed while a class was graded: the grades cannot be trusted."""


def workbook_digest(root: Path = ROOT) -> str:
    """A hash of the code every grade depends on: utils/ and the official student notebooks."""
    digest = hashlib.sha256()
    for path in sorted([*(root / "utils").rglob("*.py"), *(root / "chapters").glob("*.ipynb")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def grade_class(submissions: dict[str, Path], limits: Limits, chapter: str | None = None, jobs: int | None = None,
                show_progress: bool = True, keys: Path | None = None, isolate: bool = True,
                hidden: list[Path] = ()) -> list[Row]:
    """Every row of every submission, in student and exercise order; `jobs` notebooks at once.

    `isolate`: wall each kernel in (`sandbox.py`); where this machine cannot, or with
    isolate=False, one line on stderr says so and the class is graded without. `hidden`: folders
    the kernels must not see (the class's, the grades'). Raises WorkbookChanged, and grades
    nothing more, if a submission's code changed the workbook's own files (only possible without
    the sandbox)."""
    from utils.session import progress_bar

    remove_stale_scratch()
    found = walls.find() if isolate else None
    if found is None:
        why = walls.missing_reason() if isolate else "isolation was turned off (--no-sandbox)"
        print(f"warning: grading WITHOUT isolation: {why}. Each notebook's code can then read and change "
              "your files, other submissions and the grades (book/teachers.md).", file=sys.stderr, flush=True)
    folders = [*(p if p.is_dir() else p.parent for p in submissions.values()), *hidden]
    setting = Setting(limits, chapter, keys, found, tuple(sorted({str(p.resolve()) for p in folders})))
    rows: list[Row] = []
    before = workbook_digest()
    with ThreadPoolExecutor(max_workers=max(1, jobs or available_cores())) as pool:
        futures = {pool.submit(grade_submission, student, path, setting): student
                   for student, path in submissions.items()}
        for future in progress_bar(as_completed(futures), show=show_progress, total=len(futures),
                                   desc="grading", unit="notebook"):
            rows += future.result()
            if workbook_digest() != before:
                for pending in futures:
                    pending.cancel()
                raise WorkbookChanged(f"the workbook's files (utils/, chapters/) changed while {futures[future]!r} "
                                      "was graded: restore them (git checkout -- utils chapters) and grade again")
    return sorted(rows, key=row_order)


def exercise_order(exercise: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 10**6 for part in exercise.split(".")) + (exercise,)


def row_order(row: Row) -> tuple:
    return row.student, row.chapter, exercise_order(row.exercise)


def resolve_chapter(text: str | None) -> str | None:
    """"0", "00" or "00_orientation" -> "00_orientation"."""
    if text is None:
        return None
    stems = chapter_stems()
    stem = stems.get(f"{int(text[:2].rstrip('_')):02d}") if text[:1].isdigit() else None
    if stem is None:
        raise SystemExit(f"no chapter {text!r}; known: {', '.join(stems.values())}")
    return stem


def keys_folders(keys: Path | None) -> list[Path]:
    """What the kernels must not see of a keys folder: it, and the students' suspects that
    `make suspects` writes beside it (each kernel gets a copy of its own student's alone)."""
    if keys is None:
        return []
    return [keys, *([keys.parent / "students"] if (keys.parent / "students").is_dir() else [])]


def main(argv: list[str] | None = None) -> None:
    from utils.grade.report import write_reports

    parser = argparse.ArgumentParser(prog="python -m utils.grade", description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="+", type=Path, help="notebooks, or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="folder for grades.csv, report.html, feedback/")
    parser.add_argument("--chapter", help='the chapter set ("00"); a notebook of another chapter gets "missing" rows')
    parser.add_argument("--jobs", type=int, default=None, help="notebooks at once (default: the cores available)")
    parser.add_argument("--cell-timeout", type=float, default=Limits.cell_seconds, help="seconds per cell of student code")
    parser.add_argument("--notebook-timeout", type=float, default=Limits.notebook_seconds, help="seconds per notebook")
    parser.add_argument("--memory-gib", type=float, default=Limits.memory_gib, help="memory limit per kernel, GiB")
    parser.add_argument("--keys", type=Path, default=None,
                        help="folder of the answer keys a chapter grades with (chapter 08: one suspect per student)")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="grade without walling each kernel in (not for notebooks you do not trust)")
    args = parser.parse_args(argv)
    if args.keys is not None and not args.keys.is_dir():
        raise SystemExit(f"--keys {args.keys}: no such folder")
    args.keys = args.keys.resolve() if args.keys is not None else None  # the runners start in other folders
    submissions = find_submissions(args.submissions)
    if not submissions:
        raise SystemExit("no notebook found in " + " ".join(map(str, args.submissions)))
    limits = Limits(args.cell_timeout, args.notebook_timeout, args.memory_gib)
    try:
        args.out.mkdir(parents=True, exist_ok=True)  # it exists, so the kernels' view can hide it
        rows = grade_class(submissions, limits, resolve_chapter(args.chapter), args.jobs, keys=args.keys,
                           isolate=not args.no_sandbox, hidden=[args.out, *keys_folders(args.keys)])
    except WorkbookChanged as error:
        raise SystemExit(str(error)) from None
    for path in write_reports(rows, args.out):
        print("wrote:", path)
