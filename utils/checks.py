"""Exercise checks: one-line verdicts, a record of progress, and the reference as a fallback.

A chapter's check module (`utils/exercises/chNN_slug.py`) registers one check per exercise with
`@exercise(...)`. A check receives the learner's function and raises `Wrong("hint")` when it
finds a mistake; the framework turns everything else (stubs, crashes, odd return values) into a
verdict, so a check never crashes on a malformed answer.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sysconfig
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from utils import progress

PASSED, NOT_ATTEMPTED, WRONG = "passed", "not attempted", "wrong"


class Wrong(Exception):
    """Raised by a check: the answer is wrong, and the message says why (with numbers)."""


class NotAttempted(Exception):
    """Raised when the learner's function is still the stub."""


@dataclass(frozen=True)
class Exercise:
    """One registered exercise: its id ("3.2"), title, chapter stem, check and reference."""

    id: str
    title: str
    chapter: str
    check: Callable[[Callable], None]
    reference: Callable


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check, printed as one line."""

    exercise: str
    title: str
    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        line = f"Exercise {self.exercise} ({self.title}): {self.status}"
        return f"{line}. {one_line(self.message)}" if self.message else f"{line}."

    __repr__ = __str__


REGISTRY: dict[str, Exercise] = {}


def exercise(exercise_id: str, title: str, chapter: str, reference: Callable):
    """Register the decorated function as the check of `exercise_id`."""
    def register(check: Callable[[Callable], None]) -> Callable[[Callable], None]:
        REGISTRY[exercise_id] = Exercise(exercise_id, title, chapter, check, reference)
        return check
    return register


def load_all_exercises() -> dict[str, Exercise]:
    """Import every chapter's check module so that all exercises are registered."""
    import utils.exercises

    for module in pkgutil.iter_modules(utils.exercises.__path__):
        importlib.import_module(f"utils.exercises.{module.name}")
    return REGISTRY


def get_exercise(exercise_id: str) -> Exercise:
    if exercise_id not in REGISTRY:
        load_all_exercises()
    if exercise_id not in REGISTRY:
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[exercise_id]


# ------------------------------------------------------------------------------------------
# Helpers for writing checks
# ------------------------------------------------------------------------------------------
# Code in these folders is a library's, not the learner's: a NotImplementedError raised there
# (torch's `nn.Module` without `forward`, say) is a real error, not an untouched stub.
_LIBRARY_DIRS = tuple({str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("stdlib", "purelib", "platlib")})


def _is_learner_frame(frame: traceback.FrameSummary) -> bool:
    if frame.filename.startswith("<"):  # exec'd source: a notebook cell or a test's stub
        return True
    return not str(Path(frame.filename).resolve()).startswith(_LIBRARY_DIRS)


def _raised_by_learner(error: BaseException) -> bool:
    """True when the innermost frame of `error` is the learner's code (a notebook cell, a script)."""
    frames = traceback.extract_tb(error.__traceback__)
    return not frames or _is_learner_frame(frames[-1])


def one_line(text: str, limit: int = 400) -> str:
    """`text` with every run of whitespace (newlines included) made one space, cut to `limit`."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error_line(error: BaseException) -> str:
    """The error and the last line of the learner's own code it passed through."""
    frames = traceback.extract_tb(error.__traceback__)
    learner_frames = [frame for frame in frames[1:] if _is_learner_frame(frame)]  # frames[0] is call()
    if not learner_frames:  # raised by the call itself: wrong arguments, say
        return one_line(f"calling your function raised {type(error).__name__}: {error}")
    where = learner_frames[-1]
    return one_line(f"your function raised {type(error).__name__}: {error} (line {where.lineno}: {where.line})")


def call(candidate: Callable, *args, allow_changes_to: tuple = (), **kwargs):
    """Call the learner's function; a stub becomes NotAttempted, any other error a Wrong.

    Only a NotImplementedError raised by the learner's own code counts as "not attempted"; one
    raised inside torch or another library is reported as the error it is. Every model passed as
    an argument is handed over and taken back clean (`hooks_reset`), so nothing the learner
    leaves on it leaks into later calls or other checks. The learner's code runs with torch's
    global random generator seeded afresh (and put back afterwards), so even an answer that
    ignores the generator it is given gets the same verdict on every run.

    `allow_changes_to` names the arguments the exercise asks the learner to change (a module a
    training loop trains in place): those are neither reset nor reported.
    """
    meant_to_change = {id(value) for value in allow_changes_to}
    models = [value for value in (*args, *kwargs.values())
              if isinstance(value, torch.nn.Module) and id(value) not in meant_to_change]
    inputs = [(label, tensor) for label, tensor in _tensor_arguments(args, kwargs) if id(tensor) not in meant_to_change]
    versions = [tensor._version for _, tensor in inputs]
    try:
        with hooks_reset(*models) as left_behind, _seeded_global_rng():
            result = candidate(*args, **kwargs)
    except NotImplementedError as error:
        if _raised_by_learner(error):
            raise NotAttempted() from error
        raise Wrong(_error_line(error)) from error
    except (Wrong, NotAttempted):
        raise
    except Exception as error:  # the learner's code failed: report it as a verdict, not a crash
        raise Wrong(_error_line(error)) from error
    if left_behind:  # already undone, but the learner's own model would keep it
        raise Wrong(f"your function {left_behind[0]}")
    changed = [label for (label, tensor), version in zip(inputs, versions) if tensor._version != version]
    if changed:
        raise Wrong(f"your function changed its input {changed[0]} in place ({len(changed)} input tensors changed): "
                    "the caller's data must stay as it was; use x = x + y rather than x += y, or work on a clone()")
    return result


