"""Chapter 03 (logit lens and attribution): properties of its helpers, and the claims its text makes
about the organism.

The organism tests re-measure what the chapter's prose says: where each family's answer appears
in the logit lens, that a tuned lens beats it, which components write each family's logit
difference, which heads are previous-token and induction heads, what their weights say against a
random baseline, and that L3H1's direct attribution and its ablation effect disagree. Every claim
goes through `claim()` with its margin; `claim_seed()` picks other prompts, sequences and random
baselines in `make claims`. If a retrained organism breaks a claim, a test here fails and the prose
needs another look.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

import pytest
import torch

from utils.build import ROOT
from utils.models import hub_is_reachable, load_model
from utils.organism import world
from utils.references import ch02_probing as ch02
from utils.references import ch03_logit_lens as ref
from tests.claims import claim, claim_seed



@pytest.fixture(autouse=True)
def without_gradients():
    """These tests only read the model; gradients stay off inside them and nowhere else."""
    with torch.no_grad():
        yield


@functools.cache
def model():
    return load_model(verbose=False, device="cpu")


@functools.cache
def family_prompts(family: str):
    return world.prompt_set(family, "test", n=128, seed=claim_seed())


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def test_at_last_reads_each_rows_own_position():
    values = torch.arange(2 * 3 * 4 * 2, dtype=torch.float).reshape(2, 3, 4, 2)  # [extra, batch, pos, d]
    last = torch.tensor([3, 0, 2])
    picked = ref.at_last(values, last)
    assert picked.shape == (2, 3, 2)
    for row, position in enumerate(last.tolist()):
        assert torch.equal(picked[:, row], values[:, row, position])


def test_answer_rank_and_probability():
    logits = torch.tensor([[[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]]])  # [point, batch, vocab]
    ids = torch.tensor([2, 2])
    assert ref.answer_rank(logits, ids).tolist() == [[1, 0]]
    assert torch.allclose(ref.answer_probability(logits, ids)[0], torch.stack([logits[0, 0].softmax(-1)[2],
                                                                               logits[0, 1].softmax(-1)[2]]))


def test_detectors_score_one_on_ideal_patterns():
    seq_len, n = 5, 11
    previous = torch.zeros(n, n)
    previous[0, 0] = 1
    previous[torch.arange(1, n), torch.arange(n - 1)] = 1
    induction = torch.eye(n)
    second = torch.arange(seq_len + 1, n)
    induction[second] = 0
    induction[second, second - seq_len + 1] = 1
    patterns = torch.stack([previous, induction])[:, None, None]  # [layer, batch, head, dest, src]
    assert torch.allclose(ref.previous_token_scores(patterns)[:, 0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(ref.induction_scores(patterns, seq_len)[:, 0], torch.tensor([0.0, 1.0]))


def test_repeated_tokens_repeat_distinct_world_words_after_one_start_token():
    tokens = ref.repeated_tokens(model(), 7, batch=3, seed=1)
    assert tokens.shape == (3, 15)
    assert (tokens[:, 0] == model().tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:8], tokens[:, 8:])
    assert all(len(set(row.tolist())) == 7 for row in tokens[:, 1:8])
    assert not torch.equal(tokens, ref.repeated_tokens(model(), 7, batch=3, seed=2))


def test_abc_prompts_replace_the_repeated_name_and_keep_the_length():
    clean = world.prompt_set("ioi", "test", n=40, seed=1)
    corrupted = ref.abc_prompts(clean)
    for prompt, other, io, s in zip(clean.prompts, corrupted.prompts, clean.labels["io"], clean.labels["s"]):
        assert prompt.count(s) == 2 and other.count(s) == 1 and other.count(io) == 1
    clean_tokens, clean_last = ch02.tokenize(model(), clean.prompts)
    corrupted_tokens, corrupted_last = ch02.tokenize(model(), corrupted.prompts)
    assert torch.equal(clean_last, corrupted_last)
    assert (clean_tokens != corrupted_tokens).sum(-1).eq(1).all()  # exactly one token differs


def test_bridge_layernorm_is_centre_and_scale_and_unembedding_is_centred():
    """The text: LayerNorm weights are folded (a LayerNorm only centres and divides by the scale), and the
    unembedding is centred, so a raw logit moved by a constant and only differences are meaningful."""
    x = torch.randn(5, model().cfg.d_model, generator=torch.Generator().manual_seed(0)) * 30 + 2
    centred = x - x.mean(-1, keepdim=True)
    by_hand = centred / (centred.pow(2).mean(-1, keepdim=True) + model().cfg.eps).sqrt()
    assert torch.allclose(model().ln_final(x), by_hand, atol=1e-4)
    assert model().W_U.mean(-1).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------
# Section 1: the residual stream as a sum
# ------------------------------------------------------------------------------------------
def test_shares_add_up_to_the_logit_difference_only_with_the_frozen_final_scale():
    prompts = family_prompts("ioi")
    tokens, last, final_logits, cache = ref.run_prompts(model(), prompts)
    parts = ref.at_last(cache.decompose_resid(layer=-1), last)
    scale = ref.at_last(cache["ln_final.hook_scale"], last)[:, 0]
    directions = ref.logit_diff_directions(model(), prompts)
    correct, wrong = ch02.answer_ids(model(), prompts.correct), ch02.answer_ids(model(), prompts.wrong)
    rows = torch.arange(len(prompts))
    diff = final_logits[rows, correct] - final_logits[rows, wrong]
    bias = model().b_U[correct] - model().b_U[wrong]
    total = ref.residual_stack_to_logit_diff(parts, scale, directions).sum(0) + bias
    assert (total - diff).abs().max() < 1e-3
    centred = parts - parts.mean(-1, keepdim=True)
    own = torch.einsum("cbd,bd->cb", centred / centred.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt(), directions)
    assert ((own.sum(0) + bias).mean() - diff.mean()).abs() > 0.1 * diff.mean().abs()


# ------------------------------------------------------------------------------------------
# Section 2: the logit lens
# ------------------------------------------------------------------------------------------
@functools.cache
def lens():
    return ref.lens_by_family(model(), seed=claim_seed())


def test_lens_last_point_is_the_model():
    prompts = family_prompts("facts")
    tokens, last = ch02.tokenize(model(), prompts.prompts)
    logits = ref.logit_lens(model(), tokens, last)
    assert logits.shape == (model().cfg.n_layers + 1, len(prompts), model().cfg.d_vocab)
    assert torch.allclose(logits[-1], ref.at_last(model()(tokens), last), atol=1e-3)


def test_nothing_is_known_at_the_embeddings():
    for family, measured in lens().items():
        claim(f"ch03: logit lens at the embeddings, {family} top-1", measured["top1"][0], below=0.05)


def test_facts_truth_and_sentiment_are_answered_after_block_0_and_ioi_only_after_the_last():
    summary = lens()
    for family in ("facts", "truth", "sentiment"):
        claim(f"ch03: logit lens, {family} top-1 after block 0 (a majority)", summary[family]["top1"][1], above=0.5)
        probability = summary[family]["probability"]
        claim(f"ch03: logit lens, {family}: the middle blocks add confidence (best later point minus block 0)",
              probability[2:].max() - probability[1], above=0)
    facts = summary["facts"]["probability"]
    claim("ch03: logit lens, facts: the last block takes a little back (point before the output minus output)",
          facts[-2] - facts[-1], above=0)
    ioi = summary["ioi"]["top1"]
    claim("ch03: logit lens, IOI top-1 before the last block (largest)", ioi[:-1].max(), below=0.1)
    claim("ch03: logit lens, IOI top-1 at the output", ioi[-1], above=0.95)
    assert ref.first_top1_point(ioi) == model().cfg.n_layers


# ------------------------------------------------------------------------------------------
# Section 3: the tuned lens
# ------------------------------------------------------------------------------------------
def test_tuned_lens_is_closer_to_the_final_distribution_before_the_last_point():
    seed = claim_seed()
    kl = ref.lens_kl_by_point(model(), ref.lens_data(model(), 100, "train", seed=seed),
                              ref.lens_data(model(), 64, "test", seed=seed), progress=False)
    logit, tuned = kl["logit lens"], kl["tuned lens"]
    assert logit[-1] == tuned[-1] == 0
    gap = logit[:-1] - tuned[:-1]
    claim("ch03: the tuned lens is closer than the logit lens at every point before the output (smallest gap)",
          gap.min(), above=0)
    claim("ch03: the gap is largest at the embeddings (minus the next largest)", gap[0] - gap[1:].max(), above=0)
    answer_logit, answer_tuned = kl["logit lens, answer position"], kl["tuned lens, answer position"]
    assert answer_logit[-1] == answer_tuned[-1] == 0
    claim("ch03: at the answer position too, the tuned lens is closer at every point before the output (smallest gap)",
          (answer_logit[:-1] - answer_tuned[:-1]).min(), above=0.05)
    claim("ch03: at the answer position, the tuned lens stays above a nat after block 0 (smallest KL, points 1 to 3)",
          answer_tuned[1:-1].min(), above=0.9)
    claim("ch03: ... several times its all-position average (smallest ratio, points 1 to 3)",
          (answer_tuned[1:-1] / tuned[1:-1]).min(), above=3)
    claim("ch03: the all-position average flatters the logit lens too (smallest ratio, points 1 to 3)",
          (answer_logit[1:-1] / logit[1:-1]).min(), above=1)
    claim("ch03: ... and its gain over the logit lens after block 0 is a few tenths of a nat (largest gap, points 1 to 3)",
          (answer_logit[1:-1] - answer_tuned[1:-1]).max(), below=1.2)


def test_lens_data_takes_its_families_as_an_argument_and_marks_one_answer_position_per_prompt():
    one = ref.lens_data(model(), 3, "test", seed=1, families=("facts",))
    both = ref.lens_data(model(), 3, "test", seed=1, families=("facts", "truth"))
    assert one["answer"].sum() == 3 and both["answer"].sum() == 6
    assert one["resid"].shape[1] == len(one["answer"]) == len(one["final_logits"]) < both["resid"].shape[1]
    assert torch.allclose(both["final_logits"][: len(one["answer"])], one["final_logits"], atol=1e-3)  # facts first, as asked
    assert ref.LENS_FAMILIES == ("ioi", "facts", "truth", "sentiment")


def test_one_pooled_tuned_lens_reads_every_family_about_as_well_as_its_own():
    table = ref.pooled_vs_own_lens(model(), n_train=100, n_test=64, seed=claim_seed(), progress=False)
    assert ref.LENS_FAMILIES == ("ioi", "facts", "truth", "sentiment")  # a constant: families travel as an argument
    assert set(table["family"]) == set(ref.LENS_FAMILIES)
    later = table[table["point"] > 0]["pooled minus own"]
    claim("ch03: after block 0, the pooled lens is within a few hundredths of a nat of each family's own (largest gap)",
          later.max(), below=0.06)
    after = table[table["point"] > 0]
    claim("ch03: ... though in relative terms the pooled KL can be several times the own lens's (largest ratio)",
          (after["pooled lens"] / after["own lens"]).max(), above=2)
    claim("ch03: at the embeddings, a family's own lens gains a few tenths of a nat at most (largest gap)",
          table[table["point"] == 0]["pooled minus own"].max(), below=0.4)


# ------------------------------------------------------------------------------------------
# Section 4: direct logit attribution
# ------------------------------------------------------------------------------------------
@functools.cache
def attribution(family: str):
    shares, labels = ref.component_attribution(model(), family_prompts(family))
    heads = ref.head_attribution(model(), family_prompts(family)).mean(-1)  # [layer, head]
    components = dict(zip(labels, shares.mean(-1).tolist()))
    mlps = {label: value for label, value in components.items() if "mlp" in label}
    return components, mlps, heads


def test_facts_and_sentiment_are_written_by_mlps_not_heads():
    for family in ("facts", "sentiment"):
        components, mlps, heads = attribution(family)
        claim(f"ch03: {family}: the heads together write almost nothing (|sum of heads| / sum of MLPs)",
              abs(heads.sum()) / sum(mlps.values()), below=0.1)
    components, mlps, _ = attribution("sentiment")
    others = [value for label, value in components.items() if label != "1_mlp_out"]
    claim("ch03: sentiment: MLP1 writes the most (minus the next component)", components["1_mlp_out"] - max(others), above=0)
    claim("ch03: sentiment: MLP1's share of the MLPs", mlps["1_mlp_out"] / sum(mlps.values()), above=0.5)
    _, mlps, _ = attribution("facts")
    claim("ch03: facts: every MLP a little (smallest share)", min(mlps.values()) / sum(mlps.values()), above=0.1)
    claim("ch03: facts: every MLP a little (largest share)", max(mlps.values()) / sum(mlps.values()), below=0.5)


def test_truth_is_written_mostly_by_mlp0_and_mlp2():
    components, mlps, heads = attribution("truth")
    others = [value for label, value in components.items() if label not in ("0_mlp_out", "2_mlp_out")]
    claim("ch03: truth: MLP0 and MLP2 write the most (smaller of the two minus the next component)",
          min(components["0_mlp_out"], components["2_mlp_out"]) - max(others), above=0)
    claim("ch03: truth: the heads write little (|sum of heads| / sum of MLPs)", abs(heads.sum()) / sum(mlps.values()),
          below=0.2)


def test_ioi_has_one_large_head_three_order_dependent_heads_and_mlp3_largest():
    components, _, heads = attribution("ioi")
    others = [value for label, value in components.items() if label != "3_mlp_out"]
    claim("ch03: IOI: MLP3 has the largest share (minus the next component)", components["3_mlp_out"] - max(others),
          above=0)
    flat = heads.flatten()
    l3h1 = flat[3 * model().cfg.n_heads + 1]
    second = torch.cat([flat[:3 * model().cfg.n_heads + 1], flat[3 * model().cfg.n_heads + 2:]]).max()
    claim("ch03: IOI: L3H1's mean direct share over the next head's", l3h1 / second, above=2.5)
    prompts = family_prompts("ioi")
    per_prompt = ref.head_attribution(model(), prompts)  # [layer, head, batch]
    for order, sign in (("ABBA", 1), ("BABA", -1)):
        rows = [i for i, label in enumerate(prompts.labels["order"]) if label == order]
        shares = per_prompt[3, :, rows].mean(-1)  # [head]
        claim(f"ch03: IOI, {order}: L3H1 writes for the answer", shares[1], above=2)
        claim(f"ch03: IOI, {order}: L3H5's share has the order's sign (signed)", sign * shares[5], above=2)
        for head in (4, 6):
            claim(f"ch03: IOI, {order}: L3H{head}'s share has the opposite sign (signed)", -sign * shares[head], above=1.5)


# ------------------------------------------------------------------------------------------
# Section 5: attention patterns and detectors
# ------------------------------------------------------------------------------------------
SEQ_LEN = 20


@functools.cache
def repeats():
    return ref.repeated_tokens(model(), SEQ_LEN, batch=16, seed=claim_seed())


@functools.cache
def detectors():
    patterns = ref.all_patterns(model(), repeats())
    return {"previous": ref.previous_token_scores(patterns), "induction": ref.induction_scores(patterns, SEQ_LEN)}


def test_loss_collapses_on_the_second_copy():
    loss = ref.per_token_loss(model(), repeats()).mean(0)
    first, second = loss[:SEQ_LEN].mean(), loss[SEQ_LEN + 1:].mean()
    claim("ch03: first copy's loss about ln 306 or more (ratio)", first / math.log(len(world.INDUCTION_POOL)), above=0.9)
    claim("ch03: second copy's loss almost zero (ratio to the first copy's)", second / first, below=0.05)


def test_two_previous_token_heads_in_layer_0():
    previous = detectors()["previous"]
    best = previous.flatten().topk(3)
    assert all(i // model().cfg.n_heads == 0 for i in best.indices[:2].tolist())
    claim("ch03: the second previous-token head's score", best.values[1], above=0.8)
    claim("ch03: the third best previous-token score", best.values[2], below=0.5)


def induction_heads() -> list[tuple[int, int]]:
    scores = detectors()["induction"]
    return [(int(l), int(h)) for l, h in (scores > 0.5).nonzero()]


def test_five_induction_heads_all_in_the_last_layer():
    assert induction_heads() == [(3, 3), (3, 4), (3, 5), (3, 6), (3, 7)], induction_heads()
    scores = detectors()["induction"]
    claim("ch03: the weakest of the five induction heads", scores[3, 3:].min(), above=0.9)
    others = scores.clone()
    others[3, 3:] = 0
    claim("ch03: every other head's induction score", others.max(), below=0.5)


def test_library_detector_caps_near_one_half_and_agrees_on_the_heads():
    from transformer_lens.head_detector import detect_head

    texts = [model().to_string(repeats()[i, 1:]) for i in range(4)]
    library = detect_head(model(), texts, "induction_head")
    ours = detectors()["induction"]
    claim("ch03: the library's induction scores stay under one half", library.max(), below=0.5)
    ratios = torch.stack([library[layer, head] / ours[layer, head] for layer, head in induction_heads()])
    claim("ch03: library / ours for the induction heads, above 0.4", ratios.min(), above=0.4)
    claim("ch03: library / ours for the induction heads, below 0.55", ratios.max(), below=0.55)
    assert set(library.flatten().topk(len(induction_heads())).indices.tolist()) == \
        {layer * model().cfg.n_heads + head for layer, head in induction_heads()}


# ------------------------------------------------------------------------------------------
# Section 6: weights
# ------------------------------------------------------------------------------------------
def previous_heads() -> list[tuple[int, int]]:
    return [(0, int(h)) for h in detectors()["previous"][0].topk(2).indices]


def test_previous_token_heads_look_one_back_from_position_embeddings_alone():
    for layer, head in previous_heads():
        claim(f"ch03: L{layer}H{head} looks one back from position embeddings alone",
              ref.looks_one_back(ref.positional_qk(model(), layer, head, 128)), above=0.9)
    others = [h for h in range(model().cfg.n_heads) if (0, h) not in previous_heads()]
    claim("ch03: some other layer-0 head does not (smallest one-back share)",
          min(ref.looks_one_back(ref.positional_qk(model(), 0, h, 128)) for h in others), below=0.1)


@functools.cache
def copying():
    ids = torch.tensor([model().to_single_token(" " + word) for word in world.INDUCTION_POOL])
    raw, effective = model().W_E[ids], ref.effective_embedding(model(), ids)
    heads = induction_heads()
    return {
        "raw": [ref.copying_score(model(), raw, ids, [h]) for h in heads],
        "effective": [ref.copying_score(model(), effective, ids, [h]) for h in heads],
        "summed": ref.copying_score(model(), effective, ids, heads),
        "raw summed": ref.copying_score(model(), raw, ids, heads),
        "baseline": max(ref.random_head_copying_score(model(), effective, ids, 3 * claim_seed() + seed) for seed in range(3)),
        "raw circuit": raw @ sum(model().W_V[l, h] @ model().W_O[l, h] for l, h in heads) @ model().W_U[:, ids],
    }


def test_induction_heads_do_not_copy_through_raw_embeddings():
    measured = copying()
    claim("ch03: no induction head copies through the raw embeddings (largest score)", max(measured["raw"]), below=0.05)
    claim("ch03: nor all five summed", measured["raw summed"], below=0.05)
    circuit = measured["raw circuit"]
    rank = (circuit > circuit.diagonal()[:, None]).sum(-1).float()
    claim("ch03: the raw diagonal sits near the bottom of each row (median rank / tokens)", rank.median() / len(rank),
          above=0.75)


def test_induction_heads_copy_through_the_effective_embedding_and_share_the_work():
    measured = copying()
    claim("ch03: each induction head copies about half or more (smallest score)", min(measured["effective"]), above=0.4)
    claim("ch03: the best copies over 80% (largest score)", max(measured["effective"]), above=0.75)
    claim("ch03: all five summed copy almost every token", measured["summed"], above=0.95)
    claim("ch03: a random OV circuit's copying score", measured["baseline"], below=0.02)
    claim("ch03: the weakest head over the random baseline (ratio)", min(measured["effective"]) / measured["baseline"],
          above=20)


def test_previous_token_heads_k_compose_with_the_induction_heads():
    scores = ref.k_composition_scores(model(), 0, model().cfg.n_layers - 1)
    baseline, _ = ref.random_composition_baseline(model(), seed=claim_seed())
    targets = [h for _, h in induction_heads()]
    sources = [h for _, h in previous_heads()]
    others = [h for h in range(model().cfg.n_heads) if h not in sources]
    into = scores[sources][:, targets]
    claim("ch03: previous-token heads K-compose with the induction heads (weakest pair / random baseline)",
          into.min() / baseline, above=3)
    claim("ch03: more than any other layer-0 head does (weakest pair minus the strongest other)",
          into.min() - scores[others][:, targets].max(), above=0)


# ------------------------------------------------------------------------------------------
# Section 7: when attribution misleads
# ------------------------------------------------------------------------------------------
def test_ablating_l3h1_costs_far_more_than_its_direct_share_about_mlp3s_share():
    prompts = family_prompts("ioi")
    measured = ref.dla_versus_ablation(model(), prompts, [(3, 1), (3, 5)], seed=claim_seed())
    components, _, _ = attribution("ioi")
    (direct, direct_l3h5), (drop, drop_l3h5) = measured["direct"].tolist(), measured["ablation drop"].tolist()
    claim("ch03: ablating L3H1 costs more than twice its direct share (ratio)", drop / direct, above=2)
    claim("ch03: about MLP3's direct share (|drop - MLP3| / MLP3)", abs(drop - components["3_mlp_out"]) / components["3_mlp_out"],
          below=0.3)
    l3h5_direct = ref.head_attribution(model(), prompts)[3, 5]  # [batch]
    corrupted = ref.abc_prompts(prompts, seed=claim_seed())
    l3h5_change = ch02.logit_diffs(model(), prompts) - ref.ablated_logit_diffs(model(), prompts, corrupted, 3, 5)
    claim("ch03: L3H5 writes a lot on each prompt (mean |direct share|)", l3h5_direct.abs().mean(), above=2)
    claim("ch03: but ablating L3H5 changes each prompt almost nothing (mean |change| / mean |direct share|)",
          l3h5_change.abs().mean() / l3h5_direct.abs().mean(), below=0.1)


# ------------------------------------------------------------------------------------------
# The checks hand over copies: an answer that changes its inputs cannot break the reference
# ------------------------------------------------------------------------------------------
def test_an_answer_that_changes_its_prompt_sets_is_told_and_the_reference_still_passes():
    from tests.planted import ch03_logit_lens as planted
    from utils.checks import grade
    from utils.references import ch03_logit_lens as reference

    for exercise_id, mutating, answer in (("3.4", planted.heads_then_extends_the_prompts, reference.head_attribution),
                                          ("3.9", planted.ablation_then_sorts_the_prompts,
                                           reference.ablated_logit_diffs)):
        told = grade(exercise_id, mutating)
        assert told.status == "wrong" and "in place" in told.message, str(told)
        for _ in range(2):
            verdict = grade(exercise_id, answer)
            assert verdict.status == "passed", str(verdict)


# ------------------------------------------------------------------------------------------
# Section 8: the real model is skipped at once offline
# ------------------------------------------------------------------------------------------
def test_real_model_cell_is_gated_on_the_hub_check_and_the_check_is_fast_offline():
    notebook = json.loads((ROOT / "solutions" / "03_logit_lens.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    gpt2_cells = [cell for cell in cells if "gpt2-small" in cell]
    assert gpt2_cells and all(cell.startswith("if env.hub_online:") for cell in gpt2_cells)
    assert all("offline: skipped" in cell for cell in gpt2_cells)
    if os.environ.get("HF_HUB_OFFLINE"):
        start = time.perf_counter()
        assert not hub_is_reachable()
        assert time.perf_counter() - start < 2
