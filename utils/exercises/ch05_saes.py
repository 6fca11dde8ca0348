"""Checks for Chapter 05 (sparse autoencoders). Expected values come from the exported reference.

Exercise 5.3 (the training loop) leaves the optimiser to the learner, so its check trains the
learner's function on a small toy and tests properties every correct trainer's result has: unit
decoder rows, a good reconstruction, the true features recovered, a sparser code for a larger
L1 coefficient, a falling loss, and a fresh batch every step. Every other check compares with
the reference on several inputs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers

import torch
import torch.nn.functional as F

from utils.checks import Wrong, call, exercise, expect_close, expect_tensor, hooks_reset, one_thread, seeded_generator
from utils.references import ch05_saes as ref

CHAPTER = "05_saes"






def _distinct(mistakes: dict, expected: torch.Tensor, atol: float = 1e-4) -> dict:
    """Only the mistakes that these inputs can tell apart from the right answer."""
    return {hint: wrong for hint, wrong in mistakes.items()
            if wrong.shape != expected.shape or not torch.allclose(wrong.double(), expected.double(), atol=10 * atol)}


def _distinct_numbers(mistakes: dict[str, float], expected: float, atol: float) -> dict[str, float]:
    return {hint: value for hint, value in mistakes.items() if abs(value - expected) > 10 * atol}


# ------------------------------------------------------------------------------------------
# 5.1
# ------------------------------------------------------------------------------------------
def _randomised_reference(d_in: int, d_sae: int, seed: int):
    """A reference SAE with random encoder weights and non-zero biases, so every term matters."""
    sae = ref.SparseAutoencoder(d_in, d_sae, seed=seed)
    generator = seeded_generator(seed + 100)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator))
    return sae


@exercise("5.1", "the sparse autoencoder", CHAPTER, ref.SparseAutoencoder)
def check_sparse_autoencoder(candidate) -> None:
    for d_in, d_sae, seed in ((6, 10, 1), (4, 9, 2)):
        reference = _randomised_reference(d_in, d_sae, seed)
        sae = call(candidate, d_in, d_sae, seed=seed)
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        for name, shape in shapes.items():
            parameter = getattr(sae, name, None)
            if not isinstance(parameter, torch.nn.Parameter) or tuple(parameter.shape) != shape:
                raise Wrong(f"the SAE needs a parameter {name} of shape {list(shape)}: keep __init__ as given")
        with torch.no_grad():
            for name in shapes:
                getattr(sae, name).copy_(getattr(reference, name))
        W_enc, W_dec = reference.W_enc.detach(), reference.W_dec.detach()
        b_enc, b_dec = reference.b_enc.detach(), reference.b_dec.detach()
        x = torch.randn(24, d_in, generator=seeded_generator(seed + 7)) + 0.5  # [batch, d_in]
        expected = reference.encode(x).detach()
        expect_tensor(call(sae.encode, x.clone()), expected, "your code (encode)", atol=1e-5, mistakes=_distinct({
            "subtract b_dec from x before the encoder: (x - b_dec) @ W_enc + b_enc":
                F.relu(x @ W_enc + b_enc),
            "subtract b_dec, don't add it: the encoder reads x - b_dec":
                F.relu((x + b_dec) @ W_enc + b_enc),
            "the ReLU is missing: the code is ReLU((x - b_dec) @ W_enc + b_enc)":
                (x - b_dec) @ W_enc + b_enc,
            "the encoder bias b_enc is missing": F.relu((x - b_dec) @ W_enc),
        }, expected))
        codes = F.relu(torch.randn(24, d_sae, generator=seeded_generator(seed + 8)))  # [batch, d_sae]
        expected = reference.decode(codes).detach()
        expect_tensor(call(sae.decode, codes.clone()), expected, "your reconstruction (decode)", atol=1e-5,
                      mistakes=_distinct({
                          "add b_dec back after the decoder: codes @ W_dec + b_dec": codes @ W_dec,
                          "decode with W_dec (one row per latent), not the encoder's transpose": codes @ W_enc.T + b_dec,
                      }, expected))
        x_hat, got_codes = call(sae, x.clone())
        if not (isinstance(x_hat, torch.Tensor) and x_hat.requires_grad):
            raise Wrong("the reconstruction is not connected to the parameters: don't detach or use torch.no_grad "
                        "in encode or decode, or training cannot compute gradients")
        _check_topk_branch(candidate, reference, x, d_in, d_sae, seed)


@contextlib.contextmanager
def _reference_topk_in(namespace: dict):
    """Bind `topk_activation` to the reference in the namespace the learner's class reads its names from.

    Exercise 5.5 comes after 5.1, so when 5.1 is checked the learner's notebook may not define
    `topk_activation` yet, or only as a stub. The given TopK lines of `encode` call it by name; for the
    length of the check they find the reference, and afterwards the namespace is exactly as it was."""
    missing = object()
    before = namespace.get("topk_activation", missing)
    namespace["topk_activation"] = ref.topk_activation
    try:
        yield
    finally:
        if before is missing:
            namespace.pop("topk_activation", None)
        else:
            namespace["topk_activation"] = before


def _check_topk_branch(candidate, reference, x: torch.Tensor, d_in: int, d_sae: int, seed: int) -> None:
    """A TopK SAE (k set) must send its pre-activations through topk_activation, as the given lines do."""
    for k in (2, 3):
        sae = call(candidate, d_in, d_sae, k=k, seed=seed)
        if getattr(sae, "k", None) != k:
            raise Wrong(f"SparseAutoencoder(..., k={k}) should keep k as self.k: keep __init__ as given")
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(sae, name).copy_(getattr(reference, name))
        encode = getattr(type(sae), "encode", None)
        namespace = getattr(encode, "__globals__", None)
        expected = ref.topk_activation((x - reference.b_dec) @ reference.W_enc + reference.b_enc, k).detach()
        with _reference_topk_in(namespace) if isinstance(namespace, dict) else contextlib.nullcontext():
            got = call(sae.encode, x.clone())
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and (got > 0).sum(-1).max() > k:
            raise Wrong(f"with k={k} your code has up to {int((got > 0).sum(-1).max())} active latents per row: when "
                        "self.k is set, encode must return topk_activation(pre_activation, self.k) (keep the two "
                        "given lines of the stub)")
        expect_tensor(got, expected, f"your code of a TopK SAE (encode, k={k})", atol=1e-5)


# ------------------------------------------------------------------------------------------
# 5.2
# ------------------------------------------------------------------------------------------
@exercise("5.2", "the loss", CHAPTER, ref.sae_loss)
def check_sae_loss(candidate) -> None:
    generator = seeded_generator(3)
    for batch, d_in, d_sae, l1 in ((16, 5, 9, 0.3), (7, 3, 4, 2.0)):
        x = torch.randn(batch, d_in, generator=generator)
        x_hat = x + 0.5 * torch.randn(batch, d_in, generator=generator)
        codes = F.relu(torch.randn(batch, d_sae, generator=generator))
        expected = ref.sae_loss(x, x_hat, codes, l1)
        squared = (x_hat - x).pow(2)  # [batch, d_in]
        # x_hat and codes come out of an SAE, so they carry gradients; the trainer of 5.3 calls
        # backward() on this loss, so it must stay connected to them
        # (the call goes through a closure, so whatever copies `call` makes of its arguments, the
        # learner's function receives these very tensors)
        x_hat_leaf, codes_leaf = x_hat.clone().requires_grad_(True), codes.clone().requires_grad_(True)
        got = call(lambda: candidate(x.clone(), x_hat_leaf, codes_leaf, l1))
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.requires_grad:
            raise Wrong("your loss is not connected to x_hat and codes (no gradient flows back): don't compute it "
                        "under torch.no_grad() or detach it; the training loop of 5.3 calls backward() on it")
        if isinstance(got, numbers.Real):
            raise Wrong(f"your loss is a Python number ({got:.6g}), which backward() cannot be called on: return "
                        "the 0-dimensional tensor, without .item()")
        got = call(candidate, x.clone(), x_hat.clone(), codes.clone(), l1)
        expect_tensor(got.detach().reshape(()) if isinstance(got, torch.Tensor) and got.numel() == 1 else got,
                      expected, f"your loss (l1={l1})", atol=1e-5, mistakes=_distinct({
                          "the L1 penalty is missing: add l1 * codes.sum(-1) for each example":
                              squared.sum(-1).mean(),
                          "sum the squared error over the d_in dimensions (don't average them)":
                              (squared.mean(-1) + l1 * codes.sum(-1)).mean(),
                          "sum the code over the latents (its L1 norm), don't average it":
                              (squared.sum(-1) + l1 * codes.mean(-1)).mean(),
                          "average over the batch (mean), don't sum":
                              (squared.sum(-1) + l1 * codes.sum(-1)).sum(),
                          "use the squared error ||x - x_hat||^2, not the norm ||x - x_hat||":
                              ((x_hat - x).norm(dim=-1) + l1 * codes.sum(-1)).mean(),
                      }, expected))


# ------------------------------------------------------------------------------------------
# 5.3
# ------------------------------------------------------------------------------------------
CHECK_FEATS, CHECK_DIMS, CHECK_D_SAE, CHECK_STEPS, CHECK_LR = 16, 8, 32, 700, 4e-3
CHECK_L1S = (0.3, 1.0)


class _CountingBatches:
    """An iterator of toy batches that counts how many were drawn."""

    def __init__(self, features: torch.Tensor, seed: int):
        self.stream = ref.toy_batches(features, batch_size=512, probability=0.06, seed=seed)
        self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        return next(self.stream)


def _toy_quality(sae, features: torch.Tensor) -> dict[str, float]:
    h, _ = ref.toy_batch(4096, features, probability=0.06, generator=seeded_generator(99))
    with torch.no_grad():
        h_hat, codes = ref.SparseAutoencoder.forward(sae, h)
    return {"recovery": ref.mean_max_cosine(sae.W_dec.detach(), features),
            "explained_variance": 1 - ((h - h_hat) ** 2).sum().item() / ((h - h.mean(0)) ** 2).sum().item(),
            "l0": (codes > 0).float().sum(-1).mean().item()}


def _train_candidate(candidate, features: torch.Tensor, l1: float, seed: int):
    sae = ref.SparseAutoencoder(CHECK_DIMS, CHECK_D_SAE, seed=seed)
    before = sae.W_enc.detach().clone()
    batches = _CountingBatches(features, seed)
    try:  # the chapter calls train_sae(sae, batches, steps, l1=..., lr=..., progress_bar=...)
        inspect.signature(candidate).bind(sae, batches, CHECK_STEPS, l1, lr=CHECK_LR, progress_bar=False)
    except TypeError as error:
        raise Wrong(f"the chapter calls train_sae(sae, batches, steps, l1, lr=lr, progress_bar=progress_bar); "
                    f"yours cannot be called that way ({error}): keep the signature as given") from None
    except ValueError:  # no signature to read (a builtin, say): the call itself will tell
        pass
    losses = call(candidate, sae, batches, CHECK_STEPS, l1, lr=CHECK_LR, progress_bar=False, allow_changes_to=(sae,))
    if isinstance(losses, (list, tuple)) and any(isinstance(loss, torch.Tensor) and loss.requires_grad
                                                 for loss in losses):
        raise Wrong("your list of losses holds tensors that keep their computation graphs (memory grows with every "
                    "step, and the chapter's plot of the losses fails): append loss.item(), a float")
    if not isinstance(losses, (list, tuple)) or not all(isinstance(loss, numbers.Real) for loss in losses):
        raise Wrong(f"train_sae should return the list of the {CHECK_STEPS} losses as floats (loss.item()), "
                    f"got {_describe_losses(losses)}")
    losses = [float(loss) for loss in losses]
    if len(losses) != CHECK_STEPS:
        raise Wrong(f"train_sae returned {len(losses)} losses for steps={CHECK_STEPS}: one loss per step")
    if batches.drawn < CHECK_STEPS:
        raise Wrong(f"your loop drew {batches.drawn} batches in {CHECK_STEPS} steps: take next(batches) at every step")
    if torch.equal(before, sae.W_enc.detach()):
        raise Wrong("the SAE's encoder did not change: update the SAE's own parameters (sae.parameters())")
    if not all(loss == loss for loss in losses):
        raise Wrong("the loss became NaN during training")
    return sae, losses


def _describe_losses(losses) -> str:
    if isinstance(losses, (list, tuple)):
        kinds = sorted({type(loss).__name__ for loss in losses})
        return f"a {type(losses).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(losses).__name__


@functools.cache
def _check_features() -> torch.Tensor:
    return ref.toy_features(CHECK_FEATS, CHECK_DIMS, seed=3)


@exercise("5.3", "the training loop", CHAPTER, ref.train_sae)
def check_train_sae(candidate) -> None:
    with one_thread():
        _check_train_sae(candidate)


def _check_train_sae(candidate) -> None:
    features = _check_features()
    results = {}
    for l1 in CHECK_L1S:
        sae, losses = _train_candidate(candidate, features, l1, seed=4)
        norms = sae.W_dec.detach().norm(dim=-1)
        if (norms - 1).abs().max() > 1e-3:
            raise Wrong(f"after training, W_dec's rows have lengths from {norms.min():.3f} to {norms.max():.3f}: "
                        "rescale each row to unit length after every update")
        tenth = CHECK_STEPS // 10
        first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
        if not last < 0.8 * first:
            raise Wrong(f"the loss did not go down (first tenth of the steps {first:.4g}, last tenth {last:.4g}): "
                        "zero the gradients, then backward and step, every step")
        results[l1] = _toy_quality(sae, features)
    small, large = results[CHECK_L1S[0]], results[CHECK_L1S[1]]
    if not large["l0"] < 0.8 * small["l0"]:
        raise Wrong(f"l1={CHECK_L1S[1]} gave L0 {large['l0']:.2f} and l1={CHECK_L1S[0]} gave {small['l0']:.2f}: a "
                    "larger l1 should give a sparser code (pass l1 on to sae_loss)")
    # Bars between an untrained SAE (recovery 0.64-0.69, explained variance below 0) and Adam's
    # relatives at this learning rate (RAdam and Adamax: recovery 0.79-0.81, explained variance 0.81)
    if small["explained_variance"] < 0.75:
        raise Wrong(f"the trained SAE explains only {small['explained_variance']:.2f} of the variance of fresh toy "
                    f"data (l1={CHECK_L1S[0]}, {CHECK_STEPS} steps at lr={CHECK_LR}; a correct trainer with Adam or one "
                    "of its relatives reaches more than 0.75, while SGD is far too slow at this learning rate)")
    if small["recovery"] < 0.75:
        raise Wrong(f"the trained SAE recovers the true features with mean max cosine {small['recovery']:.2f} "
                    "(a correct trainer with Adam or one of its relatives reaches more than 0.75; an untrained SAE "
                    "scores about 0.65)")


# ------------------------------------------------------------------------------------------
# 5.4
# ------------------------------------------------------------------------------------------
def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True)


@exercise("5.4", "how many true features did it find?", CHAPTER, ref.mean_max_cosine)
def check_mean_max_cosine(candidate) -> None:
    generator = seeded_generator(5)
    true = torch.randn(7, 5, generator=generator) * torch.tensor([0.5, 1, 2, 3, 1, 4, 0.2])[:, None]
    learned = torch.randn(12, 5, generator=generator) * 3
    learned[0] = -2 * true[0]  # a latent pointing exactly against a true feature
    learned[1] = 0.7 * true[1] + 0.1 * torch.randn(5, generator=generator)
    cases = [(learned, true), (learned[:5] * 0.1, true[:4] * 10)]
    for learned_case, true_case in cases:
        expected = ref.mean_max_cosine(learned_case, true_case)
        cosines = _unit(true_case) @ _unit(learned_case).T  # [feats, d_sae]
        got = call(candidate, learned_case.clone(), true_case.clone())
        expect_close(got, expected, "your mean max cosine", atol=1e-4, mistakes=_distinct_numbers({
            "take, for each TRUE feature (rows of `true`), the best learned direction; you averaged over the "
            "learned directions": cosines.max(dim=0).values.mean().item(),
            "normalise both sets of rows first: a cosine similarity is a dot product of unit vectors":
                (true_case @ learned_case.T).max(dim=1).values.mean().item(),
            "a latent pointing against a feature does not recover it (its code is never negative): "
            "don't take the absolute value": cosines.abs().max(dim=1).values.mean().item(),
            "take the maximum over learned directions before averaging":
                cosines.mean().item(),
        }, expected, 1e-4))


# ------------------------------------------------------------------------------------------
# 5.5
# ------------------------------------------------------------------------------------------
@exercise("5.5", "TopK", CHAPTER, ref.topk_activation)
def check_topk_activation(candidate) -> None:
    generator = seeded_generator(6)
    pre = torch.randn(8, 10, generator=generator)
    pre[0] = -pre[0].abs() - 0.1  # a row with no positive entry
    pre[1, :8] = -pre[1, :8].abs() - 0.1  # a row with two positive entries
    for pre_case, k in ((pre, 3), (pre[:5, :6] * 2, 1), (pre, 5)):
        expected = ref.topk_activation(pre_case, k)
        top = pre_case.topk(k, dim=-1)
        by_size = pre_case.abs().topk(k, dim=-1).indices
        columns = pre_case.topk(min(k, pre_case.shape[0]), dim=0)
        got = call(candidate, pre_case.clone(), k)
        expect_tensor(got, expected, f"your TopK (k={k})", atol=1e-6, mistakes=_distinct({
            "apply a ReLU to the kept values: a negative pre-activation must become 0":
                torch.zeros_like(pre_case).scatter(-1, top.indices, top.values),
            "keep the k largest values, not the k largest in absolute value":
                torch.zeros_like(pre_case).scatter(-1, by_size, F.relu(pre_case.gather(-1, by_size))),
            "keep the k largest entries of each ROW (dim=-1, over latents), not of each column":
                torch.zeros_like(pre_case).scatter(0, columns.indices, F.relu(columns.values)),
        }, expected))
    _check_topk_gradient(candidate, pre, 3)


def _check_topk_gradient(candidate, pre: torch.Tensor, k: int) -> None:
    """The chapter trains TopK SAEs through this function: the gradient must reach the kept entries."""
    leaf = pre.clone().requires_grad_(True)
    got = call(lambda: candidate(leaf, k))  # a closure: the learner's function gets this very leaf
    weights = torch.linspace(0.5, 1.5, pre.shape[-1])  # [d_sae], so each entry's gradient is its own
    reference_leaf = pre.clone().requires_grad_(True)
    (ref.topk_activation(reference_leaf, k) * weights).sum().backward()
    expected = reference_leaf.grad  # [batch, d_sae]: the weight where an entry is kept and positive, else 0
    if not (isinstance(got, torch.Tensor) and got.requires_grad):
        raise Wrong("no gradient flows through your TopK (the result does not require grad): don't compute it under "
                    "torch.no_grad() or detach the kept values, or the chapter's TopK SAEs never train")
    (gradient,) = torch.autograd.grad((got * weights).sum(), leaf, allow_unused=True)
    if gradient is None:
        gradient = torch.zeros_like(pre)
    expect_tensor(gradient, expected, f"the gradient through your TopK (k={k})", atol=1e-6, mistakes=_distinct({
        "no gradient reaches the kept entries: build the result from pre_activation's values "
        "(scatter or torch.where), not from a detached copy": torch.zeros_like(pre),
    }, expected, atol=1e-6))


# ------------------------------------------------------------------------------------------
# 5.6
# ------------------------------------------------------------------------------------------
METRIC_KEYS = ("l0", "mse", "explained_variance", "l2_ratio", "dead_fraction")


def _metric_cases():
    generator = seeded_generator(7)
    x = torch.randn(60, 8, generator=generator) + 3.0  # activations far from zero on average
    x_hat = 0.8 * x + 0.3 * torch.randn(60, 8, generator=generator)
    codes = F.relu(torch.randn(60, 12, generator=generator) - 0.5)
    codes[:, [2, 7]] = 0  # two dead latents
    return [(x, x_hat, codes), (x[:20, :5], x_hat[:20, :5] * 1.1, codes[:20, :9])]


@exercise("5.6", "reconstruction and sparsity metrics", CHAPTER, ref.sae_metrics)
def check_sae_metrics(candidate) -> None:
    for x, x_hat, codes in _metric_cases():
        expected = ref.sae_metrics(x, x_hat, codes)
        got = call(candidate, x.clone(), x_hat.clone(), codes.clone())
        if not isinstance(got, dict):
            raise Wrong(f"sae_metrics should return a dict with keys {', '.join(METRIC_KEYS)}, got {type(got).__name__}")
        missing = [key for key in METRIC_KEYS if key not in got]
        if missing:
            raise Wrong(f"the dict has no key {missing[0]!r} (expected keys: {', '.join(METRIC_KEYS)})")
        error = (x - x_hat).pow(2)
        mistakes = {
            "l0": {"count latents whose code is above 0 (codes > 0)": (codes >= 0).float().sum(-1).mean().item(),
                   "l0 is the mean number of active latents per token, not the fraction":
                       (codes > 0).float().mean().item()},
            "mse": {"sum the squared error over dimensions, then average over tokens":
                        error.mean().item()},
            "explained_variance": {"measure the variance around the mean: ((x - x.mean(0)) ** 2).sum(), "
                                   "not (x ** 2).sum()": 1 - error.sum().item() / x.pow(2).sum().item()},
            "l2_ratio": {"the L2 ratio is |x_hat| / |x| (reconstruction over input)":
                             (x.norm(dim=-1) / x_hat.norm(dim=-1)).mean().item()},
            "dead_fraction": {"a dead latent never fires on any token of the batch: (codes > 0).sum(0) == 0":
                                  ((codes > 0).sum(0) > 0).float().mean().item(),
                              "give the fraction of latents that are dead, not their number":
                                  float(((codes > 0).sum(0) == 0).sum())},
        }
        for key in METRIC_KEYS:
            expect_close(got[key], expected[key], f"your {key}", atol=1e-4,
                         mistakes=_distinct_numbers(mistakes.get(key, {}), expected[key], 1e-4))


# ------------------------------------------------------------------------------------------
# 5.7
# ------------------------------------------------------------------------------------------
@functools.cache
def _model_sae_tokens():
    from utils.models import load_model
    from utils.organism import sae as organism_sae

    model = load_model(device="cpu", verbose=False)
    sae = organism_sae.load_organism_sae()
    tokens = organism_sae.world_rows(model.tokenizer, 4 * 40, seed=11, seq_len=40)  # [4, 40]
    return model, sae, tokens


def _loss(model, tokens, hooks) -> float:
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


@functools.cache
def _ce_cases() -> list[tuple]:
    """(keep, hook name, expected, {hint: value of that mistake}) for each case, computed once."""
    from utils.organism import sae as organism_sae

    model, sae, tokens = _model_sae_tokens()
    kept = organism_sae.kept_positions(tokens, model.tokenizer.eos_token_id)
    late = kept.clone()
    late[:, :20] = False
    cases = []
    # The SAE was trained on block 1's output; at block 0's it reconstructs badly, so there every
    # mistake moves the number far. That case comes first, so a mistake is named by its hint.
    for keep, hook_name in ((late, "blocks.0.hook_resid_post"), (kept, organism_sae.HOOK_NAME)):
        with hooks_reset(model):
            expected = ref.ce_loss_recovered(model, sae, tokens, keep, hook_name)
            everywhere = ref.ce_loss_recovered(model, sae, tokens, torch.ones_like(keep), hook_name)
            clean = _loss(model, tokens, [])
            spliced_loss = _loss(model, tokens, [(hook_name, lambda a, hook: torch.where(
                keep[..., None], sae.decode(sae.encode(a)), a))])
            zeroed = _loss(model, tokens, [(hook_name, lambda a, hook: torch.where(keep[..., None], 0 * a, a))])
        cases.append((keep, hook_name, expected, _distinct_numbers({
            "only intervene where keep is True (torch.where(keep[..., None], new, activation))": everywhere,
            "that is the fraction of the loss LOST; recovered is (L_zero - L_sae) / (L_zero - L_clean)":
                (spliced_loss - clean) / (zeroed - clean),
            "return the recovered fraction, not the loss with the SAE spliced in": spliced_loss,
        }, expected, 5e-4)))
    return cases


@exercise("5.7", "CE loss recovered", CHAPTER, ref.ce_loss_recovered)
def check_ce_loss_recovered(candidate) -> None:
    model, sae, tokens = _model_sae_tokens()
    for keep, hook_name, expected, mistakes in _ce_cases():
        with hooks_reset(model):
            got = call(candidate, model, sae, tokens.clone(), keep.clone(), hook_name)
        _expect_fraction(got, expected, f"your CE loss recovered at {hook_name}", atol=5e-4, mistakes=mistakes)


def _expect_fraction(got, expected: float, name: str, atol: float, mistakes: dict[str, float]) -> None:
    """expect_close, with as many decimals as it takes to show a gap larger than `atol`.

    A recovered fraction sits near 1, where four significant digits print 1.0006 and 1.0012 both
    as "1.001": the verdict would say "is 1.001, expected 1.001" for a real difference."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, numbers.Real) or isinstance(got, bool):
        raise Wrong(f"{name} should be a number, got {type(got).__name__}")
    got = float(got)
    decimals = max(4, math.ceil(-math.log10(atol)) + 1)
    shown = f"got {got:.{decimals}f}, expected {expected:.{decimals}f}"
    if got != got:
        raise Wrong(f"{name} is NaN")
    matched = [hint for hint, value in mistakes.items()
               if abs(got - value) <= atol and abs(value - expected) > atol and abs(got - expected) > atol]
    if matched:
        raise Wrong(f"{matched[0] if len(matched) == 1 else 'one of these mistakes: ' + '; or '.join(matched)} ({shown})")
    if abs(got - expected) > atol:
        raise Wrong(f"{name} differs from the reference by {abs(got - expected):.{decimals}f}, more than {atol:g} "
                    f"({shown})")


