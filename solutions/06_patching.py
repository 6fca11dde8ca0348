# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 06: Activation patching and circuits
#
# **Time:** about 5 hours. **Exercises:** 10, each checked as soon as you run the cell after it.
# *Run All* takes under two minutes on a 2-core laptop CPU (longer when the machine is busy).
#
# **You will learn to**
# - build clean and corrupted runs whose difference you know, and a **normalised metric** that
#   reads 1 on the clean run and 0 on the corrupted one;
# - **patch** activations from one run into another, by layer and position and by attention head,
#   in batched sweeps, and tell **denoising** (is it sufficient?) from **noising** (is it necessary?);
# - see that **zero, mean and resample ablation** ask different questions and give different answers;
# - separate a head's direct effect from its effect through later components with **path patching**,
#   and answer Chapter 03's open question about head L3H1, and find that the organism's IOI algorithm
#   is not the one GPT-2 small uses;
# - estimate every patch at once with **attribution patching** (gradient times difference), and find
#   where its linear approximation fails;
# - search for a **circuit** for IOI on a template the chapter does not map for you, and have it graded
#   by faithfulness and minimality on name pairs the chapter's prompts never use;
#   run an **ACDC-style** pruning loop and see what its threshold and order decide; measure
#   **self-repair** after ablating an early head;
#   confirm the **induction circuit** by path patching into the induction heads' keys, and watch
#   induction **form during training**;
# - learn a **direction** whose patching swaps the truth verdict (distributed alignment search) and
#   compare it with the difference of means, and meet the **subspace illusion**.
#
# **Seed concepts:** activation patching and ablation; tracing a circuit backwards and forwards; the
# circuits hypothesis; self-repair (the Hydra effect); the IOI task; attribution patching (AtP);
# automated circuit discovery (ACDC, measured in a node-level version) and causal scrubbing (named);
# faithfulness; distributed alignment search and the subspace illusion; developmental
# interpretability (induction heads form suddenly in training).
#
# Chapter 03 read the model: where each answer appears, which components write it. Reading is not
# causing. This chapter *intervenes*: it changes one activation and measures what happens to the
# answer. Everything is graded against the organism's known world.

# %%
import pandas as pd
import torch
from IPython.display import display

from utils import check_exercise, load_model, setup, show_progress

env = setup()
model = load_model()
torch.set_grad_enabled(False)  # patching only runs the model; section 5 turns gradients on where it needs them

# %% [markdown]
# ## 1. Clean and corrupted runs
#
# A patching experiment compares two runs that differ in one thing we control. For IOI ("When Kate
# and Rose went to the restaurant, Rose gave a drink to" → " Kate"), the world's generator gives us
# two natural corruptions of the **second mention of the subject** (S2), the one token that decides
# the answer (the task, its roles and the ABC corruption come from Wang et al., 2022, who mapped GPT-2
# small's IOI circuit):
# - **swap**: S2 becomes the *other* name ("..., Kate gave a drink to"): the right answer flips;
# - **ABC**: S2 becomes a third name ("..., Anna gave a drink to"): no name is repeated, so neither
#   name is the answer.
#
# Patching compares positions across runs, so every prompt of a batch must have the same length and
# the same role at each position. We take one template of the world's five, and the held-out split
# (name pairs never seen in training). Chapter 02's `tokenize` and Chapter 03's `abc_prompts` do the
# rest.

# %% tags=["export"]
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from utils.memo import memoized
from utils.models import frozen_weights
from utils.organism import world
from utils.organism.world import PromptSet, prompt_set
from utils.references.ch02_probing import answer_ids, tokenize
from utils.references.ch03_logit_lens import abc_prompts


def ioi_prompts(split: str = "test", template: int = 0, start: int = 0, n: int | None = None, seed: int = 0) -> PromptSet:
    """IOI prompts of one template (every prompt the same length, the same role at each position)."""
    prompts = prompt_set("ioi", split, seed=seed)
    keep = [i for i, t in enumerate(prompts.labels["template"]) if t == template]
    return prompts.subset(keep[start:] if n is None else keep[start:start + n])


def swapped_prompts(prompts: PromptSet) -> PromptSet:
    """The same prompts with the repeated subject (S2) replaced by the other name: the answer flips."""
    corrupted = []
    for prompt, io, s in zip(prompts.prompts, prompts.labels["io"], prompts.labels["s"]):
        cut = prompt.rfind(s)
        corrupted.append(prompt[:cut] + io + prompt[cut + len(s):])
    return PromptSet(prompts.family, prompts.split, corrupted, prompts.correct, prompts.wrong, dict(prompts.labels))


