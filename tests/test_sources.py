"""Tests for the lmlab.data.sources package (load_source through its readers, row checks,
labels and splits) on tiny fixtures written into tmp_path."""

import dataclasses
import json
import os
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from lmlab.config import ColumnsConfig, DataConfig
from lmlab.data.sources import load_source, to_iob2
from lmlab.errors import LmlabError


def make_cfg(**overrides):
    """A typed DataConfig (its defaults), val_fraction 0.25 unless set."""
    columns = ColumnsConfig(**overrides.pop("columns", {}))
    return DataConfig(name="test", columns=columns, **{"val_fraction": 0.25, **overrides})


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def texts(ds):
    return list(ds["text"])


# ---------------------------------------------------------------- text documents


def test_blank_line_documents(tmp_path):
    train = write(
        tmp_path / "train.txt", "  first doc  \nline two   \n\n\n\nsecond\n \t \nthird  \n\n"
    )
    val = write(tmp_path / "val.txt", "v1\n\nv2\n")
    data, _ = load_source(make_cfg(train=train, validation=val), seed=0)
    assert texts(data["train"]) == ["first doc  \nline two", "second", "third"]
    assert texts(data["validation"]) == ["v1", "v2"]
    assert set(data) == {"train", "validation"}


def test_line_and_file_modes(tmp_path):
    train = write(tmp_path / "t.txt", "a b\n\n  c  \nd\n")
    val = write(tmp_path / "v.txt", "x\n")
    lines, _ = load_source(make_cfg(train=train, validation=val, documents="line"), seed=0)
    assert texts(lines["train"]) == ["a b", "c", "d"]
    whole, _ = load_source(make_cfg(train=train, validation=val, documents="file"), seed=0)
    assert texts(whole["train"]) == ["a b\n\n  c  \nd"]


def test_directory_and_glob(tmp_path):
    write(tmp_path / "d" / "b.txt", "B")
    write(tmp_path / "d" / "a.txt", "A")
    write(tmp_path / "d" / "c.raw", "C")
    write(tmp_path / "v.txt", "V")
    val = str(tmp_path / "v.txt")
    by_dir, _ = load_source(make_cfg(train=str(tmp_path / "d"), validation=val), seed=0)
    assert texts(by_dir["train"]) == ["A", "B", "C"]
    by_glob, _ = load_source(make_cfg(train=str(tmp_path / "d" / "*.txt"), validation=val), seed=0)
    assert texts(by_glob["train"]) == ["A", "B"]


def test_test_split_and_max_samples(tmp_path):
    train = write(tmp_path / "t.txt", "\n".join(f"t{i}" for i in range(10)))
    val = write(tmp_path / "v.txt", "\n".join(f"v{i}" for i in range(5)))
    test = write(tmp_path / "s.txt", "\n".join(f"s{i}" for i in range(5)))
    cfg = make_cfg(
        train=train,
        validation=val,
        test=test,
        documents="line",
        max_train_samples=3,
        max_eval_samples=2,
    )
    data, _ = load_source(cfg, seed=0)
    assert texts(data["train"]) == ["t0", "t1", "t2"]
    assert texts(data["validation"]) == ["v0", "v1"]
    assert texts(data["test"]) == ["s0", "s1"]


# ---------------------------------------------------------------- validation carve


def test_val_carve_deterministic_and_seeded(tmp_path):
    lines = [f"doc{i}" for i in range(20)]
    train = write(tmp_path / "t.txt", "\n".join(lines))
    cfg = make_cfg(train=train, documents="line", val_fraction=0.25)
    a, _ = load_source(cfg, seed=1)
    b, _ = load_source(cfg, seed=1)
    c, _ = load_source(cfg, seed=2)
    assert len(a["train"]) == 15 and len(a["validation"]) == 5
    assert sorted(texts(a["train"]) + texts(a["validation"])) == sorted(lines)
    assert texts(a["validation"]) == texts(b["validation"])
    assert texts(a["validation"]) != texts(c["validation"])


@pytest.mark.parametrize("view", ["plain", "selected", "formatted"])
def test_select_rows_is_datasets_select(view):
    """The carve's selection, which skips datasets' Python list of the rows, gives what
    `select` gives: rows, fingerprint and format, on a dataset that is itself a selection."""
    import datasets
    import numpy as np

    from lmlab.data.sources.splits import select_rows

    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "n": list(range(30))})
    ds = {
        "plain": ds,
        "selected": ds.select([29, 3, 7, 11, 12, 20, 0]),
        "formatted": ds.with_format("numpy", columns=["n"]),
    }[view]
    rows = np.array([0, 2, 3, 6])
    ours, theirs = select_rows(ds, rows, "f1"), ds.select(rows, new_fingerprint="f1")
    assert ours._fingerprint == theirs._fingerprint == "f1"
    assert ours.format == theirs.format
    assert str(ours[:]) == str(theirs[:]) and len(ours) == 4


