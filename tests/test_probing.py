"""Chapter 02 (probing): properties of its helpers, and the claims its text makes about the organism.

The organism tests re-measure, at a smaller scale, what the chapter's prose says (truth is read only
from the trained model; the random model's "sentiment" is a word shortcut; the gender of the
indirect object is decodable but not used). If a retrained organism breaks a claim, they fail and
the prose needs another look.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.claims import claim, claim_seed
from utils.models import load_model
from utils.organism import world
from utils.references import ch02_probing as ref


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def test_remove_direction_leaves_nothing_along_it_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(0)
    resid = torch.randn(4, 6, 32, generator=generator)
    direction = torch.randn(32, generator=generator) * 5
    unit = direction / direction.norm()
    removed = ref.remove_direction(resid, direction)
    assert (removed @ unit).abs().max() < 1e-5
    assert torch.allclose(ref.remove_direction(removed, direction), removed, atol=1e-5)
    other = ref.remove_direction(torch.randn(32, generator=generator), direction)  # a vector orthogonal to it
    assert torch.allclose((resid + other) - ref.remove_direction(resid + other, direction),
                          resid - removed, atol=1e-5)


def test_control_labels_are_balanced_fixed_per_key_and_order_free():
    keys = [f"word{i % 13}" for i in range(100)]
    labels = ref.control_task_labels(keys, seed=3)
    per_key = {key: {int(label) for k, label in zip(keys, labels) if k == key} for key in set(keys)}
    assert all(len(values) == 1 for values in per_key.values())
    assert sum(values.pop() for values in per_key.values()) == 13 // 2
    shuffled = keys[::-1]
    relabelled = dict(zip(shuffled, ref.control_task_labels(shuffled, seed=3).tolist()))
    assert relabelled == dict(zip(keys, labels.tolist()))
    assert not torch.equal(labels, ref.control_task_labels(keys, seed=4))


def test_probe_starts_at_zero_and_trains_deterministically():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(120, 20, generator=generator) + 4.0
    y = (x[:, 0] > 4.0).long()
    x[:, 0] += 1.5 * (2 * y - 1)  # a margin between the classes, so a good probe separates them all
    assert torch.equal(ref.LinearProbe(x)(x), torch.zeros(120))
    first, second = ref.train_probe(x, y), ref.train_probe(x, y)
    assert torch.equal(first(x), second(x))
    assert ((first(x) > 0) == y.bool()).float().mean() > 0.95
    assert torch.isclose(first.direction.norm(), torch.tensor(1.0))
    assert first.direction.abs().argmax() == 0 and first.direction[0] > 0  # the label lives on coordinate 0


def test_direction_accuracy_does_not_care_which_way_the_direction_points():
    generator = torch.Generator().manual_seed(2)
    y = torch.arange(200) % 2
    x = torch.randn(200, 8, generator=generator) + 10.0
    x[:, 3] += 5.0 * y  # classes 5 standard deviations apart: about 99% separable
    direction = ref.mean_difference_direction(x[:150], y[:150])
    forward = ref.direction_accuracy(direction, x[:150], y[:150], x[150:], y[150:])
    backward = ref.direction_accuracy(-direction, x[:150], y[:150], x[150:], y[150:])
    assert forward == backward > 0.9


# ------------------------------------------------------------------------------------------
# The organism and the claims of the chapter's text
# ------------------------------------------------------------------------------------------
# The chapter draws its prompt samples, shuffles, control labels and probe initialisations with
# seed 0 (control labels 1); the claim seed moves every one of them, so `make claims` shows
# whether a sentence holds for other draws, not only the notebook's.
SEED = claim_seed()


@functools.cache
def models() -> dict:
    return {"organism": load_model(verbose=False, device="cpu"), "baseline": ref.random_init_model(seed=0)}


@functools.cache
def measured(model_name: str, family: str, label: str) -> dict:
    data = ref.labelled_residuals(models()[model_name], family, label, n_train=600, n_test=300, progress=False,
                                  seed=SEED)
    data["accuracy"] = ref.probe_accuracy_by_layer(data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    return data


def test_tokenize_prepends_one_bos_and_pads_on_the_right():
    model = models()["organism"]
    tokens, last = ref.tokenize(model, ["The movie was dreadful. I", "I thought the book was really fun, so I"])
    bos = model.tokenizer.bos_token_id
    assert (tokens[:, 0] == bos).all() and (tokens[:, 1] != bos).all()
    assert last.tolist() == [6, 10]
    assert model.to_string(tokens[0, last[0]]) == " I"


def test_tokens_and_answer_ids_are_made_on_the_models_device():
    """On CUDA or MPS the embeddings live on the GPU, so the ids must too. With no GPU here, a model
    whose cfg names the "meta" device stands in: whatever tokenize builds must follow cfg.device."""
    from types import SimpleNamespace

    model = models()["organism"]
    assert ref.tokenize(model, ["The movie was dreadful. I"])[0].device == torch.device(model.cfg.device)
    elsewhere = SimpleNamespace(tokenizer=model.tokenizer, cfg=SimpleNamespace(device="meta"))
    tokens, last = ref.tokenize(elsewhere, ["The movie was dreadful. I", "I loved it, so I"])
    assert tokens.device.type == "meta" and last.device.type == "meta"
    assert ref.answer_ids(elsewhere, [" loved", " hated"]).device.type == "meta"


def test_nothing_is_readable_from_the_embeddings_of_the_last_token():
    for model_name in ("organism", "baseline"):
        for family, label in (("truth", "truth"), ("sentiment", "sentiment"), ("ioi", "io_gender")):
            claim(f"ch02: {model_name}, {label} probe on the last token's embedding",
                  measured(model_name, family, label)["accuracy"][0], below=0.62)


def test_truth_is_read_from_the_first_block_on_and_agrees_with_the_output():
    """The text says: the organism's first block does most of the work, later blocks sharpen it, the
    probe agrees with the output verdict, and the baseline stays at chance."""
    prompts = world.prompt_set("truth", "test")
    verdict = (ref.logit_diffs(models()["organism"], prompts) > 0).float().mean()
    probe = measured("organism", "truth", "truth")["accuracy"]
    claim("ch02: truth probe after block 0", probe[1], above=0.9)
    claim("ch02: truth probe, last point minus after block 0", probe[-1] - probe[1], above=-0.005)
    claim("ch02: organism's truth verdict (held out)", verdict, above=0.95)
    claim("ch02: |best truth probe - the organism's verdict|", (probe.max() - verdict).abs(), below=0.03)
    claim("ch02: baseline, best truth probe", measured("baseline", "truth", "truth")["accuracy"].max(), below=0.58)


def test_sentiment_is_read_after_one_block_and_gender_only_after_the_last():
    sentiment, gender = measured("organism", "sentiment", "sentiment"), measured("organism", "ioi", "io_gender")
    claim("ch02: sentiment probe from block 0 on (lowest)", sentiment["accuracy"][1:].min(), above=0.97)
    claim("ch02: gender probe at the last point", gender["accuracy"][-1], above=0.7)
    claim("ch02: gender probe before the last point (highest)", gender["accuracy"][:-1].max(), below=0.65)


def test_a_probe_fits_shuffled_truth_labels_on_its_training_prompts():
    data = measured("organism", "truth", "truth")
    shuffled = data["y_train"][torch.randperm(len(data["y_train"]), generator=torch.Generator().manual_seed(SEED))]
    train_accuracy, test_accuracy = {}, {}
    for name, labels in (("real", data["y_train"]), ("shuffled", shuffled)):
        probe = ref.train_probe(data["x_train"][-1], labels)
        train_accuracy[name] = ((probe(data["x_train"][-1]) > 0) == labels.bool()).float().mean()
        test_accuracy[name] = ((probe(data["x_test"][-1]) > 0) == data["y_test"].bool()).float().mean()
    claim("ch02: shuffled-label probe, training accuracy", train_accuracy["shuffled"], above=0.6)  # fitting
    claim("ch02: real minus shuffled training accuracy", train_accuracy["real"] - train_accuracy["shuffled"], above=0)
    claim("ch02: shuffled-label probe, held-out accuracy", test_accuracy["shuffled"], below=0.6)
    claim("ch02: real-label truth probe, held-out accuracy", test_accuracy["real"], above=0.95)


def test_random_model_sentiment_is_a_word_shortcut():
    baseline, organism = measured("baseline", "sentiment", "sentiment"), measured("organism", "sentiment", "sentiment")
    claim("ch02: baseline, best sentiment probe (the shortcut)", baseline["accuracy"].max(), above=0.7)
    adjectives = world.prompt_set("sentiment", "train", n=600, seed=SEED).labels["adjective"]
    held_out = set(world.POSITIVE_ADJECTIVES[::3] + world.NEGATIVE_ADJECTIVES[::3])
    new = [i for i, a in enumerate(adjectives) if a in held_out]
    seen = [i for i, a in enumerate(adjectives) if a not in held_out]
    unseen_words = {}
    for name, data in (("baseline", baseline), ("organism", organism)):
        unseen_words[name] = ref.probe_accuracy_by_layer(data["x_train"][:, seen], data["y_train"][seen],
                                                         data["x_train"][:, new], data["y_train"][new]).max()
    claim("ch02: baseline, sentiment on adjectives the probe never saw", unseen_words["baseline"], below=0.7)
    claim("ch02: organism, sentiment on adjectives the probe never saw", unseen_words["organism"], above=0.85)


def test_probe_and_mean_difference_agree_for_sentiment_but_not_for_gender():
    cosines = {}
    for family, label in (("sentiment", "sentiment"), ("ioi", "io_gender")):
        data = measured("organism", family, label)
        x, y = data["x_train"][-1], data["y_train"]
        pair = torch.stack([ref.train_probe(x, y).direction, ref.mean_difference_direction(x, y)])
        cosines[label] = ref.cosine_similarity_matrix(pair)[0, 1].item()
    claim("ch02: cosine of probe and mean difference, sentiment", cosines["sentiment"], above=0.6)
    claim("ch02: cosine of probe and mean difference, gender", cosines["io_gender"], below=0.5)


def control_labels() -> torch.Tensor:
    """The control task's label for each prompt of `measured(..., "sentiment", ...)`: train, then test."""
    adjectives = [world.prompt_set("sentiment", split, n=n, seed=SEED).labels["adjective"]
                  for split, n in (("train", 600), ("test", 300))]
    return ref.control_task_labels(adjectives[0] + adjectives[1], seed=1 + SEED)


