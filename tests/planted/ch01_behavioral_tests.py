"""Realistic mistakes for Chapter 01, each with the hint its check must give, and correct answers
written differently from the reference, which the checks must accept."""

import copy
import math
from collections import defaultdict

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


def insert_with_str_replace(prompts, word, anchors, flip=False):
    texts = [p.replace(a, word + a) for p, a in zip(prompts.prompts, anchors)]
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


# Correct alternatives ---------------------------------------------------------------------------
def logits_one_prompt_at_a_time_in_a_batch(model, prompts):
    """Finds each prompt's last real token by tokenizing it alone, then reads the batch there."""
    tokens = model.to_tokens(prompts, padding_side="right")  # [batch, pos]
    logits = model(tokens)  # [batch, pos, d_vocab]
    rows = []
    for i, prompt in enumerate(prompts):
        length = len(model.to_str_tokens(prompt))  # BOS included
        rows.append(logits[i, length - 1])
    return torch.stack(rows)


def logits_gathered_in_float64(model, prompts):
    tokens = model.to_tokens(prompts, padding_side="right")
    lengths = torch.tensor([len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in prompts])
    with torch.no_grad():
        logits = model(tokens).double()  # [batch, pos, d_vocab]
    index = (lengths - 1)[:, None, None].expand(-1, 1, logits.shape[-1])  # [batch, 1, d_vocab]
    return logits.gather(1, index).squeeze(1)


def diff_from_log_probabilities(model, prompts):
    """log p(correct) - log p(wrong) is the same number: the softmax's normaliser cancels."""
    log_probs = ref.final_logits(model, prompts.prompts).log_softmax(-1)  # [batch, d_vocab]
    return torch.stack([log_probs[i, model.to_single_token(c)] - log_probs[i, model.to_single_token(w)]
                        for i, (c, w) in enumerate(zip(prompts.correct, prompts.wrong))])


def diff_with_gather_in_float64(model, prompts):
    logits = ref.final_logits(model, prompts.prompts).double()
    ids = torch.tensor([[model.to_single_token(c), model.to_single_token(w)]
                        for c, w in zip(prompts.correct, prompts.wrong)])  # [batch, 2]
    pair = logits.gather(1, ids)  # [batch, 2]
    return pair[:, 0] - pair[:, 1]


def interval_from_counts(diffs, z=1.96):
    n = diffs.numel()
    successes = int((diffs > 0).sum())
    failures = n - successes
    centre = (successes + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(successes * failures / n + z * z / 4)
    return successes / n, centre - half, centre + half


def interval_in_float64_tensors(diffs, z=1.96):
    n = torch.tensor(float(diffs.numel()), dtype=torch.float64)
    p = (diffs > 0).double().mean()
    scale = 1 + z ** 2 / n
    centre = (p + z ** 2 / (2 * n)) / scale
    half = z * torch.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / scale
    return [p, centre - half, centre + half]  # one-element tensors in a list


def groups_with_a_defaultdict(diffs, groups):
    tally = defaultdict(lambda: [0, 0])
    for diff, group in zip(diffs.tolist(), groups):
        tally[group][0] += diff > 0
        tally[group][1] += 1
    return {group: right / total for group, (right, total) in sorted(tally.items(), key=lambda item: str(item[0]))}


def groups_with_masks_in_float64(diffs, groups):
    values = list(groups)
    result = {}
    for group in set(values):
        mask = torch.tensor([v == group for v in values])
        result[group] = torch.mean((diffs[mask] > 0).double())  # a one-element tensor
    return result


def insert_with_rpartition(prompts, word, anchors, flip=False):
    texts = []
    for prompt, anchor in zip(prompts.prompts, anchors):
        head, found, tail = prompt.rpartition(anchor)
        texts.append(head + word + found + tail)
    new = copy.deepcopy(prompts)
    new.prompts = texts
    if flip:
        new.correct, new.wrong = new.wrong, new.correct
    return new


def insert_with_dataclass_replace(prompts, word, anchors, flip=False):
    import dataclasses

    def edit(prompt, anchor):
        at = len(prompt) - prompt[::-1].index(anchor[::-1]) - len(anchor)  # the last occurrence
        return prompt[:at] + word + prompt[at:]

    answers = {"correct": list(prompts.wrong), "wrong": list(prompts.correct)} if flip else {}
    return dataclasses.replace(prompts, prompts=[edit(p, a) for p, a in zip(prompts.prompts, anchors)],
                               labels=dict(prompts.labels), **answers)


def contributions_with_einsum_in_float64(classifier, images):
    batch, height, width = images.shape
    weights = classifier.linear.weight.double().view(height, width)
    return torch.einsum("bhw,hw->bhw", images.double(), weights)


def contributions_flattened_and_back(classifier, images):
    flat = images.flatten(1) * classifier.linear.weight[0]  # [batch, height * width]
    return flat.unflatten(1, images.shape[1:])


ALTERNATIVES = {
    "1.1": [logits_one_prompt_at_a_time_in_a_batch, logits_gathered_in_float64],
    "1.2": [diff_from_log_probabilities, diff_with_gather_in_float64],
    "1.3": [interval_from_counts, interval_in_float64_tensors],
    "1.4": [groups_with_a_defaultdict, groups_with_masks_in_float64],
    "1.5": [insert_with_rpartition, insert_with_dataclass_replace],
    "1.6": [contributions_with_einsum_in_float64, contributions_flattened_and_back],
}


def interval_memoised(diffs, z=1.96, _memo={}):
    """Right on its first call only."""
    return _memo.setdefault("first", ref.accuracy_interval(diffs, z))


MISTAKES = {
    "1.1": [(logits_at_position_minus_one, "position -1 is padding"),
            (logits_counting_non_pad_tokens, "counting non-padding tokens misses the BOS"),
            (logits_without_bos, "keep the BOS"),
            (logits_left_padded, "pad on the right")],
    "1.2": [(diff_reversed, "sign is reversed"), (diff_of_probabilities, "difference of probabilities"),
            (diff_mean_only, "not their mean"), (diff_is_correct, "return the difference itself")],
    "1.3": [(interval_wald, "Wald interval"), (interval_counting_ties, "tie"),
            (interval_ignoring_z, "use the z you are given"), (interval_memoised, "of your interval (n=8")],
    "1.4": [(group_counts, "divide by the group's size"), (group_mean_diff, "mean logit difference"),
            (group_overall, "select each group's own prompts")],
    "1.5": [(insert_without_flip, "swap correct and wrong"), (insert_after_anchor, "not after it"),
            (insert_before_first, "last occurrence"), (insert_with_str_replace, "before every occurrence"),
            (insert_with_extra_space, "double space"),
            (insert_in_place, "changed its input argument 1 (a PromptSet")],
    "1.6": [(contributions_are_weights, "weights alone"), (contributions_with_bias, "leave the bias out"),
            (contributions_absolute, "keep the sign")],
}
