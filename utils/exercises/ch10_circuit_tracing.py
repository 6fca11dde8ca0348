"""Checks for Chapter 10 (circuit tracing). Expected values come from the exported reference.

The checks run the learner's code on small random transcoders (so every term matters and a run
takes milliseconds) and on the organism with its shipped transcoders, on two prompts of different
lengths. Exercise 10.3 is checked both with the run's own values (it must reproduce the real
logits) and with changed ones (where a recomputed LayerNorm scale or attention pattern shows).
"""

from __future__ import annotations

import functools

import torch

from utils.checks import Wrong, call, exercise, expect_close, expect_tensor, seeded_generator
from utils.models import load_model
from utils.organism import transcoders as organism_transcoders
from utils.organism.sae import kept_positions, world_rows
from utils.references import ch10_circuit_tracing as ref

CHAPTER = "10_circuit_tracing"


@functools.cache
def organism():
    """The bundled model, loaded once for all checks."""
    return load_model(verbose=False, device="cpu")


@functools.cache
def shipped():
    return organism_transcoders.load_transcoders()


def random_transcoders(seed: int, d_tc: int = 48, k: int = 4, scale: float = 1.0) -> list:
    """Four random transcoders for the organism with biases and larger outputs, so every term matters."""
    generator = seeded_generator(seed)
    result = []
    for layer in range(4):
        transcoder = organism_transcoders.Transcoder(256, 256, d_tc, k, seed=seed + layer)
        with torch.no_grad():
            transcoder.W_enc.copy_(torch.randn(256, d_tc, generator=generator) * 0.3)
            transcoder.b_enc.copy_(torch.randn(d_tc, generator=generator) * 0.5)
            transcoder.W_dec.copy_(torch.randn(d_tc, 256, generator=generator) * 0.2 * scale)
            transcoder.b_dec.copy_(torch.randn(256, generator=generator) * 0.1)
        result.append(transcoder.requires_grad_(False))
    return result


def _distinct(mistakes: dict, expected: torch.Tensor, atol: float) -> dict:
    return {hint: wrong for hint, wrong in mistakes.items()
            if wrong.shape != expected.shape or not torch.allclose(wrong.double(), expected.double(), atol=10 * atol)}


def _distinct_numbers(mistakes: dict, expected: float, atol: float) -> dict:
    return {hint: value for hint, value in mistakes.items() if abs(value - expected) > 10 * atol}


# ------------------------------------------------------------------------------------------
# 10.1
# ------------------------------------------------------------------------------------------
@functools.cache
def _organism_pairs():
    rows = world_rows(organism().tokenizer, 256, seed=21)
    return organism_transcoders.cache_mlp_pairs(organism(), rows, layers=[2])[2]


def _metric_cases():
    generator = seeded_generator(5)
    small = organism_transcoders.Transcoder(8, 8, 30, 3, seed=1)
    with torch.no_grad():
        small.W_enc.copy_(torch.randn(8, 30, generator=generator))
        small.b_enc.copy_(torch.randn(30, generator=generator) - 1.5)  # some features never win: dead ones
        small.b_dec.copy_(torch.randn(8, generator=generator) + 3.0)  # outputs with a mean far from zero
    x = torch.randn(40, 8, generator=generator) + 1.0  # [token, d_in]
    y = small(x).detach() + torch.randn(40, 8, generator=generator) * 0.2  # explained variance about 0.7
    x_org, y_org = _organism_pairs()
    return [(small, x, y), (shipped()[2], x_org, y_org)]


