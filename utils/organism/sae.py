"""The organism's sparse autoencoder: world text, its cached activations, and the shipped SAE.

`python -m utils.organism.sae` retrains the SAE that ships in `utils/organism/sae/` (SAELens's
folder format: `cfg.json` and `sae_weights.safetensors`) and writes its card, `README.md`, with
the metrics measured on held-out world text. Chapters load it with `load_organism_sae()` (which
calls `SAE.load_from_disk`) instead of training one. Everything is seeded: retraining gives the
same metrics to about four digits (the weights are not bit-identical).

Chapter 05 uses the same helpers to cache activations: `world_rows` packs seeded world documents
into rows of 128 tokens, `cache_activations` runs the organism up to the SAE's hook point once and
keeps every position except the end-of-text tokens and each row's first position (their
activations are outliers, several times the typical norm, that an SAE would spend latents on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from utils.memo import memoized

SAE_DIR = Path(__file__).parent / "sae"
HOOK_NAME = "blocks.1.hook_resid_post"
STOP_AT_LAYER = 2  # the hook is in block 1: the forward pass can stop before block 2
SEQ_LEN = 128
TRAIN_SEED, HELD_OUT_SEED = 5, 6  # the organism itself was trained on seed 0's documents
RECIPE = dict(hook_name=HOOK_NAME, architecture="topk", d_sae=1024, k=32, train_tokens=2 ** 18,
              held_out_tokens=2 ** 15, steps=400, batch_size=1024, lr=1e-3, lr_end=1e-4,
              dead_feature_window=25, decoder_init_norm=None, seed=0)
# What the shipped SAE must reach on held-out text (the card says whether it does).
BARS = dict(explained_variance=0.9, l0=32, dead_fraction=0.05)


def world_rows(tokenizer, n_tokens: int, seed: int, seq_len: int = SEQ_LEN) -> Int[Tensor, "row pos"]:
    """`n_tokens` of seeded world documents (each after an end-of-text token) in rows of `seq_len`."""
    from utils.organism.train import token_stream

    n_tokens -= n_tokens % seq_len
    return token_stream(tokenizer, n_tokens, seed).view(-1, seq_len)  # [row, pos]


def kept_positions(tokens: Int[Tensor, "row pos"], end_of_text: int) -> Bool[Tensor, "row pos"]:
    """True where an SAE should see the activation: not an end-of-text token, not a row's first position."""
    keep = tokens != end_of_text
    keep[:, 0] = False
    return keep


@memoized
def cache_activations(model, rows: Int[Tensor, "row pos"], hook_name: str = HOOK_NAME,
                      batch_size: int = 64, progress: bool = True) -> tuple[Float[Tensor, "token d_model"],
                                                                           Int[Tensor, "token"]]:
    """Activations at `hook_name` for every kept position of `rows`, and the token at each one.

    One forward pass per batch of rows, stopped after the hook's block; returned on the CPU.
    """
    from utils.session import progress_bar

    layer = int(hook_name.split(".")[1])
    stored: list[Tensor] = []

    def store(activation: Tensor, hook) -> Tensor:
        stored.append(activation.detach().cpu())
        return activation

    starts = range(0, len(rows), batch_size)
    with torch.no_grad():
        for start in progress_bar(starts, show=progress, desc=f"caching {hook_name}"):
            batch = rows[start:start + batch_size].to(model.cfg.device)  # [batch, pos]
            model.run_with_hooks(batch, fwd_hooks=[(hook_name, store)], stop_at_layer=layer + 1)
    activations = torch.cat(stored)  # [row, pos, d_model]
    keep = kept_positions(rows, model.tokenizer.eos_token_id)
    return activations[keep], rows[keep]


