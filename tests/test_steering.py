"""Chapter 07's claims about steering, erasure and editing the organism, re-measured.

Every number the prose states is measured again here with the chapter's exported functions and the
chapter's settings, through `claim(...)`: the bar comes from the words of the prose ("most", "all",
"about chance", "barely move", "several times"), never from one run's digits, and every random choice
(prompt samples, fillers, attack starts) adds `claim_seed()`, so `make claims` reruns them on other draws.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from tests.claims import claim, claim_seed
from utils.models import load_model
from utils.organism import world
from utils.organism.world import prompt_set
from utils.references import ch07_steering as ref

torch.set_num_threads(1)
HOOK = "blocks.1.hook_resid_post"
ALPHAS = [0.25, 0.5, 0.75, 1.0, 1.5]  # the chapter's dose-response coefficients
SEED = claim_seed()


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
    return ref.sentiment_steering_vectors(organism(), HOOK, prompt_set("sentiment", "train", n=600, seed=SEED))


@functools.cache
def negative_reviews():
    return ref.sentiment_subsets(prompt_set("sentiment", "test", n=256, seed=SEED))[0]


@functools.cache
def watched():
    return ref.behaviour_sets(n=ref.WATCH_SIZE, seed=SEED, families=("ioi", "facts", "truth", "induction"))


@functools.cache
def doses(name: str):
    """The dose-response of one vector; side effects only for the mean difference (the one the text reads)."""
    vectors, _ = sentiment_vectors()
    watch = watched() if name == "mean difference" else {}
    return ref.dose_response(organism(), HOOK, vectors[name], ALPHAS, negative_reviews(), watch)


@functools.cache
def baseline():
    return ref.side_effect_table(organism(), watched())


def at(name: str, key: str, alpha: float) -> float:
    return doses(name)[key][ALPHAS.index(alpha)].item()


def worst_excess(row: dict, base: dict, watch: dict) -> int:
    """Prompts lost beyond its allowance by the family that lost most beyond it, at one coefficient (`row`: a
    side-effect table of shares). 0 or less is safe; the tolerance is stated and decided in whole prompts."""
    sizes = {family: len(watch[family]) for family in base}
    counts, before, allowed = ref.prompt_counts(row, sizes), ref.prompt_counts(base, sizes), ref.allowed_losses(sizes)
    return max(before[family] - int(counts[family]) - allowed[family] for family in base)


def excess_at(table, base, watch, alpha: float) -> int:
    return worst_excess({family: table[family][ALPHAS.index(alpha)] for family in base}, base, watch)


# ------------------------------------------------------------------------------------------
# Section 1: units, positions, five vectors
# ------------------------------------------------------------------------------------------
def test_residual_norm_grows_through_the_layers_and_bos_is_huge_at_the_end():
    model = organism()
    tokens, last = ref.tokenize(model, prompt_set("sentiment", "train", n=200, seed=SEED).prompts)
    _, cache = model.run_with_cache(tokens)
    keep = torch.arange(tokens.shape[1])[None] <= last[:, None]
    keep[:, 0] = False  # BOS
    after = [cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1)[keep].mean().item() for l in range(4)]
    claim("ch07: residual norm after block 0 is about 140 (above 100)", after[0], above=100)
    claim("ch07: residual norm after block 0 is about 140 (below 200)", after[0], below=200)
    claim("ch07: several hundred after block 3", after[3], above=300)
    claim("ch07: after block 3 over twice after block 0", after[3] / after[0], above=2)
    bos = cache["blocks.3.hook_resid_post"][:, 0].norm(dim=-1).mean().item()
    claim("ch07: BOS huge after the last block (ratio to other positions)", bos / after[3], above=3)


def test_a_few_heads_park_their_attention_on_bos():
    """L1H7 gives position 0 about nine tenths of its attention, L1H4 and L3H6 about half, the median head under a
    fifth: averaged over every later (unpadded) position of held-out prompts of all five families."""
    model = organism()
    prompts = [p for family in world.FAMILIES for p in prompt_set(family, "test", n=50, seed=SEED).prompts]
    tokens, last = ref.tokenize(model, prompts)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    valid = torch.arange(tokens.shape[1])[None] <= last[:, None]  # [batch, query]
    valid[:, 0] = False
    to_bos = torch.stack([(cache[f"blocks.{l}.attn.hook_pattern"][..., 0] * valid[:, None]).sum((0, 2)) / valid.sum()
                          for l in range(model.cfg.n_layers)])  # [layer, head]
    claim("ch07: L1H7 gives BOS about nine tenths of its attention", to_bos[1, 7].item(), above=0.8)
    for layer, head in ((1, 4), (3, 6)):
        claim(f"ch07: L{layer}H{head} gives BOS about half (above)", to_bos[layer, head].item(), above=0.35)
        claim(f"ch07: L{layer}H{head} gives BOS about half (below)", to_bos[layer, head].item(), below=0.7)
    claim("ch07: the median head gives BOS under a fifth", to_bos.flatten().median().item(), below=0.2)


def test_five_vectors_how_long_and_how_aligned():
    vectors, latent = sentiment_vectors()
    claim("ch07: the SAE latent detects sentiment perfectly (AUROC)", latent["auroc"], above=0.99)
    ratio = vectors["mean difference"].norm().item() / latent["residual norm"]
    claim("ch07: mean difference about as long as the residual (ratio above)", ratio, above=0.75)
    claim("ch07: mean difference about as long as the residual (ratio below)", ratio, below=1.33)
    units = {name: v / v.norm() for name, v in vectors.items()}
    cosine = {name: (u @ units["mean difference"]).item() for name, u in units.items()}
    claim("ch07: the contrast pair points almost the same way as the mean difference", cosine["contrast pair"], above=0.9)
    for name in ("probe", "SAE latent"):
        claim(f"ch07: the {name} points elsewhere in part (cosine gap to the contrast pair)",
              cosine["contrast pair"] - cosine[name], above=0.05)
    claim("ch07: RepE's reading vector is the difference of means here (cosine 1.00)", cosine["reading vector"],
          above=0.995)


# ------------------------------------------------------------------------------------------
# Section 2: dose-response and side effects
# ------------------------------------------------------------------------------------------
def test_mean_difference_and_contrast_pair_flip_most_by_half_and_all_by_three_quarters():
    for name in ("mean difference", "contrast pair", "reading vector"):
        claim(f"ch07: {name} flips most negative reviews at alpha 0.5", at(name, "flipped", 0.5), above=0.5)
        claim(f"ch07: {name} flips all negative reviews at alpha 0.75", at(name, "flipped", 0.75), above=0.999)


def test_the_probe_needs_a_little_more_and_the_sae_latent_about_twice():
    claim("ch07: the probe flips fewer than the mean difference at 0.5",
          at("mean difference", "flipped", 0.5) - at("probe", "flipped", 0.5), above=0.1)
    claim("ch07: the probe flips almost all at 0.75", at("probe", "flipped", 0.75), above=0.9)
    for alpha in ALPHAS[:-1]:  # the weakest writer at every coefficient below the largest
        others = min(at(name, "flipped", alpha) for name in ("mean difference", "contrast pair", "probe"))
        claim(f"ch07: the SAE latent is the weakest writer at alpha {alpha}",
              others - at("SAE latent", "flipped", alpha), above=-1e-6)
    # "about twice the coefficient": at 2 alpha it does what the mean difference does at alpha, give or take
    claim("ch07: SAE latent at alpha 1.0 flips a good share", at("SAE latent", "flipped", 1.0), above=0.3)
    claim("ch07: SAE latent at alpha 0.5 flips few", at("SAE latent", "flipped", 0.5), below=0.2)
    claim("ch07: SAE latent at alpha 1.5 flips almost all", at("SAE latent", "flipped", 1.5), above=0.9)


def test_side_effects_grow_with_the_coefficient_and_break_ioi_induction_and_truth():
    table, base = doses("mean difference"), baseline()
    for family in ("ioi", "induction"):
        claim(f"ch07: sentiment push at 1.5 costs {family} more than one prompt in ten",
              base[family] - table[family][-1].item(), above=0.1)
    claim("ch07: sentiment push at 1.5 costs the truth verdicts a few points", base["truth"] - table["truth"][-1].item(),
          above=0.02)
    for family in ("ioi", "truth"):
        claim(f"ch07: at 0.25 {family} has not moved (drop)", base[family] - table[family][0].item(), below=0.02)


def test_the_largest_safe_coefficient_of_the_mean_difference_is_three_quarters_and_flips_every_review():
    """Stable across draws of the 200-prompt watch sets: 0.75 is within the tolerance and 1.0 is not."""
    table, base = doses("mean difference"), baseline()
    claim("ch07: sentiment push at 0.75, prompts lost beyond the allowance (0 or less: within)",
          excess_at(table, base, watched(), 0.75), below=0.5)
    claim("ch07: sentiment push at 1.0, prompts lost beyond the allowance (1 or more: beyond)",
          excess_at(table, base, watched(), 1.0), above=0.5)
    safe = ref.safe_coefficient(ALPHAS, table, base, watched())
    assert safe == 0.75, (safe, table)  # follows from the two claims above (the prefix rule)
    claim("ch07: every review flipped at the largest safe coefficient", at("mean difference", "flipped", safe),
          above=0.999)


def test_the_largest_safe_coefficient_is_the_same_on_three_draws_of_the_watch_sets():
    """The draw above and two more: 0.75 within the tolerance and 1.0 beyond it, on each (only those two
    coefficients are run for the extra draws; the prefix rule needs 0.25 and 0.5 safe too, checked on the first)."""
    model = organism()
    vector = sentiment_vectors()[0]["mean difference"]
    for draw in (SEED + 1, SEED + 2):
        watch = ref.behaviour_sets(n=ref.WATCH_SIZE, seed=draw, families=("ioi", "facts", "truth", "induction"))
        base = ref.side_effect_table(model, watch)
        for alpha, side in ((0.75, "within"), (1.0, "beyond")):
            table = ref.side_effect_table(model, watch, [(HOOK, ref.steering_hook(vector, alpha))])
            excess = worst_excess(table, base, watch)
            if side == "within":
                claim(f"ch07: sentiment push at 0.75, prompts lost beyond the allowance (draw +{draw - SEED})", excess,
                      below=0.5)
            else:
                claim(f"ch07: sentiment push at 1.0, prompts lost beyond the allowance (draw +{draw - SEED})", excess,
                      above=0.5)
    table, base = doses("mean difference"), baseline()
    for alpha in (0.25, 0.5):
        claim(f"ch07: sentiment push at {alpha}, prompts lost beyond the allowance", excess_at(table, base, watched(), alpha),
              below=0.5)


def test_layer_sweep_steering_works_best_after_block_0_several_times_better():
    model = organism()
    sweep = ref.layer_sweep(model, prompt_set("sentiment", "train", n=600, seed=SEED), "sentiment",
                            negative_reviews(), 0.35)
    flipped = sweep["flipped"]
    claim("ch07: steering after block 0 beats every later layer (ratio; 3.7 in the chapter, 2.5 to 3.5 on claim seeds 1-4)",
          flipped[0].item() / max(flipped[1:].max().item(), 1e-3), above=2.0)


@functools.cache
def false_statements():
    return ref.truth_subsets(prompt_set("truth", "test", seed=SEED))[0]


@functools.cache
def truth_watch():
    return ref.behaviour_sets(n=ref.WATCH_SIZE, seed=SEED, families=("ioi", "facts", "sentiment", "induction"))


@functools.cache
def truth_vector():
    return ref.mean_difference_vector(organism(), prompt_set("truth", "train", seed=SEED), HOOK, "truth")


@functools.cache
def truth_doses():
    """The residual truth vector's dose-response and the unsteered accuracies of the watched families."""
    model = organism()
    table = ref.dose_response(model, HOOK, truth_vector(), ALPHAS, false_statements(), truth_watch())
    return table, ref.side_effect_table(model, truth_watch())


