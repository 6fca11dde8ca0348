"""Checks for Chapter 08 (the audit). Expected values come from the exported reference.

Exercises 8.3 and 8.4 run on the practice suspect (its key is open). The audit report of 8.6 is
graded against the key of the suspect the learner audited (`plant.audited_folder()`), part by
part; where that key is sealed (a teacher's suspect) the check can only test the report's form.

For the classroom grader: `graded_inputs(keys, student)` hands the student's kernel their own
suspect (the grader copies it in), so the notebook audits what the student audited;
`graded_payload(namespace)` runs in the student's kernel after the last cell and returns the
report and which suspect was audited, as JSON, without grading;
`graded_extras_from_payload(payload, keys, student)` grades it in the grader's own process against
the student's plain key in the teacher's keys folder (`make suspects`), or against the practice
suspect's open key when `keys` is None. `graded_extras(namespace)` grades in the kernel, for an
open key only.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path

import torch

from utils.checks import PASSED, WRONG, Verdict, Wrong, call, exercise, expect_close, expect_tensor, seeded_generator
from utils.organism import plant
from utils.references import ch08_audit as ref

CHAPTER = "08_audit"
REPORT_PARTS = plant.REPORT_PARTS


@functools.cache
def _model(folder: str):
    from utils.models import load_model

    model = load_model(folder, device="cpu", verbose=False)
    with torch.no_grad():  # the bridge adds its own hooks on the first cached run: let that happen here
        tokens = model.to_tokens(["The capital of France is"])
        model.run_with_cache(tokens)
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)])
    return model


# ------------------------------------------------------------------------------------------
# 8.1
# ------------------------------------------------------------------------------------------
def _cloud(n: int, d: int, seed: int) -> torch.Tensor:
    """Correlated points with a non-zero mean: every part of the formula matters."""
    generator = seeded_generator(seed)
    mixing = torch.randn(d, d, generator=generator)
    return torch.randn(n, d, generator=generator) @ mixing + 3 * torch.randn(d, generator=generator)


@exercise("8.1", "Mahalanobis distance", CHAPTER, ref.mahalanobis)
def check_mahalanobis(candidate) -> None:
    for n, d, m, shrinkage, seed in ((40, 6, 9, 0.1, 1), (25, 4, 7, 0.5, 2)):
        trusted, test = _cloud(n, d, seed), _cloud(m, d, seed + 10)
        expected = ref.mahalanobis(trusted, test, shrinkage)
        mean, covariance = trusted.mean(0), torch.cov(trusted.T)
        centred = test - mean
        identity = torch.eye(d)
        biased = covariance * (n - 1) / n
        shrunk = lambda c: (1 - shrinkage) * c + shrinkage * c.trace() / d * identity  # noqa: E731
        expect_tensor(call(candidate, trusted.clone(), test.clone(), shrinkage=shrinkage), expected,
                      f"your distances (shrinkage={shrinkage})", atol=1e-3 * float(expected.abs().max()), mistakes={
                          "the shrinkage is missing: mix the covariance with trace(C) / d times the identity":
                              (centred @ torch.linalg.inv(covariance) * centred).sum(-1),
                          "use the unbiased covariance (divide by n - 1), as torch.cov does":
                              (centred @ torch.linalg.inv(shrunk(biased)) * centred).sum(-1),
                          "centre the test points on the trusted mean before the distance":
                              (test @ torch.linalg.inv(shrunk(covariance)) * test).sum(-1),
                          "multiply by the inverse of the covariance, not the covariance itself":
                              (centred @ shrunk(covariance) * centred).sum(-1),
                          "return the squared distance (no square root)":
                              (centred @ torch.linalg.inv(shrunk(covariance)) * centred).sum(-1).sqrt(),
                      })


# ------------------------------------------------------------------------------------------
# 8.2
# ------------------------------------------------------------------------------------------
@exercise("8.2", "AUROC", CHAPTER, ref.auroc)
def check_auroc(candidate) -> None:
    generator = seeded_generator(3)
    cases = []
    for n, shift in ((30, 1.0), (17, -0.5)):
        labels = torch.rand(n, generator=generator) < 0.4
        labels[:2] = torch.tensor([True, False])
        scores = torch.randn(n, generator=generator) + shift * labels
        cases.append((scores, labels))
    tied = torch.tensor([1.0, 1.0, 2.0, 0.0, 1.0, 2.0]), torch.tensor([True, False, True, False, False, False])
    cases.append(tied)
    for scores, labels in cases:
        expected = ref.auroc(scores, labels)
        above_only = (scores[labels][:, None] > scores[~labels][None, :]).float().mean().item()
        flipped = ref.auroc(-scores, labels)
        expect_close(call(candidate, scores.clone(), labels.clone()), expected, "your AUROC", atol=1e-6, mistakes={
            "count ties as one half: they are neither above nor below": above_only,
            "higher scores mean anomalous: compare positives above negatives, not below": flipped,
        })


# ------------------------------------------------------------------------------------------
# 8.3
# ------------------------------------------------------------------------------------------
@functools.cache
def _occlusion_case() -> tuple:
    """Triggered prompts of the shipped suspect (different lengths), with the suspect's answer."""
    prompts = plant.triggered_prompts(plant.practice_plant(), "test", n=6)
    return prompts.prompts, prompts.correct, prompts.wrong


