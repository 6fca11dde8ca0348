"""Realistic mistakes for Chapter 09, each with the hint its check must give, and correct answers
written differently from the reference, which must pass."""

import nnsight
import torch

from utils.nnsight_models import read_activation, run_trace, trace_options, write_activation
from utils.references import ch09_scaling_up as ref
from utils.references.ch02_probing import residual_hook_names


def _rows(last):
    return torch.arange(len(last), device=last.device)


# 9.1 -----------------------------------------------------------------------------------------
def lens_at_minus_one(lm, tokens, last, remote=False):
    names = residual_hook_names(lm.config.num_hidden_layers)
    with lm.trace(tokens, **trace_options(lm, remote)):
        resid = torch.stack([read_activation(lm, name)[:, -1] for name in names])
        lens = ref.unembed(lm)(ref.final_norm(lm)(resid)).log_softmax(-1).detach().cpu().save()
    return lens


def lens_without_final_norm(lm, tokens, last, remote=False):
    names = residual_hook_names(lm.config.num_hidden_layers)
    with lm.trace(tokens, **trace_options(lm, remote)):
        resid = torch.stack([read_activation(lm, name)[_rows(last), last] for name in names])
        lens = ref.unembed(lm)(resid).log_softmax(-1).detach().cpu().save()
    return lens


def lens_logits(lm, tokens, last, remote=False):
    names = residual_hook_names(lm.config.num_hidden_layers)
    with lm.trace(tokens, **trace_options(lm, remote)):
        resid = torch.stack([read_activation(lm, name)[_rows(last), last] for name in names])
        lens = ref.unembed(lm)(ref.final_norm(lm)(resid)).detach().cpu().save()
    return lens


def lens_ignoring_remote(lm, tokens, last, remote=False):
    """Runs here whatever `remote` says: right numbers, but it would never reach NDIF."""
    return ref.nnsight_logit_lens(lm, tokens, last, remote=False)


def lens_saved_list(lm, tokens, last, remote=False):
    """A list built inside the trace, one point at a time, stacked after it."""
    names = residual_hook_names(lm.config.num_hidden_layers)
    rows = _rows(last)
    with lm.trace(tokens, **trace_options(lm, remote)):
        points = nnsight.save([])
        for name in names:
            at_last = read_activation(lm, name)[rows, last]  # [batch, d_model]
            points.append(ref.unembed(lm)(ref.final_norm(lm)(at_last)).log_softmax(-1).detach().cpu())
    return torch.stack(list(points))


def lens_through_run_trace_float64(lm, tokens, last, remote=False):
    """Through run_trace, with the log-softmax taken in float64 after the trace."""
    names = residual_hook_names(lm.config.num_hidden_layers)

    def body(model):
        resid = torch.stack([read_activation(model, name)[_rows(last), last] for name in names])
        return ref.unembed(model)(ref.final_norm(model)(resid)).detach().cpu().save()

    return run_trace(lm, tokens, body, remote=remote).double().log_softmax(-1)


# 9.2 -----------------------------------------------------------------------------------------
def predicts_a_run_here(n_layers):
    return {"outside": n_layers, "inside": n_layers, "hidden": False, "kept": True}


def predicts_an_empty_inside_list(n_layers):
    return {"outside": 0, "inside": 0, "hidden": False, "kept": True}


def predicts_unsaved_values_come_back(n_layers):
    return {"outside": 0, "inside": n_layers, "hidden": True, "kept": True}


def predicts_plain_python(n_layers):
    return {"outside": n_layers, "inside": n_layers, "hidden": True, "kept": True}


def predicts_by_keywords(n_layers):
    return dict(kept=True, hidden=False, inside=int(n_layers), outside=len([]))


def predicts_from_rules(n_layers):
    saved = {"outside": False, "inside": True}  # which lists are saved values
    lengths = {name: n_layers if is_saved else 0 for name, is_saved in saved.items()}
    return {**lengths, "hidden": "hidden" in [], "kept": True}


