"""Chapter 05's claims about SAEs, the organism and the shipped organism SAE, re-measured.

The toy claims train the chapter's own reference code with the chapter's settings. The organism
claims read the shipped SAE (`utils/organism/sae/`) and train the chapter's short-recipe SAEs, so
every number the prose states is re-measured with the functions the learner writes. Each claim
goes through `claim(...)` with a margin, and every random choice it depends on (toy features, SAE
initialisations, data order, prompt samples, the halves that select and score a latent) adds
`claim_seed()`, so `make claims` can rerun them under other seeds.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from tests.claims import claim, claim_seed
from utils.organism import sae as organism_sae
from utils.references import ch05_saes as ref

torch.set_num_threads(1)  # small matrices: one thread is fastest, as in the chapter
SEED = claim_seed()


# ------------------------------------------------------------------------------------------
# Section 1: the toy
# ------------------------------------------------------------------------------------------
def _l2_ratio_where(sae, features, seed: int, fewest: int, most: int) -> float:
    """The L2 ratio on fresh toy examples with between `fewest` and `most` true features active."""
    h, x = ref.toy_batch(8192, features, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        h_hat, _ = sae(h)
    active = (x > 0).sum(-1)  # [batch]
    where = (active >= fewest) & (active <= most)
    return (h_hat[where].norm(dim=-1) / h[where].norm(dim=-1)).median().item()  # as toy_report, the median


@pytest.fixture(scope="module")
def toy():
    features = ref.toy_features(seed=SEED)
    reports = {f"L1 {l1}": ref.toy_report(ref.train_toy_sae(features, l1=l1, seed=SEED), features, seed=123 + SEED)
               for l1 in ref.TOY_L1S}
    for k in ref.TOY_KS:
        sae = ref.train_toy_sae(features, k=k, seed=SEED)
        reports[f"TopK {k}"] = ref.toy_report(sae, features, seed=123 + SEED)
        reports[f"TopK {k}"]["L2 ratio, one feature on"] = _l2_ratio_where(sae, features, 123 + SEED, 1, 1)
    return reports


def _l1(toy, index):
    return toy[f"L1 {ref.TOY_L1S[index]}"]


def test_tiny_l1_finds_the_directions_but_no_sparse_code(toy):
    true_l0 = ref.TOY_FEATS * ref.TOY_PROBABILITY
    tiny = _l1(toy, 0)
    claim("ch05 toy: tiny L1 recovers the true directions (mean max cosine)", tiny["recovery"], above=0.9)
    claim("ch05 toy: tiny L1's L0 over the true L0 ('a couple of dozen')", tiny["L0"] / true_l0, above=5)
    claim("ch05 toy: tiny L1 explained variance", tiny["explained variance"], above=0.95)


def test_l1_buys_sparsity_with_shrinkage(toy):
    l0s = [_l1(toy, i)["L0"] for i in range(len(ref.TOY_L1S))]
    ratios = [_l1(toy, i)["L2 ratio"] for i in range(len(ref.TOY_L1S))]
    claim("ch05 toy: L0 falls at every step of the L1 sweep (smallest drop)",
          min(a - b for a, b in zip(l0s, l0s[1:])), above=0)
    claim("ch05 toy: the L2 ratio falls at every step of the L1 sweep (smallest drop)",
          min(a - b for a, b in zip(ratios, ratios[1:])), above=0)
    sparse = _l1(toy, -1)  # L0 near the true one: much too short, much variance lost
    claim("ch05 toy: strongest L1's L0 over the true L0", sparse["L0"] / (ref.TOY_FEATS * ref.TOY_PROBABILITY), below=2)
    claim("ch05 toy: strongest L1's L2 ratio ('much too short')", sparse["L2 ratio"], below=0.8)
    claim("ch05 toy: strongest L1's explained variance ('much ... lost')", sparse["explained variance"], below=0.6)


def test_nearly_no_l1_sae_dies_with_this_initialisation(toy):
    worst = max(_l1(toy, i)["dead fraction"] for i in range(len(ref.TOY_L1S)))
    claim("ch05 toy: dead fraction of the L1 SAEs ('at most one or two of 96')", worst, below=2.5 / ref.TOY_D_SAE)


def test_topk_beats_l1_at_the_same_sparsity_but_loses_latents(toy):
    topk = toy[f"TopK {ref.TOY_KS[-1]}"]
    l1 = min((_l1(toy, i) for i in range(len(ref.TOY_L1S))), key=lambda r: abs(r["L0"] - topk["L0"]))
    claim("ch05 toy: TopK k=4 minus the L1 SAE of closest L0, explained variance",
          topk["explained variance"] - l1["explained variance"], above=0.03)
    claim("ch05 toy: TopK k=4 minus the L1 SAE of closest L0, L2 ratio ('shrinks less')", topk["L2 ratio"] - l1["L2 ratio"],
          above=0.1)
    claim("ch05 toy: TopK k=4 minus the L1 SAE of closest L0, recovery ('at least as well')",
          topk["recovery"] - l1["recovery"], above=-0.01)
    for k in ref.TOY_KS:
        assert toy[f"TopK {k}"]["L0"] <= k + 1e-6, toy  # exact, by construction
        claim(f"ch05 toy: TopK k={k} dead fraction ('about a fifth to a third')", toy[f"TopK {k}"]["dead fraction"],
              above=0.15)


def test_topk_shortfall_is_not_the_cut_at_k(toy):
    _, x = ref.toy_batch(8192, ref.toy_features(seed=SEED), generator=torch.Generator().manual_seed(123 + SEED))
    active = (x > 0).sum(-1)  # [batch]: true features on in each example
    claim("ch05 toy: share of examples with more than 2 features on ('about 17%'), from above",
          (active > 2).float().mean(), above=0.12)
    claim("ch05 toy: share of examples with more than 2 features on ('about 17%'), from below",
          (active > 2).float().mean(), below=0.22)
    claim("ch05 toy: share of examples with more than 4 features on ('under 2%')", (active > 4).float().mean(),
          below=0.02)
    ratios = [toy[f"TopK {k}"]["L2 ratio"] for k in ref.TOY_KS]
    claim("ch05 toy: |L2 ratio at k=2 - at k=4| ('nearly the same')", abs(ratios[0] - ratios[1]), below=0.05)
    for k in ref.TOY_KS:
        claim(f"ch05 toy: TopK k={k} L2 ratio on single-feature examples ('come out short too')",
              toy[f"TopK {k}"]["L2 ratio, one feature on"], below=0.97)


# ------------------------------------------------------------------------------------------
# The organism and the shipped SAE
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    from utils.models import load_model

    return load_model(device="cpu", verbose=False)


@pytest.fixture(scope="module")
def held(model):
    return organism_sae.held_out_data(model)


@pytest.fixture(scope="module")
def shipped():
    return organism_sae.load_organism_sae()


@pytest.fixture(scope="module")
def card():
    return organism_sae.load_card_metrics()


@pytest.fixture(scope="module")
def train_rows(model):
    return organism_sae.world_rows(model.tokenizer, ref.TRAIN_TOKENS, organism_sae.TRAIN_SEED)


@pytest.fixture(scope="module")
def train_acts(model, train_rows):
    return organism_sae.cache_activations(model, train_rows, progress=False)[0]


@pytest.fixture(scope="module")
def our_saes(train_acts):
    """The chapter's two short-recipe SAEs of Section 2: TopK k=32 and L1 at the matched coefficient."""
    topk, _ = ref.train_organism_sae(train_acts, k=32, seed=SEED, progress_bar=False)
    l1, _ = ref.train_organism_sae(train_acts, k=None, l1=ref.ORGANISM_L1, seed=SEED, progress_bar=False)
    return {"topk": topk, "l1": l1}


