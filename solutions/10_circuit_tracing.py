# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 10: Circuit tracing with transcoders and attribution graphs
#
# **Time:** about 4 hours. **Exercises:** 8, each checked as soon as you run the cell after it.
# *Run All* takes under three minutes on a 2-core laptop CPU (longer when the machine is busy): the
# transcoders ship with the organism, and the chapter trains only a small one to show the recipe.
#
# **You will learn to**
# - replace each MLP of the organism with a **transcoder**, a sparse, wide layer trained to map the
#   MLP's input to its output, and measure it: explained variance, L0, dead features, and how much of
#   the next-token loss survives when every MLP is replaced at once;
# - build the **local replacement model** of one prompt: attention patterns and LayerNorm scales
#   frozen from the real run, MLPs replaced by transcoders plus **error terms**, so that it
#   reproduces the real logits exactly, and attribution through it, with the active features'
#   activations held fixed, is linear;
# - compute an **attribution graph**: the direct effect of every input token, transcoder feature and
#   error node on every feature and on the answer's logit, with one backward pass per target, and
#   say why that is exact here; prune it by **influence**; draw it;
# - **grade** graphs against the world: does the graph route the answer through the token and the
#   features the world's labels say it should, for facts, truth, IOI and sentiment prompts?
# - **validate** a graph by intervening on the real model, and find where the prediction fails;
# - say what an attribution graph can't tell you, with numbers.
#
# **Seed concepts:** transcoders and replacement models; error nodes; the local replacement model;
# attribution graphs (direct effects through frozen attention and normalisation); pruning by
# influence; validation by intervention; the limits of a graph that explains the replacement rather
# than the model.
#
# Chapter 05 learned a sparse dictionary for one activation; Chapter 06 found a circuit by patching.
# This chapter joins them: the field's newest circuit method (transcoders, Dunefsky et al. 2024;
# attribution graphs, Ameisen et al. 2025 and Lindsey et al. 2025, and the open-source
# `circuit-tracer` library that implements them) reads one prompt's computation as a graph of
# feature-to-feature effects. This chapter writes the method itself, on the bridge, as the earlier
# chapters do, and every graph is graded against a world we wrote.

# %%
import torch

from utils import check_exercise, load_model, setup, show_progress

env = setup()
model = load_model()
torch.set_grad_enabled(False)  # most of the chapter only runs the model; the attribution cells turn gradients on

# %% [markdown]
# ## 1. Transcoders
#
# A sparse autoencoder (Chapter 05) reconstructs an activation from itself. A **transcoder**
# (Dunefsky, Chlenski and Nanda, 2024) reads the input of an MLP and predicts the MLP's *output*,
# through the same kind of sparse, wide layer:
#
# `features = TopK_k(ReLU(x W_enc + b_enc))`, `mlp_out_hat = features W_dec + b_dec`,
#
# where `x` is the MLP's input (`blocks.L.mlp.hook_in`, the output of the block's second LayerNorm,
# whose weights the bridge folds into the MLP) and the target is `blocks.L.hook_mlp_out`. Only the
# `k` largest pre-activations of each token survive (TopK, Gao et al. 2024). Why bother? An MLP's
# 1,024 GELU neurons are almost never exactly zero, so all of them take part in every token, each
# through a nonlinearity; a transcoder's features are sparse (16 of 512 per token), and once you
# know which are active, the MLP's contribution is a *sum of fixed output directions*. That is what makes the graph of Section 3 linear.
#
# The organism ships with four transcoders, one per MLP, each with 512 features and `k = 16`
# (`utils/organism/transcoders/`, with a card: how they were trained and what they measure). The
# trainer is twenty lines (`utils.organism.transcoders.train_transcoder`): Adam on the squared error
# over the output's variance, `b_dec` started at the mean output. To see it run, we train a small
# one for the MLP of layer 1 on a few thousand tokens of world text.
#
# **SAELens.** The pinned SAELens (6.54) has transcoder classes (`Transcoder`, `SkipTranscoder`,
# `JumpReLUTranscoder`) for *loading* published ones, but no transcoder among its trainable
# architectures (its `SAETrainer` fits SAEs that reconstruct their own input), so there is no
# library trainer to race ours against here; its `Transcoder` uses a plain ReLU, not TopK.

# %% tags=["export"]
import math

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from utils.memo import memoized
from utils.organism import transcoders as organism_transcoders
from utils.organism import world
from utils.organism.transcoders import Transcoder, input_hook, output_hook
from utils.references.ch02_probing import answer_ids

# %%
import time

from utils.organism.sae import world_rows

demo_rows = world_rows(model.tokenizer, 2 ** 13, seed=11)
demo_pairs = organism_transcoders.cache_mlp_pairs(model, demo_rows, layers=[1])
demo_x, demo_y = (tensor.to(model.cfg.device) for tensor in demo_pairs[1])
start = time.perf_counter()
with torch.enable_grad():
    demo_transcoder, demo_losses = organism_transcoders.train_transcoder(demo_x[:-1024], demo_y[:-1024], d_transcoder=256,
                                                                       k=16, steps=150, progress=True)
print(f"a 256-feature transcoder for MLP 1: {time.perf_counter() - start:.0f} s, "
      f"final training loss {demo_losses[-1]:.3f} (1 minus the fraction of variance explained)")
shipped = organism_transcoders.load_transcoders(device=model.cfg.device)

# %% [markdown]
# ### Exercise 10.1: transcoder metrics (difficulty 1/3, ~15 min)
# Write `transcoder_metrics(transcoder, x, y)`: `x` is `[token, d_model]` MLP inputs, `y` the MLP's
# outputs on the same tokens. Return a dict of floats:
# - `"explained_variance"`: one minus the squared error of `transcoder(x)` against `y`, summed over
#   tokens and dimensions, over the total variance of `y` (squared deviations from `y`'s mean over
#   tokens, summed the same way);
# - `"l0"`: the mean number of non-zero features per token (`transcoder.encode(x)`);
# - `"dead_fraction"`: the fraction of features that are zero on every token of `x`.
#
# <details><summary>Hint 1</summary>
#
# Chapter 05's `sae_metrics` computed the same numbers for an SAE. One thing differs: what the
# transcoder reconstructs.
# </details>
# <details><summary>Hint 2</summary>
#
# `features = transcoder.encode(x)` is `[token, d_tc]`; `transcoder.decode(features)` is `[token, d_model]`.
# The variance that counts is `y`'s: `(y - y.mean(0)).pow(2).sum()`.
# </details>
# <details><summary>Hint 3</summary>
#
# `active = features > 0`; `l0 = active.float().sum(-1).mean()`; `dead = (active.sum(0) == 0).float().mean()`;
# `.item()` each number; compute under `torch.no_grad()`.
# </details>

# %% tags=["export"]
def transcoder_metrics(transcoder, x: Float[Tensor, "token d_model"], y: Float[Tensor, "token d_model"]) -> dict[str, float]:
    """Explained variance of the MLP output, L0 and the dead fraction of a transcoder on (input, output) pairs."""
    ### BEGIN SOLUTION
    with torch.no_grad():
        features = transcoder.encode(x)  # [token, d_tc]
        prediction = transcoder.decode(features)  # [token, d_model]
        active = features > 0
        return {
            "explained_variance": 1 - ((prediction - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item(),
            "l0": active.float().sum(-1).mean().item(),
            "dead_fraction": (active.sum(0) == 0).float().mean().item(),
        }
    ### END SOLUTION


# %%
transcoder_metrics = check_exercise("10.1", transcoder_metrics)

# %%
held_x, held_y = demo_x[-1024:], demo_y[-1024:]
metric_table = pd.DataFrame({"small transcoder trained above (256 features)": transcoder_metrics(demo_transcoder, held_x, held_y),
                             "shipped transcoder (512 features)": transcoder_metrics(shipped[1], held_x, held_y)}).T
metric_table.round(3)

# %% [markdown]
# Compare the small transcoder, trained for seconds on a few thousand tokens, with the shipped one
# on the same held-out tokens. Every MLP's shipped transcoder, on the card's held-out tokens (the
# test module re-measures them on fresh text, and rebuilds one by the card's recipe):

# %%
card = organism_transcoders.load_card_metrics()
pd.DataFrame(card["layers"]).T.rename_axis("layer").round(3)

# %% [markdown]
# ### The replacement model
# A transcoder's explained variance is measured in its own terms. What matters for circuit tracing
# is whether the model still works when **every** MLP is replaced at once: the **replacement
# model**. Each transcoder then reads the *replacement's* residual stream, in which the earlier
# transcoders' errors have already accumulated, not the real model's.
#
# ### Exercise 10.2: the replacement model's loss (difficulty 2/3, ~20 min)
# Write `replacement_loss(model, transcoders, tokens, keep, layers)`: the mean next-token loss
# (`model.run_with_hooks(tokens, return_type="loss", fwd_hooks=...)`) when the MLP output of every
# layer in `layers` is replaced, where `keep` (`[batch, pos]`, bool) is True, by `transcoders[layer]`
# applied to that MLP's input *in the same forward pass*. `transcoders` is a list with one
# transcoder per layer; `layers` a list of layer indices. Return a float. As in Exercise 5.7, the
# chapter passes `keep` False at end-of-text tokens and each row's first position: the transcoders
# never saw those atypical activations in training.
#
# <details><summary>Hint 1</summary>
#
# Two hooks per layer: one on the MLP's input (`input_hook(layer)`, i.e. `blocks.L.mlp.hook_in`) that
# remembers the activation, one on its output (`output_hook(layer)`, `blocks.L.hook_mlp_out`) that
# returns the transcoder's prediction instead, where `keep` is True.
# </details>
# <details><summary>Hint 2</summary>
#
# Precomputing the transcoders' outputs from a clean `run_with_cache` is a different (and wrong)
# model: it feeds each transcoder the real residual stream. Store the input in a dict inside the
# same `run_with_hooks` call. Beware of loop variables captured by hook functions (bind `layer`
# as a default argument).
# </details>
# <details><summary>Hint 3</summary>
#
# `def remember(x, hook, layer=layer): inputs[layer] = x` and
# `def replace(out, hook, layer=layer): return torch.where(keep[..., None], transcoders[layer](inputs[layer]), out)`;
# then `model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()` under `torch.no_grad()`.
# </details>

# %% tags=["export"]
def replacement_loss(model, transcoders: list, tokens: Int[Tensor, "batch pos"], keep: Bool[Tensor, "batch pos"],
                     layers: list[int]) -> float:
    """Mean next-token loss with the MLPs of `layers` replaced where `keep` is True by their transcoders
    (each reading the replacement's own stream)."""
    ### BEGIN SOLUTION
    mask = keep[..., None]  # [batch, pos, 1]
    inputs = {}
    hooks = []
    for layer in layers:
        def remember(x, hook, layer=layer):
            inputs[layer] = x

        def replace(out, hook, layer=layer):
            return torch.where(mask, transcoders[layer](inputs[layer]), out)

        hooks += [(input_hook(layer), remember), (output_hook(layer), replace)]
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()
    ### END SOLUTION


# %%
replacement_loss = check_exercise("10.2", replacement_loss)

# %% tags=["export"]
def zero_mlp_loss(model, tokens: Int[Tensor, "batch pos"], keep: Bool[Tensor, "batch pos"], layers: list[int]) -> float:
    """Mean next-token loss with the MLPs of `layers` zero-ablated where `keep` is True: the floor of the scale."""
    mask = keep[..., None]  # [batch, pos, 1]
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss",
                                    fwd_hooks=[(output_hook(layer), lambda out, hook: torch.where(mask, 0.0, out))
                                               for layer in layers]).item()


def replacement_table(model, transcoders: list, tokens: Int[Tensor, "batch pos"], keep: Bool[Tensor, "batch pos"]
                      ) -> pd.DataFrame:
    """Loss with each MLP replaced alone and with all four, and the share of the loss gap recovered."""
    with torch.no_grad():
        clean = model(tokens, return_type="loss").item()
    rows = {}
    for layers in [[layer] for layer in range(model.cfg.n_layers)] + [list(range(model.cfg.n_layers))]:
        name = "all four MLPs" if len(layers) > 1 else f"MLP {layers[0]}"
        replaced = replacement_loss(model, transcoders, tokens, keep, layers)
        zeroed = zero_mlp_loss(model, tokens, keep, layers)
        rows[name] = {"clean loss": clean, "replaced": replaced, "zero-ablated": zeroed,
                      "loss recovered": (zeroed - replaced) / (zeroed - clean)}
    return pd.DataFrame(rows).T


# %%
from utils.organism.sae import kept_positions

eval_rows = world_rows(model.tokenizer, 2 ** 11, seed=12).to(model.cfg.device)
eval_keep = kept_positions(eval_rows, model.tokenizer.eos_token_id)
replacement_table(model, shipped, eval_rows, eval_keep).style.format(precision=3)

# %% [markdown]
# Replacing one MLP at a time costs little: each transcoder alone keeps almost all of the loss that
# zero-ablating its MLP would lose. MLPs 1 and 2 matter least: zeroing MLP 1 costs about 0.05 nats
# and MLP 2 about 0.08 (on five samples of text, 0.04 to 0.08 and 0.07 to 0.12; the tests hold them
# under 0.1 and 0.15). MLP 1 cost less each time, but once by less than 0.01 nats, so only this
# sample's order is asserted. Zeroing MLP 0 or MLP 3 costs about a nat or more (the smaller of the
# two was 0.9 to 1.25 on those samples; the tests hold it above 0.8). With so small a denominator, the ratios of MLPs 1 and 2 are the least stable.
# Replacing all four at once costs more than any one alone, because each transcoder now reads a
# stream that earlier transcoders have already bent: errors compound. The test module holds the
# all-four ratio above 0.9 and the compounding.
#
# One more thing the `keep` mask hides: at end-of-text tokens and each row's first position, where
# the transcoders were never trained, their error is several times larger than elsewhere (the test
# module measures more than three times, for layer 2). Replaced there too, MLP 2's transcoder made
# the loss *worse than zero-ablating the MLP*. In a graph, that error shows up as error nodes at the
# first position, though they hold little of a graph's influence (Section 4 measures it).
#
# ## 2. The local replacement model
#
# The replacement model is still nonlinear: attention patterns depend on the residual stream, every
# LayerNorm divides by the stream's size, and each transcoder chooses its top `k` features. For one
# prompt, the **local replacement model** (Ameisen et al., 2025) freezes the first two at their values
# in the real run and adds error terms; the transcoders keep their activation function (a feature's
# activation is still TopK of its pre-activation). What becomes linear is the *attribution*: with
# every active feature's activation held fixed at its value in the real run (a stop-gradient on the
# activation function, as in the paper), each step from an input to a pre-activation or a logit is
# linear:
#
# - **attention patterns** are frozen at their values in the real run, so each head moves
#   information linearly (through its OV circuit, `W_V W_O`);
# - **LayerNorm scales** are frozen too, so each normalisation is a fixed linear map (subtract the
#   mean, divide by a fixed number);
# - each MLP becomes its transcoder plus an **error term** (the real MLP output minus the
#   transcoder's prediction, on this prompt); for attribution, its **active features** are treated
#   as given numbers, not recomputed.
#
# With the real run's feature activations and error terms plugged in, the local replacement gives
# exactly the real logits. And every quantity in it (a logit, or a feature's pre-activation) is an
# affine function of the inputs it treats as given: the token embeddings, the feature activations
# and the error terms.
#
# `freeze_run` records what the local replacement needs from one real run of one prompt (a
# `FrozenRun`): the embeddings (token plus position), the LayerNorm scales (`blocks.L.ln1.hook_scale`,
# `blocks.L.ln2.hook_scale`, `ln_final.hook_scale`), the attention patterns, the transcoders'
# feature activations on the real MLP inputs and the error terms, and the real logits.

# %% tags=["export"]
from dataclasses import dataclass


@dataclass
class FrozenRun:
    """What the local replacement of one prompt freezes from the real run (one prompt, no padding)."""

    tokens: Int[Tensor, "pos"]
    embeddings: Float[Tensor, "pos d_model"]
    ln1_scales: Float[Tensor, "layer pos 1"]
    ln2_scales: Float[Tensor, "layer pos 1"]
    final_scale: Float[Tensor, "pos 1"]
    patterns: Float[Tensor, "layer head_index query_pos key_pos"]
    features: Float[Tensor, "layer pos d_tc"]
    errors: Float[Tensor, "layer pos d_model"]
    logits: Float[Tensor, "pos d_vocab"]


def freeze_run(model, transcoders: list, tokens: Int[Tensor, "pos"]) -> FrozenRun:
    """Run the real model on one prompt and keep what its local replacement freezes."""
    n_layers = model.cfg.n_layers
    hooks = ("ln1.hook_scale", "ln2.hook_scale", "attn.hook_pattern", "mlp.hook_in", "hook_mlp_out")
    names = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale"} | {
        f"blocks.{layer}.{hook}" for layer in range(n_layers) for hook in hooks}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None].to(model.cfg.device), names_filter=lambda name: name in names)

        def stacked(hook: str) -> Tensor:
            return torch.stack([cache[f"blocks.{layer}.{hook}"][0] for layer in range(n_layers)])  # [layer, ...]

        features = torch.stack([transcoders[layer].encode(cache[input_hook(layer)][0])
                                for layer in range(n_layers)])  # [layer, pos, d_tc]
        errors = stacked("hook_mlp_out") - torch.stack([transcoders[layer].decode(features[layer])
                                                         for layer in range(n_layers)])  # [layer, pos, d_model]
    return FrozenRun(tokens.to(model.cfg.device), cache["hook_embed"][0] + cache["hook_pos_embed"][0],
                     stacked("ln1.hook_scale"), stacked("ln2.hook_scale"), cache["ln_final.hook_scale"][0],
                     stacked("attn.hook_pattern"), features, errors, logits[0])


