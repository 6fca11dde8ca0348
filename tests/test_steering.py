"""Chapter 07's claims about steering, erasure and editing the organism, re-measured.

Every number the prose states is measured again here with the chapter's exported functions and the
chapter's settings. Thresholds come from the words of the prose ("most", "all", "about chance",
"barely move", "several times"), never from one run's digits.
"""

from __future__ import annotations

import functools

import pytest
import torch

from utils.models import load_model
from utils.organism import world
from utils.organism.world import prompt_set
from utils.references import ch07_steering as ref

torch.set_num_threads(1)
HOOK = "blocks.1.hook_resid_post"
ALPHAS = [0.25, 0.5, 0.75, 1.0, 1.5]  # the chapter's dose-response coefficients
TOLERANCE = 0.05


@pytest.fixture(scope="module", autouse=True)
def gradients_off():
    """The chapter runs without gradients; put the worker's mode back for the files after this one."""
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(previous)


@functools.cache
def organism():
    return load_model(verbose=False, device="cpu")


@functools.cache
def sentiment_vectors():
    return ref.sentiment_steering_vectors(organism(), HOOK, prompt_set("sentiment", "train", n=600, seed=0))


@functools.cache
def negative_reviews():
    return ref.sentiment_subsets(prompt_set("sentiment", "test", n=256, seed=0))[0]


@functools.cache
def watched():
    return ref.behaviour_sets(n=48, families=("ioi", "facts", "truth", "induction"))


@functools.cache
def doses(name: str):
    vectors, _ = sentiment_vectors()
    return ref.dose_response(organism(), HOOK, vectors[name], ALPHAS, negative_reviews(), watched())


@functools.cache
def baseline():
    return ref.side_effect_table(organism(), watched())


def at(name: str, key: str, alpha: float) -> float:
    return doses(name)[key][ALPHAS.index(alpha)].item()


# ------------------------------------------------------------------------------------------
# Section 1: units, positions, four vectors
# ------------------------------------------------------------------------------------------
def test_residual_norm_grows_through_the_layers_and_bos_is_huge_at_the_end():
    model = organism()
    tokens, last = ref.tokenize(model, prompt_set("sentiment", "train", n=200, seed=0).prompts)
    _, cache = model.run_with_cache(tokens)
    keep = torch.arange(tokens.shape[1])[None] <= last[:, None]
    keep[:, 0] = False  # BOS
    after = [cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1)[keep].mean().item() for l in range(4)]
    assert 100 < after[0] < 200, after  # "about 140 after block 0"
    assert after[3] > 300 and after[3] > 2 * after[0], after  # "several hundred after block 3"
    bos = cache["blocks.3.hook_resid_post"][:, 0].norm(dim=-1).mean().item()
    assert bos > 3 * after[3], (bos, after)  # "huge after the last block"


def test_four_vectors_how_long_and_how_aligned():
    vectors, latent = sentiment_vectors()
    assert latent["auroc"] > 0.99, latent  # the SAE latent "detects sentiment perfectly (AUROC 1.0)"
    ratio = vectors["mean difference"].norm().item() / latent["residual norm"]
    assert 0.75 < ratio < 1.33, ratio  # "about as long as the residual stream itself"
    units = {name: v / v.norm() for name, v in vectors.items()}
    cosine = {name: (u @ units["mean difference"]).item() for name, u in units.items()}
    assert cosine["contrast pair"] > 0.9, cosine  # "almost the same way"
    assert cosine["probe"] < cosine["contrast pair"] - 0.05 and cosine["SAE latent"] < cosine["contrast pair"] - 0.05, cosine


# ------------------------------------------------------------------------------------------
# Section 2: dose-response and side effects
# ------------------------------------------------------------------------------------------
def test_mean_difference_and_contrast_pair_flip_most_by_half_and_all_by_three_quarters():
    for name in ("mean difference", "contrast pair"):
        assert at(name, "flipped", 0.5) > 0.5, doses(name)
        assert at(name, "flipped", 0.75) == 1.0, doses(name)


def test_the_probe_needs_a_little_more_and_the_sae_latent_about_twice():
    assert at("probe", "flipped", 0.5) < at("mean difference", "flipped", 0.5), doses("probe")
    assert at("probe", "flipped", 0.75) > 0.9, doses("probe")
    for alpha in ALPHAS[:-1]:  # the weakest writer at every coefficient below the largest
        others = [at(name, "flipped", alpha) for name in ("mean difference", "contrast pair", "probe")]
        assert at("SAE latent", "flipped", alpha) <= min(others), (alpha, doses("SAE latent"))
    # "about twice the coefficient": at 2 alpha it does what the mean difference does at alpha, give or take
    assert at("SAE latent", "flipped", 1.0) > 0.3 and at("SAE latent", "flipped", 0.5) < 0.2, doses("SAE latent")
    assert at("SAE latent", "flipped", 1.5) > 0.9, doses("SAE latent")


