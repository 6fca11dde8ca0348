"""A learner's trial of chapters: Run All, then a look at every output in JupyterLab in a browser.

    python -m utils.browser_trial 03 08 [--out /tmp/trial] [--solutions] [--no-browser]

For each chapter it
1. copies the student notebook (`chapters/`, or `solutions/` with --solutions) into OUT/NN/ and
   runs every cell in one kernel, from the repository root as JupyterLab would, timing each cell;
2. saves the run notebook there and reports its size: what a learner's file weighs after Run All
   and Ctrl+S (JupyterLab adds a PNG snapshot of each plotly figure on top, 30-90 KB apiece);
3. lists what a learner would notice: cells over 5 s that print no progress bar, text lines too
   wide for a 1400 px window (they wrap mid-column), errors;
4. with selenium and a chromedriver (`pip install selenium`; Debian's `chromium-driver`), starts
   JupyterLab headless on a throw-away configuration, opens the run notebook in Chromium at
   1400x1000, scrolls to every cell that has an output and saves a screenshot of it
   (OUT/NN/cell-XXX.png), and reports outputs that are clipped or scroll sideways.

The summary goes to OUT/summary.json and to the terminal. It changes nothing in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW_CELL_S = 5.0
# JupyterLab's output area is about 1017 px wide in a 1400 px window; its monospace font is 13 px,
# about 7.8 px a character.
WIDE_LINE_CHARS = 130
PROGRESS_MARKS = ("%|", "it/s", "s/it", " done in ", "application/vnd.jupyter.widget-view+json")


def find_notebook(chapter: str, solutions: bool, root: Path = ROOT) -> Path:
    folder = root / ("solutions" if solutions else "chapters")
    found = sorted(folder.glob(f"{chapter}_*.ipynb"))
    if not found:
        raise SystemExit(f"no notebook {folder}/{chapter}_*.ipynb (run `python -m utils.build` first)")
    return found[0]


def _seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.status.busy"), timing.get("iopub.status.idle")
    if not (start and end):
        return None
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def _output_texts(cell) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append("".join(output.get("text", "")))
        for mime, value in output.get("data", {}).items():
            texts.append(mime if not mime.startswith("text/") else "".join(value))
    return texts


def review(nb) -> dict:
    """What a learner would notice in a run notebook, cell by cell."""
    slow, wide, errors, cells = [], [], [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        seconds, texts = _seconds(cell), _output_texts(cell)
        cells.append({"cell": index, "seconds": seconds})
        if seconds is not None and seconds > SLOW_CELL_S and not any(mark in text for text in texts
                                                                      for mark in PROGRESS_MARKS):
            slow.append({"cell": index, "seconds": round(seconds, 1), "source": cell.source.splitlines()[0][:80]})
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append({"cell": index, "error": f"{output.get('ename')}: {output.get('evalue')}"[:200]})
            if output.get("output_type") == "stream" or "text/html" not in output.get("data", {}):
                text = "".join(output.get("text", output.get("data", {}).get("text/plain", "")))
                longest = max((len(line) for line in text.splitlines()), default=0)
                if longest > WIDE_LINE_CHARS and "%|" not in text:
                    wide.append({"cell": index, "characters": longest})
    return {"slow_without_progress": slow, "wide_text": wide, "errors": errors, "cells": cells}


def run_chapter(notebook: Path, folder: Path, root: Path = ROOT) -> tuple[Path, dict]:
    """Run every cell of `notebook` from the repository `root`; save the result in `folder`."""
    import nbformat
    from nbclient import NotebookClient

    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True, record_timing=True,
                            resources={"metadata": {"path": str(root)}})
    started = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - started
    saved = folder / notebook.name
    nbformat.write(nb, saved)
    summary = {"notebook": str(notebook), "run_all_s": round(wall, 1),
               "saved_bytes": saved.stat().st_size, **review(nb)}
    return saved, summary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """JupyterLab, headless, on a throw-away configuration, serving `root`."""

    def __init__(self, root: Path):
        self.root, self.port, self.token = root, _free_port(), "trial"
        scratch = root / ".jupyter"
        self.env = dict(os.environ, JUPYTER_CONFIG_DIR=str(scratch / "config"), JUPYTER_DATA_DIR=str(scratch / "data"),
                        JUPYTER_RUNTIME_DIR=str(scratch / "runtime"))
        self.settings = scratch / "settings"
        # Every cell attached to the page (JupyterLab otherwise attaches only those near the view),
        # so the trial can visit each one in order.
        tracker = self.settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True, exist_ok=True)
        tracker.write_text(json.dumps({"windowingMode": "none"}))
        news = self.settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text(json.dumps({"fetchNews": "false"}))  # no "get notified?" toast over the cells

    def trust(self, notebook: Path) -> None:
        """Sign the notebook as its owner would by saving it: JupyterLab then runs its outputs' scripts."""
        subprocess.run([sys.executable, "-m", "jupyter", "trust", str(notebook)], env=self.env, check=True,
                       capture_output=True)

    def __enter__(self) -> Lab:
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   f"--LabApp.user_settings_dir={self.settings}", f"--LabApp.workspaces_dir={self.settings / 'ws'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # containers run as root; JupyterLab refuses without it
        self.log = open(self.root / "lab.log", "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}", timeout=2)
                return self
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"JupyterLab did not answer; see {self.root / 'lab.log'}")

    def url(self, notebook: Path) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook.relative_to(self.root)}?reset&token={self.token}"

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


