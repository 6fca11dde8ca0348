"""Realistic mistakes for Chapter 03, each with the hint its check must give, and correct answers
written differently from the reference, which must pass."""

import torch

from utils.references import ch02_probing as ch02
from utils.references import ch03_logit_lens as ref


# 3.1 -----------------------------------------------------------------------------------------
def shares_without_scale(stack, final_scale, directions):
    centred = stack - stack.mean(-1, keepdim=True)
    return torch.einsum("cbd,bd->cb", centred, directions)


def shares_with_own_layernorm(stack, final_scale, directions):
    centred = stack - stack.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    return torch.einsum("cbd,bd->cb", normed, directions)


def shares_not_centred(stack, final_scale, directions):
    return (stack / final_scale[:, None] * directions).sum(-1)


def shares_broadcast_loop(stack, final_scale, directions):
    rows = []
    for part in stack:  # [batch, d_model]
        centred = part - part.mean(dim=1, keepdim=True)
        rows.append((centred * directions).sum(dim=1) / final_scale)
    return torch.stack(rows)


def shares_float64_matmul(stack, final_scale, directions):
    stack, directions = stack.double(), directions.double()
    centred = stack - stack.mean(-1, keepdim=True)
    return (centred @ directions.T).diagonal(dim1=-2, dim2=-1) / final_scale.double()


# 3.2 -----------------------------------------------------------------------------------------
def _cache(model, tokens):
    names = ch02.residual_hook_names(model.cfg.n_layers)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return names, cache


def lens_at_minus_one(model, tokens, last):
    names, cache = _cache(model, tokens)
    resid = torch.stack([cache[name][:, -1] for name in names])
    return model.ln_final(resid) @ model.W_U + model.b_U


def lens_without_layernorm(model, tokens, last):
    names, cache = _cache(model, tokens)
    rows = torch.arange(len(last))
    resid = torch.stack([cache[name][rows, last] for name in names])
    return resid @ model.W_U + model.b_U


def lens_with_final_scale(model, tokens, last):
    names, cache = _cache(model, tokens)
    _, full = model.run_with_cache(tokens, names_filter="ln_final.hook_scale")
    rows = torch.arange(len(last))
    resid = torch.stack([cache[name][rows, last] for name in names])
    scale = full["ln_final.hook_scale"][rows, last]  # [batch, 1]
    return (resid - resid.mean(-1, keepdim=True)) / scale @ model.W_U + model.b_U


def lens_without_bias(model, tokens, last):
    names, cache = _cache(model, tokens)
    rows = torch.arange(len(last))
    return model.ln_final(torch.stack([cache[name][rows, last] for name in names])) @ model.W_U


def lens_by_hand_layernorm(model, tokens, last):
    names, cache = _cache(model, tokens)
    out = []
    for name in names:
        resid = cache[name][torch.arange(len(last)), last]  # [batch, d_model]
        centred = resid - resid.mean(-1, keepdim=True)
        normed = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
        out.append(normed @ model.W_U + model.b_U)
    return torch.stack(out)


def lens_with_gather_and_unembed(model, tokens, last):
    names, cache = _cache(model, tokens)
    index = last[:, None, None].expand(-1, 1, model.cfg.d_model)
    resid = torch.stack([cache[name].gather(1, index)[:, 0] for name in names])
    return model.unembed(model.ln_final(resid))


