"""Measure the organism against its bars and write the model card: `python -m utils.organism.evaluate`.

Every number is measured on held-out combinations (the "test" split of `world.prompt_set`).
The functions take a `forward` callable (token ids -> logits), so the same code scores a plain
Hugging Face model during training and the TransformerBridge that learners load.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils.organism import world

Forward = Callable[[Int[Tensor, "batch pos"]], Float[Tensor, "batch pos d_vocab"]]

# behaviour: (metric key, bar, how the bar reads)
BARS = {
    "ioi_accuracy": (0.95, "indirect object: correct name above the repeated name"),
    "ioi_logit_diff": (4.0, "indirect object: mean logit difference (correct - repeated)"),
    "facts_top1": (0.95, 'fact recall, top-1 ("The capital of X is", phrasing never seen for X)'),
    "truth_accuracy": (0.90, 'truth verdict (" true" vs " false")'),
    "sentiment_accuracy": (0.95, 'sentiment word (" loved" vs " hated")'),
    "induction_loss_ratio": (0.50, "induction: loss on repeated half / loss on first half (at most)"),
    "induction_head_score": (0.50, "induction: best head's induction score"),
    "truth_probe_accuracy": (0.95, "linear probe on the residual stream, truth, best layer"),
    "sentiment_probe_accuracy": (0.95, "linear probe on the residual stream, sentiment, best layer"),
}
AT_MOST = {"induction_loss_ratio"}


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """Token ids with the end-of-text token prepended, right-padded; and each prompt's last index."""
    encoded = [[tokenizer.bos_token_id] + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    longest = max(len(ids) for ids in encoded)
    tokens = torch.full((len(encoded), longest), tokenizer.pad_token_id, dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids)
    last = torch.tensor([len(ids) - 1 for ids in encoded])
    return tokens, last


@torch.no_grad()
def final_logits(forward: Forward, tokenizer, prompts: list[str], batch_size: int = 128) -> Float[Tensor, "batch d_vocab"]:
    """The logits each prompt predicts for its next token."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens, last = encode_prompts(tokenizer, prompts[start:start + batch_size])
        logits = forward(tokens)  # [batch, pos, d_vocab]
        chunks.append(logits[torch.arange(len(last)), last].float())
    return torch.cat(chunks)


def answer_ids(tokenizer, answers: list[str]) -> Int[Tensor, "batch"]:
    """The single token id of each answer word (leading space included)."""
    ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    bad = [a for a, i in zip(answers, ids) if len(i) != 1 or i[0] == tokenizer.unk_token_id]
    if bad:
        raise ValueError(f"answers that are not single known tokens: {bad[:5]}")
    return torch.tensor([i[0] for i in ids])


def behaviour_scores(forward: Forward, tokenizer, prompts: world.PromptSet) -> dict[str, float]:
    """Accuracy (correct above wrong), top-1 accuracy and mean logit difference on a prompt set."""
    logits = final_logits(forward, tokenizer, prompts.prompts)  # [batch, d_vocab]
    correct = answer_ids(tokenizer, prompts.correct)
    wrong = answer_ids(tokenizer, prompts.wrong)
    rows = torch.arange(len(correct))
    diff = logits[rows, correct] - logits[rows, wrong]  # [batch]
    return {
        "accuracy": (diff > 0).float().mean().item(),
        "top1": (logits.argmax(-1) == correct).float().mean().item(),
        "logit_diff": diff.mean().item(),
    }


@torch.no_grad()
def induction_loss_ratio(forward: Forward, tokenizer, n: int = 100, length: int = 15) -> float:
    """Mean loss on the second copy of a random sequence divided by that on the first copy."""
    rng = __import__("random").Random(99)
    sequences = [rng.sample(world.INDUCTION_POOL, length) for _ in range(n)]
    tokens, _ = encode_prompts(tokenizer, [" ".join(seq + seq) for seq in sequences])  # [n, 1 + 2 * length]
    logits = forward(tokens)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")  # [n, 2 * length]
    first, second = losses[:, 1:length].mean(), losses[:, length:].mean()
    return (second / first).item()


def quick_behaviour_scores(hf_model, tokenizer, n: int = 200) -> dict[str, float]:
    """A fast look at each behaviour on held-out prompts, for the training log."""
    forward = lambda tokens: hf_model(input_ids=tokens).logits  # noqa: E731
    ioi = behaviour_scores(forward, tokenizer, world.prompt_set("ioi", "test", n=n))
    capital = _capital_prompts()
    return {
        "ioi_accuracy": round(ioi["accuracy"], 3),
        "ioi_logit_diff": round(ioi["logit_diff"], 2),
        "facts_top1": round(behaviour_scores(forward, tokenizer, capital)["top1"], 3),
        "truth_accuracy": round(behaviour_scores(forward, tokenizer, world.prompt_set("truth", "test"))["accuracy"], 3),
        "sentiment_accuracy": round(behaviour_scores(forward, tokenizer, world.prompt_set("sentiment", "test", n=n))["accuracy"], 3),
        "induction_loss_ratio": round(induction_loss_ratio(forward, tokenizer), 3),
    }


def _capital_prompts() -> world.PromptSet:
    """Held-out facts in the phrasing 'The capital of X is' (never shown for these countries)."""
    facts = world.prompt_set("facts", "test")
    keep = [i for i, (relation, template) in enumerate(zip(facts.labels["relation"], facts.labels["template"]))
            if relation == "capital" and template == 0]
    return facts.subset(keep)


INDUCTION_HEAD_BAR = 0.5  # a head whose induction score reaches this is called an induction head on the card


@torch.no_grad()
def induction_head_scores(model, tokenizer, n: int = 50, length: int = 15) -> Float[Tensor, "layer head_index"]:
    """Mean attention from each token of the second copy to the token after its first occurrence."""
    rng = __import__("random").Random(7)
    sequences = [rng.sample(world.INDUCTION_POOL, length) for _ in range(n)]
    tokens, _ = encode_prompts(tokenizer, [" ".join(seq + seq) for seq in sequences])  # [n, 1 + 2 * length]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    scores = []
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head_index, query_pos, key_pos]
        # Query at position q (second copy) should attend to key q - length + 1.
        diagonal = pattern.diagonal(offset=-(length - 1), dim1=-2, dim2=-1)  # [batch, head_index, diag]
        scores.append(diagonal[..., length:].mean(dim=(0, -1)))  # only queries in the second copy
    return torch.stack(scores)


def train_linear_probe(x_train: Float[Tensor, "batch d_model"], y_train: Int[Tensor, "batch"],
                       steps: int = 300, seed: int = 0) -> torch.nn.Linear:
    """A logistic-regression probe, fitted with full-batch Adam on standardised activations."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x_train.shape[1], 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(x_train).squeeze(-1), y_train.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


@torch.no_grad()
def final_residuals(model, tokenizer, prompts: list[str]) -> Float[Tensor, "layer batch d_model"]:
    """The residual stream after each block at each prompt's last token."""
    tokens, last = encode_prompts(tokenizer, prompts)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    rows = torch.arange(len(last))
    return torch.stack([cache[name][rows, last] for name in names])


def probe_accuracy_by_layer(model, tokenizer, family: str, label: str) -> list[float]:
    """Held-out accuracy of a linear probe for `label`, trained on the train split, per layer."""
    train, test = world.prompt_set(family, "train"), world.prompt_set(family, "test")
    x_train = final_residuals(model, tokenizer, train.prompts)
    x_test = final_residuals(model, tokenizer, test.prompts)
    y_train, y_test = torch.tensor(train.labels[label]), torch.tensor(test.labels[label])
    accuracies = []
    for layer in range(x_train.shape[0]):
        mean, std = x_train[layer].mean(0), x_train[layer].std(0) + 1e-6
        with torch.enable_grad():
            probe = train_linear_probe((x_train[layer] - mean) / std, y_train)
        predicted = probe((x_test[layer] - mean) / std).squeeze(-1) > 0
        accuracies.append((predicted == y_test.bool()).float().mean().item())
    return accuracies


def evaluate(model_dir: Path | None = None) -> dict:
    """Every bar, measured on the TransformerBridge a learner gets from `load_model()`."""
    from utils.models import load_model

    model = load_model(str(model_dir) if model_dir else None, device="cpu", verbose=False)
    tokenizer = model.tokenizer
    forward = lambda tokens: model(tokens)  # noqa: E731
    ioi = world.prompt_set("ioi", "test")
    ioi_scores = behaviour_scores(forward, tokenizer, ioi)
    by_order = {}
    for order in ("ABBA", "BABA"):
        subset = ioi.subset(i for i, o in enumerate(ioi.labels["order"]) if o == order)
        by_order[order] = behaviour_scores(forward, tokenizer, subset)
    truth_probe = probe_accuracy_by_layer(model, tokenizer, "truth", "truth")
    sentiment_probe = probe_accuracy_by_layer(model, tokenizer, "sentiment", "sentiment")
    head_scores = induction_head_scores(model, tokenizer)
    best_head = divmod(int(head_scores.argmax()), head_scores.shape[1])
    results = {
        "ioi_accuracy": ioi_scores["accuracy"],
        "ioi_logit_diff": ioi_scores["logit_diff"],
        "ioi_accuracy_ABBA": by_order["ABBA"]["accuracy"],
        "ioi_accuracy_BABA": by_order["BABA"]["accuracy"],
        "facts_top1": behaviour_scores(forward, tokenizer, _capital_prompts())["top1"],
        "facts_top1_all_held_out": behaviour_scores(forward, tokenizer, world.prompt_set("facts", "test"))["top1"],
        "truth_accuracy": behaviour_scores(forward, tokenizer, world.prompt_set("truth", "test"))["accuracy"],
        "sentiment_accuracy": behaviour_scores(forward, tokenizer, world.prompt_set("sentiment", "test"))["accuracy"],
        "induction_loss_ratio": induction_loss_ratio(forward, tokenizer),
        "induction_head_score": head_scores.max().item(),
        "induction_best_head": f"L{best_head[0]}H{best_head[1]}",
        "induction_heads": [f"L{layer}H{head}" for layer, head in (head_scores >= INDUCTION_HEAD_BAR).nonzero().tolist()],
        "truth_probe_accuracy": max(truth_probe),
        "truth_probe_by_layer": truth_probe,
        "sentiment_probe_accuracy": max(sentiment_probe),
        "sentiment_probe_by_layer": sentiment_probe,
    }
    return results


def bars_met(results: dict) -> dict[str, bool]:
    """Whether each bar is met."""
    return {key: (results[key] <= bar if key in AT_MOST else results[key] >= bar)
            for key, (bar, _) in BARS.items()}


def results_table(results: dict) -> str:
    """The model card's markdown table of bars and measured values."""
    met = bars_met(results)
    lines = ["| behaviour (held out) | bar | measured | met |", "|---|---|---|---|"]
    for key, (bar, text) in BARS.items():
        sign = "<=" if key in AT_MOST else ">="
        lines.append(f"| {text} | {sign} {bar:g} | {results[key]:.3f} | {'yes' if met[key] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    from utils.organism.card import write_model_card

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="organism folder (default: the bundled one)")
    args = parser.parse_args()
    results = evaluate(args.model_dir)
    print(json.dumps(results, indent=2))
    print(results_table(results))
    write_model_card(results, args.model_dir)


if __name__ == "__main__":
    main()
