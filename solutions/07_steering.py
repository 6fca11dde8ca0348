# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 07: Steering, erasure and editing
#
# **Time:** about 3 hours. **Exercises:** 8, each checked as soon as you run the cell after it.
# *Run All* takes under two and a half minutes on a 2-core laptop CPU (longer when the machine is busy);
# every cell that takes more than a few seconds shows a progress bar.
#
# **You will learn to**
# - build steering vectors five ways (one contrast pair, a mean difference over many pairs, a
#   probe's direction, an SAE latent's decoder direction, a reading vector) and add them to the residual stream
#   with a coefficient stated relative to the residual norm, never in absolute units;
# - judge an intervention the way it should be judged: the share of the target behaviour it
#   moved *and* the held-out accuracy of every other behaviour family, as a dose-response table,
#   and read off the largest coefficient whose side effects stay within a tolerance;
# - find where steering works with a layer sweep, steer single attention heads as inference-time
#   intervention does and compare it with a residual vector at matched side effects, and watch the
#   organism continue world text with and without a vector;
# - remove a direction at every layer with hooks (directional ablation), bake the same edit into
#   the weights (weight orthogonalisation), and show that both give the same outputs;
# - erase a concept linearly (LEACE, a mean-difference projection, a random baseline), confirm
#   that a fresh probe is back at the base rate, and then ask the causal question; erase the
#   names' gender as a bias mitigation and measure what it keeps and what it costs;
# - change one fact with a rank-one edit of one MLP matrix, and grade it on efficacy,
#   generalisation to phrasings it never saw and specificity everywhere else;
# - attack the latents: find how small a residual perturbation flips a verdict, and take one step of
#   latent adversarial training against it, with a control;
# - say what steering can't tell you.
#
# **Seed concepts:** interventional methods; activation steering (Templeton et al. 2024's feature
# examples, Golden Gate Claude); inference-time intervention; representation engineering (concept-based, top-down); the linear
# representation hypothesis as vector arithmetic; erasing knowledge without hurting capabilities;
# model editing (precise edits to correct factual errors instead of retraining); bias mitigation;
# relaxed adversarial training (attacks on latents rather than inputs); retargeting the search.
#
# Chapter 02 found directions from which a label can be *read*; Chapter 03 found where the answers
# are written; Chapter 05 found SAE latents for them. This chapter *writes*: it pushes the
# residual stream along those directions, removes them, and edits weights, and every time it
# measures two things: how much of the target moved, and what else broke. The organism's world
# makes both exact: four other behaviour families to watch while one is steered, and held-out
# phrasings to test whether an edit generalises.

# %%
import pandas as pd
import torch
from IPython.display import display

from utils import check_exercise, load_model, progress_bar, prompt_set, setup, show_progress

env = setup()
model = load_model()
torch.set_grad_enabled(False)  # interventions only read gradients in sections 6 and 7, which turn them on

# %% [markdown]
# ## 1. Steering vectors five ways
#
# A **steering vector** is a direction $v$ in the residual stream; steering adds a multiple of it
# at one hook point while the model runs, $x \leftarrow x + \alpha\, v$. Two choices decide whether
# results mean anything.
#
# - **Units.** The residual stream's size grows through the layers: in the organism its norm is
#   about 140 after block 0 and several hundred after block 3. A coefficient of 50 is a nudge at one
#   layer and nothing at another. So here $\alpha$ is **relative**: at each position we add
#   $\alpha\, \lVert x \rVert\, \hat v$, with $\hat v = v / \lVert v \rVert$ the unit direction and
#   $\lVert x \rVert$ that position's own residual norm. $\alpha = 0.5$ means "half as long as the
#   residual vector it is added to", at any layer, in any model, and every vector compared at the
#   same $\alpha$ is compared at matched norm.
# - **Positions.** Position 0 holds the end-of-text token that starts every prompt. Its residual
#   stream is unusual (huge after the last block) and carries no content, and a few heads park
#   their attention there: averaged over every later position of held-out prompts of all five
#   families, head L1H7 gives position 0 about nine tenths of its attention, L1H4 and L3H6 about
#   half, and the median head under a fifth (a test measures these). Steering it changes every later
#   position through those heads for no reason, so we steer **every position after it** (position 1 onward).
#
# ### Exercise 7.1: a steering hook (difficulty 1/3, ~10 min)
# Write `steering_hook(direction, alpha)`. It returns a hook function `hook_fn(resid, hook)` that
# takes the residual stream `[batch, pos, d_model]` and returns a new one in which every position
# from 1 on has `alpha * norm * unit` added, where `unit` is `direction` divided by its norm and
# `norm` is that position's own residual norm (`resid[b, p].norm()`, before anything is added).
# Position 0 is returned unchanged. Do not change `resid` in place.
#
# <details><summary>Hint 1</summary>
#
# Three pieces: the unit direction (computed once, outside the hook), each position's own norm
# (computed inside the hook, from the `resid` it is given), and a new tensor built from the old one.
# </details>
# <details><summary>Hint 2</summary>
#
# `resid[:, 1:].norm(dim=-1, keepdim=True)` is `[batch, pos - 1, 1]` and broadcasts against the
# `[d_model]` unit vector.
# </details>
# <details><summary>Hint 3</summary>
#
# `torch.cat([resid[:, :1], resid[:, 1:] + added], dim=1)` leaves position 0 alone and builds a
# new tensor.
# </details>

# %% tags=["export"]
import contextlib
from collections.abc import Callable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils import progress_bar
from utils.memo import memoized
from utils.models import frozen_weights
from utils.organism import world
from utils.organism.world import PromptSet, prompt_set
from utils.references.ch02_probing import answer_ids, logit_diffs, tokenize, train_probe

Hook = Callable[[Tensor, object], Tensor]


def steering_hook(direction: Float[Tensor, "d_model"], alpha: float) -> Hook:
    """A hook adding alpha * (each position's residual norm) * unit direction at every position after BOS."""
    ### BEGIN SOLUTION
    unit = direction / direction.norm()

    def hook_fn(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        after_bos = resid[:, 1:]  # [batch, pos - 1, d_model]
        added = alpha * after_bos.norm(dim=-1, keepdim=True) * unit.to(resid.device, resid.dtype)
        return torch.cat([resid[:, :1], after_bos + added], dim=1)

    return hook_fn
    ### END SOLUTION


# %%
steering_hook = check_exercise("7.1", steering_hook)

# %% [markdown]
# With a hook in hand, steering is a context manager around anything that runs the model: every
# forward pass inside the `with` block is steered, and the hook is gone afterwards, even after an
# error. Later chapters reuse these helpers on other models and behaviours.

# %% tags=["export"]
@contextlib.contextmanager
def steering(model, hook_name: str, direction: Float[Tensor, "d_model"], alpha: float) -> Iterator[None]:
    """Steer every forward pass inside the block: alpha * residual norm * unit direction at `hook_name`,
    at every position after BOS. Works on any HookedTransformer or TransformerBridge."""
    with model.hooks(fwd_hooks=[(hook_name, steering_hook(direction.to(model.cfg.device), alpha))]):
        yield


@torch.no_grad()
def last_token_activations(model, prompts: list[str], hook_name: str, batch_size: int = 256
                           ) -> Float[Tensor, "batch d_model"]:
    """The activation at `hook_name` at each prompt's own last token (right-padded batches)."""
    layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else model.cfg.n_layers - 1
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens, last = tokenize(model, prompts[start:start + batch_size])
        _, cache = model.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=layer + 1)
        rows = torch.arange(len(last), device=tokens.device)
        chunks.append(cache[hook_name][rows, last])  # [batch, d_model]
    return torch.cat(chunks)


# %% [markdown]
# ### Four vectors for one target, and a fifth
# The first target is sentiment: a review such as "The movie was dull. I" continues with " hated"
# or " loved". Four ways to get a "positive minus negative" direction at `blocks.1.hook_resid_post`
# (after block 1, where Chapter 03 found sentiment already decided):
#
# 1. **A single contrast pair** (ActAdd, Turner et al. 2023): the activation of one positive prompt
#    minus that of one negative prompt. Cheap, and noisy: everything else that differs between the
#    two prompts comes along.
# 2. **A difference of class means**: the mean activation over positive prompts minus the mean
#    over negative ones, unpaired (the "mass-mean" direction of Marks and Tegmark 2023, and the
#    one Arditi et al. 2024 use). The differences that are not about sentiment average out.
#    Contrastive activation addition (CAA, Rimsky et al. 2024) is the *paired* version: it averages
#    the differences of matched prompts that are identical except for the behaviour (the same
#    question ending in answer A or answer B), so everything but the behaviour cancels in every
#    pair, not only on average. The organism's reviews are not matched pairs, so ours is the
#    unpaired kind.
# 3. **A probe's direction**: Chapter 02's logistic-regression probe, trained to *read* sentiment.
# 4. **An SAE latent**: the decoder direction of the shipped SAE's latent that best detects
#    sentiment (Chapter 05).
#
# ### Exercise 7.2: the mean-difference vector (difficulty 2/3, ~15 min)
# Write `mean_difference_vector(model, prompts, hook_name, label)`. `prompts` is a `PromptSet`
# whose `prompts.labels[label]` is 0 or 1 for each prompt. Take the activation at `hook_name` at
# **each prompt's own last token**, and return the mean over the prompts labelled 1 minus the mean
# over those labelled 0, `[d_model]`, not normalised (its length is a measurement too).
#
# <details><summary>Hint 1</summary>
#
# Two steps: one activation per prompt, at its last real token; then one mean per label.
# </details>
# <details><summary>Hint 2</summary>
#
# `last_token_activations(model, prompts.prompts, hook_name)` gives `[batch, d_model]` at each
# prompt's last token; the batches are right-padded, so `[:, -1]` would read padding.
# </details>
# <details><summary>Hint 3</summary>
#
# `labels = torch.tensor(prompts.labels[label])`, then `x[labels == 1].mean(0) - x[labels == 0].mean(0)`.
# </details>

# %% tags=["export"]
@torch.no_grad()
def mean_difference_vector(model, prompts: PromptSet, hook_name: str, label: str) -> Float[Tensor, "d_model"]:
    """Mean last-token activation of the prompts labelled 1 minus that of the prompts labelled 0."""
    ### BEGIN SOLUTION
    x = last_token_activations(model, prompts.prompts, hook_name)  # [batch, d_model]
    labels = torch.tensor(prompts.labels[label], device=x.device)
    return x[labels == 1].mean(0) - x[labels == 0].mean(0)
    ### END SOLUTION


# %%
mean_difference_vector = check_exercise("7.2", mean_difference_vector)

# %% tags=["export"]
def contrast_pair_vector(model, positive: str, negative: str, hook_name: str) -> Float[Tensor, "d_model"]:
    """ActAdd's vector from one contrast pair: the last-token activation of `positive` minus `negative`."""
    pair = last_token_activations(model, [positive, negative], hook_name)  # [2, d_model]
    return pair[0] - pair[1]


def sentiment_subsets(prompts: PromptSet) -> tuple[PromptSet, PromptSet]:
    """The negative and the positive reviews of a sentiment prompt set."""
    labels = prompts.labels["sentiment"]
    return (prompts.subset([i for i, s in enumerate(labels) if s == 0]),
            prompts.subset([i for i, s in enumerate(labels) if s == 1]))


def truth_subsets(prompts: PromptSet) -> tuple[PromptSet, PromptSet]:
    """The false and the true statements of a truth prompt set."""
    labels = prompts.labels["truth"]
    return (prompts.subset([i for i, t in enumerate(labels) if t == 0]),
            prompts.subset([i for i, t in enumerate(labels) if t == 1]))


# %% tags=["export"]
from utils.organism.sae import load_organism_sae
from utils.references.ch05_saes import column_aurocs


def reading_vector(x: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"], seed: int = 0
                   ) -> Float[Tensor, "d_model"]:
    """RepE's reading vector: the first principal component of paired differences (a label-1 activation minus a
    label-0 one, pairs drawn at random, each in a random order), pointing towards label 1. Unit length."""
    generator = torch.Generator().manual_seed(seed)
    ones, zeros = x[labels == 1], x[labels == 0]
    n = min(len(ones), len(zeros))
    ones = ones[torch.randperm(len(ones), generator=generator)[:n]]  # [pair, d_model]
    zeros = zeros[torch.randperm(len(zeros), generator=generator)[:n]]
    order = torch.randint(0, 2, (n, 1), generator=generator) * 2 - 1  # [pair, 1]: +1 or -1
    differences = order * (ones - zeros)  # [pair, d_model]
    _, _, components = torch.linalg.svd(differences - differences.mean(0), full_matrices=False)
    first = components[0]  # [d_model]
    return first if first @ (ones.mean(0) - zeros.mean(0)) > 0 else -first


