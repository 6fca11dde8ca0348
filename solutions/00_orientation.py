# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 00: Orientation
#
# **Time:** about 75 minutes. **Exercises:** 5, each checked as soon as you run the cell after it.
# *Run All* takes under a minute on a 2-core laptop CPU (longer when the machine is busy).
#
# **You will learn to**
# - tell a *behavioural* account of a model (what it does) from a *mechanistic* one (how it does it);
# - read a small neural network unit by unit and split its output into the contributions of its parts;
# - load the workbook's language model and follow text to tokens, to logits, to a prediction;
# - see the residual stream as a sum that every layer writes into.
#
# **Seed concepts:** behavioural vs mechanistic interpretability; the bottom-up, "reverse-engineer
# the program" view of a network; neurons, features and circuits; why interpretability matters for
# safety (finding what tests miss).
#
# ## How this workbook works
# Each exercise gives a statement, then three hints, folded away until you open them: a gentle
# nudge, then a plan or the shapes of the tensors, then nearly the answer. Write your code where it
# says `raise NotImplementedError`, then run the check cell below it. The verdict is one line:
# *passed*, *not attempted*, or *wrong* with the likely mistake. If you skip an exercise (or get it
# wrong), a second line says that the chapter carries on with the reference solution, so every
# later cell still runs.
# `show_progress()` prints your record at any time.

# %%
from utils import check_exercise, load_model, setup, show_progress

env = setup()

# %% [markdown]
# ## 1. Two ways to understand a model
#
# A **behavioural** account treats a model as a sealed box: we feed in inputs, watch the outputs,
# and describe the mapping ("it approves most applicants over 30"). A **mechanistic** account opens
# the box and says *how* the output is computed: which internal variables exist, what each one
# responds to, and how they combine. Mechanistic interpretability treats a trained network like a
# compiled program: the weights are the machine code, the activations are the program's state, and
# the job is to recover readable pseudocode.
#
# Why bother, when behaviour is what we care about? Because behaviour is only ever sampled. A
# model can pass every test we thought of and still compute its answer in a way that breaks on the
# inputs we didn't think of. Chapter 01 shows such a model. Knowing the mechanism would, in
# principle, let us predict failures, spot hidden objectives, and fix a model surgically rather than
# by retraining. How far that promise reaches in real models is still an open question; this
# workbook lets you test it where the answer is known.
#
# We start with the smallest possible contrast: a rule you can read, and a network trained to
# imitate it.
#
# ### A transparent model
# A lender scores applicants by age and income, both rescaled to lie between 0 and 1. Its policy is
# a two-rule decision list:
# - an applicant is **high risk** if their age is below 0.3 **and** their income is below 0.5;
# - an applicant is also **high risk** whenever their income is below 0.2, whatever their age;
# - everyone else is low risk.

# %% [markdown]
# ### Exercise 0.1: a rule-based model (difficulty 1/3, ~5 min)
# Write `rule_based_risk(age, income)`. Both arguments are float tensors of the same shape; return
# a boolean tensor of that shape, `True` for high risk. Use the thresholds exactly as written
# ("below" means strictly less than).
#
# <details><summary>Hint 1</summary>
#
# Comparisons on tensors work element by element and give boolean tensors: `age < 0.3` has the shape
# of `age`.
# </details>
# <details><summary>Hint 2</summary>
#
# The policy names two ways to be high risk: *young and on a modest income*, or *on a very low
# income*. Build one boolean tensor for each way, then combine the two.
# </details>
# <details><summary>Hint 3</summary>
#
# Combine boolean tensors with `&` (and) and `|` (or), not Python's `and`/`or`, and put every
# comparison in brackets, because `&` binds more tightly than `<`: `((age < 0.3) & (income < 0.5)) | (...)`.
# </details>

# %% tags=["export"]
import torch
from jaxtyping import Bool, Float
from torch import Tensor


def rule_based_risk(age: Float[Tensor, "*batch"], income: Float[Tensor, "*batch"]) -> Bool[Tensor, "*batch"]:
    """The lender's written policy: True where the applicant is high risk."""
    ### BEGIN SOLUTION
    return ((age < 0.3) & (income < 0.5)) | (income < 0.2)
    ### END SOLUTION


# %%
rule_based_risk = check_exercise("0.1", rule_based_risk)

# %% [markdown]
# ### A network trained to imitate the rule
# Now we train a tiny neural network, 2 inputs, 3 hidden ReLU units and 1 output, on 4,000 random
# applicants labelled by that rule. Nothing in its weights can say "age below 0.3" directly: our task
# is to find out what it computes instead, and how close that is to the rule.