def test_shipped_sae_loads_in_saelens_format(shipped):
    from sae_lens import TopKSAE

    assert (organism_sae.SAE_DIR / "cfg.json").exists() and (organism_sae.SAE_DIR / "sae_weights.safetensors").exists()
    assert isinstance(shipped, TopKSAE)
    assert shipped.cfg.d_sae == organism_sae.RECIPE["d_sae"] and shipped.cfg.k == organism_sae.RECIPE["k"]
    assert shipped.cfg.metadata.hook_name in (None, organism_sae.HOOK_NAME)
    size = sum(path.stat().st_size for path in organism_sae.SAE_DIR.iterdir())
    assert size < 5 * 2 ** 20, size


def test_card_meets_the_bars_and_matches_a_fresh_measurement(held, shipped, card):
    _, activations, _ = held
    measured = ref.organism_metrics(shipped, activations)  # the learner's definitions
    claim("ch05 shipped SAE: explained variance over the card's bar", measured["explained_variance"],
          above=organism_sae.BARS["explained_variance"])
    assert measured["l0"] <= organism_sae.BARS["l0"] + 1e-6, measured  # TopK with k = 32: by construction
    claim("ch05 shipped SAE: dead fraction under the card's bar", measured["dead_fraction"],
          below=organism_sae.BARS["dead_fraction"])
    for key in ("explained_variance", "l0", "l2_ratio", "dead_fraction"):  # the card is this measurement
        assert measured[key] == pytest.approx(card[key], abs=0.005), (key, measured, card)
    assert measured["mse"] == pytest.approx(card["mse"], rel=0.01), (measured, card)
    assert card["meets_bars"]
    text = (organism_sae.SAE_DIR / "README.md").read_text()
    assert f"{card['explained_variance']:.3f}" in text and f"{card['ce_loss_recovered']:.3f}" in text


def test_explained_variance_agrees_with_saelens(held, shipped):
    from sae_lens.evals import ExplainedVarianceCalculator

    activations = held[1]
    calculator = ExplainedVarianceCalculator()
    with torch.no_grad():
        calculator.add_batch(sae_output=shipped.decode(shipped.encode(activations)), hidden_acts=activations)
    assert calculator.compute() == pytest.approx(ref.organism_metrics(shipped, activations)["explained_variance"], abs=1e-4)


