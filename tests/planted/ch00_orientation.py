"""Realistic mistakes for Chapter 00, each with the hint its check must give."""

import torch

from utils.references import ch00_orientation as ref


def risk_inclusive(age, income):
    return ((age <= 0.3) & (income <= 0.5)) | (income <= 0.2)


def risk_first_rule_only(age, income):
    return (age < 0.3) & (income < 0.5)


def hidden_without_relu(network, x):
    return x @ network.hidden.weight.T + network.hidden.bias


def hidden_without_bias(network, x):
    return torch.relu(x @ network.hidden.weight.T)


def contributions_are_activations(network, x):
    return ref.hidden_activations(network, x)


def contributions_with_bias_shared(network, x):
    hidden = ref.hidden_activations(network, x)
    return hidden * network.output.weight[0] + network.output.bias / hidden.shape[1]


def predict_from_first_position(model, prompt):
    return model.to_string(model(prompt)[0, 0].argmax())


def predict_token_id(model, prompt):
    return int(model(prompt)[0, -1].argmax())


def residual_without_positions(cache, n_layers):
    return ref.residual_from_components(cache, n_layers) - cache["hook_pos_embed"]


def residual_last_layer_only(cache, n_layers):
    last = n_layers - 1
    return (cache["hook_embed"] + cache["hook_pos_embed"]
            + cache[f"blocks.{last}.hook_attn_out"] + cache[f"blocks.{last}.hook_mlp_out"])


MISTAKES = {
    "0.1": [(risk_inclusive, "threshold is inclusive"), (risk_first_rule_only, "second rule is missing")],
    "0.2": [(hidden_without_relu, "ReLU is missing"), (hidden_without_bias, "bias is missing")],
    "0.3": [(contributions_are_activations, "multiply each by its output weight"),
            (contributions_with_bias_shared, "leave the output bias out")],
    "0.4": [(predict_from_first_position, "first position"), (predict_token_id, "as a string")],
    "0.5": [(residual_without_positions, "positional embedding"), (residual_last_layer_only, "only the last layer")],
}