# %% tags=["export"]
from torch import nn


class RiskNetwork(nn.Module):
    """Two inputs (age, income) -> a few ReLU hidden units -> one logit for 'high risk'."""

    def __init__(self, n_hidden: int = 3):
        super().__init__()
        self.hidden = nn.Linear(2, n_hidden)
        self.output = nn.Linear(n_hidden, 1)

    def forward(self, x: Float[Tensor, "batch 2"]) -> Float[Tensor, "batch"]:
        return self.output(torch.relu(self.hidden(x))).squeeze(-1)


def applicant_grid(steps: int = 41) -> Float[Tensor, "batch 2"]:
    """Every (age, income) pair on a regular grid over [0, 1] x [0, 1]."""
    values = torch.linspace(0, 1, steps)
    age, income = torch.meshgrid(values, values, indexing="ij")
    return torch.stack([age.flatten(), income.flatten()], dim=-1)  # [steps * steps, 2]


def train_risk_network(seed: int = 0, n_hidden: int = 3, steps: int = 500) -> RiskNetwork:
    """Fit a RiskNetwork to random applicants labelled by `rule_based_risk` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(4000, 2, generator=generator)  # [batch, 2]: age, income
    labels = rule_based_risk(x[:, 0], x[:, 1]).float()
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves your random stream as it was
        torch.manual_seed(seed)
        network = RiskNetwork(n_hidden)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.02)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(network(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network


# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from utils.plotting import heatmap

network = train_risk_network()
grid = applicant_grid()
with torch.no_grad():
    network_says = network(grid) > 0
rule_says = rule_based_risk(grid[:, 0], grid[:, 1])
print(f"the network agrees with the rule on {(network_says == rule_says).float().mean():.1%} of the grid")

ticks = torch.linspace(0, 1, 41).tolist()  # the grid's age and income values
disagreement = heatmap((network_says.float() - rule_says.float()).reshape(41, 41).T, x=ticks, y=ticks,
                       title="Where the network and the rule disagree (+1: only the network says high risk)",
                       x_label="age", y_label="income")
disagreement.update_yaxes(autorange=True)  # income 0 at the bottom, as in every map of this chapter
disagreement.add_trace(go.Scatter(x=[0, 0.3, 0.3, 1], y=[0.5, 0.5, 0.2, 0.2], mode="lines", name="the rule's boundary",
                                  line=dict(color="black", width=2)))
disagreement.update_layout(legend=dict(orientation="h", y=-0.2))
disagreement

# %% [markdown]
# About 93% agreement (between 90% and 97% for every seed and width we tried; the tests hold it
# there): a score that would pass many tests. Before reading on, look at *where* the
# two disagree. The errors are not scattered: they run along the rule's boundary, on both sides of
# the step at age 0.3. Let's read the network to see why.
#
# ### Exercise 0.2: hidden activations by hand (difficulty 1/3, ~10 min)
# Write `hidden_activations(network, x)`, returning the hidden units' activations
# `ReLU(x W^T + b)` for a batch of inputs, computed from `network.hidden.weight` (shape
# `[n_hidden, 2]`) and `network.hidden.bias` (shape `[n_hidden]`) yourself, without calling
# `network.hidden`.
#
# <details><summary>Hint 1</summary>
#
# `nn.Linear` stores its weight as `[out_features, in_features]`, so multiply by its transpose.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: `x` is `[batch, 2]` and `network.hidden.weight.T` is `[2, n_hidden]`, so their product
# is `[batch, n_hidden]`; the bias, `[n_hidden]`, broadcasts over the batch. The ReLU comes last.
# </details>
# <details><summary>Hint 3</summary>
#
# `torch.relu(x @ network.hidden.weight.T + ...)`, with the bias in place of the dots.
# </details>

# %% tags=["export"]
def hidden_activations(network: RiskNetwork, x: Float[Tensor, "batch 2"]) -> Float[Tensor, "batch n_hidden"]:
    """The ReLU hidden units of `network` on inputs `x`, computed from its weights."""
    ### BEGIN SOLUTION
    return torch.relu(x @ network.hidden.weight.T + network.hidden.bias)
    ### END SOLUTION


# %%
hidden_activations = check_exercise("0.2", hidden_activations)

# %% [markdown]
# Now look at each unit over the whole grid. Decide first what you expect: to copy the rule, you
# might hope for units that are zero over most of the square and rise along one edge, detectors for
# "income is low" or "the applicant is young".

# %%
with torch.no_grad():
    activations = hidden_activations(network, grid)  # [41 * 41, n_hidden]
figure = make_subplots(rows=1, cols=activations.shape[1],
                       subplot_titles=[f"unit {i}" for i in range(activations.shape[1])])
for unit in range(activations.shape[1]):
    figure.add_trace(go.Heatmap(z=activations[:, unit].reshape(41, 41).T, x=ticks, y=ticks,
                                coloraxis="coloraxis"), row=1, col=unit + 1)
figure.update_layout(title="Hidden unit activations (x: age, y: income)", coloraxis_colorscale="Viridis",
                     height=350)
figure

# %% [markdown]
# Write down, in a sentence each, what you think the units detect. Then check your reading
# against the weights, and count where each unit is active at all:

# %%
print("hidden weights [unit, (age, income)]:\n", network.hidden.weight.data.round(decimals=2))
print("hidden biases:", network.hidden.bias.data.round(decimals=2))
print("output weights:", network.output.weight.data.round(decimals=2), "bias:", network.output.bias.data.round(decimals=2))
print("share of the grid where each unit is active:", (activations > 0).float().mean(0).round(decimals=3).tolist())

# %% [markdown]
# This is not the picture we hoped for:
# - **A dead unit.** One unit is active nowhere on the square: its weights and bias make its input
#   negative for every applicant, so its ReLU outputs 0 everywhere. A dead unit also gets no
#   gradient, so training never brings it back. The network has, in effect, two units.
# - **No region detectors.** The two living units are active over most of the square, and *both*
#   are active everywhere along the decision boundary. Where every unit is active, a ReLU network is
#   just a linear function of its input. So near the boundary the network is linear, and its
#   boundary is a single straight, tilted line:
#
# `decision_line` reads that line off the weights (the logit is `a * age + b * income + c` where the
# given units are active), and `line_agreement` counts how often "logit > 0 on that line" gives the
# network's own verdict.

# %% tags=["export"]
def decision_line(network: RiskNetwork, units: list[int]) -> tuple[float, float, float]:
    """(a, b, c) with logit = a * age + b * income + c wherever exactly `units` are active."""
    w_in, b_in = network.hidden.weight[units], network.hidden.bias[units]  # [units, 2], [units]
    w_out = network.output.weight[0, units]  # [units]
    a, b = (w_out @ w_in).tolist()
    c = (w_out @ b_in + network.output.bias[0]).item()
    return a, b, c


def line_agreement(network: RiskNetwork, units: list[int], x: Float[Tensor, "batch 2"]) -> float:
    """Share of inputs where the straight line of `decision_line` gives the network's own verdict."""
    a, b, c = decision_line(network, units)
    with torch.no_grad():
        return ((a * x[:, 0] + b * x[:, 1] + c > 0) == (network(x) > 0)).float().mean().item()


