"""The workbook's helpers: what every chapter imports.

    from utils import setup, load_model, check_exercise, show_progress, prompt_set

Each helper's module is imported the first time the helper is asked for, so the grader's runner,
started once for every notebook graded, imports `utils.grade` without torch.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what editors and type checkers see
    from utils.checks import check_exercise
    from utils.models import load_model
    from utils.organism.world import prompt_set
    from utils.progress import show_progress
    from utils.session import progress_bar, setup

# (helper, its module): a tuple, so no code can point a name at another module.
_HOMES = (("check_exercise", "utils.checks"), ("load_model", "utils.models"), ("prompt_set", "utils.organism.world"),
          ("progress_bar", "utils.session"), ("setup", "utils.session"), ("show_progress", "utils.progress"))

__all__ = sorted(name for name, _ in _HOMES)


def _skip_iri_grammar() -> None:
    """nbformat's validator imports jsonschema, which builds rfc3987_syntax's IRI grammar on import
    where that package is installed (JupyterLab's jupyter-events asks for it): 1.5-3 s of every
    kernel's first plot and of every grader process. No notebook field is an IRI: treat it as absent."""
    import sys

    sys.modules.setdefault("rfc3987_syntax", None)


_skip_iri_grammar()


def __getattr__(name: str):
    """`utils.load_model` and `from utils import load_model`: import the helper's module now."""
    import importlib

    module = dict(_HOMES).get(name)
    if module is None:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
