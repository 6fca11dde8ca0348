"""Realistic mistakes for Chapter 02, each with the hint its check must give."""

import torch
from torch import nn

from utils.references import ch02_probing as ref


# 2.1 -----------------------------------------------------------------------------------------
def stack_at_minus_one(model, tokens, positions):
    names = ref.residual_hook_names(model.cfg.n_layers)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name][:, -1] for name in names])


def stack_without_embeddings(model, tokens, positions):
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    rows = torch.arange(tokens.shape[0])
    return torch.stack([cache[name][rows, positions] for name in names])


# 2.2 -----------------------------------------------------------------------------------------
def probe_never_steps(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x), y.float())
        optimizer.zero_grad()
        loss.backward()
    return probe


def probe_without_zero_grad(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x), y.float())
        loss.backward()
        optimizer.step()
    return probe


def probe_double_sigmoid(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(torch.sigmoid(probe(x)), y.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


# 2.3 -----------------------------------------------------------------------------------------
def accuracy_on_training_split(x_train, y_train, x_test, y_test):
    accuracies = []
    for layer in range(x_train.shape[0]):
        probe = ref.train_probe(x_train[layer], y_train)
        accuracies.append(((probe(x_train[layer]) > 0) == y_train.bool()).float().mean())
    return torch.stack(accuracies)


def accuracy_probability_above_zero(x_train, y_train, x_test, y_test):
    accuracies = []
    for layer in range(x_train.shape[0]):
        probe = ref.train_probe(x_train[layer], y_train)
        accuracies.append(((torch.sigmoid(probe(x_test[layer])) > 0) == y_test.bool()).float().mean())
    return torch.stack(accuracies)


# 2.4 -----------------------------------------------------------------------------------------
def direction_flipped(x, y):
    difference = x[y == 0].mean(0) - x[y == 1].mean(0)
    return difference / difference.norm()


def direction_not_normalised(x, y):
    return x[y == 1].mean(0) - x[y == 0].mean(0)


def direction_from_sums(x, y):
    difference = x[y == 1].sum(0) - x[y == 0].sum(0)
    return difference / difference.norm()


# 2.5 -----------------------------------------------------------------------------------------
def accuracy_threshold_zero(direction, x_train, y_train, x_test, y_test):
    return (((x_test @ direction) > 0) == y_test.bool()).float().mean().item()


def accuracy_assumes_positive_side(direction, x_train, y_train, x_test, y_test):
    projection = x_train @ direction
    threshold = (projection[y_train == 0].mean() + projection[y_train == 1].mean()) / 2
    return (((x_test @ direction) > threshold) == y_test.bool()).float().mean().item()


# 2.6 -----------------------------------------------------------------------------------------
def cosine_without_normalising(directions):
    return directions @ directions.T


def cosine_normalised_by_column(directions):
    unit = directions / directions.norm(dim=0, keepdim=True)
    return unit @ unit.T


# 2.7 -----------------------------------------------------------------------------------------
def control_labels_per_prompt(keys, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (len(keys),), generator=generator)


def control_labels_unsorted(keys, seed=0):
    distinct = list(dict.fromkeys(keys))
    permutation = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    label_of = {key: int(permutation[i] % 2) for i, key in enumerate(distinct)}
    return torch.tensor([label_of[key] for key in keys])


# 2.8 -----------------------------------------------------------------------------------------
def remove_without_normalising(resid, direction):
    return resid - (resid @ direction)[..., None] * direction


def keep_only_the_component(resid, direction):
    unit = direction / direction.norm()
    return (resid @ unit)[..., None] * unit


# 2.9 -----------------------------------------------------------------------------------------
def ablation_late_binding(model, prompts, directions):
    hooks = []
    for name, direction in directions.items():
        hooks.append((name, lambda resid, hook: ref.remove_direction(resid, direction)))
    return ref.logit_diffs(model, prompts, fwd_hooks=hooks)


def ablation_first_hook_only(model, prompts, directions):
    name, direction = next(iter(directions.items()))
    return ref.logit_diffs(model, prompts, fwd_hooks=[(name, lambda resid, hook: ref.remove_direction(resid, direction))])


def ablation_final_column_only(model, prompts, directions):
    def hook_fn(resid, hook, direction):
        resid = resid.clone()
        resid[:, -1] = ref.remove_direction(resid[:, -1], direction)
        return resid
    hooks = [(name, lambda resid, hook, direction=direction: hook_fn(resid, hook, direction))
             for name, direction in directions.items()]
    return ref.logit_diffs(model, prompts, fwd_hooks=hooks)


MISTAKES = {
    "2.1": [(stack_at_minus_one, "position -1 is padding"), (stack_without_embeddings, "embeddings are missing")],
    "2.2": [(probe_never_steps, "never moved"), (probe_without_zero_grad, "zero_grad"),
            (probe_double_sigmoid, "applies the sigmoid itself")],
    "2.3": [(accuracy_on_training_split, "held-out test split"), (accuracy_probability_above_zero, "logit is above 0")],
    "2.4": [(direction_flipped, "wrong way"), (direction_not_normalised, "unit length"), (direction_from_sums, "not the sum")],
    "2.5": [(accuracy_threshold_zero, "not centred"), (accuracy_assumes_positive_side, "points towards label 0")],
    "2.6": [(cosine_without_normalising, "plain dot products"), (cosine_normalised_by_column, "not each column")],
    "2.7": [(control_labels_per_prompt, "same key must always get the same label"),
            (control_labels_unsorted, "sort the distinct keys")],
    "2.8": [(remove_without_normalising, "unit length"), (keep_only_the_component, "subtract it")],
    "2.9": [(ablation_late_binding, "same (last) direction"), (ablation_first_hook_only, "only one direction"),
            (ablation_final_column_only, "every position")],
}
