"""Chapter 07's planted cases: realistic mistakes (each with the hint it must get) and correct
alternatives written differently from the reference."""

from __future__ import annotations

import torch

from utils.references import ch02_probing as ch02
from utils.references import ch07_steering as ref


# ------------------------------------------------------------------------------------------
# 7.1 steering hook
# ------------------------------------------------------------------------------------------
def steer_bos_too(direction, alpha):
    unit = direction / direction.norm()
    return lambda resid, hook: resid + alpha * resid.norm(dim=-1, keepdim=True) * unit


def steer_absolute(direction, alpha):
    unit = direction / direction.norm()

    def hook_fn(resid, hook):
        out = resid.clone()
        out[:, 1:] = out[:, 1:] + alpha * unit
        return out
    return hook_fn


def steer_unnormalised(direction, alpha):
    def hook_fn(resid, hook):
        out = resid.clone()
        out[:, 1:] = out[:, 1:] + alpha * resid[:, 1:].norm(dim=-1, keepdim=True) * direction
        return out
    return hook_fn


def steer_position_loop(direction, alpha):
    unit = direction / direction.norm()

    def hook_fn(resid, hook):
        out = resid.clone()
        for position in range(1, resid.shape[1]):
            out[:, position] = resid[:, position] + alpha * resid[:, position].norm(dim=-1, keepdim=True) * unit
        return out
    return hook_fn


def steer_masked_float64(direction, alpha):
    def hook_fn(resid, hook):
        x = resid.double()
        mask = torch.ones(x.shape[1], 1, dtype=x.dtype, device=x.device)
        mask[0] = 0.0
        unit = direction.double().to(x.device) / direction.double().norm()
        return (x + alpha * mask * x.norm(dim=-1, keepdim=True) * unit).to(resid.dtype)
    return hook_fn


# ------------------------------------------------------------------------------------------
# 7.2 mean-difference vector
# ------------------------------------------------------------------------------------------
def _at_minus_one(model, prompts, hook_name):
    tokens, _ = ch02.tokenize(model, prompts.prompts)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return cache[hook_name][:, -1]


def mean_difference_at_minus_one(model, prompts, hook_name, label):
    x = _at_minus_one(model, prompts, hook_name)
    labels = torch.tensor(prompts.labels[label])
    return x[labels == 1].mean(0) - x[labels == 0].mean(0)


def mean_difference_flipped(model, prompts, hook_name, label):
    x = ref.last_token_activations(model, prompts.prompts, hook_name)
    labels = torch.tensor(prompts.labels[label])
    return x[labels == 0].mean(0) - x[labels == 1].mean(0)


def mean_difference_normalised(model, prompts, hook_name, label):
    x = ref.last_token_activations(model, prompts.prompts, hook_name)
    labels = torch.tensor(prompts.labels[label])
    difference = x[labels == 1].mean(0) - x[labels == 0].mean(0)
    return difference / difference.norm()


def mean_difference_one_by_one(model, prompts, hook_name, label):
    sums = {0: 0.0, 1: 0.0}
    counts = {0: 0, 1: 0}
    for prompt, value in zip(prompts.prompts, prompts.labels[label]):
        tokens, last = ch02.tokenize(model, [prompt])
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        sums[value] = sums[value] + cache[hook_name][0, last[0]].double()
        counts[value] += 1
    return sums[1] / counts[1] - sums[0] / counts[0]


def mean_difference_weighted(model, prompts, hook_name, label):
    tokens, last = ch02.tokenize(model, prompts.prompts)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    x = cache[hook_name].gather(1, last[:, None, None].expand(-1, 1, model.cfg.d_model))[:, 0]  # [batch, d_model]
    labels = torch.tensor(prompts.labels[label], dtype=x.dtype)
    weights = labels / labels.sum() - (1 - labels) / (1 - labels).sum()  # [batch]
    return weights @ x


# ------------------------------------------------------------------------------------------
# 7.3 side-effect table
# ------------------------------------------------------------------------------------------
def table_at_minus_one(model, prompt_sets, fwd_hooks=()):
    table = {}
    for name, prompts in prompt_sets.items():
        tokens, _ = ch02.tokenize(model, prompts.prompts)
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))[:, -1]
        rows = torch.arange(len(prompts))
        diffs = logits[rows, ch02.answer_ids(model, prompts.correct)] - logits[rows, ch02.answer_ids(model, prompts.wrong)]
        table[name] = (diffs > 0).float().mean().item()
    return table


