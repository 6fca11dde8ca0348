"""Checks for Chapter 09 (scaling up through nnsight). Expected values come from the exported reference,
run here (remote=False); answers are also run in the rehearsal of a remote run (remote="local").

The learner's code runs on its own copy of the organism (`learner_model`), never on the one the expectations
come from, and that copy is put back after every call (`rehearsal_model`): weights and PyTorch hooks changed
outside a trace would do nothing on a server, so a check reports them, and they cannot leak into later checks.
Answers that read modules by path are also run on a small Llama (`second_architecture`), the architecture of
the chapter's last section."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from utils.checks import Wrong, call, exercise, expect_equal, expect_tensor, seeded_generator
from utils.nnsight_models import RehearsalBackend, load_nnsight_model, read_activation, write_activation
from utils.organism.world import prompt_set
from utils.references import ch09_scaling_up as ref

CHAPTER = "09_scaling_up"


@functools.cache
def organism():
    """The bundled model as nnsight sees it, loaded once for all checks."""
    return load_nnsight_model(device="cpu", verbose=False)


@functools.cache
def prompts(family: str, n: int, seed: int, split: str = "test"):
    return prompt_set(family, split, n=n, seed=seed)


@functools.cache
def tokenized(family: str, n: int, seed: int, split: str = "test"):
    return ref.nnsight_tokenize(organism(), prompts(family, n, seed, split).prompts)


@functools.cache
def learner_model():
    """A second copy of the organism for nnsight: the one the learner's code runs on."""
    return load_nnsight_model(device="cpu", verbose=False)


@functools.cache
def _pristine_state() -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in learner_model()._module.state_dict().items()}


@contextlib.contextmanager
def rehearsal_model():
    """The learner's copy of the model, put back afterwards: PyTorch hooks removed, weights restored. Yields
    (model, what was undone), the second filled in when the block ends."""
    lm = learner_model()
    modules = dict(lm._module.named_modules())
    hooks_before = {name: (set(m._forward_hooks), set(m._forward_pre_hooks)) for name, m in modules.items()}
    undone: list[str] = []
    names = {id(module): name or "the model" for name, module in modules.items()}
    originals = (torch.nn.Module.register_forward_hook, torch.nn.Module.register_forward_pre_hook)

    def watched(register):
        def register_and_note(module, *args, **kwargs):
            if id(module) in names:  # a hook on the model, even one removed again before the call returns
                undone.append(f"registered a PyTorch hook on {names[id(module)]}")
            return register(module, *args, **kwargs)
        return register_and_note

    torch.nn.Module.register_forward_hook, torch.nn.Module.register_forward_pre_hook = map(watched, originals)
    try:
        yield lm, undone
    finally:
        torch.nn.Module.register_forward_hook, torch.nn.Module.register_forward_pre_hook = originals
        for name, module in modules.items():
            for store, before in zip((module._forward_hooks, module._forward_pre_hooks), hooks_before[name]):
                for key in [key for key in store if key not in before]:
                    del store[key]
                    undone.append(f"left a PyTorch hook on {name or 'the model'}")
        with torch.no_grad():
            for name, tensor in lm._module.state_dict().items():
                if not torch.equal(tensor, _pristine_state()[name]):
                    tensor.copy_(_pristine_state()[name])
                    undone.append(f"changed the weight {name}")


def call_on_copy(candidate, *args, remote, **kwargs):
    """`call_where` on the learner's copy of the organism (the first argument is replaced by it), which is then
    reset; what the learner's code did to the model outside a trace is reported."""
    with rehearsal_model() as (lm, undone):
        try:
            got = call_where(candidate, lm, *args[1:], remote=remote, **kwargs)
        except Wrong as error:
            raise Wrong(_translated(str(error))) from error
    if undone:
        raise Wrong(f"your code {undone[0]} outside the trace: on NDIF only what happens inside `with lm.trace(...)` "
                    "runs where the weights are, so that would do nothing there (here it has been undone); read and "
                    "write activations inside the trace instead")
    return got


