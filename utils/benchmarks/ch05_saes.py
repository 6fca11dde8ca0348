"""Chapter 05: training throughput of the chapter's own TopK trainer and of SAELens's `SAETrainer`.

Both train the same architecture (TopK, 1024 latents, k = 32, batches of 1024) on the same cached
organism activations, for the same number of steps, in this one run; the ratio is printed.
"""

from __future__ import annotations

import contextlib
import io

import torch

from utils.bench import median_time

STEPS, BATCH, REPEATS = 100, 1024, 3


def run() -> None:
    from utils.models import load_model
    from utils.organism import sae as organism_sae
    from utils.references import ch05_saes as ref

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the chapter's setting: small matrices, one thread is fastest
    try:
        model = load_model(device="cpu", verbose=False)
        rows = organism_sae.world_rows(model.tokenizer, 2 ** 17, organism_sae.TRAIN_SEED)
        activations, _ = organism_sae.cache_activations(model, rows, progress=False)
        ours = median_time(lambda: ref.train_organism_sae(activations, k=32, steps=STEPS, batch_size=BATCH,
                                                               progress_bar=False))
        with contextlib.redirect_stderr(io.StringIO()):
            theirs = median_time(lambda: organism_sae.train_with_sae_lens(
                activations, "topk", k=32, steps=STEPS, batch_size=BATCH, progress=False))
    finally:
        torch.set_num_threads(threads)
    samples = STEPS * BATCH
    print(f"chapter 05 TopK trainer (ours): {samples / ours:,.0f} activations/s (median {ours:.2f}s "
          f"of {REPEATS} runs of {STEPS} steps x {BATCH})")
    print(f"SAELens SAETrainer, TopK: {samples / theirs:,.0f} activations/s (median {theirs:.2f}s)")
    print(f"ratio ours / SAELens: {theirs / ours:.2f}x")