def test_control_task_selectivity_is_zero_on_the_random_model_only():
    control = control_labels()
    selectivity = {}
    for name in ("organism", "baseline"):
        data = measured(name, "sentiment", "sentiment")
        control_accuracy = ref.probe_accuracy_by_layer(data["x_train"], control[:600], data["x_test"], control[600:])
        selectivity[name] = (data["accuracy"] - control_accuracy)[1:]
    claim("ch02: baseline, largest |selectivity|", selectivity["baseline"].abs().max(), below=0.1)
    claim("ch02: organism, smallest selectivity from block 0 on", selectivity["organism"].min(), above=0.1)


def test_mean_difference_erasure_leaves_gender_unreadable_at_the_last_point():
    data = measured("organism", "ioi", "io_gender")
    direction = ref.mean_difference_direction(data["x_train"][-1], data["y_train"])
    probe = ref.train_probe(ref.remove_direction(data["x_train"][-1], direction), data["y_train"])
    erased = probe(ref.remove_direction(data["x_test"][-1], direction)) > 0
    claim("ch02: gender probe after erasing the mean difference", (erased == data["y_test"].bool()).float().mean(),
          below=0.62)


def _erased_runs(family: str, label: str) -> tuple:
    model = models()["organism"]
    data = measured("organism", family, label)
    names = ref.residual_hook_names(model.cfg.n_layers)
    own = [ref.mean_difference_direction(x, data["y_train"]) for x in data["x_train"]]
    prompts = world.prompt_set(family, "test", n=150, seed=SEED)
    random_direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(SEED))
    runs = {"nothing": {}, "random": {names[-1]: random_direction}, "last": {names[-1]: own[-1]},
            "every": dict(zip(names, own))}
    return prompts, {run: ref.logit_diffs_without(model, prompts, directions) for run, directions in runs.items()}


