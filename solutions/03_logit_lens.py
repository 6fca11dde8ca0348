# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 03: Logit lens and attribution
#
# **Time:** about 3 hours. **Exercises:** 9, each checked as soon as you run the cell after it.
# *Run All* takes under a minute on a 2-core laptop CPU (longer when the machine is busy).
#
# **You will learn to**
# - write the final residual stream as a sum of everything the embeddings, heads and MLPs wrote,
#   and turn each part into its share of the logit difference, with the final LayerNorm frozen;
# - read the residual stream after every block with the **logit lens**, family by family against
#   answers we know, and train a **tuned lens** (one translator per point, on all families pooled)
#   that brings each point closer to the model's final distribution;
# - attribute each answer to layers and heads (**direct logit attribution**) and tell behaviours
#   carried by heads from behaviours carried by MLPs;
# - find previous-token, duplicate-token and induction heads from their attention patterns, and
#   read what a head does from its weights (OV copying, QK on positions, K-composition), always
#   against a random baseline;
# - recognise when an attribution is not the mechanism: a head whose direct effect and whose
#   ablation effect disagree.
#
# **Seed concepts:** the residual stream as an additive channel; the logit lens; attributional
# methods and their limit (attribution is not causation; a plausible explanation is not a faithful
# one); QK and OV circuits, paths as products of matrices; induction heads (a previous-token head
# and an induction head that reads it through K-composition).
#
# Chapter 02 asked whether a label can be *read* from the residual stream. This chapter reads the
# model's own computation: where each answer appears, which components write it, and what the
# attention heads do. Everything is graded against the organism's known world.

# %%
import pandas as pd
import torch
from IPython.display import display

from utils import check_exercise, load_model, prompt_set, setup, show_progress

env = setup()
model = load_model()
torch.set_grad_enabled(False)  # this chapter only reads the model; section 3 turns gradients on for its lens

# %% [markdown]
# ## 1. The residual stream as a sum
#
# Every block *adds* to the residual stream: the embeddings start it, each attention layer adds its
# output, each MLP adds its output, and nothing is replaced, only added to (though a later component
# can add the opposite of what an earlier one wrote, and cancel it; Chapter 06 meets a head whose job is
# to push a name's logit down).
# So the residual stream at the end is a plain sum,
#
# $$x_\text{final} = \text{embed} + \text{pos\_embed} + \sum_{\ell} \left(\text{attn}_\ell + \text{mlp}_\ell\right),$$
#
# and each attention layer's output is itself a sum over its heads (plus a bias). The logits are
# computed from $x_\text{final}$ by the final LayerNorm and the unembedding. The LayerNorm is the only
# non-linear step: it subtracts the mean over `d_model` (a linear map) and divides by the *scale*, the
# root-mean-square of what is left (not linear). Once we take that scale from the cache, as the
# number it was on this forward pass, the map from residual stream to logits is linear, and the logit
# difference splits exactly into one share per component:
#
# $$\text{logit}[c] - \text{logit}[w] = \sum_{\text{components } k} \frac{\text{centre}(x_k)}{\text{scale}} \cdot (W_U[:, c] - W_U[:, w]) \;+\; (b_U[c] - b_U[w]).$$
#
# That share is the component's **direct logit attribution** (DLA): what it writes straight into the
# answer, ignoring whatever later components do with it.
#
# Two facts about the model loaded here (a `TransformerBridge` in compatibility mode) matter.
# Its LayerNorm weights are *folded* into the next weights, so a LayerNorm here is "centre, then
# divide by the scale", nothing more. And its unembedding is *centred*: each logit vector has had
# its mean subtracted, so a raw logit means nothing alone (it moved by a constant that differs per
# position), but differences between logits and the probabilities are exactly the original model's.
# That is one more reason to study logit *differences*.
#
# We reuse Chapter 02's `tokenize` (end-of-text token first, right padding, each prompt's last index)
# and `answer_ids`.

# %% tags=["export"]
import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils import progress_bar
from utils.memo import memoized
from utils.organism.world import PromptSet, prompt_set
from utils.references.ch02_probing import answer_ids, residual_hook_names, residual_point_names, tokenize


def at_last(values: Float[Tensor, "... batch pos d"], last: Int[Tensor, "batch"]) -> Float[Tensor, "... batch d"]:
    """Each prompt's own last position of a cached activation (right-padded prompts)."""
    rows = torch.arange(len(last), device=values.device)
    return values[..., rows, last.to(values.device), :]


def logit_diff_directions(model, prompts: PromptSet) -> Float[Tensor, "batch d_model"]:
    """W_U[:, correct] - W_U[:, wrong] for each prompt: the residual direction of its logit difference."""
    correct = answer_ids(model, prompts.correct).to(model.cfg.device)
    wrong = answer_ids(model, prompts.wrong).to(model.cfg.device)
    return (model.W_U[:, correct] - model.W_U[:, wrong]).T  # [batch, d_model]


@torch.no_grad()
def run_prompts(model, prompts: PromptSet):
    """Tokens, last positions, the last-position logits and the full cache of one batch of prompts."""
    tokens, last = tokenize(model, prompts.prompts)
    tokens, last = tokens.to(model.cfg.device), last.to(model.cfg.device)
    logits, cache = model.run_with_cache(tokens)
    rows = torch.arange(len(last), device=model.cfg.device)
    return tokens, last, logits[rows, last], cache


# %%
ioi = prompt_set("ioi", "test", n=128, seed=0)
ioi_tokens, ioi_last, ioi_logits, ioi_cache = run_prompts(model, ioi)
ioi_directions = logit_diff_directions(model, ioi)
components, component_labels = ioi_cache.decompose_resid(layer=-1, return_labels=True)  # [component, batch, pos, d_model]
components = at_last(components, ioi_last)  # [component, batch, d_model]
final_scale = at_last(ioi_cache["ln_final.hook_scale"], ioi_last)[:, 0]  # [batch]
print(", ".join(component_labels))
print("components:", list(components.shape), " final LayerNorm scale of the first prompts:", [round(s, 2) for s in final_scale[:4].tolist()])

# %% [markdown]
# ### Exercise 3.1: a stack of residual parts to logit differences (difficulty 2/3, ~15 min)
# Write `residual_stack_to_logit_diff(stack, final_scale, directions)`. `stack` holds residual
# vectors, `[component, batch, d_model]` (any parts of the residual stream at each prompt's last
# position); `final_scale` is the final LayerNorm's scale of each prompt, `[batch]`; `directions`
# are the logit-difference directions, `[batch, d_model]`. Return each part's share of each
# prompt's logit difference, `[component, batch]`: centre each vector (subtract its mean over
# `d_model`), divide by the prompt's scale, and take the dot product with the prompt's direction.
#
# <details><summary>Hint 1</summary>
#
# Use the *same* scale for every part: the final residual's, from the cache. A part normalised by
# its own size would not add up to the whole.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `stack - stack.mean(-1, keepdim=True)` centres, still `[component, batch, d_model]`;
# `final_scale[:, None]` is `[batch, 1]` and broadcasts over `d_model`; the dot product with
# `directions` (`[batch, d_model]`) sums over `d_model` and leaves `[component, batch]`.
# </details>
# <details><summary>Hint 3</summary>
#
# `torch.einsum("cbd,bd->cb", centred / final_scale[:, None], directions)`.
# </details>

# %% tags=["export"]
def residual_stack_to_logit_diff(stack: Float[Tensor, "component batch d_model"], final_scale: Float[Tensor, "batch"],
                                 directions: Float[Tensor, "batch d_model"]) -> Float[Tensor, "component batch"]:
    """Each residual part's direct contribution to each prompt's logit difference (final LN frozen)."""
    ### BEGIN SOLUTION
    centred = stack - stack.mean(-1, keepdim=True)  # [component, batch, d_model]
    return torch.einsum("cbd,bd->cb", centred / final_scale[:, None], directions)
    ### END SOLUTION


# %%
residual_stack_to_logit_diff = check_exercise("3.1", residual_stack_to_logit_diff)

# %% [markdown]
# Now the promise of the sum: the parts' shares plus the unembedding bias's share give the logit
# difference the model computed. And the contrast: if each part were normalised by *its own* scale
# (a LayerNorm applied to each part separately), the shares would no longer add up.

# %%
correct_ids, wrong_ids = answer_ids(model, ioi.correct), answer_ids(model, ioi.wrong)
rows = torch.arange(len(ioi))
model_diff = ioi_logits[rows, correct_ids] - ioi_logits[rows, wrong_ids]  # [batch]
bias_share = model.b_U[correct_ids] - model.b_U[wrong_ids]  # [batch]
shares = residual_stack_to_logit_diff(components, final_scale, ioi_directions)  # [component, batch]
own_scale = (components - components.mean(-1, keepdim=True)).pow(2).mean(-1).add(1e-5).sqrt()  # [component, batch]
own_scale_shares = torch.einsum("cbd,bd->cb", (components - components.mean(-1, keepdim=True)) / own_scale[..., None],
                                ioi_directions)
