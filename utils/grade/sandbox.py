"""The operating system's walls around each graded kernel (Linux, bubblewrap).

Each kernel runs under `bwrap` in a filesystem of its own: the system's programs and libraries,
Python and the workbook, all read-only; a private /tmp; its scratch folder (the kernel's files and
sockets, its working folder), the only place it can write. The class folder, the grades folder
and the teacher's home are not in it (a class or grades folder inside the workbook is covered by
an empty folder). It has no network (a network namespace of its own) and sees only its own
processes (a PID namespace: when the kernel's run ends, bubblewrap's init goes and the kernel
takes every process it started with it, detached or not). Its limits: memory (`RLIMIT_DATA`),
processes (`RLIMIT_NPROC`), CPU time and file size, set with `prlimit` before it starts.

Run as root, the kernel also runs as a user of its own (uid `FIRST_UID` + n, one per kernel at
once), so it cannot signal, read or write anything another kernel or the grader owns, and its
process limit counts only its own processes. Run as another user, bubblewrap makes the namespaces
without privileges (a user namespace), and the process limit counts that user's processes.

`find()` says what this machine offers; None, with `missing_reason()`, where bubblewrap is absent
or cannot make its namespaces here.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

FIRST_UID = 62000       # uids FIRST_UID.. are lent to kernels when the grader runs as root
UIDS = 1000
PROCESSES = 256         # processes and threads one kernel may hold (ipykernel and torch use ~20)
FILE_GIB = 2            # the largest file a kernel may write
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INSTALL = "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap)"
_uids = itertools.count()
_uid_lock = threading.Lock()
_held: dict = {}  # uid -> its open lock file


@dataclass(frozen=True)
class Sandbox:
    """How kernels are walled in on this machine: bwrap's path, and whether to switch users."""

    bwrap: str
    as_root: bool

    def describe(self) -> str:
        who = "a user of its own per kernel" if self.as_root else "a user namespace"
        return f"each kernel in bubblewrap ({who}; no network; read-only workbook; only its scratch folder writable)"


