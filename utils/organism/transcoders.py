"""Transcoders for the organism's four MLPs (Chapter 10): the module, its trainer, the shipped set.

A transcoder (Dunefsky et al. 2024) reads an MLP's input (`blocks.L.mlp.hook_in`, the output of
the second LayerNorm) and predicts the MLP's output (`blocks.L.hook_mlp_out`) through a sparse,
wide layer of features. Ours are TopK (Gao et al. 2024): only the k largest pre-activations of a
token survive, ReLU'd.

`python -m utils.organism.transcoders` retrains the shipped set (one per layer) into
`utils/organism/transcoders/` and rewrites its card; `load_transcoders()` reads it. Chapter 10 compares it with two
more sets: `--set long` (LONG_RECIPE: the same 512 features trained on four times the tokens for
five times the steps) writes `utils/organism/transcoders_long/`, and `--set wide` (WIDE_RECIPE: the
long recipe with 2048 features) `utils/organism/transcoders_wide/`; `load_transcoders(folder=LONG_DIR)`
and `load_transcoders(folder=WIDE_DIR)` read them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

TRANSCODER_DIR = Path(__file__).parent / "transcoders"
N_LAYERS = 4
# The recipe of the shipped set: width, sparsity, data, optimisation (all seeded).
RECIPE = dict(d_transcoder=512, k=16, train_tokens=2 ** 16, data_seed=7, steps=300, batch_size=1024, lr=3e-3,
              lr_end_fraction=0.1, held_out=4096)
LONG_DIR = Path(__file__).parent / "transcoders_long"
WIDE_DIR = Path(__file__).parent / "transcoders_wide"
# The long set: the shipped width and k, four times the tokens and five times the steps; the wide set:
# the long recipe with four times the features. Chapter 10 separates what training and width each change.
LONG_RECIPE = {**RECIPE, "train_tokens": 2 ** 18, "steps": 1500}
WIDE_RECIPE = {**LONG_RECIPE, "d_transcoder": 2048}
SETS = {"shipped": (RECIPE, TRANSCODER_DIR, "RECIPE", "load_transcoders()"),
        "long": (LONG_RECIPE, LONG_DIR, "LONG_RECIPE", "load_transcoders(folder=LONG_DIR)"),
        "wide": (WIDE_RECIPE, WIDE_DIR, "WIDE_RECIPE", "load_transcoders(folder=WIDE_DIR)")}


def input_hook(layer: int) -> str:
    """The hook a transcoder of `layer` reads: the MLP's input (the second LayerNorm's output)."""
    return f"blocks.{layer}.mlp.hook_in"


def output_hook(layer: int) -> str:
    """The hook a transcoder of `layer` predicts: the MLP's output."""
    return f"blocks.{layer}.hook_mlp_out"