def paired_tokens(model, clean: list[str], corrupted: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Tokens of clean and corrupted prompts, and the last positions; raises if any pair differs in length."""
    clean_tokens, last = tokenize(model, clean)
    corrupted_tokens, corrupted_last = tokenize(model, corrupted)
    check_same_shape(clean_tokens, corrupted_tokens)
    if not torch.equal(last, corrupted_last):
        bad = int((last != corrupted_last).nonzero()[0])
        raise ValueError(f"prompt {bad} has {int(last[bad])} tokens clean and {int(corrupted_last[bad])} corrupted: "
                         "patching compares positions, so each pair must have the same length")
    device = model.cfg.device
    return clean_tokens.to(device), corrupted_tokens.to(device), last.to(device)


def check_same_shape(tokens: Tensor, other: Tensor) -> None:
    """Raise a clear error when two token batches cannot be patched into each other."""
    if tokens.shape != other.shape:
        raise ValueError(f"the two runs have token shapes {list(tokens.shape)} and {list(other.shape)}: patching "
                         "copies activations position by position, so both runs need the same batch and length")


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], correct: Int[Tensor, "batch"], wrong: Int[Tensor, "batch"],
               last: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """Each prompt's logit difference (correct minus wrong) at its own last position."""
    rows = torch.arange(len(last), device=logits.device)
    final = logits[rows, last.to(logits.device)]  # [batch, d_vocab]
    return final[rows, correct.to(logits.device)] - final[rows, wrong.to(logits.device)]


# %%
clean_set = ioi_prompts("test", n=16)
abc_set = abc_prompts(clean_set, seed=0)
swap_set = swapped_prompts(clean_set)
clean_tokens, swap_tokens, last = paired_tokens(model, clean_set.prompts, swap_set.prompts)
_, abc_tokens, _ = paired_tokens(model, clean_set.prompts, abc_set.prompts)
correct = answer_ids(model, clean_set.correct).to(model.cfg.device)
wrong = answer_ids(model, clean_set.wrong).to(model.cfg.device)
str_tokens = model.to_str_tokens(clean_tokens[0])
position_labels = [f"{i} {t}" for i, t in enumerate(str_tokens)]
print("clean:  ", clean_set.prompts[0], "->", clean_set.correct[0])
print("swap:   ", swap_set.prompts[0])
print("ABC:    ", abc_set.prompts[0])
clean_logits, swap_logits, abc_logits = model(clean_tokens), model(swap_tokens), model(abc_tokens)
pd.DataFrame({"mean logit difference (clean answer minus repeated name)":
              {name: logit_diff(logits, correct, wrong, last).mean().item()
               for name, logits in (("clean", clean_logits), ("swap", swap_logits), ("ABC", abc_logits))}}).round(2)

# %% [markdown]
# The swap run prefers the *other* name by about as much as the clean run prefers the right one;
# the ABC run, with no name repeated, has only a weak preference. A patching experiment moves an activation from one run into the
# other and asks how far the answer moves. To compare experiments, we put the answer on a scale
# where the corrupted run is 0 and the clean run is 1.
#
# ### Exercise 6.1: a normalised metric (difficulty 1/3, ~10 min)
# Write `normalised_logit_diff_metric(clean_logits, corrupted_logits, correct, wrong, last)`. Compute
# the mean logit difference (with `logit_diff`, over the batch) of the clean run and of the
# corrupted run **once**, and return a function `metric(logits)` that maps a run's logits
# `[batch, pos, d_vocab]` to
#
# $$\frac{\overline{\text{LD}}(\text{logits}) - \overline{\text{LD}}(\text{corrupted})}{\overline{\text{LD}}(\text{clean}) - \overline{\text{LD}}(\text{corrupted})},$$
#
# a 0-dimensional tensor: 1 on the clean logits, 0 on the corrupted ones. Take the mean over the
# batch *before* normalising. Keep it differentiable (no `.item()`): Section 5 takes its gradient.
#
# <details><summary>Hint 1</summary>
#
# A function can define and return another function that uses the first one's variables (a closure).
# </details>
# <details><summary>Hint 2</summary>
#
# Two numbers computed once, outside `metric`: the clean run's mean logit difference and the corrupted
# run's. Inside `metric`, one more mean logit difference, then the rescaling.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# clean_value = logit_diff(clean_logits, correct, wrong, last).mean()
# corrupted_value = logit_diff(corrupted_logits, correct, wrong, last).mean()
# def metric(logits):
#     return (logit_diff(logits, correct, wrong, last).mean() - corrupted_value) / (clean_value - corrupted_value)
# return metric
# ```
# </details>

# %% tags=["export"]
from collections.abc import Callable

Metric = Callable[[Tensor], Tensor]


def normalised_logit_diff_metric(clean_logits: Float[Tensor, "batch pos d_vocab"],
                                 corrupted_logits: Float[Tensor, "batch pos d_vocab"], correct: Int[Tensor, "batch"],
                                 wrong: Int[Tensor, "batch"], last: Int[Tensor, "batch"]) -> Metric:
    """A metric on logits: the mean logit difference rescaled so that corrupted = 0 and clean = 1."""
    ### BEGIN SOLUTION
    clean_value = logit_diff(clean_logits, correct, wrong, last).mean()
    corrupted_value = logit_diff(corrupted_logits, correct, wrong, last).mean()

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return (logit_diff(logits, correct, wrong, last).mean() - corrupted_value) / (clean_value - corrupted_value)

    return metric
    ### END SOLUTION


# %%
normalised_logit_diff_metric = check_exercise("6.1", normalised_logit_diff_metric)

# %%
swap_metric = normalised_logit_diff_metric(clean_logits, swap_logits, correct, wrong, last)
abc_metric = normalised_logit_diff_metric(clean_logits, abc_logits, correct, wrong, last)
print(f"swap metric: clean {swap_metric(clean_logits):.2f}, swap {swap_metric(swap_logits):.2f}, ABC {swap_metric(abc_logits):.2f}")

# %% [markdown]
# On the swap scale the ABC run sits near the middle: it removed the model's reason for the answer
# without giving it a reason for the other name.
#
# ## 2. Patching by hand
#
# **Denoising**: run the *corrupted* prompts, and copy one activation from the clean run into it. If
# the metric climbs back towards 1, that activation is *sufficient* (together with the rest of the
# corrupted run) to restore the answer. **Noising**: run the *clean* prompts with one activation from
# the corrupted run. If the metric falls, that activation is *necessary*. The two answer different
# questions, and a component can pass one test and fail the other. (The two names, and how to read
# each, follow Heimersheim & Nanda, 2024, "How to use and interpret activation patching".)
#
# Every function here takes a `base` run (the one we run) and a `source` run (the one we copy from):
# denoising is `base = corrupted, source = clean`; noising the other way round.
#
# ### Exercise 6.2: patch the residual stream (difficulty 2/3, ~20 min)
# Write `patch_residual(model, base_tokens, source_tokens, metric)`. First raise a `ValueError` if
# the two token batches differ in shape (`check_same_shape` does it). Cache
# `blocks.{layer}.hook_resid_pre` on the source run; then, for every layer and every position, run
# the base tokens with a hook that replaces the residual stream **at that position only** (all
# prompts) by the source's, and record `metric(logits)`. Return `[layer, pos]`.
#
# <details><summary>Hint 1</summary>
#
# `model.run_with_hooks(base_tokens, fwd_hooks=[(name, hook_fn)])`; the hook gets `resid`
# `[batch, pos, d_model]` and returns it after `resid[:, position] = source[:, position]`.
# </details>
# <details><summary>Hint 2</summary>
#
# A hook defined in a loop captures the loop variable by reference; pass it as a default argument
# (`def hook(resid, hook, position=position)`) or build the hook in a small function.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# check_same_shape(base_tokens, source_tokens)
# _, cache = model.run_with_cache(source_tokens)
# for layer in range(n_layers):
#     name = f"blocks.{layer}.hook_resid_pre"
#     for position in range(n_pos):
#         logits = model.run_with_hooks(base_tokens, fwd_hooks=[(name, residual_patch_hook(cache[name], position))])
#         results[layer, position] = metric(logits)
# ```
# (`residual_patch_hook(source, position)`, just above your function, builds the hook.)
# </details>

# %% tags=["export"]
def residual_patch_hook(source: Float[Tensor, "batch pos d_model"], position: int):
    """A hook that replaces the residual stream at `position` by the source run's."""
    def hook(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        resid[:, position] = source[:, position]
        return resid
    return hook


@torch.no_grad()
def patch_residual(model, base_tokens: Int[Tensor, "batch pos"], source_tokens: Int[Tensor, "batch pos"],
                   metric: Metric) -> Float[Tensor, "layer pos"]:
    """The metric after copying the source run's residual stream (hook_resid_pre) into the base run, per (layer, position)."""
    ### BEGIN SOLUTION
    check_same_shape(base_tokens, source_tokens)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    _, source_cache = model.run_with_cache(source_tokens, names_filter=lambda name: name in names)
    results = torch.zeros(model.cfg.n_layers, base_tokens.shape[1], device=model.cfg.device)
    for layer, name in enumerate(names):
        for position in range(base_tokens.shape[1]):
            logits = model.run_with_hooks(base_tokens, fwd_hooks=[(name, residual_patch_hook(source_cache[name], position))])
            results[layer, position] = metric(logits)
    return results
    ### END SOLUTION


# %%
patch_residual = check_exercise("6.2", patch_residual)

# %%
from utils.plotting import heatmap, lines

layer_labels = [f"resid_pre {layer}" for layer in range(model.cfg.n_layers)]
resid_denoising = patch_residual(model, swap_tokens, clean_tokens, swap_metric)  # [layer, pos]
heatmap(resid_denoising, x=position_labels, y=layer_labels, text_auto=".2f",
        title="Denoising the residual stream (swap corruption): metric after patching one (layer, position)")

# %% [markdown]
# The picture has two bright places, and they tell a story of information moving:
# - At the **S2 position** (the repeated name), patching restores the answer in every layer up to
#   the last: whatever the model reads from the token at S2 still sits there.
# - At the **last position** ("to"), patching helps from layer 1 on, more in later layers: the
#   information has started to arrive where the answer is written. Nothing in between matters.
#
# Only attention moves information between positions, so the heads that read S2 and write at the last
# position are what to look for next.
#
# ### Patching heads
# A head's output is `hook_z` (`[batch, pos, head, d_head]`) times its `W_O`, so patching a head's
# `hook_z` patches its output. A sweep over every head (and every position) is many forward passes;
# batching makes it a few. For layer `l`, stack one copy of the base batch per (head, position)
# variant, let a single hook on `blocks.{l}.attn.hook_z` patch variant `v`'s own head and position in
# its own copy, and cut the logits back into variants for the metric.
#
# ### Exercise 6.3: patch head outputs, batched (difficulty 3/3, ~45 min)
# Write `patch_head_output(model, base_tokens, source_tokens, metric, by_position=False, chunk_size=16)`.
# Raise a `ValueError` on token shapes that differ. With `by_position=False` return `[layer, head]`:
# the metric with head (layer, head) patched from the source **at every position**; with
# `by_position=True` return `[layer, pos, head]`: the head patched at that position only (the layout
# of `transformer_lens.patching`). Run at most `chunk_size` variants per forward pass; any
# `chunk_size` must give the same answer.
#
# <details><summary>Hint 1</summary>
#
# Make a boolean mask `[variant, pos, head]` that is True where variant `v` patches. The base batch
# repeated `n` times is `base_tokens.repeat(n, 1)` (`[n * batch, pos]`): variant-major.
# </details>
# <details><summary>Hint 2</summary>
#
# In the hook, `z.view(n, batch, pos, head, d_head)`, and
# `torch.where(mask[:, None, :, :, None], source_z[None], z)`. Afterwards
# `logits.view(n, batch, pos, d_vocab)` and one metric call per variant.
# </details>
# <details><summary>Hint 3</summary>
#
# `head_variant_masks(n_pos, n_heads, by_position, device)` gives the masks. For each layer and each
# `chunk` of `masks.split(chunk_size)`: run `base_tokens.repeat(len(chunk), 1)` with a hook on
# `hook_z` that returns `torch.where(chunk[:, None, :, :, None], source_z[None], z.view(...)).flatten(0, 1)`;
# collect `metric(variant_logits)` for every variant; at the end reshape to `[layer, head]` or
# `[layer, pos, head]` (variants are numbered `position * n_heads + head`).
# </details>

# %% tags=["export"]
def head_variant_masks(n_pos: int, n_heads: int, by_position: bool, device) -> Bool[Tensor, "variant pos head"]:
    """One mask per patching variant: a head at every position, or a (position, head) pair."""
    if by_position:
        eye = torch.eye(n_pos * n_heads, dtype=torch.bool, device=device)
        return eye.view(n_pos * n_heads, n_pos, n_heads)  # variant = position * n_heads + head
    heads = torch.eye(n_heads, dtype=torch.bool, device=device)  # [variant, head]
    return heads[:, None, :].expand(n_heads, n_pos, n_heads)


@torch.no_grad()
def patch_head_output(model, base_tokens: Int[Tensor, "batch pos"], source_tokens: Int[Tensor, "batch pos"],
                      metric: Metric, by_position: bool = False, chunk_size: int = 16) -> Tensor:
    """The metric after patching each head's output (hook_z) from the source run: [layer, head] or [layer, pos, head]."""
    ### BEGIN SOLUTION
    check_same_shape(base_tokens, source_tokens)
    batch, n_pos = base_tokens.shape
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, source_cache = model.run_with_cache(source_tokens, names_filter=lambda name: name in names)
    masks = head_variant_masks(n_pos, model.cfg.n_heads, by_position, base_tokens.device)  # [variant, pos, head]
    scores = []
    for name in names:
        source_z = source_cache[name]  # [batch, pos, head, d_head]
        for chunk in masks.split(chunk_size):
            n = len(chunk)

            def patch(z, hook, chunk=chunk, n=n, source_z=source_z):
                z = z.view(n, batch, *z.shape[1:])  # [variant, batch, pos, head, d_head]
                return torch.where(chunk[:, None, :, :, None], source_z[None], z).flatten(0, 1)

            logits = model.run_with_hooks(base_tokens.repeat(n, 1), fwd_hooks=[(name, patch)])
            logits = logits.view(n, batch, *logits.shape[1:])  # [variant, batch, pos, d_vocab]
            scores += [metric(variant_logits) for variant_logits in logits]
    scores = torch.stack(scores).view(model.cfg.n_layers, len(masks))  # [layer, variant]
    return scores.view(model.cfg.n_layers, n_pos, model.cfg.n_heads) if by_position else scores
    ### END SOLUTION


# %%
patch_head_output = check_exercise("6.3", patch_head_output)

# %%
import math
import time

from utils.session import elapsed_bar

head_labels = [f"H{h}" for h in range(model.cfg.n_heads)]
with elapsed_bar("patching every head, then every head at every position"):  # your function: the bar counts seconds
    heads_denoising = patch_head_output(model, swap_tokens, clean_tokens, swap_metric)  # [layer, head]
    started = time.perf_counter()
    heads_by_position = patch_head_output(model, swap_tokens, clean_tokens, swap_metric, by_position=True)  # [layer, pos, head]
    ours_seconds = time.perf_counter() - started
heatmap(heads_denoising, x=head_labels, y=[f"L{layer}" for layer in range(model.cfg.n_layers)], text_auto=".2f",
        title="Denoising each head's output at every position (swap corruption)", x_label="head", y_label="layer")

# %%
from transformer_lens import patching

from utils import progress_bar

patching.tqdm = progress_bar  # its sweeps' bars become the workbook's: plain text once done, none in the book
_, clean_cache = model.run_with_cache(clean_tokens)
library_all = patching.get_act_patch_attn_head_out_all_pos(model, swap_tokens, clean_cache, swap_metric)
started = time.perf_counter()
library_by_position = patching.get_act_patch_attn_head_out_by_pos(model, swap_tokens, clean_cache, swap_metric)
library_seconds = time.perf_counter() - started
print(f"largest difference from transformer_lens.patching: all positions "
      f"{(library_all - heads_denoising).abs().max():.1e}, by position {(library_by_position - heads_by_position).abs().max():.1e}")
print(f"head-by-position sweep ({heads_by_position[0].numel() * model.cfg.n_layers} cells): ours (batched) "
      f"{ours_seconds:.1f} s, transformer_lens.patching {library_seconds:.1f} s")

# %% [markdown]
# The library gives the same numbers (it patches the same `hook_z`, one forward pass per cell). On a
# CPU the organism's forward pass is already compute-bound at small batches, so batching saves
# little here; on a GPU, or with a slower per-call overhead, the batched sweep is many times faster
# (`make bench` measures both).
#
# Which heads, at which position? The whole map, one row per head, one column per position:

# %%
heatmap(heads_by_position.permute(0, 2, 1).flatten(0, 1), x=position_labels,  # [layer * head, pos]
        y=[f"L{layer}H{head}" for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)],
        title="Denoising each head at each position (swap corruption)", x_label="position", y_label="head")

# %%
top_cells = {}
for index in heads_by_position.flatten().argsort(descending=True)[:6].tolist():
    layer, rest = divmod(index, heads_by_position.shape[1] * model.cfg.n_heads)
    position, head = divmod(rest, model.cfg.n_heads)
    top_cells[f"L{layer}H{head} @ {position}"] = {"position": f"{position} {str_tokens[position]!r}",
                                     "denoising restores": heads_by_position[layer, position, head].item()}
pd.DataFrame(top_cells).T.style.format({"denoising restores": "{:.2f}"})

# %% [markdown]
# Two layer-0 heads at the **S2 position** (L0H3 and L0H6), and at the **last position** one head of
# the last layer, L3H1 (with a little from L0H7 and L2H0), carry almost all of it: S2 early, the end
# late. GPT-2 small has a map of the same shape, and Wang et al. (2022) read it as an algorithm: heads
# at S2 notice that the name is repeated, "S-inhibition" heads pass that on, and "name mover" heads at
# the last position attend to the *other* name and copy it to the answer. It is tempting to read our
# map the same way. Patching says only *where* the information is; Section 4 measures what L3H1 reads
# and writes, and the GPT-2 story does not survive the measurement.
#
# ### Noising: necessary, not just sufficient
# Denoising asked "does this restore the answer?". Noising asks "does removing it break the answer?".
# Here is the same head sweep, noising the clean run with the swap run's outputs. On the metric's scale
# the clean run is 1 and a head that matters pulls it down, so the map shows the *cost*, 1 minus the
# metric: in both maps a large (red) cell is an important head.

# %%
heads_noising = patch_head_output(model, clean_tokens, swap_tokens, swap_metric)  # [layer, head]
display(pd.DataFrame({f"L{layer}H{head}": {"denoising restores": heads_denoising[layer, head].item(),
                                           "noising costs": 1 - heads_noising[layer, head].item()}
                      for layer, head in [(3, 1), (0, 3), (0, 6), (0, 7)]}).T.round(2))
heatmap(1 - heads_noising, x=head_labels, y=[f"L{layer}" for layer in range(model.cfg.n_layers)], text_auto=".2f",
        title="What noising each head's output costs (1 minus the metric; swap corruption)", x_label="head", y_label="layer")

# %% [markdown]
# Compare the two maps head by head. Here they agree: each important head's denoising effect is about
# what noising it costs (L3H1 restores about 0.65 and removing it costs about 0.65; L0H3 about 0.4
# both ways). That is a finding about this model, not a rule: it says these heads act roughly
# independently and add up. With redundant heads (GPT-2's backup name movers), noising one head shows
# little, because another takes over, while denoising it shows much; with heads that only work
# together, the reverse.
#
# ## 3. Ablations disagree
#
# To **ablate** a component is to remove what it does, and there is more than one way to "remove":
# - **zero ablation** sets the output to 0, a value the head never produces (the next layers have
#   never seen it);
# - **mean ablation** sets it to its mean over a *reference distribution*; with the ABC prompts
#   (no name repeated) as reference, it removes what the head writes about *this* prompt's names but
#   keeps everything the head always writes (Wang et al., 2022, ablate this way);
# - **resample ablation** sets it to its value on one reference prompt (Chan et al., 2022, draw it from
#   other inputs of the distribution; here each prompt gets its own ABC twin): a realistic value, but a
#   noisy one.
#
# Each is a patch from a different source, so each asks a different question.
#
# ### Exercise 6.4: ablate a set of heads (difficulty 2/3, ~20 min)
# Write `ablate_heads(model, tokens, heads, method, reference_tokens=None)` that runs `tokens` with
# every `(layer, head)` in `heads` ablated at every position and returns the logits. `method` is
# `"zero"`, `"mean"` (the mean of the head's `hook_z` over the reference batch, **per position**) or
# `"resample"` (the reference run's value, prompt by prompt). For `"mean"` the reference needs the
# same number of positions; for `"resample"` the same shape (raise a `ValueError` otherwise; reference
# tokens are not needed for `"zero"`).
#
# <details><summary>Hint 1</summary>
#
# Cache `blocks.{layer}.attn.hook_z` on the reference tokens; the mean over the batch is
# `.mean(0, keepdim=True)` (`[1, pos, head, d_head]`), which broadcasts over the batch.
# </details>
# <details><summary>Hint 2</summary>
#
# Group the heads by layer: one hook per layer, `z[:, :, head_list] = replacement[:, :, head_list]`.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# layers = sorted({layer for layer, _ in heads})
# replacements = head_replacements(model, tokens, layers, method, reference_tokens)  # checks the shapes too
# hooks = []
# for layer in layers:
#     mask = torch.zeros(n_pos, n_heads, dtype=torch.bool)
#     mask[:, [h for l, h in heads if l == layer]] = True
#     hooks.append((f"blocks.{layer}.attn.hook_z", replace_heads_hook(replacements[layer], mask)))
# return model.run_with_hooks(tokens, fwd_hooks=hooks)
# ```
# </details>

# %% tags=["export"]
ABLATIONS = ("zero", "mean", "resample")


@torch.no_grad()
def head_replacements(model, tokens: Int[Tensor, "batch pos"], layers, method: str,
                      reference_tokens: Int[Tensor, "ref_batch pos"] | None) -> dict[int, Tensor]:
    """The value each ablation puts in `hook_z` of each layer: [batch or 1, pos, head, d_head]."""
    if method not in ABLATIONS:
        raise ValueError(f"unknown ablation {method!r}; choose one of {', '.join(ABLATIONS)}")
    if method == "zero":
        shape = (1, tokens.shape[1], model.cfg.n_heads, model.cfg.d_head)
        return {layer: torch.zeros(shape, device=model.cfg.device) for layer in layers}
    if reference_tokens is None:
        raise ValueError(f"{method} ablation needs reference_tokens")
    if method == "resample":
        check_same_shape(tokens, reference_tokens)
    elif reference_tokens.shape[1] != tokens.shape[1]:
        raise ValueError(f"mean ablation needs references of {tokens.shape[1]} positions, got {reference_tokens.shape[1]}")
    names = {f"blocks.{layer}.attn.hook_z" for layer in layers}
    _, cache = model.run_with_cache(reference_tokens, names_filter=lambda name: name in names)
    values = {layer: cache[f"blocks.{layer}.attn.hook_z"] for layer in layers}  # [ref_batch, pos, head, d_head]
    return {layer: z.mean(0, keepdim=True) for layer, z in values.items()} if method == "mean" else values


def replace_heads_hook(replacement: Float[Tensor, "batch pos head d_head"], mask: Bool[Tensor, "pos head"]):
    """A hook on hook_z that puts `replacement` wherever `mask` is True."""
    def hook(z: Float[Tensor, "batch pos head d_head"], hook) -> Float[Tensor, "batch pos head d_head"]:
        return torch.where(mask[None, :, :, None], replacement.to(z.dtype), z)
    return hook


@torch.no_grad()
def ablate_heads(model, tokens: Int[Tensor, "batch pos"], heads: list[tuple[int, int]], method: str = "mean",
                 reference_tokens: Int[Tensor, "ref_batch pos"] | None = None) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with every (layer, head) in `heads` zero-, mean- or resample-ablated at every position."""
    ### BEGIN SOLUTION
    layers = sorted({layer for layer, _ in heads})
    replacements = head_replacements(model, tokens, layers, method, reference_tokens)
    hooks = []
    for layer in layers:
        mask = torch.zeros(tokens.shape[1], model.cfg.n_heads, dtype=torch.bool, device=model.cfg.device)  # [pos, head]
        mask[:, [head for l, head in heads if l == layer]] = True
        hooks.append((f"blocks.{layer}.attn.hook_z", replace_heads_hook(replacements[layer], mask)))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)
    ### END SOLUTION


# %%
ablate_heads = check_exercise("6.4", ablate_heads)

# %% [markdown]
# Now the same three head sets under the three ablations, on the clean prompts, with the ABC prompts
# as reference. The numbers are mean logit differences (the clean run's is first).

# %% tags=["export"]
@torch.no_grad()
def ablation_table(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "batch pos"],
                   head_sets: dict[str, list[tuple[int, int]]], score: Metric) -> dict[str, dict[str, float]]:
    """`score` of the logits with each head set ablated each way: {set name: {method: value}}."""
    return {label: {method: float(score(ablate_heads(model, tokens, heads, method, reference_tokens)))
                    for method in ABLATIONS} for label, heads in head_sets.items()}


# %%
def mean_logit_diff(logits):
    return logit_diff(logits, correct, wrong, last).mean()


head_sets = {"L3H1": [(3, 1)], "L0H3, L0H6, L0H7": [(0, 3), (0, 6), (0, 7)], "L3H4, L3H6": [(3, 4), (3, 6)]}
table = ablation_table(model, clean_tokens, abc_tokens, head_sets, mean_logit_diff)
print(f"clean mean logit difference {mean_logit_diff(clean_logits):.2f}")
display(pd.DataFrame(table).T.rename_axis(index="ablated", columns="mean logit difference after").round(2))
clean_by_prompt = logit_diff(clean_logits, correct, wrong, last)  # [batch]
by_order = {}
for method in ("zero", "mean"):
    change = logit_diff(ablate_heads(model, clean_tokens, head_sets["L3H4, L3H6"], method, abc_tokens),
                        correct, wrong, last) - clean_by_prompt  # [batch]
    by_order[f"L3H4, L3H6 {method}-ablated"] = {
        order: change[[i for i, o in enumerate(clean_set.labels["order"]) if o == order]].mean().item()
        for order in ("ABBA", "BABA")}
pd.DataFrame(by_order).T.rename_axis(columns="change of the logit difference, by order").style.format("{:+.2f}")

# %% [markdown]
# Where they agree and where they disagree are both informative:
# - For **L3H1** all three cost more than half of the answer: whatever "removing" means, the answer
#   needs it.
# - For the **early heads** (L0H3, L0H6, L0H7), all three cost most of it. What is left differs by a
#   little, and which method leaves more changes from one sample of prompts to another: do not read a
#   difference that small as a finding.
# - For **L3H4 and L3H6** the methods disagree completely. Chapter 03 found that their direct shares
#   flip sign with the order of the names, and so does the effect of removing them: zero or mean
#   ablation *raises* the logit difference on ABBA prompts and *lowers* it on BABA prompts, by about
#   ten each way. These 16 prompts are mostly ABBA, so the mean rises above the clean run's; another
#   sample could show the opposite. Resample ablation leaves it about where it was.
#
# Why would the mean and the resample, both taken from the ABC prompts, differ so much? Each prompt's
# ABC twin has the *same two names*, in the same order, as the prompt. Resampling from the twin keeps
# everything a head writes about those particular names and that order; the mean over many ABC prompts
# averages them out and keeps only what the head writes on every prompt. So L3H4's and L3H6's push,
# which depends on the order, survives a resample and not a mean.
#
# Which ablation is right? Each answers its own question. Mean ablation over ABC asks "what does this
# head contribute *on IOI prompts that it would not on prompts without a repeated name*?", the
# question of an IOI circuit (Wang et al.'s choice). Zero
# ablation asks "what if this head were not there at all?", which mixes in everything the head writes
# on every input, at a value no later layer has ever seen. Resample ablation asks "what if this head
# had seen another input?", and the answer depends on which input. A mean over the *IOI prompts
# themselves* would be a mistake in principle: the names average out, but whatever every IOI prompt
# shares, a repeated name included, stays in the mean, so it cannot be what ablation removes.
#
# Does our ABC mean leak too? Each prompt's ABC twin keeps the prompt's two names at IO and S1,
# and the mean is taken over the twins of *these* 16 prompts, so each prompt's own names are one
# sixteenth of the mean at those positions. Measure it: ablate every head with the mean of these
# twins, and with the mean of the ABC twins of 64 other prompts (other names).

# %%
other_set = ioi_prompts("test", start=16, n=64)
_, other_abc_tokens, _ = paired_tokens(model, other_set.prompts, abc_prompts(other_set, seed=3).prompts)
every_head = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
leak = {"these prompts' own ABC twins": abc_tokens, "ABC twins of 64 other prompts": other_abc_tokens}
print(f"clean mean logit difference {mean_logit_diff(clean_logits):.2f}")
pd.DataFrame({label: {"every head ablated": mean_logit_diff(ablate_heads(model, clean_tokens, every_head, "mean", reference)).item(),
                      "the early heads ablated": mean_logit_diff(ablate_heads(model, clean_tokens, head_sets["L0H3, L0H6, L0H7"],
                                                                               "mean", reference)).item()}
              for label, reference in leak.items()}).T.rename_axis(index="mean ablation with the mean of").round(2)

# %% [markdown]
# With every head mean-ablated, the model should have no idea which name is the answer. On these
# prompts the twins' own mean still prefers it by more than a logit, about a tenth of the clean
# difference, and other prompts' twins by about nothing: it looks like a leak. But on another sample
# of prompts the tests find the reverse (the own twins near zero, other prompts' twins near a tenth).
# So what we measure is the noise of a mean over a small batch, not a systematic leak: whichever
# reference you average, the fully ablated model sits within about a tenth of the clean difference
# of zero, and every faithfulness score of Section 6 carries that uncertainty: Section 6 prints
# the four cells' score with the twins' mean and with other prompts', about 1.15 and 1.10, and on
# four other draws of prompts the two differed by 0.05 to 0.12 (the test allows 0.16). Scores that
# differ by less than about 0.15 say nothing. We keep the twins' mean, as Wang et al. pair each
# prompt with its own ABC version; a larger reference batch would shrink the noise.

# %% [markdown]
# ## 4. Path patching: Chapter 03's open question
#
# Chapter 03 ended on a disagreement. L3H1's **direct** logit attribution is about 3.5 on this
# chapter's prompts, but resample-ablating it costs about 10 (about 3 and 8 on Chapter 03's prompts of
# every template): about as much as MLP3's whole direct share. The hypothesis: MLP3 reads
# L3H1's output and writes the answer itself. A head in the last layer has exactly two ways to reach
# the logits: **directly** (its output goes down the residual stream to the unembedding) and
# **through MLP3** (the MLP of its own block reads it). **Path patching** (Wang et al., 2022;
# Goldowsky-Dill et al., 2023) separates them: change the head's output *only as one receiver sees
# it*, and hold everything else at its base value.
#
# The recipe, with a sender head and a receiver (an activation downstream):
# 1. Run the base prompts with the sender's `hook_z` taken from the source run, and **freeze** every
#    other head's `hook_z` and every MLP's output (`hook_mlp_out`) at the base run's values, except
#    the receiver itself. The receiver then sees the base run plus *only* the sender's change.
#    Record the receiver's activation.
# 2. Run the base prompts again, with only the receiver's activation replaced by the recorded one.
#    Measure.
#
# One convention differs from Wang et al., who freeze only the heads and let every MLP recompute: we
# freeze the MLPs as well, because the question here is precisely how much goes *through* MLP3, and
# an MLP left free would pass the sender's change along whatever the receiver.
#
# The receivers we use: `blocks.3.hook_mlp_out` (the path through MLP3), the last block's
# `hook_resid_post` (the residual stream the unembedding reads: the direct path), and, in Section 7,
# `blocks.3.attn.hook_k` restricted to some heads (the path into their keys).
#
# ### Exercise 6.5: path patching (difficulty 3/3, ~50 min)
# Write `path_patch(model, base_tokens, source_tokens, sender, receiver, metric, receiver_heads=None)`.
# `sender` is `(layer, head)`; `receiver` is a hook name. Follow the recipe above; when
# `receiver_heads` is given (a list of heads), the receiver is an attention hook with a head axis
# (`hook_q`, `hook_k`, `hook_v`: `[batch, pos, head, d_head]`) and step 2 replaces only those heads.
# Return `metric(logits)` of step 2. Raise a `ValueError` on token shapes that differ.
#
# <details><summary>Hint 1</summary>
#
# One cache of the base run (every `hook_z` and `hook_mlp_out`) and one of the source run (the
# sender's `hook_z`) are all step 1 needs. Freezing a hook is a hook that returns the cached value.
# </details>
# <details><summary>Hint 2</summary>
#
# Step 1: `model.run_with_cache(base_tokens, fwd_hooks=..., names_filter=receiver)` is not
# available on every model; add one more hook that stores the receiver's value in a dict.
# Do not freeze the receiver in step 1, or it cannot change.
# </details>
# <details><summary>Hint 3</summary>
#
# Step 1's hooks: `freeze_hook(base_cache[name])` on every `hook_z` and `hook_mlp_out` except the
# receiver, with the sender's layer replaced by `sender_hook(base_z, source_z, head)`, plus
# `store_hook(recorded, receiver)` on the receiver. Step 2: `freeze_hook(recorded[receiver])` on the
# receiver alone (for `receiver_heads`, first copy the base run's receiver and overwrite only those
# heads), and return `metric` of the logits.
# </details>

# %% tags=["export"]
def freeze_hook(value: Tensor):
    """A hook that returns a stored value (the activation of another run)."""
    def hook(activation: Tensor, hook) -> Tensor:
        return value.clone()
    return hook


def store_hook(store: dict, name: str):
    """A hook that keeps the activation it sees in `store[name]`.

    (Keyed by the name we asked for: on a TransformerBridge `hook.name` can be another alias of it.)
    """
    def hook(activation: Tensor, hook) -> Tensor:
        store[name] = activation.detach().clone()
        return activation
    return hook


def sender_hook(base_z: Tensor, source_z: Tensor, head: int):
    """A hook on hook_z: every head frozen at the base run, the sender head from the source run."""
    def hook(z: Tensor, hook) -> Tensor:
        patched = base_z.clone()
        patched[:, :, head] = source_z[:, :, head]
        return patched
    return hook


@torch.no_grad()
def path_patch(model, base_tokens: Int[Tensor, "batch pos"], source_tokens: Int[Tensor, "batch pos"],
               sender: tuple[int, int], receiver: str, metric: Metric, receiver_heads: list[int] | None = None) -> Tensor:
    """The metric when only `receiver` sees the sender head's output from the source run (all else frozen)."""
    ### BEGIN SOLUTION
    check_same_shape(base_tokens, source_tokens)
    sender_layer, sender_head = sender
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)]
    _, base = model.run_with_cache(base_tokens, names_filter=lambda name: name in z_names + mlp_names)
    _, source = model.run_with_cache(source_tokens, names_filter=z_names[sender_layer])
    frozen = {name: freeze_hook(base[name]) for name in z_names + mlp_names}
    frozen[z_names[sender_layer]] = sender_hook(base[z_names[sender_layer]], source[z_names[sender_layer]], sender_head)
    frozen.pop(receiver, None)  # the receiver must be free to change
    recorded = {}
    model.run_with_hooks(base_tokens, fwd_hooks=list(frozen.items()) + [(receiver, store_hook(recorded, receiver))])
    value = recorded[receiver]
    if receiver_heads is not None:  # only those heads' part of the receiver changes
        _, base_receiver = model.run_with_cache(base_tokens, names_filter=receiver)
        patched = base_receiver[receiver].clone()
        patched[:, :, receiver_heads] = value[:, :, receiver_heads]
        value = patched
    return metric(model.run_with_hooks(base_tokens, fwd_hooks=[(receiver, freeze_hook(value))]))
    ### END SOLUTION


