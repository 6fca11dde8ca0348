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
# **Time:** about 3.5 hours, of which about 2.5 for the exercises. **Exercises:** 8, each checked
# as soon as you run the cell after it. *Run All* takes under two and a half minutes on a 2-core
# laptop CPU (longer when the machine is busy): the chapter trains sixteen small SAEs (six on the
# toy, ten on the organism), each in seconds.
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
#   to three baselines (a raw residual dimension, an SAE on an untrained model, a linear probe),
#   and ask how *complete* a dictionary is: which of the world's words it finds, by width and by
#   frequency;
# - compare a JumpReLU SAE with TopK and L1 at matched L0;
# - read one latent through a dashboard of our own, see a latent absorb part of another, and load
#   the SAE that ships with the organism;
# - say what an SAE can't tell you.
#
# **Seed concepts:** sparse autoencoders (activation -> sparse code -> reconstruction; the L1
# penalty; an overcomplete dictionary); why they might work, and their limits (reconstruction
# error left unexplained, cherry-picked latents, cost, interference, no agreed metric); variants
# (gated, TopK, JumpReLU trained and compared, transcoders); feature completeness; metrics (reconstruction, sparsity, interpretability,
# causal impact of one latent; detection on a task with known truth, after Makelov et al. 2024);
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
# than `d_in` (the dictionary is **overcomplete**). The recipe below is that of Cunningham et al.
# 2023 and Bricken et al. 2023, the two papers that brought SAEs to language models at scale (after
# Sharkey, Braun and Millidge's 2022 interim report):
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
from utils.memo import memoized
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
# returns the code `[batch, d_sae]`. The stub has two places to fill: first compute
# `pre_activation = (x - b_dec) @ W_enc + b_enc`; then, after the two given lines, return
# `ReLU(pre_activation)`. The two given lines send a **TopK** SAE (one built with `k` set) to
# `topk_activation(pre_activation, self.k)`, which you write in Exercise 5.5: keep them as they are,
# and keep the name `pre_activation`, which they read. `decode(codes)` returns
# `codes @ W_dec + b_dec`, `[batch, d_in]`. The shapes follow SAELens: `W_enc` is `[d_in, d_sae]`,
# `W_dec` is `[d_sae, d_in]`, one row per latent. The check also builds TopK SAEs (`k = 2` and `3`)
# and tests that their codes go through those lines.
#
# <details><summary>Hint 1</summary>
#
# Both methods are one or two lines of matrix products and broadcast additions; no loop. Nothing
# here may be detached: the trainer of Exercise 5.3 differentiates through both.
# </details>
# <details><summary>Hint 2</summary>
#
# Shapes: `x - self.b_dec` is `[batch, d_in]` minus `[d_in]`; `@ self.W_enc` gives `[batch, d_sae]`;
# `+ self.b_enc` adds `[d_sae]` to every row. Decoding: `[batch, d_sae] @ [d_sae, d_in]`, plus `[d_in]`.
# </details>
# <details><summary>Hint 3</summary>
#
# `pre_activation = (x - self.b_dec) @ self.W_enc + self.b_enc`; after the given lines,
# `return F.relu(pre_activation)`; and `return codes @ self.W_dec + self.b_dec`.
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
        ### END SOLUTION
        if self.k is not None:  # a TopK SAE: topk_activation is Exercise 5.5; keep these two lines
            return topk_activation(pre_activation, self.k)
        ### BEGIN SOLUTION
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
# as a 0-dimensional tensor that `backward()` can be called on: the trainer of Exercise 5.3 does,
# so no `.item()` and no `torch.no_grad()` here. (This is the loss of Cunningham et al. 2023 and
# Bricken et al. 2023, with unit-length decoder rows. Later recipes, Templeton et al. 2024's and
# SAELens's standard SAE among them, drop the unit-length constraint and weight each latent's
# penalty by the length of its decoder row instead.)
#
# <details><summary>Hint 1</summary>
#
# Reduce over the feature dimension first (one number per example), then average over the batch.
# </details>
# <details><summary>Hint 2</summary>
#
# `(x_hat - x).pow(2).sum(-1)` is one squared error per example, `[batch]`; `codes.sum(-1)` one L1
# norm per example, `[batch]`.
# </details>
# <details><summary>Hint 3</summary>
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
# ### Exercise 5.3: the training loop (difficulty 2/3, ~25 min)
# Write `train_sae(sae, batches, steps, l1, lr=3e-3, progress_bar=False)`. `batches` is an
# iterator: `next(batches)` gives a `[batch, d_in]` tensor (the same interface as SAELens's
# `data_provider`). For each of the `steps` steps, take the next batch, compute `sae_loss` with
# `l1`, and update the SAE's parameters with an optimiser of your choice at learning rate `lr`
# (Adam works, and so do its relatives such as RAdam or Adamax; SGD, even with momentum, is far
# too slow at this rate). After every
# update, **rescale each row of `W_dec` to unit length** (under `torch.no_grad()`): otherwise the
# SAE cheats the L1 penalty by shrinking codes and growing decoder rows. Return the list of the
# `steps` losses as Python floats (`loss.item()`: a list of loss tensors would keep every step's
# computation graph alive). `progress_bar` says whether to show a bar: wrap the loop's range in
# `utils.session.progress_bar(range(steps), show=progress_bar)`, or ignore it; the chapter passes it.
#
# The check trains your function on a small toy and tests the *result*, not the path: the decoder
# rows have unit length, the SAE reconstructs fresh data, the true features are recovered, a
# larger `l1` gives a sparser code, and the loss went down.
#
# <details><summary>Hint 1</summary>
#
# The usual PyTorch loop: make the optimiser once, before the loop; every step does forward, loss,
# zero the gradients, backward, step, then the renormalisation.
# </details>
# <details><summary>Hint 2</summary>
#
# `optimizer = torch.optim.Adam(sae.parameters(), lr=lr)`; in the loop `x = next(batches)`,
# `x_hat, codes = sae(x)`, `loss = sae_loss(x, x_hat, codes, l1)`. `W_dec` is `[d_sae, d_in]`, so a
# row's length is `sae.W_dec.norm(dim=-1, keepdim=True)`, `[d_sae, 1]`.
# </details>
# <details><summary>Hint 3</summary>
#
# After `optimizer.step()`: `with torch.no_grad(): sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)`,
# then `losses.append(loss.item())`.
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
# All the cosines at once are one matrix product of unit-length rows.
# </details>
# <details><summary>Hint 2</summary>
#
# Normalise both sets of rows, then `true_unit @ learned_unit.T` is `[n, d_sae]`, every cosine; the
# best latent of each true feature is a maximum along `dim=1`.
# </details>
# <details><summary>Hint 3</summary>
#
# `(true_unit @ learned_unit.T).max(dim=1).values.mean().item()`.
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
# **L2 ratio** `|x_hat| / |x|`, which is 1 for a reconstruction of the right size. On the toy we
# report its median over examples: many toy examples hold one weak feature and have a tiny norm,
# where the decoder bias alone can outweigh `x`, and a mean of ratios is pulled around by them
# (above 1 for some seeds), while the median is stable.

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
        "L2 ratio": (h_hat[active].norm(dim=-1) / h[active].norm(dim=-1)).median().item(),
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
from IPython.display import display

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
#   (the encoder starts as the decoder's transpose) keeps nearly every latent alive in this sweep
#   (at most one or two of 96 die, depending on the seed); with
#   less care, or a strong penalty early in training, many die. The usual fixes: warm up the L1
#   coefficient from zero (Conerly et al. 2024, Anthropic's update), initialise the encoder as
#   the decoder's transpose (Gao et al. 2024), and *resample* dead latents onto inputs the SAE
#   reconstructs badly (Bricken et al. 2023).
#
# None of these four coefficients gives a code both as sparse as the truth and faithful. The
# cleanest fix changes the architecture.
#
# ### Exercise 5.5: TopK (difficulty 2/3, ~20 min)
# A **TopK** SAE drops the L1 penalty and keeps, for each input, only the `k` largest
# pre-activations (and of those, only the positive ones, through a ReLU); every other latent is
# set to exactly zero. Sparsity is then set by `k` instead of being bought by penalising size, so
# there is nothing to gain by shrinking. Write `topk_activation(pre_activation, k)`: same shape as
# its input, `[batch, d_sae]`, with the `k` largest entries of each row kept (ReLU'd) and zeros
# elsewhere. The chapter trains TopK SAEs through this function, so the gradient must flow to
# the kept entries: no `torch.no_grad()`, no detached copies. (TopK SAEs are Gao et al. 2024's;
# Makhzani and Frey's k-sparse autoencoders of 2013 are the older idea.)
#
# <details><summary>Hint 1</summary>
#
# Find the `k` largest entries of each row, then build a zero tensor with those entries put back.
# </details>
# <details><summary>Hint 2</summary>
#
# `top = pre_activation.topk(k, dim=-1)` gives `top.values` and `top.indices`, both `[batch, k]`;
# `scatter(-1, indices, values)` writes `[batch, k]` values into a `[batch, d_sae]` tensor.
# </details>
# <details><summary>Hint 3</summary>
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

# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

sweep = make_subplots(rows=1, cols=2, subplot_titles=["explained variance", "L2 ratio |x_hat| / |x|"],
                      horizontal_spacing=0.12)
for architecture, names in (("L1", [f"L1 {l1}" for l1 in TOY_L1S]), ("TopK", [f"TopK k={k}" for k in TOY_KS])):
    for column, metric in ((1, "explained variance"), (2, "L2 ratio")):
        sweep.add_trace(go.Scatter(x=toy_table.loc[names, "L0"], y=toy_table.loc[names, metric], mode="lines+markers",
                                   name=architecture, legendgroup=architecture, showlegend=column == 1,
                                   marker_color="#1f77b4" if architecture == "L1" else "#d62728"), row=1, col=column)
sweep.add_vline(x=TOY_FEATS * TOY_PROBABILITY, line_dash="dot", annotation_text="true L0")
sweep.update_xaxes(type="log", title_text="L0 (measured)")
sweep.update_layout(title="The toy sweep: at the same L0, TopK explains more and shrinks less", height=380)

# %% [markdown]
# Compare TopK `k = 4` with the L1 SAE of about the same L0 (`l1 = 0.3`): TopK explains more of the
# variance, shrinks less, and recovers the true features at least as well, with nothing to tune
# but `k`. Its L2 ratio is not exactly 1 either, and not for the reason one might guess (that an
# example with more than `k` active features cannot be rebuilt in full): `k = 2` and `k = 4` give
# nearly the same L2 ratio, although about 17% of examples have more than 2 features on and
# under 2% more than 4, and examples with a single active feature come out short too
# (`tests/test_saes.py` measures both). Where the shortfall comes from, a linear encoder reading
# 48 overlapping directions in 16 dimensions is our guess, is left for you to test. TopK has its
# own failure, in the last column: a latent that is never among the top `k` gets no gradient and
# dies, here about a fifth to a third of them. SAELens adds an
# *auxiliary loss* (AuxK, from Gao et al. 2024) that asks the dead latents to reconstruct what the
# live ones missed; we use it on the organism.
#
# ## 2. Training on the organism
#
# The organism's residual stream after block 1 (`blocks.1.hook_resid_post`, 256 dimensions) is
# halfway through its four blocks; Chapter 02's probes read truth and sentiment there (and
# sentiment already after block 0). We train on it.
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

# %% tags=["export"]
TRAIN_TOKENS = 2 ** 17  # half of the shipped SAE's recipe, to keep this notebook quick

# %%
from utils import load_model, progress_bar

model = load_model()
HOOK = organism_sae.HOOK_NAME
train_rows = organism_sae.world_rows(model.tokenizer, TRAIN_TOKENS, organism_sae.TRAIN_SEED)
train_acts, train_tokens = organism_sae.cache_activations(model, train_rows, HOOK)
held_rows, held_acts, held_tokens = organism_sae.held_out_data(model)
norms = train_acts.norm(dim=-1)
print(f"{len(train_acts):,} training activations of {HOOK}, {len(held_acts):,} held out; mean norm {norms.mean():.0f}\n"
      f"({train_rows.numel():,} training tokens before dropping end-of-text and first positions)")

# %% [markdown]
# ### Our trainer, then SAELens's
# Our `train_sae` is all an SAE trainer needs. On the organism it needs one more line: the
# activations are far from zero on average (their mean has a norm of about half a typical
# activation), so we start `b_dec` at their mean instead of asking the optimiser to walk it there.
# Every SAE of this section and the next is trained the same way, so that only the architecture
# differs: 1024 latents, 100 Adam steps of 1024 activations at learning rate 0.01, the same seed.
# First TopK with `k = 32`:

# %% tags=["export"]
ORGANISM_STEPS = 100  # every organism SAE of Sections 2-4: 100 steps of 1024 cached activations, lr 0.01
ORGANISM_L1 = 32.0  # the L1 coefficient that puts our L1 SAE's L0 near TopK's 32 (raw activations, norm about 165)


