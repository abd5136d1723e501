"""Config schemas (dataclasses registered in Hydra's ConfigStore) and validation; importing
it registers the schemas and the resolvers (lmlab.resolvers).

Every YAML option of a group extends that group's schema, so a misspelt key or a wrong
type fails while the config is composed, naming the key. This module imports no torch,
transformers or lightning: the CLI uses it for `--help` and `--cfg job`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lmlab.config_checks import check_model_config, check_settings, init_defaults
from lmlab.errors import LmlabError
from lmlab.records import FRESH_KEY
from lmlab.resolvers import register_resolvers


def config_dir() -> Path:
    """The shipped configs: inside the installed package, or at the top of a source checkout."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "conf"


# ---------------------------------------------------------------- schemas


@dataclass
class TokenizerConfig:
    # None: the model's own pretrained tokenizer, or (from scratch) one trained on the corpus.
    name_or_path: str | None = None
    vocab_size: int = 8000  # when trained on the corpus
    min_frequency: int = 2
    lowercase: bool = True  # WordPiece only; byte-level BPE never lower-cases
    sample_mb: float | None = 10  # trained on a seeded sample of ~this many MB (None: all)


@dataclass
class ModelConfig:
    name: str = MISSING
    model_type: str = MISSING  # Hugging Face model_type: bert, gpt2, ...
    # None: from scratch; else a hub name or a local Hugging Face directory.
    name_or_path: str | None = None
    # Architecture settings handed to the Hugging Face config class (checked against it).
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # Fine-tuning a pretrained encoder: shrink its input embeddings back to the scale of a
    # fresh initialisation (the LayerNorm after them keeps the model's outputs unchanged) so
    # that the optimiser moves them as fast as a fresh model's. None: for the exports of
    # models lmlab pre-trained from scratch.
    rescale_embeddings: bool | None = None
    # Dropout on the attention probabilities, under the architecture's own name for it
    # (None: the checkpoint's or the architecture's default). 0 lets torch's fused attention
    # kernel run: 1.9x faster training steps at 256 tokens on CPU (benchmarks/README.md).
    attention_dropout: float | None = None


@dataclass
class ObjectiveConfig:
    name: str = MISSING
    _target_: str = MISSING  # the lmlab.objectives class
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    scheduler: str = (
        "linear"  # any transformers.get_scheduler name: linear, cosine, constant_with_warmup
    )
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # Fine-tuning knobs. Layer-wise lr decay: layer k of L gets lr * decay^(L - k); the
    # embeddings get the smallest rate, the task head the full one. 1.0: off.
    layer_lr_decay: float = 1.0
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the first N transformer layers
    # What "best" means: the checkpoint callback, early stopping, load_best and sweeps use it.
    monitor: str = "val/loss"
    monitor_mode: str = "min"  # min | max


@dataclass
class LoraConfig:
    """objective.peft=lora: low-rank adapters (peft's LoRA) on target_modules; the rest of the
    backbone stays frozen, the task head trains in full."""

    r: int = 8  # the adapters' rank
    alpha: float = 16.0  # their output is scaled by alpha / r
    dropout: float = 0.1  # on the adapters' inputs
    # names (or dotted name suffixes) of the linear layers to adapt; None: peft's default for
    # the model family (BERT: query, value; GPT-2: c_attn)
    target_modules: list[str] | None = None
    # merged: LoRA folded into the weights, a plain Hugging Face model | adapter: peft's
    # adapter directory (PeftModel.from_pretrained on the base model)
    export: str = "merged"


@dataclass
class FineTuningConfig(ObjectiveConfig):
    # null: every weight trains | lora: only low-rank adapters and the task head (objective.lora)
    peft: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class MLMConfig(ObjectiveConfig):
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8  # of the chosen tokens: [MASK]
    random_replace_prob: float = 0.1  # random token; the rest stay unchanged
    whole_word_mask: bool = False


@dataclass
class NSPConfig(ObjectiveConfig):
    short_seq_prob: float = 0.1  # BERT's: sometimes use shorter pairs to match fine-tuning
    dupe_factor: int = 5  # BERT's: passes over the training documents, each with new pairs