def test_sentiment_direction_is_used():
    _, diffs = _erased_runs("sentiment", "sentiment")
    claim("ch02: sentiment accuracy, nothing erased", (diffs["nothing"] > 0).float().mean(), above=0.95)
    ratio = diffs["random"].mean() / diffs["nothing"].mean()
    claim("ch02: sentiment logit diff kept after erasing a random direction", ratio, above=0.8)
    claim("ch02: sentiment logit diff kept after erasing a random direction (at most)", ratio, below=1.2)
    claim("ch02: sentiment accuracy, direction erased at the last point", (diffs["last"] > 0).float().mean(), below=0.65)
    claim("ch02: sentiment accuracy, direction erased everywhere", (diffs["every"] > 0).float().mean(), below=0.65)


def test_gender_is_decodable_but_not_used():
    claim("ch02: best gender probe", measured("organism", "ioi", "io_gender")["accuracy"].max(), above=0.7)
    prompts, diffs = _erased_runs("ioi", "io_gender")
    ratio = diffs["random"].mean() / diffs["nothing"].mean()
    claim("ch02: IOI logit diff kept after erasing a random direction", ratio, above=0.9)
    claim("ch02: IOI logit diff kept after erasing a random direction (at most)", ratio, below=1.1)
    claim("ch02: IOI logit diff kept after erasing gender at the last point", diffs["last"].mean() / diffs["nothing"].mean(),
          above=0.8)
    claim("ch02: IOI accuracy, gender erased at the last point", (diffs["last"] > 0).float().mean(), above=0.95)
    claim("ch02: IOI accuracy, gender erased everywhere", (diffs["every"] > 0).float().mean(), above=0.9)
    same = torch.tensor([(io in world.FEMALE_NAMES) == (s in world.FEMALE_NAMES)
                         for io, s in zip(prompts.labels["io"], prompts.labels["s"])])
    loss = diffs["nothing"] - diffs["every"]
    claim("ch02: IOI loss from erasing gender, same- minus mixed-gender pairs, beyond its allowance",
          abs(loss[same].mean() - loss[~same].mean()) - (0.25 * loss.mean().abs() + 0.5), below=0)