def test_spliced_sae_recovers_nearly_all_of_the_loss(model, held, shipped, card):
    rows, _, _ = held
    tokens = rows[:32]
    keep = organism_sae.kept_positions(tokens, model.tokenizer.eos_token_id)
    recovered = ref.ce_loss_recovered(model, shipped, tokens, keep, organism_sae.HOOK_NAME)
    claim("ch05 shipped SAE: CE loss recovered", recovered, above=0.95)
    assert recovered == pytest.approx(card["ce_loss_recovered"], abs=0.02), (recovered, card)
    claim("ch05: zeroing the stream after block 1 (loss zeroed / clean)", card["zero"] / card["clean"], above=3)


def test_start_positions_are_outliers_and_the_mean_is_far_from_zero(model):
    rows = organism_sae.world_rows(model.tokenizer, 2 ** 13, seed=organism_sae.HELD_OUT_SEED + 100 * SEED)
    stored = []
    with torch.no_grad():
        model.run_with_hooks(rows, stop_at_layer=2,
                             fwd_hooks=[(organism_sae.HOOK_NAME, lambda a, hook: stored.append(a.detach()))])
    norms = stored[0].norm(dim=-1)  # [row, pos]
    keep = organism_sae.kept_positions(rows, model.tokenizer.eos_token_id)
    typical = norms[keep].mean()
    claim("ch05: norm at a row's first position over the typical norm ('larger')", norms[:, 0].mean() / typical,
          above=1.05)
    claim("ch05: norm at end-of-text over the typical norm ('smaller')",
          norms[rows == model.tokenizer.eos_token_id].mean() / typical, below=0.9)
    ratio = stored[0][keep].mean(0).norm() / typical
    claim("ch05: the mean's norm over a typical norm ('about half'), from above", ratio, above=0.3)
    claim("ch05: the mean's norm over a typical norm ('about half'), from below", ratio, below=0.7)


def test_our_l1_sae_at_matched_l0_shrinks_and_recovers_less_loss(model, held, our_saes):
    rows, held_acts, _ = held
    topk, l1 = (ref.organism_metrics(our_saes[name], held_acts) for name in ("topk", "l1"))
    claim("ch05 organism: the L1 SAE's L0 ('near TopK's 32'), from above", l1["l0"], above=16)
    claim("ch05 organism: the L1 SAE's L0 ('near TopK's 32'), from below", l1["l0"], below=48)
    claim("ch05 organism: TopK minus L1 SAE, L2 ratio ('well below')", topk["l2_ratio"] - l1["l2_ratio"], above=0.1)
    claim("ch05 organism: TopK minus L1 SAE, explained variance ('much less')",
          topk["explained_variance"] - l1["explained_variance"], above=0.1)
    claim("ch05 organism: |1 - TopK's L2 ratio|", abs(1 - topk["l2_ratio"]), below=0.05)
    keep = organism_sae.kept_positions(rows[:16], model.tokenizer.eos_token_id)
    recovered = {name: ref.ce_loss_recovered(model, sae, rows[:16], keep, organism_sae.HOOK_NAME)
                 for name, sae in our_saes.items()}
    claim("ch05 organism: TopK minus L1 SAE, CE loss recovered ('clearly less')", recovered["topk"] - recovered["l1"],
          above=0.05)
    claim("ch05 organism: our TopK SAE's CE loss recovered ('nearly all')", recovered["topk"], above=0.97)
    claim("ch05 organism: the L1 SAE's CE loss recovered ('about five sixths'), from above", recovered["l1"], above=0.7)
    claim("ch05 organism: the L1 SAE's CE loss recovered ('about five sixths'), from below", recovered["l1"], below=0.92)


def test_saelens_standard_sae_stays_dense_in_100_steps(held):
    _, held_acts, _ = held  # a short run on held-out activations: what the chapter says of the library's L1 SAE
    standard = organism_sae.train_with_sae_lens(held_acts, "standard", l1_coefficient=200.0, steps=100,
                                                seed=SEED, progress=False)
    claim("ch05 organism: SAELens's standard SAE after 100 steps, L0 ('in the hundreds')",
          ref.organism_metrics(standard, held_acts)["l0"], above=100)


