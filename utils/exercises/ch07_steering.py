"""Checks for Chapter 07 (steering, erasure and editing). Expected values come from the exported reference."""

from __future__ import annotations

import contextlib
import copy
import functools

import torch

from utils.checks import Wrong, call, exercise, expect_close, expect_equal, expect_tensor, hooks_reset, seeded_generator
from utils.models import load_model
from utils.organism.world import prompt_set
from utils.references import ch02_probing as ch02
from utils.references import ch07_steering as ref

CHAPTER = "07_steering"
HOOK = "blocks.1.hook_resid_post"


@functools.cache
def organism():
    """The bundled model, loaded once for all checks."""
    return load_model(verbose=False, device="cpu")


@functools.cache
def prompts(family: str, n: int, seed: int, split: str = "test"):
    return prompt_set(family, split, n=n, seed=seed)


def expect_tensor_distinct(got, expected: torch.Tensor, name: str, atol: float, mistakes: dict, rtol: float = 1e-4) -> None:
    """`expect_tensor`, naming only the mistakes whose result differs from the correct one on this input."""
    distinct = {hint: mistaken for hint, mistaken in mistakes.items()
                if mistaken.shape != expected.shape
                or not torch.allclose(mistaken.double(), expected.double(), atol=atol, rtol=rtol)}
    expect_tensor(got, expected, name, atol=atol, rtol=rtol, mistakes=distinct)


@functools.cache
def sentiment_vector(layer: int = 1) -> torch.Tensor:
    """A mean-difference sentiment vector (not unit length) from 200 training reviews."""
    with torch.no_grad():
        return ref.mean_difference_vector(organism(), prompts("sentiment", 200, 0, "train"),
                                          f"blocks.{layer}.hook_resid_post", "sentiment")


def fresh(prompt_set_or_sets):
    """A deep copy of a PromptSet (or a dict of them) to hand the learner: sorting or extending it in place then
    changes nothing the check keeps."""
    return copy.deepcopy(prompt_set_or_sets)


@contextlib.contextmanager
def weights_kept(model):
    """Snapshot every tensor of `model`'s state and put it back afterwards, whatever edited it (`W.data` too,
    which the framework's version counters cannot see). Yields the list of names that had changed."""
    saved = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    changed: list[str] = []
    try:
        yield changed
    finally:
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if not torch.equal(tensor, saved[name]):
                    changed.append(name)
                    tensor.copy_(saved[name])


def random_direction(seed: int, scale: float = 5.0, d_model: int = 256) -> torch.Tensor:
    return torch.randn(d_model, generator=seeded_generator(seed)) * scale / d_model ** 0.5


def run_last_logits(model, some, hooks) -> torch.Tensor:
    """The last-token logits of `some` with `hooks` on (learner hooks run through `call` by the caller)."""
    return ref.last_logits(model, some, list(hooks))


def learner_hook_list(hooks, model) -> list:
    """Check that the learner returned a list of (hook name, function) pairs on real hook points."""
    if not isinstance(hooks, (list, tuple)) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in hooks):
        raise Wrong(f"return a list of (hook_name, hook_fn) pairs, got {type(hooks).__name__}")
    unknown = [name for name, fn in hooks if not isinstance(name, str) or name not in model.hook_dict]
    if unknown:
        raise Wrong(f"not a hook point of the model: {unknown[0]!r}")
    if not all(callable(fn) for _, fn in hooks):
        raise Wrong("every pair must hold a hook function you can call as hook_fn(resid, hook)")
    return list(hooks)


# ------------------------------------------------------------------------------------------
# 7.1
# ------------------------------------------------------------------------------------------
def _steered(resid, direction, alpha, *, bos=False, relative=True, normalise=True):
    vector = direction / direction.norm() if normalise else direction
    start = 0 if bos else 1
    added = alpha * (resid[:, start:].norm(dim=-1, keepdim=True) if relative else 1.0) * vector
    out = resid.clone()
    out[:, start:] = resid[:, start:] + added
    return out


STEER_MISTAKES = {
    "position 0 (the end-of-text token) must stay as it is: steer every position after it":
        dict(bos=True),
    "alpha is relative: multiply it by each position's own residual norm (alpha * resid.norm() * unit), "
    "not add alpha * unit in absolute units": dict(relative=False),
    "divide the direction by its norm first: add alpha * norm * direction / direction.norm()":
        dict(normalise=False),
}