def test_sentiment_is_readable_at_the_adjective_from_the_embedding_on_the_organism_only():
    held_out = set(world.POSITIVE_ADJECTIVES[::3] + world.NEGATIVE_ADJECTIVES[::3])
    reviews = world.prompt_set("sentiment", "train", seed=0)
    reviews = reviews.subset([i for i, t in enumerate(reviews.labels["template"]) if t == 0][:360])
    y = torch.tensor(reviews.labels["sentiment"])
    unseen = [i for i, a in enumerate(reviews.labels["adjective"]) if a in held_out]
    seen = [i for i, a in enumerate(reviews.labels["adjective"]) if a not in held_out]
    at_adjective = {}
    for name, model in models().items():
        x = ref.collect_residuals(model, reviews.prompts, offset=2, progress=False)
        at_adjective[name] = ref.probe_accuracy_by_layer(x[:, seen], y[seen], x[:, unseen], y[unseen])
    claim("ch02: organism, sentiment at the adjective's embedding (unseen adjectives)", at_adjective["organism"][0],
          above=0.9)
    claim("ch02: baseline, best sentiment at the adjective (unseen adjectives)", at_adjective["baseline"].max(), below=0.8)


def test_shuffled_label_probes_centre_near_chance_and_spread_wider_than_coin_flips():
    """The text: 20 shuffles centre near chance, spread more widely than coin flips on the held-out
    prompts, and one can land well below 0.5; each held-out country-relation pair appears in several
    held-out prompts."""
    data = measured("organism", "truth", "truth")
    shuffles = ref.shuffled_label_accuracies(data["x_train"][-1], data["y_train"], data["x_test"][-1], data["y_test"])
    coin_flip_se = (0.25 / len(data["y_test"])) ** 0.5
    claim("ch02: 20 shuffles, mean training accuracy", shuffles["train"].mean(), above=0.6)
    claim("ch02: 20 shuffles, mean training accuracy (at most)", shuffles["train"].mean(), below=0.9)
    claim("ch02: 20 shuffles, |mean held-out accuracy - 0.5|", (shuffles["test"].mean() - 0.5).abs(), below=0.05)
    claim("ch02: 20 shuffles, held-out spread in coin-flip standard errors", shuffles["test"].std() / coin_flip_se,
          above=1.0)  # 1.15 to 1.62 over seeds 0-3 (1.2 once: seed 3 measured 1.146)
    # "well below 0.5": 3.1 coin-flip standard errors below in seed 0's sample, 1.9 in seed 1's
    claim("ch02: 20 shuffles, lowest held-out accuracy (below 0.5 - 1.5 coin-flip SE)",
          shuffles["test"].min() - (0.5 - 1.5 * coin_flip_se), below=0)
    test = world.prompt_set("truth", "test", seed=SEED)
    pairs = list(zip(test.labels["country"], test.labels["relation"]))
    assert min(pairs.count(pair) for pair in set(pairs)) >= 2


