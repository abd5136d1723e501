"""Tests for lmlab.objectives.ner on hand-made examples: exact label alignment on words
that split into several sub-words, truncated words read as O, entity extraction and
scores computed by hand (partial spans, type errors, stray I- tags), padding, prediction
output, and a short real run that learns a memorisable tagging task."""

import random
from types import SimpleNamespace

import datasets
import pytest
import torch
from datasets import ClassLabel, Features, List, Value
from omegaconf import OmegaConf

from lmlab.config import TokenClassificationConfig
from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE
from lmlab.objectives.ner import (
    TokenClassification,
    entities,
    entity_scores,
)

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
OUT, B_PER, I_PER, B_LOC, I_LOC = range(5)  # tag ids; OUT is "O"
X = IGNORE


def ner_cfg(**kw):
    return OmegaConf.structured(
        TokenClassificationConfig(name="token_classification", _target_="x", **kw)
    )


def tagged(sentences, names=TAGS):
    """A dataset from [(tokens, tag names)], the tags a list of ClassLabel over `names`."""
    features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=names))})
    data = {
        "tokens": [tokens for tokens, _ in sentences],
        "tags": [[names.index(t) for t in tags] for _, tags in sentences],
    }
    return datasets.Dataset.from_dict(data, features=features)


def objective(tok, max_length=64, **cfg):
    obj = TokenClassification(ner_cfg(**cfg), tok, max_length)
    obj.prepare({"train": tagged([(["a"], ["O"])])})
    return obj


class FixedLogits:
    def __init__(self, logits):
        self.logits = torch.tensor(logits)

    def __call__(self, **inputs):
        assert not {"labels", "word_index", "example_id"} & set(inputs)
        return SimpleNamespace(logits=self.logits)


def one_hot_logits(tag_ids: list[int]) -> list[list[float]]:
    return [[5.0 if c == t else 0.0 for c in range(len(TAGS))] for t in tag_ids]


# ================================================================ entities


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (["O", "I-PER", "I-PER", "O"], {("PER", 1, 3)}),  # a stray I- begins an entity
        (["I-LOC", "I-PER"], {("LOC", 0, 1), ("PER", 1, 2)}),  # a type change ends one
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),  # B- always begins
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),
        (["O", "O"], set()),
        ([], set()),
    ],
)
def test_entities(tags, expected):
    assert entities(tags) == expected


def test_entities_rejects_tags_that_are_not_iob2():
    with pytest.raises(LmlabError, match="'PER' is not IOB2"):
        entities(["O", "PER"])
    with pytest.raises(LmlabError, match="'E-PER'"):
        entities(["E-PER"])


def test_entity_scores_by_hand():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC"],  # PER 0-2, LOC 3-4
        ["B-ORG", "I-ORG", "O"],  # ORG 0-2
        ["O", "B-MISC", "O"],  # MISC 1-2
    ]
    pred = [
        ["B-PER", "O", "O", "B-LOC"],  # PER 0-1: partial, a FP and a FN; LOC: TP
        ["B-LOC", "I-LOC", "O"],  # right span, wrong type: FP LOC and FN ORG
        ["O", "I-MISC", "O"],  # stray I- is the entity MISC 1-2: TP
    ]
    s = entity_scores(gold, pred)
    # 4 gold, 4 predicted, 2 true positives (LOC in sentence 1, MISC)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(0.5)
    assert s["f1_PER"] == 0.0  # tp 0, pred 1, gold 1
    assert s["f1_LOC"] == pytest.approx(2 / 3)  # tp 1, pred 2, gold 1
    assert s["f1_ORG"] == 0.0  # never predicted
    assert s["f1_MISC"] == 1.0
    assert set(s) == {"precision", "recall", "f1", "f1_PER", "f1_LOC", "f1_ORG", "f1_MISC"}


def test_entity_scores_precision_and_recall_differ():
    s = entity_scores([["B-PER", "O", "B-PER"]], [["B-PER", "O", "O"]])
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))


# ================================================================ labels


def test_prepare_takes_tag_names_and_model_config(tiny_wordpiece):
    obj = TokenClassification(ner_cfg(classifier_dropout=0.2), tiny_wordpiece, 32)
    obj.prepare({"train": tagged([(["a"], ["O"])])})
    assert obj.labels == TAGS
    config = obj.model_config()
    assert config["num_labels"] == 5
    assert config["id2label"][3] == "B-LOC" and config["label2id"]["I-PER"] == 2
    assert config["classifier_dropout"] == 0.2


