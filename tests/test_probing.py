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
    assert torch.equal(ref.LinearProbe(x)(x), torch.zeros(120))
    first, second = ref.train_probe(x, y), ref.train_probe(x, y)
    assert torch.equal(first(x), second(x))
    assert ((first(x) > 0) == y.bool()).float().mean() > 0.95
    assert torch.isclose(first.direction.norm(), torch.tensor(1.0))
    assert first.direction[0] > 0.8  # the label lives on coordinate 0


def test_direction_accuracy_does_not_care_which_way_the_direction_points():
    generator = torch.Generator().manual_seed(2)
    y = torch.arange(200) % 2
    x = torch.randn(200, 8, generator=generator) + 10.0
    x[:, 3] += 3.0 * y
    direction = ref.mean_difference_direction(x[:150], y[:150])
    forward = ref.direction_accuracy(direction, x[:150], y[:150], x[150:], y[150:])
    backward = ref.direction_accuracy(-direction, x[:150], y[:150], x[150:], y[150:])
    assert forward == backward > 0.9


# ------------------------------------------------------------------------------------------
# The organism and the claims of the chapter's text
# ------------------------------------------------------------------------------------------
@functools.cache
def models() -> dict:
    return {"organism": load_model(verbose=False, device="cpu"), "baseline": ref.random_init_model(seed=0)}


@functools.cache
def measured(model_name: str, family: str, label: str) -> dict:
    data = ref.labelled_residuals(models()[model_name], family, label, n_train=600, n_test=300, progress=False)
    data["accuracy"] = ref.probe_accuracy_by_layer(data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    return data


def test_tokenize_prepends_one_bos_and_pads_on_the_right():
    model = models()["organism"]
    tokens, last = ref.tokenize(model, ["The movie was dreadful. I", "I thought the book was really fun, so I"])
    bos = model.tokenizer.bos_token_id
    assert (tokens[:, 0] == bos).all() and (tokens[:, 1] != bos).all()
    assert last.tolist() == [6, 10]
    assert model.to_string(tokens[0, last[0]]) == " I"


def test_nothing_is_readable_from_the_embeddings_of_the_last_token():
    for model_name in ("organism", "baseline"):
        for family, label in (("truth", "truth"), ("sentiment", "sentiment"), ("ioi", "io_gender")):
            assert measured(model_name, family, label)["accuracy"][0] < 0.62, (model_name, label)


def test_truth_is_read_from_the_organism_only():
    organism, baseline = measured("organism", "truth", "truth"), measured("baseline", "truth", "truth")
    assert organism["accuracy"].max() > 0.85
    assert baseline["accuracy"].max() < 0.65


def test_random_model_sentiment_is_a_word_shortcut():
    baseline, organism = measured("baseline", "sentiment", "sentiment"), measured("organism", "sentiment", "sentiment")
    assert baseline["accuracy"].max() > 0.7  # the shortcut the text warns about
    adjectives = world.prompt_set("sentiment", "train", n=600, seed=0).labels["adjective"]
    held_out = set(world.POSITIVE_ADJECTIVES[::3] + world.NEGATIVE_ADJECTIVES[::3])
    new = [i for i, a in enumerate(adjectives) if a in held_out]
    seen = [i for i, a in enumerate(adjectives) if a not in held_out]
    unseen_words = {}
    for name, data in (("baseline", baseline), ("organism", organism)):
        unseen_words[name] = ref.probe_accuracy_by_layer(data["x_train"][:, seen], data["y_train"][seen],
                                                         data["x_train"][:, new], data["y_train"][new]).max()
    assert unseen_words["baseline"] < 0.7
    assert unseen_words["organism"] > 0.85


def test_gender_is_decodable_but_not_used_while_sentiment_is_used():
    model = models()["organism"]
    gender, sentiment = measured("organism", "ioi", "io_gender"), measured("organism", "sentiment", "sentiment")
    assert gender["accuracy"].max() > 0.85
    effects = {}
    for family, data in (("ioi", gender), ("sentiment", sentiment)):
        prompts = world.prompt_set(family, "test", n=150, seed=0)
        directions = torch.stack([ref.mean_difference_direction(x, data["y_train"]) for x in data["x_train"]])
        before = ref.logit_diffs(model, prompts).mean()
        after = ref.logit_diffs_without(model, prompts, directions).mean()
        effects[family] = (after / before).item()
    assert effects["ioi"] > 0.8, effects
    assert effects["sentiment"] < 0.5, effects


@pytest.mark.parametrize("family", ["ioi", "sentiment"])
def test_removing_a_random_direction_changes_little(family):
    model = models()["organism"]
    prompts = world.prompt_set(family, "test", n=150, seed=0)
    directions = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ratio = ref.logit_diffs_without(model, prompts, directions).mean() / ref.logit_diffs(model, prompts).mean()
    assert 0.8 < ratio < 1.2
