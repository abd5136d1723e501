"""The run and sweep record: what a run leaves in <run dir>/status.json, how a sweep's jobs are
found, and which overrides tell the jobs of a sweep apart.

status.json, written by every lmlab-train run (sweeps.write_status) and read by the end of
a sweep (sweeps.summarize) and by lmlab-report:

    {"status": "completed" | "failed" | "interrupted" | "pruned", "error": one line or null,
     "optimized_metric": name or null, "value": float or null, "overrides": [...]}

An interrupted run (lmlab.interrupts: SIGTERM, Ctrl-C, SIGUSR1) adds "step": the global
step of the checkpoint a re-run of the same command continues from. A trial that Optuna's
pruner stopped (lmlab.pruning) is `pruned`, with the "step" it was stopped at.

A sweep dir (Hydra's multirun dir) holds one numbered dir per job, and multirun.yaml (the
basic sweeper) or optimization_results.yaml and optuna.db (Optuna). The optimisation
direction of a sweep is objective.monitor_mode (min | max), which Optuna spells minimize |
maximize. Imports neither torch nor Hydra at import time: the CLI uses it at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.fileutil import write_json

STATUS_FILE = "status.json"
COMPLETED, FAILED = "completed", "failed"  # the statuses a run writes
INCOMPLETE = "incomplete"  # lmlab-report's name for a job that wrote neither (killed, running)
INTERRUPTED = "interrupted"  # stopped by a signal, its checkpoint saved (lmlab.interrupts)
PRUNED = "pruned"  # stopped early by Optuna's pruner, a finished trial (lmlab.pruning)
FINISHED = (COMPLETED, PRUNED)  # a sweep run again skips these jobs

DIRECTIONS = {"min": "minimize", "max": "maximize"}  # monitor_mode -> Optuna's direction


# ---------------------------------------------------------------- status.json


def status_record(
    error: str | None, optimized_metric: str | None, value: float | None, overrides: list[str]
) -> dict:
    """The content of status.json: failed when there is an error line, else completed."""
    return {
        "status": FAILED if error is not None else COMPLETED,
        "error": error,
        "optimized_metric": optimized_metric,
        "value": value,
        "overrides": overrides,
    }


def write_status(run_dir: str | Path, record: dict) -> Path:
    """<run dir>/status.json, atomically (a killed run leaves the old file or none)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_json(record, Path(run_dir) / STATUS_FILE, sort_keys=False)


def read_json(path: Path) -> dict | None:
    """None when `path` is not there; a file that is not JSON is an error naming file:line."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_status(run_dir: Path) -> dict | None:
    """<run dir>/status.json; None when the run never wrote one (killed, or still running)."""
    return read_json(run_dir / STATUS_FILE)


# ---------------------------------------------------------------- a sweep's jobs


def job_dirs(sweep: Path) -> list[Path]:
    """The numbered job dirs of a sweep dir, by number (other entries, .submitit, are not)."""
    dirs = [d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()]
    return sorted(dirs, key=lambda d: int(d.name))


def read_statuses(sweep: Path) -> dict[int, dict | None]:
    """Job number -> its status.json (None: the job never wrote one, e.g. it was killed)."""
    return {int(d.name): read_status(d) for d in job_dirs(sweep)}


# ---------------------------------------------------------------- what tells the jobs apart


def override_key(override: str) -> str:
    """The key an override sets: `+key=v`, `++key=v` and `key=v` set the same one."""
    return override.partition("=")[0].lstrip("+~")


FRESH_KEY = "fresh"  # `+fresh=true`: a sweep command starts a new sweep dir instead of resuming
TRUE_VALUES = {"true", "yes", "on", "1"}


def is_fresh(overrides: Iterable[str]) -> bool:
    """Whether a sweep's command line asks for a fresh sweep (`+fresh=true`)."""
    value = override_values(overrides).get(FRESH_KEY, "false")
    return value.strip().strip("'\"").lower() in TRUE_VALUES


def override_values(overrides: Iterable[str]) -> dict[str, str]:
    """key -> value of a job's overrides."""
    return {override_key(o): o.partition("=")[2] for o in overrides}


def varying_keys(jobs_overrides: Iterable[Iterable[str]]) -> list[str]:
    """Override keys whose value differs between jobs (a key some jobs leave unset counts), in
    the order they first appear: the parameters a finished sweep varied."""
    values = [override_values(overrides) for overrides in jobs_overrides]
    keys: list[str] = []
    for job in values:
        keys += [k for k in job if k not in keys]
    return [k for k in keys if len({job.get(k) for job in values}) > 1]


def overrides_of(overrides: Iterable[str], keys: Iterable[str]) -> list[str]:
    """The overrides (as written) that set one of `keys`."""
    keys = set(keys)
    return [o for o in overrides if override_key(o) in keys]


def varying_overrides(jobs_overrides: Mapping[int, list[str]]) -> dict[int, list[str]]:
    """Each job's overrides that tell it apart from the other jobs; a lone job's are all."""
    if len(jobs_overrides) < 2:
        return {num: list(overrides) for num, overrides in jobs_overrides.items()}
    keys = varying_keys(jobs_overrides.values())
    return {num: overrides_of(overrides, keys) for num, overrides in jobs_overrides.items()}


def swept_keys(sweep: Path, sweeper_params: Iterable[str] = ()) -> set[str]:
    """The keys a sweep varies by its definition, known before its jobs have run: the
    sweeper's params (Optuna, hydra.sweeper.params) and the keys the command line swept
    (seed=1,2), read from <sweep dir>/multirun.yaml (basic sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = {override_key(str(k)) for k in sweeper_params}
    sweep_file = sweep / "multirun.yaml"
    if sweep_file.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(sweep_file), resolve=False)  # data only
        command = [str(t) for t in loaded["hydra"]["overrides"]["task"]]
        parsed = OverridesParser.create().parse_overrides(command)
        keys |= {override_key(t) for t, o in zip(command, parsed) if o.is_sweep_override()}
    return keys