@pytest.mark.slow
def test_frontier_rises_with_k_and_topk_lies_above_l1(train_acts, held, our_saes):
    held_acts = held[1]
    topk = {32: ref.organism_metrics(our_saes["topk"], held_acts)}
    for k in (8, 128):
        topk[k] = ref.organism_metrics(ref.train_organism_sae(train_acts, k=k, seed=SEED, progress_bar=False)[0], held_acts)
    denser_l1 = ref.organism_metrics(ref.train_organism_sae(train_acts, k=None, l1=ref.ORGANISM_L1 / 2, seed=SEED,
                                                            progress_bar=False)[0], held_acts)
    variance = [topk[k]["explained_variance"] for k in (8, 32, 128)]
    claim("ch05 frontier: explained variance rises with k (smallest rise)", min(b - a for a, b in zip(variance, variance[1:])),
          above=0)
    claim("ch05 frontier: the denser L1 SAE's L0 over TopK k=32's", denser_l1["l0"] / 32, above=1.5)
    claim("ch05 frontier: TopK k=32 minus the denser L1 SAE, explained variance",
          topk[32]["explained_variance"] - denser_l1["explained_variance"], above=0.02)


def test_shipped_sae_has_a_few_percent_of_dense_latents(held, shipped):
    density = ref.firing_frequencies(shipped, held[1])
    dense = (density > 0.1).float().mean().item()
    claim("ch05 shipped SAE: fraction of dense latents ('about 7%'), from above", dense, above=0.03)
    claim("ch05 shipped SAE: fraction of dense latents ('about 7%'), from below", dense, below=0.12)
    claim("ch05 shipped SAE: median firing frequency, from above", density.median(), above=0.003)
    claim("ch05 shipped SAE: median firing frequency, from below", density.median(), below=0.1)


def test_ce_check_shows_the_digits_of_a_gap_beyond_tolerance():
    import re

    from utils.checks import WRONG, grade

    def off_by_a_little(model, sae, tokens, keep, hook_name):
        return ref.ce_loss_recovered(model, sae, tokens, keep, hook_name) + 0.0015  # three times the tolerance

    verdict = grade("5.7", off_by_a_little)
    assert verdict.status == WRONG, verdict
    got, expected = re.search(r"got (-?[\d.]+), expected (-?[\d.]+)", verdict.message).groups()
    assert got != expected, verdict  # the printed numbers show the gap


# ------------------------------------------------------------------------------------------
# Section 4: recovery of known features
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def context(model):
    return ref.context_label_data(model, seed=SEED)


@pytest.fixture(scope="module")
def recovery(model, held, shipped, train_rows, our_saes, context):
    _, held_acts, held_tokens = held
    baseline = ref.random_init_model(seed=SEED)
    baseline_acts, _ = organism_sae.cache_activations(baseline, train_rows[:256], progress=False)  # as the chapter
    baseline_sae, _ = ref.train_organism_sae(baseline_acts, k=32, seed=SEED, progress_bar=False)
    baseline_held, _ = organism_sae.cache_activations(baseline, held[0][:64], progress=False)
    n = ref.DETECTION_TOKENS
    masks = ref.token_label_masks(held_tokens, model.tokenizer)
    baseline_context = ref.context_label_data(baseline, seed=SEED)
    label_data = {**{name: (held_acts[:n], mask[:n]) for name, mask in masks.items()}, **context}
    baseline_x = {**{name: baseline_held[:n] for name in masks}, **{name: x for name, (x, _) in baseline_context.items()}}
    return ref.detection_table(label_data, {"shipped": (shipped, None), "ours": (our_saes["topk"], None),
                                            "untrained": (baseline_sae, baseline_x)}, seed=SEED)


TOKEN_LABELS = list(ref.TOKEN_LABELS)
def test_untrained_models_sae_is_near_chance_and_ours_is_well_above_it(recovery):
    for label in TOKEN_LABELS:
        claim(f"ch05 detection: untrained model's SAE on '{label}' ('close to chance, 0.5 to about 0.7')",
              recovery.loc[label, "untrained"], below=0.75)
        claim(f"ch05 detection: our organism SAE minus the untrained model's (same recipe) on '{label}'",
              recovery.loc[label, "ours"] - recovery.loc[label, "untrained"], above=0.1)


def test_word_classes_are_not_single_latents(recovery):
    for label in ("country", "capital", "language", "female name", "male name"):
        claim(f"ch05 detection: probe minus the shipped SAE's best latent on '{label}' ('well below')",
              recovery.loc[label, "linear probe"] - recovery.loc[label, "shipped"], above=0.05)
        claim(f"ch05 detection: the probe on '{label}' ('almost perfectly')", recovery.loc[label, "linear probe"],
              above=0.95)


def test_the_best_latent_is_no_better_than_the_best_raw_dimension_on_most_labels(recovery):
    difference = recovery["shipped"] - recovery["best residual dimension"]
    for label in ("positive adjective", "negative adjective", "colour"):
        claim(f"ch05 detection: latent minus raw dimension on '{label}' ('clearly above')", difference[label],
              above=0.03)
    for label in ("country", "continent", "truth", "sentiment", "asks for a capital"):
        claim(f"ch05 detection: |latent minus raw dimension| on '{label}' ('about equal')", abs(difference[label]),
              below=0.06)
    for label in ("capital", "language", "female name", "male name", "day", "country in Europe"):
        claim(f"ch05 detection: raw dimension minus latent on '{label}' ('below it')", -difference[label], above=0)
    claim("ch05 detection: labels where the latent is not clearly above the raw dimension ('most')",
          int((difference < 0.03).sum()), above=len(difference) / 2)


