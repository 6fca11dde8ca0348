# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 05: Sparse autoencoders
#
# **Time:** about 3 hours. **Exercises:** 8, each checked as soon as you run the cell after it.
#
# **You will learn to**
# - build a sparse autoencoder (SAE) from scratch: a linear encoder and a ReLU that give a sparse,
#   overcomplete code, a decoder whose rows are unit-length feature directions, an L1 penalty;
# - train it on a toy whose true features you know, and score how many it recovers;
# - see the L1 penalty's two failure modes, shrinkage and dead latents, and how TopK avoids them;
# - train SAEs on the organism's residual stream with SAELens's trainer, from activations cached
#   once, and measure them the way the field does: L0, explained variance, MSE, the L2 ratio,
#   dead latents, the feature-density histogram and the next-token loss recovered when the SAE
#   is spliced into the model;
# - grade the dictionary against features the world *has*: for every label the world gives
#   (country, capital, name gender, sentiment, truth...), the best latent's detection score next
#   to three baselines (a raw residual dimension, an SAE on an untrained model, a linear probe);
# - read one latent through a dashboard of our own, see a latent absorb part of another, and load
#   the SAE that ships with the organism;
# - say what an SAE can't tell you.
#
# **Seed concepts:** sparse autoencoders (activation -> sparse code -> reconstruction; the L1
# penalty; an overcomplete dictionary); why they might work, and their limits (reconstruction
# error left unexplained, cherry-picked latents, cost, interference, no agreed metric); variants
# (gated, TopK, JumpReLU, transcoders); metrics (reconstruction, sparsity, interpretability,
# causal impact; detection and probing on a task with known truth, after Makelov et al.);
# enumerative safety (could a dictionary list everything a model knows?); automated
# interpretability.
#
# Chapter 04 ended with a sparse code computed by ISTA from a dictionary we were *given*. Here the
# dictionary is learned from activations alone. As in every chapter, write your code where it
# says `raise NotImplementedError`, then run the check cell below it. A skipped exercise falls back
# to the reference solution, so every later cell still runs.

# %%
from utils import check_exercise, setup, show_progress

env = setup()

# %% [markdown]
# ## 1. An SAE on a toy with exact truth
#
# A **sparse autoencoder** takes an activation `x` (a vector of `d_in` numbers), and writes it as
# a sparse, non-negative combination of `d_sae` learned directions, with `d_sae` usually larger
# than `d_in` (the dictionary is **overcomplete**):
#
# - **encoder**: `a = ReLU((x - b_dec) W_enc + b_enc)`, the code, shape `[d_sae]`, mostly zeros;
# - **decoder**: `x_hat = a W_dec + b_dec`; row `i` of `W_dec` is latent `i`'s direction, kept at
#   unit length so that a latent's size lives in its activation `a_i`, not in its direction;
# - **loss**: `||x - x_hat||^2 + l1 * sum_i a_i`, reconstruction plus an L1 penalty that pushes
#   most of the code to zero.
#
# Each unit of the code is called a **latent** (the field also says "feature", but we keep that
# word for what the *model* represents, which an SAE latent may or may not match). Subtracting
# `b_dec` before encoding centres the input on the same point the decoder adds back.
#
# The encoder is one step of what ISTA did in many (Chapter 04, Exercise 4.9): a linear map and a
# threshold. It is cheaper and cruder, and the training loss makes it as good as it can be.
#
# First a toy where we know the answer: `n` true feature directions in `d < n` dimensions (random
# unit vectors, the way a wide toy model of Chapter 04 stores sparse features), sparse feature
# values from Chapter 04's `generate_features`, and the activation `h = sum_i x_i f_i`. An SAE
# trained on `h` alone should find the `f_i` again.

# %% tags=["export"]
import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import utils.session
from utils.organism import sae as organism_sae
from utils.references.ch04_superposition import generate_features

TOY_FEATS, TOY_DIMS, TOY_PROBABILITY = 48, 16, 0.03


def toy_features(n_feats: int = TOY_FEATS, d: int = TOY_DIMS, seed: int = 0) -> Float[Tensor, "feats d"]:
    """`n_feats` random unit directions in `d` dimensions: the toy's true features."""
    directions = torch.randn(n_feats, d, generator=torch.Generator().manual_seed(seed))
    return directions / directions.norm(dim=-1, keepdim=True)


def toy_batch(batch_size: int, features: Float[Tensor, "feats d"], probability: float = TOY_PROBABILITY,
              generator: torch.Generator | None = None) -> tuple[Float[Tensor, "batch d"], Float[Tensor, "batch feats"]]:
    """Activations h = sum_i x_i f_i, and the sparse feature values x that made them."""
    x = generate_features(batch_size, torch.full((1, features.shape[0]), probability), generator)[:, 0]  # [batch, feats]
    return x @ features, x