# %%
path_patch = check_exercise("6.5", path_patch)

# %% [markdown]
# L3H1's output taken from the ABC run (a resample ablation, as in Chapter 03), seen by one receiver
# at a time. The metric is the mean logit difference, so each drop is in logits.

# %%
final_resid = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
from utils.references.ch03_logit_lens import head_attribution

clean_value = mean_logit_diff(clean_logits)
l3h1_direct_attribution = head_attribution(model, clean_set)[3, 1].mean()
total_drop = clean_value - mean_logit_diff(ablate_heads(model, clean_tokens, [(3, 1)], "resample", abc_tokens))
direct_drop = clean_value - path_patch(model, clean_tokens, abc_tokens, (3, 1), final_resid, mean_logit_diff)
through_mlp_drop = clean_value - path_patch(model, clean_tokens, abc_tokens, (3, 1), "blocks.3.hook_mlp_out", mean_logit_diff)
pd.DataFrame({"drop in the logit difference": {
    "L3H1 resample-ablated, every path": float(total_drop),
    "only the direct path (into the final residual stream)": float(direct_drop),
    "only the path through MLP3": float(through_mlp_drop),
    "sum of the two paths": float(direct_drop + through_mlp_drop),
    "for comparison: L3H1's direct logit attribution (Chapter 03)": float(l3h1_direct_attribution)}}).round(2)

# %% [markdown]
# The answer: more than half of L3H1's effect goes **through MLP3**. The direct path costs about what
# direct attribution measured (the head's whole direct share, since the ABC output has almost none);
# the path through the MLP carries the rest, and the two paths add up to nearly the whole effect (not
# exactly: the MLP and the final LayerNorm are not linear). DLA was not
# wrong, it was answering a narrower question: it credited MLP3 for a computation whose information
# came from L3H1. Chapter 03 asked what result would refute the hypothesis: a small drop through MLP3
# and a direct drop near the total. It did not happen.

# %% [markdown]
# ### What L3H1 reads and writes
# Section 2 left a question open: is L3H1 a name mover, as GPT-2's story would have it? Three cheap
# measurements answer it: where the heads look (by role: IO, the first and the second mention of S,
# the end), what L3H1's OV circuit does to a name it reads, and which of L3H1's inputs (queries, keys
# or values) the early heads reach.

# %% tags=["export"]
def ioi_roles(model, prompts: PromptSet, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, "batch"]) -> dict[str, Tensor]:
    """Each prompt's positions of IO, S1 (first mention of S), S2 (second mention) and END: [batch] each."""
    io, s1, s2 = [], [], []
    for row, (io_name, s_name) in enumerate(zip(prompts.labels["io"], prompts.labels["s"])):
        words = [word.strip() for word in model.to_str_tokens(tokens[row])]
        io.append(words.index(io_name))
        s1.append(words.index(s_name))
        s2.append(len(words) - 1 - words[::-1].index(s_name))
    device = tokens.device
    return {"IO": torch.tensor(io, device=device), "S1": torch.tensor(s1, device=device),
            "S2": torch.tensor(s2, device=device), "END": last.to(device)}