def _translated(message: str) -> str:
    """nnsight's own errors, said in the chapter's words."""
    if "WithBlockNotFoundError" in message or "outside of interleaving" in message:
        return ("nnsight could not rebuild your block (" + message[:160] + "): a remote (or rehearsed) session is "
                "rebuilt from its syntax tree, which drops comment lines and joins statements spread over several "
                "lines; inside the session write one line per statement, with comments at the ends of lines")
    return message


def call_where(candidate, *args, remote, **kwargs):
    """Call the learner with `remote=...`; insist that "local" really went through the rehearsal, and that a call
    with remote=False did not (an answer that hard-codes remote="local" would never reach NDIF)."""
    RehearsalBackend.last_result_bytes = None
    got = call(candidate, *args, remote=remote, **kwargs)
    if remote == "local" and RehearsalBackend.last_result_bytes is None:
        raise Wrong("called with remote='local', your function ran no rehearsal: pass **trace_options(lm, remote) "
                    "to lm.trace (or lm.session), so that the same code runs here, rehearsed, or on NDIF")
    if remote is False and RehearsalBackend.last_result_bytes is not None:
        raise Wrong("called with remote=False, your function ran a rehearsal anyway: pass the `remote` it was given "
                    "(**trace_options(lm, remote)) instead of a fixed value, or it will never run on NDIF")
    return got


@functools.cache
def second_architecture():
    """A two-layer Llama with random weights and the organism's tokenizer, for nnsight (built once, offline)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.models import ORGANISM_DIR, quiet_transformers

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1125, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0)
    folder = Path(tempfile.mkdtemp(prefix="workbook_llama_"))
    with quiet_transformers():
        LlamaForCausalLM(config).save_pretrained(folder)
    torch.random.set_rng_state(generator_state)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ORGANISM_DIR / name, folder)
    return load_nnsight_model(str(folder), device="cpu", verbose=False)


def on_a_llama(candidate, reference, *args, name: str, atol: float = 1e-3, **kwargs) -> None:
    """Run the answer and the reference on the small Llama (remote=False) and compare: module paths written for
    GPT-2 (lm.transformer.h) break there, as they would on the Llama of the chapter's last section."""
    llama = second_architecture()
    expected = reference(llama, *args, **kwargs)
    try:
        got = call_where(candidate, llama, *args, remote=False, **kwargs)
    except Wrong as error:
        raise Wrong(f"your function works on the organism but fails on a Llama ({str(error)[:140]}): read modules "
                    "through the workbook's helpers (read_activation, final_norm, unembed), not GPT-2's names, so the "
                    "same code runs on the model of Section 7") from error
    expect_tensor(got, expected, f"{name} on a Llama (the architecture of Section 7)", atol=atol)


def expect_on_cpu(got, name: str) -> None:
    if isinstance(got, torch.Tensor) and got.device.type != "cpu":
        raise Wrong(f"{name} is on {got.device}: move it to the CPU (.detach().cpu()) before .save(), as a "
                    "remote run must")


def _rows(last: torch.Tensor) -> torch.Tensor:
    return torch.arange(len(last), device=last.device)


# ------------------------------------------------------------------------------------------
# 9.1
# ------------------------------------------------------------------------------------------
def _lens_variants(lm, tokens, last) -> dict[str, torch.Tensor]:
    """The lens and the tensors realistic mistakes give, from one trace here."""
    names = ref.residual_hook_names(lm.config.num_hidden_layers)
    with lm.trace(tokens):
        resid = torch.stack([read_activation(lm, name) for name in names]).save()  # [point, batch, pos, d_model]
    norm, head = ref.final_norm(lm)._module, ref.unembed(lm)._module
    at_last = resid[:, _rows(last), last]  # [point, batch, d_model]
    return {"right": head(norm(at_last)).log_softmax(-1), "minus one": head(norm(resid[:, :, -1])).log_softmax(-1),
            "no norm": head(at_last).log_softmax(-1), "logits": head(norm(at_last))}