def random_batches(activations: Float[Tensor, "token d_model"], batch_size: int,
                   seed: int = 0) -> Iterator[Float[Tensor, "batch d_model"]]:
    """An endless stream of batches drawn with replacement from the cached activations (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield activations[torch.randint(0, len(activations), (batch_size,), generator=generator)]


def train_with_sae_lens(activations: Float[Tensor, "token d_model"], architecture: str = "topk",
                        d_sae: int = 1024, k: int = 32, l1_coefficient: float = 5.0, steps: int = 400,
                        batch_size: int = 1024, lr: float = 1e-3, lr_end: float = 1e-4,
                        dead_feature_window: int = 25, decoder_init_norm: float | None = None, seed: int = 0,
                        progress: bool = True, target_l0: float | None = None, l0_coefficient: float = 1.0,
                        jumprelu_init_threshold: float = 2.0, jumprelu_bandwidth: float = 1.0):
    """An SAE trained by SAELens's `SAETrainer` on cached activations ("topk", "standard" L1, or
    "jumprelu": Rajamanoharan et al.'s JumpReLU, with the quadratic L0 penalty around `target_l0`
    that SAELens calls "quadratic" (Gemma Scope 2's), so its L0 can be matched to TopK's `k`).

    `lr_end` must be given when training from an iterator (SAELens asserts it); the
    `dead_feature_window` (in steps) decides when TopK's auxiliary loss starts reviving latents.
    The decoder starts with unit-norm rows (`decoder_init_norm=None`; SAELens's default of 0.1
    left a tenth of the latents dead on this data) and `b_dec` at the activations' mean. Training is
    seeded by `seed` and leaves torch's global generator as it was.
    """
    with torch.random.fork_rng(devices=[]):  # the weights below replace this initialisation
        sae = _new_training_sae(architecture, activations.shape[1], d_sae, k, l1_coefficient, decoder_init_norm,
                                target_l0, l0_coefficient, jumprelu_init_threshold, jumprelu_bandwidth)
    sae.load_state_dict(_fitted_state(activations, architecture, d_sae, k, l1_coefficient, steps, batch_size, lr, lr_end,
                                      dead_feature_window, decoder_init_norm, seed, progress, target_l0, l0_coefficient,
                                      jumprelu_init_threshold, jumprelu_bandwidth))
    return sae


def _new_training_sae(architecture: str, d_in: int, d_sae: int, k: int, l1_coefficient: float,
                      decoder_init_norm: float | None, target_l0: float | None, l0_coefficient: float,
                      jumprelu_init_threshold: float, jumprelu_bandwidth: float):
    """An untrained SAELens training SAE of `architecture`, initialised from torch's global generator."""
    from sae_lens import (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
                          TopKTrainingSAE, TopKTrainingSAEConfig)

    if architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, decoder_init_norm=decoder_init_norm))
    if architecture == "standard":
        return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=l1_coefficient,
                                                             decoder_init_norm=decoder_init_norm))
    if architecture == "jumprelu":
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, decoder_init_norm=decoder_init_norm, l0_coefficient=l0_coefficient,
            jumprelu_init_threshold=jumprelu_init_threshold, jumprelu_bandwidth=jumprelu_bandwidth,
            jumprelu_sparsity_loss_mode="quadratic", target_l0=float(k if target_l0 is None else target_l0)))
    raise ValueError(f"unknown architecture {architecture!r}; use 'topk', 'standard' or 'jumprelu'")


@memoized  # the SAE object holds a lambda pickle cannot store, so `make test` replays its weights
def _fitted_state(activations: Float[Tensor, "token d_model"], architecture: str, d_sae: int, k: int,
                  l1_coefficient: float, steps: int, batch_size: int, lr: float, lr_end: float, dead_feature_window: int,
                  decoder_init_norm: float | None, seed: int, progress: bool, target_l0: float | None,
                  l0_coefficient: float, jumprelu_init_threshold: float, jumprelu_bandwidth: float) -> dict[str, Tensor]:
    """The weights SAELens's SAETrainer reaches from seed `seed`; torch's global generator is left as it was."""
    import io

    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = _new_training_sae(architecture, activations.shape[1], d_sae, k, l1_coefficient, decoder_init_norm,
                                target_l0, l0_coefficient, jumprelu_init_threshold, jumprelu_bandwidth)
        with torch.no_grad():
            sae.b_dec.copy_(activations[:20_000].mean(0))
        config = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                                  lr=lr, lr_end=lr_end, lr_decay_steps=steps // 5, device="cpu",
                                  dead_feature_window=dead_feature_window, feature_sampling_window=steps,
                                  n_batches_for_norm_estimate=1, logger=LoggingConfig(log_to_wandb=False))
        trainer = SAETrainer(cfg=config, sae=sae, data_provider=random_batches(activations, batch_size, seed))
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with quiet, _workbook_bar_for_sae_lens(progress):
            fitted = trainer.fit()
    return {name: value.detach().clone() for name, value in fitted.state_dict().items()}


SAE_LENS_BAR_EVERY = 10  # steps between two updates of the bar (SAELens's own: 100)


