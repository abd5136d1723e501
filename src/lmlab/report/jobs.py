"""Reading and ranking the jobs of a sweep (or runs side by side) for lmlab-report, from the
files alone.

Each job: overrides (.hydra/overrides.yaml), final metrics (metrics.json, else the last values
of metrics.csv), status (status.json, through lmlab.records). What to rank by is a Target (a
metric and a direction): --metric/--mode, else the jobs' optimized_metric or
objective.monitor, with the direction of the Optuna sweeper, objective.monitor_mode, or a
guess from the metric's name. Completed jobs rank first, then pruned ones (stopped early by
Optuna's pruner), then incomplete ones, failed last.
Jobs that differ only in `seed` form a Group: mean, sample standard deviation and n.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmlab import records
from lmlab.errors import LmlabError
from lmlab.records import COMPLETED, FAILED, FINISHED, INCOMPLETE, PRUNED

STATUS_ORDER = {COMPLETED: 0, PRUNED: 1, INCOMPLETE: 2, FAILED: 3}
RUN_FILES = ("metrics.json", "metrics.csv", "status.json", "config.yaml")  # one of: a run dir
NO_RECORD = "no status.json or metrics.json: still running, or killed"


@dataclass
class Job:
    num: int
    path: Path
    overrides: list[str]
    status: str
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # final (or last logged) values
    curve_rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, parsed
    name: str = ""  # a run dir's path (runs side by side); a sweep's job goes by its number

    @property
    def label(self) -> str:
        return self.name or str(self.num)

    def override_values(self) -> dict[str, str]:
        """key -> value; `+key=v` and `++key=v` set the same key as `key=v`."""
        return records.override_values(self.overrides)


@dataclass
class Target:
    """What the report ranks by: a metric and its direction."""

    metric: str
    mode: str  # min | max
    source: str  # where metric and mode came from, shown in the report

    def sort_value(self, value: float | None) -> float:
        """Smaller is better; a job without the metric sorts after every job with it."""
        if value is None or math.isnan(value):
            return math.inf
        return value if self.mode == "min" else -value


# ---------------------------------------------------------------- reading the sweep


def not_runs(path: Path) -> LmlabError:
    return LmlabError(
        f"{path}: neither a run dir (holding {', '.join(RUN_FILES[:-1])} or {RUN_FILES[-1]}) "
        "nor a sweep dir (numbered job dirs holding .hydra/overrides.yaml, "
        "e.g. outputs/multirun/<name>/<hash>)"
    )


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job dirs that Hydra started (they hold .hydra/overrides.yaml)."""
    if not sweep_dir.is_dir():
        raise LmlabError(f"{sweep_dir}: not a directory; expected a run dir or a sweep dir")
    dirs = [d for d in records.job_dirs(sweep_dir) if (d / ".hydra" / "overrides.yaml").is_file()]
    if not dirs:
        raise not_runs(sweep_dir)
    return dirs


def read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LmlabError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def read_curve_rows(path: Path) -> list[dict[str, float]]:
    """metrics.csv rows as {column: value}, empty cells left out (Lightning writes one row per
    logging call, each filling only its own columns)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, cell in row.items():
                try:
                    parsed[key] = float(cell)
                except (TypeError, ValueError):
                    continue  # empty cell, or a row cut short by a killed run
            if "step" in parsed:
                rows.append(parsed)
    return rows


def last_values(rows: list[dict[str, float]]) -> dict[str, float]:
    """The last value logged for each metric, and the last step as global_step."""
    last: dict[str, float] = {}
    for row in rows:
        last |= row
    if "step" in last:
        last["global_step"] = int(last.pop("step"))
    last.pop("epoch", None)
    return last


def numeric(metrics: dict) -> dict[str, float]:
    """metrics.json also holds an export path, samples and confusion matrices: keep numbers."""
    return {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def job_status(record: dict, final: dict | None) -> tuple[str, str]:
    """(status, error) from status.json's record and whether metrics.json is there; a pruned
    job's error column says at which step the pruner stopped it."""
    status = record.get("status")
    error = record.get("error") or ""
    if status == PRUNED and record.get("step") is not None:
        error = f"stopped by the pruner at step {record['step']}"
    # no status.json (killed, or written by an old lmlab), or interrupted (a signal: the
    # error says at which step; a re-run of the sweep's command resumes it)
    if status not in (*FINISHED, FAILED):
        status = COMPLETED if final is not None else INCOMPLETE
        error = "" if final is not None else error or NO_RECORD
    if status in FINISHED and final is None:
        status, error = INCOMPLETE, f"{status}, but without metrics.json"
    return status, error


