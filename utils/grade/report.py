"""What the grader writes: grades.csv, the class report and one feedback page per student.

The pages are plain HTML with their style inline: they open from a folder, offline, and load
nothing. Everything a submission can influence (messages, names) is escaped.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from utils.grade import (CSV_COLUMNS, ERROR, MISSING, NOT_ATTEMPTED, OUT_OF_MEMORY, PASSED, STATUSES, TAMPERED,
                         TIMEOUT, WRONG, Row)

NEEDS_HELP_BELOW = 0.5  # a student who passed less than this share of a chapter's exercises
TROUBLE = (ERROR, TIMEOUT, OUT_OF_MEMORY, TAMPERED, MISSING)
ADVICE = {
    PASSED: "",
    NOT_ATTEMPTED: "Replace the NotImplementedError with your code, then run the check cell.",
    WRONG: "The message names the likely mistake; the hints under the exercise help too.",
    MISSING: "Keep the function's name as the exercise gives it, in a code cell of its own.",
    ERROR: "Run your notebook from the top (Kernel, Restart and run all) to see the error.",
    TIMEOUT: "Your code ran too long: look for a loop that never ends, or work on smaller inputs.",
    OUT_OF_MEMORY: "Your code used too much memory: avoid building very large tensors or lists.",
    TAMPERED: "Your notebook changes the workbook's checks; write only the exercise's function.",
}
STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;width:100%}th,td{border:1px solid #ccc;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}.passed{color:#1a7f37}.wrong,.error,.timeout,
.out-of-memory,.tampered{color:#b3261e}.not-attempted,.missing{color:#8a6d00}td.n{text-align:right}"""


def write_file(path: Path, text: str) -> None:
    """Write `text` to a new file and move it to `path`: a link planted at `path` is replaced,
    never followed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(temporary, path)


def write_csv(rows: list[Row], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.as_csv() for row in rows)
    write_file(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _page(title: str, body: list[str]) -> str:
    return "\n".join(['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
                      f"<h1>{html.escape(title)}</h1>", *body, "</body></html>", ""])


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _status(status: str) -> str:
    return f'<span class="{status.replace(" ", "-")}">{html.escape(status)}</span>'


def hint_pattern(message: str) -> str:
    """A wrong-answer message with its numbers blanked, so the same mistake groups together."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", message)


def common_hints(rows: list[Row], top: int = 3) -> list[tuple[str, int]]:
    """The `top` most common wrong-answer messages (one example of each, with its count)."""
    counts = Counter(hint_pattern(r.message) for r in rows if r.status == WRONG)
    example = {hint_pattern(r.message): r.message for r in reversed(rows) if r.status == WRONG}
    return [(example[pattern], n) for pattern, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]]


def students_needing_help(rows: list[Row]) -> list[tuple[str, str, str]]:
    """(student, chapter, why) for each student who passed under half a chapter or hit trouble."""
    by_student = defaultdict(list)
    for row in rows:
        by_student[(row.student, row.chapter)].append(row)
    needing = []
    for (student, chapter), own in sorted(by_student.items()):
        passed = sum(r.status == PASSED for r in own)
        reasons = []
        if passed < NEEDS_HELP_BELOW * len(own):
            reasons.append(f"passed {passed} of {len(own)}")
        reasons += [f"{r.exercise or 'notebook'}: {r.status}" for r in own if r.status in TROUBLE]
        if reasons:
            needing.append((student, chapter, "; ".join(reasons)))
    return needing


