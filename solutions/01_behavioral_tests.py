# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 01: Behavioral tests
#
# **Time:** about 2 hours. **Exercises:** 6, each checked as soon as you run the cell after it.
# *Run All* takes under a minute on a 2-core laptop CPU (longer when the machine is busy).
#
# **You will learn to**
# - measure a behaviour with the two standard task metrics, **accuracy** and **logit difference**,
#   on labelled prompts, with a confidence interval and a breakdown by kind of prompt;
# - build a **behavioural test suite** (paraphrases, distractors, unseen combinations, distribution
#   shift) and use it to find where a model fails;
# - train a classifier that **passes its test for the wrong reason** (a scanner marker, as in the
#   chest X-ray story), catch it with a shifted test, and confirm it with a first look inside;
# - say what behavioural testing, however careful, cannot tell you.
#
# **Seed concepts:** behavioural vs mechanistic understanding; "a model may pass tests for the
# wrong reasons"; evaluate across diverse and adversarial cases; the chest X-ray shortcut.
#
# Chapter 00 showed the difference between *what* a model does and *how* it does it. This chapter
# stays on the outside and asks how far careful testing can take us. The answer is: a long way, and
# not far enough.

# %%
import plotly.graph_objects as go
import torch

from utils import check_exercise, load_model, prompt_set, setup, show_progress

env = setup()
model = load_model()

# %% [markdown]
# ## 1. Task metrics
# Every behaviour of the workbook's model comes with labelled prompts: `prompt_set(family, split)`
# returns prompts, the word that should come next (`correct`), the most tempting wrong word
# (`wrong`), and labels describing each prompt. The `"test"` split holds combinations the model
# never saw in training (held-out name pairs, phrasings, statements, reviews).

# %%
import pandas as pd
from IPython.display import display

reviews = prompt_set("sentiment", "test", n=4, seed=1)
print(reviews)
pd.DataFrame({"prompt": reviews.prompts, "correct": reviews.correct, "wrong": reviews.wrong}).map(repr)

# %% [markdown]
# Two numbers summarise a model on such a set:
# - **accuracy**: the share of prompts where the correct word gets a higher logit than the wrong
#   one (a two-way choice, so chance is 50%);
# - **logit difference**: `logit[correct] - logit[wrong]` at the last position, averaged. Unlike
#   accuracy it says *how sure* the model is, and it moves smoothly when we change the model,
#   which is why later chapters use it to measure the effect of an intervention. Because the
#   log-softmax subtracts the same number from every logit, it is also the difference of the two
#   log-probabilities.
#
# To get those logits for many prompts at once, we tokenize them into one batch. Prompts have
# different lengths, so the shorter ones are **padded** on the right. The next-token prediction of
# each prompt then sits at *its own* last real token, not at the batch's last position.

# %%
tokens = model.to_tokens(reviews.prompts[:2] + ["The capital of France is"], padding_side="right")
print(tokens)
print("padding id:", model.tokenizer.pad_token_id, "| BOS id:", model.tokenizer.bos_token_id)

# %% [markdown]
# ### Exercise 1.1: the logits at each prompt's last token (difficulty 2/3, ~15 min)
# Write `last_token_logits(model, prompts)`: run the list of strings `prompts` through the model as
# one right-padded batch, with the start-of-text token prepended as usual, and return, for each
# prompt, the logits at its last real token, shape `[batch, d_vocab]`.
#
# Look at the printout above before you start: in this model the padding id *is* the BOS id.
#
# <details><summary>Hint 1</summary>
#
# `model.to_tokens(prompts, padding_side="right")` gives the batch; `model(tokens)` its logits of
# shape `[batch, pos, d_vocab]`. You need one position per prompt.
# </details>
# <details><summary>Hint 2</summary>
#
# Counting non-padding tokens would miss the BOS, which has the same id. Measure each prompt
# instead: `model.to_tokens(prompt).shape[1]` is its length with the BOS.
# </details>
# <details><summary>Hint 3</summary>
#
# `logits[torch.arange(len(prompts)), lengths - 1]` picks one position per row.
# </details>

# %% tags=["export"]
import torch
from jaxtyping import Float
from torch import Tensor


def last_token_logits(model, prompts: list[str]) -> Float[Tensor, "batch d_vocab"]:
    """The logits each prompt predicts for its next token, from one right-padded batch."""
    ### BEGIN SOLUTION
    tokens = model.to_tokens(prompts, padding_side="right")  # [batch, pos], BOS first
    lengths = torch.tensor([model.to_tokens(prompt).shape[1] for prompt in prompts])  # [batch]
    logits = model(tokens)  # [batch, pos, d_vocab]
    return logits[torch.arange(len(prompts)), lengths - 1]
    ### END SOLUTION


# %%
last_token_logits = check_exercise("1.1", last_token_logits)

# %% [markdown]
# For long lists we run `last_token_logits` in batches. `final_logits` does that (with a progress
# bar when there are many batches); the rest of the chapter, and later chapters, use it.

# %% tags=["export"]
from utils import progress_bar


@torch.no_grad()
def final_logits(model, prompts: list[str], batch_size: int = 256) -> Float[Tensor, "batch d_vocab"]:
    """`last_token_logits` over any number of prompts, `batch_size` at a time."""
    starts = range(0, len(prompts), batch_size)
    chunks = [last_token_logits(model, prompts[start:start + batch_size])
              for start in progress_bar(starts, show=len(starts) >= 8, desc="batches")]
    return torch.cat(chunks)


# %% [markdown]
# ### Exercise 1.2: logit difference (difficulty 1/3, ~10 min)
# Write `logit_diff(model, prompts)` for a `PromptSet`: one number per prompt,
# `logit[correct] - logit[wrong]` at the prompt's last token. Accuracy is then simply
# `(logit_diff(model, prompts) > 0).float().mean()`.
#
# <details><summary>Hint 1</summary>
#
# `final_logits(model, prompts.prompts)` gives `[batch, d_vocab]`. Every answer is a single token:
# `model.to_single_token(" Mary")` is its id.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: the last-token logits, `[batch, d_vocab]`; two id tensors of shape `[batch]`, one for
# `prompts.correct` and one for `prompts.wrong`; one logit per row from each; their difference.
# </details>
# <details><summary>Hint 3</summary>
#
# With `rows = torch.arange(len(prompts))`, `logits[rows, correct_ids]` picks one logit per prompt.
# </details>

# %% tags=["export"]
from utils.organism.world import PromptSet


def logit_diff(model, prompts: PromptSet) -> Float[Tensor, "batch"]:
    """logit[correct] - logit[wrong] at each prompt's last token."""
    ### BEGIN SOLUTION
    logits = final_logits(model, prompts.prompts)  # [batch, d_vocab]
    correct = torch.tensor([model.to_single_token(word) for word in prompts.correct])
    wrong = torch.tensor([model.to_single_token(word) for word in prompts.wrong])
    rows = torch.arange(len(prompts))
    return logits[rows, correct] - logits[rows, wrong]
    ### END SOLUTION


# %%
logit_diff = check_exercise("1.2", logit_diff)

# %% [markdown]
# Now the model's report card: every family, on prompts it trained on and on held-out ones. (We
# take up to 200 prompts of each, to keep the chapter fast.)

# %%
FAMILIES = ["ioi", "facts", "truth", "sentiment", "induction"]
sets = {(family, split): prompt_set(family, split, n=200) for family in FAMILIES for split in ("train", "test")}
diffs = {key: logit_diff(model, prompts) for key, prompts in progress_bar(sets.items(), desc="prompt sets")}
pd.DataFrame([{"family": family, "split": split, "n": len(d), "accuracy": (d > 0).float().mean().item(),
               "mean logit diff": d.mean().item()} for (family, split), d in diffs.items()]
             ).set_index(["family", "split"]).style.format({"accuracy": "{:.1%}", "mean logit diff": "{:.2f}"})