def toy_batches(features: Float[Tensor, "feats d"], batch_size: int = 1024, probability: float = TOY_PROBABILITY,
                seed: int = 0):
    """An endless, seeded stream of toy activation batches (what a trainer reads)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield toy_batch(batch_size, features, probability, generator)[0]


# %% [markdown]
# ### Exercise 5.1: the sparse autoencoder (difficulty 1/3, ~15 min)
# Complete `encode` and `decode` of `SparseAutoencoder`. `encode(x)` takes `[batch, d_in]` and
# returns the code `[batch, d_sae]`: `ReLU((x - b_dec) @ W_enc + b_enc)` (when `self.k` is set, use
# `topk_activation(pre_activation, self.k)` instead of the ReLU: that is Exercise 5.5, so leave the
# line as it is). `decode(codes)` returns `codes @ W_dec + b_dec`, `[batch, d_in]`. The shapes
# follow SAELens: `W_enc` is `[d_in, d_sae]`, `W_dec` is `[d_sae, d_in]`, one row per latent.
#
# <details><summary>Hint 1</summary>
#
# `x - self.b_dec` broadcasts `[d_in]` over the batch; so does `+ self.b_enc` over `[batch, d_sae]`.
# </details>
# <details><summary>Hint 2</summary>
#
# `pre = (x - self.b_dec) @ self.W_enc + self.b_enc`, then `F.relu(pre)`;
# `codes @ self.W_dec + self.b_dec`.
# </details>

# %% tags=["export"]
class SparseAutoencoder(nn.Module):
    """x -> code a = ReLU((x - b_dec) W_enc + b_enc) (or TopK) -> x_hat = a W_dec + b_dec.

    Rows of W_dec (one per latent) start, and are kept by the trainer, at unit length. The
    encoder starts as the decoder's transpose, a common initialisation that avoids dead latents.
    """

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, seed: int = 0):
        super().__init__()
        directions = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed))
        directions = directions / directions.norm(dim=-1, keepdim=True)  # [d_sae, d_in]
        self.W_dec = nn.Parameter(directions.clone())
        self.W_enc = nn.Parameter(directions.T.clone())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.k = k

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        ### BEGIN SOLUTION
        pre_activation = (x - self.b_dec) @ self.W_enc + self.b_enc  # [batch, d_sae]
        if self.k is not None:
            return topk_activation(pre_activation, self.k)
        return F.relu(pre_activation)
        ### END SOLUTION

    def decode(self, codes: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        ### BEGIN SOLUTION
        return codes @ self.W_dec + self.b_dec
        ### END SOLUTION

    def forward(self, x: Float[Tensor, "batch d_in"]) -> tuple[Float[Tensor, "batch d_in"], Float[Tensor, "batch d_sae"]]:
        codes = self.encode(x)
        return self.decode(codes), codes


# %%
SparseAutoencoder = check_exercise("5.1", SparseAutoencoder)

# %% [markdown]
# ### Exercise 5.2: the loss (difficulty 1/3, ~10 min)
# Write `sae_loss(x, x_hat, codes, l1)`: the squared reconstruction error **summed over the
# `d_in` dimensions**, plus `l1` times the code **summed over the latents** (the code is
# non-negative, so that sum is its L1 norm), both **averaged over the batch**. Return one number
# (a 0-dimensional tensor that `backward()` can be called on).
#
# <details><summary>Hint 1</summary>
#
# `(x_hat - x).pow(2).sum(-1)` is one squared error per example, `[batch]`.
# </details>
# <details><summary>Hint 2</summary>
#
# `((x_hat - x).pow(2).sum(-1) + l1 * codes.sum(-1)).mean()`.
# </details>

# %% tags=["export"]
def sae_loss(x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"], codes: Float[Tensor, "batch d_sae"],
             l1: float) -> Float[Tensor, ""]:
    """Mean over the batch of ||x - x_hat||^2 + l1 * sum_i a_i."""
    ### BEGIN SOLUTION
    return ((x_hat - x).pow(2).sum(-1) + l1 * codes.sum(-1)).mean()
    ### END SOLUTION


# %%
sae_loss = check_exercise("5.2", sae_loss)

# %% [markdown]
# ### Exercise 5.3: the training loop (difficulty 2/3, ~20 min)
# Write `train_sae(sae, batches, steps, l1, lr=3e-3)`. `batches` is an iterator: `next(batches)`
# gives a `[batch, d_in]` tensor (the same interface as SAELens's `data_provider`). For each of the
# `steps` steps, take the next batch, compute `sae_loss` with `l1`, and update the SAE's parameters
# with an optimiser of your choice (Adam with `lr` works). After every update, **rescale each row
# of `W_dec` to unit length** (under `torch.no_grad()`): otherwise the SAE cheats the L1 penalty by
# shrinking codes and growing decoder rows. Return the list of the `steps` losses, as floats.
#
# The check trains your function on a small toy and tests the *result*, not the path: the decoder
# rows have unit length, the SAE reconstructs fresh data, the true features are recovered, a
# larger `l1` gives a sparser code, and the loss went down.
#
# <details><summary>Hint 1</summary>
#
# `optimizer = torch.optim.Adam(sae.parameters(), lr=lr)` once, before the loop; in the loop,
# `x = next(batches)`, `x_hat, codes = sae(x)`, the loss, `zero_grad`, `backward`, `step`.
# </details>
# <details><summary>Hint 2</summary>
#
# `with torch.no_grad(): sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)`; `losses.append(loss.item())`.
# </details>

# %% tags=["export"]
def train_sae(sae: SparseAutoencoder, batches, steps: int, l1: float, lr: float = 3e-3,
              progress_bar: bool = False) -> list[float]:
    """`steps` Adam steps on sae_loss, keeping W_dec's rows at unit length; returns the losses."""
    ### BEGIN SOLUTION
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = []
    for _ in utils.session.progress_bar(range(steps), show=progress_bar, desc="training the SAE"):
        x = next(batches)  # [batch, d_in]
        x_hat, codes = sae(x)
        loss = sae_loss(x, x_hat, codes, l1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        losses.append(loss.item())
    return losses
    ### END SOLUTION


# %%
train_sae = check_exercise("5.3", train_sae)

# %% [markdown]
# ### Exercise 5.4: how many true features did it find? (difficulty 1/3, ~10 min)
# Write `mean_max_cosine(learned, true)`: for each **true** feature (a row of `true`, `[n, d]`),
# the largest cosine similarity with any learned direction (a row of `learned`, `[d_sae, d]`),
# averaged over the true features. Return a float. It is 1 when every true feature has a latent
# pointing exactly its way. A latent pointing the opposite way does not count: its code is never
# negative, so it cannot write `+f`.
#
# <details><summary>Hint 1</summary>
#
# Normalise both sets of rows, then `true_unit @ learned_unit.T` is `[n, d_sae]`, every cosine.
# </details>
# <details><summary>Hint 2</summary>
#
# `.max(dim=1).values.mean().item()`: the best latent for each true feature, then the average.
# </details>

# %% tags=["export"]
def mean_max_cosine(learned: Float[Tensor, "d_sae d"], true: Float[Tensor, "feats d"]) -> float:
    """Mean over true features of the best cosine similarity with any learned direction."""
    ### BEGIN SOLUTION
    learned_unit = learned / learned.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    true_unit = true / true.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return (true_unit @ learned_unit.T).max(dim=1).values.mean().item()  # [feats, d_sae] -> [feats] -> mean
    ### END SOLUTION


# %%
mean_max_cosine = check_exercise("5.4", mean_max_cosine)

# %% [markdown]
# Now train. 48 true features in 16 dimensions, each on in 3% of examples; an SAE with 96
# latents (twice the number of true features; in a real model we never know the right number).
# We sweep the L1 coefficient and record four numbers for each SAE on fresh data: the recovery
# score, the mean number of active latents (**L0**), the fraction of variance explained, and the
# **L2 ratio** `|x_hat| / |x|`, which is 1 for a reconstruction of the right size.

# %% tags=["export"]
TOY_D_SAE, TOY_STEPS = 96, 1000
TOY_L1S = (0.003, 0.03, 0.3, 1.0)  # the L1 sweep of the table below
TOY_KS = (2, 4)  # and the TopK SAEs after Exercise 5.5


def toy_report(sae: SparseAutoencoder, features: Float[Tensor, "feats d"], seed: int = 123) -> dict[str, float]:
    """Recovery, L0, explained variance, L2 ratio and dead fraction of a toy SAE on fresh data."""
    h, _ = toy_batch(8192, features, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        h_hat, codes = sae(h)
    active = h.norm(dim=-1) > 0  # examples with at least one feature on
    return {
        "recovery": mean_max_cosine(sae.W_dec.detach(), features),
        "L0": (codes > 0).float().sum(-1).mean().item(),
        "explained variance": 1 - ((h - h_hat) ** 2).sum().item() / ((h - h.mean(0)) ** 2).sum().item(),
        "L2 ratio": (h_hat[active].norm(dim=-1) / h[active].norm(dim=-1)).mean().item(),
        "dead fraction": ((codes > 0).sum(0) == 0).float().mean().item(),
    }


def train_toy_sae(features: Float[Tensor, "feats d"], l1: float = 0.0, k: int | None = None,
                  steps: int = TOY_STEPS, seed: int = 0) -> SparseAutoencoder:
    """A toy SAE with TOY_D_SAE latents, trained with train_sae on the toy's activations."""
    sae = SparseAutoencoder(features.shape[1], TOY_D_SAE, k=k, seed=seed)
    train_sae(sae, toy_batches(features, batch_size=512, seed=seed), steps, l1)
    return sae


# %%
import pandas as pd

torch.set_num_threads(1)  # small matrices: one thread is fastest here
features = toy_features()
l1_saes = {l1: train_toy_sae(features, l1=l1) for l1 in utils.session.progress_bar(TOY_L1S, desc="L1 sweep")}
toy_table = pd.DataFrame({f"L1 {l1}": toy_report(sae, features) for l1, sae in l1_saes.items()}).T
toy_table.round(3)

# %% [markdown]
# Read the table from top to bottom. The true code has about 1.4 active features per example
# (48 x 0.03). A tiny L1 coefficient barely asks for sparsity: the SAE reconstructs well, and a
# latent points along nearly every true feature (recovery near 1 already: with twice as many
# latents as features, some latent lines up with each), but each input is spread over a couple
# of dozen latents, far from the true code. Raising the coefficient buys sparsity with the first
# failure mode of the L1 penalty:
#
# - **Shrinkage.** The penalty charges for every unit of activation, so the SAE pays less by
#   under-reporting: the L2 ratio falls steadily as the coefficient rises, and by the time L0
#   approaches the true one the reconstruction is much too short, and much of the variance is
#   lost, even though the directions are right.
# - **Dead latents**, the second failure mode, are latents whose pre-activation is negative on
#   every input: they get no gradient through the ReLU and never come back. Our initialisation
#   (the encoder starts as the decoder's transpose) keeps every latent alive in this sweep; with
#   less care, or a strong penalty early in training, many die. The usual fixes: warm up the L1
#   coefficient from zero, initialise the encoder as the decoder's transpose, and *resample* dead
#   latents onto inputs the SAE reconstructs badly.
#
# No L1 coefficient gives a code both as sparse as the truth and faithful. The cleanest fix
# changes the architecture.
#
# ### Exercise 5.5: TopK (difficulty 2/3, ~15 min)
# A **TopK** SAE drops the L1 penalty and keeps, for each input, only the `k` largest
# pre-activations (and of those, only the positive ones, through a ReLU); every other latent is
# set to exactly zero. Sparsity is then set by `k` instead of being bought by penalising size, so
# there is nothing to gain by shrinking. Write `topk_activation(pre_activation, k)`: same shape as
# its input, `[batch, d_sae]`, with the `k` largest entries of each row kept (ReLU'd) and zeros
# elsewhere.
#
# <details><summary>Hint 1</summary>
#
# `pre_activation.topk(k, dim=-1)` returns `values` and `indices` for each row.
# </details>
# <details><summary>Hint 2</summary>
#
# `torch.zeros_like(pre_activation).scatter(-1, top.indices, F.relu(top.values))`.
# </details>

# %% tags=["export"]
def topk_activation(pre_activation: Float[Tensor, "batch d_sae"], k: int) -> Float[Tensor, "batch d_sae"]:
    """Keep the k largest entries of each row (through a ReLU); zero the others."""
    ### BEGIN SOLUTION
    top = pre_activation.topk(k, dim=-1)
    return torch.zeros_like(pre_activation).scatter(-1, top.indices, F.relu(top.values))
    ### END SOLUTION


# %%
topk_activation = check_exercise("5.5", topk_activation)

# %%
topk_saes = {k: train_toy_sae(features, k=k) for k in utils.session.progress_bar(TOY_KS, desc="TopK")}
toy_table = pd.concat([toy_table, pd.DataFrame({f"TopK k={k}": toy_report(sae, features)
                                               for k, sae in topk_saes.items()}).T])
toy_table.round(3)

# %% [markdown]
# Compare TopK `k = 4` with the L1 SAE of about the same L0: TopK explains more of the variance,
# shrinks much less, and recovers the true features at least as well, with nothing to tune but
# `k`. (Its L2 ratio is not exactly 1: an example with more active features than `k` cannot be
# reconstructed in full.) TopK has its own failure, in the last column: a latent that is never
# among the top `k` gets no gradient and dies, here a fifth or more of them. SAELens adds an
# *auxiliary loss* that asks the dead latents to reconstruct what the live ones missed; we use
# it on the organism.
#
# ## 2. Training on the organism
#
# The organism's residual stream after block 1 (`blocks.1.hook_resid_post`, 256 dimensions) is
# where Chapter 02's probes first read truth and sentiment well. We train on it.
#
# Three habits every SAE trainer learns, sometimes the hard way:
#
# - **Cache activations once.** Training reads each activation a few times; a forward pass per
#   batch would cost more than the SAE. `utils.organism.sae.cache_activations` runs the model up
#   to the hook, stops there (`stop_at_layer`), and keeps the activations on the CPU.
# - **Enough tokens.** An SAE with 1024 latents needs on the order of a hundred thousand tokens or
#   more: with too few, a latent rarely sees the inputs it could specialise in, and many die. We
#   generate 131,072 tokens of world text here (the shipped SAE used twice as many), seeded, from
#   the same generator that made the organism's training data (with a seed of its own).
# - **Leave out the end-of-text token and each row's first position.** Their activations are
#   atypical (here larger than the rest at a row's first position and smaller at end-of-text; in
#   large models many times the typical norm) and mean "start of text", nothing else; an SAE would
#   spend latents and loss on them.

# %%
from utils import load_model, progress_bar

model = load_model()
HOOK = organism_sae.HOOK_NAME
TRAIN_TOKENS = 2 ** 17  # half of the shipped SAE's recipe, to keep this notebook quick
train_rows = organism_sae.world_rows(model.tokenizer, TRAIN_TOKENS, organism_sae.TRAIN_SEED)
train_acts, train_tokens = organism_sae.cache_activations(model, train_rows, HOOK)
held_rows, held_acts, held_tokens = organism_sae.held_out_data(model)
norms = train_acts.norm(dim=-1)
print(f"{len(train_acts):,} training activations of {HOOK} ({train_rows.numel():,} tokens before dropping "
      f"end-of-text and first positions), {len(held_acts):,} held out; mean norm {norms.mean():.0f}")

# %% [markdown]
# ### Our trainer, then SAELens's
# Our `train_sae` is all an SAE trainer needs. On the organism it needs one more line: the
# activations are far from zero on average (their mean has a norm of about half a typical
# activation), so we start `b_dec` at their mean instead of asking the optimiser to walk it there.
# A TopK SAE with 1024 latents and `k = 32`:

# %% tags=["export"]
def train_organism_topk(activations: Float[Tensor, "token d_model"], d_sae: int = 1024, k: int = 32,
                        steps: int = 200, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
                        progress_bar: bool = True) -> tuple[SparseAutoencoder, list[float]]:
    """Our TopK SAE on cached activations, b_dec started at their mean; returns it and its losses."""
    sae = SparseAutoencoder(activations.shape[1], d_sae, k=k, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(activations[:20_000].mean(0))
    batches = organism_sae.random_batches(activations, batch_size, seed)
    return sae, train_sae(sae, batches, steps, l1=0.0, lr=lr, progress_bar=progress_bar)


# %%
import time

from utils.plotting import lines

start = time.perf_counter()
our_sae, our_losses = train_organism_topk(train_acts, steps=200)
our_seconds = time.perf_counter() - start
lines({"training loss (squared error per token)": our_losses}, title=f"Our TopK SAE on {HOOK} ({our_seconds:.0f} s)",
      x_label="step", y_label="loss").update_yaxes(type="log")

# %% [markdown]
# SAELens's `SAETrainer` does the same job with more care (an auxiliary loss for dead latents, a
# learning-rate schedule, sparsity logging). It reads batches from any iterator, so the same
# cached activations feed it, and we train two architectures: TopK, and the standard ReLU SAE with
# an L1 penalty. `lr_end` must be set when training from an iterator (SAELens asserts it
# otherwise), and we start the decoder at unit norm and `b_dec` at the mean, as for our own SAE.
# `organism_sae.train_with_sae_lens` holds the settings.

# %%
ORGANISM_L1 = 30.0  # SAELens's L1 coefficient for these raw (unnormalised) activations
start = time.perf_counter()
lens_topk = organism_sae.train_with_sae_lens(train_acts, "topk", k=32, steps=200)
lens_topk_seconds = time.perf_counter() - start
lens_l1 = organism_sae.train_with_sae_lens(train_acts, "standard", l1_coefficient=ORGANISM_L1, steps=150)
print(f"SAELens's TopK SAE trained in {lens_topk_seconds:.0f} s, ours in {our_seconds:.0f} s")

# %% [markdown]
# ## 3. Metrics, as the field names them
#
# An SAE is judged on two axes at once: how **sparse** its code is and how **faithful** its
# reconstruction is, and then on whether its latents mean anything (Section 4).
#
# - **L0**: the mean number of active latents per token.
# - **MSE**: the squared reconstruction error per token (summed over dimensions, as in the loss).
# - **Explained variance**: `1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`, the share of the
#   activations' variance (around their mean) that the reconstruction accounts for.
# - **L2 ratio**: the mean of `|x_hat| / |x|`; below 1 means shrinkage.
# - **Dead fraction**: latents that never fire on a large sample. Latents that fire on more than
#   one token in ten are called **dense**; both are usually bad signs.
#
# ### Exercise 5.6: reconstruction and sparsity metrics (difficulty 2/3, ~15 min)
# Write `sae_metrics(x, x_hat, codes)`, returning a dict with the five floats above under the keys
# `"l0"`, `"mse"`, `"explained_variance"`, `"l2_ratio"`, `"dead_fraction"`, for a batch of
# activations `x`, `[batch, d_in]`, their reconstructions and their codes `[batch, d_sae]`. A
# latent is active where its code is above zero.
#
# <details><summary>Hint 1</summary>
#
# `(codes > 0).float().sum(-1).mean()` is L0; `((codes > 0).sum(0) == 0)` marks the dead latents.
# </details>
# <details><summary>Hint 2</summary>
#
# The variance to explain is measured around the mean: `((x - x.mean(0)) ** 2).sum()`, not
# `(x ** 2).sum()` (activations with a large mean would make any reconstruction look good).
# </details>

# %% tags=["export"]
def sae_metrics(x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"],
                codes: Float[Tensor, "batch d_sae"]) -> dict[str, float]:
    """L0, MSE per token, explained variance, L2 ratio and dead fraction of one batch."""
    ### BEGIN SOLUTION
    active = codes > 0  # [batch, d_sae]
    squared_error = (x - x_hat).pow(2).sum(-1)  # [batch]
    return {
        "l0": active.float().sum(-1).mean().item(),
        "mse": squared_error.mean().item(),
        "explained_variance": 1 - squared_error.sum().item() / (x - x.mean(0)).pow(2).sum().item(),
        "l2_ratio": (x_hat.norm(dim=-1) / x.norm(dim=-1)).mean().item(),
        "dead_fraction": (active.sum(0) == 0).float().mean().item(),
    }
    ### END SOLUTION


# %%
sae_metrics = check_exercise("5.6", sae_metrics)

# %% tags=["export"]
def organism_metrics(sae, activations: Float[Tensor, "token d_model"]) -> dict[str, float]:
    """sae_metrics on held-out activations, for our SAEs and SAELens's alike (both have encode/decode)."""
    with torch.no_grad():
        codes = sae.encode(activations)
        return sae_metrics(activations, sae.decode(codes), codes)


# %%
trained = {"ours, TopK": our_sae, "SAELens, TopK": lens_topk, "SAELens, L1": lens_l1}
metric_table = pd.DataFrame({name: organism_metrics(sae, held_acts) for name, sae in trained.items()}).T
metric_table.round(3)

# %% [markdown]
# The L1 SAE's L2 ratio, well below the TopK SAEs', is the shrinkage of Section 1 on a real
# model's activations. (The L1 SAE also has a much larger L0 here: its coefficient was not tuned
# to match, and matching L0 across architectures is the fair way to compare them.)
#
# ### Does the model still work with the SAE in it?
# Reconstruction error is measured in the SAE's own terms. What matters is whether the model
# still works when the reconstruction *replaces* the activation: **splice** the SAE in with a hook
# and measure the next-token loss. The **CE loss recovered** puts that loss on a scale from
# zero-ablation (the activation replaced by zeros: 0) to the clean model (1):
#
# `CE loss recovered = (L_zero - L_sae) / (L_zero - L_clean)`.
#
# ### Exercise 5.7: CE loss recovered (difficulty 2/3, ~20 min)
# Write `ce_loss_recovered(model, sae, tokens, keep, hook_name)`. `tokens` is `[batch, pos]`;
# `keep` (`[batch, pos]`, bool) marks the positions to intervene on (the chapter passes every
# position except end-of-text tokens and each row's first). Compute the mean next-token loss over
# all positions (`model.run_with_hooks(tokens, return_type="loss", fwd_hooks=...)`) three times:
# clean; with the activation at `hook_name` replaced by `sae.decode(sae.encode(activation))` where
# `keep` is True; and with it replaced by zeros there. Return the recovered fraction as a float.
#
# <details><summary>Hint 1</summary>
#
# A hook is `def hook(activation, hook): return new_activation`, with `activation` of shape
# `[batch, pos, d_model]`; `torch.where(keep[..., None], new, activation)` changes only the kept
# positions.
# </details>
# <details><summary>Hint 2</summary>
#
# `fwd_hooks=[(hook_name, splice)]`; `.item()` each loss; then `(zero - spliced) / (zero - clean)`.
# </details>

# %% tags=["export"]
def ce_loss_recovered(model, sae, tokens: Int[Tensor, "batch pos"], keep: Bool[Tensor, "batch pos"],
                      hook_name: str) -> float:
    """(L_zero - L_sae) / (L_zero - L_clean), intervening at `hook_name` where `keep` is True."""
    ### BEGIN SOLUTION
    mask = keep[..., None]  # [batch, pos, 1]

    def splice(activation, hook):
        return torch.where(mask, sae.decode(sae.encode(activation)), activation)

    def zero(activation, hook):
        return torch.where(mask, torch.zeros_like(activation), activation)

    with torch.no_grad():
        clean = model.run_with_hooks(tokens, return_type="loss").item()
        spliced = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, splice)]).item()
        zeroed = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, zero)]).item()
    return (zeroed - spliced) / (zeroed - clean)
    ### END SOLUTION