def _synthetic_resid(seed: int, batch: int, pos: int, d: int = 8) -> torch.Tensor:
    generator = seeded_generator(seed)
    return torch.randn(batch, pos, d, generator=generator) * (1 + torch.rand(batch, pos, 1, generator=generator) * 4)


@exercise("7.1", "a steering hook", CHAPTER, ref.steering_hook)
def check_steering_hook(candidate) -> None:
    cases = [(_synthetic_resid(0, 2, 5), random_direction(1, scale=3.0, d_model=8), 0.3),
             (_synthetic_resid(2, 3, 4), random_direction(3, scale=0.5, d_model=8), -1.2)]
    for resid, direction, alpha in cases:
        hook_fn = call(candidate, direction.clone(), alpha)
        if not callable(hook_fn):
            raise Wrong(f"steering_hook should return a hook function, got {type(hook_fn).__name__}")
        for batch in (resid, resid[:1, :3]):  # the same hook on a second, smaller input
            got = call(hook_fn, batch.clone(), None)
            mistakes = {hint: _steered(batch, direction, alpha, **kind) for hint, kind in STEER_MISTAKES.items()}
            expect_tensor_distinct(got, _steered(batch, direction, alpha), "your steered residual", atol=1e-4,
                                   mistakes=mistakes)
    model = organism()
    some = prompts("sentiment", 6, 5)
    direction = sentiment_vector()
    with torch.no_grad():
        expected = run_last_logits(model, some, [(HOOK, ref.steering_hook(direction, 0.5))])
        with hooks_reset(model):
            hook_fn = call(candidate, direction.clone(), 0.5)
            got = call(run_last_logits, model, some, [(HOOK, hook_fn)])
    expect_tensor(got, expected, "the organism's logits steered with your hook", atol=1e-3)


# ------------------------------------------------------------------------------------------
# 7.2
# ------------------------------------------------------------------------------------------
@functools.cache
def _mean_difference_expectations(family: str, n: int, seed: int, hook_name: str, label: str):
    model = organism()
    some = prompts(family, n, seed)
    with torch.no_grad():
        expected = ref.mean_difference_vector(model, some, hook_name, label)
        tokens, _ = ch02.tokenize(model, some.prompts)
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        at_end = cache[hook_name][:, -1]  # [batch, d_model]
    labels = torch.tensor(some.labels[label])
    if len(set(labels.tolist())) < 2:
        raise RuntimeError("a check case needs both labels")
    mistakes = {
        "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt at its "
        "own last token (last_token_activations)": at_end[labels == 1].mean(0) - at_end[labels == 0].mean(0),
        "the sign is flipped: the mean over the prompts labelled 1 minus the mean over those labelled 0": -expected,
        "return the difference itself, not normalised: its length is part of the answer": expected / expected.norm(),
    }
    return some, expected, mistakes