def sentiment_steering_vectors(model, hook_name: str, train: PromptSet, sae=None) -> tuple[dict[str, Tensor], dict]:
    """The five "positive minus negative" vectors at `hook_name`: one contrast pair, the difference of class means
    over `train`, the direction of a probe trained on `train`, RepE's reading vector, and the decoder row of the
    SAE latent that best detects sentiment (the shipped organism SAE by default). Also returns the latent's index
    and AUROC."""
    labels = torch.tensor(train.labels["sentiment"])
    x = last_token_activations(model, train.prompts, hook_name).cpu()  # [batch, d_model]
    with torch.enable_grad():
        probe = train_probe(x, labels)
    sae = sae if sae is not None else load_organism_sae(device=model.cfg.device)
    with torch.no_grad():
        aurocs = column_aurocs(sae.encode(x.to(model.cfg.device)).cpu(), labels.bool())  # [d_sae]
    latent = int((aurocs - 0.5).abs().argmax())
    sign = 1.0 if aurocs[latent] > 0.5 else -1.0  # a latent that fires on negative reviews points the other way
    vectors = {
        "contrast pair": contrast_pair_vector(model, "The movie was great. I", "The movie was awful. I", hook_name).cpu(),
        "mean difference": mean_difference_vector(model, train, hook_name, "sentiment").cpu(),
        "probe": probe.direction.cpu(),
        "reading vector": reading_vector(x, labels),
        "SAE latent": sign * sae.W_dec[latent].detach().cpu(),
    }
    return vectors, {"latent": latent, "auroc": aurocs[latent].item(), "residual norm": x.norm(dim=-1).mean().item()}


# %%
HOOK = "blocks.1.hook_resid_post"
sentiment_train = prompt_set("sentiment", "train", n=600, seed=0)
vectors, sae_latent = sentiment_steering_vectors(model, HOOK, sentiment_train)
units = torch.stack([v / v.norm() for v in vectors.values()])  # [5, d_model]
print(f"SAE latent {sae_latent['latent']}: AUROC for positive reviews {sae_latent['auroc']:.3f}")
print("norms:", {name: round(v.norm().item(), 1) for name, v in vectors.items()})
print(f"residual norm at the last token: {sae_latent['residual norm']:.1f}")

# %%
from utils.plotting import heatmap

cosines = units @ units.T  # [5, 5]
print("cosine with the mean difference:\n  ", {name: round(c, 2) for name, c in zip(vectors, cosines[1].tolist())})
heatmap(cosines, x=list(vectors), y=list(vectors), title="Cosine similarity of the five sentiment vectors",
        diverging=True, text_auto=".2f")

# %% [markdown]
# The mean difference is about as long as the residual stream itself: at the last token of a
# review, sentiment is a large share of what is there. The contrast pair points almost the same way
# (one pair carries most of the signal in a world this clean). The probe and the SAE latent point
# elsewhere in part: a probe is trained to *separate* the classes, and the direction that separates
# best is tilted away from the means by whatever varies within each class; an SAE latent is
# trained to *reconstruct* activations sparsely, and its decoder row is the direction that serves
# reconstruction, not the one the model's later layers read. Whether those differences matter for
# steering is an experiment.
#
# ## 2. Dose-response, with every side effect
#
# A steering result without side effects is half a result. For each vector and coefficient we
# measure the **flip rate** (the share of held-out negative reviews for which the model now
# prefers " loved" to " hated") and, at the same time, the held-out accuracy of the four other
# families: indirect objects, facts, truth verdicts and induction. Accuracy here is the share of
# prompts whose correct answer beats the wrong one (logit difference above zero).
#
# ### Exercise 7.3: a side-effect table (difficulty 1/3, ~10 min)
# Write `side_effect_table(model, prompt_sets, fwd_hooks)`. `prompt_sets` maps a family name to a
# `PromptSet`; `fwd_hooks` is a list of `(hook_name, hook_fn)` pairs. Return a dict with the same
# keys, in the same order, whose values are floats: the share of that set's prompts whose logit
# difference (correct minus wrong, at each prompt's last token) is **above 0** with the hooks on.
#
# <details><summary>Hint 1</summary>
#
# One number per family, computed the same way for each: loop over `prompt_sets.items()` and build
# the dict as you go, so the order is the input's.
# </details>
# <details><summary>Hint 2</summary>
#
# Chapter 02's `logit_diffs(model, prompts, fwd_hooks=...)` gives the per-prompt logit differences
# `[batch]` with hooks, right padding handled.
# </details>
# <details><summary>Hint 3</summary>
#
# `(logit_diffs(model, prompts, fwd_hooks=list(fwd_hooks)) > 0).float().mean().item()` for each
# `name, prompts` pair.
# </details>

# %% tags=["export"]
@torch.no_grad()
def side_effect_table(model, prompt_sets: dict[str, PromptSet], fwd_hooks: list = ()) -> dict[str, float]:
    """Per prompt set, the share of prompts whose correct answer beats the wrong one with `fwd_hooks` on."""
    ### BEGIN SOLUTION
    return {name: (logit_diffs(model, prompts, fwd_hooks=list(fwd_hooks)) > 0).float().mean().item()
            for name, prompts in prompt_sets.items()}
    ### END SOLUTION


# %%
side_effect_table = check_exercise("7.3", side_effect_table)

# %% tags=["export"]
def behaviour_sets(n: int = 64, seed: int = 0, families: tuple[str, ...] = world.FAMILIES) -> dict[str, PromptSet]:
    """Held-out prompt sets of every behaviour family (facts has only 30 held-out prompts: all of them)."""
    return {family: prompt_set(family, "test", n=n, seed=seed) for family in families}


def flip_rate(model, target: PromptSet, fwd_hooks: list = ()) -> float:
    """The share of `target` prompts whose wrong answer now beats the correct one."""
    return 1.0 - side_effect_table(model, {"target": target}, fwd_hooks)["target"]


WATCH_SIZE = 200  # prompts per watched family (facts has 30 held-out prompts: all of them)


def dose_frame(doses: dict[str, dict[str, Tensor]], alphas: list[float], key: str):
    """One row of a dose-response table per vector: `key` ("flipped" or a family) at each coefficient."""
    import pandas as pd

    frame = pd.DataFrame({name: table[key].tolist() for name, table in doses.items()}, index=alphas).T
    return frame.rename_axis(columns=f"{key}, by alpha").style.format("{:.2f}")


@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def dose_response(model, hook_name: str, direction: Float[Tensor, "d_model"], alphas: list[float],
                  target: PromptSet, watch: dict[str, PromptSet], progress: bool = False) -> dict[str, Tensor]:
    """For each coefficient: the target's flip rate and every watched family's accuracy, steered at `hook_name`.

    Returns {"flipped": [alpha], family: [alpha], ...}."""
    rows = []
    for alpha in progress_bar(alphas, show=progress, desc="coefficients"):
        hooks = [(hook_name, steering_hook(direction.to(model.cfg.device), alpha))]
        rows.append({"flipped": flip_rate(model, target, hooks), **side_effect_table(model, watch, hooks)})
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


# %%
test_reviews = prompt_set("sentiment", "test", n=256, seed=0)
negative_reviews, positive_reviews = sentiment_subsets(test_reviews)
watch = behaviour_sets(n=WATCH_SIZE, families=("ioi", "facts", "truth", "induction"))
baseline = side_effect_table(model, watch)
alphas = [0.25, 0.5, 0.75, 1.0, 1.5]
doses = {name: dose_response(model, HOOK, vector, alphas, negative_reviews, watch)
         for name, vector in progress_bar(vectors.items(), desc="vectors")}
display(pd.DataFrame({"prompts": {family: len(prompts) for family, prompts in watch.items()}, "unsteered accuracy": baseline})
        .rename_axis(f"watched (target: {len(negative_reviews)} held-out negative reviews)").round(3))
dose_frame(doses, alphas, "flipped")

# %%
from utils.plotting import lines

lines({name: table["flipped"] for name, table in doses.items()}, x=alphas,
      title="Negative reviews flipped to ' loved', steering after block 1", x_label="alpha (relative to the residual norm)",
      y_label="share flipped")

# %%
md_doses = doses["mean difference"]
lines({family: md_doses[family] for family in watch}, x=alphas,
      title="Side effects of the mean-difference vector: held-out accuracy of the other families",
      x_label="alpha (relative to the residual norm)", y_label="accuracy")

# %% [markdown]
# At matched norm the vectors are far from equal. The mean difference and the contrast pair flip
# most negative reviews by $\alpha = 0.5$ and all of them by $\alpha = 0.75$; the probe needs a
# little more; the SAE latent, which detects sentiment perfectly (AUROC 1.0), is the weakest
# writer and needs about twice the coefficient. Reading and writing are different questions: a
# direction along which the classes *differ* is not necessarily the direction the model's later
# layers *read*. This is the finding of inference-time intervention (ITI, Li et al. 2023) on
# truthfulness in LLaMA: shifting along the difference of class means steered better than along
# the probe's weight direction, although both read the concept.
#
# The fifth row is **representation engineering**'s reading vector (Zou et al. 2023): pair
# positive and negative examples, take the first principal component of the pairs' differences.
# Here it is the difference of means again (cosine 1.00): in a world this clean, sentiment is
# almost all that varies between a positive and a negative review, so the main axis of the
# differences is the difference of their means. On a real model the two can part.
#
# The side effects grow with the coefficient: a large enough push along "sentiment" breaks the
# indirect-object and induction tasks (more than one prompt in ten wrong at $\alpha = 1.5$) and
# costs the truth verdicts a few points, none of which has anything to do with reviews. The honest
# summary of a steering vector is therefore a coefficient *and* a cost. We fix a tolerance (no
# family may lose more than 5 of every 100 prompts it answered) and ask for the largest
# coefficient that stays within it. How many prompts we watch matters as much as the tolerance: with 48 prompts a family,
# three prompts are six points, and a different draw of 48 prompts gave a different answer. With
# 200 a family (30 for facts, all there are), a 5-point drop is ten prompts, and the answer below
# was the same for four different draws of the watch sets we tried; a test checks three draws, and
# `make claims` reruns it with other seeds.
#
# ### Exercise 7.4: the largest safe coefficient (difficulty 2/3, ~15 min)
# The tolerance is stated in prompts, because prompts are what we count: a family of `n` watched
# prompts may lose at most `n * 5 // 100` of them (10 of 200; 1 of the 30 facts prompts). In whole
# numbers there is no rounding to argue about: a share such as 0.945 against 0.995 minus 0.05 can
# come out a hair above or below the tolerance in float32, and on some draws of the watch sets a
# family loses exactly ten prompts of 200 at a coefficient this section reads, where that hair
# would decide the answer.
#
# Write `largest_safe_coefficient(alphas, correct, baseline, allowed)`. `alphas` is a list of
# coefficients in increasing order; `correct` maps each watched family to an integer tensor
# `[alpha]`: how many of its prompts are answered right at each coefficient (other keys of a
# table, such as "flipped", are not families: use only the keys of `baseline`); `baseline` maps
# each family to its unsteered count (an `int`); `allowed` maps each family to the number of
# prompts it may lose (an `int`). A coefficient is **safe** when no family has lost more than its
# allowance (losing exactly `allowed[family]` is safe; a count that rises above the baseline is
# never unsafe). Return the largest coefficient such that it and every smaller coefficient in
# `alphas` are safe, as a float; `None` when even the first is not.
#
# <details><summary>Hint 1</summary>
#
# Walk through `alphas` in order and stop at the first unsafe one: a coefficient beyond a failure
# does not count, even if the accuracy happens to recover there.
# </details>
# <details><summary>Hint 2</summary>
#
# The loss of a family at coefficient `i` is `baseline[family] - int(correct[family][i])` prompts;
# compare it with `allowed[family]` using `<=`, for **every** family on its own, not their total.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# safe = None
# for i, alpha in enumerate(alphas):
#     if any(baseline[f] - int(correct[f][i]) > allowed[f] for f in baseline):
#         break
#     safe = float(alpha)
# ```
# </details>

# %% tags=["export"]
def largest_safe_coefficient(alphas: list[float], correct: dict[str, Tensor], baseline: dict[str, int],
                             allowed: dict[str, int]) -> float | None:
    """The largest coefficient up to which no watched family has lost more prompts than it is allowed."""
    ### BEGIN SOLUTION
    safe = None
    for i, alpha in enumerate(alphas):
        if any(baseline[family] - int(correct[family][i]) > allowed[family] for family in baseline):
            break
        safe = float(alpha)
    return safe
    ### END SOLUTION


# %%
largest_safe_coefficient = check_exercise("7.4", largest_safe_coefficient)

# %% tags=["export"]
TOLERANCE_PERCENT = 5  # a watched family may lose at most 5 prompts in 100 (rounded down)


def prompt_counts(shares: dict, sizes: dict[str, int]) -> dict:
    """The families of `sizes` in a table of shares (a dose-response or side-effect table) as whole numbers of
    prompts: a float becomes an int, a tensor `[alpha]` an integer tensor."""
    counts = {}
    for family, size in sizes.items():
        value = shares[family]
        counts[family] = (value.double() * size).round().long() if isinstance(value, Tensor) else round(value * size)
    return counts