print(f"model's logit difference (mean over {len(ioi)} prompts):   {model_diff.mean():.4f}")
print(f"sum of the shares, final scale frozen, plus the bias:  {(shares.sum(0) + bias_share).mean():.4f}"
      f"  (largest gap on one prompt {(shares.sum(0) + bias_share - model_diff).abs().max():.1e})")
print(f"sum of the shares, each part with its own scale:       {(own_scale_shares.sum(0) + bias_share).mean():.4f}")

# %% [markdown]
# ## 2. The logit lens
#
# If the last block only *adds* to the residual stream, the residual stream before it is already a
# draft of the answer. The **logit lens** (nostalgebraist, 2020) reads that draft: take the residual
# stream after block $\ell$, apply the final LayerNorm and the unembedding to it as if it were the
# last, and look at the next-token distribution it gives. Here the LayerNorm is applied to each
# residual point with *its own* scale (`model.ln_final`), because we want a distribution at each
# point, not a share of the final one. The lens reads at each prompt's own last position.
#
# ### Exercise 3.2: the logit lens (difficulty 2/3, ~15 min)
# Write `logit_lens(model, tokens, last)`. For each residual point (the hooks of
# `residual_hook_names(model.cfg.n_layers)`: the embeddings, then the output of each block) take the
# residual stream at each prompt's last position `last[i]`, apply the final LayerNorm
# (`model.ln_final`) and the unembedding (`@ model.W_U + model.b_U`). Return the logits,
# `[point, batch, d_vocab]`. The last point must give the model's own logits.
#
# <details><summary>Hint 1</summary>
#
# `model.run_with_cache(tokens, names_filter=...)` and Chapter 02's indexing,
# `cache[name][torch.arange(batch), last]`; `at_last(cache[name], last)` does the same.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: each point gives `[batch, d_model]` at the last positions; stack them into `[point, batch,
# d_model]`. `model.ln_final` works on the last dimension, and `model.W_U` is `[d_model, d_vocab]`, so the
# result is `[point, batch, d_vocab]`. To test yourself, compare the last point with the model's own
# logits at `last`.
# </details>
# <details><summary>Hint 3</summary>
#
# Stack the points first and call `model.ln_final` once: `model.ln_final(resid) @ model.W_U + model.b_U`.
# </details>

# %% tags=["export"]
@torch.no_grad()
def logit_lens(model, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, "batch"]) -> Float[Tensor, "point batch d_vocab"]:
    """The final LayerNorm and unembedding applied to the residual stream at every residual point."""
    ### BEGIN SOLUTION
    names = residual_hook_names(model.cfg.n_layers)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    resid = torch.stack([at_last(cache[name], last) for name in names])  # [point, batch, d_model]
    return model.ln_final(resid) @ model.W_U + model.b_U
    ### END SOLUTION


# %%
logit_lens = check_exercise("3.2", logit_lens)

# %% [markdown]
# Two measures of the lens for a known answer: its **rank** (0 means top-1) and its
# **probability**. Here they are for the four families, after each block, on 128 held-out prompts
# each.

# %% tags=["export"]
def answer_rank(logits: Float[Tensor, "... batch d_vocab"], ids: Int[Tensor, "batch"]) -> Int[Tensor, "... batch"]:
    """How many tokens score above the answer (0: the answer is top-1)."""
    answer = logits.gather(-1, ids.to(logits.device).expand(*logits.shape[:-1])[..., None])  # [..., batch, 1]
    return (logits > answer).sum(-1)


def answer_probability(logits: Float[Tensor, "... batch d_vocab"], ids: Int[Tensor, "batch"]) -> Float[Tensor, "... batch"]:
    """The probability the distribution gives the answer."""
    probabilities = logits.softmax(-1)
    return probabilities.gather(-1, ids.to(logits.device).expand(*logits.shape[:-1])[..., None])[..., 0]


LENS_FAMILIES = ("ioi", "facts", "truth", "sentiment")


@torch.no_grad()
def lens_by_family(model, n: int = 128, seed: int = 0, families: tuple[str, ...] | None = None
                   ) -> dict[str, dict[str, Tensor]]:
    """Per family: the logit lens's top-1 rate and mean answer probability at each residual point.

    The lens needs one-token answers. With `families=None` every family that fits the model's
    tokenizer is measured and the others are named in one printed line (on GPT-2 most capitals
    take two tokens); a family asked for by name that does not fit is a clear error.
    """
    def one_token(family: str) -> bool:  # are all its answer words single tokens for this tokenizer?
        prompts = prompt_set(family, "test", n=n, seed=seed)
        words = sorted(set(prompts.correct) | set(prompts.wrong))
        return all(len(ids) == 1 for ids in model.tokenizer(words, add_special_tokens=False)["input_ids"])

    fitting = [family for family in (LENS_FAMILIES if families is None else families) if one_token(family)]
    if families is None:
        left_out = [family for family in LENS_FAMILIES if family not in fitting]
        if left_out:
            print(f"lens_by_family: left out {', '.join(left_out)} (answers of more than one token for this "
                  f"tokenizer); measuring {', '.join(fitting) or 'nothing'}")
    else:
        misfits = [family for family in families if family not in fitting]
        if misfits:
            raise ValueError(f"families {misfits} have answers of more than one token for this model's tokenizer; "
                             f"the families that fit: {[f for f in LENS_FAMILIES if one_token(f)]}")
    summary = {}
    for family in fitting:
        prompts = prompt_set(family, "test", n=n, seed=seed)
        tokens, last = tokenize(model, prompts.prompts)
        logits = logit_lens(model, tokens.to(model.cfg.device), last.to(model.cfg.device))  # [point, batch, d_vocab]
        correct = answer_ids(model, prompts.correct)
        summary[family] = {"top1": (answer_rank(logits, correct) == 0).float().mean(-1).cpu(),
                           "probability": answer_probability(logits, correct).mean(-1).cpu()}
    return summary


def first_top1_point(top1: Float[Tensor, "point"], majority: float = 0.5) -> int:
    """The first residual point at which most prompts already have the answer top-1."""
    return int((top1 > majority).float().argmax())


# %%
from utils.plotting import lines

points = residual_point_names(model.cfg.n_layers)
lens = lens_by_family(model)
display(pd.concat({"top-1 rate": pd.DataFrame({family: measured["top1"].tolist() for family, measured in lens.items()}, index=points).T,
                   "answer probability": pd.DataFrame({family: measured["probability"].tolist() for family, measured in lens.items()},
                                                      index=points).T}, axis=1).round(2))
print("top-1 for most prompts from: " + ", ".join(f"{family} {points[first_top1_point(measured['top1'])]}"
                                                   for family, measured in lens.items()))
lines({family: measured["top1"] for family, measured in lens.items()}, x=points,
      title="Logit lens: share of held-out prompts with the correct answer top-1",
      x_label="residual point (last token)", y_label="top-1 rate")

# %%
lines({family: measured["probability"] for family, measured in lens.items()}, x=points,
      title="Logit lens: mean probability of the correct answer", x_label="residual point (last token)",
      y_label="probability")

# %% [markdown]
# The world predicts this picture, family by family:
# - At `embed` the last token is the same word in every prompt of a family, so nothing is known.
# - **Facts, truth and sentiment** are answered after the first block for most prompts: one block is
#   enough to bring the country (or the adjective) to the last token and turn it into the answer.
#   The middle blocks add confidence; for facts the last block takes a little back (the probability
#   falls at the output), a calibration step a lens reading "more is always better" would miss.
# - **IOI** stays wrong until the last block, and then is right for every prompt: choosing the name
#   that was *not* repeated needs information from several positions to be combined, and the lens
#   reads the answer only after the last block. That is not where the computation happens: Chapter 06
#   finds part of the information at the last position from block 1 on, in a form the unembedding
#   does not read yet.
#
# The logit lens is a *view*, not the model: the lens asks what the final unembedding would say if
# the rest of the network were skipped. Earlier blocks need not write in the unembedding's "language"
# at all, which is what the next section measures.
#
# ## 3. A tuned lens
#
# The **tuned lens** (Belrose et al., 2023) trains one small *translator* per residual point: an
# affine map $h \mapsto h + A h + b$, applied before the final LayerNorm and unembedding, and trained
# so that the lens's distribution matches the model's *final* distribution on the same prompt. The
# loss is the KL divergence from the final distribution to the lens's,
# $\mathrm{KL}(p_\text{final} \,\|\, p_\text{lens})$. Started at $A = 0, b = 0$, the translator is the
# logit lens; whatever training improves is what the logit lens misread.
#
# We train on every position of prompts from all four families (the training split: a few thousand
# residual vectors per point) and measure on held-out prompts.

# %% tags=["export"]
from torch import nn


class Translator(nn.Module):
    """h -> h + A h + b, starting at the identity (A = 0, b = 0): the tuned lens's map for one point."""

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.utils.skip_init(nn.Linear, d_model, d_model)  # zeroed below: skip the random draw
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
        return resid + self.linear(resid)


