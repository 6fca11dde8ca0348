"""Realistic mistakes for Chapter 02, each with the hint its check must give, and correct answers
written differently from the reference, which the checks must accept."""

import functools
import random

import torch
import torch.nn.functional as F
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


# More mistakes ------------------------------------------------------------------------------------
def probe_ignores_weight_decay(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)  # weight_decay never reaches the optimiser
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x), y.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def probe_ignores_steps(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    return ref.train_probe(x, y, lr=lr, weight_decay=weight_decay)


def accuracy_trained_on_train_and_test(x_train, y_train, x_test, y_test):
    accuracies = []
    for layer in range(x_train.shape[0]):
        probe = ref.train_probe(torch.cat([x_train[layer], x_test[layer]]), torch.cat([y_train, y_test]))
        accuracies.append(((probe(x_test[layer]) > 0) == y_test.bool()).float().mean())
    return torch.stack(accuracies)


def control_labels_ignore_seed(keys, seed=0):
    return ref.control_task_labels(keys, seed=0)


def control_labels_one_coin_per_key(keys, seed=0):
    generator = torch.Generator().manual_seed(seed)
    distinct = sorted(set(keys))
    coins = torch.randint(0, 2, (len(distinct),), generator=generator)  # not balanced
    label_of = dict(zip(distinct, coins.tolist()))
    return torch.tensor([label_of[key] for key in keys])


def ablation_leaves_hooks_on(model, prompts, directions):
    """Right numbers, but the hooks stay on the model for every later run."""
    for name, direction in directions.items():
        model.add_hook(name, lambda resid, hook, direction=direction: ref.remove_direction(resid, direction))
    return ref.logit_diffs(model, prompts)


def direction_memoised(x, y, _memo={}):
    """Right on its first call only."""
    if "first" not in _memo:
        difference = x[y == 1].mean(0) - x[y == 0].mean(0)
        _memo["first"] = difference / difference.norm()
    return _memo["first"]


# Correct alternatives ---------------------------------------------------------------------------
def stack_by_gathering_the_full_cache(model, tokens, positions):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    points = [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{layer}.hook_resid_post"]
                                                   for layer in range(model.cfg.n_layers)]
    stacked = torch.stack(points)  # [layer, batch, pos, d_model]
    index = positions[None, :, None, None].expand(stacked.shape[0], -1, 1, stacked.shape[-1])
    return stacked.gather(2, index).squeeze(2)  # [layer, batch, d_model]


def stack_with_hooks_that_store(model, tokens, positions):
    names = ref.residual_hook_names(model.cfg.n_layers)
    stored = {}

    def store(resid, hook, name):
        stored[name] = resid[torch.arange(resid.shape[0]), positions].detach()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(name, functools.partial(store, name=name)) for name in names])
    return torch.stack([stored[name] for name in names])