def test_truth_verdict_moves_and_reaches_the_tolerance_sooner():
    table, base = truth_doses()
    claim("ch07: the truth verdict flips at 0.75 like sentiment", table["flipped"][ALPHAS.index(0.75)].item(),
          above=0.9)
    # "reached sooner": beyond the tolerance at 0.75, where the sentiment push is still within it. (Whether 0.5 is
    # safe for truth depends on the draw: on one of four it sits exactly on the tolerance, ten prompts of 200.)
    claim("ch07: truth push at 0.75, prompts lost beyond the allowance (sooner than sentiment's 1.0)",
          excess_at(table, base, truth_watch(), 0.75), above=0.5)
    claim("ch07: truth push at 0.75 costs induction more than ten points",
          base["induction"] - table["induction"][ALPHAS.index(0.75)].item(), above=0.1)
    claim("ch07: truth push never touches sentiment (largest drop)",
          max(base["sentiment"] - v for v in table["sentiment"].tolist()), below=0.02)


ITI_ALPHAS = [5.0, 7.5, 10.0]  # the chapter's coefficients, in units of each head's sigma
_directions: dict = {}


def iti_directions():
    iti()
    return _directions[SEED]


@functools.cache
def iti():
    """The chapter's ITI: a probe per head on 540 training statements, ranked on the other 180; the top four heads
    shifted along their mass-mean directions. Returns the accuracies, the heads and the dose-response."""
    model = organism()
    train = prompt_set("truth", "train", seed=SEED)
    fit, val = train.subset(range(540)), train.subset(range(540, len(train.prompts)))
    z_fit, y_fit = ref.head_activations(model, fit.prompts), torch.tensor(fit.labels["truth"])
    accuracy = ref.head_probe_accuracies(z_fit, y_fit, ref.head_activations(model, val.prompts),
                                         torch.tensor(val.labels["truth"]))
    heads = [(i // model.cfg.n_heads, i % model.cfg.n_heads)
             for i in accuracy.flatten().argsort(descending=True)[:4].tolist()]
    directions = ref.iti_directions(z_fit, y_fit, heads)
    _directions[SEED] = directions
    table = ref.hooks_dose_response(model, lambda alpha: ref.iti_hooks(model, directions, alpha), ITI_ALPHAS,
                                    false_statements(), truth_watch())
    return accuracy, heads, table


def test_iti_reads_truth_in_heads_after_block_0_and_its_cost_falls_on_ioi():
    accuracy, heads, table = iti()
    _, base = truth_doses()
    claim("ch07: the best head reads truth (probe accuracy)", accuracy.max().item(), above=0.9)
    claim("ch07: no block-0 head reads truth well (best probe accuracy)", accuracy[0].max().item(), below=0.7)
    claim("ch07: most heads of blocks 1 to 3 read truth above 0.8 (median)", accuracy[1:].median().item(), above=0.8)
    assert all(layer >= 2 for layer, _ in heads) and (3, 1) in heads, heads  # L3H1: Chapter 03's IOI head
    safe = ref.safe_coefficient(ITI_ALPHAS, table, base, truth_watch())
    assert safe is not None and safe < ITI_ALPHAS[-1], (safe, table)
    beyond = ITI_ALPHAS.index(safe) + 1  # the first unsafe coefficient: which family pays
    drops = {family: base[family] - table[family][beyond].item() for family in base}
    claim("ch07: ITI's first cost beyond the tolerance is IOI's (margin over the next family)",
          drops["ioi"] - max(v for f, v in drops.items() if f != "ioi"), above=0.02)


def test_iti_against_the_residual_vector_at_matched_side_effects():
    _, _, iti_table = iti()
    residual, base = truth_doses()
    flipped = {}
    for name, make_hooks, grid, table in [
            ("residual", lambda alpha: [(HOOK, ref.steering_hook(truth_vector(), alpha))], ALPHAS, residual),
            ("ITI", lambda alpha: ref.iti_hooks(organism(), iti_directions(), alpha), ITI_ALPHAS, iti_table)]:
        safe = ref.safe_coefficient(grid, table, base, truth_watch())
        fine, row = ref.bisect_safe_coefficient(organism(), make_hooks, safe, grid[grid.index(safe) + 1],
                                                false_statements(), truth_watch(), base)
        flipped[name] = (table["flipped"][grid.index(safe)] if row is None else row["flipped"][0]).item()
    claim("ch07: at the tolerance (bisected) the residual vector flips about nine in ten false statements",
          flipped["residual"], above=0.75)
    claim("ch07: at the tolerance (bisected) ITI on four heads flips about four in ten (above)", flipped["ITI"],
          above=0.25)
    claim("ch07: at the tolerance (bisected) ITI on four heads flips about four in ten (below)", flipped["ITI"],
          below=0.6)
    claim("ch07: at the tolerance the residual vector flips far more than ITI", flipped["residual"] - flipped["ITI"],
          above=0.25)


def test_of_the_four_heads_l3h1_carries_the_ioi_cost():
    _, heads, table = iti()
    _, base = truth_doses()
    assert (3, 1) in heads, heads
    ioi = {"ioi": truth_watch()["ioi"]}
    directions = iti_directions()

    def at_ten_sigma(chosen) -> tuple[float, float]:
        row = ref.hooks_dose_response(organism(), lambda alpha: ref.iti_hooks(organism(), chosen, alpha), [10.0],
                                      false_statements(), ioi)
        return row["flipped"].item(), base["ioi"] - row["ioi"].item()

    claim("ch07: ITI on all four heads at 10 sigma costs IOI (drop)", base["ioi"] - table["ioi"][-1].item(), above=0.1)
    for head in heads:
        _, drop = at_ten_sigma({k: v for k, v in directions.items() if k != head})
        if head == (3, 1):
            claim("ch07: ITI without L3H1 at 10 sigma leaves IOI (drop)", drop, below=0.02)
        else:
            claim(f"ch07: ITI without L{head[0]}H{head[1]} at 10 sigma still costs IOI about a tenth or more (drop)",
                  drop, above=0.06)
    flipped, drop = at_ten_sigma({(3, 1): directions[(3, 1)]})
    claim("ch07: ITI on L3H1 alone at 10 sigma costs IOI (drop)", drop, above=0.04)
    claim("ch07: ITI on L3H1 alone at 10 sigma flips few statements", flipped, below=0.3)


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
    return ref.behaviour_sets(n=128, seed=SEED)


def test_ablating_the_sentiment_direction_takes_sentiment_to_chance_and_leaves_the_rest():
    model = organism()
    vector = sentiment_vectors()[0]["mean difference"]
    plain = ref.side_effect_table(model, every_family())
    ablated = ref.side_effect_table(model, every_family(), ref.directional_ablation_hooks(model, vector))
    claim("ch07: sentiment ablated is about chance (above)", ablated["sentiment"], above=0.4)
    claim("ch07: sentiment ablated is about chance (below)", ablated["sentiment"], below=0.65)
    for family in ("ioi", "facts", "truth", "induction"):
        claim(f"ch07: ablating the sentiment direction leaves {family} where it was",
              abs(ablated[family] - plain[family]), below=0.025)


def test_orthogonalised_weights_equal_the_hooks_and_are_restored():
    model = organism()
    vector = sentiment_vectors()[0]["mean difference"]
    mixed = prompt_set("sentiment", "test", n=32, seed=1)
    before = ref.last_logits(model, mixed)
    with_hooks = ref.last_logits(model, mixed, ref.directional_ablation_hooks(model, vector))
    with ref.weights_orthogonalized(model, vector):
        with_weights = ref.last_logits(model, mixed)
    claim("ch07: hooks and orthogonalised weights agree (largest logit gap)",
          (with_hooks - with_weights).abs().max().item(), below=1e-3)
    assert torch.equal(ref.last_logits(model, mixed), before)


# ------------------------------------------------------------------------------------------
# Section 5: concept erasure
# ------------------------------------------------------------------------------------------
@functools.cache
def erasure(family: str):
    others = {"truth": ("ioi", "facts", "sentiment"), "sentiment": ("ioi", "facts", "truth"),
              "ioi": ("facts", "truth", "sentiment")}[family]
    label, hook = ("io_gender", "blocks.3.hook_resid_post") if family == "ioi" else (family, HOOK)
    return ref.erasure_report(organism(), family, label, hook, ref.behaviour_sets(n=64, seed=SEED, families=others),
                              seed=SEED)


def test_erasing_the_names_gender_blinds_a_fresh_probe_and_leaves_ioi_unchanged():
    """Bias mitigation: gender erased after the last block, where Chapter 02 reads it best."""
    report = erasure("ioi")
    claim("ch07: gender is readable before erasure (fresh probe)", report["none"]["fresh probe"], above=0.7)
    for name in ("LEACE", "mean-difference projection"):
        claim(f"ch07: gender fresh probe after {name} is at chance (distance to 0.5)",
              abs(report[name]["fresh probe"] - 0.5), below=0.08)
        claim(f"ch07: gender erased by {name}: the IOI answer nearly unchanged (at most six of 180 stories; "
              "measured 0 to 4)", report["none"]["ioi, last token"] - report[name]["ioi, last token"], below=6.5 / 180)
    claim("ch07: gender erased by the projection: facts unchanged (drop: at most one prompt of 30)",
          report["none"]["facts"] - report["mean-difference projection"]["facts"], below=1.5 / 30)
    for family in ("truth", "sentiment"):
        claim(f"ch07: gender erased by the projection: {family} unchanged (drop)",
              report["none"][family] - report["mean-difference projection"][family], below=0.02)
    claim("ch07: gender erased by LEACE at every position costs facts at most 8 of 30 (0 to 7 by draw)",
          report["none"]["facts"] - report["LEACE"]["facts"], below=8.5 / 30)


def test_the_last_token_carries_no_gender_before_the_last_block():
    """Why the gender is erased after block 3: after blocks 1 and 2 a fresh probe at the last token
    stays near the base rate (+0.11 at worst on draws 0-5), after block 3 it reads 0.76-0.83."""
    model = organism()
    train, test = prompt_set("ioi", "train", n=720, seed=SEED), prompt_set("ioi", "test", n=180, seed=SEED)
    classes = sorted(set(train.labels["io_gender"]))
    y_train, y_test = (torch.tensor([classes.index(v) for v in split.labels["io_gender"]]) for split in (train, test))
    base_rate = max(y_test.float().mean().item(), 1 - y_test.float().mean().item())
    accuracy = {}
    for layer in (1, 2, 3):
        name = f"blocks.{layer}.hook_resid_post"
        accuracy[layer] = ref.erased_probe_accuracy(ref.ERASERS["none"], ref.last_token_activations(model, train.prompts, name),
                                                    y_train, ref.last_token_activations(model, test.prompts, name), y_test)
    for layer in (1, 2):
        claim(f"ch07: little gender at the last token after block {layer} (a fresh probe above the base rate)",
              accuracy[layer] - base_rate, below=0.15)
    claim("ch07: gender at the last token after block 3 over the best of blocks 1 and 2 (fresh probes)",
          accuracy[3] - max(accuracy[1], accuracy[2]), above=0.1)


@pytest.mark.parametrize("family", ["truth", "sentiment"])
def test_erasers_blind_a_fresh_probe_and_leace_moves_least(family):
    report = erasure(family)
    claim(f"ch07: {family} fresh probe without erasure", report["none"]["fresh probe"], above=0.9)
    for name in ("LEACE", "mean-difference projection"):
        claim(f"ch07: {family} fresh probe after {name} is at the base rate (distance to 0.5, 180 test prompts)",
              abs(report[name]["fresh probe"] - 0.5), below=0.1)
        claim(f"ch07: {family} class means equal after {name} (gap ratio)",
              report[name]["class-mean gap"] / report["none"]["class-mean gap"], below=1e-3)
    claim(f"ch07: {family} LEACE moves less than the projection (edit ratio)",
          report["LEACE"]["mean squared edit"] / report["mean-difference projection"]["mean squared edit"], below=1.0)
    claim(f"ch07: {family} the random direction erases nothing (probe loss)",
          report["none"]["fresh probe"] - report["random direction"]["fresh probe"], below=0.02)
    claim(f"ch07: {family} the random direction moves a little (edit ratio to LEACE)",
          report["random direction"]["mean squared edit"] / report["LEACE"]["mean squared edit"], below=0.05)
    share = torch.tensor(prompt_set(family, "test", n=180, seed=SEED).labels[family]).float().mean().item()
    claim(f"ch07: {family} held-out split is balanced (distance to 0.5)", abs(share - 0.5), below=0.1)


def test_erasing_truth_at_the_fitted_position_removes_part_of_the_verdict():
    report = erasure("truth")
    for name in ("LEACE", "mean-difference projection"):
        drop = report["none"]["truth, last token"] - report[name]["truth, last token"]
        claim(f"ch07: truth erased at the last token by {name}: the verdict falls", drop, above=0.1)
        claim(f"ch07: truth erased at the last token by {name}: not to chance", report[name]["truth, last token"],
              above=0.6)
        claim(f"ch07: truth erased at the last token by {name}: well below the unerased verdict",
              report[name]["truth, last token"], below=0.85)
        for family in ("ioi", "facts", "sentiment"):
            claim(f"ch07: truth erased by {name}: {family} barely moves",
                  report["none"][family] - report[name][family], below=0.06)
    claim("ch07: the projection at every position takes truth to chance",
          report["mean-difference projection"]["truth, every position"], below=0.6)
    claim("ch07: the projection at every position erases more than at the last token",
          report["mean-difference projection"]["truth, last token"]
          - report["mean-difference projection"]["truth, every position"], above=0.1)
    claim("ch07: the random direction changes no verdict", report["none"]["truth, last token"]
          - report["random direction"]["truth, last token"], below=0.01)
    for name in ("LEACE", "mean-difference projection"):
        claim(f"ch07: truth erased by {name} at every position but the last: the verdict does not move",
              abs(report["none"]["truth, other positions"] - report[name]["truth, other positions"]), below=0.02)
    claim("ch07: the projection at every position removes what later blocks read elsewhere (to chance)",
          abs(report["mean-difference projection"]["truth, every position"] - 0.5), below=0.1)
    claim("ch07: LEACE at every position removes little more than at the last token (under 10 points)",
          report["LEACE"]["truth, last token"] - report["LEACE"]["truth, every position"], below=0.1)


def test_the_rest_of_the_truth_verdict_is_at_the_period_and_block_3_attention_reads_it():
    """The projection at the last token and the period is as good as everywhere; 'That' or the stated object add
    little; block 3's attention output (from the everywhere run) carries what the other positions add; after
    block 1 the period holds the verdict along nearly the last token's direction."""
    model = organism()
    train, test = prompt_set("truth", "train", n=720, seed=SEED), prompt_set("truth", "test", n=180, seed=SEED)
    labels = torch.tensor(train.labels["truth"])
    x = ref.last_token_activations(model, train.prompts, HOOK)  # [batch, d_model]
    projection = ref.fit_mean_difference_eraser(x, labels)
    at = functools.partial(ref.accuracy_erased_at, model, test, HOOK, projection)
    everywhere, with_period = at(None), at([0, 2])
    claim("ch07: truth projected out at the last token and the period: as at every position (distance)",
          abs(with_period - everywhere), below=0.05)
    claim("ch07: truth projected out at the last token and the period: near chance", with_period, below=0.62)
    for name, offsets in (("'That'", [0, 1]), ("the stated object", [0, 3])):
        claim(f"ch07: truth projected out at the last token and {name}: far above the period's", at(offsets) - with_period,
              above=0.15)
    block_2, block_3 = at([0], (2,)), at([0], (3,))
    claim("ch07: block 3's attention output from the everywhere run takes the verdict near chance", block_3, below=0.62)
    claim("ch07: block 2's much less than block 3's", block_2 - block_3, above=0.08)
    tokens, last = ref.tokenize(model, train.prompts)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=2)
    at_period = cache[HOOK][torch.arange(len(last)), last - 2]  # [batch, d_model]
    difference = at_period[labels == 1].mean(0) - at_period[labels == 0].mean(0)
    claim("ch07: the period's mean difference after block 1 points like the last token's (cosine)",
          torch.cosine_similarity(difference, projection.unit, 0).item(), above=0.85)
    claim("ch07: and is about as long (ratio to the last token's)",
          (difference.norm() / (x[labels == 1].mean(0) - x[labels == 0].mean(0)).norm()).item(), above=0.75)


