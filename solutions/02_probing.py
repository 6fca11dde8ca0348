# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 02: Probing
#
# **Time:** two and a half to three hours. **Exercises:** 9, each checked as soon as you run the
# cell after it. *Run All* takes under 2 minutes on a 2-core laptop CPU (longer when the machine is
# busy; JupyterLab then shows the last cell: scroll up to watch the progress bars).
#
# **You will learn to**
# - collect residual-stream activations at chosen positions for prompts whose labels you know;
# - train a linear probe in plain torch, layer by layer, and score it on held-out prompts;
# - find a direction with a difference of means and compare it with the probe's direction;
# - tell a probe that reads a *concept* from one that memorises *words*, with random labels,
#   control tasks, a random-weights baseline and a better held-out split;
# - show that information a probe can read is not necessarily information the model uses, and
#   push along a direction to find out which of two directions the model reads.
#
# **Seed concepts:** probing classifiers; observational methods and their limit (what is
# represented vs what is used); the linear representation hypothesis; the chess-model example.
#
# As in every chapter: write your code where it says `raise NotImplementedError`, then run the
# check cell below it. A skipped exercise falls back to the reference solution, so every later cell
# still runs.

# %%
from utils import check_exercise, load_model, prompt_set, setup, show_progress

env = setup()

# %% [markdown]
# ## 1. Asking the residual stream a question
#
# A **probe** is a small classifier trained to predict a property of the input (is this statement
# true? is this review positive?) from a model's internal activations. If a simple probe predicts
# the property well on inputs it was not trained on, we say the property is *decodable* from that
# layer. Probing is an **observational** method: it reads activations and changes nothing.
#
# The method is not specific to language models (its modern form dates from probes of image
# networks, Alain and Bengio, 2016). A well-known study probed the chess engine AlphaZero
# (McGrath et al., 2022): linear probes on its activations, trained on positions labelled with
# human chess concepts (material balance, whether a piece is threatened, king safety...), found
# many of those concepts readable, and showed *when during training* and *in which layer* each one
# appeared. A second game model, Othello-GPT, was trained to predict the next move in games of
# random legal moves and never shown the board. It turned out to carry the state of the board:
# first found with non-linear probes (Li et al., 2023), who also *edited* that representation and
# watched the model's moves change accordingly, then with linear probes once the board was
# described as "mine / theirs" instead of "black / white" (Nanda et al., 2023).
#
# That second story is evidence for the **linear representation hypothesis**: a model stores the
# features it computes as *directions* in activation space, so a feature's value is read by a dot
# product. If the hypothesis holds, a *linear* probe is the right tool: a non-linear probe can
# compute the property itself out of raw ingredients, and then we learn about the probe rather
# than about the model.
#
# Our model organism is ideal for this: we wrote the world it learned, so every prompt comes with
# its labels, and we know which combinations the model never saw in training. We will probe three
# labels:
#
# | family | label | example prompt (the probe reads the last token) |
# |---|---|---|
# | `truth` | is the statement true? | `The capital of France is Rome. That is` |
# | `sentiment` | is the review positive? | `The movie was dreadful. I` |
# | `ioi` | `io_gender`: is the indirect object a man (1) or a woman (0)? | `When Mary and John went to the store, John gave a drink to` |
#
# And we will compare each result with the same probe on a **baseline**: a model with the
# organism's architecture and random, untrained weights. Whatever a probe can read from a model
# that learned nothing tells us about the probe and the prompts, not about learning.

# %%
model = load_model()

# %% [markdown]
# The baseline comes from Hugging Face's `GPT2LMHeadModel` built from the organism's config with
# a fixed seed, saved to a temporary folder and loaded through the same `load_model`, so it has the
# same hook names and tokenizer.

# %% tags=["export"]
import tempfile

import torch
from jaxtyping import Float, Int
from torch import Tensor

import utils.models
from utils import progress_bar
from utils.memo import memoized
from utils.models import load_model
from utils.organism.world import PromptSet, prompt_set


def random_init_model(seed: int = 0, folder: str | None = None, device: str = "cpu"):
    """A TransformerBridge with the architecture and tokenizer of `folder` (default: the organism)
    and freshly initialised, untrained weights."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = str(folder or utils.models.ORGANISM_DIR)
    with torch.random.fork_rng(devices=[]):  # seeded here, and your own random stream left as it was
        torch.manual_seed(seed)
        untrained = GPT2LMHeadModel(GPT2Config.from_pretrained(folder))
    with tempfile.TemporaryDirectory() as tmp, utils.models.quiet_transformers():
        untrained.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp)
        return load_model(tmp, device=device, verbose=False)


# %%
baseline = random_init_model(seed=0, device=model.cfg.device)
print(f"baseline: {baseline.cfg.n_layers} layers, d_model {baseline.cfg.d_model}, same tokenizer: "
      f"{baseline.tokenizer.get_vocab() == model.tokenizer.get_vocab()}")

# %% [markdown]
# ### Which activations?
# We read the residual stream at `n_layers + 1` points: before the first block (just the token
# and position embeddings, `blocks.0.hook_resid_pre`), then after each block
# (`blocks.{layer}.hook_resid_post`). We call these *residual points* 0 to `n_layers`, and the
# name of point `i` below is `embed` for 0 and `after L{i-1}` for the others.
#
# Prompts in a batch have different lengths. As in the rest of the workbook, `tokenize` puts the
# end-of-text token in front of each prompt and pads on the **right**, and returns the index of
# each prompt's last real token.

# %% tags=["export"]
def tokenize(model, prompts: list[str]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """Token ids with the end-of-text token prepended, right-padded; and each prompt's last index."""
    tokenizer = model.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [[tokenizer.bos_token_id] + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    device = model.cfg.device  # the model's embeddings live there: so must the ids (CPU, CUDA or MPS)
    tokens = torch.full((len(encoded), max(len(ids) for ids in encoded)), pad, dtype=torch.long, device=device)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids, device=device)
    last = torch.tensor([len(ids) - 1 for ids in encoded], device=device)
    return tokens, last


def residual_hook_names(n_layers: int) -> list[str]:
    """The hook of each residual point: the embeddings, then the output of every block."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def residual_point_names(n_layers: int) -> list[str]:
    """Short names for plots: 'embed', 'after L0', 'after L1', ..."""
    return ["embed"] + [f"after L{layer}" for layer in range(n_layers)]


# %%
from pprint import pprint

tokens, last = tokenize(model, ["The movie was dreadful. I", "I thought the book was really fun, so I"])
print(tokens)
print("last real token of each prompt:", last.tolist())
pprint(model.to_str_tokens(tokens[0]), compact=True, width=100)  # folded to fit the page

# %% [markdown]
# ### Exercise 2.1: the residual stream at chosen positions (difficulty 2/3, ~15 min)
# Write `residual_stack(model, tokens, positions)`. For prompt `i` of the batch, take the residual
# stream at position `positions[i]` at every residual point (the hooks of
# `residual_hook_names(model.cfg.n_layers)`, in that order), and return them stacked into a tensor
# of shape `[n_layers + 1, batch, d_model]`.
#
# <details><summary>Hint 1</summary>
#
# `model.run_with_cache(tokens, names_filter=...)` caches only the hooks whose names pass the
# filter; `cache[name]` has shape `[batch, pos, d_model]`.
# </details>
# <details><summary>Hint 2</summary>
#
# Each row needs its own position: `cache[name][torch.arange(batch), positions]` picks element
# `(i, positions[i])` for every `i`. `cache[name][:, -1]` would read the padding of short prompts.
# </details>
# <details><summary>Hint 3</summary>
#
# `torch.stack([cache[name][rows, positions] for name in names])`.
# </details>

# %% tags=["export"]
@torch.no_grad()
def residual_stack(model, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch"]
                   ) -> Float[Tensor, "layer batch d_model"]:
    """The residual stream at each prompt's chosen position, at every residual point."""
    ### BEGIN SOLUTION
    names = residual_hook_names(model.cfg.n_layers)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    rows = torch.arange(tokens.shape[0])
    return torch.stack([cache[name][rows, positions] for name in names])  # [layer, batch, d_model]
    ### END SOLUTION


# %%
residual_stack = check_exercise("2.1", residual_stack)

# %% [markdown]
# `collect_residuals` runs `residual_stack` over a whole list of prompts in batches. By default it
# reads the last token; `offset=k` reads the token `k` places before it.

# %% tags=["export"]
@memoized  # does nothing in your session; `make test` replays its result from disk (utils/memo.py)
def collect_residuals(model, prompts: list[str], offset: int = 0, batch_size: int = 256,
                      progress: bool = True) -> Float[Tensor, "layer batch d_model"]:
    """`residual_stack` for many prompts, at the token `offset` places before each prompt's last."""
    chunks = []
    starts = range(0, len(prompts), batch_size)
    for start in progress_bar(starts, show=progress and len(starts) >= 3, desc="collecting activations"):
        tokens, last = tokenize(model, prompts[start:start + batch_size])
        chunks.append(residual_stack(model, tokens, last - offset).cpu())
    return torch.cat(chunks, dim=1)


