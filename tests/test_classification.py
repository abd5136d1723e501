"""Tests for lmlab.objectives.classification on hand-made examples: scores against values
computed by hand, label sets from ClassLabel features, preprocessing, padding, prediction
output, and a short real run that learns a memorisable three-class task."""

import json
import math
from types import SimpleNamespace

import datasets
import pytest
import torch
from datasets import ClassLabel, Features, Value
from omegaconf import OmegaConf

from lmlab.config import SequenceClassificationConfig
from lmlab.errors import LmlabError
from lmlab.objectives.classification import (
    SequenceClassification,
    classification_scores,
    confusion_table,
)

LABELS = ["neg", "neu", "pos"]
LABELS_3 = ["negative", "neutral", "positive"]


def cls_cfg(**kw):
    return OmegaConf.structured(
        SequenceClassificationConfig(name="sequence_classification", _target_="x", **kw)
    )


def labelled(texts, labels, names=LABELS, pairs=None):
    """A dataset with string labels stored as a ClassLabel over `names`."""
    columns = {"text": Value("string"), "label": ClassLabel(names=names)}
    data = {"text": texts, "label": [names.index(label) for label in labels]}
    if pairs is not None:
        columns["text_pair"] = Value("string")
        data["text_pair"] = pairs
    return datasets.Dataset.from_dict(data, features=Features(columns))


def objective(tok, max_length=32, **kw):
    obj = SequenceClassification(cls_cfg(**kw), tok, max_length)
    obj.prepare({"train": labelled(["x"], ["neg"])})
    return obj


class FixedLogits:
    """Stands in for a model: returns the given logits whatever the inputs."""

    def __init__(self, logits):
        self.logits = torch.tensor(logits)

    def __call__(self, **inputs):
        assert "labels" not in inputs and "example_id" not in inputs
        return SimpleNamespace(logits=self.logits)


# ================================================================ scores

# gold: neg neg neu neu pos pos pos; pred: neg neu neu pos pos pos neg
GOLD = [0, 0, 1, 1, 2, 2, 2]
PRED = [0, 1, 1, 2, 2, 2, 0]