def attention_to_roles(pattern: Float[Tensor, "batch dest src"], dest: Int[Tensor, "batch"],
                       roles: dict[str, Tensor]) -> dict[str, float]:
    """Mean attention from each prompt's `dest` position to each role's position."""
    rows = torch.arange(len(dest), device=pattern.device)
    return {role: float(pattern[rows, dest, where].mean()) for role, where in roles.items()}


@torch.no_grad()
def own_logit_extremes(model, embedding: Float[Tensor, "n_tokens d_model"], token_ids: Int[Tensor, "n_tokens"],
                       layer: int, head: int) -> dict[str, float]:
    """Through one head's OV circuit: the share of tokens whose own logit is the highest, or the lowest, of its row."""
    w_ov = model.W_V[layer, head] @ model.W_O[layer, head]  # [d_model, d_model]
    circuit = embedding @ w_ov @ model.W_U[:, token_ids.to(model.cfg.device)]  # [n_tokens, n_tokens]
    own = torch.arange(len(token_ids), device=circuit.device)
    return {"own logit highest": (circuit.argmax(-1) == own).float().mean().item(),
            "own logit lowest": (circuit.argmin(-1) == own).float().mean().item()}


@torch.no_grad()
def path_patch_recomputing_mlps(model, base_tokens: Int[Tensor, "batch pos"], source_tokens: Int[Tensor, "batch pos"],
                                sender: tuple[int, int], receiver: str, metric: Metric,
                                receiver_heads: list[int] | None = None) -> Tensor:
    """`path_patch` with Wang et al.'s convention: only the heads are frozen, every MLP recomputes, so
    the receiver also sees the sender's change as the MLPs between them pass it on."""
    check_same_shape(base_tokens, source_tokens)
    sender_layer, sender_head = sender
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, base = model.run_with_cache(base_tokens, names_filter=lambda name: name in z_names + [receiver])
    _, source = model.run_with_cache(source_tokens, names_filter=z_names[sender_layer])
    frozen = {name: freeze_hook(base[name]) for name in z_names}
    frozen[z_names[sender_layer]] = sender_hook(base[z_names[sender_layer]], source[z_names[sender_layer]], sender_head)
    frozen.pop(receiver, None)
    recorded = {}
    model.run_with_hooks(base_tokens, fwd_hooks=list(frozen.items()) + [(receiver, store_hook(recorded, receiver))])
    value = recorded[receiver]
    if receiver_heads is not None:
        patched = base[receiver].clone()
        patched[:, :, receiver_heads] = value[:, :, receiver_heads]
        value = patched
    return metric(model.run_with_hooks(base_tokens, fwd_hooks=[(receiver, freeze_hook(value))]))


@torch.no_grad()
def head_direct_logits(model, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, "batch"], layer: int, head: int,
                       token_ids: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """A head's direct effect on one token's logit per prompt, at the last position (final LayerNorm scale frozen)."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in (f"blocks.{layer}.attn.hook_z",
                                                                                "ln_final.hook_scale"))
    rows = torch.arange(len(last), device=tokens.device)
    z = cache[f"blocks.{layer}.attn.hook_z"][rows, last, head]  # [batch, d_head]
    scale = cache["ln_final.hook_scale"][rows, last]  # [batch, 1]
    out = (z @ model.W_O[layer, head]) / scale  # [batch, d_model]; the unembedding is centred, so no mean to remove
    return (out * model.W_U[:, token_ids.to(out.device)].T).sum(-1)


# %%
import pandas as pd

from utils.references.ch03_logit_lens import all_patterns, effective_embedding

roles = ioi_roles(model, clean_set, clean_tokens, last)
clean_patterns, abc_patterns = all_patterns(model, clean_tokens), all_patterns(model, abc_tokens)  # [layer, batch, head, dest, src]
attention_rows = {f"L{layer}H{head} at {dest}": attention_to_roles(clean_patterns[layer, :, head], roles[dest], roles)
                  for layer, head, dest in [(3, 1, "END"), (0, 3, "S2"), (0, 6, "S2"), (0, 7, "END")]}
attention_rows["L3H1 at END, ABC prompts"] = attention_to_roles(abc_patterns[3, :, 1], roles["END"], roles)
pd.DataFrame(attention_rows).T.style.format("{:.2f}").set_caption("Attention from a head's position to each role")

# %%
name_ids = torch.tensor([model.to_single_token(" " + name) for name in world.NAMES])
l3h1_ov = own_logit_extremes(model, effective_embedding(model, name_ids), name_ids, 3, 1)
print(f"L3H1's OV circuit on the {len(name_ids)} names: own logit the highest of its row for "
      f"{l3h1_ov['own logit highest']:.0%} of names, the lowest for {l3h1_ov['own logit lowest']:.0%}")
print(f"L3H1's direct effect at the end: on the repeated name's logit {head_direct_logits(model, clean_tokens, last, 3, 1, wrong).mean():+.2f}, "
      f"on the answer's {head_direct_logits(model, clean_tokens, last, 3, 1, correct).mean():+.2f}")

# %%
into_l3h1 = {}
for layer, head in [(0, 3), (0, 6), (0, 7)]:
    costs = {f"L3H1's {part}": 1 - float(path_patch(model, clean_tokens, swap_tokens, (layer, head), f"blocks.3.attn.hook_{part}",
                                                    swap_metric, receiver_heads=[1])) for part in "qkv"}
    costs["MLP0"] = 1 - float(path_patch(model, clean_tokens, swap_tokens, (layer, head), "blocks.0.hook_mlp_out", swap_metric))
    costs["L3H1's v, MLPs recomputing"] = 1 - float(path_patch_recomputing_mlps(
        model, clean_tokens, swap_tokens, (layer, head), "blocks.3.attn.hook_v", swap_metric, receiver_heads=[1]))
    costs["every path"] = 1 - float(heads_noising[layer, head])
    into_l3h1[f"L{layer}H{head}"] = costs
pd.DataFrame(into_l3h1).T.style.format("{:.3f}").set_caption("Noising one early head, seen only by one receiver (cost on the swap scale)")

# %% [markdown]
# What the measurements say:
# - **L3H1 at the end attends to S2**, and to IO not at all. It does so just as much on the ABC
#   prompts, where no name repeats: it finds the S2 slot without the repetition.
# - **It pushes down the name it reads.** Through the names' effective embeddings (Chapter 03,
#   Section 6), its OV circuit puts a name's own logit at the *bottom* of its row for most names and at
#   the top for none. Its direct effect lowers the repeated name's logit by more than two and raises
#   the answer's by less than half as much.
# - **L0H3 and L0H6 at S2 attend to themselves**: they pass on *which name sits at S2*. They never look
#   at S1, so they cannot notice a repetition. L0H7 at the end looks at S2.
# - **The early heads reach L3H1 only through its values**, never its queries or keys: where L3H1 looks
#   does not depend on them, what it reads there does. How much goes through the values depends on
#   the convention, and the two readings answer different questions:
#   - with every MLP frozen (Section 4's convention), the route straight from L0H3 or L0H6 into
#     L3H1's values carries only about a quarter of the head's effect, and the route into MLP0 (at
#     every position) more;
#   - with the MLPs recomputing (Wang et al.'s convention), the route into L3H1's values carries
#     about nine tenths of it. The difference is mostly MLP0: letting MLP0 alone recompute (the
#     other MLPs frozen) recovers about two thirds of the gap between the two readings, and MLP1 and
#     MLP2 the rest (the tests measure this split). MLP0 reads these heads' output and rewrites it
#     into the stream L3H1 reads, so much of what the early heads write reaches L3H1's values
#     *through* MLP0. Freezing MLP0 cuts that path; letting it recompute keeps it.
#
#   Both numbers are right; "through L3H1's values" means "directly" in the first and "by any route
#   that ends there" in the second. Whenever you read a path-patching result, ask which convention
#   it used. L0H7 does not reach L3H1 by either: its effect takes other routes.
#
# So the organism's algorithm, as far as we measured it: read the name in the S2 slot and push it
# *down*; more than half of L3H1's effect reaches the answer through MLP3 (Section 4). None of the heads
# we measured detects a repeated name, and the head that carries the answer never looks at the other
# name, so it cannot move it to the answer. The nearest relative in GPT-2 small is
# not a name mover but **copy suppression** (McDougall et al., 2023: head L10H7 attends to a token the
# model is predicting and lowers its logit), and the *negative* name movers 10.7 and 11.10 of Wang et
# al. Same task, a patching map of the same shape, another algorithm: this is Chapter 00's universality
# question seen close up. A circuit story does not transfer from one model to another until it has
# been measured on the new one (Section 10 runs the sweep on GPT-2 small when you are online, and
# Chapter 09 runs it on two siblings of the organism trained from other seeds).

# %% [markdown]
# ## 5. Attribution patching
#
# The head-by-position sweep took hundreds of forward passes. **Attribution patching** (AtP; Nanda,
# 2023; Syed et al., 2023) estimates every cell of it from *one* forward and *one* backward pass.
# Write the metric as a function of one activation $a$, run on the corrupted prompts; patching in the clean value changes $a$ by
# $a_\text{clean} - a_\text{corrupted}$, and to first order the metric changes by
#
# $$\Delta M \approx \nabla_a M\big|_{a_\text{corrupted}} \cdot (a_\text{clean} - a_\text{corrupted}).$$
#
# One backward pass gives the gradient with respect to every activation at once. The estimate is
# exact when the metric is linear in $a$ along that segment, and wrong where it is not (an attention
# pattern that saturates, a LayerNorm scale that changes a lot).
#
# ### Exercise 6.6: attribution patching of head outputs (difficulty 3/3, ~40 min)
# Write `attribution_patch_heads(model, clean_tokens, corrupted_tokens, metric)`: the attribution
# estimate of **denoising** each head at each position, `[layer, pos, head]` (the layout of Exercise
# 6.3 with `by_position=True`, minus the corrupted baseline: an estimate of
# `metric(patched) - metric(corrupted)`). Cache every `hook_z` on the clean run; run the corrupted
# tokens with hooks that keep each layer's `hook_z` (with its graph) and take the gradient of
# `metric(logits)` with respect to them (`torch.autograd.grad`). Multiply by (clean − corrupted) and
# sum over `d_head`. Raise a `ValueError` on token shapes that differ.
#
# Run the model in **eval mode** (`model.eval()`, and put the mode back afterwards): a model in train
# mode applies dropout, and the gradient is then a gradient of a noisy model. The check hands you a
# model in train mode with dropout switched on. Gradients are off in this chapter; turn them on inside
# your function with `torch.enable_grad()`.
#
# <details><summary>Hint 1</summary>
#
# A hook that stores `z` in a dict (under the name you registered it with) and returns it unchanged
# keeps it in the graph:
# `torch.autograd.grad(metric(logits), [stored[name] for name in names])` returns one gradient per
# layer, each `[batch, pos, head, d_head]`.
# </details>
# <details><summary>Hint 2</summary>
#
# `(gradient * (clean_z - corrupted_z)).sum(dim=(0, 3))` gives `[pos, head]` for one layer; the sum
# over the batch is right because the metric is a mean over the batch (the gradient already carries
# the 1/batch).
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# was_training = model.training
# model.eval()
# ...clean cache without gradients...
# with torch.enable_grad():
#     logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, keeper(name)) for name in names])
#     gradients = torch.autograd.grad(metric(logits), [stored[name] for name in names])
# model.train(was_training)
# return torch.stack([(g * (clean_cache[n] - stored[n].detach())).sum(dim=(0, 3)) for n, g in zip(names, gradients)])
# ```
# </details>

# %% tags=["export"]
def attribution_patch_heads(model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
                            metric: Metric) -> Float[Tensor, "layer pos head"]:
    """First-order estimate of metric(denoised) - metric(corrupted) for every head at every position."""
    ### BEGIN SOLUTION
    check_same_shape(clean_tokens, corrupted_tokens)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean_tokens, names_filter=lambda name: name in names)
        with torch.enable_grad():
            stored = {}

            def keeper(name):
                def keep(z, hook):
                    stored[name] = z  # still in the graph
                    return z
                return keep

            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, keeper(name)) for name in names])
            gradients = torch.autograd.grad(metric(logits), [stored[name] for name in names])
    finally:
        model.train(was_training)
    return torch.stack([(gradient * (clean_cache[name] - stored[name].detach())).sum(dim=(0, 3))
                        for name, gradient in zip(names, gradients)])  # [layer, pos, head]
    ### END SOLUTION


# %%
attribution_patch_heads = check_exercise("6.6", attribution_patch_heads)

# %% [markdown]
# Side by side with the activation-patching sweep of Section 2 (same prompts, same metric; on this
# scale the corrupted baseline is 0, so the patched metric is itself the change):

# %%
import plotly.graph_objects as go

started = time.perf_counter()
attribution = attribution_patch_heads(model, clean_tokens, swap_tokens, swap_metric)  # [layer, pos, head]
attribution_seconds = time.perf_counter() - started
activation, activation_seconds = heads_by_position, ours_seconds  # Section 2's sweep: [layer, pos, head]
correlation = torch.corrcoef(torch.stack([attribution.flatten(), activation.flatten()]))[0, 1]
print(f"attribution patching {attribution_seconds:.2f} s, activation patching {activation_seconds:.1f} s "
      f"({activation_seconds / attribution_seconds:.0f}x); correlation {correlation:.3f}")
cell_names = [f"L{layer}H{head}@{position}" for layer in range(model.cfg.n_layers)
              for position in range(activation.shape[1]) for head in range(model.cfg.n_heads)]
figure = go.Figure(go.Scatter(x=activation.flatten().tolist(), y=attribution.flatten().tolist(), mode="markers",
                              text=cell_names, hovertemplate="%{text}: patched %{x:.2f}, estimated %{y:.2f}",
                              name="head at a position"))
extent = [float(min(activation.min(), attribution.min())), float(max(activation.max(), attribution.max()))]
figure.add_trace(go.Scatter(x=extent, y=extent, mode="lines", line=dict(dash="dash"), name="estimate = patch"))
figure.update_layout(title="Attribution patching vs activation patching, every head at every position",
                     xaxis_title="activation patching (metric)", yaxis_title="attribution estimate", height=450)
figure

# %%
error = (attribution - activation).flatten()
pd.DataFrame({cell_names[index]: {"activation patching": activation.flatten()[index].item(),
                                  "attribution estimate": attribution.flatten()[index].item()}
              for index in error.abs().argsort(descending=True)[:5].tolist()}).T.rename_axis(index="largest errors").round(2)

# %% [markdown]
# The estimate correlates well with the real patches over all cells and picks out the same few, at a
# fraction of the cost. But it *underestimates every large effect*, and worst the layer-0 heads at the
# S2 position (by about half or more). A likely reason, which we have not tested: their change is
# large and passes through MLP0 and the LayerNorms before it reaches the answer, and a first-order
# estimate over so long and non-linear a step misses much of it. Kramár et al. (2024, AtP*) name two
# other failures, an attention softmax that saturates and hides an effect from the gradient, and
# direct and indirect effects that cancel, with a fix for each (the QK fix and GradDrop). Use attribution patching to choose which cells deserve a real patch, not as the
# answer itself. (`transformer_lens.tools.analysis.attribution_patching.attribution_patch` does the
# same for every node type at once; its metric is called on one example at a time.)

# %% [markdown]
# ## 6. The IOI circuit of the organism
#
# The **circuits hypothesis**: a behaviour is carried by a small subgraph of the network, a circuit,
# that could be cut out and still do the job. To test a proposed circuit, keep it and remove
# *everything else*: mean-ablate (over the ABC distribution) every head at every position that is not
# in the circuit, and see how much of the behaviour survives. The MLPs and embeddings stay; a node
# here is a head at a position, `(layer, head, position)`.
#
# Three numbers, from Wang et al. (2022), grade a circuit $C$ inside the model $M$, each on the
# normalised scale
# $F(X) = \frac{\text{LD}(X) - \text{LD}(\varnothing)}{\text{LD}(M) - \text{LD}(\varnothing)}$, where
# $\text{LD}(X)$ is the mean logit difference with every head outside $X$ ablated, so $F(M) = 1$ and
# the empty circuit scores 0:
# - **faithfulness** $F(C)$: how much of the behaviour the circuit alone carries;
# - **completeness**: removing a set $K$ of nodes from the circuit and from the whole model should
#   hurt both about equally. Wang et al. search over subsets $K$; we use only single nodes, $K = \{v\}$,
#   and report the largest gap $|F(C \setminus v) - F(M \setminus v)|$ (a circuit that misses a
#   backup path shows a large gap). This simplification can miss a gap that only a set of nodes reveals;
# - **minimality**: each node should matter *somewhere*: for each node $v$, the largest drop
#   $F(C \setminus K) - F(C \setminus (K \cup \{v\}))$ over the subsets $K$ of the rest of the circuit, as
#   Wang et al. define it but without their absolute value, so a node that only hurts fails; the smallest of these over the nodes is reported. Removing $v$ alone
#   ($K = \varnothing$) would not do: if two nodes back each other up (an OR), removing either one alone
#   costs nothing, though the pair is needed. A node that adds nothing in any subset scores near 0.
#   Trying every subset costs $2^{|C|}$ runs, so `circuit_report` takes circuits of at most 8 nodes.
#
# ### Exercise 6.7: keep a circuit, ablate the rest (difficulty 2/3, ~20 min)
# Write `circuit_logits(model, tokens, reference_tokens, nodes)`. `nodes` is a collection of
# `(layer, head, position)`. Run `tokens` with every head at every position **not** in `nodes`
# replaced by its **mean over the reference batch at that position** (`hook_z`), and return the logits.
# `head_replacements` (Section 3) and `replace_heads_hook` do the work once you have the masks.
#
# <details><summary>Hint 1</summary>
#
# `mask = torch.ones(n_layers, pos, n_heads, dtype=torch.bool)`, then `mask[layer, position, head] =
# False` for every node: True means "ablate".
# </details>
# <details><summary>Hint 2</summary>
#
# `head_replacements(model, tokens, range(n_layers), "mean", reference_tokens)` gives the means;
# one `replace_heads_hook(means[layer], mask[layer])` per layer.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# ablate = torch.ones(n_layers, n_pos, n_heads, dtype=torch.bool)
# for layer, head, position in nodes:
#     ablate[layer, position, head] = False
# means = head_replacements(model, tokens, range(n_layers), "mean", reference_tokens)
# hooks = [(f"blocks.{l}.attn.hook_z", replace_heads_hook(means[l], ablate[l])) for l in range(n_layers)]
# return model.run_with_hooks(tokens, fwd_hooks=hooks)
# ```
# </details>

# %% tags=["export"]
Node = tuple[int, int, int]  # (layer, head, position)


@torch.no_grad()
def circuit_logits(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"],
                   nodes) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with every head at every position outside `nodes` mean-ablated over the reference batch."""
    ### BEGIN SOLUTION
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    ablate = torch.ones(n_layers, n_pos, model.cfg.n_heads, dtype=torch.bool, device=model.cfg.device)  # [layer, pos, head]
    for layer, head, position in nodes:
        ablate[layer, position, head] = False
    means = head_replacements(model, tokens, range(n_layers), "mean", reference_tokens)
    hooks = [(f"blocks.{layer}.attn.hook_z", replace_heads_hook(means[layer], ablate[layer])) for layer in range(n_layers)]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)
    ### END SOLUTION