def centre(x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """Subtract each vector's mean over d_model (the first step of a LayerNorm)."""
    return x - x.mean(-1, keepdim=True)


# %% [markdown]
# ### Exercise 10.3: the local replacement model (difficulty 3/3, ~35 min)
# Write `local_replacement(model, transcoders, run, embeddings, features, errors)`. It runs the
# organism's four blocks on one prompt by hand, starting from `embeddings` (`[pos, d_model]`), with:
# - each LayerNorm as `centre(x) / scale`, the scale taken from `run` (`run.ln1_scales[layer]`,
#   `run.ln2_scales[layer]`, `run.final_scale`); the bridge folds the LayerNorms' weights into the
#   next layer's weights, so there is nothing else to apply;
# - each attention layer with its pattern frozen at `run.patterns[layer]` (`[head, query, key]`):
#   values `x W_V + b_V` (`model.W_V[layer]` is `[head, d_model, d_head]`), mixed by the pattern,
#   written back with `W_O` (`[head, d_head, d_model]`) summed over heads, plus `b_O`;
# - each MLP replaced by `transcoders[layer].decode(features[layer]) + errors[layer]`;
# - the unembedding `W_U`, `b_U` after the final LayerNorm.
#
# Return `(logits, mlp_inputs)`: logits `[pos, d_vocab]` and the stack of the four MLP inputs
# (`centre(resid) / ln2 scale`, what each transcoder would read) as `[layer, pos, d_model]`. Use only
# `embeddings`, `features` and `errors` as inputs (not `run.embeddings` and so on): Section 3 changes
# them and differentiates through your function. The check verifies that with the run's own values
# you reproduce the real logits exactly, and that with changed ones you agree with the reference.
#
# <details><summary>Hint 1</summary>
#
# Start with `resid = embeddings` and add, layer by layer, the attention output and the MLP output,
# as the real model does. Nothing in the loop may depend on the residual stream except through
# linear maps: no LayerNorm scale, no attention pattern and no feature activation is recomputed.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `x = centre(resid) / run.ln1_scales[layer]` is `[pos, d_model]`;
# `v = einsum("pd,hde->phe", x, W_V[layer]) + b_V[layer]`; `z = einsum("hqk,khe->qhe", pattern, v)`;
# the attention output is `einsum("qhe,hed->qd", z, W_O[layer]) + b_O[layer]`.
# </details>
# <details><summary>Hint 3</summary>
#
# After the attention output: `mlp_inputs.append(centre(resid) / run.ln2_scales[layer])`, then
# `resid = resid + transcoders[layer].decode(features[layer]) + errors[layer]`. At the end:
# `logits = centre(resid) / run.final_scale @ model.W_U + model.b_U`; return
# `logits, torch.stack(mlp_inputs)`.
# </details>

# %% tags=["export"]
def local_replacement(model, transcoders: list, run: FrozenRun, embeddings: Float[Tensor, "pos d_model"],
                      features: Float[Tensor, "layer pos d_tc"], errors: Float[Tensor, "layer pos d_model"]
                      ) -> tuple[Float[Tensor, "pos d_vocab"], Float[Tensor, "layer pos d_model"]]:
    """The local replacement of `run`: frozen attention and LayerNorm scales, MLPs = transcoder features + errors."""
    ### BEGIN SOLUTION
    resid = embeddings  # [pos, d_model]
    mlp_inputs = []
    for layer in range(model.cfg.n_layers):
        x = centre(resid) / run.ln1_scales[layer]  # [pos, d_model]
        values = torch.einsum("pd,hde->phe", x, model.W_V[layer]) + model.b_V[layer]  # [pos, head, d_head]
        mixed = torch.einsum("hqk,khe->qhe", run.patterns[layer], values)  # [pos, head, d_head]
        resid = resid + torch.einsum("qhe,hed->qd", mixed, model.W_O[layer]) + model.b_O[layer]
        mlp_inputs.append(centre(resid) / run.ln2_scales[layer])
        resid = resid + transcoders[layer].decode(features[layer]) + errors[layer]
    logits = (centre(resid) / run.final_scale) @ model.W_U + model.b_U  # [pos, d_vocab]
    return logits, torch.stack(mlp_inputs)
    ### END SOLUTION


# %%
local_replacement = check_exercise("10.3", local_replacement)

# %%
facts = world.prompt_set("facts", "train", seed=0)
capital_facts = facts.subset([i for i, relation in enumerate(facts.labels["relation"]) if relation == "capital"])
example = capital_facts.subset([0])
example_tokens = model.to_tokens(example.prompts[0])[0]
example_run = freeze_run(model, shipped, example_tokens)
replayed, _ = local_replacement(model, shipped, example_run, example_run.embeddings, example_run.features,
                                example_run.errors)
pd.DataFrame({"prompt": [example.prompts[0]], "answer": [example.correct[0]],
              "largest difference from the real logits": [(replayed - example_run.logits).abs().max().item()],
              "largest real logit": [example_run.logits.abs().max().item()]}).style.format(
    {"largest difference from the real logits": "{:.1e}", "largest real logit": "{:.1f}"})

# %% [markdown]
# ## 3. Attribution graphs
#
# A graph has four kinds of nodes: the **input tokens** (their embeddings), the **features** active
# on the prompt (each at a layer and a position), the **error nodes** (one per MLP and position) and
# the **target**: here the logit difference between the world's answer and its most natural wrong
# answer at the last position, the metric of Chapters 03 and 06. An edge from a source to a target
# node is the source's **direct effect**: how much of the target's value the source contributes
# through paths that pass through no other feature: the residual stream, frozen attention and frozen
# LayerNorms. A feature's value as a target is its pre-activation (`mlp_input @ W_enc + b_enc`).
#
# In code a node is a tuple `(kind, layer, position, index)`: `("embedding", -1, position, token id)`,
# `("feature", layer, position, feature index)`, `("error", layer, position, -1)` and
# `("target", n_layers, last position, -1)`, in that order (embeddings first, the target last), and
# `adjacency[t, s]` holds the direct effect of source node `s` on target node `t`.
#
# **Why one backward pass per target is exact.** In the local replacement, a target `t` is an affine
# function of the sources: `t = sum_s J_s * a_s + c`, where `a_s` is a source's value (an embedding, a
# feature activation, an error term), `J_s` a constant (the product of frozen matrices along the
# paths) and `c` the biases. The gradient of `t` with respect to `a_s` is `J_s`, so `J_s * a_s` is
# exactly `s`'s share of `t`: no linear approximation, no second-order term. (On the real model, the
# same product would be attribution patching's first-order estimate, Chapter 06.) Features are given
# numbers in the local replacement, so the gradient stops at them: an edge is a *direct* effect, and
# effects through other features appear as paths of several edges.
#
# ### Exercise 10.4: direct effects by one backward pass (difficulty 2/3, ~25 min)
# Write `direct_effects(model, transcoders, run, target)`. `target(logits, mlp_inputs)` is a function
# of `local_replacement`'s two outputs that returns one number (a 0-dimensional tensor). Return a
# tuple of three tensors, the direct effect on the target of
# - each position's embedding, `[pos]`;
# - each feature, `[layer, pos, d_tc]` (zero where the feature is inactive);
# - each error node, `[layer, pos]`.
# Sources are `run.embeddings`, `run.features` and `run.errors`; an effect is gradient times value,
# summed over `d_model` for embeddings and error terms. Return detached tensors.
#
# <details><summary>Hint 1</summary>
#
# Make the three sources leaves of a graph (`.clone().requires_grad_(True)`), run `local_replacement`
# on them, apply `target`, and differentiate once. This chapter turned gradients off at the top:
# differentiate inside `with torch.enable_grad():`.
# </details>
# <details><summary>Hint 2</summary>
#
# `grads = torch.autograd.grad(value, [embeddings, features, errors])` gives three tensors of the
# sources' shapes. The direct effect is `grad * source`, not the gradient alone: a feature that is
# off contributes nothing whatever its gradient.
# </details>
# <details><summary>Hint 3</summary>
#
# `((grads[0] * embeddings).sum(-1).detach(), (grads[1] * features).detach(),
# (grads[2] * errors).sum(-1).detach())`.
# </details>

# %% tags=["export"]
def direct_effects(model, transcoders: list, run: FrozenRun, target
                   ) -> tuple[Float[Tensor, "pos"], Float[Tensor, "layer pos d_tc"], Float[Tensor, "layer pos"]]:
    """Direct effect (gradient times value, exact in the local replacement) of every source on target(logits, mlp_inputs)."""
    ### BEGIN SOLUTION
    sources = [run.embeddings.clone().requires_grad_(True), run.features.clone().requires_grad_(True),
               run.errors.clone().requires_grad_(True)]
    with torch.enable_grad():
        value = target(*local_replacement(model, transcoders, run, *sources))
        grads = torch.autograd.grad(value, sources)
    return ((grads[0] * sources[0]).sum(-1).detach(), (grads[1] * sources[1]).detach(),
            (grads[2] * sources[2]).sum(-1).detach())
    ### END SOLUTION


# %%
direct_effects = check_exercise("10.4", direct_effects)

# %% tags=["export"]
def logit_diff_target(model, correct: str, wrong: str):
    """The target of the chapter's graphs: logit(correct) - logit(wrong) at the last position."""
    correct_id, wrong_id = (answer_ids(model, [word])[0].item() for word in (correct, wrong))
    return lambda logits, mlp_inputs: logits[-1, correct_id] - logits[-1, wrong_id]


# %%
example_target = logit_diff_target(model, example.correct[0], example.wrong[0])
embedding_effects, feature_effects, error_effects = direct_effects(model, shipped, example_run, example_target)
zeros = [torch.zeros_like(tensor) for tensor in (example_run.embeddings, example_run.features, example_run.errors)]
constant = example_target(*local_replacement(model, shipped, example_run, *zeros))
total = embedding_effects.sum() + feature_effects.sum() + error_effects.sum() + constant
pd.DataFrame({"value": {"target (real run)": example_target(example_run.logits, None).item(),
                        "embeddings' direct effects": embedding_effects.sum().item(),
                        "features' direct effects": feature_effects.sum().item(),
                        "error nodes' direct effects": error_effects.sum().item(),
                        "biases (no source controls them)": constant.item(),
                        "sum of direct effects and biases": total.item()}}).round(4)

# %% [markdown]
# The effects add up to the target exactly (the biases, which no source controls, are the constant
# `c`). A graph needs one such backward pass for the target and one for every active feature:
# `build_graph` runs the local replacement once and all the backward passes at once, batched
# (`torch.autograd.grad(..., is_grads_batched=True)`), and stores the edges in an adjacency matrix, one row per target node and one column per source.

# %% tags=["export"]
@dataclass
class Graph:
    """An attribution graph: nodes, and direct effects (row: target node, column: source node)."""

    run: FrozenRun
    nodes: list[tuple[str, int, int, int]]  # (kind, layer, position, index); kind in embedding/feature/error/target
    adjacency: Float[Tensor, "node node"]
    str_tokens: list[str]


def build_graph(model, transcoders: list, run: FrozenRun, target) -> Graph:
    """Every direct effect among embeddings, active features, error nodes and the target, by batched backward passes.

    A feature's effect is its activation times the gradient at its MLP's output dotted with its decoder row
    (the decoder is linear), so the batched backward pass only has to reach the MLP outputs.
    """
    n_layers, n_pos, _ = run.features.shape
    active = run.features.nonzero()  # [n_active, 3]: layer, position, feature
    nodes = ([("embedding", -1, position, int(run.tokens[position])) for position in range(n_pos)]
             + [("feature", *map(int, row)) for row in active]
             + [("error", layer, position, -1) for layer in range(n_layers) for position in range(n_pos)]
             + [("target", n_layers, n_pos - 1, -1)])
    W_enc = torch.stack([transcoder.W_enc for transcoder in transcoders])  # [layer, d_model, d_tc]
    b_enc = torch.stack([transcoder.b_enc for transcoder in transcoders])  # [layer, d_tc]
    W_dec = torch.stack([transcoder.W_dec for transcoder in transcoders])  # [layer, d_tc, d_model]
    layer, position, feature = active.unbind(1)
    embeddings = run.embeddings.clone().requires_grad_(True)
    errors = run.errors.clone().requires_grad_(True)  # its gradient is the gradient at each MLP's output
    with torch.enable_grad():
        logits, mlp_inputs = local_replacement(model, transcoders, run, embeddings, run.features, errors)
        pre_activations = (mlp_inputs[layer, position] * W_enc[layer, :, feature]).sum(-1) + b_enc[layer, feature]
        targets = torch.cat([pre_activations, target(logits, mlp_inputs)[None]])  # [n_active + 1]
        one_hot = torch.eye(len(targets), device=targets.device)  # one backward pass per target, batched
        grad_embeddings, grad_mlp_out = torch.autograd.grad(targets, [embeddings, errors], grad_outputs=one_hot,
                                                            is_grads_batched=True)
    feature_effects = (torch.einsum("tad,ad->ta", grad_mlp_out[:, layer, position], W_dec[layer, feature])
                       * run.features[layer, position, feature])  # [target, n_active]
    rows = torch.cat([(grad_embeddings * run.embeddings).sum(-1),  # [target, pos]
                      feature_effects,
                      (grad_mlp_out * run.errors).sum(-1).flatten(1)], 1).detach()  # [target, layer * pos]
    adjacency = torch.zeros(len(nodes), len(nodes), device=rows.device)
    adjacency[n_pos:n_pos + len(active), :-1] = rows[:-1]
    adjacency[-1, :-1] = rows[-1]
    return Graph(run, nodes, adjacency.cpu(), model.to_str_tokens(run.tokens))


# %%
example_graph = build_graph(model, shipped, example_run, example_target)
kinds = pd.Series([node[0] for node in example_graph.nodes]).value_counts()
pd.concat([kinds.rename(lambda kind: f"{kind} nodes"),
           pd.Series({"all nodes": len(example_graph.nodes),
                      "non-zero edges": int((example_graph.adjacency != 0).sum())})]).to_frame("count")

# %% [markdown]
# ### Pruning by influence
# Hundreds of nodes and tens of thousands of edges are too many to read. Ameisen et al. prune by
# **influence**: normalise each target's incoming edges by their absolute values so they sum to one
# (`A[t, s] = |E[t, s]| / sum_s' |E[t, s']|`), then count every path to the output, of every length:
# `B = A + A^2 + A^3 + ... = (I - A)^-1 - I`. Row `target` of `B` is each node's influence on the
# target: its share of the target's direct inputs, plus its share through one intermediate node,
# and so on. Because edges only go from earlier layers (or positions) to later ones, `A` is
# nilpotent and the series is a finite sum. The pruned graph keeps the most influential nodes until
# they hold 80% of the total influence. `circuit-tracer`'s `prune_graph` differs in two ways: it
# starts from several logit nodes weighted by their probabilities (we start from one logit
# difference), and after pruning nodes (threshold 0.8) it also prunes edges by their influence
# (threshold 0.98); here every edge among kept nodes stays, and `draw_graph` only draws the strongest.
#
# ### Exercise 10.5: influence (difficulty 2/3, ~20 min)
# Write `node_influence(adjacency, target)`: `adjacency` is `[node, node]` (row: target, column:
# source, signed direct effects, zero rows for nodes with no inputs), `target` the index of the node
# whose influences you want. Return `[node]`: row `target` of `(I - A)^-1 - I`, with `A` the
# row-normalised absolute adjacency (a row of zeros stays zeros).
#
# <details><summary>Hint 1</summary>
#
# Three steps: absolute values, normalise each row to sum 1, then the geometric series of the matrix.
# </details>
# <details><summary>Hint 2</summary>
#
# `A = adjacency.abs(); A = A / A.sum(1, keepdim=True).clamp_min(1e-12)`. The series is
# `torch.linalg.inv(I - A) - I` with `I = torch.eye(n, dtype=A.dtype)`; or, since `A` is nilpotent,
# add `A, A @ A, ...` until the power is zero.
# </details>
# <details><summary>Hint 3</summary>
#
# Return `(torch.linalg.inv(eye - A) - eye)[target]`. Don't forget the `- I`: a node has no
# influence on itself, and the target must not count its own row.
# </details>

# %% tags=["export"]
def node_influence(adjacency: Float[Tensor, "node node"], target: int) -> Float[Tensor, "node"]:
    """Each node's influence on `target`: row `target` of (I - A)^-1 - I, A the row-normalised |adjacency|."""
    ### BEGIN SOLUTION
    weights = adjacency.abs()
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)  # [node, node], rows sum to 1 or 0
    eye = torch.eye(len(weights), dtype=weights.dtype, device=weights.device)
    return (torch.linalg.inv(eye - weights) - eye)[target]
    ### END SOLUTION