# %%
with torch.no_grad():
    alive = [unit for unit in range(activations.shape[1]) if (activations[:, unit] > 0).any()]
    a, b, c = decision_line(network, alive)
print(f"living units {alive}: high risk where {-a:.1f} * age + {-b:.1f} * income < {c:.1f}")
print(f"that straight line gives the network's verdict on {line_agreement(network, alive, grid):.1%} of the grid")
ages = torch.tensor([0.0, 1.0])
disagreement.add_trace(go.Scatter(x=ages.tolist(), y=((-c - a * ages) / b).tolist(), mode="lines",
                                  name="the network's boundary", line=dict(color="black", dash="dash", width=2)))
disagreement

# %% [markdown]
# Now the disagreement map makes sense. A line cannot turn a corner, so the network replaced the
# rule's step with a slope. It calls young applicants with incomes just under 0.5 low risk, and it
# runs past age 0.3 into older applicants with incomes above 0.2 (and misses those whose income
# is just under 0.2 at the oldest ages). The corner of the rule is never learnt.
#
# Nothing in the 93% told us any of this. Behaviourally the network is "nearly the rule";
# mechanistically it is a different, simpler rule, and we could say exactly which applicants it
# gets wrong without testing a single one.
#
# ### Same behaviour, different networks
# Is this network a fluke? Train it again with other seeds and more units, and compare. Drag the
# slider below: each position is a network trained in advance. Watch the agreement, and the number
# of dead units, before you look at the map.

# %% tags=["export"]
import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

NETWORK_VARIANTS = ((0, 3), (1, 3), (2, 3), (0, 8), (1, 8))  # (seed, n_hidden)


def network_summary(network: RiskNetwork, grid: Float[Tensor, "batch 2"]) -> dict:
    """The network's verdict on `grid`, its agreement with the rule, and its units that never fire there."""
    with torch.no_grad():
        says = network(grid) > 0  # [batch]
        active = hidden_activations(network, grid) > 0  # [batch, n_hidden]
    agreement = (says == rule_based_risk(grid[:, 0], grid[:, 1])).float().mean().item()
    return {"says": says, "agreement": agreement, "dead": int((~active.any(0)).sum())}