# %%
ce_loss_recovered = check_exercise("5.7", ce_loss_recovered)

# %%
eval_rows = held_rows[:16].to(model.cfg.device)
eval_keep = organism_sae.kept_positions(held_rows[:16], model.tokenizer.eos_token_id).to(model.cfg.device)
import copy

# the SAEs live on the CPU, next to the cached activations; a copy goes to the model's device
metric_table["ce_loss_recovered"] = [ce_loss_recovered(model, copy.deepcopy(sae).to(model.cfg.device), eval_rows,
                                                       eval_keep, HOOK) for sae in trained.values()]
metric_table.round(3)

# %% [markdown]
# Zeroing the residual stream after block 1 wipes out nearly everything the model computed; with
# either TopK SAE spliced in, nearly all of the loss comes back, and the L1 SAE, whose
# reconstructions are too short, gives back clearly less. A high number is necessary, not
# sufficient: the small part that *doesn't* come back is exactly the part of the model's
# computation the SAE does not explain, and no reading of the latents can say what it was.
#
# **A cross-check with SAELens.** SAELens's `sae_lens.evals.run_evals` computes these metrics from
# batches of its own `ActivationsStore`, running the model itself. The explained variance it
# reports comes from `sae_lens.evals.ExplainedVarianceCalculator`, which we can feed our cached
# activations directly. Its definition is the one above (one minus the mean squared error over
# the total variance, both summed over dimensions), and it should agree with yours to the digits:

# %%
from sae_lens.evals import ExplainedVarianceCalculator

for name, sae in trained.items():
    calculator = ExplainedVarianceCalculator()
    with torch.no_grad():
        calculator.add_batch(sae_output=sae.decode(sae.encode(held_acts)), hidden_acts=held_acts)
    print(f"{name}: explained variance by SAELens's calculator {calculator.compute():.4f}, "
          f"by sae_metrics {metric_table.loc[name, 'explained_variance']:.4f}")

# %% [markdown]
# ### The feature-density histogram
# How often each latent fires, on a log scale. With 32 of 1024 latents active per token, the
# average latent fires on about 3% of tokens; a healthy dictionary spreads around that, with no
# spike at the far left (dead latents) and few latents past the "dense" line (more than one token
# in ten), which are usually a bias direction in disguise. In large SAEs the bulk sits much
# further left, between one token in ten thousand and one in a hundred.

# %% tags=["export"]
def firing_frequencies(sae, activations: Float[Tensor, "token d_model"]) -> Float[Tensor, "d_sae"]:
    """The fraction of tokens on which each latent is active."""
    with torch.no_grad():
        return (sae.encode(activations) > 0).float().mean(0)


# %%
import plotly.graph_objects as go

figure = go.Figure()
for name, sae in trained.items():
    density = firing_frequencies(sae, held_acts)
    figure.add_trace(go.Histogram(x=torch.log10(density.clamp(min=1e-6)), name=name, opacity=0.6, nbinsx=60))