# 9.3 -----------------------------------------------------------------------------------------
def resid_saved_view(lm, tokens, position, layer, remote=False):
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = read_activation(lm, f"blocks.{layer}.hook_resid_post")[:, position].detach().cpu().save()
    return value


def resid_sliced_after_the_trace(lm, tokens, position, layer, remote=False):
    with lm.trace(tokens, **trace_options(lm, remote)):
        whole = read_activation(lm, f"blocks.{layer}.hook_resid_post").save()
    return whole[:, position]


def resid_before_the_block(lm, tokens, position, layer, remote=False):
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = read_activation(lm, f"blocks.{layer}.hook_resid_pre")[:, position].detach().cpu().clone().save()
    return value


def resid_centred(lm, tokens, position, layer, remote=False):
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = read_activation(lm, f"blocks.{layer}.hook_resid_post")[:, position]
        value = (value - value.mean(-1, keepdim=True)).detach().cpu().save()
    return value


def resid_through_the_module(lm, tokens, position, layer, remote=False):
    """The block's output read from the module itself, copied with torch.clone and index_select."""
    with lm.trace(tokens, **trace_options(lm, remote)):
        output = lm.transformer.h[layer].output  # [batch, pos, d_model]
        value = output.index_select(1, torch.tensor([position], device=output.device))[:, 0].save()
    return value


def resid_contiguous_float64(lm, tokens, position, layer, remote=False):
    """A copy made by a dtype change, through run_trace."""
    name = f"blocks.{layer}.hook_resid_post"
    return run_trace(lm, tokens, lambda model: read_activation(model, name)[:, position].double().save(),
                     remote=remote)


# 9.4 -----------------------------------------------------------------------------------------
def helper_not_registered(lm, tokens, helpers, remote=False):
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = helpers.summary(lm).detach().cpu().clone().save()
    return value


def helper_registered_too_late(lm, tokens, helpers, remote=False):
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = helpers.summary(lm).detach().cpu().clone().save()
    nnsight.register(helpers)
    return value


def helper_registered_by_name(lm, tokens, helpers, remote=False):
    """Registered by the module's name, run through run_trace."""
    nnsight.register(helpers.__name__)
    return run_trace(lm, tokens, lambda model: helpers.summary(model).detach().cpu().clone().save(), remote=remote)


