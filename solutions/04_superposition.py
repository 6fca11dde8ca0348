# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 04: Superposition toy models
#
# **Time:** about 3 hours. **Exercises:** 9, each checked as soon as you run the cell after it.
# *Run All* takes under 2 minutes on a 2-core laptop CPU (longer when the machine is busy), mostly
# training small models behind progress bars (JupyterLab shows the last cell: scroll up to watch them).
#
# **You will learn to**
# - build the toy model of superposition: many sparse features squeezed into fewer dimensions and
#   read back through a ReLU, with synthetic data whose sparsity, importance and correlation you set;
# - train hundreds of small models at once as one batched tensor, so a whole sweep runs in seconds;
# - watch superposition appear as features get sparser, in `W^T W`, in feature norms and in the
#   count of features represented per dimension;
# - map the phase change between a feature being dropped, getting its own dimension, and sharing one;
# - measure the geometry superposition takes (antipodal pairs, pentagons) with each feature's
#   fractional dimensionality;
# - see how correlated and anticorrelated features are arranged, and measure how polysemantic the
#   neurons of a privileged basis become;
# - explain why a sparse, overcomplete dictionary is the natural tool to undo all this (Chapter 05).
#
# **Seed concepts:** features as directions (the linear representation hypothesis); superposition
# (more features than dimensions, features stored in overlapping directions); polysemantic neurons;
# interference; what superposition depends on: feature importance, feature sparsity and feature
# correlation (Elhage et al., 2022, *Toy Models of Superposition*); sparse autoencoders as an
# overcomplete basis that untangles superposition.
#
# This chapter needs no language model: everything runs on models small enough to train in a few
# seconds on a laptop CPU. As in every chapter, write your code where it says
# `raise NotImplementedError`, then run the check cell below it. A skipped exercise falls back to
# the reference solution, so every later cell still runs.

# %%
from utils import check_exercise, setup, show_progress

env = setup()

# %% [markdown]
# ## 1. More features than dimensions
#
# Chapter 02 leaned on the **linear representation hypothesis**: a model stores each feature it
# computes as a *direction* in activation space. If every feature had its own neuron, or at least
# its own orthogonal direction, reading a model would be easy. But a language model knows far more
# features (languages, topics, names, syntax, facts) than it has dimensions: a residual stream of
# 768 numbers cannot hold a hundred thousand orthogonal directions.
#
# It can hold a hundred thousand *almost* orthogonal ones. Storing more features than dimensions,
# in directions that overlap, is called **superposition**. The price is **interference**: reading
# one feature picks up a little of every feature whose direction overlaps with it. That price is
# small when features are **sparse**, i.e. rarely active at the same time: if only one of two
# overlapping features is on, the overlap does no harm. The consequence for us is that single
# neurons end up responding to several unrelated features: they are **polysemantic**.
#
# Elhage et al. (2022) made this precise with a toy model small enough to study completely. We
# rebuild it in this chapter:
#
# - **Features.** An input `x` has `n` features. Each is zero most of the time; with probability
#   `p` (the *feature probability*; the *sparsity* is `S = 1 - p`) it is on, with a value drawn
#   uniformly from `[0, 1)`. Each feature has an **importance** `I_i`: how much the model is
#   penalised for getting it wrong.
# - **Model.** A matrix `W` of shape `[m, n]` with `m < n` compresses the features into `m`
#   hidden dimensions, `h = W x`, and the same matrix reads them back:
#   `x' = ReLU(W^T h + b)`. Column `W_i` is the direction feature `i` is stored in.
# - **Loss.** The importance-weighted squared error `L = E_x [ sum_i I_i (x_i - x'_i)^2 ]`.
#
# The hidden layer `h` has no activation function, like a transformer's residual stream: any
# rotation of it would do as well, so its individual dimensions mean nothing (its basis is not
# *privileged*). That is why we talk about feature *directions* `W_i`, not neurons. Section 6 adds
# a ReLU to `h` and asks about neurons.
#
# Why the ReLU at the output? Without it the model is linear, and a linear model with `m`
# dimensions can do no better than to store the `m` most important features in orthogonal
# directions and drop the rest (it is doing principal component analysis). The ReLU lets the model
# *filter* interference: if the overlap with other features only ever pushes feature `i`'s readout
# below zero, the ReLU (helped by a negative bias) removes it.
#
# We will train many copies of this model at once, each with its own sparsity or importance. Every
# tensor carries an `instances` dimension for that: `W` is `[instances, hidden, feats]`.

# %% [markdown]
# ### Exercise 4.1: sparse synthetic features (difficulty 1/3, ~10 min)
# Write `generate_features(batch_size, feature_probability, generator)`. `feature_probability`
# has shape `[instances, feats]`, one probability per feature of each model. Return a tensor of
# shape `[batch, instances, feats]` where each entry, independently, is a value drawn uniformly from
# `[0, 1)` with that feature's probability, and exactly zero otherwise. Draw all random numbers with
# `generator=generator`, so a seeded generator gives the same batch every time.
#
# <details><summary>Hint 1</summary>
#
# You need two random numbers per entry: one for the value, one for the coin that decides whether
# the feature is on. Both have the shape of the output.
# </details>
# <details><summary>Hint 2</summary>
#
# `torch.rand(shape, generator=generator) < feature_probability` is a boolean mask that is `True`
# with the right probability; broadcasting lines `[instances, feats]` up with
# `[batch, instances, feats]`.
# </details>
# <details><summary>Hint 3</summary>
#
# `shape = (batch_size, *feature_probability.shape)`, then
# `torch.rand(shape, generator=generator) * (torch.rand(shape, generator=generator) < feature_probability)`.
# </details>

# %% tags=["export"]
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

import utils.session
from utils.memo import memoized


def generate_features(batch_size: int, feature_probability: Float[Tensor, "instances feats"],
                      generator: torch.Generator | None = None) -> Float[Tensor, "batch instances feats"]:
    """Sparse features: each entry is on with its probability, and then uniform in [0, 1)."""
    ### BEGIN SOLUTION
    shape = (batch_size, *feature_probability.shape)
    values = torch.rand(shape, generator=generator)  # [batch, instances, feats]
    is_on = torch.rand(shape, generator=generator) < feature_probability  # [batch, instances, feats]
    return values * is_on
    ### END SOLUTION


# %%
generate_features = check_exercise("4.1", generate_features)

# %% [markdown]
# Two models, six features each: the first has dense features, the second sparse ones.

# %%
from utils.plotting import heatmap

example = generate_features(12, torch.tensor([[1.0] * 6, [0.2] * 6]), torch.Generator().manual_seed(0))
print(f"shape {list(example.shape)}; fraction of entries that are on, per model: "
      f"{(example > 0).float().mean(dim=(0, 2)).tolist()}")
heatmap(example[:, 1], title="A batch of sparse features (model 2, p = 0.2)", x_label="feature",
        y_label="example", diverging=False)

# %% [markdown]
# ### Exercise 4.2: the toy model, batched over instances (difficulty 2/3, ~15 min)
# Complete `ToyModel.forward`. The model holds `n_instances` independent toy models: `W` has shape
# `[instances, hidden, feats]` and `b_final` shape `[instances, feats]`. For each instance `k`,
# compute `h = W[k] x` and `x' = ReLU(W[k]^T h + b[k])`, for every example of the batch at once and
# with no Python loop over instances. When `self.nonlinear` is `False`, leave the ReLU out (the
# linear model we compare against).
#
# <details><summary>Hint 1</summary>
#
# `torch.einsum` names each dimension with a letter and sums over the letters missing from the
# output: `torch.einsum("bif,ihf->bih", features, self.W)` keeps batch `b` and instance `i` and sums
# over features `f`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `features` is `[batch, instances, feats]` and `W` `[instances, hidden, feats]`; the
# hidden vector is `[batch, instances, hidden]`; the read-out goes back to `[batch, instances, feats]`,
# where `b_final`, `[instances, feats]`, broadcasts over the batch.
# </details>
# <details><summary>Hint 3</summary>
#
# The read-out is the same matrix the other way round: sum over the hidden letter instead,
# `"bih,ihf->bif"`. Then add `self.b_final` and apply `F.relu` only if `self.nonlinear`.
# </details>