def lens_logits(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """The final LayerNorm and unembedding applied to residual vectors (the logit lens's read-out).

    The unembedding is a constant here (`.detach()`): a translator's gradient stops at its output.
    """
    return model.ln_final(resid) @ model.W_U.detach() + model.b_U.detach()


def kl_from_final(final_logits: Float[Tensor, "batch d_vocab"], logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, "batch"]:
    """KL(final || lens) per prompt, in nats."""
    final_log_probs, log_probs = final_logits.log_softmax(-1), logits.log_softmax(-1)
    return (final_log_probs.exp() * (final_log_probs - log_probs)).sum(-1)


@torch.no_grad()
def lens_data(model, n_per_family: int, split: str, seed: int = 0,
              families: tuple[str, ...] = LENS_FAMILIES) -> dict[str, Tensor]:
    """Residuals at every point and the model's final logits, at every real position of prompts of `families`.

    Returns `resid` `[point, vector, d_model]`, `final_logits` `[vector, d_vocab]` and `answer`
    `[vector]` (True where the vector sits at a prompt's last position, where the answer is
    predicted), one vector per (prompt, position) after the end-of-text token and before the padding.
    """
    prompts = [p for family in families for p in prompt_set(family, split, n=n_per_family, seed=seed).prompts]
    names = residual_hook_names(model.cfg.n_layers)
    tokens, last = tokenize(model, prompts)
    tokens, last = tokens.to(model.cfg.device), last.to(model.cfg.device)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    real = (positions[None] <= last[:, None]) & (positions[None] > 0)  # [batch, pos]
    answer = (positions[None] == last[:, None])[real]  # [vector]
    return {"resid": torch.stack([cache[name][real] for name in names]), "final_logits": logits[real], "answer": answer}


# %%
lens_train, lens_test = lens_data(model, 100, "train"), lens_data(model, 64, "test")
print("training vectors:", list(lens_train["resid"].shape), " held out:", list(lens_test["resid"].shape))

# %% [markdown]
# ### Exercise 3.3: train a translator (difficulty 2/3, ~15 min)
# Write `train_translator(model, resid, final_logits, steps, lr, batch_size, seed)`. Build
# `Translator(d_model)` and `torch.optim.Adam(translator.parameters(), lr=lr)`, and make a generator
# `torch.Generator().manual_seed(seed)`. Then take `steps` steps; each draws a minibatch of rows with
# `torch.randint(len(resid), (batch_size,), generator=generator)` and minimises the mean over the
# minibatch of `kl_from_final(final_logits[rows], lens_logits(model, translator(resid[rows])))`.
# Return the translator. (Only the translator learns: the model's weights stay as they are.) Another
# way of drawing minibatches (without replacement, say) is fine: the check asks for a held-out KL as
# low as the reference's, with the slack that another draw of minibatches gives (12%).
#
# This chapter switched gradients off at the top; turn them on inside your function with
# `with torch.enable_grad():`.
#
# <details><summary>Hint 1</summary>
#
# The order matters: KL(final || lens) puts the *final* distribution first. The reverse, KL(lens ||
# final), is a different loss with a different minimum.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `resid[rows]` is `[batch_size, d_model]`, and so is `translator(resid[rows])`;
# `lens_logits(model, ...)` turns it into `[batch_size, d_vocab]`, the shape of
# `final_logits[rows]`. `kl_from_final` gives one number per row, so take the `.mean()`.
# </details>
# <details><summary>Hint 3</summary>
#
# Each step: the rows (one `torch.randint(..., generator=generator)`), the loss,
# `optimizer.zero_grad()`, `loss.backward()`, `optimizer.step()`, all inside `with torch.enable_grad():`.
# </details>

# %% tags=["export"]
def train_translator(model, resid: Float[Tensor, "vector d_model"], final_logits: Float[Tensor, "vector d_vocab"],
                     steps: int = 100, lr: float = 1e-2, batch_size: int = 128, seed: int = 0) -> Translator:
    """A tuned-lens translator for one residual point, trained to match the model's final distribution."""
    ### BEGIN SOLUTION
    translator = Translator(resid.shape[-1]).to(resid.device)
    optimizer = torch.optim.Adam(translator.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(len(resid), (batch_size,), generator=generator).to(resid.device)
            loss = kl_from_final(final_logits[rows], lens_logits(model, translator(resid[rows]))).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return translator
    ### END SOLUTION


# %%
train_translator = check_exercise("3.3", train_translator)

# %% [markdown]
# One translator for each point before the last (the last point *is* the output, where both lenses
# have KL 0), then the KL of both lenses on held-out prompts, at every position:

# %% tags=["export"]
def lens_kl_by_point(model, train: dict, test: dict, steps: int = 100, progress: bool = True) -> dict[str, Tensor]:
    """Held-out mean KL(final || lens) at each residual point for the logit lens and a tuned lens, over
    every position and over the answer positions alone (each prompt's last, where the answer is predicted)."""
    curves = {name: [] for name in ("logit lens", "tuned lens", "logit lens, answer position", "tuned lens, answer position")}
    answer = test["answer"]
    for point in progress_bar(range(train["resid"].shape[0] - 1), show=progress, desc="translators"):
        translator = train_translator(model, train["resid"][point], train["final_logits"], steps=steps)
        with torch.no_grad():
            logit = kl_from_final(test["final_logits"], lens_logits(model, test["resid"][point]))  # [vector]
            tuned = kl_from_final(test["final_logits"], lens_logits(model, translator(test["resid"][point])))
        for name, kl in (("logit lens", logit), ("tuned lens", tuned)):
            curves[name].append(kl.mean())
            curves[f"{name}, answer position"].append(kl[answer].mean())
    zero = torch.zeros(1)  # the last point is the model's output
    return {name: torch.cat([torch.stack(values).cpu(), zero]) for name, values in curves.items()}


# %%
kl = lens_kl_by_point(model, lens_train, lens_test)
display(pd.DataFrame({name: values.tolist() for name, values in kl.items()}, index=points).T
        .rename_axis(columns="KL(final || lens), nats, held out").round(2))
lines(kl, x=points, title="How far each lens is from the model's final distribution (held out)",
      x_label="residual point (every position, or the answer position alone)", y_label="KL(final || lens), nats")

# %% [markdown]
# The tuned lens is closer to the final distribution at every point before the last, and the gap is
# largest early, where the residual stream is furthest from the unembedding's language. At the last
# point both lenses are the model itself (KL 0).
#
# The average over every position flatters both lenses. Most positions of a prompt predict an easy
# next word (the template's fixed words), and those dominate the mean. Restricted to the **answer
# position** (each prompt's last token, where the name, the capital or the verdict is predicted) the
# tuned lens is still closer than the logit lens at every point, but after block 0 its KL stays at
# about a nat or more, several times its all-position average, and its gain over the logit lens is
# a few tenths of a nat (0.2 to 0.7 measured). The last block still moves the answer distribution by
# that much, and the trained affine translator does not recover it: the tuned lens reads what is already there, not what later
# blocks will compute (for IOI, Section 2 found the answer only after block 3).
#
# Two cautions. A translator is a *trained* probe: at
# the embeddings it can learn the usual next word after each token from the token alone, so it reports
# what can be *predicted* from the point, which may be more than what the model has computed there.
# And both lenses read the residual stream only through the final LayerNorm and unembedding: what a
# later block would *do* with a point, they cannot say.
#
# One translator per point served all four families at once. Would a lens trained on each family
# alone read that family better? Train one per family and point, and compare its held-out KL with
# the pooled lens's on the same family's prompts:

# %% tags=["export"]
@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
@torch.no_grad()
def pooled_vs_own_lens(model, n_train: int = 100, n_test: int = 64, steps: int = 100, seed: int = 0,
                       families: tuple[str, ...] = LENS_FAMILIES, progress: bool = True) -> "pd.DataFrame":
    """Held-out KL(final || lens) by family and point before the output: the pooled tuned lens
    (trained on all families) against one trained on the family alone."""
    import pandas as pd

    pooled_train = lens_data(model, n_train, "train", seed=seed, families=families)
    n_points = pooled_train["resid"].shape[0] - 1
    pooled = [train_translator(model, pooled_train["resid"][p], pooled_train["final_logits"], steps=steps)
              for p in range(n_points)]
    rows = []
    for family in progress_bar(families, show=progress, desc="families"):
        train = lens_data(model, n_train, "train", seed=seed, families=(family,))
        test = lens_data(model, n_test, "test", seed=seed, families=(family,))
        for point in range(n_points):
            own = train_translator(model, train["resid"][point], train["final_logits"], steps=steps)
            kl = {name: kl_from_final(test["final_logits"], lens_logits(model, lens(test["resid"][point]))).mean().item()
                  for name, lens in (("pooled lens", pooled[point]), ("own lens", own))}
            rows.append({"family": family, "point": point, **kl})
    table = pd.DataFrame(rows)
    table["pooled minus own"] = table["pooled lens"] - table["own lens"]
    return table


# %%
by_family = pooled_vs_own_lens(model)
by_family.pivot(index="family", columns="point", values="pooled minus own").round(3)

# %% [markdown]
# Each number is a KL averaged over every position of the family's held-out prompts, not only the
# position where the answer is predicted, and a family's own lens is trained on a quarter of the
# pooled lens's data. A lens of its own helps a family a little at the embeddings (a few tenths of a
# nat at most, where a translator learns which word tends to follow which), and after block 0 by a
# few hundredths of a nat at most: in nats, the same translator reads every family about as well as
# one trained for it. In relative terms the gap can still be large where both KLs are tiny (the
# pooled lens's KL can be several times the own lens's on an easy family), so "as well" means "as
# few nats lost". That is
# why one pooled lens is enough here, and it is a measurement, not a rule: in a model whose families
# used different directions at the same point, the pooled lens would have to compromise.
#
# ## 4. Direct logit attribution
#
# Back to the sum of Section 1, now for every family: the share each component writes straight into
# the logit difference, averaged over held-out prompts. The cache gives the components
# (`decompose_resid`) and, for attention, every head separately (`stack_head_results`, which builds
# each head's output from its `hook_z` and `W_O`).
#
# ### Exercise 3.4: attribution to every head (difficulty 2/3, ~15 min)
# Write `head_attribution(model, prompts)`. Run the prompts (Chapter 02's `tokenize`), take every
# head's output at each prompt's last position with `cache.stack_head_results(layer=-1)`, and turn
# it into shares of each prompt's logit difference (correct minus wrong) with Exercise 3.1's
# function and the cached final scale. Return `[layer, head, batch]`.
#
# <details><summary>Hint 1</summary>
#
# Three things from one cached run: every head's output at each prompt's last position, the final
# LayerNorm's scale (`ln_final.hook_scale`) there, and each prompt's logit-difference direction.
# Exercise 3.1's function combines them.
# </details>
# <details><summary>Hint 2</summary>
#
# `stack_head_results` returns `[layer * head, batch, pos, d_model]`, ordered L0H0, L0H1, ...;
# `at_last` picks the last positions; `.reshape(n_layers, n_heads, batch)` at the end. The direction
# is `W_U[:, correct] - W_U[:, wrong]` (`logit_diff_directions`): the correct answer's column alone
# would measure a raw logit, which the centred unembedding makes meaningless.
# </details>
# <details><summary>Hint 3</summary>
#
# With `tokens, last, _, cache = run_prompts(model, prompts)`: `heads =
# at_last(cache.stack_head_results(layer=-1), last)`, `scale = at_last(cache["ln_final.hook_scale"],
# last)[:, 0]`, then `residual_stack_to_logit_diff(heads, scale, logit_diff_directions(model,
# prompts))` and the reshape.
# </details>

# %% tags=["export"]
@torch.no_grad()
def head_attribution(model, prompts: PromptSet) -> Float[Tensor, "layer head batch"]:
    """Every head's direct contribution to each prompt's logit difference.

    Only each prompt's last position is turned into head outputs (`hook_z` there times `W_O`), so
    the memory stays small on a real model: every head's output at every position of GPT-2 small
    takes gigabytes.
    """
    ### BEGIN SOLUTION
    tokens, last = tokenize(model, prompts.prompts)
    tokens, last = tokens.to(model.cfg.device), last.to(model.cfg.device)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in z_names or name == "ln_final.hook_scale")
    rows = torch.arange(len(last), device=tokens.device)
    heads = torch.cat([torch.einsum("bhe,hed->hbd", cache[name][rows, last], model.W_O[layer])  # [head, batch, d_model]
                       for layer, name in enumerate(z_names)])  # [layer * head, batch, d_model]
    scale = at_last(cache["ln_final.hook_scale"], last)[:, 0].to(heads.dtype)  # [batch]
    shares = residual_stack_to_logit_diff(heads, scale, logit_diff_directions(model, prompts))  # [layer * head, batch]
    return shares.reshape(model.cfg.n_layers, model.cfg.n_heads, len(prompts))
    ### END SOLUTION


# %%
head_attribution = check_exercise("3.4", head_attribution)

# %% [markdown]
# First by component (embeddings, each attention layer, each MLP), for the four families:

# %% tags=["export"]
@torch.no_grad()
def component_attribution(model, prompts: PromptSet) -> tuple[Float[Tensor, "component batch"], list[str]]:
    """Every component's (embeddings, attention layers, MLPs) direct share of each logit difference.

    The same parts as `cache.decompose_resid`, taken only at each prompt's last position; a model
    with rotary positions (Pythia) has no position embedding, and so no `pos_embed` part.
    """
    tokens, last = tokenize(model, prompts.prompts)
    tokens, last = tokens.to(model.cfg.device), last.to(model.cfg.device)
    names = {"hook_embed": "embed", "hook_pos_embed": "pos_embed"}
    for layer in range(model.cfg.n_layers):
        names |= {f"blocks.{layer}.hook_attn_out": f"{layer}_attn_out", f"blocks.{layer}.hook_mlp_out": f"{layer}_mlp_out"}
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names or name == "ln_final.hook_scale")
    present = [name for name in names if name in cache.cache_dict]  # hook_pos_embed fires only with learned positions
    parts = torch.stack([at_last(cache[name], last) for name in present])  # [component, batch, d_model]
    scale = at_last(cache["ln_final.hook_scale"], last)[:, 0].to(parts.dtype)  # [batch]
    return residual_stack_to_logit_diff(parts, scale, logit_diff_directions(model, prompts)), [names[n] for n in present]