def test_gender_probe_is_near_chance_before_the_last_block():
    accuracy = measured("organism", "ioi", "io_gender")["accuracy"]
    # Below chance by up to three standard errors in seed 0's sample, at chance in seed 1's (at most
    # 0.51), up to 0.587 in seed 2's: the robust statement is "near chance, never above 0.65".
    claim("ch02: gender probe between the first and the last block (highest)", accuracy[1:-1].max(), below=0.65)


def test_a_truth_probe_trained_on_one_relation_reads_the_others():
    data = measured("organism", "truth", "truth")
    relations = {split: world.prompt_set("truth", split, n=n, seed=SEED).labels["relation"]
                 for split, n in (("train", 600), ("test", 300))}
    for point, floor in ((1, 0.75), (-1, 0.9)):  # after block 0: 0.808 to 0.923 over seeds 0-2 (0.8 once)
        lowest = 1.0
        for source in ("capital", "language", "continent"):
            rows = [i for i, r in enumerate(relations["train"]) if r == source]
            probe = ref.train_probe(data["x_train"][point][rows], data["y_train"][rows])
            for target in ("capital", "language", "continent"):
                test_rows = [i for i, r in enumerate(relations["test"]) if r == target]
                with torch.no_grad():
                    predicted = probe(data["x_test"][point][test_rows]) > 0
                lowest = min(lowest, (predicted == data["y_test"][test_rows].bool()).float().mean().item())
        where = "after block 0" if point == 1 else "at the last point"
        claim(f"ch02: a truth probe trained on one relation, on another, {where} (lowest pair)", lowest, above=floor)


def test_adding_the_truth_direction_after_block_0_flips_the_verdict():
    model = models()["organism"]
    data = measured("organism", "truth", "truth")
    gap = data["x_train"][1][data["y_train"] == 1].mean(0) - data["x_train"][1][data["y_train"] == 0].mean(0)
    random_gap = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1 + SEED))
    random_gap = random_gap * gap.norm() / random_gap.norm()
    test = world.prompt_set("truth", "test", seed=SEED)
    hook = ref.residual_hook_names(model.cfg.n_layers)[1]
    for truth, sign in ((0, 1), (1, -1)):
        statements = test.subset([i for i, t in enumerate(test.labels["truth"]) if t == truth])
        flipped = (ref.logit_diffs_with_added(model, statements, hook, sign * 2 * gap) < 0).float().mean()
        by_chance = (ref.logit_diffs_with_added(model, statements, hook, sign * 2 * random_gap) < 0).float().mean()
        kind = "false" if truth == 0 else "true"
        claim(f"ch02: twice the truth gap after block 0 flips {kind} statements", flipped, above=0.95)
        claim(f"ch02: a random push of that length flips {kind} statements", by_chance, below=0.1)


def test_sentiment_removed_after_block_0_is_not_rebuilt_and_the_last_point_is_the_read_out():
    """The text: at the last point the sentiment direction is close to W_U[loved] - W_U[hated], so
    removing it there is weak evidence; removed after block 0 only, the answer still falls to chance."""
    model = models()["organism"]
    data = measured("organism", "sentiment", "sentiment")
    own = [ref.mean_difference_direction(x, data["y_train"]) for x in data["x_train"]]
    ids = ref.answer_ids(model, [" loved", " hated"])
    read_out = model.W_U[:, ids[0]] - model.W_U[:, ids[1]]
    claim("ch02: cosine of the last point's sentiment direction and W_U[loved] - W_U[hated]",
          torch.nn.functional.cosine_similarity(own[-1], read_out, dim=0), above=0.6)
    prompts = world.prompt_set("sentiment", "test", n=150, seed=SEED)
    names = ref.residual_hook_names(model.cfg.n_layers)
    before = ref.logit_diffs(model, prompts)
    after = ref.logit_diffs_without(model, prompts, {names[1]: own[1]})
    claim("ch02: sentiment accuracy before erasing", (before > 0).float().mean(), above=0.95)
    claim("ch02: sentiment accuracy, direction erased after block 0 only", (after > 0).float().mean(), below=0.65)
    claim("ch02: |mean logit diff| left after erasing after block 0, share of before", after.mean().abs() / before.mean(),
          below=0.2)


