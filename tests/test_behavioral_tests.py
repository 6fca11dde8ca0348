"""Chapter 01's claims, tested: the shortcut classifier passes in distribution and fails shifted,
its weights sit on the marker, the Wilson interval covers, and the batched logits agree with
running each prompt alone."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.claims import claim, claim_seed
from utils.organism.world import prompt_set
from utils.references import ch01_behavioral_tests as ref


@functools.cache
def classifiers():
    """The chapter's two classifiers, trained as in the notebook (the claim seed moves their data
    and initialisation: the text's claims hold for any draw, not only the notebook's)."""
    seed = claim_seed()
    images, sick, _ = ref.scanner_images(4000, marker_agreement=0.95, seed=seed)
    shortcut = ref.train_scan_classifier(images, sick, seed=seed)
    control = ref.train_scan_classifier(*ref.scanner_images(4000, marker_agreement=0.5, seed=1 + seed)[:2], seed=seed)
    return shortcut, control


def accuracy(classifier, marker_agreement: float) -> float:
    images, sick, _ = ref.scanner_images(2000, marker_agreement=marker_agreement, seed=2 + 10 * claim_seed())
    return ref.accuracy_interval(ref.scan_margins(classifier, images, sick))[0]


def test_shortcut_passes_in_distribution_and_fails_shifted():
    shortcut, _ = classifiers()
    claim("ch01: shortcut classifier, same hospital (marker agreement 0.95)", accuracy(shortcut, 0.95), above=0.9)
    claim("ch01: shortcut classifier, new hospital (0.5)", accuracy(shortcut, 0.5), below=0.7)
    claim("ch01: shortcut classifier, reversed marker (0.05)", accuracy(shortcut, 0.05), below=0.3)


def test_shortcut_beats_the_control_in_distribution_only():
    shortcut, control = classifiers()
    claim("ch01: shortcut minus control, same hospital", accuracy(shortcut, 0.95) - accuracy(control, 0.95), above=0)
    claim("ch01: control classifier, new hospital (0.5)", accuracy(control, 0.5), above=0.8)
    claim("ch01: control minus shortcut, new hospital", accuracy(control, 0.5) - accuracy(shortcut, 0.5), above=0.15)


def test_worst_group_exposes_the_shortcut_without_a_second_hospital():
    shortcut, control = classifiers()
    images, sick, marker = ref.scanner_images(2000, marker_agreement=0.95, seed=2 + 10 * claim_seed())
    groups = [(bool(s), bool(m)) for s, m in zip(sick, marker)]
    claim("ch01: shortcut classifier, worst group",
          min(ref.group_accuracy(ref.scan_margins(shortcut, images, sick), groups).values()), below=0.3)
    claim("ch01: control classifier, worst group",
          min(ref.group_accuracy(ref.scan_margins(control, images, sick), groups).values()), above=0.6)


def _region_effects(classifier) -> tuple[float, float]:
    """How far the marker region moves the logit (marker vs none) and the lungs move it (sick vs healthy)."""
    images, sick, marker = ref.scanner_images(2000, marker_agreement=0.5, seed=3 + 10 * claim_seed())
    with torch.no_grad():
        parts = ref.pixel_contributions(classifier, images)  # [batch, height, width]
    from_marker = parts[:, ref.marker_mask()].sum(-1)
    from_lungs = parts[:, ref.lung_mask()].sum(-1)
    return (from_marker[marker].mean() - from_marker[~marker].mean()).item(), \
        (from_lungs[sick].mean() - from_lungs[~sick].mean()).item()


def test_attribution_finds_the_marker():
    shortcut, control = classifiers()
    marker_effect, lung_effect = _region_effects(shortcut)
    claim("ch01: shortcut classifier, marker effect / |lung effect|", marker_effect / abs(lung_effect), above=2)
    marker_effect, lung_effect = _region_effects(control)
    claim("ch01: control classifier, lung effect / |marker effect|", lung_effect / abs(marker_effect), above=2)
    images, _, _ = ref.scanner_images(50, marker_agreement=0.5, seed=4)
    with torch.no_grad():
        total = ref.pixel_contributions(shortcut, images).sum(dim=(1, 2)) + shortcut.linear.bias
        assert torch.allclose(total, shortcut(images), atol=1e-4)


@pytest.mark.parametrize("p, n", [(0.5, 20), (0.9, 50), (0.97, 100)])
def test_wilson_interval_covers_about_95_percent(p, n):
    generator = torch.Generator().manual_seed(claim_seed())
    trials = 2000
    successes = torch.rand(trials, n, generator=generator) < p  # [trials, n]
    covered = 0
    for row in successes:
        _, low, high = ref.accuracy_interval(torch.where(row, 1.0, -1.0))
        covered += low <= p <= high
    # "About 95%": the exact coverage (a binomial sum) is 0.959, 0.970 and 0.969 at these (p, n);
    # 2,000 simulated test sets add about 0.004 of noise, and one run measured 0.978, within 0.0075
    # of the old upper bar 0.985.
    claim(f"ch01: Wilson interval coverage at p={p}, n={n}", covered / trials, above=0.92)
    claim(f"ch01: Wilson interval coverage at p={p}, n={n} (at most)", covered / trials, below=0.99)


@pytest.fixture(scope="module")
def organism():
    from utils.models import load_model

    return load_model(verbose=False, device="cpu")


def test_batched_logits_match_each_prompt_alone(organism):
    prompts = prompt_set("ioi", "test", n=4).prompts + prompt_set("facts", "test", n=3).prompts
    batched = ref.final_logits(organism, prompts, batch_size=4)
    with torch.no_grad():
        alone = torch.stack([organism(prompt)[0, -1] for prompt in prompts])
    assert torch.allclose(batched, alone, atol=1e-3)


def test_logit_diff_matches_training_time_scoring(organism):
    """Same numbers as utils.organism.evaluate when it is given the tokenizer that adds no BOS itself."""
    from transformers import AutoTokenizer

    from utils.models import ORGANISM_DIR
    from utils.organism.evaluate import behaviour_scores

    prompts = prompt_set("sentiment", "test", n=40)
    raw_tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    scores = behaviour_scores(lambda tokens: organism(tokens), raw_tokenizer, prompts)
    assert abs(ref.logit_diff(organism, prompts).mean().item() - scores["logit_diff"]) < 1e-3


def test_suite_edits_use_only_known_words(organism):
    reviews = prompt_set("sentiment", "test", n=50)
    for word in (" not", " very", " really"):
        ref.assert_known_words(organism, ref.insert_word(reviews, word, [" " + a for a in reviews.labels["adjective"]]))
    with pytest.raises(ValueError, match="unknown"):
        ref.assert_known_words(organism, ref.insert_word(reviews, " terribly", [" " + a for a in reviews.labels["adjective"]]))


def test_the_organism_findings_the_chapter_describes(organism):
    """The chapter's prose describes these results; if the organism is retrained and this fails,
    update the "What the suite finds" and breakdown paragraphs of solutions/01_behavioral_tests.py."""
    from utils.organism import world

    def accuracy(prompts):
        return ref.accuracy_interval(ref.logit_diff(organism, prompts))[0]

    seed = claim_seed()  # the samples of 100 prompts the chapter draws with seed 0
    reviews, ioi, facts = (prompt_set("sentiment", "test", n=100, seed=seed), prompt_set("ioi", "test", n=100, seed=seed),
                           prompt_set("facts", "train", n=100, seed=seed))
    adjectives = [" " + a for a in reviews.labels["adjective"]]
    for name, prompts in (("reviews", reviews), ("IOI", ioi), ("facts", facts)):
        claim(f"ch01: organism accuracy on 100 {name}", accuracy(prompts), above=0.95)
    claim("ch01: reviews with ' very' (intensifiers pass)", accuracy(ref.insert_word(reviews, " very", adjectives)), above=0.9)
    claim("ch01: reviews with ' not' (negation fails)", accuracy(ref.insert_word(reviews, " not", adjectives, flip=True)),
          below=0.2)
    verbs = [" " + world.IOI_TEMPLATES[t].split("{S} ")[1].split()[0] for t in ioi.labels["template"]]
    claim("ch01: IOI with ' also'", accuracy(ref.insert_word(ioi, " also", verbs)), above=0.9)
    about_io = ref.with_prefix(ioi, [f"{io} saw a red dog in the park. " for io in ioi.labels["io"]])
    about_s = ref.with_prefix(ioi, [f"{s} saw a red dog in the park. " for s in ioi.labels["s"]])
    claim("ch01: IOI after a sentence about the indirect object", accuracy(about_io), above=0.6)  # both cost,
    claim("ch01: IOI after a sentence about the indirect object (at most)", accuracy(about_io), below=0.85)  # about_io
    claim("ch01: IOI after a sentence about the subject (at most)", accuracy(about_s), below=0.95)  # the most
    claim("ch01: IOI distractor cost, about_io minus about_s", accuracy(about_s) - accuracy(about_io), above=0.05)
    days = ref.replace_names(ioi, [world.DAYS[i % 7] for i in range(len(ioi))],
                             [world.DAYS[(i + 3) % 7] for i in range(len(ioi))])
    claim("ch01: IOI with days for names", accuracy(days), above=0.55)  # in between
    claim("ch01: IOI with days for names (at most)", accuracy(days), below=0.95)
    countries = list(world.COUNTRIES)
    others = [countries[(countries.index(c) + 7) % len(countries)] for c in facts.labels["country"]]
    claim("ch01: facts after a sentence naming another country",
          accuracy(ref.with_prefix(facts, [f"Mary wrote to John from {c} on Monday. " for c in others])), above=0.9)
    truth = prompt_set("truth", "test")  # the whole test split: no sample to vary
    by_label = ref.group_accuracy(ref.logit_diff(organism, truth), truth.labels["truth"])
    assert by_label[1] == 1.0  # a few errors, all false statements called true
    claim("ch01: truth verdict on false statements", by_label[0], above=0.9)
    claim("ch01: truth verdict on false statements (at most)", by_label[0], below=1.0)
    statements = truth.subset([i for i, (p, v) in enumerate(zip(truth.prompts, truth.labels["stated"]))
                               if f" is {v}." in p])
    negated = ref.insert_word(statements, " not", [" " + v for v in statements.labels["stated"]], flip=True)
    claim("ch01: negated statements (about chance)", accuracy(negated), above=0.3)
    claim("ch01: negated statements (about chance, at most)", accuracy(negated), below=0.7)


def test_the_training_curves_the_chapter_describes():
    """'Behaviour over training': the truth verdict is learnt in the facts-first phase and kept;
    induction appears within about 600 steps after 2,000 flat ones; IOI jumps last, after induction."""
    curves = ref.training_curves()
    steps = torch.tensor(curves["step"])
    truth, induction, ioi = (torch.tensor(curves[key]) for key in ("truth_accuracy", "induction_loss_ratio", "ioi_accuracy"))
    early = steps < 600
    assert truth[early][0] < 0.65 and truth[early][-1] > 0.85  # from chance to about 90% in the first phase
    assert truth[~early].min() > 0.8  # and kept
    facts = torch.tensor(curves["facts_top1"])
    assert facts[early][-1] > 0.95  # the facts, too, are learnt in the first phase
    flat = induction > 0.9
    assert steps[flat].max() >= 2000 and flat[: int(flat.sum())].all()  # flat first, for more than 2,000 steps
    formed = int(steps[induction < 0.1].min())
    assert formed - int(steps[flat].max()) <= 600  # then under a tenth within about 600 steps
    assert induction[-1] < 0.1
    assert (ioi[steps < 3000] < 0.65).all() and ioi[-1] > 0.95  # chance for 3,000 steps, then right
    jump = int(steps[ioi > 0.9].min())
    assert jump - int(steps[ioi < 0.65].max()) <= 200  # between two evaluations
    assert jump > int(steps[induction < 0.3].min())  # after induction formed


# ------------------------------------------------------------------------------------------
# Wald vs Wilson: the coverage the text reports, re-simulated (another seed), and the slider
# ------------------------------------------------------------------------------------------
@functools.cache
def coverage(n: int, seed: int = 1) -> dict:
    return ref.interval_coverage(ref.COVERAGE_RATES, n, seed=seed + claim_seed())


def test_the_vectorised_wilson_interval_is_the_one_of_exercise_1_3():
    for right, n in ((30, 30), (28, 30), (3, 10), (150, 300)):
        _, low, high = ref.accuracy_interval(torch.tensor([1.0] * right + [-1.0] * (n - right)))
        wilson = ref.wilson_interval(torch.tensor(float(right)), n)
        assert abs(wilson[0].item() - low) < 1e-6 and abs(wilson[1].item() - high) < 1e-6


def test_wald_covers_about_half_near_the_edge_at_30_prompts_and_wilson_keeps_its_promise():
    """The text: at n = 30 and p >= 0.95, Wald about half, Wilson about 95%; Wald's failing band
    narrows with n but at n = 300 still falls below 80%; Wilson averages 95% at every n."""
    high = ref.COVERAGE_RATES >= 0.95
    at_30 = coverage(30)
    claim("ch01: Wald coverage at n=30, p>=0.95", at_30["Wald"][high].mean(), above=0.35)
    claim("ch01: Wald coverage at n=30, p>=0.95 (at most)", at_30["Wald"][high].mean(), below=0.65)
    claim("ch01: Wilson coverage at n=30, p>=0.95", at_30["Wilson"][high].mean(), above=0.92)
    claim("ch01: Wilson coverage at n=30, p>=0.95 (at most)", at_30["Wilson"][high].mean(), below=0.98)
    wald_means = [coverage(n)["Wald"].mean().item() for n in ref.COVERAGE_SIZES]
    assert wald_means == sorted(wald_means) and wald_means[-1] < 0.95
    claim("ch01: Wald's lowest coverage at n=300", coverage(300)["Wald"].min(), below=0.8)
    claim("ch01: Wilson's mean coverage, farthest from 95% over n",
          max(abs(coverage(n)["Wilson"].mean().item() - 0.95) for n in ref.COVERAGE_SIZES), below=0.01)
    zero_width = ref.wald_interval(torch.tensor(30.0), 30)  # every prompt right: Wald's interval is [1, 1]
    assert zero_width[0] == zero_width[1] == 1


def test_the_coverage_slider_shows_one_n_at_a_time_and_the_live_sliders_resimulate():
    figure = ref.coverage_slider_figure(ref.COVERAGE_SIZES, ref.COVERAGE_RATES)
    steps = figure.layout.sliders[0].steps
    assert len(figure.data) == 2 * len(ref.COVERAGE_SIZES) == 2 * len(steps)
    for k, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert visible[2 * k] and visible[2 * k + 1] and sum(visible) == 2
        assert step.label == str(ref.COVERAGE_SIZES[k])
    explorer = ref.CoverageExplorer(n=30)
    assert torch.equal(explorer.coverage["Wald"], ref.interval_coverage(ref.COVERAGE_RATES, 30)["Wald"])
    explorer.n.value = 300  # what dragging the slider does: the observer re-simulates
    assert torch.equal(explorer.coverage["Wilson"], ref.interval_coverage(ref.COVERAGE_RATES, 300)["Wilson"])
    explorer.level.value = "80%"
    assert abs(explorer.coverage["Wilson"].mean() - 0.8) < 0.02
    assert "80%" in explorer.figure.layout.title.text and "n = 300" in explorer.figure.layout.title.text
    assert explorer.figure.layout.shapes[0].y0 == pytest.approx(0.8, abs=1e-3)  # the promised line moves too


# ------------------------------------------------------------------------------------------
# The marker agreement in training: the curves the text describes, and the live sliders
# ------------------------------------------------------------------------------------------
def test_a_stronger_marker_habit_keeps_the_headline_and_costs_the_worst_group():
    """The text: the same-hospital score stays above 90% and peaks at the strongest habit; the worst
    group falls from about 84% to nothing; the new hospital falls to a coin flip; at 0.8 the worst
    group is below one half while the headline has barely moved from the no-marker hospital's."""
    curves = ref.shortcut_curves()
    agreements = list(ref.SHORTCUT_AGREEMENTS)
    same, worst = curves["same hospital: accuracy"], curves["same hospital: worst group"]
    new = curves["new hospital (0.5): accuracy"]
    assert min(same) > 0.9 and max(same) == same[-1], same
    assert worst == sorted(worst, reverse=True) and 0.78 < worst[0] < 0.9 and worst[-1] < 0.05, worst
    assert new == sorted(new, reverse=True) and new[-1] < 0.55, new
    at = agreements.index(0.8)
    assert worst[at] < 0.5 and abs(same[at] - same[0]) < 0.03, (worst[at], same[at], same[0])