figure.add_vline(x=-1, line_dash="dot", annotation_text="dense")
figure.add_vline(x=math.log10(1 / len(held_acts)), line_dash="dot", annotation_text="one token")
figure.update_layout(barmode="overlay", title="Feature density on held-out text (log10 of the firing frequency)",
                     xaxis_title="log10 firing frequency (-6: never fired)", yaxis_title="latents", height=400)

# %% [markdown]
# ### The sparsity-fidelity frontier
# Sparsity and reconstruction trade against each other, so one SAE's numbers mean little alone:
# compare SAEs along the frontier. Our trainer, `k` from 8 to 128 (shorter runs of 100 steps, and
# the `k = 32` SAE from above):

# %%
FRONTIER_KS = (8, 32, 128)
frontier = {32: organism_metrics(our_sae, held_acts)}
for k in progress_bar([k for k in FRONTIER_KS if k != 32], desc="frontier"):
    sae_k, _ = train_organism_topk(train_acts, k=k, steps=100, progress_bar=False)
    frontier[k] = organism_metrics(sae_k, held_acts)
figure = go.Figure(go.Scatter(x=list(FRONTIER_KS), y=[frontier[k]["explained_variance"] for k in FRONTIER_KS],
                              mode="lines+markers+text", text=[f"k={k}" for k in FRONTIER_KS], textposition="top left"))
figure.update_layout(title="L0 vs explained variance (our TopK SAEs, 1024 latents)", xaxis_title="L0",
                     yaxis_title="explained variance", xaxis_type="log", height=380)

# %% [markdown]
# ### The shipped SAE
# An SAE ships with the organism (`utils/organism/sae/`, in SAELens's folder format: `cfg.json`
# and `sae_weights.safetensors`), trained by `python -m utils.organism.sae` with SAELens's TopK
# recipe above run for 400 steps, with a card (`README.md`) of its metrics on held-out text. The
# rest of this chapter reads it, and so can later chapters, without training anything:

# %%
shipped = organism_sae.load_organism_sae(device="cpu")
card = organism_sae.load_card_metrics()
print(f"{type(shipped).__name__}: {shipped.cfg.d_sae} latents, k = {shipped.cfg.k}; card: explained variance "
      f"{card['explained_variance']:.3f}, L0 {card['l0']:.0f}, dead {card['dead_fraction']:.1%}, "
      f"CE loss recovered {card['ce_loss_recovered']:.3f}")
print("measured here:", {name: round(value, 3) for name, value in organism_metrics(shipped, held_acts).items()})

# %% [markdown]
# ## 4. Recovery of known features
#
# Good metrics say the SAE reconstructs the activations with few latents. They do not say that a
# latent *means* anything. On a real model we would read latents and guess. In the organism's world
# we know what exists: every token's identity class (a country, a capital, a woman's name...) and,
# on the labelled prompts, facts about the whole sentence (is the statement true? is the review
# positive? which continent is the country on?). For each label we ask: **is there one latent
# that detects it?** Detection is scored by the AUROC: the probability that a random positive
# example gets a higher score than a random negative one (0.5 is chance, 1 perfect, ties count
# half).
#
# ### Exercise 5.8: AUROC of every column at once (difficulty 2/3, ~20 min)
# Write `column_aurocs(scores, labels)`: `scores` is `[n, k]` (one column per latent or
# dimension), `labels` is `[n]` bool. Return `[k]`: each column's AUROC for detecting
# `labels == True` by a high score. Use the rank formula: rank all `n` scores of a column
# (1 = smallest), giving **tied scores the average of their ranks**, then
# `AUROC = (sum of the positives' ranks - P (P + 1) / 2) / (P N)` for `P` positives and `N`
# negatives. Ties matter: an SAE latent is exactly zero on most tokens.
#
# <details><summary>Hint 1</summary>
#
# Sort each column: `ordered = scores.T.sort(dim=-1).values`, `[k, n]`. For a value `v`,
# `torch.searchsorted(ordered, scores.T, side="left")` counts the entries below it and
# `side="right"` those below or equal to it.
# </details>
# <details><summary>Hint 2</summary>
#
# The average rank of a value is `(below + below_or_equal + 1) / 2`. Sum it over the positive rows:
# `(ranks * labels).sum(-1)`.
# </details>

