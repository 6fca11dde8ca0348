"""Realistic mistakes for Chapter 04, each with the hint its check must give, and correct answers
written differently from the reference, which the checks must accept."""

import torch
import torch.nn.functional as F

from utils.references import ch04_superposition as ref


# 4.1 ---------------------------------------------------------------------------------------
def features_on_with_sparsity(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    values = torch.rand(shape, generator=generator)
    return values * (torch.rand(shape, generator=generator) < 1 - feature_probability)


def features_one_coin_per_example(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    coin = torch.rand(batch_size, 1, 1, generator=generator)
    return torch.rand(shape, generator=generator) * (coin < feature_probability)


def features_gaussian_values(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    return torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator) < feature_probability)


def features_binary(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    return (torch.rand(shape, generator=generator) < feature_probability).float()


def features_without_generator(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    return torch.rand(shape) * (torch.rand(shape) < feature_probability)


# 4.2 ---------------------------------------------------------------------------------------
class ToyModelWithoutReLU(ref.ToyModel):
    def forward(self, features):
        hidden = torch.einsum("bif,ihf->bih", features, self.W)
        return torch.einsum("bih,ihf->bif", hidden, self.W) + self.b_final


class ToyModelWithoutBias(ref.ToyModel):
    def forward(self, features):
        out = torch.einsum("bih,ihf->bif", torch.einsum("bif,ihf->bih", features, self.W), self.W)
        return F.relu(out) if self.nonlinear else out


class ToyModelWithHiddenReLU(ref.ToyModel):
    def forward(self, features):
        hidden = F.relu(torch.einsum("bif,ihf->bih", features, self.W))
        out = torch.einsum("bih,ihf->bif", hidden, self.W) + self.b_final
        return F.relu(out) if self.nonlinear else out


class ToyModelAlwaysReLU(ref.ToyModel):
    def forward(self, features):
        hidden = torch.einsum("bif,ihf->bih", features, self.W)
        return F.relu(torch.einsum("bih,ihf->bif", hidden, self.W) + self.b_final)


class ToyModelDetached(ref.ToyModel):
    def forward(self, features):
        with torch.no_grad():
            return super().forward(features)


# 4.3 ---------------------------------------------------------------------------------------
def loss_without_importance(output, features, importance):
    return ((features - output) ** 2).sum(-1).mean(0)


def loss_mean_over_features(output, features, importance):
    return (importance * (features - output) ** 2).mean(-1).mean(0)


def loss_summed_over_batch(output, features, importance):
    return (importance * (features - output) ** 2).sum(-1).sum(0)


def loss_one_number(output, features, importance):
    return (importance * (features - output) ** 2).sum(-1).mean()


# 4.4 ---------------------------------------------------------------------------------------
def interference_with_self(W):
    W_hat = W / W.norm(dim=1, keepdim=True).clamp(min=1e-8)
    return (torch.einsum("ihf,ihg->ifg", W_hat, W) ** 2).sum(-1)


def interference_unnormalised(W):
    overlaps = torch.einsum("ihf,ihg->ifg", W, W) ** 2
    return overlaps.sum(-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)


def interference_not_squared(W):
    W_hat = W / W.norm(dim=1, keepdim=True).clamp(min=1e-8)
    overlaps = torch.einsum("ihf,ihg->ifg", W_hat, W)
    return overlaps.sum(-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)


def interference_nan_for_zero_features(W):
    W_hat = W / W.norm(dim=1, keepdim=True)
    overlaps = torch.einsum("ihf,ihg->ifg", W_hat, W) ** 2
    return overlaps.sum(-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)


# 4.5 ---------------------------------------------------------------------------------------
def phase_from_signed_weight(W, threshold=0.5):
    represented = W[:, :, -1].sum(1) > threshold
    superposed = ref.interference(W)[:, -1] > threshold ** 2
    return represented.long() + (represented & superposed).long()


def phase_codes_swapped(W, threshold=0.5):
    represented = ref.feature_norms(W)[:, -1] > threshold
    superposed = ref.interference(W)[:, -1] > threshold ** 2
    return torch.where(represented, torch.where(superposed, 1, 2), 0)


def phase_of_first_feature(W, threshold=0.5):
    represented = ref.feature_norms(W)[:, 0] > threshold
    superposed = ref.interference(W)[:, 0] > threshold ** 2
    return represented.long() + (represented & superposed).long()


# 4.6 ---------------------------------------------------------------------------------------
def dimensionality_without_self(W):
    return ref.feature_norms(W) ** 2 / ref.interference(W).clamp(min=1e-12)


def dimensionality_with_norm(W):
    norms = ref.feature_norms(W)
    return norms / (ref.interference(W) + norms ** 2).clamp(min=1e-12)


def dimensionality_nan_for_zero_features(W):
    norms = ref.feature_norms(W)
    return norms ** 2 / (ref.interference(W) + norms ** 2)


# 4.7 ---------------------------------------------------------------------------------------
def anticorrelated_independent(batch_size, pair_probability, generator=None):
    return ref.independent_pairs(batch_size, pair_probability, generator)


def anticorrelated_half_probability(batch_size, pair_probability, generator=None):
    return ref.anticorrelated_features(batch_size, pair_probability / 2, generator)


def anticorrelated_is_correlated(batch_size, pair_probability, generator=None):
    return ref.correlated_features(batch_size, pair_probability, generator)


# 4.8 ---------------------------------------------------------------------------------------
def neurons_count_negative_weights(W):
    squared = W ** 2
    return squared.sum(-1) ** 2 / (squared ** 2).sum(-1).clamp(min=1e-12)


def neurons_absolute_weights(W):
    share = F.relu(W)
    return share.sum(-1) ** 2 / (share ** 2).sum(-1).clamp(min=1e-12)


def neurons_per_feature(W):
    squared = F.relu(W) ** 2
    return squared.sum(1) ** 2 / (squared ** 2).sum(1).clamp(min=1e-12)


def neurons_nan_when_dead(W):
    squared = F.relu(W) ** 2
    return squared.sum(-1) ** 2 / (squared ** 2).sum(-1)


# 4.9 ---------------------------------------------------------------------------------------
def _ista(h, W, l1, steps, eta, clip=True):
    c = torch.zeros(h.shape[0], W.shape[0], W.shape[2])
    for _ in range(steps):
        residual = torch.einsum("bif,ihf->bih", c, W) - h
        c = c - eta[:, None] * (torch.einsum("bih,ihf->bif", residual, W) + l1)
        c = F.relu(c) if clip else c
    return c


def code_without_l1(h, W, l1=0.01, steps=300):
    return _ista(h, W, 0.0, steps, 1 / torch.linalg.matrix_norm(W, ord=2) ** 2)


def code_without_relu(h, W, l1=0.01, steps=300):
    return _ista(h, W, l1, steps, 1 / torch.linalg.matrix_norm(W, ord=2) ** 2, clip=False)


def code_step_not_squared(h, W, l1=0.01, steps=300):
    return _ista(h, W, l1, steps, 1 / torch.linalg.matrix_norm(W, ord=2))


def code_uphill(h, W, l1=0.01, steps=300):
    return _ista(h, W, l1, steps, -1 / torch.linalg.matrix_norm(W, ord=2) ** 2)


# More mistakes ------------------------------------------------------------------------------------
def features_reseeding_the_generator(batch_size, feature_probability, generator=None):
    """Same seed every call: the 'random' batch never changes."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, *feature_probability.shape)
    return torch.rand(shape, generator=generator) * (torch.rand(shape, generator=generator) < feature_probability)


def anticorrelated_reseeding(batch_size, pair_probability, generator=None):
    if generator is not None:
        generator.manual_seed(1234)
    return ref.anticorrelated_features(batch_size, pair_probability, generator)


class ToyModelFirstInstanceForAll(ref.ToyModel):
    """Every instance uses the first instance's weights."""

    def forward(self, features):
        hidden = features @ self.W[0].T  # [batch, instances, hidden]
        out = hidden @ self.W[0] + self.b_final
        return F.relu(out) if self.nonlinear else out


def loss_memoised(output, features, importance, _memo={}):
    """Right on its first call only."""
    return _memo.setdefault("first", (importance * (features - output) ** 2).sum(-1).mean(0))


# Correct alternatives ---------------------------------------------------------------------------
def features_with_bernoulli(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    is_on = torch.bernoulli(feature_probability.expand(shape), generator=generator)  # [batch, instances, feats]
    return torch.rand(shape, generator=generator) * is_on


def features_with_where_in_float64(batch_size, feature_probability, generator=None):
    shape = (batch_size, *feature_probability.shape)
    coins = torch.rand(shape, generator=generator, dtype=torch.float64)
    values = torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.where(coins < feature_probability.double(), values, torch.zeros((), dtype=torch.float64))


class ToyModelWithMatmul(ref.ToyModel):
    def forward(self, features):
        hidden = (self.W @ features.permute(1, 2, 0))  # [instances, hidden, batch]
        out = (self.W.transpose(1, 2) @ hidden).permute(2, 0, 1) + self.b_final  # [batch, instances, feats]
        return out.clamp(min=0) if self.nonlinear else out


class ToyModelLoopingOverInstances(ref.ToyModel):
    def forward(self, features):
        outputs = []
        for k in range(self.W.shape[0]):
            hidden = features[:, k] @ self.W[k].T  # [batch, hidden]
            outputs.append(hidden @ self.W[k] + self.b_final[k])  # [batch, feats]
        out = torch.stack(outputs, dim=1)
        return F.relu(out) if self.nonlinear else out


def loss_with_einsum_in_float64(output, features, importance):
    error = (features.double() - output.double()) ** 2
    return torch.einsum("bif,if->i", error, importance.double()) / features.shape[0]


def loss_looping_over_the_batch(output, features, importance):
    total = torch.zeros(features.shape[1])
    for x, x_hat in zip(features, output):
        total = total + (importance * (x - x_hat).pow(2)).sum(-1)
    return total / len(features)


def interference_with_a_gram_matrix(W):
    gram = W.transpose(1, 2) @ W  # [instances, feats, feats]: W_i . W_j
    norms_squared = torch.diagonal(gram, dim1=1, dim2=2)  # [instances, feats]
    overlaps = gram ** 2 / norms_squared.clamp(min=1e-16)[..., None]
    return overlaps.sum(-1) - torch.where(norms_squared > 0, norms_squared, torch.zeros(()))


def interference_in_float64_with_loops(W):
    W = W.double()
    result = torch.zeros(W.shape[0], W.shape[2], dtype=torch.float64)
    for k in range(W.shape[0]):
        for i in range(W.shape[2]):
            norm = W[k, :, i].norm()
            if norm == 0:
                continue
            unit = W[k, :, i] / norm
            result[k, i] = sum((unit @ W[k, :, j]) ** 2 for j in range(W.shape[2]) if j != i)
    return result


def phase_with_where(W, threshold=0.5):
    norm = W[:, :, -1].norm(dim=1)  # [instances]
    unit = W[:, :, -1] / norm.clamp(min=1e-8)[:, None]
    overlaps = torch.einsum("ih,ihf->if", unit, W[:, :, :-1]) ** 2  # [instances, feats - 1]
    represented, superposed = norm > threshold, overlaps.sum(-1) > threshold ** 2
    return torch.where(represented, torch.where(superposed, 2, 1), 0).long()


def phase_one_instance_at_a_time(W, threshold=0.5):
    phases = []
    for k in range(W.shape[0]):
        norms = W[k].norm(dim=0)
        if norms[-1] <= threshold:
            phases.append(0)
            continue
        unit = W[k][:, -1] / norms[-1]
        interference = sum(float(unit @ W[k][:, j]) ** 2 for j in range(W.shape[2] - 1))
        phases.append(2 if interference > threshold ** 2 else 1)
    return torch.tensor(phases)


def dimensionality_with_a_gram_matrix(W):
    gram = W.transpose(1, 2) @ W  # [instances, feats, feats]
    norms_squared = torch.diagonal(gram, dim1=1, dim2=2)
    denominator = (gram ** 2).sum(-1) / norms_squared.clamp(min=1e-16)  # sum_j (W_i_hat . W_j)^2, j = i included
    return norms_squared / denominator.clamp(min=1e-12)


def dimensionality_in_float64(W):
    W = W.double()
    norms = W.norm(dim=1)  # [instances, feats]
    unit = W / norms.clamp(min=1e-8)[:, None, :]
    denominator = (torch.einsum("ihf,ihg->ifg", unit, W) ** 2).sum(-1)
    return torch.nan_to_num(norms ** 2 / denominator, nan=0.0)


def anticorrelated_from_one_uniform(batch_size, pair_probability, generator=None):
    """One uniform u per pair: u < p turns on the first feature, p <= u < 2p the second."""
    shape = (batch_size, *pair_probability.shape)
    u = torch.rand(shape, generator=generator)
    first, second = u < pair_probability, (u >= pair_probability) & (u < 2 * pair_probability)
    values = torch.rand(*shape, 2, generator=generator)
    return (values * torch.stack([first, second], dim=-1)).reshape(batch_size, shape[1], -1)


def anticorrelated_with_a_choice_of_feature(batch_size, pair_probability, generator=None):
    shape = (batch_size, *pair_probability.shape)
    active = torch.rand(shape, generator=generator) < 2 * pair_probability
    which = torch.randint(0, 2, shape, generator=generator)  # 0: first feature, 1: second
    is_on = F.one_hot(which, 2).bool() & active[..., None]  # [batch, instances, pairs, 2]
    return (torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * is_on).flatten(-2)


def neurons_with_clamp(W):
    weights = W.clamp(min=0) ** 2
    total, concentration = weights.sum(-1), weights.pow(2).sum(-1)
    return torch.where(concentration > 0, total ** 2 / concentration.clamp(min=1e-30), torch.zeros(()))


def neurons_in_float64_with_a_norm(W):
    weights = F.relu(W.double()) ** 2
    return weights.sum(-1) ** 2 / torch.linalg.vector_norm(weights, dim=-1).pow(2).clamp(min=1e-12)


def code_one_instance_at_a_time(h, W, l1=0.01, steps=300):
    codes = []
    for k in range(W.shape[0]):
        eta = 1 / torch.linalg.svdvals(W[k])[0] ** 2
        c = torch.zeros(h.shape[0], W.shape[2])
        for _ in range(steps):
            c = torch.relu(c - eta * ((c @ W[k].T - h[:, k]) @ W[k] + l1))
        codes.append(c)
    return torch.stack(codes, dim=1)


def code_in_float64_with_matmul(h, W, l1=0.01, steps=300):
    h, W = h.double(), W.double()
    eta = 1 / torch.linalg.matrix_norm(W, ord=2) ** 2  # [instances]
    c = torch.zeros(W.shape[0], W.shape[2], h.shape[0], dtype=torch.float64)  # [instances, feats, batch]
    target = h.permute(1, 2, 0)  # [instances, hidden, batch]
    for _ in range(steps):
        gradient = W.transpose(1, 2) @ (W @ c - target)
        c = (c - eta[:, None, None] * (gradient + l1)).clamp(min=0)
    return c.permute(2, 0, 1)


ALTERNATIVES = {
    "4.1": [features_with_bernoulli, features_with_where_in_float64],
    "4.2": [ToyModelWithMatmul, ToyModelLoopingOverInstances],
    "4.3": [loss_with_einsum_in_float64, loss_looping_over_the_batch],
    "4.4": [interference_with_a_gram_matrix, interference_in_float64_with_loops],
    "4.5": [phase_with_where, phase_one_instance_at_a_time],
    "4.6": [dimensionality_with_a_gram_matrix, dimensionality_in_float64],
    "4.7": [anticorrelated_from_one_uniform, anticorrelated_with_a_choice_of_feature],
    "4.8": [neurons_with_clamp, neurons_in_float64_with_a_norm],
    "4.9": [code_one_instance_at_a_time, code_in_float64_with_matmul],
}


def loss_under_no_grad(output, features, importance):
    """Right values, but computed where no gradient is recorded: the training loop would not learn."""
    with torch.no_grad():
        return (importance * (features - output) ** 2).sum(-1).mean(0)


MISTAKES = {
    "4.1": [(features_on_with_sparsity, "probability 1 - p"), (features_one_coin_per_example, "one coin per feature"),
            (features_gaussian_values, "not torch.randn"), (features_binary, "not always 1"),
            (features_without_generator, "draw from the generator you are given"),
            (features_reseeding_the_generator, "draw from the generator you are given")],
    "4.2": [(ToyModelWithoutReLU, "the ReLU is missing"), (ToyModelWithoutBias, "bias is missing"),
            (ToyModelWithHiddenReLU, "no ReLU on the hidden layer"), (ToyModelAlwaysReLU, "skip the ReLU"),
            (ToyModelDetached, "not connected to W"), (ToyModelFirstInstanceForAll, "and the reference differ by up to")],
    "4.3": [(loss_without_importance, "importance is missing"), (loss_mean_over_features, "sum over features"),
            (loss_summed_over_batch, "average over the batch"), (loss_one_number, "one loss per instance"),
            (loss_memoised, "batch 7"), (loss_under_no_grad, "carries no gradient")],
    "4.4": [(interference_with_self, "leave out the j = i term"), (interference_unnormalised, "normalise W_i"),
            (interference_not_squared, "square each dot product"), (interference_nan_for_zero_features, "NaN")],
    "4.5": [(phase_from_signed_weight, "compare its norm"), (phase_codes_swapped, "swapped"),
            (phase_of_first_feature, "the last feature")],
    "4.6": [(dimensionality_without_self, "includes j = i"), (dimensionality_with_norm, "squared norm"),
            (dimensionality_nan_for_zero_features, "NaN")],
    "4.7": [(anticorrelated_independent, "never be on together"),
            (anticorrelated_is_correlated, "never be on together"),
            (anticorrelated_half_probability, "probability 2p"), (anticorrelated_reseeding, "draw from the generator you are given")],
    "4.8": [(neurons_count_negative_weights, "only positive weights"), (neurons_absolute_weights, "squared weight"),
            (neurons_per_feature, "features per neuron"), (neurons_nan_when_dead, "NaN")],
    "4.9": [(code_without_l1, "L1 penalty is missing"), (code_without_relu, "ReLU is missing"),
            (code_step_not_squared, "square the matrix norm"), (code_uphill, "step downhill")],
}