# 3.3 -----------------------------------------------------------------------------------------
def _train(model, resid, final_logits, steps, lr, batch_size, seed, loss_fn, zero_grad=True):
    translator = ref.Translator(resid.shape[-1])
    optimizer = torch.optim.Adam(translator.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(len(resid), (batch_size,), generator=generator)
            loss = loss_fn(final_logits[rows], ref.lens_logits(model, translator(resid[rows])))
            if zero_grad:
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return translator


def translator_reverse_kl(model, resid, final_logits, steps=100, lr=1e-2, batch_size=128, seed=0):
    return _train(model, resid, final_logits, steps, lr, batch_size, seed,
                  lambda final, lens: ref.kl_from_final(lens, final).mean())


def translator_without_zero_grad(model, resid, final_logits, steps=100, lr=1e-2, batch_size=128, seed=0):
    return _train(model, resid, final_logits, steps, lr, batch_size, seed,
                  lambda final, lens: ref.kl_from_final(final, lens).mean(), zero_grad=False)


def translator_never_trained(model, resid, final_logits, steps=100, lr=1e-2, batch_size=128, seed=0):
    return ref.Translator(resid.shape[-1])


def translator_shuffled_epochs(model, resid, final_logits, steps=100, lr=1e-2, batch_size=128, seed=0):
    """Minibatches drawn without replacement (a fresh permutation per pass over the rows)."""
    translator = ref.Translator(resid.shape[-1])
    optimizer = torch.optim.Adam(translator.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 7)
    order, at = torch.randperm(len(resid), generator=generator), 0
    with torch.enable_grad():
        for _ in range(steps):
            if at + batch_size > len(order):
                order, at = torch.randperm(len(resid), generator=generator), 0
            rows = order[at:at + batch_size]
            at += batch_size
            loss = ref.kl_from_final(final_logits[rows], ref.lens_logits(model, translator(resid[rows]))).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return translator


def translator_with_kl_div(model, resid, final_logits, steps=100, lr=1e-2, batch_size=128, seed=0):
    def loss(final, lens):
        return torch.nn.functional.kl_div(lens.log_softmax(-1), final.log_softmax(-1), log_target=True,
                                          reduction="batchmean")
    return _train(model, resid, final_logits, steps, lr, batch_size, seed, loss)


def translator_cross_entropy_form(model, resid, final_logits, steps=100, lr=1e-2, batch_size=128, seed=0):
    """KL(p || q) = cross-entropy(p, q) - entropy(p); the entropy term has no gradient but is kept."""
    def loss(final, lens):
        p = final.softmax(-1)
        return (-(p * lens.log_softmax(-1)).sum(-1) + (p * final.log_softmax(-1)).sum(-1)).mean()
    return _train(model, resid, final_logits, steps, lr, batch_size, seed, loss)


# 3.4 -----------------------------------------------------------------------------------------
def _heads(model, prompts):
    tokens, last = ch02.tokenize(model, prompts.prompts)
    _, cache = model.run_with_cache(tokens)
    return tokens, last, cache


def heads_at_minus_one(model, prompts):
    tokens, last, cache = _heads(model, prompts)
    heads = cache.stack_head_results(layer=-1)[:, :, -1]
    scale = cache["ln_final.hook_scale"][:, -1, 0]
    shares = ref.residual_stack_to_logit_diff(heads, scale, ref.logit_diff_directions(model, prompts))
    return shares.reshape(model.cfg.n_layers, model.cfg.n_heads, len(prompts))


def heads_without_scale(model, prompts):
    tokens, last, cache = _heads(model, prompts)
    heads = ref.at_last(cache.stack_head_results(layer=-1), last)
    shares = ref.residual_stack_to_logit_diff(heads, torch.ones(len(prompts)), ref.logit_diff_directions(model, prompts))
    return shares.reshape(model.cfg.n_layers, model.cfg.n_heads, len(prompts))


def heads_raw_correct_logit(model, prompts):
    tokens, last, cache = _heads(model, prompts)
    heads = ref.at_last(cache.stack_head_results(layer=-1), last)
    scale = ref.at_last(cache["ln_final.hook_scale"], last)[:, 0]
    directions = model.W_U[:, ch02.answer_ids(model, prompts.correct)].T
    return ref.residual_stack_to_logit_diff(heads, scale, directions).reshape(model.cfg.n_layers, model.cfg.n_heads, -1)


def heads_wrong_minus_correct(model, prompts):
    return -ref.head_attribution(model, prompts)


def heads_then_extends_the_prompts(model, prompts):
    """Right, and then it adds a prompt to the set it was given (to reuse the list later): the chapter's
    later cells would see the extra prompt, so the check says so."""
    result = ref.head_attribution(model, prompts)
    prompts.prompts.append(prompts.prompts[0])
    prompts.correct.append(prompts.correct[0])
    return result


def heads_with_apply_ln(model, prompts):
    """The cache applies the final LN itself (its scale at every position), then each prompt's last position."""
    tokens, last, cache = _heads(model, prompts)
    heads = cache.stack_head_results(layer=-1, apply_ln=True)  # [layer * head, batch, pos, d_model]
    rows = torch.arange(len(last))
    directions = ref.logit_diff_directions(model, prompts)
    shares = (heads[:, rows, last] * directions).sum(-1)
    return shares.reshape(model.cfg.n_layers, model.cfg.n_heads, -1)


def heads_from_z_by_hand(model, prompts):
    """Each head's output from hook_z and W_O, one layer at a time."""
    tokens, last, cache = _heads(model, prompts)
    rows = torch.arange(len(last))
    scale = cache["ln_final.hook_scale"][rows, last]  # [batch, 1]
    directions = ref.logit_diff_directions(model, prompts)
    layers = []
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][rows, last]  # [batch, head, d_head]
        out = torch.einsum("bhe,hed->hbd", z, model.W_O[layer])  # [head, batch, d_model]
        out = out - out.mean(-1, keepdim=True)
        layers.append((out / scale * directions).sum(-1))
    return torch.stack(layers)