# %%
circuit_logits = check_exercise("6.7", circuit_logits)

# %% tags=["export"]
from itertools import combinations


def all_nodes(model, n_pos: int) -> list[Node]:
    """Every head at every position: the whole model as a circuit."""
    return [(layer, head, position) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
            for position in range(n_pos)]


@torch.no_grad()
def circuit_faithfulness(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"],
                         nodes, score: Metric) -> float:
    """F(C): `score` with only `nodes` kept, on a scale where the empty circuit is 0 and the full model is 1."""
    full = score(model(tokens))
    empty = score(circuit_logits(model, tokens, reference_tokens, []))
    return float((score(circuit_logits(model, tokens, reference_tokens, nodes)) - empty) / (full - empty))


MAX_REPORT_NODES = 8


@torch.no_grad()
def subset_faithfulness(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"],
                        nodes, score: Metric) -> dict[frozenset, float]:
    """F of every subset of a circuit (2^n runs), keyed by the frozenset of the nodes kept."""
    nodes = sorted(set(nodes))
    if len(nodes) > MAX_REPORT_NODES:
        raise ValueError(f"{len(nodes)} nodes: trying every subset takes 2^{len(nodes)} runs; "
                         f"report on at most {MAX_REPORT_NODES} nodes")
    full = score(model(tokens))
    empty = score(circuit_logits(model, tokens, reference_tokens, []))
    kept_score = {frozenset(): 0.0}
    for size in range(1, len(nodes) + 1):
        for kept in combinations(nodes, size):
            logits = circuit_logits(model, tokens, reference_tokens, list(kept))
            kept_score[frozenset(kept)] = float((score(logits) - empty) / (full - empty))
    return kept_score


def node_minimality(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"],
                    nodes, score: Metric) -> dict[Node, float]:
    """Each node's largest drop in F over the subsets of the circuit that contain it (Wang et al.'s minimality)."""
    kept_score = subset_faithfulness(model, tokens, reference_tokens, nodes, score)
    return {node: max(value - kept_score[kept - {node}] for kept, value in kept_score.items() if node in kept)
            for node in sorted(set(nodes))}


@torch.no_grad()
def circuit_report(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"],
                   nodes, score: Metric) -> dict[str, float]:
    """Faithfulness, completeness (largest single-node gap) and minimality (smallest best drop over subsets)."""
    nodes = sorted(set(nodes))
    kept_score = subset_faithfulness(model, tokens, reference_tokens, nodes, score)
    circuit = frozenset(nodes)
    drops = [max(value - kept_score[kept - {node}] for kept, value in kept_score.items() if node in kept)
             for node in nodes]
    everything = all_nodes(model, tokens.shape[1])
    full = score(model(tokens))
    empty = score(circuit_logits(model, tokens, reference_tokens, []))
    gaps = []
    for node in nodes:  # completeness, single nodes only: F(C without v) against F(M without v)
        model_without = score(circuit_logits(model, tokens, reference_tokens, [n for n in everything if n != node]))
        gaps.append(abs(kept_score[circuit - {node}] - float((model_without - empty) / (full - empty))))
    return {"faithfulness": kept_score[circuit], "completeness gap": max(gaps, default=0.0),
            "minimality": min(drops, default=0.0), "nodes": len(nodes)}


# %% [markdown]
# First, two circuits to calibrate the scale: the single head with the largest patching effect, and
# the four cells that lit up in Section 2. (Positions 2 and 4 hold the first and the second name, which
# is the indirect object in half the prompts and the subject in the other half; only the S2 position,
# 10, and the last, 14, mean the same thing in every prompt.)

# %%
def print_positions(labels: list[str], per_line: int = 8) -> None:
    """Each token with its position, a few to a line (one long line would wrap mid-token)."""
    print("position of each token:")
    for start in range(0, len(labels), per_line):
        print("   " + "   ".join(labels[start:start + per_line]))


print_positions(position_labels)
four_cells_other_mean = circuit_faithfulness(model, clean_tokens, other_abc_tokens,
                                             [(3, 1, 14), (0, 3, 10), (0, 6, 10), (0, 7, 14)], mean_logit_diff)
print(f"Section 2's four cells, ablating with the mean of other prompts' ABC twins (Section 3): "
      f"faithfulness {four_cells_other_mean:.2f}")
pd.DataFrame({label: circuit_report(model, clean_tokens, abc_tokens, nodes, mean_logit_diff)
              for label, nodes in {"L3H1 at the end": [(3, 1, 14)],
                                   "Section 2's four cells": [(3, 1, 14), (0, 3, 10), (0, 6, 10), (0, 7, 14)]}.items()}).T.round(2)

# %% [markdown]
# L3H1 alone carries almost nothing: without the early heads it has nothing to read. With the
# early heads at S2 it carries about the whole behaviour; on these prompts a little more than all of
# it (faithfulness above 1: the circuit leaves out heads that write *against* the answer here). The
# completeness gap says something is still missing: some node's removal hurts the circuit more than it
# hurts the whole model, so the full model has another route that this circuit lacks.
#
# That circuit was read off a map this chapter drew for you. The next one you find yourself, on a
# template whose roles sit at other positions: template 1, whose prompts are 19 tokens long.

# %%
t1_set = ioi_prompts("test", template=1, n=16)
t1_tokens, t1_abc, t1_last = paired_tokens(model, t1_set.prompts, abc_prompts(t1_set, seed=0).prompts)
_, t1_swap, _ = paired_tokens(model, t1_set.prompts, swapped_prompts(t1_set).prompts)
t1_correct = answer_ids(model, t1_set.correct).to(model.cfg.device)
t1_wrong = answer_ids(model, t1_set.wrong).to(model.cfg.device)


def t1_logit_diff(logits):
    return logit_diff(logits, t1_correct, t1_wrong, t1_last).mean()


print(t1_set.prompts[0], "->", t1_set.correct[0])
print_positions([f"{i} {t}" for i, t in enumerate(model.to_str_tokens(t1_tokens[0]))])

# %% [markdown]
# ### Exercise 6.8: find the IOI circuit of template 1 (difficulty 3/3, ~40 min)
# Write `ioi_circuit()` returning a circuit for **template 1**: a list of at most **4** `(layer, head,
# position)` nodes, positions in template 1's 19 tokens. Search for it with this chapter's tools on the
# template-1 prompts above (`t1_tokens`, `t1_swap`, `t1_abc`, `t1_logit_diff`). The check grades it
# with `circuit_report` on 64 other held-out prompts of template 1, whose pairs of names none of the
# template-1 prompts above uses, with ABC mean ablation. To pass, it needs **faithfulness at least 0.9**
# there, and **every node must earn its place: minimality at least 0.05** (each node's largest drop
# over the subsets of your circuit, so either of two nodes that back each other up counts, and a node
# that adds nothing in any subset does not). More than one circuit passes, of three nodes and of four;
# no pair of the nodes those circuits use is enough.
#
# <details><summary>Hint 1</summary>
#
# Do not start from positions: start from a map. Which cells of template 1 change the answer when
# you patch them?
# </details>
# <details><summary>Hint 2</summary>
#
# A plan: `patch_head_output(model, t1_swap, t1_tokens, metric, by_position=True)` (with `metric` built
# by `normalised_logit_diff_metric` for the template-1 runs) ranks every (head, position) cell of
# template 1; it takes a few minutes on a laptop. Take the top few cells as a candidate and run
# `circuit_report(model, t1_tokens, t1_abc, candidate, t1_logit_diff)`: drop a node whose minimality is
# near 0, add the next cell if faithfulness falls short.
# </details>
# <details><summary>Hint 3</summary>
#
# In template 1 the repeated name (S2) is at position 14 and the last token at 18. Start from the two
# layer-0 heads that carried S2 in template 0, at position 14, and add the head of the last layer
# that the map lights up at 18; `circuit_report` says whether a fourth node at 18 earns its place.
# </details>

# %% tags=["export"]
def ioi_circuit() -> list[Node]:
    """The organism's IOI circuit as (layer, head, position) nodes of template 1."""
    ### BEGIN SOLUTION
    return [(0, 3, 14), (0, 6, 14), (0, 7, 18), (3, 1, 18)]
    ### END SOLUTION


# %%
ioi_circuit = check_exercise("6.8", ioi_circuit)

# %% [markdown]
# The check graded your circuit on held-out prompts that this chapter never prints (so that no circuit
# can be tuned to them). On them, the three nodes of Hint 3 keep about the whole behaviour
# (faithfulness 0.95 to 1.05 over four draws of held-out prompts and twins); adding L0H7 or L2H0 at
# the end takes it to about 1.05 to 1.2, *more* than the whole model, which we measure but have not
# explained. A fourth node that pushes faithfulness past 1 is not obviously a better circuit:
# faithfulness is a floor here, and "closest to 1" would be another, equally defensible, rule (Wang
# et al. score $|F(M) - F(C)|$). The tests hold the floor of 0.9 for these circuits on four draws,
# the four-node ones above 1, and every pair of their nodes below the floor. Its report on the template-1 prompts you searched with:

# %%
t1_report = circuit_report(model, t1_tokens, t1_abc, ioi_circuit(), t1_logit_diff)
print(f"your circuit {sorted(ioi_circuit())} on the prompts above:\n   "
      + "  ".join(f"{key} {value:.2f}" for key, value in t1_report.items()))

# %% [markdown]
# Finding a circuit by hand, cell by cell, does not scale. **ACDC** (automated circuit discovery,
# Conmy et al., 2023) automates the loop: walk the graph from the output backwards, and remove every
# piece whose removal changes the metric by less than a threshold $\tau$, keeping what was removed
# removed as you go. Conmy et al. prune *edges* (a sender's contribution to one receiver); the
# version below prunes *nodes*, every head (at all positions) and every MLP, layer by layer from the
# last, with the same ABC mean ablation and the normalised score of this section. It is a
# simplification, and it already shows what the method does and what it cannot do.

