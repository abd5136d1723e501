"""Next-sentence prediction (BERT): segment pairs where half the time segment B truly
follows A in the same document and half the time B comes from a different document."""

from __future__ import annotations

import random
import re
import zlib

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import Metrics, Objective, masked_cross_entropy

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
IS_NEXT, IS_RANDOM = 0, 1  # Hugging Face's next_sentence_label convention
# The keys that make a split's documents (a validation split is given or carved from train)
SPLIT_KEYS = {
    "train": "data.train",
    "validation": "data.validation (or data.val_fraction, carving it from train)",
    "test": "data.test",
}


def make_pairs(
    documents: list[list[list[int]]],
    max_tokens: int,
    rng: random.Random,
    short_seq_prob: float = 0.1,
) -> list[tuple[list[int], list[int], int]]:
    """BERT's pair construction over tokenized documents (lists of sentences of ids), at
    least 2 (check_documents). Returns (segment A, segment B, label) with
    len(A) + len(B) <= max_tokens."""
    if max_tokens < 2:
        raise LmlabError(f"data.max_length: {max_tokens + 3} leaves no room for two segments")
    pairs = []
    for d, document in enumerate(documents):
        target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
        chunk: list[list[int]] = []
        i = 0
        while i < len(document):
            chunk.append(document[i])
            if i == len(document) - 1 or sum(map(len, chunk)) >= target:
                pair, unused = _pair(chunk, documents, d, target, rng)
                if pair:
                    pairs.append(pair)
                i -= unused  # sentences not used as A go back into the document
                chunk = []
            i += 1
    return pairs


def check_documents(count: int, split: str) -> None:
    """A random pair's segment B comes from another document: each split needs 2."""
    if count >= 2:
        return
    key = SPLIT_KEYS.get(split, f"the {split} inputs")
    raise LmlabError(
        f"{key}: next-sentence prediction needs at least 2 documents (of 2 tokens or more) in "
        f"each split, the {split} split has {count}; with data.documents=file each text file "
        "is one document (blank_line or line splits it into several)"
    )


def _pair(chunk, documents, d, target, rng):
    """One pair from a chunk of consecutive sentences; returns it and how many sentences
    of the chunk were left unused."""
    whole = len(chunk) == 1
    if whole:  # one long sentence: split it so that it can still give a true pair
        ids = chunk[0]
        chunk = [ids[: len(ids) // 2], ids[len(ids) // 2 :]]
    a_end = rng.randint(1, len(chunk) - 1)
    a = [t for s in chunk[:a_end] for t in s]
    if rng.random() < 0.5:
        other = rng.randrange(len(documents) - 1)
        other += other >= d  # any document but this one
        start = rng.randrange(len(documents[other]))
        b = [t for s in documents[other][start:] for t in s][: max(1, target - len(a))]
        label, unused = IS_RANDOM, 0 if whole else len(chunk) - a_end
    else:
        b = [t for s in chunk[a_end:] for t in s]
        label, unused = IS_NEXT, 0
    a, b = _truncate(a, b, target, rng)
    return ((a, b, label) if a and b else None), unused


def _truncate(a: list[int], b: list[int], max_tokens: int, rng: random.Random):
    """Trims the longer segment, from the front or back at random, until the pair fits."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]
    return a, b


class NextSentencePrediction(Objective):
    head = "AutoModelForNextSentencePrediction"
    metric_names = ("loss", "accuracy")

    def preprocess(self, dataset, split: str):
        import datasets

        self.check_columns(dataset)
        tok = self.tokenizer
        documents = []
        for text in dataset["text"]:
            sentences = [s for s in SENTENCE_END.split(text) if s.strip()]
            ids = tok(sentences, add_special_tokens=False)["input_ids"] if sentences else []
            if sum(map(len, ids)) >= 2:
                documents.append([s for s in ids if s])
        check_documents(len(documents), split)
        rng = random.Random(self.seed * 1000 + zlib.crc32(split.encode()))
        # training pairs are drawn several times, so that NSP cannot just memorise them
        passes = self.cfg.dupe_factor if split == "train" else 1
        pairs = [
            pair
            for _ in range(passes)
            for pair in make_pairs(documents, self.max_length - 3, rng, self.cfg.short_seq_prob)
        ]
        cls, sep = tok.cls_token_id, tok.sep_token_id
        return datasets.Dataset.from_dict(
            {
                "input_ids": [[cls, *a, sep, *b, sep] for a, b, _ in pairs],
                "token_type_ids": [[0] * (len(a) + 2) + [1] * (len(b) + 1) for a, b, _ in pairs],
                "next_sentence_label": [label for _, _, label in pairs],
            }
        )

    def collate(self, features):
        batch = self.pad(features, {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0})
        batch["next_sentence_label"] = torch.tensor([f["next_sentence_label"] for f in features])
        return batch

    def step(self, model, batch) -> Metrics:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**inputs).logits
        loss, accuracy = masked_cross_entropy(logits, batch["next_sentence_label"])
        n = len(logits)
        return {"loss": (loss, n), "accuracy": (accuracy, n)}

    def fingerprint(self):
        settings = {k: self.cfg[k] for k in ("short_seq_prob", "dupe_factor")}
        return {**super().fingerprint(), **settings}