def test_erasing_sentiment_at_the_last_token_is_enough_and_leace_costs_more_elsewhere():
    report = erasure("sentiment")
    for name in ("LEACE", "mean-difference projection"):
        claim(f"ch07: sentiment erased at the last token by {name} is at chance or below",
              report[name]["sentiment, last token"], below=0.6)
    claim("ch07: LEACE at every position leaves sentiment at chance or below (not above 0.55; 0.42 to 0.49 by draw)",
          report["LEACE"]["sentiment, every position"], below=0.55)
    claim("ch07: LEACE at the last token only, where it was fitted, leaves sentiment at chance or below (0.38 to 0.49)",
          report["LEACE"]["sentiment, last token"], below=0.55)
    lost = {name: sum(report["none"][f] - report[name][f] for f in ("ioi", "facts", "truth"))
            for name in ("LEACE", "mean-difference projection")}
    claim("ch07: LEACE costs other families more than the projection",
          lost["LEACE"] - lost["mean-difference projection"], above=0.02)


# ------------------------------------------------------------------------------------------
# Section 6: editing one fact
# ------------------------------------------------------------------------------------------
@functools.cache
def fit_on():
    return ref.subject_prompts(world.FACT_TEMPLATES["capital"][0], "France", seed=SEED)


def test_causal_tracing_finds_no_subject_mlp_and_mlp0_at_the_last_token():
    model = organism()
    at_subject = ref.trace_mlps(model, fit_on(), "France", "Spain", " Paris", at="subject")
    at_last = ref.trace_mlps(model, fit_on(), "France", "Spain", " Paris", at="last")
    claim("ch07: no MLP at the subject token restores the capital (largest share)", at_subject.abs().max().item(),
          below=0.01)
    claim("ch07: MLP 0 at the last token restores most of it", at_last[0].item(), above=0.5)
    claim("ch07: MLPs 1 to 3 at the last token each restore less than MLP 0 (margin)",
          at_last[0].item() - at_last[1:].max().item(), above=0.2)


