"""Checks for Chapter 02 (probing). Expected values come from the exported reference."""

from __future__ import annotations

import functools

import torch
from torch import nn

from utils.checks import Wrong, call, exercise, expect_close, expect_no_known_mistake, expect_tensor
from utils.models import load_model
from utils.organism.world import prompt_set
from utils.references import ch02_probing as ref

CHAPTER = "02_probing"


@functools.cache
def organism():
    """The bundled model, loaded once for all checks."""
    return load_model(verbose=False, device="cpu")


@functools.cache
def organism_data(family: str, label: str) -> dict:
    """Small train/test sets of last-token activations and labels from the organism."""
    return ref.labelled_residuals(organism(), family, label, n_train=160, n_test=80, progress=False)


def synthetic_data(seed: int, d_model: int = 16, n: int = 240, offset: float = 3.0, imbalance: float = 0.5,
                   separation: float = 0.6) -> dict:
    """Two noisy, off-centre classes along a hidden direction; train on 2/3, test on 1/3 (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=generator) < imbalance).long()
    hidden = torch.randn(d_model, generator=generator)
    x = torch.randn(n, d_model, generator=generator) + offset + torch.outer(2.0 * y.float() - 1.0, hidden) * separation
    cut = 2 * n // 3
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def _as_layers(data: dict) -> dict:
    """A synthetic data set repeated as if it came from 3 residual points (each a little different)."""
    scales = torch.tensor([0.2, 1.0, 2.0])[:, None, None]
    return {"x_train": data["x_train"] * scales, "y_train": data["y_train"],
            "x_test": data["x_test"] * scales, "y_test": data["y_test"]}


# ------------------------------------------------------------------------------------------
# 2.1
# ------------------------------------------------------------------------------------------
@exercise("2.1", "the residual stream at chosen positions", CHAPTER, ref.residual_stack)
def check_residual_stack(candidate) -> None:
    model = organism()
    names = ref.residual_hook_names(model.cfg.n_layers)
    for family, n, offset in (("sentiment", 12, 0), ("ioi", 8, 2)):
        prompts = prompt_set(family, "test", n=n, seed=3).prompts
        tokens, last = ref.tokenize(model, prompts)
        positions = last - offset
        expected = ref.residual_stack(model, tokens, positions)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        rows = torch.arange(len(prompts))
        got = call(candidate, model, tokens, positions.clone())
        expect_tensor(got, expected, "your residual stack", atol=1e-4, mistakes={
            "the prompts are right-padded, so position -1 is padding for the shorter ones: "
            "index each row at its own position, cache[name][torch.arange(batch), positions]":
                torch.stack([cache[name][:, -1] for name in names]),
            "the embeddings are missing: the first entry is blocks.0.hook_resid_pre, then every hook_resid_post":
                torch.stack([cache[name][rows, positions] for name in names[1:]]),
            "that is the last token, not the chosen positions: index with `positions`":
                torch.stack([cache[name][rows, last] for name in names]),
        })


# ------------------------------------------------------------------------------------------
# 2.2
# ------------------------------------------------------------------------------------------
def _train_variant(x, y, steps=200, lr=0.01, weight_decay=1e-3, zero_grad=True, double_sigmoid=False):
    """The reference training loop with one known mistake switched on."""
    probe = ref.LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        logits = probe(x)
        if double_sigmoid:
            logits = torch.sigmoid(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float())
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def _logits(probe, x, name: str) -> torch.Tensor:
    """The probe's logits on `x` as float64, after checking it is something we can call."""
    if not callable(probe):
        raise Wrong(f"{name} should be the trained LinearProbe (a module you can call), got {type(probe).__name__}")
    with torch.no_grad():
        logits = call(probe, x)
    if not isinstance(logits, torch.Tensor) or logits.shape != x.shape[:1]:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise Wrong(f"calling {name} should give one logit per input, shape [{x.shape[0]}], got {shape}")
    return logits.detach().double()


