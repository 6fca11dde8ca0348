"""Chapter 09's claims re-measured: the nnsight versions give TransformerLens's numbers on the organism,
here and in the rehearsal of a remote run; what the text says about the organism, the remote contract
and nnsight 0.8.1's traps; the same functions on a Llama; the NDIF cell's offline error paths.

Nothing here reaches the network. The cross-checks use Chapter 06's and Chapter 07's references
on the bridge (TransformerLens hooks).
"""

from __future__ import annotations

import shutil
import socket
import time

import nnsight
import pytest
import torch

from tests.claims import claim, claim_seed
from utils import nnsight_models
from utils.models import ORGANISM_DIR, ModelUnavailableError, load_model, quiet_transformers
from utils.nnsight_models import (NdifUnavailableError, RehearsalBackend, load_nnsight_model, read_activation,
                                  trace_options, write_activation)
from utils.organism.world import prompt_set
from utils.references import ch03_logit_lens as ch03
from utils.references import ch06_patching as ch06
from utils.references import ch07_steering as ch07
from utils.references import ch09_scaling_up as ref
from utils.references.ch02_probing import answer_ids, tokenize

WHERE = [False, "local"]
SEED = claim_seed()  # added to the seed of every prompt sample a claim depends on


@pytest.fixture(scope="module")
def lm():
    return load_nnsight_model(device="cpu", verbose=False)


@pytest.fixture(scope="module")
def bridge():
    model = load_model(device="cpu", verbose=False)
    torch.set_grad_enabled(False)
    yield model
    torch.set_grad_enabled(True)


# ---------------------------------------------------------------------------------------------
# Section 2-3: tokens and the logit lens


def test_nnsight_tokenize_gives_chapter_02s_ids(lm, bridge):
    texts = prompt_set("ioi", "test", n=16, seed=0).prompts
    tokens, last = ref.nnsight_tokenize(lm, texts)
    expected_tokens, expected_last = tokenize(bridge, texts)
    assert torch.equal(tokens, expected_tokens) and torch.equal(last, expected_last)
    assert len(set(last.tolist())) > 1  # the prompts really are of different lengths


@pytest.mark.parametrize("remote", WHERE)
def test_logit_lens_matches_chapter_03(lm, bridge, remote):
    prompts = prompt_set("ioi", "test", n=64, seed=0)
    tokens, last = ref.nnsight_tokenize(lm, prompts.prompts)
    got = ref.nnsight_logit_lens(lm, tokens, last, remote=remote)
    expected = ch03.logit_lens(bridge, *tokenize(bridge, prompts.prompts)).log_softmax(-1)
    assert got.shape == expected.shape and got.device.type == "cpu"
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_the_ioi_answer_is_top1_only_after_the_last_block(lm, bridge):
    """'the lens finds the right name top-1 only after the last block'."""
    prompts = prompt_set("ioi", "test", n=64, seed=SEED)
    lens = ref.nnsight_logit_lens(lm, *ref.nnsight_tokenize(lm, prompts.prompts))
    top1 = (ch03.answer_rank(lens, answer_ids(bridge, prompts.correct)) == 0).float().mean(-1)  # [point]
    claim("ch09: IOI answer top-1 after the last block (majority)", top1[-1].item(), above=0.5)
    claim("ch09: IOI answer top-1 at no earlier point (largest share)", top1[:-1].max().item(), below=0.5)


# ---------------------------------------------------------------------------------------------
# Section 4: the remote contract


def test_the_list_made_outside_stays_empty_remotely_and_unsaved_names_vanish(lm):
    tokens, _ = ref.nnsight_tokenize(lm, prompt_set("ioi", "test", n=2, seed=6).prompts)
    for n_layers in (1, 3):
        here = ref.remote_contract_demo(lm, tokens, n_layers, remote=False)
        remote = ref.remote_contract_demo(lm, tokens, n_layers, remote="local")
        assert here == {"outside": n_layers, "inside": n_layers, "hidden": False, "kept": True}
        assert remote == {"outside": 0, "inside": n_layers, "hidden": False, "kept": True}
        assert ref.what_comes_back(n_layers) == remote


