"""Label sets, shared by sequence classification and token classification (NER).

The label set comes from the training split's ClassLabel feature (`prepare`) or from an
exported model's id2label (`restore`); other splits are mapped onto it by label name
(`label_ids`), so a split that numbers its labels differently is still read right. The
head's Hugging Face settings (num_labels, id2label, label2id) come from it, and so does the
preprocessing fingerprint.
"""

from __future__ import annotations

from lmlab.errors import LmlabError
from lmlab.objectives.base import Objective


def class_names(dataset, column: str, split: str = "train") -> list[str]:
    """The names of a ClassLabel column (or of a list of ClassLabels, as NER tags are)."""
    feature = dataset.features.get(column)
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) -> ClassLabel
    names = getattr(feature, "names", None)
    if not names:
        raise LmlabError(
            f"data.{split}: column '{column}' is {feature!r}, expected a datasets.ClassLabel "
            "(the source names the label set; set data.labels)"
        )
    return list(names)


def id_map(names: list[str], labels: list[str], split: str) -> list[int]:
    """For each id of a split's label names, its id in the objective's label set."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise LmlabError(
            f"data.{split}: label {unknown[0]!r} is not in the training label set "
            f"({', '.join(labels)})"
        )
    return [index[name] for name in names]


def label_config(labels: list[str] | None, dropout: float | None) -> dict:
    """Hugging Face config settings for a head over `labels`."""
    if not labels:
        raise LmlabError("objective: no label set; call prepare(raw) or restore(model) first")
    settings = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    if dropout is not None:
        settings["classifier_dropout"] = dropout
    return settings


def labels_of(model) -> list[str]:
    """The label names of an exported model, in id order."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


class LabelSetObjective(Objective):
    """An objective whose head predicts over the label set of the ClassLabel column
    `label_column` (objective.classifier_dropout applies to that head)."""

    label_column = "label"

    def __init__(self, cfg, tokenizer, max_length: int, seed: int = 0):
        super().__init__(cfg, tokenizer, max_length, seed)
        self.labels: list[str] | None = None

    def prepare(self, raw) -> None:
        self.labels = class_names(raw["train"], self.label_column)

    def restore(self, model) -> None:
        self.labels = labels_of(model)

    def label_ids(self, dataset, split: str) -> list[int]:
        """For each label id of `dataset` (a split), its id in the objective's label set."""
        return id_map(class_names(dataset, self.label_column, split), self.labels, split)

    def fingerprint(self):
        return {**super().fingerprint(), "labels": self.labels}

    def model_config(self) -> dict:
        return label_config(self.labels, self.cfg.classifier_dropout)