def _probabilities(probe, x, name: str) -> torch.Tensor:
    return torch.sigmoid(_logits(probe, x, name))


def _fit(probe, data: dict, name: str) -> tuple[float, float]:
    """(mean binary cross-entropy on the training split, accuracy on the held-out split)."""
    train_logits = _logits(probe, data["x_train"], name)
    test_logits = _logits(probe, data["x_test"], name)
    loss = nn.functional.binary_cross_entropy_with_logits(train_logits, data["y_train"].double()).item()
    accuracy = ((test_logits > 0) == data["y_test"].bool()).double().mean().item()
    return loss, accuracy


def _spread(probe, x, name: str) -> float:
    """How far apart the probe's logits are on `x` (its weights' size, seen through the data)."""
    return _logits(probe, x, name).std().item()


def _probe_cases() -> dict[str, tuple[dict, dict]]:
    """Inputs for 2.2: the defaults on synthetic and organism data; few steps; a large weight decay."""
    truth = organism_data("truth", "truth")
    return {
        "few steps": (synthetic_data(1, imbalance=0.3), {"steps": 4, "lr": 0.05}),
        "defaults": (synthetic_data(0), {}),
        "organism": ({k: (v[-1] if k.startswith("x") else v) for k, v in truth.items()}, {}),
        "weight decay": (synthetic_data(2, imbalance=0.4), {"steps": 300, "lr": 0.05}),
    }


@functools.cache
def _probe_expectations(case: str) -> tuple[torch.Tensor, tuple[float, float], dict[str, torch.Tensor]]:
    """The reference probe's held-out probabilities and (loss, accuracy) on one case, and the
    held-out probabilities of each known mistake."""
    data, settings = _probe_cases()[case]
    x, y, x_test = data["x_train"], data["y_train"], data["x_test"]
    probe = ref.train_probe(x, y, **settings)
    mistakes = {
        "your probe never moved from its initial (zero) weights: call loss.backward() and optimizer.step() "
        "in every step": _probabilities(ref.LinearProbe(x), x_test, "an untrained probe"),
        "the gradients pile up across steps: call optimizer.zero_grad() before every loss.backward()":
            _probabilities(_train_variant(x, y, zero_grad=False, **settings), x_test, "variant"),
        "binary_cross_entropy_with_logits applies the sigmoid itself: pass it the raw logits":
            _probabilities(_train_variant(x, y, double_sigmoid=True, **settings), x_test, "variant"),
    }
    return _probabilities(probe, x_test, "the reference probe"), _fit(probe, data, "the reference probe"), mistakes


WEIGHT_DECAY = 1.0  # large enough to shrink any correct probe's weights to well under 0.8 of those without


@exercise("2.2", "train a linear probe", CHAPTER, ref.train_probe)
def check_train_probe(candidate) -> None:
    cases = _probe_cases()
    for case in ("few steps", "defaults", "organism"):
        data, settings = cases[case]
        probe = call(candidate, data["x_train"].clone(), data["y_train"].clone(), **settings)
        expected, (loss, accuracy), mistakes = _probe_expectations(case)
        got = _probabilities(probe, data["x_test"], "your probe")
        name = f"your probe's probabilities on held-out inputs ({', '.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'})"
        if case == "few steps":  # any Adam and any loss reduction take about the same first steps
            untrained = {hint: value for hint, value in mistakes.items() if "never moved" in hint}
            expect_tensor(got, expected, name, atol=0.05, mistakes=untrained)
            continue
        expect_no_known_mistake(got, expected, mistakes, atol=0.02)
        got_loss, got_accuracy = _fit(probe, data, "your probe")
        if got_loss > 1.5 * loss + 0.02 or got_accuracy < accuracy - 0.03:
            raise Wrong(f"your probe has not learned the task ({case} case, {settings or 'default settings'}): "
                        f"training loss {got_loss:.3f} and held-out accuracy {got_accuracy:.3f}, where a probe "
                        f"trained as described reaches {loss:.3f} and {accuracy:.3f}")
    data, settings = cases["weight decay"]
    spreads = {}
    for weight_decay in (0.0, WEIGHT_DECAY):
        probe = call(candidate, data["x_train"].clone(), data["y_train"].clone(), weight_decay=weight_decay, **settings)
        spreads[weight_decay] = _spread(probe, data["x_train"], "your probe")
    ratio = spreads[WEIGHT_DECAY] / max(spreads[0.0], 1e-12)
    if ratio > 0.8:
        raise Wrong(f"weight_decay={WEIGHT_DECAY} should shrink the probe's weights, but its logits spread "
                    f"{spreads[WEIGHT_DECAY]:.3f} against {spreads[0.0]:.3f} with weight_decay=0 (ratio {ratio:.2f}): "
                    "pass weight_decay to the optimiser")


