"""Checks for Chapter 01 (behavioral tests). Expected values come from the exported reference."""

from __future__ import annotations

import functools
import math

import torch

from utils.checks import Wrong, call, exercise, expect_close, expect_equal, expect_tensor
from utils.models import load_model
from utils.organism.world import PromptSet, prompt_set
from utils.references import ch01_behavioral_tests as ref

CHAPTER = "01_behavioral_tests"


@functools.cache
def organism():
    """The bundled model, loaded once for all checks."""
    return load_model(verbose=False, device="cpu")


# Prompts of different lengths (and families), so that padding matters.
PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "The movie was dreadful. I",
    "Then, Anna and Tom had a long talk at the park. Tom gave a ball to",
    "People in Japan speak",
    "red fox Monday blue cat red fox Monday blue",
]


def _prompt_sets() -> list[PromptSet]:
    """Small labelled sets from four families, train and test splits."""
    return [prompt_set("ioi", "test", n=16, seed=3), prompt_set("sentiment", "test", n=16, seed=3),
            prompt_set("truth", "train", n=12, seed=3), prompt_set("facts", "test", n=10, seed=3)]


@exercise("1.1", "the logits at each prompt's last token", CHAPTER, ref.last_token_logits)
def check_last_token_logits(candidate) -> None:
    model = organism()
    for prompts in (PROMPTS, PROMPTS[::-1][:4], PROMPTS[1:2]):
        with torch.no_grad():
            expected = ref.last_token_logits(model, prompts)
            tokens = model.to_tokens(prompts, padding_side="right")  # [batch, pos]
            logits = model(tokens)  # [batch, pos, d_vocab]
            rows = torch.arange(len(prompts))
            non_pad = (tokens != model.tokenizer.pad_token_id).sum(-1)  # the BOS has the padding id too
            no_bos = model.to_tokens(prompts, prepend_bos=False, padding_side="right")
            no_bos_lengths = torch.tensor([model.to_tokens(p, prepend_bos=False).shape[1] for p in prompts])
            mistakes = {
                "position -1 is padding for every prompt shorter than the longest: "
                "take each prompt's own last token": logits[:, -1],
                "the padding id equals the BOS id, so counting non-padding tokens misses the BOS "
                "and lands one token early": logits[rows, non_pad - 1],
                "keep the BOS (prepend_bos=True, the default): the model always saw it at the start":
                    model(no_bos)[rows, no_bos_lengths - 1],
                "left padding shifts every shorter prompt to later positions and lets it attend to the "
                "padding: pad on the right": model(model.to_tokens(prompts, padding_side="left"))[:, -1],
            }
            got = call(candidate, model, list(prompts))
        expect_tensor(got, expected, f"your logits for {len(prompts)} prompts", atol=1e-3, rtol=1e-3,
                      mistakes=mistakes)


@exercise("1.2", "logit difference", CHAPTER, ref.logit_diff)
def check_logit_diff(candidate) -> None:
    model = organism()
    for prompts in _prompt_sets():
        with torch.no_grad():
            expected = ref.logit_diff(model, prompts)
            logits = ref.final_logits(model, prompts.prompts)  # [batch, d_vocab]
            probs = logits.softmax(-1)
            correct = torch.tensor([model.to_single_token(w) for w in prompts.correct])
            wrong = torch.tensor([model.to_single_token(w) for w in prompts.wrong])
            rows = torch.arange(len(prompts))
            got = call(candidate, model, prompts)
        expect_tensor(got, expected, f"your logit differences on {prompts.family} prompts", atol=1e-3, rtol=1e-3,
                      mistakes={
                          "the sign is reversed: correct minus wrong, not wrong minus correct": -expected,
                          "that is a difference of probabilities; subtract the logits themselves":
                              probs[rows, correct] - probs[rows, wrong],
                          "return one value per prompt, not their mean": expected.mean(),
                          "that is whether the correct word beats the wrong one; return the difference itself":
                              expected > 0,
                      })


@functools.cache
def organism_diffs(family: str, split: str, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """The reference logit differences of the organism on one prompt set, computed once."""
    return ref.logit_diff(organism(), prompt_set(family, split, n=n, seed=seed))


def _diff_inputs() -> list[tuple[torch.Tensor, float]]:
    """Logit differences with ties, all-correct and all-wrong sets, the organism's, and two z values."""
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(40, generator=generator) + 0.8
    with_ties = torch.tensor([1.0, 0.0, -2.0, 0.0, 3.0, 0.5, 0.0, -0.1])
    facts = organism_diffs("facts", "test")
    return [(random, 1.96), (with_ties, 1.96), (torch.full((30,), 2.0), 1.96), (-torch.ones(7), 1.96),
            (random, 2.576), (facts, 1.96), (facts, 1.0)]


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:60].replace("\n", " ")


