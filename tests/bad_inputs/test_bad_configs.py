"""Bad configs and overrides (issue 11 item 9): each is one line on stderr, exit 2, naming
the key (or option, or file:line) and what was expected, in under 3 seconds, before any data
is read and without a run dir. `{tmp}` in an argument stands for the test's tmp_path."""

import pytest
from bad_input_harness import make_runner

QUICK = ["experiment=quickstart"]
MLM = ["experiment=pretrain_mlm"]

# id: (arguments, what the one line must name)
CASES = {
    # the issue's: a traceback today
    "n_embd negative": (["model.config.n_embd=-1"], ["model.config.n_embd", "> 0", "-1"]),
    "n_embd not a number": (["model.config.n_embd=abc"], ["model.config.n_embd", "integer"]),
    "lr negative": ([*QUICK, "objective.lr=-1"], ["objective.lr", "> 0"]),
    "batch size 0": (["data.batch_size=0"], ["data.batch_size", ">= 1"]),
    "model path missing": (["model.name_or_path=/nonexistent"], ["model.name_or_path", "exist"]),
    "precision 13": (["trainer.precision=13"], ["trainer.precision", "32-true", "'13'"]),
    "devices 0": (["trainer.devices=0"], ["trainer.devices", ">= 1"]),
    "scheduler foo": (["objective.scheduler=foo"], ["objective.scheduler", "cosine", "'foo'"]),
    "accumulate 0": (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches"]),
    "max_time abc": (["trainer.max_time=abc"], ["trainer.max_time", "DD:HH:MM:SS"]),
    "workers -1": (["data.num_workers=-1"], ["data.num_workers", ">= 0"]),
    "betas one": (["objective.betas=[0.9]"], ["objective.betas", "two numbers"]),
    "yaml syntax": (
        ["--config-dir", "{tmp}/conf", "experiment=broken"],
        ["broken.yaml:2:", "YAML syntax error"],
    ),
    # the issue's: Hydra's multi-line message today
    "experiment nope": (["experiment=nope"], ["experiment=nope", "quickstart", "pretrain_bert"]),
    "model key typo": (["model.hiden_size=3"], ["model.hiden_size", "model.config"]),
    "lr abc": (["objective.lr=abc"], ["objective.lr", "a number", "'abc'"]),
    "seed x": (["seed=x"], ["seed", "integer", "'x'"]),
    "logger foo": (["logger=foo"], ["logger=foo", "csv", "tensorboard"]),
    "trainer tpu": (["trainer=tpu"], ["trainer=tpu", "default", "gpu"]),
    "trainer kwargs new key": (["trainer.kwargs.foo=1"], ["trainer.kwargs.foo", "+trainer.kwargs"]),
    # a typo in a key a schema describes: the nearest and the valid keys, no `+` advice
    # (issue 12 item 2; `+` would add a key that nothing reads)
    "columns typo": (["data.columns.txt=body"], ["data.columns.text?", "text_pair"]),
    "data key typo": (["data.batchsize=3"], ["data.batch_size?", "eval_batch_size"]),
    "added with plus": (["+objective.lrr=1"], ["objective.lr?", "warmup_ratio"]),
    "one value for a group": (["data.columns=body"], ["data.columns", "group of settings"]),
    "setting deleted": (["~data.batch_size"], ["data.batch_size", "cannot be deleted"]),
    "unknown flag": (["--cfg", "jobb"], ["--cfg", "'jobb'", "--help"]),
    # the issue's: misleading today
    "data file missing": (["data=does_not_exist.txt"], ["does_not_exist.txt", "no such file"]),
    "experiment for another objective": (
        [*QUICK, "objective=mlm"],
        ["objective.sample_prompt", "experiment/quickstart"],
    ),
    "labels empty": (["data.labels=[]"], ["data.labels", "non-empty"]),
    # the issue's: accepted today
    "mlm probability 2": ([*MLM, "objective.mlm_probability=2"], ["objective.mlm_probability"]),
    "warmup ratio 2": (["objective.warmup_ratio=2"], ["objective.warmup_ratio", "[0, 1]"]),
    "max steps 0": (["trainer.max_steps=0"], ["trainer.max_steps", "-1"]),
    # the issue's: read-only output or cache dir
    "output dir under a file": (["paths.output_dir={tmp}/afile/out"], ["paths.output_dir"]),
    "cache dir not writable": (["paths.cache_dir=/proc/lmlab-cache"], ["paths.cache_dir"]),
    # every other range of the schemas
    "weight decay negative": (["objective.weight_decay=-0.1"], ["objective.weight_decay"]),
    "eps 0": (["objective.eps=0"], ["objective.eps", "> 0"]),
    "monitor mode": (["objective.monitor_mode=maximum"], ["objective.monitor_mode", "min or max"]),
    "monitor not val": (["objective.monitor=loss"], ["objective.monitor", "val/"]),
    "layer lr decay 0": (["objective.layer_lr_decay=0"], ["objective.layer_lr_decay"]),
    "freeze layers negative": (["objective.freeze_layers=-1"], ["objective.freeze_layers"]),
    "beta 1.5": (["objective.betas=[0.9,1.5]"], ["objective.betas", "[0, 1)"]),
    "replace probs sum": (
        [*MLM, "objective.mask_replace_prob=0.9", "objective.random_replace_prob=0.2"],
        ["objective.random_replace_prob", "<= 1"],
    ),
    "doc stride too long": (
        ["experiment=finetune_qa_extractive", "objective.doc_stride=500"],
        ["objective.doc_stride", "data.max_length"],
    ),
    "top_p 0": (["experiment=finetune_qa_generative", "objective.decoding.top_p=0"], ["top_p"]),
    "max length 0": (["data.max_length=0"], ["data.max_length", ">= 8"]),
    "val fraction 1": (["data.val_fraction=1.0"], ["data.val_fraction", "[0, 1)"]),
    "eval batch 0": (["data.eval_batch_size=0"], ["data.eval_batch_size"]),
    "max train samples 0": (["data.max_train_samples=0"], ["data.max_train_samples"]),
    "encoding": (["data.encoding=utf-9"], ["data.encoding", "codec"]),
    "delimiter": (["data.delimiter=ab"], ["data.delimiter", "one character"]),
    "format": (["data.format=xml"], ["data.format", "conll"]),
    "source": (["data.source=s3"], ["data.source", "files, hub, pydoc or litdata"]),
    "data train missing": (["data=files"], ["data.train", "required"]),
    "max epochs 0": (["trainer.max_epochs=0"], ["trainer.max_epochs"]),
    "gradient clip negative": (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val"]),
    "val check 0": (["trainer.val_check_interval=0"], ["trainer.val_check_interval"]),
    "log every 0": (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps"]),
    "limit val negative": (["trainer.limit_val_batches=-1"], ["trainer.limit_val_batches"]),
    "accelerator": (["trainer.accelerator=quantum"], ["trainer.accelerator", "cpu"]),
    "vocab size 0": (["model.tokenizer.vocab_size=0"], ["model.tokenizer.vocab_size"]),
    "attention dropout": (["model.attention_dropout=1.5"], ["model.attention_dropout"]),
    "dropout 2": (["+model.config.resid_pdrop=2"], ["model.config.resid_pdrop", "[0, 1)"]),
    "layers 2.5": (["model.config.n_layer=2.5"], ["model.config.n_layer", "integer"]),
    "unknown architecture key": (["+model.config.n_embed=64"], ["model.config.n_embed", "n_embd"]),
    "local model dir missing": (["model.name_or_path=./no/such/dir"], ["model.name_or_path"]),
    "seed negative": (["seed=-1"], ["seed", "2**32"]),
    "override syntax": (["objective.lr=[1"], ["objective.lr=[1", "key=value"]),
    "config name": (["--config-name", "nope"], ["--config-name nope"]),
    "hf model without a name": (["model=hf"], ["model.name_or_path", "required"]),
    "sweep with a bad option": (["-m", "experiment=nope", "seed=1,2"], ["experiment=nope"]),
}


@pytest.fixture
def lmlab_train(monkeypatch, capsys, tmp_path):
    return make_runner(monkeypatch, capsys, tmp_path)


@pytest.fixture
def tmp_files(tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "broken.yaml").write_text("foo: [1, 2\nbar: 3\n")
    (tmp_path / "afile").write_text("a file, not a directory\n")
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_is_one_line(case, lmlab_train, tmp_files):
    args, needles = CASES[case]
    outcome = lmlab_train([a.replace("{tmp}", str(tmp_files)) for a in args])
    outcome.check(*needles)
    assert outcome.seconds < 3.0, f"{outcome.seconds:.1f} s"
    assert not (tmp_files / "outputs").exists()  # caught before Hydra made a run dir


def test_at_least_45_cases():
    assert len(CASES) >= 45