@contextlib.contextmanager
def _workbook_bar_for_sae_lens(show: bool):
    """Give SAETrainer the workbook's progress bar: hidden when `show` is False or in the book's
    build (TQDM_DISABLE), and plain text once done, like every other bar of the course.

    SAELens moves its bar every 100 steps, so 150 steps closed it at "67%": here it moves every
    `SAE_LENS_BAR_EVERY` steps, and the trainer's own `close()` at the end of training fills it."""
    from unittest import mock

    from sae_lens.training import sae_trainer

    from utils.session import progress_bar

    def bar(*args, **tqdm_options):
        made = progress_bar(args[0] if args else None, show=show, **tqdm_options)
        close = made.close

        def close_full():  # SAETrainer.fit closes its bar once, after the last step
            if made.total and made.n < made.total:
                made.update(made.total - made.n)
            close()
        made.close = close_full
        return made

    update_pbar = sae_trainer.SAETrainer._update_pbar

    def every_few_steps(self, step_output, pbar, update_interval: int = 100):
        update_pbar(self, step_output, pbar, update_interval=SAE_LENS_BAR_EVERY)

    with mock.patch.object(sae_trainer, "tqdm", bar), \
            mock.patch.object(sae_trainer.SAETrainer, "_update_pbar", every_few_steps):
        yield


# ----------------------------------------------------------------------------------------------
# Measurements for the card (the chapter asks the learner to write these; tests compare the two)
# ----------------------------------------------------------------------------------------------
def reconstruction_metrics(sae, activations: Float[Tensor, "token d_model"],
                           batch_size: int = 8192) -> dict[str, float]:
    """Explained variance, MSE (per token, summed over d_model), L0, L2 ratio and dead fraction."""
    squared_error = total = l0 = norm_ratio = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    mean = activations.mean(0)
    with torch.no_grad():
        for start in range(0, len(activations), batch_size):
            x = activations[start:start + batch_size]
            codes = sae.encode(x)
            x_hat = sae.decode(codes)
            squared_error += (x_hat - x).pow(2).sum().item()
            total += (x - mean).pow(2).sum().item()
            l0 += (codes > 0).sum().item()
            norm_ratio += (x_hat.norm(dim=-1) / x.norm(dim=-1)).sum().item()
            fired |= (codes > 0).any(0)
    n = len(activations)
    return dict(explained_variance=1 - squared_error / total, mse=squared_error / n, l0=l0 / n,
                l2_ratio=norm_ratio / n, dead_fraction=1 - fired.float().mean().item())


def spliced_losses(model, sae, rows: Int[Tensor, "row pos"], hook_name: str = HOOK_NAME,
                   batch_size: int = 64) -> dict[str, float]:
    """Mean next-token loss clean, with the SAE's reconstruction spliced in, and with the activation
    zeroed, at every kept position of `rows` (end-of-text and first positions stay as they were)."""
    import torch.nn.functional as F

    keep_all = kept_positions(rows, model.tokenizer.eos_token_id)
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    count = 0
    for start in range(0, len(rows), batch_size):
        tokens = rows[start:start + batch_size].to(model.cfg.device)
        keep = keep_all[start:start + batch_size].to(model.cfg.device)[..., None]  # [batch, pos, 1]

        def splice(activation, hook):
            return torch.where(keep, sae.decode(sae.encode(activation)), activation)

        def zero(activation, hook):
            return torch.where(keep, torch.zeros_like(activation), activation)

        with torch.no_grad():
            for name, hooks in (("clean", []), ("sae", [(hook_name, splice)]), ("zero", [(hook_name, zero)])):
                logits = model.run_with_hooks(tokens, fwd_hooks=hooks)  # [batch, pos, d_vocab]
                losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
                totals[name] += losses.sum().item()
        count += tokens[:, 1:].numel()
    losses = {name: total / count for name, total in totals.items()}
    losses["ce_loss_recovered"] = (losses["zero"] - losses["sae"]) / (losses["zero"] - losses["clean"])
    return losses


def held_out_data(model, progress: bool = False):
    """(rows, activations, tokens) of the held-out world text the card is measured on."""
    rows = world_rows(model.tokenizer, RECIPE["held_out_tokens"], HELD_OUT_SEED)
    activations, tokens = cache_activations(model, rows, RECIPE["hook_name"], progress=progress)
    return rows, activations, tokens


def measure(sae, model) -> dict[str, float]:
    """Every number on the card, measured on held-out world text."""
    rows, activations, _ = held_out_data(model)
    metrics = reconstruction_metrics(sae, activations)
    metrics.update(spliced_losses(model, sae, rows[:128]))
    return metrics