def _tensor_arguments(args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The tensors a call hands over, with a label each: arguments, and the values of dicts or
    caches (an ActivationCache) passed as arguments."""
    found = []
    named = [(f"argument {i + 1}", value) for i, value in enumerate(args)] + list(kwargs.items())
    for label, value in named:
        if isinstance(value, torch.Tensor):
            found.append((label, value))
        mapping = getattr(value, "cache_dict", value)
        if isinstance(mapping, dict):
            found += [(f"{label}[{key!r}]", item) for key, item in mapping.items() if isinstance(item, torch.Tensor)]
    return found


@contextlib.contextmanager
def _seeded_global_rng(seed: int = 0) -> Iterator[None]:
    """Run a block with torch's global CPU generator seeded, then restore the learner's state."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a block on one torch thread: a check's loop of tiny tensors gains nothing from
    splitting every operation between threads, and loses time doing it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: a check's inputs are the same on every run."""
    return torch.Generator().manual_seed(seed)


def call_on_inputs(candidate: Callable, cases: Iterable[tuple[tuple, dict]]) -> list:
    """Call the learner's function once per `(args, kwargs)` case, in order, and return the results.

    Checks compare every result, so an answer that memoises its first result, ignores an
    argument or only works on its first call is caught.
    """
    return [call(candidate, *args, **kwargs) for args, kwargs in cases]


# The hooks a check's model had when the check first saw it: {model: {module name: {dict: ids}}}.
_CLEAN_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# A copy of each model's parameters and buffers as first seen: {model: {name: tensor}}.
_CLEAN_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hook_ids(model: torch.nn.Module) -> dict[str, dict[str, set]]:
    return {name: {attr: set(getattr(module, attr, {})) for attr in _HOOK_DICTS}
            for name, module in model.named_modules()}


def _restore_hooks(model: torch.nn.Module, clean: dict[str, dict[str, set]]) -> None:
    """Remove every hook added to `model` since `clean` was recorded, TransformerLens's and raw torch's."""
    if hasattr(model, "reset_hooks"):
        model.reset_hooks(including_permanent=False)
    for name, module in model.named_modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if not hooks:
                continue
            for hook_id in set(hooks) - clean.get(name, {}).get(attr, set()):
                del hooks[hook_id]


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _changed_tensors(model: torch.nn.Module, versions: dict[str, int]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in _tensors(model).items()
            if tensor._version != versions.get(name, tensor._version)}


def _added_hooks(model: torch.nn.Module, clean: dict[str, dict[str, set]]) -> list[str]:
    """The names of the modules that carry hooks `clean` did not have."""
    return [name or "the model" for name, module in model.named_modules()
            if any(set(getattr(module, attr, {})) - clean.get(name, {}).get(attr, set()) for attr in _HOOK_DICTS)]


def _left_behind(model: torch.nn.Module, clean: dict, versions: dict[str, int]) -> list[str]:
    """What the learner's code left changed on `model`, in words (hooks, weights edited in place)."""
    found = []
    hooked = _added_hooks(model, clean)
    if hooked:
        found.append(f"left hooks on {len(hooked)} hook points of the model ({', '.join(hooked[:3])}): they would "
                     "change every later run; pass them to model.run_with_hooks(..., fwd_hooks=...) or call "
                     "model.reset_hooks() before returning")
    changed = list(_changed_tensors(model, versions))
    if changed:
        found.append(f"changed {len(changed)} of the model's weights in place ({', '.join(changed[:3])}): "
                     "work on a copy, or use hooks, so the model stays as it was")
    return found


@contextlib.contextmanager
def hooks_reset(*models: torch.nn.Module) -> Iterator[list[str]]:
    """Hand the learner's code each model as the check first found it, and take it back that way.

    Hooks the learner adds and never removes, `model.train()` left on, weights edited in place,
    `requires_grad` switched off, or gradients switched off globally would otherwise leak into
    the check's later calls and into other checks. Yields a list that, after the block, says
    what the code left behind (hooks, weights edited in place), so a check can report it.
    """
    states = []
    for model in models:
        if model not in _CLEAN_HOOKS:
            _CLEAN_HOOKS[model] = _hook_ids(model)
            _CLEAN_STATE[model] = {name: t.detach().clone() for name, t in _tensors(model).items()}
        clean = _CLEAN_HOOKS[model]
        _restore_hooks(model, clean)
        parameters = {name: p.requires_grad for name, p in model.named_parameters()}
        versions = {name: t._version for name, t in _tensors(model).items()}
        states.append((model, clean, model.training, parameters, versions))
    grad_enabled = torch.is_grad_enabled()
    left_behind: list[str] = []
    try:
        yield left_behind
    finally:
        torch.set_grad_enabled(grad_enabled)
        for model, clean, training, parameters, versions in states:
            left_behind.extend(_left_behind(model, clean, versions))
            _restore_hooks(model, clean)
            model.train(training)
            for name, p in model.named_parameters():
                p.requires_grad_(parameters.get(name, p.requires_grad))
                p.grad = None
            changed = _changed_tensors(model, versions)
            with torch.no_grad():
                for name, tensor in changed.items():
                    tensor.copy_(_CLEAN_STATE[model][name])


def _describe(value) -> str:
    """A one-line description of any value: shape and dtype for arrays, a short repr otherwise."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy and friends
        return f"a {type(value).__module__.split('.')[0]} {type(value).__name__} of shape {list(value.shape)}"
    return one_line(f"{type(value).__name__} {value!r}", limit=80)


def _same_tensor(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(),
                                                 atol=atol, rtol=rtol, equal_nan=True)


def _number(value: float) -> str:
    return f"{value:.4g}"


def difference(got: torch.Tensor, expected: torch.Tensor) -> str:
    """The numbers that show how `got` differs from `expected` (same shape), in a few words."""
    got_values, expected_values = got.detach().double().cpu(), expected.detach().double().cpu()
    error = (got_values - expected_values).abs().nan_to_num(float("inf"))
    if got.dim() == 0:
        return f"got {_number(got_values.item())}, expected {_number(expected_values.item())}"
    index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    shown = bool if got.dtype == torch.bool and expected.dtype == torch.bool else _number
    at = f"at index {list(index)}: got {shown(got_values[index].item())}, expected {shown(expected_values[index].item())}"
    if not got.dtype.is_floating_point or not expected.dtype.is_floating_point:
        return f"{int((error > 0).sum())} of {error.numel()} entries differ; first {at}"
    return f"differs by up to {_number(error.max().item())} ({at})"


def _with_numbers(hint: str, numbers: str) -> str:
    return f"{hint} ({numbers})"


def _either(hints: list[str]) -> str:
    """One hint, or, where these inputs cannot tell several mistakes apart, all of them."""
    return hints[0] if len(hints) == 1 else "one of these mistakes: " + "; or ".join(hints)


def expect_no_known_mistake(got: torch.Tensor, expected: torch.Tensor, mistakes: dict[str, torch.Tensor] | None,
                            atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Raise the hint of every known mistake that `got` matches and the correct answer does not.

    `expect_tensor` starts with this; a check that tests properties instead of one exact answer
    (a trained probe, a random batch) calls it on its own to name a mistake it recognises.
    """
    if _same_tensor(got, expected, atol, rtol):  # a correct answer never gets a hint
        return
    matched = [hint for hint, mistaken in (mistakes or {}).items()
               if _same_tensor(got, mistaken, atol, rtol) and not _same_tensor(mistaken, expected, atol, rtol)]
    if matched:
        numbers = (difference(got, expected) if got.shape == expected.shape
                   else f"shape {list(got.shape)}, expected {list(expected.shape)}")
        raise Wrong(_with_numbers(_either(matched), numbers))


def expect_tensor(got, expected: torch.Tensor, name: str = "the result", atol: float = 1e-4,
                  rtol: float = 1e-4, mistakes: dict[str, torch.Tensor] | None = None) -> None:
    """Compare a learner's tensor with the reference; name a known mistake when it matches one.

    `mistakes` maps a hint to the tensor that mistake would produce; a match raises that hint,
    with the numbers that show it. A mistake that gives the correct result on this input is
    skipped, so a hint never fires for a correct answer; where several mistakes give the same
    result, the verdict names them all. Any floating dtype is accepted: values are compared in
    float64.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should be a torch.Tensor of shape {list(expected.shape)}, got {_describe(got)}")
    expect_no_known_mistake(got, expected, mistakes, atol, rtol)
    if got.shape != expected.shape:
        raise Wrong(f"{name} has shape {list(got.shape)}, expected {list(expected.shape)}")
    if got.dtype.is_floating_point != expected.dtype.is_floating_point or (got.dtype == torch.bool) != (expected.dtype == torch.bool):
        raise Wrong(f"{name} has dtype {got.dtype}, expected {expected.dtype}")
    got_values = got.detach().double().cpu()
    expected_values = expected.detach().double().cpu()
    if torch.isnan(got_values).any() and not torch.isnan(expected_values).any():
        raise Wrong(f"{name} contains NaN at {int(torch.isnan(got_values).sum())} positions")
    if not torch.allclose(got_values, expected_values, atol=atol, rtol=rtol, equal_nan=True):
        error = (got_values - expected_values).abs().nan_to_num(float("inf"))
        index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape)) if error.dim() else ()
        raise Wrong(f"{name} and the reference differ by up to {error.max().item():.4g} "
                    f"(at index {list(index)}: got {got_values[index].item():.4g}, "
                    f"expected {expected_values[index].item():.4g}; "
                    f"{int((error > atol + rtol * expected_values.abs()).sum())} of {error.numel()} entries are off)")


def expect_equal(got, expected, name: str = "the result", mistakes: dict[str, object] | None = None) -> None:
    """Compare plain Python values (strings, numbers, lists), naming a known mistake if one matches."""
    matched = [hint for hint, mistaken in (mistakes or {}).items() if got == mistaken and mistaken != expected]
    if matched:
        raise Wrong(_with_numbers(_either(matched), one_line(f"got {got!r}, expected {expected!r}", limit=160)))
    if type(got) is not type(expected) and not (isinstance(got, (int, float)) and isinstance(expected, (int, float))):
        raise Wrong(f"{name} should be a {type(expected).__name__}, got {_describe(got)}")
    if got != expected:
        raise Wrong(one_line(f"{name} is {got!r}, expected {expected!r}"))


def expect_close(got, expected: float, name: str = "the result", atol: float = 1e-3,
                 mistakes: dict[str, float] | None = None) -> None:
    """Compare a number with the reference, accepting a Python float or a one-element tensor."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        raise Wrong(f"{name} should be a number, got {_describe(got)}")
    matched = [hint for hint, mistaken in (mistakes or {}).items()
               if abs(got - mistaken) <= atol and abs(mistaken - expected) > atol and abs(got - expected) > atol]
    if matched:
        raise Wrong(_with_numbers(_either(matched), f"got {got:.4g}, expected {expected:.4g}"))
    if got != got:  # NaN
        raise Wrong(f"{name} is NaN")
    if abs(got - expected) > atol:
        raise Wrong(f"{name} is {got:.4g}, expected {expected:.4g}")


# ------------------------------------------------------------------------------------------
# Running checks
# ------------------------------------------------------------------------------------------
def grade(exercise_id: str, candidate) -> Verdict:
    """The verdict on `candidate` for one exercise; never raises for any candidate."""
    ex = get_exercise(exercise_id)
    if not callable(candidate):
        return Verdict(ex.id, ex.title, WRONG, f"expected a function, got {_describe(candidate)}")
    try:
        # Gradients on, as torch starts: a chapter that switched them off for reading (chapter 03
        # does) must not change the verdict of a check that trains something.
        with torch.enable_grad():
            ex.check(candidate)
    except NotAttempted:
        return Verdict(ex.id, ex.title, NOT_ATTEMPTED, "Replace the NotImplementedError with your code")
    except Wrong as hint:
        return Verdict(ex.id, ex.title, WRONG, str(hint))
    except Exception as error:  # an answer so odd that the check itself tripped over it
        return Verdict(ex.id, ex.title, WRONG,
                       f"could not check your answer ({type(error).__name__}: {error}); "
                       "look at the type and shape it returns")
    return Verdict(ex.id, ex.title, PASSED)


def check_exercise(exercise_id: str, candidate, record: bool = True):
    """Print the verdict, record it, and return the function later cells should use.

    That is the learner's own function when it passed, otherwise the reference solution, so a
    skipped or unfinished exercise never stops the rest of the chapter.
    """
    verdict = grade(exercise_id, candidate)
    print(verdict)
    ex = get_exercise(exercise_id)
    if record:
        progress.record_attempt(ex.chapter, ex.id, ex.title, verdict.status)
    if verdict.passed:
        return candidate
    print("  (the cells below use the reference solution, so the chapter keeps working)")
    return ex.reference
