"""Chapter 04 reproduces the qualitative results of Elhage et al. (2022), "Toy Models of Superposition".

Each test trains the chapter's own reference code, with the chapter's settings, and checks a
published, measurable claim: a sparse ReLU model stores more features than it has dimensions, a
linear one never does; the phase diagram of two features in one dimension; antipodal pairs and
pentagons with their fractional dimensionality; anticorrelated features placed antipodally and
correlated ones orthogonally; neurons of a privileged basis that become polysemantic with
sparsity; and sparse features recoverable from their superposed code. The thresholds come from
those claims (e.g. "about m features when dense", "D = 2/5 in a pentagon"), not from one run.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from tests.claims import claim, claim_seed
from utils.references import ch04_superposition as ref

if "OMP_NUM_THREADS" not in os.environ:  # the robustness run (make claims) sets it to 1 or 2
    torch.set_num_threads(1)  # tiny models: one thread is fastest, as in the chapter

# Every training seed below is the chapter's plus the claim seed: the claims are the paper's
# qualitative results, which must hold for any initialisation and data order, not one lucky draw.
SEED = claim_seed()


@pytest.fixture(scope="module")
def sweep_models():
    return {"relu": ref.train_sparsity_sweep(seed=SEED, progress_bar=False),
            "linear": ref.train_sparsity_sweep(**ref.LINEAR_SWEEP, seed=SEED, progress_bar=False)}


@pytest.fixture(scope="module")
def sweeps(sweep_models):
    return {name: model.W.detach() for name, model in sweep_models.items()}


def _sparsity_index(sparsity: float) -> int:
    return ref.SWEEP_SPARSITIES.index(sparsity)


def test_dense_relu_model_represents_about_as_many_features_as_dimensions(sweeps):
    dense = int(ref.count_represented(sweeps["relu"])[_sparsity_index(0.0)])
    assert abs(dense - ref.SWEEP_HIDDEN) <= 1, dense
    # ... and they are the most important ones, each with a direction of its own
    norms = ref.feature_norms(sweeps["relu"])[_sparsity_index(0.0)]
    claim("ch04: dense ReLU model, smallest norm of the m-1 most important features",
          norms[:ref.SWEEP_HIDDEN - 1].min(), above=0.9)
    interference = ref.interference(sweeps["relu"])[_sparsity_index(0.0)]
    claim("ch04: dense ReLU model, largest interference of a represented feature",
          interference[norms > 0.5].max(), below=0.1)


def test_sparse_relu_model_represents_more_features_than_dimensions(sweeps):
    counts = ref.count_represented(sweeps["relu"]).tolist()
    claim("ch04: sparse ReLU model (S >= 0.99), features represented per dimension (fewest)",
          min(counts[_sparsity_index(s)] for s in (0.99, 0.997, 0.999)) / ref.SWEEP_HIDDEN, above=1.9)
    assert all(later >= earlier - 1 for earlier, later in zip(counts, counts[1:])), f"not rising: {counts}"


def test_sparse_features_are_superposed(sweeps):
    W = sweeps["relu"][_sparsity_index(0.999)]
    represented = ref.feature_norms(W[None])[0] > 0.5
    claim("ch04: S=0.999, mean interference of represented features", ref.interference(W[None])[0][represented].mean(),
          above=0.5)


def test_linear_model_never_superposes(sweeps):
    # A linear model's best W^T W is a projection onto m dimensions: its squared norms sum to m
    # (m / ||W||_F^2 = 1 dimension per feature) at every sparsity, however it rotates within them.
    per_feature = ref.dimensions_per_feature(sweeps["linear"])
    claim("ch04: linear model, farthest dimensions per feature from 1", (per_feature - 1).abs().max(), below=0.05)
    counts = ref.count_represented(sweeps["linear"]).tolist()
    assert all(count <= ref.SWEEP_HIDDEN + 1 for count in counts), counts
    # while the sparse ReLU model packs several features into each dimension
    claim("ch04: S=0.999 ReLU model, dimensions per feature",
          ref.dimensions_per_feature(sweeps["relu"])[_sparsity_index(0.999)], below=0.5)


@pytest.fixture(scope="module")
def phases():
    W = ref.train_phase_diagram(seed=SEED, progress_bar=False)  # [importance, probability, 1, 2]
    return ref.extra_feature_phase(W.flatten(0, 1)).reshape(ref.PHASE_GRID, ref.PHASE_GRID)


NOT_REPRESENTED, DEDICATED, SUPERPOSED = 0, 1, 2


def test_phase_diagram_dense_features_never_superpose(phases):
    dense = phases[:, 0]  # p = 1, importance from low to high
    below, above = ref.PHASE_IMPORTANCES < 0.9, ref.PHASE_IMPORTANCES > 1.1
    assert (dense[below] == NOT_REPRESENTED).all(), dense
    assert (dense[above] == DEDICATED).all(), dense


def test_phase_diagram_sparse_features_superpose(phases):
    sparsest = phases[:, -1]
    equal_importance = int(torch.argmin((ref.PHASE_IMPORTANCES - 1).abs()))
    assert sparsest[equal_importance] == SUPERPOSED, sparsest
    claim("ch04: phase diagram, share superposed at the sparsest column", (sparsest == SUPERPOSED).float().mean(),
          above=2 / 3 - 0.01)
    superposed_share = (phases == SUPERPOSED).float().mean(0)  # per probability, dense to sparse
    half = ref.PHASE_GRID // 2
    claim("ch04: phase diagram, superposed share sparse half minus dense half",
          superposed_share[half + 1:].mean() - superposed_share[:half].mean(), above=0.3)


@pytest.fixture(scope="module")
def pentagon():
    return ref.train_pentagon(seed=SEED, progress_bar=False)


def test_five_sparse_features_in_two_dimensions_form_a_pentagon(pentagon):
    W = pentagon[ref.PENTAGON_PROBABILITIES.index(0.05)]  # [2, 5]
    dimensionality = ref.feature_dimensionality(W[None])[0]
    claim("ch04: pentagon, farthest feature dimensionality from 2/5", (dimensionality - 2 / 5).abs().max(), below=0.05)
    angles = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    claim("ch04: pentagon, farthest angle gap from 2 pi / 5", (gaps - 2 * math.pi / 5).abs().max(), below=0.1)


def test_moderately_sparse_features_form_antipodal_pairs(pentagon):
    W = pentagon[ref.PENTAGON_PROBABILITIES.index(0.3)]
    dimensionality = ref.feature_dimensionality(W[None])[0].sort().values
    claim("ch04: p=0.3, the dropped feature's dimensionality", dimensionality[0], below=0.02)  # 0.0 on seeds 0-7
    claim("ch04: p=0.3, farthest pair dimensionality from 1/2", (dimensionality[1:] - 0.5).abs().max(), below=0.05)


@pytest.fixture(scope="module")
def geometry():
    return ref.train_geometry_sweep(seed=SEED, progress_bar=False).W.detach()


def test_dimensions_per_feature_fall_from_one_with_sparsity(geometry):
    per_feature = ref.dimensions_per_feature(geometry)
    claim("ch04: geometry sweep, dimensions per feature when dense", per_feature[0], above=0.9)
    claim("ch04: geometry sweep, dimensions per feature when sparsest", per_feature[-1], below=0.35)


def test_feature_dimensionalities_cluster_at_one_half_and_two_fifths(geometry):
    dimensionality = ref.feature_dimensionality(geometry)  # [instances, feats]
    near_half = ((dimensionality - 1 / 2).abs() < 0.04).sum(-1)
    near_two_fifths = ((dimensionality - 2 / 5).abs() < 0.02).sum(-1)
    claim("ch04: geometry sweep, features near 1/2 in one instance (all 20 on claim seeds 0-4)",  # antipodal pairs
          near_half.max(), above=18.5)
    # One step sparser than the pairs, features at about 2/5 (a pentagon's share) beside the pairs
    # that remain: 10, 10, 5, 5 and 12 on claim seeds 0-4 (seeds 0 and 4 also gather some near 0.43).
    next_step = near_two_fifths[int(near_half.argmax()) + 1]
    claim("ch04: geometry sweep, features within 0.02 of 2/5 one step sparser than the pairs", next_step, above=4.5)


@pytest.fixture(scope="module")
def correlation_runs():
    return ref.train_correlation_models(seed=SEED, progress_bar=False)


def _best(run):
    W, losses = run
    return W[int(losses.argmin())][None]


def test_anticorrelated_features_are_antipodal(correlation_runs):
    cosines = ref.pair_cosines(_best(correlation_runs["anticorrelated"]))
    claim("ch04: anticorrelated pairs, largest cosine", cosines.max(), below=-0.95)


def test_correlated_features_are_orthogonal(correlation_runs):
    cosines = ref.pair_cosines(_best(correlation_runs["correlated"]))
    claim("ch04: correlated pairs, largest |cosine|", cosines.abs().max(), below=0.2)


def test_correlated_pairs_share_antipodally_one_feature_each(correlation_runs):
    """The text: in the best correlated model, one feature of each pair points opposite to one
    feature of the other pair; and the pairs sit at right angles in every low-loss seed."""
    W, losses = correlation_runs["correlated"]
    directions = torch.nn.functional.normalize(W[int(losses.argmin())], dim=0)  # [hidden, feats]
    across = directions[:, :2].T @ directions[:, 2:]  # [pair 0-1 feature, pair 2-3 feature]
    claim("ch04: correlated model, most opposite features across the pairs", across.min(), below=-0.95)
    low_loss = losses < 2 * losses.min()
    assert low_loss.sum() >= 2, losses
    claim("ch04: correlated pairs in every low-loss seed, largest |cosine|", ref.pair_cosines(W[low_loss]).abs().max(),
          below=0.2)


def test_only_the_relu_hidden_layer_is_privileged():
    """Rotating the hidden space leaves the linear-hidden model's function unchanged and changes the
    ReLU-hidden one's: the meaning of "privileged" the text gives."""
    generator = torch.Generator().manual_seed(SEED)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))  # [hidden, hidden], orthogonal
    x = ref.generate_features(256, torch.full((1, 20), 0.2), generator)  # [batch, 1, feats]
    changes = {}
    for name, kind in (("linear hidden", ref.ToyModel), ("relu hidden", ref.NeuronModel)):
        model = kind(1, n_feats=20, n_hidden=5, seed=1 + SEED)
        with torch.no_grad():
            before = model(x)
            model.W.copy_(rotation @ model.W[0])
            changes[name] = (model(x) - before).abs().max().item()
    claim("ch04: a rotation changes the linear-hidden model by", changes["linear hidden"], below=1e-5)
    claim("ch04: a rotation changes the ReLU-hidden model by", changes["relu hidden"], above=0.05)


