"""Checks a lmlab-train command line before Hydra runs it: the config is composed (and, for a
single run, validated) here, so that a wrong option, key or value is one `LmlabError` line,
exit 2, before Hydra prints its multi-line message or creates a run dir.

`check_command(args)` is called by lmlab.cli.train.main; it imports only Hydra and the schemas.
For `--cfg job|hydra|all` it also prints the config (Hydra's own printer), so that the config is
composed once: Hydra has nothing left to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import tempfile
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmlab.config import config_dir, unknown_key, validate
from lmlab.errors import LmlabError

# Hydra flags after which no config is composed (or a config path we cannot mirror)
_SKIP = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")
_SKIP += ("--config-path", "-cp", "--experimental-rerun")


def check_command(args: list[str]) -> bool:
    """Raises LmlabError for a command whose config cannot be composed or is invalid; True
    when the command was `--cfg ...` and its config has been printed."""
    from hydra._internal.utils import get_args_parser

    if any(a.split("=")[0] in _SKIP for a in args):
        return False
    parser = get_args_parser()
    parser.error = _usage_error  # one line, not argparse's usage block
    parsed = parser.parse_args(args)
    overrides = list(parsed.overrides)
    if parsed.config_dir:
        overrides.append(f"hydra.searchpath=[file://{parsed.config_dir}]")
    config_name = parsed.config_name or "train"
    if parsed.cfg:
        show_config(parsed, overrides, config_name)
        return True
    sweep = parsed.multirun or any(o.is_sweep_override() for o in _parse(overrides))
    if sweep:  # with -m, or a search (hparams_search=...) that sets Hydra's multirun mode
        overrides = _first_job(overrides)
    cfg = compose_or_explain(overrides, config_name)
    if not sweep:
        validate(cfg)
    for key in ("paths.output_dir", "paths.cache_dir"):
        check_writable(key, OmegaConf.select(cfg, key))
    return False


def show_config(parsed, overrides: list[str], config_name: str) -> None:
    """`--cfg job|hydra|all [--package P] [--resolve]`, printed by Hydra's own printer."""
    from hydra.core.global_hydra import GlobalHydra

    if parsed.multirun:  # Hydra's ValueError would be a traceback
        raise LmlabError("--cfg prints one config: drop --multirun (-m)")

    def show():
        hydra = GlobalHydra.instance().hydra
        hydra.show_cfg(config_name, overrides, parsed.cfg, parsed.package, parsed.resolve)

    in_hydra(show, overrides)


def _usage_error(message: str):
    raise LmlabError(f"{message} (lmlab-train --help lists the options)")


def check_writable(key: str, path: str | None) -> None:
    """`path` (made if missing) must be a directory this user can write in."""
    if not path:
        return
    target = Path(os.path.expanduser(str(path))).absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise LmlabError(f"{key}: {existing} is a file, expected a directory ({key}=...)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".lmlab-write-check-")
    except OSError as e:
        raise LmlabError(
            f"{key}: cannot write in {existing} ({e.strerror}); set {key} to a writable directory"
        ) from None
    os.close(fd)
    os.unlink(probe)


def user_error(error: Exception) -> Exception:
    """A library error a user's setup causes (a file or directory that cannot be written or
    read) as one LmlabError line; any other error as it is."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return LmlabError(f"{error.filename}: {error.strerror}")
    missing = re.search(r"\(monitor='([^']+)'\)`? could not find the monitored key", str(error))
    if type(error).__name__ == "MisconfigurationException" and missing:
        logged = re.search(r"returned metrics: \[([^\]]*)\]", str(error))
        return LmlabError(
            f"objective.monitor: {missing.group(1)!r} was not logged by this validation "
            f"(a per-label score is logged only when the label occurs); logged: "
            f"{logged.group(1) if logged else '?'}"
        )
    return error


def clean_failed_start(run_dir: str | None) -> None:
    """A run that failed before training leaves only its status.json and log (and a lock
    file, released by its owner): Hydra's .hydra copy and any empty directory go."""
    if not run_dir or not Path(run_dir).is_dir():
        return
    root = Path(run_dir)
    if any(root.rglob("*.ckpt")) or (root / "export").exists():
        return  # trained before: a resumable run dir stays as it is
    for entry in root.iterdir():
        keep = entry.name == "status.json" or entry.suffix == ".log" or "lock" in entry.name
        if keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _first_job(overrides: list[str]) -> list[str]:
    """A sweep's overrides with each swept key at its first value (each job is validated when
    the sweep starts: lmlab.sweeps)."""
    out = []
    for override in _parse(overrides):
        if not override.is_sweep_override():
            out.append(override.input_line)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # an interval or other search space: the sweeper's to draw
            continue
        out.append(f"{override.get_key_element()}={first}")
    return out


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise LmlabError(_parse_message(e)) from None


def _parse_message(e) -> str:
    first = str(e.message).splitlines()[0]
    return f"{e.override}: cannot be parsed ({first}); expected key=value, e.g. objective.lr=1e-4"


def compose_or_explain(overrides: list[str], config_name: str = "train"):
    """hydra.compose, each of its errors turned into one line naming the key or option."""
    from hydra import compose

    return in_hydra(lambda: compose(config_name, overrides=overrides), overrides)


def in_hydra(work, overrides: list[str]):
    """work() inside Hydra initialised on lmlab's config dir (the job named `train`, as
    hydra.main names it after cli/train.py); each error of composing `overrides` is one line."""
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import MissingConfigException, OverrideParseException

    before = HydraConfig.instance().cfg  # showing a config sets it: leave it as it was
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="train"):
            return work()
    except OverrideParseException as e:
        raise LmlabError(_parse_message(e)) from None
    except MissingConfigException as e:
        raise LmlabError(_missing_message(e, overrides)) from None
    except LmlabError:
        raise
    except Exception as e:
        raise LmlabError(_composition_message(e, overrides)) from None
    finally:
        HydraConfig.instance().cfg = before