# %% tags=["export"]
def column_aurocs(scores: Float[Tensor, "n k"], labels: Bool[Tensor, "n"]) -> Float[Tensor, "k"]:
    """AUROC of each column of `scores` for detecting `labels` (ties count half), by average ranks."""
    ### BEGIN SOLUTION
    columns = scores.T.contiguous().double()  # [k, n]
    ordered = columns.sort(dim=-1).values
    below = torch.searchsorted(ordered, columns, side="left")  # [k, n]
    below_or_equal = torch.searchsorted(ordered, columns, side="right")
    ranks = (below + below_or_equal + 1) / 2  # average 1-based rank of each entry
    positives = labels.bool()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return ((ranks * positives).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    ### END SOLUTION


# %%
column_aurocs = check_exercise("5.8", column_aurocs)

# %% [markdown]
# ### The labels
# Token labels hold on the held-out world text: whether the token *is* a country name, a capital,
# a woman's name, and so on. Context labels hold on the held-out labelled prompts, read at each
# prompt's last token, as in Chapter 02: whether a statement is true, a review positive, the
# indirect object a woman; whether a fact prompt asks for a capital; whether its country is in
# Europe. Those are properties of the sentence, not of the token in front of us.
#
# A latent may detect a label by firing on it or by firing on everything else, so a column's
# score is `max(AUROC, 1 - AUROC)`. The column is chosen on one half of the data and scored on the
# other, so the best of 1024 latents is not lucky by selection.

# %% tags=["export"]
from utils.organism import world
from utils.references.ch02_probing import random_init_model, tokenize, train_probe

TOKEN_LABELS = {
    "country": set(world.COUNTRIES),
    "capital": {values[0] for values in world.COUNTRIES.values()},
    "continent": {values[2] for values in world.COUNTRIES.values()},
    "language": {values[1] for values in world.COUNTRIES.values()},
    "female name": set(world.FEMALE_NAMES),
    "male name": set(world.MALE_NAMES),
    "positive adjective": set(world.POSITIVE_ADJECTIVES),
    "negative adjective": set(world.NEGATIVE_ADJECTIVES),
    "day": set(world.DAYS),
    "colour": set(world.COLOURS),
}
# label: (family, how each prompt's labels give 0/1)
CONTEXT_LABELS = {
    "truth": ("truth", lambda labels: labels["truth"]),
    "sentiment": ("sentiment", lambda labels: labels["sentiment"]),
    "io is female": ("ioi", lambda labels: labels["io_gender"] == "female"),
    "asks for a capital": ("facts", lambda labels: labels["relation"] == "capital"),
    "country in Europe": ("facts", lambda labels: labels["continent"] == "Europe"),
}


DETECTION_TOKENS = 6000  # held-out tokens for the token labels: enough positives, and cheap to rank


def token_label_masks(tokens: Int[Tensor, "token"], tokenizer) -> dict[str, Bool[Tensor, "token"]]:
    """For each token label, which of `tokens` are one of its words (with their leading space)."""
    words = [tokenizer.decode([t]).strip() for t in range(len(tokenizer))]
    word_of = [words[t] for t in tokens.tolist()]
    return {name: torch.tensor([w in members for w in word_of]) for name, members in TOKEN_LABELS.items()}


def context_label_data(model, n: int = 600) -> dict[str, tuple[Float[Tensor, "batch d_model"], Bool[Tensor, "batch"]]]:
    """For each context label, the activation at `HOOK_NAME` at each prompt's last token, and the label.

    Held-out prompts, except for facts: only 30 fact prompts are held out, so those come from the
    training split (a detection score needs no unseen prompts: nothing is fitted to them)."""
    data = {}
    for name, (family, rule) in CONTEXT_LABELS.items():
        split = "train" if family == "facts" else "test"  # only 30 fact prompts are held out
        prompts = world.prompt_set(family, split, n=n, seed=0)
        tokens, last = tokenize(model, prompts.prompts)
        stored = []
        model.run_with_hooks(tokens.to(model.cfg.device), stop_at_layer=int(organism_sae.HOOK_NAME.split(".")[1]) + 1,
                             fwd_hooks=[(organism_sae.HOOK_NAME, lambda act, hook: stored.append(act.detach()))])
        x = stored[0][torch.arange(len(last)), last.to(stored[0].device)].cpu()  # [batch, d_model]
        labels = [{key: values[i] for key, values in prompts.labels.items()} for i in range(len(prompts))]
        data[name] = (x, torch.tensor([bool(rule(l)) for l in labels]))
    return data


def best_column_auroc(train_scores: Float[Tensor, "n k"], train_labels: Bool[Tensor, "n"],
                      test_scores: Float[Tensor, "m k"], test_labels: Bool[Tensor, "m"]) -> tuple[float, int]:
    """Choose the column with the best max(AUROC, 1 - AUROC) on train; return its score on test and its index."""
    train = column_aurocs(train_scores, train_labels)
    best = int((train - 0.5).abs().argmax())
    test = column_aurocs(test_scores[:, best:best + 1], test_labels)[0].item()
    return (test if train[best] >= 0.5 else 1 - test), best


def probe_auroc(train_x, train_labels, test_x, test_labels) -> float:
    """Held-out AUROC of a logistic-regression probe (Chapter 02's) on the raw activations."""
    probe = train_probe(train_x, train_labels.long())
    with torch.no_grad():
        return column_aurocs(probe(test_x)[:, None], test_labels)[0].item()


def halves(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded random split of range(n) into two halves."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2], order[n // 2:]


def detection_table(label_data: dict[str, tuple[Tensor, Tensor]], encoders: dict[str, object],
                    probe: bool = True) -> "pd.DataFrame":
    """For each label: held-out AUROC of the best raw dimension, of each encoder's best latent, and of a probe.

    `encoders` maps a column name to (sae, x_override): the SAE and, if not None, the activations
    it reads instead of the label data's (an SAE on another model sees that model's activations).
    """
    import pandas as pd

    rows = {}
    for label, (x, y) in label_data.items():
        train, test = halves(len(y))
        row = {"positives": int(y.sum()), "best residual dimension": best_column_auroc(x[train], y[train], x[test], y[test])[0]}
        for name, (sae, x_other) in encoders.items():
            source = x if x_other is None else x_other[label]
            with torch.no_grad():
                codes = sae.encode(source)
            row[name] = best_column_auroc(codes[train], y[train], codes[test], y[test])[0]
        if probe:
            row["linear probe"] = probe_auroc(x[train], y[train], x[test], y[test])
        rows[label] = row
    return pd.DataFrame(rows).T


# %% [markdown]
# The third baseline: the same SAE recipe on a model with the organism's architecture and random,
# untrained weights (Chapter 02's `random_init_model`). Whatever its latents detect comes from
# the token and position embeddings and the architecture, not from anything learned.

# %%
baseline = random_init_model(seed=0)
baseline_acts, _ = organism_sae.cache_activations(baseline, train_rows[:256], HOOK, progress=False)
baseline_sae, _ = train_organism_topk(baseline_acts, steps=100, progress_bar=False)
baseline_held, _ = organism_sae.cache_activations(baseline, held_rows[:64], HOOK, progress=False)  # the same first tokens

with torch.no_grad():
    token_masks = token_label_masks(held_tokens, model.tokenizer)
token_data = {name: (held_acts[:DETECTION_TOKENS], mask[:DETECTION_TOKENS]) for name, mask in token_masks.items()}
context_data = context_label_data(model)
baseline_context = context_label_data(baseline)
label_data = {**token_data, **context_data}
baseline_x = {**{name: baseline_held[:DETECTION_TOKENS] for name in token_data},
              **{name: x for name, (x, _) in baseline_context.items()}}

recovery = detection_table(label_data, {"SAE latent (organism)": (shipped, None),
                                        "SAE latent (untrained model)": (baseline_sae, baseline_x)})
recovery.round(3)

# %% [markdown]
# Read it row by row, comparing the SAE's column with its three neighbours:
#
# - **The untrained model's SAE is near chance on every token label.** In a random network a word
#   class ("a country") is not a direction at all; in the organism it is, because training made
#   it one. Whatever the organism's SAE finds beyond that baseline, the organism learned.
# - **Word classes are not single latents.** The best single latent for "country", "capital",
#   "name" or "language" scores well below the linear probe, which reads them almost perfectly. The
#   dictionary has spread each class over several latents, so no one latent covers the class. We
#   count them below.
# - **Where a latent beats a raw dimension:** the adjective classes and colours, whose best latent
#   is clearly above the best residual dimension. **Where it doesn't:** names, languages, and
#   whether a fact prompt's country is in Europe, which one raw dimension detects better than any
#   latent.
# - **Too easy to mean anything.** Sentiment at the end of a review is detected perfectly by one
#   raw residual dimension, and "asks for a capital" nearly so even by the untrained model's SAE
#   (the prompt's template gives it away). A "sentiment latent" proves nothing about the SAE.
# - **Not there yet.** Whether the indirect object of an IOI prompt is a woman is at chance for
#   everything, the probe included: after block 1 the organism has not yet worked out who the
#   indirect object is (Chapter 03 found that in block 3). An SAE cannot find what the model has
#   not computed at that point.
# - **The probe is the ceiling**: it uses every direction at once, a latent only one.
#
# These statements are re-measured in `tests/test_saes.py` with the shipped SAE, so a retrained
# organism or SAE that broke them would fail there.
#
# How many latents share one class? For each country, the latent that fires most strongly on its
# occurrences:

# %% tags=["export"]
def top_latent_per_word(codes: Float[Tensor, "token d_sae"], tokens: Int[Tensor, "token"],
                        word_ids: dict[str, int]) -> dict[str, int]:
    """For each word (that occurs), the latent with the largest mean activation on its occurrences."""
    return {word: int(codes[tokens == token_id].mean(0).argmax()) for word, token_id in word_ids.items()
            if (tokens == token_id).any()}


# %%
with torch.no_grad():
    held_codes = shipped.encode(held_acts)
country_ids = {c: model.tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in world.COUNTRIES}
per_country = top_latent_per_word(held_codes, held_tokens, country_ids)
print(f"{len(per_country)} countries, {len(set(per_country.values()))} distinct top latents")

# %% [markdown]
# A handful of latents carry the forty countries: one of them is the strongest on many countries,
# and the others are shared by small groups. No single latent fires on every country and on
# nothing else; the class lives in what those latents' decoder rows share, which is why a linear
# probe finds it at once and no single latent does.
#
# ## 5. Absorption: a hierarchy we wrote
#
# Take the best single latent for "the token is a country", the general one above. If it were a
# clean "country" feature it would fire on every country. A sparse code has an incentive not to:
# where a more specific latent already fires, the SAE saves L0 by *not* also firing the general
# latent, and writes the shared "country" direction into the specific latent's decoder row
# instead. This is
# **absorption**: the general latent has holes, members it misses for no reason a reader could
# guess.

# %% tags=["export"]
def member_recall(codes: Float[Tensor, "token d_sae"], tokens: Int[Tensor, "token"], latent: int,
                  word_ids: dict[str, int]) -> dict[str, float]:
    """For each word that occurs, the fraction of its occurrences on which `latent` fires."""
    fires = codes[:, latent] > 0
    return {word: fires[tokens == token_id].float().mean().item() for word, token_id in word_ids.items()
            if (tokens == token_id).any()}


# %%
_, country_latent = best_column_auroc(held_codes, token_masks["country"], held_codes, token_masks["country"])
recall = member_recall(held_codes, held_tokens, country_latent, country_ids)
order = sorted(recall, key=recall.get)
figure = go.Figure(go.Bar(x=order, y=[recall[c] for c in order],
                          marker_color=[f"hsl({60 * ['Europe', 'Asia', 'Africa', 'America', 'Oceania'].index(world.COUNTRIES[c][2])},55%,50%)"
                                        for c in order]))
figure.update_layout(title=f"How often latent {country_latent}, the best 'country' latent, fires on each country",
                     yaxis_title="fraction of occurrences", height=400)

# %%
direction = shipped.W_dec[country_latent].detach()
for country in order[:3]:
    absorber = per_country[country]
    cosine = F.cosine_similarity(direction, shipped.W_dec[absorber].detach(), dim=0).item()
    print(f"{country}: the country latent fires on {recall[country]:.0%} of occurrences; latent {absorber} is the "
          f"strongest there, and its decoder row has cosine {cosine:+.2f} with the country latent's")

# %% [markdown]
# The bars are not all at 1: the general latent misses some countries most of the time, and a
# more specific latent fires on them instead. The small cosines add a twist: those specific
# latents do not carry the country direction in their decoder rows, so for those tokens the
# "country" part of the activation is written by neither latent alone, and a reader of either
# would miss it. That is why "this latent means X" needs a recall check on
# every member of X: a label read off the top activations (all countries) can be right and still
# incomplete. **Splitting** is the same pressure seen across widths, as reported for large models:
# a narrow dictionary's single latent for a concept becomes several finer ones in a wider
# dictionary, so which "features" an SAE has depends on its width as much as on the model.
#
# ## 6. Reading one latent: a dashboard and an explanation
#
# A **dashboard** shows what one latent does: how its activation is distributed, the world
# contexts where it fires hardest, the tokens it pushes up and down (its decoder row read through
# the unembedding, `W_dec[i] @ W_U`: the direct effect of the latent on the logits, ignoring the
# later layers), and, what no dashboard on a real model can show, the world's labels it tracks.
#
# The label column also gives an **automated explanation**. The candidates are our word classes
# and "the token is *w*" for the word *w* most common among the latent's top activations; the
# candidate with the best AUROC on one half of the data is the explanation, and its AUROC on the
# other half is the explanation's score. Explaining with a language model works the same way,
# with a model proposing the candidates and another predicting activations from them.

# %% tags=["export"]
import html

import plotly.graph_objects as go


def explain_latent(codes: Float[Tensor, "token d_sae"], tokens: Int[Tensor, "token"],
                   masks: dict[str, Bool[Tensor, "token"]], latent: int, tokenizer,
                   top: int = 20) -> tuple[str, float, dict[str, float]]:
    """The best explanation of `latent` (chosen on one half), its AUROC on the other half, and every candidate's.

    Candidates: each word class in `masks`, and "the word w" for the commonest token among the
    latent's `top` activations on the first half.
    """
    train, test = halves(len(codes))
    values = codes[train, latent]
    commonest = int(tokens[train][values.topk(top).indices].mode().values)
    word = f"the word '{tokenizer.decode([commonest]).strip()}'"
    candidates = {**masks, word: tokens == commonest}
    scores = {name: column_aurocs(codes[train, latent:latent + 1], mask[train])[0].item()
              for name, mask in candidates.items()}
    best = max(scores, key=scores.get)
    return best, column_aurocs(codes[test, latent:latent + 1], candidates[best][test])[0].item(), scores


def top_contexts_html(codes: Float[Tensor, "token d_sae"], rows: Int[Tensor, "row pos"], keep: Bool[Tensor, "row pos"],
                      latent: int, tokenizer, n: int = 6, window: int = 8) -> str:
    """The `n` held-out contexts where `latent` fires most, each token shaded by the latent's activation."""
    where = keep.nonzero()  # [token, 2]: (row, position) of each code
    grid = torch.zeros(rows.shape)  # [row, pos]: the latent's activation at every kept position
    grid[keep] = codes[:, latent]
    peak = max(grid.max().item(), 1e-6)
    lines = []
    for index in codes[:, latent].topk(n).indices.tolist():
        row, position = where[index].tolist()
        pieces = []
        for p in range(max(0, position - window), min(rows.shape[1], position + 3)):
            word = html.escape(tokenizer.decode([int(rows[row, p])]))
            border = "border-bottom:2px solid #333;" if p == position else ""
            pieces.append(f'<span style="background:rgba(255,120,0,{grid[row, p] / peak:.2f});{border}">{word}</span>')
        lines.append(f"<div style='font-family:monospace'>{grid[row, position]:.1f}: {''.join(pieces)}</div>")
    return "".join(lines)


def latent_dashboard(sae, model, codes, tokens, rows, keep, masks, latent: int) -> tuple[go.Figure, str]:
    """A plotly figure (activation histogram, top and bottom logits, label AUROCs) and an HTML panel of top contexts."""
    from plotly.subplots import make_subplots

    direction = sae.W_dec[latent].detach()  # [d_model]
    logit_effect = direction @ model.W_U.detach().cpu()  # [d_vocab]
    top, bottom = logit_effect.topk(8), (-logit_effect).topk(8)
    words = lambda ids: [model.tokenizer.decode([i]) for i in ids.tolist()]
    label, score, scores = explain_latent(codes, tokens, masks, latent, model.tokenizer)
    figure = make_subplots(rows=1, cols=3, column_widths=[0.35, 0.3, 0.35], subplot_titles=[
        f"activation where active ({(codes[:, latent] > 0).float().mean():.2%} of tokens)",
        "direct effect on logits (W_dec @ W_U)", "explanations (AUROC)"])
    figure.add_trace(go.Histogram(x=codes[:, latent][codes[:, latent] > 0], nbinsx=40, showlegend=False), row=1, col=1)
    figure.add_trace(go.Bar(y=words(top.indices)[::-1] + words(bottom.indices),
                            x=top.values.tolist()[::-1] + (-bottom.values).tolist(), orientation="h",
                            showlegend=False), row=1, col=2)
    names = sorted(scores, key=scores.get)
    figure.add_trace(go.Bar(y=names, x=[scores[n] for n in names], orientation="h", showlegend=False), row=1, col=3)
    figure.update_layout(title=f"Latent {latent}: explained as {label!r}, held-out AUROC {score:.3f}", height=440)
    panel = f"<b>Top contexts of latent {latent}</b>" + top_contexts_html(codes, rows, keep, latent, model.tokenizer)
    return figure, panel


# %%
from IPython.display import HTML, display

held_keep = organism_sae.kept_positions(held_rows, model.tokenizer.eos_token_id)
dashboard, panel = latent_dashboard(shipped, model, held_codes, held_tokens, held_rows, held_keep, token_masks,
                                    country_latent)
display(HTML(panel))
dashboard

# %% [markdown]
# How much of the dictionary do these explanations cover? For a sample of live latents, the best
# explanation's held-out AUROC:

# %%
live = (held_codes > 0).any(0).nonzero()[:, 0]
sample = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(0))[:100]]
explanations = [explain_latent(held_codes, held_tokens, token_masks, int(i), model.tokenizer) for i in sample]
scores = torch.tensor([score for _, score, _ in explanations])
by_word = sum(name.startswith("the word") for name, _, _ in explanations)
print(f"of {len(sample)} live latents, {(scores > 0.9).float().mean():.0%} have an explanation with held-out AUROC "
      f"above 0.9 ({by_word} of the explanations are a single word); median AUROC {scores.median():.2f}")

