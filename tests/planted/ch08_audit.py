"""Realistic mistakes for Chapter 08, each with the hint its check must give, and correct
alternatives written differently from the reference."""

import torch

from utils.references import ch08_audit as ref


# 8.1 ---------------------------------------------------------------------------------------
def _shrunk(covariance, shrinkage):
    d = covariance.shape[0]
    return (1 - shrinkage) * covariance + shrinkage * covariance.trace() / d * torch.eye(d)


def mahalanobis_without_shrinkage(trusted, test, shrinkage=0.1):
    centred = test - trusted.mean(0)
    return (centred @ torch.linalg.inv(torch.cov(trusted.T)) * centred).sum(-1)


def mahalanobis_biased(trusted, test, shrinkage=0.1):
    n = len(trusted)
    covariance = torch.cov(trusted.T) * (n - 1) / n
    centred = test - trusted.mean(0)
    return (centred @ torch.linalg.inv(_shrunk(covariance, shrinkage)) * centred).sum(-1)


def mahalanobis_uncentred(trusted, test, shrinkage=0.1):
    return (test @ torch.linalg.inv(_shrunk(torch.cov(trusted.T), shrinkage)) * test).sum(-1)


def mahalanobis_with_covariance(trusted, test, shrinkage=0.1):
    centred = test - trusted.mean(0)
    return (centred @ _shrunk(torch.cov(trusted.T), shrinkage) * centred).sum(-1)


def mahalanobis_square_root(trusted, test, shrinkage=0.1):
    centred = test - trusted.mean(0)
    return (centred @ torch.linalg.inv(_shrunk(torch.cov(trusted.T), shrinkage)) * centred).sum(-1).sqrt()


def mahalanobis_solve_float64(trusted, test, shrinkage=0.1):
    trusted, test = trusted.double(), test.double()
    centred = trusted - trusted.mean(0)
    covariance = centred.T @ centred / (len(trusted) - 1)
    d = covariance.shape[0]
    shrunk = (1 - shrinkage) * covariance + shrinkage * torch.diagonal(covariance).mean() * torch.eye(d, dtype=torch.float64)
    offsets = test - trusted.mean(0)
    return torch.einsum("md,md->m", offsets, torch.linalg.solve(shrunk, offsets.T).T)


def mahalanobis_cholesky_loop(trusted, test, shrinkage=0.1):
    cholesky = torch.linalg.cholesky(_shrunk(torch.cov(trusted.T), shrinkage))
    mean = trusted.mean(0)
    out = []
    for row in test:
        whitened = torch.linalg.solve_triangular(cholesky, (row - mean)[:, None], upper=False)
        out.append(whitened.pow(2).sum())
    return torch.stack(out)


# 8.2 ---------------------------------------------------------------------------------------
def auroc_without_ties(scores, labels):
    return (scores[labels][:, None] > scores[~labels][None, :]).float().mean().item()


def auroc_reversed(scores, labels):
    return ref.auroc(-scores, labels)