@functools.cache
def _lens_expectations(family: str, n: int, seed: int):
    lm = organism()
    tokens, last = tokenized(family, n, seed)
    with torch.no_grad():
        variants = _lens_variants(lm, tokens, last)
        expected = ref.nnsight_logit_lens(lm, tokens, last)
    mistakes = {
        "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt at its "
        "own last position, value[torch.arange(batch), last]": variants["minus one"],
        "apply the final norm (final_norm(lm)) before the unembedding: the raw residual stream is on another "
        "scale at every point": variants["no norm"],
        "return log-probabilities (.log_softmax(-1)), not logits: nnsight's logits and the bridge's differ by "
        "a constant per position": variants["logits"],
    }
    return tokens, last, expected, mistakes


@exercise("9.1", "the logit lens in nnsight form", CHAPTER, ref.nnsight_logit_lens)
def check_nnsight_logit_lens(candidate) -> None:
    lm = organism()
    for (family, n, seed), remote in ((("ioi", 5, 2), False), (("sentiment", 6, 3), "local"), (("facts", 4, 4), False)):
        tokens, last, expected, mistakes = _lens_expectations(family, n, seed)
        with torch.no_grad():
            got = call_on_copy(candidate, lm, tokens.clone(), last.clone(), remote=remote)
        expect_tensor(got, expected, f"your lens (remote={remote!r})", atol=1e-3, mistakes=mistakes)
        expect_on_cpu(got, "your lens")
    tokens, last = tokenized("ioi", 3, 19)
    with torch.no_grad():
        on_a_llama(candidate, ref.nnsight_logit_lens, tokens.clone(), last.clone(), name="your lens")


# ------------------------------------------------------------------------------------------
# 9.2
# ------------------------------------------------------------------------------------------
@functools.cache
def _contract(n_layers: int) -> tuple[dict, dict]:
    """What the demo returns after a rehearsed remote run, and after a run here."""
    lm = organism()
    tokens, _ = tokenized("ioi", 2, 6)
    return ref.remote_contract_demo(lm, tokens, n_layers, "local"), ref.remote_contract_demo(lm, tokens, n_layers, False)


@exercise("9.2", "predict what comes back", CHAPTER, ref.what_comes_back)
def check_what_comes_back(candidate) -> None:
    for n_layers in (1, 3, 4):
        remote, here = _contract(n_layers)
        got = call(candidate, n_layers)
        if isinstance(got, Mapping):  # an OrderedDict or any other mapping says the same
            got = dict(got)
        expect_equal(got, remote, f"your prediction for n_layers={n_layers}", mistakes={
            "that is a run here (remote=False): on a server the block runs on copies of what it uses, so the list "
            "made before the trace stays empty on your side": here,
            "the list made with nnsight.save([]) inside the trace is itself a saved value: it comes back with "
            "everything appended to it": dict(remote, inside=0),
            "only saved values leave the block: `hidden` was never saved, so it does not exist after it, here or "
            "remotely": dict(remote, hidden=True),
            "inside a trace nothing runs as plain Python: values arrive only through .save(), and a list made "
            "outside is the server's copy, not yours": dict(here, hidden=True),
        })


# ------------------------------------------------------------------------------------------
# 9.3
# ------------------------------------------------------------------------------------------
@functools.cache
def _resid_expectations(family: str, n: int, seed: int, position: int, layer: int):
    lm = organism()
    tokens, _ = tokenized(family, n, seed)
    with lm.trace(tokens):
        pre = read_activation(lm, f"blocks.{layer}.hook_resid_pre")[:, position].clone().save()
        post = read_activation(lm, f"blocks.{layer}.hook_resid_post")[:, position].clone().save()
    expected = ref.resid_at(lm, tokens, position, layer)
    assert torch.equal(expected, post)
    mistakes = {
        f"read the residual stream after block {layer} (blocks.{layer}.hook_resid_post, the block's output), not "
        "before it (hook_resid_pre)": pre,
        "keep nnsight's own convention here: do not centre the residual stream": post - post.mean(-1, keepdim=True),
    }
    return tokens, expected, mistakes