def test_a_saved_view_sends_the_whole_output_and_a_copy_only_itself(lm):
    tokens, _ = ref.nnsight_tokenize(lm, prompt_set("ioi", "test", n=64, seed=0).prompts)
    sizes = {}
    for how in ("view", "copy"):
        with lm.trace(tokens, **trace_options(lm, "local")):
            third = read_activation(lm, "blocks.1.hook_resid_post")[:, 3]
            third = (third if how == "view" else third.detach().cpu().clone()).save()
        sizes[how] = RehearsalBackend.last_result_bytes
    values = third.numel() * third.element_size()
    assert sizes["view"] > tokens.shape[1] * values * 0.9  # the whole [batch, pos, d_model] output
    assert values <= sizes["copy"] < values + 4096
    assert ref.resid_at(lm, tokens, 3, 1, remote="local").shape == third.shape
    assert RehearsalBackend.last_result_bytes < values + 4096


def test_workbook_functions_travel_by_value(lm):
    """The workbook counts as installed after `pip install -e .`: it must be registered, or NDIF lacks it."""
    from cloudpickle.cloudpickle import _should_pickle_by_reference

    trace_options(lm, "local")
    assert not _should_pickle_by_reference(ref.final_norm)
    assert not _should_pickle_by_reference(nnsight_models.read_activation)


def test_rehearsals_can_follow_each_other(lm):
    """Rebuilding a request rewrote our files' cached source lines; the second request then failed."""
    tokens, last = ref.nnsight_tokenize(lm, prompt_set("facts", "test", n=3, seed=0).prompts)
    first = ref.nnsight_logit_lens(lm, tokens, last, remote="local")
    second = ref.nnsight_logit_lens(lm, tokens, last, remote="local")
    vector = torch.ones(lm.config.hidden_size)
    ref.steer(lm, tokens, last, vector, 1, 1.0, remote="local")
    assert torch.equal(first, second)


# ---------------------------------------------------------------------------------------------
# Section 5: nnsight 0.8.1's traps around sessions and invokes, as the text states them

TINY = torch.tensor([[0, 5, 6, 7]])


def session_with_a_statement_on_two_lines(lm, remote):
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(TINY):
            resid = {layer: read_activation(lm, f"blocks.{layer}.hook_resid_pre")
                     for layer in range(2)}
        rows = nnsight.save([])
        for layer in range(2):
            with lm.trace(TINY):
                rows.append(read_activation(lm, f"blocks.{layer}.hook_resid_pre") + resid[layer])
    return rows


def session_with_one_line_per_statement(lm, remote):
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(TINY):
            resid = {layer: read_activation(lm, f"blocks.{layer}.hook_resid_pre") for layer in range(2)}
        rows = nnsight.save([])
        for layer in range(2):
            with lm.trace(TINY):
                rows.append(read_activation(lm, f"blocks.{layer}.hook_resid_pre") + resid[layer])  # a comment here is fine
    return rows


def session_with_a_comment_line_in_a_trace(lm, remote):
    with lm.session(**trace_options(lm, remote)):
        with lm.trace(TINY):
            # a comment on its own line
            resid = read_activation(lm, "blocks.1.hook_resid_pre")
        with lm.trace(TINY):
            out = (lm.transformer.h[1].output + resid).save()
    return out


def test_a_remote_session_wants_one_line_per_statement(lm):
    from nnsight.tracing.tracer import WithBlockNotFoundError

    here = session_with_a_statement_on_two_lines(lm, False)
    assert torch.equal(torch.stack(list(here)), torch.stack(list(session_with_one_line_per_statement(lm, "local"))))
    session_with_a_comment_line_in_a_trace(lm, False)
    with pytest.raises(WithBlockNotFoundError):
        session_with_a_statement_on_two_lines(lm, "local")
    with pytest.raises(Exception, match="outside of interleaving"):
        session_with_a_comment_line_in_a_trace(lm, "local")


def patch_whole_layer(lm, clean, corrupt, layer: int):
    """Inside a trace: resid_pre of `layer` put back whole from clean into corrupt, two invokes and a barrier."""
    name = f"blocks.{layer}.hook_resid_pre"
    with lm.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke(clean):
            clean_resid = read_activation(lm, name)
            barrier()
        with tracer.invoke(corrupt):
            barrier()
            write_activation(lm, name, clean_resid)
            row = lm.lm_head.output[0, -1].save()
    return row