def test_too_easy_labels(recovery):
    claim("ch05 detection: one raw dimension on 'sentiment' ('perfectly')",
          recovery.loc["sentiment", "best residual dimension"], above=0.99)
    claim("ch05 detection: one raw dimension on 'asks for a capital' ('nearly so')",
          recovery.loc["asks for a capital", "best residual dimension"], above=0.95)
    claim("ch05 detection: the untrained model's SAE on 'asks for a capital' ('well above chance')",
          recovery.loc["asks for a capital", "untrained"], above=0.7)


def test_io_gender_is_not_computed_after_block_1(recovery):
    for column in ("best residual dimension", "shipped", "ours", "untrained", "linear probe"):
        claim(f"ch05 detection: '{column}' on 'io is female' ('near chance')", recovery.loc["io is female", column],
              below=0.68)


def test_probe_is_the_ceiling(recovery):
    for column in ("shipped", "ours"):
        claim(f"ch05 detection: smallest margin of the probe over the '{column}' column ('a few hundredths', "
              "'up to 0.05')", (recovery["linear probe"] - recovery[column]).min(), above=-0.06)


# ------------------------------------------------------------------------------------------
# Section 4: detection is not use
# ------------------------------------------------------------------------------------------
def test_zeroing_the_best_sentiment_latent_barely_moves_the_answer(model, shipped, context):
    x, y = context["sentiment"]
    with torch.no_grad():
        codes = shipped.encode(x)
    first, second = ref.halves(len(y), SEED)
    auroc, latent = ref.best_column_auroc(codes[first], y[first], codes[second], y[second])
    claim("ch05 sentiment: the best latent's held-out AUROC ('perfectly')", auroc, above=0.99)
    train_aurocs = ref.column_aurocs(codes[first], y[first])
    top_five = (train_aurocs - 0.5).abs().topk(5).indices.tolist()
    random_five = torch.randperm(shipped.cfg.d_sae, generator=torch.Generator().manual_seed(SEED))[:5].tolist()
    reviews = ref.world.prompt_set("sentiment", "test", n=200, seed=1 + SEED)
    positive = torch.tensor(reviews.labels["sentiment"]).bool()

    def differences(latents, error_term=True):
        return ref.logit_differences_with_latents_zeroed(model, shipped, reviews, latents, error_term)

    clean = differences(None)
    claim("ch05 sentiment: the splice with its error term is the clean model (largest change)",
          (differences([]) - clean).abs().max(), below=1e-3)
    claim("ch05 sentiment: the splice without the error term moves the logit difference (mean change)",
          (differences([], error_term=False) - clean).abs().mean(), above=0.3)
    best = differences([latent])
    drop = 1 - best[positive].mean() / clean[positive].mean()
    claim("ch05 sentiment: best latent zeroed, relative drop on positive reviews ('about 6%'), from below", drop,
          below=0.15)
    claim("ch05 sentiment: best latent zeroed, relative drop on positive reviews, from above", drop, above=0.01)
    claim("ch05 sentiment: best latent zeroed, accuracy ('flips no answer')", (best > 0).float().mean(),
          above=0.97)
    five = differences(top_five)
    claim("ch05 sentiment: five best zeroed, relative drop on positive reviews ('about a quarter')",
          1 - five[positive].mean() / clean[positive].mean(), below=0.45)
    claim("ch05 sentiment: five best zeroed, accuracy ('still flips none')", (five > 0).float().mean(), above=0.97)
    claim("ch05 sentiment: five random latents zeroed, mean change ('nothing')",
          (differences(random_five) - clean).abs().mean(), below=0.1)
    only_error = differences(list(range(shipped.cfg.d_sae)))
    claim("ch05 sentiment: only the error term left, |mean logit difference| ('about zero') over clean",
          only_error.mean().abs() / clean.mean(), below=0.1)
    claim("ch05 sentiment: only the error term left, accuracy ('chance'), from below", (only_error > 0).float().mean(),
          below=0.7)
    claim("ch05 sentiment: only the error term left, accuracy ('chance'), from above", (only_error > 0).float().mean(),
          above=0.3)


def test_a_probe_reads_sentiment_from_the_error_term(shipped, context):
    x, y = context["sentiment"]
    with torch.no_grad():
        error = x - shipped.decode(shipped.encode(x))
    first, second = ref.halves(len(y), SEED)
    claim("ch05 sentiment: a probe on the error term ('perfectly')",
          ref.probe_auroc(error[first], y[first], error[second], y[second]), above=0.95)


