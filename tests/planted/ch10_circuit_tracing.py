"""Realistic mistakes for Chapter 10, each with the hint its check must give, and correct answers
written differently from the reference, which must pass."""

import torch

from utils.organism.transcoders import input_hook, output_hook
from utils.references import ch10_circuit_tracing as ref


# 10.1 ----------------------------------------------------------------------------------------
def metrics_input_variance(transcoder, x, y):
    with torch.no_grad():
        features = transcoder.encode(x)
        error = (transcoder.decode(features) - y).pow(2).sum()
        return {"explained_variance": 1 - (error / (x - x.mean(0)).pow(2).sum()).item(),
                "l0": (features > 0).float().sum(-1).mean().item(),
                "dead_fraction": ((features > 0).sum(0) == 0).float().mean().item()}


def metrics_uncentred_variance(transcoder, x, y):
    with torch.no_grad():
        features = transcoder.encode(x)
        error = (transcoder.decode(features) - y).pow(2).sum()
        return {"explained_variance": 1 - (error / y.pow(2).sum()).item(),
                "l0": (features > 0).float().sum(-1).mean().item(),
                "dead_fraction": ((features > 0).sum(0) == 0).float().mean().item()}


def metrics_unbiased_variance(transcoder, x, y):
    with torch.no_grad():
        features = transcoder.encode(x)
        error = (transcoder.decode(features) - y).pow(2).sum(-1).mean()
        return {"explained_variance": 1 - (error / torch.var(y, 0).sum()).item(),
                "l0": (features > 0).float().sum(-1).mean().item(),
                "dead_fraction": ((features > 0).sum(0) == 0).float().mean().item()}


def metrics_l0_before_topk(transcoder, x, y):
    result = ref.transcoder_metrics(transcoder, x, y)
    with torch.no_grad():
        result["l0"] = (transcoder.pre_activation(x) > 0).float().sum(-1).mean().item()
    return result


def metrics_alive_fraction(transcoder, x, y):
    result = ref.transcoder_metrics(transcoder, x, y)
    result["dead_fraction"] = 1 - result["dead_fraction"]
    return result


def metrics_float64_loop(transcoder, x, y):
    with torch.no_grad():
        features = transcoder.encode(x).double()
        prediction = transcoder.decode(features.float()).double()
        y = y.double()
        residual = sum(((prediction[i] - y[i]) ** 2).sum() for i in range(len(y)))
        total = sum(((y[i] - y.mean(0)) ** 2).sum() for i in range(len(y)))
        fired = torch.zeros(features.shape[1], dtype=torch.bool)
        for row in features:
            fired |= row > 0
        return {"explained_variance": float(1 - residual / total),
                "l0": float(torch.count_nonzero(features) / len(features)),
                "dead_fraction": float((~fired).sum() / len(fired))}


def metrics_via_forward(transcoder, x, y):
    with torch.no_grad():
        prediction = transcoder(x)
        codes = transcoder.encode(x)
        mse = torch.mean((prediction - y) ** 2)
        variance = torch.mean((y - y.mean(dim=0, keepdim=True)) ** 2)
        return {"explained_variance": (1 - mse / variance).item(), "l0": (codes != 0).sum(1).float().mean().item(),
                "dead_fraction": (codes.abs().amax(0) == 0).float().mean().item()}


