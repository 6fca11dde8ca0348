"""Every registered exercise, five ways: the reference passes, the untouched stub is "not
attempted", each planted realistic mistake is rejected with its hint, at least two correct
alternatives pass, and malformed answers get a verdict instead of a crash. Then the rules that hold
across exercises: a named hint fires only for its own mistake, and no verdict depends on what was
graded before it in the same process."""

from __future__ import annotations

import functools
import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from utils.build import ROOT, chapter_sources, exercise_headings, reference_module_name
from utils.checks import NOT_ATTEMPTED, PASSED, WRONG, Verdict, grade, load_all_exercises

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


@functools.cache
def verdict_of(exercise_id: str, answer) -> Verdict:
    """The verdict on one answer, graded once and shared by the tests below."""
    return grade(exercise_id, answer)


def test_every_exercise_has_a_stub_planted_mistakes_and_two_correct_alternatives():
    assert set(STUBS) == set(EXERCISES)
    assert set(MISTAKES) == set(EXERCISES)
    assert set(ALTERNATIVES) == set(EXERCISES)
    few = {i: len(ALTERNATIVES[i]) for i in IDS if len(ALTERNATIVES[i]) < 2}
    assert not few, f"exercises with fewer than two correct alternatives: {few}"
    reused = {i for i in IDS if any(a is EXERCISES[i].reference for a in ALTERNATIVES[i])}
    assert not reused, f"an alternative must be written independently, not be the reference: {reused}"


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_passes(exercise_id):
    verdict = verdict_of(exercise_id, EXERCISES[exercise_id].reference)
    assert verdict.status == PASSED, str(verdict)


@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_not_attempted(exercise_id):
    verdict = grade(exercise_id, STUBS[exercise_id])
    assert verdict.status == NOT_ATTEMPTED, str(verdict)


@pytest.mark.parametrize("exercise_id", IDS)
def test_planted_mistakes_are_rejected_with_their_hint(exercise_id):
    """Each planted mistake is told its hint; the reference, graded right after all of them in the
    same process, still passes (no mistake left a hook, a changed weight or a memo behind)."""
    for mistaken, hint in MISTAKES[exercise_id]:
        verdict = verdict_of(exercise_id, mistaken)
        assert verdict.status == WRONG, f"{mistaken.__name__}: {verdict}"
        assert hint in verdict.message, f"{mistaken.__name__}: {verdict}"
    after = grade(exercise_id, EXERCISES[exercise_id].reference)
    assert after.status == PASSED, f"the reference, right after the planted mistakes: {after}"


@pytest.mark.parametrize("exercise_id", IDS)
def test_correct_alternatives_pass(exercise_id):
    """Each correct alternative passes; the reference, graded right after them, still passes."""
    for alternative in ALTERNATIVES[exercise_id]:
        verdict = verdict_of(exercise_id, alternative)
        assert verdict.status == PASSED, f"{alternative.__name__}: {verdict}"
    after = grade(exercise_id, EXERCISES[exercise_id].reference)
    assert after.status == PASSED, f"the reference, right after the correct alternatives: {after}"


@pytest.mark.parametrize("exercise_id", IDS)
def test_each_named_hint_fires_only_for_its_own_mistake(exercise_id):
    """Not for the reference, not for a correct alternative, not for a mistake whose hint differs."""
    answers = [(mistaken, own) for mistaken, own in MISTAKES[exercise_id]]
    answers += [(correct, None) for correct in [EXERCISES[exercise_id].reference, *ALTERNATIVES[exercise_id]]]
    for _, hint in MISTAKES[exercise_id]:
        for answer, own in answers:
            if own != hint:
                verdict = verdict_of(exercise_id, answer)
                assert hint not in verdict.message, f"the hint {hint!r} fired for {answer.__name__}: {verdict}"


def test_verdicts_do_not_depend_on_what_was_graded_before():
    """Every exercise graded again in one process, in the reverse of the order the tests above
    graded them, each time right after a planted mistake (the last one listed: where there is one,
    a mistake that leaves hooks on a model or remembers its first call): the verdicts are the ones
    the tests above got."""
    changed = {}
    for exercise_id in IDS[::-1]:
        mistaken, reference = MISTAKES[exercise_id][-1][0], EXERCISES[exercise_id].reference
        for answer in (mistaken, reference):
            again, first = str(grade(exercise_id, answer)), str(verdict_of(exercise_id, answer))
            if again != first:
                changed[exercise_id, answer.__name__] = (first, again)
    assert not changed, f"verdicts that changed with the order: {changed}"


def _mutate(value) -> bool:
    """Change `value` in place the way a careless answer does; True if there was anything to change."""
    if isinstance(value, list):
        value.append(value[-1] if value else 0)  # extends the list it was given
        return True
    if isinstance(value, dict) and not hasattr(value, "cache_dict"):
        value["an extra key"] = 0
        return True
    if hasattr(value, "prompts") and isinstance(getattr(value, "prompts"), list):  # a PromptSet
        value.prompts.sort(reverse=True)  # sorts the prompts (to cut padding), leaving labels behind
        return True
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
        value.data.mul_(0.5)  # through .data: no autograd error, and nothing warns
        return True
    if isinstance(value, torch.nn.Module):
        parameters = list(value.parameters())
        if parameters:
            parameters[0].data.add_(1.0)  # a weight edit no version counter sees
            return True
    return False


def mutating(reference):
    """An answer that computes the reference's result, then changes every input it was given."""
    def answer(*args, **kwargs):
        result = reference(*args, **kwargs)
        for value in (*args, *kwargs.values()):
            _mutate(value)
        return result
    answer.__name__ = f"mutating_{getattr(reference, '__name__', 'answer')}"
    answer.__signature__ = _signature_of(reference)
    return answer


def _signature_of(function):
    import inspect

    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


@pytest.mark.parametrize("exercise_id", IDS)
def test_an_answer_that_changes_its_inputs_is_told_and_the_reference_still_passes(exercise_id):
    """Class 1: an answer that extends a list, edits a dict, sorts a prompt set, scales a tensor or
    edits a model's weights through `.data` must not change what the check hands the next answer:
    the reference graded right after it gets the same verdict as on its own."""
    reference = EXERCISES[exercise_id].reference
    if isinstance(reference, type):  # a class: its instances are the answer, not its inputs
        pytest.skip("a class answer")
    verdict = grade(exercise_id, mutating(reference))  # wrong where a change shows (an argument the
    assert "\n" not in str(verdict)                     # exercise trains in place fails on its values)
    after = grade(exercise_id, reference)
    assert after.status == PASSED, f"after {verdict}: {after}"


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
