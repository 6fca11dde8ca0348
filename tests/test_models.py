"""load_model, devices and offline behaviour, and the bridge against plain transformers."""

from __future__ import annotations

import threading

import pytest
import torch

from utils import models
from utils.models import ModelUnavailableError, frozen_weights, load_model, resolve_device

# Hook names the chapters rely on; TransformerLens renaming any of them must fail here first.
PINNED_HOOKS = [
    "hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out",
    "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_mid",
    "blocks.3.hook_resid_post", "ln_final.hook_normalized",
]


@pytest.fixture(scope="module")
def organism():
    return load_model(device="cpu", verbose=False)


def test_organism_loads_with_classic_hook_names(organism):
    _, cache = organism.run_with_cache("The capital of France is")
    missing = [name for name in PINNED_HOOKS if name not in cache]
    assert not missing, f"hooks missing from the cache: {missing}"
    assert organism.cfg.n_layers == 4 and organism.cfg.d_model == 256


def test_loading_draws_no_weight_loading_bar_and_leaves_transformers_bars_on(capsys):
    from transformers.utils import logging as transformers_logging

    load_model(device="cpu", verbose=False)
    assert "Loading weights" not in capsys.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()


def test_loading_says_what_it_loads_before_the_wait_and_ends_the_line(capsys, tmp_path, monkeypatch):
    """The wait (TransformerLens's import, the weights) shows a started line, finished on success or failure."""
    load_model(device="cpu")
    said = capsys.readouterr().out
    assert said.startswith("loading the workbook organism on cpu ... done in ") and "4 layers, d_model 256" in said

    (tmp_path / "config.json").write_text("{}")  # a folder that looks like a model and is not one
    with pytest.raises(Exception):
        load_model(str(tmp_path), device="cpu")
    assert capsys.readouterr().out.endswith(" failed\n")


def test_bridge_matches_plain_transformers(organism):
    """Compatibility mode folds layer norms and centres the unembedding: log-probs must not change."""
    from transformers import GPT2LMHeadModel

    reference = GPT2LMHeadModel.from_pretrained(models.ORGANISM_DIR, attn_implementation="eager").eval()
    tokens = organism.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    with torch.no_grad():
        expected = reference(tokens).logits.log_softmax(-1)
        got = organism(tokens).log_softmax(-1)
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()


def test_prepend_bos_uses_end_of_text(organism):
    tokens = organism.to_tokens("Mary")
    assert tokens[0, 0].item() == organism.tokenizer.bos_token_id
    assert organism.to_str_tokens("When Mary")[1:] == ["When", " Mary"]


def _finishes_within(seconds: float, function) -> object:
    """Run `function` in a thread; fail the test if it hangs (a guard, not a benchmark)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except Exception as error:  # noqa: BLE001 - returned for the assertions
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s"
    return outcome


def test_offline_hub_name_fails_fast_with_the_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    outcome = _finishes_within(10, lambda: load_model("gpt2-small", verbose=False))
    error = outcome.get("error")
    assert isinstance(error, ModelUnavailableError)
    assert "offline" in str(error) and "load_model()" in str(error) and "\n" not in str(error)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model name 'gpt2-smal'.*gpt2-small"):
        load_model("gpt2-smal", verbose=False)


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no folder"):
        load_model(str(tmp_path / "nowhere"), verbose=False)
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        load_model(str(tmp_path), verbose=False)


def test_hub_aliases_resolve_without_importing_transformer_lens():
    assert models.official_hub_name("gpt2-small") == "gpt2"
    assert models.official_hub_name("pythia-70m") == "EleutherAI/pythia-70m"
    assert models.official_hub_name("someone/their-model") == "someone/their-model"


def test_devices():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_hub_detection_respects_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_is_reachable() is False


def test_frozen_weights_gives_no_weight_a_gradient_and_restores_what_was_trainable():
    layer = torch.nn.Linear(3, 1)
    layer.bias.requires_grad_(False)  # frozen before: stays frozen after
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="inside"):
        with frozen_weights(layer):
            layer(x).sum().backward()
            assert not layer.weight.requires_grad
            raise RuntimeError("an error inside the block")
    assert layer.weight.grad is None and x.grad is not None
    assert layer.weight.requires_grad and not layer.bias.requires_grad
