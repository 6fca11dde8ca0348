"""Realistic mistakes for Chapter 06, each with the hint its check must give, and correct answers
written differently from the reference, which must pass."""

import functools

import numpy as np

import torch
import torch.nn.functional as F

from utils.references import ch06_patching as ref


def _ld(logits, correct, wrong, last):
    rows = torch.arange(len(last))
    return logits[rows, last, correct] - logits[rows, last, wrong]


# 6.1 -----------------------------------------------------------------------------------------
def metric_unnormalised(clean_logits, corrupted_logits, correct, wrong, last):
    return lambda logits: _ld(logits, correct, wrong, last).mean()


def metric_sign_flipped(clean_logits, corrupted_logits, correct, wrong, last):
    clean, corrupted = _ld(clean_logits, correct, wrong, last).mean(), _ld(corrupted_logits, correct, wrong, last).mean()
    return lambda logits: (_ld(logits, correct, wrong, last).mean() - clean) / (corrupted - clean)


def metric_at_minus_one(clean_logits, corrupted_logits, correct, wrong, last):
    def ld(logits):
        return (logits[:, -1].gather(-1, correct[:, None]) - logits[:, -1].gather(-1, wrong[:, None]))[:, 0]
    clean, corrupted = ld(clean_logits).mean(), ld(corrupted_logits).mean()
    return lambda logits: (ld(logits).mean() - corrupted) / (clean - corrupted)


def metric_mean_of_ratios(clean_logits, corrupted_logits, correct, wrong, last):
    clean, corrupted = _ld(clean_logits, correct, wrong, last), _ld(corrupted_logits, correct, wrong, last)
    return lambda logits: ((_ld(logits, correct, wrong, last) - corrupted) / (clean - corrupted)).mean()


def metric_with_item(clean_logits, corrupted_logits, correct, wrong, last):
    clean, corrupted = _ld(clean_logits, correct, wrong, last).mean(), _ld(corrupted_logits, correct, wrong, last).mean()
    return lambda logits: ((_ld(logits, correct, wrong, last).mean() - corrupted) / (clean - corrupted)).item()


def metric_loop_float64(clean_logits, corrupted_logits, correct, wrong, last):
    def mean_diff(logits):
        values = [logits[i, int(last[i])].double()[int(correct[i])] - logits[i, int(last[i])].double()[int(wrong[i])]
                  for i in range(len(last))]
        return torch.stack(values).mean()
    low, high = mean_diff(corrupted_logits), mean_diff(clean_logits)
    return lambda logits: (mean_diff(logits) - low) / (high - low)


class MetricObject:
    def __init__(self, clean_logits, corrupted_logits, correct, wrong, last):
        self.index = (torch.arange(len(last)), last)
        self.answers = torch.stack([correct, wrong], 1)  # [batch, 2]
        self.low, self.high = self.mean_diff(corrupted_logits), self.mean_diff(clean_logits)

    def mean_diff(self, logits):
        pair = logits[self.index].gather(-1, self.answers)  # [batch, 2]
        return (pair[:, 0] - pair[:, 1]).mean()

    def __call__(self, logits):
        return (self.mean_diff(logits) - self.low) / (self.high - self.low)


def metric_as_object(clean_logits, corrupted_logits, correct, wrong, last):
    return MetricObject(clean_logits, corrupted_logits, correct, wrong, last)


# 6.2 -----------------------------------------------------------------------------------------
def _resid_sweep(model, base, source, metric, name="hook_resid_pre", late_binding=False, check=True):
    if check and base.shape != source.shape:
        raise ValueError("shapes differ")
    names = [f"blocks.{layer}.{name}" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
    out = torch.zeros(model.cfg.n_layers, base.shape[1])
    for layer, hook_name in enumerate(names):
        hooks = []
        for position in range(base.shape[1]):
            if late_binding:
                def hook(resid, hook):
                    resid[:, position] = cache[hook_name][:, position]  # noqa: B023 - the mistake
                    return resid
            else:
                hook = ref.residual_patch_hook(cache[hook_name], position)
            hooks.append(hook)
        for index, hook in enumerate(hooks):
            out[layer, index] = metric(model.run_with_hooks(base, fwd_hooks=[(hook_name, hook)]))
    return out


def resid_post_instead(model, base_tokens, source_tokens, metric):
    return _resid_sweep(model, base_tokens, source_tokens, metric, name="hook_resid_post")


def resid_late_binding(model, base_tokens, source_tokens, metric):
    return _resid_sweep(model, base_tokens, source_tokens, metric, late_binding=True)


def resid_patched_with_itself(model, base_tokens, source_tokens, metric):
    return ref.patch_residual(model, base_tokens, base_tokens, metric)


def resid_swapped(model, base_tokens, source_tokens, metric):
    return ref.patch_residual(model, source_tokens, base_tokens, metric)


def resid_no_length_check(model, base_tokens, source_tokens, metric):
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in names)
    out = torch.zeros(model.cfg.n_layers, base_tokens.shape[1])
    for layer, name in enumerate(names):
        for position in range(base_tokens.shape[1]):
            out[layer, position] = metric(model.run_with_hooks(
                base_tokens, fwd_hooks=[(name, ref.residual_patch_hook(cache[name], position))]))
    return out