def test_val_carve_at_least_one_then_truncate(tmp_path):
    train = write(tmp_path / "t.txt", "\n".join(f"d{i}" for i in range(5)))
    data, _ = load_source(
        make_cfg(train=train, documents="line", val_fraction=0.01, max_train_samples=2), seed=0
    )
    assert len(data["validation"]) == 1
    assert len(data["train"]) == 2


def test_val_carve_needs_two_examples(tmp_path):
    train = write(tmp_path / "t.txt", "only one")
    with pytest.raises(LmlabError, match="at least 2"):
        load_source(make_cfg(train=train), seed=0)


# ---------------------------------------------------------------- tabular formats


def test_csv_with_column_mapping(tmp_path):
    train = write(tmp_path / "t.csv", 'sentence,label\n"hello, world",1\nNA,0\n')
    val = write(tmp_path / "v.csv", "sentence,label\nbye,0\n")
    data, _ = load_source(
        make_cfg(train=train, validation=val, columns={"text": "sentence"}), seed=0
    )
    assert data["train"].column_names == ["text", "label"]
    assert texts(data["train"]) == ["hello, world", "NA"]  # NA stays a string
    assert list(data["train"]["label"]) == [1, 0]
    assert data["train"].features["label"].names == ["0", "1"]
    assert texts(data["validation"]) == ["bye"]


def test_tsv_keeps_quotes(tmp_path):
    train = write(tmp_path / "t.tsv", 'sentence\tlabel\nhe said "hi" \t1\n"quoted start\t0\n')
    val = write(tmp_path / "v.tsv", "sentence\tlabel\nok\t1\n")
    data, _ = load_source(
        make_cfg(train=train, validation=val, columns={"text": "sentence"}), seed=0
    )
    assert texts(data["train"]) == ['he said "hi" ', '"quoted start']
    assert list(data["train"]["label"]) == [1, 0]


def test_jsonl_with_column_mapping(tmp_path):
    rows = [{"body": "alpha", "y": "pos"}, {"body": "beta", "y": "neg"}]
    train = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    val = write(tmp_path / "v.jsonl", json.dumps({"body": "gamma", "y": "pos"}) + "\n")
    cfg = make_cfg(train=train, validation=val, columns={"text": "body", "label": "y"})
    data, _ = load_source(cfg, seed=0)
    assert sorted(data["train"].column_names) == ["label", "text"]
    assert texts(data["train"]) == ["alpha", "beta"]
    assert data["train"].features["label"].names == ["neg", "pos"]
    assert list(data["train"]["label"]) == [1, 0]
    assert list(data["validation"]["label"]) == [1]


def test_mapped_column_replaces_existing_canonical(tmp_path):
    train = write(tmp_path / "t.jsonl", json.dumps({"text": "old", "clean": "new"}) + "\n")
    data, _ = load_source(
        make_cfg(train=train, validation=train, columns={"text": "clean"}), seed=0
    )
    assert data["train"].column_names == ["text"]
    assert texts(data["train"]) == ["new"]


# ---------------------------------------------------------------- hub and pydoc


def test_hub_local_directory(tmp_path):
    hub = tmp_path / "hub"
    write(hub / "train.jsonl", "".join(json.dumps({"s": f"t{i}"}) + "\n" for i in range(4)))
    write(hub / "validation.jsonl", json.dumps({"s": "v0"}) + "\n")
    cfg = make_cfg(source="hub", hub_name=str(hub), columns={"text": "s"})
    data, fp = load_source(cfg, seed=0)
    assert set(data) == {"train", "validation"}
    assert texts(data["train"]) == ["t0", "t1", "t2", "t3"]
    assert texts(data["validation"]) == ["v0"]
    assert load_source(cfg, seed=0)[1] == fp
    with pytest.raises(LmlabError, match="data.test: no split 'nope'"):
        load_source(make_cfg(source="hub", hub_name=str(hub), test="nope"), seed=0)


def test_pydoc_corpus():
    data, fp = load_source(make_cfg(source="pydoc", val_fraction=0.1), seed=0)
    total = len(data["train"]) + len(data["validation"])
    assert total > 50
    assert len(data["validation"]) >= 1
    assert all(t.strip() for t in texts(data["train"]))
    assert load_source(make_cfg(source="pydoc", val_fraction=0.1), seed=0)[1] == fp


# ---------------------------------------------------------------- fingerprint


