"""The suite's file order (conftest.py): longest expected first, a file's own items kept in order."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
root_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(root_conftest)


def _items(*nodeids):
    return [SimpleNamespace(nodeid=nodeid) for nodeid in nodeids]


def test_solutions_then_tests_then_student_notebooks_longest_first_and_items_keep_their_order(tmp_path, monkeypatch):
    durations = tmp_path / "durations.json"
    durations.write_text('{"tests/test_a.py": 5, "tests/test_b.py": 50, "chapters/00_x.ipynb": 200, '
                         '"solutions/00_x.ipynb": 20, "solutions/01_y.ipynb": 30}')
    monkeypatch.setattr(root_conftest, "DURATIONS", durations)
    items = _items("tests/test_a.py::one", "tests/test_b.py::one", "chapters/00_x.ipynb::Cell 0",
                   "tests/test_a.py::two", "tests/test_b.py::two", "chapters/00_x.ipynb::Cell 1",
                   "chapters/09_new.ipynb::Cell 0", "tests/test_new.py::one",
                   "solutions/00_x.ipynb::Cell 0", "solutions/01_y.ipynb::Cell 0", "solutions/00_x.ipynb::Cell 1")
    root_conftest.pytest_collection_modifyitems(None, None, items)
    assert [item.nodeid for item in items] == [
        "solutions/01_y.ipynb::Cell 0",  # the solutions first: they fill the memo (utils/memo.py)
        "solutions/00_x.ipynb::Cell 0", "solutions/00_x.ipynb::Cell 1",
        "tests/test_b.py::one", "tests/test_b.py::two",
        "tests/test_new.py::one",  # not measured yet: a test file is assumed short
        "tests/test_a.py::one", "tests/test_a.py::two",
        "chapters/00_x.ipynb::Cell 0", "chapters/00_x.ipynb::Cell 1",  # the student notebooks last
        "chapters/09_new.ipynb::Cell 0",  # not measured yet: a notebook is assumed long (150 s)
    ]


def test_without_a_durations_file_files_keep_their_collection_order(tmp_path, monkeypatch):
    monkeypatch.setattr(root_conftest, "DURATIONS", tmp_path / "missing.json")
    items = _items("tests/test_a.py::one", "tests/test_b.py::one", "tests/test_a.py::two")
    root_conftest.pytest_collection_modifyitems(None, None, items)
    assert [item.nodeid for item in items] == ["tests/test_a.py::one", "tests/test_a.py::two", "tests/test_b.py::one"]


def test_the_makefile_keeps_the_order_and_one_thread_per_worker():
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-loadscope-reorder" in makefile and "--dist loadfile" in makefile
    assert "OMP_NUM_THREADS=1" in makefile
    check = next(line for line in makefile.split("\ncheck: install\n", 1)[1].splitlines() if "pytest" in line)
    assert 'tests -m "not slow"' in check and "--nbval" not in check


def test_notebook_cells_wait_longer_for_their_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(root_conftest, "DURATIONS", tmp_path / "missing.json")
    cell, test = SimpleNamespace(nodeid="chapters/00_x.ipynb::Cell 0", output_timeout=5), _items("tests/test_a.py::one")[0]
    root_conftest.pytest_collection_modifyitems(None, None, [cell, test])
    assert cell.output_timeout == root_conftest.NBVAL_OUTPUT_WAIT_SECONDS > 5 and not hasattr(test, "output_timeout")