# %% tags=["export"]
@torch.no_grad()
def pruned_logits(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"],
                  pruned_heads: list[tuple[int, int]], pruned_mlps: list[int]) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with the pruned heads (every position) and MLPs replaced by their mean over the reference batch."""
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)] + [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(reference_tokens, names_filter=lambda name: name in names)
    hooks = []
    for layer in range(model.cfg.n_layers):
        heads = [h for l, h in pruned_heads if l == layer]
        if heads:
            mean = cache[f"blocks.{layer}.attn.hook_z"].mean(0, keepdim=True)
            mask = torch.zeros(tokens.shape[1], model.cfg.n_heads, dtype=torch.bool, device=tokens.device)
            mask[:, heads] = True
            hooks.append((f"blocks.{layer}.attn.hook_z", replace_heads_hook(mean, mask)))
        if layer in pruned_mlps:
            mean = cache[f"blocks.{layer}.hook_mlp_out"].mean(0, keepdim=True)
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda act, hook, mean=mean: mean.expand_as(act).clone()))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


@torch.no_grad()
def acdc_prune(model, tokens: Int[Tensor, "batch pos"], reference_tokens: Int[Tensor, "ref_batch pos"], score: Metric,
               tau: float) -> tuple[list[tuple[int, int]], list[int], float]:
    """ACDC-style pruning over nodes: from the output backwards, remove every head or MLP whose
    removal (on top of those already removed) moves the normalised score by less than `tau`.
    Returns the heads and MLPs kept, and the kept graph's score (full model 1, everything removed 0)."""
    full = float(score(model(tokens)))
    every_head = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    empty = float(score(pruned_logits(model, tokens, reference_tokens, every_head, list(range(model.cfg.n_layers)))))
    normalise = lambda value: (float(value) - empty) / (full - empty)  # noqa: E731
    heads, mlps = [], []
    current = 1.0
    order = []
    for layer in reversed(range(model.cfg.n_layers)):
        order.append(("mlp", layer))
        order += [("head", (layer, h)) for h in range(model.cfg.n_heads)]
    for kind, node in order:
        trial_heads, trial_mlps = heads + ([node] if kind == "head" else []), mlps + ([node] if kind == "mlp" else [])
        value = normalise(score(pruned_logits(model, tokens, reference_tokens, trial_heads, trial_mlps)))
        if abs(value - current) < tau:
            heads, mlps, current = trial_heads, trial_mlps, value
    kept_heads = [h for h in every_head if h not in heads]
    kept_mlps = [l for l in range(model.cfg.n_layers) if l not in mlps]
    return kept_heads, kept_mlps, current


# %%
acdc = {}
for tau in (0.03, 0.1):
    kept_heads, kept_mlps, kept_score = acdc_prune(model, clean_tokens, abc_tokens, mean_logit_diff, tau)
    acdc[tau] = kept_heads
    print(f"tau {tau}: {len(kept_heads)} heads kept, MLPs {kept_mlps} kept, score of what is kept {kept_score:.2f}\n"
          "   heads: " + " ".join(f"L{l}H{h}" for l, h in kept_heads))

# %% [markdown]
# Compare with Section 2's map and the hand-made circuit. At $\tau = 0.1$ the loop keeps L3H1, L0H7,
# L2H0 (the fifth cell of the map) and one of the two S2 heads, L0H3 or L0H6 depending on the sample
# of prompts; on these prompts, and on most samples the tests draw, not both. The redundancy
# measured below is why: either head of the pair is enough while the other is there, so once one
# is gone the other cannot go. Which one survives is not set by the loop's order but by what each
# costs alone: on these prompts L0H3 alone costs a few logits and L0H6 nothing (the table of the
# self-repair section below), so tried in either order the loop drops L0H6 and keeps L0H3. It also
# keeps the five induction heads L3H3 to L3H7, which push the answer up on some prompts and down on
# others: a node-level search counts a component that matters in either direction, while the
# hand-made circuit kept only what carries the answer. A smaller $\tau$ keeps more heads. And
# $\tau$ bounds each step, not their sum: every removal costs a little, and what the loop keeps at
# $\tau = 0.1$ carries somewhat less than the whole behaviour (the score printed above; on other
# samples of prompts the tests find between about 0.6 and 0.9). Which subgraph is "the" circuit is a choice of threshold, of
# ablation and of order, not a fact the loop discovers; ACDC is a search, and its output needs the
# same checks (faithfulness, completeness, minimality) as a circuit found by hand.
#
# **Causal scrubbing** (Chan et al., 2022) goes further and tests a full *hypothesis* (which
# activations may be resampled from which inputs without changing the behaviour). Both are patching,
# done systematically; both inherit every caveat of Section 11.
#
# ### Self-repair
# In GPT-2 small, ablating the main name-mover head costs *less* than its direct effect: other heads
# take over (the "backup name movers" of Wang et al.; McGrath et al., 2023, call the general effect,
# later components compensating for an ablated one, the **Hydra effect**). Section 4 found L3H1's
# two paths adding up to its total effect, but that is no test of self-repair: L3H1 sits in the last
# layer, and only MLP3 comes after it to compensate. An early head is a fair test. Mean-ablate one
# (over the ABC twins, as above) and compare every later component's direct effect on the logit
# difference (its share at the last position, final LayerNorm scale frozen, as in Chapter 03)
# before and after: a component whose share *rises* is compensating.

# %% tags=["export"]
@torch.no_grad()
def component_direct_effects(model, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, "batch"],
                             correct: Int[Tensor, "batch"], wrong: Int[Tensor, "batch"],
                             fwd_hooks=()) -> dict[str, float]:
    """Mean direct effect on the logit difference of every head and MLP at each prompt's last position,
    under `fwd_hooks` (the final LayerNorm's scale of that same run)."""
    def wanted(name: str) -> bool:
        return name.endswith("attn.hook_z") or name.endswith("hook_mlp_out") or name == "ln_final.hook_scale"

    with model.hooks(fwd_hooks=list(fwd_hooks)):
        _, cache = model.run_with_cache(tokens, names_filter=wanted)
    rows = torch.arange(len(last), device=tokens.device)
    scale = cache["ln_final.hook_scale"][rows, last]  # [batch, 1]
    direction = (model.W_U[:, correct] - model.W_U[:, wrong]).T  # [batch, d_model]
    effects = {}
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][rows, last]  # [batch, head, d_head]
        heads = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer]) / scale[:, None]  # [batch, head, d_model]
        for head in range(model.cfg.n_heads):
            effects[f"L{layer}H{head}"] = float((heads[:, head] * direction).sum(-1).mean())
        mlp = cache[f"blocks.{layer}.hook_mlp_out"][rows, last] / scale  # [batch, d_model]
        effects[f"MLP{layer}"] = float((mlp * direction).sum(-1).mean())
    return effects


def mean_ablation_hooks(model, tokens: Int[Tensor, "batch pos"], heads: list[tuple[int, int]],
                        reference_tokens: Int[Tensor, "ref_batch pos"]) -> list:
    """The hooks that `ablate_heads(..., "mean", ...)` runs, for use with other measurements."""
    layers = sorted({layer for layer, _ in heads})
    means = head_replacements(model, tokens, layers, "mean", reference_tokens)
    hooks = []
    for layer in layers:
        mask = torch.zeros(tokens.shape[1], model.cfg.n_heads, dtype=torch.bool, device=model.cfg.device)
        mask[:, [head for l, head in heads if l == layer]] = True
        hooks.append((f"blocks.{layer}.attn.hook_z", replace_heads_hook(means[layer], mask)))
    return hooks


# %%
intact = component_direct_effects(model, clean_tokens, last, correct, wrong)
repair_rows = {}
for ablated in [(0, 3), (0, 6)]:
    after = component_direct_effects(model, clean_tokens, last, correct, wrong,
                                     mean_ablation_hooks(model, clean_tokens, [ablated], abc_tokens))
    change = pd.Series({name: after[name] - intact[name] for name in intact if not name.startswith("L0")})
    repair_rows[f"L{ablated[0]}H{ablated[1]} ablated"] = {
        "drop in the logit difference": float(clean_value - mean_logit_diff(ablate_heads(model, clean_tokens, [ablated], "mean", abc_tokens))),
        "later shares that fell (sum)": change[change < 0].sum(), "later shares that rose (sum)": change[change > 0].sum(),
        "rose most": f"{change.idxmax()} {change.max():+.2f}", "fell most": f"{change.idxmin()} {change.min():+.2f}"}
both_drop = float(clean_value - mean_logit_diff(ablate_heads(model, clean_tokens, [(0, 3), (0, 6)], "mean", abc_tokens)))
print(f"L0H3 and L0H6 ablated together: drop {both_drop:.2f}")
pd.DataFrame(repair_rows).T.round(2)

# %% [markdown]
# On these prompts the two heads that carry S2 behave differently when removed alone:
# - **L0H3** costs a few logits, and the later shares mostly fall (L3H1's and MLP3's among them),
#   though some rise (L3H4, a head that pushes against the answer on most of these prompts, pushes
#   less): partial compensation.
# - **L0H6** alone costs nothing; the logit difference even rises a little. L3H1's share falls, but
#   other later components (MLP3 and the other layer-3 heads) raise theirs by at least as much: the
#   network repairs the loss downstream (on other prompts the tests find it repairing about half).
# - Together they cost far more than the two alone added up: the pair backs each other up (an OR
#   in Section 6's language), which single-node scores cannot see.
#
# On another sample of prompts the two heads can trade places (the cheap one is then L0H3, as
# ACDC's choice above already hinted); what stays is that one of the pair can be removed at little
# cost and the two together cannot. Two different things are at work, and they should not be
# confused. **Redundancy**: L0H3 and L0H6 sit in the same layer, so neither can react to the other's
# removal; each simply carries the S2 signal too, and either one is enough (an OR). **Self-repair**:
# when one is removed, components *downstream* change what they write (in the table, the rises:
# MLP3 and the other layer-3 heads), making up part of the loss. The lesson for every ablation in
# this chapter: the effect of removing one component can understate what it does when another
# component carries the same thing or later ones compensate.
#
# ## 7. The induction circuit
#
# Induction heads were found in small attention-only models by Elhage et al. (2021) and followed
# through training by Olsson et al. (2022). Chapter 03 found the organism's induction circuit in the
# weights: previous-token heads L0H2 and L0H4, whose output the five induction heads L3H3 to L3H7 read
# through their keys (K-composition). Path patching
# can test that claim on real inputs. The base run is a repeated random sequence; the source run is
# another one. Patch a previous-token head's output only into the induction heads' **queries**, only
# into their **keys**, or only into their **values**, and measure the loss on the repeated half.
#
# ### Exercise 6.9: the loss on the repeated half (difficulty 1/3, ~10 min)
# Write `repeated_half_loss(logits, tokens, seq_len)` for sequences laid out as Chapter 03's
# `repeated_tokens` makes them: a start token, `seq_len` tokens, the same tokens again (anything after
# that is ignored). Return the mean (over the batch and the positions) loss, $-\log p$, of the tokens
# of the **second copy from its second token on** (its first token is not predictable), a
# 0-dimensional tensor. The logits at position $t$ predict the token at $t + 1$.
#
# <details><summary>Hint 1</summary>
#
# The second copy sits at positions `seq_len + 1` to `2 * seq_len`; you want the tokens at
# `seq_len + 2` to `2 * seq_len`, predicted by the logits one position earlier.
# </details>
# <details><summary>Hint 2</summary>
#
# `logits.log_softmax(-1)` gives log-probabilities; `.gather(-1, targets[..., None])` picks each
# target's. Slice the logits and the tokens so that they line up before gathering.
# </details>
# <details><summary>Hint 3</summary>
#
# `log_probs = logits.log_softmax(-1)[:, seq_len + 1:2 * seq_len]`,
# `targets = tokens[:, seq_len + 2:2 * seq_len + 1]`, then
# `-log_probs.gather(-1, targets[..., None]).mean()`.
# </details>

# %% tags=["export"]
def repeated_half_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                       seq_len: int) -> Float[Tensor, ""]:
    """Mean loss on the second copy of a repeated sequence, from its second token to its end."""
    ### BEGIN SOLUTION
    log_probs = logits.log_softmax(-1)[:, seq_len + 1:2 * seq_len]  # predicting tokens seq_len + 2 .. 2 * seq_len
    targets = tokens[:, seq_len + 2:2 * seq_len + 1]
    return -log_probs.gather(-1, targets[..., None].to(logits.device)).mean()
    ### END SOLUTION


# %%
repeated_half_loss = check_exercise("6.9", repeated_half_loss)

# %%
from utils.references.ch03_logit_lens import repeated_tokens

SEQ_LEN = 10
repeats = repeated_tokens(model, SEQ_LEN, batch=16, seed=0)
other_repeats = repeated_tokens(model, SEQ_LEN, batch=16, seed=1)


def induction_loss(logits):
    return repeated_half_loss(logits, repeats, SEQ_LEN)


induction_heads = [3, 4, 5, 6, 7]  # in layer 3: Chapter 03's five
first_copy_loss = -model(repeats).log_softmax(-1)[:, :SEQ_LEN].gather(-1, repeats[:, 1:SEQ_LEN + 1, None]).mean()
intact_loss = induction_loss(model(repeats))


def induction_removed(loss):
    """The loss on a scale where 0 is induction intact and 1 is the first copy's loss (nothing to copy)."""
    return float((loss - intact_loss) / (first_copy_loss - intact_loss))


print(f"loss on the repeated half: {intact_loss:.3f} nats; on the first copy {first_copy_loss:.2f} "
      f"(a uniform guess among the world's words: about {math.log(len(world.INDUCTION_POOL)):.1f})")
k_paths, k_rows = {}, {}
for sender in [(0, 2), (0, 4), (0, 1)]:
    k_paths[sender] = {part: float(path_patch(model, repeats, other_repeats, sender, f"blocks.3.attn.hook_{part}",
                                              induction_loss, receiver_heads=induction_heads)) for part in "qkv"}
    k_rows[f"L{sender[0]}H{sender[1]} from another sequence"] = {
        **{f"seen by the {part} inputs: loss (nats)": loss for part, loss in k_paths[sender].items()},
        **{f"seen by the {part} inputs: induction removed": induction_removed(loss) for part, loss in k_paths[sender].items()}}
display(pd.DataFrame(k_rows).T.round(3))