@exercise("7.2", "the mean-difference vector", CHAPTER, ref.mean_difference_vector)
def check_mean_difference_vector(candidate) -> None:
    model = organism()
    for family, n, seed, hook_name, label in (("sentiment", 10, 3, HOOK, "sentiment"),
                                              ("truth", 12, 4, "blocks.2.hook_resid_post", "truth")):
        some, expected, mistakes = _mean_difference_expectations(family, n, seed, hook_name, label)
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, fresh(some), hook_name, label)
        expect_tensor_distinct(got, expected, "your mean-difference vector", atol=1e-3, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 7.3
# ------------------------------------------------------------------------------------------
def _wrong_tables(model, prompt_sets: dict, hooks: list) -> dict[str, torch.Tensor]:
    """What the realistic mistakes return, as tensors in the sets' order."""
    at_end, unhooked, mean_diff = [], [], []
    for some in prompt_sets.values():
        correct, wrong = ch02.answer_ids(model, some.correct), ch02.answer_ids(model, some.wrong)
        tokens, _ = ch02.tokenize(model, some.prompts)
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[:, -1]
        rows = torch.arange(len(some))
        at_end.append(((logits[rows, correct] - logits[rows, wrong]) > 0).float().mean())
        unhooked.append((ch02.logit_diffs(model, some) > 0).float().mean())
        mean_diff.append(ch02.logit_diffs(model, some, fwd_hooks=list(hooks)).mean())
    return {
        "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt at its "
        "own last token (Chapter 02's logit_diffs does)": torch.stack(at_end),
        "run the model with fwd_hooks on: these are the unhooked accuracies": torch.stack(unhooked),
        "return the share of prompts with a logit difference above 0, not the mean logit difference": torch.stack(mean_diff),
    }


@functools.cache
def _table_cases():
    model = organism()
    first = {"ioi": prompts("ioi", 8, 6), "sentiment": prompts("sentiment", 10, 6)}
    second = {"truth": prompts("truth", 12, 7), "facts": prompts("facts", 9, 7), "induction": prompts("induction", 6, 7)}
    broken = [("blocks.0.hook_resid_post", ref.steering_hook(random_direction(11), 1.5))]
    steered = [(HOOK, ref.steering_hook(sentiment_vector(), 1.0))]
    cases = []
    with torch.no_grad():
        for sets, hooks in ((first, steered), (second, broken), (first, [])):
            expected = ref.side_effect_table(model, sets, hooks)
            cases.append((sets, hooks, expected, _wrong_tables(model, sets, hooks)))
    return cases


@exercise("7.3", "a side-effect table", CHAPTER, ref.side_effect_table)
def check_side_effect_table(candidate) -> None:
    model = organism()
    for sets, hooks, expected, mistakes in _table_cases():
        with hooks_reset(model), torch.no_grad():
            got = call(candidate, model, fresh(sets), list(hooks))
        if not isinstance(got, dict):
            raise Wrong(f"return a dict from family name to accuracy, got {type(got).__name__}")
        expect_equal(list(got), list(expected), "the keys of your table (in the order of prompt_sets)")
        values = list(got.values())
        if not all(isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1) for v in values):
            raise Wrong("every value of the table should be a float (an accuracy)")
        got_tensor = torch.tensor([float(v) for v in values])
        expect_tensor_distinct(got_tensor, torch.tensor(list(expected.values())), "your accuracies", atol=1e-6,
                               mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 7.4
# ------------------------------------------------------------------------------------------
def _safe_variant(alphas, correct, baseline, allowed, *, strict=False, prefix=True, total=False, first_unsafe=False,
                  absolute=False):
    safe = None
    for i, alpha in enumerate(alphas):
        losses = {f: baseline[f] - int(correct[f][i]) for f in baseline}
        if absolute:
            losses = {f: abs(v) for f, v in losses.items()}
        if total:
            unsafe = sum(losses.values()) >= sum(allowed.values()) if strict else sum(losses.values()) > sum(allowed.values())
        else:
            unsafe = any(losses[f] >= allowed[f] if strict else losses[f] > allowed[f] for f in baseline)
        if unsafe:
            if first_unsafe:
                return float(alpha)
            if prefix:
                break
            continue
        safe = float(alpha)
    return safe


SAFE_MISTAKES = {
    "losing exactly the allowed number of prompts is still safe: compare with <=, not <": dict(strict=True),
    "stop at the first unsafe coefficient: a larger one after a failure does not count": dict(prefix=False),
    "every family must stay within its own allowance, not their total": dict(total=True),
    "return the largest safe coefficient, not the first unsafe one": dict(first_unsafe=True),
    "only a loss counts: a family that answers more prompts than at its baseline is not a side effect to stop at "
    "(baseline - correct, not its absolute value)": dict(absolute=True),
}


def _safe_cases():
    t = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731 - counts of prompts
    return [
        # losing exactly the allowance is safe
        ([0.25, 0.5, 1.0, 2.0], {"flipped": t([10, 50, 90, 100]), "ioi": t([200, 200, 190, 150]),
                                 "facts": t([30, 29, 28, 20])}, {"ioi": 200, "facts": 30}, {"ioi": 10, "facts": 1}),
        # a failure, then recovery
        ([0.1, 0.3, 0.6, 1.2, 2.4], {"ioi": t([200, 100, 195, 196, 40]), "truth": t([180, 180, 180, 176, 100])},
         {"ioi": 200, "truth": 180}, {"ioi": 10, "truth": 9}),
        # one family fails while the total stays within the total allowance
        ([0.5, 1.0, 1.5], {"a": t([160, 150, 140]), "b": t([100, 100, 100]), "c": t([200, 200, 200])},
         {"a": 160, "b": 100, "c": 200}, {"a": 8, "b": 5, "c": 10}),
        # even the first coefficient is unsafe
        ([0.5, 1.0], {"ioi": t([100, 40])}, {"ioi": 200}, {"ioi": 10}),
        # a family that answers more than at its baseline is no side effect to stop at
        ([0.5, 1.0, 2.0], {"flipped": t([50, 100, 100]), "ioi": t([200, 199, 100]), "truth": t([170, 170, 170])},
         {"ioi": 200, "truth": 150}, {"ioi": 10, "truth": 7}),
        # the chapter's shape: 200 prompts a family and the 30 facts prompts, a loss of exactly 10 at 0.5
        ([0.25, 0.5, 0.75], {"ioi": t([199, 189, 100]), "facts": t([30, 30, 29]), "truth": t([180, 180, 180])},
         {"ioi": 199, "facts": 30, "truth": 180}, {"ioi": 10, "facts": 1, "truth": 10}),
    ]


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(float(a) - float(b)) < 1e-9)


