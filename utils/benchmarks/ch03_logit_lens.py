"""Chapter 03 benchmark: medians of the chapter's heaviest steps and of its checks on the references."""

from __future__ import annotations

from utils.bench import median_time


def run() -> None:
    import torch

    from utils.checks import grade, load_all_exercises
    from utils.models import load_model
    from utils.references import ch03_logit_lens as ref

    with torch.no_grad():  # the chapter only reads the model; no later benchmark inherits this
        model = load_model(verbose=False, device="cpu")
        train, test = ref.lens_data(model, 100, "train"), ref.lens_data(model, 64, "test")
        print(f"ch03 logit lens, 4 families x 128 prompts: {median_time(lambda: ref.lens_by_family(model)):.2f} s")
        print(f"ch03 one tuned-lens translator ({train['resid'].shape[1]} vectors, 100 steps): "
              f"{median_time(lambda: ref.train_translator(model, train['resid'][1], train['final_logits'])):.2f} s")
        print(f"ch03 tuned vs logit lens at every point: "
              f"{median_time(lambda: ref.lens_kl_by_point(model, train, test, progress=False), repeats=1):.2f} s")
        exercises = {i: e for i, e in load_all_exercises().items() if e.chapter == "03_logit_lens"}
        grade(next(iter(exercises)), exercises[next(iter(exercises))].reference)  # load the organism once
        for exercise_id, ex in sorted(exercises.items()):
            print(f"ch03 check {exercise_id} on the reference: {median_time(lambda: grade(exercise_id, ex.reference)):.2f} s")