# %%
from utils.plotting import heatmap

family_sets = {family: prompt_set(family, "test", n=128, seed=0) for family in LENS_FAMILIES}
by_component = {}
for family, prompts in family_sets.items():
    shares, component_labels = component_attribution(model, prompts)
    by_component[family] = shares.mean(-1)  # [component]
by_head = {family: head_attribution(model, prompts).mean(-1) for family, prompts in family_sets.items()}  # [layer, head]
heatmap(torch.stack(list(by_component.values())), x=component_labels, y=list(by_component),
        title="Direct logit attribution by component (mean over held-out prompts)", text_auto=".1f")

# %%
summary_rows = {}
for family in LENS_FAMILIES:
    heads, mlps = by_head[family], by_component[family][[i for i, l in enumerate(component_labels) if "mlp" in l]]
    best = divmod(int(heads.argmax()), model.cfg.n_heads)
    summary_rows[family] = {"all heads together": heads.sum().item(), "all MLPs": mlps.sum().item(),
                            "largest component": f"{component_labels[int(by_component[family].argmax())]} {by_component[family].max():.2f}",
                            "top head": f"L{best[0]}H{best[1]} {heads.max():.2f}"}
pd.DataFrame(summary_rows).T.style.format({"all heads together": "{:.2f}", "all MLPs": "{:.2f}"})

# %%
heatmap(by_head["ioi"], x=[f"H{h}" for h in range(model.cfg.n_heads)], y=[f"L{l}" for l in range(model.cfg.n_layers)],
        title="IOI: direct logit attribution by head", x_label="head", y_label="layer", text_auto=".2f")

# %%
ioi_heads = head_attribution(model, ioi)  # [layer, head, batch]
order_rows = {}
for order in ("ABBA", "BABA"):
    rows = [i for i, label in enumerate(ioi.labels["order"]) if label == order]
    order_rows[f"{order} ({len(rows)} prompts)"] = {f"L3H{h}": ioi_heads[3, h, rows].mean().item() for h in (1, 4, 5, 6)}
pd.DataFrame(order_rows).T.rename_axis(columns="mean direct share").round(2)

# %% [markdown]
# What the attributions say:
# - **Facts and sentiment are MLP behaviours.** Their heads together write almost nothing straight to
#   the answer; the MLPs write it (for sentiment, mostly the MLP of block 1; for facts, every MLP a
#   little). Something must still *move* the adjective or the country to the last token, and only
#   attention can, but that is an indirect effect, which DLA does not see.
# - **Truth** is written by MLPs too, mostly in blocks 0 and 2.
# - **IOI** has one head with a large direct share on average, L3H1, and the same share whatever the
#   order of the names. Three heads of layer 3, L3H4, L3H5 and L3H6, write even more on a single
#   prompt, but with a sign that flips with the order: on ABBA prompts ("When Mary and John ..., John
#   gave ... to") L3H5 writes for the answer and L3H4 and L3H6 against it, on BABA prompts the reverse.
#   Averaged over a mix of both, they nearly cancel, and the averaged heatmap hides them: split a
#   family by its labels before you average. The biggest single share is the MLP of block 3. Hold on
#   to that: Section 7 comes back to it.
#
# A direct attribution is *exact* for what it measures: the sum is the logit difference. What it
# measures is only the direct path. A head whose output is read by a later MLP gets no credit for
# what the MLP then writes.

# %% [markdown]
# ## 5. Attention patterns and head detectors
#
# An attention head moves information between positions: each destination position (the query) takes
# a weighted average of the head's *values* at the source positions (itself and those before it), with
# weights set by how well its query matches their keys. The
# weights, the **attention pattern**, are cached at `blocks.{layer}.attn.hook_pattern` with shape
# `[batch, head, destination, source]`, each row summing to 1. The views below are interactive: hover
# over a token to see where it looks. First, the last layer on an IOI prompt (look at L3H1 from the
# last token: it looks at the *repeated* name, not at the answer; Chapter 06 measures what it does
# with it):

# %%
from utils.plotting import attention_patterns

