"""Chapter 10's claims about transcoders, the local replacement and attribution graphs, re-measured.

Everything runs the chapter's exported reference code on the organism and its shipped transcoders.
Graphs are the most expensive input: each family's graded graphs are built once (module fixtures),
on prompts drawn with `claim_seed()`, so `make claims` reruns the claims on other prompts.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from tests.claims import claim, claim_seed
from utils.models import load_model
from utils.organism import transcoders as organism_transcoders
from utils.organism import world
from utils.organism.sae import kept_positions, world_rows
from utils.references import ch10_circuit_tracing as ref

torch.set_num_threads(1)
SEED = claim_seed()


@pytest.fixture(scope="module")
def model():
    torch.set_grad_enabled(False)
    yield load_model(verbose=False, device="cpu")
    torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def shipped():
    return organism_transcoders.load_transcoders()


@pytest.fixture(scope="module")
def families(model):
    return ref.chapter_families(model)


def _start(family_size: int, n: int) -> int:
    """Where a claim's prompts start: the chapter's first prompts in the suite, elsewhere under other seeds."""
    return 0 if SEED == 0 else random.Random(SEED).randrange(max(1, family_size - 4 * n))


CHAPTER_GRAPHS = {"facts": 6, "IOI": 2, "sentiment": 4, "truth": 4}  # solution 10's GRAPHS_PER_FAMILY


def _graded(model, shipped, family, n: int, start: int):
    """grade_family's n rows from `start`. From 0, as the chapter's call and then the rest: the same
    rows (each is the next prompt the model answers), and under make test the first part replays the
    notebook's result (utils/memo.py)."""
    if start != 0:
        return ref.grade_family(model, shipped, family, n, start=start, progress=False)
    first = ref.grade_family(model, shipped, family, CHAPTER_GRAPHS[family.name], progress=False)
    rest = ref.grade_family(model, shipped, family, n - len(first), start=int(first.index[-1]) + 1, progress=False)
    return pd.concat([first, rest])


@pytest.fixture(scope="module")
def grades(model, shipped, families):
    sizes = {"facts": 8, "IOI": 3, "sentiment": 6, "truth": 6}
    return {family.name: _graded(model, shipped, family, sizes[family.name], _start(len(family.prompts), sizes[family.name]))
            for family in families}


# ------------------------------------------------------------------------------------------
# Section 1: the transcoders
# ------------------------------------------------------------------------------------------
def test_card_lists_the_shipped_transcoders_and_they_explain_fresh_mlp_outputs(model, shipped):
    card = organism_transcoders.load_card_metrics()
    assert card["recipe"] == organism_transcoders.RECIPE
    text = (organism_transcoders.TRANSCODER_DIR / "README.md").read_text()
    for layer, metrics in card["layers"].items():
        assert f"| {layer} | {metrics['explained_variance']:.3f} |" in text
    rows = world_rows(model.tokenizer, 2 ** 12, seed=40 + SEED)
    pairs = organism_transcoders.cache_mlp_pairs(model, rows)
    measured = {layer: ref.transcoder_metrics(shipped[layer], *pairs[layer]) for layer in range(4)}
    claim("ch10: shipped transcoders' explained variance on fresh world text (worst layer)",
          min(m["explained_variance"] for m in measured.values()), above=0.85)
    claim("ch10: shipped transcoders' dead fraction (worst layer)", max(card_layer["dead_fraction"]
                                                                       for card_layer in card["layers"].values()),
          below=0.4)
    for layer in range(4):  # fresh text, the card's held-out text: the same transcoder, nearly the same numbers
        assert measured[layer]["explained_variance"] == pytest.approx(card["layers"][str(layer)]["explained_variance"],
                                                                      abs=0.04)
        assert measured[layer]["l0"] == pytest.approx(16, abs=0.1)


def test_a_transcoder_retrained_by_the_recipe_matches_the_card(model):
    """The card's recipe rebuilds layer 1 (on a quarter of the tokens, to stay quick) to about its numbers."""
    recipe = {**organism_transcoders.RECIPE, "train_tokens": 2 ** 14, "held_out": 2048}
    from utils.organism.sae import world_rows as rows_of

    rows = rows_of(model.tokenizer, recipe["train_tokens"], recipe["data_seed"])
    x, y = organism_transcoders.cache_mlp_pairs(model, rows, layers=[1])[1]
    with torch.enable_grad():
        transcoder = organism_transcoders.train_layer({1: (x[:-2048], y[:-2048])}, 1, recipe)
    metrics = organism_transcoders.fit_metrics(transcoder, x[-2048:], y[-2048:])
    card = organism_transcoders.load_card_metrics()["layers"]["1"]
    claim("ch10: a layer-1 transcoder rebuilt by the recipe, explained variance short of the card's",
          card["explained_variance"] - metrics["explained_variance"], below=0.05)


@pytest.fixture(scope="module")
def replacement(model, shipped):
    rows = world_rows(model.tokenizer, 2 ** 11, seed=12 + SEED)
    return ref.replacement_table(model, shipped, rows, kept_positions(rows, model.tokenizer.eos_token_id))