def _probe(bwrap: str, as_root: bool) -> str | None:
    """None when bwrap can make every namespace the grader needs here; else why not."""
    command = [bwrap, *_namespaces(as_root), "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap did not run ({error})"
    if done.returncode != 0:
        return f"bubblewrap cannot make namespaces here ({(done.stderr.strip().splitlines() or ['?'])[-1]})"
    return None


def _namespaces(as_root: bool) -> list[str]:
    # As root no user namespace: the kernel must keep a uid of its own that the host sees.
    spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    return spaces if as_root else ["--unshare-user", *spaces]


@functools.cache
def _found() -> tuple[Sandbox | None, str]:
    if not sys.platform.startswith("linux"):
        return None, "kernels are isolated on Linux only (bubblewrap)"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, f"bubblewrap (bwrap) is not installed: {INSTALL}"
    as_root = os.geteuid() == 0
    if as_root and not (shutil.which("setpriv") and shutil.which("prlimit")):
        return None, "setpriv and prlimit (util-linux) are needed to run kernels as users of their own"
    reason = _probe(bwrap, as_root)
    return (None, reason) if reason else (Sandbox(bwrap, as_root), "")


def find() -> Sandbox | None:
    """The sandbox this machine offers, or None (see `missing_reason`)."""
    return _found()[0]


def missing_reason() -> str:
    return _found()[1]


def closed_folder_above(*paths: Path) -> Path | None:
    """The first folder, on the way from each of `paths` up to /, that other users cannot enter
    (no o+x bit: a `mktemp -d` folder or a home is often 0700). A kernel run as a lent uid could
    not reach the workbook's Python there, and every row would be an error; None when all are open."""
    for path in paths:
        for folder in [path, *path.parents]:
            if folder.is_dir() and not folder.stat().st_mode & 0o001:
                return folder
    return None


def lend_uid() -> int:
    """A uid no other kernel holds now, in this grader or another one on this machine (root
    only): each uid is taken with a lock on a file, held until this process lets it go
    (`return_uid`) or ends. Whatever still ran as it is killed first."""
    folder = Path(tempfile.gettempdir()) / "workbook-grade-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    with _uid_lock:
        start = next(_uids)
        for step in range(UIDS):
            uid = FIRST_UID + (start + step) % UIDS
            if uid in _held:
                continue
            handle = open(folder / str(uid), "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _held[uid] = handle
            kill_user(uid)
            return uid
    raise RuntimeError(f"all {UIDS} uids for kernels are in use")


def return_uid(uid: int) -> None:
    handle = _held.pop(uid, None)
    if handle is not None:
        handle.close()


def _existing(paths) -> list[str]:
    seen, kept = set(), []
    for path in paths:
        path = os.path.realpath(path)
        if os.path.exists(path) and path not in seen:
            seen.add(path)
            kept.append(path)
    return kept


def _inside(path: str, folders: list[str]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


def kernel_command(sandbox: Sandbox, command: list[str], *, root: Path, writable: list[Path], hidden: list[Path],
                   workdir: Path, uid: int | None, memory_gib: float, cpu_seconds: float) -> list[str]:
    """`command` (the kernel's) wrapped: limits, then bubblewrap, then (as root) a user of its own.

    `root` (the workbook) and Python are bound read-only, `writable` read-write, and each of
    `hidden` that lies inside a bound folder is covered by an empty one."""
    limit = int(memory_gib * 2**30)
    processes = PROCESSES if uid is not None else _own_processes() + PROCESSES
    limits = ["prlimit", f"--data={limit}", f"--nproc={processes}", f"--fsize={FILE_GIB * 2**30}",
              f"--cpu={int(cpu_seconds)}", "--core=0", "--"]
    links = [p for p in SYSTEM_DIRS if os.path.islink(p)]  # /bin -> usr/bin on a merged /usr
    read_only = _existing([p for p in SYSTEM_DIRS if p not in links] + [sys.base_prefix, sys.prefix, sys.exec_prefix,
                                                                        str(root), *_hub_cache()])
    read_only = [p for p in read_only if not _inside(p, [d for d in read_only if d != p and d != "/"])]
    wrapped = [sandbox.bwrap, *_namespaces(sandbox.as_root), "--die-with-parent", "--new-session"]
    # The private /tmp comes first, so that a workbook or a Python that lives under /tmp (a clone
    # made there, as CI's may be) is bound on top of it rather than hidden by it.
    wrapped += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm"]
    ancestors = sorted({str(parent) for path in read_only for parent in Path(path).parents
                        if str(parent) not in ("/", "/tmp") and not _inside(str(parent), read_only)})
    for path in ancestors:  # folders on the way to a bound one (/root for a Python in ~/.pyenv): passable
        wrapped += ["--perms", "0755", "--dir", path]
    for path in read_only:
        wrapped += ["--ro-bind", path, path]
    for path in links:
        wrapped += ["--symlink", os.readlink(path), path]
    for path in map(os.path.realpath, hidden):  # a class or grades folder inside the workbook
        if _inside(path, read_only) and os.path.isdir(path) and not any(_inside(p, [path]) for p in read_only):
            wrapped += ["--tmpfs", path]
    passable = sorted({str(parent) for path in writable for parent in Path(path).parents
                       if str(parent) not in ("/", "/tmp") and not _inside(str(parent), read_only)})
    for path in passable:
        wrapped += ["--perms", "0755", "--dir", path]
    for path in map(str, writable):
        wrapped += ["--bind", path, path]
    # ipykernel would watch for its parent by pid, which means nothing in a PID namespace;
    # --die-with-parent does that job.
    wrapped += ["--chdir", str(workdir), "--hostname", "grader", "--unsetenv", "JPY_PARENT_PID"]
    if uid is not None:
        wrapped += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--no-new-privs", "--"]
    return [*orphan_guard(), *limits, *wrapped, *command]


# A child of the runner that has set its parent-death signal and then finds a different parent has
# lost the race with a killed runner: it exits instead of starting a kernel no one will stop.
_GUARD = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "  # 1: PR_SET_PDEATHSIG, 9: SIGKILL
          "os.getppid() == int(sys.argv[1]) or sys.exit('the grader is gone'); os.execvp(sys.argv[2], sys.argv[2:])")


def orphan_guard(parent: int | None = None) -> list[str]:
    """A prefix that makes the wrapped command die with `parent` (this process by default).

    bubblewrap's --die-with-parent only arms itself once bwrap runs; a runner killed between its
    fork and that moment left bwrap and the kernel running for good. The guard arms the signal
    before anything else executes (it survives prlimit's and bwrap's exec) and checks the parent."""
    return [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid() if parent is None else parent)]


def _hub_cache() -> list[str]:
    """The Hugging Face cache (models a chapter loads offline), read-only, where there is one."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                     "huggingface")
    return [os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")]


def _own_processes() -> int:
    """How many processes (and threads) this user holds now: the process limit counts them all."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(list((entry / "task").iterdir()))
            except OSError:
                continue
    return count


def kill_user(uid: int) -> int:
    """SIGKILL every process of `uid` (a lent uid: nothing else runs as it); how many there were."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):
            continue
    return killed


def give_to(path: Path, uid: int | None) -> None:
    """Make `path` (a folder) the kernel user's, so the kernel can write there."""
    if uid is not None:
        os.chown(path, uid, uid, follow_symlinks=False)