@exercise("7.4", "the largest safe coefficient", CHAPTER, ref.largest_safe_coefficient)
def check_largest_safe_coefficient(candidate) -> None:
    answers = []  # (case, got, expected) for every case: a hint is named only if it explains all of them
    for alphas, correct, baseline, allowed in _safe_cases():
        expected = ref.largest_safe_coefficient(alphas, correct, baseline, allowed)
        got = call(candidate, list(alphas), {k: v.clone() for k, v in correct.items()}, dict(baseline), dict(allowed))
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if got is not None and not isinstance(got, (int, float)):
            raise Wrong(f"return a float (or None), got {type(got).__name__}")
        answers.append(((alphas, correct, baseline, allowed), got, expected))
    wrong = [(case, got, expected) for case, got, expected in answers if not _same(got, expected)]
    if not wrong:
        return
    for hint, kind in SAFE_MISTAKES.items():
        variant = [_safe_variant(*case, **kind) for case, _, _ in answers]
        if all(_same(value, got) for value, (_, got, _) in zip(variant, answers)):
            (alphas, _, _, allowed), got, expected = wrong[0]
            raise Wrong(f"{hint} (got {got!r}, expected {expected!r} for alphas {alphas} and allowances {allowed})")
    (alphas, correct, baseline, allowed), got, expected = wrong[0]
    raise Wrong(f"your coefficient is {got!r}, expected {expected!r} for alphas {alphas}, baseline counts {baseline}, "
                f"allowances {allowed} and counts { {k: v.tolist() for k, v in correct.items()} }")


# ------------------------------------------------------------------------------------------
# 7.5
# ------------------------------------------------------------------------------------------
def _ablation_variant(model, direction, *, mid=True, normalise=True, layers=None, arditi=False):
    vector = direction / direction.norm() if normalise else direction

    def ablate(resid, hook):
        return resid - (resid @ vector)[..., None] * vector

    layers = range(model.cfg.n_layers) if layers is None else layers
    if arditi:  # x and x-tilde of every layer: resid_pre and resid_mid, without the final resid_post
        return [(f"blocks.{l}.hook_resid_{where}", ablate) for l in layers for where in ("pre", "mid")]
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in layers]
    if mid:
        names += [f"blocks.{l}.hook_resid_mid" for l in layers]
    return [(name, ablate) for name in names]


ABLATION_MISTAKES = {
    "project out at every hook_resid_mid too: without it each MLP still reads what its attention layer wrote "
    "along the direction": dict(mid=False),
    "project out the unit direction: divide the direction by its norm first": dict(normalise=False),
    "every layer: one hook_resid_mid and one hook_resid_post per block, plus blocks.0.hook_resid_pre": dict(layers=[1]),
    "resid_pre and resid_mid of every block (Arditi et al.'s list) miss one point: the last block's "
    "hook_resid_post, which the unembedding reads, so the last MLP writes the direction back; add it": dict(arditi=True),
}