def test_the_replacement_model_keeps_most_of_the_loss(replacement):
    claim("ch10: loss recovered with all four MLPs replaced", replacement.loc["all four MLPs", "loss recovered"],
          above=0.9)
    claim("ch10: replacing all four costs more than the worst single MLP (replaced loss, all minus worst single)",
          replacement.loc["all four MLPs", "replaced"] - replacement["replaced"].iloc[:4].max(), above=0.02)
    increase = replacement["zero-ablated"] - replacement["clean loss"]
    # On claim seeds 0-4 (2048 tokens each): MLP 1 0.036-0.076 nats, MLP 2 0.075-0.115, MLP 1 the cheaper by 0.0075 to
    # 0.048; on 8192 tokens the gap was still only 0.010-0.043, so the order is asserted for the chapter's sample only.
    claim("ch10: zeroing MLP 1 costs under a tenth of a nat (loss increase)", increase["MLP 1"], below=0.1)
    claim("ch10: zeroing MLP 2 costs little too (loss increase, nats)", increase["MLP 2"], below=0.15)
    if SEED == 0:
        claim("ch10: on the chapter's sample, zeroing MLP 2 costs more than zeroing MLP 1 (nats)",
              increase["MLP 2"] - increase["MLP 1"], above=0.0)
    claim("ch10: zeroing MLP 0 or MLP 3 costs about a nat or more (the smaller)", min(increase["MLP 0"], increase["MLP 3"]),
          above=0.8)


def test_end_of_text_and_first_positions_are_where_the_transcoders_fail(model, shipped):
    rows = world_rows(model.tokenizer, 2 ** 11, seed=50 + SEED)
    keep = kept_positions(rows, model.tokenizer.eos_token_id)
    names = {organism_transcoders.input_hook(2), organism_transcoders.output_hook(2)}
    _, cache = model.run_with_cache(rows, names_filter=lambda name: name in names)
    error = (shipped[2](cache[organism_transcoders.input_hook(2)]) - cache[organism_transcoders.output_hook(2)]).norm(dim=-1)
    claim("ch10: transcoder error at end-of-text and first positions over elsewhere (layer 2)",
          error[~keep].mean() / error[keep].mean(), above=3)


# ------------------------------------------------------------------------------------------
# Sections 2-3: the local replacement and exact attribution
# ------------------------------------------------------------------------------------------
def test_local_replacement_is_exact_and_effects_add_up(model, shipped, families):
    worst_logits, worst_sum = 0.0, 0.0
    for family in families:
        prompts = family.prompts
        index = random.Random(SEED).randrange(len(prompts))
        run = ref.freeze_run(model, shipped, model.to_tokens(prompts.prompts[index])[0])
        logits, mlp_inputs = ref.local_replacement(model, shipped, run, run.embeddings, run.features, run.errors)
        worst_logits = max(worst_logits, (logits - run.logits).abs().max().item())
        target = ref.logit_diff_target(model, prompts.correct[index], prompts.wrong[index])
        effects = ref.direct_effects(model, shipped, run, target)
        zeros = [torch.zeros_like(t) for t in (run.embeddings, run.features, run.errors)]
        constant = target(*ref.local_replacement(model, shipped, run, *zeros))
        total = sum(effect.sum() for effect in effects) + constant
        worst_sum = max(worst_sum, abs((total - target(run.logits, None)).item()))
        if family.name == "facts":  # the batched graph agrees with one backward pass
            graph = ref.build_graph(model, shipped, run, target)
            assert torch.allclose(graph.adjacency[-1, :len(run.tokens)], effects[0], atol=1e-4)
            assert torch.allclose(graph.adjacency[-1, -1 - run.errors[:, :, 0].numel():-1], effects[2].flatten(), atol=1e-4)
    claim("ch10: local replacement's largest logit difference from the real model", worst_logits, below=1e-3)
    claim("ch10: direct effects plus biases minus the target", worst_sum, below=1e-3)


# ------------------------------------------------------------------------------------------
# Section 4: graded against the world
# ------------------------------------------------------------------------------------------
def test_facts_graphs_route_the_country_to_capital_features(grades):
    facts = grades["facts"].mean()
    claim("ch10: facts graphs recovering the labelled route (country input, relation feature at the end)",
          facts["labelled route"], above=0.7)
    claim("ch10: facts graphs keeping a country-labelled feature at the country token", facts[
        "labelled feature at the source token"], below=0.2)


def test_the_label_test_cannot_fail_for_few_valued_labels(grades):
    """A size-matched random draw of active last-position features holds a labelled one: the route test is vacuous."""
    draws = [grades[name]["labelled feature, random draw of the same size"].min() for name in ("facts", "sentiment", "truth")]
    claim("ch10: random draw of the kept size holding a labelled last-position feature (least, facts/sentiment/truth)",
          min(draws), above=0.95)


