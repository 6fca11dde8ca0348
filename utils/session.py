"""`setup()`: the first call of every chapter. Seeds, device, offline detection, plot renderer."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch

from utils.models import hub_is_reachable, resolve_device


@dataclass(frozen=True)
class Environment:
    """What `setup()` found: where tensors go, whether the Hub answers, where plots render."""

    device: str
    hub_online: bool
    seed: int
    in_colab: bool
    plot_renderer: str

    def summary(self) -> str:
        hub = "Hub reachable" if self.hub_online else "offline (bundled organism only)"
        return (f"workbook ready | torch {torch.__version__} | device {self.device} | {hub} | "
                f"seed {self.seed} | plots: {self.plot_renderer}")


def in_colab() -> bool:
    """Whether this kernel runs on Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so every run of a chapter gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_plot_renderer(colab: bool) -> str:
    """Plotly output that draws with no network and keeps a saved chapter small.

    Colab gets its own renderer; JupyterLab, Notebook 7 and VS Code draw plotly's mimetype
    (JupyterLab through the jupyterlab-plotly extension that ships with plotly). The book's
    build asks for `plotly_mimetype+notebook` through WORKBOOK_PLOT_RENDERER: its pages need an
    HTML copy with plotly.js inlined, about 4.6 MB a notebook, which a learner's file is spared.
    """
    import plotly.io as pio

    # The renderer imports nbformat, and with it jsonschema: `utils/__init__.py` keeps that import
    # from building rfc3987_syntax's grammar (3 s of every chapter's first cell).
    renderer = os.environ.get("WORKBOOK_PLOT_RENDERER") or ("colab" if colab else "plotly_mimetype")
    pio.renderers.default = renderer
    return renderer


def progress_bar(iterable, show: bool = True, **tqdm_options):
    """A tqdm bar over `iterable`; a silent one when `show` is False or TQDM_DISABLE is set.

    The book's build sets TQDM_DISABLE=1: a page would show a bar's first frame, "0%". tqdm's
    notebook bar ignores that variable, so it is read here. In a notebook the bar is a widget
    while it runs and plain text once it ends (see `_text_when_done_bar`).
    """
    from tqdm.auto import tqdm

    hidden = not show or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    if not hidden and _in_notebook_kernel(tqdm):
        return _text_when_done_bar()(iterable, **tqdm_options)
    return tqdm(iterable, disable=hidden, **tqdm_options)


@contextlib.contextmanager
def elapsed_bar(desc: str, show: bool = True):
    """A bar that counts the seconds while its block runs: progress for one long call whose steps
    cannot be counted (a learner's own function, say). It ends as plain text, like `progress_bar`."""
    bar = progress_bar(None, show=show, desc=desc, bar_format="{desc}: running for {elapsed}")
    stop = threading.Event()

    def tick():
        while not stop.wait(1.0):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        ticker.join()
        bar.bar_format = "{desc}: done in {elapsed}"
        bar.close()


def _in_notebook_kernel(auto_tqdm) -> bool:
    """Whether tqdm.auto chose its widget bar, i.e. this is a Jupyter kernel with ipywidgets."""
    try:
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:
        return False
    return issubclass(auto_tqdm, notebook_tqdm)


def _text_when_done_bar():
    """tqdm's widget bar, replaced by its final line of plain text when it closes.

    A saved notebook keeps no widget state, so a widget left in an output reads "Error
    displaying widget: model not found" when the chapter is reopened. Text reopens as it was.
    """
    from IPython.display import display
    from tqdm.notebook import tqdm as notebook_tqdm

    class TextWhenDoneBar(notebook_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, display=False, **kwargs)
            self._handle = None if self.disable else display(self.container, display_id=True)
            self.displayed = True

        def close(self):
            was_open = not self.disable and self._handle is not None
            super().close()
            if was_open:
                final_line = self.format_meter(**self.format_dict)
                self._handle.update({"text/plain": final_line}, raw=True)
                self._handle = None
                self.container.close()

    return TextWhenDoneBar


def setup(seed: int = 0, device: str = "auto", verbose: bool = True) -> Environment:
    """Prepare a chapter: seeds, device, Hub detection (about one second at most) and plots."""
    seed_everything(seed)
    colab = in_colab()
    env = Environment(
        device=resolve_device(device),
        hub_online=hub_is_reachable(timeout=1.0),
        seed=seed,
        in_colab=colab,
        plot_renderer=choose_plot_renderer(colab),
    )
    if verbose:
        print(env.summary())
    return env
