"""lmlab-eval and lmlab-predict on tiny trained runs (text generation, sequence
classification): evaluation reproduces the run's own final validation metrics from its run
dir, export or checkpoint; prediction round-trips inputs to outputs 1:1; bad inputs are
one-line errors naming file:line or the key; --help stays light."""

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.build import compose, train
from lmlab.cli import eval as lmlab_eval
from lmlab.cli import predict as lmlab_predict
from lmlab.errors import LmlabError
from lmlab.predict import read_jsonl
from lmlab.run import load
from lmlab.stored import Stored, locate

LABELS = ["bad", "good"]


@pytest.fixture(scope="module", autouse=True)
def lmlab_env(lmlab_cache_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
        mp.setenv("LMLAB_OUTPUT_DIR", str(tmp_path_factory.mktemp("outputs")))
        yield


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, tiny_overrides):
    """A 4-step text_generation run validated on its whole validation split."""
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    overrides = [
        "objective=text_generation",
        "model=gpt_tiny",
        *tiny_overrides("gpt2", steps=4),
        "trainer.limit_val_batches=null",
        "objective.decoding.max_new_tokens=4",
        "keep_checkpoints=true",  # lmlab-eval of its checkpoint too
    ]
    return run_dir, train(compose(overrides, run_dir=str(run_dir)))


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory):
    """80 rows of random words whose label is their last word."""
    from conftest import TINY_WORDS

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "labelled.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(80):
            label = rng.choice(LABELS)
            writer.writerow([" ".join(rng.choices(TINY_WORDS, k=6) + [label]), label])
    return path


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_overrides, labelled_csv):
    run_dir = tmp_path_factory.mktemp("cls") / "run"
    overrides = [
        "objective=sequence_classification",
        "model=bert_tiny",
        *tiny_overrides("bert", steps=4),
        f"data.train={labelled_csv}",
        "data.val_fraction=0.1",
        "trainer.limit_val_batches=null",
    ]
    return run_dir, train(compose(overrides, run_dir=str(run_dir)))


def eval_main(argv, capsys) -> dict:
    lmlab_eval.main([str(a) for a in argv])
    return json.loads(capsys.readouterr().out)