first_length = int(ioi_last[0]) + 1
attention_patterns(model.to_str_tokens(ioi_tokens[0, :first_length]),
                   ioi_cache["blocks.3.attn.hook_pattern"][0, :, :first_length, :first_length],
                   [f"L3H{h}" for h in range(model.cfg.n_heads)], focus="L3H1")

# %% [markdown]
# To find heads by what they do, we need inputs where the right behaviour is unambiguous. A random
# sequence of words repeated twice is the classic: on the second copy, the next word is predictable
# only by looking back at the first copy. The organism's training documents included such sequences,
# though never these ones. `repeated_tokens` draws them from the world's content words.

# %% tags=["export"]
from utils.organism import world


def repeated_tokens(model, seq_len: int, batch: int, seed: int = 0, vocabulary: list[int] | None = None
                    ) -> Int[Tensor, "batch two_seq_len_plus_1"]:
    """The end-of-text token, then `seq_len` random distinct words, then the same words again."""
    if vocabulary is None:
        vocabulary = [model.to_single_token(" " + word) for word in world.INDUCTION_POOL]
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(vocabulary)
    words = torch.stack([pool[torch.randperm(len(pool), generator=generator)[:seq_len]] for _ in range(batch)])
    start = torch.full((batch, 1), model.tokenizer.bos_token_id)
    return torch.cat([start, words, words], dim=1).to(model.cfg.device)  # [batch, 1 + 2 * seq_len]


@torch.no_grad()
def all_patterns(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch head dest src"]:
    """Every layer's attention pattern."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names])


@torch.no_grad()
def per_token_loss(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """The loss (negative log-probability) of each next token."""
    log_probs = model(tokens).log_softmax(-1)  # [batch, pos, d_vocab]
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


# %%
SEQ_LEN = 20
repeats = repeated_tokens(model, SEQ_LEN, batch=16, seed=0)
loss = per_token_loss(model, repeats).mean(0)  # [pos - 1]
first_copy, second_copy = loss[:SEQ_LEN], loss[SEQ_LEN + 1:]  # the second copy's first word is not predictable
print(f"mean loss on the first copy {first_copy.mean():.2f} nats, on the second copy (from its second word) "
      f"{second_copy.mean():.3f} nats")
lines(loss, x=list(range(1, 2 * SEQ_LEN + 1)), title="Loss on each token of a repeated random sequence",
      x_label="position of the predicted token", y_label="loss (nats)")

# %% [markdown]
# On the first copy the words are random and the loss is about $\ln 306 \approx 5.7$ or more, the loss of
# a uniform guess among the world's 306 content words; on the second copy, from its second word on, it
# is almost zero. Something in the model looks back. Here are the
# patterns of layer 0 and layer 3 on one repeated sequence:

# %%
patterns = all_patterns(model, repeats)  # [layer, batch, head, dest, src]
repeat_str = model.to_str_tokens(repeats[0])
attention_patterns(repeat_str, patterns[0, 0], [f"L0H{h}" for h in range(model.cfg.n_heads)], focus="L0H2")

# %%
attention_patterns(repeat_str, patterns[3, 0], [f"L3H{h}" for h in range(model.cfg.n_heads)], focus="L3H3")

# %% [markdown]
# In layer 0, some heads put almost all their weight one token back: **previous-token heads**. In
# layer 3, several heads draw a stripe parallel to the diagonal, `SEQ_LEN - 1` places back: from
# each word of the second copy, they look at the word that *followed* its first occurrence. Those are
# **induction heads** (found in small attention-only models by Elhage et al., 2021, and traced through
# training by Olsson et al., 2022). Let us measure both.
#
# ### Exercise 3.5: previous-token scores (difficulty 1/3, ~10 min)
# Write `previous_token_scores(patterns, offset=1)`. `patterns` is `[layer, batch, head, dest, src]`.
# For each layer and head, return the attention each destination pays to the token `offset` places
# before it, averaged over the batch and over every destination that has such a token (destinations
# `offset` to the end). Return `[layer, head]`.
#
# <details><summary>Hint 1</summary>
#
# The axes are (destination, source): row `d` of a pattern is where position `d` looks. The entry
# for "one back" is `pattern[d, d - 1]`, below the diagonal.
# </details>
# <details><summary>Hint 2</summary>
#
# `patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)` gives `[..., n_destinations]` with the
# entries `(d, d - offset)` for `d = offset, offset + 1, ...`.
# </details>
# <details><summary>Hint 3</summary>
#
# The diagonal has the shape `[layer, batch, head, dest - offset]`: average over the batch and the
# destinations, dimensions 1 and 3, with `.mean(dim=(1, 3))`.
# </details>

# %% tags=["export"]
def previous_token_scores(patterns: Float[Tensor, "layer batch head dest src"], offset: int = 1) -> Float[Tensor, "layer head"]:
    """Mean attention from each position to the token `offset` places before it, per head."""
    ### BEGIN SOLUTION
    stripe = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [layer, batch, head, dest - offset]
    return stripe.mean(dim=(1, 3))
    ### END SOLUTION


# %%
previous_token_scores = check_exercise("3.5", previous_token_scores)

# %% [markdown]
# ### Exercise 3.6: induction scores (difficulty 2/3, ~15 min)
# Write `induction_scores(patterns, seq_len)` for patterns of `repeated_tokens` (the end-of-text
# token at position 0, the first copy at positions 1 to `seq_len`, the second copy after). An
# induction head at a destination in the second copy attends to the token *after* the previous
# occurrence of the destination's token: `seq_len - 1` places back. Average that attention over the
# batch and over the destinations of the **second copy only**. Return `[layer, head]`.
#
# <details><summary>Hint 1</summary>
#
# The token at destination `d` (second copy) last occurred at `d - seq_len`; the token after it is
# at `d - seq_len + 1`.
# </details>
# <details><summary>Hint 2</summary>
#
# The destinations of the second copy are `seq_len + 1, ..., 2 * seq_len`. In the diagonal at offset
# `-(seq_len - 1)`, destination `d` is entry `d - (seq_len - 1)`.
# </details>
# <details><summary>Hint 3</summary>
#
# `patterns.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)` starts at destination `seq_len - 1`;
# its first two entries (destinations `seq_len - 1` and `seq_len`) are still in the first copy. Drop
# them, `[..., 2:]`, and average over dimensions 1 and 3.
# </details>

# %% tags=["export"]
def induction_scores(patterns: Float[Tensor, "layer batch head dest src"], seq_len: int) -> Float[Tensor, "layer head"]:
    """Mean attention from each second-copy token to the token after its first occurrence, per head."""
    ### BEGIN SOLUTION
    stripe = patterns.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # [layer, batch, head, dest - seq_len + 1]
    second_copy = stripe[..., 2:]  # destinations seq_len + 1 .. 2 * seq_len
    return second_copy.mean(dim=(1, 3))
    ### END SOLUTION


# %%
induction_scores = check_exercise("3.6", induction_scores)

# %% [markdown]
# A **duplicate-token head** attends from a token to its own earlier occurrence, `seq_len` places
# back; its score is the previous-token score at that offset, which is almost all second-copy
# destinations. All three detectors on the organism:

# %%
detectors = {"previous token": previous_token_scores(patterns),
             "duplicate token": previous_token_scores(patterns, offset=SEQ_LEN),
             "induction": induction_scores(patterns, SEQ_LEN)}
head_names = [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
display(pd.DataFrame({name: {f"#{rank + 1}": f"{head_names[i]} {scores.flatten()[i]:.2f}"
                              for rank, i in enumerate(scores.flatten().argsort(descending=True)[:5].tolist())}
                       for name, scores in detectors.items()}).T.rename_axis(columns="strongest heads"))
heatmap(torch.stack([scores.flatten() for scores in detectors.values()]), x=head_names, y=list(detectors),
        title="Head detector scores on repeated random sequences", diverging=False, text_auto=".2f")

# %% [markdown]
# Two previous-token heads in layer 0, L0H2 and L0H4, and **five induction heads**, all in the last
# layer: L3H3, L3H4, L3H5, L3H6 and L3H7, each above 0.9. (Three of them are Section 4's IOI heads whose
# sign flips with the order of the names: a head can take part in more than one behaviour.) The rest of
# the chapter uses all five.

# %% [markdown]
# TransformerLens ships a detector too, `transformer_lens.head_detector.detect_head`. It takes the
# texts, builds the ideal pattern for a kind of head, and scores each head by the share of its
# attention that falls on the ideal pattern, averaged over **all** destination rows:

# %%
from transformer_lens.head_detector import detect_head

texts = [model.to_string(repeats[i, 1:]) for i in range(4)]
library_induction = detect_head(model, texts, "induction_head")  # [layer, head]
library_previous = detect_head(model, texts, "previous_token_head")
ours = detectors["induction"]
print("library's induction scores, layer 3:", " ".join(f"{v:.2f}" for v in library_induction[3].tolist()))
print("our induction scores, layer 3:      ", " ".join(f"{v:.2f}" for v in ours[3].tolist()))
print("same best heads:", set(library_induction.flatten().topk(5).indices.tolist()) == set(ours.flatten().topk(5).indices.tolist()))

# %% [markdown]
# The library's scores for the induction heads sit just under 0.5, ours near 1. Both are right about
# what they measure. On a sequence repeated twice, only the second half of the rows *can* show
# induction: in the first half the ideal pattern is empty, so those rows add nothing to the score but
# count in the average. The library's score is therefore capped near one half. Read detector scores
# against their ceiling (and against other heads), never on an absolute scale.
#
# ## 6. Reading heads from their weights
#
# A pattern is what a head did on some inputs; its weights say what it does on all of them. A head
# computes two things:
# - **where to look**, from its **QK circuit** $W_Q W_K^\top$ (`d_model x d_model`): the attention
#   score between a destination vector $x_d$ and a source vector $x_s$ is $x_d W_Q W_K^\top x_s^\top$;
# - **what to move**, from its **OV circuit** $W_V W_O$ (`d_model x d_model`): a source vector $x_s$
#   writes $x_s W_V W_O$ into the destination.
#
# Each is a product of two thin matrices (rank at most `d_head` = 32 here); TransformerLens keeps
# them as a `FactoredMatrix` (`model.QK[layer, head]`, `model.OV[layer, head]`), which multiplies and
# takes norms without forming the big matrix. A *path* through the network is a product of such
# matrices: embedding, then OV, then unembedding reads "which token, attended to, raises which logit".
#
# ### Where a previous-token head looks
# The previous-token heads are in layer 0, where the residual stream is only token plus position
# embedding. Their QK circuit on the **position** embeddings alone, $W_\text{pos} W_Q W_K^\top
# W_\text{pos}^\top$, should score "one back" highest. (On the bridge the position embedding is
# `model.pos_embed.W_pos`.)

# %% tags=["export"]
@torch.no_grad()
def positional_qk(model, layer: int, head: int, n_positions: int = 24) -> Float[Tensor, "dest src"]:
    """A head's attention scores between position embeddings, with the causal mask applied."""
    w_pos = model.pos_embed.W_pos[:n_positions]  # [pos, d_model]
    scores = (w_pos @ model.QK[layer, head] @ w_pos.T).AB  # [dest, src]
    causal = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool, device=scores.device))
    return scores.masked_fill(~causal, float("-inf"))


