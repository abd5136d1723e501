"""Shared pytest fixtures."""

import pytest

# ---------------------------------------------------------------- tiny tokenizers
# Used by test_objectives.py and test_tokenizers.py: a WordPiece (BERT) and a byte-level BPE
# (GPT-2) tokenizer trained in-process on a few hand-written documents. Training is
# deterministic, so every session sees the same vocabularies. No network access.

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps all day.",
    "Unbelievable things happen every day in the city. People walk quickly to work.",
    "A tokenizer splits words into pieces. Rare words become several pieces!",
    "Language models learn from unlabelled text. They predict the next word.",
    "Masked language modelling hides some tokens. The model guesses the hidden tokens.",
    "Rivers flow into the sea. Mountains rise above the clouds. Snow covers the peaks.",
    "The library opens at nine. Students read books and write notes quietly.",
    "Cats chase mice in the garden. Birds sing in the old oak tree?",
    "Trains leave the station on time. Passengers wait on the platform.",
    "Bakers make fresh bread every morning. The smell fills the street.",
]


@pytest.fixture(scope="session")
def tiny_corpus():
    return list(TINY_CORPUS)


@pytest.fixture(scope="session")
def tiny_wordpiece():
    """WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK]; small enough that long words split."""
    from lmlab.tokenizers import train

    return train(TINY_CORPUS * 3, "wordpiece", 160)


@pytest.fixture(scope="session")
def tiny_bpe():
    """Byte-level BPE with <|endoftext|>, as `lmlab.tokenizers.train` returns it (no pad)."""
    from lmlab.tokenizers import train

    return train(TINY_CORPUS * 3, "bpe", 400)


# ---------------------------------------------------------------- end of tiny tokenizers
