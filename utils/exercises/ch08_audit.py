"""Checks for Chapter 08 (the audit). Expected values come from the exported reference.

The audit report (Exercise 8.6) is graded against the suspect's planted key (`key.json`, salted
hashes written by `utils.organism.plant`), one line per part, so no notebook shows the answer.
`graded_extras(namespace)` gives the classroom grader the same lines, one row per part, for the
notebook's `report` on the suspect its `SUSPECT` names (any seed's folder with a key).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from utils.checks import Verdict, Wrong, call, exercise, expect_close, expect_tensor, seeded_generator
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
    the_plant = plant.planted(plant.read_key(plant.SUSPECT_DIR)["seed"])
    prompts = plant.triggered_prompts(the_plant, "test", n=6)
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
    the_plant = plant.planted(plant.read_key(plant.SUSPECT_DIR)["seed"])
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
def _score(lines: list[str]) -> int:
    return sum(": right" in line for line in lines)


@functools.cache
def _audit_sets() -> tuple:
    """A smaller trusted set and traffic than the chapter's, drawn with other seeds."""
    return (ref.audit_data("train", 150, with_days=False, seed=3), ref.audit_data("test", 80, with_days=True, seed=4))


@exercise("8.6", "audit a suspect", CHAPTER, ref.audit)
def check_audit(candidate) -> None:
    trusted, traffic = _audit_sets()
    for folder in (plant.SUSPECT_DIR, plant.TWIN_DIR):
        report = call(candidate, _model(str(folder)), trusted, traffic)
        lines = plant.grade_report(folder, report)
        if _score(lines) < len(REPORT_PARTS):
            name = "the twin" if plant.read_key(folder)["clean"] else "the suspect"
            raise Wrong(f"on {name}, {_score(lines)} of {len(REPORT_PARTS)} parts right: " + "; ".join(lines))


def graded_extras(namespace: dict) -> list[Verdict]:
    """For the classroom grader: the student's `report` on their `SUSPECT`, one row per part."""
    folder = Path(str(namespace.get("SUSPECT", plant.SUSPECT_DIR)))
    report = namespace.get("report")
    lines = plant.grade_report(folder, report)
    if len(lines) == 1 and not lines[0].startswith(REPORT_PARTS):
        return [Verdict("8.report", "audit report", "wrong", lines[0])]
    return [Verdict(f"8.report.{part}", f"audit report: {part}", "passed" if ": right" in line else "wrong", line)
            for part, line in zip(REPORT_PARTS, lines)]