def _as_triple(got, name: str) -> tuple[float, float, float]:
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Wrong(f"{name} should be a tuple (accuracy, low, high), got {_short(got)}")
    values = []
    for part, value in zip(("accuracy", "low", "high"), got):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise Wrong(f"the {part} in {name} should be a number, got {_short(value)}")
        values.append(float(value))
    return tuple(values)


def _triple(values) -> str:
    return "(" + ", ".join(f"{value:.4f}" for value in values) + ")"


def _wald(diffs: torch.Tensor, z: float) -> tuple[float, float, float]:
    p = (diffs > 0).float().mean().item()
    half = z * math.sqrt(p * (1 - p) / diffs.numel())
    return p, p - half, p + half


@exercise("1.3", "accuracy with a confidence interval", CHAPTER, ref.accuracy_interval)
def check_accuracy_interval(candidate) -> None:
    for diffs, z in _diff_inputs():
        expected = ref.accuracy_interval(diffs, z)
        mistakes = {
            "that is the Wald interval p +- z * sqrt(p(1-p)/n); use the Wilson formula": _wald(diffs, z),
            "a tie (a difference of exactly 0) is not a success: count diffs > 0, not >= 0":
                ref.accuracy_interval(torch.where(diffs == 0, 1.0, diffs), z),
            "use the z you are given, not always 1.96": ref.accuracy_interval(diffs, 1.96),
        }
        got = _as_triple(call(candidate, diffs.clone(), z=z), f"your interval (n={diffs.numel()}, z={z})")
        for hint, wrong in mistakes.items():
            if max(abs(a - b) for a, b in zip(wrong, expected)) > 1e-4 and max(abs(a - b) for a, b in zip(got, wrong)) <= 1e-4:
                raise Wrong(f"{hint} (n={diffs.numel()}, z={z}: got {_triple(got)}, expected {_triple(expected)})")
        for part, value, reference in zip(("accuracy", "low end", "high end"), got, expected):
            expect_close(value, reference, f"the {part} of your interval (n={diffs.numel()}, z={z})", atol=1e-4)


