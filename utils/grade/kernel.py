"""The grader's side of a graded kernel: what the cells that `execute.py` adds call.

`start(chapter, key_file)` runs before any of the student's code: it reads the key that signs
verdicts from `key_file` and deletes the file (the key then lives only inside a closure here), loads
the chapter's checks, and notes which objects the checks, the references, torch and builtins
consist of. It also
- makes `check_exercise` (the one the student's cells can call) hand back the student's own
  object whatever the verdict: the chapter's fallback to the reference solution is for learners,
  and under grading it would hand the answer to a cell that asks for it;
- puts a tripwire in place of this chapter's reference module (`utils.references.chNN_...`) where
  an import or `utils.references...` would find it: touching it is reported (the checks keep the
  module they imported before).
Each check cell calls `check(...)`, which grades the student's object with the `grade` function
noted at the start and sends the verdict to the grader as one display message of type MIMETYPE,
signed with the key (HMAC-SHA256 over the verdict, its exercise and its cell); the student sees the
usual one-line verdict. `finish(...)` runs last and sends what the chapter grades at the end (below).

Extension points, for the capstone (chapter 08), in a chapter's check module
(`utils/exercises/chNN_slug.py`):
- `graded_payload(namespace) -> dict` runs here after the last cell, with the notebook's
  variables; what it returns (JSON-able) is carried out of the kernel, and the grader's own process,
  after the kernel is gone, calls the module's
  `graded_extras_from_payload(payload, keys: pathlib.Path | None, student: str) -> list[Verdict]`
  (`keys`: the folder `--keys` names; `student`: the student's name as the
  grader's rows give it, lower-cased: the notebook's file name, or its folder when the file keeps
  the chapter's name). Each
  Verdict becomes one more row. Nothing the student's code can reach grades these rows.
- Without those, `graded_extras(namespace) -> list[Verdict]` runs here after the last cell and
  each Verdict becomes one more row.
- `graded_inputs(keys, student) -> dict[str, pathlib.Path]`, called in the grader's process before
  the notebook runs: folders the student's kernel reads, by the WORKBOOK_ environment variable
  that names them (chapter 08: the student's own suspect as WORKBOOK_SUSPECT, and its twin). The
  runner copies the plain files of each into one folder of the kernel's working folder, under the
  input's own name, and sets the variable to the copy: the sandbox binds only the workbook,
  Python and the system, so the student's other files and the teacher's keys stay out of reach.
  The grader adds to the payload the exercises whose signed verdict passed ("passed").
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import importlib
import json
import os
import sys
import types
from collections.abc import Callable

MIMETYPE = "application/vnd.workbook.verdict+json"
EXTRAS_HOOK = "graded_extras"
PAYLOAD_HOOK, FROM_PAYLOAD_HOOK = "graded_payload", "graded_extras_from_payload"
INPUTS_HOOK = "graded_inputs"
# ipykernel binds builtins.input afresh for every cell it runs (to forward input() to the browser).
REBOUND_BY_THE_KERNEL = {"builtins.input"}
_MISSING = object()
_state: dict = {}


def _watched_namespaces(chapter: str) -> dict[str, dict]:
    """The namespaces whose callables must not change while the student's code runs."""
    import torch
    import torch.nn.functional

    modules = ["utils", "utils.checks", "utils.progress", f"utils.exercises.ch{chapter}", __name__]
    spaces = {name: vars(importlib.import_module(name)) for name in modules}
    spaces[f"utils.references.ch{chapter}"] = vars(_state["reference"])
    spaces.update({"torch": vars(torch), "torch.nn.functional": vars(torch.nn.functional),
                   "torch.Tensor": vars(torch.Tensor), "torch.nn.Module": vars(torch.nn.Module), "builtins": vars(builtins)})
    return spaces


def _snapshot(chapter: str) -> dict[str, int]:
    """{"torch.allclose": id(...), ...} for every callable and class in the watched namespaces,
    the methods of the workbook's own classes there (`Verdict.__init__`...), and each registered
    exercise's check and reference."""
    from utils.checks import REGISTRY

    snapshot = {}
    for space, values in _watched_namespaces(chapter).items():
        for name, value in list(values.items()):
            if not callable(value):
                continue
            snapshot[f"{space}.{name}"] = id(value)
            if isinstance(value, type) and space.startswith("utils") and value.__module__.startswith("utils"):
                snapshot.update({f"{space}.{name}.{attribute}": id(member) for attribute, member in vars(value).items()})
    for exercise_id, exercise in REGISTRY.items():
        snapshot[f"the check of exercise {exercise_id}"] = id(exercise.check)
        snapshot[f"the reference of exercise {exercise_id}"] = id(exercise.reference)
    for key in ("grade", "record", "display", "sign"):
        snapshot[f"the grader's {key}"] = id(_state.get(key))
    return snapshot


def _changed() -> list[str]:
    """What was replaced since `start`, by name (sorted), and what touched the references."""
    now = _snapshot(_state["chapter"])
    changed = sorted(name for name, identity in _state["snapshot"].items()
                     if now.get(name) != identity and name not in REBOUND_BY_THE_KERNEL)
    return changed + [f"this chapter's reference solutions ({name})" for name in dict.fromkeys(_state["touched"])]


def _signer(key: bytes) -> Callable[[str], str]:
    def sign(text: str) -> str:
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return sign


class _Tripwire(types.ModuleType):
    """Stands where this chapter's reference module was: any name looked up in it is reported."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        _state["touched"].append(f"{self.__name__}.{name}")
        raise AttributeError(f"{self.__name__} is not available while a notebook is graded")


def _graded_check_exercise(exercise_id: str, candidate, record: bool = True):
    """`check_exercise` under grading: prints the verdict and hands back the candidate itself
    (never the reference); records nothing. The grader's own check cells give the verdicts."""
    verdict = _state["grade"](exercise_id, candidate)
    print(verdict)
    return candidate