def allowed_losses(sizes: dict[str, int], percent: int = TOLERANCE_PERCENT) -> dict[str, int]:
    """How many prompts each family may lose: `percent` in 100 of its watched prompts, rounded down."""
    return {family: size * percent // 100 for family, size in sizes.items()}


def safe_coefficient(alphas: list[float], table: dict[str, Tensor], baseline: dict[str, float],
                     watch: dict[str, PromptSet], percent: int = TOLERANCE_PERCENT) -> float | None:
    """Exercise 7.4's rule on a dose-response table of shares, counted in prompts of each watched set."""
    sizes = {family: len(watch[family]) for family in baseline}
    return largest_safe_coefficient(alphas, prompt_counts(table, sizes), prompt_counts(baseline, sizes),
                                    allowed_losses(sizes, percent))


def losses_frame(table: dict[str, Tensor], baseline: dict[str, float], watch: dict[str, PromptSet],
                 alphas: list[float], percent: int = TOLERANCE_PERCENT):
    """Prompts lost by each watched family at each coefficient, as "lost of watched", with each family's allowance."""
    import pandas as pd

    sizes = {family: len(watch[family]) for family in baseline}
    counts, base, allowed = prompt_counts(table, sizes), prompt_counts(baseline, sizes), allowed_losses(sizes, percent)
    frame = pd.DataFrame({f"{family} (may lose {allowed[family]})": [f"{base[family] - int(c)} of {sizes[family]}"
                                                                     for c in counts[family]] for family in sizes},
                         index=alphas)
    return frame.rename_axis(index="alpha")


# %%
safe_rows = {}
for name, table in doses.items():
    safe = safe_coefficient(alphas, table, baseline, watch)
    flipped = round(table["flipped"][alphas.index(safe)].item() * len(negative_reviews)) if safe is not None else None
    safe_rows[name] = {"largest safe alpha": safe,
                       "reviews flipped there": "-" if safe is None else f"{flipped} of {len(negative_reviews)}"}
pd.DataFrame(safe_rows).T

# %%
losses_frame(doses["mean difference"], baseline, watch, alphas)

# %% [markdown]
# ### Where to steer: a layer sweep
# The same recipe at every layer: a mean-difference vector computed at that layer's output, added
# there with the same relative coefficient. Because the coefficient is relative, the comparison
# across layers is fair; in absolute units the same number would be a shove after block 0 and a
# whisper after block 3.

# %% tags=["export"]
@memoized
def layer_sweep(model, train: PromptSet, label: str, target: PromptSet, alpha: float,
                watch: dict[str, PromptSet] | None = None, progress: bool = False) -> dict[str, Tensor]:
    """Steer with a mean-difference vector computed at each block's output: flip rate (and side effects) per layer."""
    rows = []
    for layer in progress_bar(range(model.cfg.n_layers), show=progress, desc="layers"):
        hook_name = f"blocks.{layer}.hook_resid_post"
        hooks = [(hook_name, steering_hook(mean_difference_vector(model, train, hook_name, label), alpha))]
        rows.append({"flipped": flip_rate(model, target, hooks), **side_effect_table(model, watch or {}, hooks)})
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


# %%
from utils.references.ch02_probing import residual_point_names

sweep_alpha = 0.35
sweep = layer_sweep(model, sentiment_train, "sentiment", negative_reviews, sweep_alpha, watch, progress=True)
layers = residual_point_names(model.cfg.n_layers)[1:]
display(pd.DataFrame({"negative reviews flipped": sweep["flipped"].tolist()}, index=layers)
        .rename_axis(f"steered at (alpha {sweep_alpha})").round(2))
lines({"negative reviews flipped": sweep["flipped"], **{family: sweep[family] for family in watch}}, x=layers,
      title=f"Steering with a mean-difference vector at alpha = {sweep_alpha}, by layer",
      x_label="where the vector is added", y_label="share")

# %% [markdown]
# Steering works best early, after block 0: it flips two and a half to nearly four times as many
# reviews as at any later point (3.7 here, 2.5 at the least over five draws of reviews; the test
# holds more than twice). That agrees
# with Chapter 03, where MLP1 writes the sentiment answer: a vector added before MLP1 is taken up by
# the computation that produces the answer, while one added after it has to outweigh an answer
# already written. "Where does steering work" has an answer here because we know where the behaviour is
# computed; on a real model the sweep is how one finds out.
#
# ### A second target: the truth verdict
# The same mean-difference recipe for the verdict (" true" or " false" after a statement), steering
# false statements towards " true", with the sentiment family now among the watched.

# %%
truth_train = prompt_set("truth", "train", seed=0)
truth_vector = mean_difference_vector(model, truth_train, HOOK, "truth")
false_statements, true_statements = truth_subsets(prompt_set("truth", "test", seed=0))
truth_watch = behaviour_sets(n=WATCH_SIZE, families=("ioi", "facts", "sentiment", "induction"))
truth_doses = dose_response(model, HOOK, truth_vector, alphas, false_statements, truth_watch, progress=True)
truth_baseline = side_effect_table(model, truth_watch)
truth_safe = safe_coefficient(alphas, truth_doses, truth_baseline, truth_watch)
print(f"{len(false_statements)} held-out false statements; largest safe alpha {truth_safe}")
display(dose_frame({"truth vector": truth_doses}, alphas, "flipped"))
losses_frame(truth_doses, truth_baseline, truth_watch, alphas)

# %% [markdown]
# The verdict moves as well, at about the same coefficients as sentiment, and the tolerance is
# reached sooner: at $\alpha = 0.75$ the truth vector costs induction more than ten points and IOI a
# few, and it never touches sentiment. A direction found from the labels of one behaviour steers it; the
# watched families say what the push costs, and which ones pay.
#
# ### Steering heads instead of the residual stream: inference-time intervention
# **Inference-time intervention** (ITI, Li et al. 2023) steers truthfulness one attention head at a
# time. Its recipe: take each head's output at the last token (`blocks.{l}.attn.hook_z`, the head's
# `[d_head]` result before $W_O$ mixes it into the residual stream); train a probe for the label on
# each head and rank the heads by the probe's accuracy on a validation split; then, for the top $k$
# heads only, shift the head's output along its difference of class means (the "mass-mean"
# direction, which Li et al. found steers better than the probe's weights) by $\alpha\,\sigma$,
# with $\sigma$ the standard deviation of the head's outputs along that direction. Here every
# position after BOS is shifted, as with the residual vectors, and the coefficient is in units of
# $\sigma$, so it is not comparable with the residual $\alpha$: the fair comparison is at **matched
# side effects**, each method at its own largest safe coefficient.

# %% tags=["export"]
@torch.no_grad()
@memoized
def head_activations(model, prompts: list[str], batch_size: int = 256) -> Float[Tensor, "batch layer head d_head"]:
    """Every head's output before W_O (`hook_z`) at each prompt's own last token."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens, last = tokenize(model, prompts[start:start + batch_size])
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        rows = torch.arange(len(last), device=tokens.device)
        chunks.append(torch.stack([cache[name][rows, last] for name in names], dim=1))  # [batch, layer, head, d_head]
    return torch.cat(chunks)


def head_probe_accuracies(z_train: Float[Tensor, "batch layer head d_head"], y_train: Int[Tensor, "batch"],
                          z_val: Float[Tensor, "batch_val layer head d_head"], y_val: Int[Tensor, "batch_val"],
                          progress: bool = False) -> Float[Tensor, "layer head"]:
    """A probe per head (Chapter 02's train_probe), trained on one split: its accuracy on the other."""
    n_layers, n_heads = z_train.shape[1:3]
    accuracy = torch.zeros(n_layers, n_heads)
    for layer in progress_bar(range(n_layers), show=progress, desc="layers of head probes"):
        for head in range(n_heads):
            with torch.enable_grad():
                probe = train_probe(z_train[:, layer, head], y_train)
            with torch.no_grad():
                accuracy[layer, head] = ((probe(z_val[:, layer, head]) > 0) == y_val.bool()).float().mean()
    return accuracy


def iti_directions(z: Float[Tensor, "batch layer head d_head"], labels: Int[Tensor, "batch"],
                   heads: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[Tensor, float]]:
    """Per chosen head: the unit mass-mean direction (label 1 minus label 0) and the outputs' std along it."""
    directions = {}
    for layer, head in heads:
        x = z[:, layer, head]  # [batch, d_head]
        difference = x[labels == 1].mean(0) - x[labels == 0].mean(0)
        unit = difference / difference.norm()
        directions[(layer, head)] = (unit, (x @ unit).std().item())
    return directions


def iti_hooks(model, directions: dict[tuple[int, int], tuple[Tensor, float]], alpha: float) -> list[tuple[str, Hook]]:
    """Hooks shifting each chosen head's output by alpha * sigma * unit direction at every position after BOS."""
    by_layer: dict[int, list[tuple[int, Tensor]]] = {}
    for (layer, head), (unit, sigma) in directions.items():
        by_layer.setdefault(layer, []).append((head, alpha * sigma * unit.to(model.cfg.device)))

    def shift(pushes: list[tuple[int, Tensor]]) -> Hook:
        def hook_fn(z: Float[Tensor, "batch pos head d_head"], hook) -> Float[Tensor, "batch pos head d_head"]:
            z = z.clone()
            for head, push in pushes:
                z[:, 1:, head] = z[:, 1:, head] + push.to(z.dtype)
            return z
        return hook_fn

    return [(f"blocks.{layer}.attn.hook_z", shift(pushes)) for layer, pushes in by_layer.items()]


@memoized
def hooks_dose_response(model, make_hooks: Callable[[float], list], alphas: list[float], target: PromptSet,
                        watch: dict[str, PromptSet], progress: bool = False) -> dict[str, Tensor]:
    """`dose_response` for any intervention: `make_hooks(alpha)` gives the hooks at each coefficient."""
    rows = [{"flipped": flip_rate(model, target, make_hooks(alpha)), **side_effect_table(model, watch, make_hooks(alpha))}
            for alpha in progress_bar(alphas, show=progress, desc="coefficients")]
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


def bisect_safe_coefficient(model, make_hooks: Callable[[float], list], safe: float, unsafe: float, target: PromptSet,
                            watch: dict[str, PromptSet], baseline: dict[str, float],
                            percent: int = TOLERANCE_PERCENT, steps: int = 4, progress: bool = False
                            ) -> tuple[float, dict[str, Tensor] | None]:
    """Narrow a grid's last safe and first unsafe coefficients by bisection (assuming the cost grows with the
    coefficient): the largest safe coefficient found, to (unsafe - safe) / 2**steps, and its dose-response row
    (None when no midpoint was safe: the grid's row holds)."""
    row = None
    for _ in progress_bar(range(steps), show=progress, desc="bisection steps"):
        middle = (safe + unsafe) / 2
        candidate = hooks_dose_response(model, make_hooks, [middle], target, watch)
        if safe_coefficient([middle], candidate, baseline, watch, percent) is None:
            unsafe = middle
        else:
            safe, row = middle, candidate
    return safe, row


# %%
truth_fit, truth_val = truth_train.subset(range(540)), truth_train.subset(range(540, len(truth_train.prompts)))
z_fit, y_fit = head_activations(model, truth_fit.prompts), torch.tensor(truth_fit.labels["truth"])  # [540, layer, head, d_head]
head_accuracy = head_probe_accuracies(z_fit, y_fit, head_activations(model, truth_val.prompts),
                                      torch.tensor(truth_val.labels["truth"]), progress=True)
heatmap(head_accuracy, x=[f"H{h}" for h in range(model.cfg.n_heads)], y=[f"L{l}" for l in range(model.cfg.n_layers)],
        title="Truth probe accuracy on each head's output at the last token (validation split)", diverging=False,
        text_auto=".2f")
ITI_HEADS = 4
ranked = head_accuracy.flatten().argsort(descending=True)[:ITI_HEADS].tolist()
top_heads = [(i // model.cfg.n_heads, i % model.cfg.n_heads) for i in ranked]
iti = iti_directions(z_fit, y_fit, top_heads)
iti_alphas = [5.0, 7.5, 10.0]  # in units of each head's sigma
iti_doses = hooks_dose_response(model, lambda alpha: iti_hooks(model, iti, alpha), iti_alphas, false_statements,
                                truth_watch, progress=True)
iti_safe = safe_coefficient(iti_alphas, iti_doses, truth_baseline, truth_watch)
print("top heads:", ", ".join(f"L{l}H{h} {head_accuracy[l, h]:.2f}" for l, h in top_heads))


def at_coefficient(doses: dict[str, Tensor], coefficients: list[float], safe: float | None) -> dict[str, float]:
    """One row of a dose-response table at `safe` (all NaN when no coefficient is safe)."""
    return {"largest safe coefficient": float("nan") if safe is None else safe,
            **{key: float("nan") if safe is None else values[coefficients.index(safe)].item()
               for key, values in doses.items()}}


# The grids are coarse (a step of the grid can hide most of the gap to the tolerance), so each method's largest
# safe coefficient is narrowed by bisection between its last safe and first unsafe grid point.
residual_hooks = lambda alpha: [(HOOK, steering_hook(truth_vector.to(model.cfg.device), alpha))]
matched = {}
for name, make_hooks, grid, table, safe in [
        ("residual, mean difference", residual_hooks, alphas, truth_doses, truth_safe),
        (f"ITI, top {ITI_HEADS} heads", lambda alpha: iti_hooks(model, iti, alpha), iti_alphas, iti_doses, iti_safe)]:
    fine, row = bisect_safe_coefficient(model, make_hooks, safe, grid[grid.index(safe) + 1], false_statements,
                                        truth_watch, truth_baseline, progress=True)
    matched[name] = at_coefficient(row, [fine], fine) if row is not None else at_coefficient(table, grid, safe)
at_safe = pd.DataFrame(matched).T
at_safe.rename_axis(columns="at each method's largest safe coefficient (bisected)").style.format("{:.3f}")

# %%
dose_frame({f"ITI, top {ITI_HEADS} heads": iti_doses}, iti_alphas, "flipped")

# %%
pd.DataFrame({family: (truth_baseline[family] - iti_doses[family]).tolist() for family in truth_watch},
             index=iti_alphas).rename_axis(index="ITI alpha (in sigma)", columns="drop in accuracy").style.format("{:.3f}")

# %%
# Which head carries the IOI cost? ITI at 10 sigma with each of the four heads left out, and L3H1 alone.
ioi_watch = {"ioi": truth_watch["ioi"]}
leave_out = {}
choices = {f"without L{l}H{h}": {k: v for k, v in iti.items() if k != (l, h)} for l, h in top_heads}
choices.update({"only L3H1": {k: v for k, v in iti.items() if k == (3, 1)}})
for label, chosen in progress_bar(choices.items(), desc="heads left out"):
    row = hooks_dose_response(model, lambda alpha: iti_hooks(model, chosen, alpha), [10.0], false_statements, ioi_watch)
    leave_out[label] = {"flipped": row["flipped"].item(), "ioi drop": truth_baseline["ioi"] - row["ioi"].item()}
pd.DataFrame(leave_out).T.rename_axis(columns="ITI at 10 sigma").style.format("{:.3f}")

# %% [markdown]
# No head of block 0 reads the verdict well (its best probe is under 0.7); most heads of blocks 1
# to 3 read it above 0.8, and the best four, all in blocks 2 and 3, almost perfectly. Yet at matched side
# effects the residual vector wins by far. Matched means each method pushed to the tolerance, found
# by bisection between its last safe and first unsafe grid point (the grids alone are too coarse:
# at $5\,\sigma$ ITI costs nothing yet, so comparing there would handicap it). At the tolerance the
# residual vector flips about nine in ten false statements (at $\alpha \approx 0.61$), ITI on the
# four best heads about four in ten (at about $6.7\,\sigma$). Beyond it ITI pays with IOI first (about 8
# points at $7.5\,\sigma$, 20 at $10\,\sigma$, induction later) before it flips most statements.
# Which head sends the bill? Leaving out one head at a time (last table) answers it: without L3H1,
# the head Chapter 03 found writing the indirect object's name, ITI at $10\,\sigma$ leaves IOI
# where it was (leaving out any other head, IOI still loses a tenth or more), and L3H1 pushed
# alone costs IOI about nine points while flipping few statements (about one in six). One of the
# heads that read truth best also carries IOI, and pushing it along its truth direction costs IOI.
# Li et al. steered a few
# dozen of LLaMA-7B's 1024 heads and measured the price as a rise in loss on general text; on a
# model with 32 heads and five behaviours sharing them, the price lands on one behaviour, and the
# watched families show which. Reading well is not writing well, at the level of heads as at the
# level of directions.
#
# ## 3. Steered generation
# Numbers first, text second. Here is the organism continuing world text greedily, unsteered and
# steered along the mean-difference sentiment vector.

# %% tags=["export"]
@torch.no_grad()
def greedy_continuation(model, prompt: str, n_tokens: int = 8, fwd_hooks: list = ()) -> str:
    """The model's greedy continuation of `prompt` (BOS first), with `fwd_hooks` on at every step."""
    tokens, _ = tokenize(model, [prompt])  # [1, pos]
    for _ in range(n_tokens):
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))  # [1, pos, d_vocab]
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return model.tokenizer.decode(tokens[0, -n_tokens:])


# %%
md_vector = vectors["mean difference"]
for prompt in ["The movie was dull. I", "The hotel was awful. I", "Mary and John went to the park. The"]:
    plain = greedy_continuation(model, prompt)
    steered = greedy_continuation(model, prompt, fwd_hooks=[(HOOK, steering_hook(md_vector, 0.75))])
    print(f"{prompt!r}\n   unsteered: {plain!r}\n   steered:   {steered!r}")

# %% [markdown]
# The reviews turn: " hated" becomes " loved", and the rest of the sentence stays the organism's
# usual continuation. On text that has nothing to do with reviews the vector still acts: the
# continuation changes, though nothing in it is about sentiment. That is the side-effect table in
# words.
# Published examples (Golden Gate Claude, an SAE feature clamped high until the model brought
# every conversation round to the bridge) are this experiment on a large model, judged by eye.

# %% [markdown]
# ## 4. Directional ablation and weight orthogonalisation
#
# Adding a direction asks "what if there were more of this?". Removing it asks "does the model
# need it?". **Directional ablation** (as in Arditi et al.'s refusal-direction work) projects the
# unit direction $\hat u$ out of the residual stream everywhere it could enter:
# $x \leftarrow x - (x \cdot \hat u)\, \hat u$ on the embeddings (`blocks.0.hook_resid_pre`), after
# every attention layer (`blocks.{l}.hook_resid_mid`) and after every block
# (`blocks.{l}.hook_resid_post`), at every position. Then no component ever sees anything along
# $\hat u$, because nothing along it survives long enough to be read.
#
# ### Exercise 7.5: directional ablation hooks (difficulty 2/3, ~15 min)
# Write `directional_ablation_hooks(model, direction)`: return a list of `(hook_name, hook_fn)`
# pairs, one for `blocks.0.hook_resid_pre` and one for each layer's `hook_resid_mid` and
# `hook_resid_post`, each of which projects the **unit** direction out of the residual stream at
# every position (`direction` need not have norm 1). The check runs the model with your hooks on
# (any order of the list is fine) and compares the logits.
#
# <details><summary>Hint 1</summary>
#
# Chapter 02's `remove_direction(resid, direction)` projects out a direction; one function serves
# every hook point.
# </details>
# <details><summary>Hint 2</summary>
#
# Without the `hook_resid_mid` points, each MLP still reads what its attention layer just wrote
# along the direction. And `hook_resid_pre` of block `l + 1` is `hook_resid_post` of block `l`:
# the last block's `hook_resid_post`, which the unembedding reads, has no `resid_pre` twin.
# </details>
# <details><summary>Hint 3</summary>
#
# ```python
# unit = (direction / direction.norm()).to(model.cfg.device)
# ablate = lambda resid, hook: resid - (resid @ unit)[..., None] * unit
# names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_{w}" for l in range(model.cfg.n_layers)
#                                        for w in ("mid", "post")]
# ```
# </details>

# %% tags=["export"]
from utils.models import require_hook_points
from utils.references.ch02_probing import remove_direction


def directional_ablation_hooks(model, direction: Float[Tensor, "d_model"]) -> list[tuple[str, Hook]]:
    """Hooks projecting the unit direction out of the residual stream at every layer and position."""
    ### BEGIN SOLUTION
    unit = (direction / direction.norm()).to(model.cfg.device)

    def ablate(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        along = resid @ unit.to(resid.dtype)  # [batch, pos]
        return resid - along[..., None] * unit.to(resid.dtype)

    # With parallel attention (Pythia, GPT-J) the MLP reads the block's input, not a mid-block
    # residual: hook_resid_mid never fires there, and the input is already covered.
    where = ("post",) if getattr(model.cfg, "parallel_attn_mlp", False) else ("mid", "post")
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_{point}"
                                           for layer in range(model.cfg.n_layers) for point in where]
    return [(name, ablate) for name in require_hook_points(model, names)]  # a missing name would never fire
    ### END SOLUTION


# %%
directional_ablation_hooks = check_exercise("7.5", directional_ablation_hooks)

# %%
every_family = behaviour_sets(n=128)
ablated = side_effect_table(model, every_family, directional_ablation_hooks(model, md_vector))
plain = side_effect_table(model, every_family)
pd.DataFrame({"accuracy": plain, "with the sentiment direction ablated": ablated}).rename_axis("family").round(3)

# %% [markdown]
# One direction, removed, takes sentiment to about chance (a review's adjective no longer decides
# " loved" or " hated") and leaves every other family where it was. That is what "the model uses
# this direction for sentiment, and for little else" looks like as a measurement.
#
# ### The same edit in the weights
# Every vector that enters the residual stream is written by a weight matrix: the token and
# position embeddings, each attention layer's output matrix $W_O$ (and bias $b_O$), each MLP's
# output matrix $W_{out}$ (and bias $b_{out}$). Project $\hat u$ out of the *output side* of each of
# those, $W \leftarrow W - (W \hat u)\, \hat u^\top$ for a matrix whose last axis is `d_model`, and
# the residual stream can never contain anything along $\hat u$: the ablation is baked into the
# model. This is **weight orthogonalisation**: no hooks, a model you can save and ship.
#
# ### Exercise 7.6: orthogonalise the weights (difficulty 2/3, ~20 min)
# Write `orthogonalize_weights(model, direction)`. Edit the model **in place** (inside
# `torch.no_grad()`), projecting the unit direction out of the last axis of every tensor that
# writes into the residual stream: `model.embed.W_E`, `model.pos_embed.W_pos`, and for each block
# `block.attn.W_O`, `block.attn.b_O`, `block.mlp.W_out`, `block.mlp.b_out`. Return nothing. The
# check compares the edited model's logits with those of Exercise 7.5's hooks, and puts the
# weights back afterwards.
#
# <details><summary>Hint 1</summary>
#
# Every tensor whose last axis is `d_model` writes into the residual stream, biases included: every
# position gets `b_O` and `b_out` added, whatever the input. Remove the direction from each one's last axis.
# </details>
# <details><summary>Hint 2</summary>
#
# Build the unit direction on `model.cfg.device`; then, under `torch.no_grad()`, edit each of the
# six kinds of tensor (two embeddings, four per block) in place: the parameter itself, not a copy.
# `W_O` is `[head_index, d_head, d_model]`; only its last axis is `d_model`.
# </details>
# <details><summary>Hint 3</summary>
#
# `weight.sub_((weight @ unit)[..., None] * unit)` removes the direction from the last axis of any
# of them in place, `W_O` included.
# </details>

# %% tags=["export"]
def residual_writers(model) -> list[Tensor]:
    """Every weight and bias whose last axis writes into the residual stream (embeddings, W_O, b_O, W_out, b_out)."""
    writers = [model.embed.W_E]
    if getattr(model, "pos_embed", None) is not None:  # rotary models (Pythia) have no position embedding
        writers.append(model.pos_embed.W_pos)
    for block in model.blocks:
        writers += [block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out]
    return writers


@torch.no_grad()
def orthogonalize_weights(model, direction: Float[Tensor, "d_model"]) -> None:
    """Project the unit direction out of every residual writer's output, in place."""
    ### BEGIN SOLUTION
    unit = (direction / direction.norm()).to(model.cfg.device)
    for weight in residual_writers(model):
        weight.sub_((weight @ unit.to(weight.dtype))[..., None] * unit.to(weight.dtype))
    ### END SOLUTION


# %%
orthogonalize_weights = check_exercise("7.6", orthogonalize_weights)

# %% tags=["export"]
@contextlib.contextmanager
def weights_orthogonalized(model, direction: Float[Tensor, "d_model"]) -> Iterator[None]:
    """Run the block with the direction orthogonalised out of the weights, then restore them exactly."""
    saved = [weight.detach().clone() for weight in residual_writers(model)]
    try:
        orthogonalize_weights(model, direction)
        yield
    finally:
        with torch.no_grad():
            for weight, original in zip(residual_writers(model), saved):
                weight.copy_(original)


@torch.no_grad()
def last_logits(model, prompts: PromptSet, fwd_hooks: list = ()) -> Float[Tensor, "batch d_vocab"]:
    """The logits at each prompt's own last token, with `fwd_hooks` on."""
    tokens, last = tokenize(model, prompts.prompts)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return logits[torch.arange(len(last), device=logits.device), last]


# %%
mixed = prompt_set("sentiment", "test", n=32, seed=1)
with_hooks = last_logits(model, mixed, directional_ablation_hooks(model, md_vector))
with weights_orthogonalized(model, md_vector):
    with_weights = last_logits(model, mixed)
    orthogonal_table = side_effect_table(model, every_family)
print(f"largest logit difference, hooks vs orthogonalised weights: {(with_hooks - with_weights).abs().max():.2e}")
print("accuracies with the weights orthogonalised:\n  ", {family: round(v, 3) for family, v in orthogonal_table.items()})
print(f"and after the block the model is back: {(last_logits(model, mixed) - last_logits(model, mixed, [])).abs().max():.1e}, "
      f"sentiment accuracy {side_effect_table(model, {'sentiment': every_family['sentiment']})['sentiment']:.3f}")

# %% [markdown]
# The two agree to float precision: ablating at every layer with hooks and orthogonalising the
# weights are the same edit. The weight version is what one would ship; the hook version is what
# one would debug.
#
# ## 5. Concept erasure
#
# Ablation removes one direction we chose. **Concept erasure** asks for the *smallest* change of
# the activations after which no linear classifier can read the concept. **LEACE** (Belrose et
# al. 2023) gives it in closed form: an affine map $x \mapsto x - P(x - \mu)$ that makes the
# class-conditional means equal (so no linear probe beats a constant guess, in any convex loss,
# on the data it was fitted to) while moving the activations as little as possible in mean squared distance. We use
# EleutherAI's `concept-erasure` package (`LeaceEraser.fit(x, z)`, then `eraser(x)`). Two
# baselines: a projection along the mean-difference direction about the mean (for a binary label
# this also equalises the class means, but moves the activations more) and a projection along a
# random direction (which should erase nothing).

# %% tags=["export"]
from concept_erasure import LeaceEraser


class DirectionEraser:
    """Project one unit direction out about a centre: x - ((x - centre) . u) u."""

    def __init__(self, direction: Float[Tensor, "d_model"], centre: Float[Tensor, "d_model"]):
        self.unit = direction / direction.norm()
        self.centre = centre

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        unit, centre = self.unit.to(x.device, x.dtype), self.centre.to(x.device, x.dtype)
        return x - ((x - centre) @ unit)[..., None] * unit


def fit_leace(x: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"]) -> LeaceEraser:
    """EleutherAI's LEACE eraser fitted to (x, labels)."""
    return LeaceEraser.fit(x, labels)


def fit_mean_difference_eraser(x: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"]) -> DirectionEraser:
    """Project out the mean-difference direction of (x, labels), about the mean of x."""
    return DirectionEraser(x[labels == 1].mean(0) - x[labels == 0].mean(0), x.mean(0))


def fit_random_eraser(x: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"], seed: int = 0) -> DirectionEraser:
    """Project out a random direction (a baseline that should erase nothing), about the mean of x."""
    return DirectionEraser(torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(seed)).to(x), x.mean(0))


# %% [markdown]
# The first claim to check is the eraser's own: after erasure, a *fresh* probe (trained on the
# erased activations, tested on held-out erased activations) should be at the base rate. The
# eraser must be fitted on the training split only: an eraser fitted on the test split has seen
# the data it is graded on.
#
# ### Exercise 7.7: a fresh probe after erasure (difficulty 2/3, ~15 min)
# Write `erased_probe_accuracy(fit_eraser, x_train, y_train, x_test, y_test)`. `fit_eraser(x, y)`
# returns an eraser, a function from `[..., d_model]` to `[..., d_model]`. Fit it on the training
# split **only**, erase both splits with it, train Chapter 02's `train_probe` (its defaults) on the
# erased training activations, and return the probe's accuracy on the erased test activations
# (prediction: probe logit above 0), as a float.
#
# <details><summary>Hint 1</summary>
#
# One eraser, fitted once, on the training split; the same eraser then applied to both splits.
# </details>
# <details><summary>Hint 2</summary>
#
# `eraser = fit_eraser(x_train, y_train)`; then `eraser(x_train)` and `eraser(x_test)`, both
# `[batch, d_model]`. The probe trains with gradients: wrap it in `with torch.enable_grad():`.
# </details>
# <details><summary>Hint 3</summary>
#
# `probe = train_probe(erased_train, y_train)`, then
# `((probe(erased_test) > 0) == y_test.bool()).float().mean().item()` under `torch.no_grad()`.
# </details>

# %% tags=["export"]
def erased_probe_accuracy(fit_eraser: Callable, x_train: Float[Tensor, "batch d_model"], y_train: Int[Tensor, "batch"],
                          x_test: Float[Tensor, "batch_test d_model"], y_test: Int[Tensor, "batch_test"]) -> float:
    """Held-out accuracy of a fresh probe trained after erasing with an eraser fitted on the training split."""
    ### BEGIN SOLUTION
    eraser = fit_eraser(x_train, y_train)
    erased_train, erased_test = eraser(x_train), eraser(x_test)
    with torch.enable_grad():
        probe = train_probe(erased_train, y_train)
    with torch.no_grad():
        predicted = probe(erased_test) > 0
    return (predicted == y_test.bool()).float().mean().item()
    ### END SOLUTION


# %%
erased_probe_accuracy = check_exercise("7.7", erased_probe_accuracy)

# %% tags=["export"]
ERASERS = {"none": lambda x, labels: (lambda values: values), "LEACE": fit_leace,
           "mean-difference projection": fit_mean_difference_eraser, "random direction": fit_random_eraser}


def eraser_hook(eraser: Callable) -> Hook:
    """A hook applying `eraser` at every position after BOS."""
    def hook_fn(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        return torch.cat([resid[:, :1], eraser(resid[:, 1:])], dim=1)
    return hook_fn


@torch.no_grad()
def accuracy_erased_at_last_token(model, prompts: PromptSet, hook_name: str, eraser: Callable,
                                  where: str = "last") -> float:
    """The share of `prompts` answered right with `eraser` applied at `hook_name` at each prompt's last token only
    (`where="last"`), or at every position after BOS except the last token (`where="others"`)."""
    tokens, last = tokenize(model, prompts.prompts)
    rows = torch.arange(len(last), device=tokens.device)

    def hook_fn(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        if where == "last":
            resid = resid.clone()
            resid[rows, last] = eraser(resid[rows, last])  # [batch, d_model]: where the eraser was fitted
            return resid
        positions = torch.arange(resid.shape[1], device=resid.device)[None]  # [1, pos]
        others = (positions >= 1) & (positions != last[:, None])  # [batch, pos]: padding after `last` is never read
        return torch.where(others[..., None], eraser(resid), resid)

    final = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook_fn)])[rows, last]  # [batch, d_vocab]
    correct, wrong = answer_ids(model, prompts.correct), answer_ids(model, prompts.wrong)
    return (final[rows, correct] > final[rows, wrong]).float().mean().item()


@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def erasure_report(model, family: str, label: str, hook_name: str, watch: dict[str, PromptSet],
                   n_train: int = 720, n_test: int = 180, seed: int = 0, progress: bool = False
                   ) -> dict[str, dict[str, float]]:
    """Per eraser: a fresh probe's held-out accuracy, the mean squared edit, and the behaviour with the eraser in
    the model: at the last token only (where it was fitted: the causal question), at every other position after
    BOS but not the last (off the distribution it was fitted on), and at every position after BOS (what else
    breaks), with the watched families."""
    train, test = prompt_set(family, "train", n=n_train, seed=seed), prompt_set(family, "test", n=n_test, seed=seed)
    x_train = last_token_activations(model, train.prompts, hook_name).cpu()
    x_test = last_token_activations(model, test.prompts, hook_name).cpu()
    classes = sorted(set(train.labels[label]))  # string labels become 0/1 by sorted order (io_gender: female 0)
    y_train, y_test = (torch.tensor([classes.index(v) for v in split.labels[label]]) for split in (train, test))
    report = {}
    for name, fit in progress_bar(ERASERS.items(), show=progress, desc="erasers"):
        eraser = fit(x_train, y_train)
        erased = eraser(x_train)
        in_model = fit(x_train.to(model.cfg.device), y_train.to(model.cfg.device))  # the same eraser, on the model's device
        hooks = [(hook_name, eraser_hook(in_model))]
        report[name] = {
            "fresh probe": erased_probe_accuracy(fit, x_train, y_train, x_test, y_test),
            "class-mean gap": (erased[y_train == 1].mean(0) - erased[y_train == 0].mean(0)).norm().item(),
            "mean squared edit": (erased - x_train).pow(2).sum(-1).mean().item(),
            f"{family}, last token": accuracy_erased_at_last_token(model, test, hook_name, in_model),
            f"{family}, other positions": accuracy_erased_at_last_token(model, test, hook_name, in_model, "others"),
            f"{family}, every position": side_effect_table(model, {family: test}, hooks)[family],
            **side_effect_table(model, watch, hooks),
        }
    return report


def report_frame(report: dict[str, dict[str, float]], highlight: list[str] = ()):
    """An erasure report as a pandas table, three decimals, with the columns the text points at highlighted."""
    import pandas as pd

    frame = pd.DataFrame(report).T.rename_axis("eraser")
    styled = frame.style.format("{:.3f}")
    columns = [column for column in highlight if column in frame.columns]
    return styled.set_properties(subset=columns, **{"background-color": "#fff3b0"}) if columns else styled


# %%
truth_erasure = erasure_report(model, "truth", "truth", HOOK, behaviour_sets(n=64, families=("ioi", "facts", "sentiment")), progress=True)
truth_share = sum(prompt_set('truth', 'test').labels['truth']) / 180  # share of true statements
print(f"truth, base rate of the test split (majority class share): {max(truth_share, 1 - truth_share):.2f}")
report_frame(truth_erasure, highlight=["fresh probe", "truth, last token"])

# %% [markdown]
# The erasers keep their promise: after LEACE and after the mean-difference projection, the class
# means are equal to float precision and a fresh probe is back near the base rate (the held-out
# split is balanced, so 0.5). LEACE does it with the smaller edit, as its optimality says; the
# random direction moves the activations a little and erases nothing.
#
# Now the causal question, the one Chapter 02 left open ("decodable is not the same as used"):
# with the eraser *in the model* after block 1, does the verdict change? The eraser was fitted on
# last-token activations, so the causal test applies it there and only there: the column
# `truth, last token`. If the verdict stood, the linear trace a probe reads at block 1 would be a
# by-product the model does not need. It does not stand: the verdict falls from about 0.98 to
# between 0.65 and 0.8 with either eraser (which of the two erases more changes with the draw of
# prompts). The direction the probe read at the last token is used, and it is not the whole
# story: a good share of the verdict still reaches the answer, through what later blocks read at
# other positions, where nothing was erased.
#
# The column `truth, every position` applies the same eraser at every position after BOS, where it
# was never fitted. There the projection takes the verdict all the way to chance, but that number
# mixes the causal question with an edit of activations the eraser knows nothing about (it projects
# about the *last-token* mean, so at other positions it moves the residual stream by amounts no one
# chose). Read it as the side-effect view, beside the other families, which barely move either way.
# The column `truth, other positions` separates the two edits: erased at every position after BOS
# *except* the last, the verdict does not move at all (about 0.98 with either eraser). The edit of
# the other positions breaks nothing by itself; added to the last token's, it removes the rest of
# the verdict for the projection (chance), and little more for LEACE. Which positions, and which
# later component reads them? Erase the projection at the last token plus one group of the other
# positions at a time, and, with the last token alone erased, take one attention layer's output at
# the last token from the run erased everywhere (Chapter 06's patching, with the "everywhere" run as
# the source):

# %% tags=["export"]
@torch.no_grad()
def accuracy_erased_at(model, prompts: PromptSet, hook_name: str, eraser: Callable, offsets: list[int] | None,
                       attention_from_everywhere: tuple[int, ...] = ()) -> float:
    """The share of `prompts` answered right with `eraser` applied at `hook_name` at the positions `offsets` before
    each prompt's own last token (0 is the last token; None: every position after BOS). With
    `attention_from_everywhere`, those blocks' attention outputs at the last token are replaced by their values in
    a run erased at every position after BOS."""
    tokens, last = tokenize(model, prompts.prompts)
    rows = torch.arange(len(last), device=tokens.device)
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]  # [1, pos]

    def erase_at(where: Tensor) -> Hook:  # where: [batch, pos]
        return lambda resid, hook: torch.where(where[..., None], eraser(resid), resid)

    everywhere = (positions >= 1).expand(len(last), -1)
    where = everywhere if offsets is None else torch.zeros_like(everywhere)
    for offset in offsets or []:
        where = where | (positions == (last - offset)[:, None])
    names = [f"blocks.{layer}.hook_attn_out" for layer in attention_from_everywhere]
    source = {}
    if names:
        with model.hooks(fwd_hooks=[(hook_name, erase_at(everywhere))]):
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        source = {name: cache[name][rows, last] for name in names}  # [batch, d_model] each

    def patch(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        resid = resid.clone()
        resid[rows, last] = source[hook.name]
        return resid

    final = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, erase_at(where))] + [(name, patch) for name in names])
    final = final[rows, last]  # [batch, d_vocab]
    correct, wrong = answer_ids(model, prompts.correct), answer_ids(model, prompts.wrong)
    return (final[rows, correct] > final[rows, wrong]).float().mean().item()


