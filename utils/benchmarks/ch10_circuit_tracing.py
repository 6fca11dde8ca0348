"""Chapter 10: the transcoder trainer's throughput, and the time to build one attribution graph.

The pinned SAELens has transcoder classes for loading published transcoders but no transcoder among
its trainable architectures, so there is no library trainer to print beside ours; the line says so.
"""

from __future__ import annotations

import torch

from utils.bench import median_time

STEPS, BATCH, REPEATS = 100, 1024, 3


def run() -> None:
    from utils.models import load_model
    from utils.organism import transcoders as organism_transcoders
    from utils.organism import world
    from utils.organism.sae import world_rows
    from utils.references import ch10_circuit_tracing as ref

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the chapter's setting: small matrices, one thread is fastest
    try:
        model = load_model(device="cpu", verbose=False)
        rows = world_rows(model.tokenizer, 2 ** 14, organism_transcoders.RECIPE["data_seed"])
        x, y = organism_transcoders.cache_mlp_pairs(model, rows, layers=[1])[1]
        ours = median_time(lambda: organism_transcoders.train_transcoder(x, y, steps=STEPS, batch_size=BATCH))
        shipped = organism_transcoders.load_transcoders()
        prompts = world.prompt_set("facts", "train", n=1, seed=0)
        with torch.no_grad():
            run_ = ref.freeze_run(model, shipped, model.to_tokens(prompts.prompts[0])[0])
        target = ref.logit_diff_target(model, prompts.correct[0], prompts.wrong[0])
        graph_seconds = median_time(lambda: ref.build_graph(model, shipped, run_, target))
    finally:
        torch.set_num_threads(threads)
    print(f"chapter 10 TopK transcoder trainer (ours, 512 features, k = 16): {STEPS * BATCH / ours:,.0f} "
          f"token pairs/s (median {ours:.2f}s of {REPEATS} runs of {STEPS} steps x {BATCH})")
    print("SAELens: no trainable transcoder in the pinned version (its Transcoder classes only load weights)")
    print(f"one attribution graph, {len(run_.tokens)}-token facts prompt, {int((run_.features > 0).sum())} active "
          f"features: median {graph_seconds:.2f}s")