# %% [markdown]
# Compare the two splits of each family. The held-out IOI prompts pair names that never met in
# training, and the held-out facts ask about a country in a phrasing never used for it: a model
# that had memorised its training combinations would drop there. Every family passes, on both
# splits. Section 2 shows why that is not the end of the story.
#
# ### Behaviour over training
# A score at the end of training hides *how* the model got there. The organism's training log
# (`training_log.jsonl`, shipped with its weights) scored held-out prompts every 200 steps. Looking
# at behaviour across training, and asking what changed inside the model when it jumped, is the
# start of **developmental interpretability**. For the first 600 steps the documents were almost
# all facts and true/false statements (the "facts-first" phase); then the full mix began.

# %% tags=["export"]
import json

import utils.models

TRAINING_CURVES = {  # log key -> what it measures on held-out prompts
    "facts_top1": "facts: capital named first",
    "truth_accuracy": "truth: verdict right",
    "sentiment_accuracy": "sentiment: word right",
    "ioi_accuracy": "IOI: indirect object preferred",
    "induction_loss_ratio": "induction: loss on repeat / first copy (lower is better)",
}


def training_curves(path=None) -> dict[str, list[float]]:
    """The evaluation rows of the organism's training log: 'step' and each key of TRAINING_CURVES."""
    path = path or utils.models.ORGANISM_DIR / "training_log.jsonl"
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    evaluated = [row for row in rows if "ioi_accuracy" in row]
    return {key: [row[key] for row in evaluated] for key in ["step", *TRAINING_CURVES]}


# %%
curves = training_curves()
figure = go.Figure([go.Scatter(x=curves["step"], y=curves[key], mode="lines+markers", name=name)
                    for key, name in TRAINING_CURVES.items()])
figure.add_vline(x=600, line_dash="dot", annotation_text="facts-first phase ends", annotation_position="top left")
figure.update_layout(title="The organism's behaviour on held-out prompts during training",
                     xaxis_title="training step", yaxis_title="score", height=450, legend=dict(orientation="h", y=-0.2))
figure

# %% [markdown]
# Three different stories in one plot:
# - **Facts and verdicts come first, and early.** During the facts-first phase the truth verdict
#   climbs from chance to about 90%, and it stays above 80% once the other documents arrive.
#   (The training loss, not plotted, *jumps* at step 600: the new documents are harder to predict,
#   not the model worse.)
# - **Induction appears suddenly.** For more than 2,000 steps, repeating a sequence does not make
#   it easier to predict (the ratio sits near 1). Then, within about 600 steps, the loss on the
#   repeat falls to under a tenth of the first copy's: a *phase change*, the signature of
#   induction heads forming (Olsson et al., 2022). Chapter 06 finds those heads.
# - **IOI switches on last.** Its accuracy sits at chance for 3,000 steps, then jumps to 100%
#   between two evaluations, and only after induction has formed. Whether IOI *needs* induction is a
#   question the curves cannot answer; finding the circuit (Chapter 06) can.
#
# A final score of 100% says none of this. Abrupt jumps are also a warning for evaluations: a
# model checked a few hundred steps earlier would have failed IOI entirely.
#
# ### How sure are we of an accuracy?
# The facts test set has only 30 prompts. If the model gets 28 of them right, is it a 93% model? Its
# rate on *all* prompts like these could plausibly be quite a bit lower or higher. A **confidence
# interval** says how far the true rate could be from the one we measured, given the number of
# prompts.
#
# The textbook interval, `p ± z * sqrt(p (1 - p) / n)` (Wald), breaks exactly where we need it
# most: at 100% measured accuracy it has zero width, as if 30 prompts proved perfection. The
# **Wilson score interval** does not:
#
# $$\frac{p + \frac{z^2}{2n}}{1 + \frac{z^2}{n}} \pm
#   \frac{z}{1 + \frac{z^2}{n}}\sqrt{\frac{p(1-p)}{n} + \frac{z^2}{4n^2}}$$
#
# where `p` is the measured accuracy, `n` the number of prompts and `z = 1.96` for 95%.
#
# ### Exercise 1.3: accuracy with a confidence interval (difficulty 2/3, ~15 min)
# Write `accuracy_interval(diffs, z=1.96)` returning the tuple `(accuracy, low, high)` of Python
# floats: the share of `diffs` that are strictly positive (a tie is not a success), and the Wilson
# interval around it.
#
# <details><summary>Hint 1</summary>
#
# `n = diffs.numel()` and `p = (diffs > 0).float().mean().item()`; `math.sqrt` for the root.
# </details>
# <details><summary>Hint 2</summary>
#
# The formula has two parts over one denominator, `1 + z**2 / n`: a centre, pulled from `p` towards
# one half, and a half-width. A check on your arithmetic: with 30 right out of 30, the low end is
# close to 0.89.
# </details>
# <details><summary>Hint 3</summary>
#
# Compute `centre` and `half_width` from the formula, both divided by `1 + z**2 / n`; return `p, centre -
# half_width, centre + half_width` as Python floats.
# </details>

# %% tags=["export"]
import math


def accuracy_interval(diffs: Float[Tensor, "batch"], z: float = 1.96) -> tuple[float, float, float]:
    """Accuracy (share of diffs > 0) and its Wilson score interval: (accuracy, low, high)."""
    ### BEGIN SOLUTION
    n = diffs.numel()
    p = (diffs > 0).float().mean().item()
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return p, centre - half_width, centre + half_width
    ### END SOLUTION


# %%
accuracy_interval = check_exercise("1.3", accuracy_interval)

# %%
pd.DataFrame([dict(zip(("accuracy", "95% low", "95% high"),
                      accuracy_interval(torch.tensor([1.0] * right + [-1.0] * (30 - right)))))
              for right in (28, 30)], index=pd.Index(["28 of 30 right", "30 of 30 right"])).style.format("{:.1%}")

# %% [markdown]
# ### Do the intervals keep their promise?
# A 95% interval promises to contain the true rate in 95% of the test sets we could have drawn. That
# share is its **coverage**, and we can measure it by simulation: fix a true rate `p`, draw
# thousands of test sets of `n` prompts (each prompt right with probability `p`), compute both
# intervals on each, and count how often they contain `p`. Decide first: for which true rates do you
# expect Wald's interval to break its promise?

# %% tags=["export"]
import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

COVERAGE_RATES = torch.arange(100, 200) / 200  # true rates 0.500, 0.505, ..., 0.995
COVERAGE_SIZES = (10, 30, 100, 300)  # numbers of prompts for the slider


def wald_interval(successes: Float[Tensor, "*shape"], n: int, z: float = 1.96) -> tuple[Tensor, Tensor]:
    """The textbook interval p +- z sqrt(p (1 - p) / n) for counts of successes out of `n` (any shape)."""
    p = successes / n
    half_width = z * (p * (1 - p) / n).sqrt()
    return p - half_width, p + half_width


def wilson_interval(successes: Float[Tensor, "*shape"], n: int, z: float = 1.96) -> tuple[Tensor, Tensor]:
    """The Wilson score interval of Exercise 1.3, for counts of successes out of `n` (any shape)."""
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half_width = z * (p * (1 - p) / n + z**2 / (4 * n**2)).sqrt() / denominator
    return centre - half_width, centre + half_width