def start(chapter: str, key_file: str) -> None:
    """Read the key, load the chapter's checks, close the ways to the references, and note what
    the checks consist of. Runs before the student's code."""
    import torch._dynamo  # noqa: F401 - imported lazily by torch's optimisers, it rebinds torch.manual_seed
    from IPython.display import display

    import utils
    import utils.references
    from utils import checks, progress

    for name in utils.__all__:  # the helpers load on first use: load them now, so the snapshot watches them
        getattr(utils, name)
    with open(key_file, "rb") as f:
        key = bytes.fromhex(f.read().decode())
    os.unlink(key_file)
    module = importlib.import_module(f"utils.exercises.ch{chapter}")
    reference_name = f"utils.references.ch{chapter}"
    reference = importlib.import_module(reference_name)
    _state.update(chapter=chapter, grade=checks.grade, record=progress.record_attempt, display=display,
                  exercises=dict(checks.REGISTRY), module=module, reference=reference, sign=_signer(key), touched=[])
    checks.check_exercise = utils.check_exercise = _graded_check_exercise
    tripwire = _Tripwire(reference_name)
    sys.modules[reference_name] = tripwire
    setattr(utils.references, f"ch{chapter}", tripwire)
    _state["snapshot"] = _snapshot(chapter)


def _send(body: dict) -> None:
    text = json.dumps(body, default=str)
    _state["display"]({MIMETYPE: {"body": text, "mac": _state["sign"](text)}}, raw=True)


def _notebook_namespace() -> dict:
    """The variables of the notebook: the globals of the cell that called the grader."""
    return sys._getframe(2).f_globals


def check(exercise_id: str, name: str, serial: int):
    """What `check_exercise` does for a learner (print the verdict, record it, hand back the
    learner's object when it passed and the reference otherwise, so the chapter goes on), and
    send the verdict to the grader: exactly one message, whatever the student's code does."""
    exercise = _state["exercises"][exercise_id]
    # What is sent is built only at the end, from these immutable locals: the student's code, which
    # runs inside the check, can reach objects on the stack, not the verdict it has not been given yet.
    defined, outcome = False, None  # outcome: (status, message) once the check has given its verdict
    candidate = _notebook_namespace().get(name, _MISSING)
    try:
        if candidate is _MISSING:
            print(f"Exercise {exercise_id} ({exercise.title}): {name} is not defined")
            return exercise.reference
        defined = True
        verdict = _state["grade"](exercise_id, candidate)
        outcome = (str(verdict.status), str(verdict.message))
        print(verdict)
        try:
            _state["record"](exercise.chapter, exercise.id, exercise.title, verdict.status)
        except Exception:  # noqa: BLE001 - a scratch record the student's code spoiled changes no grade
            pass
        return candidate if verdict.passed else exercise.reference
    except BaseException as error:  # noqa: BLE001 - stopped by the grader (KeyboardInterrupt) or by the student's code
        if outcome is None:
            outcome = ("error", f"the check was stopped ({type(error).__name__})")
        print(f"Exercise {exercise_id} ({exercise.title}): stopped ({type(error).__name__})")
        return exercise.reference
    finally:
        body = {"cell": serial, "exercise": exercise_id, "defined": defined, "changed": _changed()}
        if outcome is not None:
            body.update(status=outcome[0], message=outcome[1])
        _send(body)


def extra_verdicts(module, namespace: dict) -> list[dict]:
    """The verdicts of the chapter's `graded_extras(namespace)` hook, if it has one, as dicts.
    A hook that fails gives one error verdict instead."""
    hook: Callable | None = getattr(module, EXTRAS_HOOK, None)
    if hook is None:
        return []
    try:
        return [{"exercise": v.exercise, "title": v.title, "status": v.status, "message": v.message}
                for v in hook(namespace)]
    except Exception as error:  # noqa: BLE001 - a broken hook must not lose the other rows
        return [{"exercise": "extras", "title": "extra checks", "status": "error",
                 "message": f"{EXTRAS_HOOK} failed: {type(error).__name__}: {error}"}]


def chapter_payload(module, namespace: dict) -> tuple[dict | None, list[dict]]:
    """(the payload of the chapter's `graded_payload(namespace)`, error verdicts): the payload
    must be a JSON-able dict; a hook that fails gives one error verdict instead."""
    try:
        payload = getattr(module, PAYLOAD_HOOK)(namespace)
        if not isinstance(payload, dict):
            raise TypeError(f"it returned {type(payload).__name__}, not a dict")
        json.dumps(payload)
        return payload, []
    except Exception as error:  # noqa: BLE001 - a broken hook must not lose the other rows
        return None, [{"exercise": "extras", "title": "extra checks", "status": "error",
                       "message": f"{PAYLOAD_HOOK} failed: {type(error).__name__}: {error}"}]


def finish(serial: int) -> None:
    """Send what the chapter grades at the end and a last look at what changed. Runs after every cell."""
    module, namespace = _state["module"], _notebook_namespace()
    body = {"cell": serial, "changed": _changed(), "extras": [], "payload": None}
    sys.modules[_state["reference"].__name__] = _state["reference"]  # the chapter's own code may import it now
    if hasattr(module, PAYLOAD_HOOK) and hasattr(module, FROM_PAYLOAD_HOOK):
        body["payload"], body["extras"] = chapter_payload(module, namespace)
    else:
        body["extras"] = extra_verdicts(module, namespace)
    _send(body)
