"""Run one submission in a fresh kernel, under limits, and turn what happened into rows.

`python -m utils.grade.execute JOB RESULT` is what the grader starts, once per submission, in its
own process and session; JOB is the JSON that `cli.py` writes (the student's cell for each
exercise, the limits), RESULT the JSON of rows this writes back. The memory limit is set on this
process (`resource.setrlimit`), so the kernel it starts inherits it.

The notebook run, one cell at a time through jupyter_client, is the official student notebook of
the chapter, where
- a first cell starts the grader's side of the kernel (`kernel.start`), before any student code;
- each stub cell holds the student's cell for that exercise (the stub when there is none);
- each check cell calls `kernel.check` with a one-time code, and the verdict is read only from
  that cell's display message carrying that code;
- a last cell (`kernel.finish`) sends the chapter's extra verdicts.
The student's cells and the checks that call their code have the per-cell limit; the chapter's
own cells, whose cost is known, only the notebook's. When the kernel dies or cannot be
interrupted, the exercise at fault gets its row and the notebook runs again from the start with
that exercise set back to its stub, so one crash costs one exercise.
"""

from __future__ import annotations

import json
import re
import resource
import secrets
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from time import monotonic

from jupyter_client import KernelManager

from utils.grade import (ERROR, MISSING, NOT_ATTEMPTED, OUT_OF_MEMORY, PASSED, TAMPERED, TIMEOUT, WRONG, Row)
from utils.grade.kernel import MIMETYPE
from utils.grade.notebook import Chapter, missing_message, official_chapter

# Every grader cell imports the grader afresh, so no name the student's code could rebind is used.
GRADER_IMPORT = "import utils.grade.kernel as _workbook_grader"
MAX_RUNS = 4          # one first run, then one more per exercise that stops the kernel
MESSAGE_LIMIT = 300   # characters of a message in grades.csv
PROBE_SECONDS = 10    # how long an interrupted kernel has to answer again
MEMORY_WORDS = ("MemoryError", "can't allocate memory", "out of memory", "not enough memory", "Cannot allocate memory")


@dataclass(frozen=True)
class Limits:
    """How long one cell of the student's code, and one whole notebook, may run; how much memory
    (data segment, GiB) the kernel may hold."""

    cell_seconds: float = 120.0
    notebook_seconds: float = 900.0
    memory_gib: float = 6.0


@dataclass
class CellResult:
    """What happened to one executed cell."""

    seconds: float
    outputs: list = field(default_factory=list)
    timed_out: bool = False

    @property
    def error(self) -> tuple[str, str] | None:
        errors = [o for o in self.outputs if o.get("output_type") == "error"]
        return (errors[-1]["ename"], errors[-1]["evalue"]) if errors else None

    def payloads(self) -> list:
        return [o["data"][MIMETYPE] for o in self.outputs
                if o.get("output_type") == "display_data" and MIMETYPE in o.get("data", {})]


@dataclass(frozen=True)
class Stop:
    """The kernel could not go on: the exercise at fault (None: a chapter cell), and its row."""

    exercise: str | None
    status: str
    message: str


def limit_memory(gib: float) -> None:
    """Cap this process's data segment (and so its kernel's) at `gib` GiB, where the OS allows."""
    limit = int(gib * 2**30)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (ValueError, OSError, AttributeError):
        pass  # not enforceable here: the notebook limit still stops a runaway


def graded_cells(chapter: Chapter, sources: dict[str, str | None],
                 codes: dict[str, str]) -> list[tuple[str, str | None, str]]:
    """(kind, exercise id, source) of every code cell to run: start, chapter, solution, check, finish."""
    stubs = {slot.stub_index: slot for slot in chapter.slots}
    checks = {slot.check_index: slot for slot in chapter.slots}
    cells = [("start", None, f"{GRADER_IMPORT}\n_workbook_grader.start({chapter.stem!r})")]
    for index, (kind, source) in enumerate(chapter.cells):
        if kind != "code":
            continue
        if index in stubs:
            slot = stubs[index]
            student = sources.get(slot.id)
            cells.append(("solution", slot.id, slot.stub_source if student is None else student))
        elif index in checks:
            slot = checks[index]
            cells.append(("check", slot.id, f"{GRADER_IMPORT}\n"
                                            f"{slot.name} = _workbook_grader.check({slot.id!r}, {slot.name!r}, {codes[slot.id]!r})"))
        else:
            cells.append(("chapter", None, source))
    cells.append(("finish", None, f"{GRADER_IMPORT}\n_workbook_grader.finish({codes['finish']!r})"))
    return cells


class CellTimeout(Exception):
    """A cell ran past its limit."""


class KernelDied(Exception):
    """The kernel process ended while a cell ran."""


