"""Realistic mistakes for Chapter 05, each with the hint its check must give, and correct
alternatives written differently from the reference."""

import torch
import torch.nn.functional as F

from utils.references import ch05_saes as ref


# 5.1 ---------------------------------------------------------------------------------------
class SAEWithoutDecoderBiasInEncoder(ref.SparseAutoencoder):
    def encode(self, x):
        return F.relu(x @ self.W_enc + self.b_enc)


class SAEWithoutReLU(ref.SparseAutoencoder):
    def encode(self, x):
        return (x - self.b_dec) @ self.W_enc + self.b_enc


class SAEDecodeWithoutBias(ref.SparseAutoencoder):
    def decode(self, codes):
        return codes @ self.W_dec


class SAEDecodeWithEncoderTranspose(ref.SparseAutoencoder):
    def decode(self, codes):
        return codes @ self.W_enc.T + self.b_dec


class SAEDetached(ref.SparseAutoencoder):
    def decode(self, codes):
        with torch.no_grad():
            return codes @ self.W_dec + self.b_dec


class SAEIgnoresK(ref.SparseAutoencoder):
    """The whole encode body rewritten with the ReLU only: a TopK SAE then silently trains as a ReLU SAE."""

    def encode(self, x):
        return F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)


class SAEEinsum(ref.SparseAutoencoder):
    def encode(self, x):
        pre = torch.einsum("bd,ds->bs", x - self.b_dec, self.W_enc) + self.b_enc
        return ref.topk_activation(pre, self.k) if self.k is not None else pre.clamp(min=0)

    def decode(self, codes):
        return torch.einsum("bs,sd->bd", codes, self.W_dec) + self.b_dec


class SAEFoldedBias(ref.SparseAutoencoder):
    """The decoder bias folded into the encoder bias: x W_enc + (b_enc - b_dec W_enc)."""

    def encode(self, x):
        pre = F.linear(x, self.W_enc.T, self.b_enc - self.b_dec @ self.W_enc)
        return ref.topk_activation(pre, self.k) if self.k is not None else torch.relu(pre)

    def decode(self, codes):
        return torch.addmm(self.b_dec, codes, self.W_dec)


# 5.2 ---------------------------------------------------------------------------------------
def loss_without_l1(x, x_hat, codes, l1):
    return (x_hat - x).pow(2).sum(-1).mean()


def loss_mean_over_dimensions(x, x_hat, codes, l1):
    return ((x_hat - x).pow(2).mean(-1) + l1 * codes.sum(-1)).mean()


def loss_summed_over_batch(x, x_hat, codes, l1):
    return ((x_hat - x).pow(2).sum(-1) + l1 * codes.sum(-1)).sum()


def loss_with_norm(x, x_hat, codes, l1):
    return ((x_hat - x).norm(dim=-1) + l1 * codes.sum(-1)).mean()


def loss_under_no_grad(x, x_hat, codes, l1):
    with torch.no_grad():
        return ((x_hat - x).pow(2).sum(-1) + l1 * codes.sum(-1)).mean()


def loss_as_python_float(x, x_hat, codes, l1):
    return ((x_hat - x).pow(2).sum(-1) + l1 * codes.sum(-1)).mean().item()


def loss_two_means(x, x_hat, codes, l1):
    return (x_hat - x).pow(2).sum(-1).mean() + l1 * codes.abs().sum(-1).mean()


def loss_with_mse_loss(x, x_hat, codes, l1):
    return F.mse_loss(x_hat.double(), x.double(), reduction="sum") / len(x) + l1 * codes.norm(p=1, dim=-1).mean()