def test_a_probe_on_the_untrained_model_reads_word_classes_well_above_chance(model, held):
    baseline = ref.random_init_model(seed=SEED)
    n = ref.DETECTION_TOKENS
    baseline_held, _ = organism_sae.cache_activations(baseline, held[0][:64], progress=False)
    masks = ref.token_label_masks(held[2][:n], model.tokenizer)
    first, second = ref.halves(n, SEED)
    untrained = {name: ref.probe_auroc(baseline_held[:n][first], masks[name][first], baseline_held[:n][second],
                                       masks[name][second]) for name in ("country", "day")}
    organism = ref.probe_auroc(held[1][:n][first], masks["country"][first], held[1][:n][second], masks["country"][second])
    claim("ch05 detection: untrained model's probe on 'country' ('about 0.88'), from above", untrained["country"], above=0.8)
    claim("ch05 detection: untrained model's probe on 'country' ('about 0.88'), from below", untrained["country"], below=0.95)
    claim("ch05 detection: untrained model's probe on 'day' ('about 0.99')", untrained["day"], above=0.95)
    claim("ch05 detection: the organism's probe on 'country' minus the untrained model's", organism - untrained["country"],
          above=0.05)
    # the word-type split: half of the countries (and of the other words) held out with all their occurrences
    y = masks["country"]
    first, second = ref.word_type_halves(held[2][:n], y, SEED)
    assert not set(held[2][:n][first].tolist()) & set(held[2][:n][second].tolist())  # no word on both sides
    assert y[first].any() and y[second].any()
    untrained_words = ref.probe_auroc(baseline_held[:n][first], y[first], baseline_held[:n][second], y[second])
    organism_words = ref.probe_auroc(held[1][:n][first], y[first], held[1][:n][second], y[second])
    claim("ch05 detection: on the word-type split the untrained model's 'country' probe falls to about chance",
          abs(untrained_words - 0.5), below=0.2)
    claim("ch05 detection: ... the token split flattered it (token split minus word-type split)",
          untrained["country"] - untrained_words, above=0.15)
    claim("ch05 detection: on the word-type split the organism's 'country' probe stays near 1.0", organism_words, above=0.93)
    y = masks["day"]
    first, second = ref.word_type_halves(held[2][:n], y, SEED)
    claim("ch05 detection: ... and the untrained model's 'day' probe is no better than chance (7 days: noisy, "
          "0.3 to 0.5 measured)", ref.probe_auroc(baseline_held[:n][first], y[first], baseline_held[:n][second], y[second]),
          below=0.7)
    claim("ch05 detection: ... while the organism's 'day' probe stays near 1.0",
          ref.probe_auroc(held[1][:n][first], y[first], held[1][:n][second], y[second]), above=0.9)


# ------------------------------------------------------------------------------------------
# Sections 4-6: splitting, holes, explanations
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codes(held, shipped):
    with torch.no_grad():
        return shipped.encode(held[1])


def _country_ids(model):
    return {c: model.tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in ref.world.COUNTRIES}


def test_about_a_dozen_latents_carry_the_countries(model, held, codes):
    per_country = ref.top_latent_per_word(codes, held[2], _country_ids(model))
    assert len(per_country) == len(ref.world.COUNTRIES)
    counts = torch.bincount(torch.tensor(list(per_country.values())))
    distinct = int((counts > 0).sum())
    claim("ch05 countries: distinct top latents ('about a dozen'), from above", distinct, above=8)
    claim("ch05 countries: distinct top latents ('about a dozen'), from below", distinct, below=18)
    share = counts.max() / len(per_country)
    claim("ch05 countries: share of countries the strongest latent tops ('about a quarter'), from above", share, above=0.18)
    claim("ch05 countries: share of countries the strongest latent tops ('about a quarter'), from below", share, below=0.35)
    claim("ch05 countries: latents that top two or more countries ('shared by small groups')", int((counts > 1).sum()),
          above=2)


@pytest.fixture(scope="module")
def holes(model, held, codes, shipped):
    _, acts, tokens = held
    masks = ref.token_label_masks(tokens, model.tokenizer)
    _, latent = ref.best_column_auroc(codes, masks["country"], codes, masks["country"])
    ids = _country_ids(model)
    recall = ref.member_recall(codes, tokens, latent, ids)
    train, test = ref.halves(len(acts), SEED)
    probe = ref.train_probe(acts[train], masks["country"][train].long())
    with torch.no_grad():
        probe_auroc = ref.column_aurocs(probe(acts[test])[:, None], masks["country"][test])[0].item()
    cosines = F.normalize(shipped.W_dec.detach(), dim=-1) @ probe.direction  # [d_sae]
    return dict(latent=latent, recall=recall, ids=ids, direction=probe.direction, cosines=cosines,
                probe_auroc=probe_auroc, per_country=ref.top_latent_per_word(codes, tokens, ids))


def test_the_country_latent_is_dense_and_leans_towards_countries(model, held, codes, holes):
    masks = ref.token_label_masks(held[2], model.tokenizer)
    fires = codes[:, holes["latent"]] > 0
    claim("ch05 holes: the country latent's density ('about a third'), from above", fires.float().mean(), above=0.2)
    claim("ch05 holes: the country latent's density ('about a third'), from below", fires.float().mean(), below=0.45)
    claim("ch05 holes: the country latent fires on country tokens ('about four in five')",
          fires[masks["country"]].float().mean(), above=0.65)
    claim("ch05 holes: share of its firings that are countries ('about a fifth')",
          masks["country"][fires].float().mean(), below=0.35)