# 10.2 ----------------------------------------------------------------------------------------
def replacement_from_clean_cache(model, transcoders, tokens, keep, layers):
    names = [input_hook(layer) for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        hooks = [(output_hook(layer), lambda out, hook, layer=layer: torch.where(
            keep[..., None], transcoders[layer](cache[input_hook(layer)]), out)) for layer in layers]
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


def replacement_added(model, transcoders, tokens, keep, layers):
    inputs, hooks = {}, []
    for layer in layers:
        hooks.append((input_hook(layer), lambda x, hook, layer=layer: inputs.__setitem__(layer, x)))
        hooks.append((output_hook(layer), lambda out, hook, layer=layer: torch.where(
            keep[..., None], out + transcoders[layer](inputs[layer]), out)))
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


def replacement_late_binding(model, transcoders, tokens, keep, layers):
    inputs, hooks = {}, []
    for layer in layers:
        hooks.append((input_hook(layer), lambda x, hook: inputs.__setitem__(layer, x)))
        hooks.append((output_hook(layer), lambda out, hook: torch.where(keep[..., None],
                                                                        transcoders[layer](inputs[layer]), out)))
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


def replacement_every_layer(model, transcoders, tokens, keep, layers):
    return ref.replacement_loss(model, transcoders, tokens, keep, list(range(model.cfg.n_layers)))


def replacement_ignores_keep(model, transcoders, tokens, keep, layers):
    return ref.replacement_loss(model, transcoders, tokens, torch.ones_like(keep), layers)


def replacement_with_module_hooks(model, transcoders, tokens, keep, layers):
    """Hooks by the hook point's name, computing the loss by hand (every position but the last)."""
    stored = {}

    def make(layer):
        def remember(x, hook):
            stored[layer] = x.detach()

        def replace(out, hook):
            new = out.clone()
            new[keep] = transcoders[layer].decode(transcoders[layer].encode(stored[layer][keep]))
            return new
        return remember, replace

    hooks = []
    for layer in sorted(layers):
        remember, replace = make(layer)
        hooks += [(f"blocks.{layer}.mlp.hook_in", remember), (f"blocks.{layer}.hook_mlp_out", replace)]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        log_probs = logits[:, :-1].log_softmax(-1)  # [batch, pos - 1, d_vocab]
        return float(-log_probs.gather(-1, tokens[:, 1:, None]).mean())


def replacement_with_context_manager(model, transcoders, tokens, keep, layers):
    cache = {}
    hooks = []
    weight = keep[..., None].float()
    for layer in layers:
        hooks.append((input_hook(layer), lambda x, hook, layer=layer: cache.update({layer: x})))
        hooks.append((output_hook(layer), lambda out, hook, layer=layer: weight * transcoders[layer](cache[layer])
                      + (1 - weight) * out))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens, return_type="loss").item()