class Kernel:
    """A fresh kernel, driven one cell at a time: send the code, collect its outputs until the
    kernel is idle again. Messages left over from an interrupted cell are told apart by their
    parent message and ignored."""

    def __init__(self, workdir: Path):
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(workdir))
        self.client = self.manager.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def run(self, source: str, timeout: float) -> list[dict]:
        """The outputs of one cell, as a notebook stores them; CellTimeout or KernelDied."""
        message_id = self.client.execute(source, store_history=True, allow_stdin=False, stop_on_error=False)
        outputs, deadline = [], monotonic() + timeout
        while True:
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise CellTimeout()
            try:
                message = self.client.get_iopub_msg(timeout=min(remaining, 1.0))
            except Empty:
                if not self.manager.is_alive():
                    raise KernelDied() from None
                continue
            if message["parent_header"].get("msg_id") != message_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                return outputs
            if kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"output_type": kind, **content})

    def answers_after_interrupt(self) -> bool:
        """Interrupt the kernel; True when it then runs a trivial cell within PROBE_SECONDS."""
        self.manager.interrupt_kernel()
        try:
            self.run("pass", PROBE_SECONDS)
        except (CellTimeout, KernelDied):
            return False
        return True

    def death(self) -> tuple[str, str]:
        """(status, reason) for a kernel that died, from its exit code where the OS tells it."""
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        if code == -signal.SIGKILL:
            return OUT_OF_MEMORY, "the kernel was killed (SIGKILL), most likely for using too much memory"
        if code is not None and code < 0:
            return ERROR, f"the kernel crashed ({signal.Signals(-code).name})"
        if code is not None:
            return ERROR, f"the kernel exited with code {code} (os._exit or a fatal error)"
        return ERROR, "the kernel died"

    def close(self) -> None:
        self.client.stop_channels()
        try:
            self.manager.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - a kernel that already died has nothing to shut down
            pass


def run_once(cells: list[tuple[str, str | None, str]], limits: Limits, deadline: float,
             workdir: Path) -> tuple[list[CellResult], Stop | None]:
    """Execute `cells` in a fresh kernel; the results of the cells that ran, and why it stopped early."""
    kernel = Kernel(workdir)
    results: list[CellResult] = []
    try:
        for kind, exercise, source in cells:
            remaining = deadline - monotonic()
            student_code = kind in ("solution", "check")
            limit = min(limits.cell_seconds, remaining) if student_code else remaining
            if limit <= 0:
                return results, Stop(exercise, TIMEOUT, f"the notebook ran past its {limits.notebook_seconds:g} s limit")
            start = monotonic()
            try:
                outputs = kernel.run(source, limit)
                results.append(CellResult(monotonic() - start, outputs))
            except CellTimeout:
                results.append(CellResult(monotonic() - start, timed_out=True))
                if not student_code or limit < limits.cell_seconds:
                    return results, Stop(exercise, TIMEOUT, f"the notebook ran past its {limits.notebook_seconds:g} s limit")
                if not kernel.answers_after_interrupt():
                    return results, Stop(exercise, TIMEOUT, f"your code ran past the {limits.cell_seconds:g} s limit "
                                                            "for one cell and did not stop when interrupted")
            except KernelDied:
                results.append(CellResult(monotonic() - start))
                status, reason = kernel.death()
                where = {"solution": "while running your cell", "check": "while the check ran your code"}.get(kind, "")
                return results, Stop(exercise, status, f"{reason} {where}".strip())
        return results, None
    finally:
        kernel.close()


def stable(message: str, workdir: Path) -> str:
    """The message as one line, the same on every run: no memory addresses, no scratch folder."""
    message = str(message).replace(str(workdir), "<scratch>")
    message = " ".join(re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", message).split())
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT - 3] + "..."


def _is_memory_error(text: str) -> bool:
    return any(word in text for word in MEMORY_WORDS)


def _error_row(error: tuple[str, str], what: str) -> tuple[str, str]:
    name, value = error
    status = OUT_OF_MEMORY if _is_memory_error(f"{name}: {value}") else ERROR
    return status, f"{what} raised {name}: {value}"


def exercise_outcome(slot, cell_number: int | None, solution: CellResult | None, check: CellResult | None,
                     code: str, limits: Limits) -> tuple[str, str, list[str]]:
    """(status, message, what changed at run time) of one exercise from its two cells' results."""
    payloads = check.payloads() if check else []
    valid = [p for p in payloads if isinstance(p, dict) and p.get("code") == code]
    changed = sorted({name for p in valid for name in p.get("changed", [])})
    if len(payloads) != len(valid) or len(valid) > 1:
        changed.append(f"a forged verdict for exercise {slot.id}")
    if cell_number is None:
        return MISSING, missing_message(slot), changed
    if solution is not None and solution.timed_out:
        return TIMEOUT, f"your cell (cell {cell_number}) ran past the {limits.cell_seconds:g} s limit for one cell", changed
    if solution is not None and solution.error:
        status, message = _error_row(solution.error, f"your cell (cell {cell_number})")
        return status, message, changed
    if check is None:
        return ERROR, "not graded: the kernel stopped before this exercise", changed
    if check.timed_out:
        return TIMEOUT, f"your code ran past the {limits.cell_seconds:g} s limit while the check called it", changed
    if not valid:
        if check.error:
            return _error_row(check.error, "the check") + (changed,)
        return ERROR, "the check sent no verdict", changed
    verdict = valid[0]
    if not verdict.get("defined"):
        return ERROR, f"your cell (cell {cell_number}) did not define {slot.name}", changed
    status, message = verdict["status"], verdict.get("message", "")
    if status == WRONG and _is_memory_error(message):
        status = OUT_OF_MEMORY
    if status not in (PASSED, NOT_ATTEMPTED, WRONG, OUT_OF_MEMORY):
        status, message = ERROR, f"the check answered {status!r}"
    return status, message, changed


