"""Chapter 06 (activation patching and circuits): properties of its helpers, and the claims its text
makes about the organism.

The organism tests re-measure what the chapter's prose says, on the chapter's own prompts (16
held-out IOI prompts of template 0): what the corruptions do to the logit difference, where
residual and head patching light up, that noising and denoising agree here, that the ablations
disagree the way the text says, that L3H1 acts more through MLP3 than directly, that attribution
patching correlates with activation patching but underestimates the large effects, the circuits'
faithfulness, K-composition in the induction circuit, and the phase change of the induction toy.
If a retrained organism breaks a claim, a test here fails and the prose needs another look.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from transformer_lens import patching

from utils.models import load_model
from utils.organism import induction_toy, world
from utils.references import ch02_probing as ch02
from utils.references import ch03_logit_lens as ch03
from utils.references import ch06_patching as ref

S2, END = 10, 14  # positions of the repeated name and of the last token in template 0


@pytest.fixture(autouse=True)
def without_gradients():
    """These tests only run the model; attribution patching turns gradients on where it needs them."""
    with torch.no_grad():
        yield


@functools.cache
def model():
    return load_model(verbose=False, device="cpu")


@functools.cache
def chapter_runs():
    """The chapter's prompts, tokens, answers and metrics (Section 1)."""
    m = model()
    clean_set = ref.ioi_prompts("test", n=16)
    clean, swap, last = ref.paired_tokens(m, clean_set.prompts, ref.swapped_prompts(clean_set).prompts)
    _, abc, _ = ref.paired_tokens(m, clean_set.prompts, ref.abc_prompts(clean_set, seed=0).prompts)
    correct, wrong = ch02.answer_ids(m, clean_set.correct), ch02.answer_ids(m, clean_set.wrong)
    logits = {name: m(tokens) for name, tokens in (("clean", clean), ("swap", swap), ("abc", abc))}
    return {"set": clean_set, "clean": clean, "swap": swap, "abc": abc, "last": last, "logits": logits,
            "swap_metric": ref.normalised_logit_diff_metric(logits["clean"], logits["swap"], correct, wrong, last),
            "abc_metric": ref.normalised_logit_diff_metric(logits["clean"], logits["abc"], correct, wrong, last),
            "score": lambda lg: ref.logit_diff(lg, correct, wrong, last).mean()}


@functools.cache
def head_sweeps():
    runs = chapter_runs()
    m, swap, clean, metric = model(), runs["swap"], runs["clean"], runs["swap_metric"]
    return {"denoising": ref.patch_head_output(m, swap, clean, metric),
            "noising": ref.patch_head_output(m, clean, swap, metric),
            "by_position": ref.patch_head_output(m, swap, clean, metric, by_position=True)}


@functools.cache
def small_runs(k: int):
    """The first k of the chapter's prompts with their own metrics (cheap sweeps)."""
    m = model()
    clean_set = ref.ioi_prompts("test", n=k)
    clean, swap, last = ref.paired_tokens(m, clean_set.prompts, ref.swapped_prompts(clean_set).prompts)
    correct, wrong = ch02.answer_ids(m, clean_set.correct), ch02.answer_ids(m, clean_set.wrong)
    return {"clean": clean, "swap": swap, "metric": ref.normalised_logit_diff_metric(m(clean), m(swap), correct, wrong, last),
            "score": lambda lg: ref.logit_diff(lg, correct, wrong, last).mean()}


def top_cells(by_position: torch.Tensor, k: int) -> list[tuple[int, int, int]]:
    """The k largest cells of a [layer, pos, head] map as (layer, head, position)."""
    n_pos, n_heads = by_position.shape[1:]
    cells = []
    for index in by_position.flatten().argsort(descending=True)[:k].tolist():
        layer, rest = divmod(index, n_pos * n_heads)
        position, head = divmod(rest, n_heads)
        cells.append((layer, head, position))
    return cells


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def test_template_zero_has_the_positions_the_chapter_names():
    runs = chapter_runs()
    tokens = model().to_str_tokens(runs["clean"][0])
    assert len(tokens) == END + 1 and (runs["last"] == END).all()
    for i in range(len(runs["set"])):
        assert model().to_str_tokens(runs["clean"][i])[S2].strip() == runs["set"].labels["s"][i]
        assert model().to_str_tokens(runs["swap"][i])[S2].strip() == runs["set"].labels["io"][i]


