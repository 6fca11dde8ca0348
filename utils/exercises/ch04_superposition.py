"""Checks for Chapter 04 (superposition toy models). Expected values come from the exported reference.

The two data generators are random, so their checks test the distribution (seeded, with tolerances
of many standard errors); every other check compares with the reference on fixed inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.checks import Wrong, call, exercise, expect_differentiable, expect_tensor, one_thread, seeded_generator
from utils.references import ch04_superposition as ref

CHAPTER = "04_superposition"






def _expect_batch(got, shape: tuple, name: str) -> torch.Tensor:
    """The generated batch must be a finite float tensor of the right shape."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should be a torch.Tensor of shape {list(shape)}, got {type(got).__name__}")
    if tuple(got.shape) != shape:
        raise Wrong(f"{name} has shape {list(got.shape)}, expected {list(shape)} ([batch, instances, feats])")
    if not got.dtype.is_floating_point:
        raise Wrong(f"{name} has dtype {got.dtype}; features are floats (multiply the values by the mask)")
    if not torch.isfinite(got).all():
        raise Wrong(f"{name} contains NaN or infinite values")
    return got.detach().double()


def _expect_uniform_values(batch: torch.Tensor, name: str) -> None:
    """Active entries are uniform on [0, 1): in range, not constant, mean about 1/2."""
    if (batch < 0).any() or (batch > 1).any():
        raise Wrong(f"{name} has values outside [0, 1] (from {batch.min():.3g} to {batch.max():.3g}): "
                    "draw active values with torch.rand (uniform), not torch.randn")
    active = batch[batch > 0]
    if active.numel() == 0:
        raise Wrong(f"{name} is all zeros: no feature is ever on")
    if (active == 1).float().mean() > 0.5:
        raise Wrong(f"{name}: active features should take a random value in [0, 1), not always 1 "
                    f"({(active == 1).float().mean():.0%} of the active values are exactly 1)")
    if abs(active.mean().item() - 0.5) > 0.05:
        raise Wrong(f"{name}: active values average {active.mean():.3f}; uniform values on [0, 1) average 0.5")


def _expectseeded_generator(candidate, *args, name: str) -> None:
    """A generator's draws: the same seed gives the same batch; the next call on one generator and
    another seed give new ones (so neither a re-seeding nor a generator-ignoring answer passes)."""
    first = call(candidate, *args, seeded_generator(7))
    again = call(candidate, *args, seeded_generator(7))
    if isinstance(first, torch.Tensor) and isinstance(again, torch.Tensor) and not torch.equal(first, again):
        differ = int((first != again).sum()) if first.shape == again.shape else "all"
        raise Wrong(f"{name}: two calls with generators seeded alike gave different batches ({differ} of "
                    f"{first.numel()} entries differ); pass generator=generator to every torch.rand")
    generator = seeded_generator(7)
    successive = [call(candidate, *args, generator) for _ in range(2)]
    other_seed = call(candidate, *args, seeded_generator(8))
    for what, batch in (("the next call on the same generator", successive[1]), ("seed 8", other_seed)):
        if isinstance(batch, torch.Tensor) and batch.shape == first.shape and torch.equal(batch, first):
            raise Wrong(f"{name}: {what} gave exactly the batch of seed 7 again ({batch.numel()} equal entries): "
                        "draw from the generator you are given (generator=generator in every torch.rand), never re-seed it "
                        "or make a new one")


# ------------------------------------------------------------------------------------------
# 4.1
# ------------------------------------------------------------------------------------------
def _feature_probabilities() -> torch.Tensor:
    """[3 instances, 5 feats]: probabilities that differ by instance and by feature."""
    return torch.tensor([[0.05, 0.1, 0.2, 0.3, 0.4],
                         [0.3, 0.3, 0.3, 0.3, 0.3],
                         [1.0, 0.9, 0.7, 0.5, 0.02]])


