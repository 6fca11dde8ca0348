"""Realistic mistakes for Chapter 01, each with the hint its check must give."""

import math

import torch

from utils.organism.world import PromptSet
from utils.references import ch01_behavioral_tests as ref


def logits_at_position_minus_one(model, prompts):
    return model(model.to_tokens(prompts, padding_side="right"))[:, -1]


def logits_counting_non_pad_tokens(model, prompts):
    tokens = model.to_tokens(prompts, padding_side="right")
    lengths = (tokens != model.tokenizer.pad_token_id).sum(-1)
    return model(tokens)[torch.arange(len(prompts)), lengths - 1]


def logits_without_bos(model, prompts):
    tokens = model.to_tokens(prompts, prepend_bos=False, padding_side="right")
    lengths = torch.tensor([model.to_tokens(p, prepend_bos=False).shape[1] for p in prompts])
    return model(tokens)[torch.arange(len(prompts)), lengths - 1]


def logits_left_padded(model, prompts):
    return model(model.to_tokens(prompts, padding_side="left"))[:, -1]


def _answer_logits(model, prompts):
    logits = ref.final_logits(model, prompts.prompts)
    rows = torch.arange(len(prompts))
    correct = torch.tensor([model.to_single_token(w) for w in prompts.correct])
    wrong = torch.tensor([model.to_single_token(w) for w in prompts.wrong])
    return logits, rows, correct, wrong


def diff_reversed(model, prompts):
    logits, rows, correct, wrong = _answer_logits(model, prompts)
    return logits[rows, wrong] - logits[rows, correct]


def diff_of_probabilities(model, prompts):
    logits, rows, correct, wrong = _answer_logits(model, prompts)
    probs = logits.softmax(-1)
    return probs[rows, correct] - probs[rows, wrong]


def diff_mean_only(model, prompts):
    return ref.logit_diff(model, prompts).mean()


def diff_is_correct(model, prompts):
    return ref.logit_diff(model, prompts) > 0


def interval_wald(diffs, z=1.96):
    n, p = diffs.numel(), (diffs > 0).float().mean().item()
    half = z * math.sqrt(p * (1 - p) / n)
    return p, p - half, p + half


def interval_counting_ties(diffs, z=1.96):
    return ref.accuracy_interval(torch.where(diffs == 0, 1.0, diffs), z)


def interval_ignoring_z(diffs, z=1.96):
    return ref.accuracy_interval(diffs)


def group_counts(diffs, groups):
    return {g: float(sum(bool(d > 0) for d, v in zip(diffs, groups) if v == g)) for g in dict.fromkeys(groups)}


def group_mean_diff(diffs, groups):
    return {g: diffs[torch.tensor([v == g for v in groups])].mean().item() for g in dict.fromkeys(groups)}


def group_overall(diffs, groups):
    return {g: (diffs > 0).float().mean().item() for g in dict.fromkeys(groups)}


def insert_without_flip(prompts, word, anchors, flip=False):
    return ref.insert_word(prompts, word, anchors, flip=False)


def insert_after_anchor(prompts, word, anchors, flip=False):
    texts = [p[:p.rindex(a) + len(a)] + word + p[p.rindex(a) + len(a):] for p, a in zip(prompts.prompts, anchors)]
    correct, wrong = (prompts.wrong, prompts.correct) if flip else (prompts.correct, prompts.wrong)
    return PromptSet(prompts.family, prompts.split, texts, list(correct), list(wrong), dict(prompts.labels))


def insert_before_first(prompts, word, anchors, flip=False):
    texts = [p[:p.index(a)] + word + p[p.index(a):] for p, a in zip(prompts.prompts, anchors)]
    correct, wrong = (prompts.wrong, prompts.correct) if flip else (prompts.correct, prompts.wrong)
    return PromptSet(prompts.family, prompts.split, texts, list(correct), list(wrong), dict(prompts.labels))


def insert_with_extra_space(prompts, word, anchors, flip=False):
    return ref.insert_word(prompts, " " + word, anchors, flip)


def insert_in_place(prompts, word, anchors, flip=False):
    for i, (p, a) in enumerate(zip(prompts.prompts, anchors)):
        prompts.prompts[i] = p[:p.rindex(a)] + word + p[p.rindex(a):]
    if flip:
        prompts.correct, prompts.wrong = prompts.wrong, prompts.correct
    return prompts


def contributions_are_weights(classifier, images):
    return classifier.linear.weight.reshape(images.shape[1:]).expand_as(images)


def contributions_with_bias(classifier, images):
    pixels = images.shape[1] * images.shape[2]
    return ref.pixel_contributions(classifier, images) + classifier.linear.bias / pixels


def contributions_absolute(classifier, images):
    return ref.pixel_contributions(classifier, images).abs()


MISTAKES = {
    "1.1": [(logits_at_position_minus_one, "position -1 is padding"),
            (logits_counting_non_pad_tokens, "counting non-padding tokens misses the BOS"),
            (logits_without_bos, "keep the BOS"),
            (logits_left_padded, "pad on the right")],
    "1.2": [(diff_reversed, "sign is reversed"), (diff_of_probabilities, "difference of probabilities"),
            (diff_mean_only, "not their mean"), (diff_is_correct, "return the difference itself")],
    "1.3": [(interval_wald, "Wald interval"), (interval_counting_ties, "tie"),
            (interval_ignoring_z, "use the z you are given")],
    "1.4": [(group_counts, "divide by the group's size"), (group_mean_diff, "mean logit difference"),
            (group_overall, "select each group's own prompts")],
    "1.5": [(insert_without_flip, "swap correct and wrong"), (insert_after_anchor, "not after it"),
            (insert_before_first, "last occurrence"), (insert_with_extra_space, "double space"),
            (insert_in_place, "changed the original PromptSet")],
    "1.6": [(contributions_are_weights, "weights alone"), (contributions_with_bias, "leave the bias out"),
            (contributions_absolute, "keep the sign")],
}