# Per output: clipped (content wider than its box, so it scrolls sideways or is cut) and wrapped
# text lines (a `pre` taller than its own lines).
_INSPECT = """
const cell = arguments[0], found = [];
cell.querySelectorAll('.jp-OutputArea-output').forEach(out => {
  if (out.scrollWidth > out.clientWidth + 2) found.push('scrolls sideways (' + out.scrollWidth + ' > ' + out.clientWidth + ' px)');
  out.querySelectorAll('pre').forEach(pre => {
    const lines = pre.textContent.replace(/\\n$/, '').split('\\n').length;
    const height = parseFloat(getComputedStyle(pre).lineHeight) || 17;
    if (pre.clientHeight > (lines + 0.5) * height) found.push('text wraps (' + lines + ' lines drawn in ' + Math.round(pre.clientHeight / height) + ')');
  });
  out.querySelectorAll('.gtitle').forEach(title => {
    const box = title.getBoundingClientRect(), svg = title.closest('svg').getBoundingClientRect();
    if (box.left < svg.left - 1 || box.right > svg.right + 1) found.push('plotly title clipped');
  });
});
return found;
"""


def screenshots(lab: Lab, notebook: Path, folder: Path) -> dict:
    """Open `notebook` in Chromium at 1400x1000 and photograph every cell with an output."""
    import nbformat
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    if Path("/usr/bin/chromium").exists():
        options.binary_location = "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver")  # Debian's, matching its chromium; else selenium finds one
    driver = webdriver.Chrome(options=options, service=Service(driver_path) if driver_path else None)
    problems, shots = [], []
    n_cells = len(nbformat.read(notebook, as_version=4).cells)
    try:
        driver.get(lab.url(notebook))
        deadline = time.time() + 180
        while (time.time() < deadline
               and len(driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) < n_cells):
            time.sleep(1)
        time.sleep(3)
        for index in range(n_cells):
            cells = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
            if index >= len(cells):
                break
            cell = cells[index]
            driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", cell)
            if not cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"):
                continue
            time.sleep(0.8)  # plotly and the attention views draw after they are attached
            path = folder / f"cell-{index:03d}.png"
            cell.screenshot(str(path))
            shots.append(str(path))
            problems += [{"cell": index, "problem": text} for text in driver.execute_script(_INSPECT, cell)]
        saved_in_lab = save_in_lab(driver, notebook)
    finally:
        driver.quit()
    return {"screenshots": shots, "browser_problems": problems, "saved_in_lab_bytes": saved_in_lab}


def save_in_lab(driver, notebook: Path) -> int | None:
    """Ctrl+S, as a learner saves: JupyterLab writes what it shows, a PNG snapshot of each plotly
    figure included. The size of the file it wrote (None if it did not write within a minute)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = notebook.stat().st_mtime
    driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[0].click()
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    for _ in range(60):
        time.sleep(1)
        if notebook.stat().st_mtime != before:
            time.sleep(1)  # let the write finish
            return notebook.stat().st_size
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", help="chapter numbers, e.g. 03 08")
    parser.add_argument("--out", type=Path, default=Path("/tmp/trial"))
    parser.add_argument("--solutions", action="store_true", help="run solutions/ instead of chapters/")
    parser.add_argument("--no-browser", action="store_true", help="run and measure, take no screenshots")
    parser.add_argument("--view-only", action="store_true", help="reuse the notebooks an earlier trial ran in OUT")
    parser.add_argument("--repo", type=Path, default=ROOT, help="another checkout to try (to compare before/after)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WORKBOOK_PROGRESS", str(args.out / "progress.json"))  # not the learner's record
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}  # other chapters' rows stay
    for chapter in args.chapters:
        if args.view_only:
            continue
        notebook = find_notebook(chapter, args.solutions, args.repo)
        folder = args.out / chapter
        if folder.exists():
            shutil.rmtree(folder)
        saved, summary[chapter] = run_chapter(notebook, folder, args.repo)
        print(f"{chapter}: Run All {summary[chapter]['run_all_s']} s, saved {summary[chapter]['saved_bytes']:,} bytes, "
              f"{len(summary[chapter]['slow_without_progress'])} slow cells without progress, "
              f"{len(summary[chapter]['wide_text'])} wide text outputs, {len(summary[chapter]['errors'])} errors",
              flush=True)
    if not args.no_browser:
        try:
            import selenium  # noqa: F401
        except ImportError:
            print("no screenshots: selenium is not installed (pip install selenium)")
        else:
            with Lab(args.out) as lab:
                for chapter in args.chapters:
                    saved = next((args.out / chapter).glob("*.ipynb"))
                    summary.setdefault(chapter, {"slow_without_progress": [], "wide_text": [], "errors": []})
                    lab.trust(saved)
                    summary[chapter].update(screenshots(lab, saved, args.out / chapter))
                    print(f"{chapter}: saved from JupyterLab {summary[chapter]['saved_in_lab_bytes']} bytes; "
                          f"{len(summary[chapter]['screenshots'])} screenshots in {args.out / chapter}, "
                          f"browser problems: {summary[chapter]['browser_problems'] or 'none'}", flush=True)
    summary_path.write_text(json.dumps(summary, indent=1))
    for chapter, found in summary.items():
        for key in ("slow_without_progress", "wide_text", "errors"):
            for item in found[key]:
                print(f"  {chapter} {key}: {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