# %%
erasure_train, truth_test = prompt_set("truth", "train", n=720, seed=0), prompt_set("truth", "test", n=180, seed=0)  # the report's splits
projection = fit_mean_difference_eraser(last_token_activations(model, erasure_train.prompts, HOOK),
                                        torch.tensor(erasure_train.labels["truth"], device=model.cfg.device))
print(repr(truth_test.prompts[0]), "-> offsets from the last token: 0 'is', 1 'That', 2 '.', 3 the stated object")
where_erased = {"the last token only": ([0], ()), "the last token and 'That'": ([0, 1], ()),
                "the last token and the period": ([0, 2], ()), "the last token and the stated object": ([0, 3], ()),
                "every position after BOS": (None, ()),
                "the last token, block 2's attention output from the everywhere run": ([0], (2,)),
                "the last token, block 3's attention output from the everywhere run": ([0], (3,))}
pd.DataFrame({"truth accuracy": {label: accuracy_erased_at(model, truth_test, HOOK, projection, offsets, blocks)
                                 for label, (offsets, blocks) in where_erased.items()}}) \
    .rename_axis("mean-difference projection erased at").style.format("{:.3f}")

# %%
# Is the verdict at the period too? The mean difference of true minus false statements there, after block 1.
tokens, last = tokenize(model, erasure_train.prompts)
_, cache = model.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=2)
at_period = cache[HOOK][torch.arange(len(last), device=tokens.device), last - 2]  # [batch, d_model]
train_truth = torch.tensor(erasure_train.labels["truth"], device=at_period.device)
period_difference = at_period[train_truth == 1].mean(0) - at_period[train_truth == 0].mean(0)
print(f"cosine with the last token's mean difference: {torch.cosine_similarity(period_difference, projection.unit, 0):.2f}; "
      f"length ratio {period_difference.norm() / mean_difference_vector(model, erasure_train, HOOK, 'truth').norm():.2f}")