# %% tags=["export"]
@torch.no_grad()
def path_patch_heads(model, base_tokens: Int[Tensor, "batch pos"], source_tokens: Int[Tensor, "batch pos"],
                     senders: list[tuple[int, int]], receiver: str, metric: Metric, receiver_heads: list[int]) -> Tensor:
    """`path_patch` with several sender heads of one layer patched together (their joint path)."""
    check_same_shape(base_tokens, source_tokens)
    layer = senders[0][0]
    if any(sender_layer != layer for sender_layer, _ in senders):
        raise ValueError("path_patch_heads takes senders of one layer")
    heads = [head for _, head in senders]
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    mlp_names = [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    _, base = model.run_with_cache(base_tokens, names_filter=lambda name: name in z_names + mlp_names + [receiver])
    _, source = model.run_with_cache(source_tokens, names_filter=z_names[layer])
    patched_z = base[z_names[layer]].clone()
    patched_z[:, :, heads] = source[z_names[layer]][:, :, heads]
    frozen = {name: freeze_hook(base[name]) for name in z_names + mlp_names}
    frozen[z_names[layer]] = freeze_hook(patched_z)
    frozen.pop(receiver, None)
    recorded = {}
    model.run_with_hooks(base_tokens, fwd_hooks=list(frozen.items()) + [(receiver, store_hook(recorded, receiver))])
    value = base[receiver].clone()
    value[:, :, receiver_heads] = recorded[receiver][:, :, receiver_heads]
    return metric(model.run_with_hooks(base_tokens, fwd_hooks=[(receiver, freeze_hook(value))]))


# %%
both_keys = path_patch_heads(model, repeats, other_repeats, [(0, 2), (0, 4)], "blocks.3.attn.hook_k", induction_loss,
                             receiver_heads=induction_heads)
print(f"L0H2 and L0H4 together, seen only by the induction heads' keys: {both_keys:.3f} nats "
      f"({induction_removed(both_keys):.2f})")

# %% [markdown]
# The "induction removed" columns (and the number in brackets) put each loss on a scale where 0 is
# induction intact and 1 is the first copy's loss, where there is nothing to copy. (A ratio of losses would mislead here: the intact loss
# is so near zero that any change multiplies it many times.) Through the **keys** alone, one
# previous-token head from another sequence removes a third of induction or less; through the queries
# or values nothing. L0H1, which Chapter 03 did not call a previous-token head, changes nothing by any
# route. Both previous-token heads *together*, through the keys alone, remove all of it: far more than
# the sum of the two. Each head alone is partly covered by the other (an OR, in Heimersheim & Nanda's
# terms), so single patches understate what they do. That is K-composition, shown by intervention: the
# induction heads find their target by reading, in the *keys*, what the previous-token heads wrote
# there.
#
# And the circuit is necessary. Ablating it, by any of the three methods, raises the repeated half's
# loss at least to the first copy's, where there is nothing to copy; mean-ablating two other heads
# does not. None of the three lands *on* "no induction", though: all overshoot it. Zero ablation
# comes closest; mean and resample ablation go far above it, resample furthest. Both replace what the
# induction heads write with what they wrote on *other* sequences (one other sequence, or the average
# over them), and the measured loss says that this is worse than predicting with no copying at all
# (why exactly, we leave unmeasured; one guess to test: the replacement still copies, but tokens from
# the wrong sequence). An ablation answers "what if this circuit said something else?", and the
# size of the answer depends on the something else: use it to show necessity, not to read off
# "how much" the circuit does.

# %%
induction_circuit = [(0, 2), (0, 4)] + [(3, head) for head in induction_heads]
print(f"loss on the first copy (nothing to copy from): {first_copy_loss:.2f}")
pd.DataFrame({label: {method: float(induction_loss(ablate_heads(model, repeats, heads, method, other_repeats)))
                      for method in ABLATIONS}
              for label, heads in {"induction circuit": induction_circuit, "L1H1 and L2H1": [(1, 1), (2, 1)]}.items()}
             ).T.rename_axis(index="ablated", columns="loss on the repeated half (nats), by ablation").round(2)

# %% [markdown]
# Zero ablation once more answers another question: zeroing two heads that play no part in induction
# (L1H1, L2H1) wrecks the repeated half too, because an all-zero output is something no later layer has
# ever seen. Mean ablation leaves them harmless.

# %% [markdown]
# ## 8. How the induction circuit formed
#
# Induction heads appear *suddenly* during training (Olsson et al., 2022): the loss on repeated text
# drops in a short stretch of steps, at the same time as heads with induction-shaped attention appear,
# a **phase change**. Developmental interpretability studies such transitions. The organism ships only
# its final weights, so we watch a smaller model form the same circuit: a two-layer attention-only
# transformer trained on repeated random tokens by `utils/organism/induction_toy.py`, whose checkpoints
# ship with the workbook (`python -m utils.organism.induction_toy` retrains them, seeded). Its training
# sequences repeat a block of random length, so no head can solve them by looking a fixed distance
# back: only an induction head helps.

# %%
from utils.organism import induction_toy
from utils.references.ch03_logit_lens import all_patterns, induction_scores

toy_checkpoints = induction_toy.load_checkpoints()
TOY_LEN = 12
toy_tokens = induction_toy.training_batch(torch.Generator().manual_seed(1), 32, length=TOY_LEN)[:, :2 * TOY_LEN + 1]
steps = list(toy_checkpoints)
toy_training = induction_toy.training_batch(torch.Generator().manual_seed(2), 64)  # like training: every position
toy_loss = torch.stack([repeated_half_loss(toy(toy_tokens), toy_tokens, TOY_LEN) for toy in toy_checkpoints.values()])
toy_overall = torch.stack([toy(toy_training, return_type="loss") for toy in toy_checkpoints.values()])
toy_induction = torch.stack([induction_scores(all_patterns(toy, toy_tokens), TOY_LEN)[1].max()
                             for toy in toy_checkpoints.values()])  # best layer-1 head at each checkpoint
print(f"{len(steps)} checkpoints, steps {steps[0]} to {steps[-1]}")

from plotly.subplots import make_subplots

figure = make_subplots(rows=1, cols=2, subplot_titles=("loss (nats)", "best layer-1 induction score"))
for name, values in {"every position, training batches": toy_overall, "repeated half only": toy_loss}.items():
    figure.add_trace(go.Scatter(x=steps, y=values.tolist(), name=name, mode="lines+markers"), row=1, col=1)
figure.add_trace(go.Scatter(x=steps, y=toy_induction.tolist(), name="induction score", mode="lines+markers"), row=1, col=2)
figure.update_xaxes(title_text="training step")
figure.update_layout(title="The induction phase change in the toy model's training", height=400)
figure

# %% tags=["export"]
def steepest_change(steps: list[int], values: Tensor) -> tuple[int, int]:
    """The pair of consecutive checkpoints between which `values` changed the most."""
    change = (values[1:] - values[:-1]).abs()  # [checkpoint - 1]
    i = int(change.argmax())
    return steps[i], steps[i + 1]


# %%
loss_change, score_change = steepest_change(steps, toy_loss), steepest_change(steps, toy_induction)
overall_change = steepest_change(steps[1:], toy_overall[1:])  # after the first 50 steps, where every loss falls from the start
print(f"fastest change between steps {loss_change[0]} and {loss_change[1]} for the repeated half's loss, "
      f"{score_change[0]} and {score_change[1]} for the induction score,\n"
      f"{overall_change[0]} and {overall_change[1]} for the loss over every position (from step {steps[1]} on)")
print(f"before: loss {toy_loss[0]:.2f}, induction score {toy_induction[0]:.2f}; "
      f"after: loss {toy_loss[-1]:.2f}, induction score {toy_induction[-1]:.2f}")

# %% [markdown]
# The curves turn together, within a checkpoint or two. The loss on the repeated half loses about a
# third of its fall in the first 500 steps, then most of the rest in the next 250, as a layer-1 head's
# attention moves onto the token after the earlier occurrence. Before the change the model has no
# way to use the repetition; after it, it copies. The loss over *every* position, the curve a training
# run logs, shows the same stretch as its steepest (after the first steps), only diluted, because only
# about a quarter of the positions can be predicted by copying. That bump in the training loss is the
# signature Olsson et al. (2022) report.
#
# ## 9. Patching a direction: distributed alignment search
#
# Every patch so far swapped a whole component: a head, an MLP, a residual stream at one position.
# A model need not store a variable in one component; it may store it along one *direction* of the
# residual stream, shared by many. **Distributed alignment search** (DAS; Geiger et al., 2024) asks
# for that direction: learn a unit vector $u$ such that swapping only the component along $u$,
#
# $$x_\text{base} \;\mapsto\; x_\text{base} + \big((x_\text{source} - x_\text{base}) \cdot u\big)\, u,$$
#
# makes the model give the *source's* answer (an **interchange intervention**). Here the variable is
# the truth family's verdict: "The capital of France is Rome. That is" should get " false". Chapter
# 02 read the verdict with a probe after every block; Chapter 03 found MLP0 and MLP2 writing it.
# Does one direction carry it, in the sense that patching it flips the answer?
#
# ### Exercise 6.10: patch along a direction (difficulty 2/3, ~20 min)
# Write `patch_direction(model, tokens, last, source_resid, direction, hook_name)`. Run `tokens`
# with a hook on `hook_name` (a residual stream, `[batch, pos, d_model]`) that, at **each prompt's
# own last position** `last[i]` only (`last` may hold the same value for several prompts: index
# rows and positions together), replaces the component along `direction` (normalise it to unit
# length first) by the component of `source_resid[i]` (`[batch, d_model]`, the source prompts'
# residuals at their own last positions), and leaves everything orthogonal to it, and every other
# position, as it was. Return the logits. Keep it differentiable in `direction`: the training loop
# below takes the gradient through your function.
#
# <details><summary>Hint 1</summary>
#
# Only one number per prompt changes: the coordinate along the unit direction. Write the new vector
# as the old one plus a multiple of the direction.
# </details>
# <details><summary>Hint 2</summary>
#
# `unit = direction / direction.norm()`; at the last positions `x = resid[rows, last]` (`[batch,
# d_model]`); the coefficient is `((source_resid - x) @ unit)` (`[batch]`). Clone the activation
# before writing into it, and do not detach anything.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# unit = direction / direction.norm()
# rows = torch.arange(len(last), device=tokens.device)
# def hook(resid, hook):
#     resid = resid.clone()
#     x = resid[rows, last]
#     resid[rows, last] = x + ((source_resid - x) @ unit)[:, None] * unit
#     return resid
# return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
# ```
# </details>

# %% tags=["export"]
import torch.nn.functional as F

from utils import progress_bar

VERDICT_WORDS = (" true", " false")
DAS_HOOK = "blocks.2.hook_resid_post"  # after block 2: MLP2 has written the verdict (Chapter 03)
DAS_STEPS = 40


@torch.no_grad()
@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def truth_runs(model, split: str, n: int | None, hook_name: str, seed: int = 0) -> dict:
    """Truth prompts with their tokens, last positions, verdicts (True = " true") and residuals at
    `hook_name` at each prompt's last position."""
    prompts = prompt_set("truth", split, n=n, seed=seed)
    tokens, last = tokenize(model, prompts.prompts)
    tokens, last = tokens.to(model.cfg.device), last.to(model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    rows = torch.arange(len(last), device=tokens.device)
    return {"tokens": tokens, "last": last, "verdict": torch.tensor(prompts.labels["truth"]).bool(),
            "resid": cache[hook_name][rows, last]}


def opposite_pairs(verdict: Bool[Tensor, "batch"], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Base and source indices: every pair has opposite verdicts, as many true-to-false as false-to-true."""
    generator = torch.Generator().manual_seed(seed)
    true, false = torch.where(verdict)[0], torch.where(~verdict)[0]
    n = min(len(true), len(false))
    true, false = true[torch.randperm(len(true), generator=generator)[:n]], false[torch.randperm(len(false), generator=generator)[:n]]
    return torch.cat([true, false]), torch.cat([false, true])


def verdict_logit_diff(model, logits: Float[Tensor, "batch pos d_vocab"], last: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """logit(" true") - logit(" false") at each prompt's last position."""
    true_id, false_id = (model.to_single_token(word) for word in VERDICT_WORDS)
    final = logits[torch.arange(len(last), device=logits.device), last]
    return final[:, true_id] - final[:, false_id]


def patch_direction(model, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, "batch"],
                    source_resid: Float[Tensor, "batch d_model"], direction: Float[Tensor, "d_model"],
                    hook_name: str) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with the component along `direction` of the residual at each prompt's last position
    replaced by the source's (an interchange intervention on one direction)."""
    ### BEGIN SOLUTION
    unit = direction / direction.norm()
    rows = torch.arange(len(last), device=tokens.device)

    def hook(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        resid = resid.clone()
        x = resid[rows, last]  # [batch, d_model]
        resid[rows, last] = x + ((source_resid - x) @ unit)[:, None] * unit
        return resid

    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
    ### END SOLUTION


# %%
patch_direction = check_exercise("6.10", patch_direction)

# %% [markdown]
# The training loop: pairs of prompts with opposite verdicts; patch the source's component along
# `direction` into the base; the loss asks the patched run to give the source's verdict (a logistic
# loss on the " true"/" false" logit difference). Only the direction learns. We score a direction by
# its **swap rate** on held-out pairs: the share whose patched verdict is the source's.

# %% tags=["export"]
def swap_rate(model, runs: dict, direction: Float[Tensor, "d_model"], hook_name: str, seed: int = 0) -> float:
    """Share of opposite-verdict pairs whose verdict follows the source when only `direction` is patched."""
    base, source = opposite_pairs(runs["verdict"], seed)
    with torch.no_grad():
        logits = patch_direction(model, runs["tokens"][base], runs["last"][base], runs["resid"][source], direction, hook_name)
    return ((verdict_logit_diff(model, logits, runs["last"][base]) > 0) == runs["verdict"][source]).float().mean().item()


@memoized
def train_das(model, runs: dict, hook_name: str, steps: int = DAS_STEPS, lr: float = 0.05, seed: int = 0,
              orthogonal_to: Float[Tensor, "d_model"] | None = None, progress: bool = True) -> Float[Tensor, "d_model"]:
    """A unit direction learned so that patching along it gives the source's verdict (1-d DAS).
    With `orthogonal_to`, the direction is kept orthogonal to that vector."""
    base, source = opposite_pairs(runs["verdict"], seed)
    target = runs["verdict"][source].float().to(runs["resid"].device)
    block = None if orthogonal_to is None else orthogonal_to / orthogonal_to.norm()

    def unit(raw: Tensor) -> Tensor:
        if block is not None:
            raw = raw - (raw @ block) * block
        return raw / raw.norm()

    raw = torch.nn.Parameter(torch.randn(runs["resid"].shape[1], generator=torch.Generator().manual_seed(seed)).to(runs["resid"].device))
    optimizer = torch.optim.Adam([raw], lr=lr)
    with torch.enable_grad(), frozen_weights(model):  # only the direction learns: no gradient for the weights
        for _ in progress_bar(range(steps), show=progress, desc="DAS"):
            logits = patch_direction(model, runs["tokens"][base], runs["last"][base], runs["resid"][source], unit(raw), hook_name)
            loss = F.binary_cross_entropy_with_logits(verdict_logit_diff(model, logits, runs["last"][base]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return unit(raw.detach())


def difference_of_means(runs: dict) -> Float[Tensor, "d_model"]:
    """The unit vector from the mean residual of false statements to that of true ones."""
    direction = runs["resid"][runs["verdict"]].mean(0) - runs["resid"][~runs["verdict"]].mean(0)
    return direction / direction.norm()


# %%
das_train, das_test = truth_runs(model, "train", 120, DAS_HOOK), truth_runs(model, "test", None, DAS_HOOK)
das_direction = train_das(model, das_train, DAS_HOOK)
mean_direction = difference_of_means(das_train).to(das_direction.device)
random_direction = F.normalize(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)), dim=0).to(das_direction.device)
pd.DataFrame({name: {"held-out swap rate": swap_rate(model, das_test, direction, DAS_HOOK),
                     "|cosine| with the difference of means": abs(float(direction @ mean_direction))}
              for name, direction in {"DAS (learned)": das_direction, "difference of means": mean_direction,
                                      "random": random_direction}.items()}).T.round(3)

# %% [markdown]
# After block 2 one direction suffices to swap the verdict, and it is an easy one to find. The
# learned direction swaps the verdict on nearly every held-out pair, and so does the plain
# difference of the two classes' mean residuals, with no training at all (on these prompts a little more often:
# 40 steps of DAS do not beat the closed form). The two directions are close, $|\cos|$ about 0.8
# (up to sign: a patch along $u$ is the same patch as along $-u$, so only the size of the cosine
# means anything). A random direction
# swaps nothing (its "swap rate" is the few pairs the model gets wrong anyway). So here DAS
# confirms what the probe of Chapter 02 suggested: the verdict is linearly represented at this
# point *and* used from there.
#
# A direction that patches well is not yet "where the model keeps the variable". Makelov et al.
# (2023) show how a 1-dimensional patch can mislead: take a **disconnected** direction, one that
# varies with the variable but that nothing downstream reads, and add a **dormant** one, which the
# model does read but which hardly varies between inputs. Patching along the sum moves the dormant
# part by an amount the disconnected part supplies, and can flip the answer, so a search finds it
# and it looks like the variable's home, though on real inputs the model never uses it that way
# (the **subspace illusion**). Its first ingredient is easy to exhibit here. MLP2's hidden layer
# has 1024 neurons and writes into a 256-dimensional stream, so 768 directions of it are never
# read: `W_out` maps them to zero. Split the hidden layer's difference of means into the part
# `W_out` reads and the part it ignores, and test each as a probe and as a patch:

# %% tags=["export"]
MLP_HOOK = "blocks.2.mlp.hook_post"
ILLUSION_STEPS = 120  # DAS in MLP2's 1024 hidden dimensions converges more slowly than in the 256 of the stream


def kernel_split(direction: Float[Tensor, "d_mlp"], reader: Float[Tensor, "d_mlp d_model"]) -> tuple[Tensor, Tensor]:
    """A hidden-layer direction split into the part `reader` (here `W_out`) reads and the part in its
    kernel, which it maps to zero: (read part, ignored part), summing to `direction`."""
    basis, _ = torch.linalg.qr(reader)  # [d_mlp, d_model]: an orthonormal basis of the hidden directions it reads
    read = basis @ (basis.T @ direction)
    return read, direction - read


# %%
from utils.references.ch05_saes import column_aurocs

hidden_train, hidden_test = truth_runs(model, "train", 120, MLP_HOOK), truth_runs(model, "test", None, MLP_HOOK)
hidden_means = difference_of_means(hidden_train)
read_part, ignored_part = kernel_split(hidden_means, model.W_out[2])
hidden_directions = {"difference of means": hidden_means, "the part W_out reads": read_part,
                     "the part W_out ignores": ignored_part}
illusion_table = {}
for name, direction in progress_bar(hidden_directions.items(), total=len(hidden_directions), desc="directions"):
    projection = hidden_test["resid"] @ (direction / direction.norm())  # [prompt]
    auroc = column_aurocs(projection[:, None].cpu(), hidden_test["verdict"])[0].item()
    illusion_table[name] = {"share of the length": float(direction.norm() ** 2 / hidden_means.norm() ** 2),
                            "as a probe: held-out AUROC": max(auroc, 1 - auroc),
                            "as a patch: held-out swap rate": swap_rate(model, hidden_test, direction, MLP_HOOK)}
pd.DataFrame(illusion_table).T.round(3)

# %% [markdown]
# The ignored part reads the verdict almost perfectly as a probe, and patching it changes nothing
# (its swap rate is the few pairs the model gets wrong anyway): a disconnected direction, exactly as
# the weights say it must be. It is what a probe alone would call "a truth direction in MLP2". Note
# also that in this layer the difference of means patches poorly. That says nothing about whether
# some other direction here patches well, and we have not measured why this one does not. The full
# illusion needs a search that *rewards* mixing in the ignored part; DAS is such a search. Train it
# at `MLP_HOOK` (120 steps: in 1024 dimensions it converges more slowly than Section 9's 40 steps in
# 256), split the learned direction into the part `W_out` reads and the part it ignores, and patch
# the whole and each part alone. The last column asks where the *size* of the patch comes from: a
# patch along a unit direction $u$ moves the activation by $((s - b) \cdot u)\,u$, source minus base,
# and the ignored part $n$ of $u$ contributes $(s - b) \cdot n$ to that step.

# %%
hidden_das = train_das(model, hidden_train, MLP_HOOK, steps=ILLUSION_STEPS)
das_read, das_ignored = kernel_split(hidden_das, model.W_out[2])
base, source = opposite_pairs(hidden_test["verdict"])
step = (hidden_test["resid"][source] - hidden_test["resid"][base]) @ hidden_das  # [pair]: the patch's step along u
ignored_step = (hidden_test["resid"][source] - hidden_test["resid"][base]) @ das_ignored  # [pair]: its ignored part's share
das_split = {name: {"share of the length": float(direction.norm() ** 2),
                    "held-out swap rate": swap_rate(model, hidden_test, direction, MLP_HOOK)}
             for name, direction in {"DAS direction (whole)": hidden_das, "its part W_out reads": das_read,
                                     "its part W_out ignores": das_ignored}.items()}
das_split["DAS direction (whole)"]["share of the step from the ignored part"] = float(
    (ignored_step * step.sign()).sum() / step.abs().sum())
display(pd.DataFrame(das_split).T.round(3))
from utils.plotting import bars

bars([row["held-out swap rate"] for row in das_split.values()], list(das_split),
     title="Patching MLP2's DAS direction, and each part of it alone", y_label="held-out swap rate")

# %% [markdown]
# The learned direction swaps the verdict on about 0.7 of held-out pairs (0.72 and 0.75 on the two
# draws we measured; the tests hold 0.6 to 0.85); its read part alone, on fewer (0.62 and 0.71); the
# part `W_out` ignores, alone, on almost none (the tests hold under 0.1). The ignored part is a
# small share of the direction's squared length (0.09 and 0.10 measured; the tests hold under a
# quarter) and cannot change the output by itself, yet with it the swap rate is higher, by a few
# hundredths to a tenth: it supplies part of the *step* (the last column), which changes how far
# the patch moves the activation. That is Makelov et al.'s illusion in miniature: a component the
# model never reads, which does differ between true and false statements, changes what patching
# the direction does. The organism differs from their example in degree: here most of the effect
# is a read direction's own, one the model uses, and the illusion adds a little (under a quarter of
# the swap rate in the tests, about a tenth measured); in their example
# the read direction is dormant and the whole effect is the illusion. So the rule: before calling a
# patched direction the model's own, split it by what the next weights read (here, the kernel of
# `W_out`) and patch the read part alone; report that number, not the whole direction's.
#
# ## 10. On a real model
# With the Hugging Face Hub reachable, the same sweep on GPT-2 small: head patching (all positions) on
# our IOI prompts with the swap corruption. The name movers (9.9, 9.6, 10.0) and S-inhibition heads
# (7.3, 7.9, 8.6, 8.10) that Wang et al. (2022) found are where to look first; the cell prints where
# they rank rather than assuming they lead. Compare them with the organism's single suppressing head. Offline, this cell says
# so and moves on.

# %%
if env.hub_online:
    gpt2 = load_model("gpt2-small")
    one_token = lambda word: len(gpt2.tokenizer(word, add_special_tokens=False)["input_ids"]) == 1  # noqa: E731
    gpt2_set = ioi_prompts("test", n=64)
    gpt2_set = gpt2_set.subset([i for i, (c, w) in enumerate(zip(gpt2_set.correct, gpt2_set.wrong))
                                if one_token(c) and one_token(w)][:16])
    gpt2_clean, gpt2_swap, gpt2_last = paired_tokens(gpt2, gpt2_set.prompts, swapped_prompts(gpt2_set).prompts)
    gpt2_correct = answer_ids(gpt2, gpt2_set.correct).to(gpt2.cfg.device)
    gpt2_wrong = answer_ids(gpt2, gpt2_set.wrong).to(gpt2.cfg.device)
    gpt2_metric = normalised_logit_diff_metric(gpt2(gpt2_clean), gpt2(gpt2_swap), gpt2_correct, gpt2_wrong, gpt2_last)
    gpt2_heads = patch_head_output(gpt2, gpt2_swap, gpt2_clean, gpt2_metric).flatten()  # [layer * head]
    top = gpt2_heads.abs().argsort(descending=True)[:8].tolist()
    print("GPT-2 small, strongest heads: " + " ".join(f"{i // gpt2.cfg.n_heads}.{i % gpt2.cfg.n_heads} {gpt2_heads[i]:.2f}" for i in top))
    rank = {i: r + 1 for r, i in enumerate(gpt2_heads.abs().argsort(descending=True).tolist())}
    for role, heads in {"name movers": [(9, 9), (9, 6), (10, 0)], "S-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)]}.items():
        print(f"{role} (Wang et al.): " + " ".join(f"{l}.{h} rank {rank[l * gpt2.cfg.n_heads + h]}" for l, h in heads))
else:
    print("offline: skipped GPT-2 small (run this cell with a network connection to compare)")

# %% [markdown]
# ## 11. What patching can't tell you
#
# **The answer depends on the corruption.** Patching measures the difference between two runs, so it
# finds only the components that *differ* between them. Here is the head sweep again with the ABC
# corruption instead of the swap:

# %%
with elapsed_bar("patching every head"):
    abc_heads = patch_head_output(model, abc_tokens, clean_tokens, abc_metric)  # [layer, head]
strongest = {}
for label, scores in {"swap": heads_denoising, "ABC": abc_heads}.items():
    top = scores.flatten().argsort(descending=True)[:4].tolist()
    strongest[f"{label} corruption"] = {f"#{rank + 1}": f"L{i // 8}H{i % 8} {scores.flatten()[i]:.2f}" for rank, i in enumerate(top)}
pd.DataFrame(strongest).T.rename_axis(columns="strongest heads")

# %% [markdown]
# Both corruptions point at the same few heads here, with different weights, and a corruption that
# changed other features (the place, the object, the template) would light up other components entirely.
# A patching result is a statement about *this pair* of distributions, never about "the" mechanism.
#
# - **Redundant and distributed mechanisms hide.** If two heads each suffice, noising either one alone
#   shows nothing (the other takes over), and denoising either one alone shows everything. A small
#   effect is not proof of no role; check pairs, and compare noising with denoising (Section 7's two
#   previous-token heads: each alone removes a third of induction or less, both together all of it).
# - **A patching map is not an algorithm.** The organism's IOI map has the shape of GPT-2's, and its
#   late head does the opposite of GPT-2's name movers. Attention patterns, OV circuits and path
#   patching into queries, keys and values say what a head does; the map only says where to look.
# - **Off-distribution interventions answer other questions.** Zero ablation (Section 7's L1H1 and
#   L2H1) broke the model with heads that play no part in the behaviour.
# - **Patching a subspace can create what it claims to find.** Patching a single direction (a
#   subspace, not a whole activation) can change the output through a path the model never uses on
#   its own inputs: a dormant direction that the patch activates (Makelov et al., 2023, "the
#   interpretability illusion"). Section 9 measured it in miniature: DAS gains a few hundredths of
#   swap rate from a part of MLP2's hidden layer that `W_out` never reads. A subspace claim needs
#   the direction to be read downstream and to matter on unpatched inputs too.
# - **Linear estimates fail where it matters.** Attribution patching was worst on the most important
#   early heads (Section 5).
# - **A faithful circuit is not the whole story.** High faithfulness on one template and one corruption
#   says the circuit carries *this* behaviour on *this* distribution; the completeness gap said even
#   the best circuit here leaves out a route the full model has.
#
# ### References
# - Wang, Variengien, Conmy, Shlegeris, Steinhardt (2022). *Interpretability in the Wild: a Circuit for
#   Indirect Object Identification in GPT-2 small.* The IOI task, ABC mean ablation, path patching,
#   faithfulness, completeness and minimality.
# - Heimersheim & Nanda (2024). *How to use and interpret activation patching.* Denoising and noising,
#   sufficient and necessary, AND and OR.
# - Chan et al. (2022). *Causal scrubbing.* Resample ablation.
# - Goldowsky-Dill, MacLeod, Sato, Arora (2023). *Localizing Model Behavior with Path Patching.*
# - Nanda (2023). *Attribution patching: activation patching at industrial scale.* Syed, Rager, Conmy
#   (2023). *Attribution Patching Outperforms Automated Circuit Discovery.* Kramár, Lieberum, Shah,
#   Nanda (2024). *AtP\*: An efficient and scalable method for localizing LLM behaviour to components.*
# - McDougall, Conmy, Rushing, McGrath, Nanda (2023). *Copy Suppression: Comprehensively Understanding
#   an Attention Head.*
# - McGrath, Rahtz, Kramár, Mikulik, Legg (2023). *The Hydra Effect: Emergent Self-repair in Language
#   Model Computations.*
# - Conmy et al. (2023). *Towards Automated Circuit Discovery for Mechanistic Interpretability* (ACDC).
# - Elhage et al. (2021). *A Mathematical Framework for Transformer Circuits.* Olsson et al. (2022).
#   *In-context Learning and Induction Heads.*
# - Makelov, Lange, Nanda (2023). *Is This the Subspace You Are Looking For? An Interpretability
#   Illusion for Subspace Activation Patching.*
# - Geiger, Wu, Potts, Icard, Goodman (2024). *Finding Alignments Between Interpretable Causal
#   Variables and Distributed Neural Representations* (distributed alignment search).
#
# **Your record so far:**

# %%
show_progress("06_patching")