def test_the_shortcut_explorer_retrains_only_when_the_training_slider_moves():
    explorer = ref.ShortcutExplorer(train_agreement=0.95, test_agreement=0.95)
    first = explorer.classifier
    assert explorer.scores["worst"] < 0.1
    explorer.test.value = 0.5  # moving the test slider rescores without retraining
    assert explorer.classifier is first and explorer.scores["accuracy"] < 0.6
    explorer.train.value = 0.5  # moving the training slider retrains
    assert explorer.classifier is not first and explorer.scores["worst"] > 0.75
    assert "worst group" in explorer.figure.layout.title.text and len(explorer.figure.data[0].x) == 5


# ------------------------------------------------------------------------------------------
# Your own edits: try_prompt, its unknown-word warning, and the live text boxes
# ------------------------------------------------------------------------------------------
def test_not_bad_reads_as_bad_and_unknown_words_are_named(organism):
    """The text: "not bad" (with or without " very") gets " hated"; the third example has two unknown words."""
    model = organism
    for prompt in ("The movie was not bad. I", "The movie was not very bad. I"):
        trial = ref.try_prompt(model, prompt, " loved", " hated")
        assert trial["logit_diff"] < 0 and trial["top"][0][0] == " hated" and not trial["unknown"], (prompt, trial)
    assert ref.try_prompt(model, "The film was rubbish. I", " loved", " hated")["unknown"] == ["film", "rubbish"]
    assert ref.try_prompt(model, "The movie was fun. I", " loved it", " hated")["logit_diff"] is None


def test_the_prompt_tester_reruns_when_a_box_changes(organism):
    model = organism
    tester = ref.PromptTester(model)
    first = tester.trial["logit_diff"]
    tester.prompt.value = "The movie was great. I"  # what pressing Enter in the box does
    assert tester.trial["logit_diff"] > 0 > first
    tester.answer.value = " Narnia"
    assert "unknown to the model: Narnia" in tester.text and "one known token" in tester.text
    assert tester.trial["logit_diff"] is None
