"""Extractive question answering (SQuAD): a QA head points at the answer span inside the
context. Long contexts become overlapping windows of `doc_stride` tokens; at evaluation the
best span is searched over all windows of an example (the post-processing of the Hugging
Face examples) and scored with the official SQuAD exact match and F1.

The SQuAD metric and what both QA objectives share live in lmlab.objectives.qa.
"""

from __future__ import annotations

import collections
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import Metrics, Objective
from lmlab.objectives.qa import REQUIRED_COLUMNS, answer_scores, qa_columns, qa_texts

NO_OFFSET = [-1, -1]  # question, special and padding tokens: not part of the context


class ExtractiveQA(Objective):
    head = "AutoModelForQuestionAnswering"
    required_columns = REQUIRED_COLUMNS
    metric_names = ("loss",)
    meta_keys = ("example_id", "offsets")

    texts = staticmethod(qa_texts)

    def fingerprint(self) -> dict:
        return super().fingerprint() | {"doc_stride": self.cfg.doc_stride}

    # -- data
    def preprocess(self, dataset, split: str):
        self.check_columns(dataset, qa_columns(split))
        return dataset.map(
            self._windows,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            fn_kwargs={"labelled": split != "predict", "offsets": split != "train"},
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
        batch = self.pad(features, self.input_pads(features))
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
        return answer_scores(answers, examples, breakdown=self.cfg.version_2_with_negative)

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