def test_fingerprint(tmp_path):
    train = write(tmp_path / "t.txt", "a\n\nb\n\nc\n")
    cfg = make_cfg(train=train)
    _, fp = load_source(cfg, seed=0)
    assert len(fp) == 40 and int(fp, 16) >= 0
    assert load_source(make_cfg(train=train), seed=0)[1] == fp
    assert load_source(cfg, seed=1)[1] != fp
    assert load_source(make_cfg(train=train, val_fraction=0.5), seed=0)[1] != fp
    assert load_source(make_cfg(train=train, encoding="latin-1"), seed=0)[1] != fp
    assert load_source(make_cfg(train=train, delimiter=";"), seed=0)[1] != fp
    write(tmp_path / "t.txt", "a\n\nb\n\nchanged\n")
    os.utime(train, ns=(1, 1))  # a distinct mtime even on coarse-clock filesystems
    assert load_source(cfg, seed=0)[1] != fp


# ---------------------------------------------------------------- errors


def test_bad_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nstill fine\n\nbad \xff byte\n")
    with pytest.raises(LmlabError, match=r"bad\.txt:4: not valid UTF-8"):
        load_source(make_cfg(train=str(path)), seed=0)


def test_missing_file_names_key(tmp_path):
    with pytest.raises(LmlabError, match=r"data\.train: no file matches '.*nope\.txt'"):
        load_source(make_cfg(train=str(tmp_path / "nope.txt")), seed=0)
    train = write(tmp_path / "t.txt", "a\n\nb\n")
    with pytest.raises(LmlabError, match=r"data\.validation: no file matches"):
        load_source(make_cfg(train=train, validation=str(tmp_path / "*.none")), seed=0)


def test_missing_column_names_key(tmp_path):
    train = write(tmp_path / "t.csv", "sentence,label\nhi,1\nyo,0\n")
    with pytest.raises(
        LmlabError, match=r"data\.columns\.text: column 'body'.*available: sentence, label"
    ):
        load_source(make_cfg(train=train, columns={"text": "body"}), seed=0)


def test_no_documents_names_file(tmp_path):
    train = write(tmp_path / "empty.txt", "\n  \n\n")
    with pytest.raises(LmlabError, match=r"data\.train: no non-empty documents in '.*empty\.txt'"):
        load_source(make_cfg(train=train), seed=0)


@pytest.mark.parametrize("key,value", [("source", "web"), ("format", "xml"), ("documents", "para")])
def test_unknown_choice(tmp_path, key, value):
    with pytest.raises(LmlabError, match=rf"data\.{key}: unknown value '{value}' \(allowed: "):
        load_source(make_cfg(train=str(tmp_path), **{key: value}), seed=0)


def test_omegaconf_cfg(tmp_path):
    train = write(tmp_path / "t.txt", "a\n\nb\n\nc\n\nd\n")
    plain = dataclasses.asdict(make_cfg(train=train, columns={"text": "text"}))
    cfg = OmegaConf.create(plain)  # a plain config, not of the DataConfig schema
    data, fp = load_source(cfg, seed=3)
    assert len(data["train"]) + len(data["validation"]) == 4
    assert fp == load_source(make_cfg(train=train, columns={"text": "text"}), seed=3)[1]


def test_settings_not_given_take_the_dataconfig_defaults(tmp_path):
    train = write(tmp_path / "t.txt", "a\n\nb\n\nc\n\nd\n")
    _, fp = load_source(make_cfg(train=train, val_fraction=0.05), seed=3)
    assert load_source(OmegaConf.structured(make_cfg(train=train, val_fraction=0.05)), 3)[1] == fp
    assert load_source({"train": train}, seed=3)[1] == fp
    assert load_source(OmegaConf.create({"train": train}), seed=3)[1] == fp
    assert load_source(SimpleNamespace(train=train), seed=3)[1] == fp
    with pytest.raises(LmlabError, match=r"^data\.tag_column: .*'last'"):
        load_source({"train": train, "tag_column": "last"}, seed=3)


# ---------------------------------------------------------------- readers


def test_json_array_and_json_lines_in_a_json_file(tmp_path):
    records = [{"body": "one", "y": 2}, {"body": "two", "y": 1}, {"body": "three", "y": 2}]
    array = write(tmp_path / "a.json", json.dumps(records, indent=2))
    lines = write(tmp_path / "l.json", "".join(json.dumps(r) + "\n" for r in records))
    for train in (array, lines):
        cfg = make_cfg(train=train, validation=train, columns={"text": "body", "label": "y"})
        data, _ = load_source(cfg, seed=0)
        assert texts(data["train"]) == ["one", "two", "three"]
        assert data["train"].features["label"].names == ["1", "2"]
        assert list(data["train"]["label"]) == [1, 0, 1]


def test_csv_numbers_stay_strings_in_text_columns(tmp_path):
    train = write(tmp_path / "t.csv", "sentence,score,label\n007,1.5,a\n42,-2,b\n")
    cfg = make_cfg(train=train, validation=train, columns={"text": "sentence"})
    data, _ = load_source(cfg, seed=0)
    assert texts(data["train"]) == ["007", "42"]  # mapped onto text: never numbers
    assert list(data["train"]["score"]) == [1.5, -2.0]


