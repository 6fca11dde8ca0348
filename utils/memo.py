"""A disk memo for the slow computations that a chapter, its student twin and its tests all repeat.

`make test` runs each chapter twice (the solution notebook and the student one, whose stubs fall
back to the reference) and its claim tests call the same training and sweep functions again. With
`WORKBOOK_MEMO_DIR` set (make test sets it to a folder it empties first), a function decorated
`@memoized` stores its result there, keyed by its name and a digest of every argument (tensor
bytes, a model's weights, config, mode and hooks), and a later call with the same arguments loads
it instead of recomputing. The key also holds the function's source text, so the notebook's copy of
a function and the exported reference share one entry; functions, classes and dataclasses among the
arguments are digested by their code, not their module, for the same reason. Unset (a learner's
session, `make claims`), it does nothing.

A call is not stored, and simply runs, when the key would not be trustworthy: an argument the
digest cannot read (a generator, an unknown object), a model carrying hooks, or a call
that changed its arguments or drew from a global random generator (a cached answer would leave that
generator where a real call would not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import os
import pickle
import pkgutil
import random
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

MEMO_DIR_VARIABLE = "WORKBOOK_MEMO_DIR"
LOG_NAME = "calls.log"


class Unreadable(Exception):
    """An argument the digest cannot describe fully: the call runs without the memo."""


def memo_dir() -> Path | None:
    folder = os.environ.get(MEMO_DIR_VARIABLE)
    return Path(folder) if folder else None


def _feed(h, value) -> None:
    """Add `value` to the running digest `h`, or raise Unreadable."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, complex)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (torch.dtype, torch.device)):
        h.update(f"{value!r};".encode())
    elif isinstance(value, torch.Tensor):
        if value.is_sparse or value.is_quantized:
            raise Unreadable("a sparse or quantized tensor")
        flat = value.detach().cpu().contiguous().reshape(-1)  # [numel]
        h.update(f"tensor:{value.dtype}:{tuple(value.shape)}:{value.device.type}:{value.requires_grad};".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            raise Unreadable("an object array")
        h.update(f"array:{value.dtype}:{value.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, torch.nn.Module):
        _feed_module(h, value)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}];".encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, dict):
        h.update(f"dict[{len(value)}];".encode())
        for key, item in value.items():  # insertion order is part of the value (tables keep it)
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (set, frozenset)):
        digests = sorted(digest(item) for item in value)
        h.update(f"set:{','.join(digests)};".encode())
    elif isinstance(value, types.FunctionType):
        _feed_function(h, value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(b"dataclass:")
        _feed_class(h, type(value))
        for field in dataclasses.fields(value):
            _feed(h, field.name)
            _feed(h, getattr(value, field.name))
    else:
        raise Unreadable(f"an argument of type {type(value).__name__}")


def _feed_function(h, function: types.FunctionType, globals_too: bool = True) -> None:
    """A plain function or lambda: its name, compiled code, constants, defaults, the values it
    closes over and the values of the module-level names it reads (a lambda written in a notebook's
    loop reads the loop variable as a global). Not its module, so a notebook's copy (in __main__)
    and the exported reference's digest alike. Anything the digest cannot read makes the call
    unreadable."""
    h.update(f"function:{function.__qualname__};".encode())
    _feed_code(h, function.__code__)
    _feed(h, function.__defaults__)
    _feed(h, function.__kwdefaults__)
    for cell in function.__closure__ or ():
        _feed(h, cell.cell_contents)
    if globals_too:
        for name in sorted(_names_read(function.__code__)):
            if name in function.__globals__:
                h.update(f"global:{name}=".encode())
                _feed_global(h, function.__globals__[name])


def _names_read(code: types.CodeType) -> set[str]:
    """Every name a code object and the functions nested in it look up (globals among them)."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_read(constant)
    return names


def _feed_global(h, value) -> None:
    """A module-level value a function argument reads: a module by name, a function or class by its
    code (not the globals it reads in turn), anything else as an argument."""
    if isinstance(value, types.ModuleType):
        h.update(f"module-name:{value.__name__};".encode())
    elif isinstance(value, types.FunctionType):
        _feed_function(h, value, globals_too=False)
    elif isinstance(value, type):
        _feed_class(h, value)
    elif callable(value) and not isinstance(value, torch.nn.Module):  # a builtin, a torch function, a partial
        h.update(f"callable:{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)};".encode())
    else:
        _feed(h, value)


SIMPLE = (type(None), bool, int, float, str, bytes, complex)


def _feed_simple_attributes(h, owner) -> None:
    """The plain public attributes of an object or class (numbers, strings, tuples of them): a
    TopK's k, a toy model's nonlinearity flag, a class constant. Private ones (`_name`, where a
    library keeps per-run state) and anything else are left out."""
    for name, value in sorted(vars(owner).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, SIMPLE) or (isinstance(value, tuple) and all(isinstance(v, SIMPLE) for v in value)):
            h.update(f"attribute:{name}={value!r};".encode())


def _feed_class(h, cls: type) -> None:
    """A class by its name, its plain class attributes and the code of its own methods and
    properties (and its bases', up to torch's Module), not its module: a class a notebook defines
    (__main__) and its exported reference share a digest, while a learner's class of the same name
    with another forward, default or constant does not."""
    for klass in cls.__mro__:
        if klass in (object, torch.nn.Module):
            continue
        h.update(f"class:{klass.__qualname__};".encode())
        _feed_simple_attributes(h, klass)
        for name, attribute in sorted(vars(klass).items()):
            for part in ((attribute.fget, attribute.fset) if isinstance(attribute, property) else (attribute,)):
                function = getattr(part, "__func__", part)  # staticmethod, classmethod
                function = inspect.unwrap(function) if callable(function) else function  # @torch.no_grad()
                if isinstance(function, types.FunctionType):
                    h.update(f"{name}:".encode())
                    _feed_code(h, function.__code__)
                    for default in function.__defaults__ or ():  # a dataclass's default_factory marker too
                        h.update(f"default:{default!r};".encode() if isinstance(default, SIMPLE)
                                 else f"default:{type(default).__qualname__};".encode())


def _feed_code(h, code: types.CodeType) -> None:
    """Bytecode, names and constants; a nested function or comprehension (a code object among the
    constants) by its own contents, since its repr holds a memory address and a file name."""
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for constant in code.co_consts:
        _feed_constant(h, constant)


def _feed_constant(h, constant) -> None:
    """A compiled constant, the same in every process: a frozenset's repr follows the string hash
    seed (PYTHONHASHSEED), so its members are sorted first."""
    if isinstance(constant, types.CodeType):
        _feed_code(h, constant)
    elif isinstance(constant, frozenset):
        h.update(f"frozenset:{sorted(repr(member) for member in constant)};".encode())
    elif isinstance(constant, tuple):
        h.update(f"tuple[{len(constant)}];".encode())
        for member in constant:
            _feed_constant(h, member)
    else:
        h.update(f"{constant!r};".encode())


def _has_hooks(module: torch.nn.Module) -> bool:
    """A hook a learner or a function attached. A TransformerLens model keeps hooks of its own inside
    its components (the bridge's capture hooks), so there only its hook points are looked at."""
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return True
    parts = list(module.modules())
    hook_points = [m for m in parts if type(m).__name__ == "HookPoint"]
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or getattr(m, "_backward_pre_hooks", None) for m in (hook_points or parts))


def _feed_module(h, module: torch.nn.Module) -> None:
    """A model: its class, config, train/eval mode of every part, and every weight and buffer."""
    if _has_hooks(module):
        raise Unreadable("a model with hooks attached")
    h.update(b"module:")
    _feed_class(h, type(module))
    for part in module.modules():  # plain attributes of every part: a TopK's k, a nonlinearity flag
        _feed_simple_attributes(h, part)
    config = getattr(module, "cfg", None)
    if config is not None:
        h.update(repr(config).encode())
    h.update("".join("1" if m.training else "0" for m in module.modules()).encode())
    for name, tensor in module.state_dict(keep_vars=True).items():
        _feed(h, name)
        _feed(h, tensor)


def digest(value) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        _feed(h, value)
    except RecursionError as error:  # a closure or a global that leads back to itself
        raise Unreadable("an argument that refers to itself") from error
    return h.hexdigest()


def _random_states() -> tuple:
    """Where the global generators stand: a call that moves them must not be replayed from disk."""
    numpy_state = np.random.get_state()
    return (torch.random.get_rng_state().numpy().tobytes(), random.getstate(),
            numpy_state[1].tobytes(), numpy_state[2:])


class _Unpickler(pickle.Unpickler):
    """Finds a class the solution notebook defined (pickled as `__main__.Name`) in whichever process
    loads it: the loading notebook's own class of that name, else the exported reference's."""

    def find_class(self, module: str, name: str):
        if module == "__main__":
            for namespace in _main_namespaces():
                found = getattr(namespace, name, None)
                if isinstance(found, type):
                    return found
        return super().find_class(module, name)


def _main_namespaces():
    yield sys.modules["__main__"]
    import utils.references

    for info in sorted(pkgutil.iter_modules(utils.references.__path__), key=lambda info: info.name):
        yield importlib.import_module(f"utils.references.{info.name}")


_PICKLE = types.ModuleType("workbook_memo_pickle")
_PICKLE.Unpickler, _PICKLE.load = _Unpickler, pickle.load


def _log(folder: Path, line: str) -> None:
    """One line per call in MEMO_DIR/calls.log (hit, stored, or why not), never an error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LOG_NAME, "a") as log:
            log.write(line + "\n")
    except OSError:
        pass


def _unchanged(key_parts, key: str) -> bool:
    try:
        return digest(key_parts) == key
    except Unreadable:
        return False


def _source_digest(function: Callable) -> str:
    """The function's own text: the notebook's copy and the exported reference share one entry,
    and two functions of one name in different chapters never do."""
    try:
        return hashlib.blake2b(inspect.getsource(function).encode(), digest_size=16).hexdigest()
    except (OSError, TypeError) as error:
        raise Unreadable(f"no source for {function.__qualname__}") from error


def memoized(function: Callable | None = None, *,
             ignore: tuple[str, ...] = ("progress", "progress_bar", "on_step")) -> Callable:
    """Decorate a deterministic function whose result may be replayed for the same arguments:
    `@memoized`, or `@memoized(ignore=(...))` where `ignore` names arguments that change only what
    is shown (progress bars, callbacks), not the result. Outside make test it changes nothing."""
    if function is None:
        return functools.partial(memoized, ignore=ignore)
    signature = inspect.signature(function)
    name = function.__qualname__

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        folder = memo_dir()
        if folder is None:
            return function(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:  # wrong arguments: let the function itself say so
            return function(*args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k not in ignore}
        try:
            key_parts = (name, _source_digest(function), torch.is_grad_enabled(), torch.get_default_dtype(), arguments)
            key = digest(key_parts)
        except Unreadable as reason:
            _log(folder, f"bypass {name}: {reason}")
            return function(*args, **kwargs)
        path = folder / f"{name}-{key}.pt"
        if path.exists():
            try:
                result = torch.load(path, weights_only=False, pickle_module=_PICKLE)
                _log(folder, f"hit {name}")
                return result
            except Exception as error:  # a half-written or corrupted entry: compute it again
                _log(folder, f"unreadable {name}: {type(error).__name__}")
        before = _random_states()
        result = function(*args, **kwargs)
        if _random_states() != before:
            _log(folder, f"not stored {name}: it drew from a global random generator")
        elif not _unchanged(key_parts, key):
            _log(folder, f"not stored {name}: it changed its arguments or left hooks on a model")
        else:
            partial = path.with_suffix(f".{os.getpid()}.part")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                torch.save(result, partial)
            except Exception as error:  # a result pickle cannot hold, or a folder it cannot write
                with contextlib.suppress(OSError):
                    partial.unlink(missing_ok=True)
                _log(folder, f"not stored {name}: {type(error).__name__} saving its result: {error}")
                return result
            os.replace(partial, path)  # atomic: a reader sees the whole entry or none
            _log(folder, f"stored {name}")
        return result

    wrapper.uncached = function
    return wrapper
