"""Run one submission in a fresh kernel, under limits, and turn what happened into rows.

`python -m utils.grade.execute JOB RESULT` is what the grader starts, once per submission, in its
own process and session; JOB is the JSON that `cli.py` writes (the student's cells for each
exercise, the limits, the sandbox), RESULT the JSON this writes back (the rows, and the payload a
chapter's `graded_payload` sent). This runner is the grader's own code and is not walled in: only
the kernel it starts is, in `sandbox.py`'s bubblewrap when the machine has it, and everything it
reads from the kernel is checked here before it counts.

The notebook run, one cell at a time through jupyter_client, is the official student notebook of
the chapter, where
- a first cell starts the grader's side of the kernel (`kernel.start`), before any student code:
  it reads a secret key from a file this runner wrote, and deletes the file;
- the student's own cells that precede an exercise (helpers, imports) run just before its cell;
- each stub cell holds the student's cell for that exercise (the stub when there is none);
- each check cell calls `kernel.check`, and the verdict counts only when exactly one message of
  that cell carries it, signed with the key (HMAC-SHA256): no cell's source and no file the
  student's code can read holds the key, so a printed, displayed or replayed verdict fails;
- a last cell (`kernel.finish`) sends what the chapter grades after the last cell.
The student's cells and the checks that call their code have the per-cell limit; the chapter's
own cells, whose cost is known, only the notebook's. When the kernel dies or cannot be
interrupted, the exercise at fault gets its row and the notebook runs again from the start with
that exercise set back to its stub, so one crash costs one exercise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import resource
import secrets
import shutil
import signal
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from time import monotonic

from jupyter_client import KernelManager

from utils.build import ROOT
from utils.grade import ERROR, MISSING, NOT_ATTEMPTED, OUT_OF_MEMORY, PASSED, TIMEOUT, WRONG, Row
from utils.grade import sandbox as walls
from utils.grade.kernel import MIMETYPE
from utils.grade.notebook import Chapter, missing_message, official_chapter

# Every grader cell imports the grader afresh and drops the name again, so no name the student's
# code could rebind is used, and none is left in the notebook's variables.
GRADER_IMPORT = "import utils.grade.kernel as _workbook_grader"
GRADER_DROP = "del _workbook_grader"
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
    """Cap this process's data segment (and so its kernel's) at `gib` GiB, where the OS allows
    (only without a sandbox: there the kernel alone gets its limits)."""
    limit = int(gib * 2**30)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (ValueError, OSError, AttributeError):
        pass  # not enforceable here: the notebook limit still stops a runaway


def verify(payload, key: bytes) -> dict | None:
    """The verdict a display message carries, when its signature is the key's; else None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str) or not isinstance(payload.get("mac"), str):
        return None
    expected = hmac.new(key, payload["body"].encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, payload["mac"]):
        return None
    try:
        body = json.loads(payload["body"])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def graded_cells(chapter: Chapter, sources: dict[str, str | None], helpers: dict[str, list[str]],
                 key_file: str) -> list[tuple[str, str | None, str]]:
    """(kind, exercise id, source) of every code cell to run: start, chapter, helper, solution,
    check, finish. A check cell's serial number is its position in this list."""
    stubs = {slot.stub_index: slot for slot in chapter.slots}
    checks = {slot.check_index: slot for slot in chapter.slots}
    cells = [("start", None, f"{GRADER_IMPORT}\n_workbook_grader.start({chapter.stem!r}, {key_file!r})\n{GRADER_DROP}")]
    for index, (kind, source) in enumerate(chapter.cells):
        if kind != "code":
            continue
        if index in stubs:
            slot = stubs[index]
            student = sources.get(slot.id)
            if student is not None:
                cells += [("helper", slot.id, helper) for helper in helpers.get(slot.id, [])]
            cells.append(("solution", slot.id, slot.stub_source if student is None else student))
        elif index in checks:
            slot = checks[index]
            cells.append(("check", slot.id, f"{GRADER_IMPORT}\n{slot.name} = _workbook_grader.check("
                                            f"{slot.id!r}, {slot.name!r}, {len(cells)})\n{GRADER_DROP}"))
        else:
            cells.append(("chapter", None, source))
    cells.append(("finish", None, f"{GRADER_IMPORT}\n_workbook_grader.finish({len(cells)})\n{GRADER_DROP}"))
    return cells


class CellTimeout(Exception):
    """A cell ran past its limit."""


class KernelDied(Exception):
    """The kernel process ended while a cell ran."""