def _expect_extremes(candidate) -> None:
    """Another shape, with probabilities 0 and 1: never on, and always on."""
    probability = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # [2 instances, 2 feats]
    batch = _expect_batch(call(candidate, 200, probability.clone(), seeded_generator(1)), (200, 2, 2), "your batch for p = 0 or 1")
    on = (batch > 0).double().mean(0)  # [instances, feats]
    if not torch.equal(on == 0, probability == 0) or (on[probability == 1] < 0.99).any():
        raise Wrong(f"with probabilities {probability.tolist()} features are on in {on.tolist()} of examples: "
                    "a feature with p = 0 is never on, one with p = 1 always")


@exercise("4.1", "sparse synthetic features", CHAPTER, ref.generate_features)
def check_generate_features(candidate) -> None:
    probability = _feature_probabilities()
    batch_size = 6000
    batch = _expect_batch(call(candidate, batch_size, probability.clone(), seeded_generator(0)),
                          (batch_size, *probability.shape), "your batch")
    _expect_uniform_values(batch, "your batch")
    on = (batch > 0).double()  # [batch, instances, feats]
    frequency = on.mean(0)  # [instances, feats]
    p = probability.double()
    tolerance = 5 * (p * (1 - p) / batch_size).sqrt() + 0.005  # five standard errors
    if ((frequency - (1 - p)).abs() <= tolerance).all():
        raise Wrong(f"you switched features on with probability 1 - p: feature_probability is the chance a "
                    f"feature is ON (use rand < p); feature 0 of instance 0 is on in {frequency[0, 0]:.3f} of "
                    f"examples, its probability is {p[0, 0]:.3f}")
    if not ((frequency - p).abs() <= tolerance).all():
        index = tuple(int(i) for i in torch.unravel_index(((frequency - p).abs() / tolerance).argmax(), p.shape))
        raise Wrong(f"feature {index[1]} of instance {index[0]} is on in {frequency[index]:.3f} of examples, "
                    f"but its probability is {p[index]:.3f}")
    # Independence: in instance 1 every feature has p = 0.3, so two features are on together 9% of the time.
    both = (on[:, 1, 0] * on[:, 1, 1]).mean().item()
    if both > 0.2:
        raise Wrong(f"features switch on together ({both:.2f} of examples have features 0 and 1 both on, "
                    "independent ones would give 0.09): draw one coin per feature, with the output's full shape")
    both_on = (on[:, 1, 0] * on[:, 1, 1]).bool()
    if both_on.any() and torch.equal(batch[:, 1, 0][both_on], batch[:, 1, 1][both_on]):
        raise Wrong(f"every feature of an example gets the same value (features 0 and 1 agree in all "
                    f"{int(both_on.sum())} examples where both are on): draw one value per feature")
    _expect_extremes(candidate)
    _expectseeded_generator(candidate, 50, probability.clone(), name="your generator")


# ------------------------------------------------------------------------------------------
# 4.2
# ------------------------------------------------------------------------------------------
def _reference_model(nonlinear: bool, n_instances: int = 3, n_feats: int = 6, n_hidden: int = 2):
    """A reference model with random weights and a non-zero bias, so the bias and the ReLU both matter."""
    model = ref.ToyModel(n_instances, n_feats, n_hidden, nonlinear=nonlinear, seed=1)
    with torch.no_grad():
        model.b_final.copy_(0.3 * torch.randn(n_instances, n_feats, generator=seeded_generator(2)))
    return model