def test_paired_tokens_and_every_patching_function_refuse_runs_of_different_lengths():
    m = model()
    one, other = ref.ioi_prompts("test", template=0, n=2), ref.ioi_prompts("test", template=1, n=2)
    with pytest.raises(ValueError, match="length"):
        ref.paired_tokens(m, one.prompts, other.prompts)
    tokens, metric = small_runs(2)["clean"], small_runs(2)["score"]
    for call in (lambda: ref.patch_residual(m, tokens, tokens[:, :-1], metric),
                 lambda: ref.patch_head_output(m, tokens, tokens[:, :-1], metric),
                 lambda: ref.path_patch(m, tokens, tokens[:, :-1], (3, 1), "blocks.3.hook_mlp_out", metric),
                 lambda: ref.attribution_patch_heads(m, tokens, tokens[:, :-1], metric),
                 lambda: ref.ablate_heads(m, tokens, [(3, 1)], "resample", tokens[:1])):
        with pytest.raises(ValueError):
            call()


def test_metric_is_one_on_clean_and_zero_on_corrupted_and_differentiable():
    runs = chapter_runs()
    metric = runs["swap_metric"]
    assert metric(runs["logits"]["clean"]).item() == pytest.approx(1.0, abs=1e-5)
    assert metric(runs["logits"]["swap"]).item() == pytest.approx(0.0, abs=1e-5)
    with torch.enable_grad():
        logits = runs["logits"]["abc"].clone().requires_grad_(True)
        metric(logits).backward()
    assert logits.grad.abs().sum() > 0


def test_patching_a_run_with_itself_changes_nothing_and_chunks_do_not_matter():
    m, runs = model(), small_runs(2)
    tokens, metric = runs["clean"], runs["metric"]
    same = ref.patch_head_output(m, tokens, tokens, metric, by_position=True, chunk_size=7)
    assert torch.allclose(same, metric(m(tokens)).expand_as(same), atol=1e-5)
    one = ref.patch_head_output(m, runs["swap"], tokens, metric, by_position=True, chunk_size=3)
    many = ref.patch_head_output(m, runs["swap"], tokens, metric, by_position=True, chunk_size=200)
    assert torch.allclose(one, many, atol=1e-5)


def test_attribution_of_identical_runs_is_zero_even_with_dropout_in_train_mode():
    m = load_model(verbose=False, device="cpu")  # a copy of its own: its dropout is switched on
    for module in m.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    m.train()
    runs = small_runs(4)
    scores = ref.attribution_patch_heads(m, runs["clean"], runs["clean"], runs["score"])
    assert scores.abs().max() < 1e-6
    assert m.training, "the mode is put back"


def test_steepest_change():
    assert ref.steepest_change([0, 10, 20, 30], torch.tensor([4.0, 3.9, 1.0, 0.9])) == (10, 20)


# ------------------------------------------------------------------------------------------
# Section 1-2: corruptions, residual and head patching
# ------------------------------------------------------------------------------------------
def test_swap_flips_the_answer_and_abc_leaves_a_weak_preference():
    runs = chapter_runs()
    clean, swap, abc = (runs["score"](runs["logits"][name]).item() for name in ("clean", "swap", "abc"))
    assert clean > 10
    assert abs(swap + clean) < 0.25 * clean, "the swap run prefers the other name about as much"
    assert abs(abc) < 0.25 * clean, "the ABC run has only a weak preference"
    assert 0.2 < runs["swap_metric"](runs["logits"]["abc"]).item() < 0.8, "ABC sits near the middle of the swap scale"


