"""Range checks of every numeric and enumerated setting of the schemas (lmlab.config.validate
calls `check_settings`): a value the schema's type accepts but the run cannot use fails here,
before any data is read, with one line naming the key and what would work.

Imports no torch, transformers or lightning.
"""

from __future__ import annotations

import ast
import codecs
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lmlab.errors import LmlabError

# transformers.get_scheduler names that need nothing but warmup and total steps
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
# lightning.Trainer(precision=...) accepts these
PRECISIONS = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
# The data choices, here (no heavy imports) for the checks at start-up and for lmlab.data.sources.
SOURCES = ("files", "hub", "pydoc", "litdata")
FORMATS = ("auto", "text", "csv", "tsv", "json", "jsonl", "conll", "squad")
DOCUMENTS = ("blank_line", "line", "file")


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive(v) -> bool:
    return _num(v) and v > 0


def non_negative(v) -> bool:
    return _num(v) and v >= 0


def at_least_one(v) -> bool:
    return _int(v) and v >= 1


def fraction(v) -> bool:  # [0, 1]
    return _num(v) and 0 <= v <= 1


def open_fraction(v) -> bool:  # (0, 1)
    return _num(v) and 0 < v < 1


def optional(check: Callable) -> Callable:
    return lambda v: v is None or check(v)


def one_of(*choices) -> Callable:
    return lambda v: str(v) in choices


def _betas(v) -> bool:
    return isinstance(v, list | tuple | ListConfig) and len(v) == 2 and all(map(_beta, v))


def _beta(v) -> bool:
    return _num(v) and 0 <= v < 1


