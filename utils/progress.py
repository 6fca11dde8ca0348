"""The learner's record: each check writes its verdict to a JSON file outside the repository.

The file lives in `~/.interp_workbook/progress.json` (or wherever WORKBOOK_PROGRESS points).
A file that cannot be read is moved aside with a one-line notice, never overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

STATUS_RANK = {"not attempted": 0, "wrong": 1, "passed": 2}


def progress_path() -> Path:
    """Where the record lives: $WORKBOOK_PROGRESS, else ~/.interp_workbook/progress.json."""
    return Path(os.environ.get("WORKBOOK_PROGRESS", Path.home() / ".interp_workbook" / "progress.json"))


def _is_valid(record) -> bool:
    return isinstance(record, dict) and all(
        isinstance(exercises, dict) and all(isinstance(entry, dict) and "status" in entry
                                            for entry in exercises.values())
        for exercises in record.values())


def load_progress(path: Path | None = None) -> dict:
    """The record as {chapter: {exercise_id: entry}}; a corrupted file is set aside and reported."""
    path = Path(path or progress_path())
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not _is_valid(record):
            raise ValueError("unexpected structure")
        return record
    except (ValueError, UnicodeDecodeError) as error:
        aside = path.with_name(f"{path.stem}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        path.rename(aside)
        print(f"progress file {path} could not be read ({error}); kept it as {aside.name} and started a new record")
        return {}


def record_attempt(chapter: str, exercise_id: str, title: str, status: str, path: Path | None = None) -> None:
    """Add one attempt; the best status so far is kept. 'not attempted' only registers the exercise."""
    path = Path(path or progress_path())
    record = load_progress(path)
    entry = record.setdefault(chapter, {}).setdefault(
        exercise_id, {"title": title, "status": "not attempted", "attempts": 0})
    if status != "not attempted":
        entry["attempts"] += 1
        entry["last_attempt"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if STATUS_RANK.get(status, 0) > STATUS_RANK.get(entry["status"], 0):
        entry["status"] = status
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(f.name, path)  # atomic: a crash mid-write never leaves half a file
    except OSError as error:
        print(f"could not save progress to {path} ({error}); the verdict above still stands")


def _exercise_order(exercise_id: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in exercise_id.split("."))


def progress_table(chapter: str | None = None, path: Path | None = None) -> str:
    """A plain-text table per chapter: exercise, title, status, attempts."""
    record = load_progress(path)
    chapters = [chapter] if chapter else sorted(record)
    lines = []
    for name in chapters:
        exercises = record.get(name, {})
        passed = sum(entry["status"] == "passed" for entry in exercises.values())
        lines.append(f"{name}: {passed}/{len(exercises)} passed")
        for exercise_id in sorted(exercises, key=_exercise_order):
            entry = exercises[exercise_id]
            lines.append(f"  {exercise_id:<6} {entry.get('title', '')[:40]:<40} {entry['status']:<14} "
                         f"{entry.get('attempts', 0)} attempt(s)")
    return "\n".join(lines) if lines else "no exercises checked yet"


def show_progress(chapter: str | None = None) -> None:
    """Print the learner's record, one table per chapter."""
    print(progress_table(chapter))