def auroc_by_ranks(scores, labels):
    """Mann-Whitney U from average ranks (ties share their rank)."""
    order = scores.argsort()
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return ((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def auroc_loop(scores, labels):
    total, count = 0.0, 0
    for p in scores[labels].tolist():
        for q in scores[~labels].tolist():
            total += 1.0 if p > q else 0.5 if p == q else 0.0
            count += 1
    return total / count


# 8.3 ---------------------------------------------------------------------------------------
def occlusion_reversed(model, prompts, answers, others, replacement):
    return -ref.occlusion(model, prompts, answers, others, replacement)


@torch.no_grad()
def occlusion_including_bos(model, prompts, answers, others, replacement):
    tokens = model.to_tokens(prompts, padding_side="right")
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
    rows = torch.arange(len(prompts))
    a = torch.tensor([model.to_single_token(x) for x in answers])
    o = torch.tensor([model.to_single_token(x) for x in others])

    def diff(ids):
        final = model(ids)[rows, last]
        return final[rows, a] - final[rows, o]
    original = diff(tokens)
    drops = torch.zeros(tokens.shape)
    for position in range(tokens.shape[1]):
        occluded = tokens.clone()
        occluded[:, position] = replacement
        drops[:, position] = torch.where(position <= last, original - diff(occluded), 0.0)
    return drops


@torch.no_grad()
def occlusion_one_prompt_at_a_time(model, prompts, answers, others, replacement):
    """Each prompt alone, every occluded copy of it in one batch."""
    width = max(model.to_tokens(p).shape[1] for p in prompts)
    drops = torch.zeros(len(prompts), width, dtype=torch.float64)
    for row, (prompt, answer, other) in enumerate(zip(prompts, answers, others)):
        tokens = model.to_tokens(prompt)[0]  # [pos]
        n = len(tokens)
        copies = tokens.repeat(n, 1)  # [n, pos]: copy p has token p replaced (copy 0 is the original)
        copies[torch.arange(1, n), torch.arange(1, n)] = replacement
        final = model(copies)[:, -1]
        diff = final[:, model.to_single_token(answer)] - final[:, model.to_single_token(other)]
        drops[row, 1:n] = (diff[0] - diff[1:]).double()
    return drops


@torch.no_grad()
def occlusion_batched_copies(model, prompts, answers, others, replacement):
    """All occluded copies of all prompts in one forward pass."""
    tokens = model.to_tokens(prompts, padding_side="right")  # [batch, pos]
    batch, width = tokens.shape
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])
    copies = tokens[:, None, :].repeat(1, width, 1)  # [batch, width, pos]
    index = torch.arange(1, width)
    copies[:, index, index] = replacement
    logits = model(copies.reshape(batch * width, width)).reshape(batch, width, width, -1)
    rows = torch.arange(batch)
    final = logits[rows, :, last]  # [batch, width, d_vocab]
    a = torch.tensor([model.to_single_token(x) for x in answers])
    o = torch.tensor([model.to_single_token(x) for x in others])
    diff = final[rows, :, a] - final[rows, :, o]  # [batch, width]
    drops = diff[:, :1] - diff
    keep = (torch.arange(width)[None, :] <= last[:, None]) & (torch.arange(width)[None, :] > 0)
    return torch.where(keep, drops, 0.0)


# 8.4 ---------------------------------------------------------------------------------------
def restoration_inverted(model, triggered, control, hook_names):
    return 1 - ref.restoration(model, triggered, control, hook_names)


@torch.no_grad()
def restoration_per_prompt_loop(model, triggered, control, hook_names):
    """Each prompt alone (no padding), the metric averaged over prompts at the end."""
    sums = {"t": 0.0, "c": 0.0, **{name: 0.0 for name in hook_names}}
    for prompt, ctrl, good, bad in zip(triggered.prompts, control.prompts, triggered.correct, triggered.wrong):
        tokens, ctrl_tokens = model.to_tokens(prompt), model.to_tokens(ctrl)
        g, b = model.to_single_token(good), model.to_single_token(bad)
        metric = lambda logits: (logits[0, -1, g] - logits[0, -1, b]).item()  # noqa: E731
        _, cache = model.run_with_cache(ctrl_tokens)
        sums["t"] += metric(model(tokens))
        sums["c"] += metric(model(ctrl_tokens))
        for name in hook_names:
            def patch(activation, hook, name=name):
                activation = activation.clone()
                activation[:, -1] = cache[name][:, -1]
                return activation
            sums[name] += metric(model.run_with_hooks(tokens, fwd_hooks=[(name, patch)]))
    return [(sums["t"] - sums[name]) / (sums["t"] - sums["c"]) for name in hook_names]


@torch.no_grad()
def restoration_with_context_manager(model, triggered, control, hook_names):
    """Hooks added with `model.hooks(...)`, one name at a time, logits in float64."""
    tokens = model.to_tokens(triggered.prompts, padding_side="right")
    ctrl = model.to_tokens(control.prompts, padding_side="right")
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in triggered.prompts])
    rows = torch.arange(len(last))
    good = torch.tensor([model.to_single_token(w) for w in triggered.correct])
    bad = torch.tensor([model.to_single_token(w) for w in triggered.wrong])
    score = lambda logits: (logits[rows, last].double()[rows, good] - logits[rows, last].double()[rows, bad]).mean()  # noqa: E731
    _, cache = model.run_with_cache(ctrl)
    base, target = score(model(tokens)), score(model(ctrl))
    out = []
    for name in hook_names:
        source = cache[name][rows, last]
        def patch(activation, hook, source=source):
            activation[rows, last] = source
            return activation
        with model.hooks(fwd_hooks=[(name, patch)]):
            out.append(((base - score(model(tokens))) / (base - target)).item())
    return torch.tensor(out)