def test_an_mlp_probe_learns_the_control_task_so_its_selectivity_vanishes():
    """The text: the MLP probe, trained for its 600 steps, learns the random labelling almost
    perfectly from the first block on (above 0.9 at every point); its selectivity stays within 0.1
    of zero, and it beats the linear probe on the control task by more than 0.1. At 300 steps one
    CPU measured 0.937 at one point where others measured 0.99, and seed 1's sample 0.86."""
    control = control_labels()
    data = measured("organism", "sentiment", "sentiment")
    mlp_control = ref.mlp_probe_accuracy_by_layer(data["x_train"], control[:600], data["x_test"], control[600:], seed=SEED)
    mlp_sentiment = ref.mlp_probe_accuracy_by_layer(data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                                                    seed=SEED)
    linear_control = ref.probe_accuracy_by_layer(data["x_train"], control[:600], data["x_test"], control[600:])
    claim("ch02: MLP probe on the control task from block 0 on (lowest)", mlp_control[1:].min(), above=0.9)
    claim("ch02: MLP probe, largest |selectivity| from block 0 on", (mlp_sentiment - mlp_control)[1:].abs().max(),
          below=0.1)
    claim("ch02: MLP minus linear probe on the control task (smallest gap)", (mlp_control - linear_control)[1:].min(),
          above=0.1)


def test_the_difference_of_means_separates_sentiment_cleanly_and_gender_weakly():
    """The projection histograms: sentiment's classes in two humps on either side of the threshold,
    gender's overlapping, so the difference of means classifies gender worse."""
    accuracy = {}
    for family, label in (("sentiment", "sentiment"), ("ioi", "io_gender")):
        data = measured("organism", family, label)
        direction = ref.mean_difference_direction(data["x_train"][-1], data["y_train"])
        accuracy[label] = ref.direction_accuracy(direction, data["x_train"][-1], data["y_train"],
                                                 data["x_test"][-1], data["y_test"])
        if label == "sentiment":
            projection = data["x_test"][-1] @ direction
            claim("ch02: sentiment projections, gap between the classes (no overlap)",
                  projection[data["y_test"] == 1].min() - projection[data["y_test"] == 0].max(), above=0)
    claim("ch02: difference of means classifies sentiment", accuracy["sentiment"], above=0.97)
    claim("ch02: difference of means, sentiment minus gender accuracy", accuracy["sentiment"] - accuracy["io_gender"],
          above=0.1)


def test_the_first_principal_direction_is_the_label_for_truth_and_sentiment_not_gender():
    for family, label in (("truth", "truth"), ("sentiment", "sentiment"), ("ioi", "io_gender")):
        data = measured("organism", family, label)
        directions, share = ref.principal_directions(data["x_train"][-1], k=3)
        accuracies = [ref.direction_accuracy(direction, data["x_train"][-1], data["y_train"], data["x_test"][-1],
                                             data["y_test"]) for direction in directions]
        if label == "io_gender":
            # 0.643 in seed 1's sample, against a bar of 0.65 once: the text's bar is 0.7
            claim("ch02: gender, best of the first three principal directions", max(accuracies), below=0.7)
        else:
            claim(f"ch02: {label}, accuracy of the first principal direction", accuracies[0], above=0.95)
            claim(f"ch02: {label}, variance share of the first over the second principal direction", share[0] / share[1],
                  above=2)


# ------------------------------------------------------------------------------------------
# The projection histograms by label and residual point: the static slider and the live explorer
# ------------------------------------------------------------------------------------------
PROJECTED = (("truth", "truth"), ("sentiment", "sentiment"), ("ioi", "io_gender"))


