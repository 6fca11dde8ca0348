"""Chapter 00 (orientation): the claims its text makes about the risk network and the organism.

The chapter says its small network does *not* learn the lender's rule: 93% agreement on the grid,
one dead unit, a boundary that is one straight tilted line, and the rule's corner never learnt;
more units or another seed do not fix it. It also describes what one transformer block computes.
Each test re-measures one of those sentences, so a change of training recipe or library that
breaks one fails here first.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.claims import claim, claim_seed
from utils.models import load_model
from utils.references import ch00_orientation as ref


@functools.cache
def trained(seed: int = 0, n_hidden: int = 3) -> ref.RiskNetwork:
    return ref.train_risk_network(seed=seed, n_hidden=n_hidden)


def agreement(network: ref.RiskNetwork, grid: torch.Tensor) -> float:
    with torch.no_grad():
        return ((network(grid) > 0) == ref.rule_based_risk(grid[:, 0], grid[:, 1])).float().mean().item()


def dead_units(network: ref.RiskNetwork) -> list[int]:
    """Units whose input is negative on the whole unit square: a linear function is largest at a corner."""
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        pre = corners @ network.hidden.weight.T + network.hidden.bias  # [4, n_hidden]
    return [unit for unit in range(pre.shape[1]) if pre[:, unit].max() < 0]


def test_the_network_agrees_with_the_rule_on_about_93_percent_of_the_grid():
    """The chapter's own network (seed 0, named in the text, so the claim seed does not move it)."""
    measured = agreement(trained(), ref.applicant_grid())
    claim("ch00: the seed-0 network's agreement with the rule", measured, above=0.90)
    claim("ch00: the seed-0 network's agreement with the rule (at most)", measured, below=0.96)


def test_one_unit_is_dead_on_the_whole_square_and_the_others_do_all_the_work():
    network, grid = trained(), ref.applicant_grid()
    assert dead_units(network) == [0]
    with torch.no_grad():
        active = (ref.hidden_activations(network, grid) > 0).float().mean(0)  # [n_hidden]
    assert active[0] == 0
    claim("ch00: share of the square where each living unit is active", active[1:].min(), above=0.5)
    contributions = ref.unit_contributions(network, grid).detach()
    assert contributions[:, 0].abs().max() == 0  # removing the dead unit would change nothing


def test_the_boundary_is_one_straight_tilted_line_where_both_living_units_are_active():
    network, grid = trained(), ref.applicant_grid(steps=101)
    with torch.no_grad():
        near_boundary = network(grid).abs() < 1.0
        active = ref.hidden_activations(network, grid) > 0  # [batch, n_hidden]
    assert near_boundary.sum() > 50
    assert active[near_boundary][:, 1:].all()  # both living units active all along the boundary
    claim("ch00: the straight line gives the network's verdict (share of the grid)",
          ref.line_agreement(network, [1, 2], grid), above=0.99)
    a, b, _ = ref.decision_line(network, [1, 2])
    assert a < 0 and b < 0  # tilted: both age and income matter, income more
    claim("ch00: the line's slope ratio age/income", a / b, above=0.1)
    claim("ch00: the line's slope ratio age/income (at most)", a / b, below=0.9)


def test_the_rule_s_corner_is_never_learnt_and_the_line_overreaches():
    network = trained()
    applicants = torch.tensor([
        [0.25, 0.45],  # young, income under 0.5: the rule says high risk, the line says low
        [0.40, 0.24],  # past the step, income above 0.2: the rule says low risk, the line says high
        [0.95, 0.15],  # old, income under 0.2: the rule says high risk, the line says low
    ])
    with torch.no_grad():
        network_says = (network(applicants) > 0).tolist()
    assert ref.rule_based_risk(applicants[:, 0], applicants[:, 1]).tolist() == [True, False, True]
    assert network_says == [False, True, False]


def test_the_errors_lie_along_the_rule_s_boundary():
    network, grid = trained(), ref.applicant_grid()
    with torch.no_grad():
        wrong = (network(grid) > 0) != ref.rule_based_risk(grid[:, 0], grid[:, 1])
    age, income = grid[wrong, 0], grid[wrong, 1]
    # distance to the rule's boundary: the segments income = 0.5 (age < 0.3), age = 0.3, income = 0.2 (age > 0.3)
    to_top = torch.where(age < 0.3, (income - 0.5).abs(), torch.hypot(age - 0.3, income - 0.5))
    to_step = torch.where((income > 0.2) & (income < 0.5), (age - 0.3).abs(), torch.full_like(age, 1.0))
    to_floor = torch.where(age > 0.3, (income - 0.2).abs(), torch.hypot(age - 0.3, income - 0.2))
    claim("ch00: the farthest error from the rule's boundary", torch.stack([to_top, to_step, to_floor]).min(0).values.max(),
          below=0.2)