def test_privileged_basis_neurons_become_polysemantic_with_sparsity():
    per_neuron = ref.features_per_neuron(ref.train_neuron_sweep(seed=SEED, progress_bar=False).W.detach())
    firing = [row[row > 0].mean().item() for row in per_neuron]
    # 6000 steps: 1.00-1.01 on seeds 0-5; at 3000 steps seed 3 averaged 1.36 (the prose's "about 1.4")
    claim("ch04: dense neurons, features per firing neuron (monosemantic)", firing[ref.NEURON_SPARSITIES.index(0.0)],
          below=1.1)
    claim("ch04: sparse neurons (S >= 0.9), features per firing neuron (fewest)",
          min(firing[ref.NEURON_SPARSITIES.index(s)] for s in (0.9, 0.95, 0.98, 0.99)), above=2)


def test_sparse_code_recovers_single_features_that_linear_readouts_cannot(sweep_models):
    errors = ref.recovery_errors(sweep_models["relu"], ref.SWEEP_SPARSITIES.index(ref.RECOVERY_SPARSITY), seed=SEED)
    single = errors["active features"] == 1
    sparse, model_readout, pinv = (errors[name][single].mean() for name in
                                   ("sparse code", "model read-out", "pseudo-inverse"))
    claim("ch04: one active feature, sparse-code error / pseudo-inverse error", sparse / pinv, below=0.1)
    claim("ch04: one active feature, sparse-code error / model read-out error", sparse / model_readout, below=1.0)