@exercise("9.3", "send back only what you need", CHAPTER, ref.resid_at)
def check_resid_at(candidate) -> None:
    lm = organism()
    for (family, n, seed, position, layer), remote in ((("ioi", 5, 7, 3, 1), "local"),
                                                       (("sentiment", 4, 8, 2, 3), "local"),
                                                       (("facts", 3, 9, 5, 0), False)):
        tokens, expected, mistakes = _resid_expectations(family, n, seed, position, layer)
        got = call_on_copy(candidate, lm, tokens.clone(), position, layer, remote=remote)
        expect_tensor(got, expected, f"your slice (position {position}, layer {layer})", atol=1e-4, mistakes=mistakes)
        expect_on_cpu(got, "your slice")
        if remote == "local":
            sent, needed = RehearsalBackend.last_result_bytes, expected.numel() * expected.element_size()
            if sent > 2 * needed + 4096:
                raise Wrong(f"the rehearsal sent back {sent / 1e3:.1f} kB for a result of {needed / 1e3:.1f} kB: a "
                            "slice is a view of the whole output (and saving the whole output to slice it after "
                            "the trace sends it all); slice inside the trace and save a copy, "
                            ".detach().cpu().clone()")


# ------------------------------------------------------------------------------------------
# 9.4
# ------------------------------------------------------------------------------------------
HELPER_SOURCES = {
    "last position after block 0": "def summary(lm):\n    return lm.transformer.h[0].output[:, -1]\n",
    "norms after block 2": "def summary(lm):\n    return lm.transformer.h[2].output.norm(dim=-1)\n",
}
HELPER_NAME = "helpers_made_late"  # the same name every time (verdicts quote it); forgotten after each call


@contextlib.contextmanager
def fresh_helper_module(source: str):
    """A module made now, importable by name, outside every path nnsight scans; forgotten afterwards."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    name = HELPER_NAME
    folder = Path(tempfile.mkdtemp())
    (folder / f"{name}.py").write_text(source)
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        _PICKLE_BY_VALUE_MODULES.discard(name)  # whatever the learner registered
        sys.modules.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def _helper_expectation(kind: str, family: str, n: int, seed: int) -> torch.Tensor:
    lm = organism()
    tokens, _ = tokenized(family, n, seed)
    with fresh_helper_module(HELPER_SOURCES[kind]) as helpers:
        with lm.trace(tokens):
            value = helpers.summary(lm).detach().clone().save()
    return value


@exercise("9.4", "send your helper module along", CHAPTER, ref.run_helper)
def check_run_helper(candidate) -> None:
    lm = organism()
    for (kind, family, n, seed), remote in ((("last position after block 0", "ioi", 3, 16), "local"),
                                            (("norms after block 2", "sentiment", 4, 17), "local"),
                                            (("norms after block 2", "facts", 2, 18), False)):
        tokens, _ = tokenized(family, n, seed)
        with fresh_helper_module(HELPER_SOURCES[kind]) as helpers:
            try:
                got = call_on_copy(candidate, lm, tokens.clone(), helpers, remote=remote)
            except Wrong as error:
                if "ModuleNotFoundError" not in str(error):
                    raise
                raise Wrong("the server side could not import your helper module: call nnsight.register(helpers) "
                            f"before the trace, so that its code travels with the request ({error})") from error
        expect_tensor(got, _helper_expectation(kind, family, n, seed), f"your result ({kind})", atol=1e-4)
        expect_on_cpu(got, "your result")


# ------------------------------------------------------------------------------------------
# 9.5
# ------------------------------------------------------------------------------------------
def _sweep_variant(lm, clean, corrupt, answer: int, wrong: int, layers, hook: str = "hook_resid_pre",
                   one_position: bool = True) -> torch.Tensor:
    """A patching sweep written plainly (one trace per layer and position block), with a mistake's switches."""
    n_pos = clean.shape[-1]
    rows = torch.arange(n_pos)
    out = []
    for layer in layers:
        name = f"blocks.{layer}.{hook}"
        with lm.trace(clean):
            clean_resid = read_activation(lm, name)[0].clone().save()  # [pos, d_model]
        with lm.trace(corrupt.expand(n_pos, -1)):
            patched = read_activation(lm, name).clone()
            if one_position:
                patched[rows, rows] = clean_resid
            else:
                patched[:] = clean_resid
            write_activation(lm, name, patched)
            final = lm.lm_head.output[:, -1]
            row = (final[:, answer] - final[:, wrong]).save()
        out.append(row)
    return torch.stack(out)