# ------------------------------------------------------------------------------------------
# 2.3
# ------------------------------------------------------------------------------------------
def _accuracy_variant(data, evaluate_on_train=False, threshold_probability_at_zero=False, train_on_both=False):
    accuracies = []
    for layer in range(data["x_train"].shape[0]):
        if train_on_both:
            probe = ref.train_probe(torch.cat([data["x_train"][layer], data["x_test"][layer]]),
                                    torch.cat([data["y_train"], data["y_test"]]))
        else:
            probe = ref.train_probe(data["x_train"][layer], data["y_train"])
        x, y = (data["x_train"], data["y_train"]) if evaluate_on_train else (data["x_test"], data["y_test"])
        with torch.no_grad():
            scores = torch.sigmoid(probe(x[layer])) if threshold_probability_at_zero else probe(x[layer])
        accuracies.append(((scores > 0) == y.bool()).float().mean())
    return torch.stack(accuracies)


def _accuracy_cases() -> list[dict]:
    truth = organism_data("truth", "truth")
    generator = torch.Generator().manual_seed(5)
    shuffled = dict(truth, y_train=truth["y_train"][torch.randperm(len(truth["y_train"]), generator=generator)])
    # A small training split comes first: there, scoring on the training split (0.97) and training
    # on both splits (0.92) give different accuracies from each other and from the right one
    # (0.82), so each of those mistakes is named for what it is.
    small = synthetic_data(2, offset=3.0, separation=0.3)
    small = {"x_train": small["x_train"][:40], "y_train": small["y_train"][:40],
             "x_test": torch.cat([small["x_train"][40:], small["x_test"]]),
             "y_test": torch.cat([small["y_train"][40:], small["y_test"]])}
    one_layer = {k: (v[None] if k.startswith("x") else v) for k, v in small.items()}  # [1, batch, d_model]
    return [one_layer, shuffled, _as_layers(synthetic_data(2)), truth]


