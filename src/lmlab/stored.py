"""What a finished run left on disk for one model, and the config that model runs with.

A trained model is an lmlab run dir (it stands for its export), an export (a Hugging Face
directory with the task info lmlab.json) or a Lightning checkpoint (.ckpt, whose
hyperparameters hold the run's resolved config). locate(path) reads which, without loading
weights; task_config(stored, overrides) is the config it runs with: the shipped defaults,
then what the run stored, then the overrides of the command line. Loading the weights and
evaluating are lmlab.run's (load, evaluate).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import LmlabError
from lmlab.export import TASK_FILE


@dataclass
class Stored:
    """What a run left on disk for one model."""

    kind: str  # run | export | ckpt
    path: Path
    export: Path | None  # the Hugging Face directory (None: a checkpoint)
    objective: DictConfig  # the objective config it was trained with
    max_length: int
    trained: DictConfig | None  # the whole training config (run dirs and checkpoints)


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
        trained = OmegaConf.load(path / "config.yaml")
        task = _read_json(path / "export" / TASK_FILE)
        return Stored("run", path, path / "export", task.objective, task.max_length, trained)
    if (path / TASK_FILE).is_file():
        task = _read_json(path / TASK_FILE)
        return Stored("export", path, path, task.objective, task.max_length, None)
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
    trained = OmegaConf.create(hparams["config"])
    return Stored("ckpt", path, None, trained.objective, trained.data.max_length, trained)


def _read_json(path: Path) -> DictConfig:
    try:
        return OmegaConf.create(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def task_config(stored: Stored, overrides: list[str] = (), run_dir: str | None = None):
    """The config `stored` runs with: defaults < what the run stored < `overrides` (Hydra
    syntax; `data=<preset>` replaces the run's data, keeping its max_length)."""
    from lmlab import config as lmconfig
    from lmlab.experiment import compose

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
    from omegaconf import open_dict
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


def run_config(stored: Stored, overrides: list[str] = (), run_dir: str | None = None):
    """`task_config`, validated and resolved as lmlab-train resolves its config."""
    from lmlab.experiment import resolve

    return resolve(task_config(stored, overrides, run_dir))