@functools.cache
def _sweep_expectations(seed: int, index: int, layers: tuple | None):
    lm = organism()
    clean, corrupt, answer, wrong = ref.swapped_names(lm, prompts("ioi", 4, seed), index)
    every = list(range(lm.config.num_hidden_layers)) if layers is None else list(layers)
    expected = ref.patching_sweep(lm, clean, corrupt, answer, wrong, layers=None if layers is None else list(layers))
    mistakes = {
        "patch the clean run's activations into the corrupt run, not the corrupt run's into the clean one":
            ref.patching_sweep(lm, corrupt, clean, answer, wrong, layers=every),
        "patch the residual stream before each layer (blocks.{layer}.hook_resid_pre), not after it (resid_post)":
            _sweep_variant(lm, clean, corrupt, answer, wrong, every, hook="hook_resid_post"),
        "the metric is logit[answer] - logit[wrong], not the other way round": -expected,
        "patch one position per row (row p at position p only): patching every position at once gives the clean "
        "run back": _sweep_variant(lm, clean, corrupt, answer, wrong, every, one_position=False),
    }
    if layers is not None:
        mistakes["sweep only the layers given in `layers`, in that order"] = ref.patching_sweep(
            lm, clean, corrupt, answer, wrong)
    return (clean, corrupt, answer, wrong), expected, mistakes


@exercise("9.5", "a patching sweep in nnsight form", CHAPTER, ref.patching_sweep)
def check_patching_sweep(candidate) -> None:
    lm = organism()
    for (seed, index, layers), remote in (((5, 0, None), False), ((5, 1, (3, 1)), "local"), ((6, 2, (0, 2)), False)):
        (clean, corrupt, answer, wrong), expected, mistakes = _sweep_expectations(seed, index, layers)
        try:
            got = call_on_copy(candidate, lm, clean.clone(), corrupt.clone(), answer, wrong,
                               layers=None if layers is None else list(layers), remote=remote)
        except Wrong as error:
            if "NameError" not in str(error):
                raise Wrong(_translated(str(error))) from error
            raise Wrong("a value read in one invoke was used in another before it existed: put barrier = "
                        "tracer.barrier(2) before the invokes, call barrier() at the end of the clean one and at the "
                        f"start of the corrupt one ({error})") from error
        expect_tensor(got, expected, f"your sweep (layers {layers})", atol=1e-3, mistakes=mistakes)
        expect_on_cpu(got, "your sweep")


# ------------------------------------------------------------------------------------------
# 9.6
# ------------------------------------------------------------------------------------------
def _mean_at_last(lm, tokens, last, name: str, minus_one: bool = False) -> torch.Tensor:
    with lm.trace(tokens):
        value = read_activation(lm, name)
        picked = (value[:, -1] if minus_one else value[_rows(last), last]).mean(0).save()
    return picked


def _vector_by_invokes(lm, positive, positive_last, negative, negative_last, name: str) -> torch.Tensor:
    """Two invokes in one trace, each read at its right-padded last index: nnsight batches them and pads the
    shorter input on the left, so the shorter one's indices point at the wrong tokens."""
    with lm.trace() as tracer:
        with tracer.invoke(positive):
            plus = read_activation(lm, name)[_rows(positive_last), positive_last].mean(0).save()
        with tracer.invoke(negative):
            minus = read_activation(lm, name)[_rows(negative_last), negative_last].mean(0).save()
    return plus - minus