# %%
node_influence = check_exercise("10.5", node_influence)

# %% [markdown]
# ### Exercise 10.6: pruning (difficulty 1/3, ~10 min)
# Write `kept_nodes(influence, share)`: `influence` is `[node]` (non-negative, as `node_influence`
# returns). Return the indices of the **smallest** set of most influential nodes whose influences
# add up to at least `share` of the total, as a long tensor sorted in ascending order (node order).
# The check compares your kept nodes with the reference's, exactly, on small made-up influences and
# on the graphs of two held-out prompts; where they differ on a graph, it reports how much of the
# logit difference each set keeps in the local replacement, so that you see what the difference costs.
#
# <details><summary>Hint 1</summary>
#
# Sort the nodes by influence, most influential first, and walk down the list adding up their
# shares of the total until you reach `share`.
# </details>
# <details><summary>Hint 2</summary>
#
# `order = influence.argsort(descending=True)`; `cumulative = influence[order].cumsum(0) / influence.sum()`.
# The node whose share makes `cumulative` reach `share` belongs to the set.
# </details>
# <details><summary>Hint 3</summary>
#
# `n = int((cumulative < share).sum()) + 1`; return `order[:n].sort().values`.
# </details>

# %% tags=["export"]
def kept_nodes(influence: Float[Tensor, "node"], share: float = 0.8) -> Int[Tensor, "kept"]:
    """The most influential nodes, until they hold `share` of the total influence (sorted indices)."""
    ### BEGIN SOLUTION
    order = influence.argsort(descending=True)
    cumulative = influence[order].cumsum(0) / influence.sum()  # [node]
    return order[:int((cumulative < share).sum()) + 1].sort().values
    ### END SOLUTION


# %%
kept_nodes = check_exercise("10.6", kept_nodes)

# %% tags=["export"]
def node_label(graph: Graph, index: int) -> str:
    """A short name for a node: 'L1 F203 @ France', 'emb France', 'err L2 @ is', 'target'."""
    kind, layer, position, feature = graph.nodes[index]
    token = graph.str_tokens[position].strip() or repr(graph.str_tokens[position])
    return {"embedding": f"emb {token}", "feature": f"L{layer} F{feature} @ {token}",
            "error": f"err L{layer} @ {token}", "target": "target"}[kind]


def graph_table(graph: Graph, influence: Float[Tensor, "node"], top: int = 12) -> pd.DataFrame:
    """The most influential nodes with their direct effect on the target."""
    order = influence.argsort(descending=True)[:top]
    return pd.DataFrame({"node": [node_label(graph, int(i)) for i in order],
                         "influence": influence[order].numpy(),
                         "direct effect on target": graph.adjacency[-1, order].numpy()})


# %%
example_influence = node_influence(example_graph.adjacency, len(example_graph.nodes) - 1)
example_kept = kept_nodes(example_influence)
print(f"{len(example_kept)} of {len(example_graph.nodes)} nodes hold 80% of the influence on the target")
graph_table(example_graph, example_influence).style.format(precision=3).bar(subset=["influence"], color="#9ecae1")

# %% [markdown]
# ### Drawing the graph
# `draw_graph` lays the kept nodes out as the field's viewers do: position (token) on the x axis,
# layer on the y axis (embeddings at the bottom, the target at the top), edges between kept nodes
# coloured by sign (blue helps the target, red hurts it) and as wide as their share of the target
# node's inputs. Hover over a node for its name and influence. It is a plotly figure, so it works
# offline in JupyterLab, on Colab and in the book; `fig.write_image` would give a static file where
# `kaleido` is installed.

# %% tags=["export"]
import plotly.graph_objects as go


def draw_graph(graph: Graph, influence: Float[Tensor, "node"], kept: Int[Tensor, "kept"], title: str = "",
               max_edges: int = 80) -> go.Figure:
    """The pruned graph: x = token position, y = layer; edges coloured by sign, width by normalised weight."""
    kept_list = [int(i) for i in kept]
    n_layers = graph.run.features.shape[0]
    y_of = {"embedding": -1, "error": None, "target": n_layers}
    cells: dict[tuple[int, float], list[int]] = {}  # (position, row) -> the kept nodes drawn in that cell
    for index in kept_list:
        kind, layer, position, _ = graph.nodes[index]
        y = layer + 0.5 if kind == "error" else y_of.get(kind, layer)
        cells.setdefault((position, y), []).append(index)
    placed: dict[int, tuple[float, float]] = {}
    for (position, y), members in cells.items():  # spread a cell's nodes over 0.8 of a position, by rank
        for rank, index in enumerate(members):
            placed[index] = (position - 0.4 + 0.8 * (rank + 0.5) / len(members), y)
    weights = graph.adjacency.abs()
    normalised = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    edges = [(normalised[t, s].item(), t, s) for t in kept_list for s in kept_list if weights[t, s] > 0]
    edges = sorted(edges, reverse=True)[:max_edges]
    fig = go.Figure()
    for weight, t, s in edges:
        sign = graph.adjacency[t, s].item()
        fig.add_trace(go.Scatter(x=[placed[s][0], placed[t][0]], y=[placed[s][1], placed[t][1]], mode="lines",
                                 line={"width": 1 + 8 * weight, "color": "#3b75af" if sign > 0 else "#c0392b"},
                                 opacity=0.55, hoverinfo="skip", showlegend=False))
    colours = {"embedding": "#7f7f7f", "feature": "#2ca02c", "error": "#ff7f0e", "target": "#9467bd"}
    for kind, colour in colours.items():
        members = [i for i in kept_list if graph.nodes[i][0] == kind]
        if not members:
            continue
        fig.add_trace(go.Scatter(
            x=[placed[i][0] for i in members], y=[placed[i][1] for i in members], mode="markers", name=kind,
            marker={"size": [8 + 30 * float(influence[i]) / float(influence.max()) for i in members], "color": colour,
                    "line": {"width": 1, "color": "black"}},
            text=[f"{node_label(graph, i)}<br>influence {float(influence[i]):.3f}" for i in members],
            hoverinfo="text"))
    fig.update_layout(title=title, autosize=True, height=460, legend={"orientation": "h"},
                      xaxis={"tickmode": "array", "tickvals": list(range(len(graph.str_tokens))),
                             "ticktext": graph.str_tokens, "title": "token position"},
                      yaxis={"tickmode": "array", "tickvals": list(range(-1, n_layers + 1)),
                             "ticktext": ["embedding"] + [f"layer {layer}" for layer in range(n_layers)] + ["target"],
                             "title": "layer (error nodes between layers)"})
    return fig


# %%
draw_graph(example_graph, example_influence, example_kept,
           title=f"{example.prompts[0]!r} -> {example.correct[0]!r} (vs {example.wrong[0]!r})")

# %% [markdown]
# ## 4. Graded against the world
#
# A graph is a hypothesis about how the model computes one answer. On a real model nobody can say
# whether it is right. Here the world says what each prompt is about: which country, which relation,
# which names, which sentiment. We grade graphs on four families, always on the logit difference
# between the world's answer and its natural wrong answer:
#
# - **facts** ("The capital of Japan is" -> " Tokyo"): the country token, and features the world labels
#   by relation (capital, language, continent);
# - **truth** ("Sweden has its capital in Athens. That is" -> " false"): the country and the stated
#   value, and features labelled by the verdict;
# - **IOI** ("When Kate and Rose went to the restaurant, Rose gave a drink to" -> " Kate"): the two
#   names, and features labelled by the indirect object's name;
# - **sentiment** ("The play was moving. I" -> " loved"): the adjective, and features labelled by the
#   review's sentiment.
#
# **Labelling a feature with the world.** We run the transcoders over a whole prompt set of the
# family and, for every feature, ask how its activation at a role's position (the last position, or
# the country token) is split among the values of a label: a feature whose activation mass falls
# mostly (a share of at least `LABEL_SHARE`) on one value is *labelled* with that value, e.g. a
# last-position feature that fires almost only on capital prompts is a "capital" feature.
#
# **The labelled route** for a prompt is: the source token's embedding (the country; a name; the
# adjective) is among the most influential input nodes, and the pruned graph keeps a feature at the
# last position labelled with the prompt's own label value (its relation; its indirect object; its
# sentiment). We also ask the question the papers' pictures suggest: does the graph keep a labelled
# feature *at the source token*, the country's own feature, before the information moves to the end?
#
# **A baseline, and why the labelled route is a weak test.** A label with two or three values
# (relation, verdict, sentiment) splits a feature's mass over few values, so many features pass
# `LABEL_SHARE` by accident of frequency: of the 64 features active at a prompt's last position
# (16 per layer), a large share already carries the prompt's own label value. The column *labelled
# feature, random draw of the same size* is the chance that as many active last-position features
# as the graph kept there, drawn at random, include a labelled one (exact, hypergeometric). Beside it
# stand the labelled shares among the kept and among all active last-position features. A label that
# has to be *computed* at the last position is a harder test: which country the answer is about
# (facts, truth: which capital, language or continent to recall), or whether the indirect object was
# the first or the second name (IOI). The measures *computed label at the last position* and its
# random draw grade the graph on it.

# %% tags=["export"]
from utils.references.ch02_probing import tokenize

LABEL_SHARE = 0.6  # a feature is labelled with a value when at least this share of its activation mass falls on it


def word_position(model, prompt: str, word: str, last: bool = False) -> int:
    """The position of `word` in the prompt's tokens (its first occurrence, or its last)."""
    positions = [i for i, token in enumerate(model.to_str_tokens(prompt)) if token.strip() == word]
    return positions[-1] if last else positions[0]


