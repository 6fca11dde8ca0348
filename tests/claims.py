"""Claims about a model, asserted with a margin and recorded for the robustness run.

A chapter's prose says things about the organism ("above 0.9 at every layer", "L3H1 attends to
the repeated name"). Its test re-measures each one through `claim(...)`, which asserts it and, when
`WORKBOOK_CLAIM_REPORT` names a file, appends the measurement there. `make claims` reruns the claim
tests under several values of `claim_seed()` and thread counts and prints, per claim, the worst
margin over the runs (`python -m utils.claims`).

Usage in a test:
    seed = claim_seed()                       # 0 in the suite; varied by `make claims`
    prompts = world.prompt_set("truth", "test", n=200, seed=seed)
    claim("ch02: linear truth probe accuracy, last layer", accuracy, above=0.9)
"""

from __future__ import annotations

import json
import os
import threading

SEED_VARIABLE = "WORKBOOK_CLAIM_SEED"
REPORT_VARIABLE = "WORKBOOK_CLAIM_REPORT"
# Set by the robustness run: record a failed claim and go on, so the claims after it in the same
# test are measured too (the run fails on the records instead).
RECORD_ONLY_VARIABLE = "WORKBOOK_CLAIM_RECORD_ONLY"
_lock = threading.Lock()


def claim_seed(default: int = 0) -> int:
    """The seed for a claim test's random choices (prompt samples, initialisations, orders).

    The suite runs with the default; the robustness run sets WORKBOOK_CLAIM_SEED to other values, so
    a claim that holds for one lucky draw only shows up there. Add it to a test's own base seed."""
    return int(os.environ.get(SEED_VARIABLE, default))


def claim_generator(base_seed: int = 0) -> "torch.Generator":
    """A CPU torch generator seeded with `base_seed + claim_seed()`: pass it explicitly to every
    random choice a claim depends on (a sample, an initialisation, an order) instead of seeding
    the global generator."""
    import torch

    return torch.Generator().manual_seed(base_seed + claim_seed())


def claim(name: str, value: float, *, above: float | None = None, below: float | None = None) -> float:
    """Assert that a measured `value` is above (or below) its bar; record it; return the margin.

    The margin is positive when the claim holds: value - above, or below - value. The failure
    message names the claim, the value, the bar and the margin, so a red test reads as a report."""
    if (above is None) == (below is None):
        raise ValueError("claim() takes exactly one of above= or below=")
    value = float(value)
    bar = above if above is not None else below
    margin = value - bar if above is not None else bar - value
    sign = ">" if above is not None else "<"
    report = os.environ.get(REPORT_VARIABLE)
    if report:
        row = {"claim": name, "value": value, "bar": float(bar), "direction": sign, "margin": margin,
               "seed": claim_seed(), "threads": os.environ.get("OMP_NUM_THREADS", ""),
               "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]}
        with _lock, open(report, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    if report and os.environ.get(RECORD_ONLY_VARIABLE):
        return margin
    assert margin > 0, (f"claim '{name}': measured {value:.4g}, bar {sign} {bar:.4g}, margin {margin:+.3g} "
                        f"(claim seed {claim_seed()})")
    return margin