@functools.cache
def _vector_cases():
    """(positive, its last, negative, its last, layer, remote) for three differently shaped cases."""
    sentiment = prompts("sentiment", 24, 2, "train")
    positive_mask = torch.tensor(sentiment.labels["sentiment"]) == 1
    tokens, last = tokenized("sentiment", 24, 2, "train")
    ioi_tokens, ioi_last = tokenized("ioi", 7, 11)
    facts_tokens, facts_last = tokenized("facts", 5, 12)
    return [(tokens[positive_mask], last[positive_mask], tokens[~positive_mask], last[~positive_mask], 2, "local"),
            (ioi_tokens, ioi_last, facts_tokens, facts_last, 1, False),
            (facts_tokens, facts_last, tokens[:9], last[:9], 3, False)]


@functools.cache
def _vector_expectations(case: int):
    lm = organism()
    positive, positive_last, negative, negative_last, layer, _ = _vector_cases()[case]
    expected = ref.steering_vector(lm, positive, positive_last, negative, negative_last, layer)
    pre, post = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post"
    mistakes = {
        "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt at its "
        "own last position, value[torch.arange(batch), last]":
            _mean_at_last(lm, positive, positive_last, pre, True) - _mean_at_last(lm, negative, negative_last, pre, True),
        "positive minus negative, not the other way round": -expected,
        f"read the residual stream before block {layer} (hook_resid_pre), not after it (hook_resid_post)":
            _mean_at_last(lm, positive, positive_last, post) - _mean_at_last(lm, negative, negative_last, post),
        "keep nnsight's own convention: do not centre the vector": expected - expected.mean(),
    }
    if positive.shape[1] != negative.shape[1]:
        mistakes["two invokes run as one batch, and nnsight pads the shorter input on the left (the tokenizer's "
                 "padding side), so the last indices you were given point at the wrong tokens of the shorter one: use a "
                 "session with two traces, or shift those indices by the padding"] = _vector_by_invokes(
            lm, positive, positive_last, negative, negative_last, pre)
    return expected, mistakes


@exercise("9.6", "a mean-difference steering vector", CHAPTER, ref.steering_vector)
def check_steering_vector(candidate) -> None:
    lm = organism()
    for case, (positive, positive_last, negative, negative_last, layer, remote) in enumerate(_vector_cases()):
        expected, mistakes = _vector_expectations(case)
        got = call_on_copy(candidate, lm, positive.clone(), positive_last.clone(), negative.clone(),
                           negative_last.clone(), layer, remote=remote)
        expect_tensor(got, expected, f"your vector (layer {layer})", atol=1e-3, mistakes=mistakes)
        expect_on_cpu(got, "your vector")


# ------------------------------------------------------------------------------------------
# 9.7
# ------------------------------------------------------------------------------------------
def _steer_variant(lm, tokens, last, push, name: str, where: str = "every", minus_one: bool = False,
                   log_probs: bool = True) -> torch.Tensor:
    with lm.trace(tokens):
        value = read_activation(lm, name)
        if where == "every":
            value = value + push
        else:
            value = value.clone()
            value[_rows(last), last] = value[_rows(last), last] + push
        write_activation(lm, name, value)
        logits = lm.lm_head.output
        picked = (logits[:, -1] if minus_one else logits[_rows(last), last]).save()
    return picked.log_softmax(-1) if log_probs else picked


