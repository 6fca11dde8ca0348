"""Every registered exercise, four ways: the reference passes, the untouched stub is "not
attempted", each planted realistic mistake is rejected with its hint, and malformed answers get a
verdict instead of a crash."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from utils.build import ROOT, chapter_sources, exercise_headings, reference_module_name
from utils.checks import NOT_ATTEMPTED, PASSED, WRONG, grade, load_all_exercises

EXERCISES = load_all_exercises()
CHECK_CALL = re.compile(r'check_exercise\("(?P<id>\d+\.\d+)", (?P<name>\w+)\)')


def planted(kind: str) -> dict[str, list]:
    """`MISTAKES` ({id: [(wrong function, hint substring), ...]}) or `ALTERNATIVES` ({id: [correct
    function, ...]}) gathered from every tests/planted/chNN_slug.py."""
    gathered = {}
    for path in sorted((Path(__file__).parent / "planted").glob("ch*.py")):
        module = importlib.import_module(f"tests.planted.{path.stem}")
        gathered.update(getattr(module, kind, {}))
    return gathered


MISTAKES = planted("MISTAKES")
ALTERNATIVES = planted("ALTERNATIVES")


def student_stubs() -> dict[str, object]:
    """The stub functions exactly as the generated student notebooks define them."""
    stubs = {}
    for source in chapter_sources():
        notebook = json.loads((ROOT / "chapters" / f"{source.stem}.ipynb").read_text())
        cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
        reference = importlib.import_module(f"utils.references.{reference_module_name(source.stem)}")
        for cell in cells:
            for match in CHECK_CALL.finditer(cell):
                definition = next(c for c in cells if f"def {match['name']}(" in c or f"class {match['name']}" in c)
                namespace = dict(vars(reference))
                exec(definition, namespace)  # noqa: S102 - our own generated notebook
                stubs[match["id"]] = namespace[match["name"]]
    return stubs


STUBS = student_stubs()
IDS = sorted(EXERCISES)


def test_every_heading_has_a_check_and_every_check_a_heading():
    declared = {h["id"]: h["title"] for source in chapter_sources() for h in exercise_headings(source)}
    assert declared == {i: EXERCISES[i].title for i in EXERCISES}


def test_every_exercise_has_a_stub_and_planted_mistakes():
    assert set(STUBS) == set(EXERCISES)
    assert set(MISTAKES) == set(EXERCISES)


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_passes(exercise_id):
    verdict = grade(exercise_id, EXERCISES[exercise_id].reference)
    assert verdict.status == PASSED, str(verdict)


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_not_attempted(exercise_id):
    verdict = grade(exercise_id, STUBS[exercise_id])
    assert verdict.status == NOT_ATTEMPTED, str(verdict)


@pytest.mark.parametrize("exercise_id", IDS)
def test_planted_mistakes_are_rejected_with_their_hint(exercise_id):
    for mistaken, hint in MISTAKES[exercise_id]:
        verdict = grade(exercise_id, mistaken)
        assert verdict.status == WRONG, f"{mistaken.__name__}: {verdict}"
        assert hint in verdict.message, f"{mistaken.__name__}: {verdict}"


@pytest.mark.parametrize("exercise_id", sorted(ALTERNATIVES))
def test_correct_alternatives_pass(exercise_id):
    for alternative in ALTERNATIVES[exercise_id]:
        verdict = grade(exercise_id, alternative)
        assert verdict.status == PASSED, f"{alternative.__name__}: {verdict}"


def _raises(*args, **kwargs):
    raise ValueError("learner bug")


MALFORMED = {
    "None": None,
    "a number": 42,
    "a string": "my answer",
    "returns None": lambda *args, **kwargs: None,
    "returns a string": lambda *args, **kwargs: "nonsense",
    "returns a wrong-shaped tensor": lambda *args, **kwargs: torch.zeros(7, 3),
    "returns NaN": lambda *args, **kwargs: torch.full((3,), float("nan")),
    "raises": _raises,
    "takes no arguments": lambda: 0,
}


@pytest.mark.parametrize("exercise_id", IDS)
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_answers_get_a_verdict(exercise_id, kind):
    verdict = grade(exercise_id, MALFORMED[kind])
    assert verdict.status == WRONG
    assert verdict.message and "\n" not in str(verdict)