def interval_coverage(rates: Float[Tensor, "rate"], n: int, z: float = 1.96, n_draws: int = 4000,
                      seed: int = 0) -> dict[str, Tensor]:
    """For each true rate, the share of `n_draws` simulated test sets of `n` prompts whose interval contains it."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.full((n_draws, len(rates)), float(n))  # [draw, rate]
    successes = torch.binomial(counts, rates.expand(n_draws, -1).contiguous(), generator=generator)  # [draw, rate]
    coverage = {}
    for name, interval in (("Wald", wald_interval), ("Wilson", wilson_interval)):
        low, high = interval(successes, n, z)
        coverage[name] = ((low <= rates) & (rates <= high)).float().mean(0)  # [rate]
    return coverage


def coverage_traces(coverage: dict[str, Tensor], rates: Tensor, visible: bool = True) -> list[go.Scatter]:
    """One line per interval: its simulated coverage against the true rate."""
    colours = {"Wald": "#e45756", "Wilson": "#4c78a8"}
    return [go.Scatter(x=rates.tolist(), y=values.tolist(), mode="lines", name=name, visible=visible,
                       line=dict(color=colours[name])) for name, values in coverage.items()]


def coverage_figure(traces: list, title: str, z: float = 1.96) -> go.Figure:
    nominal = 2 * torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(z)).item() - 1  # 0.95 for z = 1.96
    figure = go.Figure(traces)
    figure.add_hline(y=nominal, line_dash="dot", annotation_text=f"promised: {nominal:.0%}",
                     annotation_position="bottom left")
    figure.update_layout(title=title, xaxis_title="true rate p", yaxis_title="coverage (share of test sets)",
                         yaxis_range=[0, 1.02], height=430, legend=dict(orientation="h", y=1.1, x=1, xanchor="right"))
    return figure


def coverage_slider_figure(sizes, rates: Tensor) -> go.Figure:
    """A static figure with a plotly slider over the number of prompts: it works with no kernel (the book)."""
    traces = [trace for k, n in enumerate(sizes) for trace in coverage_traces(interval_coverage(rates, n), rates, k == 1)]
    figure = coverage_figure(traces, "Simulated coverage of the 95% intervals (drag n)")
    steps = [dict(method="update", label=f"{n}", args=[{"visible": [t // 2 == k for t in range(len(traces))]}])
             for k, n in enumerate(sizes)]
    figure.update_layout(sliders=[dict(steps=steps, active=1, currentvalue=dict(prefix="n = "), pad=dict(t=50))])
    return figure


class CoverageExplorer:
    """Sliders for the number of prompts and the confidence level that re-simulate the coverage (live)."""

    LEVELS = {"80%": 1.2816, "90%": 1.6449, "95%": 1.96, "99%": 2.5758}  # confidence level: z

    def __init__(self, n: int = 30, level: str = "95%"):
        self.n = widgets.IntSlider(value=n, min=5, max=500, step=5, description="n", continuous_update=False)
        self.level = widgets.Dropdown(options=list(self.LEVELS), value=level, description="level")
        self.output = widgets.Output()
        for control in (self.n, self.level):
            control.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        """Simulate the coverage for the chosen n and level, store it and the figure, and show them."""
        z = self.LEVELS[self.level.value]
        self.coverage = interval_coverage(COVERAGE_RATES, self.n.value, z)
        self.figure = coverage_figure(coverage_traces(self.coverage, COVERAGE_RATES),
                                      f"Coverage of the {self.level.value} intervals at n = {self.n.value}", z)
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)

    def widget(self) -> widgets.VBox:
        return widgets.VBox([widgets.HBox([self.n, self.level]), self.output])


# %%
coverage_rows = {}
for n in COVERAGE_SIZES:
    coverage = interval_coverage(COVERAGE_RATES, n)
    high = COVERAGE_RATES >= 0.95
    coverage_rows[n] = {(method, what): value for method in ("Wald", "Wilson") for what, value in (
        ("on average", coverage[method].mean()), ("for p >= 0.95", coverage[method][high].mean()),
        ("at worst", coverage[method].min()))}
display(pd.DataFrame(coverage_rows).T.rename_axis("n").style.format("{:.0%}").set_caption("How often the 95% interval covers the true rate"))
coverage_slider_figure(COVERAGE_SIZES, COVERAGE_RATES)

# %% [markdown]
# At `n = 30`, the size of our facts test, and a true rate of 95% or more, Wald's "95%" interval
# contains the truth only about half the time, most of all because a test set with every prompt
# right gives it zero width. Wilson's keeps its promise there, at about 95%. Drag `n` up: Wald's failing band
# near the edge narrows, but does not vanish, and even at `n = 300` it still falls below 80% for the
# highest rates. Wilson's coverage wobbles from rate to rate (a count is a whole number, so it
# cannot hit 95% exactly), but it averages 95% at every `n`. That is why Exercise 1.3 asked for
# Wilson. (Both intervals assume independent prompts, which ours are not: see the end of the
# chapter.)
#
# To try any `n` and other confidence levels, set `live = True` and run the cell again (each move
# re-simulates in a fraction of a second). It is off by default because a live widget cannot be
# saved with the notebook: reopened later, it would show an error in its place.

# %%
live = False
if live:
    display(CoverageExplorer().widget())

# %% [markdown]
# For the mean logit difference, the usual interval is the mean plus or minus `z` standard errors:

# %% tags=["export"]
def mean_interval(values: Float[Tensor, "batch"], z: float = 1.96) -> tuple[float, float, float]:
    """The mean of `values` and a normal-approximation interval: (mean, low, high)."""
    mean = values.mean().item()
    half_width = z * values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else float("nan")
    return mean, mean - half_width, mean + half_width


# %%
def accuracy_bars(results: dict[str, dict[str, tuple]], title: str) -> go.Figure:
    """Grouped bars of accuracy with Wilson intervals: {group name: {bar name: (acc, low, high)}}."""
    figure = go.Figure()
    for name, rows in results.items():
        acc = [row[0] for row in rows.values()]
        figure.add_trace(go.Bar(
            name=name, x=list(rows), y=acc,
            error_y=dict(type="data", symmetric=False,
                         array=[row[2] - row[0] for row in rows.values()],
                         arrayminus=[row[0] - row[1] for row in rows.values()])))
    figure.update_layout(title=title, yaxis_title="accuracy", yaxis_range=[0, 1.05], barmode="group",
                         height=420)
    figure.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    return figure


interval_rows = {}
for (family, split), d in diffs.items():
    acc, low, high = accuracy_interval(d)
    mean, mean_low, mean_high = mean_interval(d)
    interval_rows[family, split] = {"accuracy": f"{acc:.1%} [{low:.1%}, {high:.1%}]",
                                    "mean logit diff": f"{mean:.2f} [{mean_low:.2f}, {mean_high:.2f}]"}
display(pd.DataFrame(interval_rows).T.rename_axis(["family", "split"]).rename(columns=lambda c: f"{c} [95% interval]"))
accuracy_bars({split: {family: accuracy_interval(diffs[family, split]) for family in FAMILIES}
               for split in ("train", "test")}, "Accuracy per family, trained vs held-out prompts")

# %% [markdown]
# ### Breaking the number down
# One accuracy per family hides a lot. A model at 95% may be perfect on four templates and at
# chance on the fifth; it may know every European capital and no African one. The labels of each
# prompt let us split the set and look at each part.
#
# ### Exercise 1.4: accuracy per group (difficulty 1/3, ~10 min)
# Write `group_accuracy(diffs, groups)`: `groups` is a list with one label per prompt (any
# hashable values, e.g. `"ABBA"`/`"BABA"` or template numbers). Return a dict mapping each
# distinct label to the accuracy (share of `diffs > 0`, a Python float) of the prompts carrying it.
#
# <details><summary>Hint 1</summary>
#
# `dict.fromkeys(groups)` lists each distinct label once, in order of first appearance.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: for each distinct label, a boolean mask of shape `[batch]` saying which prompts carry
# it; the accuracy of the `diffs` under that mask; one dict entry per label.
# </details>
# <details><summary>Hint 3</summary>
#
# For one label `g`: `members = torch.tensor([value == g for value in groups])`, then
# `(diffs[members] > 0).float().mean().item()`.
# </details>

# %% tags=["export"]
def group_accuracy(diffs: Float[Tensor, "batch"], groups: list) -> dict:
    """Accuracy within each group of prompts: {label: share of diffs > 0 among its prompts}."""
    ### BEGIN SOLUTION
    result = {}
    for group in dict.fromkeys(groups):  # each distinct label, in order of first appearance
        members = torch.tensor([value == group for value in groups])  # [batch]
        result[group] = (diffs[members] > 0).float().mean().item()
    return result
    ### END SOLUTION


# %%
group_accuracy = check_exercise("1.4", group_accuracy)

# %%
breakdowns = {
    "ioi": ["order", "template", "io_gender"],
    "facts": ["relation", "template", "continent"],
    "truth": ["truth", "relation", "template"],
    "sentiment": ["sentiment", "template"],
}
worst, breakdown_rows = [], {}
for family, label_names in breakdowns.items():
    prompts, d = sets[family, "test"], diffs[family, "test"]
    for label in label_names:
        by_group = group_accuracy(d, prompts.labels[label])
        counts = {g: prompts.labels[label].count(g) for g in by_group}
        breakdown_rows[family, label] = {"accuracy in each group (n)": ", ".join(
            f"{g}: {acc:.0%} ({counts[g]})" for g, acc in sorted(by_group.items(), key=str))}
        worst += [(acc, f"{family} {label}={g}", counts[g]) for g, acc in by_group.items()]
display(pd.DataFrame(breakdown_rows).T.rename_axis(["family", "by"]).style.set_properties(
    **{"white-space": "normal", "text-overflow": "clip", "text-align": "left"}))  # JupyterLab cuts long cells with "..."
pd.DataFrame(sorted(worst)[:4], columns=["accuracy", "group", "n"]).set_index("group").style.format(
    {"accuracy": "{:.0%}"}).set_caption("The weakest groups")

# %% [markdown]
# Look at the weakest groups, and at their `n` before you trust them: a group of 6 prompts at 83%
# is one mistake. When the interval is wide, the honest summary is "we don't know yet".
#
# Our model's truth verdicts show what a breakdown adds. Overall they are right about 98% of the
# time, and the few mistakes could be anywhere. Split by the `truth` label, they are not: every one
# is a *false* statement called true. The model errs in one direction only. On a balanced set the
# same split is what tells a model that guesses from one that always gives the same verdict: both
# score 50% overall, and only the breakdown shows which.

# %% [markdown]
# ## 2. A behavioural test suite
# Held-out prompts are still drawn from the training *distribution*: same templates, same kinds of
# sentences, only new combinations. A test suite deliberately steps outside it. The CheckList
# method (Ribeiro et al., 2020) names three kinds of test:
# - **invariance**: a change that should *not* change the answer (a paraphrase, an intensifier,
#   an irrelevant sentence before the prompt, a distractor);
# - **directional**: a change that should change the answer in a known way (a negation flips a
#   review and a statement);
# - **minimum functionality**: simple, unit-test-like cases of one capability.
#
# Our suite uses the first two, plus one test of **generalisation** that CheckList does not name:
# the IOI pattern with words that are not names at all (days of the week).
#
# Our model has a fixed vocabulary: a word it has never seen becomes the unknown token, and a test
# built on unknown tokens tests nothing. So every shifted prompt is made of known words, and we
# check that before we trust a result.

# %%
print(model.to_str_tokens("The movie was terribly great. I"))
print("unknown id:", model.tokenizer.unk_token_id)

# %% tags=["export"]
import re


def assert_known_words(model, prompts: PromptSet) -> None:
    """Raise ValueError if any prompt or answer contains a token the model's vocabulary lacks."""
    unknown = model.tokenizer.unk_token_id
    texts = prompts.prompts + prompts.correct + prompts.wrong
    bad = [text for text in texts if (model.to_tokens(text, prepend_bos=False) == unknown).any()]
    if bad:
        raise ValueError(f"{len(bad)} texts contain unknown words, e.g. {bad[0]!r}")