@functools.cache
def _steer_cases():
    """(tokens, last, vector, layer, coefficient, remote): a real vector and two random ones."""
    generator = torch.Generator().manual_seed(13)
    d_model = organism().config.hidden_size
    real = _vector_expectations(0)[0]
    sentiment_tokens, sentiment_last = tokenized("sentiment", 6, 14)
    facts_tokens, facts_last = tokenized("facts", 5, 15)
    return [(sentiment_tokens, sentiment_last, real, 2, 1.0, "local"),
            (facts_tokens, facts_last, torch.randn(d_model, generator=generator) * 20, 1, 0.5, False),
            (sentiment_tokens, sentiment_last, torch.randn(d_model, generator=generator) * 20, 3, -2.0, False)]


@functools.cache
def _steer_expectations(case: int):
    lm = organism()
    tokens, last, vector, layer, coefficient, _ = _steer_cases()[case]
    expected = ref.steer(lm, tokens, last, vector, layer, coefficient)
    pre, post, push = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post", coefficient * vector
    mistakes = {
        "add the vector at every position, not only at the last one": _steer_variant(lm, tokens, last, push, pre, "last"),
        f"add it to the residual stream before block {layer} (hook_resid_pre), not after it (hook_resid_post)":
            _steer_variant(lm, tokens, last, push, post),
        "multiply the vector by `coefficient`": _steer_variant(lm, tokens, last, vector, pre),
        "the prompts are right-padded, so position -1 is padding for the shorter ones: read each prompt at its "
        "own last position": _steer_variant(lm, tokens, last, push, pre, minus_one=True),
        "return log-probabilities (.log_softmax(-1)), not logits": _steer_variant(lm, tokens, last, push, pre,
                                                                                   log_probs=False),
    }
    return expected, mistakes


@exercise("9.7", "steer", CHAPTER, ref.steer)
def check_steer(candidate) -> None:
    lm = organism()
    for case, (tokens, last, vector, layer, coefficient, remote) in enumerate(_steer_cases()):
        expected, mistakes = _steer_expectations(case)
        got = call_on_copy(candidate, lm, tokens.clone(), last.clone(), vector.clone(), layer, coefficient,
                           remote=remote)
        expect_tensor(got, expected, f"your log-probabilities (layer {layer}, coefficient {coefficient})",
                      atol=1e-3, mistakes=mistakes)
        expect_on_cpu(got, "your log-probabilities")
    tokens, last = tokenized("sentiment", 3, 20)
    vector = torch.randn(second_architecture().config.hidden_size, generator=torch.Generator().manual_seed(21))
    on_a_llama(candidate, ref.steer, tokens.clone(), last.clone(), vector, 3, 2.0, name="your log-probabilities")



# ------------------------------------------------------------------------------------------
# 9.8
# ------------------------------------------------------------------------------------------
def _rotation(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator))
    return q * r.diagonal().sign()  # a uniformly random orthogonal matrix


@functools.cache
def _alignment_cases():
    """(a, b): b is a turned, scaled and shifted copy of a plus noise; a has shifted, unequal columns."""
    cases = []
    for seed, (n, d, scale, noise) in enumerate(((300, 12, 1.0, 0.05), (500, 24, 3.0, 0.3), (200, 8, 0.2, 0.01))):
        generator = seeded_generator(80 + seed)
        a = torch.randn(n, d, generator=generator) * torch.linspace(0.5, 3.0, d) + torch.randn(d, generator=generator) * 4
        b = scale * (a - a.mean(0)) @ _rotation(d, generator) + noise * torch.randn(n, d, generator=generator)
        cases.append((a, b + torch.randn(d, generator=generator) * 5))
    return cases


def _procrustes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(a.T @ b)
    return u @ vh