def fails(main, argv, capsys) -> str:
    """The one-line error of a CLI that exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after any progress bars of loading
    assert ": error: " in last
    return last


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ================================================================ lmlab-eval


def test_eval_of_a_run_dir_reproduces_its_final_validation(gen_run, capsys):
    run_dir, trained = gen_run
    printed = eval_main([run_dir], capsys)
    written = json.loads((run_dir / "eval_validation.json").read_text())
    assert printed == written
    assert written["val/loss"] == pytest.approx(trained["val/loss"], abs=1e-4)
    assert written["val/perplexity"] == pytest.approx(trained["val/perplexity"], rel=1e-4)
    assert written["split"] == "validation" and written["model"] == str(run_dir)
    assert len(written["val/samples"]) == 2  # one per configured prompt


def test_eval_of_a_checkpoint_reproduces_it_too(gen_run, capsys, monkeypatch):
    import lmlab.data.sources

    loads, real = [], lmlab.data.sources.load_source

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(lmlab.data.sources, "load_source", counting)
    run_dir, trained = gen_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    metrics = eval_main([ckpt], capsys)
    assert metrics["val/loss"] == pytest.approx(trained["val/loss"], abs=1e-4)
    assert (run_dir / "checkpoints" / "last.eval_validation.json").is_file()
    assert len(loads) == 1  # rebuilding the model and evaluating share the run's own data


def test_eval_of_classification_reproduces_loss_and_scores(cls_run, capsys):
    run_dir, trained = cls_run
    metrics = eval_main([run_dir / "export", "data=files", f"data.train={_train_file(run_dir)}",
                         "data.val_fraction=0.1"], capsys)  # fmt: skip
    assert metrics["val/loss"] == pytest.approx(trained["val/loss"], abs=1e-4)
    for key in ("val/accuracy", "val/macro_f1"):
        assert metrics[key] == pytest.approx(trained[key])
    assert metrics["val/confusion_matrix"] == trained["val/confusion_matrix"]
    # an export inside a run dir writes next to it, in the run dir
    assert (run_dir / "eval_validation.json").is_file()


def _train_file(run_dir) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.load(run_dir / "config.yaml").data.train


def test_eval_of_an_export_on_a_file_and_split(gen_run, tiny_text_file, tmp_path, capsys):
    run_dir, _ = gen_run
    out = tmp_path / "sub" / "metrics.json"
    argv = [run_dir / "export", f"data={tiny_text_file}", "split=test",
            "data.max_eval_samples=5", f"output={out}"]  # fmt: skip
    metrics = eval_main(argv, capsys)
    assert json.loads(out.read_text()) == metrics
    assert metrics["split"] == "test" and metrics["examples"] == 5
    assert metrics["test/loss"] > 0 and "val/loss" not in metrics


def test_eval_of_an_export_needs_data(gen_run, capsys):
    err = fails(lmlab_eval.main, [gen_run[0] / "export"], capsys)
    assert "data" in err and "export" in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["split=train"], "split"),
        (["split=test"], "split=test"),  # the run's data has no test split
        (["trainer.max_stepz=3"], "trainer.max_stepz"),
        (["objective.decoding.max_new_tokens=many"], "objective.decoding.max_new_tokens"),
    ],
)
def test_eval_errors_name_the_key(gen_run, capsys, args, named):
    assert named in fails(lmlab_eval.main, [gen_run[0], *args], capsys)


def test_default_output_beside_what_is_evaluated(tmp_path):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    out = lmlab_eval.default_output
    assert out(Stored("run", run, None, {}, 8, {}), "test") == run / "eval_test.json"
    assert (
        out(Stored("export", run / "export", None, {}, 8, None), "test") == run / "eval_test.json"
    )
    other = tmp_path / "models" / "mine"
    assert out(Stored("export", other, None, {}, 8, None), "validation") == (
        tmp_path / "models" / "mine.eval_validation.json"
    )
    ckpt = run / "checkpoints" / "best.ckpt"
    assert out(Stored("ckpt", ckpt, None, {}, 8, {}), "test") == ckpt.parent / "best.eval_test.json"


# ================================================================ locating a model


def test_locate_names_what_is_wrong(tmp_path):
    with pytest.raises(LmlabError, match="no such file"):
        locate(tmp_path / "missing")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(LmlabError, match="not an lmlab export"):
        locate(hf)
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("name: x\n")
    with pytest.raises(LmlabError, match="without an export"):
        locate(unfinished)


def test_locate_a_run_dir_stands_for_its_export(gen_run):
    stored = locate(gen_run[0])
    assert stored.kind == "run" and stored.export == gen_run[0] / "export"
    assert stored.objective["name"] == "text_generation" and stored.max_length == 32


# ================================================================ lmlab-predict


def test_predict_generation_round_trip(gen_run, tmp_path):
    out = tmp_path / "out.jsonl"
    prompts = ["ROMEO:", "The dog", ""]
    lmlab_predict.main([str(gen_run[0]), *prompts, "--output", str(out), "--batch-size", "2"])
    rows = read_lines(out)
    assert [r["prompt"] for r in rows] == prompts
    assert all(isinstance(r["generated"], str) for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left


def test_predict_generation_from_jsonl(gen_run, tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"prompt": "The"}\n\n{"prompt": "A cat"}\n')
    lmlab_predict.main([str(gen_run[0] / "export"), "--input", str(inputs)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["The", "A cat"]


def test_overrides_reach_the_objective(gen_run):
    trained = load(gen_run[0], ["objective.decoding.max_new_tokens=1", "data.max_length=16"])
    assert trained.objective.cfg.decoding.max_new_tokens == 1
    assert trained.objective.max_length == 16
    assert trained.objective.cfg.decoding.top_p == 0.95  # the rest as the run stored it
    assert not trained.model.training


def test_predict_classification_round_trip(cls_run, tmp_path):
    texts = ["the cat walk good", "river bad", "small green tree"]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    lmlab_predict.main([str(cls_run[0]), "--input", str(inputs), "--output", str(out)])
    rows = read_lines(out)
    assert len(rows) == len(texts)
    for row in rows:
        assert row["label"] in LABELS
        assert set(row["scores"]) == set(LABELS)
        assert sum(row["scores"].values()) == pytest.approx(1.0)
        assert row["score"] == max(row["scores"].values())
    # the same texts as arguments give the same predictions
    again = tmp_path / "again.jsonl"
    lmlab_predict.main([str(cls_run[0]), *texts, "--output", str(again), "--batch-size", "1"])
    assert [r["label"] for r in read_lines(again)] == [r["label"] for r in rows]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', ":3: not valid JSON"),
        ('{"text": "a"}\n["b"]\n', ":2: expected a JSON object"),
        ('{"text": "a"}\n\n{"text": "b", "extra": 1}\n', ":3: fields"),
        ("\n\n", ": no input rows"),
    ],
)
def test_bad_input_lines_are_named(gen_run, tmp_path, capsys, content, where):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(content)
    err = fails(lmlab_predict.main, [gen_run[0], "--input", inputs], capsys)
    assert f"{inputs}{where}" in err


def test_read_jsonl_keeps_rows_in_order(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"q": 1}\n\n{"q": 2}\n')
    assert read_jsonl(str(path)) == [{"q": 1}, {"q": 2}]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "either TEXT"),
        (["x", "--input", "in.jsonl"], "either TEXT"),
        (["x", "--set", "decoding.max_new_tokenz=3"], "objective.decoding.max_new_tokenz"),
        (["x", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_predict_errors_name_the_option(gen_run, capsys, args, named):
    assert named in fails(lmlab_predict.main, [gen_run[0], *args], capsys)


def test_predict_of_a_missing_model_names_the_path(tmp_path, capsys):
    err = fails(lmlab_predict.main, [tmp_path / "nowhere", "text"], capsys)
    assert str(tmp_path / "nowhere") in err


# ================================================================ start-up


PROBE = """
import json, sys
module = __import__(sys.argv[1], fromlist=["main"])
try:
    module.main(["--help"])
except SystemExit as e:
    code = e.code or 0
heavy = [m for m in ("torch", "transformers", "pytorch_lightning", "datasets") if m in sys.modules]
print("PROBE", json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize("module", ["lmlab.cli.eval", "lmlab.cli.predict"])
def test_help_is_light(module):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, timeout=60
    )
    probe = json.loads(proc.stdout.split("PROBE ")[-1])
    assert probe == {"code": 0, "heavy": []}
    assert "usage" in proc.stdout.lower()


@pytest.mark.parametrize("script", ["lmlab-eval", "lmlab-predict"])
def test_console_scripts_are_installed(script):
    assert (Path(sys.executable).parent / script).is_file()
