"""Checks for Chapter 03 (logit lens and attribution). Expected values come from the exported reference."""

from __future__ import annotations

import copy
import functools

import torch

from utils.checks import Wrong, call, exercise, expect_close, expect_tensor, hooks_reset
from utils.models import load_model
from utils.organism.world import prompt_set
from utils.references import ch02_probing as ch02
from utils.references import ch03_logit_lens as ref

CHAPTER = "03_logit_lens"


@functools.cache
def organism():
    """The bundled model, loaded once for all checks."""
    return load_model(verbose=False, device="cpu")


def expect_tensor_distinct(got, expected: torch.Tensor, name: str, atol: float, mistakes: dict, rtol: float = 1e-4) -> None:
    """`expect_tensor`, naming only the mistakes whose result differs from the correct one on this input."""
    distinct = {hint: mistaken for hint, mistaken in mistakes.items()
                if mistaken.shape != expected.shape
                or not torch.allclose(mistaken.double(), expected.double(), atol=atol, rtol=rtol)}
    expect_tensor(got, expected, name, atol=atol, rtol=rtol, mistakes=distinct)


@functools.cache
def prompts(family: str, n: int, seed: int):
    return prompt_set(family, "test", n=n, seed=seed)


@functools.cache
def cached_run(family: str, n: int, seed: int):
    """Tokens, last positions and the full cache of a few held-out prompts."""
    with torch.no_grad():
        return ref.run_prompts(organism(), prompts(family, n, seed))


# ------------------------------------------------------------------------------------------
# 3.1
# ------------------------------------------------------------------------------------------
def _synthetic_stack(seed: int, components: int = 3, batch: int = 5, d_model: int = 16):
    generator = torch.Generator().manual_seed(seed)
    stack = torch.randn(components, batch, d_model, generator=generator) * 3 + torch.randn(components, batch, 1, generator=generator) * 2
    scale = torch.rand(batch, generator=generator) * 4 + 0.5
    directions = torch.randn(batch, d_model, generator=generator)
    return stack, scale, directions


@functools.cache
def _stack_cases():
    model = organism()
    tokens, last, _, cache = cached_run("ioi", 8, 1)
    with torch.no_grad():
        parts = ref.at_last(cache.decompose_resid(layer=-1), last)
        scale = ref.at_last(cache["ln_final.hook_scale"], last)[:, 0]
        directions = ref.logit_diff_directions(model, prompts("ioi", 8, 1))
    return [_synthetic_stack(0), _synthetic_stack(1, components=4, batch=2), (parts, scale, directions)]


@exercise("3.1", "a stack of residual parts to logit differences", CHAPTER, ref.residual_stack_to_logit_diff)
def check_residual_stack_to_logit_diff(candidate) -> None:
    for stack, scale, directions in _stack_cases():
        expected = ref.residual_stack_to_logit_diff(stack, scale, directions)
        centred = stack - stack.mean(-1, keepdim=True)
        own_scale = centred.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
        got = call(candidate, stack.clone(), scale.clone(), directions.clone())
        expect_tensor_distinct(got, expected, "your shares", atol=1e-3, mistakes={
            "divide by the final LayerNorm's scale (final_scale): without it the shares are in the wrong units "
            "and do not add up to the logit difference": torch.einsum("cbd,bd->cb", centred, directions),
            "every part must be divided by the same, final scale: normalising each part by its own size is a "
            "LayerNorm per part, and the shares no longer add up": torch.einsum("cbd,bd->cb", centred / own_scale, directions),
            "centre each vector first (subtract its mean over d_model), as the LayerNorm does":
                torch.einsum("cbd,bd->cb", stack / scale[:, None], directions),
        })


# ------------------------------------------------------------------------------------------
# 3.2
# ------------------------------------------------------------------------------------------
@functools.cache
def _lens_expectations(family: str, n: int, seed: int):
    model = organism()
    with torch.no_grad():
        tokens, last = ch02.tokenize(model, prompts(family, n, seed).prompts)
        names = ch02.residual_hook_names(model.cfg.n_layers)
        logits, cache = model.run_with_cache(tokens)
        rows = torch.arange(len(last))
        resid = torch.stack([cache[name][rows, last] for name in names])  # [point, batch, d_model]
        at_minus_one = torch.stack([cache[name][:, -1] for name in names])
        centred = resid - resid.mean(-1, keepdim=True)
        final_scale = cache["ln_final.hook_scale"][rows, last][None]  # [1, batch, 1]
        expected = ref.logit_lens(model, tokens, last)
        mistakes = {
            "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt "
            "at its own last position, cache[name][torch.arange(batch), last]":
                model.ln_final(at_minus_one) @ model.W_U + model.b_U,
            "apply the final LayerNorm (model.ln_final) before the unembedding: the raw residual stream is "
            "on another scale at every point": resid @ model.W_U + model.b_U,
            "the lens normalises each point with its own LayerNorm scale: the final residual's cached scale "
            "belongs to the last point only": (centred / final_scale) @ model.W_U + model.b_U,
            "add the unembedding bias model.b_U after W_U": model.ln_final(resid) @ model.W_U,
        }
    return tokens, last, logits[rows, last], expected, mistakes