def _kabsch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The proper rotation (determinant +1): right for molecules, not asked for here."""
    u, _, vh = torch.linalg.svd((a - a.mean(0)).T @ (b - b.mean(0)))
    signs = torch.ones(len(u))
    signs[-1] = torch.linalg.det(u @ vh).sign()
    return u @ torch.diag(signs) @ vh


@exercise("9.8", "align two residual streams", CHAPTER, ref.align_streams)
def check_align_streams(candidate) -> None:
    for a, b in _alignment_cases():
        expected = ref.align_streams(a, b)
        a_centred, b_centred = a - a.mean(0), b - b.mean(0)
        got = call(candidate, a.clone(), b.clone())
        expect_tensor(got, expected, f"your rotation ({a.shape[1]} dimensions)", atol=1e-4, mistakes={
            "centre both matrices first (subtract the mean over tokens): a rotation cannot undo a shift":
                _procrustes(a, b),
            "that maps the second stream onto the first: R = U @ Vh from the SVD of a.T @ b, not its transpose":
                expected.T,
            "least squares gives the best linear map, which stretches and shears; the exercise asks for a rotation "
            "(orthogonal Procrustes)": torch.linalg.lstsq(a_centred, b_centred).solution,
            "orthogonal includes reflections: keep R = U @ Vh even when its determinant is -1 (no Kabsch correction)":
                _kabsch(a, b),
        })


# ------------------------------------------------------------------------------------------
# 9.9
# ------------------------------------------------------------------------------------------
@functools.cache
def _correlation_cases():
    """Sparse non-negative codes with a dead latent in each, a constant latent in b, and shared latents."""
    cases = []
    for seed, (n, d_a, d_b) in enumerate(((400, 10, 7), (250, 6, 12))):
        generator = seeded_generator(90 + seed)
        codes_a = torch.relu(torch.randn(n, d_a, generator=generator) - 0.8) * torch.linspace(1, 4, d_a)
        codes_a[:, 1] = 0.0  # dead
        shared = codes_a[:, torch.randint(0, d_a, (d_b,), generator=generator)]
        codes_b = torch.relu(shared + 0.7 * torch.randn(n, d_b, generator=generator) - 0.3)
        codes_b[:, 0] = 0.0  # dead
        codes_b[:, -1] = 0.1  # constant, but not zero (and not exact in binary: a one-pass variance is not 0)
        cases.append((codes_a, codes_b))
    return cases


def _standardised(codes: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    centred = codes - codes.mean(0)
    std = codes.std(0, unbiased=unbiased)
    return torch.where(std > 0, centred / std.clamp_min(1e-12), torch.zeros_like(centred))


@exercise("9.9", "correlate every latent with every latent", CHAPTER, ref.latent_correlations)
def check_latent_correlations(candidate) -> None:
    for codes_a, codes_b in _correlation_cases():
        expected = ref.latent_correlations(codes_a, codes_b)
        got = call(candidate, codes_a.clone(), codes_b.clone())
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(got).any():
            raise Wrong(f"your correlations contain NaN at {int(torch.isnan(got).sum())} entries: a latent that never "
                        "varies (a dead or constant latent) has standard deviation 0; return 0 for it, never NaN")
        norms_a, norms_b = codes_a.norm(dim=0).clamp_min(1e-12), codes_b.norm(dim=0).clamp_min(1e-12)
        n = len(codes_a)
        expect_tensor(got, expected, f"your correlations ({codes_a.shape[1]} by {codes_b.shape[1]} latents)", atol=1e-5,
                      mistakes={
            "centre each latent first (subtract its mean over tokens): without it you get a cosine, and two "
            "latents that are both mostly zero look alike": (codes_a / norms_a).T @ (codes_b / norms_b),
            "divide by the standard deviations too: that is a covariance, not a correlation":
                (codes_a - codes_a.mean(0)).T @ (codes_b - codes_b.mean(0)) / n,
            "the standard deviation and the division must use the same count: torch.std is unbiased (n - 1), so "
            "divide the product by n - 1, or use std(unbiased=False) with n":
                _standardised(codes_a, unbiased=True).T @ _standardised(codes_b, unbiased=True) / n,
            "one row per latent of the FIRST argument: [d_sae_a, d_sae_b], not its transpose": expected.T,
            "the standard deviation and the division must use the same count: std(unbiased=False) goes with n, "
            "not n - 1": _standardised(codes_a).T @ _standardised(codes_b) / (n - 1),
        })