def read_overrides(path: Path) -> list:
    """Hydra's record of the command line, else status.json's copy (a run started from Python
    has neither: no overrides)."""
    if (path / ".hydra" / "overrides.yaml").is_file():
        return read_yaml(path / ".hydra" / "overrides.yaml") or []
    try:
        return (records.read_status(path) or {}).get("overrides") or []
    except LmlabError:
        return []


def read_job(path: Path, num: int | None = None, name: str = "") -> Job:
    overrides = read_overrides(path)
    rows = read_curve_rows(path / "metrics.csv")
    final = records.read_json(path / "metrics.json")
    try:
        record = records.read_status(path) or {}
    except LmlabError as e:  # cut short by a kill while it was written: as if absent
        record = {"error": str(e)}
    status, error = job_status(record, final)
    metrics = numeric(final) if final is not None else last_values(rows)
    metric_name, value = record.get("optimized_metric"), record.get("value")
    if metric_name and isinstance(value, int | float) and metric_name not in metrics:
        metrics[metric_name] = float(value)
    num = int(path.name) if num is None else num
    return Job(num, path, [str(o) for o in overrides], status, error, metrics, rows, name)


def read_jobs(sweep_dir: Path) -> list[Job]:
    return [read_job(d) for d in job_dirs(sweep_dir)]


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def read_runs(paths: list[Path]) -> tuple[list[Job], Path | None]:
    """(jobs, the sweep dir): one sweep dir gives its jobs, numbered as in the sweep; run dirs
    (or several sweeps) are numbered in the order given and named by their paths, shortened to
    what tells them apart."""
    if len(paths) == 1 and not is_run_dir(paths[0]):
        return read_jobs(paths[0]), paths[0]
    dirs = []
    for path in paths:
        dirs += [path] if is_run_dir(path) else job_dirs(path)
    names = short_paths(dirs)
    return [read_job(d, num, name) for num, (d, name) in enumerate(zip(dirs, names))], None


def short_paths(dirs: list[Path]) -> list[str]:
    """The dirs relative to the folder they share (`0b9217df`, or `finetune_ner/0b9217df` for
    runs of two experiments); one dir: its name."""
    resolved = [d.resolve() for d in dirs]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise LmlabError(f"{dirs[i]}: the same run dir given twice; give each once")
    if len(dirs) == 1:
        return [dirs[0].name]
    common = Path(os.path.commonpath(resolved))
    return [str(d.relative_to(common)) for d in resolved]