def probe_with_adamw(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(probe(x), y.float()).backward()
        optimizer.step()
    return probe


def probe_with_a_summed_log_sigmoid_loss(x, y, steps=200, lr=0.01, weight_decay=1e-3):
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    target = y.float()
    for _ in range(steps):
        logits = probe(x)
        loss = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def accuracy_with_probabilities_in_float64(x_train, y_train, x_test, y_test):
    accuracies = torch.zeros(x_train.shape[0], dtype=torch.float64)
    for layer in range(x_train.shape[0]):
        probe = ref.train_probe(x_train[layer], y_train)
        with torch.no_grad():
            predicted = (torch.sigmoid(probe(x_test[layer])) > 0.5).long()
        accuracies[layer] = (predicted == y_test).sum().item() / len(y_test)
    return accuracies


def accuracy_from_a_list_of_floats(x_train, y_train, x_test, y_test):
    probes = [ref.train_probe(x, y_train) for x in x_train]
    return torch.tensor([((p(x).detach() > 0).long() == y_test).float().mean().item() for p, x in zip(probes, x_test)])


def direction_from_masks_in_float64(x, y):
    x, mask = x.double(), y.bool()
    difference = x[mask].sum(0) / mask.sum() - x[~mask].sum(0) / (~mask).sum()
    return difference / torch.linalg.vector_norm(difference)


def direction_normalised_with_functional(x, y):
    return F.normalize(x[y == 1].mean(0) - x[y == 0].mean(0), dim=0)


def direction_accuracy_by_flipping(direction, x_train, y_train, x_test, y_test):
    if (x_train[y_train == 1] @ direction).mean() < (x_train[y_train == 0] @ direction).mean():
        direction = -direction  # now label 1 lies on the positive side
    projection = x_train @ direction
    threshold = (projection[y_train == 0].mean() + projection[y_train == 1].mean()) / 2
    return (((x_test @ direction) > threshold).long() == y_test).double().mean()  # a 0-d tensor


def direction_accuracy_in_float64(direction, x_train, y_train, x_test, y_test):
    direction, x_train, x_test = direction.double(), x_train.double(), x_test.double()
    mean_0 = (x_train[y_train == 0] @ direction).mean().item()
    mean_1 = (x_train[y_train == 1] @ direction).mean().item()
    closer_to_1 = ((x_test @ direction) - mean_1).abs() < ((x_test @ direction) - mean_0).abs()
    return (closer_to_1 == y_test.bool()).double().mean().item()


def cosine_with_functional(directions):
    return F.cosine_similarity(directions[:, None, :], directions[None, :, :], dim=-1)


def cosine_in_float64_with_einsum(directions):
    unit = F.normalize(directions.double(), dim=-1)
    return torch.einsum("id,jd->ij", unit, unit)


def control_labels_first_half_of_a_shuffle(keys, seed=0):
    distinct = sorted(set(keys))
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    ones = {distinct[i] for i in order[: len(distinct) // 2].tolist()}
    return torch.tensor([int(key in ones) for key in keys])


def control_labels_with_python_random(keys, seed=0):
    distinct = sorted(set(keys))
    random.Random(seed).shuffle(distinct)
    label_of = {key: i % 2 for i, key in enumerate(distinct)}
    return torch.tensor([label_of[key] for key in keys], dtype=torch.int64)


def remove_with_einsum_in_float64(resid, direction):
    unit = direction.double() / direction.double().norm()
    return resid.double() - torch.einsum("...d,d->...", resid.double(), unit)[..., None] * unit


def remove_with_a_projection_matrix(resid, direction):
    unit = F.normalize(direction, dim=0)
    projector = torch.eye(unit.shape[0]) - torch.outer(unit, unit)  # [d_model, d_model]
    return resid @ projector


def ablation_with_a_hook_factory(model, prompts, directions):
    def remover(direction):
        def hook_fn(resid, hook):
            return ref.remove_direction(resid, direction)
        return hook_fn

    return ref.logit_diffs(model, prompts, fwd_hooks=[(name, remover(d)) for name, d in directions.items()])


def ablation_in_a_hooks_context(model, prompts, directions):
    def hook_fn(resid, hook, direction):
        unit = direction / direction.norm()
        return resid - (resid @ unit)[..., None] * unit

    hooks = [(name, functools.partial(hook_fn, direction=d)) for name, d in directions.items()]
    with model.hooks(fwd_hooks=hooks):
        return ref.logit_diffs(model, prompts)


ALTERNATIVES = {
    "2.1": [stack_by_gathering_the_full_cache, stack_with_hooks_that_store],
    "2.2": [probe_with_adamw, probe_with_a_summed_log_sigmoid_loss],
    "2.3": [accuracy_with_probabilities_in_float64, accuracy_from_a_list_of_floats],
    "2.4": [direction_from_masks_in_float64, direction_normalised_with_functional],
    "2.5": [direction_accuracy_by_flipping, direction_accuracy_in_float64],
    "2.6": [cosine_with_functional, cosine_in_float64_with_einsum],
    "2.7": [control_labels_first_half_of_a_shuffle, control_labels_with_python_random],
    "2.8": [remove_with_einsum_in_float64, remove_with_a_projection_matrix],
    "2.9": [ablation_with_a_hook_factory, ablation_in_a_hooks_context],
}


MISTAKES = {
    "2.1": [(stack_at_minus_one, "position -1 is padding"), (stack_without_embeddings, "embeddings are missing")],
    "2.2": [(probe_never_steps, "never moved"), (probe_without_zero_grad, "zero_grad"),
            (probe_double_sigmoid, "applies the sigmoid itself"), (probe_ignores_weight_decay, "pass weight_decay"),
            (probe_ignores_steps, "steps=4")],
    "2.3": [(accuracy_on_training_split, "held-out test split"), (accuracy_probability_above_zero, "logit is above 0"),
            (accuracy_trained_on_train_and_test, "trained on the test prompts too")],
    "2.4": [(direction_flipped, "wrong way"), (direction_not_normalised, "unit length"), (direction_from_sums, "not the sum"),
            (direction_memoised, "and the reference differ by up to")],
    "2.5": [(accuracy_threshold_zero, "not centred"), (accuracy_assumes_positive_side, "points towards label 0")],
    "2.6": [(cosine_without_normalising, "plain dot products"), (cosine_normalised_by_column, "not each column")],
    "2.7": [(control_labels_per_prompt, "same key must always get the same label"),
            (control_labels_unsorted, "sort the distinct keys"), (control_labels_ignore_seed, "gave the same labels"),
            (control_labels_one_coin_per_key, "balance the labels")],
    "2.8": [(remove_without_normalising, "unit length"), (keep_only_the_component, "subtract it")],
    "2.9": [(ablation_late_binding, "same (last) direction"), (ablation_first_hook_only, "only one direction"),
            (ablation_final_column_only, "every position"), (ablation_leaves_hooks_on, "left hooks on")],
}