def table_without_hooks(model, prompt_sets, fwd_hooks=()):
    return {name: (ch02.logit_diffs(model, prompts) > 0).float().mean().item() for name, prompts in prompt_sets.items()}


def table_of_mean_logit_diffs(model, prompt_sets, fwd_hooks=()):
    return {name: ch02.logit_diffs(model, prompts, fwd_hooks=list(fwd_hooks)).mean().item()
            for name, prompts in prompt_sets.items()}


def table_by_hand(model, prompt_sets, fwd_hooks=()):
    table = {}
    for name, prompts in prompt_sets.items():
        tokens, last = ch02.tokenize(model, prompts.prompts)
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model(tokens)
        final = logits[torch.arange(len(last)), last]  # [batch, d_vocab]
        correct = final.gather(-1, ch02.answer_ids(model, prompts.correct)[:, None])[:, 0]
        wrong = final.gather(-1, ch02.answer_ids(model, prompts.wrong)[:, None])[:, 0]
        table[name] = float(int((correct > wrong).sum()) / len(prompts))
    return table


def table_one_prompt_at_a_time(model, prompt_sets, fwd_hooks=()):
    table = {}
    for name, prompts in prompt_sets.items():
        wins = [bool(ch02.logit_diffs(model, prompts.subset([i]), fwd_hooks=list(fwd_hooks))[0] > 0)
                for i in range(len(prompts))]
        table[name] = sum(wins) / len(wins)
    return table


# ------------------------------------------------------------------------------------------
# 7.4 largest safe coefficient
# ------------------------------------------------------------------------------------------
def _losses(correct, baseline, i):
    return {family: baseline[family] - int(correct[family][i]) for family in baseline}


def safe_strict(alphas, correct, baseline, allowed):
    safe = None
    for i, alpha in enumerate(alphas):
        if any(loss >= allowed[f] for f, loss in _losses(correct, baseline, i).items()):
            break
        safe = float(alpha)
    return safe


def safe_anywhere(alphas, correct, baseline, allowed):
    safe = [float(a) for i, a in enumerate(alphas)
            if all(loss <= allowed[f] for f, loss in _losses(correct, baseline, i).items())]
    return max(safe) if safe else None


def safe_in_total(alphas, correct, baseline, allowed):
    safe = None
    for i, alpha in enumerate(alphas):
        if sum(_losses(correct, baseline, i).values()) > sum(allowed.values()):
            break
        safe = float(alpha)
    return safe


def safe_first_unsafe(alphas, correct, baseline, allowed):
    for i, alpha in enumerate(alphas):
        if any(loss > allowed[f] for f, loss in _losses(correct, baseline, i).items()):
            return float(alpha)
    return float(alphas[-1])


def safe_vectorised(alphas, correct, baseline, allowed):
    losses = torch.stack([baseline[f] - correct[f] for f in baseline])  # [family, alpha], integer
    unsafe = (losses > torch.tensor([allowed[f] for f in baseline])[:, None]).any(0)  # [alpha]
    n_safe = int(unsafe.int().argmax()) if unsafe.any() else len(alphas)
    return float(alphas[n_safe - 1]) if n_safe > 0 else None


def safe_while_loop(alphas, correct, baseline, allowed):
    i = 0
    while i < len(alphas) and all(correct[f][i] >= baseline[f] - allowed[f] for f in baseline):
        i += 1
    return float(alphas[i - 1]) if i > 0 else None


# ------------------------------------------------------------------------------------------
# 7.5 directional ablation hooks
# ------------------------------------------------------------------------------------------
def ablation_without_mid(model, direction):
    unit = direction / direction.norm()
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    return [(name, lambda resid, hook: resid - (resid @ unit)[..., None] * unit) for name in names]


def ablation_unnormalised(model, direction):
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_{w}" for l in range(model.cfg.n_layers)
                                           for w in ("mid", "post")]
    return [(name, lambda resid, hook: resid - (resid @ direction)[..., None] * direction) for name in names]