def invokes_per_layer(lm, clean, corrupt, layers, in_session: bool):
    """One such trace per layer: each its own run, or all inside one session."""
    if not in_session:
        return torch.stack([patch_whole_layer(lm, clean, corrupt, layer) for layer in layers])
    with lm.session():
        rows = nnsight.save([])
        for layer in layers:
            name = f"blocks.{layer}.hook_resid_pre"
            with lm.trace() as tracer:
                barrier = tracer.barrier(2)
                with tracer.invoke(clean):
                    clean_resid = read_activation(lm, name)
                    barrier()
                with tracer.invoke(corrupt):
                    barrier()
                    write_activation(lm, name, clean_resid)
                    rows.append(lm.lm_head.output[0, -1])
    return torch.stack(list(rows))


def test_barriers_repeated_inside_a_session_give_wrong_numbers_from_the_second_trace_on(lm, bridge):
    clean, corrupt, _, _ = ref.swapped_names(lm, prompt_set("ioi", "test", n=4, seed=5), 0)
    layers = [0, 1, 2, 3]
    apart = invokes_per_layer(lm, clean, corrupt, layers, in_session=False)
    _, clean_cache = bridge.run_with_cache(clean)
    expected = torch.stack([bridge.run_with_hooks(corrupt, fwd_hooks=[(
        f"blocks.{layer}.hook_resid_pre", lambda value, hook: clean_cache[hook.name])])[0, -1] for layer in layers])
    assert torch.allclose(apart.log_softmax(-1), expected.log_softmax(-1), atol=1e-4)
    together = invokes_per_layer(lm, clean, corrupt, layers, in_session=True)
    gaps = (together.log_softmax(-1) - apart.log_softmax(-1)).abs().amax(-1)  # [layer]
    assert gaps[0] < 1e-4 and (gaps[1:] > 1e-2).all(), gaps


def test_without_a_barrier_a_value_used_before_the_model_is_a_name_error(lm):
    clean, corrupt = TINY, torch.tensor([[0, 8, 6, 7]])
    with pytest.raises(NameError):
        with lm.trace() as tracer:
            with tracer.invoke(clean):
                clean_resid = read_activation(lm, "blocks.1.hook_resid_pre")
            with tracer.invoke(corrupt):
                write_activation(lm, "blocks.1.hook_resid_pre", clean_resid)
                out = lm.lm_head.output.save()  # noqa: F841


# ---------------------------------------------------------------------------------------------
# Section 5: activation patching, against a TransformerLens hook sweep


def bridge_sweep(bridge, clean, corrupt, answer: int, wrong: int, layers) -> torch.Tensor:
    """Chapter 06's patch_residual on the bridge (every layer), the rows of `layers`: [layer, pos]."""
    every = ch06.patch_residual(bridge, corrupt, clean, metric=lambda logits: logits[0, -1, answer] - logits[0, -1, wrong])
    return every[list(layers)].cpu()


@pytest.mark.parametrize("remote", WHERE)
@pytest.mark.parametrize("seed, index, layers", [(3, 0, None), (5, 1, [3, 1])])
def test_patching_matches_transformer_lens(lm, bridge, remote, seed, index, layers):
    clean, corrupt, answer, wrong = ref.swapped_names(lm, prompt_set("ioi", "test", n=4, seed=seed), index)
    got = ref.patching_sweep(lm, clean, corrupt, answer, wrong, layers=layers, remote=remote)
    expected = bridge_sweep(bridge, clean, corrupt, answer, wrong, layers or range(bridge.cfg.n_layers))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()
    assert expected.std() > 1  # the patches move the metric: not a comparison of constants


def test_what_the_text_says_about_the_sweep(lm):
    """Row 0 moves only at the name tokens; deeper, the later name matters less and the last position more."""
    pair = prompt_set("ioi", "test", n=8, seed=3 + SEED)
    for index in range(len(pair)):  # the first prompt whose two names have the same token length
        try:
            clean, corrupt, answer, wrong = ref.swapped_names(lm, pair, index)
            break
        except ValueError:
            continue
    sweep = ref.patching_sweep(lm, clean, corrupt, answer, wrong)
    with lm.trace(torch.cat([clean, corrupt])):
        final = lm.lm_head.output[:, -1].save()
    clean_diff, corrupt_diff = (final[:, answer] - final[:, wrong]).tolist()
    claim("ch09: the clean run prefers its answer (logit difference)", clean_diff, above=0)
    claim("ch09: the corrupt run prefers the other name (logit difference)", corrupt_diff, below=0)
    effect = sweep - corrupt_diff
    names = (clean != corrupt)[0]
    claim("ch09: row 0 moves nowhere but the names (largest effect elsewhere)", effect[0, ~names].abs().max().item(),
          below=1e-3)
    claim("ch09: row 0 moves at the names (smallest effect there)", effect[0, names].abs().min().item(), above=1)
    later_name = int(names.nonzero().max())
    total = clean_diff - corrupt_diff  # what patching everything would bring back
    claim("ch09: deeper, the later name matters less (share of the clean-corrupt gap)",
          (effect[0, later_name] - effect[-1, later_name]).item() / total, above=0.05)
    claim("ch09: deeper, the last position matters more (share of the clean-corrupt gap)",
          (effect[-1, -1] - effect[0, -1]).item() / total, above=0.05)


