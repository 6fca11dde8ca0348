"""Write the book's generated pages: `python -m utils.book` (what `make book` runs before Jupyter Book).

`book/` holds what is written by hand: `_config.yml`, `intro.md`, `teachers.md`, `from_arena.md`, `_ext/`, `_static/`,
`package.json`.
This writes the rest from the chapter sources, into paths that `book/.gitignore` keeps out of git:
- `book/_toc.yml`: the introduction, then per chapter its overview page and the chapter itself;
- `book/overview/NN_slug.md`: the chapter's objectives, time, seed concepts and exercises (id,
  title, difficulty, minutes, from the exercise headings), with its Colab and Binder links;
- `book/chapters/NN_slug.ipynb`: `solutions/NN_slug.ipynb`, executed by Jupyter Book at build time
  (cached), its badges drawn from the book's own images, and a hidden first cell holding a
  fingerprint of `utils/` and the model organism, so the cache reruns a chapter when they change;
- `book/_generated/chapters.md` and `launch.md`, which `intro.md` includes;
- `book/_generated/schedule.md` and `planted.md`, which `teachers.md` (the page for teachers,
  written by hand) includes: time per exercise, and the planted mistakes each check recognises.
A file is rewritten only when its text changes, so Sphinx rebuilds only what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import jupytext
import nbformat

from utils.build import ROOT, chapter_sources, exercise_headings
from utils.grade.teachers import planted_section, schedule_section
from utils.launch import badges_markdown, binder_url, colab_url

BOOK = ROOT / "book"
LOCAL_BADGES = {"colab_image": "_static/badges/colab.svg", "binder_image": "_static/badges/binder.svg"}
FINGERPRINT_TAG = "remove-cell"
DIFFICULTY = {"1": "easy", "2": "medium", "3": "hard"}


def chapter_header(source: Path) -> dict:
    """Title, time, objectives and seed concepts from a chapter source's opening markdown cell."""
    text = next(cell.source for cell in jupytext.read(source).cells if cell.cell_type == "markdown")
    title = re.search(r"^# (.+)$", text, re.M)
    time = re.search(r"\*\*Time:\*\* ([^.]+)\.", text)
    objectives = re.search(r"^\*\*You will learn to\*\*\n((?:(?:- |  ).*\n?)+)", text, re.M)
    seeds = re.search(r"^\*\*Seed concepts:\*\* ((?:.+\n?)+)", text, re.M)
    return {
        "title": title[1].strip() if title else source.stem,
        "time": time[1].strip() if time else "",
        "objectives": objectives[1].rstrip() if objectives else "",
        "seeds": " ".join(seeds[1].split()) if seeds else "",
    }


def local_badges(notebook: str, depth: int) -> str:
    """The badges of `notebook`, drawn from the book's own images (the site loads nothing remote)."""
    up = "../" * depth
    return badges_markdown(notebook, **{key: up + path for key, path in LOCAL_BADGES.items()})


def overview_page(source: Path) -> str:
    header = chapter_header(source)
    exercises = exercise_headings(source)
    stem = source.stem
    lines = [f"# {header['title']}, at a glance", "", local_badges(f"chapters/{stem}.ipynb", 1), ""]
    if header["time"]:
        minutes = sum(int(e["minutes"]) for e in exercises)
        lines += [f"**Time:** {header['time']}, of which the {len(exercises)} exercises take about {minutes} minutes.", ""]
    if header["objectives"]:
        lines += ["## You will learn to", "", header["objectives"], ""]
    if header["seeds"]:
        lines += ["## Seed concepts", "", header["seeds"], ""]
    lines += ["## Exercises", "", "| exercise | title | difficulty | minutes |", "|---|---|---|---|"]
    lines += [f"| {e['id']} | {e['title']} | {e['difficulty']}/3 ({DIFFICULTY[e['difficulty']]}) | {e['minutes']} |"
              for e in exercises]
    lines += ["", f"Read the chapter, executed, with every output: {{doc}}`../chapters/{stem}`. To do the "
              f"exercises, open the student notebook `chapters/{stem}.ipynb` on your machine (`make lab`), on "
              f"[Colab]({colab_url(f'chapters/{stem}.ipynb')}) or on [Binder]({binder_url(f'chapters/{stem}.ipynb')}).", ""]
    return "\n".join(lines)


