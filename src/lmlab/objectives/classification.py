"""Sequence classification (sentiment, NLI, topic): one label per text or text pair.

The label set is handled as for NER (lmlab.objectives.label_set). Scored over the whole split:
accuracy, macro-F1, F1 per class and the confusion matrix (`classification_scores`, and
`confusion_table` to print it).
"""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import Metrics, masked_cross_entropy, unique
from lmlab.objectives.label_set import LabelSetObjective


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def classification_scores(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    """accuracy, macro_f1 (over the classes that occur in gold or pred), f1_<label> for
    those classes, and the confusion matrix (rows: true label, columns: predicted)."""
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        matrix[g][p] += 1
    scores: dict = {"accuracy": sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)}
    per_class = {}
    for c, name in enumerate(labels):
        tp = matrix[c][c]
        fn = sum(matrix[c]) - tp
        fp = sum(row[c] for row in matrix) - tp
        if tp + fp + fn:
            per_class[f"f1_{name}"] = f1(tp, fp, fn)
    scores["macro_f1"] = sum(per_class.values()) / max(len(per_class), 1)
    scores |= per_class
    scores["confusion_matrix"] = {"labels": list(labels), "matrix": matrix}
    return scores


def confusion_table(confusion: dict) -> str:
    """A confusion matrix ({"labels", "matrix"}) as an aligned table: a row per true label,
    a column per predicted label."""
    labels = [str(name) for name in confusion["labels"]]
    cells = [["true \\ predicted", *labels]]
    cells += [[name, *map(str, row)] for name, row in zip(labels, confusion["matrix"])]
    widths = [max(map(len, column)) for column in zip(*cells)]
    return "\n".join(
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))])
        for row in cells
    )


class SequenceClassification(LabelSetObjective):
    head = "AutoModelForSequenceClassification"
    required_columns = ("text", "label")
    # evaluation logs only the loss per batch; accuracy & co. come from `score`
    metric_names = ("loss",)
    meta_keys = ("example_id", "labels")  # the loss is computed here, not by the model
    label_column = "label"

    # -- data
    def prepare(self, raw) -> None:
        super().prepare(raw)
        if len(self.labels) < 2:
            raise LmlabError(f"data.train: one label only ({self.labels[0]!r}); need two or more")

    def gold(self, dataset, split: str) -> list[int]:
        """The split's labels as ids of the objective's label set."""
        to_ours = self.label_ids(dataset, split)
        out = []
        for row, label in enumerate(dataset["label"]):
            if not 0 <= label < len(to_ours):
                raise LmlabError(f"data.{split}: row {row} has no label (label id {label})")
            out.append(to_ours[label])
        return out

    def preprocess(self, dataset, split: str):
        self.check_columns(dataset, ("text",) if split == "predict" else None)
        labels = None if split == "predict" else self.gold(dataset, split)
        pair = "text_pair" in dataset.column_names
        tok, max_length = self.tokenizer, self.max_length

        def encode(batch, indices):
            enc = tok(
                batch["text"],
                batch["text_pair"] if pair else None,
                truncation=True,
                max_length=max_length,
            )
            out = {"input_ids": enc["input_ids"], "example_id": indices}
            if "token_type_ids" in enc:
                out["token_type_ids"] = enc["token_type_ids"]
            if labels is not None:
                out["labels"] = [labels[i] for i in indices]
            return out

        return dataset.map(
            encode, batched=True, with_indices=True, remove_columns=dataset.column_names
        )

    def collate(self, features):
        batch = self.pad(features, self.input_pads(features))
        batch["example_id"] = torch.tensor([f["example_id"] for f in features])
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    # -- model
    def logits(self, model, batch) -> torch.Tensor:
        return model(**self.model_inputs(batch)).logits

    def step(self, model, batch) -> Metrics:
        loss, accuracy = masked_cross_entropy(self.logits(model, batch), batch["labels"])
        n = len(batch["labels"])
        return {"loss": (loss, n), "accuracy": (accuracy, n)}

    def eval_step(self, model, batch):
        logits = self.logits(model, batch)
        loss, _ = masked_cross_entropy(logits, batch["labels"])
        preds = logits.argmax(-1).tolist()
        ids = batch["example_id"].tolist()
        records = [{"example_id": i, "pred": p} for i, p in zip(ids, preds)]
        return {"loss": (loss, len(preds))}, records

    def score(self, records, examples, model) -> dict:
        records = unique(records)
        gold = self.gold(examples, "validation")
        return classification_scores(
            [gold[r["example_id"]] for r in records], [r["pred"] for r in records], self.labels
        )

    # -- lmlab-predict
    def predict_step(self, model, batch) -> list[dict]:
        probs = self.logits(model, batch).float().softmax(-1).tolist()
        return [{"example_id": i, "probs": p} for i, p in zip(batch["example_id"].tolist(), probs)]

    def decode(self, records, examples) -> list[dict]:
        by_id = {r["example_id"]: r["probs"] for r in unique(records)}
        outputs = []
        for i in range(len(examples)):
            probs = by_id[i]
            best = max(range(len(probs)), key=probs.__getitem__)
            outputs.append(
                {
                    "label": self.labels[best],
                    "score": probs[best],
                    "scores": dict(zip(self.labels, probs)),
                }
            )
        return outputs
