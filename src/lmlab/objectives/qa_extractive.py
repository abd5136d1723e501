"""Extractive question answering (SQuAD): a QA head points at the answer span inside the
context. Long contexts become overlapping windows of `doc_stride` tokens; at evaluation the
best span is searched over all windows of an example (the post-processing of the Hugging
Face examples) and scored with the official SQuAD exact match and F1.

The SQuAD metric (`normalize_answer`, `exact_match`, `f1`, `squad_scores`) lives here and
is reused by generative QA.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import Metrics, Objective

NO_OFFSET = [-1, -1]  # question, special and padding tokens: not part of the context
SAMPLES = 5  # example predictions written to samples.txt at each validation

# ---------------------------------------------------------------- SQuAD metric

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


# ---------------------------------------------------------------- objective


class ExtractiveQA(Objective):
    head = "AutoModelForQuestionAnswering"
    required_columns = ("question", "context")
    metric_names = ("loss",)
    meta_keys = ("example_id", "offsets")

    texts = staticmethod(qa_texts)

    def fingerprint(self) -> dict:
        return super().fingerprint() | {"doc_stride": self.cfg.doc_stride}

    # -- data
    def preprocess(self, dataset, split: str):
        labelled = split != "predict"
        self.check_columns(dataset, self.required_columns + (("answers",) if labelled else ()))
        return dataset.map(
            self._windows,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            fn_kwargs={"labelled": labelled, "offsets": split != "train"},
        )

    def _windows(self, batch, indices, labelled: bool, offsets: bool):
        """Each example -> its overlapping windows over the context, question first."""
        questions = [q.lstrip() for q in batch["question"]]  # leading blanks waste room
        self._check_room(questions, indices)
        enc = self.tokenizer(
            questions,
            batch["context"],
            truncation="only_second",
            max_length=self.max_length,
            stride=self.cfg.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        out: dict[str, list] = {"input_ids": enc["input_ids"], "example_id": []}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        if labelled:
            out["start_positions"], out["end_positions"] = [], []
        if offsets:
            out["offsets"] = []
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            sequence = enc.sequence_ids(w)
            window = [
                list(o) if s == 1 else NO_OFFSET
                for o, s in zip(enc["offset_mapping"][w], sequence, strict=True)
            ]
            out["example_id"].append(indices[sample])
            if offsets:
                out["offsets"].append(window)
            if labelled:
                start, end = answer_positions(window, batch["answers"][sample])
                out["start_positions"].append(start)
                out["end_positions"].append(end)
        return out

    def _check_room(self, questions: list[str], indices: list[int]) -> None:
        """The tokenizer needs more than doc_stride context tokens beside every question."""
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        lengths = [
            len(ids) for ids in self.tokenizer(questions, add_special_tokens=False).input_ids
        ]
        for length, index in zip(lengths, indices, strict=True):
            room = self.max_length - specials - length
            if room <= self.cfg.doc_stride:
                raise LmlabError(
                    f"data.max_length={self.max_length}: question {index} takes {length} tokens, "
                    f"leaving {max(room, 0)} for the context; objective.doc_stride="
                    f"{self.cfg.doc_stride} needs more than that (raise data.max_length or "
                    "lower objective.doc_stride)"
                )

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        first = features[0]
        keys = {"input_ids": self.tokenizer.pad_token_id}
        if "token_type_ids" in first:
            keys["token_type_ids"] = 0
        batch = self.pad(features, keys)
        for key in ("start_positions", "end_positions", "example_id"):
            if key in first:
                batch[key] = torch.tensor([f[key] for f in features])
        if "offsets" in first:
            length = batch["input_ids"].shape[1]
            batch["offsets"] = torch.tensor(
                [f["offsets"] + [NO_OFFSET] * (length - len(f["offsets"])) for f in features]
            )
        return batch

    # -- model
    def step(self, model, batch) -> Metrics:
        out = model(**self.model_inputs(batch))
        return {"loss": (out.loss, len(batch["input_ids"]))}

    def eval_step(self, model, batch) -> tuple[Metrics, list[dict]]:
        out = model(**self.model_inputs(batch))
        loss = {"loss": (out.loss, len(batch["input_ids"]))}
        return loss, self.window_records(out.start_logits, out.end_logits, batch)

    def predict_step(self, model, batch) -> list[dict]:
        out = model(**self.model_inputs(batch))
        return self.window_records(out.start_logits, out.end_logits, batch)

    def window_records(self, start_logits, end_logits, batch) -> list[dict]:
        """Per window: the n_best start and end candidates inside the context, each as
        [token index, char offset, logit], and the null (CLS) score."""
        offsets = batch["offsets"]
        outside = offsets[..., 0] < 0
        k = min(self.cfg.n_best, offsets.shape[1])
        starts = start_logits.float().masked_fill(outside, float("-inf")).topk(k, dim=-1)
        ends = end_logits.float().masked_fill(outside, float("-inf")).topk(k, dim=-1)
        null = (start_logits[:, 0] + end_logits[:, 0]).tolist()
        records = []
        for b, example_id in enumerate(batch["example_id"].tolist()):
            records.append(
                {
                    "example_id": example_id,
                    "starts": _candidates(starts, offsets[b, :, 0], b),
                    "ends": _candidates(ends, offsets[b, :, 1], b),
                    "null": null[b],
                }
            )
        return records

    # -- split metrics and predictions
    def predictions(self, records: list[dict], examples) -> dict[int, dict]:
        """example_id -> {"answer", "score", "start"} from the records of all its windows."""
        windows = collections.defaultdict(list)
        for record in records:
            windows[record["example_id"]].append(record)
        return {
            i: choose_answer(
                parts,
                examples[i]["context"],
                self.cfg.max_answer_length,
                self.cfg.null_score_diff_threshold if self.cfg.version_2_with_negative else None,
            )
            for i, parts in windows.items()
        }

    def score(self, records: list[dict], examples, model) -> dict[str, Any]:
        answers = {i: p["answer"] for i, p in self.predictions(records, examples).items()}
        ids = sorted(answers)
        golds = [examples[i]["answers"]["text"] for i in ids]
        scores: dict[str, Any] = squad_scores(
            [answers[i] for i in ids], golds, breakdown=self.cfg.version_2_with_negative
        )
        return scores | {"samples": qa_samples(answers, examples)}

    def decode(self, records: list[dict], examples) -> list[dict]:
        found = self.predictions(records, examples)
        empty = {"answer": "", "score": None, "start": -1}
        return [found.get(i, empty) for i in range(len(examples))]


def answer_positions(offsets: list[list[int]], answers: dict) -> tuple[int, int]:
    """Token indices of the first answer's first and last tokens when the window holds the
    whole answer; (0, 0), the CLS token, otherwise and for questions without an answer."""
    if not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [i for i, (a, _) in enumerate(offsets) if a >= 0]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(i for i in context if offsets[i][0] <= start_char)
    end = min(i for i in context if i >= start and offsets[i][1] >= end_char)
    return start, end


def _candidates(top, chars: torch.Tensor, b: int) -> list[list]:
    values, indices = top.values[b].tolist(), top.indices[b].tolist()
    return [
        [i, int(chars[i]), v] for i, v in zip(indices, values, strict=True) if v != float("-inf")
    ]


def choose_answer(
    windows: list[dict], context: str, max_answer_length: int, null_threshold: float | None
) -> dict:
    """The best span over all windows (start <= end, at most max_answer_length tokens, both
    in the context); with `null_threshold` (SQuAD v2) the empty answer when the lowest null
    score of the windows beats the best span's score by more than the threshold."""
    best = None
    for window in windows:
        for s_token, s_char, s_logit in window["starts"]:
            for e_token, e_char, e_logit in window["ends"]:
                if not 0 <= e_token - s_token < max_answer_length:
                    continue
                if best is None or s_logit + e_logit > best[0]:
                    best = (s_logit + e_logit, s_char, e_char)
    if null_threshold is not None:
        null = min(w["null"] for w in windows)
        if best is None or null - best[0] > null_threshold:
            return {"answer": "", "score": null, "start": -1}
    if best is None:
        return {"answer": "", "score": None, "start": -1}
    score, start, end = best
    return {"answer": context[start:end], "score": score, "start": start}