@exercise("1.4", "accuracy per group", CHAPTER, ref.group_accuracy)
def check_group_accuracy(candidate) -> None:
    generator = torch.Generator().manual_seed(1)
    synthetic = torch.randn(12, generator=generator)
    synthetic[3] = 0.0  # a tie
    ioi = prompt_set("ioi", "test", n=40, seed=5)
    ioi_diffs = organism_diffs("ioi", "test", n=40, seed=5)
    cases = [
        (synthetic, ["a", "b", "c"] * 4),
        (synthetic, [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 1, 0]),
        (ioi_diffs, ioi.labels["order"]),
        (ioi_diffs, ioi.labels["template"]),
    ]
    for diffs, groups in cases:
        expected = ref.group_accuracy(diffs, list(groups))
        correct = diffs > 0
        overall = correct.float().mean().item()
        mistakes = {
            "that is the number of correct prompts in each group; divide by the group's size":
                {g: float(sum(bool(c) for c, v in zip(correct, groups) if v == g)) for g in expected},
            "that is the mean logit difference of each group; report the share with diffs > 0":
                {g: diffs[torch.tensor([v == g for v in groups])].mean().item() for g in expected},
            "every group got the overall accuracy: select each group's own prompts first":
                {g: overall for g in expected},
            "a tie is not a success: count diffs > 0, not >= 0":
                ref.group_accuracy(torch.where(diffs == 0, 1.0, diffs), list(groups)),
        }
        got = call(candidate, diffs.clone(), list(groups))
        if not isinstance(got, dict):
            raise Wrong(f"return a dict {{label: accuracy}}, got {_short(got)}")
        values = {}
        for key, value in got.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            values[key] = value
        if set(values) != set(expected):
            raise Wrong(f"your dict's keys are {sorted(values, key=str)[:6]}; expected one per distinct label: "
                        f"{sorted(expected, key=str)}")
        odd = [(k, v) for k, v in values.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if odd:
            raise Wrong(f"each value should be a number (a Python float); group {odd[0][0]!r} has {_short(odd[0][1])}")
        for hint, wrong in mistakes.items():
            if any(abs(wrong[g] - expected[g]) > 1e-6 for g in expected) and all(
                    abs(values[g] - wrong[g]) <= 1e-6 for g in expected):
                group = max(expected, key=lambda g: abs(values[g] - expected[g]))
                raise Wrong(f"{hint} (group {group!r}: got {values[group]:.4g}, expected {expected[group]:.4g})")
        for group in expected:
            expect_close(values[group], expected[group], f"your accuracy for group {group!r}", atol=1e-6)


def _insert_cases() -> list[tuple]:
    reviews = prompt_set("sentiment", "test", n=8, seed=2)
    statements = prompt_set("truth", "test", n=8, seed=2)
    ioi = prompt_set("ioi", "test", n=8, seed=2)
    return [
        (reviews, " not", [" " + a for a in reviews.labels["adjective"]], True),
        (reviews, " very", [" " + a for a in reviews.labels["adjective"]], False),
        (statements, " not", [" " + v for v in statements.labels["stated"]], True),
        (ioi, " really", [" " + s for s in ioi.labels["s"]], False),  # the subject's name appears twice
    ]


def _copy(prompts: PromptSet) -> PromptSet:
    return PromptSet(prompts.family, prompts.split, list(prompts.prompts), list(prompts.correct),
                     list(prompts.wrong), {k: list(v) for k, v in prompts.labels.items()})


def _inserted(prompts: PromptSet, texts: list[str], flip: bool) -> PromptSet:
    correct, wrong = (prompts.wrong, prompts.correct) if flip else (prompts.correct, prompts.wrong)
    return PromptSet(prompts.family, prompts.split, texts, list(correct), list(wrong), dict(prompts.labels))


@exercise("1.5", "insert a word", CHAPTER, ref.insert_word)
def check_insert_word(candidate) -> None:
    for prompts, word, anchors, flip in _insert_cases():
        original = _copy(prompts)
        expected = ref.insert_word(original, word, anchors, flip)
        pairs = list(zip(original.prompts, anchors))
        after = [p[:p.rindex(a) + len(a)] + word + p[p.rindex(a) + len(a):] for p, a in pairs]
        first = [p[:p.index(a)] + word + p[p.index(a):] for p, a in pairs]
        double_space = [p[:p.rindex(a)] + " " + word + p[p.rindex(a):] for p, a in pairs]
        everywhere = [p.replace(a, word + a) for p, a in pairs]
        got = call(candidate, prompts, word, list(anchors), flip)
        if prompts.prompts != original.prompts or prompts.correct != original.correct or prompts.wrong != original.wrong:
            changed = sum(a != b for a, b in zip(prompts.prompts, original.prompts))
            raise Wrong(f"your function changed the original PromptSet ({changed} of {len(original.prompts)} prompts "
                        "edited in place); build new lists and return a new PromptSet")
        if not isinstance(got, PromptSet):
            raise Wrong(f"return a PromptSet, got {_short(got)}")
        expect_equal(got.prompts, expected.prompts, f"your prompts (inserting {word!r})", mistakes={
            f"the word goes before the anchor ({anchors[0]!r}), not after it": after,
            "insert before the last occurrence of the anchor (str.rindex), not the first": first,
            "the word already starts with a space; adding another gives a double space": double_space,
            "str.replace inserts before every occurrence of the anchor; insert before the last one only": everywhere,
        })
        kept = sum(a == b for a, b in zip(got.correct, original.correct))
        if flip and got.correct == original.correct:
            raise Wrong(f"with flip=True the edit reverses the answer: swap correct and wrong "
                        f"(all {kept} correct answers are unchanged, e.g. {got.correct[0]!r})")
        if not flip and got.correct != original.correct:
            raise Wrong(f"with flip=False the answers stay as they were "
                        f"({len(original.correct) - kept} of {len(original.correct)} correct answers changed)")
        expect_equal(got.correct, expected.correct, "your correct answers")
        expect_equal(got.wrong, expected.wrong, "your wrong answers")
        expect_equal((got.family, got.split), (expected.family, expected.split), "your (family, split)")
        expect_equal(got.labels, expected.labels, "your labels")


@functools.cache
def scan_cases() -> list[tuple]:
    """Two reference classifiers of different image sizes, each with test images."""
    cases = []
    for size, seed in [(16, 0), (12, 1)]:
        images, sick, _ = ref.scanner_images(600, marker_agreement=0.95, seed=seed, size=size)
        classifier = ref.train_scan_classifier(images, sick, seed=seed, steps=150)
        test_images, _, _ = ref.scanner_images(40, marker_agreement=0.5, seed=seed + 10, size=size)
        cases.append((classifier, test_images))
    return cases


@exercise("1.6", "pixel contributions", CHAPTER, ref.pixel_contributions)
def check_pixel_contributions(candidate) -> None:
    for classifier, images in scan_cases():
        with torch.no_grad():
            expected = ref.pixel_contributions(classifier, images)
            weights = classifier.linear.weight.reshape(images.shape[1:])  # [height, width]
            pixels = images.shape[1] * images.shape[2]
            got = call(candidate, classifier, images.clone())
        expect_tensor(got, expected, "your pixel contributions", mistakes={
            "those are the weights alone; multiply each by its pixel's value": weights.expand_as(images),
            "leave the bias out: it belongs to no pixel": expected + classifier.linear.bias / pixels,
            "keep the sign: a pixel that pushes towards 'healthy' contributes a negative amount": expected.abs(),
        })
        with torch.no_grad():
            total = got.double().sum(dim=(1, 2)) + classifier.linear.bias.double()  # any float dtype is fine
            gap = (total - classifier(images).double()).abs().max().item()
        if gap > 1e-4:
            raise Wrong(f"your contributions plus the bias miss classifier(images) by up to {gap:.3g}")
