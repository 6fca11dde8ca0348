"""Build every chapter from its single source: `python -m utils.build` (`--check` to verify).

`solutions/NN_slug.py` (jupytext percent format) becomes
- `solutions/NN_slug.ipynb`: the complete notebook, markers removed;
- `chapters/NN_slug.ipynb`: the student notebook, each solution body replaced by a stub;
- `utils/references/chNN_slug.py`: the cells tagged "export", complete, for the checks to import.
Both notebooks open with "Open in Colab" / "Launch Binder" badges, and their first code cell with
the Colab install step (`utils/launch.py`); the README's badges are regenerated from the same place.
Outputs carry no execution results and are byte-identical on every rebuild.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import jupytext
import nbformat

from utils.launch import README_BEGIN, README_END, badges_markdown, colab_setup_code

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXPORT_TAG = "export"
STUB = 'raise NotImplementedError("your solution goes here")'
EXERCISE_HEADING = re.compile(
    r"^(?:# )?### Exercise (?P<id>\d+\.\d+): (?P<title>.+) \(difficulty (?P<difficulty>[1-3])/3, ~(?P<minutes>\d+) min\)$",
    re.MULTILINE)
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class BuildError(ValueError):
    """A chapter source breaks the exercise format."""


def chapter_sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "solutions").glob("[0-9][0-9]_*.py"))


def reference_module_name(stem: str) -> str:
    """Python modules cannot start with a digit: 00_orientation -> ch00_orientation."""
    return f"ch{stem}"


def split_solution(source: str, where: str) -> tuple[str, str]:
    """(solution code without markers, student code with each marked block replaced by a stub)."""
    solution, student, inside, indent = [], [], False, ""
    for number, line in enumerate(source.splitlines(), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise BuildError(f"{where}:{number}: nested {BEGIN}")
            indent = line[: len(line) - len(line.lstrip())]
            if not indent:
                raise BuildError(f"{where}:{number}: a solution must sit inside a function body")
            inside = True
            student.append(indent + STUB)
        elif marker == END:
            if not inside:
                raise BuildError(f"{where}:{number}: {END} without {BEGIN}")
            inside = False
        else:
            solution.append(line)
            if not inside:
                student.append(line)
    if inside:
        raise BuildError(f"{where}: {BEGIN} never closed")
    return "\n".join(solution), "\n".join(student)


def cells_fingerprint(notebook) -> str:
    """A hash of the cells' sources: tells a generated notebook from one a learner edited."""
    sources = [cell.get("source", "") for cell in notebook.get("cells", [])]
    sources = ["".join(source) if isinstance(source, list) else source for source in sources]  # as saved: lines
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()[:16]


def _clean_notebook(cells: list, source_name: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = cells
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:03d}"
        tags = [t for t in cell.metadata.get("tags", []) if t != EXPORT_TAG]
        cell.metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    notebook.metadata = {
        "kernelspec": KERNELSPEC, "language_info": {"name": "python"},
        "workbook": {"generated_from": source_name, "cells_fingerprint": cells_fingerprint(notebook)},
    }
    return notebook


def has_learner_work(path: Path) -> bool:
    """Whether a generated notebook was since edited or executed (so must not be overwritten)."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: leave it for a person to look at
    recorded = notebook.get("metadata", {}).get("workbook", {}).get("cells_fingerprint")
    executed = any(cell.get("outputs") or cell.get("execution_count") for cell in notebook.get("cells", []))
    return executed or recorded != cells_fingerprint(notebook)


def with_launch_cells(cells: list, notebook: str) -> list:
    """Badges for `notebook` (its path in the repository) open the first markdown cell, above the
    title; the Colab install step opens the first code cell. No cell is added or moved."""
    first_code = next((cell for cell in cells if cell.cell_type == "code"), None)
    if first_code is not None:
        first_code.source = colab_setup_code() + "\n" + first_code.source
    if cells and cells[0].cell_type == "markdown":
        cells[0].source = badges_markdown(notebook) + "\n\n" + cells[0].source
    else:
        cells.insert(0, nbformat.v4.new_markdown_cell(badges_markdown(notebook)))
    return cells


def build_readme(root: Path = ROOT) -> dict[Path, str]:
    """The README with its launch badges regenerated between the two markers (if it has them)."""
    path = root / "README.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return {}
    return {path: text[:begin + len(README_BEGIN)] + "\n" + badges_markdown() + "\n" + text[end:]}


def build_chapter(source_path: Path) -> dict[Path, str]:
    """Every file generated from one chapter source, as {path: text}."""
    root = source_path.parent.parent
    stem = source_path.stem
    notebook = jupytext.read(source_path)
    solution_cells, student_cells, exported = [], [], []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            solution_cells.append(nbformat.v4.new_markdown_cell(cell.source, metadata=dict(cell.metadata)))
            student_cells.append(nbformat.v4.new_markdown_cell(cell.source, metadata=dict(cell.metadata)))
            continue
        solution_code, student_code = split_solution(cell.source, f"{source_path.name} cell {index}")
        solution_cells.append(nbformat.v4.new_code_cell(solution_code, metadata=dict(cell.metadata)))
        student_cells.append(nbformat.v4.new_code_cell(student_code, metadata=dict(cell.metadata)))
        if EXPORT_TAG in cell.metadata.get("tags", []):
            exported.append(solution_code.strip())

    solution_cells = with_launch_cells(solution_cells, f"solutions/{stem}.ipynb")
    student_cells = with_launch_cells(student_cells, f"chapters/{stem}.ipynb")
    header = (f'"""Reference solutions of chapter {stem}, exported from solutions/{stem}.py.\n\n'
              f'Generated by `python -m utils.build`; edit the source, not this file.\n"""\n\n')
    return {
        root / "solutions" / f"{stem}.ipynb": nbformat.writes(_clean_notebook(solution_cells, source_path.name)) + "\n",
        root / "chapters" / f"{stem}.ipynb": nbformat.writes(_clean_notebook(student_cells, source_path.name)) + "\n",
        root / "utils" / "references" / f"{reference_module_name(stem)}.py": header + "\n\n\n".join(exported) + "\n",
    }


def exercise_headings(source_path: Path) -> list[dict]:
    """The exercises a chapter source declares: id, title, difficulty, minutes."""
    return [m.groupdict() for m in EXERCISE_HEADING.finditer(source_path.read_text(encoding="utf-8"))]


def build_all(root: Path = ROOT, check: bool = False, force: bool = False) -> list[Path]:
    """Write (or, with check=True, only compare) every generated file; returns the stale ones.

    A notebook that holds a learner's edits or outputs is never overwritten unless `force`.
    """
    stale = []
    for generated in [*map(build_chapter, chapter_sources(root)), build_readme(root)]:
        for path, text in generated.items():
            if path.exists() and path.read_text(encoding="utf-8") == text:
                continue
            stale.append(path)
            if check:
                continue
            if path.suffix == ".ipynb" and path.exists() and has_learner_work(path) and not force:
                print(f"left {path.relative_to(root)} alone: it holds edits or outputs "
                      "(save your work elsewhere, or pass --force to overwrite it)")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if any generated file is stale")
    parser.add_argument("--force", action="store_true", help="overwrite notebooks even if they hold edits")
    args = parser.parse_args()
    stale = build_all(check=args.check, force=args.force)
    for path in stale:
        print(("stale: " if args.check else "wrote: ") + str(path.relative_to(ROOT)))
    if args.check and stale:
        sys.exit("generated files differ from their sources; run `make build` and commit the result")


if __name__ == "__main__":
    main()