def verdict_map(summary: dict, steps: int, visible: bool = True) -> go.Heatmap:
    """Where one network says high risk, on the `steps` x `steps` applicant grid (income 0 at the bottom)."""
    values = torch.linspace(0, 1, steps).tolist()
    return go.Heatmap(z=summary["says"].float().reshape(steps, steps).T.tolist(), x=values, y=values,
                      colorscale=[[0, "#f0f0f0"], [1, "#e45756"]], showscale=False, visible=visible)


def variants_slider_figure(variants, summaries: list[dict], steps: int = 41) -> go.Figure:
    """A static figure with a plotly slider over trained networks: it works with no kernel (the book)."""
    figure = go.Figure([verdict_map(summary, steps, visible=k == 0) for k, summary in enumerate(summaries)])
    figure.add_trace(go.Scatter(x=[0, 0.3, 0.3, 1], y=[0.5, 0.5, 0.2, 0.2], mode="lines", name="the rule's boundary",
                                line=dict(color="black", width=2)))
    titles = [f"seed {seed}, {n} units: {summary['agreement']:.1%} agreement, {summary['dead']} dead unit(s)"
              for (seed, n), summary in zip(variants, summaries)]
    steps_ = [dict(method="update", label=f"seed {seed}, {n} units",
                   args=[{"visible": [j == k for j in range(len(summaries))] + [True]}, {"title": titles[k]}])
              for k, (seed, n) in enumerate(variants)]
    figure.update_layout(title=titles[0], height=480, xaxis_title="age", yaxis_title="income (red: high risk)",
                         sliders=[dict(steps=steps_, pad=dict(t=50))], legend=dict(orientation="h", y=1.02))
    return figure


class NetworkExplorer:
    """Sliders for the seed and the number of hidden units; each move retrains (about a second) and redraws."""

    def __init__(self, seed: int = 0, n_hidden: int = 3):
        self.seed = widgets.IntSlider(value=seed, min=0, max=9, description="seed", continuous_update=False)
        self.n_hidden = widgets.IntSlider(value=n_hidden, min=1, max=8, description="units", continuous_update=False)
        self.output = widgets.Output()
        for slider in (self.seed, self.n_hidden):
            slider.observe(lambda change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        self.network = train_risk_network(seed=self.seed.value, n_hidden=self.n_hidden.value)
        self.summary = network_summary(self.network, applicant_grid())
        self.figure = variants_slider_figure([(self.seed.value, self.n_hidden.value)], [self.summary])
        self.figure.update_layout(sliders=[])
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)

    def widget(self) -> widgets.VBox:
        return widgets.VBox([widgets.HBox([self.seed, self.n_hidden]), self.output])


# %%
import pandas as pd

from utils import progress_bar

variant_networks = [train_risk_network(seed=seed, n_hidden=n)
                    for seed, n in progress_bar(NETWORK_VARIANTS, desc="training the variants")]
variant_summaries = [network_summary(variant, grid) for variant in variant_networks]
display(pd.DataFrame([{"seed": seed, "hidden units": n, "agreement with the rule": summary["agreement"],
                       "dead units": summary["dead"]} for (seed, n), summary in zip(NETWORK_VARIANTS, variant_summaries)]
                     ).style.format({"agreement with the rule": "{:.1%}"}).hide(axis="index"))
variants_slider_figure(NETWORK_VARIANTS, variant_summaries)

# %% [markdown]
# Every network lands at about the same agreement, 93% (always between 90% and 97%), and draws about
# the same tilted line: more than 95% of the grid gets the same verdict from each. Their
# units are not the same: some have none dead, some several, and with eight units more of them die.
# Same behaviour, different mechanisms, even among networks of one architecture trained on one
# task. More units do not buy the corner.
#
# To retrain with any seed and width as you drag, set `live = True` and run the cell again. It is
# off by default because a live widget cannot be saved with the notebook: reopened later, it would
# show an error in its place.

# %%
live = False
if live:
    display(NetworkExplorer().widget())