# ---------------------------------------------------------------------------------------------
# Section 6: steering, against a bridge hook


def steering_setup(lm):
    train = prompt_set("sentiment", "train", n=64, seed=0)
    positive = torch.tensor(train.labels["sentiment"]) == 1
    tokens, last = ref.nnsight_tokenize(lm, train.prompts)
    return train, positive, tokens, last


@pytest.mark.parametrize("remote", WHERE)
def test_the_vector_is_the_bridges_up_to_a_constant_and_steers_alike(lm, bridge, remote):
    train, positive, tokens, last = steering_setup(lm)
    layer = 2
    vector = ref.steering_vector(lm, tokens[positive], last[positive], tokens[~positive], last[~positive], layer,
                                 remote=remote)
    bridge_vector = ch07.mean_difference_vector(bridge, train, f"blocks.{layer}.hook_resid_pre", "sentiment")
    assert torch.allclose(vector - vector.mean(), bridge_vector, atol=1e-3)  # the bridge's stream is centred
    assert vector.mean().abs() > 1e-2  # the constant is really there

    held_out = prompt_set("sentiment", "test", n=16, seed=1)
    test_tokens, test_last = ref.nnsight_tokenize(lm, held_out.prompts)
    got = ref.steer(lm, test_tokens, test_last, vector, layer, 1.5, remote=remote)
    plain_addition = (f"blocks.{layer}.hook_resid_pre", lambda value, hook: value + 1.5 * bridge_vector)
    expected = ch07.last_logits(bridge, held_out, fwd_hooks=[plain_addition]).log_softmax(-1)
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()


def test_what_the_text_says_about_steering(lm, bridge):
    """The vector turns the held-out negative reviews, and costs some of the held-out facts."""
    train = prompt_set("sentiment", "train", n=64, seed=SEED)
    positive = torch.tensor(train.labels["sentiment"]) == 1
    tokens, last = ref.nnsight_tokenize(lm, train.prompts)
    vector = ref.steering_vector(lm, tokens[positive], last[positive], tokens[~positive], last[~positive], 2)
    held_out = prompt_set("sentiment", "test", n=64, seed=1 + SEED)
    negative = [text for text, label in zip(held_out.prompts, held_out.labels["sentiment"]) if label == 0]
    negative_tokens, negative_last = ref.nnsight_tokenize(lm, negative)
    loved, hated = ref.first_token(lm, " loved"), ref.first_token(lm, " hated")
    turned = {coefficient: (lambda lp: (lp[:, loved] > lp[:, hated]).float().mean().item())(
        ref.steer(lm, negative_tokens, negative_last, vector, 2, coefficient)) for coefficient in (0.0, 1.0)}
    claim("ch09: negative reviews with ' loved' above ' hated' before steering", turned[0.0], below=0.1)
    claim("ch09: ... and after steering with coefficient 1", turned[1.0], above=0.9)
    facts = prompt_set("facts", "test", n=64, seed=SEED)
    facts_tokens, facts_last = ref.nnsight_tokenize(lm, facts.prompts)
    correct = answer_ids(bridge, facts.correct)
    top1 = {coefficient: (ch03.answer_rank(ref.steer(lm, facts_tokens, facts_last, vector, 2, coefficient), correct)
                          == 0).float().mean().item() for coefficient in (0.0, 1.0)}
    claim("ch09: steering costs some facts (top-1 lost)", top1[0.0] - top1[1.0], above=0.05)
    claim("ch09: ... not most of them (top-1 kept)", top1[1.0], above=0.3)


