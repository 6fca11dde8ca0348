"""Checks for Chapter 00 (orientation). Expected values come from the exported reference."""

from __future__ import annotations

import functools

import torch

from utils.checks import Wrong, call, call_on_inputs, exercise, expect_equal, expect_tensor
from utils.models import load_model
from utils.references import ch00_orientation as ref

CHAPTER = "00_orientation"


@functools.cache
def organism():
    """The bundled model, loaded once for all checks."""
    return load_model(verbose=False, device="cpu")


@functools.cache
def toy_networks() -> tuple:
    """Reference networks of two sizes, so a check cannot pass by hard-coding three units."""
    return ref.train_risk_network(seed=0), ref.train_risk_network(seed=1, n_hidden=5, steps=300)


def _applicants() -> torch.Tensor:
    """The grid plus points exactly on the rule's thresholds."""
    edges = torch.tensor([[0.3, 0.4], [0.29, 0.49], [0.9, 0.2], [0.9, 0.19], [0.3, 0.5], [0.1, 0.5]])
    return torch.cat([ref.applicant_grid(21), edges])  # [batch, 2]


def _risk_mistakes(age: torch.Tensor, income: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "'below' is strict: use <, not <=, so an applicant exactly on a threshold (age 0.3, income 0.5 or 0.2) "
        "is not below it": ((age <= 0.3) & (income <= 0.5)) | (income <= 0.2),
        "the second rule is missing: income below 0.2 is high risk at any age": (age < 0.3) & (income < 0.5),
        "the two conditions of the first rule need 'and' (&), not 'or' (|)":
            (age < 0.3) | (income < 0.5) | (income < 0.2),
    }


@exercise("0.1", "a rule-based model", CHAPTER, ref.rule_based_risk)
def check_rule_based_risk(candidate) -> None:
    x = _applicants()
    edges = x[-6:]  # the points on the thresholds
    inputs = {"your risk labels": (x[:, 0], x[:, 1]),
              "your labels for a 2-D batch": (edges[:, 0].reshape(3, 2), edges[:, 1].reshape(3, 2)),  # any shape
              "your labels for float64 inputs": (edges[:, 0].double(), edges[:, 1].double())}
    results = call_on_inputs(candidate, [((age.clone(), income.clone()), {}) for age, income in inputs.values()])
    for (name, (age, income)), got in zip(inputs.items(), results):
        expect_tensor(got, ref.rule_based_risk(age, income), name, mistakes=_risk_mistakes(age, income))


@exercise("0.2", "hidden activations by hand", CHAPTER, ref.hidden_activations)
def check_hidden_activations(candidate) -> None:
    for network in toy_networks():
        x = _applicants()
        with torch.no_grad():
            expected = ref.hidden_activations(network, x)
            pre_activation = x @ network.hidden.weight.T + network.hidden.bias
            got = call(candidate, network, x)
        expect_tensor(got, expected, "your hidden activations", mistakes={
            "the ReLU is missing: negative pre-activations should become 0": pre_activation,
            "the bias is missing: add network.hidden.bias before the ReLU": torch.relu(x @ network.hidden.weight.T),
        })


@exercise("0.3", "split the output into unit contributions", CHAPTER, ref.unit_contributions)
def check_unit_contributions(candidate) -> None:
    for network in toy_networks():
        x = _applicants()
        with torch.no_grad():
            expected = ref.unit_contributions(network, x)
            hidden = ref.hidden_activations(network, x)
            got = call(candidate, network, x)
            bias_split = expected + network.output.bias / hidden.shape[1]
        expect_tensor(got, expected, "your contributions", mistakes={
            "these are the hidden activations; multiply each by its output weight": hidden,
            "leave the output bias out: it belongs to no unit": bias_split,
        })
        with torch.no_grad():
            total = got.double().sum(-1) + network.output.bias.double()  # any float dtype is fine
            gap = (total - network(x).double()).abs().max().item()
        if gap > 1e-4:
            raise Wrong(f"your contributions plus the bias miss network(x) by up to {gap:.3g}")


PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "The movie was dreadful. I",
    "red fox Monday blue cat red fox Monday blue",
]


@exercise("0.4", "from text to a prediction", CHAPTER, ref.predict_next_token)
def check_predict_next_token(candidate) -> None:
    model = organism()
    for prompt in PROMPTS:
        logits = model(prompt)  # [1, pos, d_vocab]
        expected = ref.predict_next_token(model, prompt)
        got = call(candidate, model, prompt)
        top_id = int(logits[0, -1].argmax())
        expect_equal(got, expected, f"your prediction after {prompt!r}", mistakes={
            "that is the prediction at the first position; the next token comes from the last, logits[0, -1]":
                model.to_string(logits[0, 0].argmax()),
            "return the token as a string: model.to_string(token_id)": top_id,
            "that is the least likely token: use argmax, not argmin": model.to_string(logits[0, -1].argmin()),
        })


def residual_caches() -> list:
    """Two cached runs of the organism on prompts of different lengths and batch sizes (made
    afresh for every check, so that nothing an answer does to one can reach another check)."""
    model = organism()
    batches = [["When Mary and John went to the store, John gave a drink to",
                "The capital of France is Paris. That is true."],
               ["red fox Monday blue cat red fox"]]
    with torch.no_grad():
        return [model.run_with_cache(prompts)[1] for prompts in batches]


@exercise("0.5", "rebuild the residual stream", CHAPTER, ref.residual_from_components)
def check_residual_from_components(candidate) -> None:
    n_model_layers = organism().cfg.n_layers
    for cache, n_layers in zip(residual_caches() * 2, (n_model_layers, n_model_layers, 2, 1)):
        _check_residual(candidate, cache, n_layers)


def _check_residual(candidate, cache, n_layers: int) -> None:
    """One cache, the first `n_layers` blocks: the sum must be blocks.{n_layers - 1}.hook_resid_post."""
    expected = ref.residual_from_components(cache, n_layers)
    last = n_layers - 1
    without_positions = expected - cache["hook_pos_embed"]
    last_layer_only = (cache["hook_embed"] + cache["hook_pos_embed"]
                       + cache[f"blocks.{last}.hook_attn_out"] + cache[f"blocks.{last}.hook_mlp_out"])
    no_mlps = expected - sum(cache[f"blocks.{layer}.hook_mlp_out"] for layer in range(n_layers))
    got = call(candidate, cache, n_layers)
    name = f"your residual stream with n_layers={n_layers}"
    expect_tensor(got, expected, name, atol=1e-3, mistakes={
        "the positional embedding (hook_pos_embed) is missing": without_positions,
        "only the last layer was added: loop over every layer": last_layer_only,
        "the MLP outputs (hook_mlp_out) are missing": no_mlps,
    })
    gap = (got.detach().double() - cache[f"blocks.{last}.hook_resid_post"].double()).abs().max().item()
    if gap > 1e-3:
        raise Wrong(f"{name} misses blocks.{last}.hook_resid_post by up to {gap:.3g}")