# %% [markdown]
# For nearly every latent the best candidate is a single word, but only a minority of those
# explanations hold up on held-out text with an AUROC above 0.9: most latents fire on their word
# only in some contexts, or on several words, or on something our candidates don't name at all
# (a position in a template, a prediction of the next word). Each of those is a question our
# label table cannot answer, which is the state of automated interpretability on real models too,
# with less honest bookkeeping.
#
# ## 7. Variants and what they fix
#
# - **Gated SAEs** separate *whether* a latent fires (a gate, trained with the L1 penalty) from
#   *how much* (a magnitude path with no penalty), so the penalty no longer shrinks the size:
#   the fix for shrinkage that keeps an L1-style objective.
# - **TopK and BatchTopK** (above) set L0 directly. BatchTopK keeps the `k x batch` largest
#   activations of a whole batch, so busy tokens get more latents than quiet ones; at inference it
#   uses one learned threshold, which is why SAELens saves a trained BatchTopK SAE as a JumpReLU.
# - **JumpReLU** zeroes activations below a learned per-latent threshold and passes the rest
#   unchanged: a discontinuous jump, trained with a straight-through estimator, with an L0
#   penalty instead of L1. Another route to no shrinkage.
# - **Transcoders** read one activation and reconstruct *another*, usually an MLP's input and
#   output: a sparse replacement for the MLP itself. Because the replacement is sparse and linear
#   around its latents, the connections between latents in different layers can be read from the
#   weights (encoder of one times decoder of another), which is what circuit tracing on
#   replacement models builds on. An SAE on the residual stream explains what is *there*; a
#   transcoder explains what a layer *computes*.
#
# Section 3 compared two of these trained on the same activations: L1 (shrinkage, an L2 ratio
# below 1) and TopK (none). SAELens also trains `gated`, `jumprelu`, `batchtopk` and Matryoshka
# SAEs from the same `SAETrainer` call, swapping the config class.
#
# ## 8. On a real model
# A published SAE for GPT-2 small's residual stream, loaded through SAELens when the Hugging Face
# Hub is reachable. Offline this cell says so and moves on.