def test_tsv_sst2_style_with_label_names(tmp_path):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\nit 's \" fine \t1\nbad \t0\ngood \t1\n")
    cfg = make_cfg(
        train=train, validation=train, columns={"text": "sentence"}, labels=["negative", "positive"]
    )
    data, _ = load_source(cfg, seed=0)
    assert texts(data["train"]) == ["it 's \" fine ", "bad ", "good "]
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert list(data["train"]["label"]) == [1, 0, 1]


# ---------------------------------------------------------------- delimiters and encodings

REVIEWS = [
    ("un café très froid", "negative"),
    ("ni bon ni mauvais; correct", "neutral"),
    ("très bien, déjà fini", "positive"),
    ("à revoir", "neutral"),
]


def test_latin1_semicolon_csv_with_three_labels(tmp_path):
    """A ;-separated Latin-1 CSV with its own column names: é and è are single bytes that
    are not valid UTF-8, so the default encoding stops at the first such line."""
    lines = ["review;sentiment", *(f'"{text}";{label}' for text, label in REVIEWS)]
    path = tmp_path / "reviews.csv"
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    options = dict(
        train=str(path),
        validation=str(path),
        columns={"text": "review", "label": "sentiment"},
        labels=["negative", "neutral", "positive"],
        delimiter=";",
    )
    with pytest.raises(LmlabError, match=r"reviews\.csv:2: not valid UTF-8 \(invalid"):
        load_source(make_cfg(**options), seed=0)
    data, _ = load_source(make_cfg(**options, encoding="latin-1"), seed=0)
    assert texts(data["train"]) == [text for text, _ in REVIEWS]
    assert data["train"].features["label"].names == ["negative", "neutral", "positive"]
    assert list(data["train"]["label"]) == [0, 1, 2, 1]


@pytest.mark.parametrize("delimiter, char", [("|", "|"), ("@", "@"), ("\\t", "\t")])
@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_other_delimiters(tmp_path, delimiter, char, ext):
    rows = [["text", "label", "note"], ["a, b", "pos", "x"], ["c", "neg", ""]]
    train = write(tmp_path / f"t.{ext}", "".join(char.join(row) + "\n" for row in rows))
    data, _ = load_source(make_cfg(train=train, validation=train, delimiter=delimiter), seed=0)
    assert texts(data["train"]) == ["a, b", "c"]
    assert list(data["train"]["note"]) == ["x", ""]
    assert data["train"].features["label"].names == ["neg", "pos"]


def test_cp1252_quotes_in_every_reader(tmp_path):
    text = "l\u2019été \u20ac"  # ’ and € exist in cp1252 but not in latin-1
    files = {
        "t.txt": text,
        "t.csv": f"text,label\n{text},x\n",
        "t.jsonl": json.dumps({"text": text, "label": "x"}, ensure_ascii=False),
        "t.json": json.dumps([{"text": text, "label": "x"}], ensure_ascii=False),
        "t.conll": f"{text.split()[0]} O\n",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content.encode("cp1252"))
        cfg = make_cfg(train=str(path), validation=str(path), encoding="cp1252")
        data, _ = load_source(cfg, seed=0)
        column = "tokens" if name.endswith(".conll") else "text"
        got = data["train"][column][0]
        assert got == ([text.split()[0]] if column == "tokens" else text), name


def test_squad_in_latin1(tmp_path):
    context = "Le café est très chaud."
    qa = {"id": "q1", "question": "Où ?", "answers": [{"text": "café", "answer_start": 3}]}
    squad = {"data": [{"title": "Café", "paragraphs": [{"context": context, "qas": [qa]}]}]}
    path = tmp_path / "s.json"
    path.write_bytes(json.dumps(squad, ensure_ascii=False).encode("latin-1"))
    cfg = make_cfg(train=str(path), validation=str(path), format="squad", encoding="latin-1")
    data, _ = load_source(cfg, seed=0)
    assert data["train"][0]["context"] == context
    assert data["train"][0]["answers"]["text"] == ["café"]


@pytest.mark.parametrize(
    "name, content, encoding, error",
    [
        ("bad.txt", b"fine\nstill\n\nbad \xff\n", "utf-8", r"bad\.txt:4: not valid UTF-8"),
        ("bad.txt", b"fine\nstill\n\nbad \xff\n", "UTF8", r"bad\.txt:4: not valid UTF-8"),
        ("bad.csv", b"text,label\na,x\nb \x81,y\n", "cp1252", r"bad\.csv:3: not valid cp1252"),
        ("bad.json", b'[\n{"text": "\x81"}]', "cp1252", r"bad\.json:2: not valid cp1252"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "\x81"}\n', "cp1252", r"bad\.jsonl:2: not valid"),
    ],
)
def test_undecodable_bytes_name_file_and_line_in_any_encoding(
    tmp_path, name, content, encoding, error
):
    path = tmp_path / name
    path.write_bytes(content)
    cfg = make_cfg(train=str(path), validation=str(path), encoding=encoding)
    with pytest.raises(LmlabError, match=error):
        load_source(cfg, seed=0)


