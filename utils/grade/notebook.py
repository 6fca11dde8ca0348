"""Read a submitted notebook: its chapter, and the student's cell for each exercise.

A submission is matched to the official student notebook of its chapter (`chapters/NN_slug.ipynb`)
by what its cells say, never by its file name or cell ids: the chapter is the one whose exercise
ids (`### Exercise 0.2: ...`, `check_exercise("0.2", ...)`) it holds most, and an exercise's cell
is the one that defines that exercise's function or class. Renamed, reordered or re-saved cells
are found all the same; a deleted or renamed function is "missing".
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nbformat

from utils.build import EXERCISE_HEADING, ROOT, STUB, chapter_sources

CHECK_CELL = re.compile(r'^\s*(?P<target>\w+) = check_exercise\("(?P<id>\d+\.\d+)", (?P<name>\w+)\)\s*$')
EXERCISE_ID = re.compile(r'### Exercise (\d+)\.\d+:|check_exercise\(\s*["\'](\d+)\.\d+["\']')


class Unreadable(ValueError):
    """The submission is not a notebook this grader can read."""


@dataclass(frozen=True)
class Slot:
    """One exercise of an official notebook: where its stub and its check cell sit."""

    id: str
    title: str
    minutes: int
    name: str          # the function or class the learner writes
    stub_index: int    # index of the cell holding the stub, in the official notebook
    check_index: int   # index of the cell `name = check_exercise("id", name)`
    stub_source: str


@dataclass(frozen=True)
class Chapter:
    """An official student notebook and its exercises, in order."""

    stem: str
    cells: tuple[tuple[str, str], ...]  # (cell_type, source) of every cell
    slots: tuple[Slot, ...]

    @property
    def code_sources(self) -> frozenset[str]:
        return frozenset(source.strip() for kind, source in self.cells if kind == "code")


def chapter_stems(root: Path = ROOT) -> dict[str, str]:
    """{"00": "00_orientation", ...}: every chapter that has a source."""
    return {source.stem[:2]: source.stem for source in chapter_sources(root)}


def source_of(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def defined_names(source: str) -> set[str]:
    """Functions, classes and plain assignments a cell defines at top level (check cells excluded)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # the cell still counts as the student's: find its definitions by eye
        return set(re.findall(r"^(?:async\s+)?(?:def|class)\s+(\w+)", source, re.M))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and not _is_check_call(node.value):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def _is_check_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check_exercise"