# %% tags=["export"]
class ToyModel(nn.Module):
    """`n_instances` toy models of superposition trained side by side, one slice of W and b each.

    Instance k maps features x (n_feats) to h = W[k] x (n_hidden) and reads them back as
    ReLU(W[k]^T h + b[k]); with nonlinear=False, without the ReLU.
    """

    def __init__(self, n_instances: int, n_feats: int, n_hidden: int, nonlinear: bool = True, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        scale = math.sqrt(2 / (n_feats + n_hidden))  # Glorot-normal
        self.W = nn.Parameter(torch.randn(n_instances, n_hidden, n_feats, generator=generator) * scale)
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_feats))
        self.nonlinear = nonlinear

    def forward(self, features: Float[Tensor, "batch instances feats"]) -> Float[Tensor, "batch instances feats"]:
        ### BEGIN SOLUTION
        hidden = torch.einsum("bif,ihf->bih", features, self.W)  # [batch, instances, hidden]
        out = torch.einsum("bih,ihf->bif", hidden, self.W) + self.b_final  # [batch, instances, feats]
        return F.relu(out) if self.nonlinear else out
        ### END SOLUTION


# %%
ToyModel = check_exercise("4.2", ToyModel)

# %% [markdown]
# ### Exercise 4.3: the importance-weighted loss (difficulty 1/3, ~10 min)
# Write `importance_weighted_loss(output, features, importance)`, returning **one loss per
# instance**, shape `[instances]`: the squared error of each feature, multiplied by that feature's
# importance, summed over features and averaged over the batch. `importance` has shape
# `[instances, feats]`, one importance per feature of each model.
#
# <details><summary>Hint 1</summary>
#
# `importance` broadcasts against `[batch, instances, feats]` as it is.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: the weighted squared error is `[batch, instances, feats]`; summing over the features
# leaves `[batch, instances]`; averaging over the batch leaves `[instances]`.
# </details>
# <details><summary>Hint 3</summary>
#
# `(importance * (features - output) ** 2)`, then `.sum(-1)` (features) and `.mean(0)` (batch).
# </details>

# %% tags=["export"]
def importance_weighted_loss(output: Float[Tensor, "batch instances feats"],
                             features: Float[Tensor, "batch instances feats"],
                             importance: Float[Tensor, "instances feats"]) -> Float[Tensor, "instances"]:
    """Mean over the batch of sum_i I_i (x_i - x'_i)^2, for each instance separately."""
    ### BEGIN SOLUTION
    return (importance * (features - output) ** 2).sum(-1).mean(0)
    ### END SOLUTION


# %%
importance_weighted_loss = check_exercise("4.3", importance_weighted_loss)

# %% [markdown]
# ## 2. Training a hundred models at once
#
# Instance `k`'s loss depends only on `W[k]` and `b[k]`. So the gradient of the **sum** of all the
# instances' losses with respect to `W[k]` is exactly the gradient of instance `k`'s own loss, and
# Adam, which updates every parameter entry on its own, then trains each instance as if it were
# alone. One batched forward pass replaces a Python loop over models: a sweep of 100 models costs
# about as much as a handful of big matrix products. (Adam also ignores a constant factor on the
# loss, so summing or averaging over instances would train the same models.)
#
# The training loop below is the only one in this chapter. It draws a fresh batch every step (the
# data is infinite, so the models never overfit), decays the learning rate along a cosine, and
# returns each instance's loss on a large fresh batch.

# %% tags=["export"]
def evaluate_toy_models(model: ToyModel, feature_probability: Tensor, importance: Float[Tensor, "instances feats"],
                        data=None, batch_size: int = 16384, seed: int = 1) -> Float[Tensor, "instances"]:
    """Each instance's loss on one large fresh batch."""
    data = data or generate_features
    with torch.no_grad():
        features = data(batch_size, feature_probability, torch.Generator().manual_seed(seed))
        return importance_weighted_loss(model(features), features, importance)


def train_toy_models(model: ToyModel, feature_probability: Tensor, importance: Float[Tensor, "instances feats"],
                     steps: int = 3000, batch_size: int = 1024, lr: float = 5e-3, seed: int = 0,
                     data=None, progress_bar: bool = True) -> Float[Tensor, "instances"]:
    """Train all instances of `model` at once with Adam; returns each instance's final loss.

    `data(batch_size, feature_probability, generator)` makes a batch (default: generate_features).
    """
    data = data or generate_features
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    bar = utils.session.progress_bar(range(steps), show=progress_bar, desc=f"training {model.W.shape[0]} models")
    for step in bar:
        features = data(batch_size, feature_probability, generator)  # [batch, instances, feats]
        losses = importance_weighted_loss(model(features), features, importance)  # [instances]
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            bar.set_postfix(mean_loss=f"{losses.mean().item():.4g}")
    return evaluate_toy_models(model, feature_probability, importance, data)


# %% [markdown]
# ### The first experiment: sparsity
# Twenty features, five hidden dimensions, importance falling geometrically (`I_i = 0.9^i`, so
# feature 0 matters most), and one instance per sparsity, from dense (`S = 0`) to extremely sparse
# (`S = 0.999`, each feature on in one example in a thousand). The same sweep trains a linear
# model for contrast. The setup follows Elhage et al. (2022) with two changes: fewer training steps,
# and a slower decay of importance than the paper's `0.7^i`. With `0.7^i` the last of the twenty
# features would weigh `0.7^19`, about 0.001 of the first; with `0.9^i` it weighs about 0.14, so even
# the least important features are worth storing in a short training run. Both sweeps together take
# well under a minute on a laptop CPU.

# %% tags=["export"]
SWEEP_SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999)
SWEEP_FEATS, SWEEP_HIDDEN, SWEEP_IMPORTANCE_DECAY = 20, 5, 0.9
LINEAR_SWEEP = dict(nonlinear=False, steps=1500, lr=2e-2)  # the linear model converges in fewer steps


@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def train_sparsity_sweep(sparsities=SWEEP_SPARSITIES, n_feats: int = SWEEP_FEATS, n_hidden: int = SWEEP_HIDDEN,
                         importance_decay: float = SWEEP_IMPORTANCE_DECAY, nonlinear: bool = True,
                         steps: int = 3000, lr: float = 5e-3, seed: int = 0, progress_bar: bool = True) -> ToyModel:
    """One toy model per sparsity, all features equally sparse, importance decaying geometrically."""
    n_instances = len(sparsities)
    feature_probability = (1 - torch.tensor(sparsities))[:, None].expand(n_instances, n_feats)  # [instances, feats]
    importance = (importance_decay ** torch.arange(n_feats).float()).expand(n_instances, n_feats)  # [instances, feats]
    model = ToyModel(n_instances, n_feats, n_hidden, nonlinear=nonlinear, seed=seed)
    train_toy_models(model, feature_probability, importance, steps=steps, lr=lr, seed=seed, progress_bar=progress_bar)
    return model


# %% [markdown]
# These models are tiny, so splitting each operation between several CPU threads costs more than
# it saves (and when other programs share the machine, much more). One thread is fastest here.

# %%
torch.set_num_threads(1)
relu_sweep = train_sparsity_sweep()
linear_sweep = train_sparsity_sweep(**LINEAR_SWEEP)

# %% [markdown]
# ### Reading `W^T W`
# `W^T W` is an `[n, n]` matrix: entry `(i, j)` is the dot product of feature `i`'s direction with
# feature `j`'s. Its diagonal holds the squared norms (is feature `i` represented at all?), and its
# off-diagonal entries the overlaps (do features `i` and `j` interfere?). A model that stores `m`
# features orthogonally and drops the rest shows an `m x m` identity block and zeros elsewhere.

# %%
from plotly.subplots import make_subplots
import plotly.graph_objects as go


def gram_figure(model: ToyModel, labels, title: str) -> go.Figure:
    """W^T W of each instance, side by side on one colour scale."""
    W = model.W.detach()
    gram = torch.einsum("ihf,ihg->ifg", W, W)  # [instances, feats, feats]
    figure = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.02)
    for k in range(len(labels)):
        figure.add_trace(go.Heatmap(z=gram[k], coloraxis="coloraxis"), row=1, col=k + 1)
        figure.update_yaxes(autorange="reversed", showticklabels=k == 0, row=1, col=k + 1)
        figure.update_xaxes(showticklabels=False, row=1, col=k + 1)
    figure.update_layout(title=title, coloraxis=dict(colorscale="RdBu", cmid=0, reversescale=True),
                         height=260, margin=dict(t=70, b=20))
    return figure