def with_prefix(prompts: PromptSet, prefixes: list[str]) -> PromptSet:
    """The same prompts and answers, each prompt preceded by its prefix (e.g. a distractor sentence)."""
    return PromptSet(prompts.family, prompts.split, [p + q for p, q in zip(prefixes, prompts.prompts)],
                     list(prompts.correct), list(prompts.wrong), {k: list(v) for k, v in prompts.labels.items()})


def replace_names(prompts: PromptSet, io_words: list[str], s_words: list[str]) -> PromptSet:
    """IOI prompts with the two names replaced by other words (whole words only)."""
    new = []
    for prompt, io, s, new_io, new_s in zip(prompts.prompts, prompts.labels["io"], prompts.labels["s"],
                                            io_words, s_words):
        new.append(re.sub(rf"\b{s}\b", new_s, re.sub(rf"\b{io}\b", new_io, prompt)))
    return PromptSet(prompts.family, prompts.split, new, [" " + w for w in io_words], [" " + w for w in s_words],
                     {k: list(v) for k, v in prompts.labels.items()})


# %% [markdown]
# ### Exercise 1.5: insert a word (difficulty 2/3, ~15 min)
# Write `insert_word(prompts, word, anchors, flip=False)` returning a **new** `PromptSet` in which
# `word` (with its leading space, e.g. `" not"`) is inserted immediately before the **last**
# occurrence of `anchors[i]` in prompt `i` (e.g. `" great"`):
# `"The movie was great. I"` becomes `"The movie was not great. I"`. When `flip` is true the edit
# reverses the right answer, so `correct` and `wrong` swap places. Keep `family`, `split` and
# `labels`, and leave the original set unchanged.
#
# <details><summary>Hint 1</summary>
#
# `prompt.rindex(anchor)` is where the last occurrence starts; slice the string there.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: one loop over `zip(prompts.prompts, anchors)` that builds a new list of prompts; `flip`
# only decides which list becomes `correct` and which `wrong`; copy the `labels` dict and its lists,
# so the new set shares nothing with the old one.
# </details>
# <details><summary>Hint 3</summary>
#
# `prompt[:at] + word + prompt[at:]` for each prompt; then `PromptSet(prompts.family, prompts.split,
# new_prompts, correct, wrong, labels)`, with new lists rather than `prompts.prompts` edited in place.
# </details>

# %% tags=["export"]
def insert_word(prompts: PromptSet, word: str, anchors: list[str], flip: bool = False) -> PromptSet:
    """A new PromptSet with `word` inserted before the last `anchors[i]` of each prompt."""
    ### BEGIN SOLUTION
    new_prompts = []
    for prompt, anchor in zip(prompts.prompts, anchors):
        at = prompt.rindex(anchor)
        new_prompts.append(prompt[:at] + word + prompt[at:])
    correct, wrong = (prompts.wrong, prompts.correct) if flip else (prompts.correct, prompts.wrong)
    labels = {name: list(values) for name, values in prompts.labels.items()}
    return PromptSet(prompts.family, prompts.split, new_prompts, list(correct), list(wrong), labels)
    ### END SOLUTION