@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def train_organism_sae(activations: Float[Tensor, "token d_model"], k: int | None = 32, l1: float = 0.0,
                       d_sae: int = 1024, steps: int = ORGANISM_STEPS, batch_size: int = 1024, lr: float = 1e-2,
                       seed: int = 0, progress_bar: bool = True) -> tuple[SparseAutoencoder, list[float]]:
    """Our SAE (TopK when `k` is set, else ReLU with an L1 penalty `l1`) on cached activations,
    b_dec started at their mean; returns it and its losses."""
    sae = SparseAutoencoder(activations.shape[1], d_sae, k=k, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(activations[:20_000].mean(0))
    batches = organism_sae.random_batches(activations, batch_size, seed)
    return sae, train_sae(sae, batches, steps, l1=l1, lr=lr, progress_bar=progress_bar)


# %%
import time

from utils.plotting import lines

start = time.perf_counter()
our_sae, our_losses = train_organism_sae(train_acts, k=32)
our_seconds = time.perf_counter() - start
lines({"training loss (squared error per token)": our_losses}, title=f"Our TopK SAE on {HOOK} ({our_seconds:.0f} s)",
      x_label="step", y_label="loss").update_yaxes(type="log")

# %% [markdown]
# Then the L1 SAE of Section 1, with a coefficient chosen (by a sweep not shown) so that its L0
# lands near TopK's 32: comparing architectures is only fair at matched sparsity, since any SAE
# reconstructs better with more active latents.

# %%
our_l1_sae, _ = train_organism_sae(train_acts, k=None, l1=ORGANISM_L1)

# %% [markdown]
# SAELens's `SAETrainer` does the same job with more care (an auxiliary loss for dead latents, a
# learning-rate schedule, sparsity logging). It reads batches from any iterator, so the same
# cached activations feed it. `lr_end` must be set when training from an iterator (SAELens
# asserts it otherwise), and we start the decoder at unit norm and `b_dec` at the mean, as for
# our own SAE. `organism_sae.train_with_sae_lens` holds the settings, those of the shipped SAE
# (learning rate 0.001 decaying to 0.0001), so after the same 100 steps it is behind our faster
# rate: the point here is the library's interface, not a race. The same call trains its
# standard L1 SAE (`"standard"`), whose penalty weights each latent by the length of its decoder
# row (Templeton et al. 2024) instead of keeping rows at unit length: a different objective from
# Exercise 5.2's, and one that in 100 steps on these activations stays far from sparse (L0 in the
# hundreds at every coefficient we tried, from 30 to 200), so we compare the two architectures
# with our own trainer.

# %%
start = time.perf_counter()
lens_topk = organism_sae.train_with_sae_lens(train_acts, "topk", k=32, steps=ORGANISM_STEPS)
lens_topk_seconds = time.perf_counter() - start
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
# ### Exercise 5.6: reconstruction and sparsity metrics (difficulty 2/3, ~20 min)
# Write `sae_metrics(x, x_hat, codes)`, returning a dict with the five floats above under the keys
# `"l0"`, `"mse"`, `"explained_variance"`, `"l2_ratio"`, `"dead_fraction"`, for a batch of
# activations `x`, `[batch, d_in]`, their reconstructions and their codes `[batch, d_sae]`. A
# latent is active where its code is above zero.
#
# <details><summary>Hint 1</summary>
#
# Each metric is one line; the only traps are which dimension to reduce over, and where the
# variance is measured from.
# </details>
# <details><summary>Hint 2</summary>
#
# `(codes > 0).float().sum(-1).mean()` is L0; `((codes > 0).sum(0) == 0)` marks the dead latents;
# `(x - x_hat).pow(2).sum(-1)` is one squared error per token, `[batch]`.
# </details>
# <details><summary>Hint 3</summary>
#
# The variance to explain is measured around the mean: `((x - x.mean(0)) ** 2).sum()`, not
# `(x ** 2).sum()` (activations with a large mean would make any reconstruction look good); the
# L2 ratio is `(x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()`. Return `.item()` of each.
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
trained = {"ours, TopK": our_sae, "ours, L1": our_l1_sae, "SAELens, TopK": lens_topk}
metric_table = pd.DataFrame({name: organism_metrics(sae, held_acts) for name, sae in trained.items()}).T
metric_table.round(3)

# %% [markdown]
# Compare our two SAEs, trained alike at about the same L0: the L1 SAE's L2 ratio, well below
# TopK's, is the shrinkage of Section 1 on a real model's activations, and it explains much less
# of the variance at nearly the same L0.
#
# ### Does the model still work with the SAE in it?
# Reconstruction error is measured in the SAE's own terms. What matters is whether the model
# still works when the reconstruction *replaces* the activation: **splice** the SAE in with a hook
# and measure the next-token loss. The **CE loss recovered** puts that loss on a scale from
# zero-ablation (the activation replaced by zeros: 0) to the clean model (1):
#
# `CE loss recovered = (L_zero - L_sae) / (L_zero - L_clean)`.
#
# ### Exercise 5.7: CE loss recovered (difficulty 2/3, ~25 min)
# Write `ce_loss_recovered(model, sae, tokens, keep, hook_name)`. `tokens` is `[batch, pos]`;
# `keep` (`[batch, pos]`, bool) marks the positions to intervene on (the chapter passes every
# position except end-of-text tokens and each row's first). Compute the mean next-token loss over
# all positions (`model.run_with_hooks(tokens, return_type="loss", fwd_hooks=...)`) three times:
# clean; with the activation at `hook_name` replaced by `sae.decode(sae.encode(activation))` where
# `keep` is True; and with it replaced by zeros there. Return the recovered fraction as a float.
#
# <details><summary>Hint 1</summary>
#
# Three forward passes that differ only in their hook; write two small hook functions and compute
# three losses, without gradients.
# </details>
# <details><summary>Hint 2</summary>
#
# A hook is `def hook(activation, hook): return new_activation`, with `activation` of shape
# `[batch, pos, d_model]`; `torch.where(keep[..., None], new, activation)` changes only the kept
# positions (`keep[..., None]` is `[batch, pos, 1]` and broadcasts over `d_model`).
# </details>
# <details><summary>Hint 3</summary>
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
# reconstructions are too short, gives back clearly less (about five sixths). A high number is necessary, not
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

agreement = {}
for name, sae in trained.items():
    calculator = ExplainedVarianceCalculator()
    with torch.no_grad():
        calculator.add_batch(sae_output=sae.decode(sae.encode(held_acts)), hidden_acts=held_acts)
    agreement[name] = {"SAELens's calculator": float(calculator.compute()), "sae_metrics": metric_table.loc[name, "explained_variance"]}
pd.DataFrame(agreement).T.rename_axis(columns="explained variance by").round(4)

# %% [markdown]
# ### The feature-density histogram
# How often each latent fires, on a log scale. With 32 of 1024 latents active per token, the
# average latent fires on about 3% of tokens; a healthy dictionary spreads around that, with no
# spike at the far left (dead latents) and not many latents past the "dense" line (more than one
# token in ten), which are often a bias direction in disguise. The shipped SAE below has about 7%
# of its latents past that line: what they detect is a question for the dashboards of Section 6. In large SAEs the bulk sits much further left, between one token in ten thousand and
# one in a hundred.

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
# compare SAEs along the frontier, each point an SAE, placed at its *measured* L0. Both
# architectures, trained alike by our trainer (100 steps, the same data and seed): TopK with `k`
# from 8 to 128, and L1 at the matched coefficient and a smaller one. The two SAEs above are two
# of its points.

# %%
FRONTIER_KS = (8, 32, 128)
FRONTIER_L1S = (ORGANISM_L1 / 2, ORGANISM_L1)
frontier = {"TopK": {32: organism_metrics(our_sae, held_acts)}, "L1": {ORGANISM_L1: organism_metrics(our_l1_sae, held_acts)}}
for architecture, knob in progress_bar([("TopK", 8), ("TopK", 128), ("L1", FRONTIER_L1S[0])], desc="frontier"):
    sae_point, _ = (train_organism_sae(train_acts, k=knob, progress_bar=False) if architecture == "TopK"
                    else train_organism_sae(train_acts, k=None, l1=knob, progress_bar=False))
    frontier[architecture][knob] = organism_metrics(sae_point, held_acts)
figure = go.Figure()
for architecture, points in frontier.items():
    knobs = sorted(points, key=lambda knob: points[knob]["l0"])
    figure.add_trace(go.Scatter(x=[points[knob]["l0"] for knob in knobs],
                                y=[points[knob]["explained_variance"] for knob in knobs], mode="lines+markers+text",
                                name=architecture, textposition="bottom right",
                                text=[f"k={knob}" if architecture == "TopK" else f"l1={knob:g}" for knob in knobs]))
figure.update_layout(title="Sparsity vs fidelity: measured L0 and explained variance on held-out text",
                     xaxis_title="L0 (mean active latents per token, measured)", yaxis_title="explained variance",
                     xaxis_type="log", height=400)

# %% [markdown]
# Each architecture traces its own curve: more active latents, more variance explained. The
# answer to the architecture question is the gap between the curves: at every L0 we trained,
# TopK lies above L1, and TopK with `k = 32` explains more than the L1 SAE with more than twice
# its L0. (Published comparisons, Gao et al. 2024 among them, train far longer and find the same
# order.)
#
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
print(f"dense latents (firing on more than 10% of tokens): {(firing_frequencies(shipped, held_acts) > 0.1).float().mean():.1%}")

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
# ### Exercise 5.8: AUROC of every column at once (difficulty 2/3, ~30 min)
# Write `column_aurocs(scores, labels)`: `scores` is `[n, k]` (one column per latent or
# dimension), `labels` is `[n]` bool. Return `[k]`: each column's AUROC for detecting
# `labels == True` by a high score. Use the rank formula: rank all `n` scores of a column
# (1 = smallest), giving **tied scores the average of their ranks**, then
# `AUROC = (sum of the positives' ranks - P (P + 1) / 2) / (P N)` for `P` positives and `N`
# negatives. Ties matter: an SAE latent is exactly zero on most tokens.
#
# <details><summary>Hint 1</summary>
#
# The only hard part is the average rank of tied values. For each entry, count the entries of its
# column strictly below it and those below or equal to it: the average rank follows from the two.
# </details>
# <details><summary>Hint 2</summary>
#
# Sort each column: `ordered = scores.T.sort(dim=-1).values`, `[k, n]`. For a value `v`,
# `torch.searchsorted(ordered, scores.T.contiguous(), side="left")` counts the entries below it and
# `side="right"` those below or equal to it.
# </details>
# <details><summary>Hint 3</summary>
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


@memoized
def context_label_data(model, n: int = 600, seed: int = 0) -> dict[str, tuple[Float[Tensor, "batch d_model"], Bool[Tensor, "batch"]]]:
    """For each context label, the activation at `HOOK_NAME` at each prompt's last token, and the label.

    Held-out prompts, except for facts: only 30 fact prompts are held out, so those come from the
    training split (a detection score needs no unseen prompts: nothing is fitted to them)."""
    data = {}
    for name, (family, rule) in CONTEXT_LABELS.items():
        split = "train" if family == "facts" else "test"  # only 30 fact prompts are held out
        prompts = world.prompt_set(family, split, n=n, seed=seed)
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


def word_type_halves(token_ids: Int[Tensor, "token"], labels: Bool[Tensor, "token"], seed: int = 0
                     ) -> tuple[Tensor, Tensor]:
    """A seeded split of the tokens by word type: half of the label's word types (and half of the
    other word types) go to the second half with every one of their occurrences, so no word of the
    second half occurs in the first."""
    generator = torch.Generator().manual_seed(seed)
    held_types = []
    for types in (token_ids[labels].unique(), token_ids[~labels & ~torch.isin(token_ids, token_ids[labels])].unique()):
        order = types[torch.randperm(len(types), generator=generator)]
        held_types.append(order[: len(order) // 2])
    second = torch.isin(token_ids, torch.cat(held_types))
    return torch.where(~second)[0], torch.where(second)[0]


@memoized
def detection_table(label_data: dict[str, tuple[Tensor, Tensor]], encoders: dict[str, object],
                    probe: bool = True, seed: int = 0) -> "pd.DataFrame":
    """For each label: held-out AUROC of the best raw dimension, of each encoder's best latent, and of a probe.

    `encoders` maps a column name to (sae, x_override): the SAE and, if not None, the activations
    it reads instead of the label data's (an SAE on another model sees that model's activations).
    `seed` chooses the split into the half that selects each column and the half that scores it.
    """
    import pandas as pd

    rows = {}
    for label, (x, y) in utils.session.progress_bar(label_data.items(), total=len(label_data), desc="labels"):
        train, test = halves(len(y), seed)
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
# The third baseline: an SAE on a model with the organism's architecture and random, untrained
# weights (Chapter 02's `random_init_model`). Whatever its latents detect comes from the token and
# position embeddings and the architecture, not from anything learned. It is trained like
# `our_sae` of Section 2 (our trainer, `k = 32`, the same 100 steps of 1024 activations at the
# same rate), with one difference, to save the time of a second large cache: its activations
# come from the first quarter of the same training rows, so it sees each token about three times.
# The fair comparison is with our SAE's column; the shipped SAE had four times the steps and
# twice the text.

# %%
baseline = random_init_model(seed=0)
baseline_acts, _ = organism_sae.cache_activations(baseline, train_rows[:256], HOOK, progress=False)
baseline_sae, _ = train_organism_sae(baseline_acts, k=32)
baseline_held, _ = organism_sae.cache_activations(baseline, held_rows[:64], HOOK, progress=False)  # the same first tokens

with torch.no_grad():
    token_masks = token_label_masks(held_tokens, model.tokenizer)
token_data = {name: (held_acts[:DETECTION_TOKENS], mask[:DETECTION_TOKENS]) for name, mask in token_masks.items()}
context_data = context_label_data(model)
baseline_context = context_label_data(baseline)
label_data = {**token_data, **context_data}
baseline_x = {**{name: baseline_held[:DETECTION_TOKENS] for name in token_data},
              **{name: x for name, (x, _) in baseline_context.items()}}

untrained_probe = {}
detection_ids = held_tokens[:DETECTION_TOKENS]
for name in ("country", "capital", "day"):
    y = token_masks[name][:DETECTION_TOKENS]
    splits = {"token split": halves(DETECTION_TOKENS), "word-type split": word_type_halves(detection_ids, y)}
    untrained_probe[name] = {(split, model_name): probe_auroc(x[first], y[first], x[second], y[second])
                             for split, (first, second) in splits.items()
                             for model_name, x in (("untrained model", baseline_held[:DETECTION_TOKENS]),
                                                   ("organism", held_acts[:DETECTION_TOKENS]))}
display(pd.DataFrame(untrained_probe).T.rename_axis(index="linear probe, held-out AUROC").round(3))

# %%
recovery = detection_table(label_data, {"SAE latent (shipped)": (shipped, None),
                                        "SAE latent (ours, organism)": (our_sae, None),
                                        "SAE latent (ours, untrained model)": (baseline_sae, baseline_x)})
recovery.round(3)

# %%
figure = go.Figure([go.Bar(name=column, x=recovery.index, y=recovery[column])
                    for column in recovery.columns if column != "positives"])
figure.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
figure.update_layout(barmode="group", title="Held-out AUROC of the best single column, and of a probe, per label",
                     yaxis_title="held-out AUROC", yaxis_range=[0.4, 1.02], height=440)

# %% [markdown]
# Read it row by row, comparing the shipped SAE's column with its neighbours:
#
# - **The untrained model's SAE is close to chance on every token label** (0.5 to about 0.7), and
#   our own SAE on the organism, trained the same way, is well above it on every one. That is not
#   because a random network has no direction for a word class: it has. A linear probe on the
#   untrained model's residual stream (the small table above this one) reads "country" at about
#   0.88 and days at about 0.99 on the token split, because a random embedding already places a few
#   dozen words where a plane can cut them off from the rest. The two splits ask different
#   questions. The **token split** (the one this table uses) cuts the tokens at random, so every
#   word of the held-out half (every country, every day) also occurs in the training half: it asks
#   whether a probe can *recognise words it was shown*. The **word-type split** holds out whole
#   words, half of the countries (and half of the other words) with every one of their
#   occurrences: it asks whether the probe has found the *class*, so that it recognises countries
#   it never saw (a control in the spirit of Hewitt and Liang's control tasks, 2019). On that split
#   the untrained model's probes for country, capital and day fall to near chance (0.3 to 0.55
#   measured; the tests hold country within 0.2 of chance and day under 0.7), while the organism's
#   stay near 1.0: a random network separates words it was shown, only the trained one has a
#   direction for "country" itself. What training adds, then, is a class the
#   probe generalises to and a sparse code in which single latents line up with the classes.
#   Whatever the organism's SAE finds beyond that baseline, the organism learned.
# - **Word classes are not single latents.** The best single latent for "country", "capital",
#   "name" or "language" scores well below the linear probe, which reads them almost perfectly. No
#   one latent covers the class; we count the latents that share "country" below.
# - **The best of 1024 latents is no better than the best of 256 raw dimensions on most labels.**
#   It is clearly above for the two adjective classes and for colours; about equal for country,
#   continent, truth, sentiment and "asks for a capital"; and *below* it for capital, language,
#   both name classes, days, and whether a fact prompt's country is in Europe. In a chapter that
#   warns against cherry-picking, that is the honest reading. Why would a raw dimension do so well?
#   Perhaps the organism's residual stream is close to a privileged basis for some word classes
#   (the best single coordinate detects days better than any latent); that is a question the
#   table raises, not one it answers.
# - **Too easy to mean anything.** Sentiment at the end of a review is detected perfectly by one
#   raw residual dimension, and "asks for a capital" nearly so; even the untrained model's SAE is
#   well above chance on the latter (the prompt's template gives it away). A "sentiment latent"
#   proves nothing about the SAE.
# - **Not there yet.** Whether the indirect object of an IOI prompt is a woman is near chance for
#   everything, the probe included: after block 1 the organism has not yet worked out who the
#   indirect object is (Chapter 03 found that in block 3). An SAE cannot find what the model has
#   not computed at that point.
# - **The probe is the ceiling**, give or take a few hundredths (a latent beat it by up to 0.05 on
#   one label, on one of the five splits we tried): it uses every direction at once, a latent only
#   one (on this token split, where it may also be recognising seen words).
#
# These statements are re-measured in `tests/test_saes.py` with the shipped SAE, so a retrained
# organism or SAE that broke them would fail there.
#
# ### Detection is not use: zero the best sentiment latent
# A latent that detects a label perfectly may still matter little to what the model does next.
# Test it by intervention: splice the shipped SAE into the model at its hook, zero one latent, and
# measure each review's logit difference (the right word, " loved" or " hated", minus the other)
# at its last token. One detail makes the test clean: add the SAE's **error term** back
# (`x - x_hat`, what the SAE fails to reconstruct), as SAELens's `use_error_term` and Marks et al.
# 2024 do. Then the spliced model with no latent touched *is* the original model, and any change
# comes from the latent alone, not from the reconstruction's own error.

# %% tags=["export"]
def logit_differences_with_latents_zeroed(model, sae, prompts, latents: list[int] | None, error_term: bool = True,
                                          hook_name: str = organism_sae.HOOK_NAME) -> Float[Tensor, "batch"]:
    """Each prompt's logit difference (its correct answer minus its wrong one) at its last token, with
    the SAE spliced in at `hook_name` and `latents` zeroed; `error_term` adds x - x_hat back.
    `latents=None` runs the clean model, with nothing spliced in."""
    tokens, last = tokenize(model, prompts.prompts)
    correct = torch.tensor([model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in prompts.correct])
    wrong = torch.tensor([model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in prompts.wrong])

    def splice(activation, hook):
        codes = sae.encode(activation)  # [batch, pos, d_sae]
        error = activation - sae.decode(codes)  # what the SAE does not reconstruct
        edited = codes.clone()
        edited[..., latents] = 0.0
        return sae.decode(edited) + (error if error_term else 0.0)

    hooks = [] if latents is None else [(hook_name, splice)]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)  # [batch, pos, d_vocab]
    final = logits[torch.arange(len(last)), last].cpu()  # [batch, d_vocab]
    return final.gather(-1, correct[:, None])[:, 0] - final.gather(-1, wrong[:, None])[:, 0]


# %%
sentiment_x, sentiment_y = context_data["sentiment"]
with torch.no_grad():
    sentiment_codes = shipped.encode(sentiment_x)  # [prompt, d_sae]
first_half, second_half = halves(len(sentiment_y))
_, sentiment_latent = best_column_auroc(sentiment_codes[first_half], sentiment_y[first_half],
                                        sentiment_codes[second_half], sentiment_y[second_half])
train_aurocs = column_aurocs(sentiment_codes[first_half], sentiment_y[first_half])
top_sentiment = (train_aurocs - 0.5).abs().topk(5).indices.tolist()
random_latents = torch.randperm(shipped.cfg.d_sae, generator=torch.Generator().manual_seed(0))[:5].tolist()
reviews = world.prompt_set("sentiment", "test", n=200, seed=1)
positive = torch.tensor(reviews.labels["sentiment"]).bool()
interventions = {  # name: (latents zeroed, error term added back)
    "clean model": (None, True),
    "SAE spliced in, no error term": ([], False),
    "SAE spliced in, with its error term": ([], True),
    f"best sentiment latent {sentiment_latent} zeroed": ([sentiment_latent], True),
    "the five best sentiment latents zeroed": (top_sentiment, True),
    "five random latents zeroed": (random_latents, True),
    "every latent zeroed, only the error term (and b_dec) left": (list(range(shipped.cfg.d_sae)), True),
}
control = {}
for name, (latents, error_term) in interventions.items():
    differences = logit_differences_with_latents_zeroed(model, shipped, reviews, latents, error_term)
    control[name] = {"positive reviews": differences[positive].mean().item(),
                     "negative reviews": differences[~positive].mean().item(),
                     "accuracy": (differences > 0).float().mean().item()}
print(f"latent {sentiment_latent}: held-out AUROC {recovery.loc['sentiment', 'SAE latent (shipped)']:.3f}; fires on "
      f"{(sentiment_codes[sentiment_y, sentiment_latent] > 0).float().mean():.0%} of positive reviews' last tokens and "
      f"{(sentiment_codes[~sentiment_y, sentiment_latent] > 0).float().mean():.0%} of negative ones")
pd.DataFrame(control).T.round(3)

# %% [markdown]
# The best sentiment latent detects the review's sentiment perfectly, yet zeroing it takes only a
# few percent off the positive reviews' logit difference and flips no answer. Zeroing the five
# best sentiment latents takes off about a quarter and still flips none; five random latents
# change nothing. The model's answer does not run through one latent: it is carried by many
# latents at once. Note the second row, too: splicing the SAE in
# *without* its error term moves the logit difference by about a logit, more than zeroing the
# best latent does, so an intervention on a spliced model without its error term measures the
# SAE's error as much as the latent.
#
# The last row asks the opposite question: what does the error term carry on its own? Zero every
# latent and keep only `x - x_hat` (and `b_dec`): the logit difference falls to about zero and the
# accuracy to chance. None of the model's sentiment answer runs through the error term. Yet a
# probe trained on the error term reads the sentiment of a review perfectly:

# %%
with torch.no_grad():
    sentiment_error = sentiment_x - shipped.decode(shipped.encode(sentiment_x))  # [prompt, d_model]
print(f"a probe on the error term, held-out AUROC for sentiment: "
      f"{probe_auroc(sentiment_error[first_half], sentiment_y[first_half], sentiment_error[second_half], sentiment_y[second_half]):.3f}")

# %% [markdown]
# Decodable is not used, once more (Chapter 02): the error term holds a trace of the sentiment that
# a probe can read, and the model's answer does not depend on it.
#
# Makelov et al. 2024 go a step further, to **sparse control**: edit a few latents so that an
# attribute of the prompt changes (which name is the indirect object) and check that the
# model's answer follows. This chapter does not attempt it; Chapter 07 steers the organism with
# the decoder row of this same sentiment latent, and measures what else moves.
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
# About a dozen latents carry the forty countries: one of them is the strongest on about a
# quarter of them, and the others are shared by small groups. No single latent fires on every country and on
# nothing else; the class lives in what those latents' decoder rows share, which is why a linear
# probe finds it at once and no single latent does.
#
# ## 5. Holes in a general latent, and a test for absorption
#
# Take the best single latent for "the token is a country", the general one above. Check its
# density first (the cell below prints it, and so does the dashboard of Section 6): it fires on about
# a third of all tokens, past the dense line of Section 3, and on about four in five country tokens,
# but only about a fifth of its firings are on countries (the rest are punctuation, prepositions,
# names, continents...). So it is not a country feature: it is a dense latent that leans towards
# countries, and its holes may say little. If it were a clean "country" feature it would
# fire on every country. A sparse code has an incentive not to:
# where a more specific latent already fires, the SAE saves L0 by *not* also firing the general
# latent, and writes the shared "country" direction into the specific latent's decoder row
# instead. Chanin et al. 2024 call this **absorption**: the general latent has holes, and the
# latent that fills each hole carries the general feature's direction.

# %% tags=["export"]
def member_recall(codes: Float[Tensor, "token d_sae"], tokens: Int[Tensor, "token"], latent: int,
                  word_ids: dict[str, int]) -> dict[str, float]:
    """For each word that occurs, the fraction of its occurrences on which `latent` fires."""
    fires = codes[:, latent] > 0
    return {word: fires[tokens == token_id].float().mean().item() for word, token_id in word_ids.items()
            if (tokens == token_id).any()}


# %%
_, country_latent = best_column_auroc(held_codes, token_masks["country"], held_codes, token_masks["country"])
country_fires = held_codes[:, country_latent] > 0
print(f"latent {country_latent} fires on {country_fires.float().mean():.0%} of all held-out tokens, on "
      f"{country_fires[token_masks['country']].float().mean():.0%} of country tokens; "
      f"{token_masks['country'][country_fires].float().mean():.0%} of its firings are countries")
recall = member_recall(held_codes, held_tokens, country_latent, country_ids)
order = sorted(recall, key=recall.get)
figure = go.Figure()
for continent in ("Europe", "Asia", "Africa", "America", "Oceania"):
    members = [c for c in order if world.COUNTRIES[c][2] == continent]
    figure.add_trace(go.Bar(x=members, y=[recall[c] for c in members], name=continent))
figure.update_layout(title=f"How often latent {country_latent}, the best 'country' latent, fires on each country",
                     xaxis_title="country (coloured by continent)", yaxis_title="fraction of occurrences", height=420,
                     xaxis={"categoryorder": "array", "categoryarray": order})

# %% [markdown]
# The bars are not all at 1: the general latent misses some countries most of the time, and a
# more specific latent fires on them instead. Is that absorption? Chanin et al. test it against
# the *feature's* direction, found independently of the SAE: a linear probe. We train Chapter 02's
# probe for "the token is a country" on half of the held-out tokens, then ask, on each country's
# occurrences, how much of the reconstruction's projection onto the probe direction each latent
# writes (its activation times its decoder row, projected, over the projection of the whole
# reconstruction without `b_dec`). An absorber would have a decoder row close to the probe
# direction and write a large share of it where the general latent is silent.

# %% tags=["export"]
def probe_share(codes: Float[Tensor, "token d_sae"], tokens: Int[Tensor, "token"], W_dec: Float[Tensor, "d_sae d_model"],
                direction: Float[Tensor, "d_model"], latent: int, token_id: int) -> float:
    """On the occurrences of `token_id`, the share of the reconstruction's projection onto `direction`
    (b_dec left out) that `latent` writes."""
    where = tokens == token_id
    projections = W_dec.detach() @ direction  # [d_sae]: what one unit of each latent adds along the direction
    total = (codes[where] @ projections).sum()  # every latent's contribution, summed over the occurrences
    return (codes[where, latent] * projections[latent]).sum().item() / total.item()


# %%
probe_train, probe_test = halves(len(held_acts))
country_probe = train_probe(held_acts[probe_train], token_masks["country"][probe_train].long())
probe_direction = country_probe.direction  # [d_model], unit length
probe_cosines = F.normalize(shipped.W_dec.detach(), dim=-1) @ probe_direction  # [d_sae]
with torch.no_grad():
    probe_scores = country_probe(held_acts[probe_test])  # [token]
probe_auroc_held = column_aurocs(probe_scores[:, None], token_masks["country"][probe_test])[0].item()
print(f"the probe's held-out AUROC {probe_auroc_held:.4f}\ndecoder cosine with the probe direction: latent "
      f"{country_latent} {probe_cosines[country_latent]:+.2f}, the largest of all 1024 latents {probe_cosines.max():+.2f}")
absorption = pd.DataFrame([{
    "country": country, f"latent {country_latent} fires": recall[country],
    "strongest latent there": per_country[country],
    "its cosine with the probe": probe_cosines[per_country[country]].item(),
    "its share of the probe projection": probe_share(held_codes, held_tokens, shipped.W_dec, probe_direction,
                                                     per_country[country], country_ids[country]),
    f"latent {country_latent}'s share": probe_share(held_codes, held_tokens, shipped.W_dec, probe_direction,
                                                     country_latent, country_ids[country]),
} for country in order[:3] + order[-3:]]).set_index("country")
absorption.round(2)

# %% [markdown]
# The first three rows are the countries the general latent misses most, the last three those it
# never misses. By Chanin et al.'s test the holes are **not absorption**: the latent that fires
# strongest on a missed country has a decoder row nearly orthogonal to the probe direction. (The
# cosines are the evidence; the shares it writes along the probe direction overlap with the general
# latent's own, so they decide nothing.) No latent comes close to the probe direction at
# all. In this SAE "country" is spread thinly over many latents, and the general
# latent's holes have a cause we have not found. So: a general latent with holes, cause unknown.
# The lesson stands either way: "this latent means X" needs a recall check on every member of X,
# since a label read off the top activations (all countries) can be right and still incomplete.
# **Splitting** (Bricken et al. 2023; Templeton et al. 2024) is a related pressure seen across
# widths in large models: a narrow dictionary's single latent for a concept becomes several finer
# ones in a wider dictionary, so which "features" an SAE has depends on its width as much as on
# the model.
#
# ### Completeness: which of the world's words does a dictionary find?
# Does an SAE find *every* feature, or only the frequent ones? On a real model the question has no
# answer, because nobody has the list. Here every word of the world's classes (each country,
# capital, language, continent, name, adjective, day and colour) is a candidate feature "the token
# is *w*", and how often it occurs in the SAE's training text is known exactly (we count it in the
# cached training tokens). For each word, a score of its best latent: of the *n* held-out tokens
# where that latent is highest (*n* = the word's count), the share that are the word (1 = the latent
# is a perfect detector of *w*; the latent is chosen on one half of the tokens and scored on the
# other). Plotted against the word's frequency, for dictionaries of three widths trained alike
# (TopK `k = 32`, our trainer, 100 steps).

# %% tags=["export"]
COMPLETENESS_WIDTHS = (128, 512, 1024)


@memoized
def word_detection_score(sae, activations: Float[Tensor, "token d_model"], tokens: Int[Tensor, "token"],
                         word_ids: Int[Tensor, "word"], seed: int = 0) -> Float[Tensor, "word"]:
    """For each word, how well its best latent finds it: among the n tokens where the latent is
    highest (n = the word's count), the share that are the word (precision at n, which equals recall
    at n). The latent is chosen on one half of the tokens and scored on the other."""
    with torch.no_grad():
        codes = sae.encode(activations)  # [token, d_sae]

    def scores(rows: Tensor) -> Float[Tensor, "d_sae word"]:
        ranked = tokens[rows][codes[rows].argsort(0, descending=True)]  # [token, d_sae]: each latent's tokens, highest first
        columns = []
        for word in word_ids.tolist():
            n = max(int((tokens[rows] == word).sum()), 1)
            columns.append((ranked[:n] == word).float().sum(0) / n)  # [d_sae]
        return torch.stack(columns, 1)

    choose, score = halves(len(tokens), seed)
    best = scores(choose).argmax(0)  # [word]
    return scores(score)[best, torch.arange(len(word_ids))]


# %%
class_words = sorted(set().union(*TOKEN_LABELS.values()))
word_ids = torch.tensor([model.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in class_words])
word_frequency = (train_tokens[:, None] == word_ids[None]).float().mean(0)  # [word], in the SAE's training tokens
completeness = {}
for width in progress_bar(COMPLETENESS_WIDTHS, desc="widths"):
    sae_width = our_sae if width == 1024 else train_organism_sae(train_acts, k=32, d_sae=width, progress_bar=False)[0]
    completeness[width] = word_detection_score(sae_width, held_acts, held_tokens, word_ids)
figure = go.Figure([go.Scatter(x=word_frequency, y=completeness[width], mode="markers", name=f"{width} latents",
                               text=class_words, opacity=0.7) for width in COMPLETENESS_WIDTHS])
figure.update_layout(title="Is each word of the world found? Its best latent's score against its frequency",
                     xaxis_title="frequency of the word in the SAE's training tokens", xaxis_type="log",
                     yaxis_title="best latent: share of its top n tokens that are the word", height=420)

# %%
rare = word_frequency < word_frequency.median()
pd.DataFrame({width: {"mean score": found.mean().item(), "rarer half of the words": found[rare].mean().item(),
                      "commoner half": found[~rare].mean().item(), "words scoring above 0.8": int((found > 0.8).sum())}
              for width, found in completeness.items()}).T.round(3)

# %% [markdown]
# Three readings, each re-measured in the tests:
# - **Almost no word has a latent of its own.** The mean score is well under 0.15 at every width:
#   for a typical word, its best latent's top activations are mostly *other* words. These
#   dictionaries code the classes and contexts of Section 4, not the identity of each country or
#   name (whether a linear probe could read each word's identity from the same activations we have
#   not measured; the embedding alone makes that likely). By this measure the dictionaries are far
#   from complete.
# - **Width helps, then stops helping (in 100 steps).** Going from 128 to 512 latents roughly
#   doubles the mean score; 1024 adds about nothing. Why, we have not measured; one guess to test
#   is that a wider dictionary trained this briefly has latents it has not yet put to use (count
#   the latents that never or rarely fire at each width).
# - **Frequency explains little here.** The world's words are generated at similar rates (all
#   between about 0.1% and 0.3% of the tokens). The commoner half of them does score higher than
#   the rarer half (the table: not by a little, in relative terms), but both stay far from a
#   latent of their own, and the rank correlation of frequency with score is weak (the tests). On a real model, where word frequencies span many orders of
#   magnitude, the rare features are the ones a dictionary misses (Templeton et al. 2024 report that
#   a concept's frequency predicts whether a dictionary of a given size has a latent for it); our
#   world is too uniform to show that, which is itself worth knowing before you read a plot like
#   this one.
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
# other half is the explanation's score. Explaining with a language model works the same way
# (Bills et al. 2023), with a model proposing the candidates and another predicting activations
# from them.

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
    extremes = torch.cat([logit_effect.topk(8).indices, (-logit_effect).topk(8).indices])  # 8 up, 8 down
    extremes = extremes[logit_effect[extremes].argsort()]  # sorted by value, most negative first
    label, score, scores = explain_latent(codes, tokens, masks, latent, model.tokenizer)
    figure = make_subplots(rows=1, cols=3, column_widths=[0.3, 0.32, 0.38], horizontal_spacing=0.14,
                           subplot_titles=["activation where active", "effect on logits", "explanations (AUROC)"])
    figure.add_trace(go.Histogram(x=codes[:, latent][codes[:, latent] > 0], nbinsx=40, showlegend=False), row=1, col=1)
    figure.add_trace(go.Bar(y=[repr(model.tokenizer.decode([i])) for i in extremes.tolist()],
                            x=logit_effect[extremes].tolist(), orientation="h", showlegend=False), row=1, col=2)
    names = sorted(scores, key=scores.get)
    figure.add_trace(go.Bar(y=names, x=[scores[n] for n in names], orientation="h", showlegend=False), row=1, col=3)
    figure.update_xaxes(title_text="activation", row=1, col=1)
    figure.update_xaxes(title_text="W_dec[i] @ W_U", row=1, col=2)
    figure.update_xaxes(title_text="AUROC", row=1, col=3)
    figure.update_layout(title=f"Latent {latent} (active on {(codes[:, latent] > 0).float().mean():.1%} of tokens): "
                               f"explained as {label!r}, held-out AUROC {score:.3f}", height=460)
    panel = f"<b>Top contexts of latent {latent}</b>" + top_contexts_html(codes, rows, keep, latent, model.tokenizer)
    return figure, panel


# %%
from IPython.display import HTML

held_keep = organism_sae.kept_positions(held_rows, model.tokenizer.eos_token_id)
dashboard, panel = latent_dashboard(shipped, model, held_codes, held_tokens, held_rows, held_keep, token_masks,
                                    country_latent)
display(HTML(panel))
dashboard

# %% [markdown]
# Look at the explanation in the title next to the bar chart of Section 5: the latent fires on
# most countries, yet its best explanation is one country's name, not "country". The AUROC
# rewards what a latent almost never misses: it fires on nearly every occurrence of that one
# country, and misses some occurrences of others (the holes above), which tie with the
# non-countries at zero.
# An explanation score measures a latent's reliability on a candidate, not how much of a concept
# it covers; that is why recall on every member has to be checked separately.
#
# How much of the dictionary do these explanations cover? For a sample of live latents, the best
# explanation's held-out AUROC:

# %%
live = (held_codes > 0).any(0).nonzero()[:, 0]
sample = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(0))[:100]]
explanations = [explain_latent(held_codes, held_tokens, token_masks, int(i), model.tokenizer) for i in sample]
scores = torch.tensor([score for _, score, _ in explanations])
by_word = sum(name.startswith("the word") for name, _, _ in explanations)
print(f"of {len(sample)} live latents, {(scores > 0.9).float().mean():.0%} have an explanation with held-out AUROC "
      f"above 0.9; median AUROC {scores.median():.2f}\n({by_word} of the explanations are a single word)")

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
# - **Gated SAEs** (Rajamanoharan et al. 2024a) separate *whether* a latent fires (a gate, trained
#   with the L1 penalty) from *how much* (a magnitude path with no penalty), so the penalty no
#   longer shrinks the size: the fix for shrinkage that keeps an L1-style objective.
# - **TopK** (Gao et al. 2024, above) sets L0 directly. **BatchTopK** (Bussmann et al. 2024) keeps
#   the `k x batch` largest activations of a whole batch, so busy tokens get more latents than
#   quiet ones; at inference it uses one threshold, estimated from the training activations, which
#   is why SAELens saves a trained BatchTopK SAE as a JumpReLU.
# - **JumpReLU** (Rajamanoharan et al. 2024b) zeroes activations below a learned per-latent
#   threshold and passes the rest unchanged: a discontinuous jump, trained with a straight-through
#   estimator, with an L0 penalty instead of L1. Another route to no shrinkage.
# - **Matryoshka SAEs** (Bussmann et al. 2025) train nested dictionaries at once, so that the first
#   latents must reconstruct on their own; one of the proposed answers to absorption.
# - **Transcoders** (Dunefsky et al. 2024) read one activation and reconstruct *another*, usually an MLP's input and
#   output: a sparse replacement for the MLP itself. Because the replacement is sparse and linear
#   around its latents, the connections between latents in different layers can be read from the
#   weights (encoder of one times decoder of another), which is what circuit tracing on
#   replacement models builds on. An SAE on the residual stream explains what is *there*; a
#   transcoder explains what a layer *computes*.
#
# Section 3 compared two of these trained on the same activations: L1 (shrinkage, an L2 ratio
# below 1) and TopK (none). SAELens also trains `gated`, `jumprelu`, `batchtopk` and Matryoshka
# SAEs from the same `SAETrainer` call, swapping the config class. Here is a JumpReLU beside our two,
# on the same activations and the same 100 steps of 1024, but trained by SAELens's own trainer, so
# not quite alike: SAELens's initialisation, a learning rate of 0.01 that decays to 0.001 over the
# last 20 steps (ours stays at 0.01), and a different sparsity penalty, SAELens's "quadratic" one
# (used for Gemma Scope 2), which pulls each example's L0 towards a target, here TopK's 32. The
# thresholds' starting value is a knob as real as the L1 coefficient: we start them at 4, chosen so
# that the L0 lands near TopK's 32.