# 3.5 -----------------------------------------------------------------------------------------
def previous_swapped_axes(patterns, offset=1):
    return patterns.diagonal(offset=offset, dim1=-2, dim2=-1).mean(dim=(1, 3))


def previous_current_token(patterns, offset=1):
    return patterns.diagonal(offset=-(offset - 1), dim1=-2, dim2=-1).mean(dim=(1, 3))


def previous_over_every_row(patterns, offset=1):
    return patterns.diagonal(offset=-offset, dim1=-2, dim2=-1).sum(-1).mean(1) / patterns.shape[-1]


def previous_by_indexing(patterns, offset=1):
    destinations = torch.arange(offset, patterns.shape[-1])
    return patterns[..., destinations, destinations - offset].mean(dim=(1, 3))


def previous_by_loops(patterns, offset=1):
    n_layers, _, n_heads, n_pos, _ = patterns.shape
    scores = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for layer in range(n_layers):
        for head in range(n_heads):
            values = [patterns[layer, :, head, d, d - offset].double() for d in range(offset, n_pos)]
            scores[layer, head] = torch.stack(values).mean()
    return scores


# 3.6 -----------------------------------------------------------------------------------------
def induction_duplicate_offset(patterns, seq_len):
    destinations = torch.arange(seq_len + 1, patterns.shape[-1])
    return patterns[..., destinations, destinations - seq_len].mean(dim=(1, 3))


def induction_over_every_row(patterns, seq_len):
    """What detect_head's average over all rows does: the score caps near 0.5."""
    destinations = torch.arange(seq_len + 1, patterns.shape[-1])
    return patterns[..., destinations, destinations - seq_len + 1].sum(-1).mean(1) / patterns.shape[-1]


def induction_whole_stripe(patterns, seq_len):
    return patterns.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).mean(dim=(1, 3))


def induction_swapped_axes(patterns, seq_len):
    destinations = torch.arange(seq_len + 1, patterns.shape[-1])
    return patterns[..., destinations - seq_len + 1, destinations].mean(dim=(1, 3))


def induction_by_indexing(patterns, seq_len):
    destinations = torch.arange(seq_len + 1, 2 * seq_len + 1)
    return patterns[..., destinations, destinations - (seq_len - 1)].mean(dim=(1, 3))


def induction_by_mask(patterns, seq_len):
    n = patterns.shape[-1]
    destination, source = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    mask = (destination > seq_len) & (source == destination - seq_len + 1)  # [dest, src]
    return (patterns * mask).sum(dim=(-2, -1)).mean(1) / mask.sum()


# 3.7 -----------------------------------------------------------------------------------------
def copying_over_columns(model, embedding, token_ids, heads):
    w_ov = sum(model.W_V[l, h] @ model.W_O[l, h] for l, h in heads)
    circuit = embedding @ w_ov @ model.W_U[:, token_ids]
    return (circuit.argmax(dim=0) == torch.arange(len(token_ids))).float().mean().item()


def copying_whole_vocabulary(model, embedding, token_ids, heads):
    w_ov = sum(model.W_V[l, h] @ model.W_O[l, h] for l, h in heads)
    circuit = embedding @ w_ov @ model.W_U
    return (circuit.argmax(-1) == token_ids).float().mean().item()