class Transcoder(nn.Module):
    """x -> features f = TopK_k(ReLU(x W_enc + b_enc)) -> y_hat = f W_dec + b_dec.

    x is an MLP's input, y_hat a prediction of its output. Rows of W_dec start at unit length.
    """

    def __init__(self, d_in: int, d_out: int, d_transcoder: int, k: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(d_transcoder, d_out, generator=generator)
        self.W_dec = nn.Parameter(0.1 * directions / directions.norm(dim=-1, keepdim=True))  # [d_tc, d_out]
        self.W_enc = nn.Parameter(torch.randn(d_in, d_transcoder, generator=generator) / d_in ** 0.5)  # [d_in, d_tc]
        self.b_enc = nn.Parameter(torch.zeros(d_transcoder))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.k = k

    @property
    def d_transcoder(self) -> int:
        return self.W_enc.shape[1]

    def pre_activation(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_tc"]:
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_tc"]:
        """The k largest pre-activations of each token, ReLU'd; every other feature 0."""
        pre = self.pre_activation(x)  # [..., d_tc]
        values, indices = pre.topk(self.k, dim=-1)  # [..., k]
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def decode(self, features: Float[Tensor, "... d_tc"]) -> Float[Tensor, "... d_out"]:
        return features @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return self.decode(self.encode(x))


def cache_mlp_pairs(model, rows: Int[Tensor, "row pos"], layers=range(N_LAYERS), batch_size: int = 64,
                    progress: bool = False) -> dict[int, tuple[Tensor, Tensor]]:
    """Each layer's (MLP input, MLP output) at every kept position of `rows` (no end-of-text, no first position)."""
    from utils.organism.sae import kept_positions
    from utils.session import progress_bar

    names = {name for layer in layers for name in (input_hook(layer), output_hook(layer))}
    keep = kept_positions(rows, model.tokenizer.eos_token_id)  # [row, pos]
    stored: dict[str, list[Tensor]] = {name: [] for name in names}
    with torch.no_grad():
        for start in progress_bar(range(0, len(rows), batch_size), show=progress, desc="caching MLP inputs and outputs"):
            batch = rows[start:start + batch_size].to(model.cfg.device)  # [batch, pos]
            _, cache = model.run_with_cache(batch, names_filter=lambda name: name in names)
            for name in names:
                stored[name].append(cache[name][keep[start:start + batch_size].to(model.cfg.device)].cpu())
    return {layer: (torch.cat(stored[input_hook(layer)]), torch.cat(stored[output_hook(layer)])) for layer in layers}


def train_transcoder(x: Float[Tensor, "token d_in"], y: Float[Tensor, "token d_out"], d_transcoder: int = 512,
                     k: int = 16, steps: int = 300, batch_size: int = 1024, lr: float = 3e-3,
                     lr_end_fraction: float = 0.1, seed: int = 0, progress: bool = False) -> tuple[Transcoder, list[float]]:
    """A TopK transcoder fitted by Adam to predict y from x; returns it and its losses.

    The loss is the squared error summed over dimensions, over the variance of y (so 1 - loss is the
    batch's fraction of variance explained); the learning rate falls linearly to lr * lr_end_fraction;
    b_dec starts at the mean output.
    """
    from utils.session import progress_bar

    transcoder = Transcoder(x.shape[1], y.shape[1], d_transcoder, k, seed=seed).to(x.device)
    with torch.no_grad():
        transcoder.b_dec.copy_(y.mean(0))
    variance = (y - y.mean(0)).pow(2).sum(-1).mean()
    optimiser = torch.optim.Adam(transcoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - (1 - lr_end_fraction) * step / steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in progress_bar(range(steps), show=progress, desc="training a transcoder"):
        batch = torch.randint(0, len(x), (batch_size,), generator=generator).to(x.device)  # [batch]
        loss = (transcoder(x[batch]) - y[batch]).pow(2).sum(-1).mean() / variance
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return transcoder, losses


def recipe_data(model, recipe: dict = RECIPE, progress: bool = False):
    """The shipped recipe's (MLP input, MLP output) pairs per layer, split into training and held-out tokens."""
    from utils.organism.sae import world_rows

    rows = world_rows(model.tokenizer, recipe["train_tokens"], recipe["data_seed"])
    pairs = cache_mlp_pairs(model, rows, progress=progress)
    held = recipe["held_out"]
    train = {layer: (x[:-held], y[:-held]) for layer, (x, y) in pairs.items()}
    test = {layer: (x[-held:], y[-held:]) for layer, (x, y) in pairs.items()}
    return train, test


def train_layer(train: dict, layer: int, recipe: dict = RECIPE, progress: bool = False) -> Transcoder:
    """The shipped recipe for one layer (seeded by the layer)."""
    x, y = train[layer]
    transcoder, _ = train_transcoder(x, y, recipe["d_transcoder"], recipe["k"], recipe["steps"], recipe["batch_size"],
                                     recipe["lr"], recipe["lr_end_fraction"], seed=layer, progress=progress)
    return transcoder


@torch.no_grad()
def fit_metrics(transcoder: Transcoder, x: Tensor, y: Tensor) -> dict[str, float]:
    """Fraction of the output's variance explained, L0, and the share of features that never fire, on (x, y)."""
    features = transcoder.encode(x)
    y_hat = transcoder.decode(features)
    return {"explained_variance": 1 - ((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item(),
            "l0": (features > 0).float().sum(-1).mean().item(),
            "dead_fraction": ((features > 0).sum(0) == 0).float().mean().item()}


def save_transcoders(transcoders: list[Transcoder], folder: Path = TRANSCODER_DIR) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"blocks.{layer}.{name}": parameter.detach().contiguous().cpu()
               for layer, transcoder in enumerate(transcoders) for name, parameter in transcoder.named_parameters()}
    save_file(tensors, str(folder / "transcoders.safetensors"))


def load_transcoders(device: str = "cpu", folder: Path = TRANSCODER_DIR) -> list[Transcoder]:
    """The shipped transcoders (or the set in `folder`, e.g. WIDE_DIR), one per layer, on `device`
    (safetensors; nothing is unpickled). `k` comes from the recipe on the set's card."""
    tensors = load_file(str(folder / "transcoders.safetensors"))
    k = load_card_metrics(folder)["recipe"]["k"]
    transcoders = []
    for layer in range(N_LAYERS):
        W_enc = tensors[f"blocks.{layer}.W_enc"]
        transcoder = Transcoder(W_enc.shape[0], tensors[f"blocks.{layer}.W_dec"].shape[1], W_enc.shape[1], k)
        transcoder.load_state_dict({name: tensors[f"blocks.{layer}.{name}"] for name in ("W_enc", "b_enc", "W_dec", "b_dec")})
        transcoders.append(transcoder.to(device).eval().requires_grad_(False))
    return transcoders


def load_card_metrics(folder: Path = TRANSCODER_DIR) -> dict:
    return json.loads((folder / "metrics.json").read_text())


TESTED = {"shipped": "retrains one layer by the recipe and compares its\n  metrics with this card",
          "long": "checks that it explains more of every MLP's output than the\n  shipped set on fresh text",
          "wide": "retrains one layer by the recipe, on a quarter of its tokens and\n  a fifth of its steps, and compares its metrics with this card"}


def write_card(metrics: dict, seconds: float, which: str = "shipped") -> None:
    """Write the card (README.md) and metrics.json of the set `which` (a key of SETS) into its folder."""
    recipe, folder, name, loader = SETS[which]
    flag = "" if which == "shipped" else f" --set {which}"
    title = {"shipped": "Transcoders", "long": "Longer-trained transcoders", "wide": "Wide transcoders"}[which]
    compared = ", which compares them with the shipped set (512 features, the shorter recipe)"
    (folder / "metrics.json").write_text(json.dumps({"recipe": recipe, "layers": metrics}, indent=1) + "\n")
    rows = "\n".join(f"| {layer} | {m['explained_variance']:.3f} | {m['l0']:.0f} | {m['dead_fraction']:.3f} |"
                     for layer, m in metrics.items())
    (folder / "README.md").write_text(f"""# {title} for the organism's MLPs

Four TopK transcoders (Dunefsky et al. 2024; TopK as in Gao et al. 2024), one per MLP of the
workbook organism: layer L reads `blocks.L.mlp.hook_in` (the MLP's input, after the second
LayerNorm, whose weights the bridge folds into the MLP) and predicts `blocks.L.hook_mlp_out`.
Used by Chapter 10 (circuit tracing){compared if which != "shipped" else ""}.

- **File**: `transcoders.safetensors`, tensors `blocks.L.W_enc` [256, {recipe['d_transcoder']}], `blocks.L.b_enc`,
  `blocks.L.W_dec` [{recipe['d_transcoder']}, 256], `blocks.L.b_dec`; load with
  `utils.organism.transcoders.{loader}`.
- **Recipe** (`{name}` in `utils/organism/transcoders.py`): {recipe['d_transcoder']} features, k = {recipe['k']},
  {recipe['train_tokens']:,} tokens of world text (seed {recipe['data_seed']}; end-of-text tokens and each row's first
  position left out), the last {recipe['held_out']:,} of them held out; {recipe['steps']} Adam steps of
  {recipe['batch_size']} tokens, learning rate {recipe['lr']} falling linearly to a tenth, seed = layer; loss =
  squared error over the output's variance.
- **Rebuild**: `python -m utils.organism.transcoders{flag}` ({seconds:.0f} s for all four on the two-core
  machine that made them); `tests/test_circuit_tracing.py` {TESTED[which]}.

## Metrics on the held-out tokens

| layer | explained variance of the MLP output | L0 | dead fraction |
|---|---|---|---|
{rows}
""")


def main() -> None:
    import argparse

    from utils import load_model

    parser = argparse.ArgumentParser(description="Retrain a shipped set of transcoders and rewrite its card.")
    parser.add_argument("--set", choices=sorted(SETS), default="shipped", dest="which",
                        help="shipped (RECIPE), long (LONG_RECIPE) or wide (WIDE_RECIPE)")
    which = parser.parse_args().which
    recipe, folder, _, _ = SETS[which]
    torch.manual_seed(0)
    model = load_model(verbose=False, device="cpu")
    start = time.perf_counter()
    train, test = recipe_data(model, recipe, progress=True)
    transcoders = [train_layer(train, layer, recipe, progress=True) for layer in range(N_LAYERS)]
    seconds = time.perf_counter() - start
    metrics = {layer: fit_metrics(transcoders[layer], *test[layer]) for layer in range(N_LAYERS)}
    save_transcoders(transcoders, folder)
    write_card(metrics, seconds, which)
    print(json.dumps(metrics, indent=1), f"{seconds:.0f} s")


if __name__ == "__main__":
    main()