def ablation_one_layer(model, direction):
    unit = direction / direction.norm()
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    return [(name, lambda resid, hook: resid - (resid @ unit)[..., None] * unit) for name in names]


def ablation_with_projection_matrix(model, direction):
    unit = direction / direction.norm()
    projection = torch.eye(len(unit)) - torch.outer(unit, unit)  # [d_model, d_model]
    names = [f"blocks.{l}.hook_resid_{w}" for l in range(model.cfg.n_layers) for w in ("post", "mid")]
    return [(name, lambda resid, hook: resid @ projection) for name in names[::-1] + ["blocks.0.hook_resid_pre"]]


def ablation_at_every_resid_pre(model, direction):
    """resid_pre of block l+1 is resid_post of block l: the same points, named the other way."""
    unit = (direction / direction.norm()).double()

    def ablate(resid, hook):
        x = resid.double()
        return (x - torch.einsum("bpd,d->bp", x, unit)[..., None] * unit).to(resid.dtype)

    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    names += [f"blocks.{l}.hook_resid_mid" for l in range(model.cfg.n_layers)]
    names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    return [(name, ablate) for name in names]


# ------------------------------------------------------------------------------------------
# 7.6 weight orthogonalisation
# ------------------------------------------------------------------------------------------
def _project(weights, vector):
    with torch.no_grad():
        for weight in weights:
            weight.sub_((weight @ vector)[..., None] * vector)


def orthogonalize_without_biases(model, direction):
    unit = direction / direction.norm()
    _project([model.embed.W_E, model.pos_embed.W_pos] + [w for b in model.blocks for w in (b.attn.W_O, b.mlp.W_out)], unit)


def orthogonalize_without_embeddings(model, direction):
    unit = direction / direction.norm()
    _project([w for b in model.blocks for w in (b.attn.W_O, b.attn.b_O, b.mlp.W_out, b.mlp.b_out)], unit)


def orthogonalize_only_mlps(model, direction):
    unit = direction / direction.norm()
    _project([model.embed.W_E, model.pos_embed.W_pos] + [w for b in model.blocks for w in (b.mlp.W_out, b.mlp.b_out)], unit)


def orthogonalize_unnormalised(model, direction):
    _project(ref.residual_writers(model), direction)


def orthogonalize_with_projection_matrix(model, direction):
    unit = direction / direction.norm()
    projection = torch.eye(len(unit)) - torch.outer(unit, unit)  # [d_model, d_model]
    with torch.no_grad():
        for weight in [model.embed.W_E, model.pos_embed.W_pos]:
            weight.copy_(weight @ projection)
        for block in model.blocks:
            for weight in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                weight.copy_(weight @ projection)


def orthogonalize_float64_einsum(model, direction):
    unit = direction.double() / direction.double().norm()
    with torch.no_grad():
        for block in reversed(list(model.blocks)):
            for weight in (block.mlp.b_out, block.mlp.W_out, block.attn.b_O, block.attn.W_O):
                along = torch.einsum("...d,d->...", weight.double(), unit)
                weight.copy_((weight.double() - along[..., None] * unit).to(weight.dtype))
        for weight in (model.pos_embed.W_pos, model.embed.W_E):
            along = torch.einsum("...d,d->...", weight.double(), unit)
            weight.copy_((weight.double() - along[..., None] * unit).to(weight.dtype))


# ------------------------------------------------------------------------------------------
# 7.7 a fresh probe after erasure
# ------------------------------------------------------------------------------------------
def _probe_accuracy(train_x, y_train, test_x, y_test):
    with torch.enable_grad():
        probe = ch02.train_probe(train_x, y_train)
    with torch.no_grad():
        return ((probe(test_x) > 0) == y_test.bool()).float().mean().item()


def erased_fitted_on_test(fit_eraser, x_train, y_train, x_test, y_test):
    eraser = fit_eraser(x_test, y_test)
    return _probe_accuracy(eraser(x_train), y_train, eraser(x_test), y_test)


def erased_train_only(fit_eraser, x_train, y_train, x_test, y_test):
    eraser = fit_eraser(x_train, y_train)
    return _probe_accuracy(eraser(x_train), y_train, x_test, y_test)


def erased_test_only(fit_eraser, x_train, y_train, x_test, y_test):
    eraser = fit_eraser(x_train, y_train)
    return _probe_accuracy(x_train, y_train, eraser(x_test), y_test)


