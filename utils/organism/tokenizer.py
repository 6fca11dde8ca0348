"""A word-level tokenizer for the organism's world, saved in Hugging Face format.

GPT-2's byte-level pre-tokenizer splits text into words that carry their leading space
(" Mary", " Paris", "."), and a word-level vocabulary maps each piece to one id. So every
name, capital and sentiment word is a single token, exactly as the chapters assume.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast

from utils.organism import world

SPECIAL_TOKENS = [world.END_OF_TEXT, world.UNKNOWN]


def world_texts(n_documents: int = 20_000, seed: int = 0) -> Iterable[str]:
    """Every text the world can produce: a sample of training documents and all prompt sets."""
    rng = random.Random(seed)
    for _ in range(n_documents):
        yield world.training_document(rng)[1]
    for family in world.FAMILIES:
        for split in world.SPLITS:
            prompts = world.prompt_set(family, split)
            for prompt, correct, wrong in zip(prompts.prompts, prompts.correct, prompts.wrong):
                yield prompt + correct + wrong
    for word in world.EXTRA_WORDS + world.INDUCTION_POOL:
        yield " " + word + " " + word.lower()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Collect every word piece of the world (sorted, so ids never depend on sampling order)."""
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pieces = set()
    for text in world_texts():
        pieces.update(piece for piece, _ in pre_tokenizer.pre_tokenize_str(text))
    # Each word both with and without its leading space ("Ġ"), so " When" is as known as "When".
    words = {piece.removeprefix("Ġ") for piece in pieces if piece.removeprefix("Ġ").isalpha()}
    pieces |= words | {"Ġ" + word for word in words}
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(pieces))}

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=world.UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=world.END_OF_TEXT,
        eos_token=world.END_OF_TEXT,
        pad_token=world.END_OF_TEXT,
        unk_token=world.UNKNOWN,
        model_max_length=128,
    )