@memoized
def labelled_residuals(model, family: str, label: str, n_train: int | None = None, n_test: int | None = None,
                       offset: int = 0, progress: bool = True, seed: int = 0) -> dict[str, Tensor]:
    """Activations and 0/1 labels for the train and the held-out test split of a prompt family
    (`n_train` and `n_test` prompts drawn with `seed`; None: the whole split).

    String labels become 0/1 by sorted order (for io_gender: female 0, male 1).
    """
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        prompts = prompt_set(family, split, n=n, seed=seed)
        values = prompts.labels[label]
        classes = sorted(set(values))
        if len(classes) > 2:
            raise ValueError(f"label {label!r} has {len(classes)} values; these probes are binary")
        data[f"x_{split}"] = collect_residuals(model, prompts.prompts, offset, progress=progress)
        data[f"y_{split}"] = torch.tensor([classes.index(v) if isinstance(v, str) else int(v) for v in values])
    return data


# %% [markdown]
# Now the data for the whole chapter: each label on the organism and on the baseline. The train
# split holds combinations the organism saw in training; the test split holds combinations it never
# saw (held-out country-relation pairs, reviews, name pairs), so a probe is scored on new prompts.

# %%
LABELS = {"truth": ("truth", "truth"), "sentiment": ("sentiment", "sentiment"), "io_gender": ("ioi", "io_gender")}
SIZES = {"truth": (None, None), "sentiment": (800, 300), "io_gender": (800, 300)}  # (train, test); None: all
MODELS = {"organism": model, "baseline": baseline}

data = {}
for (model_name, some_model), (label, (family, key)) in progress_bar(
        [(m, l) for m in MODELS.items() for l in LABELS.items()], desc="models x labels"):
    data[model_name, label] = labelled_residuals(some_model, family, key, *SIZES[label], progress=False)

import pandas as pd
from IPython.display import display

pd.DataFrame({label: {"train [point, prompt, d_model]": str(list(data["organism", label]["x_train"].shape)),
                      "test": str(list(data["organism", label]["x_test"].shape)),
                      "fraction of 1s in test": round(data["organism", label]["y_test"].float().mean().item(), 2)}
              for label in LABELS}).T.rename_axis("label")

# %% [markdown]
# ## 2. Linear probes, layer by layer
#
# Our probe is logistic regression: a weight vector `w` and a bias `b`, and the prediction
# `sigmoid(w . x + b)` is the probability that the label is 1. We centre the activations on the
# training mean and divide by one overall scale, so the optimiser sees numbers of a sensible size;
# because the scale is a single number, the probe's weight still points along a direction of the
# original residual space (`LinearProbe.direction`). The weights start at zero, so training is
# deterministic.

# %% tags=["export"]
from torch import nn


class LinearProbe(nn.Module):
    """Logistic regression on centred, rescaled activations: one logit per input (label 1 if > 0)."""

    def __init__(self, x_train: Float[Tensor, "batch d_model"]):
        super().__init__()
        centred = x_train - x_train.mean(0)
        self.register_buffer("mean", x_train.mean(0))
        self.register_buffer("scale", (centred.norm(dim=-1).mean() / x_train.shape[1] ** 0.5).clamp_min(1e-6))
        self.linear = nn.utils.skip_init(nn.Linear, x_train.shape[1], 1)  # zeroed below: skip the random draw
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch"]:
        return self.linear((x - self.mean) / self.scale).squeeze(-1)

    @property
    def direction(self) -> Float[Tensor, "d_model"]:
        """The unit vector, in the original residual space, along which the probe's logit grows."""
        weight = self.linear.weight[0].detach()
        return weight / weight.norm().clamp_min(1e-12)


# %% [markdown]
# ### Exercise 2.2: train a linear probe (difficulty 2/3, ~15 min)
# Write `train_probe(x, y, steps, lr, weight_decay)`: build `LinearProbe(x)`, then take `steps`
# full-batch steps of `torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)` on
# the binary cross-entropy between the probe's logits and the 0/1 labels `y`. Return the probe.
# (The check tests what any such training gives: the first few steps, a probe that fits, and
# weights that a large `weight_decay` shrinks. So `AdamW`, or a summed loss, passes too.)
#
# <details><summary>Hint 1</summary>
#
# `torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)` takes raw logits (no
# sigmoid) and float targets: `y.float()`.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: `probe = LinearProbe(x)`; one optimizer over `probe.parameters()`; then `steps` steps on
# the whole batch at once (no minibatches). `probe(x)` gives one logit per prompt, `[batch]`, the
# shape of `y`.
# </details>
# <details><summary>Hint 3</summary>
#
# Each step: compute the loss, `optimizer.zero_grad()`, `loss.backward()`, `optimizer.step()`.
# Without `zero_grad` the gradients of all earlier steps pile up.
# </details>

# %% tags=["export"]
def train_probe(x: Float[Tensor, "batch d_model"], y: Int[Tensor, "batch"], steps: int = 200,
                lr: float = 0.01, weight_decay: float = 1e-3) -> LinearProbe:
    """A logistic-regression probe fitted to (x, y) with full-batch Adam."""
    ### BEGIN SOLUTION
    probe = LinearProbe(x)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x), y.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe
    ### END SOLUTION


# %%
train_probe = check_exercise("2.2", train_probe)

# %% [markdown]
# ### Exercise 2.3: probe accuracy by layer (difficulty 2/3, ~15 min)
# Write `probe_accuracy_by_layer(x_train, y_train, x_test, y_test)`. The activations have shape
# `[layer, batch, d_model]`. For every residual point, train a probe on the training split (with
# `train_probe` and its default settings) and measure its accuracy on the **test** split: the
# fraction of test prompts where "logit > 0" agrees with the label. Return a float tensor of shape
# `[layer]`.
#
# <details><summary>Hint 1</summary>
#
# A logit above 0 means a probability above 0.5, so the prediction for label 1 is `probe(x) > 0`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `x_train[layer]` is `[batch, d_model]`, the input `train_probe` wants with `y_train`;
# `probe(x_test[layer])` gives `[batch_test]` logits. Evaluating needs no gradients
# (`torch.no_grad()`). One accuracy per residual point, `x_train.shape[0]` of them.
# </details>
# <details><summary>Hint 3</summary>
#
# `((probe(x_test[layer]) > 0) == y_test.bool()).float().mean()` inside a loop over
# `range(x_train.shape[0])`; then `torch.stack` the results.
# </details>

# %% tags=["export"]
def probe_accuracy_by_layer(x_train: Float[Tensor, "layer batch d_model"], y_train: Int[Tensor, "batch"],
                            x_test: Float[Tensor, "layer batch_test d_model"], y_test: Int[Tensor, "batch_test"]
                            ) -> Float[Tensor, "layer"]:
    """Held-out accuracy of a linear probe trained at each residual point."""
    ### BEGIN SOLUTION
    accuracies = []
    for layer in range(x_train.shape[0]):
        probe = train_probe(x_train[layer], y_train)
        with torch.no_grad():
            predicted = probe(x_test[layer]) > 0
        accuracies.append((predicted == y_test.bool()).float().mean())
    return torch.stack(accuracies)
    ### END SOLUTION


# %%
probe_accuracy_by_layer = check_exercise("2.3", probe_accuracy_by_layer)

# %% [markdown]
# Now every label, on both models:

# %%
from utils.plotting import lines

points = residual_point_names(model.cfg.n_layers)
accuracy = {key: probe_accuracy_by_layer(d["x_train"], d["y_train"], d["x_test"], d["y_test"])
            for key, d in progress_bar(data.items(), desc="probes")}
lines({f"{label} ({model_name})": accuracy[model_name, label] for model_name, label in accuracy}, x=points,
      title="Held-out accuracy of a linear probe at each residual point",
      x_label="residual point (last token)", y_label="test accuracy")

# %%
pd.DataFrame({(label, name): accuracy[model_name, label].tolist() for label in LABELS
              for model_name, name in (("organism", "organism"), ("baseline", "random baseline"))},
             index=points).T.rename_axis(["label", "model"]).rename_axis(columns="test accuracy after").round(2)

# %% [markdown]
# Read the plot before going on, label by label:
# - At `embed`, the last token is the same word in every prompt of a family (` is`, ` I`, ` to`);
#   only its position varies. No label can be read there, on either model: the information has not
#   arrived yet.
# - **Sentiment** is read perfectly from the organism as soon as one block has run. But it is also
#   read well from the *random* model. A random first attention layer averages the embeddings of the
#   earlier tokens into the last position, and a linear probe can learn which of the 60 adjectives
#   (a random vector each) are the positive ones. High accuracy, and no learning at all behind it.
#   Section 4 takes this apart.
# - **The indirect object's gender** becomes readable from the organism only after its last block.
#   A probe cannot say why. One natural reading, which the logit lens of Chapter 03 can test, is
#   that the last block brings the indirect object's *name* to the last token (it has to say it
#   next), and the gender comes along with the name. The random model's blurred average of the
#   earlier tokens holds both names, which lets its probe guess better than chance. Before the last
#   block the organism's gender probe scores *below* chance at every point on this sample of
#   prompts, at worst by about three standard errors (`sqrt(0.25 / 300)`, about 0.03). Draw other
#   samples (the tests draw several) and it lands near chance, between about 0.4 and 0.6, never
#   above 0.65, where after the last block it is above 0.7. Where it is below, that is not "nothing": a probe wrong on
#   new prompts has learned a rule that the held-out split reverses. Here the test split holds out
#   *name pairs*, so a probe that keys on which names are present, rather than on which is the
#   indirect object, can learn associations that the new pairings turn around. Below-chance
#   held-out accuracy is a message about the split; how far below depends on the sample.
# - **Truth** needs the country and the stated value *combined*. The random model cannot combine
#   them and stays at chance. On the organism the verdict is readable after the first block already,
#   and the later blocks sharpen it: readable early, well before the model has to say it. Whether
#   the first block *computes* it there is a claim a probe cannot make; Section 5 intervenes.
#
# ### The payoff of a known world
# With a real model we would have to guess what the model does with these labels. Here we can check:
# the organism's *output* answers two of the three questions itself (` true` vs ` false`, ` loved`
# vs ` hated`), and we know the right answer to every prompt. So we can set the best probe beside
# the model's own behaviour on the same held-out prompts.