def test_undecodable_line_skipped_in_another_encoding(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\ncaf\xe9,x\nb \x81,y\nc,x\n")
    cfg = make_cfg(train=str(path), validation=str(path), encoding="cp1252", skip_bad_rows=True)
    data, _ = load_source(cfg, seed=0)
    assert texts(data["train"]) == ["café", "c"]
    assert data.skipped["train"].counts == {"not valid cp1252": 1}
    assert data.skipped["train"].first.endswith(
        "t.csv:3: not valid cp1252 (character maps to <undefined> at byte 20)"
    )


@pytest.mark.parametrize(
    "setting, value, error",
    [
        ("delimiter", ";;", r"data\.delimiter: expected one character .*, got ';;'$"),
        ("delimiter", "", r"data\.delimiter: expected one character .*, got ''$"),
        ("delimiter", '"', r"data\.delimiter: expected one character other than a quote"),
        ("encoding", "latin-9x", r"data\.encoding: unknown encoding 'latin-9x' \(expected"),
        ("encoding", "base64", r"data\.encoding: unknown encoding 'base64'"),  # not a text codec
    ],
)
def test_bad_delimiter_or_encoding_is_one_line(tmp_path, setting, value, error):
    train = write(tmp_path / "t.txt", "a\n\nb\n")  # checked even when no csv is read
    with pytest.raises(LmlabError, match=error) as info:
        load_source(make_cfg(train=train, **{setting: value}), seed=0)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- labels


def test_string_labels_three_classes_sorted(tmp_path):
    rows = [("a", "neutral"), ("b", "positive"), ("c", "negative"), ("d", "neutral")]
    train = write(
        tmp_path / "t.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    )
    val = write(tmp_path / "v.jsonl", json.dumps({"text": "e", "label": "positive"}) + "\n")
    data, _ = load_source(make_cfg(train=train, validation=val), seed=0)
    assert data["train"].features["label"].names == ["negative", "neutral", "positive"]
    assert list(data["train"]["label"]) == [1, 2, 0, 1]
    assert list(data["validation"]["label"]) == [2]


def test_int_labels_sorted_numerically_and_indexing_given_names(tmp_path):
    train = write(tmp_path / "t.csv", "text,label\na,10\nb,2\nc,2\nd,9\n")
    data, _ = load_source(make_cfg(train=train, validation=train), seed=0)
    assert data["train"].features["label"].names == ["2", "9", "10"]
    assert list(data["train"]["label"]) == [2, 0, 0, 1]
    named = make_cfg(train=train, validation=train, labels=["x", "y", "z"])
    with pytest.raises(LmlabError, match=r"t\.csv:2: label 10 not in the label set"):
        load_source(named, seed=0)
    ok = write(tmp_path / "ok.csv", "text,label\na,2\nb,0\nc,1\n")
    data, _ = load_source(make_cfg(train=ok, validation=ok, labels=["x", "y", "z"]), seed=0)
    assert data["train"].features["label"].names == ["x", "y", "z"]
    assert list(data["train"]["label"]) == [2, 0, 1]


def test_label_setting_errors(tmp_path):
    train = write(tmp_path / "t.jsonl", json.dumps({"text": "a", "label": 0.5}) + "\n")
    with pytest.raises(
        LmlabError, match=r"data\.columns\.label: the train column 'label' holds .*float64"
    ):
        load_source(make_cfg(train=train, validation=train), seed=0)
    ok = write(tmp_path / "ok.jsonl", json.dumps({"text": "a", "label": "x"}) + "\n")
    with pytest.raises(LmlabError, match=r"data\.labels: 'x' appears more than once"):
        load_source(make_cfg(train=ok, validation=ok, labels=["x", "y", "x"]), seed=0)
    mixed = write(tmp_path / "m.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
    message = r"m\.jsonl:2: column 'label' holds a string here but a number"
    with pytest.raises(LmlabError, match=message):
        load_source(make_cfg(train=mixed, validation=mixed), seed=0)


# ---------------------------------------------------------------- bad rows


def _squad(questions, version="1.1"):
    """One article, one paragraph "The cat sat." with the given qas."""
    paragraph = {"context": "The cat sat.", "qas": questions}
    return json.dumps({"version": version, "data": [{"title": "Cats", "paragraphs": [paragraph]}]})


BAD_ROWS = {
    "empty text after a multi-line field": (
        "t.csv",
        'text,label\n"two\nlines",a\nok,b\n"  ",a\n',
        {},
        r"t\.csv:5: empty text$",
    ),
    "label outside data.labels": (
        "t.tsv",
        "sentence\tlabel\nfine\tpos\nmeh\tmixed\n",
        {"columns": {"text": "sentence"}, "labels": ["neg", "pos"]},
        r"t\.tsv:3: label 'mixed' not in the label set",
    ),
    "tokens and tags of different lengths": (
        "t.jsonl",
        '{"tokens": ["a"], "tags": ["O"]}\n\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
        {},
        r"t\.jsonl:3: 2 tokens but 1 tags",
    ),
    "empty sentence": (
        "t.jsonl",
        '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": [], "tags": []}\n',
        {},
        r"t\.jsonl:2: empty sentence",
    ),
    "answer not at answer_start": (
        "t.json",
        _squad(
            [
                {"id": "q1", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]},
                {"id": "q2", "question": "Did?", "answers": [{"text": "sat", "answer_start": 4}]},
            ]
        ),
        {},
        r"t\.json: article 0, paragraph 0, question q2: answer 'sat' is not at answer_start 4",
    ),
    "missing value in a mapped column": (
        "t.jsonl",
        '{"body": "a", "label": "x"}\n{"label": "y"}\n',
        {"columns": {"text": "body"}},
        r"t\.jsonl:2: missing value in column 'body'",
    ),
    "too many csv fields": ("t.csv", "text,label\na,x\nb,y,z\n", {}, r"t\.csv:3: 3 fields, but"),
    "conll line with too few columns": (
        "t.conll",
        "-DOCSTART- O\n\nEU B-ORG\nrejects\n",
        {},
        r"t\.conll:4: too few columns \(1\)",
    ),
    "json array record": (
        "t.json",
        '[{"text": "a", "label": "x"}, {"text": "", "label": "x"}]',
        {},
        r"t\.json: record 1: empty text",
    ),
    "invalid json line": (
        "t.jsonl",
        '{"text": "a"}\n{"text": \n',
        {},
        r"t\.jsonl:2: not valid JSON",
    ),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_row_names_file_and_line(tmp_path, name):
    file, content, settings, message = BAD_ROWS[name]
    train = write(tmp_path / file, content)
    with pytest.raises(LmlabError, match=message):
        load_source(make_cfg(train=train, validation=train, **settings), seed=0)


def test_bad_row_in_validation_label_set_of_train(tmp_path):
    train = write(tmp_path / "t.csv", "text,label\na,pos\nb,neg\n")
    val = write(tmp_path / "v.csv", "text,label\nc,pos\nd,other\n")
    with pytest.raises(LmlabError, match=r"v\.csv:3: label 'other' not in the label set"):
        load_source(make_cfg(train=train, validation=val), seed=0)


def test_undecodable_csv_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\na,x\nb \xff,y\nc,x\n")
    with pytest.raises(LmlabError, match=r"t\.csv:3: not valid UTF-8"):
        load_source(make_cfg(train=str(path), validation=str(path)), seed=0)
    data, _ = load_source(make_cfg(train=str(path), validation=str(path), skip_bad_rows=True), 0)
    assert texts(data["train"]) == ["a", "c"]
    assert data.skipped["train"].counts == {"not valid UTF-8": 1}


def test_skip_bad_rows_counts_and_summary(tmp_path, capsys):
    train = write(tmp_path / "t.csv", "text,label\ngood,pos\n ,neg\nhmm,x\n\t,pos\nfine,neg\n")
    val = write(tmp_path / "v.csv", "text,label\nok,pos\n")
    cfg = make_cfg(train=train, validation=val, labels=["neg", "pos"], skip_bad_rows=True)
    data, fp = load_source(cfg, seed=0)
    assert texts(data["train"]) == ["good", "fine"]
    assert list(data["train"]["label"]) == [1, 0]
    skipped = data.skipped["train"]
    assert skipped.counts == {"empty text": 2, "label 'x' not in the label set": 1}
    assert skipped.first == f"{train}:3: empty text"
    assert "validation" not in data.skipped
    assert capsys.readouterr().err == (
        "data.train: skipped 3 bad rows (2 empty text, 1 label 'x' not in the label set); "
        f"first: {train}:3: empty text\n"
    )


def test_skip_bad_rows_conll_sentence(tmp_path):
    path = tmp_path / "t.conll"
    path.write_bytes(b"a O\nb O\n\nc \xff O\nd O\n\ne B-X\nf\n\ng O\n")
    cfg = make_cfg(train=str(path), validation=str(path), skip_bad_rows=True)
    data, _ = load_source(cfg, seed=0)
    assert list(data["train"]["tokens"]) == [["a", "b"], ["g"]]
    assert data.skipped["train"].counts == {"not valid UTF-8": 1, "too few columns": 1}


def test_empty_text_without_labels_is_kept(tmp_path):
    # pre-training corpora (hub wikitext) have blank rows between paragraphs: not bad rows
    train = write(tmp_path / "t.jsonl", '{"text": "a"}\n{"text": ""}\n{"text": "b"}\n')
    data, _ = load_source(make_cfg(train=train, validation=train), seed=0)
    assert texts(data["train"]) == ["a", "", "b"]


def test_malformed_squad_names_its_place(tmp_path):
    doc = {"data": [{"title": "A", "paragraphs": []}, {"title": "B", "paragraphs": "oops"}]}
    train = write(tmp_path / "s.json", json.dumps(doc))
    with pytest.raises(LmlabError, match=r"s\.json: article 1: malformed SQuAD file"):
        load_source(make_cfg(train=train, validation=train, format="squad"), seed=0)


# ---------------------------------------------------------------- conll and IOB2


def test_to_iob2():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
    ]
    assert to_iob2(["I-ORG", "I-PER"]) == ["B-ORG", "B-PER"]
    assert to_iob2(["B-LOC", "I-PER", "I-PER", "O", "I-MISC"]) == [
        "B-LOC",
        "B-PER",
        "I-PER",
        "O",
        "B-MISC",
    ]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC"]
    assert to_iob2(iob2) == iob2
    assert to_iob2(["PER", "O", "LOC"]) == ["PER", "O", "LOC"]
    assert to_iob2([]) == []


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC


Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

Bonn NNP B-NP I-LOC
"""


def test_conll_parsing_docstart_and_iob1(tmp_path):
    train = write(tmp_path / "train.conll", CONLL)
    data, _ = load_source(make_cfg(train=train, validation=train), seed=0)
    assert data["train"].column_names == ["tokens", "tags", "document"]
    assert list(data["train"]["tokens"]) == [
        ["EU", "rejects", "German"],
        ["Peter", "Blackburn"],
        ["Bonn"],
    ]
    assert list(data["train"]["document"]) == [1, 1, 2]  # -DOCSTART- lines above each
    names = data["train"].features["tags"].feature.names
    assert names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    tags = [[names[t] for t in row] for row in data["train"]["tags"]]
    assert tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]


def test_conll_tag_column_choice_and_given_tags(tmp_path):
    train = write(tmp_path / "t.txt", CONLL)
    cfg = make_cfg(train=train, validation=train, format="conll", tag_column=2)
    data, _ = load_source(cfg, seed=0)
    names = data["train"].features["tags"].feature.names
    assert names == ["B-NP", "I-NP", "B-VP"]
    assert [names[t] for t in data["train"]["tags"][1]] == ["B-NP", "I-NP"]
    given = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    data, _ = load_source(make_cfg(train=train, validation=train, format="conll", labels=given), 0)
    assert data["train"].features["tags"].feature.names == given
    assert list(data["train"]["tags"]) == [[3, 0, 7], [1, 2], [5]]
    with pytest.raises(LmlabError, match=r"t\.txt:5: tag 'B-MISC' not in the tag set"):
        load_source(make_cfg(train=train, validation=train, format="conll", labels=given[:7]), 0)


# ---------------------------------------------------------------- squad


def test_squad_v1_flattening(tmp_path):
    qas = [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]},
        {
            "id": "q2",
            "question": "What did it do?",
            "answers": [{"text": "sat", "answer_start": 8}, {"text": "sat.", "answer_start": 8}],
        },
    ]
    train = write(tmp_path / "dev.json", _squad(qas))  # auto: recognised as SQuAD
    data, _ = load_source(make_cfg(train=train, validation=train), seed=0)
    assert data["train"].to_list() == [
        {
            "id": "q1",
            "title": "Cats",
            "context": "The cat sat.",
            "question": "Who sat?",
            "answers": {"text": ["The cat"], "answer_start": [0]},
        },
        {
            "id": "q2",
            "title": "Cats",
            "context": "The cat sat.",
            "question": "What did it do?",
            "answers": {"text": ["sat", "sat."], "answer_start": [8, 8]},
        },
    ]


def test_squad_v2_impossible_questions(tmp_path):
    qas = [
        {"id": "a", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]},
        {
            "id": "b",
            "question": "Dog?",
            "is_impossible": True,
            "answers": [],
            "plausible_answers": [{"text": "cat", "answer_start": 5}],  # wrong, but ignored
        },
    ]
    train = write(tmp_path / "v2.txt", _squad(qas, "v2.0"))
    data, _ = load_source(make_cfg(train=train, validation=train, format="squad"), seed=0)
    assert list(data["train"]["answers"]) == [
        {"text": ["cat"], "answer_start": [4]},
        {"text": [], "answer_start": []},
    ]


# ---------------------------------------------------------------- val_group


def test_val_group_keeps_groups_whole(tmp_path):
    sizes = {"A": 5, "B": 3, "C": 8, "D": 2, "E": 6, "F": 4, "G": 2}  # 30 rows
    rows = [{"text": f"{t}{i}", "title": t} for t, n in sizes.items() for i in range(n)]
    train = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(train=train, val_group="title", val_fraction=0.2)
    for seed in range(5):
        data, _ = load_source(cfg, seed=seed)
        train_titles = set(data["train"]["title"])
        val_titles = set(data["validation"]["title"])
        assert not train_titles & val_titles and train_titles | val_titles == set(sizes)
        assert len(data["validation"]) == sum(sizes[t] for t in val_titles)
        assert 3 <= len(data["validation"]) <= 9  # about 20% of 30
    a, _ = load_source(cfg, seed=3)
    b, _ = load_source(cfg, seed=3)
    assert texts(a["validation"]) == texts(b["validation"])


def test_val_group_errors(tmp_path):
    train = write(
        tmp_path / "t.jsonl", '{"text": "a", "title": "x"}\n{"text": "b", "title": "x"}\n'
    )
    with pytest.raises(LmlabError, match=r"data\.val_group: train has 1 group\(s\) of 'title'"):
        load_source(make_cfg(train=train, val_group="title"), seed=0)
    with pytest.raises(LmlabError, match=r"data\.val_group: no column 'doc' in train"):
        load_source(make_cfg(train=train, val_group="doc"), seed=0)


# ---------------------------------------------------------------- hub directories


def test_hub_save_to_disk_with_class_label_tags(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # the hub's order stands
    features = Features(tokens=List(Value("string")), ner_tags=List(ClassLabel(names=names)))
    train = {"tokens": [["Ann", "Lee"], ["in", "Rome"]], "ner_tags": [[1, 2], [0, 3]]}
    bad = {"tokens": [["ok"], ["a", "b"]], "ner_tags": [[0], [0]]}
    DatasetDict(
        train=Dataset.from_dict(train, features=features),
        validation=Dataset.from_dict(bad, features=features),
    ).save_to_disk(str(tmp_path / "hub"))
    cfg = make_cfg(source="hub", hub_name=str(tmp_path / "hub"), columns={"tags": "ner_tags"})
    with pytest.raises(LmlabError, match=r"hub\[validation\] record 1: 2 tokens but 1 tags"):
        load_source(cfg, seed=0)
    data, _ = load_source(dataclasses.replace(cfg, skip_bad_rows=True), seed=0)
    assert data["train"].features["tags"].feature.names == names
    assert list(data["train"]["tags"]) == [[1, 2], [0, 3]]
    assert list(data["validation"]["tokens"]) == [["ok"]]


def test_hub_class_labels_and_unlabelled_test(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(sentence=Value("string"), label=ClassLabel(names=["negative", "positive"]))
    split = lambda labels: Dataset.from_dict(  # noqa: E731
        {"sentence": [f"s{i}" for i in range(len(labels))], "label": labels}, features=features
    )
    DatasetDict(
        train=split([0, 1, 1]), validation=split([1, -1]), test=split([-1, -1])
    ).save_to_disk(str(tmp_path / "glue"))
    cfg = make_cfg(source="hub", hub_name=str(tmp_path / "glue"), columns={"text": "sentence"})
    with pytest.raises(LmlabError, match=r"glue\[validation\] record 1: no label \(-1\)"):
        load_source(cfg, seed=0)
    data, _ = load_source(dataclasses.replace(cfg, skip_bad_rows=True), seed=0)
    assert set(data) == {"train", "validation"}  # the unlabelled test split is left out
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert list(data["validation"]["label"]) == [1]
    with pytest.raises(LmlabError, match=r"data\.labels: \['neg', 'pos'\] differ from the names"):
        load_source(dataclasses.replace(cfg, labels=["neg", "pos"]), seed=0)


# ---------------------------------------------------------------- real data (slow)

SHARED = os.environ.get(
    "LMLAB_DATA_DIR", os.path.join(os.path.dirname(__file__), "../../shared/data")
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"no shared data at {SHARED}")
@pytest.mark.parametrize(
    "preset,sizes",
    [
        ("sst2", {"train": 67349, "validation": 872}),
        ("conll2003", {"train": 14041, "validation": 3250, "test": 3453}),
        ("squad", None),
    ],
)
def test_real_presets(preset, sizes, monkeypatch):
    from lmlab.build import compose

    monkeypatch.setenv("LMLAB_DATA_DIR", os.path.abspath(SHARED))
    data, _ = load_source(compose([f"data={preset}"]).data, seed=42)
    if sizes:
        assert {name: len(ds) for name, ds in data.items()} == sizes
        return
    titles = set(data["train"]["title"]), set(data["validation"]["title"])
    assert len(data["train"]) + len(data["validation"]) == 10570
    assert len(titles[0] | titles[1]) == 48 and not titles[0] & titles[1]
    assert 0.15 < len(data["validation"]) / 10570 < 0.25