def swept_params(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (a key some jobs leave unset counts)."""
    return records.varying_keys(job.overrides for job in jobs)


# ---------------------------------------------------------------- what to rank by


def job_config_value(jobs: list[Job], key: str) -> str | None:
    """`key` (dotted) from the first job whose config holds it: config.yaml is the resolved
    config lmlab ran; a job that failed before writing it still has Hydra's .hydra/config.yaml."""
    from omegaconf import OmegaConf

    for job in jobs:
        for path in (job.path / "config.yaml", job.path / ".hydra" / "config.yaml"):
            if not path.is_file():
                continue
            try:
                value = as_written(OmegaConf.load(path), key)
            except Exception:  # not a YAML mapping: try the next file
                continue
            if value is not None and "${" not in str(value):  # Hydra's ${...}: next file
                return str(value)
    return None


def as_written(cfg, key: str):
    """`key` (dotted) of a loaded config, never resolving a `${...}`: a sweep dir is data, and
    a resolver (lmlab's package_model imports a package) must not run from it."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def optuna_direction(sweep_dir: Path | None) -> str | None:
    """min | max from the Optuna sweeper's direction in multirun.yaml, if the sweep used it."""
    if sweep_dir is None:  # runs side by side
        return None
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    sweeper = ((read_yaml(path) or {}).get("hydra") or {}).get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    direction = sweeper.get("direction")
    if isinstance(direction, list):  # multi-objective: the report ranks by the first one
        direction = direction[0] if direction else None
    modes = {optuna: mode for mode, optuna in records.DIRECTIONS.items()}  # maximize -> max
    return modes.get(str(direction).lower())


def headline(metric: str) -> bool:
    """Whether a metric compares settings at a glance: not one class's F1 (f1_<label>),
    precision or recall (F1 sums them up) or global_step."""
    name = metric.split("/", 1)[-1]
    return not name.startswith("f1_") and name not in ("precision", "recall", "global_step")


def guess_mode(metric: str) -> str:
    """min for losses and error rates (val/mlm_loss, test/wer), max for scores."""
    words = set(re.split(r"[^a-z]+", metric.lower()))
    return "min" if words & {"loss", "perplexity", "error", "wer", "cer"} else "max"


def choose_metric(jobs: list[Job], metric: str | None) -> tuple[str, str]:
    """(metric, where it came from): --metric, else optimized_metric, else objective.monitor."""
    if metric:
        return metric, "--metric"
    if (optimized := job_config_value(jobs, "optimized_metric")) is not None:
        return optimized, "optimized_metric"
    if (monitor := job_config_value(jobs, "objective.monitor")) is not None:
        return monitor, "objective.monitor"
    raise LmlabError(
        "--metric: the jobs' config.yaml name no optimized_metric or objective.monitor; "
        "give --metric NAME (e.g. --metric val/loss)"
    )


def choose_mode(sweep_dir: Path | None, jobs: list[Job], metric: str, mode: str | None):
    """(mode, where it came from): --mode, the Optuna sweeper's direction, the monitor's mode
    (when ranking by the monitor), else a guess from the metric's name."""
    if mode:
        return mode, "--mode"
    if direction := optuna_direction(sweep_dir):
        return direction, "the Optuna sweeper's direction"
    monitor = job_config_value(jobs, "objective.monitor")
    if metric == monitor and (monitor_mode := job_config_value(jobs, "objective.monitor_mode")):
        return monitor_mode, "objective.monitor_mode"
    return guess_mode(metric), "guessed from the name; --mode sets it"


def choose_target(
    sweep_dir: Path | None, jobs: list[Job], metric: str | None = None, mode: str | None = None
) -> Target:
    metric, metric_source = choose_metric(jobs, metric)
    names = sorted({k for job in jobs for k in job.metrics})
    if names and metric not in names:  # (no names at all: every job failed before logging)
        raise LmlabError(
            f"--metric: {metric!r} is in no job's metrics; available: {', '.join(names)}"
        )
    mode, mode_source = choose_mode(sweep_dir, jobs, metric, mode)
    return Target(metric, mode, f"{metric_source}, {mode_source}")


# ---------------------------------------------------------------- ranking


def rank(jobs: list[Job], target: Target) -> list[Job]:
    """Completed jobs by the metric, then pruned ones, incomplete ones (partial values), then
    failed ones."""

    def key(job: Job):
        return STATUS_ORDER[job.status], target.sort_value(job.metrics.get(target.metric)), job.num

    return sorted(jobs, key=key)


def best_job(ranked: list[Job], target: Target) -> Job | None:
    """The best completed job; a pruned one only when no completed job has a value (its value
    is from fewer steps, so never compared with theirs: `ranked` puts it after them); partial
    values of unfinished jobs do not compete."""
    for job in ranked:
        value = job.metrics.get(target.metric)
        if job.status in FINISHED and value is not None and not math.isnan(value):
            return job
    return None


# ---------------------------------------------------------------- seed groups

SEED = "seed"


@dataclass
class Group:
    """Jobs that differ only in `seed`, in rank order: one setting measured n times."""

    jobs: list[Job]
    params: dict[str, str]  # the swept values the jobs share

    def values(self, metric: str) -> list[float]:
        """The metric's final values of the completed jobs (never a killed job's partial one)."""
        values = (job.metrics.get(metric) for job in self.jobs if job.status == COMPLETED)
        return [v for v in values if v is not None and not math.isnan(v)]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        """The sample standard deviation (ddof=1); None for fewer than two values."""
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    def seeds(self) -> list[str]:
        return [job.override_values().get(SEED, "(unset)") for job in self.jobs]


def seed_groups(ranked: list[Job], params: list[str], target: Target) -> list[Group] | None:
    """The ranked jobs grouped by their swept values other than `seed`, best mean first
    (groups without a completed value last); None when seed is not swept or no two jobs
    share a setting."""
    if SEED not in params:
        return None
    others = [p for p in params if p != SEED]
    groups: dict[tuple, Group] = {}
    for job in ranked:
        values = job.override_values()
        key = tuple(values.get(p) for p in others)
        group = groups.setdefault(key, Group([], {p: values.get(p) for p in others}))
        group.jobs.append(job)
    if all(len(group.jobs) == 1 for group in groups.values()):
        return None
    for group in groups.values():
        group.jobs.sort(key=lambda job: seed_order(job.override_values().get(SEED)))
    return sorted(groups.values(), key=lambda g: target.sort_value(g.mean(target.metric)))


def seed_order(seed: str | None) -> tuple:
    """Seeds in numeric order (2 before 10), unset first, other strings after numbers."""
    if seed is None:
        return (0, 0, "")
    try:
        return (1, float(seed), "")
    except ValueError:
        return (2, 0, seed)