class WalledKernelManager(KernelManager):
    """A KernelManager whose kernel starts inside the sandbox (`sandbox.kernel_command`), talks
    over Unix sockets in its scratch folder (it has no network), and is interrupted by message."""

    def configure(self, wrap, uid: int | None) -> None:
        self._wrap, self._uid = wrap, uid
        self.kernel_spec.interrupt_mode = "message"

    def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
        command = super().format_kernel_cmd(extra_arguments)
        return self._wrap(command) if self._wrap else command

    def write_connection_file(self, **kwargs) -> None:
        super().write_connection_file(**kwargs)
        if self._uid is not None:
            os.chown(self.connection_file, self._uid, self._uid)


class Kernel:
    """A fresh kernel, driven one cell at a time: send the code, collect its outputs until the
    kernel is idle again. Messages left over from an interrupted cell are told apart by their
    parent message and ignored."""

    def __init__(self, place: "Place", limits: Limits):
        self.place = place
        place.reset()
        wrap = None
        if place.sandbox is not None:
            def wrap(command):
                return walls.kernel_command(place.sandbox, command, root=ROOT, writable=[place.kernel_dir, place.work],
                                            hidden=place.hidden, workdir=place.work, uid=place.uid,
                                            memory_gib=limits.memory_gib, cpu_seconds=limits.notebook_seconds + 60)
        self.manager = WalledKernelManager(kernel_name="python3", transport="ipc", ip=str(place.kernel_dir / "k"),
                                           connection_file=str(place.kernel_dir / "connection.json"))
        self.manager.configure(wrap, place.uid)
        self.manager.start_kernel(cwd=str(place.work), env=place.environment())
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
        try:
            self.manager.interrupt_kernel()
            self.run("pass", PROBE_SECONDS)
        except (CellTimeout, KernelDied, RuntimeError):
            return False
        return True

    def death(self) -> tuple[str, str]:
        """(status, reason) for a kernel that died, from its exit code where the OS tells it.
        Under bubblewrap a kernel ended by signal N exits with 128 + N."""
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        if code is not None and self.place.sandbox is not None and code > 128:
            code = -(code - 128)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            if -code == signal.SIGKILL:
                return ERROR, ("the kernel was killed (SIGKILL: by the code itself, another process, or the system "
                               "when memory ran out)")
            return ERROR, f"the kernel crashed ({name})"
        if code is not None:
            return ERROR, f"the kernel exited with code {code} (os._exit or a fatal error)"
        return ERROR, "the kernel died"

    def close(self) -> None:
        self.client.stop_channels()
        try:
            self.manager.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - a kernel that already died has nothing to shut down
            pass
        self.place.end_of_kernel()


INPUT_VARIABLE = re.compile(r"WORKBOOK_[A-Z0-9_]+")
INPUT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
INPUT_MIB = 64  # the most an input folder may hold (a suspect is about 14 MB)