# %% tags=["export"]
def answer_ids(model, answers: list[str]) -> Int[Tensor, "batch"]:
    """The token id of each answer word (leading space included); each must be a single token."""
    ids = model.tokenizer(answers, add_special_tokens=False)["input_ids"]
    bad = [answer for answer, i in zip(answers, ids) if len(i) != 1]
    if bad:
        raise ValueError(f"answers that are not single tokens for this model: {bad[:5]}")
    return torch.tensor([i[0] for i in ids], device=model.cfg.device)


@torch.no_grad()
def logit_diffs(model, prompts: PromptSet, fwd_hooks: list = (), batch_size: int = 256) -> Float[Tensor, "batch"]:
    """Per prompt, logit(correct answer) - logit(wrong answer) at the last token, optionally with hooks."""
    correct, wrong = answer_ids(model, prompts.correct), answer_ids(model, prompts.wrong)
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens, last = tokenize(model, prompts.prompts[start:start + batch_size])
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))  # [batch, pos, d_vocab]
        rows = torch.arange(len(last), device=logits.device)
        final = logits[rows, last]  # [batch, d_vocab]
        chunks.append(final[rows, correct[start:start + batch_size]] - final[rows, wrong[start:start + batch_size]])
    return torch.cat(chunks)


# %%
test_sets = {label: prompt_set(family, "test", n=SIZES[label][1], seed=0) for label, (family, _) in LABELS.items()}
behaviour = {label: (logit_diffs(model, test_sets[label]) > 0).float().mean().item() for label in LABELS}
pd.DataFrame({label: {"best probe": round(accuracy["organism", label].max().item(), 2),
                      "at": points[int(accuracy["organism", label].argmax())],
                      "the model's own answer right on": round(behaviour[label], 2)} for label in LABELS}).T.rename_axis("label")

# %% [markdown]
# Three stories:
# - **Sentiment:** probe and output agree, both perfect.
# - **Truth:** probe and output agree again, both right on about 98% of the prompts. That
#   agreement is a finding, not a given: a probe can read a label that the output gets wrong, and a
#   weak probe result on a model that cannot do the task is easily misread as "a partial
#   representation". Only the known answer lets us compare the two.
# - **Gender:** the output here is a *name*: "right" means the indirect object beats the repeated
#   name. Nobody asks the model for a gender, yet the probe reads it. Section 5 asks whether the
#   answer depends on it.
#
# ## 3. Directions: the probe vs a difference of means
#
# A probe is one way to find a direction for a label. A simpler one needs no training at all: the
# **difference of means**, the average activation of the label-1 prompts minus that of the label-0
# prompts. If a feature really is a direction that the model adds when the label is 1, the
# difference of means points right at it. Chapter 07 uses the same vector to steer the model.
#
# ### Exercise 2.4: difference-of-means direction (difficulty 1/3, ~10 min)
# Write `mean_difference_direction(x, y)`: the mean of the rows of `x` whose label is 1, minus the
# mean of those whose label is 0, scaled to unit length. `x` has shape `[batch, d_model]`.
#
# <details><summary>Hint 1</summary>
#
# Boolean indexing: `x[y == 1]` keeps the rows whose label is 1.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `x[y == 1]` is `[n_1, d_model]`, and `.mean(0)` averages over the prompts (dimension
# 0), giving `[d_model]`. The same for label 0; the difference of the two means is `[d_model]` too.
# </details>
# <details><summary>Hint 3</summary>
#
# Divide the difference by its `.norm()`.
# </details>

# %% tags=["export"]
def mean_difference_direction(x: Float[Tensor, "batch d_model"], y: Int[Tensor, "batch"]) -> Float[Tensor, "d_model"]:
    """Unit vector from the mean of label-0 activations to the mean of label-1 activations."""
    ### BEGIN SOLUTION
    difference = x[y == 1].mean(0) - x[y == 0].mean(0)
    return difference / difference.norm()
    ### END SOLUTION


# %%
mean_difference_direction = check_exercise("2.4", mean_difference_direction)

# %% [markdown]
# A direction becomes a classifier once we pick a threshold along it.
#
# ### Exercise 2.5: classify with a direction (difficulty 2/3, ~10 min)
# Write `direction_accuracy(direction, x_train, y_train, x_test, y_test)`. Project every activation
# onto `direction` (a dot product). Using the **training** split only, find the mean projection of
# the label-0 rows and of the label-1 rows; the threshold is halfway between them. A test prompt is
# predicted to be label 1 when its projection falls on the same side of the threshold as the
# label-1 mean. (The direction may point either way: do not assume label 1 lies on the positive
# side.) Return the test accuracy as a Python float.
#
# <details><summary>Hint 1</summary>
#
# Residual streams are far from centred: a threshold of 0 can put every prompt on one side.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan and the shapes: the projections `x_train @ direction` (`[batch]`) and `x_test @ direction`
# (`[batch_test]`); two training means, one per label (numbers); the threshold halfway between them;
# label 1's side is given by the sign of `mean_1 - mean_0`.
# </details>
# <details><summary>Hint 3</summary>
#
# With `mean_0, mean_1` the two training means of the projections, predict 1 where `(projection - (mean_0 +
# mean_1) / 2) * (mean_1 - mean_0) > 0`; compare with `y_test.bool()` and `.item()` the mean.
# </details>

# %% tags=["export"]
def direction_accuracy(direction: Float[Tensor, "d_model"], x_train: Float[Tensor, "batch d_model"],
                       y_train: Int[Tensor, "batch"], x_test: Float[Tensor, "batch_test d_model"],
                       y_test: Int[Tensor, "batch_test"]) -> float:
    """Test accuracy of thresholding the projection on `direction` halfway between the class means."""
    ### BEGIN SOLUTION
    train_projection, test_projection = x_train @ direction, x_test @ direction  # [batch], [batch_test]
    mean_0, mean_1 = train_projection[y_train == 0].mean(), train_projection[y_train == 1].mean()
    predicted = (test_projection - (mean_0 + mean_1) / 2) * (mean_1 - mean_0) > 0
    return (predicted == y_test.bool()).float().mean().item()
    ### END SOLUTION


# %%
direction_accuracy = check_exercise("2.5", direction_accuracy)

# %% [markdown]
# Now compare, at every residual point of the organism, the probe with the difference of means:
# their accuracy, and the angle between their directions.
#
# ### Exercise 2.6: cosine similarity between directions (difficulty 1/3, ~5 min)
# Write `cosine_similarity_matrix(directions)`: for `k` directions stacked as a `[k, d_model]`
# tensor (of any lengths), return the `[k, k]` matrix of cosine similarities between every pair.
#
# <details><summary>Hint 1</summary>
#
# Scale each *row* to unit length, then take all dot products at once with a matrix product.
# </details>
# <details><summary>Hint 2</summary>
#
# `directions.norm(dim=-1, keepdim=True)` has shape `[k, 1]`, so dividing by it scales every row to
# length 1. (Without `keepdim` the shapes do not line up.)
# </details>
# <details><summary>Hint 3</summary>
#
# One matrix product of the unit rows with their transpose, `[k, d_model] @ [d_model, k]`, gives the
# `[k, k]` matrix: `unit @ unit.T`.
# </details>

# %% tags=["export"]
def cosine_similarity_matrix(directions: Float[Tensor, "k d_model"]) -> Float[Tensor, "k k"]:
    """Cosine similarity between every pair of rows."""
    ### BEGIN SOLUTION
    unit = directions / directions.norm(dim=-1, keepdim=True)
    return unit @ unit.T
    ### END SOLUTION


# %%
cosine_similarity_matrix = check_exercise("2.6", cosine_similarity_matrix)

# %%
comparison = {}
for label in LABELS:
    d = data["organism", label]
    rows = []
    for layer in range(len(points)):
        x_train, x_test = d["x_train"][layer], d["x_test"][layer]
        probe = train_probe(x_train, d["y_train"])
        mean_direction = mean_difference_direction(x_train, d["y_train"])
        rows.append({
            "probe": direction_accuracy(probe.direction, x_train, d["y_train"], x_test, d["y_test"]),
            "means": direction_accuracy(mean_direction, x_train, d["y_train"], x_test, d["y_test"]),
            "cosine": cosine_similarity_matrix(torch.stack([probe.direction, mean_direction]))[0, 1].item(),
            "mean_direction": mean_direction,
        })
    comparison[label] = rows
pd.DataFrame({(label, points[i]): {"probe direction": r["probe"], "difference of means": r["means"], "cosine": r["cosine"]}
              for label, rows in comparison.items() for i, r in enumerate(rows)}).T.rename_axis(["label", "point"]).round(2)