def test_residual_patching_lights_up_s2_then_the_last_position():
    runs = chapter_runs()
    resid = ref.patch_residual(model(), runs["swap"], runs["clean"], runs["swap_metric"])  # [layer, pos]
    others = [p for p in range(resid.shape[1]) if p not in (S2, END)]
    assert resid[:, others].abs().max() < 0.05, "nothing else matters"
    assert resid[0, S2] > 0.95 and resid[0, END].abs() < 0.05, "layer 0: all at S2"
    assert (resid[1:, S2] > 0.5).all(), "S2 still matters up to the last layer"
    assert (resid[1:, END] > 0.1).all() and resid[3, END] > resid[1, END], "the last position from layer 1, more later"


def test_head_patching_finds_the_cells_the_chapter_names():
    sweeps = head_sweeps()
    assert set(top_cells(sweeps["by_position"], 4)) == {(3, 1, END), (0, 3, S2), (0, 6, S2), (0, 7, END)}
    assert top_cells(sweeps["by_position"], 5)[4] == (2, 0, END)
    assert divmod(int(sweeps["denoising"].argmax()), model().cfg.n_heads) == (3, 1)


def test_our_sweeps_match_transformer_lens_patching():
    m, runs = model(), small_runs(2)
    _, cache = m.run_with_cache(runs["clean"])
    library_all = patching.get_act_patch_attn_head_out_all_pos(m, runs["swap"], cache, runs["metric"])
    library_by_position = patching.get_act_patch_attn_head_out_by_pos(m, runs["swap"], cache, runs["metric"])
    assert torch.allclose(library_all, ref.patch_head_output(m, runs["swap"], runs["clean"], runs["metric"]), atol=1e-4)
    ours = ref.patch_head_output(m, runs["swap"], runs["clean"], runs["metric"], by_position=True)
    assert torch.allclose(library_by_position, ours, atol=1e-4)


def test_noising_and_denoising_agree_for_the_important_heads():
    sweeps = head_sweeps()
    for layer, head in [(3, 1), (0, 3), (0, 6), (0, 7)]:
        restores, costs = sweeps["denoising"][layer, head].item(), 1 - sweeps["noising"][layer, head].item()
        assert abs(restores - costs) < 0.05, (layer, head, restores, costs)
    assert sweeps["denoising"][3, 1] == pytest.approx(0.65, abs=0.1) and sweeps["denoising"][0, 3] == pytest.approx(0.4, abs=0.1)


# ------------------------------------------------------------------------------------------
# Section 3: ablations
# ------------------------------------------------------------------------------------------
def test_ablations_disagree_as_the_chapter_says():
    runs = chapter_runs()
    sets = {"L3H1": [(3, 1)], "early": [(0, 3), (0, 6), (0, 7)], "negative": [(3, 4), (3, 6)]}
    table = ref.ablation_table(model(), runs["clean"], runs["abc"], sets, runs["score"])
    clean = runs["score"](runs["logits"]["clean"]).item()
    assert all(value < 0.5 * clean for value in table["L3H1"].values()), "all three cost most of the answer"
    early = table["early"]
    assert early["mean"] > 0.15 * clean, "mean ablation leaves a good part of the answer"
    assert early["zero"] < 0 and early["resample"] < 0, "zero and resample tip it towards the wrong name"
    negative = table["negative"]
    assert negative["zero"] > clean + 1 and negative["mean"] > clean + 1, "removing the push raises the logit difference"
    assert abs(negative["resample"] - clean) < 0.1 * clean, "resample leaves it about where it was"