def family_feature_activations(model, transcoders: list, prompts: list[str]
                               ) -> tuple[Float[Tensor, "batch pos layer d_tc"], Int[Tensor, "batch"]]:
    """Every transcoder feature at every position of right-padded prompts, and each prompt's last position."""
    tokens, last = tokenize(model, prompts)
    names = {input_hook(layer) for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        return torch.stack([transcoders[layer].encode(cache[input_hook(layer)])
                            for layer in range(model.cfg.n_layers)], 2).cpu(), last.cpu()


@dataclass
class FeatureLabels:
    """For every feature (layer, index): the label value that holds most of its activation mass, and that share."""

    values: list
    best: Int[Tensor, "layer d_tc"]
    share: Float[Tensor, "layer d_tc"]

    def labelled(self, layer: int, feature: int, value, share: float = LABEL_SHARE) -> bool:
        return self.values[int(self.best[layer, feature])] == value and float(self.share[layer, feature]) >= share


def label_features(activations: Float[Tensor, "batch layer d_tc"], labels: list) -> FeatureLabels:
    """Split each feature's activation mass over the prompts' label values."""
    values = sorted(set(labels))
    one_hot = torch.tensor([[label == value for value in values] for label in labels], dtype=activations.dtype)
    mass = torch.einsum("bld,bv->ldv", activations, one_hot)  # [layer, d_tc, value]
    share, best = (mass / mass.sum(-1, keepdim=True).clamp_min(1e-9)).max(-1)
    return FeatureLabels(values, best, share)


@dataclass
class Family:
    """How to grade one family's graphs: its prompts, source tokens and the label of its answer features."""

    name: str
    prompts: object  # a PromptSet
    sources: object  # prompt index -> positions of the source tokens
    label: str  # the label whose value the last-position features should carry
    source_label: str  # the label a feature at the (first) source position should carry
    top_inputs: int  # the source embeddings must be among this many most influential inputs (the last token aside)
    computed: object = None  # prompt index -> a label the last position has to compute (which country; which name), or None


def chapter_families(model) -> list[Family]:
    """The four graded families: facts (train split: the facts the model knows), IOI, sentiment and truth (held out)."""
    facts = world.prompt_set("facts", "train", seed=0)
    ioi = world.prompt_set("ioi", "test", seed=0)
    sentiment = world.prompt_set("sentiment", "test", seed=0)
    truth = world.prompt_set("truth", "test", seed=0)
    return [
        Family("facts", facts, lambda i: [word_position(model, facts.prompts[i], facts.labels["country"][i])],
               "relation", "country", 2, lambda i: facts.labels["country"][i]),
        Family("IOI", ioi, lambda i: [word_position(model, ioi.prompts[i], ioi.labels["io"][i]),
                                      word_position(model, ioi.prompts[i], ioi.labels["s"][i])], "io", "io", 3,
               lambda i: "first" if word_position(model, ioi.prompts[i], ioi.labels["io"][i]) < word_position(
                   model, ioi.prompts[i], ioi.labels["s"][i]) else "second"),
        Family("sentiment", sentiment,
               lambda i: [word_position(model, sentiment.prompts[i], sentiment.labels["adjective"][i])],
               "sentiment", "sentiment", 2),
        Family("truth", truth, lambda i: [word_position(model, truth.prompts[i], truth.labels["country"][i]),
                                          word_position(model, truth.prompts[i], truth.labels["stated"][i].split()[-1],
                                                        last=True)], "truth", "country", 3,
               lambda i: truth.labels["country"][i]),
    ]


def family_labels(model, transcoders: list, family: Family) -> tuple[FeatureLabels, FeatureLabels, FeatureLabels | None]:
    """Feature labels at the last position (by `family.label`), at the first source token (by `family.source_label`),
    and at the last position by the computed label (`family.computed`; None where the family has none)."""
    activations, last = family_feature_activations(model, transcoders, family.prompts.prompts)
    rows = torch.arange(len(last))
    source = torch.tensor([family.sources(i)[0] for i in rows.tolist()])
    return (label_features(activations[rows, last], family.prompts.labels[family.label]),
            label_features(activations[rows, source], family.prompts.labels[family.source_label]),
            label_features(activations[rows, last], [family.computed(i) for i in rows.tolist()]) if family.computed
            else None)


def prompt_graph(model, transcoders: list, prompts, index: int) -> tuple[Graph, Tensor, Tensor]:
    """The graph of one prompt on its logit difference, its influences and its kept nodes."""
    run = freeze_run(model, transcoders, model.to_tokens(prompts.prompts[index])[0])
    graph = build_graph(model, transcoders, run, logit_diff_target(model, prompts.correct[index], prompts.wrong[index]))
    influence = node_influence(graph.adjacency, len(graph.nodes) - 1)
    return graph, influence, kept_nodes(influence)


def frozen_hooks(model, run: FrozenRun) -> list:
    """Hooks that pin every attention pattern and LayerNorm scale of a real run to their clean values in `run`."""
    hooks = []
    for layer in range(model.cfg.n_layers):
        for name, value in ((f"blocks.{layer}.attn.hook_pattern", run.patterns[layer]),
                            (f"blocks.{layer}.ln1.hook_scale", run.ln1_scales[layer]),
                            (f"blocks.{layer}.ln2.hook_scale", run.ln2_scales[layer])):
            hooks.append((name, lambda act, hook, value=value: value[None].expand_as(act)))
    hooks.append(("ln_final.hook_scale", lambda act, hook: run.final_scale[None].expand_as(act)))
    return hooks


def pruned_faithfulness(model, transcoders: list, graph: Graph, kept: Tensor, target) -> tuple[float, float, float]:
    """The target with every active feature outside `kept` turned off, over the full target: in the local
    replacement, in the real model (its MLP outputs minus the dropped features' decoder rows), and in the real
    model with attention patterns and LayerNorm scales frozen at their clean values."""
    run = graph.run
    keep_mask = torch.zeros_like(run.features, dtype=torch.bool)
    for index in kept.tolist():
        kind, layer, position, feature = graph.nodes[index]
        if kind == "feature":
            keep_mask[layer, position, feature] = True
    dropped = torch.where(keep_mask, 0.0, run.features)  # [layer, pos, d_tc]
    full = target(run.logits, None).item()
    with torch.no_grad():
        local = target(*local_replacement(model, transcoders, run, run.embeddings, run.features - dropped, run.errors))
        hooks = [(output_hook(layer), lambda out, hook, layer=layer: out - transcoders[layer].decode(dropped[layer])
                  + transcoders[layer].b_dec) for layer in range(model.cfg.n_layers)]
        real = target(model.run_with_hooks(run.tokens[None], fwd_hooks=hooks)[0], None)
        frozen = target(model.run_with_hooks(run.tokens[None], fwd_hooks=hooks + frozen_hooks(model, run))[0], None)
    return local.item() / full, real.item() / full, frozen.item() / full


def answered_prompts(model, prompts, n: int, start: int = 0) -> list[int]:
    """The indices of the first `n` prompts from `start` whose correct answer beats the wrong one."""
    tokens, last = tokenize(model, prompts.prompts)
    with torch.no_grad():
        final = model(tokens)[torch.arange(len(last)), last]  # [batch, d_vocab]
    correct_ids, wrong_ids = (answer_ids(model, words).to(final.device) for words in (prompts.correct, prompts.wrong))
    answered = (final.gather(-1, correct_ids[:, None]) > final.gather(-1, wrong_ids[:, None]))[:, 0].cpu()
    return [i for i in range(start, len(prompts)) if answered[i]][:n]


def random_draw_hit(active: list, kept_last: list, labels: FeatureLabels, value) -> float:
    """Draw as many of a prompt's active last-position features as its graph kept there, at random: the chance that
    the draw holds a feature labelled with `value` (hypergeometric, exact)."""
    labelled = sum(labels.labelled(layer, feature, value) for layer, feature in active)
    return 1 - math.comb(len(active) - labelled, len(kept_last)) / math.comb(len(active), len(kept_last))


def influence_over_chance(graph: Graph, influence: Tensor, labels: FeatureLabels, position: int, value) -> float:
    """The mean influence of the features active at `position` that `labels` labels with `value`, over the mean
    influence of all features active there: 1 is what as many active features drawn at random hold on average
    (NaN where none is labelled)."""
    active = [i for i, (kind, _, at, _) in enumerate(graph.nodes) if kind == "feature" and at == position]
    labelled = [i for i in active if labels.labelled(graph.nodes[i][1], graph.nodes[i][3], value)]
    if not labelled:
        return float("nan")
    return (influence[labelled].mean() / influence[active].mean().clamp_min(1e-12)).item()


def grade_graph(graph: Graph, influence: Tensor, kept: Tensor, sources: list[int], value, source_value,
                labels: tuple, top_inputs: int, computed_value=None) -> dict[str, float]:
    """Does the graph recover the labelled route? And how much influence sits on errors and features."""
    n_pos = len(graph.str_tokens)
    inputs = influence[:n_pos - 1].argsort(descending=True)[:top_inputs].tolist()  # the last token is always central
    last_labels, source_labels, computed_labels = labels
    kept_features = [graph.nodes[int(i)] for i in kept if graph.nodes[int(i)][0] == "feature"]
    answer_feature = any(position == n_pos - 1 and last_labels.labelled(layer, feature, value)
                         for _, layer, position, feature in kept_features)
    source_feature = any(position == sources[0] and source_labels.labelled(layer, feature, source_value)
                         for _, layer, position, feature in kept_features)
    sources_in = all(position in inputs for position in sources)
    # the baseline: draw as many of the prompt's active last-position features as the graph kept there, at random;
    # the chance that the draw holds a feature labelled with the prompt's value (hypergeometric, exact)
    active = graph.run.features[:, -1].nonzero().tolist()  # [(layer, feature)]
    labelled_active = sum(last_labels.labelled(layer, feature, value) for layer, feature in active)
    kept_last = [(layer, feature) for _, layer, position, feature in kept_features if position == n_pos - 1]
    labelled_kept = sum(last_labels.labelled(layer, feature, value) for layer, feature in kept_last)
    draw = len(kept_last)
    random_hit = random_draw_hit(active, kept_last, last_labels, value)
    computed = {}
    if computed_labels is not None:
        computed = {"computed label at the last position": float(any(computed_labels.labelled(layer, feature, computed_value)
                                                                     for layer, feature in kept_last)),
                    "computed label, random draw of the same size": random_draw_hit(active, kept_last, computed_labels,
                                                                                    computed_value)}
    over_chance = {"labelled influence over chance, last position":
                       influence_over_chance(graph, influence, last_labels, n_pos - 1, value),
                   "labelled influence over chance, source token":
                       influence_over_chance(graph, influence, source_labels, sources[0], source_value),
                   "labelled features active at the source token":
                       float(sum(source_labels.labelled(layer, feature, source_value)
                                 for layer, feature in graph.run.features[:, sources[0]].nonzero().tolist()))}
    if computed_labels is not None:
        over_chance["computed label influence over chance, last position"] = influence_over_chance(
            graph, influence, computed_labels, n_pos - 1, computed_value)
    total = float(influence.sum())
    by_kind = {kind: sum(float(influence[i]) for i, node in enumerate(graph.nodes) if node[0] == kind) / total
               for kind in ("embedding", "feature", "error")}
    return {"source tokens among top inputs": float(sources_in), "labelled feature at the last position": float(answer_feature),
            "labelled feature, random draw of the same size": random_hit,
            "labelled share, kept last-position features": labelled_kept / max(draw, 1),
            "labelled share, all active last-position features": labelled_active / max(len(active), 1),
            **computed, **over_chance,
            "labelled route": float(sources_in and answer_feature), "labelled feature at the source token": float(source_feature),
            "kept features at the source token": float(sum(position == sources[0] for _, _, position, _ in kept_features)),
            "influence on error nodes": by_kind["error"], "influence on features": by_kind["feature"],
            "influence on the source token's embedding": float(influence[sources[0]]) / total,
            "influence on features at the source token": sum(float(influence[i]) for i, node in enumerate(graph.nodes)
                                                             if node[0] == "feature" and node[2] == sources[0]) / total,
            "influence on last-position error nodes": sum(float(influence[i]) for i, node in enumerate(graph.nodes)
                                                          if node[0] == "error" and node[2] == n_pos - 1) / total,
            "influence on first-position error nodes": sum(float(influence[i]) for i, node in enumerate(graph.nodes)
                                                          if node[0] == "error" and node[2] == 0) / total,
            "kept nodes": float(len(kept))}


@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def grade_family(model, transcoders: list, family: Family, n: int, start: int = 0, progress: bool = True) -> pd.DataFrame:
    """grade_graph for `n` prompts of a family (only those the model answers correctly), one row per prompt."""
    from utils import progress_bar

    labels = family_labels(model, transcoders, family)
    prompts, rows = family.prompts, []
    chosen = answered_prompts(model, prompts, n, start)
    for i in progress_bar(chosen, show=progress, desc=f"graphs of {family.name} prompts"):
        graph, influence, kept = prompt_graph(model, transcoders, prompts, i)
        row = grade_graph(graph, influence, kept, family.sources(i), prompts.labels[family.label][i],
                          prompts.labels[family.source_label][i], labels, family.top_inputs,
                          family.computed(i) if family.computed else None)
        target = logit_diff_target(model, prompts.correct[i], prompts.wrong[i])
        (row["faithfulness, local replacement"], row["faithfulness, real model"],
         row["faithfulness, real model, attention and LN frozen"]) = pruned_faithfulness(model, transcoders, graph, kept,
                                                                                       target)
        rows.append(row)
    return pd.DataFrame(rows, index=chosen)


# %% [markdown]
# Each family's graphs (a column each; each measure a row), averaged over the prompts the model
# answers correctly (the test module re-measures these rates on more prompts). The three *faithfulness* rows grade the pruning: the logit
# difference with every active feature *outside* the kept nodes turned off, over the full logit
# difference, in the local replacement, in the real model (its MLP outputs minus the dropped
# features' decoder rows, attention and LayerNorm free to move), and in the real model with
# attention patterns and LayerNorm scales frozen at their clean values:

# %%
families = chapter_families(model)
GRAPHS_PER_FAMILY = {"facts": 6, "IOI": 2, "sentiment": 4, "truth": 4}  # the IOI graphs are the largest (17 tokens): fewer of them
grades = {family.name: grade_family(model, shipped, family, GRAPHS_PER_FAMILY[family.name]) for family in families}
grade_summary = pd.DataFrame({name: table.mean() for name, table in grades.items()}).T  # [family, measure]
# shown turned, one row a measure, so that its twenty-odd measures fit the page's width
grade_summary.T.style.format(precision=2).bar(subset=pd.IndexSlice[["labelled route"], :], axis=1, color="#9ecae1",
                                              vmin=0, vmax=1)

# %% [markdown]
# What the four families show:
#
# - **The labelled route is recovered in every facts, sentiment and truth graph, and it means
#   little.** The random draw of the same size holds a labelled feature too, with probability 1.00 in
#   every one of these graphs: 23 to 50 of a prompt's 64 active last-position features already carry
#   its relation, verdict or sentiment. The label test as built cannot fail for labels with two or
#   three values, and the test module says so (it holds the random draw's chance above 0.95). The
#   labelled *share* is the only signal left: pruning keeps labelled features at about the rate they
#   are active for facts, a little above it for sentiment and truth.
# - **Which country, the label that has to be computed.** In facts graphs the kept last-position
#   features include one labelled with the prompt's country in about half of the graphs (on the
#   chapter's prompts, those about Japan, Morocco and Egypt), and a random draw of the same size would do about as well; in truth graphs, less often than the
#   random draw. The test holds the graphs' rate, facts and truth together, less than 0.25 above the
#   random draw: graphs do not single out the features that say which country the answer is about.
# - **Facts**: the country token is among the two most influential inputs (besides the last token)
#   in every graph. The picture of the papers, a country feature at the country token that attention
#   then moves to the end, is *not* what the organism does: the graphs keep almost no feature at the
#   country token, and none labelled with the country (the test holds it under 20%). The country's
#   identity travels from its embedding, through attention, into the last position, where features
#   and **error nodes** turn it into an answer. Error nodes hold more of the influence in facts
#   graphs than in sentiment graphs: about three times the share in the table above, one and a
#   half to three times over the five draws of prompts the tests tried (they hold it above 1.3):
#   recalling *which* capital is the part the transcoders reconstruct worst. The first position's
#   error nodes, where the transcoders are worst per token (Section 1), hold little of it: under 3%
#   of the influence in each graph (the test holds the mean under 5%).
# - **Sentiment**: the adjective is among the top inputs in every graph.
# - **Truth** ("Sweden has its capital in Athens. That is" -> " false"): the stated fact meets the
#   recalled one at the last position. The country and the stated value are both among the top
#   inputs. Here too, no feature at the country token carries the country.
# - **Pruning is faithful to the replacement; in the real model LayerNorm mostly undoes it.** With
#   only the kept features, the local replacement keeps close to all of the logit difference
#   (between 0.8 and 1.2 of it on average, in the test). The real model, with the same features
#   turned off, keeps much less (facts about 0.6, sentiment and truth well under half). Most of that
#   loss is not in the dropped features' paths but in the normalisation: pruning turns off most of
#   the active features, the stream shrinks, and LayerNorm scales up what is left, including the
#   bias and the wrong answer's share. With attention patterns and LayerNorm scales frozen at their
#   clean values (the last column), the real model keeps about 0.8 (facts 0.82, sentiment 0.88,
#   truth 0.68 here). The test holds the frozen real model at least 0.2 above the free one, and less
#   than 0.3 below the local replacement.
# - **IOI**: both names are among the top inputs, but no graph keeps a last-position feature
#   labelled with the answer's name, and no random draw would either: no feature is labelled with
#   any of the many names, so the label test fails by construction here. The computed label (was
#   the indirect object the first name or the second?) is the fairer question: no IOI graph of the
#   chapter keeps a last-position feature labelled with it, where a random draw of the same size
#   would in about a fifth of the graphs. The names do not reach the answer only through direct
#   edges of their embeddings: features hold about 0.46 of an IOI graph's influence, and the pruned
#   graphs keep eight or nine features at the indirect object's token (the test holds the features'
#   share above 0.3 and more than one kept feature there). Part of the route runs through attention heads straight from the
#   embeddings, and a graph whose nodes are MLP features shows that part only as a thick edge; the
#   heads are inside the edges.

# %% [markdown]
# ### Exercise 10.7: scoring a node set, against chance (difficulty 2/3, ~25 min)
# A kept node set makes two promises: that it carries the computation (faithfulness) and that its
# features mean what the world says they should (labels). Write `route_scores(model, transcoders,
# graph, kept, target, labels, value)` that scores a node set `kept` (node indices of `graph`) on both,
# and on what chance would give. Return a dict of floats:
# - `"faithfulness"`: the target in the local replacement (`local_replacement`) with every active
#   feature *outside* `kept` turned off (activation set to zero; embeddings and error terms unchanged),
#   over the target of the real run (`target(graph.run.logits, None)`);
# - `"labelled share"`: among the kept feature nodes at the last position, the share that `labels`
#   labels with `value` (`labels.labelled(layer, feature, value)`); 0 when none is kept there;
# - `"chance share"`: the same share among **all** features active at the last position of the run:
#   what a random draw of active features holds on average.
#
# The check scores node sets kept from graphs of held-out prompts (phrasings the model never saw), with
# labels by relation and by country, against the reference.
#
# <details><summary>Hint 1</summary>
#
# Three numbers from one pass over `kept`: build a mask of the kept features (`[layer, pos, d_tc]`),
# run the local replacement with `torch.where(mask, run.features, 0.0)`, and collect the kept
# features that sit at the last position.
# </details>
# <details><summary>Hint 2</summary>
#
# A node is `(kind, layer, position, feature)`; only `kind == "feature"` nodes go into the mask. The
# last position is `len(graph.str_tokens) - 1`; the features active there are
# `graph.run.features[:, last].nonzero()`, rows of `(layer, feature)`.
# </details>
# <details><summary>Hint 3</summary>
#
# `pruned = target(*local_replacement(model, transcoders, run, run.embeddings, torch.where(mask, run.features, 0.0), run.errors))`;
# `faithfulness = (pruned / target(run.logits, None)).item()`;
# `share = lambda pairs: sum(labels.labelled(l, f, value) for l, f in pairs) / max(len(pairs), 1)`.
# </details>

# %% tags=["export"]
def route_scores(model, transcoders: list, graph: Graph, kept: Int[Tensor, "kept"], target, labels: FeatureLabels,
                 value) -> dict[str, float]:
    """A kept node set's faithfulness in the local replacement, and its labelled share at the last position
    against the share among all active last-position features (chance)."""
    ### BEGIN SOLUTION
    run = graph.run
    last = len(graph.str_tokens) - 1
    mask = torch.zeros_like(run.features, dtype=torch.bool)  # [layer, pos, d_tc]
    kept_last = []
    for index in kept.tolist():
        kind, layer, position, feature = graph.nodes[index]
        if kind == "feature":
            mask[layer, position, feature] = True
            if position == last:
                kept_last.append((layer, feature))
    with torch.no_grad():
        pruned = target(*local_replacement(model, transcoders, run, run.embeddings,
                                           torch.where(mask, run.features, 0.0), run.errors))
        full = target(run.logits, None)
    active = run.features[:, last].nonzero().tolist()  # [(layer, feature)]

    def share(pairs: list) -> float:
        return sum(labels.labelled(layer, feature, value) for layer, feature in pairs) / max(len(pairs), 1)

    return {"faithfulness": (pruned / full).item(), "labelled share": share(kept_last), "chance share": share(active)}
    ### END SOLUTION


# %%
route_scores = check_exercise("10.7", route_scores)

# %% [markdown]
# Score the pruned graph of a facts prompt, and a random draw of as many nodes from the same graph,
# with the world's labels at the last position: by relation, and by country (which capital, language
# or continent the answer is about).

# %%
facts_family = families[0]
relation_labels, _, country_labels = family_labels(model, shipped, facts_family)
scored = int(grades["facts"].index[0])
scored_graph, scored_influence, scored_kept = prompt_graph(model, shipped, facts_family.prompts, scored)
scored_target = logit_diff_target(model, facts_family.prompts.correct[scored], facts_family.prompts.wrong[scored])
random_nodes = torch.randperm(len(scored_graph.nodes) - 1, generator=torch.Generator().manual_seed(0))[:len(scored_kept)]
pd.DataFrame({f"{what}, labels by {label}": route_scores(model, shipped, scored_graph, nodes, scored_target, labels,
                                                          facts_family.prompts.labels[label][scored])
              for what, nodes in (("pruned graph", scored_kept), ("random nodes", random_nodes.sort().values))
              for label, labels in (("relation", relation_labels), ("country", country_labels))}).T.round(3)

# %% [markdown]
# Two surprises. A random draw of as many nodes keeps much of the target too: on this prompt 0.65
# to 0.87 over six draws, where the pruned graph keeps about 1 (the test module holds a draw above
# one half). On other facts prompts draws keep less and scatter, from below zero to about 0.9 in
# our draws, always below their pruned graph. So a faithfulness near 1 says little on its own:
# faithfulness turns off only features, and the features' direct effects partly cancel (on the
# chapter's example prompt, the table of Section 3, they sum to less than nothing, and the error
# nodes carry the answer), so a node set can be faithful while saying little. And the pruned
# graph's labelled shares sit near the chance shares. A share counts features; it does not ask how
# much of the graph's influence runs through them.
#
# ### Is the route there when read right?
# The papers' picture of a fact recall is a route: the subject token, features there that say which
# country it is, attention moving that to the end, features there that recall the answer. Four
# fairer readings of the graphs, each against what as many random active features would give:
#
# - **influence over chance**: the mean influence of the active features labelled with the prompt's
#   value, over the mean influence of all active features at the same position. 1 is chance; a
#   route through labelled features would show well above 1. At the last position by the family's
#   label (relation, verdict, sentiment) and by the computed one (which country; for IOI whether the
#   indirect object came first or second), and at the source token by its label (the country);
# - **features at the source token**: how many active features at the country token the world
#   labels with the country at all, and how much influence features there hold, beside the source
#   token's own embedding node;
# - and, measured outside the chapter on 16 facts and 16 truth prompts, two more readings that
#   gave the same answer: features whose decoder row points most along the prompt's country
#   direction (the mean MLP output for that country's prompts minus the mean over all, a class-mean
#   probe in the sense of Chapter 02), at the country token and at the last position, held
#   1.0 to 1.2 times chance influence; and features labelled by continent at the country token,
#   which no pruned graph kept.

# %%
route_columns = ["labelled influence over chance, last position", "computed label influence over chance, last position",
                 "labelled influence over chance, source token", "labelled features active at the source token",
                 "influence on the source token's embedding", "influence on features at the source token",
                 "influence on last-position error nodes"]
grade_summary[route_columns].style.format(precision=2, na_rep="none labelled")

# %% [markdown]
# **No family's route through labelled features is there, read any of these ways.** What the
# graphs show, family by family (the test module re-measures each on eight facts, six truth, six
# sentiment and three IOI prompts, drawn afresh under each claim seed):
#
# - **Facts**: the last-position features labelled with the prompt's relation hold no more
#   influence than as many random active features there (0.8 to 1.0 of chance on three draws of
#   prompts), and those labelled with its country no more either (0.6 to 0.9, where any is active).
#   At the country token the transcoders have almost no country features at all: on average fewer
#   than one active feature in 64 there is labelled with the prompt's country. Features at the
#   country token hold 1 to 2% of a graph's influence; the country token's *embedding* holds
#   several times more. The country's identity travels as its embedding, through frozen attention
#   (inside the edges), to the last position, where the error nodes hold a large share of the
#   influence (0.09 to 0.17 at the last position alone). The graph shows *that* the country matters
#   and *where* it arrives; which capital it recalls sits in what these transcoders do not
#   reconstruct (longer-trained sets, below, recover part of it).
# - **Truth**: the verdict-labelled last-position features hold a little more than chance (1.15 to
#   1.26 times); the country-labelled ones hold well under it. The closest any family comes to a
#   labelled route, and weak. At the country token, the few country features hold about twice the
#   influence of the other features there, but features there hold almost none of the graph's.
# - **Sentiment**: sentiment-labelled last-position features hold about chance influence (1.05 to
#   1.08): two thirds of the active features there carry the prompt's sentiment, so a label this
#   common cannot single anything out.
# - **IOI**: the last-position features labelled by whether the indirect object came first hold well
#   under chance (when one is active at all); the names reach the answer through heads, inside the
#   edges (next section).
#
# Why: the shipped transcoders (512 features, `k = 16` per layer, trained briefly) face forty
# countries, two verdicts, two sentiments and dozens of names; they learned features for what is
# common (a country slot, a relation, a verdict), not one per country, and the per-country
# computation lands in their error. A graph reads a computation through the replacement's features,
# so a route the features do not represent cannot appear in it, however the graph is read. That is a
# claim about this dictionary, and it can be tested.

# %% [markdown]
# ### Another dictionary
# If the per-country computation lands in the error because these transcoders are too small or too
# briefly trained, another dictionary should pull some of it out. Dictionary-learning papers saw
# features split as a dictionary grows, and rarer concepts get a feature only in the wider ones
# (Bricken et al. 2023; Templeton et al. 2024). Training matters too: the shipped set saw 65,536
# tokens for 300 steps. The organism ships two more sets, so the two can be told apart:
#
# - **long** (`organism_transcoders.LONG_DIR`): the same 512 features and `k = 16`, trained on four
#   times the tokens for five times the steps;
# - **wide** (`organism_transcoders.WIDE_DIR`): the long recipe with **2048 features**.
#
# Their cards are in `utils/organism/transcoders_long/` and `utils/organism/transcoders_wide/`. We
# build the same graphs with all three sets and read them where a route should pass:
#
# - **facts**: the country's token and the last position, for features labelled with the prompt's
#   country (40 values), and the last position for features labelled with the prompt's answer word;
# - **IOI**: the indirect object's token and the last position, for features labelled with the
#   indirect object's name (dozens of values);
# - **truth**: the last position, for the country; the stated value's token, for the value stated.
#
# Three changes make this reading fairer than the ones above. Labels are **left out**: a prompt's
# features are labelled by the family's *other* prompts, and only when at least `MIN_SUPPORT` of
# those with the prompt's value fire them, so a rare feature cannot be labelled by a single prompt.
# For the country in facts prompts, every prompt about the same country *and relation* is left out
# too, so the label comes from the country's other relations: a feature that only says " Tokyo"
# cannot pass for a "Japan" feature (the answer reading asks about that kind directly). The question
# is sharper: is **the most influential feature** at that position one the world labels with the
# prompt's value? A feature drawn at random from the active ones there would be with chance
# *labelled / active*, the column beside it. And a second baseline asks the same of the **most
# active** feature there (each feature's activation over its largest on the labelling prompts), so
# that influence is not merely picking features that fire hard. `value labelable` is the share of
# graphs whose value has enough labelling prompts to be labelled at all. Sentiment is left out: its
# label has two values, and most active features carry the prompt's own.

# %% tags=["export"]
@dataclass
class Reading:
    """One place a route should pass in a family's graphs: a position, and the label a feature there should carry."""

    name: str
    position: object  # prompt index -> the position read (-1: the last)
    value: object  # prompt index -> the label value a feature there should carry
    group: object = None  # prompt index -> a key; prompts sharing the read prompt's key do not label (None: itself only)


def chapter_readings(model, families: list[Family]) -> dict[str, list[Reading]]:
    """The places this section reads, per family (sentiment has none: two-valued labels single nothing out)."""
    by_name = {family.name: family for family in families}
    facts, ioi, truth = (by_name[name] for name in ("facts", "IOI", "truth"))
    country, fact = (lambda i: facts.prompts.labels["country"][i],
                     lambda i: (facts.prompts.labels["country"][i], facts.prompts.labels["relation"][i]))
    return {
        "facts": [Reading("country, at its token", lambda i: facts.sources(i)[0], country, fact),
                  Reading("answer, at the last position", lambda i: -1, lambda i: facts.prompts.correct[i]),
                  Reading("country, at the last position", lambda i: -1, country, fact)],
        "IOI": [Reading("indirect object, at its token", lambda i: ioi.sources(i)[0], lambda i: ioi.prompts.labels["io"][i]),
                Reading("indirect object, at the last position", lambda i: -1, lambda i: ioi.prompts.labels["io"][i])],
        "truth": [Reading("country, at the last position", lambda i: -1, lambda i: truth.prompts.labels["country"][i]),
                  Reading("stated value, at its token", lambda i: truth.sources(i)[1],
                          lambda i: truth.prompts.labels["stated"][i])],
    }


MIN_SUPPORT = 2  # a feature is labelled with a value only if it fires on at least this many labelling prompts with it


@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def route_readings(model, transcoders: list, family: Family, readings: list[Reading], n: int, start: int = 0,
                   progress: bool = True) -> pd.DataFrame:
    """For the first `n` prompts from `start` the model answers, and each reading: how many active features at the
    reading's position the family's other prompts label with this prompt's value, whether the most influential
    active feature there is one of them (and whether the most active one is, each feature's activation taken over
    its largest on the labelling prompts), the chance of a random active feature being one (labelled / active),
    their influence over chance, and whether the value has enough labelling prompts to be labelled at all."""
    from utils import progress_bar

    activations, last = family_feature_activations(model, transcoders, family.prompts.prompts)  # [batch, pos, layer, d_tc]
    positions = {reading.name: [int(last[j]) if reading.position(j) == -1 else reading.position(j)
                                for j in range(len(last))] for reading in readings}
    rows = []
    for i in progress_bar(answered_prompts(model, family.prompts, n, start), show=progress,
                          desc=f"graphs of {family.name} prompts"):
        graph, influence, _ = prompt_graph(model, transcoders, family.prompts, i)
        for reading in readings:
            group = reading.group or (lambda j: j)  # by default a prompt only leaves itself out
            others = [j for j in range(len(last)) if group(j) != group(i)]
            others_activations = activations[others, [positions[reading.name][j] for j in others]]  # [other, layer, d_tc]
            values = [reading.value(j) for j in others]
            labels = label_features(others_activations, values)  # this prompt (and its group) labels nothing
            value = reading.value(i)
            with_value = torch.tensor([v == value for v in values])  # [other]
            fired_with_value = (others_activations[with_value] > 0).sum(0)  # [layer, d_tc]
            largest = others_activations.amax(0).clamp_min(1e-6)  # [layer, d_tc]

            def is_labelled(node: int) -> bool:
                _, layer, _, feature = graph.nodes[node]
                return labels.labelled(layer, feature, value) and int(fired_with_value[layer, feature]) >= MIN_SUPPORT

            def relative_activation(node: int) -> float:
                _, layer, where, feature = graph.nodes[node]
                return float(graph.run.features[layer, where, feature] / largest[layer, feature])

            position = len(graph.str_tokens) - 1 if reading.position(i) == -1 else reading.position(i)
            active = [node for node, (kind, _, where, _) in enumerate(graph.nodes) if kind == "feature" and where == position]
            labelled = [node for node in active if is_labelled(node)]  # TopK: `active` is never empty
            top = max(active, key=lambda node: float(influence[node]))
            _, top_layer, _, top_feature = graph.nodes[top]
            rows.append({"prompt": i, "reading": reading.name, "active": len(active), "labelled": len(labelled),
                         "top layer": top_layer, "top feature": top_feature,
                         "top direct effect": graph.adjacency[-1, top].item(),
                         "top feature labelled": float(top in labelled), "chance": len(labelled) / len(active),
                         "most active feature labelled": float(max(active, key=relative_activation) in labelled),
                         "influence over chance": (influence[labelled].mean()
                                                   / influence[active].mean().clamp_min(1e-12)).item()
                         if labelled else float("nan"),
                         "value labelable": float(int(with_value.sum()) >= MIN_SUPPORT),
                         "influence on error nodes": sum(float(influence[node]) for node, (kind, *_) in enumerate(graph.nodes)
                                                         if kind == "error") / float(influence.sum())})
    return pd.DataFrame(rows)


def route_summary(readings: pd.DataFrame) -> pd.DataFrame:
    """Per reading: the mean labelled and active counts, the rate at which the top feature is labelled beside its
    chance, the influence over chance (where any is labelled), and the error nodes' share."""
    return readings.groupby("reading", sort=False)[["labelled", "active", "top feature labelled", "chance",
                                                    "most active feature labelled", "influence over chance",
                                                    "value labelable", "influence on error nodes"]].mean()


# %%
other_sets = {name: organism_transcoders.load_transcoders(device=model.cfg.device, folder=folder)
              for name, folder in (("long", organism_transcoders.LONG_DIR), ("wide", organism_transcoders.WIDE_DIR))}
readings = chapter_readings(model, families)
ROUTE_PROMPTS = {"facts": 8, "IOI": 2, "truth": 4}  # graphs per family and set
route_rows = {(set_name, family.name): route_readings(model, transcoders, family, readings[family.name],
                                                      ROUTE_PROMPTS[family.name])
              for set_name, transcoders in (("shipped", shipped), *other_sets.items())
              for family in families if family.name in readings}
route_table = pd.concat({key: route_summary(rows) for key, rows in route_rows.items()})
route_table.style.format(precision=2, na_rep="none labelled")

# %% [markdown]
# **Longer training brings part of the facts route into view; width adds to it.** Read against both
# baselines, on the chapter's prompts and on four draws of twenty facts, four IOI and twelve truth
# prompts that the test module makes (the first extends the chapter's own):
#
# - **Facts: a country feature appears at the last position.** With the shipped set, the most
#   influential last-position feature never carries the prompt's country. With the long set it does
#   in 5 to 30% of the graphs, with the wide set in 15 to 40%, against chances of 2 to 3% and 4 to 6%.
#   They are not features of this prompt's answer word alone: their label comes from the country's
#   *other* relations, and the top feature almost never carries the answer word by itself (in at most
#   one graph in ten, with any set). Section 5 reads what they write: the country's capital and its
#   language, both at once. They show on capital and language prompts, whose answer belongs to
#   one country (over the four larger draws, long 10 of 32 and 5 of 23, wide 12 of 32 and 8 of 23),
#   and never on the 25 continent prompts, whose answer is shared by many countries. The most active
#   feature is a country feature in at most one graph in ten with the long and wide sets: influence
#   picks out features that activation alone does not. Width doubles the number of active country
#   features (three to four of 64 with 2048 features, two and a half in one draw; one or two with
#   the long set; under one with the shipped set) and raises the rate in three of the five draws. The country's token is unchanged:
#   almost no feature there carries the country, with any set. So the route the papers draw is there
#   in part: the country's embedding, moved by attention to the last position, where a feature that
#   singles out the country is among the most influential nodes. Influence counts effects of either
#   sign, so the table alone does not say this feature pushes *toward* the answer; Section 5 turns
#   it off in the real model to find out.
# - **The error nodes' share of a graph's influence drops in every family** with the longer-trained
#   sets (facts: 0.15-0.19 shipped, 0.09-0.12 long, 0.07-0.08 wide; truth and IOI fall by a fifth
#   to a half too), so a smaller error is not by itself a sign of a recovered route: truth and IOI gain
#   none.
# - **Truth: nothing new.** The recalled country at the last position, where the stated fact should
#   meet the recalled one, is never carried by the top feature, with any set. At the stated value's
#   token the top feature carries the value in at most one graph in four, with any set; a feature for
#   a word at its own token is a token feature, not a route. And in up to half of the graphs the
#   stated value appears in too few other prompts to be labelled at all (the `value labelable`
#   column), so this reading can miss.
# - **IOI: little change.** About one active feature in 64 at the indirect object's token, or fewer,
#   carries its name, with every set, and almost none at the last position. With the wide set that
#   feature is the top one at its token in at most half of the graphs: a token feature again. The
#   names travel through the heads (next section).
#
# What this teaches. A graph can only show a computation in its replacement's vocabulary, and the
# vocabulary is a choice: its width, and how long and on what it was trained. Here training five
# times longer moved part of the per-country computation into features a graph can name, and four
# times the width added more of them. A finding of "no route" from one dictionary is a finding about
# that dictionary; before you believe it of the model, train another. The rest of the chapter keeps
# the shipped set: its numbers are the ones the exercises check.

# %% [markdown]
# ### The heads of Chapter 06 in an IOI graph
# Attention is frozen, so a head is not a node: it is part of every edge that crosses positions. To
# see a head in a graph, remove it from the edges: set its frozen pattern to zero and recompute the
# direct effects on the target. The local replacement is linear, so the change is exactly the part
# of the edges that runs through that head. `head_shares` does it for every head and reports, for
# the name tokens' embeddings (IO, S1 and S2), the share of their direct effect on the logit
# difference that passes through each head.

# %% tags=["export"]
def head_shares(model, transcoders: list, run: FrozenRun, target, positions: list[int]) -> Float[Tensor, "layer head_index"]:
    """Share of the sources at `positions` whose direct effect on the target runs through each head (pattern zeroed)."""
    embedding_effects, feature_effects, error_effects = direct_effects(model, transcoders, run, target)

    def at_positions(effects) -> Tensor:
        embeddings, features, errors = effects
        return torch.cat([embeddings[positions], features[:, positions].flatten(), errors[:, positions].flatten()])

    full = at_positions((embedding_effects, feature_effects, error_effects))  # [source]
    shares = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            patterns = run.patterns.clone()
            patterns[layer, head] = 0
            without = at_positions(direct_effects(model, transcoders, FrozenRun(**{**run.__dict__, "patterns": patterns}),
                                                  target))
            shares[layer, head] = ((full - without).abs().sum() / full.abs().sum()).item()
    return shares


# %%
from utils.plotting import heatmap

ioi_family = families[1]
ioi_index = int(grades["IOI"].index[0])
ioi_prompts = ioi_family.prompts
ioi_run = freeze_run(model, shipped, model.to_tokens(ioi_prompts.prompts[ioi_index])[0])
ioi_target = logit_diff_target(model, ioi_prompts.correct[ioi_index], ioi_prompts.wrong[ioi_index])
name_positions = ioi_family.sources(ioi_index) + [word_position(model, ioi_prompts.prompts[ioi_index],
                                                                ioi_prompts.labels["s"][ioi_index], last=True)]
ioi_head_shares = head_shares(model, shipped, ioi_run, ioi_target, name_positions)
heatmap(ioi_head_shares, x=[f"H{head}" for head in range(model.cfg.n_heads)],
        y=[f"L{layer}" for layer in range(model.cfg.n_layers)],
        title=f"Share of the names' direct effect on the logit difference through each head<br>"
              f"{ioi_prompts.prompts[ioi_index]!r}")

# %% [markdown]
# The heads that carry the names' effect are the ones Chapter 06 found by patching: **L0H3** (and
# L0H6), which read the repeated name at S2, and **L3H1** at the last position, with a few other
# late heads beside them. L3H1 is not the largest late head on every prompt: on the chapter's
# prompt, L3H6 carries a little more of the names' effect (about 0.25 against 0.22). The test module checks that L0H3 and L3H1 are among the eight heads (of 32)
# with the largest shares in most IOI graphs. The graph and patching agree on *where*; as Chapter 06
# showed, neither says on its own what these heads compute.
#
# ## 5. Validate by intervention
#
# A graph edge is exact in the local replacement. Is it right about the model? Turn a feature off
# in the **real** model (subtract its activation times its decoder row from its MLP's output, at its
# position) and measure the change of the logit difference. The simplest prediction the graph makes
# is its direct edge: minus the feature's direct effect on the target. A fuller one sums every path
# of the graph (`total_effects`): later active features respond linearly to the change of their
# pre-activations, inactive ones stay off, error terms stay fixed. The real model differs from the local
# replacement in two ways: attention patterns and LayerNorm scales move when the stream changes
# (the graph froze them), and later MLPs respond (the graph holds their features fixed and routes
# only direct effects). A second real run with attention patterns and LayerNorm scales frozen at
# their clean values separates the two.

# %% tags=["export"]
def ablate_feature(model, run: FrozenRun, transcoders: list, layer: int, position: int, feature: int,
                   target, freeze: bool = False) -> float:
    """The target's change when one feature is turned off in the real model (optionally with attention and LN frozen)."""
    delta = run.features[layer, position, feature] * transcoders[layer].W_dec[feature]  # [d_model]

    def remove(out, hook):
        out = out.clone()
        out[0, position] -= delta
        return out

    hooks = [(output_hook(layer), remove)] + (frozen_hooks(model, run) if freeze else [])
    with torch.no_grad():
        logits = model.run_with_hooks(run.tokens[None], fwd_hooks=hooks)[0]
    return (target(logits, None) - target(run.logits, None)).item()


def total_effects(graph: Graph) -> Float[Tensor, "node"]:
    """Each node's effect on the target summed over every path of the graph (the direct edge included), with later
    active features responding linearly to their pre-activations and inactive ones staying off.

    With h[s] the total effect of node s and A the adjacency, h[s] = A[target, s] + sum over features u of
    h[u] / act[u] * A[u, s], i.e. h solves (I - A^T D) h = A[target], D = diag(1 / act) on feature nodes."""
    adjacency = graph.adjacency.double()
    inverse_act = torch.zeros(len(graph.nodes), dtype=adjacency.dtype)
    for index, (kind, layer, position, feature) in enumerate(graph.nodes):
        if kind == "feature":
            inverse_act[index] = 1 / graph.run.features[layer, position, feature].double()
    inverse_act = inverse_act.to(adjacency.device)
    system = torch.eye(len(graph.nodes), dtype=adjacency.dtype, device=adjacency.device) - adjacency.T * inverse_act
    return torch.linalg.solve(system, adjacency[-1]).float()


def intervention_table(model, transcoders: list, prompts, indices: list[int], top: int = 5) -> pd.DataFrame:
    """For the `top` most influential features of each prompt's graph: predicted and measured changes."""
    rows = []
    for index in indices:
        graph, influence, _ = prompt_graph(model, transcoders, prompts, index)
        target = logit_diff_target(model, prompts.correct[index], prompts.wrong[index])
        features = [i for i in influence.argsort(descending=True).tolist() if graph.nodes[i][0] == "feature"][:top]
        total = total_effects(graph)
        for node in features:
            _, layer, position, feature = graph.nodes[node]
            rows.append({"prompt": index, "feature": node_label(graph, node), "position": position,
                         "graph prediction": -graph.adjacency[-1, node].item(),
                         "graph prediction, all paths": -total[node].item(),
                         "real, attention and LN frozen": ablate_feature(model, graph.run, transcoders, layer, position,
                                                                         feature, target, freeze=True),
                         "real model": ablate_feature(model, graph.run, transcoders, layer, position, feature, target)})
    return pd.DataFrame(rows)


# %%
validation = intervention_table(model, shipped, families[0].prompts, list(grades["facts"].index[:4]), top=5)
validation.style.format(precision=3, subset=["graph prediction", "graph prediction, all paths",
                                             "real, attention and LN frozen", "real model"])

# %% tags=["export"]
def validation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """How well the graph's prediction agrees with each real intervention: correlation and sign agreement."""
    prediction = torch.tensor(table["graph prediction"].to_numpy())
    all_paths = torch.tensor(table["graph prediction, all paths"].to_numpy())
    rows = {}
    for column in ("real, attention and LN frozen", "real model"):
        measured = torch.tensor(table[column].to_numpy())
        rows[column] = {"correlation with the prediction": torch.corrcoef(torch.stack([prediction, measured]))[0, 1].item(),
                        "correlation with the all-paths prediction":
                            torch.corrcoef(torch.stack([all_paths, measured]))[0, 1].item(),
                        "same sign": (prediction.sign() == measured.sign()).double().mean().item(),
                        "median |measured| / |predicted|": (measured.abs() / prediction.abs().clamp_min(1e-6)).median().item()}
    return pd.DataFrame(rows).T


# %%
validation_summary(validation).round(2)

# %%
extent = [float(validation[["graph prediction", "real model"]].min().min()),
          float(validation[["graph prediction", "real, attention and LN frozen", "real model"]].max().max())]
figure = go.Figure([go.Scatter(x=validation["graph prediction"], y=validation[column], mode="markers", name=column,
                               text=validation["feature"]) for column in ("real, attention and LN frozen", "real model")])
figure.add_trace(go.Scatter(x=extent, y=extent, mode="lines", line={"dash": "dash", "color": "grey"},
                            name="measured = predicted"))
figure.update_layout(title="Turning one feature off: the graph's prediction against the real model", autosize=True,
                     xaxis_title="predicted change of the logit difference", yaxis_title="measured change", height=420)

# %% [markdown]
# The graph's direct edge predicts the direction of most interventions, and it correlates with the
# real changes (the test holds the correlation above 0.6 and the sign agreement above 65%; three
# draws of prompts gave a sign agreement of 0.75 to 0.9).
# The frozen run explains where it fails:
#
# - for **layer-3 features** the frozen run equals the prediction to the digits. That is a sanity
#   check, true by construction, not a finding: with attention and normalisation frozen and no MLP
#   after them, the local replacement *is* the model, and a direct edge is exactly what an
#   intervention does. The real model then differs only by how attention and LayerNorm move;
# - for **early features** the frozen run changes the answer by more than the direct edge (in the
#   median, by more than 1.3 times): later MLPs respond to the change. Summing all the graph's paths
#   brings the prediction closer to the frozen run (on the chapter's prompts the correlation rises
#   from about 0.88 to about 0.95; on other prompts it is lower, and the test holds it above 0.7),
#   but still short of it in size:
#   the graph holds the error terms fixed, while the real MLPs' errors respond too. In the real
#   model, attention and the LayerNorms partly undo the amplification, so the real change often
#   lies nearer the direct edge than the frozen run's, for a reason the graph knows nothing about.
#
# One limit of this check: the most influential features of these graphs all sit at the **last
# position** (the `position` column), so every intervention here changes the stream only where the
# answer is read. Attention from the last position to earlier ones, which a feature at the country
# token would have to go through, is not exercised by it.

# %% [markdown]
# ### Turning the country feature off
# Section 4 found, with the longer-trained sets, graphs whose most influential last-position feature
# carries the prompt's country. Influence counts effects of either sign, so turn that feature off in
# the real model and see what the answer does. Beside the change, the graph's own prediction (minus
# its direct edge), and the change's rank among every active feature at that position turned off the
# same way, one at a time (rank 1: the largest drop of the logit difference). The graphs whose top
# feature carries no label are the control: is the country feature a stronger lever than any top
# feature, or only as strong?

# %% tags=["export"]
def top_feature_ablations(model, transcoders: list, prompts, rows: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """For each graph in `rows` (one reading's rows of `route_readings`): its top feature at the reading's last
    position, whether the world labels it (`labelled`), its activation, the real logit difference, its change when
    that feature is turned off, the graph's prediction, the change's rank among turning off each active feature at
    that position one at a time (1: the largest drop), and the largest drop among the others."""
    from utils import progress_bar

    table = []
    for row in progress_bar(rows.to_dict("records"), show=progress, desc="graphs, each active feature turned off"):
        index = int(row["prompt"])
        run = freeze_run(model, transcoders, model.to_tokens(prompts.prompts[index])[0])
        target = logit_diff_target(model, prompts.correct[index], prompts.wrong[index])
        position = len(run.tokens) - 1  # route_readings reads this reading at the last position
        active = (run.features[:, position] > 0).nonzero().tolist()  # [[layer, feature], ...]
        changes = {(layer, feature): ablate_feature(model, run, transcoders, layer, position, feature, target)
                   for layer, feature in active}
        top = (int(row["top layer"]), int(row["top feature"]))
        others = torch.tensor([change for key, change in changes.items() if key != top])  # [active - 1]
        table.append({"prompt": index, "labelled": bool(row["top feature labelled"]), "layer": top[0], "feature": top[1],
                      "activation": run.features[top[0], position, top[1]].item(),
                      "logit difference": target(run.logits, None).item(),
                      "graph prediction": -row["top direct effect"], "turned off": changes[top],
                      "rank of its drop": 1 + int((others < changes[top]).sum()), "active": len(active),
                      "largest other drop": others.min().item()})
    return pd.DataFrame(table)


# %%
facts_prompts = next(family for family in families if family.name == "facts").prompts
top_off = pd.concat({set_name: top_feature_ablations(model, other_sets[set_name], facts_prompts,
                                                     rows[rows["reading"] == "country, at the last position"])
                     for (set_name, family_name), rows in route_rows.items()
                     if set_name in other_sets and family_name == "facts"})
top_off.style.format(precision=2)

# %% tags=["export"]
def ablation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind of top feature (labelled or not) and layer: graphs, and how often turning it off lowers the answer,
    drops it the most of all the position's active features, or among the three most."""
    grouped = table.groupby(["labelled", "layer"])
    return pd.DataFrame({"graphs": grouped.size(), "lowers the answer": grouped["turned off"].apply(lambda c: (c < 0).mean()),
                         "largest drop": grouped["rank of its drop"].apply(lambda r: (r == 1).mean()),
                         "among the three largest": grouped["rank of its drop"].apply(lambda r: (r <= 3).mean())})


# %%
ablation_summary(top_off).round(2)

# %% [markdown]
# **Turning a country feature off lowers the answer every time; so does turning off most top
# features of the same layers.** Over the test module's four draws of twenty facts prompts (the
# first holds the chapter's eight), 35 of the 160 graphs of the two sets have a country feature at
# the top, all in layers 1 and 2 (a prompt can count twice, once per set). Turning it off lowered the
# logit difference in all 35, by 0.16 to 1.33: 4 to 33% of it, 15% in the median; the answer never
# flipped. Its drop was among the three largest of the 64 active features at that position in 32
# of the 35, and the largest in 22, a rate that varies by draw (none of four graphs in one, eleven
# of twelve in another; in the chapter's table, one of five). The graph's direct edge had the sign
# right every time.
#
# The control says how much of that is the label. Top features of layers 1 to 3 that carry no label
# lower the answer when turned off in 93 to 100% of each draw's graphs, among the three largest
# drops in 61 to 86% (the country features: 75 to 100%). So being the graph's top node is most of
# what makes a feature a strong lever here; what the label adds is *which* lever: a feature that
# fires on at least two of the family's other prompts about this country, with at least 60%
# (`LABEL_SHARE`) of its activation mass over those prompts on this country. (The control is not
# clean: some unlabelled tops put 30 to 60% of their mass on the prompt's country, just short of a
# label.)
# Layer-0 top features are another story: turning one off lowered the answer in only 33 to 56% of
# each draw's graphs (the chapter's eight prompts counted as a draw), and the graph's direct edge had the sign wrong for 15 to 35% of them: for early
# features the direct edge says least about the real model, as the table above found.
#
# What this shows is a country feature at the answer's position that the answer partly depends on,
# in the model and not only in the replacement. It is not the papers' whole route. Not accounted for
# here: the country's embedding that attention carries to this position (Section 4), the other
# active features (with the wide set, two to four of the 64 carry the country), and the
# error nodes; single ablations do not add up, so the other 85% is not simply "elsewhere". And
# whether the country reaches this feature through a feature at its own token, as the papers'
# graphs draw it, cannot be asked here: almost no feature there carries the country (Section 4).

# %% [markdown]
# ### Another country's feature, added
# Turning a feature off shows the answer needs it, not what it says. The attribution-graph papers
# test what a feature means by moving it into another context and watching the answer follow
# (Lindsey et al. 2025 replace a group of features for one state with another state's, upstream of
# the step that says the capital, and the capital changes with them). Here, more simply: take a
# country feature found above, with the activation it had in its own prompt, **add** it at the last
# position of a prompt about *another* country, and see which answer's logit rises most among the
# recipient's relation's answers other than its own (rank 1: the answer the world gives for the
# feature's country and the recipient's relation). Recipients of every relation are used, so a
# feature found on a capital prompt is also asked about languages and continents. Then read the
# feature's decoder row through the unembedding, to see which answers it writes directly.

# %% tags=["export"]
def world_answer(country: str, relation: str) -> str:
    """The answer token the world gives for (country, relation), as the facts prompts spell it (" Paris")."""
    return " " + world.fact_value(country, relation)


def relation_answers(relation: str) -> list[str]:
    """Every country's answer for `relation`, each once."""
    return sorted({world_answer(country, relation) for country in world.COUNTRIES})


def country_injections(model, transcoders: list, prompts, donors: pd.DataFrame, recipients: list[int]) -> pd.DataFrame:
    """Each donor (a row of `top_feature_ablations`: a prompt's top country feature and its activation) added at the
    last position of each recipient prompt about another country, in the real model: the rank, by how much its logit
    rises, of the answer for (the donor's country, the recipient's relation) among the relation's answers other than
    the recipient's own (1: it rises most); the recipient's own answer's lead over it (`gap`), and how much of that
    lead the feature takes (`lift`). On capital and language recipients, also whether the donor country's answer
    for the *other* of the two relations rises more than the one asked for (`other relation rises more`)."""
    country, relation = prompts.labels["country"], prompts.labels["relation"]
    clean = {}
    rows = []
    for donor in donors.to_dict("records"):
        j, layer = int(donor["prompt"]), int(donor["layer"])
        delta = donor["activation"] * transcoders[layer].W_dec[int(donor["feature"])]  # [d_model]

        def add(out, hook):
            out = out.clone()
            out[0, -1] += delta
            return out

        for i in recipients:
            wanted = world_answer(country[j], relation[i])
            if country[i] == country[j] or wanted == prompts.correct[i]:
                continue
            tokens = model.to_tokens(prompts.prompts[i])  # [1, pos]
            with torch.no_grad():
                if i not in clean:
                    clean[i] = model(tokens)[0, -1]  # [d_vocab]
                rise = model.run_with_hooks(tokens, fwd_hooks=[(output_hook(layer), add)])[0, -1] - clean[i]  # [d_vocab]
            candidates = [answer for answer in relation_answers(relation[i]) if answer != prompts.correct[i]]
            wanted_id, own_id = (answer_ids(model, [word])[0] for word in (wanted, prompts.correct[i]))
            other_relation = {"capital": "language", "language": "capital"}.get(relation[i])
            other = world_answer(country[j], other_relation) if other_relation else None
            rows.append({"donor": j, "recipient": i, "from": relation[j], "into": relation[i],
                         "rank": 1 + int((rise[answer_ids(model, candidates)] > rise[wanted_id]).sum()),
                         "answers": len(candidates), "gap": (clean[i][own_id] - clean[i][wanted_id]).item(),
                         "lift": (rise[wanted_id] - rise[own_id]).item(),
                         "other relation rises more": None if other is None
                         else bool(rise[answer_ids(model, [other])[0]] > rise[wanted_id])})
    return pd.DataFrame(rows)


def injection_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (donor relation, recipient relation): pairs, how often the donor country's answer rises most, that rate
    for an answer drawn at random, the median rank, the mean lift against the mean gap, how often the lift closes
    the gap (the answer flips), and how often the donor country's answer for the other relation rises more."""
    grouped = table.groupby(["from", "into"])
    return pd.DataFrame({"pairs": grouped.size(), "rises most": grouped["rank"].apply(lambda rank: (rank == 1).mean()),
                         "chance": grouped["answers"].apply(lambda answers: (1 / answers).mean()),
                         "median rank": grouped["rank"].median(), "lift": grouped["lift"].mean(),
                         "gap": grouped["gap"].mean(),
                         "flipped": (table["lift"] > table["gap"]).groupby([table["from"], table["into"]]).mean(),
                         "other relation rises more": grouped["other relation rises more"].apply(
                             lambda more: more.dropna().astype(float).mean())})


def answer_readout(model, transcoders: list, prompts, donors: pd.DataFrame) -> pd.DataFrame:
    """What each donor feature writes, read through the unembedding (its decoder row times W_U; the final LayerNorm
    left out): the facts world's answers it raises most, and the rank among them of its own country's capital,
    language and continent (1: raised most)."""
    vocabulary = sorted({answer for relation in world.RELATIONS for answer in relation_answers(relation)})
    ids = answer_ids(model, vocabulary)
    rows = []
    for donor in donors.to_dict("records"):
        j, layer, feature = int(donor["prompt"]), int(donor["layer"]), int(donor["feature"])
        writes = transcoders[layer].W_dec[feature] @ model.W_U[:, ids]  # [answers]
        rank = {word: 1 + int((writes > writes[vocabulary.index(word)]).sum()) for word in vocabulary}
        own = {kind: world_answer(prompts.labels["country"][j], kind) for kind in world.RELATIONS}
        rows.append({"prompt": j, "layer": layer, "feature": feature, "country": prompts.labels["country"][j],
                     "writes most": ", ".join(vocabulary[k].strip() for k in writes.argsort(descending=True)[:3].tolist()),
                     **{f"{kind} rank": rank[word] for kind, word in own.items()},
                     "answers": len(vocabulary)})
    return pd.DataFrame(rows)


# %%
recipients = answered_prompts(model, facts_prompts, 30)
country_off = top_off[top_off["labelled"]]
injections = pd.concat({set_name: injection_summary(country_injections(model, other_sets[set_name], facts_prompts,
                                                                       country_off.loc[set_name], recipients))
                        for set_name in other_sets if set_name in country_off.index.get_level_values(0)})
injections.style.format(precision=2)

# %%
pd.concat({set_name: answer_readout(model, other_sets[set_name], facts_prompts, country_off.loc[set_name])
           for set_name in other_sets if set_name in country_off.index.get_level_values(0)})

# %% [markdown]
# **The feature's country's answers follow it, whichever relation is asked, because it writes
# them.** Added to a capital or a language prompt about another country, a country feature lifts
# its own country's answer above the relation's other answers (the recipient's own left out) in 92
# to 100% of the pairs per draw, pooled over both sets, in the chapter's draw and the test module's
# four (chance: one answer in 24 to 39); a feature found on a prompt of the other relation does so
# in 75 to 100% of the pairs per set and draw. The relation does not decide what the feature
# writes, though. Read through the unembedding (the last table), its two strongest answers among
# the world's 70 are its country's capital and language in 75 to 100% of the features per draw, and
# on language prompts its country's capital rises more than its language in 48 to 80% of the pairs.
# So this is not the papers' picture of a country node that a later "say the capital" step reads:
# each feature writes its country's answer words directly, both at once, and what makes the model
# answer a language prompt with a language lies elsewhere in the network. Continents do not follow:
# a feature's continent ranks far down what it writes (median rank 6 to 46 of 70 per draw), and its
# lift is near zero.
#
# It moves the answer; it does not flip it. Added at the strength it had in its own prompt, a
# feature gains its country's capital or language 0.6 to 1.0 logits in the mean (`lift`) of the
# recipient's lead of 4.3 to 4.6 (`gap`), and the recipient's own answer kept its lead over the
# donor's in every pair of every draw (`flipped`). That is one dose, added while the recipient's own
# country features stay on; the papers' swaps remove those first. A swap, and a dose-response
# curve, are the next experiments this section leaves to you.

# %% [markdown]
# ### Exercise 10.8: steer a feature, predict, measure (difficulty 2/3, ~20 min)
# Write `steer_feature(model, transcoders, graph, node, target, scale)`: `node` is the index of a
# feature node of `graph`. Set that feature to `scale` times its activation in the **real** model
# (`scale=0` turns it off, `scale=2` doubles it) and return two floats, `(predicted, measured)`:
# - `predicted`: the change of the target the graph predicts from its direct edge,
#   `(scale - 1)` times the node's direct effect on the target (`graph.adjacency[-1, node]`);
# - `measured`: the change of `target(logits, None)` in the real model, from its clean value
#   `target(graph.run.logits, None)`, when the feature's MLP output at the feature's position gains
#   `(scale - 1) * activation * W_dec[feature]` (a hook on `output_hook(layer)` of a
#   `model.run_with_hooks` call on `graph.run.tokens[None]`).
#
# The check compares both with the reference for a last-position feature and for a feature at an
# earlier position, turned off and doubled.
#
# <details><summary>Hint 1</summary>
#
# A feature's contribution to its MLP's output is its activation times its decoder row. Changing the
# activation from `a` to `scale * a` adds `(scale - 1) * a * W_dec[feature]` at one position of one layer.
# </details>
# <details><summary>Hint 2</summary>
#
# `_, layer, position, feature = graph.nodes[node]`; `a = graph.run.features[layer, position, feature]`.
# The hook clones the `[batch, pos, d_model]` output and adds the change at `[0, position]` only.
# </details>
# <details><summary>Hint 3</summary>
#
# `delta = (scale - 1) * a * transcoders[layer].W_dec[feature]`; in the hook `out = out.clone(); out[0, position] += delta; return out`;
# `logits = model.run_with_hooks(graph.run.tokens[None], fwd_hooks=[(output_hook(layer), hook)])[0]`; return
# `((scale - 1) * graph.adjacency[-1, node].item(), (target(logits, None) - target(graph.run.logits, None)).item())`.
# </details>

# %% tags=["export"]
def steer_feature(model, transcoders: list, graph: Graph, node: int, target, scale: float = 0.0) -> tuple[float, float]:
    """Set one feature of the graph to `scale` times its activation in the real model: the graph's predicted change
    of the target (its direct edge times scale - 1) and the measured change."""
    ### BEGIN SOLUTION
    _, layer, position, feature = graph.nodes[node]
    run = graph.run
    delta = (scale - 1) * run.features[layer, position, feature] * transcoders[layer].W_dec[feature]  # [d_model]

    def steer(out, hook):
        out = out.clone()
        out[0, position] += delta
        return out

    with torch.no_grad():
        logits = model.run_with_hooks(run.tokens[None], fwd_hooks=[(output_hook(layer), steer)])[0]
        measured = target(logits, None) - target(run.logits, None)
    return (scale - 1) * graph.adjacency[-1, node].item(), measured.item()
    ### END SOLUTION


# %%
steer_feature = check_exercise("10.8", steer_feature)

# %% [markdown]
# The interventions of the table above all sat at the last position. Now the ones that do exercise
# attention: for a few facts prompts, the features with the largest direct edges on the target at
# the last position and at earlier positions (the first position aside), each turned off with your
# `steer_feature`, and, beside the real model, the real model with attention patterns and LayerNorm
# scales frozen at their clean values (`ablate_feature(..., freeze=True)`).

# %% tags=["export"]
def steering_table(model, transcoders: list, prompts, indices: list[int], per_position: int = 3) -> pd.DataFrame:
    """The features with the largest direct edges on the target, at the last position and at earlier ones (not the
    first), each turned off: the graph's prediction, the real change, and the real change with attention and LN frozen."""
    rows = []
    for index in indices:
        graph, _, _ = prompt_graph(model, transcoders, prompts, index)
        target = logit_diff_target(model, prompts.correct[index], prompts.wrong[index])
        last = len(graph.str_tokens) - 1
        edges = graph.adjacency[-1].abs()
        features = [i for i, node in enumerate(graph.nodes) if node[0] == "feature"]
        for where, pool in (("last position", [i for i in features if graph.nodes[i][2] == last]),
                            ("earlier position", [i for i in features if 0 < graph.nodes[i][2] < last])):
            for node in sorted(pool, key=lambda i: -edges[i].item())[:per_position]:
                _, layer, position, feature = graph.nodes[node]
                predicted, measured = steer_feature(model, transcoders, graph, node, target, 0.0)
                rows.append({"prompt": index, "where": where, "feature": node_label(graph, node),
                             "graph prediction": predicted, "real model": measured,
                             "real, attention and LN frozen": ablate_feature(model, graph.run, transcoders, layer, position,
                                                                             feature, target, freeze=True)})
    return pd.DataFrame(rows)


def steering_summary(table: pd.DataFrame) -> pd.DataFrame:
    """By where the feature sits: the median error of the graph's prediction relative to its size, and sign agreement."""
    rows = {}
    for where, group in table.groupby("where", sort=False):
        size = group["graph prediction"].abs().clip(lower=1e-6)
        rows[where] = {
            "features": len(group),
            "median |prediction|": group["graph prediction"].abs().median(),
            "median |real - prediction| / |prediction|": ((group["real model"] - group["graph prediction"]).abs() / size).median(),
            "same, attention and LN frozen": ((group["real, attention and LN frozen"] - group["graph prediction"]).abs()
                                              / size).median(),
            "median |real - frozen| / |prediction|": ((group["real model"] - group["real, attention and LN frozen"]).abs()
                                                      / size).median(),
            "same sign, real model": (group["real model"].gt(0) == group["graph prediction"].gt(0)).mean()}
    return pd.DataFrame(rows).T


# %%
steering = steering_table(model, shipped, families[0].prompts, list(grades["facts"].index[:4]))
steering_summary(steering).round(2)

# %% [markdown]
# Where the graph's direct edge fails, by where the feature sits (the test module re-measures each
# line on other draws of prompts):
#
# - **At the last position** the frozen real run matches the prediction (median error 0: most of
#   these features sit in layer 3, where the local replacement *is* the frozen model). The real
#   model misses by about a third of the prediction in the median, all of it from the final
#   LayerNorm and, for earlier layers' features, attention at the last position moving.
# - **At earlier positions** the direct edges are an order of magnitude smaller (9 to 14 times, in
#   the median): a feature there reaches the answer only through attention to the last position.
#   The direct edge misses by a third to a half of itself, about as much as at the last position,
#   but for two reasons at once: the frozen run already misses (by 0.25 to 0.35 of the prediction:
#   later MLPs respond, which a direct edge ignores), and letting attention and LayerNorm move adds
#   about 0.2 more on its own (the test holds it above 0.1). That second part is what the graph
#   freezes out: it cannot see that turning a feature off at an earlier token also changes what the
#   last position reads from it.


# %% [markdown]
# ## 6. Exporting a graph for the field's viewers
#
# The field's graph viewers (Neuronpedia's, and the one bundled with `circuit-tracer`) read a JSON
# file of nodes and links. Writing it is cheap: `graph_json` follows the schema of circuit-tracer's
# frontend (`circuit_tracer/frontend/graph_models.py`: `metadata`, `qParams`, `nodes` with ids such
# as `"1_203_4"` for layer 1, feature 203, position 4 and `"E_812_4"` for an embedding, and `links`
# with a source, a target and a weight). Two caveats: the viewer's feature pages (top activations)
# live on Neuronpedia's servers and know nothing of the organism, and we could not open the
# viewer offline to confirm it renders our file; our target node is a logit *difference*, written
# as the correct answer's logit node.

# %% tags=["export"]
import json


def graph_json(graph: Graph, influence: Float[Tensor, "node"], kept: Int[Tensor, "kept"], slug: str,
               correct: str, wrong: str, tokenizer) -> dict:
    """The pruned graph in the node-and-link schema of circuit-tracer's frontend (Neuronpedia's graph viewer)."""
    n_layers = graph.run.features.shape[0]
    kept_list = [int(i) for i in kept]
    correct_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(correct))[0]

    def node_id(index: int) -> str:
        kind, layer, position, feature = graph.nodes[index]
        return {"embedding": f"E_{feature}_{position}", "feature": f"{layer}_{feature}_{position}",
                "error": f"{layer}_-1_{position}", "target": f"{n_layers + 1}_{correct_id}_{position}"}[kind]

    def node(index: int) -> dict:
        kind, layer, position, feature = graph.nodes[index]
        common = {"node_id": node_id(index), "ctx_idx": position, "influence": float(influence[index]),
                  "clerp": node_label(graph, index)}
        if kind == "embedding":
            return {**common, "feature": position, "layer": "E", "feature_type": "embedding",
                    "jsNodeId": f"E_{feature}-{position}"}
        if kind == "feature":
            return {**common, "feature": (layer + feature) * (layer + feature + 1) // 2 + feature, "layer": str(layer),
                    "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{feature}-0",
                    "activation": float(graph.run.features[layer, position, feature])}
        if kind == "error":
            return {**common, "feature": -1, "layer": str(layer), "feature_type": "mlp reconstruction error",
                    "jsNodeId": f"{layer}_-1-{position}"}
        return {**common, "feature": correct_id, "layer": str(n_layers + 1), "feature_type": "logit",
                "is_target_logit": True, "jsNodeId": f"L_{correct_id}-{position}",
                "clerp": f"logit({correct!r}) - logit({wrong!r})"}

    links = [{"source": node_id(s), "target": node_id(t), "weight": float(graph.adjacency[t, s])}
             for t in kept_list for s in kept_list if graph.adjacency[t, s] != 0]
    return {"metadata": {"slug": slug, "scan": "workbook-organism", "transcoder_list": [],
                         "prompt_tokens": graph.str_tokens, "prompt": "".join(graph.str_tokens[1:]),
                         "node_threshold": 0.8, "schema_version": 1},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": [node(i) for i in kept_list], "links": links}


# %%
exported = graph_json(example_graph, example_influence, example_kept, "organism-capital", example.correct[0],
                      example.wrong[0], model.tokenizer)
print(f"{len(exported['nodes'])} nodes and {len(exported['links'])} links; "
      f"json.dump(exported, open('graph.json', 'w')) writes a file the viewer can load")
print(json.dumps(exported["nodes"][0], indent=1))

# %% [markdown]
# ## 7. What attribution graphs can't tell you
#
# - **Frozen attention.** A graph never shows *why* a head attended where it did: the QK circuit is
#   frozen out, and a change that moves attention (every real intervention on an early feature)
#   behaves differently from the graph's prediction (Section 5). IOI's names move entirely through
#   heads, which the graph shows only as edges from embeddings.
# - **Error nodes.** Whatever the transcoders miss becomes an opaque node. In the facts graphs of the
#   shipped set, error nodes hold a sizeable share of the influence: the part of the computation
#   that recalls *which* capital is the part the graph does not explain. At the first position the error is several
#   times larger still.
# - **One prompt at a time.** Each graph is about one prompt's local replacement. The grading of
#   Section 4 needed many graphs per family and labels from whole prompt sets to say anything
#   general; a graph alone is an anecdote.
# - **An explanation of the replacement, not the model.** The graph's edges are exact in the local
#   replacement. On the model they are predictions, right in sign and trend here, wrong in size
#   wherever later MLPs, attention or normalisation respond (Section 5).
# - **Labels are needed to read it.** A node named `L3 F240` means nothing until something labels
#   it. Here the world did; on a real model, feature labels come from automated interpretation of
#   top activations, and grading them is a research problem of its own.
# - **A route the features don't carry.** Read every fair way we tried (Section 4), no family's graphs
#   with the shipped transcoders route through last-position features the world labels more than as
#   many random active features would: they have no feature per country, and the recall lands in their
#   error. Sets trained five times longer put a country feature at the top of the last position in
#   5 to 40% of the facts graphs, and interventions show what it is: a feature that writes its
#   country's capital and language at once (Section 5), not a country node feeding a relation step.
#   A graph can only show a computation in the replacement's own vocabulary.
# - **The transcoders' own choices.** Width, `k`, the data and the training seed decide which
#   features exist; another set of transcoders gives another graph of the same computation (Section
#   4's longer-trained sets have country features at the last position that the shipped set lacks).
#
# ### References
# - Dunefsky, Chlenski, Nanda (2024). *Transcoders Find Interpretable LLM Feature Circuits.*
# - Ameisen et al. (2025). *Circuit Tracing: Revealing Computational Graphs in Language Models*
#   (the local replacement model, attribution graphs, pruning by influence, error nodes).
# - Lindsey et al. (2025). *On the Biology of a Large Language Model* (attribution graphs read on
#   Claude 3.5 Haiku, validated by intervention, among them feature swaps in multi-step recall).
# - `circuit-tracer` (safety-research, 2025) and Neuronpedia's graph viewer: the open-source
#   implementation and viewer whose graph schema Section 6 writes.
# - Gao et al. (2024). *Scaling and evaluating sparse autoencoders* (TopK).
# - Bricken et al. (2023). *Towards Monosemanticity*; Templeton et al. (2024). *Scaling
#   Monosemanticity* (features split as a dictionary grows; rarer concepts get features only in the
#   wider dictionaries).
# - Wang et al. (2022). *Interpretability in the Wild* (the IOI task).
#
# **Your record so far:**

# %%
show_progress("10_circuit_tracing")