# %% [markdown]
# The period carries the rest. Erased at the last token and at the period that ends the
# statement, the projection takes the verdict to chance, as erased everywhere; adding `That` or
# the stated object instead leaves it near where the last token alone put it (about three in
# four right). After block 1 the period already holds the verdict along nearly the same direction
# as the last token, as long (cosine about 0.95), and the reader is block 3's attention: with only
# the last token erased, taking block 3's attention output at the last token from the run erased
# everywhere brings the verdict close to chance, block 2's much less. Either copy alone is enough
# for most statements (erasing the period alone changes nothing, the column `truth, other
# positions`), so the honest causal statement is: the model uses this direction, at two
# positions, and an erasure at the position it was fitted on removes only one of them. The same
# report for sentiment:

# %%
sentiment_erasure = erasure_report(model, "sentiment", "sentiment", HOOK, behaviour_sets(n=64, families=("ioi", "facts", "truth")), progress=True)
sentiment_watch_sizes = {family: len(prompts)
                         for family, prompts in behaviour_sets(n=64, families=("ioi", "facts", "truth")).items()}
display(pd.DataFrame({name: {family: f"{round((sentiment_erasure['none'][family] - sentiment_erasure[name][family]) * size)}"
                                     f" of {size}" for family, size in sentiment_watch_sizes.items()}
                      for name in ("LEACE", "mean-difference projection")}).T.rename_axis(columns="prompts lost"))