@exercise("3.2", "the logit lens", CHAPTER, ref.logit_lens)
def check_logit_lens(candidate) -> None:
    model = organism()
    for family, n, seed in (("ioi", 6, 2), ("sentiment", 7, 3), ("facts", 5, 4)):
        tokens, last, final_logits, expected, mistakes = _lens_expectations(family, n, seed)
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, tokens.clone(), last.clone())
        expect_tensor_distinct(got, expected, "your lens logits", atol=1e-3, mistakes=mistakes)
        correct = ch02.answer_ids(model, prompts(family, n, seed).correct)
        if not torch.equal(got[-1].argmax(-1), final_logits.argmax(-1)):
            raise Wrong("the last point should give the model's own prediction")
        if not torch.equal(ref.answer_rank(got[-1], correct), ref.answer_rank(final_logits, correct)):
            raise Wrong("at the last point, the rank of the world's answer should be the model's own rank")


# ------------------------------------------------------------------------------------------
# 3.3
# ------------------------------------------------------------------------------------------
@functools.cache
def _translator_data():
    with torch.no_grad():
        return ref.lens_data(organism(), 6, "train", seed=1), ref.lens_data(organism(), 4, "test", seed=1)


TRANSLATOR_CASES = ((1, {"steps": 25, "lr": 1e-2, "batch_size": 48, "seed": 3}),
                    (2, {"steps": 15, "lr": 3e-3, "batch_size": 32, "seed": 0}))


def _held_out_kl(translator, point: int, name: str) -> float:
    train, test = _translator_data()
    if not callable(translator):
        raise Wrong(f"{name} should be the trained Translator (a module you can call), got {type(translator).__name__}")
    with torch.no_grad():
        translated = call(translator, test["resid"][point].clone())
        if not isinstance(translated, torch.Tensor) or translated.shape != test["resid"][point].shape:
            raise Wrong(f"calling {name} on [vector, d_model] residuals should give a tensor of the same shape")
        return ref.kl_from_final(test["final_logits"], ref.lens_logits(organism(), translated.float())).mean().item()