# %% [markdown]
# (Both directions are scored the same way here, with the halfway threshold, so the numbers compare
# the *directions* only.)
#
# For **sentiment** the two directions nearly agree (a cosine far above what two random directions
# in 256 dimensions give, which is about 0 give or take 0.06), and both classify perfectly: one clean
# direction carries the label, just as the linear representation hypothesis pictures it.
# For **gender** the probe and the difference of means point in very different directions. The
# difference of means is the "label direction" of the simplest story; the probe's direction is the
# best *separator*, which also leans on other directions to cancel out variation that has nothing to
# do with the label (here, most of all, *which* name it is). Two methods, two "gender directions":
# which one is "the" representation is a question a probe cannot settle.
#
# What does "classify with a direction" look like? Project every held-out prompt onto the
# difference-of-means direction, and draw one histogram per class, with the halfway threshold of
# Exercise 2.5 (label 1 is true, positive, male). The figure starts at the last residual point; its
# slider moves through the residual points, one histogram per label at each. Decide first: at the
# embeddings, what should every histogram look like?

# %% tags=["export"]
import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display
from plotly.subplots import make_subplots

CLASS_COLOURS = ("#4c78a8", "#e45756")  # label 0, label 1


def projection_histogram(x_train: Float[Tensor, "batch d_model"], y_train: Int[Tensor, "batch"],
                         x_test: Float[Tensor, "batch_test d_model"], y_test: Int[Tensor, "batch_test"],
                         bins: int = 30) -> dict:
    """Held-out projections on the training difference of means, counted per class.

    Returns the bin centres `[bins]`, the counts `[2, bins]` (label 0, then label 1), the halfway
    threshold, and the accuracy of thresholding there (Exercise 2.5's rule).
    """
    direction = mean_difference_direction(x_train, y_train)  # [d_model]
    train_projection, test_projection = x_train @ direction, x_test @ direction  # [batch], [batch_test]
    threshold = (train_projection[y_train == 0].mean() + train_projection[y_train == 1].mean()).item() / 2
    low = min(test_projection.min().item(), threshold)
    high = max(test_projection.max().item(), threshold)
    counts = torch.stack([torch.histc(test_projection[y_test == value], bins, low, high) for value in (0, 1)])
    width = (high - low) / bins
    return {"centres": low + width * (torch.arange(bins) + 0.5), "counts": counts, "width": width,
            "threshold": threshold, "accuracy": direction_accuracy(direction, x_train, y_train, x_test, y_test)}


def histogram_traces(histogram: dict, visible: bool = True, legend: bool = True) -> list:
    """One bar trace per class and a dotted vertical line at the threshold."""
    traces = [go.Bar(x=histogram["centres"].tolist(), y=histogram["counts"][value].tolist(), width=histogram["width"],
                     name=f"label {value}", marker_color=colour, opacity=0.6, visible=visible, showlegend=legend)
              for value, colour in enumerate(CLASS_COLOURS)]
    top = histogram["counts"].max().item()
    traces.append(go.Scatter(x=[histogram["threshold"]] * 2, y=[0, top], mode="lines", name="threshold",
                             line=dict(dash="dot", color="black"), visible=visible, showlegend=legend))
    return traces


def projection_slider_figure(data: dict[str, dict], points: list[str], start: int = -1) -> go.Figure:
    """A static figure with a plotly slider over residual points, one histogram per label: no kernel needed."""
    labels, start = list(data), start % len(points)
    figure = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.06)
    subtitles = []  # [point][label]
    for point in range(len(points)):
        subtitles.append([])
        for column, label in enumerate(labels, start=1):
            d = data[label]
            histogram = projection_histogram(d["x_train"][point], d["y_train"], d["x_test"][point], d["y_test"])
            for trace in histogram_traces(histogram, visible=point == start, legend=column == 1):
                figure.add_trace(trace, row=1, col=column)
            subtitles[point].append(f"{label}: {histogram['accuracy']:.2f}")
    per_point = len(figure.data) // len(points)
    steps = [dict(method="update", label=name,
                  args=[{"visible": [t // per_point == k for t in range(len(figure.data))]},
                        {f"annotations[{i}].text": text for i, text in enumerate(subtitles[k])}])
             for k, name in enumerate(points)]
    for annotation, text in zip(figure.layout.annotations, subtitles[start]):
        annotation.text = text
    figure.update_layout(title="Held-out prompts on the difference of means, and each label's accuracy", barmode="overlay", height=450,
                         legend=dict(orientation="h", x=1, xanchor="right", y=1.27), margin=dict(t=110),
                         sliders=[dict(steps=steps, active=start, currentvalue=dict(prefix="residual point: "),
                                       pad=dict(t=60))])
    figure.update_xaxes(title_text="projection")
    figure.update_yaxes(title_text="held-out prompts", col=1)
    return figure


class ProjectionExplorer:
    """Menus for the model and the label and a slider over residual points, redrawing the histogram (live)."""

    def __init__(self, data: dict[tuple[str, str], dict], points: list[str], label: str | None = None,
                 point: int = -1):
        self.data, self.points = data, list(points)
        models, labels = list(dict.fromkeys(key[0] for key in data)), list(dict.fromkeys(key[1] for key in data))
        self.model = widgets.Dropdown(options=models, value=models[0], description="model")
        self.label = widgets.Dropdown(options=labels, value=label or labels[0], description="label")
        self.point = widgets.SelectionSlider(options=self.points, value=self.points[point], description="point",
                                             continuous_update=False)
        self.output = widgets.Output()
        for control in (self.model, self.label, self.point):
            control.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        """Recompute the histogram for the chosen model, label and point, store it and the figure, show them."""
        d, k = self.data[self.model.value, self.label.value], self.points.index(self.point.value)
        self.histogram = projection_histogram(d["x_train"][k], d["y_train"], d["x_test"][k], d["y_test"])
        self.figure = go.Figure(histogram_traces(self.histogram))
        self.figure.update_layout(title=f"{self.model.value}, {self.label.value} at {self.point.value}: "
                                  f"accuracy {self.histogram['accuracy']:.2f}", barmode="overlay", height=380,
                                  xaxis_title="projection", yaxis_title="held-out prompts")
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)

    def widget(self) -> widgets.VBox:
        return widgets.VBox([widgets.HBox([self.model, self.label, self.point]), self.output])


# %%
last_point = len(points) - 1
projection_slider_figure({label: data["organism", label] for label in LABELS}, points)

# %% [markdown]
# At the last point, sentiment's two classes sit in two separate humps, one on each side of the
# threshold. Gender's overlap: the direction carries the label, but weakly next to everything else
# that varies along it, which is why the difference of means classifies gender worse than
# sentiment. Drag the slider back. At `embed` every label's two classes lie on top of each other,
# as they must: the last token is the same word in every prompt of a family. Sentiment splits
# into two humps after one block and stays split. Truth splits after one block too, less cleanly
# (its humps are closer than at the last point, and its accuracy lower), and the later blocks pull
# the humps further apart. Gender overlaps at every point, and before the last block its held-out
# accuracy is near one half (below it here; never above 0.65 in the samples the tests draw).
#
# The figure above was computed in advance. To choose the model (the organism or the random
# baseline), the label and the point with menus and a slider that recompute as you move them, set
# `live = True` and run the cell again. It is off by default because a live widget cannot be saved
# with the notebook: reopened later, it would show an error in its place.

# %%
live = False
if live:
    display(ProjectionExplorer(data, points, label="sentiment").widget())

# %% [markdown]
# Both directions so far were found *with* the labels. What if we ask the activations alone where
# they vary most? The **principal components** of the training activations are the directions of
# largest variance, found without any label. Plot the held-out prompts on the first two:

# %% tags=["export"]
def principal_directions(x: Float[Tensor, "batch d_model"], k: int = 2) -> tuple[Float[Tensor, "k d_model"], Float[Tensor, "k"]]:
    """The top `k` principal directions of `x` (unit rows) and the share of the variance each explains."""
    centred = x - x.mean(0)  # [batch, d_model]
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)  # directions: [rank, d_model]
    share = singular ** 2 / (singular ** 2).sum()  # [rank]
    return directions[:k], share[:k]


# %%
figure = make_subplots(rows=1, cols=3, subplot_titles=list(LABELS), horizontal_spacing=0.08)
for column, label in enumerate(LABELS, start=1):
    d = data["organism", label]
    directions, share = principal_directions(d["x_train"][-1])
    coordinates = (d["x_test"][-1] - d["x_train"][-1].mean(0)) @ directions.T  # [batch_test, 2]
    for value, colour in ((0, "#4c78a8"), (1, "#e45756")):
        rows = d["y_test"] == value
        figure.add_trace(go.Scatter(x=coordinates[rows, 0].tolist(), y=coordinates[rows, 1].tolist(), mode="markers",
                                    marker=dict(color=colour, size=4, opacity=0.6), name=f"label {value}",
                                    showlegend=column == 1), row=1, col=column)
    figure.update_xaxes(title_text=f"PC1 ({share[0]:.0%} of variance)", row=1, col=column)
    figure.update_yaxes(title_text=f"PC2 ({share[1]:.0%})", row=1, col=column)
    pc1_accuracy = direction_accuracy(directions[0], d["x_train"][-1], d["y_train"], d["x_test"][-1], d["y_test"])
    print(f"{label}: the first principal direction alone classifies {pc1_accuracy:.2f} of held-out prompts")