@functools.cache
def _accuracy_expectations(case: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    data = _accuracy_cases()[case]
    expected = ref.probe_accuracy_by_layer(data["x_train"], data["y_train"], data["x_test"], data["y_test"])
    return expected, {
        "that is the accuracy on the training prompts: score the probe on the held-out test split":
            _accuracy_variant(data, evaluate_on_train=True),
        "a probability is always above 0: predict label 1 where the logit is above 0 (probability above 0.5)":
            _accuracy_variant(data, threshold_probability_at_zero=True),
        "the probe was trained on the test prompts too: train on the training split only, then score it on "
        "the test split": _accuracy_variant(data, train_on_both=True),
    }


@exercise("2.3", "probe accuracy by layer", CHAPTER, ref.probe_accuracy_by_layer)
def check_probe_accuracy_by_layer(candidate) -> None:
    for case, data in enumerate(_accuracy_cases()):
        got = call(candidate, data["x_train"].clone(), data["y_train"].clone(),
                   data["x_test"].clone(), data["y_test"].clone())
        if isinstance(got, (list, tuple)) and all(isinstance(a, (int, float, torch.Tensor)) for a in got):
            raise Wrong(f"return a tensor of shape [layer]: torch.stack or torch.tensor your list of {len(got)} "
                        "accuracies")
        expected, mistakes = _accuracy_expectations(case)
        expect_tensor(got, expected, "your accuracies by layer", atol=0.03, mistakes=mistakes)


# ------------------------------------------------------------------------------------------
# 2.4
# ------------------------------------------------------------------------------------------
@exercise("2.4", "difference-of-means direction", CHAPTER, ref.mean_difference_direction)
def check_mean_difference_direction(candidate) -> None:
    sentiment = organism_data("sentiment", "sentiment")
    inputs = [(d["x_train"], d["y_train"]) for d in (synthetic_data(3, imbalance=0.25), synthetic_data(4))]
    inputs.append((sentiment["x_train"][-1], sentiment["y_train"]))
    for x, y in inputs:
        expected = ref.mean_difference_direction(x, y)
        difference = x[y == 1].mean(0) - x[y == 0].mean(0)
        sums = x[y == 1].sum(0) - x[y == 0].sum(0)
        got = call(candidate, x.clone(), y.clone())
        expect_tensor(got, expected, "your direction", atol=1e-4, mistakes={
            "the direction points the wrong way: label-1 mean minus label-0 mean": -expected,
            "scale the difference to unit length (divide by its norm)": difference,
            "use the mean of each class, not the sum (the classes have different sizes)": sums / sums.norm(),
        })


# ------------------------------------------------------------------------------------------
# 2.5
# ------------------------------------------------------------------------------------------
def _direction_variant(direction, data, zero_threshold=False, positive_side=False, test_means=False):
    x_train, y_train = (data["x_test"], data["y_test"]) if test_means else (data["x_train"], data["y_train"])
    train_projection, test_projection = x_train @ direction, data["x_test"] @ direction
    mean_0, mean_1 = train_projection[y_train == 0].mean(), train_projection[y_train == 1].mean()
    threshold = 0.0 if zero_threshold else (mean_0 + mean_1) / 2
    sign = 1.0 if positive_side or zero_threshold else torch.sign(mean_1 - mean_0)
    predicted = (test_projection - threshold) * sign > 0
    return (predicted == data["y_test"].bool()).float().mean().item()


@exercise("2.5", "classify with a direction", CHAPTER, ref.direction_accuracy)
def check_direction_accuracy(candidate) -> None:
    sentiment = organism_data("sentiment", "sentiment")
    organism_layer = {k: (v[2] if k.startswith("x") else v) for k, v in sentiment.items()}
    generator = torch.Generator().manual_seed(6)
    for data in (synthetic_data(5), organism_layer):
        mean_direction = ref.mean_difference_direction(data["x_train"], data["y_train"])
        random_direction = torch.randn(data["x_train"].shape[1], generator=generator)
        for direction in (mean_direction, -mean_direction, random_direction):
            expected = ref.direction_accuracy(direction, data["x_train"], data["y_train"], data["x_test"], data["y_test"])
            got = call(candidate, direction.clone(), data["x_train"].clone(), data["y_train"].clone(),
                       data["x_test"].clone(), data["y_test"].clone())
            expect_close(got, expected, "your accuracy", atol=1e-4, mistakes={
                "activations are not centred: put the threshold halfway between the two class means, not at 0":
                    _direction_variant(direction, data, zero_threshold=True),
                "this direction points towards label 0: predict 1 on the side of the label-1 mean, "
                "whichever sign that is": _direction_variant(direction, data, positive_side=True),
                "take the class means from the training split only; the test labels are for scoring":
                    _direction_variant(direction, data, test_means=True),
            })


# ------------------------------------------------------------------------------------------
# 2.6
# ------------------------------------------------------------------------------------------
@exercise("2.6", "cosine similarity between directions", CHAPTER, ref.cosine_similarity_matrix)
def check_cosine_similarity_matrix(candidate) -> None:
    generator = torch.Generator().manual_seed(7)
    random_rows = torch.randn(5, 16, generator=generator) * torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])[:, None]
    truth, sentiment = organism_data("truth", "truth"), organism_data("sentiment", "sentiment")
    organism_rows = torch.stack([ref.mean_difference_direction(d["x_train"][layer], d["y_train"]) * (layer + 1)
                                 for d in (truth, sentiment) for layer in range(1, 4)])
    for directions in (random_rows, organism_rows):
        expected = ref.cosine_similarity_matrix(directions)
        got = call(candidate, directions.clone())
        by_columns = directions / directions.norm(dim=0, keepdim=True)
        expect_tensor(got, expected, "your similarity matrix", atol=1e-4, mistakes={
            "these are plain dot products: scale every direction to unit length first": directions @ directions.T,
            "normalise each row (one direction), not each column: norm(dim=-1, keepdim=True)": by_columns @ by_columns.T,
        })