sparsity_labels = [f"S = {s}" for s in SWEEP_SPARSITIES]
gram_figure(linear_sweep, sparsity_labels, "Linear model: W^T W for each sparsity").show()
gram_figure(relu_sweep, sparsity_labels, "ReLU model: W^T W for each sparsity")

# %% [markdown]
# The linear model does the same thing at every sparsity: it keeps the five most important
# features orthogonal and drops the rest. The ReLU model agrees when features are dense, but as they
# get sparser it stores more and more features, and the off-diagonal entries light up: those
# features now share directions. That is superposition.
#
# To say *which* features are in superposition we need, per feature, a number for how much the
# other features overlap with its direction.
#
# ### Exercise 4.4: interference per feature (difficulty 2/3, ~15 min)
# Write `interference(W)`, returning for each instance and feature `i` the sum, over all **other**
# features `j != i`, of the squared projection of `W_j` onto the unit vector along `W_i`:
#
# `interference_i = sum_{j != i} (W_i_hat . W_j)^2`, where `W_i_hat = W_i / ||W_i||`.
#
# It is 0 for a feature with a direction of its own, and about 1 for a feature sharing its
# direction with one other fully represented feature. A feature with `W_i = 0` has no direction:
# give it 0, not NaN (divide by the norm clamped to at least `1e-8`).
#
# <details><summary>Hint 1</summary>
#
# Features are the *columns* of each `W[k]`: the norms are `W.norm(dim=1)`, shape
# `[instances, feats]`. Keep that dimension (`keepdim=True`) to divide `W` by it.
# </details>
# <details><summary>Hint 2</summary>
#
# All dot products at once: `torch.einsum("ihf,ihg->ifg", W_hat, W)` gives `[instances, feats,
# feats]` with entry `[k, i, j] = W_i_hat . W_j`. Square, sum over `j`, and remove the `j = i`
# term (it is `||W_i||^2`, the diagonal).
# </details>
# <details><summary>Hint 3</summary>
#
# `W_hat = W / W.norm(dim=1, keepdim=True).clamp(min=1e-8)`; `overlaps = torch.einsum(...) ** 2`;
# `overlaps.sum(-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)`.
# </details>

# %% tags=["export"]
def feature_norms(W: Float[Tensor, "instances hidden feats"]) -> Float[Tensor, "instances feats"]:
    """||W_i||: how strongly each feature is represented (about 1 when it is, 0 when dropped)."""
    return W.norm(dim=1)


def interference(W: Float[Tensor, "instances hidden feats"]) -> Float[Tensor, "instances feats"]:
    """sum over j != i of (W_i_hat . W_j)^2: how much the other features overlap with feature i."""
    ### BEGIN SOLUTION
    W_hat = W / W.norm(dim=1, keepdim=True).clamp(min=1e-8)  # [instances, hidden, feats]
    overlaps = torch.einsum("ihf,ihg->ifg", W_hat, W) ** 2  # [instances, feats, feats]
    return overlaps.sum(-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)
    ### END SOLUTION


# %%
interference = check_exercise("4.4", interference)

# %% [markdown]
# Now each feature gets a bar: its length is `||W_i||` and its colour its interference (dark: a
# direction of its own; bright: superposed).

# %%
def norms_figure(model: ToyModel, labels, title: str) -> go.Figure:
    """One panel per instance: a horizontal bar per feature, length ||W_i||, colour its interference."""
    W = model.W.detach()
    norms, overlap = feature_norms(W), interference(W)  # [instances, feats] each
    figure = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, shared_yaxes=True,
                           horizontal_spacing=0.015)
    for k in range(len(labels)):
        figure.add_trace(go.Bar(x=norms[k], y=list(range(W.shape[-1])), orientation="h",
                                marker=dict(color=overlap[k], coloraxis="coloraxis")), row=1, col=k + 1)
        figure.update_xaxes(range=[0, 1.5], row=1, col=k + 1)
    figure.update_yaxes(autorange="reversed", title_text="feature (most important on top)", row=1, col=1)
    figure.update_layout(title=title, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1,
                                                     colorbar_title="interference"),
                         showlegend=False, height=380, margin=dict(t=70, b=30))
    return figure


norms_figure(relu_sweep, sparsity_labels, "ReLU model: ||W_i|| per feature, coloured by interference")

# %% [markdown]
# Read it from left to right. Dense: five features, each with a direction of its own (dark bars),
# the rest dropped. As sparsity rises, the less important features appear, bright, in superposition,
# while the most important ones keep their own direction longest. At the far right nearly every
# feature is represented, and nearly all of them share.
#
# Let's count. We call a feature *represented* when `||W_i|| > 0.5`.

# %% tags=["export"]
def count_represented(W: Float[Tensor, "instances hidden feats"], threshold: float = 0.5) -> Int[Tensor, "instances"]:
    """How many features of each instance have ||W_i|| above `threshold`."""
    return (feature_norms(W) > threshold).sum(-1)


# %%
from utils.plotting import lines

density_axis = [1 / (1 - s) for s in SWEEP_SPARSITIES]  # 1 / (1 - S): examples per activation
figure = lines({"ReLU model": count_represented(relu_sweep.W.detach()),
                "linear model": count_represented(linear_sweep.W.detach())}, x=density_axis,
               title=f"Features represented ({SWEEP_FEATS} features, {SWEEP_HIDDEN} dimensions)",
               x_label="1 / (1 - S)", y_label="features with ||W_i|| > 0.5")
figure.add_hline(y=SWEEP_HIDDEN, line_dash="dot", annotation_text="number of dimensions")
figure.update_xaxes(type="log")

# %% [markdown]
# ## 3. The phase change
#
# Whether a feature is dropped, gets a dimension of its own, or shares one is not a smooth
# compromise: it flips. To see the flip, take the smallest case there is: **two features, one
# dimension**. Feature 0 has importance 1; the "extra" feature 1 has importance `r`. Both have the
# same feature probability `p`. For each pair `(r, p)` on a grid we train the model and ask what
# happened to the extra feature:
#
# - **not represented**: `||W_1||` is small; the dimension belongs to feature 0;
# - **dedicated dimension**: the extra feature has the dimension to itself, and feature 0 was dropped;
# - **superposed**: both features are represented, necessarily in the same dimension; to tell
#   them apart the model points them in opposite directions (an *antipodal pair*) and lets the ReLU
#   cut the negative interference.
#
# Small models sometimes settle in a worse local minimum, so every grid point is trained from
# three seeds and we keep the one with the lowest loss: all `9 x 9 x 3` models train together.

# %% tags=["export"]
PHASE_GRID = 9
PHASE_IMPORTANCES = torch.logspace(-1, 1, PHASE_GRID)  # relative importance r of the extra feature
PHASE_PROBABILITIES = torch.logspace(0, -2, PHASE_GRID)  # feature probability p, dense to sparse


@memoized
def train_phase_diagram(n_seeds: int = 3, steps: int = 2500, seed: int = 0,
                        progress_bar: bool = True) -> Float[Tensor, "importance probability hidden feats"]:
    """W of the best of `n_seeds` two-feature, one-dimension models at every (r, p) grid point."""
    r, p, _ = torch.meshgrid(PHASE_IMPORTANCES, PHASE_PROBABILITIES, torch.arange(n_seeds).float(), indexing="ij")
    n_instances = r.numel()
    feature_probability = p.reshape(-1, 1).expand(n_instances, 2)  # [instances, 2]
    importance = torch.stack([torch.ones(n_instances), r.reshape(-1)], dim=-1)  # [instances, 2]
    model = ToyModel(n_instances, n_feats=2, n_hidden=1, seed=seed)
    losses = train_toy_models(model, feature_probability, importance, steps=steps, batch_size=512, lr=1e-2,
                              seed=seed, progress_bar=progress_bar)
    grid = (PHASE_GRID, PHASE_GRID, n_seeds)
    best = losses.reshape(grid).argmin(-1)  # [importance, probability]
    W = model.W.detach().reshape(*grid, 1, 2)  # [importance, probability, seed, hidden, feats]
    return W[torch.arange(PHASE_GRID)[:, None], torch.arange(PHASE_GRID), best]  # [importance, probability, 1, 2]