def _toy_mistakes(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    W, b = model.W.detach(), model.b_final.detach()
    hidden = torch.einsum("bif,ihf->bih", x, W)  # [batch, instances, hidden]
    linear = torch.einsum("bih,ihf->bif", hidden, W) + b  # [batch, instances, feats]
    output = F.relu if model.nonlinear else (lambda values: values)
    mistakes = {
        "the bias is missing: add self.b_final before the ReLU": output(linear - b),
        "this model has no ReLU on the hidden layer h = W x (its hidden space is not a privileged basis); "
        "the ReLU goes on the output only": output(torch.einsum("bih,ihf->bif", F.relu(hidden), W) + b),
    }
    if model.nonlinear:
        mistakes["the ReLU is missing: with nonlinear=True, return F.relu(W^T h + b)"] = linear
        mistakes["add the bias before the ReLU, not after it"] = F.relu(linear - b) + b
    else:
        mistakes["with nonlinear=False the model is linear: skip the ReLU"] = F.relu(linear)
    return mistakes


@exercise("4.2", "the toy model, batched over instances", CHAPTER, ref.ToyModel)
def check_toy_model(candidate) -> None:
    for nonlinear, sizes in ((True, (3, 6, 2)), (False, (3, 6, 2)), (True, (2, 5, 3))):
        _check_toy_model(candidate, nonlinear, *sizes)


def _check_toy_model(candidate, nonlinear: bool, n_instances: int, n_feats: int, n_hidden: int) -> None:
    x = ref.generate_features(16, torch.full((n_instances, n_feats), 0.5), seeded_generator(3))  # [batch, instances, feats]
    reference = _reference_model(nonlinear, n_instances, n_feats, n_hidden)
    model = call(candidate, n_instances, n_feats, n_hidden, nonlinear=nonlinear, seed=1)
    for name in ("W", "b_final"):
        if not isinstance(getattr(model, name, None), torch.nn.Parameter):
            raise Wrong(f"the model has no parameter {name!r}: keep __init__ as given")
    for name in ("W", "b_final"):
        if getattr(model, name).shape != getattr(reference, name).shape:
            raise Wrong(f"the model's {name} has shape {list(getattr(model, name).shape)}, expected "
                        f"{list(getattr(reference, name).shape)}: keep __init__ as given")
    with torch.no_grad():
        model.W.copy_(reference.W)
        model.b_final.copy_(reference.b_final)
    expected = reference(x).detach()
    got = call(model, x.clone())
    kind = "ReLU" if nonlinear else "linear"
    expect_tensor(got, expected, f"your {kind} model's output ({n_instances} instances, {n_feats} features, "
                  f"{n_hidden} hidden)", atol=1e-5, mistakes=_toy_mistakes(reference, x))
    if not got.requires_grad:
        raise Wrong("the output is not connected to W (requires_grad is False): don't detach or use "
                    "torch.no_grad in forward, or training cannot compute gradients")


# ------------------------------------------------------------------------------------------
# 4.3
# ------------------------------------------------------------------------------------------
@exercise("4.3", "the importance-weighted loss", CHAPTER, ref.importance_weighted_loss)
def check_importance_weighted_loss(candidate) -> None:
    for batch, instances, feats in ((32, 3, 5), (7, 2, 4)):
        _check_loss(candidate, batch, instances, feats)


def _check_loss(candidate, batch: int, instances: int, feats: int) -> None:
    generator = seeded_generator(4 + batch)
    features = ref.generate_features(batch, torch.full((instances, feats), 0.5), generator)  # [batch, instances, feats]
    output = torch.rand(batch, instances, feats, generator=generator)
    importance = torch.rand(instances, feats, generator=generator) + 0.1  # [instances, feats]
    expected = ref.importance_weighted_loss(output, features, importance)
    squared = (features - output) ** 2  # [batch, instances, feats]
    prediction = output.clone().requires_grad_(True)  # the training loop backpropagates through the loss
    got = call(candidate, prediction, features.clone(), importance.clone())
    expect_tensor(got, expected, f"your loss (batch {batch})", atol=1e-5, mistakes={
        "the importance is missing: multiply each feature's squared error by its importance":
            squared.sum(-1).mean(0),
        "the importance multiplies the squared error once, it is not squared with it":
            ((importance * (features - output)) ** 2).sum(-1).mean(0),
        "sum over features (don't average them): the loss is sum_i I_i (x_i - x'_i)^2":
            (importance * squared).mean(-1).mean(0),
        "average over the batch (mean), don't sum, so the loss does not grow with the batch size":
            (importance * squared).sum(-1).sum(0),
        "return one loss per instance, shape [instances]; the training loop sums them itself":
            expected.sum(),
        "return one loss per instance, shape [instances]: don't average over instances":
            expected.mean(),
    })
    expect_differentiable(got, [prediction], f"your loss (batch {batch})")


# ------------------------------------------------------------------------------------------
# 4.4 - 4.6: functions of W
# ------------------------------------------------------------------------------------------
def _weight_examples() -> list[torch.Tensor]:
    """Random weights (one feature zeroed), an antipodal pair, and a regular pentagon, as W tensors."""
    random = torch.randn(4, 3, 7, generator=seeded_generator(5))  # [instances, hidden, feats]
    random[1, :, 2] = 0  # a dropped feature: no direction at all
    random[2] *= 0.3
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])[None]  # [1, 2, 5]
    antipodal = torch.tensor([[[1.0, -1.0, 0.0]]])  # [1, 1, 3]: two features share, one is dropped
    return [random, pentagon, antipodal]