def looks_one_back(scores: Float[Tensor, "dest src"]) -> float:
    """The share of destinations (from position 1 on) whose highest score is the position just before."""
    best = scores[1:].argmax(-1)  # [dest - 1]
    return (best == torch.arange(scores.shape[0] - 1, device=scores.device)).float().mean().item()


# %%
previous_heads = [(0, int(h)) for h in detectors["previous token"][0].topk(2).indices]
for layer, head in previous_heads + [(0, 0)]:
    print(f"L{layer}H{head}: positional QK looks one back from {looks_one_back(positional_qk(model, layer, head, 128)):.0%} "
          f"of the positions (previous-token score {detectors['previous token'][layer, head]:.2f})")
layer, head = previous_heads[0]
heatmap(positional_qk(model, layer, head).softmax(-1), x=list(range(24)), y=list(range(24)),
        title=f"L{layer}H{head}: attention from position embeddings alone", x_label="source position",
        y_label="destination position", diverging=False)

# %% [markdown]
# ### What an induction head moves
# An induction head should *copy*: when it attends to a token, it should raise that token's logit. The
# path is: the source token's vector, through the head's OV circuit, through the unembedding. For the
# tokens of the world, stack their vectors as rows of `embedding` (`[n_tokens, d_model]`): then
# `embedding @ W_OV @ W_U[:, token_ids]` is an `[n_tokens, n_tokens]` matrix whose row $i$ says which
# logits token $i$ raises. A copying head has the largest entry of each row on the diagonal.
#
# ### Exercise 3.7: the OV copying score (difficulty 2/3, ~15 min)
# Write `copying_score(model, embedding, token_ids, heads)`. `embedding` holds one residual vector per
# token of `token_ids`, `[n_tokens, d_model]`; `heads` is a list of `(layer, head)` pairs whose OV
# circuits are *summed* (one pair for one head). Compute the `[n_tokens, n_tokens]` matrix
# `embedding @ (sum of the heads' OV) @ W_U[:, token_ids]` and return the share of rows whose largest
# entry is on the diagonal, as a Python float.
#
# <details><summary>Hint 1</summary>
#
# `model.OV[layer, head]` is a `FactoredMatrix`; `embedding @ model.OV[layer, head]` is one too, and
# `.AB` gives the full tensor. You can also multiply `model.W_V[layer, head] @ model.W_O[layer, head]`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `embedding` `[n_tokens, d_model]` times the summed OV `[d_model, d_model]` times
# `W_U[:, token_ids]` `[d_model, n_tokens]` gives `[n_tokens, n_tokens]`. Sum the heads' OV matrices
# first (a sum of products with the same factors on each side), and put `token_ids` on the model's
# device before indexing `W_U`.
# </details>
# <details><summary>Hint 3</summary>
#
# Row `i` is "token `i` attended to"; its largest entry is `circuit[i].argmax()`. Compare
# `circuit.argmax(dim=-1)` with `torch.arange(n_tokens)` and take the mean of the matches as a
# float.
# </details>

# %% tags=["export"]
@torch.no_grad()
def copying_score(model, embedding: Float[Tensor, "n_tokens d_model"], token_ids: Int[Tensor, "n_tokens"],
                  heads: list[tuple[int, int]]) -> float:
    """Share of tokens whose own logit is the one the summed OV circuit raises most when they are attended to."""
    ### BEGIN SOLUTION
    w_ov = sum(model.W_V[layer, head] @ model.W_O[layer, head] for layer, head in heads)  # [d_model, d_model]
    circuit = embedding @ w_ov @ model.W_U[:, token_ids.to(model.cfg.device)]  # [n_tokens, n_tokens]
    best = circuit.argmax(dim=-1)
    return (best == torch.arange(len(token_ids), device=best.device)).float().mean().item()
    ### END SOLUTION


# %%
copying_score = check_exercise("3.7", copying_score)

# %% [markdown]
# Which vectors should stand for the tokens? The obvious choice is the embedding matrix, `W_E`. But an
# induction head in layer 3 never reads raw embeddings: it reads the residual stream after three
# blocks. A common better choice is the **effective embedding**: the residual stream of the token
# after block 0, which adds what MLP0 writes about the token. We compare both, and a random head of
# the same shape as a **baseline**: any matrix gets some diagonal maxima by chance (here about
# 1 in `n_tokens`).

# %% tags=["export"]
@torch.no_grad()
def effective_embedding(model, token_ids: Int[Tensor, "n_tokens"]) -> Float[Tensor, "n_tokens d_model"]:
    """Each token's residual stream after block 0, when it follows the end-of-text token."""
    start = torch.full_like(token_ids, model.tokenizer.bos_token_id)
    tokens = torch.stack([start, token_ids], dim=1).to(model.cfg.device)  # [n_tokens, 2]
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    return cache["blocks.0.hook_resid_post"][:, 1]


@torch.no_grad()
def random_head_copying_score(model, embedding: Float[Tensor, "n_tokens d_model"], token_ids: Int[Tensor, "n_tokens"],
                              seed: int = 0) -> float:
    """The copying score of a random rank-d_head OV circuit: what chance alone gives."""
    generator = torch.Generator().manual_seed(seed)
    d_model, d_head = model.cfg.d_model, model.cfg.d_head
    w_ov = torch.randn(d_model, d_head, generator=generator) @ torch.randn(d_head, d_model, generator=generator)
    w_u = model.W_U[:, token_ids.to(model.cfg.device)].to(embedding.dtype)  # [d_model, n_tokens]
    circuit = embedding @ w_ov.to(embedding.device, embedding.dtype) @ w_u  # [n_tokens, n_tokens]
    return (circuit.argmax(-1) == torch.arange(len(token_ids), device=circuit.device)).float().mean().item()


# %%
world_ids = torch.tensor([model.to_single_token(" " + word) for word in world.INDUCTION_POOL])
raw, effective = model.W_E[world_ids.to(model.cfg.device)], effective_embedding(model, world_ids)
induction_heads = [(3, int(h)) for h in range(model.cfg.n_heads) if detectors["induction"][3, h] > 0.5]
print(f"{len(world_ids)} world tokens; induction heads: {', '.join(f'L{l}H{h}' for l, h in induction_heads)}")
for layer, head in induction_heads:
    print(f"L{layer}H{head}: copying score with W_E {copying_score(model, raw, world_ids, [(layer, head)]):.2f}, "
          f"with the effective embedding {copying_score(model, effective, world_ids, [(layer, head)]):.2f}")
print(f"all induction heads summed: W_E {copying_score(model, raw, world_ids, induction_heads):.2f}, "
      f"effective {copying_score(model, effective, world_ids, induction_heads):.2f}")
print(f"random heads (baseline), effective embedding: "
      + " ".join(f"{random_head_copying_score(model, effective, world_ids, seed):.3f}" for seed in range(3)))