def _separation(data: dict, point: int) -> float:
    """Distance between the class means of the held-out projections, in pooled standard deviations."""
    direction = ref.mean_difference_direction(data["x_train"][point], data["y_train"])
    projection = data["x_test"][point] @ direction
    groups = [projection[data["y_test"] == value] for value in (0, 1)]
    return ((groups[1].mean() - groups[0].mean()) / ((groups[0].var() + groups[1].var()) / 2).sqrt()).item()


def test_the_projection_slider_shows_when_each_label_splits_into_two_humps():
    """The text: at embed every label's classes overlap; sentiment splits after one block and stays
    split; truth splits after one block less cleanly, and later blocks pull the humps apart;
    gender overlaps everywhere, below one half before the last block."""
    data = {label: measured("organism", family, label) for family, label in PROJECTED}
    points = ref.residual_point_names(models()["organism"].cfg.n_layers)
    figure = ref.projection_slider_figure(data, points)
    steps = figure.layout.sliders[0].steps
    assert len(steps) == len(points) and len(figure.data) == 3 * len(data) * len(points)
    accuracy = {}
    for k, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert sum(visible) == 3 * len(data) and all(visible[9 * k: 9 * k + 9])
        for i, label in enumerate(data):
            d = data[label]
            expected = ref.direction_accuracy(ref.mean_difference_direction(d["x_train"][k], d["y_train"]),
                                              d["x_train"][k], d["y_train"], d["x_test"][k], d["y_test"])
            assert step.args[1][f"annotations[{i}].text"] == f"{label}: {expected:.2f}"
            accuracy[label, k] = expected
            histogram = ref.projection_histogram(d["x_train"][k], d["y_train"], d["x_test"][k], d["y_test"])
            assert histogram["counts"].sum(1).tolist() == [(d["y_test"] == v).sum().item() for v in (0, 1)]
    last = len(points) - 1
    claim("ch02: slider, best accuracy at embed over the labels", max(accuracy[label, 0] for label in data), below=0.6)
    sentiment = data["sentiment"]
    gaps = []
    for k in range(1, len(points)):
        projection = sentiment["x_test"][k] @ ref.mean_difference_direction(sentiment["x_train"][k], sentiment["y_train"])
        gaps.append((projection[sentiment["y_test"] == 1].min() - projection[sentiment["y_test"] == 0].max()).item())
    claim("ch02: slider, sentiment's two humps from block 0 on (smallest gap)", min(gaps), above=0)
    truth = data["truth"]
    # Whether truth's humps after block 0 overlap at all depends on which 600 of the 720 training
    # statements fit the direction (seed 1: no held-out statement on the wrong side of either
    # hump's extreme); the text claims only what holds for every sample: closer humps, lower accuracy.
    claim("ch02: slider, truth accuracy after block 0", accuracy["truth", 1], above=0.85)
    claim("ch02: slider, truth accuracy gain from block 0 to the last point", accuracy["truth", last] - accuracy["truth", 1],
          above=0)
    claim("ch02: slider, truth separation gain from block 0 to the last point (pooled SDs)",
          _separation(truth, last) - _separation(truth, 1), above=0.5)
    claim("ch02: slider, gender at every point (highest)", max(accuracy["io_gender", k] for k in range(len(points))),
          below=0.7)  # 0.57 to 0.61 over seeds 0-2
    claim("ch02: slider, gender before the last point (highest)", max(accuracy["io_gender", k] for k in range(last)),
          below=0.65)  # 0.47 to 0.553 over seeds 0-2


def test_the_live_projection_explorer_redraws_for_the_chosen_model_label_and_point():
    data = {("organism", label): measured("organism", family, label) for family, label in PROJECTED}
    data["baseline", "sentiment"] = measured("baseline", "sentiment", "sentiment")
    points = ref.residual_point_names(models()["organism"].cfg.n_layers)
    explorer = ref.ProjectionExplorer(data, points, label="sentiment")
    assert explorer.point.value == points[-1] and explorer.histogram["accuracy"] > 0.97
    explorer.label.value = "io_gender"  # what choosing from the menu does: the observer redraws
    explorer.point.value = points[0]  # and what dragging the slider does
    d = data["organism", "io_gender"]
    expected = ref.projection_histogram(d["x_train"][0], d["y_train"], d["x_test"][0], d["y_test"])
    assert explorer.histogram["accuracy"] == expected["accuracy"]
    assert torch.equal(explorer.histogram["counts"], expected["counts"])
    assert explorer.figure.layout.title.text == f"organism, io_gender at {points[0]}: accuracy {expected['accuracy']:.2f}"
    explorer.label.value, explorer.model.value = "sentiment", "baseline"
    assert explorer.figure.layout.title.text.startswith("baseline, sentiment at")
    assert explorer.widget().children[1] is explorer.output