# ----------------------------------------------------------------------------------------------
# The shipped SAE
# ----------------------------------------------------------------------------------------------
def load_organism_sae(device: str = "cpu"):
    """The shipped organism SAE, as SAELens's `SAE.load_from_disk` returns it."""
    from sae_lens import SAE

    if not (SAE_DIR / "cfg.json").exists():
        raise FileNotFoundError(f"no SAE in {SAE_DIR}; run `python -m utils.organism.sae` to train it")
    return SAE.load_from_disk(str(SAE_DIR), device=device)


def load_card_metrics() -> dict:
    """The metrics recorded on the card when the shipped SAE was trained."""
    return json.loads((SAE_DIR / "metrics.json").read_text())


def write_card(metrics: dict, seconds: float, n_train: int) -> None:
    """README.md (the card) and metrics.json, from the same rounded numbers."""
    metrics = {key: round(value, 5) for key, value in metrics.items()}
    met = {
        "explained_variance": metrics["explained_variance"] >= BARS["explained_variance"],
        "l0": metrics["l0"] <= BARS["l0"],
        "dead_fraction": metrics["dead_fraction"] < BARS["dead_fraction"],
    }
    rows = [
        ("explained variance (1 - residual variance / variance)", f">= {BARS['explained_variance']}",
         metrics["explained_variance"], met["explained_variance"]),
        ("L0 (latents active per token)", f"<= {BARS['l0']}", metrics["l0"], met["l0"]),
        ("dead latents (never fire on held-out text)", f"< {BARS['dead_fraction']:.0%}",
         metrics["dead_fraction"], met["dead_fraction"]),
    ]
    table = "\n".join(f"| {name} | {bar} | {value:.3f} | {'yes' if ok else 'no'} |" for name, bar, value, ok in rows)
    recipe = ", ".join(f"{key} {value}" for key, value in RECIPE.items())
    text = f"""# The organism's sparse autoencoder

A TopK sparse autoencoder ({RECIPE['d_sae']} latents, k = {RECIPE['k']}) on the organism's residual stream
at `{RECIPE['hook_name']}`, trained by SAELens's `SAETrainer` on {n_train:,} cached activations of
seeded world text (end-of-text tokens and each row's first position left out), by
`python -m utils.organism.sae`. Load it with `utils.organism.sae.load_organism_sae()`, which calls
`sae_lens.SAE.load_from_disk` on this folder.

## Measured on held-out world text
{RECIPE['held_out_tokens']:,} tokens of documents from another seed.

| metric | bar | measured | met |
|---|---|---|---|
{table}

Other numbers: MSE per token {metrics['mse']:.2f} (summed over d_model); L2 ratio
|x_hat| / |x| {metrics['l2_ratio']:.3f}; next-token loss clean {metrics['clean']:.3f}, with the SAE spliced in
{metrics['sae']:.3f}, with the activation zeroed {metrics['zero']:.3f}: CE loss recovered
{metrics['ce_loss_recovered']:.3f}. Training took {seconds:.0f} s on the CPU.

## Recipe
{recipe}. Seeded: retraining gives the same metrics to about four digits (the weights are not
bit-identical). `metrics.json` holds these numbers.
"""
    (SAE_DIR / "README.md").write_text(text)
    (SAE_DIR / "metrics.json").write_text(json.dumps(
        {**metrics, "train_seconds": round(seconds, 1),
         "train_tokens": n_train, "meets_bars": all(met.values())}, indent=2) + "\n")


def train_organism_sae(progress: bool = True):
    """Cache the training activations, train the recipe's SAE; return (sae, seconds, n_train)."""
    from utils.models import load_model

    model = load_model(device="cpu", verbose=False)
    rows = world_rows(model.tokenizer, RECIPE["train_tokens"], TRAIN_SEED)
    activations, _ = cache_activations(model, rows, RECIPE["hook_name"], progress=progress)
    start = time.perf_counter()
    sae = train_with_sae_lens(activations, d_sae=RECIPE["d_sae"], k=RECIPE["k"], steps=RECIPE["steps"],
                              batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], lr_end=RECIPE["lr_end"],
                              dead_feature_window=RECIPE["dead_feature_window"],
                              decoder_init_norm=RECIPE["decoder_init_norm"], seed=RECIPE["seed"], progress=progress)
    return model, sae, time.perf_counter() - start, len(activations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and the result is the same
    model, sae, seconds, n_train = train_organism_sae(progress=not args.quiet)
    SAE_DIR.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(str(SAE_DIR))
    metrics = measure(load_organism_sae(), model)
    write_card(metrics, seconds, n_train)
    print(json.dumps({key: round(value, 4) for key, value in metrics.items()}))
    print(f"trained in {seconds:.1f}s; card written to {SAE_DIR / 'README.md'}")


if __name__ == "__main__":
    main()