# ------------------------------------------------------------------------------------------
# 2.7
# ------------------------------------------------------------------------------------------
def _labelling(keys: list, labels, name: str) -> dict:
    """{key: label} from a learner's labels, after checking they are 0/1 longs, one label per key."""
    if not isinstance(labels, torch.Tensor):
        raise Wrong(f"{name} should be a long tensor of shape [{len(keys)}], got {type(labels).__name__}")
    if labels.shape != (len(keys),):
        raise Wrong(f"{name} has shape {list(labels.shape)}, expected [{len(keys)}] (one label per prompt)")
    if labels.dtype != torch.long:
        raise Wrong(f"return a long (int64) tensor of 0/1 labels, got dtype {labels.dtype}")
    values = sorted(set(labels.tolist()))
    if not set(values) <= {0, 1}:
        raise Wrong(f"{name} should hold only 0 and 1, got the values {values[:6]}")
    label_of = {}
    for key, label in zip(keys, labels.tolist()):
        if label_of.setdefault(key, label) != label:
            raise Wrong(f"the key {key!r} got labels {label_of[key]} and {label}: the same key must "
                        "always get the same label (draw one label per distinct key, not per prompt)")
    return label_of


def _control_cases() -> list[tuple[list, int]]:
    return [
        (["b", "a", "b", "c", "a", "d", "e", "c"], 0),
        (prompt_set("sentiment", "train", n=200, seed=2).labels["adjective"], 1),
        (prompt_set("truth", "train", n=120, seed=2).labels["country"], 4),
    ]


