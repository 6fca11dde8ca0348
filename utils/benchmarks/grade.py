"""Grading a class: 30 copies of chapter 00 (correct, wrong, empty, broken), two at a time.

Prints the wall time per submission, over the whole class and over the ones that needed a kernel
(an empty notebook is graded without one: every stub is "not attempted"; a malformed one is
rejected before any kernel starts).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from utils.build import ROOT
from utils.grade.cli import find_submissions, grade_class
from utils.grade.execute import Limits

CHAPTER = "00_orientation"
MIX = {"correct": 12, "wrong": 8, "empty": 5, "raises": 2, "malformed": 3}  # 30 in all
LIMITS = Limits(cell_seconds=60, notebook_seconds=300, memory_gib=4)
JOBS = 2


def _notebook(folder: str) -> dict:
    return json.loads((ROOT / folder / f"{CHAPTER}.ipynb").read_text(encoding="utf-8"))


def _edited(old: str, new: str) -> dict:
    """The solution notebook with `old` replaced by `new` in the one cell that holds it."""
    notebook = _notebook("solutions")
    cells = [c for c in notebook["cells"] if old in "".join(c["source"])]
    assert len(cells) == 1, f"the solution of {CHAPTER} changed: {old!r} is not in exactly one cell"
    cells[0]["source"] = "".join(cells[0]["source"]).replace(old, new)
    return notebook


def submissions() -> dict[str, dict]:
    """{file name: notebook} for the benchmark class."""
    kinds = {
        "correct": lambda: _notebook("solutions"),
        "wrong": lambda: _edited("(income < 0.2)", "(income <= 0.2)"),
        "empty": lambda: _notebook("chapters"),
        "raises": lambda: _edited("return torch.relu(x @", "return torch.relu(x_typo @"),
    }
    class_ = {}
    for kind, count in MIX.items():
        for n in range(count):
            class_[f"{kind}_{n:02d}.ipynb"] = None if kind == "malformed" else kinds[kind]()
    return class_


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="workbook-bench-grade-") as scratch:
        folder = Path(scratch)
        for name, notebook in submissions().items():
            text = '{"cells": [' if notebook is None else json.dumps(notebook)
            (folder / name).write_text(text, encoding="utf-8")
        found = find_submissions([folder])
        start = time.perf_counter()
        rows = grade_class(found, LIMITS, CHAPTER, jobs=JOBS, show_progress=False)
        seconds = time.perf_counter() - start
    ran = len(found) - MIX["empty"] - MIX["malformed"]
    statuses = sorted({r.status for r in rows})
    print(f"grade {len(found)} submissions of chapter 00 on {JOBS} cores: {seconds:.0f}s, "
          f"{seconds / len(found):.1f}s per submission ({seconds / ran:.1f}s per executed one, {ran} executed); "
          f"statuses: {', '.join(statuses)}", flush=True)