# %% tags=["export"]
JUMPRELU_INIT_THRESHOLD = 4.0  # with 100 steps, what puts the JumpReLU's L0 near TopK's 32 on these activations


def mean_best_latent_auroc(sae, activations: Float[Tensor, "token d_model"], masks: dict[str, Bool[Tensor, "token"]],
                           seed: int = 0) -> float:
    """The held-out AUROC of the best latent for each token label (chosen on one half, scored on the other), averaged."""
    with torch.no_grad():
        codes = sae.encode(activations)
    train, test = halves(len(activations), seed)
    return sum(best_column_auroc(codes[train], mask[train], codes[test], mask[test])[0] for mask in masks.values()) / len(masks)


# %%
jumprelu_sae = organism_sae.train_with_sae_lens(train_acts, "jumprelu", k=32, steps=ORGANISM_STEPS, lr=1e-2, lr_end=1e-3,
                                                jumprelu_init_threshold=JUMPRELU_INIT_THRESHOLD, jumprelu_bandwidth=1.0)
detection_masks = {name: mask[:DETECTION_TOKENS] for name, mask in token_masks.items()}
variant_rows = {}
for name, variant in {"TopK k = 32 (ours)": our_sae, "L1 (ours)": our_l1_sae, "JumpReLU (SAELens)": jumprelu_sae}.items():
    row = organism_metrics(variant, held_acts)
    row["ce_loss_recovered"] = ce_loss_recovered(model, copy.deepcopy(variant).to(model.cfg.device), eval_rows, eval_keep, HOOK)
    row["token labels: mean best-latent AUROC"] = mean_best_latent_auroc(variant, held_acts[:DETECTION_TOKENS], detection_masks)
    variant_rows[name] = row