# %% [markdown]
# ### Exercise 4.5: classify the extra feature (difficulty 1/3, ~10 min)
# Write `extra_feature_phase(W, threshold=0.5)`. For each instance, look at the **last** feature
# and return `0` if it is not represented (`||W_last|| <= threshold`), `2` if it is represented and
# superposed (its `interference` is above `threshold ** 2`), and `1` if it is represented with a
# dimension to itself. Return an integer tensor of shape `[instances]`. It must work for any number
# of features and dimensions, not only two and one.
#
# <details><summary>Hint 1</summary>
#
# `feature_norms(W)[:, -1]` and `interference(W)[:, -1]` are the two numbers you need per instance.
# A negative weight still represents the feature: use the norm, not the weight.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: two boolean tensors of shape `[instances]`, *represented* (norm above `threshold`) and
# *superposed* (interference above `threshold ** 2`). Phase 2 needs both; phase 1 is represented but
# not superposed; everything else is phase 0.
# </details>
# <details><summary>Hint 3</summary>
#
# `torch.where(condition, a, b)` picks between two tensors; nest two of them, or start from zeros
# and add: `represented.long() + (represented & superposed).long()`.
# </details>

# %% tags=["export"]
def extra_feature_phase(W: Float[Tensor, "instances hidden feats"], threshold: float = 0.5) -> Int[Tensor, "instances"]:
    """0: last feature not represented; 1: represented in a dimension of its own; 2: superposed."""
    ### BEGIN SOLUTION
    represented = feature_norms(W)[:, -1] > threshold  # [instances]
    superposed = interference(W)[:, -1] > threshold ** 2  # [instances]
    return represented.long() + (represented & superposed).long()
    ### END SOLUTION


# %%
extra_feature_phase = check_exercise("4.5", extra_feature_phase)

# %%
phase_W = train_phase_diagram()  # [importance, probability, 1, 2]
phases = extra_feature_phase(phase_W.flatten(0, 1)).reshape(PHASE_GRID, PHASE_GRID)  # [importance, probability]

phase_names = ["not represented", "dedicated dimension", "superposed"]
phase_colours = ["#d9d9d9", "#4c78a8", "#e45756"]
figure = go.Figure(go.Heatmap(
    z=phases.T, x=[f"{r:.2g}" for r in PHASE_IMPORTANCES], y=[f"{p:.2g}" for p in PHASE_PROBABILITIES],
    zmin=-0.5, zmax=2.5, colorscale=[[0, phase_colours[0]], [1 / 3, phase_colours[0]], [1 / 3, phase_colours[1]],
                                     [2 / 3, phase_colours[1]], [2 / 3, phase_colours[2]], [1, phase_colours[2]]],
    colorbar=dict(tickvals=[0, 1, 2], ticktext=phase_names)))
figure.update_layout(title="What happens to the extra feature (2 features, 1 dimension)", height=500,
                     xaxis_title="relative importance r of the extra feature",
                     yaxis_title="feature probability p (top: dense)",
                     yaxis_autorange="reversed")  # the first row, p = 1, at the top

# %% [markdown]
# With dense features (top row) there is no superposition away from the tie at `r = 1`: the single
# dimension goes to whichever feature is more important, and the boundary sits at `r = 1`. As the features get
# sparser, a superposed region opens around `r = 1` and widens: sharing becomes worth it even when
# the extra feature matters much less than feature 0. The change between regions is abrupt, a
# phase change: move a little across a boundary and the optimal weights jump.
#
# Here are the weights themselves at three grid points. In the superposed phase the two features
# point in opposite directions: when only one is on, the other's read-out is negative and the ReLU
# sets it to zero. Only examples with both features on suffer, and at this sparsity they are rare.

# %%
import pandas as pd