@functools.cache
def _ablation_cases():
    model = organism()
    cases = []
    with torch.no_grad():
        for direction, some in ((sentiment_vector(), prompts("sentiment", 8, 8)),
                                (random_direction(12, scale=5.0), prompts("ioi", 6, 8))):
            expected = run_last_logits(model, some, ref.directional_ablation_hooks(model, direction))
            mistakes = {hint: run_last_logits(model, some, _ablation_variant(model, direction, **kind))
                        for hint, kind in ABLATION_MISTAKES.items()}
            cases.append((direction, some, expected, mistakes))
    return cases


@exercise("7.5", "directional ablation hooks", CHAPTER, ref.directional_ablation_hooks)
def check_directional_ablation_hooks(candidate) -> None:
    model = organism()
    for direction, some, expected, mistakes in _ablation_cases():
        with weights_kept(model) as changed, hooks_reset(model), torch.no_grad():
            hooks = learner_hook_list(call(candidate, model, direction.clone()), model)
            got = call(run_last_logits, model, some, hooks)
        if changed:
            raise Wrong(f"directional_ablation_hooks changed the model's weights ({changed[0]}): return hooks only, "
                        "and leave the weights to Exercise 7.6")
        expect_tensor_distinct(got, expected, "the logits with your hooks", atol=2e-3, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 7.6
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def _orthogonalize_variant(model, direction, *, biases=True, embeddings=True, attention=True, normalise=True):
    vector = direction / direction.norm() if normalise else direction
    writers = [model.embed.W_E, model.pos_embed.W_pos] if embeddings else []
    for block in model.blocks:
        writers += [block.mlp.W_out] + ([block.attn.W_O] if attention else [])
        if biases:
            writers += [block.mlp.b_out] + ([block.attn.b_O] if attention else [])
    for weight in writers:
        weight.sub_((weight @ vector)[..., None] * vector)


ORTHOGONAL_MISTAKES = {
    "the biases write into the residual stream too: orthogonalise b_O and b_out as well": dict(biases=False),
    "the token and position embeddings write into the residual stream too: orthogonalise W_E and W_pos":
        dict(embeddings=False),
    "every attention layer writes through W_O (and b_O): orthogonalise them too": dict(attention=False),
    "project out the unit direction: divide the direction by its norm first": dict(normalise=False),
}


@functools.cache
def _orthogonal_cases():
    model = organism()
    cases = []
    with torch.no_grad():
        for direction, some in ((sentiment_vector(), prompts("sentiment", 8, 9)),
                                (random_direction(13, scale=2.0), prompts("truth", 6, 9))):
            expected = run_last_logits(model, some, ref.directional_ablation_hooks(model, direction))
            mistakes = {}
            for hint, kind in ORTHOGONAL_MISTAKES.items():
                with hooks_reset(model):
                    _orthogonalize_variant(model, direction, **kind)
                    mistakes[hint] = run_last_logits(model, some, [])
            cases.append((direction, some, expected, mistakes))
    return cases


@exercise("7.6", "orthogonalise the weights", CHAPTER, ref.orthogonalize_weights)
def check_orthogonalize_weights(candidate) -> None:
    model = organism()
    for direction, some, expected, mistakes in _orthogonal_cases():
        with weights_kept(model), hooks_reset(model):  # the original weights come back, even after a W.data edit
            call(candidate, model, direction.clone(), allow_changes_to=(model,))
            got = run_last_logits(model, some, [])
        expect_tensor_distinct(got, expected, "the logits of your orthogonalised model (compared with the hooks "
                               "of Exercise 7.5)", atol=2e-3, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 7.7
# ------------------------------------------------------------------------------------------
class FitSpy:
    """A fit function that remembers what it was fitted on, and what its erasers were applied to."""

    def __init__(self, fit):
        self.fit, self.seen, self.applied = fit, [], []

    def __call__(self, x, y):
        self.seen.append(x.detach().clone())
        eraser = self.fit(x, y)

        def spied_eraser(values):
            self.applied.append(values.detach().reshape(-1, values.shape[-1]).clone())
            return eraser(values)

        return spied_eraser

    def erased_every_row_of(self, x) -> bool:
        """Whether every row of `x` went through one of the erasers (alone or inside a larger batch)."""
        if not self.applied:
            return False
        applied = torch.cat(self.applied).to(x.dtype)  # [rows seen, d]
        return bool((x[:, None, :] == applied[None]).all(-1).any(-1).all())


def _identity_fit(x, y):
    return lambda values: values


@functools.cache
def _erasure_data(case: int):
    model = organism()
    if case == 2:  # a small synthetic concept in 12 dimensions
        generator = seeded_generator(21)
        y_train, y_test = torch.randint(0, 2, (80,), generator=generator), torch.randint(0, 2, (40,), generator=generator)
        shift = torch.randn(12, generator=generator) * 1.5
        x_train = torch.randn(80, 12, generator=generator) + y_train[:, None] * shift
        x_test = torch.randn(40, 12, generator=generator) + y_test[:, None] * shift
        return x_train, y_train, x_test, y_test
    family, hook_name = (("truth", HOOK), ("sentiment", "blocks.0.hook_resid_post"))[case]
    train, test = prompts(family, 160, 10, "train"), prompts(family, 64, 10)
    with torch.no_grad():
        x_train = ref.last_token_activations(model, train.prompts, hook_name).cpu()
        x_test = ref.last_token_activations(model, test.prompts, hook_name).cpu()
    return x_train, torch.tensor(train.labels[family]), x_test, torch.tensor(test.labels[family])


def _erased_variant(fit, x_train, y_train, x_test, y_test, *, on_test=False, erase_train=True, erase_test=True):
    eraser = fit(x_test, y_test) if on_test else fit(x_train, y_train)
    train_x = eraser(x_train) if erase_train else x_train
    test_x = eraser(x_test) if erase_test else x_test
    with torch.enable_grad():
        probe = ch02.train_probe(train_x, y_train)
    with torch.no_grad():
        return ((probe(test_x) > 0) == y_test.bool()).float().mean().item()


ERASED_MISTAKES = {
    "erase the test activations too: the probe is graded on erased data": dict(erase_test=False),
    "erase the training activations before training the probe: a probe trained on the originals": dict(erase_train=False),
}
FITS = {"LEACE": ref.fit_leace, "mean difference": ref.fit_mean_difference_eraser, "none": _identity_fit}


@functools.cache
def _erased_expectation(case: int, fit_name: str):
    data = _erasure_data(case)
    expected = ref.erased_probe_accuracy(FITS[fit_name], *data)
    mistakes = {hint: _erased_variant(FITS[fit_name], *data, **kind) for hint, kind in ERASED_MISTAKES.items()}
    return expected, mistakes


@exercise("7.7", "a fresh probe after erasure", CHAPTER, ref.erased_probe_accuracy)
def check_erased_probe_accuracy(candidate) -> None:
    for case, fit_name in ((0, "LEACE"), (1, "mean difference"), (2, "LEACE"), (2, "none")):
        x_train, y_train, x_test, y_test = _erasure_data(case)
        spy = FitSpy(FITS[fit_name])
        got = call(candidate, spy, x_train.clone(), y_train.clone(), x_test.clone(), y_test.clone())
        if not spy.seen:
            raise Wrong("call fit_eraser(x_train, y_train) to get the eraser")
        if any(seen.shape != x_train.shape or not torch.equal(seen, x_train) for seen in spy.seen):
            raise Wrong("fit the eraser on the training split only (fit_eraser(x_train, y_train)): an eraser fitted "
                        "on the test split has seen the data it is graded on")
        for hint, kind in ERASED_MISTAKES.items():
            split = x_test if kind.get("erase_test") is False else x_train
            if not spy.erased_every_row_of(split):
                raise Wrong(hint)
        expected, mistakes = _erased_expectation(case, fit_name)
        tolerance = 1.5 / len(y_test)  # one borderline prediction either way
        expect_close(got, expected, f"the fresh probe's accuracy ({fit_name} eraser)", atol=tolerance,
                     mistakes={hint: value for hint, value in mistakes.items() if abs(value - expected) > 2 * tolerance})


# ------------------------------------------------------------------------------------------
# 7.8
# ------------------------------------------------------------------------------------------
def _random_moment(d: int, generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=generator)
    return a @ a.T / d + 0.5 * torch.eye(d)


@functools.cache
def _edit_cases():
    cases = []
    for seed, d_in, d_out in ((30, 6, 4), (31, 10, 3)):
        generator = seeded_generator(seed)
        cases.append((torch.randn(d_in, d_out, generator=generator), torch.randn(d_in, generator=generator),
                      torch.randn(d_out, generator=generator) * 3, _random_moment(d_in, generator)))
    model = organism()
    with torch.no_grad():
        moment = ref.key_second_moment(model, 0, n_tokens=2048)
        tokens, _ = ch02.tokenize(model, ["The capital of Spain is"])
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post", stop_at_layer=1)
        key = cache["blocks.0.mlp.hook_post"][0, ref.token_positions(model, tokens, " Spain")[0]]  # the country's token
        weight = model.blocks[0].mlp.W_out.detach().clone()
        value = key @ weight + random_direction(32, scale=300.0)
    cases.append((weight, key, value, moment))
    return cases


def _edit_size(new_weight: torch.Tensor, weight: torch.Tensor, moment: torch.Tensor) -> float:
    """The change's size on typical keys, tr(D^T C D), in float64."""
    change = (new_weight.double() - weight.double())  # [d_in, d_out]
    return torch.trace(change.T @ moment.double() @ change).item()


def _name_the_cost(got, expected, weight, key, value, moment, mistakes) -> None:
    """For a wrong update that no named mistake explains: say what it costs (its size under C) or why it is off."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.isfinite(got).all():
        return
    close = torch.allclose(got.double(), expected.double(), atol=1e-3, rtol=1e-3)
    named = any(m.shape == got.shape and torch.allclose(got.double(), m.double(), atol=1e-3, rtol=1e-3)
                for m in mistakes.values())
    if close or named:
        return
    scale = max(1.0, value.abs().max().item())
    meets = torch.allclose((key.double() @ got.double()), value.double(), atol=1e-2 * scale)
    error = ((got.double() - expected.double()).norm() / (expected.double() - weight.double()).norm()).item()
    size, smallest = _edit_size(got, weight, moment), _edit_size(expected, weight, moment)
    condition = torch.linalg.cond(moment.double()).item()
    if error < 0.2 and condition > 1e3:
        raise Wrong(f"your update is {error:.1%} away from the rank-one one: the keys' second moment here has "
                    f"condition number {condition:.1e}, and an inverse, a pseudo-inverse or least squares in float32 "
                    "loses that many digits; use torch.linalg.solve(second_moment, key) (in float64 if you like)")
    if meets:
        raise Wrong(f"your new weight gives key @ W = value, but it is not the smallest change: its size on typical "
                    f"keys, tr(D^T C D), is {size:.4g} against {smallest:.4g} for the rank-one update along C^-1 k")


@exercise("7.8", "a rank-one update", CHAPTER, ref.rank_one_update)
def check_rank_one_update(candidate) -> None:
    for weight, key, value, moment in _edit_cases():
        expected = ref.rank_one_update(weight, key, value, moment)
        c_inv_k = torch.linalg.solve(moment, key)
        unit = int(key.abs().argmax())
        one_row = weight.clone()
        one_row[unit] = one_row[unit] + (value - key @ weight) / key[unit]
        got = call(candidate, weight.clone(), key.clone(), value.clone(), moment.clone())
        mistakes = {
            "weight the change by the keys' second moment: the direction is C^-1 k, and the denominator k^T C^-1 k "
            "(with C = I every key would be disturbed alike)": weight + torch.outer(key, value - key @ weight) / (key @ key),
            "the numerator is the residual value - key @ weight: the weight must add only what is missing":
                weight + torch.outer(c_inv_k, value) / (c_inv_k @ key),
            "keep the old weight: the edit adds a rank-one change to it, it does not replace the whole matrix":
                torch.outer(c_inv_k, value) / (c_inv_k @ key),
            "spread the change along C^-1 k: overwriting the whole row of one hidden unit also gives key @ W = value, "
            "but changes the output of every input that uses that unit": one_row,
        }
        _name_the_cost(got, expected, weight, key, value, moment, mistakes)
        expect_tensor_distinct(got, expected, "your new weight", atol=1e-3, rtol=1e-3, mistakes=mistakes)
        if not torch.allclose((key @ got.double().to(key.dtype)), value, atol=1e-2 * max(1.0, value.abs().max().item())):
            raise Wrong("after the update, key @ new_weight should equal value")