def test_side_effects_grow_with_the_coefficient_and_break_ioi_and_truth():
    table = doses("mean difference")
    assert table["ioi"][-1] < baseline()["ioi"] - 0.1, table  # "more than one prompt in ten wrong at 1.5"
    assert table["truth"][-1] < baseline()["truth"], table  # "starts to cost the truth verdicts"
    for family in ("ioi", "truth"):
        assert table[family][0] >= baseline()[family] - 0.02, (family, table)


def test_largest_safe_coefficient_of_the_mean_difference_flips_every_review():
    safe = ref.largest_safe_coefficient(ALPHAS, doses("mean difference"), baseline(), TOLERANCE)
    assert safe is not None and at("mean difference", "flipped", safe) == 1.0, (safe, doses("mean difference"))


def test_layer_sweep_steering_works_best_after_block_0_several_times_better():
    model = organism()
    sweep = ref.layer_sweep(model, prompt_set("sentiment", "train", n=600, seed=0), "sentiment", negative_reviews(), 0.35)
    flipped = sweep["flipped"]
    assert int(flipped.argmax()) == 0, flipped
    assert flipped[0] > 2.5 * flipped[1:].max(), flipped


def test_truth_verdict_moves_and_reaches_the_tolerance_sooner():
    model = organism()
    vector = ref.mean_difference_vector(model, prompt_set("truth", "train", seed=0), HOOK, "truth")
    false_statements, _ = ref.truth_subsets(prompt_set("truth", "test", seed=0))
    watch = ref.behaviour_sets(n=48, families=("ioi", "facts", "sentiment", "induction"))
    table = ref.dose_response(model, HOOK, vector, ALPHAS, false_statements, watch)
    assert table["flipped"][ALPHAS.index(0.75)] > 0.9, table  # "at about the same coefficients as sentiment"
    truth_safe = ref.largest_safe_coefficient(ALPHAS, table, ref.side_effect_table(model, watch), TOLERANCE)
    sentiment_safe = ref.largest_safe_coefficient(ALPHAS, doses("mean difference"), baseline(), TOLERANCE)
    assert truth_safe is not None and truth_safe < sentiment_safe, (truth_safe, sentiment_safe, table)


# ------------------------------------------------------------------------------------------
# Section 3: generation
# ------------------------------------------------------------------------------------------
def test_steered_reviews_turn_from_hated_to_loved():
    model = organism()
    vector = sentiment_vectors()[0]["mean difference"]
    for prompt in ["The movie was dull. I", "The hotel was awful. I"]:
        assert ref.greedy_continuation(model, prompt).startswith(" hated")
        steered = ref.greedy_continuation(model, prompt, fwd_hooks=[(HOOK, ref.steering_hook(vector, 0.75))])
        assert steered.startswith(" loved"), steered
    unrelated = "Mary and John went to the park. The"
    assert ref.greedy_continuation(model, unrelated, fwd_hooks=[(HOOK, ref.steering_hook(vector, 0.75))]) \
        != ref.greedy_continuation(model, unrelated)  # "the continuation changes"


# ------------------------------------------------------------------------------------------
# Section 4: directional ablation and weight orthogonalisation
# ------------------------------------------------------------------------------------------
@functools.cache
def every_family():
    return ref.behaviour_sets(n=128)


def test_ablating_the_sentiment_direction_takes_sentiment_to_chance_and_leaves_the_rest():
    model = organism()
    vector = sentiment_vectors()[0]["mean difference"]
    plain = ref.side_effect_table(model, every_family())
    ablated = ref.side_effect_table(model, every_family(), ref.directional_ablation_hooks(model, vector))
    assert 0.4 < ablated["sentiment"] < 0.65, ablated
    for family in ("ioi", "facts", "truth", "induction"):
        assert abs(ablated[family] - plain[family]) <= 0.02, (family, plain, ablated)


def test_orthogonalised_weights_equal_the_hooks_and_are_restored():
    model = organism()
    vector = sentiment_vectors()[0]["mean difference"]
    mixed = prompt_set("sentiment", "test", n=32, seed=1)
    before = ref.last_logits(model, mixed)
    with_hooks = ref.last_logits(model, mixed, ref.directional_ablation_hooks(model, vector))
    with ref.weights_orthogonalized(model, vector):
        with_weights = ref.last_logits(model, mixed)
    assert (with_hooks - with_weights).abs().max() < 1e-3
    assert torch.equal(ref.last_logits(model, mixed), before)