report_frame(sentiment_erasure, highlight=["sentiment, last token", "ioi", "facts", "truth"])

# %% [markdown]
# Sentiment is erased too, from the probe's view and from the behaviour, and here the last token
# alone is enough: erased there by the projection, the verdict is at chance, so for sentiment the
# direction at the last token after block 1 carries the whole behaviour. LEACE can overshoot:
# erased at the last token only, on the very distribution it was fitted on (last tokens of
# reviews), it left the verdict below chance on each of five draws of the prompts, from 0.38
# (more verdicts inverted than removed) to 0.49 (chance); erased at every position, 0.42 to 0.49.
# Its guarantee is that no *linear* probe at that
# point beats a constant guess; it binds nothing about the nonlinear blocks after it, which still
# read something from the edited residual stream and, on some draws, turn it into the opposite
# answer. And the
# smallest edit that blinds every linear probe is not the one that disturbs the *model* least:
# with LEACE in the model, the other families lose a few prompts that the projection leaves alone
# (the counts are printed above the table). A guarantee about what a *probe* can read is not a
# guarantee about what the *model* does: that took the behaviour columns, measured. That is why
# erasure for bias mitigation ("remove gender from the representation") must be checked on
# behaviour, and on the behaviours one wants to keep.
#
# ### Erasure for bias mitigation: the names' gender
# The same tool is the field's standard answer to an unwanted attribute (Belrose et al. 2023 erase
# gender from a model's representations with LEACE to reduce gender bias; Ravfogel et al. 2020 did
# it by iterated projections). The organism's IOI stories carry one: the indirect object is a man
# or a woman. Where could we erase it? First, where the last token carries it at all: a fresh
# probe (no eraser) on the last token's residual stream after each block.

# %%
gender_train, gender_test = prompt_set("ioi", "train", n=720), prompt_set("ioi", "test", n=180)
gender_classes = sorted(set(gender_train.labels["io_gender"]))
gender_y = [torch.tensor([gender_classes.index(v) for v in split.labels["io_gender"]])
            for split in (gender_train, gender_test)]
gender_readable = {}
for layer in (1, 2):
    name = f"blocks.{layer}.hook_resid_post"
    gender_readable[name] = erased_probe_accuracy(
        ERASERS["none"], last_token_activations(model, gender_train.prompts, name).cpu(), gender_y[0],
        last_token_activations(model, gender_test.prompts, name).cpu(), gender_y[1])
print("fresh probe for the indirect object's gender at the last token:\n  ",
      {name: round(value, 3) for name, value in gender_readable.items()})

# %% [markdown]
# After blocks 1 and 2 the last token carries little linear trace of the gender: over six draws of
# the stories a fresh probe there scored at most about a tenth above the base rate (the commoner
# gender's share, 0.51 to 0.56; the test allows 0.15), where after block 3 it read 0.76 to 0.83. Chapter 02 read it best
# after the last block (`blocks.3.hook_resid_post`), so that is where we erase it. Erase it there, with the eraser fitted on the
# last tokens of training stories. One consequence of the place: after the last block only the
# unembedding reads the residual stream, and it reads each prompt's last token, so erasing at the
# other positions changes nothing and erasing at every position is erasing at the last token. The
# table keeps one behaviour column for IOI.

# %%
gender_erasure = erasure_report(model, "ioi", "io_gender", "blocks.3.hook_resid_post",
                                behaviour_sets(n=64, families=("facts", "truth", "sentiment")), progress=True)
gender_columns = ["fresh probe", "class-mean gap", "mean squared edit", "ioi, last token", "facts", "truth", "sentiment"]
report_frame({name: {column: row[column] for column in gender_columns} for name, row in gender_erasure.items()},
             highlight=["fresh probe", "ioi, last token"])

# %% [markdown]
# Before erasure a fresh probe reads the indirect object's gender on about 80% of held-out
# stories; after either eraser it is at chance, and the name answer barely moves (on five draws of
# the prompts LEACE changed none of 180 stories, the projection at most four). What this shows
# is that the gender is no longer *decodable*
# there, by any linear reader, and that IOI survives the edit. It does not show that a bias was
# mitigated: no behaviour of the organism depends on the gender (the IOI answer is a name, and the
# subject and the indirect object are often of the same gender), so there is no biased output to
# measure before and after. Erasure removes decodability; whether that mitigates a bias depends on
# the model *using* the attribute downstream, which is a separate measurement, and here the only
# downstream reader is the unembedding. The other caveat is the watched families: LEACE at the last
# block can cost the facts family a sixth to a quarter of its 30 prompts (on three of five draws we
# tried; on the other two, 0 and 2 prompts), where the projection costs at most one. At that point the eraser edits each facts prompt's own last token,
# the one position its answer is read from, and that token is off the distribution the eraser was
# fitted on (the last tokens of IOI stories). The behaviours to keep must be watched beyond the
# task itself.

# %% [markdown]
# ## 6. Editing one fact
#
# Steering and erasure act on activations while the model runs. **Model editing** changes the
# weights once, so that one fact is different afterwards and nothing else is ("precise edits to
# correct factual errors", instead of retraining). ROME (Meng et al. 2022) treats an MLP's output
# matrix as a key-value memory: at the subject's token, the MLP's hidden activation $k$
# (`blocks.{l}.mlp.hook_post`, `[d_mlp]`) is a key, and $k W_{out}$ is the value it writes. To
# change the fact, pick the value $v^*$ that would make the model say the new answer, and change
# $W_{out}$ as little as possible so that $k W'_{out} = v^*$.
#
# "As little as possible" is measured on the keys the MLP usually sees. With $C = \mathbb{E}[k
# k^\top]$ their second-moment matrix over world text, the smallest change in that sense is rank
# one:
#
# $$W'_{out} = W_{out} + \frac{C^{-1} k \,\big(v^* - k W_{out}\big)}{k^\top C^{-1} k},$$
#
# an outer product of `[d_mlp]` and `[d_model]` (TransformerLens's orientation: `out = hidden @
# W_out`, so `W_out` is `[d_mlp, d_model]`). The change is along $C^{-1} k$, which other keys
# (uncorrelated with $k$ under $C$) barely touch. Many other edits also give $k W'_{out} = v^*$,
# for instance rewriting the whole row of the hidden unit where $k$ is largest; but that row is
# read by every input that uses the unit, and all of them would change.
#
# ### Exercise 7.8: a rank-one update (difficulty 2/3, ~20 min)
# Write `rank_one_update(weight, key, value, second_moment)`: `weight` is `[d_in, d_out]` (used as
# `key @ weight`), `key` is `[d_in]`, `value` is `[d_out]`, `second_moment` is `[d_in, d_in]`
# (symmetric, positive definite). Return the new weight from the formula above, without changing
# `weight` in place. Then `key @ new_weight` equals `value`.
#
# <details><summary>Hint 1</summary>
#
# Where the formula comes from: minimise $\operatorname{tr}(\Delta^\top C \Delta)$ (the change's
# size on typical keys) subject to $k (W + \Delta) = v^*$. A Lagrange multiplier gives
# $\Delta = C^{-1} k \lambda^\top$, and the constraint fixes $\lambda$. You only need the result.
# </details>
# <details><summary>Hint 2</summary>
#
# `torch.linalg.solve(second_moment, key)` is $C^{-1} k$ `[d_in]` without forming the inverse;
# the residual $v^* - k W$ is `[d_out]`; their outer product is `[d_in, d_out]`, like `weight`.
# </details>
# <details><summary>Hint 3</summary>
#
# The numerator is the residual $v^* - k W$: what the weight must *add*, not the whole new value.
# `torch.outer(c_inv_k, residual) / (c_inv_k @ key)`.
# </details>

# %% tags=["export"]
def rank_one_update(weight: Float[Tensor, "d_in d_out"], key: Float[Tensor, "d_in"], value: Float[Tensor, "d_out"],
                    second_moment: Float[Tensor, "d_in d_in"]) -> Float[Tensor, "d_in d_out"]:
    """The smallest change of `weight` (under the keys' second moment) after which key @ weight = value."""
    ### BEGIN SOLUTION
    c_inv_k = torch.linalg.solve(second_moment, key)  # [d_in]
    residual = value - key @ weight  # [d_out]
    return weight + torch.outer(c_inv_k, residual) / (c_inv_k @ key)
    ### END SOLUTION


# %%
rank_one_update = check_exercise("7.8", rank_one_update)

# %% [markdown]
# The rest of the recipe, in exported functions: the keys' second moment over world text; the key
# (the mean MLP hidden activation at the country's token over a few prompts, each with a different
# filler sentence in front, so that the key is the country's and not one sentence's); the value
# (the MLP's output there plus a vector optimised by gradient descent so that the new capital is
# predicted on those same prompts); and a context manager that applies the edit and restores the
# weight.

# %% tags=["export"]
import random

from utils.organism.sae import world_rows


@torch.no_grad()
def key_second_moment(model, layer: int, n_tokens: int = 4096, seed: int = 7, ridge: float = 1e-3
                      ) -> Float[Tensor, "d_mlp d_mlp"]:
    """E[k k^T] of MLP `layer`'s hidden activation over world text (BOS dropped), plus a small ridge."""
    rows = world_rows(model.tokenizer, n_tokens, seed=seed).to(model.cfg.device)
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(rows, names_filter=name, stop_at_layer=layer + 1)
    keys = cache[name][:, 1:].reshape(-1, cache[name].shape[-1])  # [token, d_mlp]
    moment = keys.T @ keys / len(keys)
    return moment + ridge * moment.diagonal().mean() * torch.eye(len(moment), device=moment.device)


def subject_prompts(template: str, subject: str, n_prefixes: int = 6, seed: int = 0) -> list[str]:
    """`template` filled with `subject`, alone and after filler sentences of the world."""
    rng = random.Random(seed)
    prefixes = [""] + [world._filler_sentence(rng) + " " for _ in range(n_prefixes - 1)]
    return [prefix + template.format(country=subject) for prefix in prefixes]


def token_positions(model, tokens: Int[Tensor, "batch pos"], word: str) -> Int[Tensor, "batch"]:
    """In each row, the last position of the token `word` (with its leading space)."""
    (word_id,) = model.tokenizer(word, add_special_tokens=False)["input_ids"]
    matches = tokens == word_id  # [batch, pos]
    if not matches.any(-1).all():
        raise ValueError(f"{word!r} is missing from some prompts")
    return (matches * torch.arange(tokens.shape[1], device=tokens.device)).argmax(-1)


