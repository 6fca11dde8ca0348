"""Suite-wide order (solution notebooks, then tests, then student notebooks; in each, the files
expected to take longest first) and nbval's output wait.

`make test` hands whole files to its workers one at a time, in collection order
(`--dist loadfile --no-loadscope-reorder`). The solution notebooks go first because they fill the
memo of slow results (utils/memo.py) that the tests and the student notebooks then load. Within
each stage, sorting the files longest first, by the seconds last measured for each
(tests/durations.json: `make bench` writes it, or `python -m utils.bench --durations-from
suite.xml` from the JUnit report of an idle `make test`), keeps one long file from starting last
and running alone while the other workers sit idle. Within a file, nothing moves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DURATIONS = Path(__file__).parent / "tests" / "durations.json"
# A file `make bench` has not measured yet: a new notebook is assumed long, a new test file short.
UNMEASURED_SECONDS = {".ipynb": 150.0, ".py": 10.0}
# nbval waits 5 s for each output message of a cell that has finished; on a loaded 2-core machine a
# kernel can take longer to send one, and the cell then fails "waiting for output". A cell that is
# still running is bounded by nbval's own cell timeout, not by this.
NBVAL_OUTPUT_WAIT_SECONDS = 60


def expected_seconds(durations: dict[str, float], path: str) -> float:
    return durations.get(path, UNMEASURED_SECONDS.get(Path(path).suffix, 10.0))


def stage(path: str) -> int:
    """0: a solution notebook (fills the memo), 1: anything else, 2: a student notebook (reads it)."""
    if path.endswith(".ipynb"):
        return 0 if path.startswith("solutions/") else 2
    return 1


def pytest_collection_modifyitems(session, config, items):
    durations = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    first_seen = {}
    for item in items:
        first_seen.setdefault(item.nodeid.split("::")[0], len(first_seen))

    def order(item):
        path = item.nodeid.split("::")[0]
        return (stage(path), -expected_seconds(durations, path), first_seen[path])

    items.sort(key=order)  # a stable sort: the items of one file keep their order
    for item in items:
        if hasattr(item, "output_timeout"):  # an nbval cell
            item.output_timeout = max(item.output_timeout, NBVAL_OUTPUT_WAIT_SECONDS)


@pytest.fixture(scope="module", autouse=True)
def gradient_mode_is_put_back():
    """A test file that switches torch's gradients off for itself must switch them back: the
    files after it share its worker process, and a check that trains would silently stop learning."""
    import torch

    before = torch.is_grad_enabled()
    yield
    after = torch.is_grad_enabled()
    torch.set_grad_enabled(before)
    assert after == before, f"this test file left torch.is_grad_enabled() = {after}; restore it in a fixture"
