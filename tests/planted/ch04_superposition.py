"""Realistic mistakes for Chapter 04, each with the hint its check must give."""

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


MISTAKES = {
    "4.1": [(features_on_with_sparsity, "probability 1 - p"), (features_one_coin_per_example, "one coin per feature"),
            (features_gaussian_values, "not torch.randn"), (features_binary, "not always 1"),
            (features_without_generator, "generator=generator")],
    "4.2": [(ToyModelWithoutReLU, "the ReLU is missing"), (ToyModelWithoutBias, "bias is missing"),
            (ToyModelWithHiddenReLU, "no ReLU on the hidden layer"), (ToyModelAlwaysReLU, "skip the ReLU"),
            (ToyModelDetached, "not connected to W")],
    "4.3": [(loss_without_importance, "importance is missing"), (loss_mean_over_features, "sum over features"),
            (loss_summed_over_batch, "average over the batch"), (loss_one_number, "one loss per instance")],
    "4.4": [(interference_with_self, "leave out the j = i term"), (interference_unnormalised, "normalise W_i"),
            (interference_not_squared, "square each dot product"), (interference_nan_for_zero_features, "NaN")],
    "4.5": [(phase_from_signed_weight, "compare its norm"), (phase_codes_swapped, "swapped"),
            (phase_of_first_feature, "the last feature")],
    "4.6": [(dimensionality_without_self, "includes j = i"), (dimensionality_with_norm, "squared norm"),
            (dimensionality_nan_for_zero_features, "NaN")],
    "4.7": [(anticorrelated_independent, "never be on together"),
            (anticorrelated_is_correlated, "never be on together"),
            (anticorrelated_half_probability, "probability 2p")],
    "4.8": [(neurons_count_negative_weights, "only positive weights"), (neurons_absolute_weights, "squared weight"),
            (neurons_per_feature, "features per neuron"), (neurons_nan_when_dead, "NaN")],
    "4.9": [(code_without_l1, "L1 penalty is missing"), (code_without_relu, "ReLU is missing"),
            (code_step_not_squared, "square the matrix norm"), (code_uphill, "step downhill")],
}
