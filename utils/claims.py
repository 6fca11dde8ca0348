"""The robustness run for claims: every claim test, under several seeds and thread counts.

A chapter's claim tests assert what its prose says about the organism through
`tests.claims.claim(...)`, which records each measurement when WORKBOOK_CLAIM_REPORT names a file.
This runs those test modules (the `tests/test_<topic>.py` files that call `claim(`) once per
claim seed and thread count, then prints one row per claim: its worst value over the runs, its
bar, its worst margin (smallest first, relative to the bar) and how many runs measured it.

    python -m utils.claims                      # seeds 0-4, threads 1 and 2, every claim module
    python -m utils.claims --seeds 0,3 --threads 1 tests/test_probing.py
    python -m utils.claims --table-only claims-report/    # reprint the table of earlier runs
    python -m utils.claims --seeds 1,2 --threads 1 --jobs 2  # two runs at once (machines with cores to spare)

It exits non-zero when any claim failed in any run, or a test errored before its claims ran.
Not part of `make test`: a full run is about ten times the claim modules' share of the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
# A claim module is a chapter's test module that asserts through claim(); the exercise tests,
# the framework's own tests and the helper itself are not.
NOT_CLAIM_MODULES = {"test_exercises.py", "test_checks.py", "test_claims.py", "claims.py"}
CLAIM_CALL = re.compile(r"^\s*(?:from tests\.claims import|import tests\.claims)|\bclaim\(", re.MULTILINE)


def claim_modules() -> list[Path]:
    """Every tests/test_<topic>.py that calls claim(): modules converted later are found too."""
    return [path for path in sorted(TESTS.glob("test_*.py"))
            if path.name not in NOT_CLAIM_MODULES and CLAIM_CALL.search(path.read_text(encoding="utf-8"))]


def parse_ints(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '1,2' -> [1, 2]; '0-2,7' -> [0, 1, 2, 7]."""
    values = []
    for part in text.split(","):
        start, _, end = part.strip().partition("-")
        if not start.isdigit() or (end and not end.isdigit()):
            raise argparse.ArgumentTypeError(f"expected numbers like 0-4 or 1,2, got {text!r}")
        values += range(int(start), int(end or start) + 1)
    return values


@dataclass
class Run:
    """One pytest run of the claim modules under one seed and one thread count."""

    seed: int
    threads: int
    report: Path
    returncode: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)