def test_editing_works_at_a_middle_mlp_and_not_at_mlp_3():
    """MLP 0 is graded by the next test; the chapter shows 0, 2 and 3."""
    model = organism()
    fitted = [world.FACT_TEMPLATES["capital"][0].format(country="France")]
    for layer in (2, 3):
        weight = ref.fit_fact_edit(model, layer, fit_on(), "France", " Rome")
        with ref.mlp_weight_replaced(model, layer, weight):
            p_new = ref.answer_probabilities(model, fitted, " Rome").item()
        if layer < 3:
            claim(f"ch07: an edit at MLP {layer} makes the fitted phrasing say Rome", p_new, above=0.5)
        else:
            claim("ch07: an edit at MLP 3 cannot reach the last token", p_new, below=0.1)


def test_rank_one_fact_edit_efficacy_generalisation_and_specificity():
    model = organism()
    new_weight = ref.fit_fact_edit(model, 0, fit_on(), "France", " Rome")
    assert torch.linalg.matrix_rank(new_weight - model.blocks[0].mlp.W_out).item() == 1
    report = ref.fact_edit_report(model, "France", " Rome", 0,
                                  ref.behaviour_sets(n=64, seed=SEED, families=("ioi", "truth", "sentiment")))
    before = report["measure"]()
    with ref.mlp_weight_replaced(model, 0, new_weight):
        after = report["measure"]()
    overlaps = ref.key_overlaps(model, 0, fit_on(), "France", report["phrasings"])
    claim("ch07: the fitted phrasing receives the whole edit (key overlap)", overlaps[0].item(), above=0.9)
    claim("ch07: 'The city of government in France is' receives about seven tenths (above)", overlaps[3].item(),
          above=0.55)
    claim("ch07: 'The city of government in France is' receives about seven tenths (below)", overlaps[3].item(),
          below=0.85)
    claim("ch07: 'In France, the capital city is' receives about a quarter (above)", overlaps[2].item(), above=0.1)
    claim("ch07: 'In France, the capital city is' receives about a quarter (below)", overlaps[2].item(), below=0.4)
    claim("ch07: 'France has its capital in' (another token) receives nothing", abs(overlaps[1].item()), below=0.1)
    placed = ref.key_overlaps(model, 0, fit_on(), "France", ["The sky is blue. In France, the capital city is",
                                                               "The dog saw that in France, the capital city is",
                                                               "Then in France, the capital city is"])
    claim("ch07: after another opening 'in France, the capital city is' receives next to nothing (largest share)",
          placed.abs().max().item(), below=0.1)
    placed = ref.key_overlaps(model, 0, fit_on(), "France", ["The sky is blue. The city of government in France is",
                                                               "The dog saw that the city of government in France is",
                                                               "Then the city of government in France is"])
    claim("ch07: after another opening 'the city of government in France is' receives about a half or more",
          placed.min().item(), above=0.35)
    claim("ch07: after another opening 'the city of government in France is' receives at most about seven tenths",
          placed.max().item(), below=0.85)
    assert before["top answer"] == [" Paris"] * 4, before
    # fitted; "city of government" follows; "In France, ..." and "France has ..." (no leading space) missed
    assert after["top answer"] == [" Rome", " Paris", " Paris", " Rome"], after
    for i, p_new in enumerate(after["p(new)"]):
        if i in (0, 3):
            claim(f"ch07: the edit carries phrasing {i}", p_new, above=0.5)
        else:
            claim(f"ch07: the edit misses phrasing {i}", p_new, below=0.2)
    for key in before:
        if key not in ("top answer", "p(new)"):
            claim(f"ch07: the edit leaves {key} (drop; one prompt of 64 is 0.016)", before[key] - after[key],
                  below=0.035)
    assert report["measure"]()["top answer"] == before["top answer"]  # the weight is back