def test_scores_by_hand():
    s = classification_scores(GOLD, PRED, LABELS)
    assert s["accuracy"] == pytest.approx(4 / 7)
    # neg: tp 1, fp 1 (a pos), fn 1 -> 2/4; neu: tp 1, fp 1, fn 1 -> 1/2; pos: tp 2, fp 1, fn 1
    assert s["f1_neg"] == pytest.approx(0.5)
    assert s["f1_neu"] == pytest.approx(0.5)
    assert s["f1_pos"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert s["confusion_matrix"] == {
        "labels": LABELS,
        "matrix": [[1, 1, 0], [0, 1, 1], [1, 0, 2]],  # rows: true, columns: predicted
    }


def test_confusion_table_rows_true_columns_predicted():
    confusion = {"labels": LABELS_3, "matrix": [[5, 1, 0], [0, 3, 12], [1, 0, 7]]}
    assert confusion_table(confusion) == (
        "true \\ predicted  negative  neutral  positive\n"
        "negative                 5        1         0\n"
        "neutral                  0        3        12\n"
        "positive                 1        0         7"
    )
    wide = {"labels": ["a", "b"], "matrix": [[1000, 1], [0, 3]]}  # counts wider than names
    assert confusion_table(wide).splitlines() == [
        "true \\ predicted     a  b",
        "a                 1000  1",
        "b                    0  3",
    ]


def test_macro_f1_skips_classes_absent_from_gold_and_pred():
    s = classification_scores([0, 2], [0, 0], LABELS)
    assert "f1_neu" not in s
    assert s["f1_neg"] == pytest.approx(2 / 3)  # tp 1, fp 1
    assert s["f1_pos"] == 0.0
    assert s["macro_f1"] == pytest.approx(1 / 3)


def test_score_maps_gold_by_name_and_counts_repeated_examples_once(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    # the split's own ClassLabel orders the names differently: ids differ, names decide
    texts = [str(i) for i in range(7)]
    examples = labelled(texts, [LABELS[g] for g in GOLD], names=["pos", "neg", "neu"])
    records = [{"example_id": i, "pred": p} for i, p in enumerate(PRED)]
    records += [{"example_id": 0, "pred": 2}]  # DDP padding repeats example 0: ignored
    s = obj.score(records, examples, model=None)
    assert s["accuracy"] == pytest.approx(4 / 7)
    assert s["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]


# ================================================================ labels


def test_prepare_takes_the_label_names_of_train(tiny_wordpiece):
    obj = SequenceClassification(cls_cfg(classifier_dropout=0.3), tiny_wordpiece, 32)
    obj.prepare({"train": labelled(["a", "b"], ["pos", "neg"])})
    assert obj.labels == LABELS
    assert obj.model_config() == {
        "num_labels": 3,
        "id2label": {0: "neg", 1: "neu", 2: "pos"},
        "label2id": {"neg": 0, "neu": 1, "pos": 2},
        "classifier_dropout": 0.3,
    }
    assert "classifier_dropout" not in objective(tiny_wordpiece).model_config()


def test_prepare_rejects_labels_that_are_not_a_classlabel(tiny_wordpiece):
    raw = {"train": datasets.Dataset.from_dict({"text": ["a"], "label": ["pos"]})}
    with pytest.raises(LmlabError, match="data.train: column 'label'.*ClassLabel"):
        SequenceClassification(cls_cfg(), tiny_wordpiece, 32).prepare(raw)


def test_prepare_rejects_a_single_label(tiny_wordpiece):
    raw = {"train": labelled(["a"], ["pos"], names=["pos"])}
    with pytest.raises(LmlabError, match="one label only"):
        SequenceClassification(cls_cfg(), tiny_wordpiece, 32).prepare(raw)


def test_label_outside_the_training_set_names_split_and_label(tiny_wordpiece):
    other = labelled(["a"], ["angry"], names=["neg", "angry"])
    with pytest.raises(LmlabError, match="data.validation: label 'angry'"):
        objective(tiny_wordpiece).preprocess(other, "validation")


def test_restore_reads_id2label(tiny_wordpiece):
    from transformers import BertConfig

    model = SimpleNamespace(config=BertConfig(id2label={0: "b", 1: "a"}))
    obj = SequenceClassification(cls_cfg(), tiny_wordpiece, 32)
    obj.restore(model)
    assert obj.labels == ["b", "a"]


# ================================================================ preprocess / collate


def test_preprocess_single_texts(tiny_wordpiece):
    tok = tiny_wordpiece
    data = labelled(["the dog", "the quick brown fox jumps"], ["pos", "neg"])
    rows = list(objective(tok).preprocess(data, "train"))
    assert [r["input_ids"] for r in rows] == tok(["the dog", "the quick brown fox jumps"])[
        "input_ids"
    ]  # no padding: lengths differ
    assert len(rows[0]["input_ids"]) < len(rows[1]["input_ids"])
    assert [r["labels"] for r in rows] == [2, 0]
    assert [r["example_id"] for r in rows] == [0, 1]


def test_preprocess_pairs_and_truncation(tiny_wordpiece):
    tok = tiny_wordpiece
    cls, sep = tok.cls_token_id, tok.sep_token_id
    the, dog, cat = (tok.convert_tokens_to_ids(t) for t in ("the", "dog", "cat"))
    data = labelled(["the dog the dog the dog", "dog"], ["neu", "pos"], pairs=["cat", "the cat"])
    rows = list(objective(tok, max_length=8).preprocess(data, "train"))
    # 6 + 1 words + 3 specials = 10 > 8: the longer segment (the first) loses its last two
    assert rows[0]["input_ids"] == [cls, the, dog, the, dog, sep, cat, sep]
    assert rows[0]["token_type_ids"] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert rows[1]["input_ids"] == [cls, dog, sep, the, cat, sep]  # short: untouched
    assert rows[1]["token_type_ids"] == [0, 0, 0, 1, 1, 1]
    assert [r["labels"] for r in rows] == [1, 2]


def test_preprocess_for_prediction_needs_only_text(tiny_wordpiece):
    data = datasets.Dataset.from_dict({"text": ["the dog"]})
    rows = list(objective(tiny_wordpiece).preprocess(data, "predict"))
    assert set(rows[0]) == {"input_ids", "token_type_ids", "example_id"}
    with pytest.raises(LmlabError, match="data.columns.label"):
        objective(tiny_wordpiece).preprocess(data, "train")


def test_collate_pads_dynamically(tiny_wordpiece):
    pad = tiny_wordpiece.pad_token_id
    features = [
        {"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "labels": 1, "example_id": 5},
        {"input_ids": [2, 3], "token_type_ids": [0, 0], "labels": 0, "example_id": 6},
    ]
    batch = objective(tiny_wordpiece).collate(features)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["example_id"].tolist() == [5, 6]


# ================================================================ steps and prediction


def test_eval_step_records_and_loss(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    batch = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.tensor([2, 0]),
        "example_id": torch.tensor([4, 9]),
    }
    model = FixedLogits([[0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    metrics, records = obj.eval_step(model, batch)
    assert records == [{"example_id": 4, "pred": 0}, {"example_id": 9, "pred": 1}]
    uniform = math.log(3)
    wrong = -math.log(1 / (2 + math.exp(5)))
    assert metrics["loss"][0].item() == pytest.approx((uniform + wrong) / 2, rel=1e-5)
    assert metrics["loss"][1] == 2
    step = obj.step(model, batch)
    assert step["accuracy"][0].item() == 0.0  # ties are not hits; row 2 predicts neu


def test_predict_decode_gives_label_score_and_all_scores(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    batch = {"input_ids": torch.ones(2, 2, dtype=torch.long), "example_id": torch.tensor([1, 0])}
    model = FixedLogits([[0.0, 0.0, math.log(2)], [math.log(3), 0.0, 0.0]])
    records = obj.predict_step(model, batch)
    out = obj.decode(records, datasets.Dataset.from_dict({"text": ["a", "b"]}))
    assert out[0]["label"] == "neg" and out[0]["score"] == pytest.approx(0.6)
    assert out[0]["scores"] == pytest.approx({"neg": 0.6, "neu": 0.2, "pos": 0.2})
    assert out[1]["label"] == "pos" and out[1]["score"] == pytest.approx(0.5)
    assert out[1]["scores"] == pytest.approx({"neg": 0.25, "neu": 0.25, "pos": 0.5})


# ================================================================ a real run


WORDS = {"neg": "bad awful poor sad", "neu": "table chair door wall", "pos": "good great fine nice"}
TINY_BERT = [
    "model=bert_tiny",
    "++model.config.hidden_size=32",
    "++model.config.num_hidden_layers=2",
    "++model.config.num_attention_heads=2",
    "++model.config.intermediate_size=64",
    "model.tokenizer.vocab_size=100",
    "debug=default",
    "trainer.max_epochs=null",
    "trainer.limit_val_batches=null",
    "data.batch_size=8",
]


@pytest.fixture(scope="module")
def memorisable_run(tmp_path_factory, lmlab_cache_dir):
    """24 three-word texts whose words give the class away, trained on and validated on
    (parquet keeps the ClassLabel), for 90 steps at a high learning rate. (45 steps were
    too few on some machines: the tiny WordPiece vocabulary differs between processes,
    huggingface/tokenizers#1794, and with it how fast the model memorises.)"""
    from lmlab.build import compose, train

    texts, labels = [], []
    for label, words in WORDS.items():
        words = words.split()
        for i in range(8):
            texts.append(" ".join(words[(i + k) % 4] for k in range(3)))
            labels.append(label)
    data = tmp_path_factory.mktemp("cls-data")
    for split in ("train", "validation"):
        labelled(texts, labels).to_parquet(str(data / f"{split}.parquet"))
    run_dir = tmp_path_factory.mktemp("cls-run")
    overrides = [
        *TINY_BERT,
        "objective=sequence_classification",
        "objective.lr=3e-3",
        "data=hub",
        f"data.hub_name={data}",
        "data.max_length=16",
        "trainer.max_steps=90",
        "trainer.val_check_interval=90",
        f"paths.cache_dir={lmlab_cache_dir}",
    ]
    metrics = train(compose(overrides, run_dir=str(run_dir)))
    return run_dir, metrics, texts, labels


def test_tiny_bert_learns_a_memorisable_task(memorisable_run):
    import csv

    run_dir, metrics, _, _ = memorisable_run
    assert metrics["val/accuracy"] == 1.0
    assert metrics["val/macro_f1"] == 1.0
    assert metrics["val/confusion_matrix"]["matrix"] == [[8, 0, 0], [0, 8, 0], [0, 0, 8]]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val/confusion_matrix"]["labels"] == LABELS
    with open(run_dir / "metrics.csv", newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert losses[-1] < losses[0] - 0.3


def test_export_predicts_through_restore(memorisable_run, tiny_wordpiece):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, _, texts, labels = memorisable_run
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "export").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "export")
    obj = SequenceClassification(cls_cfg(), tok, 16)
    obj.restore(model)
    assert obj.labels == LABELS
    examples = datasets.Dataset.from_dict({"text": texts})
    rows = list(obj.preprocess(examples, "predict"))
    with torch.no_grad():
        records = obj.predict_step(model, obj.collate(rows))
    out = obj.decode(records, examples)
    assert [o["label"] for o in out] == labels
    assert all(sum(o["scores"].values()) == pytest.approx(1.0) for o in out)


def test_own_csv_run_prints_the_confusion_matrix(tmp_path, lmlab_cache_dir, capsys):
    """The README's own-data command, shrunk: a ;-separated Latin-1 CSV with its own column
    names and three labels; lmlab-train's summary prints the confusion matrix and the export."""
    from lmlab.build import compose
    from lmlab.cli.train import train_and_report

    rows = ["review;sentiment"]
    for label, words in zip(LABELS_3, ["déçu froid", "café", "très bon"]):
        rows += [f"{words} {i};{label}" for i in range(4)]
    path = tmp_path / "reviews.csv"
    path.write_bytes("\n".join(rows).encode("latin-1"))
    overrides = [
        "experiment=finetune_sentiment",
        *TINY_BERT,
        *("data=files", f"data.train={path}", f"data.validation={path}"),
        *("data.columns.text=review", "data.columns.label=sentiment"),
        *("data.labels=[negative,neutral,positive]", "data.delimiter=';'", "data.encoding=latin-1"),
        "trainer.max_steps=2",
        f"paths.cache_dir={lmlab_cache_dir}",
    ]
    train_and_report(compose(overrides, run_dir=str(tmp_path / "run")))
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("export: ") for line in out)
    matrix = out.index("val/confusion_matrix:")
    assert out[matrix + 1].split() == ["true", "\\", "predicted", *LABELS_3]
    table = [line.split() for line in out[matrix + 2 : matrix + 5]]
    assert [row[0] for row in table] == LABELS_3
    assert [sum(map(int, row[1:])) for row in table] == [4, 4, 4]  # every row, once