def _max_time(v) -> bool:
    if v is None or isinstance(v, dict | DictConfig):
        return True
    return bool(re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", str(v)))


def _devices(v) -> bool:
    if isinstance(v, list | ListConfig):
        return len(v) > 0 and all(_int(d) and d >= 0 for d in v)
    if isinstance(v, str):
        return v == "auto" or v == "-1" or bool(re.fullmatch(r"\d+(,\d*)*", v)) and v != "0"
    return _int(v) and (v >= 1 or v == -1)


def _steps(v) -> bool:  # lightning: -1 no limit
    return _int(v) and (v >= 1 or v == -1)


def _epochs(v) -> bool:
    return v is None or _int(v) and (v >= 1 or v == -1)


def _interval(v) -> bool:  # int batches, or a fraction of the epoch
    return v is None or (_int(v) and v >= 1) or (_num(v) and 0 < v <= 1)


def _limit(v) -> bool:  # int batches, or a fraction of them
    return v is None or (_int(v) and v >= 0) or (_num(v) and 0 <= v <= 1)


def _codec(v) -> bool:
    try:
        codecs.lookup(str(v))
    except LookupError:
        return False
    return True


def _delimiter(v) -> bool:
    return v is None or str(v) in ("\\t", "\t") or len(str(v)) == 1


def _labels(v) -> bool:
    return v is None or len(v) > 0 and len(set(map(str, v))) == len(v)


def _names(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(n, str) and n for n in v)


def _monitor(v) -> bool:
    return isinstance(v, str) and v.startswith("val/") and len(v) > 4


# key -> (check, what is expected); keys missing from a config are not checked
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: _int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "objective.lr": (positive, "a number > 0"),
    "objective.weight_decay": (non_negative, "a number >= 0"),
    "objective.warmup_ratio": (fraction, "a fraction in [0, 1]"),
    "objective.scheduler": (one_of(*SCHEDULERS), "one of " + ", ".join(SCHEDULERS)),
    "objective.betas": (_betas, "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "objective.eps": (positive, "a number > 0"),
    "objective.layer_lr_decay": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "objective.freeze_layers": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "objective.monitor": (_monitor, "a validation metric: val/loss, val/accuracy, ..."),
    "objective.monitor_mode": (one_of("min", "max"), "min or max"),
    "objective.peft": (optional(one_of("lora")), "lora, or null (every weight trains)"),
    "objective.lora.r": (at_least_one, "an integer >= 1 (the adapters' rank)"),
    "objective.lora.alpha": (positive, "a number > 0"),
    "objective.lora.dropout": (lambda v: _num(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "objective.lora.target_modules": (optional(_names), "a non-empty list of module names"),
    "objective.lora.export": (one_of("merged", "adapter"), "merged or adapter"),
    "objective.mlm_probability": (open_fraction, "a probability in (0, 1)"),
    "objective.mask_replace_prob": (fraction, "a probability in [0, 1]"),
    "objective.random_replace_prob": (fraction, "a probability in [0, 1]"),
    "objective.short_seq_prob": (fraction, "a probability in [0, 1]"),
    "objective.dupe_factor": (at_least_one, "an integer >= 1"),
    "objective.sample_max_new_tokens": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "objective.classifier_dropout": (optional(lambda v: _num(v) and 0 <= v < 1), "in [0, 1)"),
    "objective.doc_stride": (at_least_one, "an integer >= 1 (tokens)"),
    "objective.max_answer_length": (at_least_one, "an integer >= 1 (tokens)"),
    "objective.n_best": (at_least_one, "an integer >= 1"),
    "objective.decoding.max_new_tokens": (at_least_one, "an integer >= 1"),
    "objective.decoding.num_beams": (at_least_one, "an integer >= 1"),
    "objective.decoding.temperature": (positive, "a number > 0"),
    "objective.decoding.top_k": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "objective.decoding.top_p": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "objective.decoding.repetition_penalty": (positive, "a number > 0"),
    "data.source": (one_of(*SOURCES), "files, hub, pydoc or litdata"),
    "data.format": (one_of(*FORMATS), "one of " + ", ".join(FORMATS)),
    "data.documents": (one_of(*DOCUMENTS), "blank_line, line or file"),
    "data.delimiter": (_delimiter, "one character (\\t: tab)"),
    "data.encoding": (_codec, "a Python codec name: utf-8, latin-1, cp1252, ..."),
    "data.labels": (_labels, "a non-empty list of distinct labels, or null (those in train)"),
    "data.val_fraction": (lambda v: _num(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "data.max_train_samples": (optional(at_least_one), "an integer >= 1, or null (all)"),
    "data.max_eval_samples": (optional(at_least_one), "an integer >= 1, or null (all)"),
    "data.max_length": (lambda v: _int(v) and v >= 8, "an integer >= 8 (tokens)"),
    "data.batch_size": (at_least_one, "an integer >= 1"),
    "data.eval_batch_size": (optional(at_least_one), "an integer >= 1, or null"),
    "data.num_workers": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: no workers)"),
    "model.tokenizer.vocab_size": (lambda v: _int(v) and v >= 10, "an integer >= 10"),
    "model.tokenizer.min_frequency": (at_least_one, "an integer >= 1"),
    "model.attention_dropout": (optional(lambda v: _num(v) and 0 <= v < 1), "in [0, 1)"),
    "trainer.accelerator": (one_of(*ACCELERATORS), "one of " + ", ".join(ACCELERATORS)),
    "trainer.devices": (_devices, "an integer >= 1, -1 (all), 'auto' or a list of ids"),
    "trainer.precision": (one_of(*PRECISIONS), "one of " + ", ".join(PRECISIONS[2:8])),
    "trainer.max_epochs": (_epochs, "an integer >= 1, -1 (no limit) or null"),
    "trainer.max_steps": (_steps, "an integer >= 1, or -1 (no limit: max_epochs decides)"),
    "trainer.max_time": (_max_time, "DD:HH:MM:SS, e.g. 00:02:00:00 for two hours"),
    "trainer.accumulate_grad_batches": (at_least_one, "an integer >= 1"),
    "trainer.gradient_clip_val": (optional(non_negative), "a number >= 0, or null (off)"),
    "trainer.val_check_interval": (_interval, "an integer >= 1 (steps) or a fraction in (0, 1]"),
    "trainer.check_val_every_n_epoch": (optional(at_least_one), "an integer >= 1, or null"),
    "trainer.limit_train_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "trainer.limit_val_batches": (_limit, "an integer >= 0 or a fraction in [0, 1]"),
    "trainer.log_every_n_steps": (at_least_one, "an integer >= 1"),
    "trainer.malloc_mmap_threshold": (optional(at_least_one), "a number of bytes >= 1, or null"),
}


def check_settings(cfg: DictConfig) -> None:
    """Every key of RULES present in cfg, then the checks across keys."""
    for key, (check, expected) in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        except Exception as e:  # a broken interpolation
            raise LmlabError(f"{key}: cannot be resolved ({e})".splitlines()[0]) from None
        if value is _ABSENT:
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if not check(value):
            raise LmlabError(f"{key}: expected {expected}, got {value!r}")
    _cross_checks(cfg)


_ABSENT = object()


def _cross_checks(cfg: DictConfig) -> None:
    obj = cfg.objective
    replace = ("mask_replace_prob", "random_replace_prob")
    if all(k in obj for k in replace) and obj.mask_replace_prob + obj.random_replace_prob > 1:
        raise LmlabError(
            "objective.random_replace_prob: mask_replace_prob + random_replace_prob must be "
            f"<= 1, got {obj.mask_replace_prob} + {obj.random_replace_prob}"
        )
    if "doc_stride" in obj and obj.doc_stride >= cfg.data.max_length:
        raise LmlabError(
            f"objective.doc_stride: expected fewer tokens than data.max_length "
            f"({cfg.data.max_length}), got {obj.doc_stride}"
        )
    _check_local_model(cfg.model.name_or_path)


def looks_local(name: str) -> bool:
    """A path, not a hub id (org/name): starts with / . ~ or has more than one slash."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _check_local_model(name_or_path: str | None) -> None:
    if not name_or_path:
        return
    path = Path(os.path.expanduser(name_or_path))
    if path.exists() or not looks_local(name_or_path):
        return
    raise LmlabError(
        f"model.name_or_path: {name_or_path!r} does not exist (expected a Hugging Face model "
        "directory, an lmlab run dir or a hub name such as bert-base-uncased)"
    )


# ---------------------------------------------------------------- model.config values


def init_defaults(source: Path) -> dict[str, Any]:
    """The literal defaults of the config classes in a transformers source file (annotated
    class attributes and __init__ parameters), read with ast (nothing imported)."""
    defaults: dict[str, Any] = {}
    if not source.is_file():
        return defaults
    for node in ast.walk(ast.parse(source.read_text())):
        if not isinstance(node, ast.ClassDef) or not node.name.endswith("Config"):
            continue
        pairs = []
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value:
                pairs.append((item.target.id, item.value))
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                args = item.args.args[len(item.args.args) - len(item.args.defaults) :]
                pairs += [(a.arg, d) for a, d in zip(args, item.args.defaults)]
        for name, value in pairs:
            try:
                defaults[name] = ast.literal_eval(value)
            except ValueError:
                continue
    return defaults


def check_model_config(values: dict, defaults: dict[str, Any]) -> None:
    """Type and sign of each model.config value against the default of its config class:
    numbers stay numbers, flags stay booleans, sizes and counts > 0, dropouts in [0, 1)."""
    for key, value in values.items():
        default = defaults.get(key)
        what = _expected_value(key, default, value)
        if what:
            raise LmlabError(f"model.config.{key}: expected {what}, got {value!r}")


def _expected_value(key: str, default, value) -> str | None:
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if not _num(default) or value is None:
        return None
    if not _num(value) or isinstance(value, float) and not math.isfinite(value):
        return "an integer" if _int(default) else "a number"
    if _int(default) and not _int(value):
        return "an integer"
    if "dropout" in key or "pdrop" in key or key.endswith("_prob"):
        return None if 0 <= value < 1 else "a probability in [0, 1)"
    if default > 0 and value <= 0:
        return "a number > 0"
    return None
