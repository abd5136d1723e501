"""Token classification (NER) over IOB2 tags (the tag set handled as classification's label
set, lmlab.objectives.label_set).

Each word's tag goes on its FIRST sub-word; the other sub-words and the specials get -100
and are neither trained nor scored. With `document_context` (off by default) and a
`document` column, each model input packs consecutive sentences of one document up to
max_length tokens, so that a word is tagged in its context (as in FLERT, Schweter & Akbik
2020) at no extra cost: fewer, longer inputs, the same tokens. Predictions are read back per
sentence and word (words cut off by truncation are predicted "O") and scored by entity,
with strict span matching as conlleval and seqeval's default mode do: precision, recall and
F1 over entities, overall (micro) and per type, plus word-level accuracy.
"""

from __future__ import annotations

from collections import defaultdict

import datasets

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE, Metrics, masked_cross_entropy, unique
from lmlab.objectives.label_set import LabelSetObjective


def split_tag(tag: str) -> tuple[str, str]:
    """("O", "") for O, ("B", "PER") for B-PER, ("I", "PER") for I-PER."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I") or not kind:
        raise LmlabError(f"tag {tag!r} is not IOB2 (expected O, B-<type> or I-<type>)")
    return prefix, kind


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The entities of an IOB2 tag sequence as (type, start, end), end exclusive. An entity
    starts at B-X, or (as in conlleval) at an I-X that does not continue an X entity; it
    goes on over the I-X that follow."""
    spans = set()
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, tag_kind = split_tag(tag)
        if start is not None and not (prefix == "I" and tag_kind == kind):
            spans.add((kind, start, i))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, tag_kind
    return spans