# %% [markdown]
# ### Exercise 0.3: split the output into unit contributions (difficulty 1/3, ~10 min)
# The output logit is `sum_i w_i * h_i + b`, where `h_i` are the hidden activations and `w_i` the
# output weights. Write `unit_contributions(network, x)` returning `w_i * h_i` for each unit and
# each input, shape `[batch, n_hidden]`. Summed over units, plus the output bias, it must give
# `network(x)` exactly. This is **direct attribution**: Chapter 03 does the same thing to the heads
# and layers of a transformer.
#
# <details><summary>Hint 1</summary>
#
# Reuse `hidden_activations`. `network.output.weight` has shape `[1, n_hidden]`.
# </details>
# <details><summary>Hint 2</summary>
#
# The shapes: the activations are `[batch, n_hidden]` and `network.output.weight[0]` is
# `[n_hidden]`, one weight per unit. An element-wise product broadcasts the weights over the batch.
# Do not sum over units: the check adds them up itself.
# </details>
# <details><summary>Hint 3</summary>
#
# Multiply `hidden_activations(network, x)` by `network.output.weight[0]`; broadcasting does the
# rest.
# </details>

# %% tags=["export"]
def unit_contributions(network: RiskNetwork, x: Float[Tensor, "batch 2"]) -> Float[Tensor, "batch n_hidden"]:
    """Each hidden unit's additive share of the output logit."""
    ### BEGIN SOLUTION
    return hidden_activations(network, x) * network.output.weight[0]
    ### END SOLUTION


# %%
unit_contributions = check_exercise("0.3", unit_contributions)

# %%
applicants = torch.tensor([[0.2, 0.3], [0.6, 0.1], [0.7, 0.8]])  # [3, 2]: age, income
with torch.no_grad():
    shares = unit_contributions(network, applicants)
parts = pd.DataFrame(shares.numpy(), columns=[f"unit {i}" for i in range(shares.shape[1])],
                     index=[f"age {age:.1f}, income {income:.1f}" for age, income in applicants.tolist()])
parts["output bias"] = network.output.bias.item()
parts["logit (the sum)"] = network(applicants).detach().numpy()
display(parts.style.format("{:+.2f}"))

# Each applicant's logit as a stack of its parts: bars above zero push towards "high risk".
names = [f"age {age:.1f}, income {income:.1f}" for age, income in applicants.tolist()]
stack = go.Figure([go.Bar(x=names, y=shares[:, unit].tolist(), name=f"unit {unit}") for unit in range(shares.shape[1])]
                  + [go.Bar(x=names, y=[network.output.bias.item()] * len(names), name="output bias")])
stack.add_trace(go.Scatter(x=names, y=network(applicants).detach().tolist(), mode="markers", name="logit (the sum)",
                           marker=dict(color="black", size=12, symbol="diamond")))
stack.update_layout(barmode="relative", title="Each applicant's logit, split into unit contributions",
                    yaxis_title="contribution to the logit", height=400)
stack