def grade_job(job: dict, workdir: Path) -> list[Row]:
    """Every row of one submission: run the notebook, and again without an exercise that stopped
    it (exercises that ran out of time keep their row and are not run again either)."""
    chapter = official_chapter(job["chapter"])
    limits = Limits(**job["limits"])
    deadline = monotonic() + limits.notebook_seconds
    settled: dict[str, tuple[str, str, float]] = {}  # exercise -> (status, message, seconds), not run again
    changed: list[str] = []  # what the checks found replaced at run time, in any run
    for _ in range(MAX_RUNS):
        codes = {key: secrets.token_hex(16) for key in [slot.id for slot in chapter.slots] + ["finish"]}
        sources = {key: None if key in settled else source for key, source in job["sources"].items()}
        cells = graded_cells(chapter, sources, codes)
        results, stop = run_once(cells, limits, deadline, workdir)
        outcomes, seen, extras = _outcomes(job, chapter, cells, results, codes, stop, settled, limits)
        changed += seen
        if stop is None or stop.exercise is None or stop.exercise in settled or monotonic() >= deadline - 1:
            break
        ran_out = {exercise for (_, exercise, _), result in zip(cells, results) if exercise and result.timed_out}
        settled.update({key: outcomes[key] for key in ran_out | {stop.exercise}})
    rows = [Row(job["student"], chapter.stem, slot.id, status, stable(message, workdir), round(seconds, 1), slot.title)
            for slot in chapter.slots for status, message, seconds in [outcomes[slot.id]]]
    rows += [Row(job["student"], chapter.stem, str(e.get("exercise")), str(e.get("status")),
                 stable(str(e.get("message")), workdir), 0.0, str(e.get("title", ""))) for e in extras if isinstance(e, dict)]
    if changed:
        unique = list(dict.fromkeys(changed))
        more = f" and {len(unique) - 3} more" if len(unique) > 3 else ""
        message = "changed at run time: " + ", ".join(unique[:3]) + more
        rows = [Row(r.student, r.chapter, r.exercise, TAMPERED, message, r.seconds, r.title) for r in rows]
    return rows


def _outcomes(job, chapter, cells, results, codes, stop, settled, limits):
    """({exercise: (status, message, seconds)}, what changed at run time, extra verdicts) of one run."""
    by_cell = {(kind, exercise): result for (kind, exercise, _), result in zip(cells, results)}
    seconds: dict[str, float] = {}
    for (_, exercise, _), result in zip(cells, results):
        if exercise:
            seconds[exercise] = seconds.get(exercise, 0.0) + result.seconds
    outcomes, changed = {}, []
    for slot in chapter.slots:
        if slot.id in settled:
            outcomes[slot.id] = settled[slot.id]
            continue
        number = job["cells"].get(slot.id)
        solution, check = by_cell.get(("solution", slot.id)), by_cell.get(("check", slot.id))
        status, message, seen = exercise_outcome(slot, number, solution, check, codes[slot.id], limits)
        if stop is not None and number is not None:
            if stop.exercise == slot.id:
                status, message = stop.status, stop.message
            elif check is None:
                where = f"exercise {stop.exercise}" if stop.exercise else "one of the chapter's own cells"
                status = TIMEOUT if stop.status == TIMEOUT else ERROR
                message = f"not graded: the run stopped at {where} ({stop.message})"
        changed += [f"{name} (seen at exercise {slot.id})" for name in seen]
        outcomes[slot.id] = (status, message, seconds.get(slot.id, 0.0))
    finish, extras = by_cell.get(("finish", None)), []
    for payload in finish.payloads() if finish else []:
        if isinstance(payload, dict) and payload.get("code") == codes["finish"]:
            extras = payload.get("extras", [])
            changed += [f"{name} (seen at the end)" for name in payload.get("changed", [])]
    return outcomes, changed, extras


def main() -> None:
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    limit_memory(job["limits"]["memory_gib"])
    rows = grade_job(job, job_path.parent)
    result_path.write_text(json.dumps([asdict(row) for row in rows]), encoding="utf-8")


if __name__ == "__main__":
    main()
