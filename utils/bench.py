"""Benchmarks (not tests): `python -m utils.bench` prints medians of repeated runs.

- the organism: `load_model()` time and a full-cache forward pass on 32 x 128 tokens;
- each chapter benchmark in `utils/benchmarks/` (its `run()` prints its own lines);
- every notebook in solutions/ and chapters/: execution time and the kernel's peak memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _median_time(function, repeats: int) -> float:
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

    load_seconds = _median_time(lambda: load_model(verbose=False, device="cpu"), repeats)
    model = load_model(verbose=False, device="cpu")
    tokens = torch.randint(2, model.cfg.d_vocab, (32, 128))
    model.run_with_cache(tokens)  # warm-up
    forward_seconds = _median_time(lambda: model.run_with_cache(tokens), repeats)
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
    parser.add_argument("--no-notebooks", action="store_true", help="only the organism and chapter benchmarks")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    args = parser.parse_args()
    if args.execute_one:
        print(json.dumps(execute_once(args.execute_one.resolve())))
        return
    for name, seconds in organism_timings().items():
        print(f"organism {name}: median {seconds:.3f}s of 5")
    chapter_benchmarks()
    if args.no_notebooks:
        return
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "solutions").glob("*.ipynb")) + sorted(
        (ROOT / "chapters").glob("*.ipynb"))
    notebook_timings(paths, args.repeats)


if __name__ == "__main__":
    main()