pd.DataFrame(variant_rows).T.round(3)

# %% [markdown]
# At about the same L0, the JumpReLU and TopK reconstruct about equally well, both without
# shrinkage (L2 ratios near 1), and both leave the model's loss nearly whole; the L1 SAE is the one
# behind, as in Section 3. On the world's token labels the order does not follow: the three are
# within 0.1 of each other, and the L1 SAE, the worst reconstructor, detects about as well as the
# other two (from 0.05 below the better of them to the top over the five seeds we tried; in this
# run it scores highest). Reconstruction and detection are different yardsticks;
# a better score on one need not buy a better score on the other. This is one short run
# on a small model: it says the two shrinkage-free designs tie here, not which is better at scale
# (Rajamanoharan et al. 2024b report JumpReLU at least as faithful as TopK on Gemma 2 at matched L0).
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
#   exactly the computation you care about. Here it holds none of the sentiment answer (Section 4),
#   but only a measurement can tell you that, and a probe alone would have said the opposite. A claim made through an SAE spliced in without its
#   error term holds for a slightly different model; adding the error term back (Section 4's
#   intervention) keeps the model exact, and leaves the unexplained part in plain sight.
# - **Comparisons need the same L0.** Any SAE reconstructs better with more active latents, so
#   "architecture A beats B" means something only at matched sparsity, with the same training.
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
#   against, the dictionary seems to keep growing with the width (our reading of feature
#   splitting in Bricken et al. 2023 and Templeton et al. 2024, not a measured law), and the error
#   term is where anything missed would hide.
# - **Cost.** Gemma Scope (Lieberum et al. 2024) reports using about 15% of Gemma 2 9B's training
#   compute for its SAEs on every layer and sublayer; on our organism one SAE takes a few seconds.
# - **Seeds.** Two SAEs trained with different seeds on the same activations share only part of
#   their latents (Paulo and Belrose 2025): a latent is a property of one training run as much as
#   of the model.
# - **Detection is not use.** A latent that detects truth is a reading of the activation, like a
#   probe (Chapter 02). Whether the model *uses* that direction is a question for interventions
#   (Chapters 06 and 07).
#
# ## References
# - Bills et al. 2023, *Language models can explain neurons in language models* (OpenAI):
#   automated explanations scored by simulation.
# - Bricken et al. 2023, *Towards Monosemanticity* (Anthropic): SAEs on a one-layer transformer,
#   resampling dead latents, feature splitting.
# - Bussmann, Leask and Nanda 2024, *BatchTopK Sparse Autoencoders*; Bussmann et al. 2025,
#   *Learning Multi-Level Features with Matryoshka Sparse Autoencoders*.
# - Chanin et al. 2024, *A is for Absorption: Studying Feature Splitting and Absorption in Sparse
#   Autoencoders*.
# - Cunningham et al. 2023, *Sparse Autoencoders Find Highly Interpretable Features in Language
#   Models*.
# - Dunefsky, Chlenski and Nanda 2024, *Transcoders Find Interpretable LLM Feature Circuits*.
# - Gao et al. 2024, *Scaling and evaluating sparse autoencoders* (OpenAI): TopK, AuxK.
# - Lieberum et al. 2024, *Gemma Scope: Open Sparse Autoencoders Everywhere All At Once on Gemma 2*.
# - Makelov, Lange and Nanda 2024, *Towards Principled Evaluations of Sparse Autoencoders for
#   Interpretability and Control*.
# - Marks et al. 2024, *Sparse Feature Circuits*: the SAE error term kept in the model.
# - Paulo and Belrose 2025, *Sparse Autoencoders Trained on the Same Data Learn Different Features*.
# - Rajamanoharan et al. 2024a, *Improving Dictionary Learning with Gated Sparse Autoencoders*;
#   Rajamanoharan et al. 2024b, *Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
#   Sparse Autoencoders*.
# - Templeton et al. 2024, *Scaling Monosemanticity* (Anthropic): SAEs on Claude 3 Sonnet, the
#   decoder-norm-weighted L1 penalty.
#
# **Your record so far:**

# %%
show_progress("05_saes")