def copying_first_head_only(model, embedding, token_ids, heads):
    layer, head = heads[0]
    circuit = embedding @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U[:, token_ids]
    return (circuit.argmax(-1) == torch.arange(len(token_ids))).float().mean().item()


def copying_with_factored_matrix(model, embedding, token_ids, heads):
    total = None
    for layer, head in heads:
        circuit = (embedding @ model.OV[layer, head] @ model.W_U[:, token_ids]).AB  # [n, n]
        total = circuit if total is None else total + circuit
    return float((total.argmax(-1) == torch.arange(len(token_ids))).sum()) / len(token_ids)


def copying_diagonal_is_max(model, embedding, token_ids, heads):
    w_ov = torch.stack([model.W_V[l, h] @ model.W_O[l, h] for l, h in heads]).sum(0)
    circuit = (embedding @ w_ov) @ model.W_U[:, token_ids]
    diagonal = circuit.diagonal()
    others = circuit.clone()
    others.fill_diagonal_(float("-inf"))
    return (diagonal > others.max(-1).values).double().mean()


# 3.8 -----------------------------------------------------------------------------------------
def _scores(model, source_layer, target_layer, score):
    n = model.cfg.n_heads
    qk = [model.W_Q[target_layer, j] @ model.W_K[target_layer, j].T for j in range(n)]
    ov = [model.W_V[source_layer, i] @ model.W_O[source_layer, i] for i in range(n)]
    return torch.tensor([[score(qk[j], ov[i]) for j in range(n)] for i in range(n)])


def composition_q(model, source_layer, target_layer):
    return _scores(model, source_layer, target_layer, lambda qk, ov: ((ov @ qk).norm() / (qk.norm() * ov.norm())).item())


def composition_untransposed(model, source_layer, target_layer):
    return _scores(model, source_layer, target_layer, lambda qk, ov: ((qk @ ov).norm() / (qk.norm() * ov.norm())).item())


def composition_unnormalised(model, source_layer, target_layer):
    return _scores(model, source_layer, target_layer, lambda qk, ov: (qk @ ov.T).norm().item())


def composition_target_by_source(model, source_layer, target_layer):
    return ref.k_composition_scores(model, source_layer, target_layer).T


def composition_dense(model, source_layer, target_layer):
    """Full 256 x 256 matrices and torch.linalg norms, in float64."""
    n = model.cfg.n_heads
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        ov = (model.W_V[source_layer, i] @ model.W_O[source_layer, i]).double()
        for j in range(n):
            qk = (model.W_Q[target_layer, j] @ model.W_K[target_layer, j].T).double()
            out[i, j] = torch.linalg.matrix_norm(qk @ ov.T) / (torch.linalg.matrix_norm(qk) * torch.linalg.matrix_norm(ov))
    return out


def composition_batched(model, source_layer, target_layer):
    """All pairs at once: [target, 1] x [1, source] FactoredMatrix broadcasting."""
    qk = model.QK[target_layer][:, None]  # [target, 1, d_model, d_model]
    ov = model.OV[source_layer][None]  # [1, source, d_model, d_model]
    scores = (qk @ ov.T).norm() / (qk.norm() * ov.norm())  # [target, source]
    return scores.T


# 3.9 -----------------------------------------------------------------------------------------
def _corrupted_z(model, corrupted, layer):
    tokens, _ = ch02.tokenize(model, corrupted.prompts)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_z")
    return cache[f"blocks.{layer}.attn.hook_z"]