# %%
insert_word = check_exercise("1.5", insert_word)

# %% [markdown]
# Now the suite. Each test pairs an original set with its edited copy; the right answer of the copy
# is known because we made the edit. Read each line and decide *before you run the cell* which
# tests you expect the model to pass.

# %%
from utils.organism import world

reviews = sets["sentiment", "test"]
adjectives = [" " + a for a in reviews.labels["adjective"]]

is_phrasing = [i for i, (p, v) in enumerate(zip(sets["truth", "test"].prompts, sets["truth", "test"].labels["stated"]))
               if f" is {v}." in p]  # keep the phrasings "... is <value>." so that " not" reads well
statements = sets["truth", "test"].subset(is_phrasing)
stated = [" " + v for v in statements.labels["stated"]]

ioi = sets["ioi", "test"]
verbs = [" " + world.IOI_TEMPLATES[t].split("{S} ")[1].split()[0] for t in ioi.labels["template"]]


days = [world.DAYS[i % 7] for i in range(len(ioi))]
other_days = [world.DAYS[(i + 3) % 7] for i in range(len(ioi))]

facts = sets["facts", "train"]  # phrasings the model knows, so only the distractor is new
others = [list(world.COUNTRIES)[(list(world.COUNTRIES).index(c) + 7) % len(world.COUNTRIES)]
          for c in facts.labels["country"]]

suite = {
    "reviews: ' very' before the adjective": (reviews, insert_word(reviews, " very", adjectives)),
    "reviews: ' not' before the adjective (flips)": (reviews, insert_word(reviews, " not", adjectives, flip=True)),
    "statements: ' not' before the value (flips)": (statements, insert_word(statements, " not", stated, flip=True)),
    "IOI: ' also' before the verb": (ioi, insert_word(ioi, " also", verbs)),
    "IOI: a sentence about the indirect object first": (
        ioi, with_prefix(ioi, [f"{io} saw a red dog in the park. " for io in ioi.labels["io"]])),
    "IOI: a sentence about the subject first": (
        ioi, with_prefix(ioi, [f"{s} saw a red dog in the park. " for s in ioi.labels["s"]])),
    "IOI: days of the week instead of names": (ioi, replace_names(ioi, days, other_days)),
    "facts: another country mentioned first": (
        facts, with_prefix(facts, [f"Mary wrote to John from {c} on Monday. " for c in others])),
}
for name, (original, shifted) in suite.items():
    assert_known_words(model, shifted)
pd.DataFrame({"first edited prompt": [repr(shifted.prompts[0]) for _, shifted in suite.values()],
              "correct": [repr(shifted.correct[0]) for _, shifted in suite.values()]}, index=pd.Index(suite, name="edit")
             ).style.set_properties(**{"white-space": "normal", "text-overflow": "clip", "text-align": "left"})

# %%
original_diffs = {id(reviews): diffs["sentiment", "test"], id(statements): diffs["truth", "test"][is_phrasing],
                  id(ioi): diffs["ioi", "test"], id(facts): diffs["facts", "train"]}
suite_results = {"original": {}, "edited": {}}
for name, (original, shifted) in progress_bar(suite.items(), desc="tests"):
    suite_results["original"][name] = accuracy_interval(original_diffs[id(original)])
    suite_results["edited"][name] = accuracy_interval(logit_diff(model, shifted))
display(pd.DataFrame({name: {"original": f"{suite_results['original'][name][0]:.1%}",
                              "edited [95% interval]": "{:.1%} [{:.1%}, {:.1%}]".format(*suite_results["edited"][name])}
                       for name in suite}).T.rename_axis("edit"))
accuracy_bars(suite_results, "The behavioural test suite: accuracy before and after each edit")

# %% [markdown]
# Which edits hurt beyond doubt? Those where the edited interval lies entirely below the original one:

# %%
failures = [name for name in suite if suite_results["edited"][name][2] < suite_results["original"][name][1]]
print("clear failures:", *failures, sep="\n  ")

# %% [markdown]
# **What the suite finds.** Three kinds of result stand out.
# - *Edits that stay inside the world's grammar pass*: an intensifier in a review, `" also"` in an
#   IOI sentence, a sentence about another country before a fact.
# - *Negation fails.* Told that the phone was "not amazing", the model still loves it: it reads the
#   adjective and ignores the word before it. Nothing in its training ever negated a review, so
#   nothing ever rewarded reading `" not"`. Negated statements fail differently: the verdict falls
#   to about chance. The `" not"` disturbs the judgement without being understood.
# - *IOI holds up less well than the held-out score suggests.* One plain sentence about either
#   person before the story costs accuracy. A sentence about the **indirect object** costs the
#   most: its name then appears twice, as often as the subject's, so "the name that is not
#   repeated" no longer picks the answer, yet the model still gets most prompts right. A sentence
#   about the **subject** costs less, but it costs something, although the right answer is then
#   the only name mentioned once. Whatever the model computes, it is not simply counting names.
#   Days of the week in place of names land below the names: the skill only partly transfers.
#
# The held-out split could show none of this: every held-out IOI prompt starts with the story,
# and every review says what it means.
#
# Notice what kind of knowledge this is. We now know *that* the model fails on these inputs, and
# could keep adding tests forever. We do not know *why* it passes the others, so we cannot say which
# untested input breaks it next. That is the question mechanistic methods answer, from Chapter 03
# on.

# %% [markdown]
# ### Your own edits
# A suite grows from guesses like these. To test one of your own, write a prompt and two answers:
# `try_prompt` prints the logit difference and the model's top next tokens, and warns about any
# word the organism's vocabulary lacks (such a word reaches the model as one "unknown" token, so
# the prompt says less than you meant). For example, a double negation:

# %% tags=["export"]
import re


def unknown_words(model, text: str) -> list[str]:
    """The words and signs of `text` that the model's vocabulary lacks (each becomes the unknown token)."""
    unknown = model.tokenizer.unk_token_id
    pieces = re.findall(r"\s?[\w']+|[^\w\s]", text)
    return [piece.strip() for piece in pieces if (model.to_tokens(piece, prepend_bos=False) == unknown).any()]


def try_prompt(model, prompt: str, answer: str, other: str, k: int = 5) -> dict:
    """logit[answer] - logit[other] at the prompt's last token, the top `k` next tokens, and any unknown words.

    The answers are single known tokens with their leading space, e.g. " loved"; the logit
    difference is None when either is not.
    """
    unknown = unknown_words(model, prompt + answer + other)
    logits = last_token_logits(model, [prompt])[0]  # [d_vocab]
    probabilities = logits.softmax(-1)
    top = probabilities.topk(k)
    ids = [model.to_tokens(word, prepend_bos=False)[0] for word in (answer, other)]
    single = all(len(i) == 1 and i[0] != model.tokenizer.unk_token_id for i in ids)
    return {"logit_diff": (logits[ids[0][0]] - logits[ids[1][0]]).item() if single else None,
            "top": [(model.to_string(i), p.item()) for i, p in zip(top.indices, top.values)],
            "unknown": unknown, "single_tokens": single}


def describe_trial(prompt: str, answer: str, other: str, trial: dict) -> str:
    """The result of `try_prompt` as a few lines of text."""
    lines = [f"{prompt!r}"]
    if trial["unknown"]:
        lines.append(f"  warning: unknown to the model: {', '.join(trial['unknown'])}")
    if trial["single_tokens"]:
        lines.append(f"  logit[{answer!r}] - logit[{other!r}] = {trial['logit_diff']:+.2f}")
    else:
        lines.append("  the answers must each be one known token with its leading space, e.g. ' loved'")
    lines.append("  top next tokens: " + ", ".join(f"{token!r} {p:.0%}" for token, p in trial["top"]))
    return "\n".join(lines)