# ------------------------------------------------------------------------------------------
# Section 5: concept erasure
# ------------------------------------------------------------------------------------------
@functools.cache
def erasure(family: str):
    others = {"truth": ("ioi", "facts", "sentiment"), "sentiment": ("ioi", "facts", "truth")}[family]
    return ref.erasure_report(organism(), family, family, HOOK, ref.behaviour_sets(n=64, families=others))


@pytest.mark.parametrize("family", ["truth", "sentiment"])
def test_erasers_blind_a_fresh_probe_and_leace_moves_least(family):
    report = erasure(family)
    assert report["none"]["fresh probe"] > 0.9, report
    for name in ("LEACE", "mean-difference projection"):
        assert abs(report[name]["fresh probe"] - 0.5) < 0.08, report  # the held-out split is balanced
        assert report[name]["class-mean gap"] < 1e-3 * report["none"]["class-mean gap"], report
    assert report["LEACE"]["mean squared edit"] < report["mean-difference projection"]["mean squared edit"], report
    assert report["random direction"]["fresh probe"] >= report["none"]["fresh probe"] - 0.02, report
    assert report["random direction"]["mean squared edit"] < 0.05 * report["LEACE"]["mean squared edit"], report  # "a little"
    share = torch.tensor(prompt_set(family, "test", n=180, seed=0).labels[family]).float().mean().item()
    assert 0.4 < share < 0.6, share  # "balanced, so 0.5"


def test_erasing_truth_at_block_1_removes_the_verdict_and_little_else():
    report = erasure("truth")
    assert report["mean-difference projection"]["truth"] < 0.6, report  # "to chance"
    assert report["LEACE"]["truth"] < report["none"]["truth"] - 0.2, report  # "much of it away"
    assert report["LEACE"]["truth"] > report["mean-difference projection"]["truth"], report
    for name in ("LEACE", "mean-difference projection", "random direction"):
        for family in ("ioi", "facts", "sentiment"):
            assert report[name][family] >= report["none"][family] - 0.05, (name, family, report)


def test_erasing_sentiment_leace_overshoots_and_costs_more_elsewhere():
    report = erasure("sentiment")
    assert report["mean-difference projection"]["sentiment"] < 0.6, report
    assert report["LEACE"]["sentiment"] < 0.5, report  # "below chance"
    lost = {name: sum(report["none"][f] - report[name][f] for f in ("ioi", "facts", "truth"))
            for name in ("LEACE", "mean-difference projection")}
    assert lost["LEACE"] > lost["mean-difference projection"] + 0.02, (lost, report)


# ------------------------------------------------------------------------------------------
# Section 6: editing one fact
# ------------------------------------------------------------------------------------------
def test_rank_one_fact_edit_efficacy_generalisation_and_specificity():
    model = organism()
    fit_on = ref.subject_prompts(world.FACT_TEMPLATES["capital"][0], "France")
    new_weight = ref.fit_fact_edit(model, 0, fit_on, "France", " Rome")
    assert torch.linalg.matrix_rank(new_weight - model.blocks[0].mlp.W_out).item() == 1
    report = ref.fact_edit_report(model, "France", " Rome", 0, ref.behaviour_sets(n=64, families=("ioi", "truth", "sentiment")))
    before = report["measure"]()
    with ref.mlp_weight_replaced(model, 0, new_weight):
        after = report["measure"]()
    assert before["top answer"] == [" Paris"] * 4, before
    assert after["top answer"] == [" Rome", " Paris", " Paris", " Rome"], after  # fitted; two missed; one followed
    for key in before:
        if key not in ("top answer", "p(new)"):
            assert after[key] >= before[key] - 0.01, (key, before, after)
    assert report["measure"]()["top answer"] == before["top answer"]  # the weight is back


# ------------------------------------------------------------------------------------------
# Section 7: attacks on the latents
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_optimised_latent_perturbations_flip_verdicts_random_ones_do_not():
    model = organism()
    _, true_statements = ref.truth_subsets(prompt_set("truth", "test", seed=0))
    attacked = true_statements.subset(range(48))
    budgets = [0.1, 0.2, 0.3]
    optimised = [ref.latent_attack(model, attacked, HOOK, b) for b in budgets]
    random = [ref.latent_attack(model, attacked, HOOK, b, random_baseline=True) for b in budgets]
    assert random == [0.0] * len(budgets), random
    assert optimised[0] <= 0.05, optimised  # "starts to flip them once it is a fifth of the residual norm"
    assert optimised == sorted(optimised) and optimised[1] > 0 and optimised[-1] > optimised[1], optimised