def _train_variant(point: int, steps: int, lr: float, batch_size: int, seed: int, reverse=False, zero_grad=True) -> float:
    model = organism()
    train, _ = _translator_data()
    resid, final_logits = train["resid"][point], train["final_logits"]
    translator = ref.Translator(resid.shape[-1])
    optimizer = torch.optim.Adam(translator.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(len(resid), (batch_size,), generator=generator)
            lens = ref.lens_logits(model, translator(resid[rows]))
            loss = (ref.kl_from_final(lens, final_logits[rows]) if reverse else ref.kl_from_final(final_logits[rows], lens)).mean()
            if zero_grad:
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return _held_out_kl(translator, point, "the variant")


@functools.cache
def _translator_expectations(case: int) -> tuple[float, dict[str, float]]:
    point, settings = TRANSLATOR_CASES[case]
    train, _ = _translator_data()
    with torch.no_grad():
        expected = _held_out_kl(ref.train_translator(organism(), train["resid"][point], train["final_logits"], **settings),
                                point, "the reference")
    mistakes = {
        "your translator did not learn: take an optimizer step on the KL loss in every step "
        "(inside `with torch.enable_grad():`)": _held_out_kl(ref.Translator(train["resid"].shape[-1]), point, "identity"),
        "that minimises KL(lens || final): kl_from_final(final_logits, lens_logits) puts the final distribution first":
            _train_variant(point, **settings, reverse=True),
        "the gradients pile up across steps: call optimizer.zero_grad() before every loss.backward()":
            _train_variant(point, **settings, zero_grad=False),
    }
    return expected, mistakes


KL_SLACK = 1.12  # another draw of minibatches moves the reference's held-out KL by up to about 6%


@exercise("3.3", "train a translator", CHAPTER, ref.train_translator)
def check_train_translator(candidate) -> None:
    model = organism()
    train, _ = _translator_data()
    for case, (point, settings) in enumerate(TRANSLATOR_CASES):
        with hooks_reset(model), torch.no_grad():  # as in the chapter, where gradients are off
            translator = call(candidate, model, train["resid"][point].clone(), train["final_logits"].clone(), **settings)
        model.zero_grad(set_to_none=True)  # the loss's gradient also reached the model's own weights
        got = _held_out_kl(translator, point, "your translator")
        expected, mistakes = _translator_expectations(case)
        bar = KL_SLACK * expected + 2e-3
        if got != got or got > bar:  # NaN, or worse than any correct trainer with any draw of minibatches
            named = [hint for hint, value in mistakes.items() if abs(got - value) <= max(2e-3, 0.01 * value)]
            raise Wrong(f"the held-out KL of your translator is {got:.4f}; a correct one reaches {expected:.4f} "
                        f"(at most {bar:.4f} with other minibatches)" + (f": {named[0]}" if named else ""))


# ------------------------------------------------------------------------------------------
# 3.4
# ------------------------------------------------------------------------------------------
@functools.cache
def _head_expectations(family: str, n: int, seed: int):
    model = organism()
    some = prompts(family, n, seed)
    tokens, last, _, cache = cached_run(family, n, seed)
    with torch.no_grad():
        heads = cache.stack_head_results(layer=-1)  # [layer * head, batch, pos, d_model]
        scale = ref.at_last(cache["ln_final.hook_scale"], last)[:, 0]
        directions = ref.logit_diff_directions(model, some)
        correct_only = model.W_U[:, ch02.answer_ids(model, some.correct)].T
        shape = (model.cfg.n_layers, model.cfg.n_heads, n)
        expected = ref.head_attribution(model, some)
        at_end = heads[:, :, -1]
        mistakes = {
            "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt "
            "at its own last position": ref.residual_stack_to_logit_diff(at_end, cache["ln_final.hook_scale"][:, -1, 0],
                                                                         directions).reshape(shape),
            "divide by the final LayerNorm's scale from the cache (ln_final.hook_scale at the last position)":
                ref.residual_stack_to_logit_diff(ref.at_last(heads, last), torch.ones_like(scale), directions).reshape(shape),
            "that is each head's share of the correct answer's raw logit; the centred unembedding makes only "
            "differences meaningful: use W_U[:, correct] - W_U[:, wrong]":
                ref.residual_stack_to_logit_diff(ref.at_last(heads, last), scale, correct_only).reshape(shape),
            "the sign is flipped: correct minus wrong": -expected,
        }
    return some, expected, mistakes


@exercise("3.4", "attribution to every head", CHAPTER, ref.head_attribution)
def check_head_attribution(candidate) -> None:
    model = organism()
    for family, n, seed in (("ioi", 6, 5), ("facts", 5, 6)):
        some, expected, mistakes = _head_expectations(family, n, seed)
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, copy.deepcopy(some))  # a copy: the cached prompts stay as they are
        expect_tensor_distinct(got, expected, "your head attributions", atol=2e-3, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 3.5 and 3.6
# ------------------------------------------------------------------------------------------
@functools.cache
def organism_patterns(seq_len: int, batch: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        return ref.all_patterns(organism(), ref.repeated_tokens(organism(), seq_len, batch, seed=seed))


def synthetic_patterns(seed: int, layers: int = 2, batch: int = 3, heads: int = 2, positions: int = 9) -> torch.Tensor:
    """Random causal attention patterns (rows sum to 1)."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, batch, heads, positions, positions, generator=generator) * 2
    causal = torch.tril(torch.ones(positions, positions, dtype=torch.bool))
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _stripe_mean(patterns: torch.Tensor, offset: int) -> torch.Tensor:
    return patterns.diagonal(offset=-offset, dim1=-2, dim2=-1).mean(dim=(1, 3))


@exercise("3.5", "previous-token scores", CHAPTER, ref.previous_token_scores)
def check_previous_token_scores(candidate) -> None:
    cases = [(organism_patterns(6, 2, 1), 1), (organism_patterns(6, 2, 1), 6), (synthetic_patterns(0), 2),
             (synthetic_patterns(1, positions=7), 1)]
    for patterns, offset in cases:
        expected = ref.previous_token_scores(patterns, offset)
        n_destinations = patterns.shape[-1]
        stripe_sum = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1).sum(-1).mean(1)
        got = call(candidate, patterns.clone(), offset) if offset != 1 else call(candidate, patterns.clone())
        expect_tensor_distinct(got, expected, f"your scores (offset {offset})", atol=1e-4, mistakes={
            "the axes of a pattern are (destination, source): the entry for 'offset back' is "
            "pattern[d, d - offset], below the diagonal": patterns.diagonal(offset=offset, dim1=-2, dim2=-1).mean(dim=(1, 3)),
            "that is attention to the current token: the previous token is one place back": _stripe_mean(patterns, offset - 1),
            "that is one place too far back: the token `offset` places before d is at d - offset": _stripe_mean(patterns, offset + 1),
            "average over the destinations that have a token `offset` places back, not over every position":
                stripe_sum / n_destinations,
        })


@exercise("3.6", "induction scores", CHAPTER, ref.induction_scores)
def check_induction_scores(candidate) -> None:
    cases = [(organism_patterns(6, 2, 2), 6), (organism_patterns(9, 2, 3), 9), (synthetic_patterns(2, positions=11), 5)]
    for patterns, seq_len in cases:
        expected = ref.induction_scores(patterns, seq_len)
        rows = torch.arange(patterns.shape[-1])
        second = rows[seq_len + 1:]
        def at(offset: int, destinations=second):
            return patterns[..., destinations, destinations - offset].mean(dim=(1, 3))
        got = call(candidate, patterns.clone(), seq_len)
        expect_tensor_distinct(got, expected, f"your induction scores (seq_len {seq_len})", atol=1e-4, mistakes={
            "that is attention to the earlier copy of the same token (a duplicate-token head): the induction "
            "target is the token after it, seq_len - 1 places back": at(seq_len),
            "one place too close: the token after the earlier occurrence is seq_len - 1 places back": at(seq_len - 2),
            "average over the second copy's destinations only: the first copy has nothing to induce, and "
            "counting its rows caps the score near 0.5": patterns[..., second, second - seq_len + 1].sum(-1).mean(1)
            / patterns.shape[-1],
            "the first copy's destinations are in that average: use only seq_len + 1, ..., 2 * seq_len":
                _stripe_mean(patterns, seq_len - 1),
            "the axes of a pattern are (destination, source): read pattern[d, d - seq_len + 1]":
                patterns[..., second - seq_len + 1, second].mean(dim=(1, 3)),
        })


# ------------------------------------------------------------------------------------------
# 3.7
# ------------------------------------------------------------------------------------------
@functools.cache
def _copy_inputs():
    model = organism()
    generator = torch.Generator().manual_seed(7)
    ids = torch.tensor([model.to_single_token(" " + word) for word in ref.world.INDUCTION_POOL])
    ids = ids[torch.randperm(len(ids), generator=generator)[:48]]
    with torch.no_grad():
        effective = ref.effective_embedding(model, ids)
        raw = model.W_E[ids].clone()
    return ids, effective, raw


def _copy_variant(model, embedding, ids, heads, columns=False, full_vocab=False, first_only=False) -> float:
    used = heads[:1] if first_only else heads
    w_ov = sum(model.W_V[l, h] @ model.W_O[l, h] for l, h in used)
    unembed = model.W_U if full_vocab else model.W_U[:, ids]
    circuit = embedding @ w_ov @ unembed
    if full_vocab:
        return (circuit.argmax(-1) == ids).float().mean().item()
    best = circuit.argmax(dim=0 if columns else -1)
    return (best == torch.arange(len(ids))).float().mean().item()


@exercise("3.7", "the OV copying score", CHAPTER, ref.copying_score)
def check_copying_score(candidate) -> None:
    model = organism()
    ids, effective, raw = _copy_inputs()
    cases = [(effective, [(3, 4)]), (effective, [(3, 3), (3, 7)]), (effective[:30], [(3, 7)]), (raw, [(0, 0), (3, 1)])]
    for embedding, heads in cases:
        some_ids = ids[:len(embedding)]
        with torch.no_grad():
            expected = ref.copying_score(model, embedding, some_ids, heads)
            mistakes = {
                "row i is token i attended to: take the largest entry of each row (argmax over the last axis)":
                    _copy_variant(model, embedding, some_ids, heads, columns=True),
                "compare the logits of token_ids only (W_U[:, token_ids]), not the whole vocabulary":
                    _copy_variant(model, embedding, some_ids, heads, full_vocab=True),
                "sum the OV circuits of every head in `heads`":
                    _copy_variant(model, embedding, some_ids, heads, first_only=True),
            }
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, embedding.clone(), some_ids.clone(), list(heads))
        expect_close(got, expected, f"your copying score for {heads}", atol=1e-6, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 3.8
# ------------------------------------------------------------------------------------------
@functools.cache
def _composition_expectations(source_layer: int, target_layer: int):
    model = organism()
    n = model.cfg.n_heads
    with torch.no_grad():
        expected = ref.k_composition_scores(model, source_layer, target_layer)
        q_comp, v_comp, untransposed, unnormalised = (torch.zeros(n, n) for _ in range(4))
        for i in range(n):
            ov = model.W_V[source_layer, i] @ model.W_O[source_layer, i]
            for j in range(n):
                qk = model.W_Q[target_layer, j] @ model.W_K[target_layer, j].T
                ov2 = model.W_V[target_layer, j] @ model.W_O[target_layer, j]
                norms = qk.norm() * ov.norm()
                q_comp[i, j] = (ov @ qk).norm() / norms
                v_comp[i, j] = (ov @ ov2).norm() / (ov.norm() * ov2.norm())
                untransposed[i, j] = (qk @ ov).norm() / norms
                unnormalised[i, j] = (qk @ ov.T).norm()
    return expected, {
        "that is Q-composition (the source head's output read by the queries): for keys, put the OV circuit "
        "transposed on the right, qk @ ov.T": q_comp,
        "that is V-composition (two OV circuits): K-composition pairs the target's QK with the source's OV": v_comp,
        "the keys read the source head's output: the OV circuit goes in transposed, qk @ ov.T": untransposed,
        "divide by both norms, ||qk|| ||ov||, so that the score compares with a random baseline": unnormalised,
        "the result is [source_head, target_head]: row i is the source head": expected.T,
    }


@exercise("3.8", "K-composition scores", CHAPTER, ref.k_composition_scores)
def check_k_composition_scores(candidate) -> None:
    model = organism()
    for source_layer, target_layer in ((0, 3), (1, 2)):
        expected, mistakes = _composition_expectations(source_layer, target_layer)
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, source_layer, target_layer)
        expect_tensor_distinct(got, expected, f"your scores, layer {source_layer} into layer {target_layer}",
                               atol=1e-4, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 3.9
# ------------------------------------------------------------------------------------------
def _ablation_variant(model, clean, corrupted, layer: int, head, zero=False) -> torch.Tensor:
    name = f"blocks.{layer}.attn.hook_z"
    tokens, _ = ch02.tokenize(model, corrupted.prompts)
    _, cache = model.run_with_cache(tokens, names_filter=name)

    def hook(z, hook):
        z[:, :, head] = 0.0 if zero else cache[name][:, :, head]
        return z

    return ch02.logit_diffs(model, clean, fwd_hooks=[(name, hook)])


@functools.cache
def _ablation_expectations(n: int, seed: int, layer: int, head: int):
    model = organism()
    clean = prompts("ioi", n, seed)
    corrupted = ref.abc_prompts(clean, seed=seed)
    with torch.no_grad():
        expected = ref.ablated_logit_diffs(model, clean, corrupted, layer, head)
        mistakes = {
            "replace the head's output by its value on the corrupted prompts, not by zero":
                _ablation_variant(model, clean, corrupted, layer, head, zero=True),
            "replace only head `head` (z[:, :, head]), not every head of the layer":
                _ablation_variant(model, clean, corrupted, layer, slice(None)),
            "your hook changed nothing: these are the clean logit differences": ch02.logit_diffs(model, clean),
        }
    return clean, corrupted, expected, mistakes


@exercise("3.9", "resample-ablate a head", CHAPTER, ref.ablated_logit_diffs)
def check_ablated_logit_diffs(candidate) -> None:
    model = organism()
    for n, seed, layer, head in ((6, 7, 3, 1), (5, 8, 2, 0)):
        clean, corrupted, expected, mistakes = _ablation_expectations(n, seed, layer, head)
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, copy.deepcopy(clean), copy.deepcopy(corrupted), layer, head)  # copies
        expect_tensor_distinct(got, expected, f"your logit differences (L{layer}H{head} ablated)", atol=2e-3,
                               mistakes=mistakes)
