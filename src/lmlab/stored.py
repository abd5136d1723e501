"""What a finished run left on disk for one model, and the config that model runs with.

A trained model is an lmlab run dir (it stands for its export), an export (a Hugging Face
directory with the task info lmlab.json) or a Lightning checkpoint (.ckpt, whose
hyperparameters hold the run's resolved config). locate(path) reads which, without loading
weights; task_config(stored, overrides) is the config it runs with: the shipped defaults,
then what the run stored, then the overrides of the command line. Loading the weights and
evaluating are lmlab.run's (load, evaluate).

What a run left is data, never code: a stored objective is one of lmlab's own classes
(objective_class, which imports nothing the file names), a stored config holds plain values
(no ${...} is resolved from it) and never passes on model.config.trust_remote_code, and a
checkpoint is read with torch.load(weights_only=True).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import LmlabError
from lmlab.export import TASK_FILE
from lmlab.models import check_code, custom_code


@dataclass
class Stored:
    """What a run left on disk for one model."""

    kind: str  # run | export | ckpt
    path: Path
    export: Path | None  # the Hugging Face directory (None: a checkpoint)
    objective: DictConfig  # the objective config it was trained with
    max_length: int
    trained: DictConfig | None  # the whole training config (run dirs and checkpoints)
    # its stored config set model.config.trust_remote_code, which is dropped: never obeyed
    asked_trust: bool = False


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
        trained = _plain(_read_yaml(path / "config.yaml"), path / "config.yaml")
        task = _read_json(path / "export" / TASK_FILE)
        export, asked = path / "export", _drop_trust(trained)
        return Stored("run", path, export, task.objective, task.max_length, trained, asked)
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
    contents = read_checkpoint(path)
    hparams = contents.get("hyper_parameters", {}) if isinstance(contents, dict) else None
    config = hparams.get("config") if isinstance(hparams, dict) else None
    trained = _plain(config, path) if isinstance(config, dict) else None  # before any select
    max_length = OmegaConf.select(trained, "data.max_length") if trained else None
    if not trained or "objective" not in trained or type(max_length) is not int:
        raise LmlabError(
            f"{path}: not an lmlab checkpoint (no config with an objective and data.max_length "
            "in its hyperparameters)"
        )
    asked = _drop_trust(trained)
    return Stored("ckpt", path, None, trained.objective, max_length, trained, asked)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents as plain data (tensors, numbers, strings, containers): a file
    that holds other Python objects, whose unpickling could run code, is refused."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise LmlabError(
            f"{path}: holds Python objects besides plain data, which lmlab never loads "
            f"(torch.load weights_only: {reason})"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmlabError(f"{path}: not a readable checkpoint ({reason})") from None


def _read_json(path: Path) -> DictConfig:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("objective"), dict):
        raise LmlabError(f"{path}: expected an object with an 'objective' object")
    if type(data.get("max_length")) is not int:
        raise LmlabError(f"{path}: max_length {data.get('max_length')!r}; expected an integer")
    return _plain(data, path)


def _read_yaml(path: Path) -> DictConfig:
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        cfg = OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException) as e:
        raise LmlabError(f"{path}: not a valid config ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise LmlabError(f"{path}: expected a mapping of config sections")
    return cfg


# ---------------------------------------------------------------- stored files are data


def _plain(data, source: Path) -> DictConfig:
    """A stored config (dict or DictConfig) as data: no value is an interpolation (${...}
    would be resolved, and a resolver may import a module or read the environment) and its
    objective is one of lmlab's."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=False)
    _no_interpolation(data, source, "")
    cfg = OmegaConf.create(data)
    if "objective" in cfg:
        objective_class(cfg.objective.get("_target_"), source)
        name = cfg.objective.get("name", "")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]*", name):
            raise LmlabError(f"{source}: objective.name {name!r}; expected a plain name")
    return cfg


def _drop_trust(trained: DictConfig) -> bool:
    """Removes model.config.trust_remote_code from a stored config; whether it was set."""
    settings = OmegaConf.select(trained, "model.config")
    return bool(isinstance(settings, DictConfig) and settings.pop("trust_remote_code", False))


def _no_interpolation(value, source: Path, key: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _no_interpolation(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _no_interpolation(v, source, f"{key}[{i}]")
    elif isinstance(value, str) and "${" in value:
        raise LmlabError(
            f"{source}: {key}: {value!r} is an interpolation; a stored config holds plain "
            "values and nothing in it is resolved"
        )


def objective_class(target, source) -> type:
    """The lmlab objective class `target` (module.Class under lmlab.objectives) names, looked
    up among the classes lmlab's own objective modules define: nothing `target` names is
    imported, so a stored file cannot make lmlab import or call anything else."""
    classes = _objective_classes()
    if target not in classes:
        known = ", ".join(sorted(name.removeprefix("lmlab.objectives.") for name in classes))
        raise LmlabError(
            f"{source}: objective._target_ {target!r} is not one of lmlab's objectives "
            f"(lmlab.objectives.: {known}); nothing it names was imported"
        )
    return classes[target]


@functools.cache
def _objective_classes() -> dict[str, type]:
    """'lmlab.objectives.<module>.<Class>' -> class, for every objective lmlab ships."""
    import importlib
    import pkgutil

    import lmlab.objectives as package
    from lmlab.objectives.base import Objective

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for cls in vars(module).values():
            if (
                isinstance(cls, type)
                and issubclass(cls, Objective)
                and cls.__module__ == module.__name__
                and cls.head != Objective.head  # not a base class such as LabelSetObjective
            ):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


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
    _check_trust(stored, cfg.model)
    return cfg


def _check_trust(stored: Stored, model_cfg) -> None:
    """trust_remote_code only from the command line: the stored config's is never obeyed,
    and one line says so (as the error, where the model would need it)."""
    if stored.asked_trust and not model_cfg.config.get("trust_remote_code"):
        where = custom_code(model_cfg.name_or_path)
        what = f"{stored.path}: its stored config sets model.config.trust_remote_code=true"
        todo = "if you trust it, add ++model.config.trust_remote_code=true to the command line"
        if where:
            raise LmlabError(
                f"{what} for '{model_cfg.name_or_path}', whose {where} names Python code of "
                f"its own (auto_map); a stored config never runs code, so nothing ran ({todo})"
            )
        print(f"lmlab: warning: {what}, which is ignored ({todo})", file=sys.stderr, flush=True)
    check_code(model_cfg)


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