# ------------------------------------------------------------------------------------------
# Section 4: path patching
# ------------------------------------------------------------------------------------------
def test_l3h1_acts_more_through_mlp3_than_directly():
    m, runs = model(), chapter_runs()
    score, clean, abc = runs["score"], runs["clean"], runs["abc"]
    base = score(runs["logits"]["clean"])
    total = base - score(ref.ablate_heads(m, clean, [(3, 1)], "resample", abc))
    direct = base - ref.path_patch(m, clean, abc, (3, 1), "blocks.3.hook_resid_post", score)
    through_mlp = base - ref.path_patch(m, clean, abc, (3, 1), "blocks.3.hook_mlp_out", score)
    attribution = ch03.head_attribution(m, runs["set"])[3, 1].mean()
    assert through_mlp > 0.5 * total, "more than half goes through MLP3"
    assert direct < through_mlp
    assert abs(direct + through_mlp - total) < 0.05 * total, "the two paths add up to nearly the whole effect"
    assert abs(direct - attribution) < 0.25 * attribution, "the direct path costs about the direct attribution"
    assert total > 2 * attribution, "Chapter 03's disagreement: the total effect is far above the direct attribution"
    on_abc = ch03.head_attribution(m, ref.abc_prompts(runs["set"], seed=0))[3, 1].mean()
    assert abs(on_abc) < 0.25 * attribution, "the head's output on the ABC prompts has almost no direct share"


# ------------------------------------------------------------------------------------------
# Section 5: attribution patching
# ------------------------------------------------------------------------------------------
def test_attribution_correlates_but_underestimates_the_large_effects():
    runs = chapter_runs()
    attribution = ref.attribution_patch_heads(model(), runs["clean"], runs["swap"], runs["swap_metric"])
    activation = head_sweeps()["by_position"]
    assert torch.corrcoef(torch.stack([attribution.flatten(), activation.flatten()]))[0, 1] > 0.9
    for layer, head, position in top_cells(activation, 4):
        assert attribution[layer, position, head] < activation[layer, position, head]
    for layer, head in [(0, 3), (0, 6)]:
        assert attribution[layer, S2, head] < 0.5 * activation[layer, S2, head], "worst on the early heads at S2"
    l3h1 = attribution[3, END, 1] / activation[3, END, 1]
    assert l3h1 > attribution[0, S2, 3] / activation[0, S2, 3], "L3H1 is closer"


# ------------------------------------------------------------------------------------------
# Section 6: circuits
# ------------------------------------------------------------------------------------------
def test_circuit_reports_on_the_chapter_prompts():
    m, runs = model(), chapter_runs()
    alone = ref.circuit_report(m, runs["clean"], runs["abc"], [(3, 1, END)], runs["score"])
    four = ref.circuit_report(m, runs["clean"], runs["abc"], [(3, 1, END), (0, 3, S2), (0, 6, S2), (0, 7, END)], runs["score"])
    assert alone["faithfulness"] < 0.1, "L3H1 alone carries almost nothing"
    assert four["faithfulness"] > 1.0, "the four cells carry all of it, and more"
    assert four["completeness gap"] > 0.1, "something is still missing"
    assert four["minimality"] > 0.1


def test_whole_model_as_circuit_is_faithful_and_empty_circuit_is_not():
    m, runs = model(), chapter_runs()
    tokens, reference, score = runs["clean"][:4], runs["abc"], runs["score"]
    everything = ref.all_nodes(m, tokens.shape[1])
    assert torch.allclose(ref.circuit_logits(m, tokens, reference, everything), m(tokens), atol=1e-4)
    assert ref.circuit_faithfulness(m, runs["clean"], reference, everything, score) == pytest.approx(1.0, abs=1e-4)
    assert ref.circuit_faithfulness(m, runs["clean"], reference, [], score) == pytest.approx(0.0, abs=1e-4)


def test_the_reference_circuit_is_faithful_on_held_out_prompts():
    from utils.exercises import ch06_patching as checks

    tokens, reference, score = checks.held_out_ioi()
    report = ref.circuit_report(model(), tokens, reference, ref.ioi_circuit(), score)
    assert report["faithfulness"] >= checks.MIN_FAITHFULNESS and report["minimality"] >= checks.MIN_DROP