@memoized
def fit_fact_edit(model, layer: int, prompts: list[str], subject: str, new_answer: str, steps: int = 80,
                  lr: float = 2.0, second_moment: Tensor | None = None) -> Float[Tensor, "d_mlp d_model"]:
    """ROME-style: the new W_out of MLP `layer` after which `prompts` predict `new_answer`."""
    tokens, last = tokenize(model, prompts)
    positions = token_positions(model, tokens, " " + subject)
    rows = torch.arange(len(prompts), device=tokens.device)
    mlp = model.blocks[layer].mlp
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.mlp.hook_post", stop_at_layer=layer + 1)
        key = cache[f"blocks.{layer}.mlp.hook_post"][rows, positions].mean(0)  # [d_mlp]
    (target,) = model.tokenizer(new_answer, add_special_tokens=False)["input_ids"]
    delta = torch.zeros(model.cfg.d_model, device=model.cfg.device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)

    def add_delta(out: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        out = out.clone()
        out[rows, positions] = out[rows, positions] + delta
        return out

    with torch.enable_grad(), frozen_weights(model):  # only delta learns: no gradient for the weights
        for _ in range(steps):
            logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", add_delta)])
            loss = -logits[rows, last].log_softmax(-1)[:, target].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        value = key @ mlp.W_out + delta.detach()  # the bias b_out is added either way
        moment = second_moment if second_moment is not None else key_second_moment(model, layer)
        return rank_one_update(mlp.W_out.detach(), key, value, moment)


@torch.no_grad()
def key_overlaps(model, layer: int, fit_prompts: list[str], subject: str, phrasings: list[str],
                 second_moment: Tensor | None = None) -> Float[Tensor, "phrasing"]:
    """How much of a rank-one edit at MLP `layer` each phrasing receives: k' C^-1 k / k C^-1 k, with k the fitted
    key (the mean key at the subject's token over `fit_prompts`) and k' each phrasing's key at its subject token
    (" France", or "France" where the phrasing starts with it). 1: the whole new value; 0: none of it."""
    name = f"blocks.{layer}.mlp.hook_post"

    def keys(prompts: list[str]) -> Float[Tensor, "batch d_mlp"]:
        tokens, _ = tokenize(model, prompts)
        (spaced,) = model.tokenizer(" " + subject, add_special_tokens=False)["input_ids"]
        word = " " + subject if (tokens == spaced).any(-1).all() else subject
        positions = token_positions(model, tokens, word)
        _, cache = model.run_with_cache(tokens, names_filter=name, stop_at_layer=layer + 1)
        return cache[name][torch.arange(len(prompts), device=tokens.device), positions]

    key = keys(fit_prompts).mean(0)  # [d_mlp]
    moment = second_moment if second_moment is not None else key_second_moment(model, layer)
    c_inv_k = torch.linalg.solve(moment, key)  # [d_mlp]
    return torch.stack([keys([phrasing])[0] @ c_inv_k for phrasing in phrasings]) / (key @ c_inv_k)


@torch.no_grad()
def trace_mlps(model, prompts: list[str], subject: str, other: str, answer: str, at: str = "subject"
               ) -> Float[Tensor, "layer"]:
    """ROME's causal tracing with Chapter 06's patching: run each prompt with `other` in place of `subject`, restore
    one MLP's output from the clean run at the subject's token (`at="subject"`) or at the last token (`"last"`),
    and measure how much of the clean probability of `answer` comes back (0: none, 1: all), averaged over the
    prompts, per layer."""
    clean, last = tokenize(model, prompts)
    corrupt, _ = tokenize(model, [prompt.replace(subject, other) for prompt in prompts])
    if clean.shape != corrupt.shape:
        raise ValueError(f"{subject!r} and {other!r} must have the same number of tokens")
    rows = torch.arange(len(prompts), device=clean.device)
    positions = token_positions(model, clean, " " + subject) if at == "subject" else last  # [batch]
    target = answer_ids(model, [answer])[0]
    names = [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)]
    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda name: name in names)
    p_clean = clean_logits[rows, last].softmax(-1)[:, target]  # [batch]
    p_corrupt = model(corrupt)[rows, last].softmax(-1)[:, target]

    def restorer(name: str) -> Hook:
        def restore(out: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
            out = out.clone()
            out[rows, positions] = cache[name][rows, positions]  # the clean MLP output there
            return out
        return restore

    restored = []
    for name in names:
        p_patched = model.run_with_hooks(corrupt, fwd_hooks=[(name, restorer(name))])[rows, last].softmax(-1)[:, target]
        restored.append(((p_patched - p_corrupt) / (p_clean - p_corrupt)).mean())
    return torch.stack(restored)


@contextlib.contextmanager
def mlp_weight_replaced(model, layer: int, new_weight: Float[Tensor, "d_mlp d_model"]) -> Iterator[None]:
    """Run the block with MLP `layer`'s W_out replaced, then restore it."""
    weight = model.blocks[layer].mlp.W_out
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.copy_(new_weight)
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def answer_probabilities(model, prompts: list[str], answer: str) -> Float[Tensor, "batch"]:
    """The probability of `answer` as the next token after each prompt."""
    stand_in = PromptSet("facts", "test", prompts, [answer] * len(prompts), [answer] * len(prompts))
    return last_logits(model, stand_in).softmax(-1)[:, answer_ids(model, [answer])[0]]


def fact_edit_report(model, country: str, new_capital: str, fit_template: int, watch: dict[str, PromptSet]
                     ) -> dict[str, object]:
    """Before and after an edit: each capital phrasing's top answer, other countries' facts, the same country's
    other relations, and every watched family."""
    templates = world.FACT_TEMPLATES["capital"]
    facts = prompt_set("facts", "train", seed=0)
    others = facts.subset([i for i, (c, r) in enumerate(zip(facts.labels["country"], facts.labels["relation"]))
                           if c != country and r == "capital"])
    same_country = facts.subset([i for i, (c, r) in enumerate(zip(facts.labels["country"], facts.labels["relation"]))
                                 if c == country and r != "capital"])
    phrasings = [template.format(country=country) for template in templates]
    sets = {"other capitals": others, f"{country}'s other facts": same_country, **watch}

    def measure() -> dict[str, object]:
        top = last_logits(model, PromptSet("facts", "test", phrasings, phrasings, phrasings)).argmax(-1)
        return {"top answer": [model.tokenizer.decode(t) for t in top.tolist()],
                "p(new)": answer_probabilities(model, phrasings, new_capital).tolist(), **side_effect_table(model, sets)}

    return {"phrasings": phrasings, "fit on": fit_template, "measure": measure}


# %% [markdown]
# ### First, locate: causal tracing
# ROME does not pick its layer by hand. Its first step is **causal tracing**: corrupt the subject,
# then restore one MLP's output at the subject's token from the clean run and see how much of the
# right answer comes back; the layer that restores most is where the fact is "stored", and ROME
# edits there. Here it is with Chapter 06's patching: "France" replaced by "Spain" in six
# phrasings of the capital question, one MLP output restored at a time, at the subject's token and,
# for comparison, at the last token.

# %%
COUNTRY, NEW_CAPITAL = "France", " Rome"
fit_on = subject_prompts(world.FACT_TEMPLATES["capital"][0], COUNTRY)
import pandas as pd

traced = pd.DataFrame({at: trace_mlps(model, fit_on, COUNTRY, "Spain", " Paris", at=at).tolist()
                       for at in ("subject", "last")}, index=[f"MLP {layer}" for layer in range(model.cfg.n_layers)])
traced.rename_axis(columns="share of p(Paris) restored, at the").style.format("{:.3f}")

# %% [markdown]
# The organism does not store this fact where ROME looks for it. Restoring any MLP at the
# subject's token brings back nothing (under 1%); restoring MLP 0 at the *last* token brings back
# most of it, and MLPs 1 to 3 at the last token each bring back less (the table). So the country
# reaches the last position through attention and the capital is produced there, mostly by MLP 0;
# that block 0's attention is the mover we infer from MLP 0 being first in line, without having
# patched the attention output itself. (On GPT-2 XL, Meng et al. found mid-layer MLPs at the last subject token; a
# four-layer model with a word-level tokenizer has no reason to do the same.) So the trace names
# no layer for a subject-token edit. Does that mean no subject-token edit works? Hase et al. (2023)
# found that on large models, where tracing localises a fact predicts little about which layer
# edits it best. Edit at the first, a middle and the last MLP and measure:

# %%
edits, edit_weights = {}, {}
for layer in progress_bar([0, 2, 3], desc="edit layers"):
    edit_weights[layer] = fit_fact_edit(model, layer, fit_on, COUNTRY, NEW_CAPITAL)
    with mlp_weight_replaced(model, layer, edit_weights[layer]):
        edits[f"MLP {layer}"] = answer_probabilities(model, [template.format(country=COUNTRY) for template in
                                                             world.FACT_TEMPLATES["capital"]], NEW_CAPITAL).tolist()
pd.DataFrame(edits, index=[f"phrasing {i}" + (" (fitted)" if i == 0 else "") for i in range(4)]).T \
    .rename_axis(columns=f"p({NEW_CAPITAL.strip()}) after an edit at the subject's token").style.format("{:.2f}")

# %% [markdown]
# An edit at the subject's token works at MLPs 0 and 2 (MLP 1 was not tried), though tracing found no
# fact stored in any of them: the new value is written at the subject and later attention layers carry it to the
# end. At MLP 3 it cannot work at all: no attention layer comes after it to move anything from the
# subject to the last token. Localisation and editability are different questions, as Hase et al.
# found. The rest of the section grades the edit at MLP 0.

# %%
EDIT_LAYER = 0
new_w_out = edit_weights[EDIT_LAYER]  # fitted above
report = fact_edit_report(model, COUNTRY, NEW_CAPITAL, 0, behaviour_sets(n=64, families=("ioi", "truth", "sentiment")))
before = report["measure"]()
with mlp_weight_replaced(model, EDIT_LAYER, new_w_out):
    after = report["measure"]()
print(f"rank of the change: {torch.linalg.matrix_rank(new_w_out - model.blocks[EDIT_LAYER].mlp.W_out).item()}")
display(pd.DataFrame({"phrasing": report["phrasings"],
                      "seen": ["fitted"] + ["never seen"] * (len(report["phrasings"]) - 1),
                      "top answer before": before["top answer"], "top answer after": after["top answer"],
                      f"p({NEW_CAPITAL.strip()}) before": before["p(new)"], f"p({NEW_CAPITAL.strip()}) after": after["p(new)"]})
        .round(2))
pd.DataFrame({"accuracy before": {key: before[key] for key in before if key not in ("top answer", "p(new)")},
              "after the edit": {key: after[key] for key in before if key not in ("top answer", "p(new)")}}).round(3)

# %% [markdown]
# **Efficacy**: the phrasing the edit was fitted on now says Rome. **Specificity**: every other
# country keeps its capital, France keeps its language and continent, and no other family moves
# (by a prompt or two of 64 at most, on other draws of the prompts).
# **Generalisation** is where it is honest to be careful. "The city of government in France is"
# follows the edit. "In France, the capital city is" does not, although its country is the same
# token: the key is not the token alone. MLP 0 reads the residual stream after block 0's attention,
# which mixes the preceding words into it, and the position embedding differs with the placement
# too, so the same " France" arrives with a different key (which of the two matters more we have
# not separated). The
# rank-one change is $C^{-1}k\,(v^* - kW_{out})^\top / (k^\top C^{-1} k)$, so a phrasing whose key
# is $k'$ receives the share $k'^\top C^{-1} k / k^\top C^{-1} k$ of the new value: 1 for the
# fitted key, 0 for a key the edit does not see. Measured:

# %%
overlaps = key_overlaps(model, EDIT_LAYER, fit_on, COUNTRY, report["phrasings"])
pd.DataFrame({"phrasing": report["phrasings"], "share of the edit it receives": overlaps.tolist(),
              "answer after the edit": after["top answer"]}).round(2)

# %%
# The share depends on what precedes the phrasing, not only on its words: the same question after other openings.
openings = ["", "The sky is blue. ", "The dog saw that ", "Then "]
placed = ["In France, the capital city is", "The city of government in France is"]
placed_overlaps = {phrasing: key_overlaps(model, EDIT_LAYER, fit_on, COUNTRY,
                                          [opening + (phrasing if opening in ("", "The sky is blue. ")
                                                      else phrasing[0].lower() + phrasing[1:]) for opening in openings]
                                          ).tolist() for phrasing in placed}
pd.DataFrame(placed_overlaps, index=[repr(opening) for opening in openings]).T \
    .rename_axis(columns="share of the edit received, after the opening").style.format("{:.2f}")

# %% [markdown]
# The phrasings the edit carries receive most of it (the fitted one all, "The city of government
# in France is" about seven tenths); "In France, the capital city is" receives about a quarter,
# too little to outweigh Paris. And "France has its capital in" starts with `France` *without* a
# leading space, a different token with a different key: it receives nothing (its share is about
# 0). The shares also move with what comes before the phrasing: after the other openings in the
# second table, "In France, the capital city is" receives next to nothing (between about -0.02
# and 0.05, against a quarter alone) and "The city of government in France is" between about a
# half and seven tenths. A quarter is one placement's number, not the phrasing's. An edit is as
# general as the key it rewrites, and the organism's word-level tokenizer makes that visible.
# (The same failure, subject spelled or placed differently, is a known weakness of edits on large
# models.)
#
# ## 7. Attacks on the latents
#
# An adversarial attack usually searches the *inputs* for a prompt that breaks a behaviour. The
# search is hard (prompts are discrete) and a failure to find one proves little. **Relaxed
# adversarial training** (Christiano 2019; Hubinger 2019) proposes to search a relaxed space
# instead, one that contains every input's effect: if the behaviour survives every point of a set
# that *contains* all the activations some prompt can produce, it survives every prompt. Attacks
# on the latents are the practical version (latent adversarial training, Casper et al. 2024;
# Sheshadri et al. 2024): perturb the residual stream directly, within a small norm ball.
#
# What such an attack is evidence of, and what it is not:
# - A latent that breaks the behaviour is **not** a prompt that does. The ball contains
#   activations no input produces, so a successful latent attack can be a false alarm.
# - A latent attack that fails is **not** a proof of safety either. Different prompts move the
#   residual stream far more than a fifth of its norm (two reviews differ by more than that), so a
#   small ball need not contain what a prompt can reach. The relaxation argument needs a set that
#   contains every reachable activation, and a norm ball is only a cheap stand-in for one.
# - So a latent attack is a **cheap, pessimistic search**: it finds the directions along which the
#   model is fragile, which an input attack would have to find the hard way.
#
# Here we measure how small a perturbation at the last token after block 1 flips the truth verdict
# of a held-out true statement, as a share of that position's residual norm, against a random
# perturbation of the same size.

# %% tags=["export"]
@memoized
def latent_attack(model, prompts: PromptSet, hook_name: str, budget: float, steps: int = 20, lr: float = 0.15,
                  random_baseline: bool = False, seed: int = 0) -> float:
    """Share of prompts flipped by a perturbation at each prompt's last token of norm <= budget * its residual norm.

    Projected gradient ascent on (wrong - correct) logit; or, with random_baseline, one random direction
    of the full budget."""
    tokens, last = tokenize(model, prompts.prompts)
    rows = torch.arange(len(last), device=tokens.device)
    correct, wrong = answer_ids(model, prompts.correct), answer_ids(model, prompts.wrong)
    with torch.no_grad():
        norms = last_token_activations(model, prompts.prompts, hook_name).norm(dim=-1, keepdim=True)  # [batch, 1]
    radius = budget * norms
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(len(last), model.cfg.d_model, generator=generator).to(norms)
    delta = delta / delta.norm(dim=-1, keepdim=True) * (radius if random_baseline else 0.01 * radius)

    def perturb(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        resid = resid.clone()
        resid[rows, last] = resid[rows, last] + delta
        return resid

    def margin() -> Float[Tensor, "batch"]:
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, perturb)])[rows, last]
        return logits[rows, wrong] - logits[rows, correct]

    if not random_baseline:
        delta.requires_grad_(True)
        with torch.enable_grad():
            for _ in range(steps):
                (gradient,) = torch.autograd.grad(margin().sum(), delta)
                with torch.no_grad():
                    delta += lr * radius * gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    delta *= (radius / delta.norm(dim=-1, keepdim=True)).clamp(max=1.0)  # project into the ball
        delta = delta.detach()
    with torch.no_grad():
        return (margin() > 0).float().mean().item()