# %% [markdown]
# The young, poor applicant is high risk *because* particular units fire; the decision list gave the
# same verdict *because* of a threshold. Same behaviour, different mechanism: that difference is
# what the rest of this workbook is about, at the scale of a language model.
#
# ## 1b. Features, circuits, and what the field hopes to do with them
# A few words the rest of the workbook relies on.
#
# - A **feature** is a property of the input that a network represents inside itself: "income is
#   low", "this review is positive", "the next name should be Mary". In our small network a feature
#   could live in one unit; in a language model it is usually pictured as a *direction* in the space
#   of activations, read by a dot product (the linear representation hypothesis, Chapter 02).
# - A **circuit** is a part of the network, features joined by the weights between them, that
#   computes something: the two living units and their output weights above form the whole circuit
#   for "high risk". In the language model, Chapter 06 traces the heads that find the indirect
#   object of a sentence.
#
# Three hypotheses, named in the "Zoom In" essay on vision models (Olah et al., 2020), frame the
# field. They are working bets, not results:
# 1. **Features** are the fundamental units of a network's computation, and they correspond to
#    directions. Chapter 04 shows the complication: a model can hold more features than it has
#    dimensions (superposition), so features need not line up with neurons.
# 2. **Circuits**: features are connected by weights into circuits that can be read and checked
#    one by one (Chapters 03 and 06).
# 3. **Universality**: similar features and circuits form in different models trained on similar
#    data. Chapter 09 tests it offline, on two siblings of the organism trained by the same recipe
#    from other seeds: which heads, directions and SAE latents recur, against an untrained model.
#    Comparing the organism with GPT-2 small, which every chapter offers when you are online, is a
#    looser test: another architecture and other data.
#
# Methods come in two kinds. **Observational** methods read activations and change nothing:
# probes (Chapter 02), the logit lens and attribution (Chapter 03), sparse autoencoders (Chapter 05).
# They show what is *present*. **Interventional** methods change the computation and watch the
# output: ablation and activation patching (Chapter 06), steering and editing (Chapter 07). Only
# they show what is *used*. Chapter 02 meets a feature that is present and not used.
#
# **Four approaches, and a fifth angle.** Interpretability work starts from one of four places,
# and this workbook uses all of them:
# - **Behavioural**: inputs and outputs only, the model sealed. Chapter 01's test suite, and
#   Chapter 08's first look at a suspect model (which prompts does it get wrong?).
# - **Attributional**: which parts of the input or of the network an output depends on, without a
#   mechanism: pixel contributions (Chapter 01), direct logit attribution (Chapter 03),
#   attribution patching (Chapter 06).
# - **Mechanistic, bottom-up**: start from the parts (neurons, heads, weight matrices) and build
#   up to an algorithm: Chapters 03, 04 and 06, where heads and their circuits are read off the
#   weights and checked by intervention.
# - **Concept-based, top-down**: start from a concept a person names ("truth", "sentiment") and
#   look for it in the activations, then read or write along it: probes (Chapter 02), steering and
#   representation engineering (Chapter 07).
# - **Developmental**, a fifth angle on the others: how the representations and circuits form
#   during training (Chapter 01's training log, Chapter 06's induction heads forming in a toy's
#   checkpoints).
#
# Top-down and bottom-up fail in opposite ways. Top-down finds the concepts you thought to name and
# is blind to the ones you did not: Chapter 02's probes read truth wherever it is, and say nothing
# about what else the model computes. Bottom-up can surprise you (Chapter 03's head that the
# attribution underrates), but it is slow, and what it cannot afford to read it never sees.
#
# **What a model says about itself is behaviour too.** A large model asked *why* it answered as it
# did produces an explanation, and a chain of thought before its answer looks like one. Both are
# outputs: they can be plausible and still not describe the computation that produced the answer
# (a plausible explanation is not a faithful one). The organism cannot talk about itself, but the
# same gap between a convincing story and the computation shows up with our own tools, measured:
# Chapter 03 (a head's direct attribution against what ablating it costs), Chapter 05 (an SAE
# latent's explanation scored on prompts it was not chosen on) and Chapter 06 (how much of the
# behaviour a proposed circuit carries on its own).
#
# Why would this matter for safety? Each **theory of impact** is a bet on what understanding buys.
# The ones this workbook touches, and where:
#
# | end goal | the idea | where you work on it |
# |---|---|---|
# | trust and auditing | check *why* a model behaves well, not only *that* it does | 01 (tests and their limits), 08 (audit a model) |
# | **enumerative safety** | list every feature a model uses and check that none is dangerous | 05 (can an SAE list them all?), 08 |
# | **retargeting the search** | if a model carries an internal goal, find it and point it elsewhere; speculative today | 07 (named only; the organism has no search to retarget) |
# | **relaxed adversarial training** | search for bad behaviour by perturbing the model's *activations*, not only its inputs, and train it away | 07 (latent attacks, the cheap cousin of latent adversarial training; no training) |
# | **mechanistic anomaly detection** | flag inputs where the model gives the usual answer for an unusual reason | 08 (a planted trigger) |
# | scaling up | the same experiments on models no laptop holds | 09 (nnsight) |
# | **extrapolation** | learn from today's models how larger ones will behave, and which capabilities appear with scale | 03 (the organism's top IOI head against GPT-2 small's published one: the same task, an opposite finding), 09 ("can't tell you": what carries over) |
#
# None of these works yet at the scale of frontier models; each chapter ends with what its method
# cannot tell you.
#
# ## 2. The workbook's language model
# Every chapter runs on a small GPT-2-style model that this workbook trained itself, on a world it
# generated itself: stories about who gave what to whom, facts about 40 countries, true and false
# statements, short reviews, repeated word sequences. Because we wrote that world, we know the
# right answer to every question we ask of the model, and which prompts it never saw in training.
# `load_model()` loads it (offline, in about a second); `load_model("gpt2-small")` loads the real
# GPT-2 when you are online, through the same code.

# %%
from pprint import pprint

model = load_model()
prompt = "When Mary and John went to the store, John gave a drink to"
pprint(model.to_str_tokens(prompt), compact=True, width=100)  # a list of strings, folded to fit the page