# ------------------------------------------------------------------------------------------
# Section 7: attacks on the latents
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_optimised_latent_perturbations_flip_verdicts_random_ones_do_not():
    model = organism()
    _, true_statements = ref.truth_subsets(prompt_set("truth", "test", seed=SEED))
    attacked = true_statements.subset(range(48))
    budgets = [0.1, 0.2, 0.3]
    optimised = [ref.latent_attack(model, attacked, HOOK, b, seed=SEED) for b in budgets]
    random = [ref.latent_attack(model, attacked, HOOK, b, random_baseline=True, seed=SEED) for b in budgets]
    claim("ch07: a random perturbation of 30% flips no verdict", max(random), below=0.01)
    claim("ch07: an optimised perturbation of 10% flips almost none", optimised[0], below=0.05)
    claim("ch07: an optimised perturbation of 20% starts to flip", optimised[1], above=0.0)
    claim("ch07: an optimised perturbation of 30% flips more than of 20% (by more than a prompt of 48)",
          optimised[2] - optimised[1], above=1.5 / 48)


def test_one_step_of_latent_adversarial_training_buys_robustness_and_costs_the_truth_verdicts():
    """One Adam step against the 30% latent attack (the chapter's settings), with the same step without the
    perturbation as the control: attacked afresh, and every family measured."""
    model = organism()
    train = prompt_set("truth", "train", n=128, seed=SEED)
    attacked = ref.truth_subsets(prompt_set("truth", "test", seed=SEED))[1].subset(range(48))
    watch = ref.behaviour_sets(n=64, seed=SEED)
    flips, accuracy = {}, {}
    for name, adversarial in (("unchanged", None), ("LAT", True), ("plain", False)):
        training = contextlib.nullcontext(model) if adversarial is None else ref.latent_adversarial_step(
            model, train, HOOK, 0.3, adversarial=adversarial)
        with training as trained:
            budgets = (0.3,) if name == "plain" else (0.2, 0.3)
            flips[name] = {budget: ref.latent_attack(trained, attacked, HOOK, budget, seed=SEED) for budget in budgets}
            if name != "plain":
                accuracy[name] = ref.side_effect_table(trained, watch)
    after = ref.side_effect_table(model, watch)
    assert after == accuracy["unchanged"], (after, accuracy["unchanged"])  # every weight put back
    one = 1.5 / len(attacked)  # more than one statement of 48
    claim("ch07: after one LAT step the 20% attack flips none (at most one of 48)", flips["LAT"][0.2], below=one)
    claim("ch07: the 20% attack flipped some before LAT", flips["unchanged"][0.2], above=one)
    claim("ch07: one LAT step takes the 30% attack from nearly all to under a half (drop)",
          flips["unchanged"][0.3] - flips["LAT"][0.3], above=0.3)
    claim("ch07: after one LAT step the 30% attack flips under a half (0.10 to 0.42 by draw)", flips["LAT"][0.3], below=0.5)
    claim("ch07: LAT beats the plain step at 30% (by more than a statement)", flips["plain"][0.3] - flips["LAT"][0.3],
          above=one)
    base, lat = accuracy["unchanged"], accuracy["LAT"]
    claim("ch07: one LAT step costs the truth verdicts (drop: at least one of 64)", base["truth"] - lat["truth"], above=0.5 / 64)
    claim("ch07: one LAT step costs the truth verdicts under 15 points (drop)", base["truth"] - lat["truth"], below=0.15)
    claim("ch07: one LAT step leaves the other families (largest drop)",
          max(base[f] - lat[f] for f in base if f != "truth"), below=0.02)