def _missing_message(e, overrides: list[str]) -> str:
    missing = e.missing_cfg_file or ""
    if "/" not in missing:  # the primary config
        return f"--config-name {missing}: no such config in {config_dir()}"
    group, _, option = missing.rpartition("/")
    options = [o for o in e.options or [] if not o.endswith("_schema")]
    if group == "data" and set(".*?/") & set(option):
        return (
            f"data={option}: no such file, directory or glob (nor a data preset: "
            f"{', '.join(options)})"
        )
    near = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {group}={near[0]}?)" if near else ""
    return f"{group}={option}: no such option{hint}; expected one of: {', '.join(options)}"


def _composition_message(e: Exception, overrides: list[str]) -> str:
    cause = e.__cause__ or e.__context__ or e
    text = str(e)
    yaml_place = re.findall(r'in "([^"]+)", line (\d+), column (\d+)', text)
    if yaml_place:  # a YAML syntax error in a config file
        path, line, col = yaml_place[-1]
        problem = text.splitlines()[-2] if len(text.splitlines()) > 1 else text
        return f"{path}:{line}:{col}: YAML syntax error ({problem.strip()})"
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, OmegaConfBaseException) or not key:
        return f"config: {text.splitlines()[0] if text else type(e).__name__}"
    message = str(getattr(cause, "msg", cause)).splitlines()[0]
    within = re.match(r"In '([^']+)':", text)
    if "not in" in message or "is not in struct" in message:
        return _unknown_key(key, within.group(1) if within else None, text, cause)
    value = next((o.split("=", 1)[1] for o in overrides if o.split("=")[0] == key), None)
    got = f", got {value!r}" if value is not None else ""
    return f"{key}: {_type_expected(message)}{got}"


def _type_expected(message: str) -> str:
    if "is not a subclass of" in message or re.match(r"Cannot assign \w+ to Dict", message):
        return "expected a group of settings (key.<name>=value), not one value"
    if "does not support deletion" in message:
        return "a setting cannot be deleted (~key); set it instead (key=value)"
    kind = re.search(r"converted to (\w+)", message)
    if kind:
        kind = {"Float": "number", "Integer": "integer", "Boolean": "boolean (true or false)"}.get(
            kind.group(1), kind.group(1).lower()
        )
        return f"expected a{'n' if kind[0] in 'ie' else ''} {kind}"
    return message


def _unknown_key(key: str, within: str | None, text: str, cause: Exception) -> str:
    if within and within != "train":  # set by a config file, e.g. an experiment
        group = key.split(".")[0]
        return (
            f"{key}: set by {within}.yaml, which is written for another {group}; drop the "
            f"{group}= override, or choose another {within.split('/')[0]} made for that {group}"
        )
    parent, _, leaf = key.rpartition(".")
    if parent == "model":
        return (
            f"{key}: not a key of model; architecture settings go under model.config "
            f"(model.config.{leaf}=...)"
        )
    schema = getattr(cause, "object_type", None)
    if dataclasses.is_dataclass(schema):  # `+` would add a key that nothing reads
        return unknown_key(key, {f.name for f in dataclasses.fields(schema)})
    if "+" + key in text or "To append" in text:  # a free-form node: model.config, trainer.kwargs
        return f"{key}: no such key; to add a new key use +{key}=..."
    return f"{key}: no such key"