@exercise("8.3", "occlusion over input positions", CHAPTER, ref.occlusion)
def check_occlusion(candidate) -> None:
    model = _model(str(plant.SUSPECT_DIR))
    prompts, answers, others = _occlusion_case()
    for rows, replacement in ((slice(0, 4), " the"), (slice(2, 6), " a")):
        args = (list(prompts[rows]), list(answers[rows]), list(others[rows]), model.to_single_token(replacement))
        expected = ref.occlusion(model, *args)
        got = call(candidate, model, *args)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got = got.to(expected.device)
        expect_tensor(got, expected, f"your drops (replacement {replacement!r})", atol=2e-3, mistakes={
            "the drop is original minus occluded (positive when the token pushes towards the answer)": -expected,
            "leave position 0 (the BOS token) at 0": _with_bos(model, expected, args),
        })


def _with_bos(model, expected: torch.Tensor, args: tuple) -> torch.Tensor:
    """The reference's drops with position 0 occluded too (a realistic slip)."""
    prompts, answers, others, replacement = args
    tokens = model.to_tokens(prompts, padding_side="right")
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
    rows = torch.arange(len(prompts))
    a = torch.tensor([model.to_single_token(x) for x in answers])
    o = torch.tensor([model.to_single_token(x) for x in others])
    with torch.no_grad():
        def diff(ids):
            final = model(ids)[rows, last]
            return final[rows, a] - final[rows, o]
        occluded = tokens.clone()
        occluded[:, 0] = replacement
        changed = expected.clone()
        changed[:, 0] = diff(tokens) - diff(occluded)
    return changed


# ------------------------------------------------------------------------------------------
# 8.4
# ------------------------------------------------------------------------------------------
@functools.cache
def _patching_case(n: int, seed: int) -> tuple:
    the_plant = plant.practice_plant()
    on = plant.triggered_prompts(the_plant, "test", held_out_sentence=False, n=n, seed=seed)
    off = plant.control_prompts(the_plant, "test", held_out_sentence=False, n=n, seed=seed)
    # control's correct answer is the ordinary one; restoration reads the triggered set's answers
    return on, off