def copy_input(source: Path, copy: Path, uid: int | None) -> None:
    """A flat copy of a chapter input for the kernel: the regular files at the top of `source`
    that have one link each, read through descriptors opened without following a link (so nothing
    swapped in during the copy leads it elsewhere), at most INPUT_MIB in all, owned by the
    kernel's user. A folder that cannot be opened so gives an empty copy."""
    copy.parent.mkdir(exist_ok=True)
    walls.give_to(copy.parent, uid)
    copy.mkdir()
    walls.give_to(copy, uid)
    try:
        folder = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    room = INPUT_MIB * 2**20
    try:
        for name in sorted(os.listdir(folder)):
            try:
                handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            except OSError:
                continue
            with os.fdopen(handle, "rb") as reading:
                found = os.fstat(reading.fileno())
                if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1 or found.st_size > room:
                    continue
                data = reading.read(found.st_size)
            room -= len(data)
            target = os.open(copy / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(target, "wb") as writing:
                writing.write(data)
                if uid is not None:
                    os.fchown(writing.fileno(), uid, uid)
    finally:
        os.close(folder)


def checked_inputs(inputs: dict) -> dict[str, Path]:
    """The job's inputs, each a WORKBOOK_ variable naming an absolute folder with a plain name; any
    other entry is dropped (they come from the workbook's own chapter hooks, checked all the same)."""
    kept, names = {}, set()
    for variable, folder in dict(inputs).items():
        folder = Path(str(folder))
        if (INPUT_VARIABLE.fullmatch(str(variable)) and folder.is_absolute() and INPUT_NAME.fullmatch(folder.name)
                and folder.name not in names):
            kept[str(variable)] = folder
            names.add(folder.name)
    return kept


class Place:
    """Where one submission's kernels run: its scratch folder (kernel files, working folder), the
    sandbox and the uid lent to it, and the key of the current run."""

    def __init__(self, scratch: Path, job: dict):
        found = job.get("sandbox")
        self.sandbox = walls.Sandbox(**found) if found else None
        self.uid = walls.lend_uid() if self.sandbox is not None and self.sandbox.as_root else None
        self.scratch = scratch
        self.kernel_dir, self.work = scratch / "kernel", scratch / "work"
        self.hidden = [Path(p) for p in job.get("hidden", [])]
        # folders the chapter's kernel reads (graded_inputs), by environment variable: copied in each run
        self.inputs = checked_inputs(job.get("inputs") or {})
        self.key = b""

    def reset(self) -> None:
        """A fresh working folder and kernel folder, and a new key written for `kernel.start`."""
        for folder in (self.kernel_dir, self.work):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(mode=0o700)
            walls.give_to(folder, self.uid)
        for variable, source in self.inputs.items():
            copy_input(source, self.input_copy(variable), self.uid)
        self.key = secrets.token_bytes(32)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key.hex().encode())
        if self.uid is not None:
            os.chown(self.key_file, self.uid, self.uid)

    @property
    def key_file(self) -> Path:
        return self.kernel_dir / "key"

    def input_copy(self, variable: str) -> Path:
        """Where the copy of an input goes: under its own folder name, so that inputs that sit side
        by side (a suspect and its twin) sit side by side in the copy too."""
        return self.work / "inputs" / self.inputs[variable].name

    def environment(self) -> dict[str, str]:
        """The kernel's environment: offline, one thread, a scratch home and progress file."""
        keep = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "TZ") if name in os.environ}
        work = str(self.work)
        inputs = {variable: str(self.input_copy(variable)) for variable in self.inputs}
        return {**inputs, **keep, "HOME": work, "WORKBOOK_PROGRESS": str(self.work / "progress.json"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYDEVD_DISABLE_FILE_VALIDATION": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": work,
                "IPYTHONDIR": str(self.work / ".ipython"), "XDG_CACHE_HOME": str(self.work / ".cache"),
                "JUPYTER_RUNTIME_DIR": str(self.kernel_dir), "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}

    def end_of_kernel(self) -> None:
        """Whatever the kernel left running goes (its PID namespace already took it; this is the
        second lock), and the key file with it."""
        if self.uid is not None:
            walls.kill_user(self.uid)
        self.key_file.unlink(missing_ok=True)


def run_once(cells: list[tuple[str, str | None, str]], limits: Limits, deadline: float,
             place: Place) -> tuple[list[CellResult], Stop | None]:
    """Execute `cells` in a fresh kernel; the results of the cells that ran, and why it stopped early."""
    kernel = Kernel(place, limits)
    results: list[CellResult] = []
    try:
        for kind, exercise, source in cells:
            remaining = deadline - monotonic()
            student_code = kind in ("helper", "solution", "check")
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
                where = {"solution": "while running your cell", "helper": "while running a cell of yours above it",
                         "check": "while the check ran your code"}.get(kind, "")
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


def signed_verdicts(result: CellResult | None, key: bytes, serial: int) -> tuple[list[dict], int]:
    """(the verdicts of a cell signed with the key for this serial, how many other verdict
    messages it sent: printed, forged or replayed ones)."""
    payloads = result.payloads() if result else []
    valid = [body for body in (verify(p, key) for p in payloads) if body is not None and body.get("cell") == serial]
    return valid, len(payloads) - len(valid)


def exercise_outcome(slot, cell_number: int | None, solution: CellResult | None, check: CellResult | None,
                     key: bytes, serial: int, limits: Limits) -> tuple[str, str, list[str]]:
    """(status, message, what changed at run time) of one exercise from its cells' results."""
    valid, others = signed_verdicts(check, key, serial)
    valid = [v for v in valid if v.get("exercise") == slot.id]
    changed = sorted({name for v in valid for name in v.get("changed", [])})
    if others or len(valid) > 1:
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
    status, message = verdict.get("status"), verdict.get("message", "")
    if status == WRONG and _is_memory_error(message):
        status = OUT_OF_MEMORY
    if status not in (PASSED, NOT_ATTEMPTED, WRONG, OUT_OF_MEMORY, ERROR):
        status, message = ERROR, f"the check answered {status!r}"
    return status, message, changed


def grade_job(job: dict, scratch: Path) -> tuple[list[Row], dict | None]:
    """Every row of one submission, and the chapter's payload (None when it sent none): run the
    notebook, and again without an exercise that stopped it (exercises that ran out of time keep
    their row and are not run again either)."""
    chapter = official_chapter(job["chapter"])
    limits = Limits(**job["limits"])
    deadline = monotonic() + limits.notebook_seconds
    place = Place(scratch, job)
    settled: dict[str, tuple[str, str, float]] = {}  # exercise -> (status, message, seconds), not run again
    changed: list[str] = []  # what the checks found replaced at run time, in any run
    helpers = job.get("helpers", {})
    for _ in range(MAX_RUNS):
        sources = {key: None if key in settled else source for key, source in job["sources"].items()}
        cells = graded_cells(chapter, sources, {k: v for k, v in helpers.items() if k not in settled},
                             str(place.key_file))
        results, stop = run_once(cells, limits, deadline, place)
        outcomes, seen, extras, payload = _outcomes(job, chapter, cells, results, place.key, stop, settled, limits)
        changed += seen
        if stop is None or stop.exercise is None or stop.exercise in settled or monotonic() >= deadline - 1:
            break
        ran_out = {exercise for (_, exercise, _), result in zip(cells, results) if exercise and result.timed_out}
        settled.update({key: outcomes[key] for key in ran_out | {stop.exercise}})
    rows = [Row(job["student"], chapter.stem, slot.id, status, stable(message, scratch), round(seconds, 1), slot.title)
            for slot in chapter.slots for status, message, seconds in [outcomes[slot.id]]]
    rows += [Row(job["student"], chapter.stem, str(e.get("exercise")), str(e.get("status")),
                 stable(str(e.get("message")), scratch), 0.0, str(e.get("title", ""))) for e in extras if isinstance(e, dict)]
    if changed:
        rows = tampered_rows(rows, changed)
    return rows, payload


def tampered_rows(rows: list[Row], changed: list[str]) -> list[Row]:
    """Every row "tampered", with what was found."""
    from utils.grade import TAMPERED

    unique = list(dict.fromkeys(changed))
    more = f" and {len(unique) - 3} more" if len(unique) > 3 else ""
    message = "changed at run time: " + ", ".join(unique[:3]) + more
    return [Row(r.student, r.chapter, r.exercise, TAMPERED, message, r.seconds, r.title) for r in rows]


def _outcomes(job, chapter, cells, results, key, stop, settled, limits):
    """({exercise: (status, message, seconds)}, what changed at run time, extra verdicts, the
    chapter's payload) of one run."""
    by_cell = {(kind, exercise): (serial, result) for serial, ((kind, exercise, _), result)
               in enumerate(zip(cells, results))}
    serials = {(kind, exercise): serial for serial, (kind, exercise, _) in enumerate(cells)}
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
        solution = by_cell.get(("solution", slot.id), (None, None))[1]
        check = by_cell.get(("check", slot.id), (None, None))[1]
        status, message, seen = exercise_outcome(slot, number, solution, check, key,
                                                 serials.get(("check", slot.id), -1), limits)
        if stop is not None and number is not None:
            if stop.exercise == slot.id:
                status, message = stop.status, stop.message
            elif check is None:
                where = f"exercise {stop.exercise}" if stop.exercise else "one of the chapter's own cells"
                status = TIMEOUT if stop.status == TIMEOUT else ERROR
                message = f"not graded: the run stopped at {where} ({stop.message})"
        changed += [f"{name} (seen at exercise {slot.id})" for name in seen]
        outcomes[slot.id] = (status, message, seconds.get(slot.id, 0.0))
    finish = by_cell.get(("finish", None), (None, None))[1]
    extras, payload = [], None
    valid, others = signed_verdicts(finish, key, serials[("finish", None)])
    if others or len(valid) > 1:
        changed.append("a forged message at the end")
    for body in valid[:1]:
        extras = body.get("extras", [])
        payload = body.get("payload")
        changed += [f"{name} (seen at the end)" for name in body.get("changed", [])]
    return outcomes, changed, extras, payload


def die_with_the_grader(grader: int | None) -> None:
    """Have Linux kill this runner if the grader that started it (pid `grader`) dies (and with it,
    through the kernel's own guard and bubblewrap's --die-with-parent, the kernel): a killed grader
    leaves nothing running."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the grader's own clean-up still kills the runner's session
    # The grader died before the line above: this runner now belongs to init or to a subreaper.
    if os.getppid() == 1 or (grader is not None and os.getppid() != grader):
        raise SystemExit("the grader is gone")


def main() -> None:
    die_with_the_grader(int(sys.argv[3]) if len(sys.argv) > 3 else None)
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if not job.get("sandbox"):
        limit_memory(job["limits"]["memory_gib"])
    rows, payload = grade_job(job, job_path.parent)
    result_path.write_text(json.dumps({"rows": [asdict(row) for row in rows], "payload": payload}), encoding="utf-8")


if __name__ == "__main__":
    main()