def helper_registered_with_cloudpickle(lm, tokens, helpers, remote=False):
    """cloudpickle's own registration, which nnsight.register wraps; float64 copy."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(helpers)
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = helpers.summary(lm).double().save()
    return value


# 9.5 -----------------------------------------------------------------------------------------
def _layers(lm, layers):
    return list(range(lm.config.num_hidden_layers)) if layers is None else list(layers)


def _invokes_sweep(lm, clean, corrupt, answer, wrong, layers, remote, barrier_on=True, one_position=True):
    """One trace per layer (each its own request), two invokes: the clean prompt, then corrupt copies."""
    n_pos = clean.shape[-1]
    rows = torch.arange(n_pos)
    out = []
    for layer in _layers(lm, layers):
        name = f"blocks.{layer}.hook_resid_pre"
        with lm.trace(**trace_options(lm, remote)) as tracer:
            barrier = tracer.barrier(2) if barrier_on else (lambda: None)
            with tracer.invoke(clean):
                clean_resid = read_activation(lm, name)[0]
                barrier()
            with tracer.invoke(corrupt.expand(n_pos, -1)):
                barrier()
                from_clean = clean_resid[rows]  # uses the clean value before touching the model
                patched = read_activation(lm, name).clone()
                if one_position:
                    patched[rows, rows] = from_clean
                else:
                    patched[:] = clean_resid
                write_activation(lm, name, patched)
                final = lm.lm_head.output[:, -1]
                row = (final[:, answer] - final[:, wrong]).detach().cpu().save()
        out.append(row)
    return torch.stack(out)


def sweep_without_barrier(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return _invokes_sweep(lm, clean, corrupt, answer, wrong, layers, remote, barrier_on=False)


def sweep_invokes_with_barriers(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return _invokes_sweep(lm, clean, corrupt, answer, wrong, layers, remote)


def sweep_corrupt_into_clean(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return ref.patching_sweep(lm, corrupt, clean, answer, wrong, layers=_layers(lm, layers), remote=remote)


def _one_trace_sweep(lm, clean, corrupt, answer, wrong, layers, remote, hook="hook_resid_pre", sign=1.0):
    """Every (layer, position) case in one batch: row 0 is the clean prompt, the others corrupt copies."""
    layers, n_pos = _layers(lm, layers), clean.shape[-1]
    cases = [(layer, pos) for layer in layers for pos in range(n_pos)]
    batch = torch.cat([clean, corrupt.expand(len(cases), -1)])  # [1 + case, pos]
    with lm.trace(batch, **trace_options(lm, remote)):
        for layer in sorted(set(layers)):
            name = f"blocks.{layer}.{hook}"
            value = read_activation(lm, name).clone()
            for row, (at_layer, pos) in enumerate(cases, start=1):
                if at_layer == layer:
                    value[row, pos] = value[0, pos]
            write_activation(lm, name, value)
        final = lm.lm_head.output[1:, -1]  # [case, d_vocab]
        result = (sign * (final[:, answer] - final[:, wrong])).view(len(layers), n_pos).detach().cpu().save()
    return result


def sweep_after_the_layer(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    """Patches resid_post; resid_mid is read-only, so this writes the block output."""
    return _one_trace_sweep(lm, clean, corrupt, answer, wrong, layers, remote, hook="hook_resid_post")


def sweep_metric_reversed(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return _one_trace_sweep(lm, clean, corrupt, answer, wrong, layers, remote, sign=-1.0)


def sweep_every_layer_regardless(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return ref.patching_sweep(lm, clean, corrupt, answer, wrong, remote=remote)


def sweep_whole_layer_at_once(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return _invokes_sweep(lm, clean, corrupt, answer, wrong, layers, remote, one_position=False)


def sweep_in_one_batch(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    return _one_trace_sweep(lm, clean, corrupt, answer, wrong, layers, remote)


def sweep_one_trace_per_patch_in_a_session(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    """The plainest loop: a session, a clean trace, then one trace per (layer, position)."""
    layers, n_pos = _layers(lm, layers), clean.shape[-1]
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(clean):
            clean_resid = {layer: read_activation(lm, f"blocks.{layer}.hook_resid_pre") for layer in sorted(set(layers))}
        grid = nnsight.save([])
        for layer in layers:
            for pos in range(n_pos):
                name = f"blocks.{layer}.hook_resid_pre"
                with lm.trace(corrupt):
                    value = read_activation(lm, name).clone()
                    value[:, pos] = clean_resid[layer][:, pos]
                    write_activation(lm, name, value)
                    logits = lm.lm_head.output[0, -1]
                    grid.append((logits[answer] - logits[wrong]).detach().cpu())
    return torch.stack(list(grid)).view(len(layers), n_pos).double()


# 9.6 -----------------------------------------------------------------------------------------
def _mean_at(lm, tokens, last, name, minus_one=False):
    value = read_activation(lm, name)
    return (value[:, -1] if minus_one else value[_rows(last), last]).mean(0)


def vector_at_minus_one(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    name = f"blocks.{layer}.hook_resid_pre"
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(positive):
            plus = _mean_at(lm, positive, positive_last, name, minus_one=True)
        with lm.trace(negative):
            minus = _mean_at(lm, negative, negative_last, name, minus_one=True)
        vector = (plus - minus).detach().cpu().save()
    return vector


def vector_reversed(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    return ref.steering_vector(lm, negative, negative_last, positive, positive_last, layer, remote=remote)


def vector_after_the_block(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    name = f"blocks.{layer}.hook_resid_post"
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(positive):
            plus = _mean_at(lm, positive, positive_last, name)
        with lm.trace(negative):
            minus = _mean_at(lm, negative, negative_last, name)
        vector = (plus - minus).detach().cpu().save()
    return vector


def vector_centred(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    vector = ref.steering_vector(lm, positive, positive_last, negative, negative_last, layer, remote=remote)
    return vector - vector.mean()


def vector_two_traces(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    """Two separate traces (two requests), each sending back its own mean."""
    name = f"blocks.{layer}.hook_resid_pre"
    means = []
    for tokens, last in ((positive, positive_last), (negative, negative_last)):
        with lm.trace(tokens, **trace_options(lm, remote)):
            mean = read_activation(lm, name)[_rows(last), last].mean(0).detach().cpu().save()
        means.append(mean)
    return means[0] - means[1]


def vector_sums_in_float64(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    """Sums brought back, divided after the session, in float64."""
    name = f"blocks.{layer}.hook_resid_pre"
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(positive):
            plus = read_activation(lm, name)[_rows(positive_last), positive_last].double().sum(0).cpu().save()
        with lm.trace(negative):
            minus = read_activation(lm, name)[_rows(negative_last), negative_last].double().sum(0).cpu().save()
    return plus / len(positive_last) - minus / len(negative_last)


# 9.7 -----------------------------------------------------------------------------------------
def _steered(lm, tokens, last, push, name, remote, at_last_only=False, minus_one=False, log_probs=True):
    rows = _rows(last)
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = read_activation(lm, name).clone()
        if at_last_only:
            value[rows, last] = value[rows, last] + push
        else:
            value = value + push
        write_activation(lm, name, value)
        logits = lm.lm_head.output
        picked = logits[:, -1] if minus_one else logits[rows, last]
        result = (picked.log_softmax(-1) if log_probs else picked).detach().cpu().save()
    return result


def steer_last_position_only(lm, tokens, last, vector, layer, coefficient, remote=False):
    return _steered(lm, tokens, last, coefficient * vector, f"blocks.{layer}.hook_resid_pre", remote,
                    at_last_only=True)


def steer_after_the_block(lm, tokens, last, vector, layer, coefficient, remote=False):
    return _steered(lm, tokens, last, coefficient * vector, f"blocks.{layer}.hook_resid_post", remote)


def steer_without_coefficient(lm, tokens, last, vector, layer, coefficient, remote=False):
    return _steered(lm, tokens, last, vector, f"blocks.{layer}.hook_resid_pre", remote)


def steer_read_at_minus_one(lm, tokens, last, vector, layer, coefficient, remote=False):
    return _steered(lm, tokens, last, coefficient * vector, f"blocks.{layer}.hook_resid_pre", remote, minus_one=True)


def steer_returns_logits(lm, tokens, last, vector, layer, coefficient, remote=False):
    return _steered(lm, tokens, last, coefficient * vector, f"blocks.{layer}.hook_resid_pre", remote, log_probs=False)


def steer_through_the_block_input(lm, tokens, last, vector, layer, coefficient, remote=False):
    """The block's input edited through nnsight's own path, log-softmax after the trace."""
    rows = _rows(last)
    with lm.trace(tokens, **trace_options(lm, remote)):
        block = lm.transformer.h[layer]
        block.input = block.input + coefficient * vector
        logits = lm.lm_head.output[rows, last].detach().cpu().save()
    return torch.log_softmax(logits, dim=-1)


def steer_in_place_float64_result(lm, tokens, last, vector, layer, coefficient, remote=False):
    """An in-place addition on a clone, through run_trace; log-probabilities in float64."""
    name = f"blocks.{layer}.hook_resid_pre"

    def body(model):
        value = read_activation(model, name).clone()
        value += coefficient * vector
        write_activation(model, name, value)
        return model.lm_head.output[_rows(last), last].detach().cpu().save()

    return run_trace(lm, tokens, body, remote=remote).double().log_softmax(-1)


MISTAKES = {
    "9.1": [(lens_at_minus_one, "right-padded"), (lens_without_final_norm, "final_norm(lm)"),
            (lens_logits, "return log-probabilities"), (lens_ignoring_remote, "ran no rehearsal")],
    "9.2": [(predicts_a_run_here, "that is a run here"), (predicts_an_empty_inside_list, "nnsight.save([]) inside"),
            (predicts_unsaved_values_come_back, "`hidden` was never saved"),
            (predicts_plain_python, "nothing runs as plain Python")],
    "9.3": [(resid_saved_view, "a slice is a view"), (resid_sliced_after_the_trace, "a slice is a view"),
            (resid_before_the_block, "not before it (hook_resid_pre)"), (resid_centred, "do not centre")],
    "9.4": [(helper_registered_too_late, "nnsight.register(helpers)"),
            (helper_not_registered, "nnsight.register(helpers)")],
    "9.5": [(sweep_corrupt_into_clean, "not the corrupt run's into the clean one"),
            (sweep_after_the_layer, "not after it (resid_post)"), (sweep_metric_reversed, "not the other way round"),
            (sweep_whole_layer_at_once, "patch one position per row"),
            (sweep_every_layer_regardless, "only the layers given"), (sweep_without_barrier, "tracer.barrier(2)")],
    "9.6": [(vector_at_minus_one, "right-padded"), (vector_reversed, "positive minus negative"),
            (vector_after_the_block, "not after it (hook_resid_post)"), (vector_centred, "do not centre")],
    "9.7": [(steer_last_position_only, "at every position"), (steer_after_the_block, "not after it (hook_resid_post)"),
            (steer_without_coefficient, "multiply the vector by `coefficient`"),
            (steer_read_at_minus_one, "right-padded"), (steer_returns_logits, "return log-probabilities")],
}

ALTERNATIVES = {
    "9.1": [lens_saved_list, lens_through_run_trace_float64],
    "9.2": [predicts_by_keywords, predicts_from_rules],
    "9.3": [resid_through_the_module, resid_contiguous_float64],
    "9.4": [helper_registered_by_name, helper_registered_with_cloudpickle],
    "9.5": [sweep_in_one_batch, sweep_one_trace_per_patch_in_a_session, sweep_invokes_with_barriers],
    "9.6": [vector_two_traces, vector_sums_in_float64],
    "9.7": [steer_through_the_block_input, steer_in_place_float64_result],
}


# ---------------------------------------------------------------------------------------------
# Answers a server would treat differently from the rehearsal, or another architecture would break
def lens_hardcoded_local(lm, tokens, last, remote=False):
    """Always rehearses, whatever `remote` says: right numbers, but it would never reach NDIF."""
    return ref.nnsight_logit_lens(lm, tokens, last, remote="local")


def lens_gpt2_paths(lm, tokens, last, remote=False):
    """Reads GPT-2's module names directly: right on the organism, broken on a Llama."""
    rows = _rows(last)
    with lm.trace(tokens, **trace_options(lm, remote)):
        points = [lm.transformer.h[0].input[rows, last]] + [block.output[rows, last] for block in lm.transformer.h]
        lens = lm.lm_head(lm.transformer.ln_f(torch.stack(points))).log_softmax(-1).detach().cpu().save()
    return lens