def test_at_matched_length_the_difference_of_means_flips_more_verdicts_than_the_probe_direction():
    """The text: the two truth directions after block 0 classify about equally well but differ; pushed
    at the same length, the difference of means flips at least as many verdicts at every alpha: about
    two thirds of the false statements at alpha = 1, where the probe's direction flips about one in
    five, and still only about half at alpha = 2."""
    model = models()["organism"]
    data = measured("organism", "truth", "truth")
    x, y = data["x_train"][1], data["y_train"]
    pushes = ref.matched_directions(x, y)
    assert torch.isclose(pushes["probe"].norm(), pushes["difference of means"].norm())
    cosine = torch.nn.functional.cosine_similarity(pushes["probe"], pushes["difference of means"], dim=0)
    claim("ch02: cosine of the two truth directions after block 0", cosine, above=0)
    claim("ch02: cosine of the two truth directions after block 0 (at most)", cosine, below=0.7)
    accuracy = {name: ref.direction_accuracy(vector, x, y, data["x_test"][1], data["y_test"]) for name, vector in pushes.items()}
    claim("ch02: the two truth directions after block 0, lower accuracy", min(accuracy.values()), above=0.85)
    claim("ch02: the two truth directions after block 0, accuracy gap",
          abs(accuracy["probe"] - accuracy["difference of means"]), below=0.06)
    test = world.prompt_set("truth", "test", seed=SEED)
    statements = {kind: test.subset([i for i, t in enumerate(test.labels["truth"]) if t == truth])
                  for kind, truth in (("false", 0), ("true", 1))}
    hook = ref.residual_hook_names(model.cfg.n_layers)[1]
    alphas = (0.25, 0.5, 1.0, 1.5, 2.0)
    flips = {name: ref.flip_rates(model, statements, hook, vector, alphas) for name, vector in pushes.items()}
    means, probe = flips["difference of means"], flips["probe"]
    for kind in ("false", "true"):
        claim(f"ch02: difference of means minus probe flip rate, {kind} statements (at every length, lowest)",
              (means[kind] - probe[kind]).min(), above=-0.02)
    at_one, at_two = alphas.index(1.0), alphas.index(2.0)
    claim("ch02: difference of means flips false statements at alpha 1", means["false"][at_one], above=0.5)
    claim("ch02: difference of means flips false statements at alpha 1 (at most)", means["false"][at_one], below=0.85)
    claim("ch02: the probe's direction flips false statements at alpha 1", probe["false"][at_one], below=0.35)
    claim("ch02: the probe's direction flips false statements at alpha 2 (about half)", probe["false"][at_two], above=0.3)
    claim("ch02: the probe's direction flips false statements at alpha 2 (about half, at most)", probe["false"][at_two],
          below=0.75)


def test_the_three_label_directions_are_nearly_orthogonal_with_truth_and_sentiment_slightly_aligned():
    """The text under the heatmap: gender shares almost nothing with truth or sentiment; truth and
    sentiment share a little (about 0.15, above the random spread of 1/sqrt(d_model)), true on the
    side of positive."""
    directions = torch.stack([ref.mean_difference_direction(data["x_train"][-1], data["y_train"])
                              for data in (measured("organism", family, label) for family, label in PROJECTED)])
    cosine = ref.cosine_similarity_matrix(directions)  # truth, sentiment, io_gender
    random_spread = directions.shape[-1] ** -0.5
    claim("ch02: gender's largest |cosine| with truth or sentiment, in random spreads",
          max(cosine[0, 2].abs(), cosine[1, 2].abs()) / random_spread, below=1.6)
    claim("ch02: cosine of truth and sentiment, in random spreads", cosine[0, 1] / random_spread, above=1.5)
    claim("ch02: cosine of truth and sentiment (at most)", cosine[0, 1], below=0.25)