def test_graphs_do_not_single_out_the_country_at_the_last_position(grades):
    table = pd.concat([grades["facts"], grades["truth"]])
    claim("ch10: graphs keeping a country-labelled last-position feature, minus a random draw of the same size",
          table["computed label at the last position"].mean() - table["computed label, random draw of the same size"].mean(),
          below=0.25)


def test_first_position_error_nodes_hold_little_influence(grades):
    claim("ch10: first-position error nodes' share of influence (mean over facts graphs)",
          grades["facts"]["influence on first-position error nodes"].mean(), below=0.05)


def test_pruned_graphs_are_faithful_to_the_replacement_not_to_the_model(grades):
    graded = [grades["facts"], grades["sentiment"], grades["truth"]]
    local = sum(table["faithfulness, local replacement"].mean() for table in graded) / 3
    real = sum(table["faithfulness, real model"].mean() for table in graded) / 3
    claim("ch10: pruned graphs' faithfulness in the local replacement (facts, sentiment, truth, mean)", local, above=0.8)
    claim("ch10: pruned graphs' faithfulness in the local replacement (at most)", local, below=1.2)
    claim("ch10: faithfulness lost in the real model (local minus real)", local - real, above=0.2)
    frozen = sum(table["faithfulness, real model, attention and LN frozen"].mean() for table in graded) / 3
    claim("ch10: freezing attention and LayerNorm restores faithfulness in the real model (frozen minus free)",
          frozen - real, above=0.2)
    claim("ch10: the frozen real model's faithfulness short of the local replacement's", local - frozen, below=0.3)
    claim("ch10: sentiment graphs' faithfulness in the real model", grades["sentiment"]["faithfulness, real model"].mean(),
          below=0.5)


def test_sentiment_graphs_route_the_adjective_to_sentiment_features(grades):
    sentiment = grades["sentiment"].mean()
    claim("ch10: sentiment graphs recovering the labelled route", sentiment["labelled route"], above=0.6)


def test_truth_graphs_route_the_country_and_the_stated_value_to_verdict_features(grades):
    truth = grades["truth"].mean()
    claim("ch10: truth graphs recovering the labelled route (country and stated value, verdict feature at the end)",
          truth["labelled route"], above=0.6)
    claim("ch10: truth graphs keeping a country-labelled feature at the country token",
          truth["labelled feature at the source token"], below=0.2)


def test_ioi_graphs_have_the_names_but_no_name_feature_at_the_end(grades):
    ioi = grades["IOI"].mean()
    claim("ch10: IOI graphs with both names among the top inputs", ioi["source tokens among top inputs"], above=0.75)
    claim("ch10: IOI graphs keeping a feature labelled with the answer's name at the last position",
          ioi["labelled feature at the last position"], below=0.25)
    # ... by construction: with many names, hardly any active last-position feature is labelled with the answer's
    claim("ch10: IOI active last-position features labelled with the answer's name (share)",
          ioi["labelled share, all active last-position features"], below=0.05)
    # the names do not reach the answer only through the embeddings' direct edges
    claim("ch10: features' share of influence in IOI graphs", ioi["influence on features"], above=0.3)
    claim("ch10: features kept at the indirect object's token in IOI graphs (mean)", ioi["kept features at the source token"],
          above=1)


def test_error_nodes_hold_more_influence_in_facts_than_in_sentiment(grades):
    claim("ch10: error nodes' share of influence, facts over sentiment",
          grades["facts"]["influence on error nodes"].mean() / grades["sentiment"]["influence on error nodes"].mean(),
          above=1.3)  # 2.93 on claim seed 0, 1.50 to 2.10 on claim seeds 1-4