def _prf(tp: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * tp / (predicted + gold) if predicted + gold else 0.0
    return precision, recall, f1


def entity_scores(gold_sequences: list[list[str]], pred_sequences: list[list[str]]) -> dict:
    """Entity-level precision, recall and F1 over all sentences (micro), and f1_<type> for
    every type found in gold or predictions. Only an exact (type, start, end) match counts:
    a span off by one word is both a false positive and a false negative."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # type -> tp, predicted, gold
    for gold_tags, pred_tags in zip(gold_sequences, pred_sequences, strict=True):
        gold, pred = entities(gold_tags), entities(pred_tags)
        for index, found in ((0, gold & pred), (1, pred), (2, gold)):
            for kind, _, _ in found:
                counts[kind][index] += 1
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    precision, recall, f1 = _prf(*totals)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    for kind in sorted(counts):
        scores[f"f1_{kind}"] = _prf(*counts[kind])[2]
    return scores


def words_of(dataset) -> list[list[str]]:
    """The words of each example: `tokens`, or `text` split on whitespace."""
    if "tokens" in dataset.column_names:
        return list(dataset["tokens"])
    if "text" not in dataset.column_names:
        raise LmlabError(
            f"data.columns.tokens: the data has neither 'tokens' nor 'text' "
            f"(columns: {', '.join(dataset.column_names)}); map one onto it"
        )
    return [text.split() for text in dataset["text"]]


class TokenClassification(LabelSetObjective):
    head = "AutoModelForTokenClassification"
    required_columns = ("tokens", "tags")
    metric_names = ("loss",)  # evaluation: entity scores and accuracy come from `score`
    meta_keys = ("example_id", "labels", "word_index")
    label_column = "tags"

    @staticmethod
    def texts(dataset):
        if "tokens" not in dataset.column_names:
            return []
        return [" ".join(tokens) for tokens in dataset["tokens"]]

    # -- data
    def prepare(self, raw) -> None:
        super().prepare(raw)
        for tag in self.labels:
            try:
                split_tag(tag)
            except LmlabError as e:
                raise LmlabError(f"data.train: {e}") from None

    def gold(self, dataset, split: str) -> list[list[int]]:
        """Each example's tags as ids of the objective's label set."""
        to_ours = self.label_ids(dataset, split)
        out = []
        for row, (tokens, tags) in enumerate(zip(dataset["tokens"], dataset["tags"])):
            if len(tokens) != len(tags):
                raise LmlabError(
                    f"data.{split}: row {row} has {len(tokens)} tokens but {len(tags)} tags"
                )
            out.append([to_ours[t] for t in tags])
        return out

    def preprocess(self, dataset, split: str):
        if not getattr(self.tokenizer, "is_fast", False):
            raise LmlabError(
                "model.tokenizer: token classification needs a fast (Rust) tokenizer to align "
                f"tags with sub-words; {type(self.tokenizer).__name__} is not one"
            )
        if split != "predict":
            self.check_columns(dataset)
        gold = None if split == "predict" else self.gold(dataset, split)
        words = words_of(dataset)
        tok, max_length = self.tokenizer, self.max_length

        def encode(batch):
            # Per token: the row (sentence) and word it is the first sub-word of, else -1.
            owners = [
                [(r, k) for r in rows for k in range(len(words[r]))] for rows in batch["rows"]
            ]
            enc = tok(
                [[words[r][k] for r, k in owned] for owned in owners],
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
            )
            out = {"input_ids": enc["input_ids"], "example_id": [], "word_index": []}
            if "token_type_ids" in enc:
                out["token_type_ids"] = enc["token_type_ids"]
            for j, owned in enumerate(owners):
                ids = enc.word_ids(j)
                first = [w is not None and (k == 0 or ids[k - 1] != w) for k, w in enumerate(ids)]
                at = [owned[w] if f else (-1, -1) for w, f in zip(ids, first)]
                out["example_id"].append([r for r, _ in at])
                out["word_index"].append([k for _, k in at])
            if gold is not None:
                out["labels"] = [
                    [gold[r][k] if r >= 0 else IGNORE for r, k in zip(rows, index)]
                    for rows, index in zip(out["example_id"], out["word_index"])
                ]
            return out

        inputs = datasets.Dataset.from_dict({"rows": self.inputs(dataset, words)})
        return inputs.map(encode, batched=True, remove_columns=["rows"])

    def inputs(self, dataset, words) -> list[list[int]]:
        """The rows that make up each model input: one sentence each, or with
        `document_context`, consecutive sentences of one document packed up to max_length
        tokens (a longer sentence alone, truncated)."""
        if not (self.cfg.document_context and "document" in dataset.column_names):
            return [[r] for r in range(len(words))]
        room = self.max_length - self.tokenizer.num_special_tokens_to_add()
        sizes = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        chunks, used, document = [], room, None
        for r, (doc, ids) in enumerate(zip(dataset["document"], sizes["input_ids"])):
            if doc != document or used + len(ids) > room:
                chunks.append([])
                used, document = 0, doc
            chunks[-1].append(r)
            used += len(ids)
        return chunks

    def collate(self, features):
        keys = self.input_pads(features) | {"example_id": -1, "word_index": -1}
        if "labels" in features[0]:
            keys["labels"] = IGNORE
        return self.pad(features, keys)

    def fingerprint(self):
        return {**super().fingerprint(), "document_context": self.cfg.document_context}

    # -- model
    def _forward(self, model, batch):
        """Logits, and the loss and token accuracy over the labelled positions."""
        logits = model(**self.model_inputs(batch)).logits
        labelled = batch["labels"] != IGNORE
        loss, accuracy = masked_cross_entropy(logits[labelled], batch["labels"][labelled])
        return logits, loss, accuracy, int(labelled.sum())

    def step(self, model, batch) -> Metrics:
        _, loss, accuracy, n = self._forward(model, batch)
        return {"loss": (loss, n), "accuracy": (accuracy, n)}

    def _records(self, logits, batch) -> list[dict]:
        """One record per sentence: its words' predicted tag ids (-1: not reached)."""
        records: dict[int, list[int]] = {}
        for preds, rows, index in zip(
            logits.argmax(-1).tolist(), batch["example_id"].tolist(), batch["word_index"].tolist()
        ):
            for p, r, k in zip(preds, rows, index):
                if r >= 0:
                    pred = records.setdefault(r, [])
                    pred += [-1] * (k + 1 - len(pred))
                    pred[k] = p
        return [{"example_id": r, "pred": pred} for r, pred in records.items()]

    def eval_step(self, model, batch):
        logits, loss, _, n = self._forward(model, batch)
        return {"loss": (loss, n)}, self._records(logits, batch)

    def tags(self, pred: list[int], n_words: int) -> list[str]:
        """Tag names for a record's word predictions; missing words (truncated) are O."""
        tags = [self.labels[p] if p >= 0 else "O" for p in pred[:n_words]]
        return tags + ["O"] * (n_words - len(tags))

    def score(self, records, examples, model) -> dict:
        records = unique(records)
        gold_ids = self.gold(examples, "validation")
        gold = [[self.labels[t] for t in gold_ids[r["example_id"]]] for r in records]
        pred = [self.tags(r["pred"], len(g)) for r, g in zip(records, gold)]
        words = sum(map(len, gold))
        correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
        return entity_scores(gold, pred) | {"accuracy": correct / max(words, 1)}

    # -- lmlab-predict
    def predict_step(self, model, batch) -> list[dict]:
        return self._records(model(**self.model_inputs(batch)).logits, batch)

    def decode(self, records, examples) -> list[dict]:
        by_id = {r["example_id"]: r["pred"] for r in unique(records)}
        outputs = []
        for i, words in enumerate(words_of(examples)):
            tags = self.tags(by_id.get(i, []), len(words))
            spans = sorted(entities(tags), key=lambda s: s[1])
            found = [
                {"type": k, "start": s, "end": e, "text": " ".join(words[s:e])} for k, s, e in spans
            ]
            outputs.append({"tokens": list(words), "tags": tags, "entities": found})
        return outputs
