"""Trained models back from disk, for lmlab-eval and lmlab-predict, and prediction itself.

A trained model is an lmlab run dir (it stands for its export), an export (a Hugging Face
directory with the task info lmlab.json) or a Lightning checkpoint (.ckpt, whose
hyperparameters hold the run's resolved config). The config a model runs with is the
shipped defaults, then what the run stored, then the overrides of the command line.

from lmlab.predict import load, predict
trained = load("outputs/finetune_sentiment/1a2b3c4d")
rows = predict(trained.objective, trained.model, [{"text": "a fine film"}])
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

TASK_FILE = "lmlab.json"  # as lmlab.export.TASK_FILE, without importing the export module


@dataclass
class Stored:
    """What a run left on disk for one model."""

    kind: str  # run | export | ckpt
    path: Path
    export: Path | None  # the Hugging Face directory (None: a checkpoint)
    objective: dict  # the objective config it was trained with
    max_length: int
    trained: dict | None  # the whole training config (run dirs and checkpoints)


@dataclass
class Trained:
    config: Any  # DictConfig: the config the model runs with, resolved
    objective: Any
    model: Any
    tokenizer: Any
    stored: Stored


def locate(path: str | Path) -> Stored:
    """Reads what `path` (run dir, export or .ckpt) stored, without loading weights."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return _checkpoint(path)
    if (path / "config.yaml").is_file() and not (path / TASK_FILE).is_file():
        if not (path / "export" / TASK_FILE).is_file():
            raise LmlabError(
                f"{path}: an lmlab run dir without an export (has the run finished, with "
                "export=true?); give one of its checkpoints/*.ckpt instead"
            )
        from omegaconf import OmegaConf

        trained = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        task = _read_json(path / "export" / TASK_FILE)
        return Stored("run", path, path / "export", task["objective"], task["max_length"], trained)
    if (path / TASK_FILE).is_file():
        task = _read_json(path / TASK_FILE)
        return Stored("export", path, path, task["objective"], task["max_length"], None)
    if (path / "config.json").is_file():
        raise LmlabError(
            f"{path}: a Hugging Face directory but not an lmlab export (no {TASK_FILE})"
        )
    what = "no such file or directory" if not path.exists() else "not a run dir, export or .ckpt"
    raise LmlabError(f"{path}: {what}")


def _checkpoint(path: Path) -> Stored:
    import torch

    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "config" not in hparams:
        raise LmlabError(f"{path}: not an lmlab checkpoint (no config in its hyperparameters)")
    trained = hparams["config"]
    return Stored("ckpt", path, None, trained["objective"], trained["data"]["max_length"], trained)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def task_config(stored: Stored, overrides: list[str] = (), run_dir: str | None = None):
    """The config `stored` runs with: defaults < what the run stored < `overrides` (Hydra
    syntax; `data=<preset>` replaces the run's data, keeping its max_length)."""
    from omegaconf import OmegaConf

    from lmlab import config as lmconfig
    from lmlab.build import compose

    groups = [o for o in overrides if o.partition("=")[0] == "data"]
    rest = [o for o in overrides if o not in groups]
    name = stored.objective.get("name", "")
    preset = (lmconfig.config_dir() / "objective" / f"{name}.yaml").is_file()
    run_dir = run_dir or tempfile.gettempdir()
    cfg = compose([*groups, *([f"objective={name}"] if preset else [])], run_dir=run_dir)
    trained = stored.trained or {}
    sections = [("model", lmconfig.ModelConfig), ("trainer", lmconfig.TrainerConfig)]
    if not groups:
        sections.append(("data", lmconfig.DataConfig))
    for key, schema in sections:
        if key in trained:
            cfg[key] = OmegaConf.merge(OmegaConf.structured(schema), trained[key])
    cfg.seed = trained.get("seed", cfg.seed)
    base = cfg.objective if preset else OmegaConf.create({})
    OmegaConf.set_struct(base, False)  # an objective without a preset keeps all its keys
    cfg.objective = OmegaConf.merge(base, stored.objective)
    OmegaConf.set_struct(cfg.objective, True)
    cfg.data.max_length = stored.max_length
    apply_overrides(cfg, rest)
    return cfg


