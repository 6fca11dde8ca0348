"""Train the model organism from scratch: `python -m utils.organism.train`.

Seeded and CPU-only. Generates a fresh stream of world documents (no document is seen twice),
packs them with an end-of-text token between documents into 128-token rows, and trains a small
GPT-2 with AdamW: facts and verdicts first, then the full mix; a constant learning rate, then a
decay. Writes a Hugging Face folder (config, safetensors weights, tokenizer) and a JSON-lines
training log. `--smoke` trains a few steps for the tests.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from utils.organism import world
from utils.organism.tokenizer import build_tokenizer

MODEL_DIR = Path(__file__).parent / "model"

# The recipe. The measured facts behind it are in the model card and its training log.
# No dropout: every token is seen once, so there is nothing to overfit and dropout only slows learning.
ARCHITECTURE = dict(n_layer=4, n_embd=256, n_head=8, n_positions=128, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
# Warm-up, then a constant peak learning rate, then a linear decay over the last `decay` fraction.
# Behaviours switch on abruptly after loss plateaus, and a high learning rate escapes them far sooner.
# The first `early_steps` draw documents from world.EARLY_MIX (facts and verdicts), the rest from
# world.DOCUMENT_MIX.
RECIPE = dict(steps=3600, early_steps=600, batch_size=32, seq_len=128, lr=3e-3, warmup=100, decay=0.2,
              min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0, seed=0, eval_every=200)


def token_stream(tokenizer, n_tokens: int, seed: int, mix: dict[str, float] | None = None) -> torch.Tensor:
    """`n_tokens` ids of world documents drawn from `mix`, each preceded by the end-of-text token."""
    rng = random.Random(seed)
    ids: list[int] = []
    eot = tokenizer.eos_token_id
    while len(ids) < n_tokens:
        texts = [world.training_document(rng, mix)[1] for _ in range(5000)]
        for encoded in tokenizer(texts)["input_ids"]:
            ids.append(eot)
            ids.extend(encoded)
    stream = torch.tensor(ids[:n_tokens], dtype=torch.long)  # [n_tokens]
    # GPT-2's unknown token is its end-of-text (and BOS) token: the separators are no unknown words,
    # and a byte-level vocabulary has none. Only an unknown token of its own can be counted.
    separators = (eot, tokenizer.bos_token_id)
    unknown = 0 if tokenizer.unk_token_id in separators else int((stream == tokenizer.unk_token_id).sum())
    if unknown:
        raise RuntimeError(f"{unknown} unknown tokens in the training stream: the vocabulary misses words")
    return stream


def learning_rate(step: int, recipe: dict) -> float:
    """Linear warm-up, a constant peak, then a linear decay to min_lr_ratio of the peak."""
    if step < recipe["warmup"]:
        return recipe["lr"] * (step + 1) / recipe["warmup"]
    decay_start = recipe["steps"] * (1 - recipe["decay"])
    if step < decay_start:
        return recipe["lr"]
    progress = (step - decay_start) / max(1, recipe["steps"] - decay_start)
    return recipe["lr"] * (1 - (1 - recipe["min_lr_ratio"]) * progress)


def train(out_dir: Path = MODEL_DIR, recipe: dict | None = None, quiet: bool = False,
          continue_from: Path | None = None) -> list[dict]:
    """Train and save the organism to `out_dir`; returns the log records.

    With `continue_from` (a folder this function wrote), training goes on from those weights with a
    fresh optimiser and `recipe`'s schedule, and the log holds both runs, the second numbered on."""
    from utils.organism.evaluate import quick_behaviour_scores  # evaluate imports this module's constants

    recipe = {**RECIPE, **(recipe or {})}
    torch.manual_seed(recipe["seed"])
    tokenizer = build_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        **ARCHITECTURE)
    model = GPT2LMHeadModel.from_pretrained(continue_from) if continue_from else GPT2LMHeadModel(config)
    earlier: list[str] = []
    if continue_from:
        earlier = (Path(continue_from) / "training_log.jsonl").read_text().splitlines()

    tokens_per_step = recipe["batch_size"] * recipe["seq_len"]
    early_steps = min(recipe["early_steps"], recipe["steps"])
    stream = torch.cat([
        token_stream(tokenizer, early_steps * tokens_per_step, recipe["seed"] + 1, world.EARLY_MIX),
        token_stream(tokenizer, (recipe["steps"] - early_steps) * tokens_per_step, recipe["seed"]),
    ])
    rows = stream.view(-1, recipe["seq_len"])  # [steps * batch, seq_len]

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe["lr"], betas=(0.9, 0.95))

    out_dir.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(recipe["steps"]), desc="training organism", disable=quiet)
    for step in bar:
        batch = rows[step * recipe["batch_size"]:(step + 1) * recipe["batch_size"]]  # [batch, seq_len]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        model.train()
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()

        first_step = len(earlier) - 1 if earlier else 0  # steps of the run this one continues
        record = {"step": first_step + step, "loss": round(loss.item(), 4),
                  "seconds": round(time.perf_counter() - start, 1)}
        is_last = step == recipe["steps"] - 1
        if recipe["eval_every"] and ((step + 1) % recipe["eval_every"] == 0 or is_last):
            model.eval()
            record.update(quick_behaviour_scores(model, tokenizer))
            tqdm.write(json.dumps(record)) if not quiet else None
        log.append(record)
        bar.set_postfix(loss=f"{loss.item():.3f}")

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)
    header = {"recipe": recipe, "architecture": ARCHITECTURE, "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    if earlier:  # the first run's recipe stays the card's; this run is recorded as its continuation
        first = json.loads(earlier[0])
        header = {**first, "continued": first.get("continued", []) + [recipe]}  # every later run, in order
        seconds_before = json.loads(earlier[-1])["seconds"]
        for record in log:
            record["seconds"] = round(record["seconds"] + seconds_before, 1)
    with open(out_dir / "training_log.jsonl", "w") as f:
        f.write(json.dumps(header) + "\n")
        f.writelines(line + "\n" for line in earlier[1:])
        f.writelines(json.dumps(r) + "\n" for r in log)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="folder to write the model to")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="optimizer steps")
    parser.add_argument("--seed", type=int, default=RECIPE["seed"],
                        help="initialisation and data seed (0 is the bundled organism; siblings use others)")
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps, for tests")
    args = parser.parse_args()
    recipe = {"steps": args.steps, "seed": args.seed}
    if args.smoke:
        recipe = {"steps": 30, "batch_size": 8, "warmup": 5, "eval_every": 0, "seed": args.seed}
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    train(args.out, recipe)


if __name__ == "__main__":
    main()