def run_once(modules: list[Path], seed: int, threads: int, out: Path, pytest_args: list[str]) -> Run:
    """Run `modules` with WORKBOOK_CLAIM_SEED=seed on `threads` torch threads; records go to out/."""
    run = Run(seed, threads, out / f"seed{seed}-threads{threads}.jsonl")
    run.report.unlink(missing_ok=True)
    env = dict(os.environ, WORKBOOK_CLAIM_SEED=str(seed), WORKBOOK_CLAIM_REPORT=str(run.report),
               WORKBOOK_CLAIM_RECORD_ONLY="1",  # a failed claim is recorded and the test goes on to its next
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               WORKBOOK_PROGRESS=str(out / "progress.json"))
    command = [sys.executable, "-m", "pytest", *map(str, modules), "-m", "not slow", "-q", "-rfE",
               "-p", "no:cacheprovider", *pytest_args]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    run.seconds, run.returncode = time.perf_counter() - start, result.returncode
    run.failed = [line.split(" ", 1)[1].split(" - ")[0] for line in result.stdout.splitlines()
                  if line.startswith(("FAILED ", "ERROR "))]
    (out / f"seed{seed}-threads{threads}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    return run


def read_records(paths: list[Path]) -> list[dict]:
    """The claim records (one JSON object a line) of every report file in `paths`."""
    records = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def summarise(records: list[dict]) -> list[dict]:
    """One row per claim: worst value and margin over its records, its bar, how many runs and
    measurements; smallest margin (relative to the bar) first."""
    by_claim: dict[str, list[dict]] = {}
    for record in records:
        by_claim.setdefault(record["claim"], []).append(record)
    rows = []
    for name, found in by_claim.items():
        worst = min(found, key=lambda r: r["margin"])
        rows.append({"claim": name, "worst value": worst["value"], "bar": f"{worst['direction']} {worst['bar']:.4g}",
                     "worst margin": worst["margin"],
                     "relative": worst["margin"] / abs(worst["bar"]) if worst["bar"] else float("nan"),
                     "runs": len({(r.get("seed"), r.get("threads")) for r in found}), "measurements": len(found),
                     "worst run": f"seed {worst.get('seed')}, threads {worst.get('threads') or '-'}",
                     "failed": sum(r["margin"] <= 0 for r in found)})
    # Smallest first, relative to the bar (a margin of 1e-5 under a bar of 1e-5 is wide; 0.03 under
    # an accuracy bar of 0.95 is narrow); a bar of 0 has only its absolute margin.
    return sorted(rows, key=lambda row: row["worst margin"] if row["relative"] != row["relative"] else row["relative"])


def table(rows: list[dict]) -> str:
    """The rows as a plain-text table, one claim a line."""
    if not rows:
        return "no claim was recorded"
    width = min(90, max(len(row["claim"]) for row in rows))
    lines = [f"{'claim':<{width}}  {'worst value':>11}  {'bar':>10}  {'margin':>9}  {'rel.':>6}  {'runs':>4}  "
             f"{'n':>4}  worst run"]
    for row in rows:
        name = row["claim"] if len(row["claim"]) <= width else row["claim"][: width - 3] + "..."
        flag = "  FAILED" if row["failed"] else ""
        lines.append(f"{name:<{width}}  {row['worst value']:>11.4g}  {row['bar']:>10}  {row['worst margin']:>+9.3g}  "
                     f"{row['relative']:>+6.0%}  {row['runs']:>4}  {row['measurements']:>4}  {row['worst run']}{flag}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", type=Path, help="claim test modules (default: every one)")
    parser.add_argument("--seeds", type=parse_ints, default=parse_ints("0-4"), help="claim seeds (default 0-4)")
    parser.add_argument("--threads", type=parse_ints, default=parse_ints("1,2"), help="torch threads (default 1,2)")
    parser.add_argument("--out", type=Path, default=ROOT / "claims-report", help="where records and logs go")
    parser.add_argument("--table-only", type=Path, metavar="FOLDER",
                        help="print the table of the *.jsonl records in FOLDER without running anything")
    parser.add_argument("-k", dest="keyword", help="only the tests pytest -k selects")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1; each is one pytest process on its own threads)")
    args = parser.parse_args(argv)

    if args.table_only:
        reports = sorted(args.table_only.glob("*.jsonl"))
        if not reports:
            parser.error(f"no *.jsonl claim records in {args.table_only}")
        rows = summarise(read_records(reports))
        print(table(rows))
        return 1 if any(row["failed"] for row in rows) else 0

    modules = args.modules or claim_modules()
    missing = [str(path) for path in modules if not path.exists()]
    if missing:
        parser.error(f"no such test module: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    pytest_args = ["-k", args.keyword] if args.keyword else []
    print(f"{len(modules)} claim modules x seeds {args.seeds} x threads {args.threads}: "
          + ", ".join(path.name for path in modules), flush=True)
    runs = []
    settings = [(seed, threads) for seed in args.seeds for threads in args.threads]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_once, modules, seed, threads, args.out, pytest_args) for seed, threads in settings]
        for future in as_completed(futures):
            run = future.result()
            runs.append(run)
            status = "ok" if run.returncode == 0 else f"{len(run.failed)} failed: {', '.join(run.failed[:3])}"
            print(f"  seed {run.seed}, threads {run.threads}: {run.seconds:.0f} s, {status}", flush=True)
    rows = summarise(read_records([run.report for run in runs if run.report.exists()]))
    print()
    print(table(rows))
    broken = [run for run in runs if run.returncode not in (0, 5)]  # 5: no test collected (-k)
    print(f"\n{len(rows)} claims, {len(runs)} runs, {sum(run.seconds for run in runs):.0f} s in all; "
          f"records and logs in {args.out}")
    if broken:
        for run in broken:
            print(f"seed {run.seed}, threads {run.threads}: pytest exited {run.returncode}; "
                  f"failed: {', '.join(run.failed) or 'see the log'}")
    return 1 if broken or any(row["failed"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