class PromptTester:
    """Text boxes for a prompt and two answers; the result appears when you press Enter (live)."""

    def __init__(self, model, prompt: str = "The movie was not bad. I", answer: str = " loved",
                 other: str = " hated"):
        self.model = model
        self.prompt = widgets.Text(value=prompt, description="prompt", continuous_update=False,
                                   layout=widgets.Layout(width="60%"))
        self.answer = widgets.Text(value=answer, description="answer", continuous_update=False)
        self.other = widgets.Text(value=other, description="versus", continuous_update=False)
        self.output = widgets.Output()
        for box in (self.prompt, self.answer, self.other):
            box.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        """Run the prompt, store the result and its text, and show them."""
        self.trial = try_prompt(self.model, self.prompt.value, self.answer.value, self.other.value)
        self.text = describe_trial(self.prompt.value, self.answer.value, self.other.value, self.trial)
        with self.output:
            self.output.clear_output(wait=True)
            print(self.text)

    def widget(self) -> widgets.VBox:
        return widgets.VBox([self.prompt, widgets.HBox([self.answer, self.other]), self.output])


# %%
for prompt in ("The movie was not bad. I", "The movie was not very bad. I", "The film was rubbish. I"):
    print(describe_trial(prompt, " loved", " hated", try_prompt(model, prompt, " loved", " hated")))

# %% [markdown]
# "Not bad" fares like every negation in the suite: the model reads "bad" and answers " hated",
# with or without the " very". The third prompt uses two words the organism has never seen, and the
# warning says so before you read anything into its answer.
#
# To type your own, set `live = True` and run the cell again: change a text box and press Enter.
# (Off by default, as every live widget in the workbook: a saved one would reopen as an error.)

# %%
live = False
if live:
    display(PromptTester(model).widget())

# %% [markdown]
# ## 3. Passing for the wrong reason
# A classifier trained on chest X-rays to detect COVID-19 scored well on its test set. Looking
# inside with saliency maps, DeGrave et al. (2021) found that it relied partly on things outside the
# lungs: text markers, the position of the patient, traces of the scanner, which differed between
# the hospitals the sick and the healthy images came from. On images from a new hospital the model
# fell apart. It had passed its test for the wrong reason. In their data the confound was nearly
# total (the sick and the healthy images came from different sources), so no test drawn from the
# same sources could have shown it. Ours is milder, which, as we will see, gives a same-hospital
# test a chance.
#
# We rebuild that story at toy scale. Our "X-rays" are 16 x 16 images: two lungs, patient-to-patient
# brightness, noise. A sick patient has a **hazy lung** (one lung is brighter). Sick patients in
# our first hospital are mostly scanned on the ward's portable machine, which stamps a small
# **marker** in the top-left corner. `marker_agreement` is the share of patients for whom the marker
# agrees with the diagnosis (present when sick, absent when healthy).

# %% tags=["export"]
from torch import nn

SCAN_SIZE = 16


def lung_mask(size: int = SCAN_SIZE) -> torch.Tensor:
    """Boolean [size, size] mask of the two lungs (ellipses)."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    ellipse = lambda cx: ((x - cx * size) / (0.17 * size)) ** 2 + ((y - 0.55 * size) / (0.33 * size)) ** 2 <= 1  # noqa: E731
    return ellipse(0.3) | ellipse(0.7)


def marker_mask(size: int = SCAN_SIZE) -> torch.Tensor:
    """Boolean [size, size] mask of the scanner's marker in the top-left corner."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[1:3, 1:3] = True
    return mask


def scanner_images(n: int, marker_agreement: float, seed: int = 0, size: int = SCAN_SIZE) -> tuple:
    """`n` synthetic scans: (images [n, size, size], sick [n] bool, marker [n] bool), seeded.

    A sick scan has one hazy lung; the marker agrees with the diagnosis with probability
    `marker_agreement` (1.0: only sick patients carry it; 0.5: it carries no information).
    """
    generator = torch.Generator().manual_seed(seed)
    sick = torch.rand(n, generator=generator) < 0.5
    marker = torch.where(torch.rand(n, generator=generator) < marker_agreement, sick, ~sick)
    lungs = lung_mask(size).float()
    brightness = 0.6 + 0.2 * torch.rand(n, 1, 1, generator=generator)  # patients differ
    images = lungs * brightness + 0.3 * torch.randn(n, size, size, generator=generator)  # [n, size, size]
    left = torch.rand(n, generator=generator) < 0.5  # which lung is hazy
    columns = torch.arange(size) < size // 2
    hazy_side = torch.where(left[:, None], columns, ~columns)[:, None, :]  # [n, 1, size]
    images = images + 0.5 * sick[:, None, None] * lungs * hazy_side
    images = images + 1.0 * marker[:, None, None] * marker_mask(size)
    return images, sick, marker


class ScanClassifier(nn.Module):
    """Logistic regression on pixels: one weight per pixel, one logit for 'sick'."""

    def __init__(self, size: int = SCAN_SIZE):
        super().__init__()
        self.linear = nn.Linear(size * size, 1)

    def forward(self, images: Float[Tensor, "batch height width"]) -> Float[Tensor, "batch"]:
        return self.linear(images.flatten(1)).squeeze(-1)  # [batch, height * width] -> [batch]


