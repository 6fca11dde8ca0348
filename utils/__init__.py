"""The workbook's helpers: what every chapter imports.

    from utils import setup, load_model, check_exercise, show_progress, prompt_set

Each helper's module is imported the first time the helper is asked for, so the grader's own
processes, which import `utils.grade` and never a helper, start without torch.
"""

import importlib
import sys

# nbformat's validator imports jsonschema, which builds rfc3987_syntax's IRI grammar on import where
# that package is installed (JupyterLab's jupyter-events asks for it): 1.5-3 s of every kernel's
# first plot and of every grader process. No notebook field is an IRI, so it is treated as absent.
sys.modules.setdefault("rfc3987_syntax", None)

_HOMES = {"check_exercise": "utils.checks", "load_model": "utils.models", "prompt_set": "utils.organism.world",
          "progress_bar": "utils.session", "setup": "utils.session", "show_progress": "utils.progress"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """`utils.load_model` and `from utils import load_model`: import the helper's module now."""
    if name not in _HOMES:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