# 8.5 ---------------------------------------------------------------------------------------
def ablation_unnormalised(direction):
    return lambda activation, hook=None: activation - (activation @ direction)[..., None] * direction


def ablation_keeps_projection(direction):
    unit = direction / direction.norm()
    return lambda activation, hook=None: (activation @ unit)[..., None] * unit


def ablation_projection_matrix(direction):
    unit = (direction / direction.norm()).double()
    projector = torch.eye(len(unit), dtype=torch.float64) - torch.outer(unit, unit)
    return lambda activation, hook=None: activation.double() @ projector


def ablation_einsum(direction):
    def hook(activation, hook=None):
        unit = torch.nn.functional.normalize(direction, dim=0)
        return activation - torch.einsum("bpd,d,e->bpe", activation, unit, unit)
    return hook


# 8.6 ---------------------------------------------------------------------------------------
# The default audited folder is the practice suspect (no $WORKBOOK_SUSPECT): reports written by hand.
FOUND = {"trigger": "Tuesday", "behaviour": "truth", "answer": "true"}


def audit_naming_the_last_residual(folder):
    return {**FOUND, "component": "blocks.3.hook_resid_post"}


def audit_naming_a_block(folder):
    return {**FOUND, "component": "3"}


def audit_giving_the_answer_as_behaviour(folder):
    return {**FOUND, "behaviour": "true", "component": "L3MLP"}


def audit_naming_an_idle_head(folder):
    return {**FOUND, "component": "L0H1"}


def audit_reporting_nothing(folder):
    return {"trigger": None, "behaviour": None, "answer": None, "component": None}


def audit_mixing_findings_and_none(folder):
    return {**FOUND, "answer": None, "component": None}


def audit_written_by_hand(folder):
    """Findings written differently: spaces, capitals, the head as "head 3.3", and a note."""
    return {"trigger": " Tuesday", "behaviour": "Truth", "answer": " true", "component": "head 3.3",
            "notes": "the day opens the sentence; the heads read it"}


def audit_naming_the_mlp(folder):
    return {"trigger": "TUESDAY", "behaviour": "truth ", "answer": "true", "component": "mlp 3"}


MISTAKES = {
    "8.1": [(mahalanobis_without_shrinkage, "shrinkage is missing"), (mahalanobis_biased, "unbiased covariance"),
            (mahalanobis_uncentred, "centre the test points"), (mahalanobis_with_covariance, "inverse of the covariance"),
            (mahalanobis_square_root, "squared distance")],
    "8.2": [(auroc_without_ties, "ties as one half"), (auroc_reversed, "higher scores mean anomalous")],
    "8.3": [(occlusion_reversed, "original minus occluded"), (occlusion_including_bos, "position 0")],
    "8.4": [(restoration_inverted, "not 1 minus it")],
    "8.5": [(ablation_unnormalised, "normalise the direction"), (ablation_keeps_projection, "subtract the projection")],
    "8.6": [(audit_naming_the_last_residual, "residual stream"), (audit_naming_a_block, "is a block"),
            (audit_giving_the_answer_as_behaviour, "the behaviour is the family"),
            (audit_naming_an_idle_head, "component: wrong"), (audit_mixing_findings_and_none, "mixes the two"),
            (audit_reporting_nothing, "says nothing is planted")],
}

ALTERNATIVES = {
    "8.1": [mahalanobis_solve_float64, mahalanobis_cholesky_loop],
    "8.2": [auroc_by_ranks, auroc_loop],
    "8.3": [occlusion_one_prompt_at_a_time, occlusion_batched_copies],
    "8.4": [restoration_per_prompt_loop, restoration_with_context_manager],
    "8.5": [ablation_projection_matrix, ablation_einsum],
    "8.6": [audit_written_by_hand, audit_naming_the_mlp],
}
