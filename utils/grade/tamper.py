"""Find cells that try to fake a grade, by reading them (nothing is run).

Two kinds of cell are read. *Exercise cells* are the ones the grader runs: there, anything that
could reach the checks, the references or the grader counts. *Other cells* the student changed
are not run at all: there, only an attempt to rebind the checks or patch a module is reported.
Cells left exactly as the official notebook has them are not read.

What counts, in an exercise cell:
- binding `check_exercise`, `grade` or the grader's own name (assignment, def, import from elsewhere);
- a class that defines how its objects compare or compute (`__eq__`, `__sub__`,
  `__torch_function__`...): a returned object of that class could pass any comparison;
- assigning or deleting an attribute or item of the workbook's modules, torch, numpy, builtins,
  sys or IPython, or of anything imported from them (`utils.checks.grade = ...`, `torch.allclose
  = ...`, `REGISTRY["0.1"] = ...`), `setattr`/`delattr` on them, assigning `__code__` and friends;
- importing the checks (`utils.checks`, `utils.exercises`), the grader, the progress record, or
  this chapter's reference solutions (`utils.references.chNN_...`);
- code built or looked up at run time (`exec`, `eval`, `compile`, `__import__`, `importlib`,
  `globals()`, `vars()`, `sys.modules`, frames, `gc`, `inspect`, `ctypes`), IPython's machinery and
  history (`get_ipython`, `In`, `Out`), threads and processes, writing or deleting files.
A grader in the same process as the student's code can always be fooled by enough effort; these
rules make every such effort visible, and `kernel.py` checks at run time that the checks, the
references and torch's functions are still the objects they were before the student's code ran.
"""

from __future__ import annotations

import ast
import re

from IPython.core.inputtransformer2 import TransformerManager

PROTECTED_NAMES = {"check_exercise": "the workbook's check", "grade": "the workbook's grading function",
                   "_workbook_grader": "the grader"}
GENUINE_SOURCES = {"utils", "utils.checks"}  # `from utils import check_exercise` is the real one
PATCHABLE_ROOTS = {"utils", "torch", "numpy", "builtins", "sys", "IPython", "transformer_lens", "jaxtyping"}
GRADING_MODULES = ("utils.checks", "utils.exercises", "utils.grade", "utils.progress")
RUNTIME_MODULES = {"importlib", "inspect", "gc", "ctypes", "builtins", "threading", "_thread", "multiprocessing",
                   "subprocess", "signal", "unittest", "pytest", "code", "codeop", "runpy", "pickle", "marshal"}
RUNTIME_CALLS = {"exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint"}
IPYTHON_NAMES = re.compile(r"^(In|Out|_ih|_oh|_dh|_i+|_i\d+|get_ipython|__builtins__|__builtin__)$")
SYS_ATTRIBUTES = {"modules", "_getframe", "settrace", "setprofile", "meta_path", "path_hooks", "addaudithook"}
INSIDE_ATTRIBUTES = {"__globals__", "__code__", "__closure__", "__subclasses__", "__builtins__", "f_globals",
                     "f_locals", "f_back", "gi_frame", "tb_frame"}
DUNDER_TARGETS = {"__code__", "__globals__", "__dict__", "__class__", "__defaults__", "__kwdefaults__",
                  "__call__", "__eq__", "__bases__", "__module__"}
OS_CALLS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "remove", "unlink", "rename",
            "replace", "rmdir", "removedirs", "chmod", "truncate", "putenv", "spawnl", "spawnv", "execv", "execl"}
FILE_METHODS = {"write_text", "write_bytes", "unlink", "rmtree", "rmdir", "chmod", "symlink_to", "hardlink_to"}
ALLOWED_MAGICS = {"time", "timeit"}
# Magics and shell lines learners use to set up or look around; they change nothing the grade
# depends on, and the grader drops them before it reads or runs a cell.
DROPPED_LINE = re.compile(r"^\s*(%(matplotlib|config|load_ext\s+autoreload|autoreload|who|whos|pwd|env|pip|conda|"
                          r"reload_ext\s+autoreload)\b|!\s*(pip|nvidia-smi|ls|pwd)\b).*$")
CHECK_LINE = re.compile(r"^\s*(\w+)\s*=\s*check_exercise\(\s*[\"'][\d.]+[\"']\s*,\s*\1\s*\)\s*$")
# Methods through which a returned object could fool a comparison: never needed by an exercise.
SPOOFING_METHODS = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__sub__", "__rsub__", "__abs__",
                    "__bool__", "__float__", "__int__", "__index__", "__hash__", "__torch_function__",
                    "__torch_dispatch__", "__array__", "__array_ufunc__", "__instancecheck__", "__subclasscheck__",
                    "__getattribute__", "__getattr__", "__class_getitem__", "__init_subclass__", "__del__"}


