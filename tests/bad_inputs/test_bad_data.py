"""Bad data files (issue 11 item 9): each is one line on stderr, exit 2, naming the file and
line (or the setting) and what was wrong; the failed start leaves only status.json and the
log in its run dir; with data.skip_bad_rows=true every kind of bad row is skipped and counted.

Files are tiny and written into tmp_path; lmlab-train runs in this process."""

import json

import pytest
from bad_input_harness import make_runner

from lmlab.data.sources import load_source
from lmlab.data.sources.settings import data_config

NER = ["objective=token_classification", "model=bert_tiny", "data=files", "data.format=conll"]
NER_JSONL = ["objective=token_classification", "model=bert_tiny", "data=files"]
CLS = ["objective=sequence_classification", "model=bert_tiny", "data=files"]
GOOD_CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n\n"
GOOD_CSV = "text,label\ngood film,pos\nbad film,neg\nfine,pos\n"


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def ner(tokens, tags):
    return {"tokens": tokens, "tags": tags}


# id: (train file name and text, validation file name and text (None: good), extra
# arguments, what the line must name: "{train}"/"{validation}" stand for the file paths)
CASES = {
    "malformed tag": ("t.conll", "EU B-ORG\nrejects I-\n\n", None, NER, ["{train}:2", "'I-'"]),
    "tag of another scheme": (
        "t.conll",
        "EU B-ORG\nrejects X-FOO\n\n",
        None,
        NER,
        ["{train}:2", "malformed tag 'X-FOO'"],
    ),
    "extra conll column": (
        "t.conll",
        "EU B-ORG\nrejects O extra\n\n",
        None,
        NER,
        ["{train}:2", "3 columns, but 2 on line 1"],
    ),
    "too few conll columns": (
        "t.conll",
        "EU B-ORG\nrejects\n\n",
        None,
        NER,
        ["{train}:2", "too few columns"],
    ),
    "tag outside the tag set": (
        "t.conll",
        GOOD_CONLL,
        ("v.conll", "Peter B-PER\nParis B-LOC\n\n"),
        NER,
        ["{validation}:2", "tag 'B-LOC' not in the tag set"],
    ),
    "tag outside data.labels": (
        "t.conll",
        GOOD_CONLL,
        None,
        [*NER, "data.labels=[O,B-ORG,I-ORG,B-PER,I-PER]"],
        ["{train}:3", "'B-MISC'"],
    ),
    "tokens and tags differ": (
        "t.jsonl",
        jsonl(ner(["a", "b"], ["O", "O"]), ner(["c"], ["O", "O"])),
        None,
        NER_JSONL,
        ["{train}:2", "1 tokens but 2 tags"],
    ),
    "empty sentence": (
        "t.jsonl",
        jsonl(ner(["a"], ["O"]), ner([], [])),
        None,
        NER_JSONL,
        ["{train}:2", "empty sentence"],
    ),
    "missing tag": (
        "t.jsonl",
        jsonl(ner(["a", "b"], ["O", None]), ner(["c"], ["O"])),
        None,
        NER_JSONL,
        ["{train}:1", "missing tag (word 2)"],
    ),
    "tag ids among tag names": (
        "t.jsonl",
        jsonl(ner(["a"], ["O"]), ner(["b"], [1])),
        None,
        NER_JSONL,
        ["{train}:2", "a list of numbers here but a list of strings"],
    ),
    "label outside data.labels": (
        "t.csv",
        GOOD_CSV + "meh,neutral\n",
        None,
        [*CLS, "data.labels=[neg,pos]"],
        ["{train}:5", "label 'neutral' not in the label set"],
    ),
    "label types differ": (
        "t.csv",
        "text,label\ngood,1\nbad,0\nok,1\n",
        ("v.csv", "text,label\ngreat,pos\n"),
        CLS,
        ["{validation}:2", "label 'pos'", "ids"],
    ),
    "label column missing in validation": (
        "t.csv",
        GOOD_CSV,
        ("v.csv", "text,y\ngreat,pos\n"),
        CLS,
        ["data.validation", "no column 'label'", "{validation}"],
    ),
    "mapped label column missing": (
        "t.csv",
        GOOD_CSV,
        None,
        [*CLS, "data.columns.label=sentiment"],
        ["data.columns.label", "'sentiment'"],
    ),
    "empty text": ("t.csv", GOOD_CSV + '"",neg\n', None, CLS, ["{train}:5", "empty text"]),
    "missing label": (
        "t.jsonl",
        jsonl({"text": "a", "label": "x"}, {"text": "b", "label": None}, {"text": "c"}),
        None,
        CLS,
        ["{train}:2", "missing value in column 'label'"],
    ),
    "labels of two kinds": (
        "t.jsonl",
        jsonl({"text": "a", "label": "x"}, {"text": "b", "label": 1}),
        None,
        CLS,
        ["{train}:2", "a number here but a string"],
    ),
    "undecodable bytes": (
        "t.csv",
        b"text,label\ngood,pos\ncaf\xe9,neg\nok,pos\n",
        None,
        CLS,
        ["{train}:3", "not valid UTF-8"],
    ),
    "malformed json line": (
        "t.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b", "label": \n{"text": "c", "label": "y"}\n',
        None,
        CLS,
        ["{train}:2"],
    ),
    "json array of non-objects": (
        "t.json",
        '[{"text": "a", "label": "x"}, 3]',
        None,
        CLS,
        ["{train}: record 1", "not a JSON object"],
    ),
    "no documents": ("t.txt", "\n\n\n", None, ["data=files"], ["data.train", "no non-empty"]),
    "one example only": (
        "t.conll",
        "EU B-ORG\n\n",
        None,
        NER,
        ["data.val_fraction", "need at least 2"],
    ),
    "train file missing": (None, None, None, [*CLS, "data.train={tmp}/none.csv"], ["none.csv"]),
    "squad answer not in context": (
        "t.json",
        json.dumps(
            {
                "data": [
                    {
                        "title": "T",
                        "paragraphs": [
                            {
                                "context": "Paris is in France.",
                                "qas": [
                                    {
                                        "id": "q1",
                                        "question": "Where?",
                                        "answers": [{"text": "Spain", "answer_start": 12}],
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        ),
        None,
        ["objective=extractive_qa", "model=bert_tiny", "data=files"],
        ["{train}", "q1"],
    ),
}


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# Through lmlab-train in the default suite: one case of each source of data (the rest are
# there under -m slow; every case's message is checked fast through load_source below).
IN_DEFAULT_SUITE = (
    "extra conll column",
    "label types differ",
    "undecodable bytes",
    "squad answer not in context",
)


def _files(case, tmp_path):
    """The case's files written, and its lmlab-train arguments."""
    name, content, validation, extra, _ = CASES[case]
    args, paths = list(extra), {"tmp": str(tmp_path)}
    if name:
        paths["train"] = str(_write(tmp_path / name, content))
        args.append(f"data.train={paths['train']}")
    if validation:
        paths["validation"] = str(_write(tmp_path / validation[0], validation[1]))
        args.append(f"data.validation={paths['validation']}")
    return [a.format(**paths) for a in args], paths


@pytest.fixture
def lmlab_train(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


@pytest.mark.parametrize(
    "case",
    [c if c in IN_DEFAULT_SUITE else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
)
def test_bad_data_is_one_line(case, lmlab_train, tmp_path):
    args, paths = _files(case, tmp_path)
    outcome = lmlab_train([*args, "trainer.max_steps=2", "model.tokenizer.vocab_size=200"])
    outcome.check(*(n.format(**paths) for n in CASES[case][4]))
    run_dirs = [p.parent for p in (tmp_path / "outputs").rglob("status.json")]
    assert run_dirs
    for run_dir in run_dirs:  # a failed start leaves its status.json and log, which say why
        left = sorted(p.name for p in run_dir.iterdir())
        assert left == ["status.json", "train.log"], left
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed"
        assert outcome.message.removeprefix("lmlab-train: error: ") in json.dumps(status), status


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_message_from_the_source(case, tmp_path):
    """The same line, straight from load_source (what lmlab-train prints after its prefix)."""
    from lmlab.errors import LmlabError
    from lmlab.experiment import compose

    args, paths = _files(case, tmp_path)
    cfg = compose(args)
    with pytest.raises(LmlabError) as error:
        load_source(cfg.data, cfg.seed)
    message = str(error.value)
    assert "\n" not in message
    for needle in CASES[case][4]:
        assert needle.format(**paths) in message


def test_at_least_20_data_cases():
    assert len(CASES) >= 20


def test_skip_bad_rows_skips_and_counts_every_kind(tmp_path):
    """data.skip_bad_rows=true: every kind of bad row above is dropped and counted, the good
    rows stay."""
    conll = _write(
        tmp_path / "t.conll",
        GOOD_CONLL
        + "a I-\n\n"  # malformed tag
        + "b O extra\n\n"  # another number of columns
        + "c\n\n"  # too few columns
        + "d B-LOC\n\n",  # a tag outside data.labels
    )
    tags = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-MISC", "I-MISC"]
    data, _ = load_source(
        data_config(
            {
                "train": str(conll),
                "validation": str(conll),
                "format": "conll",
                "labels": tags,
                "skip_bad_rows": True,
            }
        ),
        0,
    )
    assert len(data["train"]) == 2
    counts = data.skipped["train"].counts
    assert counts == {
        "malformed tag": 1,
        "a line with another number of columns": 1,
        "too few columns": 1,
        "tag 'B-LOC' not in the tag set": 1,
    }
    records = _write(
        tmp_path / "t.jsonl",
        jsonl(
            ner(["a", "b"], ["O", "B-PER"]),
            ner(["c"], ["O", "O"]),  # lengths differ
            ner([], []),  # empty sentence
            ner(["d", "e"], ["O", None]),  # missing tag
            ner(["f"], [1]),  # a value of another kind
            ner(["g"], ["B-PER"]),
        ),
    )
    data, _ = load_source(
        data_config({"train": str(records), "validation": str(records), "skip_bad_rows": True}), 0
    )
    assert len(data["train"]) == 2
    assert data.skipped["train"].counts == {
        "a value of another kind": 1,
        "tokens and tags of different lengths": 1,
        "empty sentence": 1,
        "missing tag": 1,
    }
    texts = _write(
        tmp_path / "t.csv",
        b'text,label\ngood,pos\n"",neg\ncaf\xe9,neg\nbad,neg\nmeh,neutral\n',
    )
    data, _ = load_source(
        data_config(
            {
                "train": str(texts),
                "validation": str(texts),
                "labels": ["neg", "pos"],
                "skip_bad_rows": True,
            }
        ),
        0,
    )
    assert len(data["train"]) == 2
    assert set(data.skipped["train"].counts) == {
        "empty text",
        "not valid UTF-8",
        "label 'neutral' not in the label set",
    }