figure.update_layout(title=f"Held-out prompts on the first two principal components ({points[last_point]}); "
                     "colour: the label", height=400, legend=dict(orientation="h", y=-0.3))
figure

# %% [markdown]
# For truth and sentiment, the direction along which the last token varies most *is* the label:
# the first principal component, found without labels, splits the held-out prompts almost
# perfectly. Whether a statement is true, or a review positive, is the biggest thing going on at
# that point (above 0.95 in every sample the tests draw). Gender is not: none of the first three
# principal directions classifies more than 0.7 of the held-out prompts, because which *names* appear
# varies far more than their gender. Looking for structure without labels is the idea behind the
# sparse autoencoders of Chapter 05.
#
# The same tool asks whether the three labels share directions. They come from different prompt
# families, but they live in the same residual space:

# %%
from utils.plotting import heatmap

last_point = len(points) - 1
label_directions = torch.stack([comparison[label][last_point]["mean_direction"] for label in LABELS])
heatmap(cosine_similarity_matrix(label_directions), x=list(LABELS), y=list(LABELS), text_auto=".2f",
        title=f"Cosine similarity of difference-of-means directions ({points[last_point]})")

# %% [markdown]
# The three directions are close to orthogonal. Gender shares almost nothing with the other two.
# Truth and sentiment share a little, about 0.15: more than the spread of two random directions
# (about 0.06), and in the sign a "valence" story would predict, with *true* on the side of
# *positive*. Is there one shared "good" direction? A cosine this small cannot say: residual
# directions are not spread evenly (some directions vary far more than others, and difference-of-means
# directions lean towards them), so "mostly separate, slightly aligned" is all it supports. An
# intervention could test it: add the sentiment direction to a truth statement and see whether the
# verdict moves (Chapter 07's steering).

# %% [markdown]
# ## 4. Control tasks: high accuracy proves little
#
# A probe's accuracy mixes two things: what the activations hold, and what the probe can learn on
# its own. A linear probe on 256 dimensions has 257 parameters and, given a few hundred prompts, can
# fit a great deal. Three controls separate the two.
#
# **Control 1: random labels.** Shuffle the truth labels and train again. Any accuracy on the
# training prompts is then pure fitting; accuracy on held-out prompts must fall to chance. One
# shuffle is one draw from a distribution, so we draw 20.

# %% tags=["export"]
def shuffled_label_accuracies(x_train: Float[Tensor, "batch d_model"], y_train: Int[Tensor, "batch"],
                              x_test: Float[Tensor, "batch_test d_model"], y_test: Int[Tensor, "batch_test"],
                              n_shuffles: int = 20) -> dict[str, Tensor]:
    """Train and held-out accuracy of probes trained on `n_shuffles` seeded shuffles of `y_train`."""
    train_accuracy, test_accuracy = [], []
    for seed in range(n_shuffles):
        labels = y_train[torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))]
        probe = train_probe(x_train, labels)
        with torch.no_grad():
            train_accuracy.append(((probe(x_train) > 0) == labels.bool()).float().mean())
            test_accuracy.append(((probe(x_test) > 0) == y_test.bool()).float().mean())
    return {"train": torch.stack(train_accuracy), "test": torch.stack(test_accuracy)}  # [n_shuffles] each


# %%
import plotly.graph_objects as go

d = data["organism", "truth"]
real_probe = train_probe(d["x_train"][-1], d["y_train"])
with torch.no_grad():
    real_test = ((real_probe(d["x_test"][-1]) > 0) == d["y_test"].bool()).float().mean().item()
shuffles = shuffled_label_accuracies(d["x_train"][-1], d["y_train"], d["x_test"][-1], d["y_test"])
coin_flip_se = (0.25 / len(d["y_test"])) ** 0.5
print(f"real labels: held-out accuracy {real_test:.2f}")
print(f"20 shuffles: training accuracy {shuffles['train'].mean():.2f} on average; held-out accuracy "
      f"{shuffles['test'].mean():.2f} on average,\n   spread {shuffles['test'].std():.3f} "
      f"(coin flips on {len(d['y_test'])} prompts would spread {coin_flip_se:.3f}), "
      f"from {shuffles['test'].min():.2f} to {shuffles['test'].max():.2f}")
figure = go.Figure(go.Histogram(x=shuffles["test"].tolist(), xbins=dict(start=0.3, end=1.0, size=0.02),
                                name="shuffled labels"))
figure.add_vline(x=real_test, line_color="black", annotation_text="real labels")
figure.add_vline(x=0.5, line_dash="dot", annotation_text="chance", annotation_position="top left")
figure.update_layout(title="Held-out accuracy of truth probes trained on shuffled labels (20 shuffles)",
                     xaxis_title="held-out accuracy", yaxis_title="shuffles", height=350, showlegend=False)
figure

# %% [markdown]
# With labels that mean nothing, the probe still gets about two training prompts in three right:
# that much is pure fitting, 257 parameters against 720 prompts. On held-out prompts it has nothing
# to go on: the shuffles centre near chance. They also spread at least as widely as coin flips
# would (1.1 to 1.6 times as widely in the samples the tests draw),
# and a single unlucky shuffle can land well below 0.5. The held-out prompts are not independent
# draws: each held-out country-relation pair appears in several of them, so a probe's errors come
# in clusters. Only the held-out split tells real from shuffled, and only a distribution of
# shuffles tells you how far from chance "chance" can land. Training accuracy is not evidence.
#
# **Control 2: a control task** (Hewitt and Liang, 2019). Give every *word type* a random label and
# keep it fixed: every review with the adjective "dull" gets the same random label, whatever the
# review says. A probe can only learn this task by recognising which adjective is in the prompt.
# If the probe does as well on the control task as on sentiment, its sentiment accuracy may come
# from the same trick. **Selectivity** is the accuracy on the real task minus the accuracy on the
# control task. (This is an adaptation. Hewitt and Liang key the control label to the word type
# of the *probed* token; our probed token is always ` I`, so we key it to an earlier word, the
# adjective. Their main use of selectivity, choosing how powerful a probe may be, comes just below.)
#
# ### Exercise 2.7: control-task labels (difficulty 1/3, ~10 min)
# Write `control_task_labels(keys, seed)`. `keys` is a list of strings, one per prompt (for example
# each review's adjective). Give each *distinct* key a random label, 0 or 1, with half the distinct
# keys on each label (rounded either way), drawn from a generator seeded with `seed`: the labels
# may depend only on the set of keys and the seed, never on the order of the prompts. Return a
# long tensor with the label of each prompt's key, shape `[batch]`. One way: sort the distinct
# keys, draw `torch.randperm(number_of_distinct_keys, generator=torch.Generator().manual_seed(seed))`,
# and give the `i`-th distinct key the label `permutation[i] % 2`.
#
# <details><summary>Hint 1</summary>
#
# `sorted(set(keys))` gives the distinct keys in a fixed order; a dict maps each to its label.
# </details>
# <details><summary>Hint 2</summary>
#
# The same key must get the same label everywhere: draw one label per *distinct key*, not per
# prompt. Then look each prompt's key up in the dict.
# </details>
# <details><summary>Hint 3</summary>
#
# `permutation = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))`;
# `label_of = {key: int(permutation[i] % 2) for i, key in enumerate(distinct)}`; a long tensor of
# `label_of[key]` for every key of `keys`.
# </details>

# %% tags=["export"]
def control_task_labels(keys: list[str], seed: int = 0) -> Int[Tensor, "batch"]:
    """A random but fixed 0/1 label for each distinct key, looked up for every prompt."""
    ### BEGIN SOLUTION
    distinct = sorted(set(keys))
    permutation = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    label_of = {key: int(permutation[i] % 2) for i, key in enumerate(distinct)}
    return torch.tensor([label_of[key] for key in keys], dtype=torch.long)
    ### END SOLUTION


# %%
control_task_labels = check_exercise("2.7", control_task_labels)

# %% [markdown]
# One trap when using it: the train and the test prompts must share *one* labelling, so we label
# their keys together and split afterwards. (Labelling each split on its own gives two unrelated
# random labellings, and the probe scores *below* chance. Try it.)

# %%
adjectives = {split: prompt_set("sentiment", split, n=n, seed=0).labels["adjective"]
              for split, n in zip(("train", "test"), SIZES["sentiment"])}  # the prompts of `data`, in order
control = control_task_labels(adjectives["train"] + adjectives["test"], seed=1)
control = {"train": control[:len(adjectives["train"])], "test": control[len(adjectives["train"]):]}
control_accuracy, selectivity = {}, {}
for model_name in MODELS:
    d = data[model_name, "sentiment"]
    control_accuracy[model_name] = probe_accuracy_by_layer(d["x_train"], control["train"], d["x_test"], control["test"])
    selectivity[model_name] = accuracy[model_name, "sentiment"] - control_accuracy[model_name]
display(pd.DataFrame({(model_name, kind): values[model_name].tolist() for model_name in MODELS
                      for kind, values in (("control task", control_accuracy), ("selectivity", selectivity))},
                     index=points).T.rename_axis(columns="after").round(2))
lines({f"{kind} ({model_name})": values for model_name in MODELS for kind, values in
       (("sentiment", accuracy[model_name, "sentiment"]), ("control task", control_accuracy[model_name]))},
      x=points, title="Sentiment vs a control task with a random label per adjective",
      x_label="residual point (last token)", y_label="test accuracy")