pd.DataFrame({name: {"r": round(float(PHASE_IMPORTANCES[i]), 2), "p": round(float(PHASE_PROBABILITIES[j]), 2),
                     "W": str(phase_W[i, j, 0].numpy().round(2)), "phase": phase_names[int(phases[i, j])]}
              for name, (i, j) in {"dense, r < 1": (1, 0), "dense, r > 1": (PHASE_GRID - 2, 0),
                                   "sparse, r = 1": (PHASE_GRID // 2, PHASE_GRID - 1)}.items()}).T

# %% [markdown]
# ## 4. The geometry of superposition
#
# When many features share few dimensions, how do they arrange themselves? A useful number is how
# much of a dimension each feature gets. Elhage et al. define the **fractional dimensionality** of
# feature `i` as
#
# `D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`,
#
# where this time the sum **includes** `j = i`. A feature with a direction of its own has `D_i = 1`;
# a dropped feature has `D_i = 0`; two features sharing one direction antipodally get `1/2` each;
# three features at 120 degrees in a plane get `2/3`; five at the corners of a pentagon get `2/5`.
#
# ### Exercise 4.6: fractional dimensionality (difficulty 2/3, ~15 min)
# Write `feature_dimensionality(W)`, shape `[instances, feats]`. As before, a feature with
# `W_i = 0` must give 0, not NaN.
#
# <details><summary>Hint 1</summary>
#
# The denominator is your `interference` plus the `j = i` term, which is `||W_i||^2`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `feature_norms(W)` and `interference(W)` are both `[instances, feats]`, so the whole
# formula is element-wise. For a zero feature it reads 0 / 0: keep the denominator away from zero.
# </details>
# <details><summary>Hint 3</summary>
#
# `norms = feature_norms(W)`; `norms ** 2 / (interference(W) + norms ** 2).clamp(min=1e-12)`. For a
# zero feature the numerator is 0, so the clamp makes the result 0.
# </details>

# %% tags=["export"]
def feature_dimensionality(W: Float[Tensor, "instances hidden feats"]) -> Float[Tensor, "instances feats"]:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (j = i included): the share of a dimension feature i gets."""
    ### BEGIN SOLUTION
    squared_norms = feature_norms(W) ** 2  # [instances, feats]
    return squared_norms / (interference(W) + squared_norms).clamp(min=1e-12)
    ### END SOLUTION


# %%
feature_dimensionality = check_exercise("4.6", feature_dimensionality)

# %% [markdown]
# ### A pentagon
# Five equally important features in two dimensions. Moderately sparse (`p = 0.3`), the model
# stores four of them as two antipodal pairs, `1/2` each, and drops the fifth (the best of four
# restarts: with two, one seed in eight kept a lopsided mix of all five instead). Sparser
# (`p = 0.05`), it places all five at the corners of a regular pentagon, each getting `2/5` of a
# dimension.

# %% tags=["export"]
PENTAGON_PROBABILITIES = (0.3, 0.05)


def train_pentagon(n_seeds: int = 4, steps: int = 2500, seed: int = 0, progress_bar: bool = True
                   ) -> Float[Tensor, "probability hidden feats"]:
    """W of the best-of-seeds model with five equally important features in two dimensions, per probability."""
    n_instances = len(PENTAGON_PROBABILITIES) * n_seeds
    p = torch.tensor(PENTAGON_PROBABILITIES).repeat_interleave(n_seeds)  # [instances]
    model = ToyModel(n_instances, n_feats=5, n_hidden=2, seed=seed)
    losses = train_toy_models(model, p[:, None].expand(n_instances, 5), torch.ones(n_instances, 5), steps=steps,
                              batch_size=512, lr=1e-2, seed=seed, progress_bar=progress_bar)
    best = losses.reshape(-1, n_seeds).argmin(-1)  # [probability]
    W = model.W.detach().reshape(len(PENTAGON_PROBABILITIES), n_seeds, 2, 5)
    return W[torch.arange(len(PENTAGON_PROBABILITIES)), best]  # [probability, 2, 5]


# %%
pentagon_W = train_pentagon()
figure = make_subplots(rows=1, cols=len(PENTAGON_PROBABILITIES),
                       subplot_titles=[f"p = {p}" for p in PENTAGON_PROBABILITIES])
dimensionality = feature_dimensionality(pentagon_W)  # [probability, 5]
for k in range(len(PENTAGON_PROBABILITIES)):
    for i in range(5):
        x, y = pentagon_W[k, :, i].tolist()
        figure.add_trace(go.Scatter(x=[0, x], y=[0, y], mode="lines+markers+text", text=["", f"{i}"],
                                    textposition="top center", line=dict(color=f"hsl({72 * i},70%,45%)"),
                                    hovertext=f"feature {i}: D = {dimensionality[k, i]:.2f}"), row=1, col=k + 1)
    figure.update_xaxes(range=[-1.5, 1.5], row=1, col=k + 1)
    figure.update_yaxes(range=[-1.5, 1.5], scaleanchor=f"x{k + 1 if k else ''}", row=1, col=k + 1)
figure.update_layout(title="Columns W_i of five features in two dimensions", showlegend=False, height=380)
figure.show()
print("fractional dimensionality per feature:\n", dimensionality.numpy().round(2))

# %% [markdown]
# ### Move the sparsity yourself
# Between `p = 0.3` and `p = 0.05` something changes shape. Where? The figure below retrains the
# five-feature model (best of two seeds) at several feature probabilities; drag its slider and
# watch the antipodal pairs give way to a pentagon. Decide first: at which `p` do you expect the
# fifth feature to come back?

# %% tags=["export"]
import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

SLIDER_PROBABILITIES = (0.3, 0.2, 0.1, 0.05, 0.02)


def train_five_in_two(probabilities, n_seeds: int = 2, steps: int = 1000, seed: int = 0
                      ) -> Float[Tensor, "probability hidden feats"]:
    """Best-of-seeds W of five equally important features in two dimensions, one per probability."""
    p = torch.tensor(probabilities, dtype=torch.float).repeat_interleave(n_seeds)  # [instances]
    model = ToyModel(len(p), n_feats=5, n_hidden=2, seed=seed)
    losses = train_toy_models(model, p[:, None].expand(len(p), 5), torch.ones(len(p), 5), steps=steps,
                              batch_size=512, lr=1e-2, seed=seed, progress_bar=False)
    best = losses.reshape(-1, n_seeds).argmin(-1)  # [probability]
    W = model.W.detach().reshape(len(probabilities), n_seeds, 2, 5)
    return W[torch.arange(len(probabilities)), best]  # [probability, 2, 5]


def feature_arrows(W: Float[Tensor, "hidden feats"], visible: bool = True) -> list[go.Scatter]:
    """One arrow from the origin per feature column W_i of a two-dimensional model."""
    dimensionality = feature_dimensionality(W[None])[0]  # [feats]
    return [go.Scatter(x=[0, x], y=[0, y], mode="lines+markers+text", text=["", f"{i}"], visible=visible,
                       textposition="top center", line=dict(color=f"hsl({72 * i},70%,45%)"),
                       hovertext=f"feature {i}: D = {dimensionality[i]:.2f}", showlegend=False)
            for i, (x, y) in enumerate(W.T.tolist())]


def arrows_figure(traces: list, title: str) -> go.Figure:
    figure = go.Figure(traces)
    figure.update_layout(title=title, height=450, xaxis_range=[-1.5, 1.5], yaxis_range=[-1.5, 1.5],
                         yaxis_scaleanchor="x")
    return figure


def sparsity_slider_figure(probabilities, W: Float[Tensor, "probability hidden feats"]) -> go.Figure:
    """A static figure with a plotly slider over precomputed models: it works with no kernel (the book)."""
    n = W.shape[-1]
    traces = [trace for k in range(len(probabilities)) for trace in feature_arrows(W[k], visible=k == 0)]
    figure = arrows_figure(traces, "Five features in two dimensions: drag the feature probability p")
    steps = [dict(method="update", label=f"{p:g}",
                  args=[{"visible": [k * n <= t < (k + 1) * n for t in range(len(traces))]}])
             for k, p in enumerate(probabilities)]
    figure.update_layout(sliders=[dict(steps=steps, currentvalue=dict(prefix="p = "), pad=dict(t=40))])
    return figure


class SparsityExplorer:
    """A slider that retrains the five-in-two model at the chosen probability and redraws it (live)."""

    def __init__(self, probability: float = 0.05, steps: int = 1000):
        self.steps = steps
        self.slider = widgets.FloatLogSlider(value=probability, base=10, min=-2, max=-0.5, step=0.05,
                                             description="p", continuous_update=False, readout_format=".3f")
        self.output = widgets.Output()
        self.slider.observe(lambda change: self.redraw(change["new"]), names="value")
        self.redraw(probability)

    def redraw(self, probability: float) -> None:
        """Retrain at `probability` (about a second), store W and the figure, and show them."""
        self.W = train_five_in_two([probability], steps=self.steps)[0]  # [2, 5]
        self.dimensionality = feature_dimensionality(self.W[None])[0]  # [5]
        self.figure = arrows_figure(feature_arrows(self.W), f"Retrained at p = {probability:.3f}: "
                                    f"D_i = {', '.join(f'{d:.2f}' for d in self.dimensionality.tolist())}")
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)

    def widget(self) -> widgets.VBox:
        return widgets.VBox([self.slider, self.output])


# %%
slider_W = train_five_in_two(SLIDER_PROBABILITIES)
display(pd.DataFrame(feature_dimensionality(slider_W).numpy(), index=pd.Index(SLIDER_PROBABILITIES, name="p"),
                     columns=[f"feature {i}" for i in range(slider_W.shape[-1])]
                     ).rename_axis(columns="fractional dimensionality").round(2))
sparsity_slider_figure(SLIDER_PROBABILITIES, slider_W)

# %% [markdown]
# Where the shape changes depends on the seed, not only on `p`. With other seeds (1,000 steps, best
# of two restarts), the sparse end was a pentagon in all five seeds we tried, but at `p = 0.3` only
# three gave antipodal pairs: one found a pentagon, one a lopsided mix. Which arrangement the
# training finds depends on where it starts.
#
# The figure above was trained in advance, at five values. To retrain at *any* `p` as you drag, set
# `live = True` and run the cell again (each move retrains for about a second). It is off by
# default because a live widget cannot be saved with the notebook: reopened later, it would show
# an error in its place.

# %%
live = False
if live:
    display(SparsityExplorer().widget())

# %% [markdown]
# ### Many features, many dimensions
# With more features and dimensions, the model can mix arrangements: some features alone, some in
# antipodal pairs, some in triangles or pentagons living in their own 2-D subspaces. Elhage et al.
# found that as sparsity grows, the features' dimensionalities do not spread evenly but cluster at
# those special fractions. We train a sweep with 40 equally important features in 10 dimensions
# (the paper used 400 in 30) and plot every feature's `D_i`, next to the model-wide *dimensions per
# feature* `m / ||W||_F^2` (the number of dimensions over the number of features represented,
# counted by their squared norms).

# %% tags=["export"]
GEOMETRY_FEATS, GEOMETRY_HIDDEN = 40, 10
GEOMETRY_PROBABILITIES = torch.logspace(0, -1.3, 10)  # 1 down to 0.05


@memoized
def train_geometry_sweep(steps: int = 2500, seed: int = 0, progress_bar: bool = True) -> ToyModel:
    """Equally important features in fewer dimensions, one instance per feature probability."""
    n_instances = len(GEOMETRY_PROBABILITIES)
    model = ToyModel(n_instances, GEOMETRY_FEATS, GEOMETRY_HIDDEN, seed=seed)
    train_toy_models(model, GEOMETRY_PROBABILITIES[:, None].expand(n_instances, GEOMETRY_FEATS),
                     torch.ones(n_instances, GEOMETRY_FEATS), steps=steps, batch_size=256, lr=5e-3, seed=seed,
                     progress_bar=progress_bar)
    return model


def dimensions_per_feature(W: Float[Tensor, "instances hidden feats"]) -> Float[Tensor, "instances"]:
    """m / ||W||_F^2: dimensions per (norm-weighted) represented feature."""
    return W.shape[1] / W.pow(2).sum(dim=(1, 2))


# %%
geometry_model = train_geometry_sweep()
W = geometry_model.W.detach()
x_axis = (1 / GEOMETRY_PROBABILITIES).tolist()  # 1 / (1 - S)
dims = feature_dimensionality(W)  # [instances, feats]
figure = go.Figure()
for k, x in enumerate(x_axis):
    jitter = torch.linspace(0.97, 1.03, GEOMETRY_FEATS)
    figure.add_trace(go.Scatter(x=(x * jitter).tolist(), y=dims[k].tolist(), mode="markers",
                                marker=dict(size=5, color="#4c78a8", opacity=0.6), showlegend=False))
figure.add_trace(go.Scatter(x=x_axis, y=dimensions_per_feature(W).tolist(), mode="lines",
                            line=dict(color="black"), name="dimensions per feature, m / ||W||_F^2"))
for fraction, name in [(1, "1"), (3 / 4, "3/4 (tetrahedron)"), (2 / 3, "2/3 (triangle)"),
                       (1 / 2, "1/2 (antipodal pair)"), (2 / 5, "2/5 (pentagon)"), (3 / 8, "3/8 (square antiprism)")]:
    figure.add_hline(y=fraction, line_dash="dot", line_color="grey", annotation_text=name,
                     annotation_position="bottom right" if fraction == 3 / 8 else "top right")
figure.update_layout(title=f"Fractional dimensionality of each feature ({GEOMETRY_FEATS} features, "
                     f"{GEOMETRY_HIDDEN} dimensions)", xaxis_type="log", xaxis_title="1 / (1 - S)",
                     xaxis_dtick=1,  # label powers of ten only
                     yaxis_title="D_i", height=480, legend=dict(orientation="h", y=-0.2))

# %% [markdown]
# Dense, the model uses its 10 dimensions for 10 features' worth of norm (the black line at 1);
# because all features are equally important, *which* combination it keeps is arbitrary, so the
# individual `D_i` are scattered. As sparsity grows the black line falls in steps, and the features
# gather at special fractions: first every represented feature in antipodal pairs at `1/2` (20
# features in 10 dimensions, in each of the five seeds we tried; the test asks for 19), then, one
# step sparser, features at about `2/5`, a pentagon's share, beside the pairs that remain (5 to 12
# of the 40 within 0.02 of it on those seeds; we did not check each group's shape, and some seeds
# also gather features near 0.43), then lower fractions. The line
# lingers at those values instead of sliding smoothly. Elhage et al. observe this stickiness and tie
# it to particular polytopes; *why* it happens is not settled. One guess, ours and not the paper's,
# is that a model gains little from a shape it cannot complete. (Our model is smaller and trained for less time than the paper's, so expect
# some stragglers between the lines.)
#
# ## 5. Correlated and anticorrelated features
#
# So far every feature switched on independently of the others. Real features are not like that:
# "the text is French" and "the text is about Paris" come together; "this token is a verb" and
# "this token is a noun" never do. Correlation changes the geometry, because interference only
# costs anything when both features are on at once:
#
# - two **anticorrelated** features are never on together, so they can share a direction for
#   free, and the model places them antipodally;
# - two **correlated** features are usually on together, so overlapping would cost on every
#   example where they fire; the model prefers to give them orthogonal directions (and, when it
#   runs out of room, to merge them into one direction for their sum).
#
# Features come in pairs `(0, 1), (2, 3), ...` below. The correlated generator is given: one coin
# per pair switches both features on or off together.

# %% tags=["export"]
def correlated_features(batch_size: int, pair_probability: Float[Tensor, "instances pairs"],
                        generator: torch.Generator | None = None) -> Float[Tensor, "batch instances feats"]:
    """Features in pairs (2k, 2k + 1) that are on together, each pair with its probability; feats = 2 * pairs."""
    shape = (batch_size, *pair_probability.shape)
    is_on = torch.rand(shape, generator=generator) < pair_probability  # [batch, instances, pairs]
    values = torch.rand(*shape, 2, generator=generator)  # [batch, instances, pairs, 2]
    return (values * is_on[..., None]).flatten(-2)  # [batch, instances, 2 * pairs]


# %% [markdown]
# ### Exercise 4.7: anticorrelated pairs (difficulty 2/3, ~15 min)
# Write `anticorrelated_features(batch_size, pair_probability, generator)`, with the same shapes as
# `correlated_features`: `pair_probability` is `[instances, pairs]` and the output
# `[batch, instances, 2 * pairs]`, pair `k` being features `2k` and `2k + 1`. The two features of
# a pair must **never** be on together, yet each must still be on with probability `p`, that
# pair's probability (assume `p <= 1/2`). Active values are uniform in `[0, 1)` as before.
#
# <details><summary>Hint 1</summary>
#
# Make the *pair* active with probability `2p`; when it is, a fair coin picks which of its two
# features is on.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: three draws from the generator, `pair_on` and `first` of shape `shape = (batch_size,
# *pair_probability.shape)` (`[batch, instances, pairs]`), and the values of shape `(*shape, 2)`. Feature `2k`
# is on where `pair_on & first`, feature `2k + 1` where `pair_on & ~first`.
# </details>
# <details><summary>Hint 3</summary>
#
# `pair_on = torch.rand(shape, ...) < 2 * p`, `first = torch.rand(shape, ...) < 0.5`; stack the two
# masks along a new last dimension, multiply by the values, and `.flatten(-2)` to `[batch, instances, 2 *
# pairs]`.
# </details>

# %% tags=["export"]
def anticorrelated_features(batch_size: int, pair_probability: Float[Tensor, "instances pairs"],
                            generator: torch.Generator | None = None) -> Float[Tensor, "batch instances feats"]:
    """Features in pairs (2k, 2k + 1) never on together; each on with its pair's probability."""
    ### BEGIN SOLUTION
    shape = (batch_size, *pair_probability.shape)
    pair_on = torch.rand(shape, generator=generator) < 2 * pair_probability  # [batch, instances, pairs]
    first = torch.rand(shape, generator=generator) < 0.5  # [batch, instances, pairs]
    is_on = torch.stack([pair_on & first, pair_on & ~first], dim=-1)  # [batch, instances, pairs, 2]
    values = torch.rand(*shape, 2, generator=generator)  # [batch, instances, pairs, 2]
    return (values * is_on).flatten(-2)  # [batch, instances, 2 * pairs]
    ### END SOLUTION


# %%
anticorrelated_features = check_exercise("4.7", anticorrelated_features)

# %% [markdown]
# Now three kinds of data for the same model, four features (two pairs) in two dimensions, each
# feature on with probability 0.1: independent features, correlated pairs, anticorrelated pairs.
# Each kind trains from four seeds; we plot the seed with the lowest loss, each feature's direction
# coloured by its pair, and print the cosine between the two features of each pair for every seed.

# %% tags=["export"]
CORRELATION_PROBABILITY = 0.1


def independent_pairs(batch_size: int, pair_probability: Float[Tensor, "instances pairs"],
                      generator: torch.Generator | None = None) -> Float[Tensor, "batch instances feats"]:
    """The same two features per pair, switched on independently (the baseline)."""
    return generate_features(batch_size, pair_probability.repeat_interleave(2, dim=-1), generator)


@memoized
def train_correlation_models(n_seeds: int = 4, steps: int = 2500, seed: int = 0, progress_bar: bool = True
                             ) -> dict[str, tuple[Float[Tensor, "seed hidden feats"], Float[Tensor, "seed"]]]:
    """(W, loss) of 4-feature, 2-dimension models, several seeds each, for each kind of paired data."""
    results = {}
    for name, data in {"independent": independent_pairs, "correlated": correlated_features,
                       "anticorrelated": anticorrelated_features}.items():
        model = ToyModel(n_seeds, n_feats=4, n_hidden=2, seed=seed)
        losses = train_toy_models(model, torch.full((n_seeds, 2), CORRELATION_PROBABILITY), torch.ones(n_seeds, 4),
                                  steps=steps, batch_size=512, lr=1e-2, seed=seed, data=data, progress_bar=progress_bar)
        results[name] = (model.W.detach(), losses)
    return results


def pair_cosines(W: Float[Tensor, "instances hidden feats"]) -> Float[Tensor, "instances pairs"]:
    """Cosine similarity between the directions of features 2k and 2k + 1."""
    return F.cosine_similarity(W[..., 0::2], W[..., 1::2], dim=1)


# %%
correlation_runs = train_correlation_models()
figure = make_subplots(rows=1, cols=3, subplot_titles=list(correlation_runs))
pair_colours = ["#4c78a8", "#e45756"]
for col, (name, (W, losses)) in enumerate(correlation_runs.items(), start=1):
    best = int(losses.argmin())
    for i in range(4):
        x, y = W[best, :, i].tolist()
        figure.add_trace(go.Scatter(x=[0, x], y=[0, y], mode="lines+markers+text", text=["", f"{i}"],
                                    textposition="top center", line=dict(color=pair_colours[i // 2])), row=1, col=col)
    figure.update_xaxes(range=[-1.5, 1.5], row=1, col=col)
    figure.update_yaxes(range=[-1.5, 1.5], scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
figure.update_layout(title="Four features in two dimensions, best seed (pairs 0-1 in blue, 2-3 in red)",
                     showlegend=False, height=360)
figure.show()
pd.DataFrame({(name, seed): {"loss": float(loss), "cosine within pair 0-1": float(cosines[0]),
                             "cosine within pair 2-3": float(cosines[1]), "lowest loss": seed == int(losses.argmin())}
              for name, (W, losses) in correlation_runs.items()
              for seed, (cosines, loss) in enumerate(zip(pair_cosines(W), losses))}).T.rename_axis(["features", "seed"]
              ).style.format({"loss": "{:.4f}", "cosine within pair 0-1": "{:+.2f}", "cosine within pair 2-3": "{:+.2f}"})

# %% [markdown]
# The best anticorrelated models put each pair exactly antipodal, and their loss is essentially
# zero: the two features are never on together, so the ReLU removes all of their interference.
# (Some seeds get stuck pairing the wrong features, at a clearly higher loss.) Correlated pairs sit
# at right angles in every low-loss seed: the model spends its two dimensions keeping the features
# that fire together apart, and lets the two *pairs* share instead (one feature of each pair points
# opposite to one feature of the other pair; which ones is up to the seed; and pairs fire
# independently, so they rarely collide). With independent features,
# which features end up antipodal is up to the seed.
#
# ## 6. A privileged basis and polysemantic neurons
#
# Everything so far was about directions, because the hidden layer had no activation function.
# Put a ReLU on it, `h = ReLU(W x)`, and the hidden dimensions become **neurons**: the basis is now
# privileged, since the ReLU acts on each coordinate separately. A neuron can be read on its own,
# and we can ask whether it is **monosemantic** (it responds to one feature) or **polysemantic**
# (several).
#
# When feature `i` is on by itself, a ReLU neuron fires only if feature `i`'s weight onto it is positive. So a
# natural measure of how many features a neuron carries looks at the positive weights
# `w_i = max(W[neuron, i], 0)` and computes their *participation ratio*
#
# `features per neuron = (sum_i w_i^2)^2 / sum_i w_i^4`.
#
# It is exactly `k` when the neuron has `k` equal positive weights, 1 for a neuron dedicated to one
# feature, and somewhere in between for uneven weights. A neuron with no positive weight never
# fires: count it as 0.

# %% tags=["export"]
class NeuronModel(ToyModel):
    """The toy model with a ReLU on its hidden layer: h = ReLU(W x), x' = ReLU(W^T h + b)."""

    def forward(self, features: Float[Tensor, "batch instances feats"]) -> Float[Tensor, "batch instances feats"]:
        neurons = F.relu(torch.einsum("bif,ihf->bih", features, self.W))  # [batch, instances, hidden]
        return F.relu(torch.einsum("bih,ihf->bif", neurons, self.W) + self.b_final)  # [batch, instances, feats]


# %% [markdown]
# ### Exercise 4.8: features per neuron (difficulty 2/3, ~15 min)
# Write `features_per_neuron(W)`: the participation ratio of each neuron's positive weights, shape
# `[instances, hidden]`, and 0 for a neuron with no positive weight.
#
# <details><summary>Hint 1</summary>
#
# Neurons are the rows of each `W[k]`, so the sums run over the last dimension (features).
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: keep only the positive weights (`F.relu(W)`), square them, and compute the participation
# ratio per neuron, `(sum of squares) ** 2 / (sum of fourth powers)`. Both sums over the features
# give `[instances, hidden]`; a neuron with no positive weight gives 0 / 0, so clamp the
# denominator.
# </details>
# <details><summary>Hint 3</summary>
#
# `squared = F.relu(W) ** 2`; `squared.sum(-1) ** 2 / (squared ** 2).sum(-1).clamp(min=1e-12)`.
# </details>

# %% tags=["export"]
def features_per_neuron(W: Float[Tensor, "instances hidden feats"]) -> Float[Tensor, "instances hidden"]:
    """Participation ratio of each neuron's positive weights: about the number of features it fires for."""
    ### BEGIN SOLUTION
    squared = F.relu(W) ** 2  # [instances, hidden, feats]
    return squared.sum(-1) ** 2 / (squared ** 2).sum(-1).clamp(min=1e-12)
    ### END SOLUTION


# %%
features_per_neuron = check_exercise("4.8", features_per_neuron)

# %% [markdown]
# Ten features, five neurons, importance falling with the feature index, trained at a range of
# sparsities.

# %% tags=["export"]
NEURON_FEATS, NEURON_HIDDEN = 10, 5
NEURON_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)


@memoized
def train_neuron_sweep(steps: int = 6000, seed: int = 0, progress_bar: bool = True) -> NeuronModel:
    """One privileged-basis model per sparsity, importance 0.8^i."""
    n_instances = len(NEURON_SPARSITIES)
    feature_probability = (1 - torch.tensor(NEURON_SPARSITIES))[:, None].expand(n_instances, NEURON_FEATS)
    importance = (0.8 ** torch.arange(NEURON_FEATS).float()).expand(n_instances, NEURON_FEATS)
    model = NeuronModel(n_instances, NEURON_FEATS, NEURON_HIDDEN, seed=seed)
    train_toy_models(model, feature_probability, importance, steps=steps, batch_size=512, lr=3e-2, seed=seed,
                     progress_bar=progress_bar)
    return model


# %%
neuron_model = train_neuron_sweep()
W = neuron_model.W.detach()
per_neuron = features_per_neuron(W)  # [instances, hidden]
figure = make_subplots(rows=1, cols=len(NEURON_SPARSITIES), shared_yaxes=True, horizontal_spacing=0.015,
                       subplot_titles=[f"S = {s}<br>{per_neuron[k][per_neuron[k] > 0].mean():.2f}"
                                       for k, s in enumerate(NEURON_SPARSITIES)])
figure.update_annotations(font_size=12)  # seven narrow panels: short titles that do not collide
for k in range(len(NEURON_SPARSITIES)):
    for i in range(NEURON_FEATS):  # stacked bars: each feature's positive weight onto each neuron
        figure.add_trace(go.Bar(x=[f"n{j}" for j in range(NEURON_HIDDEN)], y=F.relu(W[k, :, i]).tolist(),
                                marker_color=f"hsl({36 * i},65%,50%)", name=f"feature {i}",
                                showlegend=k == 0), row=1, col=k + 1)
figure.update_layout(barmode="stack", title="Positive weight of each feature (colour) onto each neuron; "
                     "under each S: features per neuron",
                     height=420, margin=dict(t=100), legend=dict(font_size=10))

# %% [markdown]
# Dense, each neuron carries a single feature: the model keeps the five most important features,
# one per neuron, and the neurons are monosemantic (1.0 features per neuron). As sparsity grows,
# less important features are packed onto neurons that already carry others: the neurons become
# polysemantic: about three to four features per firing neuron on average at `S = 0.9` and
# beyond in this run (2.8 to 3.7), and more than two for every seed we tried (the tests hold that
# bar). The dense end needs its 6,000 steps: at 3,000, one seed of six still averaged about 1.4
# features per neuron. Nothing about the features
# changed; only how often they fire. (Unlike the directions of Section 2, the neurons cannot be
# rotated freely. Rotate the hidden space of the linear-hidden model, and the inverse rotation in
# `W^T` undoes it: the same function. Do it here, and the ReLU, which acts on each coordinate on its
# own, is applied in a different basis: a *different* function. That is what "privileged" means:
# the architecture singles out these axes, so they are worth reading one by one.)
# A real model's neurons, reading many sparse features, end up like the right-hand panels, which
# is why "what does neuron 1,234 do?" so often has no clean answer.
#
# ## 7. Undoing superposition: a sparse dictionary
#
# If activations are sparse combinations of more feature directions than dimensions, how do we get
# the features back? Take the sparse ReLU model from Section 2 with `S = 0.997`, which stores all 20
# features in 5 dimensions, and look only at its hidden vector `h = W x`.
#
# - A **linear** read-out cannot recover 20 numbers from 5: the least-squares answer
#   `x = pinv(W) h` is the smallest-norm `x` that explains `h`, and it smears every active feature
#   over all the others.
# - But we know something a linear read-out ignores: `x` is **sparse** and non-negative. Among
#   all the `x` that explain `h`, look for the one with the fewest active features. With the
#   dictionary `W` in hand, that is a small optimisation: minimise
#   `||W c - h||^2 / 2 + lambda * sum_i c_i` over `c >= 0`.
#
# A simple way to solve it is *projected gradient descent with a threshold* (ISTA): start from
# `c = 0` and repeat `c <- ReLU(c - eta * (W^T (W c - h) + lambda))`, with step size
# `eta = 1 / sigma_max(W)^2` (the largest singular value of `W`, squared), which guarantees the
# loss never goes up.
#
# ### Exercise 4.9: a sparse code for the hidden vector (difficulty 3/3, ~20 min)
# Write `sparse_code(h, W, l1=0.01, steps=300)`. `h` is `[batch, instances, hidden]`, `W` is
# `[instances, hidden, feats]`; return `c`, `[batch, instances, feats]`, after exactly `steps`
# updates of the rule above, starting from zeros, with one step size per instance:
# `eta = 1 / torch.linalg.matrix_norm(W, ord=2) ** 2` (shape `[instances]`).
#
# <details><summary>Hint 1</summary>
#
# `W c` for every example and instance is `torch.einsum("bif,ihf->bih", c, W)`; `W^T r` for a
# residual `r` is `torch.einsum("bih,ihf->bif", r, W)`: the same two products as the toy model.
# </details>
# <details><summary>Hint 2</summary>
#
# `eta` has shape `[instances]`; `eta[:, None]` broadcasts against `[batch, instances, feats]`.
# </details>
# <details><summary>Hint 3</summary>
#
# ```
# c = torch.zeros(h.shape[0], W.shape[0], W.shape[2])
# for _ in range(steps):
#     residual = torch.einsum("bif,ihf->bih", c, W) - h
#     c = F.relu(c - eta[:, None] * (torch.einsum("bih,ihf->bif", residual, W) + l1))
# ```
# </details>

# %% tags=["export"]
def sparse_code(h: Float[Tensor, "batch instances hidden"], W: Float[Tensor, "instances hidden feats"],
                l1: float = 0.01, steps: int = 300) -> Float[Tensor, "batch instances feats"]:
    """Non-negative sparse code c with W c ~ h, by `steps` iterations of ISTA from zero."""
    ### BEGIN SOLUTION
    eta = 1 / torch.linalg.matrix_norm(W, ord=2) ** 2  # [instances]
    c = torch.zeros(h.shape[0], W.shape[0], W.shape[2])  # [batch, instances, feats]
    for _ in range(steps):
        residual = torch.einsum("bif,ihf->bih", c, W) - h  # [batch, instances, hidden]
        c = F.relu(c - eta[:, None] * (torch.einsum("bih,ihf->bif", residual, W) + l1))
    return c
    ### END SOLUTION


# %%
sparse_code = check_exercise("4.9", sparse_code)

# %% [markdown]
# We compare three ways of getting `x` back from `h` on fresh data, grouped by how many features
# are active in the example: the pseudo-inverse, the model's own read-out `ReLU(W^T h + b)`, and
# the sparse code with the model's `W` as the dictionary. To have examples with several active
# features, we draw them more densely (`p = 0.1`) than the model was trained on.

# %% tags=["export"]
RECOVERY_SPARSITY = 0.997  # the sweep's instance we read from: all 20 features are stored in 5 dimensions


def recovery_errors(model: ToyModel, instance: int, probability: float = 0.1, batch_size: int = 4000,
                    seed: int = 0) -> dict[str, Float[Tensor, "batch"]]:
    """Squared error of three read-outs of x from h = W x, per example, and the active-feature count."""
    W = model.W.detach()[instance:instance + 1]  # [1, hidden, feats]
    n_feats = W.shape[-1]
    x = generate_features(batch_size, torch.full((1, n_feats), probability),
                          torch.Generator().manual_seed(seed))  # [batch, 1, feats]
    b = model.b_final.detach()[instance:instance + 1]  # [1, feats]
    with torch.no_grad():
        h = torch.einsum("bif,ihf->bih", x, W)  # [batch, 1, hidden]
        readouts = {
            "pseudo-inverse": torch.einsum("fh,bih->bif", torch.linalg.pinv(W[0]), h),
            "model read-out": F.relu(torch.einsum("bih,ihf->bif", h, W) + b),
            "sparse code": sparse_code(h, W),
        }
    errors = {name: ((guess - x) ** 2).sum(-1)[:, 0] for name, guess in readouts.items()}
    errors["active features"] = (x > 0).sum(-1)[:, 0]
    return errors


# %%
errors = recovery_errors(relu_sweep, SWEEP_SPARSITIES.index(RECOVERY_SPARSITY))
active = errors.pop("active features")
counts = list(range(0, 5))
print("examples per active-feature count:", [int((active == k).sum()) for k in counts])
lines({name: [error[active == k].mean().item() for k in counts] for name, error in errors.items()}, x=counts,
      title=f"Recovering x from the 5-dimensional hidden vector (20 features, S = {RECOVERY_SPARSITY} model)",
      x_label="active features in the example", y_label="mean squared error ||x_hat - x||^2")

# %% [markdown]
# With one active feature the sparse code is essentially exact, far better than the pseudo-inverse
# and better than the model's own read-out: superposition lost almost no information about a single
# feature, it only hid it in a code a linear read-out cannot decode. With several active features
# every method degrades, the sparse code least. Some of that information is truly gone: if both
# features of an antipodal pair are on, `h` only records their difference. Sparsity is exactly what
# the trick relies on, and the model was trained for examples with about `20 x 0.003 = 0.06` active
# features, where two at once almost never happens.
#
# **The bridge to Chapter 05.** Here we cheated: we used the model's own `W` as the dictionary.
# For a real model we know neither the features nor their directions; we only see activations.
# A **sparse autoencoder** learns both from activations alone: its decoder is the dictionary (an
# *overcomplete* set of directions, more than the dimensions, as our 20 features in 5 dimensions),
# and its encoder, one linear layer and a ReLU, replaces our 300 ISTA steps with a single learned
# step. Its loss is the one we just minimised: reconstruction error plus an L1 penalty that keeps
# the code sparse. Chapter 05 trains one on a toy model like this, where we can check that it
# recovers the true features, and then on the organism.
#
# ## What these methods can't tell you
# - The toy model is a hypothesis made concrete, not a measurement of a real network: real
#   features are not uniform on `[0, 1)`, not independent, and not known in advance. The toy model
#   shows superposition *can* happen and what drives it, not that a given model does it.
# - "Represented" (`||W_i|| > 0.5`) and the other thresholds are our choices; near a phase
#   boundary, a different threshold or seed changes the verdict. The phase diagram is a map of
#   optima, and training does not always find the optimum (hence the best-of-seeds).
# - Fractional dimensionality and interference describe weights, not computation: they say where
#   features are stored, not which downstream computation reads them.
# - Features per neuron counts positive weights. It does not say which features a neuron's
#   activations are *used* for, and a neuron can look monosemantic on weights yet fire on
#   combinations of inputs it was never trained on.
# - The sparse code recovered the features only because we had the true dictionary and the data
#   really was sparse. A learned dictionary (Chapter 05) may split, merge or miss features, and
#   nothing in its loss guarantees its directions are the model's.
#
# **Your record so far:**

# %%
show_progress("04_superposition")
