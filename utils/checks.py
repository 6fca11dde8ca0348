"""Exercise checks: one-line verdicts, a record of progress, and the reference as a fallback.

A chapter's check module (`utils/exercises/chNN_slug.py`) registers one check per exercise with
`@exercise(...)`. A check receives the learner's function and raises `Wrong("hint")` when it
finds a mistake; the framework turns everything else (stubs, crashes, odd return values) into a
verdict, so a check never crashes on a malformed answer.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
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
    leaves on it leaks into later calls or other checks. Every list, tuple, dict, set or
    dataclass argument (a PromptSet, a list of prompts) is handed over as a copy, so an answer
    that extends or sorts it cannot change the check's own inputs; a change is then reported, as
    the chapter's cells would see it. The learner's code runs with torch's global random
    generator seeded afresh (and put back afterwards), so even an answer that ignores the
    generator it is given gets the same verdict on every run.

    `allow_changes_to` names the arguments the exercise asks the learner to change (a module a
    training loop trains in place, a list it fills): those are passed as they are, and neither
    reset nor reported.
    """
    meant_to_change = {id(value) for value in allow_changes_to}
    originals = list(args) + list(kwargs.values())
    args = tuple(value if id(value) in meant_to_change else _handed_copy(value) for value in args)
    kwargs = {key: value if id(value) in meant_to_change else _handed_copy(value) for key, value in kwargs.items()}
    copies = [(label, original, handed) for (label, handed), original
              in zip(_labelled(args, kwargs), originals) if handed is not original]
    models = [value for value in (*args, *kwargs.values())
              if isinstance(value, torch.nn.Module) and id(value) not in meant_to_change]
    inputs = [(label, tensor) for label, tensor in _tensor_arguments(args, kwargs) if id(tensor) not in meant_to_change]
    versions = [tensor._version for _, tensor in inputs]
    saved = [tensor.detach().clone() for _, tensor in inputs]  # to put back what an in-place edit changes
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
    finally:
        changed = _put_back(inputs, versions, saved)
    if left_behind:  # already undone, but the learner's own model would keep it
        raise Wrong(f"your function {left_behind[0]}")
    if changed:
        raise Wrong(f"your function changed its input {changed[0]} in place ({len(changed)} input tensors changed): "
                    "the caller's data must stay as it was; use x = x + y rather than x += y, or work on a clone()")
    for label, original, handed in copies:
        if not _same_value(original, handed):
            raise Wrong(f"your function changed its input {label} ({_kind(original)}) in place "
                        f"({_what_changed(original, handed)}): the chapter's later cells use that object; "
                        "work on a copy (sorted(x), list(x) + [...], dict(x)) and leave the argument as it was")
    return result


def _put_back(inputs: list[tuple[str, torch.Tensor]], versions: list[int], saved: list[torch.Tensor]) -> list[str]:
    """Restore every input tensor an in-place operation changed, also through `.data` (the check's
    own tensors, which its next call and the next check use); return their labels."""
    changed = []
    with torch.no_grad():
        for (label, tensor), version, before in zip(inputs, versions, saved):
            if tensor._version != version or not _same_values(tensor.detach(), before):
                changed.append(label)
                if tensor.shape == before.shape and tensor.dtype == before.dtype:
                    tensor.copy_(before)
                else:  # `.data` replaced by a tensor of another shape or dtype
                    tensor.data = before
    return changed


def _labelled(args: tuple, kwargs: dict) -> list[tuple[str, object]]:
    return [(f"argument {i + 1}", value) for i, value in enumerate(args)] + list(kwargs.items())


# Leaves a handed copy shares with the original: immutable values, and tensors (tracked by their
# version counter instead, so a parameter in a list still carries gradients to the check).
_SHARED_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device)