def resid_where_hook(model, base_tokens, source_tokens, metric):
    ref.check_same_shape(base_tokens, source_tokens)
    out = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        _, cache = model.run_with_cache(source_tokens, names_filter=name)
        row = []
        for position in range(base_tokens.shape[1]):
            keep = torch.arange(base_tokens.shape[1]) == position  # [pos]

            def hook(resid, hook, keep=keep, source=cache[name]):
                return torch.where(keep[None, :, None], source, resid)
            row.append(float(metric(model.run_with_hooks(base_tokens, fwd_hooks=[(name, hook)]))))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def resid_batched_positions(model, base_tokens, source_tokens, metric):
    if base_tokens.shape != source_tokens.shape:
        raise ValueError(f"different shapes {base_tokens.shape} and {source_tokens.shape}")
    batch, n_pos = base_tokens.shape
    out = torch.zeros(model.cfg.n_layers, n_pos)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        _, cache = model.run_with_cache(source_tokens, names_filter=name)
        source = cache[name]

        def hook(resid, hook):
            resid = resid.view(n_pos, batch, n_pos, -1).clone()  # [variant = position, batch, pos, d_model]
            for p in range(n_pos):
                resid[p, :, p] = source[:, p]
            return resid.flatten(0, 1)
        logits = model.run_with_hooks(base_tokens.repeat(n_pos, 1), fwd_hooks=[(name, hook)])
        for p, variant in enumerate(logits.view(n_pos, batch, *logits.shape[1:])):
            out[layer, p] = metric(variant)
    return out