# %% [markdown]
# Read through the raw embeddings, the induction heads do not copy at all; the diagonal is near the
# *bottom* of each row. Read through the effective embedding, each head alone copies a large share of
# the tokens (from about half to over 80%), far above the random baseline, and together they copy
# every one: the heads share the work. The lesson is not about this
# model only. A path read through the wrong input vectors can say the opposite of what the head
# does; MLP0 changes how tokens are written before any later head reads them. And "0.6" means
# something only beside the random baseline.
#
# ### K-composition: how the induction heads find their target
# An induction head at a token of the second copy must find the position *after* the earlier copy of
# that token. It cannot tell from the source token alone; it needs to know, at each source position,
# *what came before it*. That is what the previous-token heads write. If the induction heads use it,
# their **keys** read the previous-token heads' output: **K-composition**. In matrices: a source
# vector $x$ first passes the earlier head's OV ($x W_{OV}^{(1)}$) and is then read by the later
# head's keys, so the later head's scores contain $W_{QK}^{(2)} \,(W_{OV}^{(1)})^\top$. The
# **composition score** (Elhage et al., 2021) measures how much of that product survives:
#
# $$\frac{\| W_{QK}^{(2)} (W_{OV}^{(1)})^\top \|_F}{\| W_{QK}^{(2)} \|_F \; \| W_{OV}^{(1)} \|_F}.$$
#
# ### Exercise 3.8: K-composition scores (difficulty 2/3, ~15 min)
# Write `k_composition_scores(model, source_layer, target_layer)`: for every head `i` of
# `source_layer` and head `j` of `target_layer`, the composition score above with
# $W_{OV}^{(1)}$ = `model.OV[source_layer, i]` and $W_{QK}^{(2)}$ = `model.QK[target_layer, j]`.
# Return `[source_head, target_head]`.
#
# <details><summary>Hint 1</summary>
#
# The keys read the source head's *output*: the OV circuit goes in transposed, on the right of the
# QK circuit. With it on the left you measure Q-composition; with two OV circuits, V-composition.
# </details>
# <details><summary>Hint 2</summary>
#
# The full matrices are small here (256 x 256): `model.W_Q[layer, head] @ model.W_K[layer, head].T`
# and `model.W_V[layer, head] @ model.W_O[layer, head]`; a tensor's `.norm()` is its Frobenius norm.
# (`model.QK` and `model.OV` give the same as `FactoredMatrix` objects, with `.T` and `.norm()`.)
# </details>
# <details><summary>Hint 3</summary>
#
# Two loops, over the source heads `i` and the target heads `j`, filling a `[n_heads, n_heads]`
# tensor: `scores[i, j] = (qk @ ov.T).norm() / (qk.norm() * ov.norm())`.
# </details>

# %% tags=["export"]
@torch.no_grad()
def k_composition_scores(model, source_layer: int, target_layer: int) -> Float[Tensor, "source_head target_head"]:
    """How much each target head's keys read each source head's output, from the weights alone."""
    ### BEGIN SOLUTION
    scores = torch.zeros(model.cfg.n_heads, model.cfg.n_heads)
    for i in range(model.cfg.n_heads):
        ov = model.W_V[source_layer, i] @ model.W_O[source_layer, i]  # [d_model, d_model]
        for j in range(model.cfg.n_heads):
            qk = model.W_Q[target_layer, j] @ model.W_K[target_layer, j].T  # [d_model, d_model]
            scores[i, j] = (qk @ ov.T).norm() / (qk.norm() * ov.norm())  # Frobenius norms
    return scores
    ### END SOLUTION


# %%
k_composition_scores = check_exercise("3.8", k_composition_scores)

# %% [markdown]
# The baseline: the composition score of random matrices of the same shapes and rank. It is not
# zero, because two random rank-32 maps in 256 dimensions overlap by chance.

# %% tags=["export"]
def random_composition_baseline(model, n_samples: int = 50, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the composition score of random rank-d_head matrices."""
    generator = torch.Generator().manual_seed(seed)
    d_model, d_head = model.cfg.d_model, model.cfg.d_head

    def random_matrix() -> Float[Tensor, "d_model d_model"]:
        return torch.randn(d_model, d_head, generator=generator) @ torch.randn(d_head, d_model, generator=generator)

    scores = []
    for _ in range(n_samples):
        qk, ov = random_matrix(), random_matrix()
        scores.append(((qk @ ov.T).norm() / (qk.norm() * ov.norm())).item())
    scores = torch.tensor(scores)
    return scores.mean().item(), scores.std().item()


# %%
k_scores = k_composition_scores(model, 0, 3)  # [layer-0 head, layer-3 head]
baseline_mean, baseline_std = random_composition_baseline(model)
print(f"random baseline: {baseline_mean:.3f} +- {baseline_std:.3f}")
for layer, head in previous_heads:
    print(f"L{layer}H{head} (previous-token head) into the induction heads: "
          + " ".join(f"L3H{h} {k_scores[head, h]:.2f}" for _, h in induction_heads))
others = [h for h in range(model.cfg.n_heads) if (0, h) not in previous_heads]
print(f"other layer-0 heads into the induction heads: mean {k_scores[others][:, [h for _, h in induction_heads]].mean():.2f}")
heatmap(k_scores, x=[f"L3H{h}" for h in range(model.cfg.n_heads)], y=[f"L0H{h}" for h in range(model.cfg.n_heads)],
        title=f"K-composition, layer 0 into layer 3 (random baseline {baseline_mean:.2f})", diverging=False, text_auto=".2f",
        x_label="layer-3 head (reads through its keys)", y_label="layer-0 head (writes)")

# %% [markdown]
# The two previous-token heads compose with every induction head three to four times as strongly as
# random matrices, and more than any other layer-0 head does. That is the induction circuit
# read from the weights: a previous-token head writes "the token before me was X" at each position;
# the induction head's query at the current token X matches keys that carry "the token before me was
# X", and its OV circuit copies the token found there. (Loose descriptions say the induction head
# "looks at the previous occurrence": it looks at the token *after* it, and it finds it through the
# previous-token head.) Weights alone show that the circuit *can* run this way; Chapter 06 shows that
# it does, by patching.
#
# ## 7. When attribution misleads
#
# Section 4 found one IOI head with a large direct share, L3H1, and an even larger share for the MLP
# after it. Direct attribution predicts that removing L3H1 costs the logit difference its direct
# share and no more. Test that. We **resample-ablate** the head: replace its output at every position
# with its output on a *corrupted* version of the same prompt, where the repeated name (the second
# mention of the subject) is a third name (the ABC corruption of Wang et al., 2022). That removes what
# the head does with the names while keeping its output a realistic one. (Chan et al., 2022, and
# Heimersheim & Nanda, 2024, draw a resample from *other* inputs of the distribution; a paired twin is
# the special case we use here.)

# %% tags=["export"]
import random


def abc_prompts(prompts: PromptSet, seed: int = 0) -> PromptSet:
    """The same IOI prompts with the repeated subject replaced by a third name (same length in tokens)."""
    rng = random.Random(seed)
    corrupted = []
    for prompt, io, s in zip(prompts.prompts, prompts.labels["io"], prompts.labels["s"]):
        third = rng.choice([name for name in world.NAMES if name not in (io, s)])
        cut = prompt.rfind(s)
        corrupted.append(prompt[:cut] + third + prompt[cut + len(s):])
    return PromptSet(prompts.family, prompts.split, corrupted, prompts.correct, prompts.wrong, dict(prompts.labels))


# %% [markdown]
# ### Exercise 3.9: resample-ablate a head (difficulty 3/3, ~20 min)
# Write `ablated_logit_diffs(model, prompts, corrupted, layer, head)`. `corrupted` has the same
# number of prompts, each with the same number of tokens as its clean twin. Cache
# `blocks.{layer}.attn.hook_z` (`[batch, pos, head, d_head]`) on the corrupted prompts; then run the
# clean prompts with a hook on that name that replaces **only head `head`**, at every position, by its
# corrupted value. Return the clean prompts' logit differences under that hook, `[batch]`, with
# Chapter 02's `logit_diffs(model, prompts, fwd_hooks)`.
#
# <details><summary>Hint 1</summary>
#
# Two runs. First a cached run on the corrupted prompts, keeping only `blocks.{layer}.attn.hook_z`;
# then the clean prompts through `logit_diffs`, with one hook that uses that cache.
# </details>
# <details><summary>Hint 2</summary>
#
# A hook `hook_fn(z, hook)` can change `z` in place, `z[:, :, head] = corrupted_z[:, :, head]`, and
# return it. `z` is `[batch, pos, head, d_head]`, so `[:, :, head]` is one head at every position.
# </details>
# <details><summary>Hint 3</summary>
#
# Tokenize the corrupted prompts with `tokenize` and cache them with `model.run_with_cache(tokens,
# names_filter=name)`. `logit_diffs` tokenizes the clean prompts the same way, so the corrupted cache's
# positions line up with the clean run's.
# </details>

# %% tags=["export"]
from utils.references.ch02_probing import logit_diffs


@torch.no_grad()
def ablated_logit_diffs(model, prompts: PromptSet, corrupted: PromptSet, layer: int, head: int) -> Float[Tensor, "batch"]:
    """Logit differences with one head's output replaced by its output on the corrupted prompts."""
    ### BEGIN SOLUTION
    name = f"blocks.{layer}.attn.hook_z"
    tokens, _ = tokenize(model, corrupted.prompts)
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=name)
    corrupted_z = cache[name]  # [batch, pos, head, d_head]

    def replace_head(z: Float[Tensor, "batch pos head d_head"], hook) -> Float[Tensor, "batch pos head d_head"]:
        z[:, :, head] = corrupted_z[:, :, head]
        return z

    return logit_diffs(model, prompts, fwd_hooks=[(name, replace_head)])
    ### END SOLUTION