@functools.cache
def official_chapter(stem: str, root: Path = ROOT) -> Chapter:
    """The official student notebook of chapter `stem`, with one Slot per exercise."""
    notebook = nbformat.read(root / "chapters" / f"{stem}.ipynb", as_version=4)
    cells = tuple((cell.cell_type, source_of(cell)) for cell in notebook.cells)
    headings = {m["id"]: m for _, text in cells for m in EXERCISE_HEADING.finditer(text)}
    slots = []
    for index, (kind, source) in enumerate(cells):
        match = CHECK_CELL.match(source) if kind == "code" else None
        if not match:
            continue
        name = match["name"]
        stub_index = max(i for i, (k, s) in enumerate(cells[:index])
                         if k == "code" and STUB in s and name in defined_names(s))
        heading = headings[match["id"]]
        slots.append(Slot(match["id"], heading["title"], int(heading["minutes"]), name, stub_index, index,
                          cells[stub_index][1]))
    return Chapter(stem, cells, tuple(slots))


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path` (an older nbformat converted to 4), or Unreadable with a one-line reason."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise Unreadable("not a notebook: it has no list of cells")
        old = isinstance(data.get("nbformat"), int) and data["nbformat"] < 4
        if old and not isinstance(data.get("worksheets"), list):
            raise Unreadable("not a notebook: it has no worksheets (nbformat 3)")
        if not old and not isinstance(data.get("cells"), list):
            raise Unreadable("not a notebook: it has no list of cells")
        notebook = nbformat.reads(text, as_version=4)
        for cell in notebook.cells:
            if not isinstance(cell, dict) or "cell_type" not in cell:
                raise Unreadable("not a notebook: a cell has no type")
        return notebook
    except Unreadable:
        raise
    except UnicodeDecodeError:
        raise Unreadable("not a notebook: the file is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise Unreadable(f"not a notebook: malformed JSON ({error.msg} at {where})") from None
    except Exception as error:  # nbformat's own complaints about structure
        raise Unreadable(f"not a notebook: {type(error).__name__}: {str(error).splitlines()[0][:120]}") from None


def identify_chapter(notebook, root: Path = ROOT) -> str | None:
    """The stem of the chapter whose exercise ids this notebook holds most (None if none)."""
    stems = chapter_stems(root)
    votes = Counter()
    for cell in notebook.cells:
        for match in EXERCISE_ID.finditer(source_of(cell)):
            number = f"{int(match[1] or match[2]):02d}"
            if number in stems:
                votes[stems[number]] += 1
    if not votes:
        return None
    return min(votes, key=lambda stem: (-votes[stem], stem))


@dataclass(frozen=True)
class Match:
    """The student's cell for one exercise: its source and its 1-based position (None: missing)."""

    source: str | None
    cell: int | None


def _checks_of(exercise_id: str, code: list[tuple[int, str]]) -> list[int]:
    """Positions of the cells that call the check of `exercise_id`."""
    call = re.compile(rf"check_exercise\(\s*[\"']{re.escape(exercise_id)}[\"']")
    return [number for number, source in code if call.search(source)]


def match_exercises(notebook, chapter: Chapter) -> dict[str, Match]:
    """For each exercise, the cell the student's own check cell saw: the last code cell that
    defines its name above (or in) the last cell calling its check, preferring one that is not
    the untouched stub (a learner who copied the cell and filled in the copy). A redefinition
    below the check, to experiment, is not the answer. Without a check cell: the last one."""
    code = submitted_code_cells(notebook)
    matches = {}
    for slot in chapter.slots:
        found = [(number, source) for number, source in code if slot.name in defined_names(source)]
        edited = [(number, source) for number, source in found if source.strip() != slot.stub_source.strip()]
        pool = edited or found
        checks = _checks_of(slot.id, code)
        if checks and any(number <= max(checks) for number, _ in pool):
            pool = [(number, source) for number, source in pool if number <= max(checks)]
        number, source = (pool or [(None, None)])[-1]
        matches[slot.id] = Match(source, number)
    return matches


def helper_cells(notebook, chapter: Chapter, matches: dict[str, Match]) -> dict[str, list[tuple[int, str]]]:
    """{exercise id: [(position, source), ...]}: the student's own code cells (helpers, imports,
    debugging) that sit above an exercise's cell and below the previous one's; they run just
    before it. Cells left as the official notebook has them, check cells, and cells that define
    an exercise's function (old copies, experiments) are not among them."""
    names = {slot.name for slot in chapter.slots}
    official = chapter.code_sources
    answers = {match.cell for match in matches.values() if match.cell is not None}
    order = sorted((match.cell, slot.id) for slot in chapter.slots
                   for match in [matches[slot.id]] if match.cell is not None)
    helpers: dict[str, list[tuple[int, str]]] = {}
    for number, source in submitted_code_cells(notebook):
        if (number in answers or not source.strip() or source.strip() in official or names & defined_names(source)
                or all(CHECK_CELL.match(line) or not line.strip() for line in source.splitlines())):
            continue
        following = next((exercise for cell, exercise in order if cell > number), None)
        if following is not None:
            helpers.setdefault(following, []).append((number, source))
    return helpers


def missing_message(slot: Slot) -> str:
    return f"no cell defines {slot.name} (renamed or deleted?)"


def submitted_code_cells(notebook) -> list[tuple[int, str]]:
    """(1-based position, source) of every code cell."""
    return [(number, source_of(cell)) for number, cell in enumerate(notebook.cells, 1) if cell.get("cell_type") == "code"]