@pytest.mark.parametrize("seed, n_hidden", [(1, 8)])
def test_another_seed_and_more_units_do_not_fix_it(seed, n_hidden):
    """The text: any other seed, and more units, do not fix it (the claim seed picks the other seed)."""
    network = trained(seed + claim_seed(), n_hidden)
    # "does not fix it": still short of the rule (0.93 to 0.96 over seeds 1-5 at 500 steps; 0.96 once)
    claim("ch00: another seed with 8 units: agreement with the rule", agreement(network, ref.applicant_grid()), below=0.97)
    claim("ch00: another seed with 8 units: dead units", len(dead_units(network)), above=0.5)


# ------------------------------------------------------------------------------------------
# The organism: what one block computes, as the text describes it
# ------------------------------------------------------------------------------------------
@functools.cache
def organism():
    return load_model(verbose=False, device="cpu")


def test_the_sizes_the_text_quotes():
    cfg = organism().cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (4, 8, 32, 1024)


def test_each_block_adds_attention_then_the_mlp_to_the_stream():
    model = organism()
    _, cache = model.run_with_cache("When Mary and John went to the store, John gave a drink to")
    for layer in range(model.cfg.n_layers):
        pre, mid, post = (cache[f"blocks.{layer}.hook_resid_{kind}"] for kind in ("pre", "mid", "post"))
        assert torch.allclose(mid, pre + cache[f"blocks.{layer}.hook_attn_out"], atol=1e-4)
        assert torch.allclose(post, mid + cache[f"blocks.{layer}.hook_mlp_out"], atol=1e-4)
    pattern = cache["blocks.0.attn.hook_pattern"][0]  # [head, query, key]
    assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern[..., 0]), atol=1e-5)
    assert pattern.triu(diagonal=1).abs().max() == 0  # no head looks ahead
    assert pattern.diagonal(dim1=-2, dim2=-1).max() > 0  # the current position is among those averaged


# ------------------------------------------------------------------------------------------
# The slider over networks, and the live explorer
# ------------------------------------------------------------------------------------------
@functools.cache
def variant_summaries() -> list[dict]:
    grid = ref.applicant_grid()
    return [ref.network_summary(trained(seed, n), grid) for seed, n in ref.NETWORK_VARIANTS]


def test_every_variant_agrees_about_93_percent_and_draws_about_the_same_boundary():
    summaries = variant_summaries()
    # the slider's five networks, and one more whose seed the robustness run varies
    another = ref.network_summary(trained(10 + claim_seed(), 3), ref.applicant_grid())
    agreements = [summary["agreement"] for summary in [*summaries, another]]
    claim("ch00: every network's agreement with the rule (lowest)", min(agreements), above=0.90)
    claim("ch00: every network's agreement with the rule (highest)", max(agreements), below=0.96)
    first = summaries[0]["says"]
    claim("ch00: every network draws the seed-0 network's boundary (least shared verdicts)",
          min((summary["says"] == first).float().mean() for summary in [*summaries[1:], another]), above=0.95)


def test_the_variants_differ_in_their_dead_units_and_wider_ones_lose_more():
    dead = {variant: summary["dead"] for variant, summary in zip(ref.NETWORK_VARIANTS, variant_summaries())}
    assert min(dead.values()) == 0 and max(dead.values()) >= 2, dead  # "some none dead, some several"
    three = [d for (seed, n), d in dead.items() if n == 3]
    eight = [d for (seed, n), d in dead.items() if n == 8]
    assert sum(eight) / len(eight) > sum(three) / len(three), dead


def test_the_static_slider_shows_one_network_at_a_time():
    figure = ref.variants_slider_figure(ref.NETWORK_VARIANTS, variant_summaries())
    steps = figure.layout.sliders[0].steps
    assert len(steps) == len(ref.NETWORK_VARIANTS) == len(figure.data) - 1
    for k, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert visible[k] and visible[-1] and sum(visible) == 2  # its own map and the rule's boundary
        assert "agreement" in step.args[1]["title"]


def test_moving_the_live_sliders_retrains_the_network():
    explorer = ref.NetworkExplorer(seed=0, n_hidden=3)
    assert explorer.summary["dead"] == variant_summaries()[0]["dead"]
    explorer.n_hidden.value = 8  # what dragging does: the observer retrains with eight units
    assert explorer.network.hidden.out_features == 8
    assert explorer.summary["dead"] == variant_summaries()[ref.NETWORK_VARIANTS.index((0, 8))]["dead"]


def test_the_map_points_each_approach_and_limit_to_chapters_that_exist():
    """Chapter 00's four approaches, self-explanations and extrapolation each name chapters that exist."""
    import re
    from pathlib import Path

    solutions = Path(__file__).parents[1] / "solutions"
    source = (solutions / "00_orientation.py").read_text()
    chapters = {path.stem[:2] for path in solutions.glob("[0-9][0-9]_*.py")}
    for start, end in (("**Four approaches", "Top-down and bottom-up"),
                       ("**What a model says about itself", "Why would this matter"),
                       ("| **extrapolation** |", "None of these works")):
        passage = source[source.index(start):]
        passage = passage[:passage.index(end)]
        named = set(re.findall(r"\b(?:0\d|10)\b", passage))
        assert len(named) >= 2 and named <= chapters, (start, named)