# ---------------------------------------------------------------------------------------------
# Section 7: the same functions on a Llama (the architecture NDIF hosts), offline


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A two-layer Llama with random weights, saved with the organism's tokenizer, loaded for nnsight."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1125, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0)
    folder = tmp_path_factory.mktemp("tiny_llama")
    with quiet_transformers():
        LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ORGANISM_DIR / name, folder)
    return str(folder), load_nnsight_model(str(folder), device="cpu", verbose=False)


@pytest.mark.parametrize("remote", WHERE)
def test_the_chapter_functions_run_unchanged_on_a_llama(tiny_llama, remote):
    folder, llama = tiny_llama
    assert llama.config.model_type == "llama"
    ioi = prompt_set("ioi", "test", n=4, seed=3)
    tokens, last = ref.nnsight_tokenize(llama, ioi.prompts)
    lens = ref.nnsight_logit_lens(llama, tokens, last, remote=remote)
    llama_bridge = load_model(folder, device="cpu", verbose=False)
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    _, cache = llama_bridge.run_with_cache(tokens)
    resid = torch.stack([cache[name][torch.arange(len(last)), last] for name in names])
    expected = (llama_bridge.ln_final(resid) @ llama_bridge.W_U + llama_bridge.b_U).log_softmax(-1)
    assert torch.allclose(lens, expected, atol=1e-4)

    clean, corrupt, answer, wrong = ref.swapped_names(llama, ioi, 0)
    sweep = ref.patching_sweep(llama, clean, corrupt, answer, wrong, layers=[1], remote=remote)
    assert torch.allclose(sweep, bridge_sweep(llama_bridge, clean, corrupt, answer, wrong, [1]), atol=1e-3)
    half = len(last) // 2
    vector = ref.steering_vector(llama, tokens[:half], last[:half], tokens[half:], last[half:], 1, remote=remote)
    steered = ref.steer(llama, tokens, last, vector, 1, 2.0, remote=remote)
    assert vector.shape == (64,) and steered.shape == (len(last), 1125)
    assert ref.resid_at(llama, tokens, 2, 0, remote=remote).shape == (len(last), 64)


# ---------------------------------------------------------------------------------------------
# Section 7: the NDIF cell offline, one line within 2 seconds