# %% [markdown]
# On the random model the control task is as easy as sentiment: the probe recognises the adjective
# and remembers its label, and "sentiment" is just one more labelling of 60 adjectives. Selectivity
# is about zero. On the organism, sentiment is perfect while the arbitrary labelling is much harder:
# the last token carries the review's sentiment more plainly than the adjective's identity.
#
# **How powerful may a probe be?** This is what Hewitt and Liang designed control tasks for. A
# probe with more capacity reads more, the meaningless labelling included. Give the probe one
# hidden layer of 64 ReLU units and run both tasks on the organism again:

# %% tags=["export"]
class MLPProbe(nn.Module):
    """A probe with one hidden ReLU layer, on the same centred, rescaled activations as LinearProbe."""

    def __init__(self, x_train: Float[Tensor, "batch d_model"], hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", x_train.mean(0))
        self.register_buffer("scale", ((x_train - x_train.mean(0)).norm(dim=-1).mean() / x_train.shape[1] ** 0.5).clamp_min(1e-6))
        self.net = nn.Sequential(nn.Linear(x_train.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch"]:
        return self.net((x - self.mean) / self.scale).squeeze(-1)


@memoized
def mlp_probe_accuracy_by_layer(x_train: Float[Tensor, "layer batch d_model"], y_train: Int[Tensor, "batch"],
                                x_test: Float[Tensor, "layer batch_test d_model"], y_test: Int[Tensor, "batch_test"],
                                steps: int = 600, lr: float = 0.01, seed: int = 0) -> Float[Tensor, "layer"]:
    """`probe_accuracy_by_layer` with an MLPProbe (seeded initialisation, full-batch Adam)."""
    accuracies = []
    for layer in range(x_train.shape[0]):
        with torch.random.fork_rng(devices=[]):  # the same initialisation at every layer; your stream untouched
            torch.manual_seed(seed)
            probe = MLPProbe(x_train[layer])
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-3)
        for _ in range(steps):
            loss = nn.functional.binary_cross_entropy_with_logits(probe(x_train[layer]), y_train.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracies.append(((probe(x_test[layer]) > 0) == y_test.bool()).float().mean())
    return torch.stack(accuracies)


# %%
from utils.session import elapsed_bar

d = data["organism", "sentiment"]
with elapsed_bar("training MLP probes"):  # your own function inside: the bar counts seconds
    mlp_sentiment = mlp_probe_accuracy_by_layer(d["x_train"], d["y_train"], d["x_test"], d["y_test"])
    mlp_control = mlp_probe_accuracy_by_layer(d["x_train"], control["train"], d["x_test"], control["test"])
pd.DataFrame({(name, kind): values.tolist() for name, real, fake in (
    ("linear probe", accuracy["organism", "sentiment"], control_accuracy["organism"]), ("MLP probe", mlp_sentiment, mlp_control))
    for kind, values in (("sentiment", real), ("control task", fake), ("selectivity", real - fake))},
    index=points).T.rename_axis(columns="after").round(2)

# %% [markdown]
# The MLP probe learns the random labelling almost as well as sentiment from the first block on: it
# can recognise the adjective from the blurred last token and look its label up. It needs its 600
# steps: stopped at 300, it had not finished at one point on some CPUs and samples (0.94 on one
# machine where another printed 0.99; 0.86 on another sample of prompts, 1.00 after 600 steps).
# Trained to the end, in every sample we tried, it
# stays above 0.9 at every point after `embed`, more than 0.1 above the linear probe on the same
# labels, and its selectivity stays within 0.1 of zero. So its near-perfect sentiment score says
# nothing about how the organism stores sentiment. That is the
# argument for linear probes made in Section 1, now measured: a probe powerful enough to compute
# the label itself tells you about the probe. Hewitt and Liang's rule: among probes that do well,
# prefer the one with the highest selectivity.
#
# **Control 3: hold out whole words.** A known world lets us ask the sharper question directly.
# The test split above holds out *(subject, adjective) pairs*, so every test adjective was in the
# probe's training set. If instead we hold out whole adjectives, a probe that remembers adjectives has
# nothing to go on, while a probe that reads a general "positive" direction still works. (The
# organism itself saw every adjective in its training; only the *probe* has not seen these.)

# %%
from utils.organism import world

held_out_adjectives = set(world.POSITIVE_ADJECTIVES[::3] + world.NEGATIVE_ADJECTIVES[::3])  # 20 of the 60
new_rows = [i for i, a in enumerate(adjectives["train"]) if a in held_out_adjectives]
seen_rows = [i for i, a in enumerate(adjectives["train"]) if a not in held_out_adjectives]
word_split = {}
for model_name in MODELS:
    d = data[model_name, "sentiment"]
    word_split[model_name] = probe_accuracy_by_layer(d["x_train"][:, seen_rows], d["y_train"][seen_rows],
                                                     d["x_train"][:, new_rows], d["y_train"][new_rows])
pd.DataFrame({name: values.tolist() for name, values in word_split.items()}, index=points).T.rename_axis(
    columns="sentiment on adjectives the probe never saw, after").round(2)

# %% [markdown]
# The random model's "sentiment" is gone, and what is left on the organism is a direction that
# generalises to adjectives the probe never saw. The best control is a split designed around the
# shortcut you fear, and a known world lets you design it.
#
# ### Does the truth probe transfer across relations?
# The same question, for truth: is there one "true vs false" direction, or one per kind of fact?
# The truth prompts state three relations (a country's capital, its language, its continent).
# Train a probe on the statements of one relation only, and test it on the held-out statements of
# each relation:

# %%
relations = ("capital", "language", "continent")
truth_relations = {split: prompt_set("truth", split, seed=0).labels["relation"] for split in ("train", "test")}
d = data["organism", "truth"]
transfer = {}
for point in (1, last_point):
    rows = []
    for source in relations:
        train_rows = [i for i, r in enumerate(truth_relations["train"]) if r == source]
        probe = train_probe(d["x_train"][point][train_rows], d["y_train"][train_rows])
        row = []
        for target in relations:
            test_rows = [i for i, r in enumerate(truth_relations["test"]) if r == target]
            with torch.no_grad():
                row.append(((probe(d["x_test"][point][test_rows]) > 0) == d["y_test"][test_rows].bool()).float().mean())
        rows.append(torch.stack(row))
    transfer[point] = torch.stack(rows)  # [trained on, tested on]
    print(f"{points[point]}: worst transfer {transfer[point].min():.2f}")
heatmap(transfer[1], x=[f"tested on {r}" for r in relations], y=[f"trained on {r}" for r in relations],
        diverging=False, text_auto=".2f", title=f"A truth probe trained on one relation, tested on each ({points[1]})")

# %% [markdown]
# A probe trained on capitals alone reads the truth of language and continent statements almost as
# well as its own, from the first block on (every pair above 0.75 after the first block and above
# 0.9 at the last point, in every sample the tests draw). That is what one shared "truth" direction would give,
# and it is the central result of probing studies of truth in large models (Marks and Tegmark, 2023,
# "The Geometry of Truth"). It still does not show that the model *uses* that direction, which is
# the next section's question.
#
# ### Where sentiment first becomes linearly available
# With the word split as our honest test, we can now draw the map a chess study draws for its
# concepts: for each token and each depth, can the label be read? We take the reviews of one
# template, `The {subject} was {adjective}. I`, so that the adjective, the full stop and the last
# ` I` sit at the same offsets in every prompt.

# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

POSITIONS = {2: "adjective", 1: ".", 0: " I"}  # offset from the last token -> token
template_reviews = prompt_set("sentiment", "train", seed=0)
template_reviews = template_reviews.subset(
    [i for i, t in enumerate(template_reviews.labels["template"]) if t == 0][:360])
y_reviews = torch.tensor(template_reviews.labels["sentiment"])
unseen = [i for i, a in enumerate(template_reviews.labels["adjective"]) if a in held_out_adjectives]
seen = [i for i, a in enumerate(template_reviews.labels["adjective"]) if a not in held_out_adjectives]
sentiment_map = {}
for model_name, some_model in MODELS.items():
    rows = []
    for offset in progress_bar(POSITIONS, desc=f"sentiment by token ({model_name})"):
        x = collect_residuals(some_model, template_reviews.prompts, offset=offset, progress=False)
        rows.append(probe_accuracy_by_layer(x[:, seen], y_reviews[seen], x[:, unseen], y_reviews[unseen]))
    sentiment_map[model_name] = torch.stack(rows)  # [position, layer]

figure = make_subplots(rows=1, cols=2, subplot_titles=list(MODELS), horizontal_spacing=0.15)
for column, model_name in enumerate(MODELS, start=1):
    figure.add_trace(go.Heatmap(z=sentiment_map[model_name], x=points, y=list(POSITIONS.values()), zmin=0.5, zmax=1,
                                coloraxis="coloraxis", texttemplate="%{z:.2f}"), row=1, col=column)
figure.update_layout(title="Sentiment on unseen adjectives, by token and residual point", coloraxis_colorscale="Viridis",
                     height=330)
figure

# %% [markdown]
# On the organism, sentiment is readable at the adjective itself straight from the embedding: the
# trained embeddings of positive and negative adjectives already differ along a shared direction,
# for adjectives the probe never saw. After one block it has been copied to the tokens that follow.
# The random model shows neither. Each label in this world has such a map; the gender of the indirect
# object, as the first plot showed, reaches the last token only in the last block.
#
# ## 5. Decodable is not the same as used
#
# A probe tells us the information is *there*. It cannot tell us that the model *uses* it. To ask
# that, we intervene: remove the direction from the residual stream while the model runs, and see
# whether the output changes. (Chapter 06 makes this rigorous with activation patching; Chapter 07
# uses directional ablation to erase concepts on purpose.)
#
# ### Exercise 2.8: remove a direction (difficulty 1/3, ~10 min)
# Write `remove_direction(resid, direction)`: return `resid` with its component along `direction`
# removed, `resid - (resid . u) u` where `u` is `direction` scaled to unit length. `resid` has any
# number of leading dimensions (`[..., d_model]`).
#
# <details><summary>Hint 1</summary>
#
# First scale the direction, `u = direction / direction.norm()`; the component of a vector along `u`
# is its dot product with `u`, times `u`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `resid @ u` has the leading shape of `resid` (one number per vector); add a trailing
# axis with `[..., None]` so that it multiplies `u`, `[d_model]`, back into `[..., d_model]`.
# </details>
# <details><summary>Hint 3</summary>
#
# `resid - (resid @ u)[..., None] * u`. To test yourself: `(result @ u)` should be about zero
# everywhere.
# </details>

# %% tags=["export"]
def remove_direction(resid: Float[Tensor, "... d_model"], direction: Float[Tensor, "d_model"]) -> Float[Tensor, "... d_model"]:
    """`resid` with its component along `direction` projected out."""
    ### BEGIN SOLUTION
    unit = direction / direction.norm()
    return resid - (resid @ unit)[..., None] * unit
    ### END SOLUTION


# %%
remove_direction = check_exercise("2.8", remove_direction)

# %% [markdown]
# Removing the difference-of-means direction does more than it seems: afterwards the two classes
# have the *same mean* in every direction. Belrose et al. (2023, "LEACE") prove that when the class
# means are equal, no linear predictor does better than a constant one in any convex loss, such as
# the logistic loss a probe trains on. That is a statement about loss, not accuracy: a linear rule
# can still beat chance in accuracy when, say, one class spreads out on both sides of the other.
# And the means are equal only on the prompts the direction was estimated from. (An orthogonal
# projection like ours is *one* such eraser; LEACE finds the one that changes the activations
# least.) So check what happens on held-out prompts, on the stored gender activations at the last
# residual point:

# %%
d = data["organism", "io_gender"]
gender_direction = comparison["io_gender"][last_point]["mean_direction"]
erased_probe = train_probe(remove_direction(d["x_train"][-1], gender_direction), d["y_train"])
with torch.no_grad():
    erased_accuracy = ((erased_probe(remove_direction(d["x_test"][-1], gender_direction)) > 0) == d["y_test"].bool()).float().mean()
print(f"gender probe at {points[last_point]}: {accuracy['organism', 'io_gender'][-1]:.2f} before, "
      f"{erased_accuracy:.2f} after removing the difference-of-means direction")

# %% [markdown]
# ### Exercise 2.9: the output with directions removed (difficulty 3/3, ~20 min)
# Write `logit_diffs_without(model, prompts, directions)`. `directions` maps hook names (such as
# `blocks.3.hook_resid_post`) to a direction each. Run the prompts with one hook per name that
# removes that direction at **every position**, and return the per-prompt logit differences that
# `logit_diffs(model, prompts, fwd_hooks)` gives.
#
# <details><summary>Hint 1</summary>
#
# A hook is a function `hook_fn(activation, hook)` that returns the new activation; `fwd_hooks` is a
# list of `(hook_name, hook_fn)` pairs.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: one `(name, hook_fn)` pair per item of `directions`, each `hook_fn` returning
# `remove_direction(resid, direction)` with *its own* direction; then hand the list to
# `logit_diffs(model, prompts, fwd_hooks=...)`, which adds the hooks for one run and removes them
# after. (`model.add_hook` would leave them on the model.)
# </details>
# <details><summary>Hint 3</summary>
#
# Beware of closures in a loop: `lambda resid, hook: remove_direction(resid, direction)` made in a
# loop sees the *last* `direction`. Bind it with a default argument, `lambda resid, hook, direction=direction:
# ...`, or build each hook in a helper function.
# </details>

# %% tags=["export"]
def logit_diffs_without(model, prompts: PromptSet, directions: dict[str, Tensor]) -> Float[Tensor, "batch"]:
    """Per-prompt logit differences with each hook's direction projected out at every position."""
    ### BEGIN SOLUTION
    hooks = [(name, lambda resid, hook, direction=direction: remove_direction(resid, direction))
             for name, direction in directions.items()]
    return logit_diffs(model, prompts, fwd_hooks=hooks)
    ### END SOLUTION


# %%
logit_diffs_without = check_exercise("2.9", logit_diffs_without)

# %% [markdown]
# The experiment. For sentiment and for the indirect object's gender we remove the label's
# difference-of-means direction at the last residual point, `blocks.3.hook_resid_post`, where the
# probes read both labels and from which the model's next-token logits are computed. We measure the
# logit difference on held-out prompts: the right sentiment word minus the wrong one, and the
# indirect object's name minus the repeated name. As controls: nothing removed, and a random
# direction removed. Then two stronger versions: the label's direction removed only *after block 0*
# (`blocks.0.hook_resid_post`), three blocks before the output is read; and each residual point's
# own direction removed at every point.

# %%
import plotly.graph_objects as go

names = residual_hook_names(model.cfg.n_layers)
# The directions were computed from activations kept on the CPU; the hooks apply them to the
# model's residual stream, so they move to the model's device first.
random_direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)).to(model.cfg.device)
ablation, ablated_diffs = {}, {}
for label in ("sentiment", "io_gender"):
    own = [row["mean_direction"].to(model.cfg.device) for row in comparison[label]]
    runs = {
        "nothing removed": {},
        "random direction, last point": {names[-1]: random_direction},
        f"{label} direction, last point": {names[-1]: own[-1]},
        f"{label} direction, after L0 only": {names[1]: own[1]},
        f"{label} directions, every point": dict(zip(names, own)),
    }
    ablated_diffs[label] = {run: logit_diffs_without(model, test_sets[label], directions)
                            for run, directions in progress_bar(runs.items(), desc=f"{label}: directions removed")}
    ablation[label] = {run: diffs.mean().item() for run, diffs in ablated_diffs[label].items()}
display(pd.DataFrame({(label, run): {"mean logit difference": diffs.mean().item(), "answer right on": (diffs > 0).float().mean().item()}
                      for label, runs_diffs in ablated_diffs.items() for run, diffs in runs_diffs.items()}
                     ).T.rename_axis(["label", "run"]).round(2))

figure = go.Figure([go.Bar(y=[run.replace(label, "label's") for run in values], x=list(values.values()),
                           orientation="h", name=label) for label, values in ablation.items()])
figure.update_layout(title="Mean logit difference on held-out prompts, with directions removed", barmode="group",
                     xaxis_title="mean logit difference (correct answer minus wrong one)",
                     yaxis_autorange="reversed", height=420, legend=dict(orientation="h", y=-0.25))
figure

# %% [markdown]
# Both labels are read by a linear probe at the last point. Removing the sentiment direction there
# sends the sentiment answer to chance. But at the last point that is nearly true by construction:
# the logits are read from this residual stream, and the sentiment direction is close to the very
# direction that separates the two answer words in the unembedding:

# %%
loved_minus_hated = model.W_U[:, answer_ids(model, [" loved"])[0]] - model.W_U[:, answer_ids(model, [" hated"])[0]]
sentiment_directions = [row["mean_direction"].to(model.cfg.device) for row in comparison["sentiment"]]
for point in (1, last_point):
    cosine = torch.nn.functional.cosine_similarity(sentiment_directions[point], loved_minus_hated, dim=0)
    print(f"cosine(sentiment direction {points[point]}, W_U[loved] - W_U[hated]) = {cosine:.2f}")

# %% [markdown]
# Removing that direction at the last point deletes the read-out itself, which proves little. The
# removal after block 0 is the real test: three blocks still run after it, free to rebuild the
# sentiment from other directions, and they do not. The answer falls to chance all the same: the
# model *uses* that direction, early. Removing the gender direction at the last point, after which
# no linear probe can read gender there, leaves the name answer right every time, with its logit
# difference barely lower: the organism carries the gender to the last token along with the name,
# but does not need it to pick the name.
#
# Removing a direction at *every* point is a blunter tool. For gender, it costs the name answer some
# of its logit difference (while the answer stays right). Is that because gender matters
# after all? The known world answers: split the prompts by whether the two names have the same gender.
# If gender helped choose the name, the loss would fall on the mixed pairs, where gender tells the
# names apart; for a woman and a woman it cannot help.

# %%
ioi_test = test_sets["io_gender"]
same_gender = torch.tensor([(io in world.FEMALE_NAMES) == (s in world.FEMALE_NAMES)
                            for io, s in zip(ioi_test.labels["io"], ioi_test.labels["s"])], device=model.cfg.device)
pd.DataFrame({run: {"same-gender pairs": diffs[same_gender].mean().item(), "mixed pairs": diffs[~same_gender].mean().item()}
              for run, diffs in ablated_diffs["io_gender"].items()}).T.rename_axis("mean logit difference, run").round(2)

# %% [markdown]
# The loss is about the same for both kinds of pair, so whatever those directions carry that the answer
# needs, it is not gender. (The difference-of-means directions at the early points, where gender
# cannot be read at all, are mostly noise, and noise directions estimated from residual streams lean
# towards the directions in which the residual stream varies most.)
#
# ### A counterfactual: add the direction, flip the verdict
# Removing a direction asks "does the answer need it?". Adding one asks a sharper question: "is
# this direction *how* the model represents the label, so that moving along it changes the
# answer?" Take the truth statements, and after block 0 add `alpha` times the gap between the
# class means, `mean(true) - mean(false)`, to every position of a *false* statement (and subtract
# it from a true one). If the model reads its verdict along that direction, the verdict should
# flip. A random direction of the same length is the control.

# %% tags=["export"]
def logit_diffs_with_added(model, prompts: PromptSet, hook_name: str, vector: Float[Tensor, "d_model"]
                           ) -> Float[Tensor, "batch"]:
    """Per-prompt logit differences with `vector` added to the residual stream at every position of `hook_name`."""
    vector = vector.to(model.cfg.device)
    return logit_diffs(model, prompts, fwd_hooks=[(hook_name, lambda resid, hook: resid + vector)])


# %%
d = data["organism", "truth"]
truth_gap = d["x_train"][1][d["y_train"] == 1].mean(0) - d["x_train"][1][d["y_train"] == 0].mean(0)  # [d_model]
random_gap = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
random_gap = random_gap * truth_gap.norm() / random_gap.norm()  # same length as the real gap
truth_test = test_sets["truth"]
is_true = truth_test.labels["truth"]
statements = {"false": truth_test.subset([i for i, t in enumerate(is_true) if t == 0]),
              "true": truth_test.subset([i for i, t in enumerate(is_true) if t == 1])}
flipped = {}
for alpha in (0.5, 1.0, 2.0):
    for kind, sign in (("false", 1), ("true", -1)):
        for name, gap in (("truth", truth_gap), ("random", random_gap)):
            diffs = logit_diffs_with_added(model, statements[kind], names[1], sign * alpha * gap)
            flipped[alpha, f"{name} direction", f"{kind} statements"] = (diffs < 0).float().mean().item()  # now prefers the wrong word
pd.Series(flipped).unstack([1, 2]).rename_axis("alpha").rename_axis(columns=["verdicts flipped, pushed along", ""]
                                                                     ).style.format("{:.0%}")

# %% [markdown]
# Pushed along the truth direction by twice the gap between the classes, every verdict flips: false
# statements are called " true" and true ones " false", although nothing in the words changed. A
# random push of the same length leaves almost every verdict as it was. This is the counterfactual kind of evidence that Li et al. gave for Othello-GPT's
# board: it says the model's later blocks read the verdict along this direction after block 0.
# Chapter 07 builds steering on exactly this move. (It is still a statement about one direction at
# one point; the model may also carry the verdict elsewhere.)
#
# ### Which direction does the model read: the probe's or the difference of means?
# Section 3 set the probe's direction beside the difference of means. For truth after block 0, both
# classify held-out statements well, yet they point quite differently (their cosine is printed
# below). Reading them cannot say which one the model *uses*; pushing along them can. Add each
# direction after block 0, scaled to the same length (the gap between the class means), at several
# multiples `alpha` of that length, and count how often the verdict flips. Decide first: which one
# flips more?

# %% tags=["export"]
def flip_rates(model, statements: dict[str, PromptSet], hook_name: str, vector: Float[Tensor, "d_model"],
               alphas) -> dict[str, Tensor]:
    """Share of verdicts flipped by pushing along `vector`, per alpha: `+alpha * vector` added to false
    statements (flipped: now called true) and `-alpha * vector` to true ones (now called false)."""
    flipped = {}
    for kind, sign in (("false", 1), ("true", -1)):
        flipped[kind] = torch.tensor([(logit_diffs_with_added(model, statements[kind], hook_name, sign * alpha * vector)
                                       < 0).float().mean().item() for alpha in alphas])  # [alpha]
    return flipped


def matched_directions(x: Float[Tensor, "batch d_model"], y: Int[Tensor, "batch"]) -> dict[str, Tensor]:
    """The gap between the class means and the probe's direction rescaled to the same length, pointing the same way."""
    gap = x[y == 1].mean(0) - x[y == 0].mean(0)  # [d_model]
    probe_direction = train_probe(x, y).direction.detach()  # unit length, towards label 1
    return {"difference of means": gap, "probe": probe_direction * gap.norm() / probe_direction.norm()}


# %%
ALPHAS = (0.25, 0.5, 1.0, 1.5, 2.0)
d = data["organism", "truth"]
pushes = matched_directions(d["x_train"][1], d["y_train"])
cosine = torch.nn.functional.cosine_similarity(pushes["probe"], pushes["difference of means"], dim=0)
print(f"after L0: cosine between the two directions {cosine:.2f}; held-out accuracy "
      f"probe direction {comparison['truth'][1]['probe']:.2f}, difference of means {comparison['truth'][1]['means']:.2f}")
flips = {name: flip_rates(model, statements, names[1], vector, ALPHAS) for name, vector in pushes.items()}
figure = go.Figure()
for name, colour in (("difference of means", "#4c78a8"), ("probe", "#e45756")):
    for kind, dash in (("false", "solid"), ("true", "dot")):
        figure.add_trace(go.Scatter(x=list(ALPHAS), y=flips[name][kind].tolist(), mode="lines+markers",
                                    name=f"{name}, {kind} statements", line=dict(color=colour, dash=dash)))
display(pd.DataFrame({(name, f"{kind} statements"): flips[name][kind].tolist() for name in flips for kind in ("false", "true")},
                     index=pd.Index(ALPHAS, name="alpha")).T.rename_axis(["verdicts flipped, pushed along", ""]
                                                                           ).style.format("{:.0%}"))
figure.update_layout(title="Verdicts flipped by a push of the same length after block 0",
                     xaxis_title="alpha (multiples of the gap between the class means)",
                     yaxis_title="share of verdicts flipped", yaxis_range=[0, 1.05], height=420,
                     legend=dict(orientation="h", y=-0.3))
figure

# %% [markdown]
# At every length the difference of means flips at least as many verdicts as the probe's direction.
# At the gap's own length (`alpha = 1`) it flips about two thirds of the false statements, the
# probe's direction about one in five; even at twice that length, the probe's push turns only about
# half of them. Yet the two directions classify held-out statements about equally well. A probe picks the direction that best *separates* the
# training prompts, and it may lean on directions that vary with the label but that the later
# blocks do not read. The difference of means follows where the activations actually move when the
# label changes. Marks and Tegmark (2023, *The Geometry of Truth*) found the same with truth probes
# on real language models: their difference-of-means directions were more causal than the
# logistic-regression ones. Good classification is not evidence of use; only the push tells them
# apart.
#
# Two cautions, which Chapter 06 returns to. A direction removed at one point can be rebuilt by later
# blocks from other directions, so "the output did not move" needs the removal to be where the output
# is read, or everywhere; and "the output moved" means most when the removal is far from the read-out. And removing a direction can break things that share it, so a big
# effect is not proof of use either: that is why the random direction and the same-gender split
# matter.

# %% [markdown]
# ## 6. On a real model
# The same functions work on GPT-2 small when the Hugging Face Hub is reachable: here, sentiment
# and truth probes at every residual point. (GPT-2 has 12 layers and 768 dimensions, and never
# saw our world; the probes find out what it reads into these sentences anyway.) Offline, this cell
# says so and moves on.

# %%
if env.hub_online:
    gpt2 = load_model("gpt2-small")
    for family in ("sentiment", "truth"):
        train_set, test_set = prompt_set(family, "train", n=400, seed=0), prompt_set(family, "test", n=200, seed=0)
        x_train = collect_residuals(gpt2, train_set.prompts, batch_size=64)
        x_test = collect_residuals(gpt2, test_set.prompts, batch_size=64)
        gpt2_accuracy = probe_accuracy_by_layer(x_train, torch.tensor(train_set.labels[family]),
                                                x_test, torch.tensor(test_set.labels[family]))
        display(pd.DataFrame({f"GPT-2 small, {family}": gpt2_accuracy.tolist()},
                             index=residual_point_names(gpt2.cfg.n_layers)).T.round(2))
else:
    print("offline: skipped GPT-2 small (run this cell with a network connection to compare)")

# %% [markdown]
# ## What probing can't tell you
# - **Decodable is not used.** A probe shows that information is linearly present, not that the
#   model's output depends on it (Section 5). That needs an intervention (Chapters 06 and 07).
# - **High accuracy proves little on its own.** It mixes what the activations hold with what the
#   probe can memorise. Always report a held-out split, a random-weights baseline and a control
#   task or a split that removes the shortcut (Section 4).
# - **A failed linear probe is not absence.** The information may be stored non-linearly, or in a
#   frame you did not think of (Othello-GPT's "mine/theirs" board was invisible to "black/white"
#   linear probes).
# - **You only find what you label.** A probe tests a concept you chose; it will not tell you which
#   concepts the model actually computes. Chapter 05's sparse autoencoders look without labels.
# - **A direction is not a mechanism.** Knowing *where* a label can be read says nothing about
#   *how* it was computed or which components wrote it; Chapter 03 attributes the residual stream
#   to heads and MLPs, and Chapter 06 traces the circuit.
#
# **Your record so far:**

# %%
show_progress("02_probing")
