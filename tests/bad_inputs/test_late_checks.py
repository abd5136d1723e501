"""Mistakes that can only be seen once the data is loaded, still caught before training:
the monitored metric is one the objective logs, and the objective's columns exist."""

import json

import pytest
from bad_input_harness import make_runner

CLS = ["objective=sequence_classification", "model=bert_tiny", "data=files"]
TINY = ["model.tokenizer.vocab_size=200", "trainer.max_steps=2"]
ROWS = "good film,pos\nbad film,neg\nfine,pos\nok,neg\nmeh,neg\n"


@pytest.fixture
def lmlab_train(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


def test_monitor_not_logged_by_the_objective(lmlab_train, tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,label\n" + ROWS)
    outcome = lmlab_train([*CLS, f"data.train={train}", *TINY, "objective.monitor=val/nope"])
    outcome.check("objective.monitor", "'val/nope'", "val/accuracy", "val/macro_f1")
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained
    (status,) = list(tmp_path.rglob("status.json"))
    assert "val/nope" in json.loads(status.read_text())["error"]


def test_per_label_score_of_an_unknown_label(lmlab_train, tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,label\n" + ROWS)
    outcome = lmlab_train([*CLS, f"data.train={train}", *TINY, "objective.monitor=val/f1_zzz"])
    outcome.check("objective.monitor", "'val/f1_zzz'", "val/f1_pos")


def test_lightnings_missing_monitor_is_one_line():
    """A per-label score absent from one validation: Lightning's exception as one line."""
    from lmlab.cli.precheck import user_error
    from lmlab.errors import LmlabError

    class MisconfigurationException(Exception):
        pass

    error = user_error(
        MisconfigurationException(
            "`ModelCheckpoint(monitor='val/f1_pos')` could not find the monitored key in the "
            "returned metrics: ['val/loss', 'val/f1_neg']. HINT: Did you call `log(...)`?"
        )
    )
    assert isinstance(error, LmlabError)
    assert str(error).startswith("objective.monitor: 'val/f1_pos' was not logged")
    assert "'val/f1_neg'" in str(error)
    assert "\n" not in str(error)


def test_missing_label_column_is_named(lmlab_train, tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,y\n" + ROWS)
    outcome = lmlab_train([*CLS, f"data.train={train}", *TINY])
    outcome.check(f"data.train: no 'label' column in '{train}'", "data.columns.label=")
    assert "ClassLabel" not in outcome.message