@pytest.fixture
def no_network(monkeypatch):
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(f"test: no network for {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


def one_line_within(seconds: float, function) -> str:
    start = time.perf_counter()
    with pytest.raises((ModelUnavailableError, ValueError)) as raised:  # what the chapter's cell catches
        function()
    assert time.perf_counter() - start < seconds
    message = str(raised.value)
    assert message and "\n" not in message
    return message


def test_the_ndif_cell_offline(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline" in one_line_within(2, lambda: load_nnsight_model(ref.NDIF_MODEL, remote=True))


def test_the_ndif_cell_without_a_key(monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    message = one_line_within(2, lambda: load_nnsight_model(ref.NDIF_MODEL, remote=True))
    assert "login.ndif.us" in message and "NDIF_API_KEY" in message


def test_the_ndif_cell_without_a_network(monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    assert "not reachable" in one_line_within(2, lambda: load_nnsight_model(ref.NDIF_MODEL, remote=True))


def test_the_ndif_cell_with_a_model_ndif_is_not_running(monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", nnsight.CONFIG.API.APIKEY)
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", nnsight.CONFIG.API.HOST)
    monkeypatch.setattr(nnsight_models, "hub_is_reachable", lambda timeout=1.0: True)
    monkeypatch.setattr(nnsight_models, "ndif_is_reachable", lambda timeout=1.0: True)
    monkeypatch.setattr(nnsight, "is_model_running", lambda repo_id, **kwargs: False)
    message = one_line_within(2, lambda: load_nnsight_model(ref.NDIF_MODEL, remote=True))
    assert f"not running {ref.NDIF_MODEL!r}" in message and "nnsight.status()" in message


def test_the_ndif_cell_with_an_unknown_model_name(no_network):
    message = one_line_within(2, lambda: load_nnsight_model("llama-3.1-70b-typo", remote=True))
    assert "unknown model name" in message
    assert isinstance(pytest.raises(NdifUnavailableError, load_nnsight_model, remote=True).value,
                      ModelUnavailableError)  # the organism exists only here: the cell's except catches it too


def chapter_cell(marker: str) -> str:
    """The source of the chapter's code cell that contains `marker`."""
    source = (ORGANISM_DIR.parents[2] / "solutions" / "09_scaling_up.py").read_text()
    cells = [cell.split("\n", 1)[1] for cell in source.split("\n# %%")[1:] if not cell.startswith(" [markdown]")]
    return next(cell for cell in cells if marker in cell)


def test_the_ndif_cell_runs_against_a_stand_in(tmp_path, monkeypatch, capsys):
    """The online branch, with a random four-layer Llama in NDIF's place and remote=True rehearsed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1125, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0)
    with quiet_transformers():
        LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ORGANISM_DIR / name, tmp_path)
    stand_in = load_nnsight_model(str(tmp_path), device="cpu", verbose=False)
    real_options = ref.trace_options
    monkeypatch.setattr(ref, "trace_options", lambda lm, remote=False: real_options(lm, "local" if remote is True
                                                                                     else remote))
    train = prompt_set("sentiment", "train", n=16, seed=0)
    held_out = prompt_set("sentiment", "test", n=16, seed=1)
    namespace = {**vars(ref), "torch": torch, "prompt_set": prompt_set, "answer_rank": ch03.answer_rank,
                 "load_nnsight_model": lambda name, remote=False: stand_in, "train": train,
                 "is_positive": torch.tensor(train.labels["sentiment"]) == 1,
                 "negative": [text for text, label in zip(held_out.prompts, held_out.labels["sentiment"]) if not label]}
    exec(chapter_cell("big = load_nnsight_model(NDIF_MODEL, remote=True)"), namespace)  # noqa: S102 - our chapter
    printed = capsys.readouterr().out
    assert "logit lens: [5, 2, 1125]" in printed and "patching sweep at layers [0, 1, 2, 3]: [4, " in printed
    assert "steering vector at layer 2: [64]" in printed and "skipped" not in printed


# ---------------------------------------------------------------------------------------------
# A model spread over two devices (what NDIF does with a model too large for one GPU)


def _to_device_of(module: torch.nn.Module):
    """A forward pre-hook moving every tensor argument to the module's device, as accelerate's device_map does."""
    device = next(module.parameters()).device

    def move(value):
        return value.to(device) if isinstance(value, torch.Tensor) else value

    def hook(_, args, kwargs):
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def split_over_two_devices(second: str):
    """The organism for nnsight with blocks 0-1 (and the embeddings) on the CPU and blocks 2-3, the final norm
    and the unembedding on `second`: "cuda" where a GPU is lent, else "meta" (a device without data, on which
    every operation still checks that its tensors share a device)."""
    lm = load_nnsight_model(device="cpu", verbose=False)
    hf = lm._module
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone())  # untie from the embeddings
    for module in (*hf.transformer.h[2:], hf.transformer.ln_f, hf.lm_head):
        module.to(second)
        _to_device_of(module)
    return lm


def _runs_or_only_copies_out_of_meta(function):
    """Run `function`; on a meta model the only error allowed is the last copy to the CPU, which has no data."""
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - inspected below
        chain, cause = [], error
        while cause is not None:
            chain.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__ or cause.__context__
        if any("Cannot copy out of meta tensor" in text for text in chain):
            return None
        raise


NO_GPU = "no CUDA device here: the cpu/meta split stands in for it (every device check, no numbers); run this on a GPU"


@pytest.fixture(scope="module", params=["meta", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason=NO_GPU))])
def split_lm(request):
    """The organism over the CPU and a second device: "meta" everywhere (no data, every device check), "cuda"
    where a GPU is lent (real numbers, compared with one device)."""
    return split_over_two_devices(request.param)


def second_device(split_lm) -> str:
    return next(split_lm._module.lm_head.parameters()).device.type


def test_the_split_model_really_is_on_two_devices(split_lm):
    hf = split_lm._module
    devices = {str(next(block.parameters()).device.type) for block in hf.transformer.h}
    assert devices == {"cpu", second_device(split_lm)}, devices
    tokens, last = ref.nnsight_tokenize(split_lm, prompt_set("sentiment", "test", n=4, seed=0).prompts)
    assert tokens.device.type == "cpu"  # tokens stay on the CPU, as for a remote model

    def device_naive_steer():  # the chapter's old rule: the push on the tokens' device
        with split_lm.trace(tokens):
            value = read_activation(split_lm, "blocks.3.hook_resid_pre")
            write_activation(split_lm, "blocks.3.hook_resid_pre", value + torch.ones(value.shape[-1]))
            out = split_lm.lm_head.output.detach().cpu().save()
        return out

    with pytest.raises(Exception) as raised:  # the test can fail: mixing devices is refused
        device_naive_steer()
    assert "device" in str(raised.value) and "meta tensor" not in str(raised.value), raised.value


def _helpers_module():
    """A helper module like the chapter's `my_helpers`, reading an activation on the second device."""
    import sys
    import types

    helpers = types.ModuleType("split_model_helpers")
    exec("def summary(lm):\n    return lm.transformer.h[3].output[:, -1]\n", helpers.__dict__)  # noqa: S102
    sys.modules[helpers.__name__] = helpers
    return helpers


def _bridge_convention_body(model):
    """Reads on both devices, in forward order, through `read_activations`; each value put in the bridge's
    convention (a bias from each layer's own device) and moved to one device before they meet."""
    from utils.nnsight_models import read_activations, to_bridge_convention

    names = ["blocks.0.hook_resid_post", "blocks.2.attn.hook_z", "ln_final.hook_normalized"]
    values = {name: to_bridge_convention(model, name, value) for name, value in read_activations(model, names).items()}
    total = values["ln_final.hook_normalized"][:, -1]  # [batch, d_model] on the second device
    for name in names[:2]:
        total = total + values[name][:, -1].reshape(total.shape).to(total.device)
    return total.detach().cpu().save()


@pytest.mark.parametrize("remote", WHERE)
def test_the_chapter_functions_run_on_a_model_split_over_two_devices(split_lm, lm, remote):
    """Every function of the chapter and of utils/nnsight_models.py that runs a trace moves each value to the
    device of the activation it meets, here and in the rehearsal of a remote run."""
    from utils.nnsight_models import run_trace

    texts = prompt_set("sentiment", "test", n=6, seed=1)
    tokens, last = ref.nnsight_tokenize(split_lm, texts.prompts)
    vector = torch.randn(split_lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    pair = prompt_set("ioi", "test", n=4, seed=3)
    clean, corrupt, answer, wrong = ref.swapped_names(split_lm, pair, 0)
    assert ref.first_token(split_lm, " Mary") == ref.first_token(lm, " Mary")
    calls = {
        "logit lens": lambda model: ref.nnsight_logit_lens(model, tokens, last, remote=remote),
        "steer before block 2": lambda model: ref.steer(model, tokens, last, vector, 2, 1.0, remote=remote),
        "steer before block 0": lambda model: ref.steer(model, tokens, last, vector, 0, 1.0, remote=remote),
        "steering vector": lambda model: ref.steering_vector(model, tokens[:3], last[:3], tokens[3:], last[3:], 3,
                                                             remote=remote),
        "patching sweep": lambda model: ref.patching_sweep(model, clean, corrupt, answer, wrong, layers=[1, 3],
                                                           remote=remote),
        "resid_at": lambda model: ref.resid_at(model, tokens, 2, 3, remote=remote),
        "run_helper": lambda model: ref.run_helper(model, tokens, _helpers_module(), remote=remote),
        "read_activations, to_bridge_convention, run_trace": lambda model: run_trace(
            model, tokens, _bridge_convention_body, remote=remote),
    }
    results = {name: _runs_or_only_copies_out_of_meta(lambda: call(split_lm)) for name, call in calls.items()}
    contract = ref.remote_contract_demo(split_lm, tokens, n_layers=4, remote="local")
    assert contract == ref.what_comes_back(4), contract
    if second_device(split_lm) == "cuda":  # real numbers: the same as on one device
        for name, call in calls.items():
            expected = call(lm)
            assert torch.allclose(results[name], expected, atol=1e-3), name


def test_the_closing_synthesis_names_each_limit_with_a_chapter_that_exists():
    """Every limit in the closing table points to at least one chapter of the workbook, streetlight included."""
    import re

    solutions = ORGANISM_DIR.parents[2] / "solutions"
    source = (solutions / "09_scaling_up.py").read_text()
    section = source[source.index("## The limits of interpretability, gathered"):]
    rows = [line for line in section.splitlines() if line.startswith("# | **")]
    chapters = {path.stem[:2] for path in solutions.glob("[0-9][0-9]_*.py")}
    assert len(rows) >= 10, rows
    assert any("streetlight" in row for row in rows)
    for row in rows:
        where = row.rstrip(" |").rsplit(" | ", 1)[-1]
        named = set(re.findall(r"\b(0\d|10)\b", where))
        assert named and named <= chapters | {"09"}, (row, named)