@dataclass
class MLMNSPConfig(MLMConfig, NSPConfig):
    pass


@dataclass
class CLMConfig(FineTuningConfig):
    sample_prompt: str = ""  # generated from after training; empty: start of text
    sample_max_new_tokens: int = 60


@dataclass
class DecodingConfig:
    """Settings for model.generate()."""

    max_new_tokens: int = 32
    num_beams: int = 1  # > 1: beam search
    do_sample: bool = False  # true: sampling with temperature / top_k / top_p
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclass
class SequenceClassificationConfig(FineTuningConfig):
    classifier_dropout: float | None = None  # None: the model config's own


@dataclass
class TokenClassificationConfig(FineTuningConfig):
    classifier_dropout: float | None = None
    # Pack consecutive sentences of one document (data column `document`) into each input,
    # up to data.max_length tokens, so that every word is tagged in its context; then
    # data.batch_size counts such inputs (CoNLL-2003: ~5 sentences each at 128 tokens).
    document_context: bool = False


@dataclass
class ExtractiveQAConfig(FineTuningConfig):
    doc_stride: int = 128  # tokens of overlap between the windows of a long context
    max_answer_length: int = 30  # in tokens
    n_best: int = 20  # start and end candidates searched per window
    version_2_with_negative: bool = False  # SQuAD v2.0: questions may have no answer
    null_score_diff_threshold: float = 0.0  # predict no answer when null - best > this


@dataclass
class GenerativeQAConfig(FineTuningConfig):
    # {context} and {question} are filled in; the answer follows, then end-of-text.
    prompt_template: str = "Context: {context}\nQuestion: {question}\nAnswer:"
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


@dataclass
class TextGenerationConfig(FineTuningConfig):
    prompts: list[str] = field(default_factory=lambda: [""])  # sampled at each validation
    decoding: DecodingConfig = field(
        default_factory=lambda: DecodingConfig(
            max_new_tokens=60, do_sample=True, temperature=0.8, top_p=0.95
        )
    )