# %%
ablated_logit_diffs = check_exercise("3.9", ablated_logit_diffs)

# %% tags=["export"]
@torch.no_grad()
def dla_versus_ablation(model, prompts: PromptSet, heads: list[tuple[int, int]], seed: int = 0) -> dict[str, Tensor]:
    """For each head: its mean direct share of the logit difference and the mean drop when it is resample-ablated."""
    corrupted = abc_prompts(prompts, seed=seed)
    clean = logit_diffs(model, prompts)
    shares = head_attribution(model, prompts).mean(-1)  # [layer, head]
    direct, drop = [], []
    for layer, head in heads:
        direct.append(shares[layer, head])
        drop.append((clean - ablated_logit_diffs(model, prompts, corrupted, layer, head)).mean())
    return {"clean": clean.mean().cpu(), "direct": torch.stack(direct).cpu(), "ablation drop": torch.stack(drop).cpu()}


# %%
checked_heads = [(3, 1), (3, 5), (2, 0), (3, 4)]
comparison = dla_versus_ablation(model, ioi, checked_heads)
mlp3 = by_component["ioi"][component_labels.index("3_mlp_out")]
print(f"clean IOI logit difference {comparison['clean']:.2f}; MLP3's direct share {mlp3:.2f}")
display(pd.DataFrame({f"L{layer}H{head}": {"direct share": float(direct), "drop when ablated": float(drop)}
                      for (layer, head), direct, drop in zip(checked_heads, comparison["direct"], comparison["ablation drop"])}
                     ).T.round(2))
l3h5_change = logit_diffs(model, ioi) - ablated_logit_diffs(model, ioi, abc_prompts(ioi), 3, 5)  # [batch]
print(f"L3H5, prompt by prompt: mean |direct share| {ioi_heads[3, 5].abs().mean():.2f}, "
      f"mean |change when ablated| {l3h5_change.abs().mean():.2f}")
import plotly.graph_objects as go

head_names = [f"L{l}H{h}" for l, h in checked_heads]
figure = go.Figure([go.Bar(x=head_names, y=comparison["direct"].tolist(), name="direct share (DLA)"),
                    go.Bar(x=head_names, y=comparison["ablation drop"].tolist(), name="drop when resample-ablated")])
figure.add_hline(y=float(mlp3), line_dash="dash", annotation_text="MLP3's direct share")
figure.update_layout(barmode="group", title="IOI: direct logit attribution vs the effect of ablating the head",
                     xaxis_title="head", yaxis_title="logit difference", height=400)
figure

# %% [markdown]
# The attribution and the intervention disagree. Ablating L3H1 costs more than twice its direct
# share: about as much as MLP3's whole direct share. Direct attribution is exact about
# the direct path and silent about every other: the most natural reading is that MLP3 *reads* L3H1's
# output and writes the answer itself, so L3H1's real effect goes mostly through MLP3, where DLA
# credits MLP3 for it. (In GPT-2 small the famous case runs the other way: ablating the top name-mover
# head costs *less* than its direct share, because backup heads take over.)
#
# L3H5 disagrees the other way, for a plainer reason: on each prompt it writes a lot (about 4, for or
# against the answer depending on the order of the names), but a resample ablation removes only what
# *differs* between the clean and the corrupted prompt, and L3H5's output hardly depends on which name
# is repeated: ablating it changes each prompt's logit difference by almost nothing. An ablation answers the question its corruption
# asks, no more.
#
# That reading is a hypothesis, not yet a mechanism. It is plausible; whether it is *faithful* takes
# an experiment that separates the path L3H1 → MLP3 → logits from L3H1 → logits. **Chapter 06 does it
# with path patching.** Before you get there: what result would refute the hypothesis?
#
# ## 8. On a real model
# The same functions work on GPT-2 small when the Hugging Face Hub is reachable: the logit lens and
# head attribution on our IOI prompts (GPT-2 never saw our world, but it does IOI), and the induction
# detector on repeated random tokens. The known answers from the literature: name movers 9.9, 9.6
# and 10.0 write the answer, 10.7 and 11.10 write against it; induction heads include 5.1, 5.5, 6.9,
# 7.2 and 7.10. Offline, this cell says so and moves on.

# %%
if env.hub_online:
    gpt2 = load_model("gpt2-small")
    gpt2_ioi = prompt_set("ioi", "test", n=96, seed=0)
    one_token = lambda word: len(gpt2.tokenizer(word, add_special_tokens=False)["input_ids"]) == 1  # noqa: E731
    gpt2_ioi = gpt2_ioi.subset([i for i, (c, w) in enumerate(zip(gpt2_ioi.correct, gpt2_ioi.wrong))
                                if one_token(c) and one_token(w)])  # names GPT-2 spells with one token
    gpt2_heads = head_attribution(gpt2, gpt2_ioi).mean(-1)  # [layer, head]
    order = gpt2_heads.flatten().argsort(descending=True)
    name = lambda i: f"{i // gpt2.cfg.n_heads}.{i % gpt2.cfg.n_heads}"  # noqa: E731
    print("GPT-2 IOI, top heads: " + " ".join(f"{name(i)} {gpt2_heads.flatten()[i]:.2f}" for i in order[:4].tolist()))
    print("GPT-2 IOI, most negative: " + " ".join(f"{name(i)} {gpt2_heads.flatten()[i]:.2f}" for i in order[-3:].tolist()))
    gpt2_lens = logit_lens(gpt2, *[t.to(gpt2.cfg.device) for t in tokenize(gpt2, gpt2_ioi.prompts)])
    gpt2_top1 = (answer_rank(gpt2_lens, answer_ids(gpt2, gpt2_ioi.correct)) == 0).float().mean(-1)  # [point]
    print("GPT-2 IOI, logit-lens top-1 by point: " + " ".join(f"{v:.2f}" for v in gpt2_top1.tolist()))
    gpt2_repeats = repeated_tokens(gpt2, 50, batch=8, seed=0, vocabulary=list(range(1000, 20000)))
    gpt2_induction = induction_scores(all_patterns(gpt2, gpt2_repeats), 50).flatten()
    print("GPT-2 induction heads: " + " ".join(f"{name(i)} {gpt2_induction[i]:.2f}" for i in gpt2_induction.topk(6).indices.tolist()))
else:
    print("offline: skipped GPT-2 small (run this cell with a network connection to compare)")

# %% [markdown]
# ## What the logit lens and attribution can't tell you
# - **A lens is a view from the end.** The logit lens reads each point in the unembedding's terms;
#   a point can hold the answer in a form the unembedding does not read (the tuned lens helps, but it
#   is a trained probe, with a probe's power to add what the model has not computed).
# - **Direct attribution is only direct.** It is exact for the direct path and blind to everything a
#   component does through later components (Section 7). A small share does not mean unimportant; a
#   large one does not mean necessary (backup heads) or sufficient.
# - **Attribution is not causation.** Attributions and patterns are observations. Which component
#   *causes* the behaviour takes an intervention: ablation, patching (Chapter 06).
# - **Patterns show where a head looks, not what it moves.** A previous-token pattern says nothing of
#   the information carried; the OV circuit does, and only with the right input vectors and a random
#   baseline.
# - **Weights show what can happen, not what does.** A composition score says two heads *can* talk;
#   whether they do on real inputs is again an experiment.
# - **A plausible story is not a faithful one.** Every finding here is a hypothesis to test against
#   the model's behaviour, which is what Chapter 06 does.
# - **A frozen-scale attribution is not the effect of removing a component.** Removing it changes the
#   final LayerNorm's scale too; the shares add up only with the scale held fixed.
# - **Detector scores depend on the probe inputs.** The induction and previous-token scores here are
#   measured on repeated *random* words, not on natural text.
#
# ### References
# - nostalgebraist (2020). *interpreting GPT: the logit lens.*
# - Belrose et al. (2023). *Eliciting Latent Predictions from Transformers with the Tuned Lens.*
# - Elhage et al. (2021). *A Mathematical Framework for Transformer Circuits.* Direct logit
#   attribution, QK and OV circuits, composition scores, induction heads.
# - Olsson et al. (2022). *In-context Learning and Induction Heads.*
# - Wang et al. (2022). *Interpretability in the Wild: a Circuit for Indirect Object Identification in
#   GPT-2 small.* The IOI task, the ABC corruption, GPT-2's name movers and negative heads.
# - Chan et al. (2022). *Causal scrubbing.* Heimersheim & Nanda (2024). *How to use and interpret
#   activation patching.* Resample ablation.
#
# **Your record so far:**

# %%
show_progress("03_logit_lens")