def train_scan_classifier(images: Float[Tensor, "batch height width"], sick: Tensor,
                          seed: int = 0, steps: int = 500) -> ScanClassifier:
    """Fit a ScanClassifier with full-batch Adam (seeded)."""
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves your random stream as it was
        torch.manual_seed(seed)
        classifier = ScanClassifier(images.shape[-1])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.02)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(classifier(images), sick.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier


@torch.no_grad()
def scan_margins(classifier: ScanClassifier, images: Float[Tensor, "batch height width"],
                 sick: Tensor) -> Float[Tensor, "batch"]:
    """The classifier's logit difference (right class minus wrong class): +logit if sick, else -logit."""
    return torch.where(sick, 1.0, -1.0) * classifier(images)


# %%
from plotly.subplots import make_subplots

images, sick, marker = scanner_images(4000, marker_agreement=0.95, seed=0)
examples = [int(i) for i in torch.nonzero(sick & marker)[:2, 0]] + [int(i) for i in torch.nonzero(~sick & ~marker)[:2, 0]]
figure = make_subplots(rows=1, cols=4, subplot_titles=[
    f"{'sick' if sick[i] else 'healthy'}, {'marker' if marker[i] else 'no marker'}" for i in examples])
for column, i in enumerate(examples, 1):
    figure.add_trace(go.Heatmap(z=images[i], coloraxis="coloraxis"), row=1, col=column)
figure.update_yaxes(autorange="reversed")
figure.update_layout(title="Training scans from the first hospital", coloraxis_colorscale="Gray",
                     height=300)
figure

# %% [markdown]
# We train on 4000 scans from the first hospital and test on fresh scans from the same hospital, the
# usual held-out test. We also train a **control** classifier on scans where the marker carries no
# information (`marker_agreement=0.5`), so it can only learn from the lungs.

# %%
shortcut = train_scan_classifier(images, sick, seed=0)
control = train_scan_classifier(*scanner_images(4000, marker_agreement=0.5, seed=1)[:2], seed=0)
hospitals = {"same hospital (0.95)": 0.95, "new hospital (0.5)": 0.5, "reversed (0.05)": 0.05}
scan_results = {"shortcut model": {}, "control model": {}}
for name, agreement in hospitals.items():
    test_images, test_sick, _ = scanner_images(2000, marker_agreement=agreement, seed=2)
    scan_results["shortcut model"][name] = accuracy_interval(scan_margins(shortcut, test_images, test_sick))
    scan_results["control model"][name] = accuracy_interval(scan_margins(control, test_images, test_sick))
display(pd.DataFrame({model_name: {name: acc for name, (acc, _, _) in rows.items()} for model_name, rows in scan_results.items()}
                     ).T.rename_axis("accuracy").style.format("{:.1%}"))
accuracy_bars(scan_results, "Same test, different hospitals")

# %% [markdown]
# On the standard test the shortcut model *beats* the honest control. A leaderboard would pick it.
# In a hospital where the marker means nothing it is close to a coin flip, and where the marker
# habit is reversed it is worse than useless.
#
# The group breakdown from Exercise 1.4 would have warned us without a second hospital: split the
# *same-hospital* test set by (diagnosis, marker). The rare groups, sick patients without a marker
# and healthy ones with it, are where the model's reason shows. Their accuracy, the **worst-group
# accuracy**, is the standard number to report when a shortcut is suspected.

# %%
test_images, test_sick, test_marker = scanner_images(2000, marker_agreement=0.95, seed=2)
groups = [f"{'sick' if s else 'healthy'}, {'marker' if m else 'no marker'}" for s, m in zip(test_sick, test_marker)]
pd.DataFrame({model_name: {f"{g} (n={groups.count(g)})": acc for g, acc in sorted(
    group_accuracy(scan_margins(classifier, test_images, test_sick), groups).items())}
    for model_name, classifier in [("shortcut model", shortcut), ("control model", control)]}).T.style.format("{:.0%}")

# %% [markdown]
# How strong must the marker habit be before it hurts, and would the usual test notice? Train the
# same classifier on hospitals where the marker agrees with the diagnosis more and more often, and
# score each one three ways. Decide first: as the agreement grows, which of the three numbers moves
# most?

# %% tags=["export"]
import ipywidgets as widgets
from IPython.display import display

SHORTCUT_AGREEMENTS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # marker agreement in the training hospital


def scan_group(sick: bool, marker: bool) -> str:
    return f"{'sick' if sick else 'healthy'}, {'marker' if marker else 'no marker'}"


def shortcut_classifier(train_agreement: float, n: int = 4000) -> ScanClassifier:
    """A scan classifier trained on `n` scans from a hospital with the given marker agreement."""
    images, sick, _ = scanner_images(n, marker_agreement=train_agreement, seed=0)
    return train_scan_classifier(images, sick, seed=0)


def shortcut_scores(classifier: ScanClassifier, test_agreement: float, n: int = 2000) -> dict:
    """Accuracy on fresh scans from a hospital with `test_agreement`, overall and per (diagnosis, marker) group."""
    images, sick, marker = scanner_images(n, marker_agreement=test_agreement, seed=2)
    margins = scan_margins(classifier, images, sick)  # [batch]
    by_group = group_accuracy(margins, [scan_group(s, m) for s, m in zip(sick.tolist(), marker.tolist())])
    return {"accuracy": (margins > 0).float().mean().item(), "groups": by_group, "worst": min(by_group.values())}


def shortcut_curves(agreements=SHORTCUT_AGREEMENTS) -> dict[str, list[float]]:
    """Per training agreement: same-hospital accuracy, its worst group, and new-hospital (0.5) accuracy."""
    curves = {"same hospital: accuracy": [], "same hospital: worst group": [], "new hospital (0.5): accuracy": []}
    for agreement in agreements:
        classifier = shortcut_classifier(agreement)
        same, new = shortcut_scores(classifier, agreement), shortcut_scores(classifier, 0.5)
        curves["same hospital: accuracy"].append(same["accuracy"])
        curves["same hospital: worst group"].append(same["worst"])
        curves["new hospital (0.5): accuracy"].append(new["accuracy"])
    return curves


class ShortcutExplorer:
    """Sliders for the marker agreement in the training and the test hospital; bars per group (live)."""

    def __init__(self, train_agreement: float = 0.95, test_agreement: float = 0.95):
        self.train = widgets.FloatSlider(value=train_agreement, min=0.5, max=0.99, step=0.01,
                                         description="train", continuous_update=False)
        self.test = widgets.FloatSlider(value=test_agreement, min=0.01, max=0.99, step=0.01,
                                        description="test", continuous_update=False)
        self.output = widgets.Output()
        self.trained_at, self.classifier = None, None
        for slider in (self.train, self.test):
            slider.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        """Retrain if the training agreement moved (about a second), score on the test hospital, show the bars."""
        if self.trained_at != self.train.value:
            self.trained_at, self.classifier = self.train.value, shortcut_classifier(self.train.value)
        self.scores = shortcut_scores(self.classifier, self.test.value)
        groups = sorted(self.scores["groups"])
        self.figure = go.Figure(go.Bar(x=["all scans", *groups],
                                       y=[self.scores["accuracy"], *(self.scores["groups"][g] for g in groups)]))
        self.figure.update_layout(title=f"Trained at agreement {self.train.value:.2f}, tested at {self.test.value:.2f}: "
                                  f"worst group {self.scores['worst']:.0%}", yaxis_title="accuracy",
                                  yaxis_range=[0, 1.05], height=380)
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)

    def widget(self) -> widgets.VBox:
        return widgets.VBox([widgets.HBox([self.train, self.test]), self.output])


# %%
curves = shortcut_curves(progress_bar(SHORTCUT_AGREEMENTS, desc="training hospitals"))
display(pd.DataFrame({name: list(values) for name, values in curves.items()}, index=list(SHORTCUT_AGREEMENTS)
                     ).T.rename_axis(columns="marker agreement in training").style.format("{:.0%}"))
figure = go.Figure([go.Scatter(x=list(SHORTCUT_AGREEMENTS), y=values, mode="lines+markers", name=name)
                    for name, values in curves.items()])
figure.update_layout(title="A stronger marker habit in training: the rare groups pay",
                     xaxis_title="marker agreement in the training hospital", yaxis_title="accuracy",
                     yaxis_range=[0, 1.05], height=420, legend=dict(orientation="h", y=-0.25))
figure

# %% [markdown]
# The usual score, on fresh scans from the training hospital, never drops: it stays above 90%,
# and it is highest where the marker habit is strongest. Meanwhile the worst group falls from about
# 84% to nothing, and the accuracy in a new hospital falls to a coin flip. By an agreement of 0.8
# the model already fails more than half of its worst group, while its headline number has barely
# moved from the no-marker hospital's. Only the group breakdown, or a second hospital, shows it.
#
# To try any pair of hospitals, set `live = True` and run the cell again: one slider sets the
# marker agreement where the model is trained (each move retrains for about a second), the other
# where it is tested. It is off by default because a live widget cannot be saved with the
# notebook: reopened later, it would show an error in its place.

# %%
live = False
if live:
    display(ShortcutExplorer().widget())

# %% [markdown]
# ### A first look inside
# The tests tell us *that* the shortcut model fails. For a linear model, looking inside is easy:
# its weights are an image, one weight per pixel.

# %%
figure = make_subplots(rows=1, cols=2, subplot_titles=["shortcut model", "control model"])
for column, classifier in enumerate([shortcut, control], 1):
    weights = classifier.linear.weight.detach().reshape(SCAN_SIZE, SCAN_SIZE)
    figure.add_trace(go.Heatmap(z=weights, coloraxis="coloraxis"), row=1, col=column)
figure.update_yaxes(autorange="reversed")
figure.update_layout(title="Classifier weights per pixel", coloraxis=dict(colorscale="RdBu", cmid=0),
                     height=350)