def erased_in_one_batch(fit_eraser, x_train, y_train, x_test, y_test):
    eraser = fit_eraser(x_train, y_train)
    erased = eraser(torch.cat([x_train, x_test]))
    return _probe_accuracy(erased[:len(x_train)], y_train, erased[len(x_train):], y_test)


def erased_counting_hits(fit_eraser, x_train, y_train, x_test, y_test):
    eraser = fit_eraser(x_train.clone(), y_train.clone())
    with torch.enable_grad():
        probe = ch02.train_probe(eraser(x_train), y_train)
    with torch.no_grad():
        logits = probe(eraser(x_test))
    hits = sum(int((logit > 0) == bool(label)) for logit, label in zip(logits.tolist(), y_test.tolist()))
    return hits / len(y_test)


# ------------------------------------------------------------------------------------------
# 7.8 rank-one update
# ------------------------------------------------------------------------------------------
def update_identity_moment(weight, key, value, second_moment):
    return weight + torch.outer(key, value - key @ weight) / (key @ key)


def update_adds_value(weight, key, value, second_moment):
    c_inv_k = torch.linalg.solve(second_moment, key)
    return weight + torch.outer(c_inv_k, value) / (c_inv_k @ key)


def update_overwrites(weight, key, value, second_moment):
    c_inv_k = torch.linalg.solve(second_moment, key)
    return torch.outer(c_inv_k, value) / (c_inv_k @ key)


def update_one_unit_row(weight, key, value, second_moment):
    unit = int(key.abs().argmax())
    new = weight.clone()
    new[unit] = weight[unit] + (value - key @ weight) / key[unit]
    return new


def update_with_inverse_float64(weight, key, value, second_moment):
    c_inv_k = torch.linalg.inv(second_moment.double()) @ key.double()
    new = weight.double() + c_inv_k[:, None] * (value.double() - key.double() @ weight.double())[None] / (key.double() @ c_inv_k)
    return new.float()


def update_by_cholesky(weight, key, value, second_moment):
    factor = torch.linalg.cholesky(second_moment)
    c_inv_k = torch.cholesky_solve(key[:, None], factor)[:, 0]
    missing = value - torch.einsum("i,io->o", key, weight)
    return weight + torch.einsum("i,o->io", c_inv_k, missing) / torch.dot(key, c_inv_k)


MISTAKES = {
    "7.1": [(steer_bos_too, "position 0 (the end-of-text token)"), (steer_absolute, "alpha is relative"),
            (steer_unnormalised, "divide the direction by its norm first")],
    "7.2": [(mean_difference_at_minus_one, "right-padded"), (mean_difference_flipped, "the sign is flipped"),
            (mean_difference_normalised, "not normalised")],
    "7.3": [(table_at_minus_one, "right-padded"), (table_without_hooks, "run the model with fwd_hooks on"),
            (table_of_mean_logit_diffs, "not the mean logit difference")],
    "7.4": [(safe_strict, "compare with <="), (safe_anywhere, "stop at the first unsafe coefficient"),
            (safe_in_total, "not their total"), (safe_first_unsafe, "not the first unsafe one")],
    "7.5": [(ablation_unnormalised, "project out the unit direction"), (ablation_one_layer, "every layer"),
            (ablation_without_mid, "hook_resid_mid too")],
    "7.6": [(orthogonalize_without_embeddings, "embeddings write into the residual stream too"),
            (orthogonalize_only_mlps, "every attention layer writes through W_O"),
            (orthogonalize_unnormalised, "project out the unit direction"),
            (orthogonalize_without_biases, "the biases write into the residual stream too")],
    "7.7": [(erased_train_only, "erase the test activations too"),
            (erased_test_only, "erase the training activations before training the probe"),
            (erased_fitted_on_test, "fit the eraser on the training split only")],
    "7.8": [(update_identity_moment, "weight the change by the keys' second moment"),
            (update_adds_value, "the numerator is the residual"), (update_overwrites, "keep the old weight"),
            (update_one_unit_row, "overwriting the whole row of one hidden unit")],
}