# ------------------------------------------------------------------------------------------
# Section 7: the induction circuit
# ------------------------------------------------------------------------------------------
def test_previous_token_heads_reach_the_induction_heads_through_their_keys():
    m = model()
    seq_len = 10
    repeats = ch03.repeated_tokens(m, seq_len, batch=16, seed=0)
    others = ch03.repeated_tokens(m, seq_len, batch=16, seed=1)

    def loss(logits):
        return ref.repeated_half_loss(logits, repeats, seq_len)

    base = loss(m(repeats)).item()
    assert base < 0.1
    for sender, moves in (((0, 2), True), ((0, 4), True), ((0, 1), False)):
        paths = {part: ref.path_patch(m, repeats, others, sender, f"blocks.3.attn.hook_{part}", loss,
                                      receiver_heads=[4, 5, 7]).item() for part in "qkv"}
        if moves:
            assert paths["k"] > 9 * base, (sender, paths)
        else:
            assert paths["k"] < 1.2 * base, (sender, paths)
        assert paths["q"] < 1.5 * base and paths["v"] < 1.5 * base, (sender, paths)
    first_copy = -m(repeats).log_softmax(-1)[:, :seq_len].gather(-1, repeats[:, 1:seq_len + 1, None]).mean()
    circuit = [(0, 2), (0, 4), (3, 4), (3, 5), (3, 7)]
    assert loss(ref.ablate_heads(m, repeats, circuit, "mean", others)) > 0.9 * first_copy, "back up to the first copy"
    assert loss(ref.ablate_heads(m, repeats, circuit, "resample", others)) > first_copy
    assert loss(ref.ablate_heads(m, repeats, [(1, 1), (2, 1)], "mean", others)) < 3 * base, "other heads: harmless"
    assert loss(ref.ablate_heads(m, repeats, [(1, 1), (2, 1)], "zero")) > 1.0, "zeroing them wrecks it"
    assert math.log(len(world.INDUCTION_POOL)) == pytest.approx(5.7, abs=0.05)


# ------------------------------------------------------------------------------------------
# Section 8: the induction toy
# ------------------------------------------------------------------------------------------
@functools.cache
def toy_curves():
    checkpoints = induction_toy.load_checkpoints()
    length = 12
    tokens = induction_toy.training_batch(torch.Generator().manual_seed(1), 32, length=length)[:, :2 * length + 1]
    loss = torch.stack([ref.repeated_half_loss(toy(tokens), tokens, length) for toy in checkpoints.values()])
    score = torch.stack([ch03.induction_scores(ch03.all_patterns(toy, tokens), length)[1].max()
                         for toy in checkpoints.values()])
    return list(checkpoints), loss, score


def test_toy_checkpoints_are_small_safetensors():
    assert induction_toy.CHECKPOINTS.suffix == ".safetensors"
    assert induction_toy.CHECKPOINTS.stat().st_size < 2e6


def test_toy_induction_forms_in_a_phase_change():
    steps, loss, score = toy_curves()
    assert loss[0] > 3.5 and loss[-1] < 0.6, "from a uniform guess to copying"
    assert score[0] < 0.15 and score[-1] > 0.5, "a layer-1 head's attention moves onto the induction target"
    loss_change, score_change = ref.steepest_change(steps, loss), ref.steepest_change(steps, score)
    assert abs(loss_change[0] - score_change[0]) <= induction_toy.EVERY, "the two curves turn together"
    i = steps.index(loss_change[0])
    assert loss[:max(i - 4, 1)].min() > 3.0, "the loss stays near the uniform guess for hundreds of steps first"


@pytest.mark.slow
def test_toy_checkpoints_are_reproducible():
    """Retraining the first steps with the shipped recipe gives the shipped checkpoint (float16)."""
    with torch.enable_grad():
        retrained = induction_toy.train(steps=100, every=100)
    shipped = induction_toy.load_checkpoints()[100].state_dict()
    for name, value in retrained[100].items():
        assert torch.allclose(value.half().float(), shipped[name], atol=2e-3), name


# ------------------------------------------------------------------------------------------
# Section 10: the corruption matters, here less than it might
# ------------------------------------------------------------------------------------------
def test_swap_and_abc_point_at_the_same_heads():
    runs = chapter_runs()
    abc_heads = ref.patch_head_output(model(), runs["abc"], runs["clean"], runs["abc_metric"])
    swap_heads = head_sweeps()["denoising"]
    assert set(abc_heads.flatten().topk(4).indices.tolist()) == set(swap_heads.flatten().topk(4).indices.tolist())
