"""A two-layer attention-only transformer trained on repeated random tokens, with checkpoints.

Chapter 06 watches induction heads form during training. The organism ships only its final
weights, so this small model's whole training run ships instead: `python -m utils.organism.induction_toy`
retrains it (seeded, one CPU thread, about two minutes) and writes every checkpoint, in float16,
to one safetensors file in `utils/organism/induction_toy/` (about 1 MB).

The data make a positional shortcut impossible: each sequence is the start token, `length` random
tokens, the same tokens again, then random filler, with `length` drawn afresh for every sequence.
Predicting the second copy then needs an induction head (a previous-token head in layer 0, read by
a layer-1 head through K-composition); a fixed length would let one layer-0 head attend a fixed
distance back instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from jaxtyping import Int
from safetensors.torch import load_file, save_file
from torch import Tensor

TOY_DIR = Path(__file__).parent / "induction_toy"
CHECKPOINTS = TOY_DIR / "checkpoints.safetensors"
VOCAB = 48  # random tokens are 1..VOCAB; token 0 starts every sequence
N_CTX = 41
LENGTHS = (4, 20)  # the repeated block's length, inclusive
CONFIG = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=N_CTX, d_vocab=VOCAB + 1, act_fn=None,
              attn_only=True, normalization_type="LN", seed=0)
STEPS, EVERY, BATCH, LR = 1000, 50, 64, 1e-3


def toy_model():
    """The untrained toy model (HookedTransformer, on the CPU)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a HookedTransformer built from a config, no Hub model
        return HookedTransformer(HookedTransformerConfig(**CONFIG, device="cpu"))


def training_batch(generator: torch.Generator, batch: int, length: int | None = None) -> Int[Tensor, "batch n_ctx"]:
    """Start token, a random block, the block again, random filler; a fresh block length per row unless given."""
    rows = []
    for _ in range(batch):
        n = length or int(torch.randint(LENGTHS[0], LENGTHS[1] + 1, (1,), generator=generator))
        block = torch.randint(1, VOCAB + 1, (n,), generator=generator)
        filler = torch.randint(1, VOCAB + 1, (N_CTX - 1 - 2 * n,), generator=generator)
        rows.append(torch.cat([torch.zeros(1, dtype=torch.long), block, block, filler]))
    return torch.stack(rows)


def parameters(model) -> dict[str, Tensor]:
    """A copy of the model's parameters (not its buffers: the attention mask is rebuilt on loading)."""
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def train(steps: int = STEPS, every: int = EVERY, seed: int = 0) -> dict[int, dict[str, Tensor]]:
    """Train the toy with AdamW and return {step: state_dict} every `every` steps (step 0 included)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on every machine
    try:
        torch.manual_seed(seed)
        model = toy_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        generator = torch.Generator().manual_seed(seed)
        checkpoints = {0: parameters(model)}
        for step in range(1, steps + 1):
            loss = model(training_batch(generator, BATCH), return_type="loss")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % every == 0:
                checkpoints[step] = parameters(model)
        return checkpoints
    finally:
        torch.set_num_threads(threads)


def save_checkpoints(checkpoints: dict[int, dict[str, Tensor]], path: Path = CHECKPOINTS) -> None:
    """All checkpoints in one safetensors file, float16, keys `step_{step:05d}.{parameter}`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"step_{step:05d}.{name}": value.to(torch.float16).contiguous()
               for step, state in checkpoints.items() for name, value in state.items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(CONFIG), "steps": json.dumps(sorted(checkpoints))})


def load_checkpoints(path: Path = CHECKPOINTS) -> dict[int, object]:
    """{step: toy model with that checkpoint's weights}, in training order."""
    tensors = load_file(str(path))
    states: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        step, name = key.split(".", 1)
        states.setdefault(int(step.removeprefix("step_")), {})[name] = value.float()
    models = {}
    for step in sorted(states):
        model = toy_model()
        model.load_state_dict(states[step], strict=False)  # the attention mask is a buffer it builds itself
        model.eval()
        models[step] = model
    return models


if __name__ == "__main__":
    import time

    started = time.perf_counter()
    save_checkpoints(train())
    print(f"wrote {CHECKPOINTS} ({CHECKPOINTS.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - started:.0f} s")