@dataclass
class ColumnsConfig:
    """data.columns.<canonical>=<your column>; None: the column of that name, if any."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    tokens: str | None = None
    tags: str | None = None
    document: str | None = None
    id: str | None = None
    title: str | None = None
    question: str | None = None
    context: str | None = None
    answers: str | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "files"  # files | hub | pydoc | litdata
    # files: path, directory or glob; hub: split name; litdata: an optimized dataset (a
    # directory or a URL LitData streams from: s3://, gs://, ...), as validation and test
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    format: str = "auto"  # auto | text | csv | tsv | json | jsonl | conll | squad
    documents: str = "blank_line"  # text files: blank_line | line | file
    hub_name: str | None = None
    hub_subset: str | None = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)  # canonical <- your column
    delimiter: str | None = None  # csv/tsv: one character (\t: tab); None: "," for csv, tab for tsv
    encoding: str = "utf-8"  # of every file read (a Python codec: latin-1, cp1252, ...)
    labels: list[str] | None = None  # the label (or tag) set; None: those found in train
    token_column: int = 0  # conll: the word column
    tag_column: int = -1  # conll: the tag column (-1: the last)
    skip_bad_rows: bool = False  # skip malformed rows (and report them) instead of stopping
    val_fraction: float = 0.05
    val_group: str | None = None  # carve validation by whole groups of this column (title)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    batch_size: int = 16
    eval_batch_size: int | None = None
    group_by_length: bool = True  # training batches of similar lengths: less padding
    num_workers: int = 0


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_epochs: int | None = None
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    log_every_n_steps: int = 10
    deterministic: bool = False
    validate_at_start: bool = True  # lmlab's: a validation at step 0 starts every curve
    # torch.compile the model in place (nn.Module.compile: the weights keep their names in
    # checkpoints and the export); the first steps are slower while it compiles
    compile: bool = False
    # glibc's malloc (Linux): CPU buffers of at least this many bytes get mappings of their
    # own, given back when freed. glibc's default (null) raises the threshold as buffers are
    # freed, and the heap then keeps freed activations it cannot reuse: 2 MiB gave 10% less
    # peak RSS for 9% slower CPU steps (benchmarks/README.md, vs the HF Trainer)
    malloc_mmap_threshold: int | None = 2 * 1024 * 1024
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed as is to lightning's Trainer


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str = "~/.cache/lmlab"
    run_dir: str | None = None  # set by the CLI (Hydra's output dir) or by compose(run_dir=...)


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    objective: Any = MISSING  # each option brings its own schema
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    paths: PathsConfig = MISSING
    logger: Any = None  # {name: {_target_: ...}} Lightning loggers
    callbacks: Any = None  # {name: {_target_: ...}} Lightning callbacks
    name: str = "train"
    tags: list[str] = field(default_factory=list)  # shown by every logger (wandb/MLflow tags)
    # The metric the Hydra task returns to a sweeper (Optuna): objective.monitor by default.
    optimized_metric: str | None = None
    seed: int = 42
    resume: str | None = None  # checkpoint file or run dir; default: the run dir's last.ckpt
    resume_check: bool = True  # refuse to resume under changed data, tokenizer or architecture
    export: bool = True
    test: bool = False  # also run the test split after training
    # After training, reload the best checkpoint (objective.monitor) before the final
    # evaluation and the export.
    load_best: bool = False
    # Show library chatter on the console too (Lightning's tips and model summary, datasets'
    # progress bars, known harmless warnings); by default it goes to <run dir>/train.log only.
    verbose: bool = False
    # Draw <run dir>/curves.png and the task's pictures (confusion matrix, per-entity F1) at
    # the end (lmlab.report.plots.draw_run; ~2-4 s, mostly importing matplotlib).
    plots: bool = True
    # Keep checkpoints/*.ckpt once the run has finished. By default a finished run that wrote
    # its export drops them: a finished run is never resumed, and the export holds the weights.
    keep_checkpoints: bool = False


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, name, node in [
        ("model", "model_schema", ModelConfig),
        ("data", "data_schema", DataConfig),
        ("trainer", "trainer_schema", TrainerConfig),
        ("paths", "paths_schema", PathsConfig),
        ("objective", "mlm_schema", MLMConfig),
        ("objective", "nsp_schema", NSPConfig),
        ("objective", "mlm_nsp_schema", MLMNSPConfig),
        ("objective", "clm_schema", CLMConfig),
        ("objective", "sequence_classification_schema", SequenceClassificationConfig),
        ("objective", "token_classification_schema", TokenClassificationConfig),
        ("objective", "extractive_qa_schema", ExtractiveQAConfig),
        ("objective", "generative_qa_schema", GenerativeQAConfig),
        ("objective", "text_generation_schema", TextGenerationConfig),
    ]:
        cs.store(group=group, name=name, node=node)


# ---------------------------------------------------------------- validation


def _transformers_root() -> Path | None:
    spec = importlib.util.find_spec("transformers")  # finds, does not import (which takes seconds)
    return Path(spec.submodule_search_locations[0]) if spec else None


def _class_keys(path: Path) -> set[str]:
    """Annotated attributes, __init__ parameters and attribute_map keys of the config classes
    in a transformers source file, read with ast so that nothing heavy is imported."""
    keys: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ClassDef) or not node.name.endswith("Config"):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                keys.add(item.target.id)
            elif isinstance(item, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "attribute_map" for t in item.targets
            ):
                keys.update(ast.literal_eval(item.value))
            elif isinstance(item, ast.FunctionDef) and item.name == "__init__":
                args = item.args
                keys.update(a.arg for a in args.args + args.kwonlyargs if a.arg != "self")
    return keys


@functools.lru_cache
def hf_config_keys(model_type: str) -> frozenset[str] | None:
    """Keys the Hugging Face config class of `model_type` knows; None when it cannot be found."""
    root = _transformers_root()
    if root is None:
        return None
    module = model_type.replace("-", "_")
    source = root / "models" / module / f"configuration_{module}.py"
    if not source.is_file():
        return None
    return frozenset(_class_keys(source) | _class_keys(root / "configuration_utils.py"))


@functools.lru_cache
def hf_config_defaults(model_type: str) -> dict[str, Any]:
    """The literal __init__ defaults of the Hugging Face config class of `model_type`."""
    module = model_type.replace("-", "_")
    return init_defaults(_transformers_root() / "models" / module / f"configuration_{module}.py")


def pretrained_path(name_or_path: str | None) -> str | None:
    """An lmlab run dir stands for its export; anything else is returned as is."""
    if not name_or_path:
        return name_or_path
    path = Path(os.path.expanduser(name_or_path))
    if (path / "export" / "config.json").is_file():
        return str(path / "export")
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        raise LmlabError(
            f"model.name_or_path: {name_or_path!r} is an lmlab run dir without an export "
            "(has the run finished, with export=true?)"
        )
    return name_or_path


def _local_model_type(name_or_path: str | None) -> str | None:
    config_file = Path(os.path.expanduser(pretrained_path(name_or_path) or "")) / "config.json"
    if name_or_path and config_file.is_file():
        return json.loads(config_file.read_text()).get("model_type")
    return None


def validate(cfg: DictConfig) -> None:
    """Checks what the schemas cannot: every setting's range (lmlab.config_checks), and
    architecture keys and values against the Hugging Face config class."""
    source = cfg.data.source
    stream = "an optimized LitData dataset (a directory or an s3://, gs://, ... URL)"
    required = [
        ("model.name_or_path", cfg.model.model_type == "auto", "a hub name or a local directory"),
        ("data.train", source == "files", "a file, directory or glob"),
        ("data.hub_name", source == "hub", "a dataset name or a local directory"),
        ("data.train", source == "litdata", stream),
        ("data.validation", source == "litdata", stream + " of held-out text"),
    ]
    for key, needed, what in required:
        if needed and OmegaConf.select(cfg, key) is None:
            raise LmlabError(f"{key}: required here; set it to {what} ({key}=...)")
    if source == "litdata" and not (cfg.model.tokenizer.name_or_path or cfg.model.name_or_path):
        raise LmlabError(
            "model.tokenizer.name_or_path: required with data.source=litdata (no tokenizer is "
            "trained from a stream); set it to the tokenizer the data was optimized with"
        )
    check_known_keys(cfg)
    check_settings(cfg)
    model = cfg.model
    model_type = _local_model_type(model.name_or_path) or model.model_type
    known = hf_config_keys(model_type)
    unknown = sorted(set(model.config) - known) if known else []
    if unknown:
        raise LmlabError(
            f"model.config.{unknown[0]}: not a setting of the '{model_type}' Hugging Face config "
            f"(did you mean one of: {', '.join(_close(unknown[0], known))}?)"
        )
    if known:
        values = OmegaConf.to_container(model.config, resolve=True)
        check_model_config(values, hf_config_defaults(model_type))


def check_known_keys(node: DictConfig, path: str = "") -> None:
    """Every key of a node a schema describes (data, objective, trainer, ...) is one of the
    schema's: `+data.batchsize=3` would otherwise be accepted and silently ignored. Free-form
    nodes (model.config, trainer.kwargs, callbacks, logger) take any key."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)} | ({FRESH_KEY} if not path else set())
        for key in node:
            if key not in known:
                raise LmlabError(unknown_key(f"{path}{key}", known))
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_known_keys(child, f"{path}{key}.")


def unknown_key(key: str, known: set[str]) -> str:
    """One line for a key that is not in its node's schema: the nearest and every valid one."""
    import difflib

    leaf = key.rpartition(".")[2]
    near = difflib.get_close_matches(leaf, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {key[: -len(leaf)]}{near[0]}?)" if near else ""
    return f"{key}: no such key{hint}; expected one of: {', '.join(sorted(known))}"


def _close(key: str, known: set[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5) or sorted(known)[:5]


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain data: what checkpoints and run dirs store."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


register()
register_resolvers()