# ------------------------------------------------------------------------------------------
# 5.8
# ------------------------------------------------------------------------------------------
def _auroc_cases():
    generator = seeded_generator(8)
    labels = torch.rand(300, generator=generator) < 0.3
    signal = labels.float()[:, None] * torch.tensor([1.0, 0.5, 0.0, -0.8, 2.0, 0.3])
    scores = F.relu(torch.randn(300, 6, generator=generator) + signal - 0.4)  # sparse: many exact zeros
    scores[:, 5] = torch.randint(0, 3, (300,), generator=generator).float() + labels.float()  # heavy ties
    small_labels = torch.tensor([True, False, False, True, False, True, False, False])
    small = torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.5, 1.0],
                          [0.0, 0.0]])
    return [(scores, labels), (small, small_labels)]


def _ordinal_aurocs(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    ranks = scores.T.double().argsort(-1).argsort(-1) + 1.0  # [k, n], ties broken by position
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return ((ranks * labels).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@exercise("5.8", "AUROC of every column at once", CHAPTER, ref.column_aurocs)
def check_column_aurocs(candidate) -> None:
    for scores, labels in _auroc_cases():
        expected = ref.column_aurocs(scores, labels)
        got = call(candidate, scores.clone(), labels.clone())
        expect_tensor(got, expected, "your AUROCs", atol=1e-6, mistakes=_distinct({
            "tied scores must share the average of their ranks (an SAE latent is 0 on most tokens)":
                _ordinal_aurocs(scores, labels),
            "detect labels == True by a HIGH score; you computed the AUROC for the other class":
                1 - expected,
            "return the plain AUROC; max(AUROC, 1 - AUROC) comes later, in the chapter":
                torch.maximum(expected, 1 - expected),
        }, expected, atol=1e-6))