def test_prepare_rejects_tags_that_are_not_iob2_or_not_classlabels(tiny_wordpiece):
    obj = TokenClassification(ner_cfg(), tiny_wordpiece, 32)
    with pytest.raises(LmlabError, match="data.train: tag 'PER' is not IOB2"):
        obj.prepare({"train": tagged([(["a"], ["PER"])], names=["O", "PER"])})
    plain = datasets.Dataset.from_dict({"tokens": [["a"]], "tags": [["O"]]})
    with pytest.raises(LmlabError, match="column 'tags'.*ClassLabel"):
        obj.prepare({"train": plain})


def test_rows_with_as_many_tags_as_tokens_only(tiny_wordpiece):
    bad = datasets.Dataset.from_dict(
        {"tokens": [["a"], ["a", "b"]], "tags": [[0], [0]]},
        features=Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=TAGS))}),
    )
    with pytest.raises(LmlabError, match="data.train: row 1 has 2 tokens but 1 tags"):
        objective(tiny_wordpiece).preprocess(bad, "train")


def test_slow_tokenizers_are_refused(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    obj.tokenizer = SimpleNamespace(is_fast=False)
    with pytest.raises(LmlabError, match="model.tokenizer: .*fast"):
        obj.preprocess(tagged([(["a"], ["O"])]), "train")


def test_texts_join_the_tokens():
    data = tagged([(["Alice", "went"], ["B-PER", "O"]), (["home"], ["O"])])
    assert TokenClassification.texts(data) == ["Alice went", "home"]


# ================================================================ alignment


SENTENCE = (["Unbelievable", "passengers", "walk", "quickly"], ["B-PER", "I-PER", "O", "B-LOC"])


def test_each_word_labelled_on_its_first_sub_word_only(tiny_wordpiece):
    tok = tiny_wordpiece
    pieces = [len(tok.tokenize(w)) for w in SENTENCE[0]]
    # every word splits into several pieces (e.g. 7, 6, 3, 2: ties in the WordPiece
    # trainer's merges may shift a piece between runs)
    assert min(pieces) >= 2 and pieces[0] == 7
    row = objective(tok).preprocess(tagged([SENTENCE]), "train")[0]
    assert row["input_ids"] == tok(SENTENCE[0], is_split_into_words=True)["input_ids"]
    # [CLS] unbelievable passengers walk quickly [SEP]: the tag on each first piece only
    labels, word_index = [X], [-1]
    for word, (tag, n) in enumerate(zip([B_PER, I_PER, OUT, B_LOC], pieces)):
        labels += [tag, *[X] * (n - 1)]
        word_index += [word, *[-1] * (n - 1)]
    assert row["labels"] == [*labels, X]
    assert row["word_index"] == [*word_index, -1]
    assert row["example_id"] == [0 if w >= 0 else -1 for w in row["word_index"]]


def test_tags_map_onto_the_training_tag_set_by_name(tiny_wordpiece):
    names = ["B-LOC", "O", "B-PER", "I-PER", "I-LOC"]  # another order in this split
    row = objective(tiny_wordpiece).preprocess(tagged([SENTENCE], names=names), "validation")[0]
    assert [label for label in row["labels"] if label != X] == [B_PER, I_PER, OUT, B_LOC]


def test_truncated_words_are_predicted_o(tiny_wordpiece):
    # 12 tokens: [CLS] unbelievable(7) and 3 of passengers' 6 pieces [SEP]; walk, quickly cut
    obj = objective(tiny_wordpiece, max_length=12)
    examples = tagged([SENTENCE])
    row = obj.preprocess(examples, "validation")[0]
    assert row["labels"] == [X, B_PER, X, X, X, X, X, X, I_PER, X, X, X]
    batch = obj.collate([row])
    model = FixedLogits([one_hot_logits([OUT, B_PER, *[OUT] * 6, I_PER, OUT, OUT, OUT])])
    metrics, records = obj.eval_step(model, batch)
    assert records == [{"example_id": 0, "pred": [B_PER, I_PER]}]
    assert metrics["loss"][1] == 2  # two labelled positions
    s = obj.score(records, examples, model)
    # pred B-PER I-PER O O: PER found, LOC (cut off) missed
    assert s["accuracy"] == pytest.approx(3 / 4)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert s["f1_LOC"] == 0.0 and s["f1_PER"] == 1.0


def test_a_word_without_sub_words_is_predicted_o(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    examples = tagged([(["walk", "", "quickly"], ["B-LOC", "O", "B-PER"])])
    row = obj.preprocess(examples, "validation")[0]
    assert row["labels"] == [X, B_LOC, X, X, B_PER, X, X]  # "" has no piece
    model = FixedLogits([one_hot_logits([OUT, B_LOC, OUT, OUT, B_PER, OUT, OUT])])
    _, records = obj.eval_step(model, obj.collate([row]))
    assert records[0]["pred"] == [B_LOC, -1, B_PER]
    s = obj.score(records, examples, model)
    assert s["accuracy"] == 1.0 and s["f1"] == 1.0


DOCUMENTS = [  # (tokens, tags, document)
    (["walk"], ["B-LOC"], 1),
    (["quickly", "walk"], ["B-PER", "I-PER"], 1),
    (["walk"], ["O"], 1),
    (["quickly"], ["B-LOC"], 2),
]


def in_documents(rows=DOCUMENTS):
    return tagged([(tokens, tags) for tokens, tags, _ in rows]).add_column(
        "document", [doc for *_, doc in rows]
    )


def test_document_context_packs_consecutive_sentences_of_one_document(tiny_wordpiece):
    tok = tiny_wordpiece
    words = [tokens for tokens, *_ in DOCUMENTS]
    pieces = [len(tok.tokenize(" ".join(w))) for w in words]
    obj = objective(tok, max_length=2 + pieces[0] + pieces[1], document_context=True)
    rows = obj.preprocess(in_documents(), "validation")
    # room for two sentences: 0 and 1 share an input; 2 finds no room; 3 is a new document
    assert [sorted(set(row["example_id"]) - {-1}) for row in rows] == [[0, 1], [2], [3]]
    assert rows[0]["input_ids"] == tok([*words[0], *words[1]], is_split_into_words=True).input_ids
    plain = objective(tok, max_length=64, document_context=False)
    alone = plain.preprocess(in_documents(), "x")
    assert len(alone) == 4
    in_context = objective(tok, max_length=64, document_context=True)
    assert plain.fingerprint() != in_context.fingerprint()  # cached apart
    tagged_as = [t for t in rows[0]["labels"] if t != X]
    assert tagged_as == [B_LOC, B_PER, I_PER]
    assert tagged_as == [t for row in alone.select([0, 1]) for t in row["labels"] if t != X]
    # Predictions go back to their own sentences: the gold tags predicted score 1.0.
    batch = obj.collate(list(rows))
    model = FixedLogits([one_hot_logits(row.clamp(min=0).tolist()) for row in batch["labels"]])
    _, records = obj.eval_step(model, batch)
    assert sorted((r["example_id"], r["pred"]) for r in records) == [
        (0, [B_LOC]),
        (1, [B_PER, I_PER]),
        (2, [OUT]),
        (3, [B_LOC]),
    ]
    assert obj.score(records, in_documents(), model)["f1"] == 1.0


def test_sentences_without_a_document_column_stay_alone(tiny_wordpiece):
    obj = objective(tiny_wordpiece, document_context=True)
    examples = in_documents().remove_columns("document")
    assert len(obj.preprocess(examples, "train")) == len(DOCUMENTS)


def test_collate_pads_labels_with_ignore(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    rows = list(obj.preprocess(tagged([SENTENCE, (["walk"], ["B-LOC"])]), "train"))
    batch = obj.collate(rows)
    n = len(rows[0]["input_ids"])
    assert batch["input_ids"].shape == (2, n)
    assert batch["labels"][1].tolist() == [X, B_LOC, X, X, X] + [X] * (n - 5)
    assert batch["word_index"][1].tolist() == [-1, 0, -1, -1, -1] + [-1] * (n - 5)
    assert batch["input_ids"][1, 5:].eq(tiny_wordpiece.pad_token_id).all()
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * (n - 5)
    assert batch["example_id"][1].tolist() == [-1, 1, -1, -1, -1] + [-1] * (n - 5)


def test_step_token_accuracy_over_labelled_positions_only(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    rows = list(obj.preprocess(tagged([(["walk", "quickly"], ["B-LOC", "O"])]), "train"))
    # [CLS] wa ##l ##k quick ##ly [SEP]; the word starts get B-LOC then B-PER (wrong)
    model = FixedLogits([one_hot_logits([B_PER, B_LOC, OUT, OUT, B_PER, OUT, I_LOC])])
    metrics = obj.step(model, obj.collate(rows))
    assert metrics["accuracy"][0].item() == pytest.approx(0.5)
    assert metrics["accuracy"][1] == 2


def test_score_counts_repeated_examples_once(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    examples = tagged([(["a", "b"], ["B-PER", "O"]), (["c"], ["B-LOC"])])
    records = [
        {"example_id": 0, "pred": [B_PER, OUT]},
        {"example_id": 1, "pred": [OUT]},
        {"example_id": 0, "pred": [OUT, OUT]},  # DDP padding: ignored
    ]
    s = obj.score(records, examples, model=None)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert (s["precision"], s["recall"]) == pytest.approx((1.0, 0.5))


# ================================================================ prediction


def test_predict_from_text_gives_tags_and_entities(tiny_wordpiece):
    obj = objective(tiny_wordpiece, max_length=6)
    examples = datasets.Dataset.from_dict({"text": ["walk quickly  walk"]})
    rows = list(obj.preprocess(examples, "predict"))
    assert "labels" not in rows[0]
    # [CLS] wa ##l ##k quick [SEP]: the second walk is cut off
    model = FixedLogits([one_hot_logits([OUT, B_PER, OUT, OUT, I_PER, OUT])])
    records = obj.predict_step(model, obj.collate(rows))
    assert obj.decode(records, examples) == [
        {
            "tokens": ["walk", "quickly", "walk"],
            "tags": ["B-PER", "I-PER", "O"],
            "entities": [{"type": "PER", "start": 0, "end": 2, "text": "walk quickly"}],
        }
    ]


def test_decode_orders_entities_by_position(tiny_wordpiece):
    obj = objective(tiny_wordpiece)
    examples = datasets.Dataset.from_dict({"tokens": [["x", "Bob", "in", "Rome", "Paris"]]})
    out = obj.decode([{"example_id": 0, "pred": [OUT, B_PER, OUT, B_LOC, B_LOC]}], examples)[0]
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in out["entities"]] == [
        ("PER", 1, 2, "Bob"),
        ("LOC", 3, 4, "Rome"),
        ("LOC", 4, 5, "Paris"),
    ]


# ================================================================ a real run


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


def memorisable_sentences(n: int = 32) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(0)
    sentences = []
    for i in range(n):
        person, place = rng.choice(["alice", "bob", "carol"]), rng.choice(["paris", "rome"])
        words = ["yesterday", person, "smith", "went", "to", place, "city"]
        tags = ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]
        if i % 2:  # the other word order, so that position alone does not give tags away
            words, tags = words[3:] + words[:3], tags[3:] + tags[:3]
        sentences.append((words, tags))
    return sentences


@pytest.fixture(scope="module")
def memorisable_run(tmp_path_factory, lmlab_cache_dir):
    """32 sentences whose words give their tags away, trained on and validated on (parquet
    keeps the ClassLabel tags), for 40 steps at a high learning rate."""
    from lmlab.build import compose, train

    data = tmp_path_factory.mktemp("ner-data")
    for split in ("train", "validation"):
        tagged(memorisable_sentences()).to_parquet(str(data / f"{split}.parquet"))
    run_dir = tmp_path_factory.mktemp("ner-run")
    overrides = [
        *TINY_BERT,
        "objective=token_classification",
        "objective.lr=3e-3",
        "data=hub",
        f"data.hub_name={data}",
        "data.max_length=32",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        f"paths.cache_dir={lmlab_cache_dir}",
    ]
    return run_dir, train(compose(overrides, run_dir=str(run_dir)))


def test_tiny_bert_learns_a_memorisable_tagging_task(memorisable_run):
    import csv

    run_dir, metrics = memorisable_run
    assert metrics["val/f1"] == 1.0
    assert metrics["val/f1_PER"] == metrics["val/f1_LOC"] == 1.0
    assert metrics["val/accuracy"] == 1.0
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses[-1] < losses[0] - 0.5
    assert any(r["train/accuracy"] for r in rows)


def test_export_tags_raw_text_through_restore(memorisable_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run_dir, _ = memorisable_run
    model = AutoModelForTokenClassification.from_pretrained(run_dir / "export").eval()
    obj = TokenClassification(ner_cfg(), AutoTokenizer.from_pretrained(run_dir / "export"), 32)
    obj.restore(model)
    assert obj.labels == TAGS
    examples = datasets.Dataset.from_dict({"text": ["went to rome city yesterday bob smith"]})
    with torch.no_grad():
        records = obj.predict_step(model, obj.collate(list(obj.preprocess(examples, "predict"))))
    out = obj.decode(records, examples)[0]
    assert out["tags"] == ["O", "O", "B-LOC", "I-LOC", "O", "B-PER", "I-PER"]
    assert out["entities"] == [
        {"type": "LOC", "start": 2, "end": 4, "text": "rome city"},
        {"type": "PER", "start": 5, "end": 7, "text": "bob smith"},
    ]