def test_chapter_06_heads_carry_the_names_in_ioi_graphs(model, shipped, families):
    family = families[1]
    prompts = family.prompts
    start = _start(len(prompts), 3)
    hits = {(0, 3): 0, (3, 1): 0}
    for index in range(start, start + 3):
        run = ref.freeze_run(model, shipped, model.to_tokens(prompts.prompts[index])[0])
        target = ref.logit_diff_target(model, prompts.correct[index], prompts.wrong[index])
        positions = family.sources(index) + [ref.word_position(model, prompts.prompts[index], prompts.labels["s"][index],
                                                               last=True)]
        shares = ref.head_shares(model, shipped, run, target, positions)
        top = {(int(i) // shares.shape[1], int(i) % shares.shape[1]) for i in shares.flatten().argsort(descending=True)[:8]}
        for head in hits:
            hits[head] += head in top
    claim("ch10: IOI graphs with L0H3 among the eight heads carrying most of the names' effect", hits[(0, 3)] / 3,
          above=0.6)
    claim("ch10: IOI graphs with L3H1 among the eight heads carrying most of the names' effect", hits[(3, 1)] / 3,
          above=0.6)


# ------------------------------------------------------------------------------------------
# Section 5: validation by intervention
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def validation(model, shipped, families, grades):
    return ref.intervention_table(model, shipped, families[0].prompts, list(grades["facts"].index[:4]), top=5)


def test_interventions_agree_with_the_graph_in_sign_and_trend(validation):
    summary = ref.validation_summary(validation)
    claim("ch10: correlation of the graph's prediction with the real model's change",
          summary.loc["real model", "correlation with the prediction"], above=0.6)
    claim("ch10: interventions whose sign the graph predicts", summary.loc["real model", "same sign"], above=0.65)  # 0.9, 0.75 at claim seeds 0 and 2
    claim("ch10: correlation of the all-paths prediction with the frozen real run",
          summary.loc["real, attention and LN frozen", "correlation with the all-paths prediction"], above=0.7)


def test_the_intervened_features_all_sit_at_the_last_position(model, validation, families):
    """The chapter says its interventions never exercise attention to earlier positions: all are at the last one."""
    prompts = families[0].prompts
    last = validation["prompt"].map(lambda i: model.to_tokens(prompts.prompts[i]).shape[-1] - 1)
    claim("ch10: intervened features away from the last position (share)", float((validation["position"] != last).mean()),
          below=0.5)


def test_frozen_run_equals_the_prediction_for_last_layer_features_and_amplifies_early_ones(validation):
    last = validation[validation["feature"].str.startswith("L3 ")]
    early = validation[validation["feature"].str.startswith("L0 ")]
    assert len(last) and len(early)
    gap = (last["graph prediction"] - last["real, attention and LN frozen"]).abs().max()
    claim("ch10: layer-3 features, frozen real run minus the graph's prediction (largest)", gap, below=1e-3)
    ratio = (early["real, attention and LN frozen"].abs() / early["graph prediction"].abs()).median()
    claim("ch10: layer-0 features, frozen real run over the graph's direct prediction (median)", ratio, above=1.3)


# ------------------------------------------------------------------------------------------
# Section 4, read fairly: influence through labelled features against as many random active ones
# ------------------------------------------------------------------------------------------
def test_labelled_features_hold_no_more_influence_than_chance(grades):
    facts, truth, sentiment = grades["facts"], grades["truth"], grades["sentiment"]
    claim("ch10: facts graphs, relation-labelled last-position features' influence over chance (mean)",
          facts["labelled influence over chance, last position"].mean(), below=1.2)  # 0.85, 1.0 at claim seeds 0 and 1
    claim("ch10: facts graphs, country-labelled last-position features' influence over chance (mean where any is active)",
          facts["computed label influence over chance, last position"].mean(), below=1.2)
    claim("ch10: truth graphs, verdict-labelled last-position features' influence over chance (mean)",
          truth["labelled influence over chance, last position"].mean(), below=1.5)
    claim("ch10: sentiment graphs, sentiment-labelled last-position features' influence over chance (mean)",
          sentiment["labelled influence over chance, last position"].mean(), below=1.3)
    claim("ch10: IOI graphs, first-or-second-labelled last-position features' influence over chance (0 where none is active)",
          grades["IOI"]["computed label influence over chance, last position"].fillna(0).mean(), below=0.8)


def test_the_country_travels_as_its_embedding_not_as_features_at_its_token(grades):
    facts = grades["facts"]
    claim("ch10: country-labelled features active at the country token (mean per facts prompt, of 64)",
          facts["labelled features active at the source token"].mean(), below=1)
    claim("ch10: facts graphs, features at the country token's share of influence (mean)",
          facts["influence on features at the source token"].mean(), below=0.03)  # 0.016, 0.012 at claim seeds 0 and 1
    claim("ch10: facts graphs, the country token's embedding over the features there (influence, ratio of means)",
          facts["influence on the source token's embedding"].mean() / facts["influence on features at the source token"].mean(),
          above=2)
    claim("ch10: facts graphs, last-position error nodes' share of influence (mean)",
          facts["influence on last-position error nodes"].mean(), above=0.05)  # 0.16, 0.09 at claim seeds 0 and 1


# ------------------------------------------------------------------------------------------
# Section 5: steering at the last position and at earlier ones
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def steering(model, shipped, families, grades):
    return ref.steering_summary(ref.steering_table(model, shipped, families[0].prompts, list(grades["facts"].index[:4])))


def test_steering_earlier_features_fails_where_the_graph_froze_attention(steering):
    last, earlier = steering.loc["last position"], steering.loc["earlier position"]
    claim("ch10: last-position features' direct edges over earlier ones' (median |prediction|)",
          last["median |prediction|"] / earlier["median |prediction|"], above=3)
    claim("ch10: last-position features, real model's error relative to the prediction (median)",
          last["median |real - prediction| / |prediction|"], above=0.15)
    claim("ch10: last-position features, frozen real run's error relative to the prediction (median)",
          last["same, attention and LN frozen"], below=0.05)
    claim("ch10: earlier-position features, frozen real run's error relative to the prediction (median)",
          earlier["same, attention and LN frozen"], above=0.1)
    claim("ch10: earlier-position features, real model's error relative to the prediction (median)",
          earlier["median |real - prediction| / |prediction|"], above=0.2)
    claim("ch10: earlier-position features, what attention and LN moving add (median |real - frozen| / |prediction|)",
          earlier["median |real - frozen| / |prediction|"], above=0.1)


def _first_answered(model, prompts) -> int:
    """The first prompt whose correct answer beats the wrong one at the last token (where grade_family starts)."""
    tokens, last = ref.tokenize(model, prompts.prompts)
    final = model(tokens)[torch.arange(len(last)), last]  # [batch, d_vocab]
    correct, wrong = (ref.answer_ids(model, words).to(final.device) for words in (prompts.correct, prompts.wrong))
    answered = (final.gather(-1, correct[:, None]) > final.gather(-1, wrong[:, None]))[:, 0]  # [batch]
    return int(answered.nonzero()[0, 0])


def test_a_random_node_set_is_nearly_as_faithful_on_facts_prompts(model, shipped, families, grades):
    """Exercise 10.7's lesson: faithfulness turns off only features, and the error nodes carry the facts.
    On the chapter's prompt (the first facts prompt answered correctly: 0 today) a random draw of as many nodes keeps more than half of the target
    (0.65 to 0.87 over draws 0-5); on other facts prompts draws keep less and scatter (-0.33 to 0.92
    on the claim seeds' prompts), always below the pruned graph."""
    prompts = families[0].prompts
    labels = ref.FeatureLabels(["any"], torch.zeros(4, 512, dtype=torch.long), torch.ones(4, 512))

    def random_and_pruned(index: int) -> tuple[float, float]:
        graph, _, kept = ref.prompt_graph(model, shipped, prompts, index)
        target = ref.logit_diff_target(model, prompts.correct[index], prompts.wrong[index])
        drawn = torch.randperm(len(graph.nodes) - 1, generator=torch.Generator().manual_seed(SEED))[:len(kept)].sort().values
        return tuple(ref.route_scores(model, shipped, graph, nodes, target, labels, "any")["faithfulness"]
                     for nodes in (drawn, kept))

    chapters = _first_answered(model, prompts)  # the prompt the chapter scores: grade_family's first from 0
    on_chapters = random_and_pruned(chapters)
    claim("ch10: a random draw of as many nodes as the pruned facts graph, faithfulness in the local replacement "
          "(the chapter's prompt)", on_chapters[0], above=0.5)
    claim("ch10: the chapter's pruned facts graph keeps about the whole target (faithfulness, at least)",
          on_chapters[1], above=0.8)
    claim("ch10: the chapter's pruned facts graph keeps about the whole target (faithfulness, at most)",
          on_chapters[1], below=1.2)
    index = int(grades["facts"].index[0])
    random_score, pruned_score = on_chapters if index == chapters else random_and_pruned(index)
    claim("ch10: the pruned facts graph's faithfulness minus a random draw's of as many nodes (the seed's prompt)",
          pruned_score - random_score, above=0.1)
    # the chapter's example prompt (Section 3's table): the features' direct effects sum to less than nothing
    facts = prompts.subset([i for i, relation in enumerate(prompts.labels["relation"]) if relation == "capital"])
    run = ref.freeze_run(model, shipped, model.to_tokens(facts.prompts[0])[0])
    example_target = ref.logit_diff_target(model, facts.correct[0], facts.wrong[0])
    _, feature_effects, _ = ref.direct_effects(model, shipped, run, example_target)
    claim("ch10: the chapter's example prompt, features' direct effects summed over the target", feature_effects.sum().item()
          / example_target(run.logits, None).item(), below=0.0)


# ------------------------------------------------------------------------------------------
# Section 4, another dictionary: the long (512 features, longer training) and wide (2048) sets
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_sets():
    return {name: organism_transcoders.load_transcoders(folder=organism_transcoders.SETS[name][1]) for name in ("long", "wide")}


def test_the_other_cards_list_their_sets_and_they_explain_more_than_the_shipped_one(model, shipped, other_sets):
    rows = world_rows(model.tokenizer, 2 ** 12, seed=40 + SEED)
    pairs = organism_transcoders.cache_mlp_pairs(model, rows)
    for name, transcoders in other_sets.items():
        recipe, folder, _, _ = organism_transcoders.SETS[name]
        card = organism_transcoders.load_card_metrics(folder)
        assert card["recipe"] == recipe and transcoders[0].d_transcoder == recipe["d_transcoder"] == {"long": 512, "wide": 2048}[name]
        text = (folder / "README.md").read_text()
        for layer, metrics in card["layers"].items():
            assert f"| {layer} | {metrics['explained_variance']:.3f} |" in text
        gains = [ref.transcoder_metrics(transcoders[layer], *pairs[layer])["explained_variance"]
                 - ref.transcoder_metrics(shipped[layer], *pairs[layer])["explained_variance"] for layer in range(4)]
        claim(f"ch10: the {name} set explains more of each MLP's output than the shipped one (smallest gain, fresh text)",
              min(gains), above=0.0)


def test_a_wide_transcoder_retrained_by_its_recipe_matches_the_card_and_beats_the_shipped_width(model, shipped):
    """The wide recipe rebuilds layer 1 to about the card's numbers, on a quarter of its tokens and a fifth of its
    steps to stay quick (the full recipe takes about 45 s a layer on two threads): the shipped recipe's own data and
    steps, so beside the shipped layer it measures what width alone gives."""
    recipe = {**organism_transcoders.WIDE_RECIPE, "train_tokens": 2 ** 16, "held_out": 4096, "steps": 300}
    rows = world_rows(model.tokenizer, recipe["train_tokens"], recipe["data_seed"])
    x, y = organism_transcoders.cache_mlp_pairs(model, rows, layers=[1])[1]
    with torch.enable_grad():
        transcoder = organism_transcoders.train_layer({1: (x[:-4096], y[:-4096])}, 1, recipe)
    metrics = organism_transcoders.fit_metrics(transcoder, x[-4096:], y[-4096:])
    card = organism_transcoders.load_card_metrics(organism_transcoders.WIDE_DIR)["layers"]["1"]
    claim("ch10: a wide layer-1 transcoder rebuilt on the shipped recipe's data and steps, "
          "explained variance short of the card's",
          card["explained_variance"] - metrics["explained_variance"], below=0.03)  # 0.017
    assert metrics["l0"] == pytest.approx(16, abs=0.2)
    narrow = organism_transcoders.fit_metrics(shipped[1], x[-4096:], y[-4096:])
    claim("ch10: on the shipped recipe's data and steps, 2048 features explain more than 512 (layer 1)",
          metrics["explained_variance"] - narrow["explained_variance"], above=0.0)  # 0.007


ROUTE_SIZES = {"facts": 20, "IOI": 4, "truth": 12}
CHAPTER_ROUTE_PROMPTS = {"facts": 8, "IOI": 2, "truth": 4}  # solution 10's ROUTE_PROMPTS


@pytest.fixture(scope="module")
def routes(model, shipped, other_sets, families):
    """route_readings per (set, family), one row per prompt and reading, on ROUTE_SIZES prompts: from 0 the chapter's
    call and then the rest (as _graded does), under other claim seeds from elsewhere in the family."""
    readings = ref.chapter_readings(model, families)
    by_name = {family.name: family for family in families}
    tables = {}
    for set_name, transcoders in (("shipped", shipped), *other_sets.items()):
        for name, n in ROUTE_SIZES.items():
            family, start = by_name[name], _start(len(by_name[name].prompts), n)
            if start == 0:
                first = ref.route_readings(model, transcoders, family, readings[name], CHAPTER_ROUTE_PROMPTS[name],
                                           progress=False)
                rest = ref.route_readings(model, transcoders, family, readings[name], n - CHAPTER_ROUTE_PROMPTS[name],
                                          start=int(first["prompt"].max()) + 1, progress=False)
                table = pd.concat([first, rest])
            else:
                table = ref.route_readings(model, transcoders, family, readings[name], n, start=start, progress=False)
            assert table["prompt"].nunique() == n
            tables[set_name, name] = table
    return tables


def _summary(routes, set_name: str, family: str) -> pd.DataFrame:
    return ref.route_summary(routes[set_name, family])


# Measured on claim seeds 0-3 (20 facts, 4 IOI, 12 truth prompts) and the chapter's draw (8, 2, 4):
# facts, country at the last position, top feature labelled: shipped 0 in every draw, long 0.05-0.30 (chance
# 0.02-0.03), wide 0.15-0.375 (chance 0.04-0.06); pooled over seeds 0-3, continent prompts 0 of 25 for both; the most
# active feature labelled: long 0-0.10, wide 0-0.05; the answer word's top feature labelled: 0 but one draw (wide 0.10);
# country-labelled of 64: shipped 0.25-0.7, long 1.2-1.7, wide 2.45-3.9; error share (whole graph): shipped
# 0.155-0.19, long 0.087-0.115, wide 0.066-0.083.
def test_longer_training_brings_a_country_feature_to_the_top_of_the_last_position(routes):
    last = {name: _summary(routes, name, "facts").loc["country, at the last position"] for name in ("shipped", "long", "wide")}
    claim("ch10: facts, shipped set: the top last-position feature carries the country (rate)",
          last["shipped"]["top feature labelled"], below=0.1)
    claim("ch10: facts, long set: the top last-position feature carries the country (rate)",
          last["long"]["top feature labelled"], above=0.02)
    claim("ch10: facts, wide set: the top last-position feature carries the country, rate over its chance",
          last["wide"]["top feature labelled"] - last["wide"]["chance"], above=0.05)
    longer = pd.concat([routes[name, "facts"] for name in ("long", "wide")])
    country = longer[longer["reading"] == "country, at the last position"]
    claim("ch10: facts, long and wide sets pooled: the top last-position feature carries the country, rate over chance",
          country["top feature labelled"].mean() - country["chance"].mean(), above=0.04)
    relations = world.prompt_set("facts", "train", seed=0).labels["relation"]
    continent = country[[relations[i] == "continent" for i in country["prompt"]]]
    if len(continent):
        claim("ch10: facts, long and wide sets: the top last-position feature carries the country on continent prompts",
              continent["top feature labelled"].mean(), below=0.1)
    for name in ("long", "wide"):
        claim(f"ch10: facts, {name} set: the most active last-position feature carries the country (rate)",
              last[name]["most active feature labelled"], below=0.15)
        claim(f"ch10: facts, {name} set: the top last-position feature carries the answer word (rate)",
              _summary(routes, name, "facts").loc["answer, at the last position", "top feature labelled"], below=0.15)
    claim("ch10: facts, shipped set: country-labelled active last-position features (mean of 64)",
          last["shipped"]["labelled"], below=1)
    claim("ch10: facts, wide set over long: country-labelled active last-position features (ratio)",
          last["wide"]["labelled"] / last["long"]["labelled"], above=1.5)
    claim("ch10: facts, wide set over long: error nodes' share of influence (ratio)",
          last["wide"]["influence on error nodes"] / last["long"]["influence on error nodes"], below=0.92)
    for name in ("shipped", "long", "wide"):
        claim(f"ch10: facts, {name} set: country-labelled active features at the country token (mean of 64)",
              _summary(routes, name, "facts").loc["country, at its token", "labelled"], below=1)


def test_the_error_share_drops_in_every_family_with_longer_training(routes):
    for family in ("facts", "IOI", "truth"):
        shipped_share, long_share = (routes[name, family].groupby("prompt")["influence on error nodes"].first().mean()
                                     for name in ("shipped", "long"))
        claim(f"ch10: {family}, long set over shipped: error nodes' share of influence (ratio)",
              long_share / shipped_share, below=0.85)


@pytest.fixture(scope="module")
def top_off(model, other_sets, routes, families):
    """top_feature_ablations per set (long, wide) on the facts graphs of `routes`."""
    facts = next(family for family in families if family.name == "facts")
    return {name: ref.top_feature_ablations(model, other_sets[name], facts.prompts,
                                            routes[name, "facts"][routes[name, "facts"]["reading"]
                                                                  == "country, at the last position"], progress=False)
            for name in ("long", "wide")}


@pytest.fixture(scope="module")
def country_off(top_off):
    """The rows of `top_off` whose top feature carries the prompt's country."""
    return {name: table[table["labelled"]] for name, table in top_off.items()}


# Measured on claim seeds 0-3 (20 facts prompts each), long and wide sets pooled, 40 graphs a
# draw. Country-labelled tops: 11, 12, 4 and 8 graphs, all in layers 1-2; turning it off lowered the logit difference
# in all 35 (by 0.16-1.33, 4-33% of it, mean share per draw 0.10-0.21), never below 2.3; its drop among the 3 largest
# of the 64 active features in 0.75-1.0 of each draw's graphs (first in 22 of 35); the direct edge's sign right in 35.
# Unlabelled tops of layers 1-3: lowered the answer in 0.93-1.0 per draw, among the 3 largest drops in 0.61-0.86.
# Unlabelled layer-0 tops: lowered the answer in 0.40-0.56 per draw, the direct edge's sign right in 0.65-0.85.
def test_turning_the_top_feature_off_lowers_the_answer_for_country_features_and_most_unlabelled_ones(top_off):
    table = pd.concat(top_off.values())
    country = table[table["labelled"]]
    claim("ch10: facts, long and wide sets: graphs whose top last-position feature carries the country (count)",
          len(country), above=2)
    claim("ch10: facts, country-labelled top features outside layers 1-2 (share)",
          float((~country["layer"].isin([1, 2])).mean()), below=0.1)
    claim("ch10: facts, country feature turned off in the real model: share of graphs where the answer drops",
          float((country["turned off"] < 0).mean()), above=0.85)
    claim("ch10: facts, country feature turned off: mean share of the logit difference removed",
          float((-country["turned off"] / country["logit difference"]).mean()), above=0.05)
    claim("ch10: facts, country feature turned off: share of graphs where the answer flips",
          float((country["logit difference"] + country["turned off"] < 0).mean()), below=0.05)
    top_three = float((country["rank of its drop"] <= 3).mean())
    claim("ch10: facts, country feature turned off: share of graphs where its drop is among the 3 largest of the "
          "position's active features", top_three, above=0.6)
    claim("ch10: facts, country feature: the graph's direct edge predicts the sign of the real change (share)",
          float(((country["graph prediction"] < 0) == (country["turned off"] < 0)).mean()), above=0.85)
    unlabelled = table[~table["labelled"] & (table["layer"] >= 1)]
    claim("ch10: facts, unlabelled top features of layers 1-3 turned off: share of graphs where the answer drops",
          float((unlabelled["turned off"] < 0).mean()), above=0.8)
    claim("ch10: facts, unlabelled top features of layers 1-3: their rate of a top-3 drop over the country features'",
          float((unlabelled["rank of its drop"] <= 3).mean()) / top_three, above=0.5)
    layer_0 = table[~table["labelled"] & (table["layer"] == 0)]
    claim("ch10: facts, unlabelled layer-0 top features turned off: share of graphs where the answer drops",
          float((layer_0["turned off"] < 0).mean()), below=0.75)
    claim("ch10: facts, unlabelled layer-0 top features: share where the direct edge has the wrong sign",
          float(((layer_0["graph prediction"] < 0) != (layer_0["turned off"] < 0)).mean()), above=0.05)


# Measured with the same donors, on 30 answered recipients from _start(., 30), the chapter's draw and seeds 0-3: capital and language recipients, both sets pooled, the donor country's answer rises most in
# 0.92-1.0 of the pairs per draw (chance 0.03-0.04); across relations (capital <-> language) 0.75-1.0 per set and
# draw; mean lift 0.61-1.04 against a mean gap of 4.27-4.60, flipped in 0 pairs; continent recipients rise most in
# 0-0.92 per draw (chance 0.25), lift -0.08 to 0.26 per (set, donor relation). On language recipients the donor's
# capital rises more than its language in 0.48-0.80 of the pairs per draw (on capital recipients the language rises
# more in 0.19-0.36). Read through the unembedding, the two strongest of the 70 answers are the country's capital and
# language for 0.75-1.0 of the donor features per draw; the continent's median rank 6-45.5.
def test_an_added_country_feature_lifts_its_countrys_answer_across_relations(model, other_sets, country_off, families):
    facts = next(family for family in families if family.name == "facts")
    recipients = ref.answered_prompts(model, facts.prompts, 30, start=_start(len(facts.prompts), 30))
    table = pd.concat([ref.country_injections(model, other_sets[name], facts.prompts, country_off[name], recipients)
                       for name in ("long", "wide")])
    named = table[table["into"] != "continent"]
    across = named[named["from"] != named["into"]]
    claim("ch10: facts, a country feature added to a capital or language prompt about another country: share of pairs "
          "where its country's answer rises most", float((named["rank"] == 1).mean()), above=0.8)
    claim("ch10: the same, the feature taken from a prompt of the other relation (capital <-> language)",
          float((across["rank"] == 1).mean()), above=0.6)
    claim("ch10: the same, chance of an answer drawn at random rising most", float((1 / named["answers"]).mean()),
          below=0.06)
    claim("ch10: an added country feature's mean lift of its country's answer over the recipient's (logits)",
          float(named["lift"].mean()), above=0.3)
    claim("ch10: the same, share of pairs where the lift closes the recipient's lead (the answer flips)",
          float((named["lift"] > named["gap"]).mean()), below=0.05)
    language = named[named["into"] == "language"]
    if len(language):
        claim("ch10: an added country feature on language prompts: share of pairs where its country's capital rises "
              "more than its language", float(language["other relation rises more"].astype(float).mean()), above=0.3)
    continent = table[table["into"] == "continent"]
    if len(continent):
        claim("ch10: an added country feature's mean lift of its continent (logits)", float(continent["lift"].mean()),
              below=0.4)
    readout = pd.concat([ref.answer_readout(model, other_sets[name], facts.prompts, country_off[name])
                         for name in ("long", "wide")])
    claim("ch10: country features whose two strongest answers, read through the unembedding, are their country's "
          "capital and language (share)",
          float(((readout["capital rank"] <= 2) & (readout["language rank"] <= 2)).mean()), above=0.6)
    claim("ch10: country features read through the unembedding: median rank of their country's continent (of 70)",
          float(readout["continent rank"].median()), above=3)


# truth, recalled country: top labelled 0 in every set and draw; stated value's top labelled: 0-0.25 in every set.
# IOI: name-labelled at its token 0-1.0, at the last position 0-0.25, every set; wide top at its token 0-0.5.
def test_truth_and_ioi_graphs_gain_no_route_from_the_other_sets(routes):
    for name in ("shipped", "long", "wide"):
        truth, ioi = _summary(routes, name, "truth"), _summary(routes, name, "IOI")
        claim(f"ch10: truth, {name} set: the top last-position feature carries the recalled country (rate)",
              truth.loc["country, at the last position", "top feature labelled"], below=0.1)
        claim(f"ch10: truth, {name} set: the top feature at the stated value's token carries it (rate)",
              truth.loc["stated value, at its token", "top feature labelled"], below=0.3)
        claim(f"ch10: IOI, {name} set: name-labelled active features at the indirect object's token (mean of 64)",
              ioi.loc["indirect object, at its token", "labelled"], below=1.5)
        claim(f"ch10: IOI, {name} set: name-labelled active features at the last position (mean of 64)",
              ioi.loc["indirect object, at the last position", "labelled"], below=0.6)
    claim("ch10: IOI, wide set: the top feature at the indirect object's token carries its name (rate)",
          _summary(routes, "wide", "IOI").loc["indirect object, at its token", "top feature labelled"], below=0.55)
    claim("ch10: truth, stated values with too few prompts to be labelled (share of graphs, any set)",
          1 - _summary(routes, "shipped", "truth").loc["stated value, at its token", "value labelable"], above=0.1)