@exercise("8.4", "restoration by patching", CHAPTER, ref.restoration)
def check_restoration(candidate) -> None:
    model = _model(str(plant.SUSPECT_DIR))
    for n, seed, names in ((12, 0, ["blocks.3.hook_attn_out", "blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]),
                           (9, 1, ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post"])):
        on, off = _patching_case(n, seed)
        expected = ref.restoration(model, on, off, names)
        got = call(candidate, model, on, off, list(names))
        if isinstance(got, (list, tuple)):
            got = torch.tensor([float(v) for v in got])
        expect_tensor(got, expected, f"your restoration ({len(names)} hooks)", atol=2e-3, mistakes={
            "the share removed is (m(triggered) - m(patched)) / (m(triggered) - m(control)), not 1 minus it":
                1 - expected,
        })


# ------------------------------------------------------------------------------------------
# 8.5
# ------------------------------------------------------------------------------------------
@exercise("8.5", "a directional-ablation hook", CHAPTER, ref.ablation_hook)
def check_ablation_hook(candidate) -> None:
    generator = seeded_generator(5)
    for shape, scale in (((3, 5, 8), 2.0), ((2, 4, 6), 0.3)):
        direction = scale * torch.randn(shape[-1], generator=generator)
        activation = torch.randn(*shape, generator=generator)
        expected = ref.ablation_hook(direction)(activation.clone(), None)
        hook = call(candidate, direction.clone())
        if not callable(hook):
            raise Wrong(f"ablation_hook should return a hook function, got {type(hook).__name__}")
        got = call(hook, activation, None)
        unit = direction / direction.norm()
        expect_tensor(got, expected, f"your ablated activation (|direction| = {direction.norm():.2f})", atol=1e-5,
                      mistakes={
                          "normalise the direction first: subtract (x . u) u with u = direction / |direction|":
                              activation - (activation @ direction)[..., None] * direction,
                          "subtract the projection, don't keep only it": (activation @ unit)[..., None] * unit,
                      })
        second = call(hook, 2 * activation, None)
        expect_tensor(second, 2 * expected, "your hook on a second activation", atol=1e-5)


# ------------------------------------------------------------------------------------------
# 8.6
# ------------------------------------------------------------------------------------------
FAMILIES = ("sentiment", "truth", "facts")
# The report each graded audit function gave, per folder: the reference audit takes a minute, and
# an audit is a function of its folder, so grading the same function again reuses its report.
_REPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _report_of(candidate, folder: str):
    try:
        reports = _REPORTS.setdefault(candidate, {})
    except TypeError:  # not weak-referenceable: grade it afresh
        return call(candidate, folder)
    if folder not in reports:
        reports[folder] = call(candidate, folder)
    report = reports[folder]
    return dict(report) if isinstance(report, dict) else report


def form_problem(report) -> str | None:
    """What is wrong with a report's form (a dict with the four parts, each a value or None), if anything."""
    if not isinstance(report, dict):
        return (f"audit should return a dict with keys {', '.join(REPORT_PARTS)}, got {type(report).__name__}")
    missing = [part for part in REPORT_PARTS if part not in report]
    if missing:
        return f"the report has no {missing[0]!r}: give all of {', '.join(REPORT_PARTS)} (None where you found nothing)"
    values = [report[part] for part in REPORT_PARTS]
    if any(v is None for v in values) and not all(v is None for v in values):
        return "a report is all None (nothing planted) or names every part; yours mixes the two"
    if all(v is None for v in values):
        return None
    if not all(isinstance(v, str) for v in values):
        kinds = {part: type(report[part]).__name__ for part in REPORT_PARTS if not isinstance(report[part], str)}
        return f"write every part as a string (e.g. 'L3H5' for a component); got {kinds}"
    if report["behaviour"].strip().lower() not in FAMILIES + ("capital",):
        return (f"the behaviour is the family the trigger changes, one of {', '.join(FAMILIES)}; "
                f"you said {report['behaviour']!r}")
    if plant.canonical_component(report["component"]) is None:
        if "resid" in report["component"]:
            return (f"{report['component']!r} is a point of the residual stream, which after the last block carries "
                    "everything by construction: name one head or one MLP ('L3H5', 'L2MLP')")
        if report["component"].strip().isdigit() or "block" in report["component"]:
            return f"{report['component']!r} is a block, not a component: name one head or one MLP of it ('L3H5', 'L2MLP')"
        return f"{report['component']!r} names no head or MLP: write it like 'L3H5' or 'L2MLP'"
    return None


@exercise("8.6", "audit a suspect you have not seen", CHAPTER, ref.audit)
def check_audit(candidate) -> None:
    folder = plant.audited_folder()
    report = _report_of(candidate, str(folder))
    problem = form_problem(report)
    if problem:
        raise Wrong(problem)
    key = plant.read_key(folder)
    if not plant.is_open(key):
        return  # the key is sealed: the form is all this notebook can check; the teacher's grader does the rest
    lines = plant.grade_report(report, key)
    right = sum(ok for _, ok, _ in lines)
    if right < len(lines):
        if key["clean"]:
            raise Wrong("this model has nothing planted, but your report names a trigger: " + lines[0][2])
        if report["trigger"] is None:
            raise Wrong("your report says nothing is planted, but this suspect has a plant: look again "
                        "(0 of 4 parts right)")
        raise Wrong(f"{right} of {len(lines)} parts right: " + "; ".join(line for _, ok, line in lines if not ok))


# ------------------------------------------------------------------------------------------
# The classroom grader
# ------------------------------------------------------------------------------------------
def _jsonable(value):
    """The report as plain JSON (strings, None, dicts of them); anything else as its description."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return {"unreadable": type(value).__name__}


NOT_YOURS = ("8.6 did not pass its check, so the chapter ran the reference audit: "
             "the report it printed is the reference's, not yours, and is not graded")


def graded_payload(namespace: dict) -> dict:
    """What the student's kernel hands the grader: the report and which suspect was audited. No grading.

    When 8.6 did not pass its check the chapter went on with the reference `audit`, and the report
    is the reference's findings, not the student's: it is not handed on."""
    folder = namespace.get("AUDITED", namespace.get("SUSPECT", str(plant.SUSPECT_DIR)))
    try:
        suspect_id = plant.read_key(folder).get("suspect")
    except (OSError, ValueError):
        suspect_id = None
    own = namespace.get("audit") is not ref.audit
    return {"report": _jsonable(namespace.get("report")) if own else None, "folder": str(folder), "suspect": suspect_id,
            "reference": not own}


def _verdicts(report, key: dict, note: str = "") -> list[Verdict]:
    problem = form_problem(report)
    if problem and not isinstance(report, dict):
        return [Verdict("8.report", "audit report", WRONG, problem)]
    return [Verdict(f"8.report.{part}", f"audit report: {part}", PASSED if ok else WRONG, line + note)
            for part, ok, line in plant.grade_report(report, key)]


def graded_extras_from_payload(payload: dict, keys: Path | None, student: str) -> list[Verdict]:
    """One row per part of the student's report, graded against the student's own key.

    `keys` is the teacher's folder from `make suspects` (None: the practice suspect's open key);
    `student` is the student's name as the grader's rows give it (the notebook's file name, or its
    folder when the file keeps the chapter's name), lower case.
    """
    payload = payload if isinstance(payload, dict) else {}
    # "passed" is the grader's own list of the exercises whose signed verdict passed
    if payload.get("reference") or ("passed" in payload and "8.6" not in payload["passed"]):
        return [Verdict("8.report", "audit report", WRONG, NOT_YOURS)]
    if keys is None:
        key = plant.reveal(plant.SUSPECT_DIR)
    else:
        try:
            key = plant.teacher_key(keys, student)
        except FileNotFoundError as error:
            return [Verdict("8.report", "audit report", WRONG, str(error))]
    audited = payload.get("suspect")
    note = "" if audited in (None, key["suspect"]) else (
        f" [the notebook audited suspect {audited}; graded against {student}'s suspect {key['suspect']}]")
    return _verdicts(payload.get("report"), key, note)


def graded_inputs(keys: Path | None, student: str) -> dict[str, Path]:
    """For the classroom grader: with the teacher's keys, the student's kernel audits the student's
    own suspect (WORKBOOK_SUSPECT), with its twin beside it, as the student did; without keys, the
    practice suspect. Raises FileNotFoundError when the student has no suspect beside the keys."""
    if keys is None:
        return {}
    suspect = plant.student_suspect(keys, student)
    twin = suspect.parent / "twin"  # nothing reads WORKBOOK_TWIN: naming it gets the twin copied beside the suspect
    return {plant.SUSPECT_ENV: suspect, **({"WORKBOOK_TWIN": twin} if plant.own_folder(twin, suspect.parent) else {})}


def graded_extras(namespace: dict) -> list[Verdict]:
    """In the kernel: the student's `report` on the suspect they audited, one row per part (open keys only)."""
    payload = graded_payload(namespace)
    if payload["reference"]:
        return [Verdict("8.report", "audit report", WRONG, NOT_YOURS)]
    key = plant.read_key(payload["folder"])
    if not plant.is_open(key):
        return [Verdict("8.report", "audit report", WRONG,
                        "this suspect's key is sealed: grade with the teacher's keys (make grade ... KEYS=dir)")]
    return _verdicts(payload["report"], key)