def _copyable(value, depth: int = 0) -> bool:
    """True for containers of plain data (lists, tuples, dicts, sets, dataclasses of them): what
    `_handed_copy` copies. A container that holds a model or any other object is passed as it is."""
    if depth > 6:
        return False
    if isinstance(value, _SHARED_LEAVES) or type(value).__module__ == "numpy":
        return True
    if type(value) in (list, tuple, set, frozenset):
        return all(_copyable(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(_copyable(k, depth + 1) and _copyable(v, depth + 1) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_copyable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value))
    return False


def _copy_of(value):
    """A copy of plain data: containers rebuilt, numpy arrays copied, tensors and scalars shared."""
    if isinstance(value, _SHARED_LEAVES):
        return value
    if type(value).__module__ == "numpy":
        return value.copy() if hasattr(value, "copy") else value
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(_copy_of(item) for item in value)
    if type(value) is dict:
        return {key: _copy_of(item) for key, item in value.items()}
    copied = object.__new__(type(value))  # a dataclass: the same fields, each copied
    copied.__dict__.update({key: _copy_of(item) for key, item in vars(value).items()})
    return copied


def _handed_copy(value):
    """What `call` hands the learner in place of `value`: a copy of plain data, else `value`."""
    if isinstance(value, _SHARED_LEAVES) or not _copyable(value):
        return value
    try:
        return _copy_of(value)
    except Exception:  # an object that cannot be rebuilt field by field: hand it over as it is
        return value


def _same_value(a, b) -> bool:
    """Whether a handed copy still equals its original (tensors by identity: tracked elsewhere)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    if type(a) is not type(b):
        return False
    if type(a).__module__ == "numpy":
        return bool(getattr(a, "shape", None) == getattr(b, "shape", None) and (a == b).all()) if hasattr(a, "all") else a == b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return vars(a).keys() == vars(b).keys() and all(_same_value(vars(a)[k], vars(b)[k]) for k in vars(a))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def _kind(value) -> str:
    return f"a {type(value).__name__}" + (f" of {len(value)} items" if hasattr(value, "__len__") else "")


def _what_changed(original, handed) -> str:
    """A few words on how a container changed: its length, or its first changed item."""
    if hasattr(original, "__len__") and hasattr(handed, "__len__") and len(original) != len(handed):
        return f"it had {len(original)} items and came back with {len(handed)}"
    if isinstance(original, (list, tuple)) and isinstance(handed, (list, tuple)):
        index = next(i for i, (x, y) in enumerate(zip(original, handed)) if not _same_value(x, y))
        if sorted(map(repr, original)) == sorted(map(repr, handed)):
            return f"its items were reordered, first at index {index}"
        return one_line(f"item {index} was {original[index]!r} and became {handed[index]!r}", limit=120)
    if isinstance(original, dict) and isinstance(handed, dict):
        keys = [k for k in original if k in handed and not _same_value(original[k], handed[k])]
        added = [k for k in handed if k not in original]
        return one_line(f"keys added: {added[:3]}" if added else f"the value of {keys[0]!r} changed" if keys
                        else "keys removed", limit=120)
    if dataclasses.is_dataclass(original):
        fields = [k for k in vars(original) if not _same_value(vars(original)[k], vars(handed).get(k))]
        return f"its field {fields[0]!r} changed" if fields else "it changed"
    return "it changed"


def _tensor_arguments(args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The tensors a call hands over, with a label each: arguments, the values of dicts or
    caches (an ActivationCache) passed as arguments, and tensors inside lists, tuples and
    dataclasses of plain data."""
    found = []
    for label, value in _labelled(args, kwargs):
        mapping = getattr(value, "cache_dict", None)
        if isinstance(mapping, dict):
            found += [(f"{label}[{key!r}]", item) for key, item in mapping.items() if isinstance(item, torch.Tensor)]
        else:
            found += _nested_tensors(label, value)
    return found


def _nested_tensors(label: str, value, depth: int = 0) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(label, value)]
    if depth > 3:
        return []
    if type(value) in (list, tuple):
        return [found for i, item in enumerate(value) for found in _nested_tensors(f"{label}[{i}]", item, depth + 1)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _nested_tensors(f"{label}[{key!r}]", item, depth + 1)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [found for f in dataclasses.fields(value)
                for found in _nested_tensors(f"{label}.{f.name}", getattr(value, f.name, None), depth + 1)]
    return []


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


def _changed_tensors(model: torch.nn.Module, versions: dict[str, int],
                     before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights and buffers changed since `versions` and `before` were taken: by an in-place
    operation (the version counter moves) or through `.data` (it does not: the values tell)."""
    changed = {}
    for name, tensor in _tensors(model).items():
        if tensor._version != versions.get(name, tensor._version):
            changed[name] = tensor
        elif name in before and not _same_values(tensor.detach(), before[name]):
            changed[name] = tensor
    return changed


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _added_hooks(model: torch.nn.Module, clean: dict[str, dict[str, set]]) -> list[str]:
    """The names of the modules that carry hooks `clean` did not have."""
    return [name or "the model" for name, module in model.named_modules()
            if any(set(getattr(module, attr, {})) - clean.get(name, {}).get(attr, set()) for attr in _HOOK_DICTS)]


def _left_behind(model: torch.nn.Module, clean: dict, versions: dict[str, int],
                 before: dict[str, torch.Tensor]) -> list[str]:
    """What the learner's code left changed on `model`, in words (hooks, weights edited in place)."""
    found = []
    hooked = _added_hooks(model, clean)
    if hooked:
        found.append(f"left hooks on {len(hooked)} hook points of the model ({', '.join(hooked[:3])}): they would "
                     "change every later run; pass them to model.run_with_hooks(..., fwd_hooks=...) or call "
                     "model.reset_hooks() before returning")
    changed = list(_changed_tensors(model, versions, before))
    if changed:
        found.append(f"changed {len(changed)} of the model's weights in place ({', '.join(changed[:3])}): "
                     "work on a copy, or use hooks, so the model stays as it was")
    return found


@contextlib.contextmanager
def hooks_reset(*models: torch.nn.Module) -> Iterator[list[str]]:
    """Hand the learner's code each model as the check first found it, and take it back that way.

    Hooks the learner adds and never removes, `model.train()` left on, weights edited in place
    (also through `.data`, which no version counter sees: the values are compared with a copy
    taken before the block), `requires_grad` switched off, or gradients switched off globally
    would otherwise leak into the check's later calls and into other checks. Yields a list that,
    after the block, says what the code left behind (hooks, weights edited in place), so a check
    can report it.
    """
    states = []
    for model in models:
        if model not in _CLEAN_HOOKS:
            _CLEAN_HOOKS[model] = _hook_ids(model)
        clean = _CLEAN_HOOKS[model]
        _restore_hooks(model, clean)
        parameters = {name: p.requires_grad for name, p in model.named_parameters()}
        versions = {name: t._version for name, t in _tensors(model).items()}
        before = {name: t.detach().clone() for name, t in _tensors(model).items()}
        states.append((model, clean, model.training, parameters, versions, before))
    grad_enabled = torch.is_grad_enabled()
    left_behind: list[str] = []
    try:
        yield left_behind
    finally:
        torch.set_grad_enabled(grad_enabled)
        for model, clean, training, parameters, versions, before in states:
            left_behind.extend(_left_behind(model, clean, versions, before))
            _restore_hooks(model, clean)
            model.train(training)
            for name, p in model.named_parameters():
                p.requires_grad_(parameters.get(name, p.requires_grad))
                p.grad = None
            changed = _changed_tensors(model, versions, before)
            with torch.no_grad():
                for name, tensor in changed.items():
                    if name in before and tensor.shape == before[name].shape and tensor.dtype == before[name].dtype:
                        tensor.copy_(before[name])
                    elif name in before:  # `.data` replaced by a tensor of another shape or dtype
                        tensor.data = before[name].clone()


# ------------------------------------------------------------------------------------------
# What the chapter's later cells rely on: gradients, detached values, the call's signature
# ------------------------------------------------------------------------------------------
def expect_differentiable(got, wrt: Iterable[torch.Tensor] | torch.nn.Module, name: str = "the result") -> None:
    """The learner's `got` must carry gradients to `wrt` (tensors, or a module's parameters):
    backpropagate it and check that every one receives a finite, non-zero gradient somewhere.

    Catches a loss computed under `torch.no_grad()`, a `.detach()` or `.item()` in the middle,
    or a TopK written with an operation that has no gradient: the chapter's next cell would train
    on it and learn nothing, with no error. `wrt` is left without gradients afterwards.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should be a torch.Tensor that carries gradients, got {_describe(got)}")
    targets = list(wrt.parameters()) if isinstance(wrt, torch.nn.Module) else list(wrt)
    if not got.requires_grad:
        raise Wrong(f"{name} carries no gradient (requires_grad is False): was it computed under torch.no_grad(), "
                    "or detached (.detach(), .item(), .numpy())? The chapter trains on it next")
    usable = [t for t in targets if t.requires_grad]
    grads = torch.autograd.grad(got.float().sum(), usable, allow_unused=True, retain_graph=True)
    dead = [i for i, g in enumerate(grads) if g is None or not bool(torch.isfinite(g).all()) or not bool(g.any())]
    if dead:
        shapes = ", ".join(str(list(usable[i].shape)) for i in dead[:3])
        raise Wrong(f"no usable gradient reaches {len(dead)} of the {len(usable)} tensors {name} should depend on "
                    f"(shapes {shapes}): an operation without a gradient (argmax, a comparison, an integer index "
                    "used as a value) or a detach cuts the path")


def expect_detached(got, name: str = "the result") -> None:
    """The learner's `got` (a tensor, a number, or a list or dict of them) must hold no autograd
    graph: a loss history kept as graph-holding tensors fills memory and breaks the next plot."""
    held = [label for label, tensor in _nested_tensors(name, got) if tensor.requires_grad]
    if held:
        raise Wrong(f"{held[0]} still holds its autograd graph ({len(held)} such tensors): keep "
                    "loss.item() or tensor.detach() where you store values for later")


@functools.lru_cache(maxsize=256)
def chapter_calls(chapter: str, function_name: str) -> list[tuple[int, tuple[str, ...]]]:
    """How the chapter's own source calls `function_name`: one (number of positional arguments,
    keyword names) per distinct call, read from solutions/{chapter}.py (or the student notebook
    in chapters/, where only it is present). [] when neither is found."""
    root = Path(__file__).resolve().parent.parent
    source_file, notebook = root / "solutions" / f"{chapter}.py", root / "chapters" / f"{chapter}.ipynb"
    if source_file.exists():
        source = source_file.read_text(encoding="utf-8")
    elif notebook.exists():
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    else:
        return []
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    shapes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function_name:
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue  # *args or **kwargs: the shape is not known from the source
            shape = (len(node.args), tuple(sorted(k.arg for k in node.keywords)))
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def expect_chapter_signature(candidate: Callable, chapter: str, function_name: str) -> None:
    """The learner's function must accept every call the chapter's later cells make of it (the
    same number of positional arguments, the same keyword names): a statement that forgot an
    argument, or an answer that dropped one, fails here rather than three cells later."""
    try:
        signature = inspect.signature(candidate)
    except (TypeError, ValueError):  # a builtin or a C function: nothing to compare
        return
    for n_positional, keywords in chapter_calls(chapter, function_name):
        try:
            signature.bind(*([None] * n_positional), **{keyword: None for keyword in keywords})
        except TypeError as error:
            shown = ", ".join(["..."] * n_positional + [f"{k}=..." for k in keywords])
            raise Wrong(f"the chapter calls {function_name}({shown}) later, and your function cannot be called that "
                        f"way ({error}); keep the parameters the statement gives") from None


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


def _pair(got: float, expected: float, tolerance: float = 0.0) -> tuple[str, str]:
    """`got` and `expected` with as many significant digits (4 at least) as it takes for two
    different numbers to print differently, each within a tenth of `tolerance` of its value: a
    gap beyond the tolerance always shows (never "got 1.001, expected 1.001")."""
    if got != got or expected != expected or abs(got) == float("inf") or abs(expected) == float("inf"):
        return f"{got:.4g}", f"{expected:.4g}"
    for digits in range(4, 17):
        shown = f"{got:.{digits}g}", f"{expected:.{digits}g}"
        precise = all(abs(float(text) - value) <= tolerance / 10 for text, value in zip(shown, (got, expected)))
        if (shown[0] != shown[1] or got == expected) and (precise or tolerance == 0):
            return shown
    return repr(got), repr(expected)


def difference(got: torch.Tensor, expected: torch.Tensor) -> str:
    """The numbers that show how `got` differs from `expected` (same shape), in a few words."""
    got_values, expected_values = got.detach().double().cpu(), expected.detach().double().cpu()
    error = (got_values - expected_values).abs().nan_to_num(float("inf"))
    if got.dim() == 0:
        return "got {}, expected {}".format(*_pair(got_values.item(), expected_values.item()))
    index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    if got.dtype == torch.bool and expected.dtype == torch.bool:
        pair = bool(got_values[index].item()), bool(expected_values[index].item())
    else:
        pair = _pair(got_values[index].item(), expected_values[index].item())
    at = f"at index {list(index)}: got {pair[0]}, expected {pair[1]}"
    if not got.dtype.is_floating_point or not expected.dtype.is_floating_point:
        return f"{int((error > 0).sum())} of {error.numel()} entries differ; first {at}"
    return f"differs by up to {_number(error.max().item())}, {at}"


# A wrong answer is named as near a known mistake when it lies this many times closer to that
# mistake's result than to the correct one, on average over the entries (and not within tolerance
# of it: then the mistake's own hint fires). The mean, not the largest gap: a variant of a mistake
# (the same offset, one more row averaged in) moves every entry a little, or one entry a lot.
NEAR_FACTOR = 3.0


def _mean_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().nan_to_num(float("inf")).mean().item()


def _closest_mistake(got: torch.Tensor, mistakes, expected: torch.Tensor) -> str:
    """"nearest known mistake: HINT (your answer is X from that mistake's result and Y from the
    correct one)" when the wrong answer `got` lies much closer to one known mistake's result than
    to the correct one (on average over the entries); else ""."""
    to_expected = _mean_gap(got, expected)
    gaps = [(_mean_gap(got, mistaken), hint) for hint, mistaken in (mistakes or {}).items()
            if isinstance(mistaken, torch.Tensor) and mistaken.shape == got.shape]
    if not gaps:
        return ""
    gap, hint = min(gaps, key=lambda pair: pair[0])
    if not gap * NEAR_FACTOR < to_expected:
        return ""
    average = "on average " if got.numel() > 1 else ""
    return (f"nearest known mistake: {hint} (your answer is {average}{_number(gap)} from that mistake's "
            f"result and {_number(to_expected)} from the correct one)")


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
        shown = _pair(got_values[index].item(), expected_values[index].item(),
                      atol + rtol * abs(expected_values[index].item()))
        off = f"{int((error > atol + rtol * expected_values.abs()).sum())} of {error.numel()} entries are off"
        near = _closest_mistake(got_values, mistakes, expected_values)
        if near:  # the named mistake first: a long verdict is cut at its end
            raise Wrong(f"{name}: {near}; against the reference, {off}, the largest gap {error.max().item():.4g} "
                        f"at index {list(index)}: got {shown[0]}, expected {shown[1]}")
        raise Wrong(f"{name} and the reference differ by up to {error.max().item():.4g} "
                    f"(at index {list(index)}: got {shown[0]}, expected {shown[1]}; {off})")


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
        raise Wrong(_with_numbers(_either(matched), "got {}, expected {}".format(*_pair(got, expected, atol))))
    if got != got:  # NaN
        raise Wrong(f"{name} is NaN")
    if abs(got - expected) > atol:
        near = _closest_mistake(torch.tensor(float(got)), {hint: torch.tensor(float(value)) for hint, value in
                                                             (mistakes or {}).items()}, torch.tensor(float(expected)))
        raise Wrong("{} is {}, expected {}".format(name, *_pair(got, expected, atol)) + (f"; {near}" if near else ""))


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
        # The chapter's later cells call the learner's function (check_exercise hands it back):
        # an answer that passed on the check's calls must also take the chapter's.
        expect_chapter_signature(candidate, ex.chapter, getattr(ex.reference, "__name__", ""))
    except NotAttempted:
        return Verdict(ex.id, ex.title, NOT_ATTEMPTED, "Replace the NotImplementedError with your code")
    except Wrong as hint:
        return Verdict(ex.id, ex.title, WRONG, str(hint))
    except Exception as error:  # an answer so odd that the check itself tripped over it
        return Verdict(ex.id, ex.title, WRONG,
                       f"could not check your answer ({type(error).__name__}: {error}); "
                       "look at the type and shape it returns")
    return Verdict(ex.id, ex.title, PASSED)


def show_verdict(line: str) -> None:
    """Print a verdict: one line of plain text everywhere; in a notebook, also an HTML form that
    wraps only between words, so a long verdict never breaks in the middle of a number."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        print(line)
        return
    import html

    from IPython.display import display

    style = "white-space: pre-wrap; word-break: normal; overflow-wrap: normal; margin: 0"
    display({"text/plain": line, "text/html": f'<pre style="{style}">{html.escape(line)}</pre>'}, raw=True)


def check_exercise(exercise_id: str, candidate, record: bool = True):
    """Print the verdict, record it, and return the function later cells should use.

    That is the learner's own function when it passed, otherwise the reference solution, so a
    skipped or unfinished exercise never stops the rest of the chapter.
    """
    verdict = grade(exercise_id, candidate)
    show_verdict(str(verdict))
    ex = get_exercise(exercise_id)
    if record:
        progress.record_attempt(ex.chapter, ex.id, ex.title, verdict.status)
    if verdict.passed:
        return candidate
    print("  (the cells below use the reference solution, so the chapter keeps working)")
    return ex.reference
