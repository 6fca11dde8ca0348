"""Realistic mistakes for Chapter 00, each with the hint its check must give, and correct answers
written differently from the reference, which the checks must accept."""

import torch
import torch.nn.functional as F

from utils.references import ch00_orientation as ref


# 0.1 -------------------------------------------------------------------------------------------
def risk_inclusive(age, income):
    return ((age <= 0.3) & (income <= 0.5)) | (income <= 0.2)


def risk_first_rule_only(age, income):
    return (age < 0.3) & (income < 0.5)


def risk_with_logical_functions(age, income):
    young_and_poor = torch.logical_and(torch.lt(age, 0.3), torch.lt(income, 0.5))
    return torch.logical_or(young_and_poor, torch.lt(income, 0.2))


def risk_one_applicant_at_a_time(age, income):
    labels = [(a < 0.3 and i < 0.5) or i < 0.2 for a, i in zip(age.flatten().tolist(), income.flatten().tolist())]
    return torch.tensor(labels, dtype=torch.bool).reshape(age.shape)


def risk_with_where(age, income):
    return torch.where(income < 0.2, True, (age < 0.3) & (income < 0.5))


# 0.2 -------------------------------------------------------------------------------------------
def hidden_without_relu(network, x):
    return x @ network.hidden.weight.T + network.hidden.bias


def hidden_without_bias(network, x):
    return torch.relu(x @ network.hidden.weight.T)


def hidden_with_einsum_in_float64(network, x):
    pre = torch.einsum("bi,hi->bh", x.double(), network.hidden.weight.double()) + network.hidden.bias.double()
    return pre.clamp(min=0)


def hidden_with_functional_linear(network, x):
    return F.relu(F.linear(x, network.hidden.weight, network.hidden.bias))


def hidden_one_unit_at_a_time(network, x):
    units = [torch.maximum(x @ w + b, torch.zeros(())) for w, b in zip(network.hidden.weight, network.hidden.bias)]
    return torch.stack(units, dim=-1)


# 0.3 -------------------------------------------------------------------------------------------
def contributions_are_activations(network, x):
    return ref.hidden_activations(network, x)


def contributions_with_bias_shared(network, x):
    hidden = ref.hidden_activations(network, x)
    return hidden * network.output.weight[0] + network.output.bias / hidden.shape[1]


def contributions_in_float64(network, x):
    x, weight, bias = x.double(), network.hidden.weight.double(), network.hidden.bias.double()
    hidden = torch.relu(x @ weight.T + bias)
    return hidden * network.output.weight.double().squeeze(0)


def contributions_with_einsum(network, x):
    hidden = torch.relu(network.hidden(x))
    return torch.einsum("bh,oh->bh", hidden, network.output.weight)


# 0.4 -------------------------------------------------------------------------------------------
def predict_from_first_position(model, prompt):
    return model.to_string(model(prompt)[0, 0].argmax())


def predict_token_id(model, prompt):
    return int(model(prompt)[0, -1].argmax())


def predict_from_tokens_and_probabilities(model, prompt):
    tokens = model.to_tokens(prompt)  # [1, pos]
    probabilities = model(tokens).softmax(-1)  # [1, pos, d_vocab]
    return model.to_str_tokens(probabilities[0, -1].argmax().unsqueeze(0))[0]


def predict_with_topk_and_no_grad(model, prompt):
    with torch.no_grad():
        top = model(prompt)[:, -1].topk(1, dim=-1).indices  # [1, 1]
    return model.to_string(top[0])


# 0.5 -------------------------------------------------------------------------------------------
def residual_without_positions(cache, n_layers):
    return ref.residual_from_components(cache, n_layers) - cache["hook_pos_embed"]


def residual_last_layer_only(cache, n_layers):
    last = n_layers - 1
    return (cache["hook_embed"] + cache["hook_pos_embed"]
            + cache[f"blocks.{last}.hook_attn_out"] + cache[f"blocks.{last}.hook_mlp_out"])


def residual_every_layer_of_the_model(cache, n_layers):
    """Ignores n_layers: right only when it is the model's own depth."""
    layers = 1 + max(int(name.split(".")[1]) for name in cache.keys() if name.startswith("blocks."))
    return ref.residual_from_components(cache, layers)


def residual_stacked_and_summed(cache, n_layers):
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{layer}.hook_{kind}_out"
                                               for layer in range(n_layers) for kind in ("attn", "mlp")]
    return torch.stack([cache[name] for name in names]).sum(0)  # [component, batch, pos, d_model] -> sum


def residual_in_float64(cache, n_layers):
    total = cache["hook_embed"].double()
    total += cache["hook_pos_embed"].double()  # in place, but on our own float64 copy
    for layer in range(n_layers):
        total += cache[f"blocks.{layer}.hook_attn_out"].double() + cache[f"blocks.{layer}.hook_mlp_out"].double()
    return total


def residual_added_into_the_cache(cache, n_layers):
    total = cache["hook_embed"]  # not a copy: += below changes the cache itself
    total += cache["hook_pos_embed"]
    for layer in range(n_layers):
        total += cache[f"blocks.{layer}.hook_attn_out"] + cache[f"blocks.{layer}.hook_mlp_out"]
    return total


MISTAKES = {
    "0.1": [(risk_inclusive, "'below' is strict"), (risk_first_rule_only, "second rule is missing")],
    "0.2": [(hidden_without_relu, "ReLU is missing"), (hidden_without_bias, "bias is missing")],
    "0.3": [(contributions_are_activations, "multiply each by its output weight"),
            (contributions_with_bias_shared, "leave the output bias out")],
    "0.4": [(predict_from_first_position, "first position"), (predict_token_id, "as a string")],
    "0.5": [(residual_without_positions, "positional embedding"), (residual_last_layer_only, "only the last layer"),
            (residual_every_layer_of_the_model, "with n_layers=2"),
            (residual_added_into_the_cache, "changed its input argument 1['hook_embed'] in place")],
}

ALTERNATIVES = {
    "0.1": [risk_with_logical_functions, risk_one_applicant_at_a_time, risk_with_where],
    "0.2": [hidden_with_einsum_in_float64, hidden_with_functional_linear, hidden_one_unit_at_a_time],
    "0.3": [contributions_in_float64, contributions_with_einsum],
    "0.4": [predict_from_tokens_and_probabilities, predict_with_topk_and_no_grad],
    "0.5": [residual_stacked_and_summed, residual_in_float64],
}