ALTERNATIVES = {
    "7.1": [steer_position_loop, steer_masked_float64],
    "7.2": [mean_difference_one_by_one, mean_difference_weighted],
    "7.3": [table_by_hand, table_one_prompt_at_a_time],
    "7.4": [safe_vectorised, safe_while_loop],
    "7.5": [ablation_with_projection_matrix, ablation_at_every_resid_pre],
    "7.6": [orthogonalize_with_projection_matrix, orthogonalize_float64_einsum],
    "7.7": [erased_in_one_batch, erased_counting_hits],
    "7.8": [update_with_inverse_float64, update_by_cholesky],
}


# ------------------------------------------------------------------------------------------
# Answers that change what they are given, or reach past it
# ------------------------------------------------------------------------------------------
def mean_difference_sorting_in_place(model, prompts, hook_name, label):
    """Sorts the prompts by length in place (less padding per batch): the vector is right, but the chapter's
    later cells would find the set reordered, so the check names the change (and still hands the next try a fresh copy)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts.prompts[i]))
    prompts.prompts[:] = [prompts.prompts[i] for i in order]
    prompts.correct[:] = [prompts.correct[i] for i in order]
    prompts.wrong[:] = [prompts.wrong[i] for i in order]
    for name in prompts.labels:
        prompts.labels[name][:] = [prompts.labels[name][i] for i in order]
    x = ref.last_token_activations(model, prompts.prompts, hook_name)
    labels = torch.tensor(prompts.labels[label])
    return x[labels == 1].mean(0) - x[labels == 0].mean(0)


def table_sorting_in_place(model, prompt_sets, fwd_hooks=()):
    """Sorts each set's prompts in place before measuring: the table is right, but the caller's sets come back
    reordered, so the check names the change."""
    table = {}
    for name, prompts in prompt_sets.items():
        order = sorted(range(len(prompts)), key=lambda i: len(prompts.prompts[i]))
        for field in (prompts.prompts, prompts.correct, prompts.wrong):
            field[:] = [field[i] for i in order]
        table[name] = (ch02.logit_diffs(model, prompts, fwd_hooks=list(fwd_hooks)) > 0).float().mean().item()
    return table


def safe_absolute_change(alphas, correct, baseline, allowed):
    safe = None
    for i, alpha in enumerate(alphas):
        if any(abs(baseline[f] - int(correct[f][i])) > allowed[f] for f in baseline):
            break
        safe = float(alpha)
    return safe


def ablation_arditi_list(model, direction):
    """resid_pre and resid_mid of every layer, as Arditi et al. list them: misses the last resid_post."""
    unit = direction / direction.norm()

    def ablate(resid, hook):
        return resid - (resid @ unit)[..., None] * unit

    return [(f"blocks.{l}.hook_resid_{where}", ablate) for l in range(model.cfg.n_layers) for where in ("pre", "mid")]


def ablation_that_edits_weights(model, direction):
    """Orthogonalises the weights through .data (invisible to version counters) and returns no hooks."""
    unit = (direction / direction.norm()).to(model.cfg.device)
    for weight in ref.residual_writers(model):
        weight.data -= (weight.data @ unit)[..., None] * unit
    return []


def orthogonalize_through_data(model, direction):
    """Edits each tensor's .data: correct, and the check must still put the weights back."""
    unit = (direction / direction.norm()).to(model.cfg.device)
    for weight in ref.residual_writers(model):
        weight.data.copy_(weight.data - (weight.data @ unit)[..., None] * unit)


def update_along_c_k(weight, key, value, second_moment):
    """Meets key @ W = value, but spreads the change along C k instead of C^-1 k: not the smallest."""
    c_k = second_moment @ key
    return weight + torch.outer(c_k, value - key @ weight) / (c_k @ key)


MISTAKES["7.4"].append((safe_absolute_change, "only a loss counts"))
MISTAKES["7.5"] += [(ablation_arditi_list, "the last block's hook_resid_post"),
                    (ablation_that_edits_weights, "of the model's weights in place")]
MISTAKES["7.8"].append((update_along_c_k, "not the smallest change"))
MISTAKES["7.2"].append((mean_difference_sorting_in_place, "changed its input argument"))
MISTAKES["7.3"].append((table_sorting_in_place, "changed its input argument"))
ALTERNATIVES["7.6"].append(orthogonalize_through_data)
