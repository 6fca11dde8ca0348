"""setup(), progress bars and the plot helpers."""

from pathlib import Path

import plotly.io as pio
import pytest
import torch

from utils import plotting
from utils.session import progress_bar, setup


def test_setup_is_seeded_offline_and_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = setup(seed=5)
    first = torch.rand(3)
    setup(seed=5, verbose=False)
    assert torch.equal(first, torch.rand(3))
    assert env.device == "cpu" or env.device.startswith(("cuda", "mps"))
    assert env.hub_online is False and not env.in_colab
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "offline" in out and "seed 5" in out
    assert pio.renderers.default == env.plot_renderer == "plotly_mimetype"


def test_the_book_asks_for_an_html_copy_of_each_figure(monkeypatch):
    monkeypatch.setenv("WORKBOOK_PLOT_RENDERER", "plotly_mimetype+notebook")
    assert setup(verbose=False).plot_renderer == pio.renderers.default == "plotly_mimetype+notebook"
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    book_env = next(line for line in makefile.splitlines() if line.startswith("BOOK_ENV"))
    assert "WORKBOOK_PLOT_RENDERER=plotly_mimetype+notebook" in book_env


def test_colab_gets_colabs_renderer(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    assert setup(verbose=False).plot_renderer == "colab"


def test_heatmap_and_lines_return_figures():
    figure = plotting.heatmap(torch.randn(3, 4), x=list("abcd"), y=list("xyz"), title="t")
    assert figure.data[0].type == "heatmap" and figure.data[0].zmid == 0
    figure = plotting.lines({"one": [1, 2], "two": torch.tensor([3.0, 4.0])}, x=[0, 1])
    assert [trace.name for trace in figure.data] == ["one", "two"]


def test_figures_take_their_containers_width():
    """A fixed pixel width clipped titles in a narrow pane and overflowed the book's column: the
    helpers' figures and every figure layout a chapter sets leave the width to the container."""
    import ast

    figures = [plotting.heatmap(torch.randn(2, 2), title="a title long enough to need the room"),
               plotting.lines([1.0, 2.0]), plotting.bars([1.0, 2.0], ["a", "b"])]
    assert [figure.layout.width for figure in figures] == [None, None, None]
    fixed = []
    for source in sorted((Path(__file__).parents[1] / "solutions").glob("[0-9][0-9]_*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
                    in {"update_layout", "Layout", "make_subplots"}):
                fixed += [f"{source.name}:{node.lineno}" for keyword in node.keywords
                          if keyword.arg == "width" and isinstance(keyword.value, ast.Constant)
                          and (isinstance(keyword.value.value, (int, float))
                               or str(keyword.value.value).endswith("px"))]  # "60%" follows the pane
    assert not fixed, f"figures with a fixed pixel width: {fixed}"


def test_attention_view_draws_offline_and_checks_shapes():
    tokens = ["<|endoftext|>", "When", " Mary"]
    html = plotting.attention_patterns(tokens, torch.softmax(torch.randn(2, 3, 3), -1)).data
    assert "<script>" in html and "unpkg.com" not in html and "import " not in html  # nothing fetched
    assert "overflow" not in html  # no scroll box inside the notebook's own scroll (tests/test_learner_view.py)
    with pytest.raises(ValueError, match=r"pattern must be \[head, 3, 3\]"):
        plotting.attention_patterns(tokens, torch.rand(2, 4, 4))


def test_progress_bar_hides_when_asked_or_when_the_environment_says_so(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_bar(range(3), desc="shown").disable
    assert progress_bar(range(3), show=False).disable
    assert list(progress_bar(range(3), show=False)) == [0, 1, 2]
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what the book's build sets
    assert progress_bar(range(3), show=True).disable


def test_a_finished_bar_is_saved_as_text_so_a_reopened_chapter_shows_no_widget_error():
    import nbformat
    from nbclient import NotebookClient

    code = "from utils import progress_bar\nfor _ in progress_bar(range(5), desc='five steps'):\n    pass"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    lines = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert len(lines) == 1 and lines[0].startswith("five steps: 100%") and "5/5" in lines[0]


def test_the_helpers_load_on_first_use_and_an_unknown_name_is_an_attribute_error():
    import utils
    from utils import load_model, setup

    assert utils.load_model is load_model and utils.setup is setup
    with pytest.raises(AttributeError, match="no attribute 'lod_model'"):
        utils.lod_model  # noqa: B018


def test_choosing_the_renderer_skips_the_iri_grammar_and_schemas_still_validate():
    """The renderer's nbformat -> jsonschema import would build rfc3987_syntax's grammar (3 s of each
    chapter's first cell); importing `utils` leaves it out, and notebooks and schemas still validate."""
    import subprocess
    import sys

    code = ("import sys, time; from utils.session import choose_plot_renderer; started = time.perf_counter(); "
            "choose_plot_renderer(False); import nbformat, jsonschema; "
            "nbformat.validate(nbformat.v4.new_notebook()); jsonschema.validate(1, {'type': 'integer'}); "
            "print(sys.modules.get('rfc3987_syntax', 'absent'), 'nbformat' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True"], done.stdout