def _sorted_dimensionality(W: torch.Tensor) -> torch.Tensor:
    return ref.feature_dimensionality(W[None])[0].sort().values


def test_the_sparsity_slider_shows_antipodal_pairs_then_a_pentagon():
    """The chapter's figure (seed 0): antipodal pairs at p = 0.3, a pentagon from 0.2 on. Only the
    sparse end holds for every seed: with 1,000 steps and two restarts, p = 0.3 gave pairs in 3 of
    seeds 0-4 (a pentagon in seed 1, a lopsided mix in seed 3) and seed 1 still had pairs at 0.2,
    as the text under the slider says; p <= 0.1 gave a pentagon in all five."""
    pairs, pentagon = torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5]), torch.full((5,), 0.4)
    W = ref.train_five_in_two(ref.SLIDER_PROBABILITIES)  # [probability, 2, 5]: the chapter's figure, seed 0
    for k, p in enumerate(ref.SLIDER_PROBABILITIES):
        expected = pairs if p >= 0.3 else pentagon
        assert torch.allclose(_sorted_dimensionality(W[k]), expected, atol=0.06), (p, _sorted_dimensionality(W[k]))
    W_other = W if SEED == 0 else ref.train_five_in_two(ref.SLIDER_PROBABILITIES, seed=SEED)
    claim("ch04: the slider's networks at p <= 0.1 (any seed), farthest dimensionality from a pentagon",
          max((_sorted_dimensionality(W_other[k]) - pentagon).abs().max()
              for k, p in enumerate(ref.SLIDER_PROBABILITIES) if p <= 0.1), below=0.06)
    figure = ref.sparsity_slider_figure(ref.SLIDER_PROBABILITIES, W)
    steps = figure.layout.sliders[0].steps
    assert len(figure.data) == 5 * len(ref.SLIDER_PROBABILITIES) and len(steps) == len(ref.SLIDER_PROBABILITIES)
    for k, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert sum(visible) == 5 and all(visible[5 * k: 5 * k + 5])


def test_moving_the_live_slider_retrains_and_redraws():
    explorer = ref.SparsityExplorer(probability=0.3)
    assert torch.allclose(_sorted_dimensionality(explorer.W), torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5]), atol=0.06)
    explorer.slider.value = 0.05  # what dragging the slider does: the observer retrains
    assert torch.allclose(_sorted_dimensionality(explorer.W), torch.full((5,), 0.4), atol=0.06), explorer.dimensionality
    assert "p = 0.050" in explorer.figure.layout.title.text
    assert explorer.widget().children == (explorer.slider, explorer.output)
