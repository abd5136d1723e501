"""The SQuAD metric and what both QA objectives (extractive and generative) share.

`normalize_answer`, `exact_match`, `f1` and `squad_scores` follow the official SQuAD v1.1 /
v2.0 evaluation script; `answer_scores` scores a split's predicted answers against its gold
answers and adds a few samples for samples.txt; `qa_texts` is what a tokenizer trained from
scratch learns from; `qa_columns` the canonical columns a split needs.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

SAMPLES = 5  # example predictions written to samples.txt at each validation
REQUIRED_COLUMNS = ("question", "context")


def qa_columns(split: str) -> tuple[str, ...]:
    """The columns a split needs: the question and the context; `answers` too, except for
    the unlabelled inputs of lmlab-predict (split "predict")."""
    return REQUIRED_COLUMNS + (("answers",) if split != "predict" else ())


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: list[str]) -> list[str]:
    """Gold answers that normalise to something; none (no-answer) means the empty answer,
    as in the official v2.0 script."""
    return [g for g in golds if normalize_answer(g)] or [""]


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 when the prediction equals one of the gold answers after normalisation."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:  # no-answer: right only when both are empty
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: list[str]) -> float:
    """Token-overlap F1 of the normalised answers, the best over the gold answers."""
    pred = normalize_answer(prediction).split()
    return max(_token_f1(pred, normalize_answer(g).split()) for g in _golds(golds))


def squad_scores(
    predictions: list[str], golds: list[list[str]], breakdown: bool = False
) -> dict[str, float]:
    """exact_match and f1 in percent (0-100), like the official script; with `breakdown`
    also has_answer_f1 / no_answer_f1 over the questions with / without a gold answer."""
    if not predictions:
        return {}
    em = [exact_match(p, g) for p, g in zip(predictions, golds, strict=True)]
    f = [f1(p, g) for p, g in zip(predictions, golds, strict=True)]
    scores = {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f) / len(f)}
    if breakdown:
        answered = [bool(_golds(g)[0]) for g in golds]
        for name, wanted in (("has_answer_f1", True), ("no_answer_f1", False)):
            part = [x for x, a in zip(f, answered, strict=True) if a == wanted]
            if part:
                scores[name] = 100 * sum(part) / len(part)
    return scores


def qa_texts(dataset):
    """Questions and (each once) contexts: what a tokenizer trained from scratch learns from."""
    if "question" in dataset.column_names:
        yield from dataset["question"]
    if "context" in dataset.column_names:
        yield from dict.fromkeys(dataset["context"])


def qa_samples(predictions: dict[int, str], examples) -> list[str]:
    """A few predictions next to their questions and gold answers, for samples.txt."""
    lines = []
    for i in sorted(predictions)[:SAMPLES]:
        example = examples[i]
        golds = " | ".join(example["answers"]["text"]) or "(no answer)"
        lines.append(
            f"Q: {example['question']}\npredicted: {predictions[i] or '(no answer)'}\ngold: {golds}"
        )
    return lines


def answer_scores(answers: dict[int, str], examples, breakdown: bool = False) -> dict[str, Any]:
    """`squad_scores` of the predicted answers (example_id -> text) against the gold answers
    of `examples`, and a few of them under "samples"."""
    ids = sorted(answers)
    golds = [examples[i]["answers"]["text"] for i in ids]
    scores: dict[str, Any] = squad_scores([answers[i] for i in ids], golds, breakdown=breakdown)
    return scores | {"samples": qa_samples(answers, examples)}
