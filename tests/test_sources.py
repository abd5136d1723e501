"""Tests for lmlab.data.sources on tiny fixtures written into tmp_path."""

import json
import os
from types import SimpleNamespace

import pytest

from lmlab.data.sources import load_source
from lmlab.errors import LmlabError

DEFAULTS = dict(
    source="files",
    train=None,
    validation=None,
    test=None,
    format="auto",
    documents="blank_line",
    hub_name=None,
    hub_subset=None,
    columns={},
    val_fraction=0.25,
    max_train_samples=None,
    max_eval_samples=None,
)


def make_cfg(**overrides):
    return SimpleNamespace(**{**DEFAULTS, **overrides})


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
    assert list(data["train"]["label"]) == ["pos", "neg"]


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
    from omegaconf import OmegaConf

    train = write(tmp_path / "t.txt", "a\n\nb\n\nc\n\nd\n")
    cfg = OmegaConf.create({**DEFAULTS, "train": train, "columns": {"text": "text"}})
    data, fp = load_source(cfg, seed=3)
    assert len(data["train"]) + len(data["validation"]) == 4
    assert fp == load_source(make_cfg(train=train, columns={"text": "text"}), seed=3)[1]