# %%
from utils.models import hub_is_reachable

if hub_is_reachable():
    from sae_lens import SAE

    gpt2_sae = SAE.from_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre", device="cpu")
    print(f"GPT-2 small SAE: {gpt2_sae.cfg.d_in} -> {gpt2_sae.cfg.d_sae} latents at {gpt2_sae.cfg.metadata.hook_name}")
else:
    print("skipped: the GPT-2 small SAE needs the Hugging Face Hub, which is not reachable (offline)")

# %% [markdown]
# ## What SAEs can't tell you
# - **The error term.** Whatever the SAE fails to reconstruct (here a few percent of the variance,
#   and of the loss) is unexplained by construction, and it is not random noise: it can hold
#   exactly the computation you care about. Every claim made through an SAE holds for the model
#   with the SAE spliced in, which is a slightly different model.
# - **Interpretability is not measured by the loss.** Explained variance and L0 say nothing about
#   whether a latent means one thing. Only a comparison with known features does, and on a real
#   model we have none; the baselines of Section 4 showed how easily a "feature" turns out to be a
#   raw dimension or an embedding lookup.
# - **Cherry-picking.** A dashboard of the best latent for a concept is a selection from 1024 (or
#   millions); choose on one half of the data and score on the other, and report the misses.
# - **Absorption and splitting** mean a latent's label can be right on its top activations and
#   wrong on its members, and the dictionary's "features" depend on its width.
# - **Enumerative safety.** Could a big enough dictionary list everything a model knows, so that
#   we could check it for anything dangerous? Even on a world we wrote ourselves, many of our
#   1024 latents have no good explanation in our label table; on a real model there is no list to check
#   against, the dictionary grows with the width without converging, and the error term is where
#   anything missed would hide.
# - **Cost.** SAEs on frontier models take a large fraction of the model's own training compute,
#   one layer at a time; on our organism they take a minute.
# - **Detection is not use.** A latent that detects truth is a reading of the activation, like a
#   probe (Chapter 02). Whether the model *uses* that direction is a question for interventions
#   (Chapters 06 and 07).
#
# **Your record so far:**

# %%
show_progress("05_saes")