def class_report(rows: list[Row], minutes: dict[tuple[str, str], int]) -> str:
    """The teacher's page: per exercise its pass rate, status counts, time and common hints."""
    students = sorted({r.student for r in rows})
    body = [f"<p>{len(students)} submission(s), {len(rows)} row(s). Statuses: "
            + ", ".join(f"{_status(s)} {n}" for s, n in Counter(r.status for r in rows).most_common()) + ".</p>"]
    by_exercise = defaultdict(list)
    for row in rows:
        if row.exercise:
            by_exercise[(row.chapter, row.exercise)].append(row)
    table = []
    for (chapter, exercise), own in sorted(by_exercise.items(), key=lambda item: _order(item[0])):
        counts = Counter(r.status for r in own)
        hints = "<br>".join(f"{n} x {html.escape(message)}" for message, n in common_hints(own)) or "-"
        ran = [r.seconds for r in own if r.seconds > 0]
        table.append([html.escape(chapter), html.escape(exercise), html.escape(own[0].title),
                      f'<span class="n">{counts[PASSED] / len(own):.0%}</span> ({counts[PASSED]}/{len(own)})',
                      ", ".join(f"{_status(s)} {counts[s]}" for s in STATUSES if counts[s] and s != PASSED) or "-",
                      str(minutes.get((chapter, exercise), "")),
                      f"{statistics.median(ran):.1f}" if ran else "-", hints])
    body += ["<h2>Exercises</h2>",
             "<p>Budget: the minutes the exercise heading gives. Run time: the median seconds its cells "
             "took in the grader. Hints: the most common wrong-answer messages, with how many students got each.</p>",
             _table(["chapter", "exercise", "title", "pass rate", "other statuses", "budget (min)",
                     "run time (s)", "most common hints"], table)]
    needing = students_needing_help(rows)
    body += ["<h2>Students who may need help</h2>",
             _table(["student", "chapter", "why"], [[html.escape(s), html.escape(c), html.escape(w)] for s, c, w in needing])
             if needing else "<p>None: everyone passed at least half of their chapter, with no trouble.</p>"]
    return _page("Class report", body)


def _order(key: tuple[str, str]) -> tuple:
    chapter, exercise = key
    return chapter, tuple(int(p) if p.isdigit() else 10**6 for p in exercise.split("."))


def feedback_page(student: str, rows: list[Row]) -> str:
    """One student's verdicts, each with its message and what to do next."""
    passed = sum(r.status == PASSED for r in rows)
    chapters = ", ".join(sorted({r.chapter for r in rows if r.chapter})) or "unknown"
    table = [[html.escape(r.exercise or "-"), html.escape(r.title), _status(r.status),
              html.escape(r.message), html.escape(ADVICE.get(r.status, ""))] for r in rows]
    body = [f"<p>Chapter {html.escape(chapters)}: passed {passed} of {len(rows)}.</p>",
            _table(["exercise", "title", "verdict", "message", "what next"], table),
            "<p>These verdicts come from running your exercise cells in the chapter's own notebook, "
            "with the same checks you saw while working.</p>"]
    return _page(f"Feedback for {student}", body)


def feedback_file_name(student: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", student).strip("_") or "student"
    name, n = f"{base}.html", 2
    while name in taken:
        name, n = f"{base}_{n}.html", n + 1
    taken.add(name)
    return name


def write_reports(rows: list[Row], out: Path) -> list[Path]:
    """grades.csv, report.html and feedback/<student>.html under `out`; returns their paths."""
    from utils.grade.notebook import official_chapter

    out.mkdir(parents=True, exist_ok=True)
    minutes = {}
    for chapter in sorted({r.chapter for r in rows if r.chapter}):
        minutes.update({(chapter, slot.id): slot.minutes for slot in official_chapter(chapter).slots})
    write_csv(rows, out / "grades.csv")
    write_file(out / "report.html", class_report(rows, minutes))
    feedback = out / "feedback"
    if feedback.is_symlink() or (feedback.exists() and not feedback.is_dir()):
        feedback.unlink()
    feedback.mkdir(exist_ok=True)
    written, taken = [out / "grades.csv", out / "report.html"], set()
    for student in sorted({r.student for r in rows}):
        path = feedback / feedback_file_name(student, taken)
        write_file(path, feedback_page(student, [r for r in rows if r.student == student]))
        written.append(path)
    return written