def ablation_zero(model, prompts, corrupted, layer, head):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z
    return ch02.logit_diffs(model, prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def ablation_whole_layer(model, prompts, corrupted, layer, head):
    z_corrupted = _corrupted_z(model, corrupted, layer)
    return ch02.logit_diffs(model, prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", lambda z, hook: z_corrupted)])


def ablation_hook_does_nothing(model, prompts, corrupted, layer, head):
    z_corrupted = _corrupted_z(model, corrupted, layer)

    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = z_corrupted[:, :, head]  # changes a copy and returns nothing
    return ch02.logit_diffs(model, prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def ablation_then_sorts_the_prompts(model, prompts, corrupted, layer, head):
    """Right, and then it sorts the prompt lists it was given in place: the chapter's later cells would see
    them reordered, so the check says so."""
    result = ref.ablated_logit_diffs(model, prompts, corrupted, layer, head)
    prompts.prompts.sort()
    corrupted.prompts.reverse()
    return result


def ablation_new_tensor(model, prompts, corrupted, layer, head):
    z_corrupted = _corrupted_z(model, corrupted, layer)

    def hook(z, hook):
        keep = torch.ones(z.shape[2], dtype=z.dtype, device=z.device)
        keep[head] = 0
        return z * keep[:, None] + z_corrupted * (1 - keep[:, None])
    return ch02.logit_diffs(model, prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def ablation_with_hooks_context(model, prompts, corrupted, layer, head):
    """Both runs by hand, with model.hooks() and each prompt's last position."""
    name = f"blocks.{layer}.attn.hook_z"
    z_corrupted = _corrupted_z(model, corrupted, layer)

    def hook(z, hook):
        z[:, :, head] = z_corrupted[:, :, head]
        return z

    tokens, last = ch02.tokenize(model, prompts.prompts)
    with model.hooks(fwd_hooks=[(name, hook)]):
        logits = model(tokens)
    rows = torch.arange(len(last))
    final = logits[rows, last]
    correct, wrong = ch02.answer_ids(model, prompts.correct), ch02.answer_ids(model, prompts.wrong)
    return final[rows, correct] - final[rows, wrong]


MISTAKES = {
    "3.1": [(shares_without_scale, "divide by the final LayerNorm's scale"),
            (shares_with_own_layernorm, "same, final scale"),
            (shares_not_centred, "centre each vector first")],
    "3.2": [(lens_at_minus_one, "right-padded"),
            (lens_without_layernorm, "apply the final LayerNorm"),
            (lens_with_final_scale, "its own LayerNorm scale"),
            (lens_without_bias, "unembedding bias")],
    "3.3": [(translator_reverse_kl, "KL(lens || final)"),
            (translator_without_zero_grad, "zero_grad"),
            (translator_never_trained, "did not learn")],
    "3.4": [(heads_then_extends_the_prompts, "changed its input argument"),
            (heads_at_minus_one, "right-padded"),
            (heads_without_scale, "final LayerNorm's scale"),
            (heads_raw_correct_logit, "raw logit"),
            (heads_wrong_minus_correct, "sign is flipped")],
    "3.5": [(previous_swapped_axes, "(destination, source)"),
            (previous_current_token, "current token"),
            (previous_over_every_row, "not over every position")],
    "3.6": [(induction_duplicate_offset, "duplicate-token head"),
            (induction_over_every_row, "caps the score near 0.5"),
            (induction_whole_stripe, "first copy's destinations"),
            (induction_swapped_axes, "(destination, source)")],
    "3.7": [(copying_over_columns, "argmax over the last axis"),
            (copying_whole_vocabulary, "token_ids only"),
            (copying_first_head_only, "sum the OV circuits")],
    "3.8": [(composition_q, "Q-composition"),
            (composition_untransposed, "the OV circuit goes in transposed"),
            (composition_unnormalised, "divide by both norms"),
            (composition_target_by_source, "[source_head, target_head]")],
    "3.9": [(ablation_then_sorts_the_prompts, "changed its input argument"),
            (ablation_zero, "not by zero"),
            (ablation_whole_layer, "not every head of the layer"),
            (ablation_hook_does_nothing, "changed nothing")],
}

ALTERNATIVES = {
    "3.1": [shares_broadcast_loop, shares_float64_matmul],
    "3.2": [lens_by_hand_layernorm, lens_with_gather_and_unembed],
    "3.3": [translator_with_kl_div, translator_cross_entropy_form, translator_shuffled_epochs],
    "3.4": [heads_with_apply_ln, heads_from_z_by_hand],
    "3.5": [previous_by_indexing, previous_by_loops],
    "3.6": [induction_by_indexing, induction_by_mask],
    "3.7": [copying_with_factored_matrix, copying_diagonal_is_max],
    "3.8": [composition_dense, composition_batched],
    "3.9": [ablation_new_tensor, ablation_with_hooks_context],
}
