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
}

ALTERNATIVES = {
    "10.1": [metrics_float64_loop, metrics_via_forward],
    "10.2": [replacement_with_module_hooks, replacement_with_context_manager],
    "10.3": [local_with_head_loop, local_with_centring_matrix],
    "10.4": [effects_with_backward, effects_by_finite_differences],
    "10.5": [influence_power_series, influence_solve],
    "10.6": [kept_loop, kept_searchsorted],
}