# %% [markdown]
# The model reads **tokens**. Ours has a word-level vocabulary, so each word is one token, with its
# leading space; the first token, `<|endoftext|>`, marks the start of a text (TransformerLens adds
# it for us). For each position, the model outputs **logits**: one score per vocabulary entry for
# what comes next. The prediction is the highest-scoring token at the *last* position.
#
# ### Exercise 0.4: from text to a prediction (difficulty 1/3, ~10 min)
# Write `predict_next_token(model, prompt)` returning the model's most likely next token as a
# string (with its leading space, e.g. `" Mary"`).
#
# <details><summary>Hint 1</summary>
#
# `model(prompt)` turns a string into tokens and returns logits of shape `[batch, pos, d_vocab]`.
# </details>
# <details><summary>Hint 2</summary>
#
# The plan: one prompt, so batch index 0; the prediction for the *next* token sits at the last
# position; the most likely token is the largest logit over the vocabulary; then turn its id back
# into text.
# </details>
# <details><summary>Hint 3</summary>
#
# Take `logits[0, -1]`, its `argmax()`, and `model.to_string(...)` of that token id. (With a single
# prompt there is no padding, so `-1` is its real last token.)
# </details>

# %% tags=["export"]
def predict_next_token(model, prompt: str) -> str:
    """The model's single most likely next token after `prompt`."""
    ### BEGIN SOLUTION
    logits = model(prompt)  # [1, pos, d_vocab]
    return model.to_string(logits[0, -1].argmax())
    ### END SOLUTION


# %%
predict_next_token = check_exercise("0.4", predict_next_token)

# %%
texts = [prompt, "The capital of France is", "The movie was dreadful. I", "red fox Monday red fox"]
pd.DataFrame({"predicted next token": [repr(predict_next_token(model, text)) for text in texts]},
             index=pd.Index([repr(text) for text in texts], name="prompt"))

# %% [markdown]
# How does the model get from a prompt to its prediction? Part of the answer is **attention**: at
# each position, each attention head takes a weighted average of *value vectors* computed from the
# earlier positions, the current one included, and its weights, its *pattern*, say where it looks. Below are the last layer's heads on our prompt,
# drawn by [circuitsvis](https://github.com/TransformerLensOrg/CircuitsVis), the viewer most
# interpretability notebooks use (`circuitsvis.attention.attention_heads`): pick a head, then hover
# over a token to see which earlier tokens it attends to. Offline, each circuitsvis view carries its
# whole 1.3 MB script, so the later chapters draw the same patterns with the workbook's lighter
# `attention_patterns`, which opens on the head the text discusses. Chapter 03 reads these patterns
# properly, and Chapter 06 tests which of them matter.

# %%
from utils.plotting import circuitsvis_attention

_, attention_cache = model.run_with_cache(prompt)
last_layer = model.cfg.n_layers - 1
circuitsvis_attention(model.to_str_tokens(prompt), attention_cache[f"blocks.{last_layer}.attn.hook_pattern"][0],
                      [f"L{last_layer}H{h}" for h in range(model.cfg.n_heads)])

# %% [markdown]
# ## 3. The residual stream is a sum
# Inside the transformer, each position carries a vector of size `d_model`, the **residual
# stream**. The token and position embeddings start it; then every attention layer and every MLP
# *reads* from it and *adds* its output back. Components only ever add; but adding can also cancel,
# since a later component can write the negative of what an earlier one wrote. So the stream after
# the last layer is exactly the sum of everything written into it. That is why we can ask of each
# component: what did *you* add?
#
# ### What one block computes
# Our model has 4 blocks (GPT-2 small has 12). Block `l` turns the stream `x` at every position
# into
#
# `x_mid = x + Attention(LN1(x))`, then `x_out = x_mid + MLP(LN2(x_mid))`.
#
# - **LN** (LayerNorm) subtracts each vector's mean and divides by its standard deviation, then
#   applies a learned scale and shift. Each component reads a normalised *copy*; the stream itself
#   is never normalised in place.
# - **Attention** is where information moves between positions. Each of the 8 heads computes, at
#   every position `i`, a query `q_i = W_Q x_i`, a key `k_i = W_K x_i` and a value `v_i = W_V x_i`
#   (32 numbers each here). Its pattern at `i` is `softmax_j(q_i . k_j / sqrt(32))` over positions
#   `j <= i` (it cannot look ahead), and its output is `W_O` times the pattern-weighted average of
#   the `v_j`. The heads' outputs are summed: that sum is `hook_attn_out`.
# - **The MLP** works on each position on its own: `W_out GELU(W_in x + b_in) + b_out`, with 1,024
#   hidden neurons here. It cannot move information between positions; it transforms what is there.
# - After the last block, a final LayerNorm and the **unembedding** `W_U` turn the stream into
#   logits. The logits are a linear function of the stream *once that last normalisation's scale is
#   fixed*, but the scale depends on the whole stream. Chapter 03 freezes it to attribute the logits
#   to components, and that caveat comes with every such attribution.
#
# `model.run_with_cache(prompt)` runs the model and keeps every intermediate activation, named by
# hook: `hook_embed`, `hook_pos_embed`, `blocks.{layer}.hook_attn_out`,
# `blocks.{layer}.hook_mlp_out`, `blocks.{layer}.hook_resid_post` and many more.