def test_the_country_latent_has_holes(holes):
    values = torch.tensor(list(holes["recall"].values()))
    claim("ch05 holes: median recall of the country latent ('a general latent')", values.median(), above=0.5)
    claim("ch05 holes: lowest recall of the country latent ('misses some most of the time')", values.min(), below=0.5)


def test_the_holes_are_not_absorption_by_the_probe_test(held, codes, shipped, holes):
    claim("ch05 holes: the country probe's held-out AUROC", holes["probe_auroc"], above=0.99)
    claim("ch05 holes: largest decoder cosine of any latent with the probe ('none comes close')",
          holes["cosines"].max(), below=0.4)
    order = sorted(holes["recall"], key=holes["recall"].get)
    for country in order[:3]:  # the three the chapter's table shows first
        strongest = holes["per_country"][country]
        assert strongest != holes["latent"], (country, holes["recall"])
        claim(f"ch05 holes: {country}'s strongest latent, |cosine| with the probe ('nearly orthogonal')",
              holes["cosines"][strongest].abs(), below=0.2)
    # The evidence is the cosines (the text says the shares along the probe decide nothing): an
    # absorber would have a decoder row close to the probe direction, far above 0.2.


def test_the_country_latent_is_explained_by_one_country_not_the_class(model, held, codes, holes):
    masks = ref.token_label_masks(held[2], model.tokenizer)
    name, _, scores = ref.explain_latent(codes, held[2], masks, holes["latent"], model.tokenizer)
    assert name.startswith("the word") and name.split("'")[1] in ref.world.COUNTRIES, (name, scores)  # "one country's name""
    claim("ch05 explanations: the country latent's AUROC for its word minus for the class 'country'",
          scores[name] - scores["country"], above=0)


def test_many_latents_are_explained_by_one_word(model, held, codes):
    masks = ref.token_label_masks(held[2], model.tokenizer)
    live = (codes > 0).any(0).nonzero()[:, 0]
    sample = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(SEED))[:100]]
    explanations = [ref.explain_latent(codes, held[2], masks, int(i), model.tokenizer) for i in sample]
    by_word = sum(name.startswith("the word") for name, _, _ in explanations) / len(sample)
    good = sum(score > 0.9 for _, score, _ in explanations) / len(sample)
    claim("ch05 explanations: share whose best candidate is one word ('nearly every')", by_word, above=0.75)
    claim("ch05 explanations: share above 0.9 held out ('a minority'), from below", good, below=0.5)
    claim("ch05 explanations: share above 0.9 held out ('a minority'), from above", good, above=0.05)


# ------------------------------------------------------------------------------------------
# The real-model section skips quickly offline
# ------------------------------------------------------------------------------------------
def test_hub_check_is_fast_offline(monkeypatch):
    from utils.models import hub_is_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert hub_is_reachable() is False
    assert time.perf_counter() - start < 2


# ------------------------------------------------------------------------------------------
# Section 7: what the text says SAELens does
# ------------------------------------------------------------------------------------------
def _tiny_trainer_fit(sae, steps: int = 3):
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    data = torch.randn(512, 16, generator=torch.Generator().manual_seed(SEED))
    config = SAETrainerConfig(total_training_samples=steps * 64, train_batch_size_samples=64, lr=1e-3, lr_end=1e-4,
                              device="cpu", n_batches_for_norm_estimate=1, logger=LoggingConfig(log_to_wandb=False))
    with organism_sae._workbook_bar_for_sae_lens(False):
        return SAETrainer(cfg=config, sae=sae, data_provider=organism_sae.random_batches(data, 64, SEED)).fit()