@exercise("10.1", "transcoder metrics", CHAPTER, ref.transcoder_metrics)
def check_transcoder_metrics(candidate) -> None:
    for transcoder, x, y in _metric_cases():
        got = call(candidate, transcoder, x.clone(), y.clone())
        if not isinstance(got, dict):
            raise Wrong(f"return a dict of floats, got {type(got).__name__}")
        expected = ref.transcoder_metrics(transcoder, x, y)
        missing = sorted(set(expected) - set(got))
        if missing:
            raise Wrong(f"the dict needs the keys {sorted(expected)}; missing {missing}")
        with torch.no_grad():
            features = transcoder.encode(x)
            prediction = transcoder.decode(features)
            pre = transcoder.pre_activation(x)
        error = (prediction - y).pow(2).sum()
        explained_mistakes = {
            "the variance that counts is the target's (the MLP output y), not the input's: a transcoder predicts y from x":
                1 - (error / (x - x.mean(0)).pow(2).sum()).item() if x.shape == y.shape else float("nan"),
            "the variance is of y around its mean over tokens: y - y.mean(0), not y itself":
                1 - (error / y.pow(2).sum()).item(),
            "the variance is the mean square around the mean (divide by n); torch.var divides by n - 1 by default":
                1 - ((prediction - y).pow(2).sum(-1).mean() / y.var(0).sum()).item(),
            "compare the prediction with y, the MLP's output, not with x (that is an SAE's target)":
                1 - ((prediction - x).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item() if x.shape == y.shape
                else float("nan"),
        }
        expect_close(got["explained_variance"], expected["explained_variance"], "explained_variance", atol=1e-4,
                     mistakes=_distinct_numbers(explained_mistakes, expected["explained_variance"], 1e-4))
        expect_close(got["l0"], expected["l0"], "l0", atol=1e-4, mistakes=_distinct_numbers({
            "count the features after TopK and ReLU (transcoder.encode), not the positive pre-activations":
                (pre > 0).float().sum(-1).mean().item(),
        }, expected["l0"], 1e-4))
        expect_close(got["dead_fraction"], expected["dead_fraction"], "dead_fraction", atol=1e-4,
                     mistakes=_distinct_numbers({
                         "dead_fraction is the share of features that never fire, not of those that do":
                             1 - expected["dead_fraction"],
                         "a feature is dead if it is zero on every token; the mean share of zeros per token is something else":
                             (features == 0).float().mean().item(),
                     }, expected["dead_fraction"], 1e-4))
        for key in expected:
            if not isinstance(got[key], float):
                raise Wrong(f"got[{key!r}] should be a float (use .item()), got {type(got[key]).__name__}")


# ------------------------------------------------------------------------------------------
# 10.2
# ------------------------------------------------------------------------------------------
@functools.cache
def _loss_tokens():
    tokens = world_rows(organism().tokenizer, 256, seed=22)[:, :48]  # [2, 48]
    keep = kept_positions(tokens, organism().tokenizer.eos_token_id)
    keep[1, 30:] = False  # a keep mask the check chooses: not only the first position
    return tokens, keep


def _precomputed_loss(model, transcoders, tokens, keep, layers) -> float:
    names = [organism_transcoders.input_hook(layer) for layer in layers]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    hooks = [(organism_transcoders.output_hook(layer),
              lambda out, hook, layer=layer: torch.where(keep[..., None], transcoders[layer](
                  cache[organism_transcoders.input_hook(layer)]), out))
             for layer in layers]
    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


def _added_loss(model, transcoders, tokens, keep, layers) -> float:
    inputs = {}
    hooks = []
    for layer in layers:
        hooks.append((organism_transcoders.input_hook(layer), lambda x, hook, layer=layer: inputs.__setitem__(layer, x)))
        hooks.append((organism_transcoders.output_hook(layer),
                      lambda out, hook, layer=layer: torch.where(keep[..., None], out + transcoders[layer](inputs[layer]),
                                                                 out)))
    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()


@exercise("10.2", "the replacement model's loss", CHAPTER, ref.replacement_loss)
def check_replacement_loss(candidate) -> None:
    model, (tokens, keep) = organism(), _loss_tokens()
    for transcoders, layers in ((random_transcoders(3, scale=0.3), [0, 1, 2, 3]), (shipped(), [1, 3]),
                                (random_transcoders(4, scale=0.3), [2])):
        got = call(candidate, model, transcoders, tokens.clone(), keep.clone(), list(layers))
        with torch.no_grad():
            expected = ref.replacement_loss(model, transcoders, tokens, keep, list(layers))
            mistakes = {
                "each transcoder must read the replacement's own stream (store the MLP input inside the same "
                "run_with_hooks call), not MLP inputs cached from the clean run":
                    _precomputed_loss(model, transcoders, tokens, keep, layers),
                "replace the MLP output (return the transcoder's prediction), don't add the prediction to it":
                    _added_loss(model, transcoders, tokens, keep, layers),
                "every layer in `layers` must be replaced: a hook function that reads `layer` from the loop sees "
                "only the last value (bind it as a default argument)":
                    ref.replacement_loss(model, [transcoders[layers[-1]]] * 4, tokens, keep, list(layers)),
                "replace only the MLPs of the layers in `layers`":
                    ref.replacement_loss(model, transcoders, tokens, keep, [0, 1, 2, 3]),
                "replace only where keep is True (torch.where(keep[..., None], prediction, out))":
                    ref.replacement_loss(model, transcoders, tokens, torch.ones_like(keep), list(layers)),
            }
        expect_close(got, expected, f"the loss with the MLPs of layers {layers} replaced", atol=1e-4,
                     mistakes=_distinct_numbers(mistakes, expected, 1e-4))
        if not isinstance(got, float):
            raise Wrong(f"return a float (use .item()), got {type(got).__name__}")


# ------------------------------------------------------------------------------------------
# 10.3
# ------------------------------------------------------------------------------------------
@functools.cache
def _runs():
    model = organism()
    texts = ["The capital of France is", "When Kate and Rose went to the park, Rose gave a book to"]
    runs = []
    for text, transcoders in zip(texts, (shipped(), random_transcoders(6))):
        runs.append((ref.freeze_run(model, transcoders, model.to_tokens(text)[0]), transcoders))
    return runs


def _variant_forward(model, transcoders, run, embeddings, features, errors, *, recompute_scale=False,
                     recompute_attention=False, with_errors=True, mlp_input_before_attention=False):
    """The local replacement with one of the realistic mistakes switched on."""
    resid = embeddings
    mlp_inputs = []
    n_pos = len(embeddings)
    for layer in range(model.cfg.n_layers):
        def norm(x, scale):
            centred = ref.centre(x)
            return centred / ((centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() if recompute_scale else scale)

        x = norm(resid, run.ln1_scales[layer])
        values = torch.einsum("pd,hde->phe", x, model.W_V[layer]) + model.b_V[layer]
        pattern = run.patterns[layer]
        if recompute_attention:
            queries = torch.einsum("pd,hde->phe", x, model.W_Q[layer]) + model.b_Q[layer]
            keys = torch.einsum("pd,hde->phe", x, model.W_K[layer]) + model.b_K[layer]
            scores = torch.einsum("qhe,khe->hqk", queries, keys) / model.cfg.d_head ** 0.5
            mask = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
            pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        mixed = torch.einsum("hqk,khe->qhe", pattern, values)
        before = resid
        resid = resid + torch.einsum("qhe,hed->qd", mixed, model.W_O[layer]) + model.b_O[layer]
        mlp_inputs.append(norm(before if mlp_input_before_attention else resid, run.ln2_scales[layer]))
        resid = resid + transcoders[layer].decode(features[layer]) + (errors[layer] if with_errors else 0)
    logits = norm(resid, run.final_scale) @ model.W_U + model.b_U
    return logits, torch.stack(mlp_inputs)


def _perturbed(run, seed: int):
    generator = seeded_generator(seed)
    embeddings = run.embeddings * 1.5 + torch.randn(run.embeddings.shape, generator=generator)
    features = run.features * 2.0 + (torch.rand(run.features.shape, generator=generator) < 0.02) * 3.0
    errors = run.errors * -1.0 + torch.randn(run.errors.shape, generator=generator) * 0.5
    return embeddings, features, errors


@exercise("10.3", "the local replacement model", CHAPTER, ref.local_replacement)
def check_local_replacement(candidate) -> None:
    model = organism()
    for number, (run, transcoders) in enumerate(_runs()):
        for inputs, what in (((run.embeddings, run.features, run.errors), "the run's own inputs"),
                             (_perturbed(run, number), "changed embeddings, features and errors")):
            got = call(candidate, model, transcoders, run, *(tensor.clone() for tensor in inputs))
            if not (isinstance(got, tuple) and len(got) == 2):
                raise Wrong("return a tuple (logits, mlp_inputs)")
            with torch.no_grad():
                expected = ref.local_replacement(model, transcoders, run, *inputs)
                variants = {
                    "freeze the LayerNorm scales: divide by run's scales, don't recompute them from the stream":
                        dict(recompute_scale=True),
                    "freeze the attention patterns: use run.patterns[layer], don't recompute them from queries and keys":
                        dict(recompute_attention=True),
                    "add the error terms: each MLP is transcoders[layer].decode(features[layer]) + errors[layer]":
                        dict(with_errors=False),
                    "an MLP's input is read after the attention layer has written to the stream":
                        dict(mlp_input_before_attention=True),
                }
                computed = {hint: _variant_forward(model, transcoders, run, *inputs, **flags)
                            for hint, flags in variants.items()}
            expect_tensor(got[0], expected[0], f"your logits ({what}, {len(run.tokens)} tokens)", atol=2e-3,
                          mistakes=_distinct({hint: value[0] for hint, value in computed.items()}, expected[0], 2e-3))
            expect_tensor(got[1], expected[1], f"your mlp_inputs ({what})", atol=1e-3,
                          mistakes=_distinct({hint: value[1] for hint, value in computed.items()}, expected[1], 1e-3))
    run, transcoders = _runs()[0]
    with torch.enable_grad():
        features = run.features.clone().requires_grad_(True)
        logits, _ = call(candidate, model, transcoders, run, run.embeddings.clone(), features, run.errors.clone())
    if not logits.requires_grad:
        raise Wrong("the logits must stay differentiable in the features (Section 3 differentiates them): "
                    "no torch.no_grad(), .detach() or .item() inside local_replacement")


# ------------------------------------------------------------------------------------------
# 10.4
# ------------------------------------------------------------------------------------------
def _targets(model):
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    return [
        ("the logit difference at the last position", lambda logits, mlp_inputs: logits[-1, paris] - logits[-1, rome]),
        ("a layer-2 feature's pre-activation at position 3",
         lambda logits, mlp_inputs: mlp_inputs[2, 3] @ shipped()[2].W_enc[:, 7] + shipped()[2].b_enc[7]),
    ]


@exercise("10.4", "direct effects by one backward pass", CHAPTER, ref.direct_effects)
def check_direct_effects(candidate) -> None:
    model = organism()
    for run, transcoders in _runs():
        for what, target in _targets(model):
            got = call(candidate, model, transcoders, run, target)
            if not (isinstance(got, tuple) and len(got) == 3):
                raise Wrong("return a tuple of three tensors: (embedding effects, feature effects, error effects)")
            expected = ref.direct_effects(model, transcoders, run, target)
            sources = [run.embeddings, run.features, run.errors]
            with torch.enable_grad():
                leaves = [tensor.clone().requires_grad_(True) for tensor in sources]
                grads = torch.autograd.grad(target(*ref.local_replacement(model, transcoders, run, *leaves)), leaves)
            names = ("embedding effects", "feature effects", "error effects")
            for index, name in enumerate(names):
                gradient_only = grads[index].sum(-1) if index != 1 else grads[index]
                mistakes = {
                    "an effect is gradient times value: multiply the gradient by the source's value": gradient_only,
                    "keep the sign: a source can push the target down": expected[index].abs(),
                }
                if isinstance(got[index], torch.Tensor) and got[index].requires_grad:
                    raise Wrong(f"return detached tensors: your {name} still carry their autograd graph")
                expect_tensor(got[index], expected[index], f"your {name} on {what} ({len(run.tokens)} tokens)",
                              atol=2e-3, mistakes=_distinct(mistakes, expected[index], 2e-3))


# ------------------------------------------------------------------------------------------
# 10.5
# ------------------------------------------------------------------------------------------
def _random_dag(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = seeded_generator(seed)
    adjacency = torch.randn(n, n, generator=generator) * (torch.rand(n, n, generator=generator) < 0.6)
    adjacency = adjacency.tril(-1).to(dtype)  # row = target, column = source; sources come first
    adjacency[:2] = 0  # two input nodes with no inputs of their own
    return adjacency


@exercise("10.5", "influence", CHAPTER, ref.node_influence)
def check_node_influence(candidate) -> None:
    for n, seed, target in ((7, 1, 6), (11, 2, 8), (9, 3, 8)):
        adjacency = _random_dag(n, seed)
        got = call(candidate, adjacency.clone(), target)
        expected = ref.node_influence(adjacency, target)
        weights = adjacency.abs() / adjacency.abs().sum(1, keepdim=True).clamp_min(1e-12)
        eye = torch.eye(n)
        signed = adjacency / adjacency.sum(1, keepdim=True).where(adjacency.sum(1, keepdim=True) != 0, torch.ones(1))
        raw = adjacency.abs()
        mistakes = {
            "normalise the absolute values: A = |E| / (sum of |E| over each row)": (torch.linalg.inv(eye - signed) - eye)[target],
            "normalise each target's row so its incoming weights sum to 1": (torch.linalg.inv(eye - raw) - eye)[target],
            "influence counts paths of every length, not only the direct edges": weights[target],
            "subtract the identity: (I - A)^-1 - I (a node has no influence on itself)": torch.linalg.inv(eye - weights)[target],
            "normalise rows (a target's inputs), not columns": (torch.linalg.inv(eye - adjacency.abs() / adjacency.abs().sum(
                0, keepdim=True).clamp_min(1e-12)) - eye)[target],
        }
        expect_tensor(got, expected, f"your influences on node {target} of a {n}-node graph", atol=1e-4,
                      mistakes=_distinct(mistakes, expected, 1e-4))


# ------------------------------------------------------------------------------------------
# 10.6
# ------------------------------------------------------------------------------------------
@functools.cache
def _held_out_graphs():
    """Graphs of two held-out facts prompts (phrasings never seen in training) the chapter never shows."""
    model = organism()
    facts = ref.world.prompt_set("facts", "test", seed=3)
    graphs = []
    for index in range(2):
        graph, influence, _ = ref.prompt_graph(model, shipped(), facts, index)
        graphs.append((graph, influence, ref.logit_diff_target(model, facts.correct[index], facts.wrong[index])))
    return graphs


def _local_faithfulness(graph, kept, target) -> float:
    return ref.pruned_faithfulness(organism(), shipped(), graph, kept, target)[0]


@exercise("10.6", "pruning", CHAPTER, ref.kept_nodes)
def check_kept_nodes(candidate) -> None:
    generator = seeded_generator(11)
    cases = [(torch.rand(12, generator=generator), 0.8), (torch.rand(30, generator=generator) ** 3, 0.5),
             (torch.rand(9, generator=generator), 0.95)]
    for influence, share in cases:
        got = call(candidate, influence.clone(), share)
        expected = ref.kept_nodes(influence, share)
        order = influence.argsort(descending=True)
        n = len(expected)
        mistakes = {
            "keep the smallest set that reaches the share: the node that crosses it belongs to the set":
                order[:n - 1].sort().values,
            "keep the most influential nodes (sort in descending order)":
                influence.argsort()[:n].sort().values if n < len(influence) else expected,
            "return the indices sorted in ascending order (node order), not in order of influence": order[:n],
            "the share is of the total influence, not of the number of nodes":
                order[:max(1, int(torch.tensor(share * len(influence)).ceil()))].sort().values,
        }
        if isinstance(got, torch.Tensor) and got.dtype.is_floating_point:
            raise Wrong("return node indices as a long tensor, not influences")
        expect_tensor(got, expected, f"your kept nodes ({len(influence)} nodes, share {share})", atol=0,
                      mistakes=_distinct(mistakes, expected, 0))
    for graph, influence, target in _held_out_graphs():
        got = call(candidate, influence.clone(), 0.8)
        expected = ref.kept_nodes(influence, 0.8)
        if not (isinstance(got, torch.Tensor) and torch.equal(got.cpu().long(), expected)):
            yours = _local_faithfulness(graph, got.long().cpu(), target) if isinstance(got, torch.Tensor) else float("nan")
            raise Wrong(f"on a held-out prompt your {len(got) if hasattr(got, '__len__') else '?'} kept nodes keep "
                        f"{yours:.3f} of the logit difference in the local replacement; the smallest set holding 80% "
                        f"of the influence ({len(expected)} nodes) keeps {_local_faithfulness(graph, expected, target):.3f}")


# ------------------------------------------------------------------------------------------
# 10.7
# ------------------------------------------------------------------------------------------
@functools.cache
def _held_out_labels():
    """Feature labels at the last position of the held-out facts prompts, by relation and by country."""
    model = organism()
    facts = ref.world.prompt_set("facts", "test", seed=3)
    activations, last = ref.family_feature_activations(model, shipped(), facts.prompts)
    at_last = activations[torch.arange(len(last)), last]  # [batch, layer, d_tc]
    return facts, {label: ref.label_features(at_last, facts.labels[label]) for label in ("relation", "country")}


def _node_sets(graph, influence) -> list[tuple[str, torch.Tensor]]:
    """Node sets to score: the pruned graph, a smaller one, and a random draw of the pruned graph's size."""
    kept = ref.kept_nodes(influence, 0.8)
    generator = seeded_generator(len(graph.nodes))
    drawn = torch.randperm(len(graph.nodes) - 1, generator=generator)[:len(kept)].sort().values
    return [("the nodes holding 80% of the influence", kept), ("the nodes holding 50%", ref.kept_nodes(influence, 0.5)),
            ("a random draw of as many nodes", drawn)]


def _mistaken_scores(graph, kept, target, labels, value) -> dict[str, dict[str, float]]:
    """The scores with one realistic mistake each: {hint: {score name: value}}."""
    model, transcoders, run = organism(), shipped(), graph.run
    last = len(graph.str_tokens) - 1
    mask = torch.zeros_like(run.features, dtype=torch.bool)
    error_mask = torch.zeros(run.errors.shape[:2], dtype=torch.bool)
    kept_last, kept_all, kept_nodes = [], [], kept.tolist()
    for index in kept_nodes:
        kind, layer, position, feature = graph.nodes[index]
        if kind == "feature":
            mask[layer, position, feature] = True
            kept_all.append((layer, feature))
            if position == last:
                kept_last.append((layer, feature))
        if kind == "error":
            error_mask[layer, position] = True
    full = target(run.logits, None).item()

    def local(features, errors):
        return target(*ref.local_replacement(model, transcoders, run, run.embeddings, features, errors)).item()

    def count(pairs):
        return sum(labels.labelled(layer, feature, value) for layer, feature in pairs)

    with torch.no_grad():
        pruned = local(torch.where(mask, run.features, 0.0), run.errors)
        right = {"faithfulness": pruned / full, "labelled share": count(kept_last) / max(len(kept_last), 1),
                 "chance share": count(run.features[:, last].nonzero().tolist())
                 / max(len(run.features[:, last].nonzero()), 1)}
        all_last = [(layer, feature) for layer in range(run.features.shape[0]) for feature in range(run.features.shape[2])]
        return {
            "turn off the features outside the kept set, and keep those inside it":
                {**right, "faithfulness": local(torch.where(mask, 0.0, run.features), run.errors) / full},
            "faithfulness is a ratio: divide by the target of the real run, target(graph.run.logits, None)":
                {**right, "faithfulness": pruned},
            "only features are turned off: embeddings and error terms stay as they are, kept or not":
                {**right, "faithfulness": local(torch.where(mask, run.features, 0.0),
                                                torch.where(error_mask[..., None], run.errors, 0.0)) / full},
            "count only the kept features at the last position (the answer is read there)":
                {**right, "labelled share": count(kept_all) / max(len(kept_all), 1)},
            "the share is of the kept last-position features, not of all kept nodes":
                {**right, "labelled share": count(kept_last) / max(len(kept_nodes), 1)},
            "chance is the share among the features active at the last position (run.features[:, last] > 0), "
            "not among every feature of the transcoders":
                {**right, "chance share": count(all_last) / len(all_last)},
        }


@exercise("10.7", "scoring a node set, against chance", CHAPTER, ref.route_scores)
def check_route_scores(candidate) -> None:
    facts, labels = _held_out_labels()
    for number, (graph, influence, target) in enumerate(_held_out_graphs()):
        label = ("relation", "country")[number % 2]
        value = facts.labels[label][number]
        for what, kept in _node_sets(graph, influence):
            got = call(candidate, organism(), shipped(), graph, kept.clone(), target, labels[label], value)
            if not isinstance(got, dict):
                raise Wrong(f"return a dict with 'faithfulness', 'labelled share' and 'chance share', got {type(got).__name__}")
            missing = {"faithfulness", "labelled share", "chance share"} - set(got)
            if missing:
                raise Wrong(f"your dict lacks {', '.join(sorted(missing))}")
            expected = ref.route_scores(organism(), shipped(), graph, kept, target, labels[label], value)
            mistakes = _mistaken_scores(graph, kept, target, labels[label], value)
            for name in ("faithfulness", "labelled share", "chance share"):
                expect_close(got[name], expected[name],
                             f"your {name!r} for {what} of a held-out prompt's graph (labels by {label})", atol=1e-3,
                             mistakes=_distinct_numbers({hint: scores[name] for hint, scores in mistakes.items()},
                                                        expected[name], 1e-3))


# ------------------------------------------------------------------------------------------
# 10.8
# ------------------------------------------------------------------------------------------
def _steered_nodes(graph) -> list[tuple[str, int]]:
    """The last-position feature and the earlier-position feature with the largest direct edges on the target."""
    last = len(graph.str_tokens) - 1
    edges = graph.adjacency[-1].abs()
    features = [i for i, node in enumerate(graph.nodes) if node[0] == "feature"]
    at_last = max((i for i in features if graph.nodes[i][2] == last), key=lambda i: edges[i].item())
    earlier = max((i for i in features if 0 < graph.nodes[i][2] < last), key=lambda i: edges[i].item())
    return [("a last-position feature", at_last), ("an earlier-position feature", earlier)]


def _mistaken_steering(graph, node, target, scale) -> dict[str, tuple[float, float]]:
    model, transcoders, run = organism(), shipped(), graph.run
    _, layer, position, feature = graph.nodes[node]
    activation = run.features[layer, position, feature]
    decoder = transcoders[layer].W_dec[feature]
    edge = graph.adjacency[-1, node].item()
    clean = target(run.logits, None).item()

    def measured(change, positions=None, overwrite=False):
        def hook(out, hook):
            out = out.clone()
            if overwrite:
                out[0, position] = change
            elif positions is None:
                out[0, position] += change
            else:
                out[0] += change
            return out

        with torch.no_grad():
            return target(model.run_with_hooks(run.tokens[None], fwd_hooks=[(ref.output_hook(layer), hook)])[0], None).item()

    right = (scale - 1) * edge
    delta = (scale - 1) * activation * decoder
    with torch.no_grad():
        features = run.features.clone()
        features[layer, position, feature] *= scale
        local = target(*ref.local_replacement(model, transcoders, run, run.embeddings, features, run.errors)).item()
    steered = measured(delta)
    return {
        "the graph predicts (scale - 1) times the direct edge: the change, not the new value": (scale * edge, steered - clean),
        "mind the sign: setting the feature to scale times its value changes the target by (scale - 1) * edge":
            ((1 - scale) * edge, steered - clean),
        "the feature writes its activation times its decoder row: multiply W_dec[feature] by the activation":
            (right, measured((scale - 1) * decoder) - clean),
        "change the MLP's output only at the feature's own position (out[0, position])":
            (right, measured(delta, positions="all") - clean),
        "add the change to the MLP's output; don't overwrite the output at that position":
            (right, measured(delta, overwrite=True) - clean),
        "return the change: subtract the clean run's target, target(graph.run.logits, None)": (right, steered),
        "measure in the real model (model.run_with_hooks): the local replacement agrees with the graph by construction":
            (right, local - clean),
    }


@exercise("10.8", "steer a feature, predict, measure", CHAPTER, ref.steer_feature)
def check_steer_feature(candidate) -> None:
    graph, _, target = _held_out_graphs()[0]
    for what, node in _steered_nodes(graph):
        for scale in (0.0, 2.0):
            got = call(candidate, organism(), shipped(), graph, node, target, scale)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise Wrong("return a tuple of two floats: (predicted, measured)")
            expected = ref.steer_feature(organism(), shipped(), graph, node, target, scale)
            mistakes = _mistaken_steering(graph, node, target, scale)
            for slot, name in enumerate(("predicted", "measured")):
                expect_close(got[slot], expected[slot], f"your {name} change for {what} at scale {scale}", atol=1e-3,
                             mistakes=_distinct_numbers({hint: pair[slot] for hint, pair in mistakes.items()},
                                                        expected[slot], 1e-3))