def predicts_an_ordered_dict(n_layers):
    from collections import OrderedDict

    return OrderedDict([("outside", 0), ("inside", n_layers), ("hidden", False), ("kept", True)])


def sweep_multiline_session(lm, clean, corrupt, answer, wrong, layers=None, remote=False):
    """The reference with one statement spread over two lines inside the session: a rebuilt session fails."""
    layers = list(range(lm.config.num_hidden_layers)) if layers is None else list(layers)
    n_pos = clean.shape[-1]
    rows = torch.arange(n_pos)
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(clean):
            clean_resid = {layer: read_activation(lm, f"blocks.{layer}.hook_resid_pre")[0]
                           for layer in sorted(set(layers))}
        by_layer = nnsight.save([])
        for layer in layers:
            name = f"blocks.{layer}.hook_resid_pre"
            with lm.trace(corrupt.expand(n_pos, -1)):
                patched = read_activation(lm, name).clone()
                patched[rows, rows] = clean_resid[layer]
                write_activation(lm, name, patched)
                final = lm.lm_head.output[:, -1]
                by_layer.append((final[:, answer] - final[:, wrong]).detach().cpu())
    return torch.stack(list(by_layer))


def steer_with_a_pytorch_hook(lm, tokens, last, vector, layer, coefficient, remote=False):
    """Adds the vector with a PyTorch hook registered outside the trace (and removed after it): nothing of it
    would run on NDIF."""
    module = lm._module.transformer.h[layer]
    handle = module.register_forward_pre_hook(lambda m, args: (args[0] + coefficient * vector, *args[1:]))
    try:
        with lm.trace(tokens, **trace_options(lm, remote)):
            logits = lm.lm_head.output[_rows(last), last].log_softmax(-1).detach().cpu().save()
    finally:
        handle.remove()
    return logits