# 6.3 -----------------------------------------------------------------------------------------
def heads_whole_layer(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    ref.check_same_shape(base_tokens, source_tokens)
    n_pos, n_heads = base_tokens.shape[1], model.cfg.n_heads
    out = torch.zeros(model.cfg.n_layers, n_pos, n_heads) if by_position else torch.zeros(model.cfg.n_layers, n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = model.run_with_cache(source_tokens, names_filter=name)
        for position in range(n_pos if by_position else 1):
            def hook(z, hook, position=position):
                if by_position:
                    z[:, position] = cache[name][:, position]
                else:
                    z[:] = cache[name]
                return z
            value = metric(model.run_with_hooks(base_tokens, fwd_hooks=[(name, hook)]))
            if by_position:
                out[layer, position] = value
            else:
                out[layer] = value
    return out


def heads_patched_with_itself(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    return ref.patch_head_output(model, base_tokens, base_tokens, metric, by_position, chunk_size)


def heads_swapped(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    return ref.patch_head_output(model, source_tokens, base_tokens, metric, by_position, chunk_size)


def heads_head_before_position(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    result = ref.patch_head_output(model, base_tokens, source_tokens, metric, by_position, chunk_size)
    return result.transpose(1, 2) if by_position else result


def heads_no_length_check(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    return heads_loop(model, base_tokens, source_tokens, metric, by_position, chunk_size, check=False)


def heads_ignores_chunk_size(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    return ref.patch_head_output(model, base_tokens, source_tokens, metric, by_position=by_position, chunk_size=10_000)


def heads_loop(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16, check=True):
    if check:
        ref.check_same_shape(base_tokens, source_tokens)
    n_pos, n_heads = base_tokens.shape[1], model.cfg.n_heads
    positions = [[p] for p in range(n_pos)] if by_position else [list(range(n_pos))]
    out = torch.zeros(model.cfg.n_layers, len(positions), n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = model.run_with_cache(source_tokens, names_filter=name)
        for i, where in enumerate(positions):
            for head in range(n_heads):
                def hook(z, hook, where=where, head=head):
                    z[:, where, head] = cache[name][:, where, head]
                    return z
                out[layer, i, head] = metric(model.run_with_hooks(base_tokens, fwd_hooks=[(name, hook)]))
    return out if by_position else out[:, 0]


def heads_head_major_batches(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16):
    if base_tokens.shape != source_tokens.shape:
        raise ValueError("clean and corrupted differ in shape")
    batch, n_pos = base_tokens.shape
    n_heads = model.cfg.n_heads
    cells = [(h, p) for h in range(n_heads) for p in (range(n_pos) if by_position else [None])]
    out = {}
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = model.run_with_cache(source_tokens, names_filter=name)
        for start in range(0, len(cells), chunk_size):
            group = cells[start:start + chunk_size]

            def hook(z, hook, group=group):
                z = z.clone()
                for v, (h, p) in enumerate(group):
                    rows = slice(v * batch, (v + 1) * batch)
                    if p is None:
                        z[rows, :, h] = cache[name][:, :, h]
                    else:
                        z[rows, p, h] = cache[name][:, p, h]
                return z
            logits = model.run_with_hooks(base_tokens.repeat(len(group), 1), fwd_hooks=[(name, hook)])
            for v, cell in enumerate(group):
                out[layer, cell] = metric(logits[v * batch:(v + 1) * batch])
    if by_position:
        return torch.stack([torch.stack([torch.stack([out[l, (h, p)] for h in range(n_heads)]) for p in range(n_pos)])
                            for l in range(model.cfg.n_layers)])
    return torch.stack([torch.stack([out[l, (h, None)] for h in range(n_heads)]) for l in range(model.cfg.n_layers)])


# 6.4 -----------------------------------------------------------------------------------------
def ablate_zero_always(model, tokens, heads, method="mean", reference_tokens=None):
    return ref.ablate_heads(model, tokens, heads, "zero")


def ablate_mean_over_ioi(model, tokens, heads, method="mean", reference_tokens=None):
    if method == "mean":
        return ref.ablate_heads(model, tokens, heads, "mean", tokens)
    return ref.ablate_heads(model, tokens, heads, method, reference_tokens)


def ablate_resample_as_mean(model, tokens, heads, method="mean", reference_tokens=None):
    return ref.ablate_heads(model, tokens, heads, "mean" if method == "resample" else method, reference_tokens)


def ablate_mean_over_positions(model, tokens, heads, method="mean", reference_tokens=None):
    if method != "mean":
        return ref.ablate_heads(model, tokens, heads, method, reference_tokens)
    hooks = []
    for layer in sorted({l for l, _ in heads}):
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = model.run_with_cache(reference_tokens, names_filter=name)
        mean = cache[name].mean(dim=(0, 1))  # [head, d_head]
        chosen = [h for l, h in heads if l == layer]

        def hook(z, hook, mean=mean, chosen=chosen):
            z[:, :, chosen] = mean[chosen]
            return z
        hooks.append((name, hook))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def ablate_no_shape_check(model, tokens, heads, method="mean", reference_tokens=None):
    if method == "resample" and reference_tokens is not None and reference_tokens.shape != tokens.shape:
        reference_tokens = reference_tokens.repeat(2, 1)[:len(tokens)]
    return ref.ablate_heads(model, tokens, heads, method, reference_tokens)


def ablate_mean_pads_or_cuts(model, tokens, heads, method="mean", reference_tokens=None):
    """Mean ablation that makes a reference of another length fit (cut, or padded with its last token)."""
    if method == "mean" and reference_tokens is not None and reference_tokens.shape[1] != tokens.shape[1]:
        n_pos = tokens.shape[1]
        if reference_tokens.shape[1] > n_pos:
            reference_tokens = reference_tokens[:, :n_pos]
        else:
            pad = reference_tokens[:, -1:].repeat(1, n_pos - reference_tokens.shape[1])
            reference_tokens = torch.cat([reference_tokens, pad], dim=1)
    return ref.ablate_heads(model, tokens, heads, method, reference_tokens)


def _check_reference(tokens, method, reference_tokens):
    if method == "resample" and reference_tokens.shape != tokens.shape:
        raise ValueError("resample ablation needs one reference prompt per prompt")
    if method == "mean" and reference_tokens.shape[1] != tokens.shape[1]:
        raise ValueError("mean ablation needs references of the same length")


def ablate_head_by_head(model, tokens, heads, method="mean", reference_tokens=None):
    hooks = []
    if method != "zero":
        _check_reference(tokens, method, reference_tokens)
        _, cache = model.run_with_cache(reference_tokens)
    for layer, head in heads:
        name = f"blocks.{layer}.attn.hook_z"
        if method == "zero":
            value = torch.zeros(tokens.shape[1], model.cfg.d_head)
        elif method == "mean":
            value = cache[name][:, :, head].mean(0)  # [pos, d_head]
        else:
            value = cache[name][:, :, head]  # [batch, pos, d_head]

        def hook(z, hook, head=head, value=value):
            z[:, :, head] = value
            return z
        hooks.append((name, hook))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def ablate_with_einsum_masks(model, tokens, heads, method="mean", reference_tokens=None):
    if method not in ("zero", "mean", "resample"):
        raise ValueError(method)
    if method != "zero":
        _check_reference(tokens, method, reference_tokens)
    mask = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for layer, head in heads:
        mask[layer, head] = 1.0
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    cache = None if method == "zero" else model.run_with_cache(reference_tokens, names_filter=lambda n: n in names)[1]

    def hook(z, hook, layer):
        if cache is None:
            replacement = torch.zeros_like(z)
        else:
            value = cache[f"blocks.{layer}.attn.hook_z"]
            replacement = value.mean(0, keepdim=True).expand_as(z) if method == "mean" else value
        keep = mask[layer].to(z.dtype)[None, None, :, None]
        return z * (1 - keep) + replacement * keep
    return model.run_with_hooks(tokens, fwd_hooks=[(name, functools.partial(hook, layer=layer))
                                                   for layer, name in enumerate(names)])


# 6.5 -----------------------------------------------------------------------------------------
def path_unfrozen(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    return metric(ref.ablate_heads(model, base_tokens, [tuple(sender)], "resample", source_tokens))


def path_receiver_frozen(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    ref.check_same_shape(base_tokens, source_tokens)
    return metric(model(base_tokens))


def path_swapped(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    return ref.path_patch(model, source_tokens, base_tokens, sender, receiver, metric, receiver_heads)


def path_every_receiver_head(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    heads = None if receiver_heads is None else list(range(model.cfg.n_heads))
    return ref.path_patch(model, base_tokens, source_tokens, sender, receiver, metric, heads)


def _frozen_run(model, base_tokens, source_tokens, sender, receiver):
    """Step 1 written with one cache of everything and in-place edits."""
    _, base = model.run_with_cache(base_tokens)
    _, source = model.run_with_cache(source_tokens)
    layer, head = sender
    hooks = []
    for l in range(model.cfg.n_layers):
        z_name, mlp_name = f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out"

        def z_hook(z, hook, l=l, z_name=z_name):
            z[:] = base[z_name]
            if l == layer:
                z[:, :, head] = source[z_name][:, :, head]
            return z
        hooks.append((z_name, z_hook))
        if mlp_name != receiver:
            hooks.append((mlp_name, lambda out, hook, mlp_name=mlp_name: base[mlp_name].clone()))
    seen = {}

    def record(value, hook):
        seen["value"] = value.clone()
        return value
    model.run_with_hooks(base_tokens, fwd_hooks=hooks + [(receiver, record)])
    return base, seen["value"]


def path_sender_last_position_only(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    """The sender taken from the source run at the last position only; the rest right."""
    ref.check_same_shape(base_tokens, source_tokens)
    layer, head = sender
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    mlp_names = [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    _, base = model.run_with_cache(base_tokens, names_filter=lambda n: n in z_names + mlp_names)
    _, source = model.run_with_cache(source_tokens, names_filter=z_names[layer])
    z = base[z_names[layer]].clone()
    z[:, -1, head] = source[z_names[layer]][:, -1, head]
    frozen = {n: ref.freeze_hook(base[n]) for n in z_names + mlp_names}
    frozen[z_names[layer]] = ref.freeze_hook(z)
    frozen.pop(receiver, None)
    seen = {}
    model.run_with_hooks(base_tokens, fwd_hooks=list(frozen.items()) + [(receiver, ref.store_hook(seen, receiver))])
    value = seen[receiver]
    if receiver_heads is not None:
        _, base_receiver = model.run_with_cache(base_tokens, names_filter=receiver)
        patched = base_receiver[receiver].clone()
        patched[:, :, receiver_heads] = value[:, :, receiver_heads]
        value = patched
    return metric(model.run_with_hooks(base_tokens, fwd_hooks=[(receiver, ref.freeze_hook(value))]))


def path_in_place(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    ref.check_same_shape(base_tokens, source_tokens)
    base, value = _frozen_run(model, base_tokens, source_tokens, sender, receiver)

    def replace(activation, hook):
        if receiver_heads is None:
            return value
        activation[:, :, receiver_heads] = value[:, :, receiver_heads]
        return activation
    return metric(model.run_with_hooks(base_tokens, fwd_hooks=[(receiver, replace)]))


def path_double_precision_metric(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None):
    ref.check_same_shape(base_tokens, source_tokens)
    base, value = _frozen_run(model, base_tokens, source_tokens, sender, receiver)
    if receiver_heads is not None:
        patched = base[receiver].clone()
        patched[:, :, receiver_heads] = value[:, :, receiver_heads]
        value = patched
    return float(metric(model.run_with_hooks(base_tokens, fwd_hooks=[(receiver, lambda a, hook: value)])))


# 6.6 -----------------------------------------------------------------------------------------
def _attribution(model, clean_tokens, corrupted_tokens, metric, eval_mode=True, at_clean=False, sign=1.0, mean=False):
    ref.check_same_shape(clean_tokens, corrupted_tokens)
    if eval_mode:
        model.eval()
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
        _, corrupted = model.run_with_cache(corrupted_tokens, names_filter=lambda n: n in names)
    with torch.enable_grad():
        kept = {}

        def make(name):
            def keep(z, hook):
                kept[name] = z
                return z
            return keep
        logits = model.run_with_hooks(clean_tokens if at_clean else corrupted_tokens, fwd_hooks=[(n, make(n)) for n in names])
        grads = torch.autograd.grad(metric(logits), [kept[n] for n in names])
    reduce = (lambda x: x.mean(dim=(0, 3))) if mean else (lambda x: x.sum(dim=(0, 3)))
    return torch.stack([sign * reduce(g * (clean[n] - corrupted[n])) for n, g in zip(names, grads)])


def attribution_left_in_eval_mode(model, clean_tokens, corrupted_tokens, metric):
    return _attribution(model, clean_tokens, corrupted_tokens, metric)  # model.eval(), never put back


def attribution_gradients_left_on(model, clean_tokens, corrupted_tokens, metric):
    mode = model.training
    torch.set_grad_enabled(True)  # for everything after it, too
    try:
        return _attribution(model, clean_tokens, corrupted_tokens, metric)
    finally:
        model.train(mode)


def attribution_train_mode(model, clean_tokens, corrupted_tokens, metric):
    return _attribution(model, clean_tokens, corrupted_tokens, metric, eval_mode=False)


def attribution_at_clean(model, clean_tokens, corrupted_tokens, metric):
    return _attribution(model, clean_tokens, corrupted_tokens, metric, at_clean=True)


def attribution_sign_flipped(model, clean_tokens, corrupted_tokens, metric):
    return _attribution(model, clean_tokens, corrupted_tokens, metric, sign=-1.0)


def attribution_mean_over_batch(model, clean_tokens, corrupted_tokens, metric):
    return _attribution(model, clean_tokens, corrupted_tokens, metric, mean=True)


def attribution_head_before_position(model, clean_tokens, corrupted_tokens, metric):
    return _attribution(model, clean_tokens, corrupted_tokens, metric).transpose(1, 2)


def attribution_retain_grad(model, clean_tokens, corrupted_tokens, metric):
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError("clean and corrupted must have the same shape")
    mode = model.training
    model.eval()
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    with torch.enable_grad():
        kept = {}

        def make(name):
            def keep(z, hook):
                z.retain_grad()
                kept[name] = z
                return z
            return keep
        metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(n, make(n)) for n in names])).backward()
    model.train(mode)
    return torch.stack([(kept[n].grad * (clean[n] - kept[n].detach())).sum(dim=(0, 3)) for n in names])


def attribution_float64_einsum(model, clean_tokens, corrupted_tokens, metric):
    ref.check_same_shape(clean_tokens, corrupted_tokens)
    was = model.training
    model.train(False)
    try:
        names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
        with torch.no_grad():
            _, clean = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
        with torch.enable_grad():
            kept = {}
            hooks = [(n, lambda z, hook, n=n: kept.setdefault(n, z)) for n in names]
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=hooks)
            grads = torch.autograd.grad(metric(logits), [kept[n] for n in names])
        return torch.stack([torch.einsum("bphd,bphd->ph", g.double(), (clean[n] - kept[n].detach()).double())
                            for n, g in zip(names, grads)])
    finally:
        model.train(was)


# 6.7 -----------------------------------------------------------------------------------------
def _circuit(model, tokens, reference_tokens, nodes, zero=False, leak=False, invert=False, one_mean=False):
    kept = {(l, h, p) for l, h, p in nodes}
    source = tokens if leak else reference_tokens
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
    hooks = []
    for layer, name in enumerate(names):
        mean = cache[name].mean(dim=(0, 1) if one_mean else 0)

        def hook(z, hook, layer=layer, mean=mean):
            z = z.clone()
            for p in range(z.shape[1]):
                for h in range(z.shape[2]):
                    if ((layer, h, p) in kept) == invert:
                        z[:, p, h] = 0.0 if zero else (mean[h] if one_mean else mean[p, h])
            return z
        hooks.append((name, hook))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


def circuit_zero_ablation(model, tokens, reference_tokens, nodes):
    return _circuit(model, tokens, reference_tokens, nodes, zero=True)


def circuit_mean_over_ioi(model, tokens, reference_tokens, nodes):
    return _circuit(model, tokens, reference_tokens, nodes, leak=True)


def circuit_ablated_instead(model, tokens, reference_tokens, nodes):
    return _circuit(model, tokens, reference_tokens, nodes, invert=True)


def circuit_one_mean(model, tokens, reference_tokens, nodes):
    return _circuit(model, tokens, reference_tokens, nodes, one_mean=True)


def circuit_loops(model, tokens, reference_tokens, nodes):
    return _circuit(model, tokens, reference_tokens, nodes)


def circuit_float_masks(model, tokens, reference_tokens, nodes):
    keep = torch.zeros(model.cfg.n_layers, tokens.shape[1], model.cfg.n_heads)
    for layer, head, position in nodes:
        keep[layer, position, head] = 1.0
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(reference_tokens, names_filter=lambda n: n in names)
    means = [cache[n].mean(0) for n in names]  # [pos, head, d_head] each
    hooks = [(n, lambda z, hook, l=l: keep[l][None, :, :, None] * z + (1 - keep[l][None, :, :, None]) * means[l][None])
             for l, n in enumerate(names)]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


# 6.8 -----------------------------------------------------------------------------------------
# Template 1: S2 at position 14, the last token at 18.
def circuit_only_l3h1():
    return [(3, 1, 18)]


def circuit_every_head_at_two_positions():
    return [(layer, head, position) for layer in (0, 3) for head in range(8) for position in (14, 18)]


def circuit_with_dead_weight():
    return [(0, 3, 14), (0, 6, 14), (3, 1, 18), (1, 5, 3)]


def circuit_five_nodes():
    return [(0, 3, 14), (0, 6, 14), (0, 7, 18), (3, 1, 18), (2, 0, 18)]


def circuit_of_template_0():
    return [(0, 3, 10), (0, 6, 10), (0, 7, 14), (3, 1, 14)]


def circuit_off_by_one():
    return [(0, 3, 13), (0, 6, 13), (0, 7, 17), (3, 1, 17)]


def circuit_three_nodes():
    return [(3, 1, 18), (0, 6, 14), (0, 3, 14)]


def circuit_one_early_head_and_l3h1():
    return [(0, 3, 14), (3, 1, 18)]


def circuit_with_l2h0():
    return {(0, 3, 14), (0, 6, 14), (2, 0, 18), (3, 1, 18)}


def circuit_as_tuple_of_lists():
    return ([3, 1, 18], [0, 7, 18], [0, 6, 14], [0, 3, 14])


def circuit_numpy_integers():
    return [tuple(np.array(node)) for node in [(0, 3, 14), (0, 6, 14), (0, 7, 18), (3, 1, 18)]]


# 6.9 -----------------------------------------------------------------------------------------
def _losses(logits, tokens):
    return -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]


def repeat_loss_unshifted(logits, tokens, seq_len):
    return -logits.log_softmax(-1).gather(-1, tokens[..., None])[:, seq_len + 2:2 * seq_len + 1, 0].mean()


def repeat_loss_from_first_token(logits, tokens, seq_len):
    return _losses(logits, tokens)[:, seq_len:2 * seq_len].mean()


def repeat_loss_whole_sequence(logits, tokens, seq_len):
    return _losses(logits, tokens).mean()


def repeat_loss_summed(logits, tokens, seq_len):
    return _losses(logits, tokens)[:, seq_len + 1:2 * seq_len].sum()


def repeat_loss_cross_entropy(logits, tokens, seq_len):
    predicted = logits[:, seq_len + 1:2 * seq_len]  # [batch, seq_len - 1, d_vocab]
    return F.cross_entropy(predicted.flatten(0, 1).double(), tokens[:, seq_len + 2:2 * seq_len + 1].flatten())


def repeat_loss_loop(logits, tokens, seq_len):
    total, count = 0.0, 0
    for row in range(len(tokens)):
        for target in range(seq_len + 2, 2 * seq_len + 1):
            total = total - logits[row, target - 1].log_softmax(-1)[tokens[row, target]]
            count += 1
    return total / count


# 6.10 ----------------------------------------------------------------------------------------
def _direction_run(model, tokens, hook_name, edit):
    def hook(resid, hook):
        resid = resid.clone()
        edit(resid)
        return resid
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])


def direction_not_normalised(model, tokens, last, source_resid, direction, hook_name):
    rows = torch.arange(len(last))

    def edit(resid):
        x = resid[rows, last]
        resid[rows, last] = x + ((source_resid - x) @ direction)[:, None] * direction
    return _direction_run(model, tokens, hook_name, edit)


def direction_whole_vector(model, tokens, last, source_resid, direction, hook_name):
    rows = torch.arange(len(last))

    def edit(resid):
        resid[rows, last] = source_resid
    return _direction_run(model, tokens, hook_name, edit)


def direction_at_minus_one(model, tokens, last, source_resid, direction, hook_name):
    unit = direction / direction.norm()

    def edit(resid):
        x = resid[:, -1]
        resid[:, -1] = x + ((source_resid - x) @ unit)[:, None] * unit
    return _direction_run(model, tokens, hook_name, edit)


def direction_added_not_swapped(model, tokens, last, source_resid, direction, hook_name):
    unit, rows = direction / direction.norm(), torch.arange(len(last))

    def edit(resid):
        resid[rows, last] = resid[rows, last] + (source_resid @ unit)[:, None] * unit
    return _direction_run(model, tokens, hook_name, edit)


def direction_sign_flipped(model, tokens, last, source_resid, direction, hook_name):
    unit, rows = direction / direction.norm(), torch.arange(len(last))

    def edit(resid):
        x = resid[rows, last]
        resid[rows, last] = x + ((x - source_resid) @ unit)[:, None] * unit
    return _direction_run(model, tokens, hook_name, edit)


def direction_every_position(model, tokens, last, source_resid, direction, hook_name):
    unit = direction / direction.norm()

    def edit(resid):
        resid[:] = resid + ((source_resid[:, None] - resid) @ unit)[..., None] * unit
    return _direction_run(model, tokens, hook_name, edit)


def direction_detached(model, tokens, last, source_resid, direction, hook_name):
    unit, rows = (direction / direction.norm()).detach(), torch.arange(len(last))

    def edit(resid):
        x = resid[rows, last]
        resid[rows, last] = x + ((source_resid - x) @ unit)[:, None] * unit
    return _direction_run(model, tokens, hook_name, edit)


def direction_projection_matrix(model, tokens, last, source_resid, direction, hook_name):
    unit = F.normalize(direction, dim=0)
    projector = torch.outer(unit, unit)  # [d_model, d_model]

    def hook(resid, hook):
        patched = resid.clone()
        for row, position in enumerate(last.tolist()):
            x = resid[row, position]
            patched[row, position] = x - projector @ x + projector @ source_resid[row]
        return patched
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])


def direction_mask_and_einsum(model, tokens, last, source_resid, direction, hook_name):
    unit = direction / torch.linalg.vector_norm(direction)
    at_last = F.one_hot(last, tokens.shape[1]).to(unit.dtype)  # [batch, pos]

    def hook(resid, hook):
        coefficient = torch.einsum("bd,d->b", source_resid, unit)[:, None] - torch.einsum("bpd,d->bp", resid, unit)
        return resid + (at_last * coefficient)[..., None] * unit
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])


MISTAKES = {
    "6.1": [(metric_unnormalised, "raw mean logit difference"), (metric_sign_flipped, "clean and corrupted are swapped"),
            (metric_at_minus_one, "not at -1"), (metric_mean_of_ratios, "ratio of means"),
            (metric_with_item, "keep it differentiable")],
    "6.2": [(resid_post_instead, "not hook_resid_post"), (resid_late_binding, "sees the loop variable's final value"),
            (resid_patched_with_itself, "patched the base run with its own activations"),
            (resid_swapped, "base and source are swapped"), (resid_no_length_check, "raise a ValueError")],
    "6.3": [(heads_whole_layer, "not every head of the layer"),
            (heads_patched_with_itself, "patched the base run with its own activations"),
            (heads_swapped, "base and source are swapped"), (heads_head_before_position, "the layout of transformer_lens"),
            (heads_ignores_chunk_size, "chunks of chunk_size"), (heads_no_length_check, "raise a ValueError")],
    "6.4": [(ablate_zero_always, "that is zero ablation"), (ablate_mean_over_ioi, "a mean over the IOI prompts themselves"),
            (ablate_resample_as_mean, "each prompt's own reference value"),
            (ablate_mean_over_positions, "one value per position"), (ablate_mean_pads_or_cuts, "mean ablation from references of another length"),
            (ablate_no_shape_check, "resample ablation from a reference batch of another size")],
    "6.5": [(path_unfrozen, "freeze every other head"), (path_receiver_frozen, "the receiver must not be frozen"),
            (path_swapped, "base and source are swapped"), (path_sender_last_position_only, "wherever it sits"),
            (path_every_receiver_head, "only the receiver_heads")],
    "6.6": [(attribution_train_mode, "train mode"), (attribution_at_clean, "gradient on the corrupted run"),
            (attribution_sign_flipped, "signs are flipped"), (attribution_mean_over_batch, "do not average"),
            (attribution_left_in_eval_mode, "left the model in eval mode"),
            (attribution_gradients_left_on, "left gradients switched on"),
            (attribution_head_before_position, "the layout of Exercise 6.3")],
    "6.7": [(circuit_zero_ablation, "not zero-ablate them"), (circuit_mean_over_ioi, "a mean over the IOI prompts themselves"),
            (circuit_ablated_instead, "you ablated the circuit's nodes"), (circuit_one_mean, "one value per position")],
    "6.8": [(circuit_only_l3h1, "a node that carries the behaviour is missing"),
            (circuit_one_early_head_and_l3h1, "a node that carries the behaviour is missing"),
            (circuit_of_template_0, "template 0's positions"), (circuit_off_by_one, "off by one"),
            (circuit_with_dead_weight, "node (1, 5, 3) adds almost nothing"),
            (circuit_five_nodes, "keep at most"),
            (circuit_every_head_at_two_positions, "keep at most")],
    "6.10": [(direction_not_normalised, "normalise the direction"), (direction_whole_vector, "not the whole residual"),
             (direction_at_minus_one, "own last position"), (direction_added_not_swapped, "not the source's component alone"),
             (direction_sign_flipped, "not (base - source)"), (direction_every_position, "not every position"),
             (direction_detached, "differentiabl")],
    "6.9": [(repeat_loss_unshifted, "shift by one"), (repeat_loss_from_first_token, "its first token cannot be predicted"),
            (repeat_loss_whole_sequence, "only the second copy"), (repeat_loss_summed, "not the sum")],
}

ALTERNATIVES = {
    "6.1": [metric_loop_float64, metric_as_object],
    "6.2": [resid_where_hook, resid_batched_positions],
    "6.3": [heads_loop, heads_head_major_batches],
    "6.4": [ablate_head_by_head, ablate_with_einsum_masks],
    "6.5": [path_in_place, path_double_precision_metric],
    "6.6": [attribution_retain_grad, attribution_float64_einsum],
    "6.7": [circuit_loops, circuit_float_masks],
    "6.8": [circuit_with_l2h0, circuit_three_nodes, circuit_numpy_integers, circuit_as_tuple_of_lists],
    "6.9": [repeat_loss_cross_entropy, repeat_loss_loop],
    "6.10": [direction_projection_matrix, direction_mask_and_einsum],
}
