"""The grader's side of a graded kernel: what the cells that `execute.py` adds call.

`start(chapter)` runs before any of the student's code: it loads the chapter's checks and notes
which objects the checks, the references, torch and builtins consist of. Each check cell calls
`check(...)`, which grades the student's object with the `grade` function noted at the start and
sends the verdict to the grader as one display message of type MIMETYPE, carrying the one-time
code written into that cell only; the student sees the usual one-line verdict. `finish(...)`
runs last and sends the chapter's extra verdicts (below) the same way.

Extension point, for the capstone (chapter 08): a chapter's check module
(`utils/exercises/chNN_slug.py`) may define `graded_extras(namespace) -> list[Verdict]`. It runs
in the kernel after the last cell, with the notebook's variables, and each Verdict becomes one
more row. Chapter 08 uses it to grade the student's audit `report` against the planted key
(`utils/organism/plant.py`) of the suspect its namespace names as `SUSPECT`. The grader keeps only
the exercise cells of a submission, so that is the shipped suspect: a class auditing one suspect
per student is not graded here yet (book/teachers.md says so).
"""

from __future__ import annotations

import builtins
import importlib
import sys
from collections.abc import Callable

MIMETYPE = "application/vnd.workbook.verdict+json"
EXTRAS_HOOK = "graded_extras"
# ipykernel binds builtins.input afresh for every cell it runs (to forward input() to the browser).
REBOUND_BY_THE_KERNEL = {"builtins.input"}
_MISSING = object()
_state: dict = {}


def _watched_namespaces(chapter: str) -> dict[str, dict]:
    """The namespaces whose callables must not change while the student's code runs."""
    import torch
    import torch.nn.functional

    modules = ["utils.checks", "utils.progress", f"utils.exercises.ch{chapter}", f"utils.references.ch{chapter}", __name__]
    spaces = {name: vars(importlib.import_module(name)) for name in modules}
    spaces.update({"torch": vars(torch), "torch.nn.functional": vars(torch.nn.functional),
                   "torch.Tensor": vars(torch.Tensor), "torch.nn.Module": vars(torch.nn.Module), "builtins": vars(builtins)})
    return spaces


def _snapshot(chapter: str) -> dict[str, int]:
    """{"torch.allclose": id(...), ...} for every callable and class in the watched namespaces,
    and each registered exercise's check and reference."""
    from utils.checks import REGISTRY

    snapshot = {f"{space}.{name}": id(value) for space, values in _watched_namespaces(chapter).items()
                for name, value in list(values.items()) if callable(value)}
    for exercise_id, exercise in REGISTRY.items():
        snapshot[f"the check of exercise {exercise_id}"] = id(exercise.check)
        snapshot[f"the reference of exercise {exercise_id}"] = id(exercise.reference)
    for key in ("grade", "record", "display"):
        snapshot[f"the grader's {key}"] = id(_state.get(key))
    return snapshot


def _changed() -> list[str]:
    """What was replaced since `start`, by name (sorted)."""
    now = _snapshot(_state["chapter"])
    return sorted(name for name, identity in _state["snapshot"].items()
                  if now.get(name) != identity and name not in REBOUND_BY_THE_KERNEL)


def start(chapter: str) -> None:
    """Load the chapter's checks and note what they consist of. Runs before the student's code."""
    import torch._dynamo  # noqa: F401 - imported lazily by torch's optimisers, it rebinds torch.manual_seed
    from IPython.display import display

    from utils import checks, progress

    importlib.import_module(f"utils.exercises.ch{chapter}")
    _state.update(chapter=chapter, grade=checks.grade, record=progress.record_attempt, display=display,
                  exercises=dict(checks.REGISTRY))
    _state["snapshot"] = _snapshot(chapter)


def _send(payload: dict) -> None:
    _state["display"]({MIMETYPE: payload}, raw=True)


def _notebook_namespace() -> dict:
    """The variables of the notebook: the globals of the cell that called the grader."""
    return sys._getframe(2).f_globals


def check(exercise_id: str, name: str, code: str):
    """What `check_exercise` does (print the verdict, record it, hand back the learner's object
    when it passed and the reference otherwise), and send the verdict to the grader."""
    exercise = _state["exercises"][exercise_id]
    candidate = _notebook_namespace().get(name, _MISSING)
    if candidate is _MISSING:
        payload = {"code": code, "exercise": exercise_id, "defined": False, "changed": _changed()}
        _send(payload)
        print(f"Exercise {exercise_id} ({exercise.title}): {name} is not defined")
        return exercise.reference
    try:
        verdict = _state["grade"](exercise_id, candidate)
    except KeyboardInterrupt:  # the grader stopped code that ran too long: carry on with the reference
        print(f"Exercise {exercise_id} ({exercise.title}): stopped, it ran too long")
        return exercise.reference
    _send({"code": code, "exercise": exercise_id, "defined": True, "status": verdict.status,
           "message": verdict.message, "changed": _changed()})
    print(verdict)
    _state["record"](exercise.chapter, exercise.id, exercise.title, verdict.status)
    return candidate if verdict.passed else exercise.reference


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


def finish(code: str) -> None:
    """Send the chapter's extra verdicts and a last look at what changed. Runs after every cell."""
    module = importlib.import_module(f"utils.exercises.ch{_state['chapter']}")
    _send({"code": code, "extras": extra_verdicts(module, _notebook_namespace()), "changed": _changed()})