# 5.3 ---------------------------------------------------------------------------------------
def _steps(sae, batches, steps, l1, optimizer, normalise=True, same_batch=False, fixed_l1=None):
    losses = []
    first = next(batches)
    for step in range(steps):
        x = first if same_batch else (first if step == 0 else next(batches))
        x_hat, codes = sae(x)
        loss = ref.sae_loss(x, x_hat, codes, l1 if fixed_l1 is None else fixed_l1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if normalise:
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        losses.append(loss.item())
    return losses


def train_without_normalising(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    return _steps(sae, batches, steps, l1, torch.optim.Adam(sae.parameters(), lr=lr), normalise=False)


def train_on_one_batch(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    return _steps(sae, batches, steps, l1, torch.optim.Adam(sae.parameters(), lr=lr), same_batch=True)


def train_ignoring_l1(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    return _steps(sae, batches, steps, l1, torch.optim.Adam(sae.parameters(), lr=lr), fixed_l1=0.3)


def train_returning_last_loss(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    return _steps(sae, batches, steps, l1, torch.optim.Adam(sae.parameters(), lr=lr))[-1]


def train_keeping_graphs(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    """Appends the loss tensors themselves: every step's graph stays alive."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = next(batches)
        x_hat, codes = sae(x)
        loss = ref.sae_loss(x, x_hat, codes, l1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        losses.append(loss)
    return losses


def train_without_progress_bar_argument(sae, batches, steps, l1, lr=3e-3):
    """The signature of an older statement: the chapter's call with progress_bar=... fails."""
    return _steps(sae, batches, steps, l1, torch.optim.Adam(sae.parameters(), lr=lr))


def _optimiser_trainer(make_optimiser):
    def train(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
        return _steps(sae, batches, steps, l1, make_optimiser(sae.parameters(), lr))
    return train


train_with_radam = _optimiser_trainer(lambda parameters, lr: torch.optim.RAdam(parameters, lr=lr))
train_with_adamax = _optimiser_trainer(lambda parameters, lr: torch.optim.Adamax(parameters, lr=lr))


def train_with_amsgrad_and_normalize(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    """Adam with amsgrad and a different beta2; rows renormalised with F.normalize on .data."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.99), amsgrad=True)
    losses = []
    for _ in range(steps):
        x = next(batches)
        codes = sae.encode(x)
        loss = ((sae.decode(codes) - x) ** 2).sum(-1).mean() + l1 * codes.sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.W_dec.data = F.normalize(sae.W_dec.data, dim=-1)
        losses.append(float(loss.detach()))
    return losses


def train_with_rmsprop_and_schedule(sae, batches, steps, l1, lr=3e-3, progress_bar=False):
    """RMSprop with a linear warm-up; the decoder rows renormalised in place, row by row."""
    optimizer = torch.optim.RMSprop(sae.parameters(), lr=lr / 3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    losses = []
    for batch, _ in zip(batches, range(steps)):
        x_hat, codes = sae(batch)
        loss = ref.sae_loss(batch, x_hat, codes, l1)
        sae.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for row in sae.W_dec:
                row.div_(row.norm())
        losses.append(loss.detach().item())
    return losses


# 5.4 ---------------------------------------------------------------------------------------
def _cosines(learned, true):
    return F.normalize(true, dim=-1) @ F.normalize(learned, dim=-1).T


def cosine_over_learned(learned, true):
    return _cosines(learned, true).max(dim=0).values.mean().item()


def cosine_unnormalised(learned, true):
    return (true @ learned.T).max(dim=1).values.mean().item()


def cosine_absolute(learned, true):
    return _cosines(learned, true).abs().max(dim=1).values.mean().item()


def cosine_loop(learned, true):
    best = []
    for feature in true:
        best.append(max(F.cosine_similarity(feature[None], latent[None]).item() for latent in learned))
    return sum(best) / len(best)


def cosine_float64_einsum(learned, true):
    learned, true = learned.double(), true.double()
    dots = torch.einsum("fd,sd->fs", true, learned)
    return (dots / torch.outer(true.norm(dim=-1), learned.norm(dim=-1))).amax(-1).mean()


# 5.5 ---------------------------------------------------------------------------------------
def topk_without_relu(pre_activation, k):
    top = pre_activation.topk(k, dim=-1)
    return torch.zeros_like(pre_activation).scatter(-1, top.indices, top.values)


def topk_by_magnitude(pre_activation, k):
    indices = pre_activation.abs().topk(k, dim=-1).indices
    return torch.zeros_like(pre_activation).scatter(-1, indices, F.relu(pre_activation.gather(-1, indices)))


def topk_over_batch(pre_activation, k):
    top = pre_activation.topk(min(k, pre_activation.shape[0]), dim=0)
    return torch.zeros_like(pre_activation).scatter(0, top.indices, F.relu(top.values))


def topk_without_gradient(pre_activation, k):
    with torch.no_grad():
        top = pre_activation.topk(k, dim=-1)
        return torch.zeros_like(pre_activation).scatter(-1, top.indices, F.relu(top.values))


def topk_mask_on_detached_values(pre_activation, k):
    kept = torch.zeros_like(pre_activation).scatter(-1, pre_activation.topk(k, dim=-1).indices, 1.0)
    return F.relu(pre_activation.detach()) * kept


def topk_relu_first(pre_activation, k):
    activated = F.relu(pre_activation)
    top = activated.topk(k, dim=-1)
    return torch.zeros_like(activated).scatter_(-1, top.indices, top.values)


def topk_threshold_mask(pre_activation, k):
    kth = pre_activation.sort(dim=-1, descending=True).values[:, k - 1:k]  # [batch, 1]
    return torch.where(pre_activation >= kth, pre_activation.clamp(min=0), torch.zeros(()))


# 5.6 ---------------------------------------------------------------------------------------
def _metrics(x, x_hat, codes, **changes):
    metrics = ref.sae_metrics(x, x_hat, codes)
    metrics.update(changes)
    return metrics


def metrics_uncentred_variance(x, x_hat, codes):
    return _metrics(x, x_hat, codes, explained_variance=1 - ((x - x_hat) ** 2).sum().item() / (x ** 2).sum().item())


def metrics_mse_per_dimension(x, x_hat, codes):
    return _metrics(x, x_hat, codes, mse=((x - x_hat) ** 2).mean().item())


def metrics_l2_ratio_inverted(x, x_hat, codes):
    return _metrics(x, x_hat, codes, l2_ratio=(x.norm(dim=-1) / x_hat.norm(dim=-1)).mean().item())


def metrics_alive_fraction(x, x_hat, codes):
    return _metrics(x, x_hat, codes, dead_fraction=((codes > 0).sum(0) > 0).float().mean().item())


def metrics_l0_nonnegative(x, x_hat, codes):
    return _metrics(x, x_hat, codes, l0=(codes >= 0).float().sum(-1).mean().item())


def metrics_as_tensors_float64(x, x_hat, codes):
    x, x_hat, codes = x.double(), x_hat.double(), codes.double()
    residual = torch.linalg.vector_norm(x - x_hat, dim=-1) ** 2
    return {
        "l0": torch.count_nonzero(codes > 0, dim=-1).double().mean(),
        "mse": residual.mean(),
        "explained_variance": 1 - residual.sum() / ((x - x.mean(0)) ** 2).sum(),
        "l2_ratio": (torch.linalg.vector_norm(x_hat, dim=-1) / torch.linalg.vector_norm(x, dim=-1)).mean(),
        "dead_fraction": 1 - (codes > 0).any(0).double().mean(),
    }


def metrics_with_variances(x, x_hat, codes):
    n = x.shape[0]
    unexplained = (x - x_hat).var(0, unbiased=False).sum() * n + ((x - x_hat).mean(0) ** 2).sum() * n
    return {
        "l0": float((codes > 0).sum()) / n,
        "mse": float(((x - x_hat) ** 2).sum()) / n,
        "explained_variance": float(1 - unexplained / (x.var(0, unbiased=False).sum() * n)),
        "l2_ratio": float(sum(a.norm() / b.norm() for a, b in zip(x_hat, x)) / n),
        "dead_fraction": sum(not bool((column > 0).any()) for column in codes.T) / codes.shape[1],
    }


# 5.7 ---------------------------------------------------------------------------------------
def _losses(model, sae, tokens, keep, hook_name, everywhere=False):
    mask = torch.ones_like(keep) if everywhere else keep
    splice = lambda a, hook: torch.where(mask[..., None], sae.decode(sae.encode(a)), a)
    zero = lambda a, hook: torch.where(mask[..., None], torch.zeros_like(a), a)
    with torch.no_grad():
        return [model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()
                for hooks in ([], [(hook_name, splice)], [(hook_name, zero)])]


def recovered_everywhere(model, sae, tokens, keep, hook_name):
    clean, spliced, zeroed = _losses(model, sae, tokens, keep, hook_name, everywhere=True)
    return (zeroed - spliced) / (zeroed - clean)


def recovered_swapped(model, sae, tokens, keep, hook_name):
    clean, spliced, zeroed = _losses(model, sae, tokens, keep, hook_name)
    return (spliced - clean) / (zeroed - clean)


def recovered_returns_loss(model, sae, tokens, keep, hook_name):
    return _losses(model, sae, tokens, keep, hook_name)[1]


def recovered_from_logits(model, sae, tokens, keep, hook_name):
    """Losses computed from the logits with cross_entropy, hooks added with the model.hooks context."""
    def mean_loss(hooks):
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(tokens)  # [batch, pos, d_vocab]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()

    def splice(activation, hook):
        new = activation.clone()
        new[keep] = sae.decode(sae.encode(activation[keep]))
        return new

    def zero(activation, hook):
        new = activation.clone()
        new[keep] = 0.0
        return new

    clean, spliced, zeroed = mean_loss([]), mean_loss([(hook_name, splice)]), mean_loss([(hook_name, zero)])
    return 1 - (spliced - clean) / (zeroed - clean)


def recovered_with_multiplied_mask(model, sae, tokens, keep, hook_name):
    weight = keep[..., None].to(torch.float32)  # [batch, pos, 1]
    hooks = {
        "sae": lambda a, hook: weight * sae.decode(sae.encode(a)) + (1 - weight) * a,
        "zero": lambda a, hook: (1 - weight) * a,
    }
    with torch.no_grad():
        clean = model.run_with_hooks(tokens, return_type="loss").item()
        spliced = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hooks["sae"])]).item()
        zeroed = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hooks["zero"])]).item()
    return torch.tensor((zeroed - spliced) / (zeroed - clean))


# 5.8 ---------------------------------------------------------------------------------------
def aurocs_ordinal_ranks(scores, labels):
    ranks = scores.T.argsort(-1).argsort(-1).double() + 1
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return ((ranks * labels).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def aurocs_other_class(scores, labels):
    return 1 - ref.column_aurocs(scores, labels)


def aurocs_folded(scores, labels):
    auc = ref.column_aurocs(scores, labels)
    return torch.maximum(auc, 1 - auc)


def aurocs_pairwise(scores, labels):
    """Every positive against every negative: 1 if higher, 1/2 if tied."""
    positives, negatives = scores[labels], scores[~labels]  # [P, k], [N, k]
    difference = positives[:, None, :] - negatives[None, :, :]  # [P, N, k]
    return ((difference > 0).double() + 0.5 * (difference == 0).double()).mean(dim=(0, 1))


def aurocs_column_loop(scores, labels):
    """One column at a time, with average ranks from unique values and counts."""
    results = []
    for column in scores.T:
        values, inverse, counts = torch.unique(column, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        average_rank = ends - (counts.double() - 1) / 2  # [unique]
        ranks = average_rank[inverse]
        n_pos = int(labels.sum())
        n_neg = len(labels) - n_pos
        results.append((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return torch.stack(results)


MISTAKES = {
    "5.1": [(SAEWithoutDecoderBiasInEncoder, "subtract b_dec"), (SAEWithoutReLU, "ReLU is missing"),
            (SAEDecodeWithoutBias, "add b_dec back"), (SAEDecodeWithEncoderTranspose, "decode with W_dec"),
            (SAEDetached, "not connected"), (SAEIgnoresK, "keep the two given lines")],
    "5.2": [(loss_without_l1, "L1 penalty is missing"), (loss_mean_over_dimensions, "sum the squared error"),
            (loss_summed_over_batch, "average over the batch"), (loss_with_norm, "not the norm ||x - x_hat||"),
            (loss_under_no_grad, "not connected to x_hat"), (loss_as_python_float, "without .item()")],
    "5.3": [(train_without_normalising, "unit length"), (train_on_one_batch, "next(batches)"),
            (train_ignoring_l1, "larger l1"), (train_returning_last_loss, "list of the"),
            (train_keeping_graphs, "computation graphs"), (train_without_progress_bar_argument, "keep the signature")],
    "5.4": [(cosine_over_learned, "for each TRUE feature"), (cosine_unnormalised, "normalise both"),
            (cosine_absolute, "absolute value")],
    "5.5": [(topk_without_relu, "apply a ReLU"), (topk_by_magnitude, "absolute value"),
            (topk_over_batch, "each ROW"), (topk_without_gradient, "no gradient flows"),
            (topk_mask_on_detached_values, "no gradient flows")],
    "5.6": [(metrics_uncentred_variance, "around the mean"), (metrics_mse_per_dimension, "sum the squared error"),
            (metrics_l2_ratio_inverted, "reconstruction over input"), (metrics_alive_fraction, "never fires"),
            (metrics_l0_nonnegative, "above 0")],
    "5.7": [(recovered_everywhere, "where keep is True"), (recovered_swapped, "LOST"),
            (recovered_returns_loss, "not the loss")],
    "5.8": [(aurocs_ordinal_ranks, "average of their ranks"), (aurocs_other_class, "HIGH score"),
            (aurocs_folded, "plain AUROC")],
}

ALTERNATIVES = {
    "5.1": [SAEEinsum, SAEFoldedBias],
    "5.2": [loss_two_means, loss_with_mse_loss],
    "5.3": [train_with_amsgrad_and_normalize, train_with_rmsprop_and_schedule, train_with_radam, train_with_adamax],
    "5.4": [cosine_loop, cosine_float64_einsum],
    "5.5": [topk_relu_first, topk_threshold_mask],
    "5.6": [metrics_as_tensors_float64, metrics_with_variances],
    "5.7": [recovered_from_logits, recovered_with_multiplied_mask],
    "5.8": [aurocs_pairwise, aurocs_column_loop],
}
