"""The generated parts of the book's page for teachers (book/teachers.md includes them).

- `schedule_section`: per chapter, each exercise's difficulty and minutes (from its heading),
  which ones a short session can leave out, and the time either way;
- `planted_section`: per exercise, the realistic mistakes its check is proved to recognise
  (tests/planted/chNN_slug.py) with the hint a learner then sees (found in the check's source).
Both read files only (nothing is imported or run), so `make book` stays quick.
"""

from __future__ import annotations

import ast
from pathlib import Path

from utils.build import ROOT, exercise_headings, reference_module_name

SKIPPABLE_DIFFICULTY = "3"  # a short session leaves out the hard exercises; every chapter still runs


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def schedule_section(sources: list[Path]) -> str:
    """Markdown: one table per chapter, with the full and the short session's minutes."""
    from utils.book import chapter_header

    lines = []
    for source in sources:
        exercises = exercise_headings(source)
        full = sum(int(e["minutes"]) for e in exercises)
        short = sum(int(e["minutes"]) for e in exercises if e["difficulty"] != SKIPPABLE_DIFFICULTY)
        header = chapter_header(source)
        lines += [f"### {header['title']}", "",
                  f"Reading and running the chapter: {header['time'] or 'see its overview'}. Exercises: "
                  f"{full} minutes in all, {short} in a short session.", "",
                  "| exercise | title | difficulty | minutes | short session |", "|---|---|---|---|---|"]
        lines += [f"| {e['id']} | {_cell(e['title'])} | {e['difficulty']}/3 | {e['minutes']} | "
                  f"{'leave out' if e['difficulty'] == SKIPPABLE_DIFFICULTY else 'do'} |" for e in exercises]
        lines.append("")
    return "\n".join(lines)


def planted_mistakes(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{exercise id: [(function name, its docstring, hint substring), ...]} from a planted file's
    `MISTAKES` literal."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {node.name: ast.get_docstring(node) or "" for node in ast.walk(tree)
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    mistakes = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MISTAKES" for t in node.targets):
            for key, value in zip(node.value.keys, node.value.values):
                entries = []
                for element in getattr(value, "elts", []):
                    function, hint = element.elts
                    name = ast.unparse(function)
                    entries.append((name, docstrings.get(name, ""), ast.literal_eval(hint)))
                mistakes[ast.literal_eval(key)] = entries
    return mistakes


def check_messages(path: Path) -> list[str]:
    """Every message a check module can raise, as written (an f-string's fields shown as ...)."""
    tree, messages = ast.parse(path.read_text(encoding="utf-8")), []
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.JoinedStr):
            messages.append("".join(v.value if isinstance(v, ast.Constant) else "..." for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            messages.append(node.value)
    return messages


def planted_section(sources: list[Path], root: Path = ROOT) -> str:
    """Markdown: per chapter, a table of each exercise's planted mistakes and the hints they get."""
    from utils.book import chapter_header

    lines = []
    for source in sources:
        module = reference_module_name(source.stem)
        planted, checks = root / "tests" / "planted" / f"{module}.py", root / "utils" / "exercises" / f"{module}.py"
        if not planted.exists():
            continue
        titles = {e["id"]: e["title"] for e in exercise_headings(source)}
        messages = check_messages(checks) if checks.exists() else []
        lines += [f"### {chapter_header(source)['title']}: the mistakes its checks name", "",
                  "| exercise | the mistake | the hint the learner sees |", "|---|---|---|"]
        for exercise, entries in planted_mistakes(planted).items():
            for name, docstring, hint in entries:
                full = next((m for m in messages if hint in m), hint)
                what = docstring or name.replace("_", " ")
                lines.append(f"| {exercise} {_cell(titles.get(exercise, ''))} | {_cell(what)} | {_cell(full)} |")
        lines.append("")
    return "\n".join(lines)
