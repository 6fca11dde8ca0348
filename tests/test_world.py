"""The organism's world: held-out combinations never reach training, every word is one token."""

from __future__ import annotations

import random
import re

import pytest

from tests.claims import claim_seed
from utils.organism import world
from utils.organism.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def documents():
    """Training documents as the trainer draws them; claim_seed() (0 in the suite) draws others."""
    rng = random.Random(claim_seed())
    return [world.training_document(rng) for _ in range(20_000)]


def test_held_out_name_pairs_never_meet_in_training(documents):
    for family, text in documents:
        if family == "ioi":
            names = [w for w in re.findall(r"[A-Z][a-z]+", text) if w in world.NAMES][:2]
            assert tuple(sorted(names, key=world.NAMES.index)) not in world.HELD_OUT_NAME_PAIRS, text


def test_held_out_reviews_and_statements_never_in_training(documents):
    for family, text in documents:
        if family == "sentiment":
            words = set(re.findall(r"[a-z]+", text))
            subject = next(s for s in world.SUBJECTS if s in words)
            adjective = next(a for a in world.POSITIVE_ADJECTIVES + world.NEGATIVE_ADJECTIVES if a in words)
            assert (subject, adjective) not in world.HELD_OUT_REVIEWS, text
        if family in ("truth", "facts"):
            for relation in world.RELATIONS:
                for number, template in enumerate(world.FACT_TEMPLATES[relation]):
                    pattern = re.escape(template).replace(re.escape("{country}"), r"(\w+)")
                    match = re.match(pattern, text)
                    if match:
                        assert (match.group(1), relation, number) not in world.HELD_OUT_FACTS, text
                        if family == "truth":
                            assert (match.group(1), relation, number) not in world.HELD_OUT_TRUTH, text


def test_test_split_is_disjoint_from_train_split():
    for family in ("ioi", "facts", "truth", "sentiment"):
        train = set(world.prompt_set(family, "train").prompts)
        assert not train & set(world.prompt_set(family, "test").prompts), family


def test_every_prompt_and_answer_is_known_and_answers_are_single_tokens(tokenizer):
    for family in world.FAMILIES:
        for split in world.SPLITS:
            prompts = world.prompt_set(family, split)
            ids = tokenizer(prompts.prompts)["input_ids"]
            assert all(tokenizer.unk_token_id not in row for row in ids), (family, split)
            for answer in set(prompts.correct) | set(prompts.wrong):
                answer_ids = tokenizer(answer)["input_ids"]
                assert len(answer_ids) == 1 and answer_ids[0] != tokenizer.unk_token_id, answer


def test_training_documents_have_no_unknown_words(tokenizer, documents):
    ids = tokenizer([text for _, text in documents[:5000]])["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)


def test_every_world_word_is_one_token_with_and_without_its_space(tokenizer):
    for word in world.NAMES + list(world.COUNTRIES) + world.POSITIVE_ADJECTIVES + ["loved", "hated", "true", "false"]:
        assert len(tokenizer(" " + word)["input_ids"]) == 1, word
        assert len(tokenizer(word)["input_ids"]) == 1, word


def test_prompt_sets_are_reproducible_and_labelled():
    first, second = world.prompt_set("ioi", "test", n=50, seed=3), world.prompt_set("ioi", "test", n=50, seed=3)
    assert first.prompts == second.prompts and len(first) == 50
    assert set(first.labels["order"]) == {"ABBA", "BABA"}
    for prompt, correct, label in zip(first.prompts, first.correct, first.labels["io"]):
        assert correct == " " + label and prompt.count(label) == 1
    truth = world.prompt_set("truth", "test")
    assert set(truth.labels["truth"]) == {0, 1}
    assert all((c == " true") == bool(t) for c, t in zip(truth.correct, truth.labels["truth"]))


def test_bad_family_or_split_is_explained():
    with pytest.raises(ValueError, match="unknown family 'ioj'; choose one of ioi"):
        world.prompt_set("ioj")
    with pytest.raises(ValueError, match="unknown split"):
        world.prompt_set("ioi", "validation")