# 10.3 ----------------------------------------------------------------------------------------
def _forward(model, transcoders, run, embeddings, features, errors, recompute_scale=False, with_errors=True,
             recompute_attention=False):
    resid = embeddings
    mlp_inputs = []
    for layer in range(model.cfg.n_layers):
        def norm(x, scale):
            centred = x - x.mean(-1, keepdim=True)
            return centred / ((centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() if recompute_scale else scale)

        x = norm(resid, run.ln1_scales[layer])
        values = torch.einsum("pd,hde->phe", x, model.W_V[layer]) + model.b_V[layer]
        pattern = run.patterns[layer]
        if recompute_attention:
            queries = torch.einsum("pd,hde->phe", x, model.W_Q[layer]) + model.b_Q[layer]
            keys = torch.einsum("pd,hde->phe", x, model.W_K[layer]) + model.b_K[layer]
            scores = torch.einsum("qhe,khe->hqk", queries, keys) / model.cfg.d_head ** 0.5
            mask = torch.ones(len(x), len(x), dtype=torch.bool).tril()
            pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        resid = resid + torch.einsum("qhe,hed->qd", torch.einsum("hqk,khe->qhe", pattern, values),
                                     model.W_O[layer]) + model.b_O[layer]
        mlp_inputs.append(norm(resid, run.ln2_scales[layer]))
        resid = resid + transcoders[layer].decode(features[layer]) + (errors[layer] if with_errors else 0)
    return norm(resid, run.final_scale) @ model.W_U + model.b_U, torch.stack(mlp_inputs)


def local_recomputed_scale(model, transcoders, run, embeddings, features, errors):
    return _forward(model, transcoders, run, embeddings, features, errors, recompute_scale=True)


def local_recomputed_attention(model, transcoders, run, embeddings, features, errors):
    return _forward(model, transcoders, run, embeddings, features, errors, recompute_attention=True)


def local_without_errors(model, transcoders, run, embeddings, features, errors):
    return _forward(model, transcoders, run, embeddings, features, errors, with_errors=False)


def local_with_head_loop(model, transcoders, run, embeddings, features, errors):
    """Head by head, with the OV matrix of each head."""
    resid = embeddings
    mlp_inputs = []
    for layer in range(model.cfg.n_layers):
        x = (resid - resid.mean(-1, keepdim=True)) / run.ln1_scales[layer]
        out = model.b_O[layer].expand_as(resid).clone()
        for head in range(model.cfg.n_heads):
            values = x @ model.W_V[layer, head] + model.b_V[layer, head]  # [pos, d_head]
            out = out + run.patterns[layer, head] @ values @ model.W_O[layer, head]
        resid = resid + out
        mlp_inputs.append((resid - resid.mean(-1, keepdim=True)) / run.ln2_scales[layer])
        transcoder = transcoders[layer]
        resid = resid + features[layer] @ transcoder.W_dec + transcoder.b_dec + errors[layer]
    centred = resid - resid.mean(-1, keepdim=True)
    return (centred / run.final_scale) @ model.W_U + model.b_U, torch.stack(mlp_inputs)


def local_with_centring_matrix(model, transcoders, run, embeddings, features, errors):
    """LayerNorm's centring as a matrix, in float64."""
    d = embeddings.shape[-1]
    centring = (torch.eye(d) - torch.full((d, d), 1 / d)).double().to(embeddings.device)
    resid = embeddings.double()
    mlp_inputs = []
    for layer in range(model.cfg.n_layers):
        x = resid @ centring / run.ln1_scales[layer].double()
        values = torch.einsum("pd,hde->phe", x, model.W_V[layer].double()) + model.b_V[layer].double()
        mixed = torch.einsum("hqk,khe->qhe", run.patterns[layer].double(), values)
        resid = resid + torch.einsum("qhe,hed->qd", mixed, model.W_O[layer].double()) + model.b_O[layer].double()
        mlp_inputs.append(resid @ centring / run.ln2_scales[layer].double())
        resid = resid + transcoders[layer].decode(features[layer]).double() + errors[layer].double()
    logits = (resid @ centring / run.final_scale.double()) @ model.W_U.double() + model.b_U.double()
    return logits.float(), torch.stack(mlp_inputs).float()


# 10.4 ----------------------------------------------------------------------------------------
def effects_gradient_only(model, transcoders, run, target):
    sources = [run.embeddings.clone().requires_grad_(True), run.features.clone().requires_grad_(True),
               run.errors.clone().requires_grad_(True)]
    with torch.enable_grad():
        grads = torch.autograd.grad(target(*ref.local_replacement(model, transcoders, run, *sources)), sources)
    return grads[0].sum(-1), grads[1], grads[2].sum(-1)


def effects_absolute(model, transcoders, run, target):
    return tuple(effect.abs() for effect in ref.direct_effects(model, transcoders, run, target))


def effects_with_backward(model, transcoders, run, target):
    """.backward() and .grad instead of autograd.grad."""
    embeddings = run.embeddings.detach().clone().requires_grad_()
    features = run.features.detach().clone().requires_grad_()
    errors = run.errors.detach().clone().requires_grad_()
    with torch.enable_grad():
        logits, mlp_inputs = ref.local_replacement(model, transcoders, run, embeddings, features, errors)
        target(logits, mlp_inputs).backward()
    return (torch.einsum("pd,pd->p", embeddings.grad, embeddings.detach()), features.grad * features.detach(),
            torch.einsum("lpd,lpd->lp", errors.grad, errors.detach()))


def effects_by_finite_differences(model, transcoders, run, target):
    """The local replacement is affine: value(sources) - value(sources with one source zeroed) is exact."""
    with torch.no_grad():
        base = target(*ref.local_replacement(model, transcoders, run, run.embeddings, run.features, run.errors))
        embedding_effects = torch.zeros(len(run.embeddings))
        for position in range(len(run.embeddings)):
            embeddings = run.embeddings.clone()
            embeddings[position] = 0
            embedding_effects[position] = base - target(*ref.local_replacement(model, transcoders, run, embeddings,
                                                                               run.features, run.errors))
        error_effects = torch.zeros(run.errors.shape[:2])
        for layer in range(run.errors.shape[0]):
            for position in range(run.errors.shape[1]):
                errors = run.errors.clone()
                errors[layer, position] = 0
                error_effects[layer, position] = base - target(*ref.local_replacement(
                    model, transcoders, run, run.embeddings, run.features, errors))
        feature_effects = torch.zeros_like(run.features)
        for layer, position, feature in run.features.nonzero().tolist():
            features = run.features.clone()
            features[layer, position, feature] = 0
            feature_effects[layer, position, feature] = base - target(*ref.local_replacement(
                model, transcoders, run, run.embeddings, features, run.errors))
    return embedding_effects, feature_effects, error_effects


# 10.5 ----------------------------------------------------------------------------------------
def influence_signed(adjacency, target):
    weights = adjacency / adjacency.sum(1, keepdim=True).where(adjacency.sum(1, keepdim=True) != 0, torch.ones(1))
    eye = torch.eye(len(weights))
    return (torch.linalg.inv(eye - weights) - eye)[target]


def influence_unnormalised(adjacency, target):
    eye = torch.eye(len(adjacency))
    return (torch.linalg.inv(eye - adjacency.abs()) - eye)[target]


def influence_direct_only(adjacency, target):
    weights = adjacency.abs()
    return (weights / weights.sum(1, keepdim=True).clamp_min(1e-12))[target]


def influence_with_identity(adjacency, target):
    weights = adjacency.abs()
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    return torch.linalg.inv(torch.eye(len(weights)) - weights)[target]


def influence_power_series(adjacency, target):
    weights = adjacency.abs().double()
    totals = weights.sum(1, keepdim=True)
    weights = torch.where(totals > 0, weights / totals.clamp_min(1e-300), weights)
    row = torch.zeros(len(weights), dtype=torch.float64)
    row[target] = 1.0
    influence = torch.zeros_like(row)
    while row.abs().sum() > 0:  # the graph is acyclic, so A is nilpotent and the series ends
        row = row @ weights
        influence += row
    return influence.float()


def influence_solve(adjacency, target):
    weights = adjacency.abs()
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    n = len(weights)
    # x (I - A) = e_target  =>  x = e_target (I - A)^-1; the influence is x - e_target
    unit = torch.zeros(1, n)
    unit[0, target] = 1
    x = torch.linalg.solve(torch.eye(n) - weights, unit, left=False)[0]
    return x - unit[0]


# 10.6 ----------------------------------------------------------------------------------------
def kept_one_short(influence, share=0.8):
    order = influence.argsort(descending=True)
    cumulative = influence[order].cumsum(0) / influence.sum()
    return order[:int((cumulative < share).sum())].sort().values


def kept_least_influential(influence, share=0.8):
    order = influence.argsort()
    cumulative = influence[order.flip(0)].cumsum(0) / influence.sum()
    return order[:int((cumulative < share).sum()) + 1].sort().values


def kept_in_influence_order(influence, share=0.8):
    order = influence.argsort(descending=True)
    cumulative = influence[order].cumsum(0) / influence.sum()
    return order[:int((cumulative < share).sum()) + 1]


def kept_share_of_nodes(influence, share=0.8):
    order = influence.argsort(descending=True)
    return order[:max(1, int(torch.tensor(share * len(influence)).ceil()))].sort().values


def kept_loop(influence, share=0.8):
    total, kept = float(influence.sum()), []
    running = 0.0
    for index in sorted(range(len(influence)), key=lambda i: -float(influence[i])):
        kept.append(index)
        running += float(influence[index])
        if running >= share * total - 1e-12:
            break
    return torch.tensor(sorted(kept), dtype=torch.long)


def kept_searchsorted(influence, share=0.8):
    values, order = influence.double().sort(descending=True)
    cumulative = values.cumsum(0) / values.sum()
    n = int(torch.searchsorted(cumulative, torch.tensor([share], dtype=torch.float64))[0]) + 1
    return order[:n].sort().values


# 10.7 ----------------------------------------------------------------------------------------
def _scores(model, transcoders, graph, kept, target, labels, value, *, invert=False, raw=False, zero_errors=False,
            every_position=False, over_kept_nodes=False, chance_over_all=False):
    run = graph.run
    last = len(graph.str_tokens) - 1
    mask = torch.zeros_like(run.features, dtype=torch.bool)
    errors = torch.zeros(run.errors.shape[:2], dtype=torch.bool)
    chosen = []
    for index in kept.tolist():
        kind, layer, position, feature = graph.nodes[index]
        if kind == "feature":
            mask[layer, position, feature] = True
            if every_position or position == last:
                chosen.append((layer, feature))
        if kind == "error":
            errors[layer, position] = True
    features = torch.where(mask, 0.0, run.features) if invert else torch.where(mask, run.features, 0.0)
    error_terms = torch.where(errors[..., None], run.errors, 0.0) if zero_errors else run.errors
    with torch.no_grad():
        pruned = target(*ref.local_replacement(model, transcoders, run, run.embeddings, features, error_terms)).item()
    full = target(run.logits, None).item()
    if chance_over_all:
        active = [(layer, feature) for layer in range(run.features.shape[0]) for feature in range(run.features.shape[2])]
    else:
        active = run.features[:, last].nonzero().tolist()
    count = lambda pairs: sum(labels.labelled(layer, feature, value) for layer, feature in pairs)
    return {"faithfulness": pruned if raw else pruned / full,
            "labelled share": count(chosen) / max(len(kept) if over_kept_nodes else len(chosen), 1),
            "chance share": count(active) / max(len(active), 1)}


def scores_inverted(model, transcoders, graph, kept, target, labels, value):
    return _scores(model, transcoders, graph, kept, target, labels, value, invert=True)


def scores_unnormalised(model, transcoders, graph, kept, target, labels, value):
    return _scores(model, transcoders, graph, kept, target, labels, value, raw=True)


def scores_zeroed_errors(model, transcoders, graph, kept, target, labels, value):
    return _scores(model, transcoders, graph, kept, target, labels, value, zero_errors=True)


def scores_every_position(model, transcoders, graph, kept, target, labels, value):
    return _scores(model, transcoders, graph, kept, target, labels, value, every_position=True)


def scores_over_kept_nodes(model, transcoders, graph, kept, target, labels, value):
    return _scores(model, transcoders, graph, kept, target, labels, value, over_kept_nodes=True)


def scores_chance_over_all(model, transcoders, graph, kept, target, labels, value):
    return _scores(model, transcoders, graph, kept, target, labels, value, chance_over_all=True)


def scores_from_edges(model, transcoders, graph, kept, target, labels, value):
    """Features are given numbers in the local replacement: dropping some removes exactly their direct edges."""
    full = target(graph.run.logits, None).item()
    kept_set = set(kept.tolist())
    nodes = graph.nodes
    last = len(graph.str_tokens) - 1
    dropped = sum(graph.adjacency[-1, i].item() for i, node in enumerate(nodes) if node[0] == "feature" and i not in kept_set)
    kept_last = [nodes[i] for i in sorted(kept_set) if nodes[i][0] == "feature" and nodes[i][2] == last]
    active_last = [node for node in nodes if node[0] == "feature" and node[2] == last]
    share = lambda group: (sum(labels.labelled(n[1], n[3], value) for n in group) / len(group)) if group else 0.0
    return {"faithfulness": (full - dropped) / full, "labelled share": share(kept_last), "chance share": share(active_last)}


def scores_with_float_mask(model, transcoders, graph, kept, target, labels, value):
    run = graph.run
    n_pos = run.features.shape[1]
    keep = torch.zeros(run.features.shape)
    labelled_kept = kept_last = 0
    for index in kept:
        kind, layer, position, feature = graph.nodes[int(index)]
        if kind != "feature":
            continue
        keep[layer, position, feature] = 1.0
        if position == n_pos - 1:
            kept_last += 1
            labelled_kept += labels.labelled(layer, feature, value)
    with torch.no_grad():
        logits, _ = ref.local_replacement(model, transcoders, run, run.embeddings, run.features * keep, run.errors)
    active = (run.features[:, -1] > 0).nonzero()
    labelled_active = sum(labels.labelled(int(layer), int(feature), value) for layer, feature in active)
    return {"faithfulness": float(target(logits, None) / target(run.logits, None)),
            "labelled share": labelled_kept / kept_last if kept_last else 0.0,
            "chance share": labelled_active / len(active)}


# 10.8 ----------------------------------------------------------------------------------------
def _steer(model, transcoders, graph, node, target, scale, *, new_value=False, flipped=False, no_activation=False,
           every_position=False, overwrite=False, absolute=False, local=False):
    _, layer, position, feature = graph.nodes[node]
    run = graph.run
    activation = 1.0 if no_activation else run.features[layer, position, feature]
    delta = (scale - 1) * activation * transcoders[layer].W_dec[feature]

    def hook(out, hook):
        out = out.clone()
        if overwrite:
            out[0, position] = delta
        elif every_position:
            out[0] += delta
        else:
            out[0, position] += delta
        return out

    with torch.no_grad():
        if local:
            features = run.features.clone()
            features[layer, position, feature] *= scale
            value = target(*ref.local_replacement(model, transcoders, run, run.embeddings, features, run.errors))
        else:
            value = target(model.run_with_hooks(run.tokens[None], fwd_hooks=[(output_hook(layer), hook)])[0], None)
    edge = graph.adjacency[-1, node].item()
    predicted = scale * edge if new_value else (1 - scale) * edge if flipped else (scale - 1) * edge
    measured = value.item() if absolute else (value - target(run.logits, None)).item()
    return predicted, measured


def steer_new_value(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, new_value=True)


def steer_flipped(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, flipped=True)


def steer_without_activation(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, no_activation=True)


def steer_every_position(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, every_position=True)


def steer_overwrite(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, overwrite=True)


def steer_absolute(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, absolute=True)


def steer_in_local_replacement(model, transcoders, graph, node, target, scale=0.0):
    return _steer(model, transcoders, graph, node, target, scale, local=True)


def steer_at_resid_post(model, transcoders, graph, node, target, scale=0.0):
    """The MLP output joins the stream just before resid_post: adding there is the same change."""
    _, layer, position, feature = graph.nodes[node]
    run = graph.run
    change = (scale - 1) * run.features[layer, position, feature] * transcoders[layer].W_dec[feature]
    offset = torch.zeros(1, len(run.tokens), change.shape[0])
    offset[0, position] = change
    with torch.no_grad():
        logits = model.run_with_hooks(run.tokens[None], fwd_hooks=[(f"blocks.{layer}.hook_resid_post",
                                                                    lambda resid, hook: resid + offset)])[0]
    return (scale - 1) * float(graph.adjacency[-1, node]), float(target(logits, None) - target(run.logits, None))


def steer_by_reconstruction(model, transcoders, graph, node, target, scale=0.0):
    """Rebuild the MLP output from the transcoder with the feature scaled, plus the run's error term."""
    _, layer, position, feature = graph.nodes[node]
    run = graph.run
    features = run.features[layer].clone()
    features[position, feature] = features[position, feature] * scale
    rebuilt = transcoders[layer].decode(features) + run.errors[layer]  # [pos, d_model]

    def replace(out, hook):
        return rebuilt[None].to(out.dtype)

    with torch.no_grad():
        logits = model.run_with_hooks(run.tokens[None], fwd_hooks=[(output_hook(layer), replace)])[0]
    predicted = graph.adjacency[-1, node].item() * (scale - 1)
    return predicted, (target(logits, None) - target(run.logits, None)).item()


MISTAKES = {
    "10.1": [(metrics_input_variance, "the variance that counts is the target's"),
             (metrics_uncentred_variance, "around its mean over tokens"),
             (metrics_unbiased_variance, "divides by n - 1"),
             (metrics_l0_before_topk, "after TopK and ReLU"),
             (metrics_alive_fraction, "never fire, not of those that do")],
    "10.2": [(replacement_from_clean_cache, "the replacement's own stream"),
             (replacement_added, "don't add the prediction"),
             (replacement_late_binding, "bind it as a default argument"),
             (replacement_every_layer, "only the MLPs of the layers in `layers`"),
             (replacement_ignores_keep, "only where keep is True")],
    "10.3": [(local_recomputed_scale, "freeze the LayerNorm scales"),
             (local_recomputed_attention, "freeze the attention patterns"),
             (local_without_errors, "add the error terms")],
    "10.4": [(effects_gradient_only, "gradient times value"),
             (effects_absolute, "keep the sign")],
    "10.5": [(influence_signed, "normalise the absolute values"),
             (influence_unnormalised, "so its incoming weights sum to 1"),
             (influence_direct_only, "paths of every length"),
             (influence_with_identity, "subtract the identity")],
    "10.6": [(kept_one_short, "the node that crosses it belongs to the set"),
             (kept_least_influential, "keep the most influential nodes"),
             (kept_in_influence_order, "sorted in ascending order"),
             (kept_share_of_nodes, "not of the number of nodes")],
    "10.7": [(scores_inverted, "turn off the features outside the kept set"),
             (scores_unnormalised, "faithfulness is a ratio"),
             (scores_zeroed_errors, "only features are turned off"),
             (scores_every_position, "count only the kept features at the last position"),
             (scores_over_kept_nodes, "not of all kept nodes"),
             (scores_chance_over_all, "not among every feature of the transcoders")],
    "10.8": [(steer_new_value, "the change, not the new value"),
             (steer_flipped, "mind the sign"),
             (steer_without_activation, "multiply W_dec[feature] by the activation"),
             (steer_every_position, "only at the feature's own position"),
             (steer_overwrite, "don't overwrite"),
             (steer_absolute, "subtract the clean run's target"),
             (steer_in_local_replacement, "measure in the real model")],
}

ALTERNATIVES = {
    "10.1": [metrics_float64_loop, metrics_via_forward],
    "10.2": [replacement_with_module_hooks, replacement_with_context_manager],
    "10.3": [local_with_head_loop, local_with_centring_matrix],
    "10.4": [effects_with_backward, effects_by_finite_differences],
    "10.5": [influence_power_series, influence_solve],
    "10.6": [kept_loop, kept_searchsorted],
    "10.7": [scores_from_edges, scores_with_float_mask],
    "10.8": [steer_at_resid_post, steer_by_reconstruction],
}