figure

# %% [markdown]
# Large weights say where the model *could* look; what it actually uses on a given scan is the
# weight times the pixel. As in Exercise 0.3, the logit of a linear model is an exact sum of parts:
# `logit = sum over pixels of w[pixel] * image[pixel] + bias`.
#
# ### Exercise 1.6: pixel contributions (difficulty 2/3, ~15 min)
# Write `pixel_contributions(classifier, images)` returning each pixel's share of the logit,
# `w * image`, with the same shape as `images`, `[batch, height, width]`. Added up over pixels,
# plus `classifier.linear.bias`, it must equal `classifier(images)`.
#
# <details><summary>Hint 1</summary>
#
# `classifier.linear.weight` has shape `[1, height * width]`; reshape it to `[height, width]`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `images` is `[batch, height, width]` and the reshaped weight `[height, width]`, so an
# element-wise product broadcasts over the batch. To test yourself, sum the result over the last two
# dimensions and add the bias: you should get `classifier(images)`.
# </details>
# <details><summary>Hint 3</summary>
#
# `images * classifier.linear.weight.reshape(images.shape[1:])` broadcasts over the batch.
# </details>

# %% tags=["export"]
def pixel_contributions(classifier: ScanClassifier,
                        images: Float[Tensor, "batch height width"]) -> Float[Tensor, "batch height width"]:
    """Each pixel's additive share of the classifier's logit (the bias is left out)."""
    ### BEGIN SOLUTION
    weights = classifier.linear.weight.reshape(images.shape[1:])  # [1, h * w] -> [height, width]
    return images * weights
    ### END SOLUTION


# %%
pixel_contributions = check_exercise("1.6", pixel_contributions)

# %%
regions = {"marker": marker_mask(), "lungs": lung_mask(), "elsewhere": ~(marker_mask() | lung_mask())}
region_rows = {}
for model_name, classifier in [("shortcut model", shortcut), ("control model", control)]:
    with torch.no_grad():
        parts = pixel_contributions(classifier, test_images)  # [batch, height, width]
    for group in sorted(set(groups)):
        members = torch.tensor([g == group for g in groups])  # [batch]
        region_rows[model_name, group] = {name: parts[members][:, mask].sum(-1).mean().item() for name, mask in regions.items()}
        region_rows[model_name, group]["bias"] = classifier.linear.bias.item()
pd.DataFrame(region_rows).T.rename_axis(["model", "scans"]).style.format("{:+.2f}").set_caption(
    "Mean contribution to the logit by region")

# %% [markdown]
# Compare the rows. In the shortcut model the marker region pushes hard towards "sick" whenever the
# marker is there, sick patient or not, while the lungs shift the logit only a little between sick
# and healthy scans. In the control it is the other way round: the marker region adds next to
# nothing and the lungs carry the diagnosis. The attribution tells the same story as the weights,
# now scan by scan.
#
# The same numbers as pictures, for two scans where the marker lies: a healthy patient *with* the
# marker and a sick patient *without* it. Red pushes towards "sick", blue towards "healthy".

# %%
liars = {"healthy, with marker": next(i for i, g in enumerate(groups) if g == "healthy, marker"),
         "sick, no marker": next(i for i, g in enumerate(groups) if g == "sick, no marker")}
figure = make_subplots(rows=2, cols=2, vertical_spacing=0.12, horizontal_spacing=0.08,
                       subplot_titles=[f"{model_name}: {scan}" for model_name in ("shortcut", "control") for scan in liars])
for row, classifier in enumerate((shortcut, control), start=1):
    with torch.no_grad():
        parts = pixel_contributions(classifier, test_images[list(liars.values())])  # [2, height, width]
    for col in (1, 2):
        figure.add_trace(go.Heatmap(z=parts[col - 1].tolist(), coloraxis="coloraxis"), row=row, col=col)
        figure.update_yaxes(autorange="reversed", scaleanchor=f"x{2 * (row - 1) + col if (row, col) != (1, 1) else ''}",
                            row=row, col=col)
figure.update_layout(title="Pixel contributions to the 'sick' logit (row 0 at the top, as in the images)", height=620,
                     coloraxis=dict(colorscale="RdBu", reversescale=True, cmid=0))
figure

# Two things made this easy, and neither holds for a language model. The model was linear, so its
# weights *are* its explanation; and we *knew* which cue to look for, because we planted it. In a
# transformer the "marker" could be a token position, a template word, or a name's frequency, and
# its use is spread over layers. Finding it without knowing it in advance is what the rest of this
# workbook builds up to (the capstone, Chapter 08, is exactly that).

# %% [markdown]
# ## 4. On a real model
# The same functions work on GPT-2 small when the Hugging Face Hub is reachable (answers that are
# more than one GPT-2 token are dropped). Offline, this cell says so and moves on.

# %%
if env.hub_online:
    gpt2 = load_model("gpt2-small")

    def single_token_answers(model, prompts: PromptSet) -> PromptSet:
        """The prompts whose correct and wrong answers are each one token for `model`."""
        def is_one_token(word: str) -> bool:
            return model.to_tokens(word, prepend_bos=False).shape[1] == 1

        return prompts.subset(i for i, (c, w) in enumerate(zip(prompts.correct, prompts.wrong))
                              if is_one_token(c) and is_one_token(w))

    gpt2_ioi = single_token_answers(gpt2, prompt_set("ioi", "test", n=100))
    gpt2_reviews = single_token_answers(gpt2, prompt_set("sentiment", "test", n=100))
    gpt2_suite = {
        "IOI": gpt2_ioi,
        "IOI, ' also' before the verb": insert_word(
            gpt2_ioi, " also", [" " + world.IOI_TEMPLATES[t].split("{S} ")[1].split()[0] for t in gpt2_ioi.labels["template"]]),
        "reviews": gpt2_reviews,
        "reviews, ' not' before the adjective": insert_word(
            gpt2_reviews, " not", [" " + a for a in gpt2_reviews.labels["adjective"]], flip=True),
    }
    display(pd.DataFrame({name: {"prompts": len(prompts), "accuracy [95% interval]": "{:.1%} [{:.1%}, {:.1%}]".format(
        *accuracy_interval(logit_diff(gpt2, prompts)))} for name, prompts in gpt2_suite.items()}).T.rename_axis("GPT-2 small"))
else:
    print("offline: skipped GPT-2 small (run this cell with a network connection to compare)")

# %% [markdown]
# ## What behavioural tests can't tell you
# - **Why a test passes.** The shortcut model passed the standard test with a better score than
#   the honest one. A pass is compatible with many mechanisms, some of which break on the next input.
# - **Which inputs you did not think of.** A suite only covers the shifts someone imagined; the
#   space of inputs is too large to sample.
# - **What a failing model is using instead.** The X-ray shortcut showed up as a drop on other
#   hospitals' data, but it took a look inside (saliency maps, and images with the suspected cue
#   edited out) to say what the model relied on.
# - **Whether a failure is one bug or many.** Low accuracy on negated reviews could be one missing
#   mechanism or several interacting ones; the number is the same.
# - **How much to trust a small number.** With 30 prompts, 100% accuracy is consistent with a true
#   rate near 89%. Intervals keep this honest; they cannot make a small test large. And they assume
#   independent prompts: ours share templates and names, so the effective number of prompts is
#   smaller and the true intervals wider.
# - **Anything about rare cases the tests never contain.** A model can behave well on every test
#   and differently on a trigger nobody tested (Chapter 08).
#
# **Your record so far:**

# %%
show_progress("01_behavioral_tests")