def test_saelens_trains_every_variant_the_text_names_from_the_same_call_and_saves_batchtopk_as_jumprelu(tmp_path):
    import sae_lens

    variants = {"gated": ("GatedTrainingSAE", "GatedTrainingSAEConfig", {}),
                "jumprelu": ("JumpReLUTrainingSAE", "JumpReLUTrainingSAEConfig", {}),
                "batchtopk": ("BatchTopKTrainingSAE", "BatchTopKTrainingSAEConfig", {"k": 4}),
                "matryoshka": ("MatryoshkaBatchTopKTrainingSAE", "MatryoshkaBatchTopKTrainingSAEConfig",
                               {"k": 4, "matryoshka_widths": [8, 32]})}
    trained = {}
    for name, (sae_class, config_class, options) in variants.items():
        sae = getattr(sae_lens, sae_class)(getattr(sae_lens, config_class)(d_in=16, d_sae=32, **options))
        trained[name] = _tiny_trainer_fit(sae)
        assert trained[name].W_dec.shape == (32, 16), name
    trained["batchtopk"].save_inference_model(str(tmp_path))
    assert type(sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")).__name__ == "JumpReLUSAE"


@pytest.fixture(scope="module")
def jumprelu(train_acts):
    return organism_sae.train_with_sae_lens(train_acts, "jumprelu", k=32, steps=ref.ORGANISM_STEPS, lr=1e-2, lr_end=1e-3,
                                            jumprelu_init_threshold=ref.JUMPRELU_INIT_THRESHOLD, jumprelu_bandwidth=1.0,
                                            seed=SEED, progress=False)


def test_jumprelu_at_matched_l0_ties_with_topk_and_beats_l1(model, held, our_saes, jumprelu):
    rows, acts, tokens = held
    metrics = {name: ref.organism_metrics(sae, acts) for name, sae in (("jumprelu", jumprelu), *our_saes.items())}
    claim("ch05 variants: the JumpReLU's L0 near TopK's 32, from above", metrics["jumprelu"]["l0"], above=20)
    claim("ch05 variants: the JumpReLU's L0 near TopK's 32, from below", metrics["jumprelu"]["l0"], below=48)
    claim("ch05 variants: |JumpReLU - TopK| explained variance ('about equally')",
          abs(metrics["jumprelu"]["explained_variance"] - metrics["topk"]["explained_variance"]), below=0.03)
    claim("ch05 variants: JumpReLU's L2 ratio ('near 1')", metrics["jumprelu"]["l2_ratio"], above=0.95)
    claim("ch05 variants: JumpReLU minus L1, explained variance ('the L1 SAE is behind')",
          metrics["jumprelu"]["explained_variance"] - metrics["l1"]["explained_variance"], above=0.02)
    keep = organism_sae.kept_positions(rows[:16], model.tokenizer.eos_token_id)
    claim("ch05 variants: JumpReLU's CE loss recovered ('nearly whole')",
          ref.ce_loss_recovered(model, jumprelu, rows[:16], keep, organism_sae.HOOK_NAME), above=0.95)
    masks = {name: mask[:ref.DETECTION_TOKENS] for name, mask in ref.token_label_masks(tokens, model.tokenizer).items()}
    aurocs = {name: ref.mean_best_latent_auroc(sae, acts[:ref.DETECTION_TOKENS], masks, SEED)
              for name, sae in (("jumprelu", jumprelu), *our_saes.items())}
    claim("ch05 variants: token labels, largest gap between the three SAEs' mean best-latent AUROC ('within 0.1')",
          max(aurocs.values()) - min(aurocs.values()), below=0.1)
    claim("ch05 variants: the L1 SAE, worst reconstructor, detects about as well (L1 minus the best other AUROC, "
          "'from 0.05 below')", aurocs["l1"] - max(aurocs["jumprelu"], aurocs["topk"]), above=-0.06)
    if SEED == 0:
        claim("ch05 variants: in the chapter's run the L1 SAE detects best (L1 minus the best other AUROC)",
              aurocs["l1"] - max(aurocs["jumprelu"], aurocs["topk"]), above=0.0)


def test_completeness_few_words_have_a_latent_width_helps_then_stops_and_frequency_explains_little(model, held, train_acts,
                                                                                                      train_rows, our_saes):
    from scipy.stats import spearmanr

    _, acts, tokens = held
    train_tokens = train_rows[organism_sae.kept_positions(train_rows, model.tokenizer.eos_token_id)]
    words = sorted(set().union(*ref.TOKEN_LABELS.values()))
    word_ids = torch.tensor([model.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words])
    frequency = (train_tokens[:, None] == word_ids[None]).float().mean(0)
    rare = frequency < frequency.median()
    scores = {}
    for width in ref.COMPLETENESS_WIDTHS:
        sae = our_saes["topk"] if width == 1024 else ref.train_organism_sae(train_acts, k=32, d_sae=width, seed=SEED,
                                                                              progress_bar=False)[0]
        scores[width] = ref.word_detection_score(sae, acts, tokens, word_ids, seed=SEED)
    narrow, middle, wide = (scores[width].mean().item() for width in ref.COMPLETENESS_WIDTHS)
    claim("ch05 completeness: mean word score at the widest dictionary ('well under 0.15')", wide, below=0.15)
    claim("ch05 completeness: 512 latents over 128 ('roughly doubles')", middle / narrow, above=1.4)
    claim("ch05 completeness: |1024 latents - 512| ('about nothing')", abs(wide - middle), below=0.02)
    claim("ch05 completeness: the world's words span a narrow range of frequency (most / least frequent)",
          frequency.max() / frequency.min(), below=5)
    claim("ch05 completeness: commoner half minus rarer half, averaged over widths ('does score higher')",
          sum((s[~rare].mean() - s[rare].mean()).item() for s in scores.values()) / len(scores), above=0)
    for width, s in scores.items():
        claim(f"ch05 completeness: rank correlation of frequency and score at {width} latents ('explains little')",
              spearmanr(frequency.log(), s).correlation, below=0.5)
