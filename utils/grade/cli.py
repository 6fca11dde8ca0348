"""`python -m utils.grade SUBMISSIONS... --out DIR`: grade every notebook, write the reports.

SUBMISSIONS are notebooks or folders of them (searched recursively). A student is named by the
submission's path below the folder given, without `.ipynb` (`class/alice.ipynb` -> `alice`); a
file named like a chapter (`alice/00_orientation.ipynb`) is named by its folder (`alice`).
Several notebooks run at once, up to the cores available (`--jobs`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from utils.build import ROOT, reference_module_name
from utils.grade import ERROR, MISSING, NOT_ATTEMPTED, TAMPERED, TIMEOUT, Row
from utils.grade.execute import Limits
from utils.grade.notebook import (Unreadable, chapter_stems, identify_chapter, match_exercises, missing_message,
                                  official_chapter, read_notebook, submitted_code_cells)
from utils.grade.tamper import scan_submission

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
            found += [(nb, path) for nb in sorted(path.rglob("*.ipynb")) if ".ipynb_checkpoints" not in nb.parts]
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


def grade_submission(student: str, path: Path, limits: Limits, chapter: str | None = None) -> list[Row]:
    """Every row of one submission; `chapter` ("00_orientation") is the chapter the class was set."""
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
    executed = {m.cell for m in matches.values() if m.cell is not None}
    findings = scan_submission(submitted_code_cells(notebook), official.code_sources, executed,
                               f"utils.references.{reference_module_name(found)}")
    if findings:
        more = f" (and {len(findings) - 2} more)" if len(findings) > 2 else ""
        return _rows_for(student, found, TAMPERED, "; ".join(findings[:2]) + more + "; the notebook was not run")
    if all(matches[slot.id].source is None or matches[slot.id].source.strip() == slot.stub_source.strip()
           for slot in official.slots):
        return untouched_rows(student, official, matches)  # nothing to run: what the checks say of stubs
    job = {"student": student, "chapter": found, "limits": asdict(limits),
           "sources": {key: m.source for key, m in matches.items()}, "cells": {key: m.cell for key, m in matches.items()}}
    return run_job(job, limits)


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
    """The runner's (and so the kernel's) environment: offline, a scratch progress file, one thread."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WORKBOOK_PROGRESS=str(workdir / "progress.json"), TQDM_DISABLE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def run_job(job: dict, limits: Limits) -> list[Row]:
    """Run `python -m utils.grade.execute` on one job in its own session; whatever it leaves
    behind is killed with it. A runner that fails or overruns still gives every row."""
    with tempfile.TemporaryDirectory(prefix="workbook-grade-") as scratch:
        workdir = Path(scratch)
        (workdir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        result = workdir / "result.json"
        with open(workdir / "runner.log", "w", encoding="utf-8") as log:
            runner = subprocess.Popen([sys.executable, "-m", "utils.grade.execute", str(workdir / "job.json"), str(result)],
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
                             f"the notebook ran past its {limits.notebook_seconds:g} s limit")
        try:
            return [Row(**row) for row in json.loads(result.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            tail = (workdir / "runner.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            return _rows_for(job["student"], job["chapter"], ERROR,
                             f"the grader could not run this notebook ({tail[0][:200] if tail else 'no log'})")


class WorkbookChanged(RuntimeError):
    """The workbook's own code changed while a class was graded: the grades cannot be trusted."""


def workbook_digest(root: Path = ROOT) -> str:
    """A hash of the code every grade depends on: utils/ and the official student notebooks."""
    digest = hashlib.sha256()
    for path in sorted([*(root / "utils").rglob("*.py"), *(root / "chapters").glob("*.ipynb")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def grade_class(submissions: dict[str, Path], limits: Limits, chapter: str | None = None, jobs: int | None = None,
                show_progress: bool = True) -> list[Row]:
    """Every row of every submission, in student and exercise order; `jobs` notebooks at once.

    Raises WorkbookChanged, and grades nothing more, if a submission's code changed the workbook's
    own files (which the reading in tamper.py should have caught)."""
    from utils.session import progress_bar

    rows: list[Row] = []
    before = workbook_digest()
    with ThreadPoolExecutor(max_workers=max(1, jobs or available_cores())) as pool:
        futures = {pool.submit(grade_submission, student, path, limits, chapter): student
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
    args = parser.parse_args(argv)
    submissions = find_submissions(args.submissions)
    if not submissions:
        raise SystemExit("no notebook found in " + " ".join(map(str, args.submissions)))
    limits = Limits(args.cell_timeout, args.notebook_timeout, args.memory_gib)
    try:
        rows = grade_class(submissions, limits, resolve_chapter(args.chapter), args.jobs)
    except WorkbookChanged as error:
        raise SystemExit(str(error)) from None
    for path in write_reports(rows, args.out):
        print("wrote:", path)