def _expect_no_nan(got, expected: torch.Tensor, name: str) -> None:
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype.is_floating_point:
        if torch.isnan(got).any() and not torch.isnan(expected).any():
            raise Wrong(f"{name} is NaN for a feature with W_i = 0 ({int(torch.isnan(got).sum())} of {got.numel()} "
                        "entries): clamp the norm before dividing (e.g. .clamp(min=1e-8))")


def _overlaps(W: torch.Tensor, normalise: str = "first") -> torch.Tensor:
    """[instances, feats, feats] of dot products W_i . W_j, with W_i (or both) normalised."""
    unit = W / W.norm(dim=1, keepdim=True).clamp(min=1e-8)
    first = unit if normalise in ("first", "both") else W
    second = unit if normalise == "both" else W
    return torch.einsum("ihf,ihg->ifg", first, second)


def _off_diagonal_sum(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.sum(-1) - torch.diagonal(matrix, dim1=-2, dim2=-1)


@exercise("4.4", "interference per feature", CHAPTER, ref.interference)
def check_interference(candidate) -> None:
    for W in _weight_examples():
        expected = ref.interference(W)
        norms = W.norm(dim=1)  # [instances, feats]
        got = call(candidate, W.clone())
        _expect_no_nan(got, expected, "your interference")
        expect_tensor(got, expected, "your interference", mistakes={
            "leave out the j = i term: a feature does not interfere with itself":
                expected + norms ** 2,
            "normalise W_i (the feature whose interference you measure) to unit length before the dot product":
                _off_diagonal_sum(_overlaps(W, "none") ** 2),
            "only W_i is normalised: W_j keeps its length, so a barely represented feature j interferes little":
                _off_diagonal_sum(_overlaps(W, "both") ** 2),
            "square each dot product before summing (negative overlaps interfere too)":
                _off_diagonal_sum(_overlaps(W)),
        })


@exercise("4.5", "classify the extra feature", CHAPTER, ref.extra_feature_phase)
def check_extra_feature_phase(candidate) -> None:
    generator = seeded_generator(6)
    examples = [
        torch.randn(200, 1, 2, generator=generator) * 0.8,  # two features, one dimension
        torch.randn(200, 2, 3, generator=generator) * 0.7,  # three features, two dimensions
        torch.tensor([[[1.0, -1.0]], [[0.0, -1.0]], [[1.0, 0.1]], [[0.0, 0.0]]]),  # the textbook cases
    ]
    for W in examples:
        expected = ref.extra_feature_phase(W)
        norms, overlap = ref.feature_norms(W), ref.interference(W)  # [instances, feats]
        represented = norms[:, -1] > 0.5
        with_self = (overlap + norms ** 2)[:, -1] > 0.25
        mistakes = {
            "the feature's own term counts in its interference; use interference(W), which leaves j = i out":
                represented.long() + (represented & with_self).long(),
            "codes 1 and 2 are swapped: 1 is a dimension of its own, 2 is superposed":
                torch.where(expected == 0, 0, 3 - expected),
            "classify the last feature (the extra one, index -1), not the first":
                ref.extra_feature_phase(W.flip(-1)),
        }
        if W.shape[1] == 1:
            signed = W[:, 0, -1] > 0.5
            mistakes["a feature pointing the negative way is still represented: compare its norm, not its weight"] = \
                signed.long() + (signed & (overlap[:, -1] > 0.25)).long()
        got = call(candidate, W.clone())
        expect_tensor(got, expected, "your phases", mistakes=mistakes)
    default = ref.extra_feature_phase(examples[0], threshold=0.8)
    expect_tensor(call(candidate, examples[0].clone(), threshold=0.8), default,
                  "your phases with threshold=0.8 (use the threshold argument, not 0.5)")


@exercise("4.6", "fractional dimensionality", CHAPTER, ref.feature_dimensionality)
def check_feature_dimensionality(candidate) -> None:
    for W in _weight_examples():
        expected = ref.feature_dimensionality(W)
        norms = W.norm(dim=1)  # [instances, feats]
        got = call(candidate, W.clone())
        _expect_no_nan(got, expected, "your dimensionality")
        expect_tensor(got, expected, "your dimensionality", mistakes={
            "the sum in the denominator includes j = i (the feature's own ||W_i||^2)":
                norms ** 2 / _off_diagonal_sum(_overlaps(W) ** 2).clamp(min=1e-12),
            "normalise W_i inside the dot products of the denominator (W_i_hat . W_j)":
                norms ** 2 / (_overlaps(W, "none") ** 2).sum(-1).clamp(min=1e-12),
            "the numerator is the squared norm ||W_i||^2":
                norms / (_overlaps(W) ** 2).sum(-1).clamp(min=1e-12),
        })


# ------------------------------------------------------------------------------------------
# 4.7
# ------------------------------------------------------------------------------------------
@exercise("4.7", "anticorrelated pairs", CHAPTER, ref.anticorrelated_features)
def check_anticorrelated_features(candidate) -> None:
    probability = torch.tensor([[0.05, 0.2, 0.4], [0.3, 0.1, 0.5]])  # [instances, pairs]
    batch_size = 6000
    shape = (batch_size, probability.shape[0], 2 * probability.shape[1])
    batch = _expect_batch(call(candidate, batch_size, probability.clone(), seeded_generator(0)), shape, "your batch")
    _expect_uniform_values(batch, "your batch")
    on = (batch > 0).double().unflatten(-1, (-1, 2))  # [batch, instances, pairs, 2]
    together = (on[..., 0] * on[..., 1]).mean().item()
    if together > 0:
        raise Wrong(f"the two features of a pair are both on in {together:.3f} of (example, pair) cases: "
                    "they must never be on together")
    frequency = on.mean(0)  # [instances, pairs, 2]
    p = probability.double()[..., None].expand_as(frequency)
    tolerance = 5 * (p * (1 - p) / batch_size).sqrt() + 0.005
    if ((frequency - p / 2).abs() <= tolerance).all():
        raise Wrong(f"each feature is on with probability p / 2: a pair must be active with probability 2p, "
                    f"so that each of its features is still on with probability p (feature 0 of instance 0 is on "
                    f"in {frequency[0, 0, 0]:.3f} of examples, its pair's probability is {p[0, 0, 0]:.3f})")
    if not ((frequency - p).abs() <= tolerance).all():
        index = tuple(int(i) for i in torch.unravel_index(((frequency - p).abs() / tolerance).argmax(), p.shape))
        raise Wrong(f"feature {2 * index[1] + index[2]} of instance {index[0]} is on in {frequency[index]:.3f} "
                    f"of examples, but its pair's probability is {p[index]:.3f}")
    # Pairs are independent of each other: pairs 1 and 2 of instance 1 (p = 0.1, 0.5) are both active
    # in 2p * 2q = 0.2 of examples.
    active = on.amax(-1)  # [batch, instances, pairs]
    both = (active[:, 1, 1] * active[:, 1, 2]).mean().item()
    if abs(both - 0.2) > 0.05:
        raise Wrong(f"pairs should switch on independently of each other, but pairs 1 and 2 of instance 1 are "
                    f"active together in {both:.3f} of examples (independent pairs: 0.200)")
    _expectseeded_generator(candidate, 50, probability.clone(), name="your generator")


# ------------------------------------------------------------------------------------------
# 4.8
# ------------------------------------------------------------------------------------------
def _participation_ratio(weights: torch.Tensor, power: int = 2) -> torch.Tensor:
    share = weights.abs() ** power
    return share.sum(-1) ** 2 / (share ** 2).sum(-1).clamp(min=1e-12)


@exercise("4.8", "features per neuron", CHAPTER, ref.features_per_neuron)
def check_features_per_neuron(candidate) -> None:
    random = torch.randn(3, 4, 8, generator=seeded_generator(8))  # [instances, hidden, feats]
    random[0, 1] = -random[0, 1].abs()  # a neuron that never fires
    random[1, 2] = torch.zeros(8).index_fill(0, torch.tensor([3]), 1.2)  # a monosemantic neuron
    for W in (random, random[:, :2, :3].contiguous() * 2):
        expected = ref.features_per_neuron(W)
        got = call(candidate, W.clone())
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype.is_floating_point \
                and torch.isnan(got).any():
            raise Wrong(f"a neuron with no positive weight gives NaN ({int(torch.isnan(got).sum())} of "
                        f"{got.numel()} neurons): clamp the denominator so it counts as 0")
        expect_tensor(got, expected, "your features per neuron", mistakes={
            "only positive weights make a ReLU neuron fire: take F.relu(W) before squaring":
                _participation_ratio(W),
            "weigh each feature by its squared weight w_i^2 (you used |w_i|)":
                _participation_ratio(F.relu(W), power=1),
            "count features per neuron (sum over the last dimension, feats), not neurons per feature":
                ref.features_per_neuron(W.transpose(1, 2)),
        })


# ------------------------------------------------------------------------------------------
# 4.9
# ------------------------------------------------------------------------------------------
def _ista(h, W, l1, steps, step_size, sign: float = 1.0, clip: bool = True):
    c = torch.zeros(h.shape[0], W.shape[0], W.shape[2])
    for _ in range(steps):
        gradient = torch.einsum("bih,ihf->bif", torch.einsum("bif,ihf->bih", c, W) - h, W)
        c = c - sign * step_size[:, None] * (gradient + l1)
        c = F.relu(c) if clip else c
    return c


@exercise("4.9", "a sparse code for the hidden vector", CHAPTER, ref.sparse_code)
def check_sparse_code(candidate) -> None:
    with one_thread():
        _check_sparse_code(candidate)


def _check_sparse_code(candidate) -> None:
    generator = seeded_generator(9)
    W = torch.randn(2, 3, 8, generator=generator) * 0.6  # [instances, hidden, feats]
    x = ref.generate_features(24, torch.full((2, 8), 0.15), generator)  # [batch, instances, feats]
    h = torch.einsum("bif,ihf->bih", x, W)  # [batch, instances, hidden]
    eta = 1 / torch.linalg.matrix_norm(W, ord=2) ** 2  # [instances]
    for l1, steps in ((0.05, 7), (0.01, 60)):
        expected = ref.sparse_code(h, W, l1=l1, steps=steps)
        got = call(candidate, h.clone(), W.clone(), l1=l1, steps=steps)
        expect_tensor(got, expected, f"your code with l1={l1}, steps={steps}", atol=1e-4, mistakes={
            "the L1 penalty is missing: subtract eta * l1 as well as the gradient step, before the ReLU":
                _ista(h, W, 0.0, steps, eta),
            "the ReLU is missing: the code must stay non-negative, c <- ReLU(c - eta * (gradient + l1))":
                _ista(h, W, l1, steps, eta, clip=False),
            "the step size is 1 / sigma_max(W)^2: square the matrix norm":
                _ista(h, W, l1, steps, 1 / torch.linalg.matrix_norm(W, ord=2)),
            "run exactly `steps` updates, starting from zeros":
                _ista(h, W, l1, steps + 1, eta),
            "step downhill: subtract eta * (W^T (W c - h) + l1), don't add it":
                _ista(h, W, l1, steps, eta, sign=-1.0),
        })