def steer_editing_weights(lm, tokens, last, vector, layer, coefficient, remote=False):
    """Adds the vector to the previous block's MLP output bias, outside the trace, and leaves it there."""
    with torch.no_grad():
        lm._module.transformer.h[layer - 1].mlp.c_proj.bias += coefficient * vector
    with lm.trace(tokens, **trace_options(lm, remote)):
        logits = lm.lm_head.output[_rows(last), last].log_softmax(-1).detach().cpu().save()
    return logits


def steer_on_the_value_device(lm, tokens, last, vector, layer, coefficient, remote=False):
    """Moves the push to the activation's device and dtype inside the block; reads the unembedding by name."""
    name = f"blocks.{layer}.hook_resid_pre"
    with lm.trace(tokens, **trace_options(lm, remote)):
        value = read_activation(lm, name)
        write_activation(lm, name, value + (coefficient * vector).to(device=value.device, dtype=value.dtype))
        final = read_activation(lm, "hook_unembed")[_rows(last), last]  # [batch, d_vocab]
        steered = torch.log_softmax(final.float(), dim=-1).detach().cpu().save()
    return steered


MISTAKES["9.1"] += [(lens_hardcoded_local, "ran a rehearsal anyway"), (lens_gpt2_paths, "fails on a Llama")]
MISTAKES["9.7"] += [(steer_through_the_block_input, "fails on a Llama"),
                    (steer_with_a_pytorch_hook, "registered a PyTorch hook"),
                    (steer_editing_weights, "changed the weight")]
