"""Chapter 06 benchmark: the batched head-by-position patching sweep against transformer_lens.patching,
and attribution patching against full activation patching (time ratio and correlation)."""

from __future__ import annotations

from utils.bench import median_time


def run() -> None:
    import contextlib
    import io

    import torch
    from transformer_lens import patching

    from utils.models import load_model
    from utils.references import ch02_probing as ch02
    from utils.references import ch06_patching as ref

    with torch.no_grad():
        model = load_model(verbose=False, device="cpu")
        prompts = ref.ioi_prompts("test", n=8)
        clean, swap, last = ref.paired_tokens(model, prompts.prompts, ref.swapped_prompts(prompts).prompts)
        correct = ch02.answer_ids(model, prompts.correct).to(model.cfg.device)
        wrong = ch02.answer_ids(model, prompts.wrong).to(model.cfg.device)
        metric = ref.normalised_logit_diff_metric(model(clean), model(swap), correct, wrong, last)
        _, clean_cache = model.run_with_cache(clean)
        cells = model.cfg.n_layers * clean.shape[1] * model.cfg.n_heads
        ours = median_time(lambda: ref.patch_head_output(model, swap, clean, metric, by_position=True))

        def library_sweep():
            with contextlib.redirect_stderr(io.StringIO()):  # transformer_lens.patching always shows a bar
                return patching.get_act_patch_attn_head_out_by_pos(model, swap, clean_cache, metric)

        library = median_time(library_sweep)
        print(f"ch06 head-by-position sweep, {len(prompts)} prompts x {cells} cells: batched {ours:.2f} s, "
              f"transformer_lens.patching {library:.2f} s (ratio {library / ours:.2f}x)")
        attribution_seconds = median_time(lambda: ref.attribution_patch_heads(model, clean, swap, metric))
        attribution = ref.attribution_patch_heads(model, clean, swap, metric)
        activation = ref.patch_head_output(model, swap, clean, metric, by_position=True)
        correlation = torch.corrcoef(torch.stack([attribution.flatten(), activation.flatten()]))[0, 1].item()
        print(f"ch06 attribution patching {attribution_seconds:.2f} s vs activation patching {ours:.2f} s "
              f"(ratio {ours / attribution_seconds:.0f}x), correlation {correlation:.3f}")
