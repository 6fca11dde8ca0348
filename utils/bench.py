"""Benchmarks (not tests): `python -m utils.bench` prints medians of repeated runs.

- the organism: `load_model()` time and a full-cache forward pass on 32 x 128 tokens;
- each chapter benchmark in `utils/benchmarks/` (its `run()` prints its own lines);
- the test suite as `make test` runs it: wall time, the slowest items, seconds per file (saved to
  tests/durations.json, which orders the next runs longest first: see conftest.py);
- every notebook in solutions/ and chapters/: execution time and the kernel's peak memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

from utils.memo import MEMO_DIR_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "tests" / "durations.json"


# What `make test` runs (keep in step with the Makefile's SUITE_ENV and PYTEST_SUITE).
SUITE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SUITE_ARGS = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder", "tests", "chapters", "solutions", "--nbval-lax"]


def median_time(function, repeats: int = 3) -> float:
    """The median of `repeats` timed calls of `function`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def organism_timings(repeats: int = 5) -> dict[str, float]:
    """Median seconds for load_model() (after imports) and a cached forward on 32 x 128 tokens."""
    import torch

    from utils.models import load_model

    load_seconds = median_time(lambda: load_model(verbose=False, device="cpu"), repeats)
    model = load_model(verbose=False, device="cpu")
    tokens = torch.randint(2, model.cfg.d_vocab, (32, 128))
    model.run_with_cache(tokens)  # warm-up
    forward_seconds = median_time(lambda: model.run_with_cache(tokens), repeats)
    return {"load_model_s": load_seconds, "forward_with_cache_32x128_s": forward_seconds}


def execute_once(path: Path) -> dict[str, float]:
    """Run one notebook in this process's child kernel; report seconds and the kernel's peak RSS."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak_mib}


def notebook_timings(paths: list[Path], repeats: int = 3) -> dict[str, dict[str, float]]:
    """Median time and max peak memory of each notebook, each run in a fresh process."""
    results = {}
    for path in paths:
        runs = []
        for _ in range(repeats):
            output = subprocess.run([sys.executable, "-m", "utils.bench", "--execute-one", str(path)],
                                    check=True, capture_output=True, text=True, cwd=ROOT).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
        results[str(path.relative_to(ROOT))] = {
            "median_s": statistics.median(r["seconds"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs),
        }
        print(f"{path.relative_to(ROOT)}: median {results[str(path.relative_to(ROOT))]['median_s']:.1f}s "
              f"of {repeats}, peak {results[str(path.relative_to(ROOT))]['peak_mib']:.0f} MiB", flush=True)
    return results


def suite_timings(pytest_args: list[str], slowest: int = 15, busy_core: bool = False) -> dict[str, float]:
    """Run the test suite once with `pytest_args`; print its wall time, slowest items and files.

    With `busy_core`, a stand-in load keeps one core busy for the whole run (a spinning Python
    process), to see how the suite fares on a shared machine. Returns the seconds spent in each
    file (setup, call and teardown of its items), which `main` saves as tests/durations.json.
    """
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_core else None
    try:
        return _timed_suite(pytest_args, slowest, "with one core kept busy" if busy_core else "idle")
    finally:
        if load is not None:
            load.kill()
            load.wait()


def _timed_suite(pytest_args: list[str], slowest: int, condition: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "suite.xml"
        start = time.perf_counter()
        memo = {MEMO_DIR_VARIABLE: str(Path(scratch) / "memo")}  # fresh, as make test empties its own
        subprocess.run([sys.executable, "-m", "pytest", *pytest_args, f"--junitxml={report}", "-q"], cwd=ROOT,
                       check=False, stdout=subprocess.DEVNULL, env={**os.environ, **SUITE_ENV, **memo})
        wall = time.perf_counter() - start
        tree = ElementTree.parse(report)
        cases = [(case.get("classname", ""), case.get("name", ""), float(case.get("time", 0)))
                 for case in tree.iter("testcase")]
        failed = [f"{_file_of(case.get('classname', ''))}::{case.get('name')}" for case in tree.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
    per_file: Counter = Counter()
    for classname, _, seconds in cases:
        per_file[_file_of(classname)] += seconds
    print(f"suite ({condition}): {wall:.0f}s wall for {len(cases)} items, {len(failed)} failed "
          f"(pytest {' '.join(pytest_args)})")
    for nodeid in failed:
        print(f"  FAILED {nodeid}")
    for classname, name, seconds in sorted(cases, key=lambda case: -case[2])[:slowest]:
        print(f"  {seconds:7.1f}s  {_file_of(classname)}::{name}")
    for path, seconds in per_file.most_common():
        print(f"  {seconds:7.1f}s  {path} (whole file)")
    return {path: round(seconds, 1) for path, seconds in sorted(per_file.items())}


def durations_from_report(report: Path) -> dict[str, float]:
    """Seconds per file in a JUnit report of a suite run, as tests/durations.json holds them."""
    per_file: Counter = Counter()
    for case in ElementTree.parse(report).iter("testcase"):
        per_file[_file_of(case.get("classname", ""))] += float(case.get("time", 0))
    return {path: round(seconds, 1) for path, seconds in sorted(per_file.items())}


def _file_of(classname: str) -> str:
    """The file of a JUnit classname: `tests.test_x` or `chapters.00_orientation.ipynb`."""
    if classname.endswith(".ipynb"):
        folder, _, stem = classname[: -len(".ipynb")].partition(".")
        return f"{folder}/{stem}.ipynb"
    return classname.split("::")[0].replace(".", "/") + ".py"


def chapter_benchmarks() -> None:
    """Run every `utils/benchmarks/*.py` module's `run()`, in name order."""
    import utils.benchmarks

    for module in sorted(m.name for m in pkgutil.iter_modules(utils.benchmarks.__path__)):
        print(f"--- {module}", flush=True)
        importlib.import_module(f"utils.benchmarks.{module}").run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-notebooks", action="store_true", help="skip the per-notebook medians")
    parser.add_argument("--no-suite", action="store_true", help="skip the timed run of the test suite")
    parser.add_argument("--suite-args", default="", help="extra pytest arguments for the suite run")
    parser.add_argument("--busy-core", action="store_true", help="time the suite with one core kept busy")
    parser.add_argument("--suite-only", action="store_true", help="only the timed run of the test suite")
    parser.add_argument("--durations-from", type=Path, metavar="JUNIT_XML",
                        help="write tests/durations.json from the report of an idle `make test` run, and stop")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    args = parser.parse_args()
    if args.durations_from:
        DURATIONS.write_text(json.dumps(durations_from_report(args.durations_from), indent=1) + "\n")
        print(f"wrote {DURATIONS.relative_to(ROOT)}")
        return
    if args.execute_one:
        print(json.dumps(execute_once(args.execute_one.resolve())))
        return
    if not args.suite_only:
        for name, seconds in organism_timings().items():
            print(f"organism {name}: median {seconds:.3f}s of 5")
        chapter_benchmarks()
    if not args.no_suite:
        durations = suite_timings(SUITE_ARGS + args.suite_args.split(), busy_core=args.busy_core)
        if not args.busy_core:  # the order is planned for an idle machine
            DURATIONS.write_text(json.dumps(durations, indent=1) + "\n")
            print(f"wrote {DURATIONS.relative_to(ROOT)}")
    if args.no_notebooks or args.suite_only:
        return
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "solutions").glob("*.ipynb")) + sorted(
        (ROOT / "chapters").glob("*.ipynb"))
    notebook_timings(paths, args.repeats)


if __name__ == "__main__":
    main()