# %%
logits, cache = model.run_with_cache(prompt)
print(f"{len(cache)} activations cached; for example:")
examples = ["hook_embed", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
pd.DataFrame({"shape": [str(list(cache[name].shape)) for name in examples]}, index=pd.Index(examples, name="hook name"))

# %% [markdown]
# ### Exercise 0.5: rebuild the residual stream (difficulty 2/3, ~15 min)
# Write `residual_from_components(cache, n_layers)` that adds up the token embedding, the
# positional embedding, and the output of every attention layer and every MLP of the first
# `n_layers` blocks, giving a tensor of shape `[batch, pos, d_model]`. It should equal
# `cache[f"blocks.{n_layers - 1}.hook_resid_post"]` (the check also tries `n_layers` smaller than
# the model's).
#
# <details><summary>Hint 1</summary>
#
# Start from `cache["hook_embed"] + cache["hook_pos_embed"]` and loop over layers.
# </details>
# <details><summary>Hint 2</summary>
#
# Every term has the shape `[batch, pos, d_model]`. After block `L` the stream holds the two
# embeddings plus, for every layer from 0 to `L`, what its attention wrote and what its MLP wrote: a
# loop over `range(n_layers)` with two additions per layer.
# </details>
# <details><summary>Hint 3</summary>
#
# Inside the loop add `cache[f"blocks.{layer}.hook_attn_out"]` and
# `cache[f"blocks.{layer}.hook_mlp_out"]`.
# </details>

# %% tags=["export"]
def residual_from_components(cache, n_layers: int) -> Float[Tensor, "batch pos d_model"]:
    """The final residual stream, rebuilt as the sum of everything written into it."""
    ### BEGIN SOLUTION
    total = cache["hook_embed"] + cache["hook_pos_embed"]  # [batch, pos, d_model]
    for layer in range(n_layers):
        total = total + cache[f"blocks.{layer}.hook_attn_out"] + cache[f"blocks.{layer}.hook_mlp_out"]
    return total
    ### END SOLUTION


# %%
residual_from_components = check_exercise("0.5", residual_from_components)

# %% [markdown]
# Since the stream is a sum, we can ask how large each part is at the last position. Chapter 03
# turns this into the logit lens and direct logit attribution.

# %%
from utils.plotting import bars

parts = ["hook_embed", "hook_pos_embed"] + [
    f"blocks.{layer}.hook_{kind}_out" for layer in range(model.cfg.n_layers) for kind in ("attn", "mlp")]
norms = [cache[name][0, -1].norm().item() for name in parts]
rebuilt = residual_from_components(cache, model.cfg.n_layers)
final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
print(f"largest gap between the rebuilt and the real residual stream: {(rebuilt - final).abs().max():.2e}")
bars(norms, [name.replace("blocks.", "L").replace(".hook_", " ") for name in parts],
     title="Size of each component's write at the last position", y_label="L2 norm")

# %% [markdown]
# ## 4. On a real model
# The same functions work on GPT-2 small when the Hugging Face Hub is reachable. Offline, this
# cell says so and moves on.

# %%
if env.hub_online:
    gpt2 = load_model("gpt2-small")
    print(repr(predict_next_token(gpt2, "The capital of France is")))
    print(f"GPT-2 small has {gpt2.cfg.n_layers} layers and a vocabulary of {gpt2.cfg.d_vocab} tokens")
else:
    print("offline: skipped GPT-2 small (run this cell with a network connection to compare)")

# %% [markdown]
# ## What these methods can't tell you
# - Agreement on a grid of inputs is behavioural evidence: it says nothing about inputs off the grid.
# - Reading a unit by its activations tells you what it *responds to*, not what the network *uses*
#   it for; that needs an intervention (Chapter 06).
# - A tiny network has units you can name. Real models pack many more features than units
#   (Chapter 04), so a single neuron often means several things at once.
# - The residual decomposition is exact, but "large norm" is not "important for this output":
#   importance needs the direction that matters (Chapter 03).
# - A finding on a small model is a hypothesis about a large one, not a prediction (extrapolation):
#   ablating the organism's top IOI head costs more than its direct share, where in GPT-2 small the
#   published finding runs the other way (Chapter 03), and Chapter 09 says what carries over.
# - An explanation you can read, from a tool or from the model itself, can be plausible and
#   unfaithful; only an intervention checks it (Chapters 03 and 06).
#
# **Your record so far:**

# %%
show_progress("00_orientation")
