"""The nnsight route (utils/nnsight_models.py): fast one-line errors, the hook table, one experiment three ways.

Nothing here reaches the network: `no_network` refuses every name lookup but loopback's, and the
NDIF status check is replaced where a test needs NDIF to answer.
"""

from __future__ import annotations

import socket
import time

import nnsight
import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils import nnsight_models
from utils.models import ModelUnavailableError, load_model
from utils.nnsight_models import (HOOKS, NdifUnavailableError, check_ndif, hook_table, load_nnsight_model,
                                  read_activation, read_activations, run_trace, to_bridge_convention, trace_options,
                                  write_activation)
from utils.organism.world import prompt_set
from utils.references.ch02_probing import tokenize

HUB_ID = "openai-community/gpt2"


@pytest.fixture(scope="module")
def lm():
    return load_nnsight_model(device="cpu", verbose=False)


@pytest.fixture(scope="module")
def bridge():
    return load_model(device="cpu", verbose=False)


@pytest.fixture(scope="module")
def prompts():
    """Two held-out IOI prompts of different lengths, right-padded, with each one's last position."""
    texts = prompt_set("ioi", "test", n=8, seed=0).prompts
    by_length = sorted(texts, key=len)
    return by_length[0], by_length[-1]


@pytest.fixture
def no_network(monkeypatch):
    """Any name lookup but loopback's fails at once, so a test cannot reach the Hub or NDIF."""
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(f"test: no network for {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture
def online_with_key(monkeypatch, no_network):
    """As if online with a key: the offline flag off, a made-up key, the Hub 'reachable'."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", nnsight.CONFIG.API.APIKEY)  # restored after the test
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", nnsight.CONFIG.API.HOST)
    monkeypatch.setattr(nnsight_models, "hub_is_reachable", lambda timeout=1.0: True)


def one_line_error_within(seconds: float, function, error_type=Exception) -> str:
    """Call `function`; it must raise `error_type` with a one-line message, within `seconds`."""
    start = time.perf_counter()
    with pytest.raises(error_type) as raised:
        function()
    elapsed = time.perf_counter() - start
    message = str(raised.value)
    assert elapsed < seconds, f"took {elapsed:.1f}s: {message}"
    assert message and "\n" not in message, repr(message)
    return message


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends


# ---------------------------------------------------------------------------------------------
# Error paths: one line, within 2 seconds, never a hang


def test_no_key_says_how_to_get_one(monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    message = one_line_error_within(2, lambda: load_nnsight_model("gpt2-small", remote=True), NdifUnavailableError)
    assert "NDIF_API_KEY" in message and "login.ndif.us" in message and "remote='local'" in message


def test_offline_flag_fails_fast_even_with_a_key(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    message = one_line_error_within(2, lambda: load_nnsight_model("gpt2-small", remote=True), NdifUnavailableError)
    assert "offline" in message and "remote='local'" in message


def test_no_network_fails_fast(monkeypatch, no_network):
    """Key set, offline flag off, but no network at all: the real Hub check answers False at once."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    message = one_line_error_within(2, lambda: load_nnsight_model("gpt2-small", remote=True), NdifUnavailableError)
    assert "not reachable" in message


def test_ndif_host_on_a_closed_port_fails_fast(monkeypatch, online_with_key):
    monkeypatch.setenv("NDIF_HOST", f"http://127.0.0.1:{closed_loopback_port()}")
    message = one_line_error_within(2, lambda: check_ndif(HUB_ID), NdifUnavailableError)
    assert "127.0.0.1" in message and "not reachable" in message


def test_unknown_model_name_is_one_line_and_suggests(monkeypatch, no_network):
    for remote in (False, True):
        message = one_line_error_within(2, lambda: load_nnsight_model("gpt2-smal", remote=remote), ValueError)
        assert "unknown model name 'gpt2-smal'" in message and "gpt2-small" in message


def test_a_model_ndif_is_not_running(monkeypatch, online_with_key):
    monkeypatch.setattr(nnsight_models, "ndif_is_reachable", lambda timeout=1.0: True)
    monkeypatch.setattr(nnsight, "is_model_running", lambda repo_id, **kwargs: False)
    message = one_line_error_within(2, lambda: load_nnsight_model("gpt2-small", remote=True), NdifUnavailableError)
    assert "not running 'gpt2'" in message and "nnsight.status()" in message


def test_a_status_check_that_hangs_is_cut_short(monkeypatch, online_with_key):
    monkeypatch.setattr(nnsight_models, "ndif_is_reachable", lambda timeout=1.0: True)
    monkeypatch.setattr(nnsight, "is_model_running", lambda repo_id, **kwargs: time.sleep(30))
    message = one_line_error_within(2, lambda: check_ndif(HUB_ID, timeout=0.5), NdifUnavailableError)
    assert "did not answer within 0.5s" in message


def test_the_organism_cannot_go_to_ndif(lm, no_network):
    message = one_line_error_within(2, lambda: load_nnsight_model(remote=True), NdifUnavailableError)
    assert "only on this machine" in message and "remote='local'" in message
    tokens = torch.tensor([[0, 1, 2]])
    message = one_line_error_within(
        2, lambda: run_trace(lm, tokens, lambda model: model.lm_head.output.save(), remote=True), NdifUnavailableError)
    assert "loaded from a folder" in message and "remote='local'" in message


def test_offline_hub_name_without_a_cached_copy(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(nnsight_models, "_cached_snapshot", lambda repo_id: None)
    message = one_line_error_within(2, lambda: load_nnsight_model("gpt2-small"), ModelUnavailableError)
    assert "offline" in message and "load_nnsight_model()" in message


def test_with_a_key_and_the_model_running_the_job_goes_to_ndif(monkeypatch, online_with_key):
    """What remote=True hands nnsight once every check passes (nnsight's model class replaced)."""
    monkeypatch.setattr(nnsight_models, "ndif_is_reachable", lambda timeout=1.0: True)
    monkeypatch.setattr(nnsight, "is_model_running", lambda repo_id, **kwargs: repo_id == "gpt2")
    built = {}

    class FakeModel:
        def __init__(self, repo_id, **kwargs):
            built.update(repo_id=repo_id, **kwargs)
            self.repo_id = repo_id
            self.config = type("Config", (), {"num_hidden_layers": 12, "hidden_size": 768})()

    monkeypatch.setattr(nnsight, "TransformersModel", FakeModel)
    model = load_nnsight_model("gpt2-small", remote=True, verbose=False)
    assert built == {"repo_id": "gpt2", "task": "text-generation"}  # no weights, no device: they stay on NDIF
    assert trace_options(model, remote=True) == {"remote": True}
    assert nnsight.CONFIG.API.APIKEY == "test-key-not-real"  # a key set after `import nnsight` still reaches it


def test_unknown_remote_value():
    with pytest.raises(ValueError, match="remote='yes'"):
        load_nnsight_model(remote="yes", verbose=False)


# ---------------------------------------------------------------------------------------------
# The hook table against the bridge


def every_mapped_name(n_layers: int, architecture: str = "gpt2") -> list[str]:
    names = []
    for point in HOOKS[architecture]:
        layers = range(n_layers) if "{layer}" in point.hook else [None]
        names += [point.hook.format(layer=layer) for layer in layers]
    return names


def test_every_mapped_name_matches_run_with_cache(lm, bridge, prompts):
    tokens, _ = tokenize(bridge, list(prompts))
    names = every_mapped_name(bridge.cfg.n_layers)
    _, cache = bridge.run_with_cache(tokens)
    got = run_trace(lm, tokens, lambda model: nnsight.save(read_activations(model, names)))
    for name in names:
        ours = to_bridge_convention(lm, name, got[name])
        if name == "hook_pos_embed":  # one row shared by the batch in transformers: [1 pos d_model]
            ours = ours.expand_as(cache[name])
        assert ours.shape == cache[name].shape, name
        assert torch.allclose(ours, cache[name], atol=1e-4), (name, (ours - cache[name]).abs().max())


@pytest.mark.parametrize("remote", [False, "local"])
def test_every_writable_hook_edits_like_a_bridge_hook(lm, bridge, prompts, remote):
    """Adding the same vector through write_activation and through a bridge hook: the same log-probs.

    Additions commute with the bridge's conventions (a constant over d_model is removed by the next
    LayerNorm), except after the final LayerNorm, whose weights nnsight's value still carries.
    """
    tokens, _ = tokenize(bridge, list(prompts))
    _, cache = bridge.run_with_cache(tokens)
    unedited = bridge(tokens).log_softmax(-1)
    torch.manual_seed(0)
    for point in HOOKS["gpt2"]:
        name = point.hook.format(layer=1)
        if not point.writable or name == "ln_final.hook_normalized":
            continue
        delta = torch.randn(cache[name].shape[2:])  # [d_model], [d_mlp] or [head_index d_head], added at every position

        def body(model, name=name, delta=delta):
            write_activation(model, name, read_activation(model, name) + delta)
            return model.lm_head.output.log_softmax(-1).save()

        got = run_trace(lm, tokens, body, remote=remote)
        expected = bridge.run_with_hooks(tokens, fwd_hooks=[(name, lambda value, hook: value + delta)])
        assert torch.allclose(got, expected.log_softmax(-1), atol=1e-4), name
        assert not torch.allclose(got, unedited, atol=1e-2), name  # the edit did something


def test_the_conventions_differ_where_the_table_says(lm, bridge, prompts):
    """The raw nnsight values are not the bridge's, except where the table says 'same'."""
    tokens, _ = tokenize(bridge, list(prompts))
    names = every_mapped_name(1)
    _, cache = bridge.run_with_cache(tokens)
    got = run_trace(lm, tokens, lambda model: nnsight.save(read_activations(model, names)))
    for point in HOOKS["gpt2"]:
        name = point.hook.format(layer=0)
        close = torch.allclose(got[name].expand_as(cache[name]), cache[name], atol=1e-4)
        assert close == (point.bridge == "same"), (name, point.bridge)


def test_reads_out_of_forward_order_fail_and_read_activations_sorts_them(lm):
    tokens = torch.tensor([[0, 5, 6, 7]])
    with pytest.raises(Exception, match="ran past"):
        with lm.trace(tokens):
            late = read_activation(lm, "blocks.1.hook_resid_post").save()
            early = read_activation(lm, "hook_embed").save()
    got = run_trace(lm, tokens, lambda model: nnsight.save(read_activations(model, ["blocks.1.hook_resid_post",
                                                                                    "hook_embed"])))
    assert list(got) == ["blocks.1.hook_resid_post", "hook_embed"]


def test_the_printed_table_reads_like_nnsight_code(lm):
    rows = dict((hook, access) for hook, access, _ in hook_table(lm, layer=1))
    assert rows["blocks.1.hook_resid_post"] == "transformer.h[1].output"
    assert rows["blocks.1.hook_attn_out"] == "transformer.h[1].attn.output[0]"
    assert rows["blocks.1.attn.hook_z"] == "transformer.h[1].attn.c_proj.input  (split into heads)"
    assert rows["hook_unembed"] == "lm_head.output"


def test_unknown_hooks_and_copies_are_refused(lm):
    with pytest.raises(ValueError, match="no nnsight path for hook 'blocks.0.hook_resid'"):
        read_activation(lm, "blocks.0.hook_resid")
    with pytest.raises(ValueError, match="layers 0 to 3"):
        read_activation(lm, "blocks.4.hook_resid_post")
    with pytest.raises(ValueError, match="copy of the residual stream"):
        write_activation(lm, "blocks.0.hook_resid_mid", torch.zeros(1))


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    """A two-layer Llama with random weights (norm weights too), saved with the organism's tokenizer."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.models import ORGANISM_DIR, quiet_transformers

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1125, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))  # not all ones: folding them must show
    folder = tmp_path_factory.mktemp("tiny_llama")
    with quiet_transformers():
        model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ORGANISM_DIR / name, folder)
    return str(folder)


def test_the_llama_table_matches_run_with_cache(tiny_llama_folder):
    """The Llama rows, on a random two-layer Llama: the bridge's cache, through to_bridge_convention."""
    bridge = load_model(tiny_llama_folder, device="cpu", verbose=False)
    model = load_nnsight_model(tiny_llama_folder, device="cpu", verbose=False)
    tokens = torch.tensor([[0, 5, 6, 7, 9], [0, 11, 12, 13, 14]])
    names = every_mapped_name(2, "llama")
    _, cache = bridge.run_with_cache(tokens)
    got = run_trace(model, tokens, lambda model: nnsight.save(read_activations(model, names)))
    for name in names:
        ours = to_bridge_convention(model, name, got[name])
        assert ours.shape == cache[name].shape, name
        assert torch.allclose(ours, cache[name], atol=1e-4), (name, (ours - cache[name]).abs().max())
    assert not torch.allclose(got["ln_final.hook_normalized"], cache["ln_final.hook_normalized"], atol=1e-2)


# ---------------------------------------------------------------------------------------------
# One experiment, written once, run here and through the rehearsal: the bridge's numbers


def residual_points(n_layers: int) -> list[str]:
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def nnsight_logit_lens(model, tokens: Int[Tensor, "batch pos"], last: Int[Tensor, "batch"],
                       remote: bool | str = False) -> Float[Tensor, "point batch d_vocab"]:
    """Log-probabilities the final LN and unembedding read at each residual point: [point, batch, d_vocab]."""
    names = residual_points(model.config.num_hidden_layers)
    rows = torch.arange(len(last))

    def body(model):
        resid = read_activations(model, names)
        at_last = torch.stack([resid[name][rows, last] for name in names])  # [point, batch, d_model]
        logits = model.lm_head(model.transformer.ln_f(at_last))
        return logits.log_softmax(-1).detach().cpu().save()

    return run_trace(model, tokens, body, remote=remote)


def nnsight_patching(model, clean: Int[Tensor, "1 pos"], corrupt: Int[Tensor, "1 pos"], answer: int, wrong: int,
                     remote: bool | str = False) -> Float[Tensor, "layer pos"]:
    """Logit difference after patching the clean resid_pre into the corrupt run, per layer and position.

    One forward pass: row 0 is the clean prompt, the other rows copies of the corrupt one, each
    with one (layer, position) patched from row 0. Returns [layer, pos].
    """
    n_layers, n_pos = model.config.num_hidden_layers, clean.shape[-1]
    cases = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    batch = torch.cat([clean, corrupt.expand(len(cases), -1)])  # [1 + layer*pos, pos]

    def body(model):
        for layer in range(n_layers):
            name = f"blocks.{layer}.hook_resid_pre"
            patched = read_activation(model, name).clone()
            for row, (at_layer, pos) in enumerate(cases, start=1):
                if at_layer == layer:
                    patched[row, pos] = patched[0, pos]
            write_activation(model, name, patched)
        final = model.lm_head.output[1:, -1]  # [case, d_vocab]
        return (final[:, answer] - final[:, wrong]).view(n_layers, n_pos).detach().cpu().save()

    return run_trace(model, batch, body, remote=remote)


@pytest.mark.parametrize("remote", [False, "local"])
def test_logit_lens_matches_the_bridge(lm, bridge, prompts, remote):
    tokens, last = tokenize(bridge, list(prompts))
    names = residual_points(bridge.cfg.n_layers)
    _, cache = bridge.run_with_cache(tokens)
    rows = torch.arange(len(last))
    resid = torch.stack([cache[name][rows, last] for name in names])
    expected = (bridge.ln_final(resid) @ bridge.W_U + bridge.b_U).log_softmax(-1)
    got = nnsight_logit_lens(lm, tokens, last, remote=remote)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def swapped_names_pair(bridge) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A clean IOI prompt, the same prompt with its two names swapped, and the clean answer's ids."""
    prompts = prompt_set("ioi", "test", n=1, seed=3)
    clean_text, io, s = prompts.prompts[0], prompts.correct[0].strip(), prompts.wrong[0].strip()
    corrupt_text = clean_text.replace(io, "\0").replace(s, io).replace("\0", s)
    clean, _ = tokenize(bridge, [clean_text])
    corrupt, _ = tokenize(bridge, [corrupt_text])
    assert clean.shape == corrupt.shape and not torch.equal(clean, corrupt)
    return clean, corrupt, bridge.to_single_token(prompts.correct[0]), bridge.to_single_token(prompts.wrong[0])


@pytest.mark.parametrize("remote", [False, "local"])
def test_activation_patching_matches_transformer_lens(lm, bridge, remote):
    from transformer_lens.patching import get_act_patch_resid_pre

    clean, corrupt, answer, wrong = swapped_names_pair(bridge)
    _, clean_cache = bridge.run_with_cache(clean)
    expected = get_act_patch_resid_pre(bridge, corrupt, clean_cache,
                                       lambda logits: logits[0, -1, answer] - logits[0, -1, wrong])
    got = nnsight_patching(lm, clean, corrupt, answer, wrong, remote=remote)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()
    assert expected.std() > 0.1  # the patches move the metric: the comparison is not of constants


# ---------------------------------------------------------------------------------------------
# The remote contract, shown by the rehearsal (remote="local")


def test_only_saved_values_come_back(lm):
    """In nnsight 0.8 this holds here too: a trace hands back saved values only, wherever it runs."""
    tokens = torch.tensor([[0, 5, 6, 7]])
    for options in ({}, {"remote": "local"}, trace_options(lm, "local")):
        with lm.trace(tokens, **options):
            doubled = lm.transformer.h[0].output * 2
            kept = (lm.transformer.h[0].output * 3).save()
        assert "doubled" not in locals() and isinstance(kept, torch.Tensor), options
        del kept
    with pytest.raises(ValueError, match="call .save"):
        run_trace(lm, tokens, lambda model: model.lm_head.output * 1, remote="local")


def test_a_list_appended_outside_the_trace_stays_empty(lm):
    """On NDIF the block runs on copies; nnsight's own remote='local' runs it on yours, and fills the list."""
    tokens = torch.tensor([[0, 5, 6, 7]])
    filled = {}
    for where, options in [("here", {}), ("nnsight's remote='local'", {"remote": "local"}),
                           ("rehearsal", trace_options(lm, "local"))]:
        outside = []
        with lm.trace(tokens, **options):
            outside.append(lm.transformer.h[0].output.save())
            inside = nnsight.save([])
            inside.append(lm.transformer.h[1].output)
        filled[where] = (len(outside), len(inside))
    assert filled == {"here": (1, 1), "nnsight's remote='local'": (1, 1), "rehearsal": (0, 1)}


def test_a_saved_slice_ships_the_whole_tensor_unless_copied(lm):
    """Saving a view sends everything it views; `.cpu()` on the server's GPU (`.clone()` here) sends the slice."""
    tokens = torch.tensor([[0, *range(5, 45)]])
    sizes = {}
    for how in ("view", "copy"):
        options = trace_options(lm, "local")
        with lm.trace(tokens, **options):
            last = lm.transformer.h[0].output[:, -1]
            last = (last if how == "view" else last.detach().clone()).save()
        sizes[how] = options["backend"].result_bytes
        assert last.shape == (1, 256) and last.device.type == "cpu"
    assert sizes["view"] > 10 * sizes["copy"], sizes


def test_workbook_helpers_travel_with_the_request(lm):
    """read_activation lives in this project, not on the server: the rehearsal ships it by value, as NDIF does."""
    tokens = torch.tensor([[0, 5, 6, 7]])
    here = run_trace(lm, tokens, lambda model: read_activation(model, "blocks.2.hook_mlp_out").save())
    rehearsed = run_trace(lm, tokens, lambda model: read_activation(model, "blocks.2.hook_mlp_out").save(),
                          remote="local")
    assert torch.equal(here, rehearsed)


def test_invokes_with_a_barrier_and_sessions_rehearse_too(lm):
    """Two prompts in one trace (a barrier between the invokes) and two traces in one session: same numbers."""
    clean, corrupt = torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 8, 6, 7]])
    results = {}
    for where in (False, "local"):
        with lm.trace(**trace_options(lm, where)) as tracer:
            barrier = tracer.barrier(2)
            with tracer.invoke(clean):
                clean_resid = read_activation(lm, "blocks.1.hook_resid_pre")
                barrier()
            with tracer.invoke(corrupt):
                barrier()
                write_activation(lm, "blocks.1.hook_resid_pre", clean_resid)
                invoked = lm.lm_head.output.save()
        with lm.session(**trace_options(lm, where)):
            with lm.trace(clean):
                clean_resid = read_activation(lm, "blocks.1.hook_resid_pre")
            with lm.trace(corrupt):
                write_activation(lm, "blocks.1.hook_resid_pre", clean_resid)
                in_session = lm.lm_head.output.save()
        results[where] = (invoked, in_session)
    unpatched = run_trace(lm, clean, lambda model: model.lm_head.output.save())
    for invoked, in_session in results.values():
        assert torch.allclose(invoked, unpatched, atol=1e-5) and torch.allclose(in_session, unpatched, atol=1e-5)


def test_a_helper_module_added_later_must_be_registered(lm, tmp_path, monkeypatch):
    """nnsight ships this project's modules by value, scanning for them once per process, at the
    first remote request; a helper module that appears later is missing on the server until
    `nnsight.register(module)`."""
    import importlib

    import cloudpickle
    from nnsight.ndif import pull_env

    pull_env()  # the once-per-process scan has happened (it may have already)
    (tmp_path / "later_helpers.py").write_text("def last_position(model):\n"
                                               "    return model.transformer.h[0].output[:, -1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "later_helpers", raising=False)
    helpers = importlib.import_module("later_helpers")
    tokens = torch.tensor([[0, 5, 6, 7]])
    here = run_trace(lm, tokens, lambda model: helpers.last_position(model).save())
    with pytest.raises(ModuleNotFoundError, match="later_helpers"):
        run_trace(lm, tokens, lambda model: helpers.last_position(model).save(), remote="local")
    nnsight.register(helpers)
    try:
        rehearsed = run_trace(lm, tokens, lambda model: helpers.last_position(model).save(), remote="local")
    finally:
        cloudpickle.unregister_pickle_by_value(helpers)
    assert torch.equal(here, rehearsed)