def chapters_table(sources: list[Path]) -> str:
    lines = ["| chapter | time | exercises |", "|---|---|---|"]
    for source in sources:
        header, exercises = chapter_header(source), exercise_headings(source)
        lines.append(f"| {{doc}}`{header['title']} <overview/{source.stem}>` | {header['time']} | {len(exercises)} |")
    return "\n".join(lines) + "\n"


def launch_section() -> str:
    return "\n".join([
        local_badges(None, 0), "",
        "- **On your machine:** `make lab` sets everything up and opens JupyterLab on `chapters/`; "
        "it runs offline, on a CPU.",
        "- **On Colab:** the first cell of every chapter installs the workbook there (a minute or two) "
        "and keeps Colab's own torch, so a GPU runtime works too.",
        "- **On Binder:** JupyterLab in the browser on `chapters/`, with a CPU torch and the workbook's pins.",
        ""])


def code_fingerprint(root: Path = ROOT) -> str:
    """A hash of everything a chapter's outputs depend on besides its own cells."""
    digest = hashlib.sha256()
    files = sorted(p for p in (root / "utils").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix in {".py", ".json", ".safetensors", ".txt", ".md"} and p.name != "book.py")
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def book_notebook(source: Path, fingerprint: str) -> str:
    stem = source.stem
    notebook = nbformat.reads((ROOT / "solutions" / f"{stem}.ipynb").read_text(encoding="utf-8"), as_version=4)
    first = notebook.cells[0]
    remote = badges_markdown(f"solutions/{stem}.ipynb")
    if first.cell_type == "markdown" and remote in first.source:
        first.source = first.source.replace(remote, local_badges(f"chapters/{stem}.ipynb", 1))
    marker = nbformat.v4.new_code_cell(f"# inputs fingerprint (utils/ and the model organism): {fingerprint}",
                                       metadata={"tags": [FINGERPRINT_TAG]})
    marker.id = "book-fingerprint"
    notebook.cells.insert(0, marker)
    return nbformat.writes(notebook) + "\n"


def toc(sources: list[Path]) -> str:
    lines = ["# Generated by `python -m utils.book`.", "format: jb-book", "root: intro", "parts:"]
    lines += ["  - caption: Chapters", "    chapters:"] if sources else []
    for source in sources:
        lines += [f"      - file: overview/{source.stem}", f"        title: {json.dumps(chapter_header(source)['title'])}",
                  "        sections:", f"          - file: chapters/{source.stem}", "            title: The chapter, executed"]
    lines += ["  - caption: Coming from elsewhere", "    chapters:", "      - file: from_arena"]
    lines += ["  - caption: For teachers", "    chapters:", "      - file: teachers"]
    return "\n".join(lines) + "\n"


def generated_pages(chapters: list[str] | None = None, root: Path = ROOT) -> dict[Path, str]:
    """{path: text} of every generated page; `chapters` ("00", "02"...) limits the book to those."""
    sources = [s for s in chapter_sources(root) if not chapters or s.stem[:2] in chapters]
    fingerprint = code_fingerprint(root)
    book = root / "book"
    pages = {book / "_toc.yml": toc(sources), book / "_generated" / "chapters.md": chapters_table(sources),
             book / "_generated" / "launch.md": launch_section(),
             book / "_generated" / "schedule.md": schedule_section(sources),  # both included by teachers.md
             book / "_generated" / "planted.md": planted_section(sources, root)}
    for source in sources:
        pages[book / "overview" / f"{source.stem}.md"] = overview_page(source)
        pages[book / "chapters" / f"{source.stem}.ipynb"] = book_notebook(source, fingerprint)
    return pages


def write_pages(pages: dict[Path, str]) -> list[Path]:
    """Write what changed, remove generated pages of chapters no longer in the book; returns what was written."""
    written = []
    for folder in ("overview", "chapters"):
        for old in (BOOK / folder).glob("*"):
            if old not in pages:
                old.unlink()
    for path, text in pages.items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help='chapter numbers to include ("00 03"); default: all')
    args = parser.parse_args()
    for path in write_pages(generated_pages(args.chapters)):
        print("wrote:", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