def apply_overrides(cfg, overrides: list[str]) -> None:
    """`key=value`, `+key=value` and `~key` as lmlab-train takes them; errors name the key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise LmlabError(f"override: {str(e).splitlines()[0]}") from None
    for override in parsed:
        key = override.key_or_group
        try:
            if override.is_delete():
                parent, _, leaf = key.rpartition(".")
                with open_dict(cfg):
                    del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
            else:
                force = override.is_add() or override.is_force_add()
                OmegaConf.update(cfg, key, override.value(), merge=True, force_add=force)
        except (OmegaConfBaseException, KeyError, TypeError) as e:
            reason = (getattr(e, "msg", None) or str(e)).splitlines()[0]
            raise LmlabError(f"{key}: {reason}") from None


def load(
    path: str | Path | Stored,
    overrides: list[str] = (),
    device: str = "cpu",
    run_dir: str | None = None,
) -> Trained:
    """The model at `path` (or `locate`'s answer) with its objective, in eval mode."""
    stored = path if isinstance(path, Stored) else locate(path)
    return load_model(stored, run_config(stored, overrides, run_dir), device)


def run_config(stored: Stored, overrides: list[str] = (), run_dir: str | None = None):
    """`task_config`, validated and resolved as lmlab-train resolves its config."""
    from lmlab.build import resolve

    return resolve(task_config(stored, overrides, run_dir))


def load_model(stored: Stored, cfg, device: str = "cpu") -> Trained:
    from hydra.utils import get_class

    objective_class = get_class(cfg.objective._target_)
    if stored.export is not None:
        model, tokenizer = _from_export(stored.export, objective_class.head)
    else:
        model, tokenizer = _from_checkpoint(stored, cfg)
    objective = objective_class(cfg.objective, tokenizer, cfg.data.max_length, cfg.seed)
    objective.restore(model)
    return Trained(cfg, objective, model.to(device).eval(), tokenizer, stored)


def _from_export(export: Path, head: str):
    import transformers

    try:
        model = getattr(transformers, head).from_pretrained(str(export))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(export))
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        raise LmlabError(f"{export}: cannot load it as {head}: {reason}") from None
    if tokenizer.pad_token is None:  # as lmlab.tokenizers.build: GPT-style pads with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _from_checkpoint(stored: Stored, cfg):
    """Rebuilds the model as training built it (tokenizer from the training data, label set
    from `prepare`), then loads the checkpoint's weights."""
    import torch
    from omegaconf import OmegaConf

    from lmlab.build import build

    trained = OmegaConf.create(stored.trained)
    trained.paths.cache_dir = cfg.paths.cache_dir
    trained.paths.run_dir = cfg.paths.run_dir
    exp = build(trained)
    state = torch.load(stored.path, map_location="cpu", weights_only=True)["state_dict"]
    exp.module.load_state_dict(state)
    return exp.model, exp.tokenizer


# ---------------------------------------------------------------- prediction


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per line ("-": stdin); blank lines are skipped; errors name file:line."""
    name = "<stdin>" if path == "-" else path
    try:
        lines = sys.stdin.readlines() if path == "-" else Path(path).read_text().splitlines()
    except OSError as e:
        raise LmlabError(f"--input: cannot read '{path}': {e.strerror}") from None
    rows, keys, first = [], None, 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{name}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise LmlabError(f"{name}:{number}: expected a JSON object, got {type(row).__name__}")
        if keys is None:
            keys, first = set(row), number
        elif set(row) != keys:
            raise LmlabError(
                f"{name}:{number}: fields {sorted(row)} differ from line {first}'s {sorted(keys)}"
            )
        rows.append(row)
    if not rows:
        raise LmlabError(f"{name}: no input rows")
    return rows


def predict(objective, model, rows: list[dict], batch_size: int = 32) -> list[dict]:
    """One output per row of `rows` (canonical columns), in order."""
    import datasets
    import torch

    try:
        examples = datasets.Dataset.from_list(rows)
    except (datasets.exceptions.DatasetGenerationError, TypeError, ValueError) as e:
        raise LmlabError(f"input: rows do not make a table: {str(e).splitlines()[0]}") from None
    processed = objective.preprocess(examples, "predict")
    records = []
    with torch.no_grad():
        for start in range(0, len(processed), batch_size):
            features = [processed[i] for i in range(start, min(start + batch_size, len(processed)))]
            batch = objective.collate(features)
            batch = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in batch.items()}
            records += objective.predict_step(model, batch)
    outputs = objective.decode(records, examples)
    if len(outputs) != len(rows):
        raise LmlabError(
            f"objective {objective.cfg.name}: {len(outputs)} outputs for {len(rows)} rows"
        )
    return outputs


def write_jsonl(rows: list[dict], path: str | None) -> None:
    """To stdout, or to `path` atomically (complete or absent)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if path is None:
        sys.stdout.write(text)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