ALTERNATIVES["9.2"].append(predicts_an_ordered_dict)
ALTERNATIVES["9.7"] = [steer_in_place_float64_result, steer_on_the_value_device]
MISTAKES["9.5"].append((sweep_multiline_session, "one line per statement"))


def vector_two_invokes(lm, positive, positive_last, negative, negative_last, layer, remote=False):
    """Two invokes in one trace, each read at its own right-padded last index: the shorter input is padded on
    the left when nnsight batches them."""
    name = f"blocks.{layer}.hook_resid_pre"
    with lm.trace(**trace_options(lm, remote)) as tracer:
        with tracer.invoke(positive):
            plus = read_activation(lm, name)[_rows(positive_last), positive_last].mean(0).save()
        with tracer.invoke(negative):
            minus = read_activation(lm, name)[_rows(negative_last), negative_last].mean(0).save()
    return (plus - minus).detach().cpu()


MISTAKES["9.6"].append((vector_two_invokes, "pads the shorter input on the left"))


# 9.8 -----------------------------------------------------------------------------------------
def align_uncentred(a, b):
    u, _, vh = torch.linalg.svd(a.T @ b)
    return u @ vh


def align_backwards(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vh = torch.linalg.svd(a.T @ b)
    return vh.T @ u.T


def align_by_least_squares(a, b):
    return torch.linalg.lstsq(a - a.mean(0), b - b.mean(0)).solution


def align_kabsch(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vh = torch.linalg.svd(a.T @ b)
    signs = torch.ones(len(u))
    signs[-1] = torch.linalg.det(u @ vh).sign()
    return u @ torch.diag(signs) @ vh


def align_from_the_other_side(a, b):
    """The SVD of b.T @ a gives the inverse rotation; its transpose is R."""
    a, b = a - a.mean(dim=0, keepdim=True), b - b.mean(dim=0, keepdim=True)
    u, _, vh = torch.linalg.svd(b.T @ a)
    return (u @ vh).T


def align_by_polar_decomposition(a, b):
    """R is the orthogonal factor of M = a.T @ b: M (M.T M)^(-1/2), in float64."""
    m = ((a - a.mean(0)).double().T @ (b - b.mean(0)).double())
    values, vectors = torch.linalg.eigh(m.T @ m)
    return (m @ vectors @ torch.diag(values.rsqrt()) @ vectors.T).float()


# 9.9 -----------------------------------------------------------------------------------------
def correlations_as_cosines(codes_a, codes_b):
    return torch.nn.functional.normalize(codes_a, dim=0).T @ torch.nn.functional.normalize(codes_b, dim=0)


def correlations_with_nans(codes_a, codes_b):
    za = (codes_a - codes_a.mean(0)) / codes_a.std(0, unbiased=False)
    zb = (codes_b - codes_b.mean(0)) / codes_b.std(0, unbiased=False)
    return za.T @ zb / len(codes_a)


def correlations_unbiased_std_over_n(codes_a, codes_b):
    def z(codes):
        std = codes.std(0)
        return torch.where(std > 0, (codes - codes.mean(0)) / std.clamp_min(1e-12), 0.0)
    return z(codes_a).T @ z(codes_b) / len(codes_a)


def correlations_transposed(codes_a, codes_b):
    return correlations_by_corrcoef(codes_b, codes_a)


def correlations_by_corrcoef(codes_a, codes_b):
    """torch.corrcoef on both sets of latents at once, NaN rows of constant latents set to 0."""
    both = torch.corrcoef(torch.cat([codes_a, codes_b], dim=1).T.double())  # [d_a + d_b, d_a + d_b]
    return both[:codes_a.shape[1], codes_a.shape[1]:].nan_to_num(0.0).float()


def correlations_column_by_column(codes_a, codes_b):
    """Unbiased standard deviations, divided by n - 1, one latent of a at a time."""
    n = len(codes_a)
    b_centred = codes_b - codes_b.mean(0)
    b_std = codes_b.std(0)
    rows = []
    for column in codes_a.T:
        centred, std = column - column.mean(), column.std()
        if std == 0:
            rows.append(torch.zeros(codes_b.shape[1]))
            continue
        covariance = centred @ b_centred / (n - 1)
        rows.append(torch.where(b_std > 0, covariance / (std * b_std.clamp_min(1e-12)), 0.0))
    return torch.stack(rows)


MISTAKES["9.8"] = [(align_uncentred, "centre both matrices first"), (align_backwards, "maps the second stream onto the first"),
                   (align_by_least_squares, "least squares"), (align_kabsch, "no Kabsch correction")]
ALTERNATIVES["9.8"] = [align_from_the_other_side, align_by_polar_decomposition]
MISTAKES["9.9"] = [(correlations_as_cosines, "you get a cosine"), (correlations_with_nans, "never NaN"),
                   (correlations_unbiased_std_over_n, "the same count"), (correlations_transposed, "not its transpose")]
ALTERNATIVES["9.9"] = [correlations_by_corrcoef, correlations_column_by_column]
