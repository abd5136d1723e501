"""The console of lmlab-train: a header before training, a summary after it, library chatter in
<run dir>/train.log only (verbose=true shows it), real warnings always shown."""

import logging
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from lmlab import console
from lmlab.callbacks import LineProgress

ROWS = [("a good film", "positive"), ("a bad film", "negative"), ("great fun", "positive")]


def write_csv(path: Path, rows: int) -> Path:
    lines = ["text,label"] + [f"{ROWS[i % 3][0]} {i},{ROWS[i % 3][1]}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, tiny_wordpiece):
    """A 2-layer BERT encoder saved as a pretrained starting point: it has no classifier, so
    fine-tuning it reports classifier.weight and classifier.bias as new weights."""
    import transformers

    path = tmp_path_factory.mktemp("tiny-encoder")
    config = transformers.BertConfig(
        vocab_size=len(tiny_wordpiece),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    transformers.BertModel(config).save_pretrained(path)
    tiny_wordpiece.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_encoder, lmlab_cache_dir):
    """lmlab-train fine-tuning the tiny encoder (embeddings frozen) on 40 + 12 rows, output
    to a pipe as in CI: (stdout, stderr, run dir)."""
    tmp = tmp_path_factory.mktemp("console-run")
    train, validation = write_csv(tmp / "train.csv", 40), write_csv(tmp / "val.csv", 12)
    args = [
        "experiment=finetune_sentiment",
        f"model.name_or_path={tiny_encoder}",
        *("data=files", f"data.train={train}", f"data.validation={validation}"),
        *("debug=default", "data.batch_size=4", "data.max_length=16"),
        "objective.freeze_embeddings=true",
        f"paths.cache_dir={lmlab_cache_dir}",
        f"paths.output_dir={tmp / 'outputs'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab.cli.train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp / "outputs" / "finetune_sentiment").iterdir()
    return proc.stdout, proc.stderr, run_dir


def block(text: str, title: str) -> list[str]:
    """The lines of the block whose rule names `title`, up to its closing rule."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
    end = lines.index("=" * 72, start)
    return lines[start + 1 : end]


def test_header_comes_first_and_says_what_trains(tiny_run, tiny_encoder):
    import transformers

    out, _, run_dir = tiny_run
    assert out.startswith("== lmlab-train: finetune_sentiment ")
    head = dict(line.split(":", 1) for line in block(out, "lmlab-train"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(run_dir / "export")
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert head["run dir"].strip() == str(run_dir)
    assert head["model"].strip() == f"minilm (BertForSequenceClassification) from {tiny_encoder}"
    assert head["parameters"].strip() == (
        f"{console.short(total)} ({console.short(total - frozen)} trainable)"
    )
    assert (
        head["new weights (not in the checkpoint)"].strip() == "classifier.bias, classifier.weight"
    )
    assert head["data"].strip() == "files: train 40 · validation 12 examples"
    assert head["steps"].strip() == "max 4 steps, max 1 epoch; batch 4 × accumulation 1"
    assert head["device"].strip() == "cpu, precision 32-true"


def test_summary_names_results_files_and_commands(tiny_run, capsys):
    from lmlab.cli.predict import main as predict_main

    out, _, run_dir = tiny_run
    lines = block(out, "done in ")
    summary = dict(line.split(":", 1) for line in lines if ": " in line)
    assert summary["best"].strip().startswith("val/accuracy=")
    # finished: best.ckpt dropped, so the line names only what exists (load_best: the export)
    assert not (run_dir / "checkpoints").exists()
    assert summary["best"].strip().endswith("(the final metrics and the export are its)")
    (load_best,) = [line for line in out.splitlines() if line.startswith("load_best: ")]
    assert "ckpt" not in load_best  # it names no file the finished run dropped
    assert "val/loss=" in summary["final"] and "val/macro_f1=" in summary["final"]
    assert "examples/s" in summary["speed"] and "tokens/s" in summary["speed"]
    assert summary["export"].strip() == str(run_dir / "export")
    assert summary["metrics"].strip() == f"{run_dir / 'metrics.json'}, {run_dir / 'metrics.csv'}"
    assert summary["log"].strip() == str(run_dir / "train.log")
    # the run drew its pictures (plots=true by default) before the summary listed them
    assert summary["plots"].strip() == "confusion_matrix.png, curves.png"
    assert "val/confusion_matrix:" in lines
    assert summary["evaluate"].strip() == f"lmlab-eval {run_dir}"
    # the printed predict command runs as printed, a text in place of the placeholder
    predict = shlex.split(summary["predict"].replace('"<text>" ...', '"a good film"'))
    assert predict[:2] == ["lmlab-predict", str(run_dir / "export")]
    predict_main(predict[1:])
    assert '"label"' in capsys.readouterr().out


def test_chatter_goes_to_train_log_only(tiny_run):
    out, err, run_dir = tiny_run
    log = (run_dir / "train.log").read_text()
    chatter = ["LOAD REPORT", "GPU available", "Tip:", "Trainable params", "LeafSpec"]
    for text in chatter:
        assert text in log, text
        assert text not in out + err, text
    assert "Map:" not in err and "Loading weights" not in err  # no progress bars
    assert err == ""


def test_plain_lines_show_steps_with_time_left_and_validations(tiny_run):
    out = tiny_run[0].splitlines()
    steps = [line for line in out if line.startswith("epoch 0  step ")]
    assert steps and steps[-1].startswith("epoch 0  step 4/4  train/loss=")
    assert steps[-1].endswith("eta 0:00:00")
    assert [line.split()[2] for line in out if line.startswith("validation  step")][:3] == [
        "0",
        "2",
        "4",
    ]


# ---------------------------------------------------------------- the routing, in-process


@pytest.fixture
def console_handler():
    """A console log handler on the root logger, as Hydra's job logging makes one."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def chatter_and_news():
    """Two chatter records, two known harmless warnings of transformers and a new one, and a
    line of lmlab's."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
    logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
    hf = logging.getLogger("transformers.modeling_utils")
    hf.warning("\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: x\nKey | Status")
    hf.warning(
        "`loss_type=None` was set in the config but it is unrecognized. Using the default "
        "loss: `ForCausalLMLoss`."
    )
    hf.warning("Some other transformers warning")
    logging.getLogger("lmlab.probe").info("lmlab's own line")


@pytest.mark.parametrize("verbose", [False, True])
def test_console_keeps_news_and_drops_chatter_unless_verbose(tmp_path, console_handler, verbose):
    with console.routed(verbose, tmp_path):
        chatter_and_news()
    shown = console_handler.getvalue()
    assert "Some other transformers warning" in shown  # a real warning is never hidden
    assert "lmlab's own line" in shown
    for text in ("GPU available", "generated new fontManager", "LOAD REPORT", "loss_type=None"):
        assert (text in shown) == verbose, text


def python_showwarning(message, category, filename, lineno, file=None, line=None):
    """Python's own display (pytest records warnings instead): to stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_unknown_warning_still_reaches_stderr(tmp_path, console_handler, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = python_showwarning
        with console.routed(False, tmp_path):
            warn_three()
    err = capsys.readouterr().err
    assert "UserWarning: a brand new problem" in err
    assert "DeprecationWarning: `isinstance(treespec, LeafSpec)`" in err
    assert "FutureWarning" not in err


def warn_three():
    """A new warning, and the known harmless one under its own category and under another."""
    warnings.warn("a brand new problem", UserWarning, stacklevel=1)
    leaf_spec = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    warnings.warn(leaf_spec, DeprecationWarning, stacklevel=1)  # another category: news
    warnings.warn(leaf_spec, FutureWarning, stacklevel=1)


def test_routing_is_undone_after_the_run(tmp_path, console_handler):
    import datasets.utils
    import transformers

    datasets.utils.enable_progress_bar()  # as a fresh process has them
    transformers.utils.logging.enable_progress_bar()
    show, hf = warnings.showwarning, logging.getLogger("transformers")
    handlers, propagate = list(hf.handlers), hf.propagate
    with console.routed(False, tmp_path):
        assert not datasets.utils.is_progress_bar_enabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
    assert datasets.utils.is_progress_bar_enabled()
    assert transformers.utils.logging.is_progress_bar_enabled()
    assert warnings.showwarning is show
    assert (hf.handlers, hf.propagate) == (handlers, propagate)
    logging.getLogger("pytorch_lightning").info("after the run")
    assert "after the run" in console_handler.getvalue()


def test_from_python_the_run_writes_its_own_train_log(tmp_path):
    """Logging not configured (no Hydra): routed() makes the console handler and train.log."""
    root = logging.getLogger()
    kept = list(root.handlers)
    for handler in kept:  # pytest's own capture handlers
        root.removeHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = python_showwarning
            with console.routed(False, tmp_path):
                chatter_and_news()
                warn_three()
                assert console.log_file() == str(tmp_path / "train.log")
        assert not root.handlers
    finally:
        for handler in kept:
            root.addHandler(handler)
    log = (tmp_path / "train.log").read_text()
    assert "GPU available" in log and "LOAD REPORT" in log and "Some other" in log
    assert "UserWarning: a brand new problem" in log  # every warning, shown or not
    assert "FutureWarning: `isinstance(treespec, LeafSpec)`" in log


# ---------------------------------------------------------------- pieces of the blocks


@pytest.mark.parametrize(
    "count, text", [(22_713_216, "22.7M"), (410_200, "410.2K"), (999, "999"), (1.3e9, "1.3B")]
)
def test_parameter_counts_read_as_people_say_them(count, text):
    assert console.short(int(count)) == text


def test_summary_lists_the_plots_in_the_run_dir(tmp_path):
    (tmp_path / "curves.png").write_bytes(b"png")
    (tmp_path / "confusion_matrix.png").write_bytes(b"png")
    (tmp_path / "metrics.json").write_text("{}")
    cfg = OmegaConf.create(
        {"paths": {"run_dir": str(tmp_path)}, "objective": {"monitor": "val/loss"}, "load_best": 0}
    )
    exp = SimpleNamespace(config=cfg, objective=None)
    trainer = SimpleNamespace(checkpoint_callbacks=[], callbacks=[])
    text = console.summary(exp, trainer, {"val/loss": 0.5, "global_step": 3}, 125.4)
    lines = text.splitlines()
    assert lines[0].startswith("== done in 2m 05s, 3 steps ")
    assert "final: val/loss=0.5" in lines
    assert "plots: confusion_matrix.png, curves.png" in lines
    assert f"metrics: {tmp_path / 'metrics.json'}" in lines
    assert not any(line.startswith(("best:", "speed:", "export:", "predict:")) for line in lines)


@pytest.mark.parametrize(
    "export, keep, line",
    [
        (True, False, "load_best: loaded the best weights, of step 2 (training ended at step 4); "
                      "the final metrics and the export are theirs"),
        (True, True, "load_best: loaded the best weights, of step 2 (training ended at step 4); "
                     "the final metrics and the export are theirs (kept: {best})"),
        (False, False, "load_best: loaded the best weights, of step 2 (training ended at step 4); "
                       "the final metrics are theirs (kept: {best})"),  # no export: kept
    ],
)  # fmt: skip
def test_load_best_line_holds_when_the_run_has_ended(tmp_path, capsys, export, keep, line):
    import torch

    from lmlab.run import load_best

    best = tmp_path / "checkpoints" / "best.ckpt"
    best.parent.mkdir()
    torch.save({"global_step": 2, "state_dict": {"w": torch.ones(1)}}, best)
    loaded = []
    module = SimpleNamespace(load_state_dict=loaded.append)
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_path=str(best)))
    cfg = OmegaConf.create({"export": export, "keep_checkpoints": keep})

    trainer.global_step = 4
    assert load_best(module, trainer, cfg) is True
    assert capsys.readouterr().out == line.format(best=best) + "\n"
    assert [list(state) for state in loaded] == [["w"]]

    trainer.global_step = 2  # the best checkpoint is of the last step: nothing to load
    assert load_best(module, trainer, cfg) is False
    kept = f" (kept: {best})" if keep or not export else ""
    assert capsys.readouterr().out == f"load_best: the final weights (step 2) are the best{kept}\n"
    assert len(loaded) == 1


def test_time_left_follows_the_pace_since_training_started(monkeypatch):
    clock = iter([100.0])
    monkeypatch.setattr("lmlab.callbacks.time.perf_counter", lambda: next(clock))
    progress = LineProgress()
    progress._started = (40.0, 10)  # 60 s for steps 10..40: 2 s a step
    assert progress.eta(40, 100) == "0:02:00"
    assert progress.eta(10, 100) == "?"