def runnable_source(cell_source: str) -> str:
    """The cell as the grader runs it: setup magics (`%matplotlib inline`, `%pip ...`) and calls
    of the student's own check (`f = check_exercise("0.1", f)`, after a merge of cells) dropped."""
    return "\n".join(line for line in cell_source.splitlines() if not (DROPPED_LINE.match(line) or CHECK_LINE.match(line)))


def python_source(cell_source: str) -> str:
    """The cell as Python (IPython's magics and `!` commands become `get_ipython()` calls),
    with the setup magics dropped and the harmless timing magics removed."""
    kept = [line for line in runnable_source(cell_source).splitlines()
            if not re.match(rf"^\s*%%?({'|'.join(ALLOWED_MAGICS)})\b\s*$", line)]
    kept = [re.sub(rf"^(\s*)%({'|'.join(ALLOWED_MAGICS)})\s+", r"\1", line) for line in kept]
    return TransformerManager().transform_cell("\n".join(kept) + "\n")


def _root(node: ast.AST) -> str | None:
    """The leftmost name of `a.b[c].d` (None for anything else)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_grading_module(module: str, reference_module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in (*GRADING_MODULES, reference_module))


class _Scanner(ast.NodeVisitor):
    """Collects (line, reason) for everything in one cell that counts as tampering."""

    def __init__(self, reference_module: str, executed: bool):
        self.reference_module = reference_module
        self.executed = executed
        self.patchable = set(PATCHABLE_ROOTS)
        self.utils_names: dict[str, str] = {"utils": "utils"}  # name in the cell -> the module it stands for
        self.flagged_modules: set[str] = set()  # grading modules whose import is already reported
        self.findings: list[tuple[int, str]] = []

    def flag(self, node: ast.AST, reason: str) -> None:
        self.findings.append((getattr(node, "lineno", 0), reason))

    # --- imports ---
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            self._imported(node, alias.name, bound)
            if bound in PROTECTED_NAMES:
                self.flag(node, f"rebinds {bound}, {PROTECTED_NAMES[bound]}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            bound = alias.asname or alias.name
            self._imported(node, f"{module}.{alias.name}", bound)
            if bound in PROTECTED_NAMES and not (module in GENUINE_SOURCES and alias.name == bound):
                self.flag(node, f"rebinds {bound}, {PROTECTED_NAMES[bound]}")

    def _imported(self, node: ast.AST, module: str, bound: str) -> None:
        if module.split(".")[0] in PATCHABLE_ROOTS:
            self.patchable.add(bound)
        if module == "utils" or module.startswith("utils."):
            # `import utils.x` binds utils; `import utils.x as y` and `from utils import x` bind x
            self.utils_names[bound] = "utils" if bound == "utils" and "." in module and isinstance(node, ast.Import) \
                and not any(a.asname for a in node.names) else module
        if not self.executed:
            return
        if _is_grading_module(module, self.reference_module):
            self.flagged_modules.add(module)
            self.flag(node, f"imports {module}: the checks, the grader or this chapter's reference solutions")
        elif module.split(".")[0] in RUNTIME_MODULES:
            self.flag(node, f"imports {module.split('.')[0]}, which can reach into the running grader")

    # --- bindings ---
    def _target(self, target: ast.AST, verb: str = "assigns") -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element, verb)
        elif isinstance(target, ast.Starred):
            self._target(target.value, verb)
        elif isinstance(target, ast.Name) and target.id in PROTECTED_NAMES:
            self.flag(target, f"rebinds {target.id}, {PROTECTED_NAMES[target.id]}")
        elif isinstance(target, ast.Attribute) and target.attr in DUNDER_TARGETS:
            self.flag(target, f"{verb} {ast.unparse(target)}: rewrites a function or object from the inside")
        elif isinstance(target, (ast.Attribute, ast.Subscript)) and _root(target) in self.patchable:
            self.flag(target, f"{verb} {ast.unparse(target)}: patches a module the checks rely on")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._target(target, "deletes")
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None:
            self._target(node.optional_vars)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in PROTECTED_NAMES:
            self.flag(node, f"rebinds {node.name}, {PROTECTED_NAMES[node.name]}")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name in PROTECTED_NAMES:
            self.flag(node, f"rebinds {node.name}, {PROTECTED_NAMES[node.name]}")
        if self.executed:
            for method in node.body:
                if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and method.name in SPOOFING_METHODS:
                    self.flag(method, f"defines {node.name}.{method.name}, which can make a wrong result look right")
        self.generic_visit(node)

    # --- calls and names that reach the machinery ---
    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if isinstance(function, ast.Name) and function.id in ("setattr", "delattr") and node.args:
            if _root(node.args[0]) in self.patchable or self.executed:
                self.flag(node, f"calls {function.id} on {ast.unparse(node.args[0])}")
        if self.executed:
            self._runtime_call(node, function)
        self.generic_visit(node)

    def _runtime_call(self, node: ast.Call, function: ast.AST) -> None:
        if (isinstance(function, ast.Name) and function.id == "vars" and len(node.args) == 1
                and _root(node.args[0]) not in self.patchable):
            return  # vars(model.cfg): a look at an object's attributes
        if isinstance(function, ast.Name) and function.id in RUNTIME_CALLS:
            self.flag(node, f"calls {function.id}(), which runs or looks up code at run time")
        elif isinstance(function, ast.Name) and function.id == "open" and self._writes(node):
            self.flag(node, "opens a file for writing")
        elif isinstance(function, ast.Attribute):
            if function.attr in FILE_METHODS:
                self.flag(node, f"calls .{function.attr}(), which changes files")
            elif _root(function) == "os" and function.attr in OS_CALLS:
                self.flag(node, f"calls os.{function.attr}(), which changes files or processes")
            elif _root(function) == "shutil":
                self.flag(node, f"calls {ast.unparse(function)}(), which changes files")
            elif function.attr in ("__setattr__", "__delattr__", "__setitem__"):
                self.flag(node, f"calls {ast.unparse(function)}()")

    @staticmethod
    def _writes(node: ast.Call) -> bool:
        modes = [arg for arg in node.args[1:2]] + [kw.value for kw in node.keywords if kw.arg == "mode"]
        return any(not isinstance(mode, ast.Constant) or any(c in str(mode.value) for c in "wax+") for mode in modes)

    def visit_Name(self, node: ast.Name) -> None:
        if self.executed and IPYTHON_NAMES.match(node.id):
            self.flag(node, f"uses {node.id}, IPython's own machinery or history")
        elif node.id == "_workbook_grader":
            self.flag(node, "uses _workbook_grader, the grader")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.executed and (node.attr in INSIDE_ATTRIBUTES or (node.attr in SYS_ATTRIBUTES and _root(node) == "sys")):
            self.flag(node, f"reads {ast.unparse(node)}, which reaches into the running grader")
        elif self.executed and not isinstance(getattr(node, "parent_attribute", None), ast.Attribute):
            dotted = self._as_module_path(node)
            if (dotted and _is_grading_module(dotted, self.reference_module)
                    and not any(dotted == m or dotted.startswith(m + ".") for m in self.flagged_modules)):
                self.flag(node, f"reaches {dotted}: the checks, the grader or this chapter's reference solutions")
        for child in ast.iter_child_nodes(node):
            child.parent_attribute = node
        self.generic_visit(node)

    def _as_module_path(self, node: ast.Attribute) -> str | None:
        """`utils.references.ch00_x.f` (or through a name bound to `utils` or one of its packages)
        as a dotted path from `utils`; None for anything else."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.utils_names:
            return None
        return ".".join([self.utils_names[node.id], *reversed(parts)])


def scan_cell(source: str, reference_module: str, executed: bool) -> list[tuple[int, str]]:
    """(line, reason) of every tampering construct in one cell; [] for a cell that does not parse."""
    try:
        tree = ast.parse(python_source(source))
    except (SyntaxError, ValueError):
        return []  # it cannot run either: an exercise cell like this gets an error row
    scanner = _Scanner(reference_module, executed)
    scanner.visit(tree)
    return sorted(set(scanner.findings))


def scan_submission(cells: list[tuple[int, str]], official_sources: frozenset[str], executed_cells: set[int],
                    reference_module: str) -> list[str]:
    """One line per finding, "cell 7, line 2: rebinds check_exercise, ...", in cell order.

    `cells` holds (1-based position, source) of the submission's code cells; a cell whose source
    is one of the official notebook's is not read.
    """
    lines = []
    for number, source in cells:
        if source.strip() in official_sources:
            continue
        for line, reason in scan_cell(source, reference_module, number in executed_cells):
            lines.append(f"cell {number}, line {line}: {reason}")
    return lines