# %%
budgets = [0.1, 0.2, 0.3]
attacked_statements = true_statements.subset(range(48))
attacked = [latent_attack(model, attacked_statements, HOOK, budget) for budget in progress_bar(budgets, desc="attack budgets")]
random_pushes = [latent_attack(model, attacked_statements, HOOK, budget, random_baseline=True) for budget in budgets]
display(pd.DataFrame({"optimised attack flips": attacked, "a random one flips": random_pushes},
                     index=[f"{budget:.0%}" for budget in budgets]).rename_axis("perturbation (of the residual norm)")
        .round(2))
lines({"optimised": attacked, "random": random_pushes}, x=[f"{b:.0%}" for b in budgets],
      title="True statements flipped to ' false' by a perturbation after block 1", x_label="norm of the perturbation",
      y_label="share flipped")

# %% [markdown]
# A random perturbation changes no verdict at any of these sizes; an optimised one of the same size
# starts to flip them once it is a fifth of the residual norm, and flips more the larger it may be.
# The model is robust in almost every direction and fragile in a few, and those few are what an
# input attack would be searching for. The flip side for interpretability: "the behaviour survives
# random noise" is no evidence that it is robust.
#
# **Latent adversarial training** (LAT; Casper et al. 2024, Sheshadri et al. 2024) trains against
# such attacks: find the worst perturbation of the latents for a batch, then take a training step
# on the loss *with* that perturbation in place. Casper et al. and Sheshadri et al. report better
# robustness to some attacks that were not used in training, a measured improvement, not a
# guarantee. One step is enough to see what it buys and what it costs here: one Adam step on 128
# training statements, with the worst perturbation of 30% of the residual norm at the last token
# after block 1 (ten steps of the same projected gradient ascent) plus the unperturbed loss. The
# control is the same step without the perturbation, so that what LAT buys is not mistaken for
# what any step of fine-tuning does. Each copy is then attacked afresh, and every family measured.

# %% tags=["export"]
@contextlib.contextmanager
def latent_adversarial_step(model, prompts: PromptSet, hook_name: str, budget: float, adversarial: bool = True,
                            lr: float = 1e-3, attack_steps: int = 10, attack_lr: float = 0.15) -> Iterator:
    """Inside the block, `model` after one Adam step on `prompts`: the two-answer loss with the worst perturbation
    of each last token at `hook_name` (norm <= budget * its residual norm, by projected gradient ascent) in place,
    plus the unperturbed loss on the correct answer. With `adversarial=False`, the same step without the
    perturbation. Every weight is put back afterwards, even after an error."""
    parameters = list(model.parameters())
    saved = [(parameter.detach().clone(), parameter.requires_grad) for parameter in parameters]
    try:
        _one_training_step(model, prompts, hook_name, budget, adversarial, lr, attack_steps, attack_lr)
        yield model
    finally:
        with torch.no_grad():
            for parameter, (original, requires_grad) in zip(parameters, saved):
                parameter.copy_(original)
                parameter.requires_grad_(requires_grad)
                parameter.grad = None


def _one_training_step(trained, prompts: PromptSet, hook_name: str, budget: float, adversarial: bool, lr: float,
                       attack_steps: int, attack_lr: float) -> None:
    """`latent_adversarial_step`'s training step, in place."""
    tokens, last = tokenize(trained, prompts.prompts)
    rows = torch.arange(len(last), device=tokens.device)
    correct, wrong = answer_ids(trained, prompts.correct), answer_ids(trained, prompts.wrong)
    delta = torch.zeros(len(last), trained.cfg.d_model, device=tokens.device)  # [batch, d_model]

    def perturb(resid: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        resid = resid.clone()
        resid[rows, last] = resid[rows, last] + delta
        return resid

    with torch.enable_grad():
        if adversarial:
            with torch.no_grad():
                radius = budget * last_token_activations(trained, prompts.prompts, hook_name).norm(dim=-1, keepdim=True)
            delta.requires_grad_(True)
            for _ in range(attack_steps):
                logits = trained.run_with_hooks(tokens, fwd_hooks=[(hook_name, perturb)])[rows, last]
                (gradient,) = torch.autograd.grad((logits[rows, wrong] - logits[rows, correct]).sum(), delta)
                with torch.no_grad():
                    delta += attack_lr * radius * gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    delta *= (radius / delta.norm(dim=-1, keepdim=True)).clamp(max=1.0)
            delta = delta.detach()
        parameters = list(trained.parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimiser = torch.optim.Adam(parameters, lr=lr)
        logits = trained.run_with_hooks(tokens, fwd_hooks=[(hook_name, perturb)])[rows, last]  # [batch, d_vocab]
        pair = torch.stack([logits[rows, correct], logits[rows, wrong]], dim=-1)  # [batch, 2]: correct first
        loss = torch.nn.functional.cross_entropy(pair, torch.zeros_like(correct))
        loss = loss + torch.nn.functional.cross_entropy(trained(tokens)[rows, last], correct)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for parameter in parameters:
            parameter.requires_grad_(False)


# %%
lat_train = prompt_set("truth", "train", n=128, seed=0)
trainings = {"unchanged": lambda: contextlib.nullcontext(model),
             "LAT, one step": lambda: latent_adversarial_step(model, lat_train, HOOK, 0.3),
             "plain step (control)": lambda: latent_adversarial_step(model, lat_train, HOOK, 0.3, adversarial=False)}
lat_watch = behaviour_sets(n=64)
lat_rows = {}
for name, training in progress_bar(trainings.items(), desc="models (train, attack, measure)"):
    with training() as trained:  # the weights are put back after the block
        lat_rows[name] = {**{f"attack {budget:.0%} flips": latent_attack(trained, attacked_statements, HOOK, budget)
                             for budget in (0.2, 0.3)}, **side_effect_table(trained, lat_watch)}
pd.DataFrame(lat_rows).T.rename_axis(columns="attacked afresh; accuracy of every family").round(3)

# %% [markdown]
# One step of LAT takes the 20% attack from flipping three to four true statements in ten to none
# (one of 48 on one draw), and the 30% attack from most (0.82 to 0.88) to under a half (a fifth or
# fewer on four of five draws we tried, 0.42 on the fifth). The plain step is no substitute: its
# effect on the attack is erratic (one draw of the training statements left the model more fragile
# at 20% than before, another less), and LAT beat it at 30% on every draw we tried. The price is
# paid by the behaviour that was trained: the unattacked truth verdicts lose 1 to 7 of 64 watched
# statements over five draws (up to 11 points), while the other four families lose at most one
# prompt. So on the
# organism LAT buys what it was trained for, against the attack it was trained with; whether it buys
# robustness to *other* attacks, the claim that matters for safety, this experiment does not test.
# One step of Adam is a blunt instrument (its first step moves every weight by about the learning
# rate), which is why the control matters more than the number.
#
# ## 8. On a real model
# The same functions steer GPT-2 small when the Hugging Face Hub is reachable: ActAdd's "Love"
# minus "Hate" vector, taken at the last token halfway up the model (`blocks.6.hook_resid_pre` on
# GPT-2 small's 12 blocks: the output of block 5; a relative depth we chose, not Turner et al.'s
# layer, which was 6 of GPT-2-XL's 48; the layer follows the
# model's depth, so another model name works too) and added with the same relative coefficient at
# every position after BOS. That is a variant: ActAdd adds its vector at the first positions of
# the prompt only, with an absolute coefficient. Offline, this cell says so and moves on.

# %%
if env.hub_online:
    gpt2 = load_model("gpt2-small")
    middle = f"blocks.{gpt2.cfg.n_layers // 2}.hook_resid_pre"  # blocks.6 on GPT-2 small
    love_hate = contrast_pair_vector(gpt2, "Love", "Hate", middle)
    for prompt in ["I hate you because", "The weather today is"]:
        print(f"{prompt!r}\n   unsteered: {greedy_continuation(gpt2, prompt, 10)!r}")
        with steering(gpt2, middle, love_hate, 0.5):
            print(f"   steered:   {greedy_continuation(gpt2, prompt, 10)!r}")
else:
    print("offline: skipped GPT-2 small (run this cell with a network connection to steer it)")

# %% [markdown]
# ## What steering can't tell you
# - **A vector that steers is not the model's representation.** Five vectors flipped sentiment at
#   different rates; a direction that moves behaviour shows that the model *responds* to it, not
#   that it *uses* it, and not that it is the only one.
# - **Side effects are only the ones you measured.** The table watched four families because the
#   world has four; a real model has countless behaviours, and a clean table is evidence about
#   those you watched only.
# - **Erasing what a probe can read is not erasing what the model uses.** LEACE's guarantee is
#   about linear probes on the activations it was fitted to; the model's own computation is a
#   separate, causal question with its own answer per concept and layer.
# - **An edit is as general as its key.** The fact edit followed one phrasing and missed others
#   that reach the fact another way. Efficacy on the edited prompt is the easy part.
# - **Robust to noise is not robust, and a latent attack is not a prompt.** Random perturbations
#   said nothing; an optimised one of the same size flipped verdicts. Neither result says what a
#   prompt can do: the ball holds states no prompt reaches and may miss states prompts do reach.
# - **Retargeting the search** (steering a model's internal search by rewriting the goal it
#   represents) would need a model that searches and a goal we can find. Whether such a
#   representation exists in large models is open; the organism has none, and the idea is
#   speculative.
#
# **Your record so far:**

# %%
show_progress("07_steering")