@exercise("2.7", "control-task labels", CHAPTER, ref.control_task_labels)
def check_control_task_labels(candidate) -> None:
    """Properties any correct labelling has: one label per key, half the keys labelled 1, fixed by
    the seed alone (not by the order of the prompts), and different for different seeds."""
    generator = torch.Generator().manual_seed(7)
    for keys, seed in _control_cases():
        label_of = _labelling(keys, call(candidate, list(keys), seed), "your control labels")
        ones, distinct = sum(label_of.values()), len(label_of)
        if ones not in (distinct // 2, (distinct + 1) // 2):
            raise Wrong(f"{ones} of the {distinct} distinct keys got label 1: balance the labels, half the "
                        "distinct keys each (randperm(n) % 2 does that)")
        order = torch.randperm(len(keys), generator=generator).tolist()
        shuffled = [keys[i] for i in order]
        again = _labelling(shuffled, call(candidate, shuffled, seed), "your control labels")
        moved = [key for key in label_of if again[key] != label_of[key]]
        if moved:
            raise Wrong(f"with the prompts in another order, {len(moved)} of {distinct} keys changed label "
                        f"(e.g. {moved[0]!r}): sort the distinct keys before assigning labels (sorted(set(keys))), "
                        "so the labels depend only on the keys and the seed")
    keys = _control_cases()[1][0]
    by_seed = {seed: _labelling(keys, call(candidate, list(keys), seed), "your control labels") for seed in (1, 2, 3)}
    if by_seed[1] == by_seed[2] == by_seed[3]:
        raise Wrong(f"seeds 1, 2 and 3 gave the same labels for all {len(by_seed[1])} keys: draw them from a "
                    "generator seeded with `seed` (torch.Generator().manual_seed(seed))")


# ------------------------------------------------------------------------------------------
# 2.8
# ------------------------------------------------------------------------------------------
@exercise("2.8", "remove a direction", CHAPTER, ref.remove_direction)
def check_remove_direction(candidate) -> None:
    generator = torch.Generator().manual_seed(8)
    sentiment = organism_data("sentiment", "sentiment")
    cases = [
        (torch.randn(3, 4, 16, generator=generator), torch.randn(16, generator=generator) * 3),
        (torch.randn(16, generator=generator), torch.randn(16, generator=generator) * 0.2),
        (sentiment["x_test"][2:4, :10], ref.mean_difference_direction(sentiment["x_train"][3], sentiment["y_train"]) * 7),
    ]
    for resid, direction in cases:
        expected = ref.remove_direction(resid, direction)
        got = call(candidate, resid.clone(), direction.clone())
        component = resid - expected
        expect_tensor(got, expected, "your result", atol=1e-3, mistakes={
            "scale the direction to unit length before projecting": resid - (resid @ direction)[..., None] * direction,
            "that is the component along the direction: subtract it from resid": component,
        })


# ------------------------------------------------------------------------------------------
# 2.9
# ------------------------------------------------------------------------------------------
def _ablation_variant(model, prompts, directions: dict, kind: str):
    items = list(directions.items())
    if kind == "last direction":
        hooks = [(name, lambda resid, hook: ref.remove_direction(resid, items[-1][1])) for name, _ in items]
    elif kind == "first only":
        hooks = [(items[0][0], lambda resid, hook: ref.remove_direction(resid, items[0][1]))]
    else:  # final column only
        def final_only(resid, direction):
            resid = resid.clone()
            resid[:, -1] = ref.remove_direction(resid[:, -1], direction)
            return resid
        hooks = [(name, lambda resid, hook, direction=direction: final_only(resid, direction)) for name, direction in items]
    return ref.logit_diffs(model, prompts, fwd_hooks=hooks)


def _ablation_cases() -> list:
    model = organism()
    names = ref.residual_hook_names(model.cfg.n_layers)
    sentiment = organism_data("sentiment", "sentiment")
    generator = torch.Generator().manual_seed(9)
    mean_directions = [ref.mean_difference_direction(x, sentiment["y_train"]) for x in sentiment["x_train"]]
    return [
        (prompt_set("sentiment", "test", n=24, seed=4), {names[-1]: mean_directions[-1], names[1]: mean_directions[1]}),
        (prompt_set("ioi", "test", n=24, seed=4),
         {name: torch.randn(model.cfg.d_model, generator=generator) * 2 for name in names}),
    ]


@functools.cache
def _ablation_expectations(case: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = organism()
    prompts, directions = _ablation_cases()[case]
    expected = ref.logit_diffs_without(model, prompts, directions)
    return expected, {
        "every hook removed the same (last) direction: a lambda made in a loop sees the loop variable's final "
        "value; bind it, lambda resid, hook, direction=direction: ...":
            _ablation_variant(model, prompts, directions, "last direction"),
        "only one direction was removed: add one hook for every name in `directions`":
            _ablation_variant(model, prompts, directions, "first only"),
        "remove the direction at every position, not only the last column (which is padding for short prompts)":
            _ablation_variant(model, prompts, directions, "final column"),
    }


@exercise("2.9", "the output with directions removed", CHAPTER, ref.logit_diffs_without)
def check_logit_diffs_without(candidate) -> None:
    model = organism()
    for case, (prompts, directions) in enumerate(_ablation_cases()):
        got = call(candidate, model, prompts, {name: d.clone() for name, d in directions.items()})
        expected, mistakes = _ablation_expectations(case)
        expect_tensor(got, expected, "your logit differences", atol=1e-3, mistakes=mistakes)
