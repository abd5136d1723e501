"""Sweeps (lmlab-train -m): writing each job's status.json, failed jobs that do not end the
sweep, and the summary printed when a sweep ends (failed jobs, Optuna's best parameters).
Before the first job, every job of the basic sweeper, or the search space of lmlab's Optuna
sweeper (hydra_plugins.lmlab_optuna_sweeper), is composed and checked.

A job of a multirun never calls sys.exit: it writes status.json and raises JobFailed, which
Hydra records as a failed JobReturn while the other jobs go on. The SweepSummary callback
remembers the sweep dir, so that lmlab-train can list the failed jobs once Hydra is done,
whichever launcher ran them (in this process, joblib workers, submitit jobs). The record
itself (status.json's schema, reading, a sweep's jobs, what tells them apart) is
lmlab.records'. Imports no torch: it runs at start-up.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab import records, runlock
from lmlab.errors import LmlabError

_sweep_dirs: list[Path] = []  # filled by SweepSummary in the process that runs the sweeper
_sweep_locks: list[runlock.RunLock] = []  # one writer per sweep dir, as per run dir


class JobFailed(CompactHydraException):
    """Raised by a multirun job: Hydra prints it as one line, without a stack trace."""


class SweepSummary(Callback):
    """Configured in conf/hydra/default.yaml (hydra.callbacks.sweep_summary): before the
    sweeper starts, pins the sweep dir for every job, checks every job's config, locks
    the dir (the same sweep command started twice: the second stops, RunDirLocked), and
    remembers it for the summary."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep = pin_sweep_dir(config)
        check_jobs(config, sweep)
        _sweep_locks.append(runlock.acquire(sweep))
        announce_continuation(sweep)
        _sweep_dirs.append(sweep)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (a path with spaces or commas stays one)."""
    return "'" + value.replace("'", "\\'") + "'"


def pin_sweep_dir(config: DictConfig) -> Path:
    """Resolves hydra.sweep.dir once, here (${lmlab_sweep_dir:...} hashes the sweep's command,
    which a job's own config no longer holds), and hands it to every job as a hydra override:
    launchers compose each job from the sweep's hydra overrides, in this process or another.
    Drops `+fresh=true` from the jobs' overrides: it chose the dir, it is not a job setting."""
    sweep = Path(str(config.hydra.sweep.dir)).absolute()
    task = [str(o) for o in config.hydra.overrides.task]
    hydra_overrides = [str(o) for o in config.hydra.overrides.hydra]
    pinned = [o for o in hydra_overrides if records.override_key(o) != "hydra.sweep.dir"]
    if records.is_fresh(task) and len(pinned) < len(hydra_overrides):
        print(
            f"lmlab-train: error: +fresh=true: hydra.sweep.dir is set on the command line "
            f"({sweep}), so the sweep goes there; give another dir to start afresh",
            file=sys.stderr,
        )
        sys.exit(2)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(sweep)
        config.hydra.overrides.task = [
            o for o in task if records.override_key(o) != records.FRESH_KEY
        ]
        config.hydra.overrides.hydra = [*pinned, f"hydra.sweep.dir={quoted(str(sweep))}"]
    return sweep


def announce_continuation(sweep: Path) -> None:
    """One line when the command's sweep dir holds jobs already: the sweep goes on."""
    if not sweep.is_dir() or not records.job_dirs(sweep):
        return
    done = sum(1 for d in records.job_dirs(sweep) if _completed_record(d) is not None)
    print(
        f"lmlab-train: continuing the sweep in {sweep}: {done} job(s) completed earlier are "
        f"skipped, the others resume or run again (+fresh=true starts a new sweep)",
        flush=True,
    )


# ---------------------------------------------------------------- every job, before the first


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job, as Hydra's basic sweeper will launch them; for lmlab's
    Optuna sweeper, which draws its trials as the search goes, those of the configs that
    cover its search space (every choice, both ends of every interval); None for others."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_"))
    if target.endswith("LmlabOptunaSweeper"):
        from hydra_plugins.lmlab_optuna_sweeper.sweeper import search_space

        task = [str(o) for o in config.hydra.overrides.task]
        return search_space(config.hydra.sweeper, task).probes()
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}  # as BasicSweeper.sweep
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += [str(o) for o in config.hydra.overrides.task]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def composition_error(error: BaseException, overrides: list[str]) -> str:
    """One line for an error Hydra or OmegaConf raise while composing a job's config: the key
    (OmegaConf's full_key) and the first line of what went wrong; worded as lmlab-train's
    check of a single command words it (lmlab.cli.precheck), when that is there."""
    from hydra.errors import MissingConfigException

    try:
        from lmlab.cli import precheck

        if isinstance(error, MissingConfigException):
            return precheck._missing_message(error, overrides)
        return precheck._composition_message(error, overrides)
    except (ImportError, AttributeError):
        pass
    cause = error.__cause__ or error
    key = getattr(cause, "full_key", None) or getattr(error, "full_key", None)
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    hint = [line for line in str(error).splitlines() if line.startswith("To append")]
    line = f"{key}: {text}" if key else text
    if cause is not error and not key:
        line = f"{str(error).strip().splitlines()[0]} ({text})"
    return f"{line}; {hint[0][0].lower()}{hint[0][1:]}" if hint else line


def job_error(config: DictConfig, overrides: list[str], num: int, sweep: Path) -> str | None:
    """Composes job `num` as the launcher will, and checks it (lmlab.config.validate); the
    error as one line, or None."""
    import copy

    from hydra.core.global_hydra import GlobalHydra

    from lmlab.config import validate

    try:
        job = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
        with read_write(job.hydra), open_dict(job.hydra):
            job.hydra.job.num = job.hydra.job.id = num
            job.hydra.runtime.output_dir = str(sweep / str(num))
        HydraConfig.instance().set_config(job)  # for ${hydra:...} in the job's config
        task = copy.deepcopy(job)
        with read_write(task), open_dict(task):
            del task["hydra"]
        validate(task)
    except LmlabError as e:
        return error_line(e)
    except Exception as e:  # Hydra's and OmegaConf's composition errors: many lines each
        return composition_error(e, list(overrides))
    return None


def check_jobs(config: DictConfig, sweep: Path) -> None:
    """Every job's config is composed and checked before the first job trains: a mistake in
    any combination ends the command at once (exit 2), naming the job, its overrides and
    the key."""
    try:
        jobs = job_overrides(config)
    except Exception as e:  # a search space Hydra cannot parse, or one lmlab refuses
        line = error_line(e) if isinstance(e, LmlabError) else composition_error(e, [])
        print(f"lmlab-train: error: {line}", file=sys.stderr)
        sys.exit(2)
    if not jobs:
        return
    optuna = not OmegaConf.select(config, "hydra.sweeper._target_").endswith("BasicSweeper")
    varying = records.varying_overrides(dict(enumerate(jobs)))
    before = HydraConfig.instance().cfg
    try:
        for num, overrides in enumerate(jobs):
            error = job_error(config, overrides, num, sweep)
            if error is not None:
                label = " ".join(varying[num]) or " ".join(overrides)
                if optuna:  # a probe of the search space: what sets it apart from the first
                    label = " ".join(o for o in overrides if o not in jobs[0]) or label
                job = f"search space at {label}" if optuna else f"job {num} ({label})"
                print(f"lmlab-train: error: {job}: {error}", file=sys.stderr)
                sys.exit(2)
    finally:
        HydraConfig.instance().cfg = before


def sweep_dir() -> Path | None:
    """The dir of the sweep this process ran; None after a single run."""
    return _sweep_dirs[-1] if _sweep_dirs else None


# ---------------------------------------------------------------- inside a job


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_rank_zero() -> bool:
    """False in the other processes of a multi-process run (Lightning's DDP children,
    torchrun, SLURM tasks), which share the run dir of rank zero."""
    rank_variables = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in rank_variables)


def _completed_record(run_dir: Path) -> dict | None:
    """run_dir's status.json when it says completed or pruned (one cut short by a kill does
    not)."""
    try:
        record = records.read_status(run_dir)
    except LmlabError:
        return None
    return record if record and record.get("status") in records.FINISHED else None


def completed_job(cfg: DictConfig) -> dict | None:
    """In a job of a sweep run again (the same command: the same sweep dir), the status.json
    record of this job when an earlier run completed it: the job is skipped and its stored
    value goes to the sweeper. None otherwise: the job trains (resuming its last.ckpt when it
    has one). A job dir that holds a run of other overrides (a search that drew otherwise) is
    not reused: the job fails, naming both."""
    if not in_multirun():
        return None
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    overrides = [str(o) for o in hydra.overrides.task]
    try:
        stored = records.read_status(run_dir) or {}
    except LmlabError:
        stored = {}
    if stored.get("overrides") not in (None, overrides):
        raise job_failed(
            LmlabError(
                f"{run_dir} holds a run of other overrides ({' '.join(stored['overrides'])}); "
                f"start a new sweep with +fresh=true"
            )
        )
    record = _completed_record(run_dir)
    if record is not None and is_rank_zero():
        value = record["value"]
        shown = f"{record['optimized_metric']}={value}" if value is not None else "no value"
        ended = record["status"]
        print(f"job {hydra.job.num}: {ended} in an earlier run of this sweep, skipped ({shown})")
    return record


def error_line(error: BaseException) -> str:
    """One line for status.json and the console: lmlab's own message, else the type too."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, LmlabError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _select(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # an interpolation that cannot resolve: the error being recorded
        return None


_pruned: dict[Path, int] = {}  # run dir -> the step Optuna's pruner stopped it at (this process)


def mark_pruned(run_dir: Path, step: int) -> None:
    """Called by lmlab.pruning when it stops a trial: its status.json will say pruned."""
    _pruned[Path(run_dir).absolute()] = step


def write_status(cfg: DictConfig, value: float | None, error: BaseException | None) -> None:
    """<run dir>/status.json, read by lmlab-report: completed, pruned at a step (Optuna's
    pruner stopped the run) or failed, with the error."""
    run_dir = _select(cfg, "paths.run_dir")
    if not run_dir and HydraConfig.initialized():
        run_dir = HydraConfig.get().runtime.output_dir
    if not run_dir or not is_rank_zero():
        return
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    line = error_line(error) if error is not None else None
    optimized_metric = _select(cfg, "optimized_metric")
    record = records.status_record(line, optimized_metric, value, overrides)
    pruned_at = _pruned.pop(Path(run_dir).absolute(), None)
    if pruned_at is not None and error is None:
        record |= {"status": records.PRUNED, "step": pruned_at}
    records.write_status(run_dir, record)


def job_failed(error: BaseException) -> JobFailed:
    """What a multirun job raises instead of exiting: shown at once on stderr (with the stack
    trace when the error is not lmlab's own), recorded by Hydra as a failed job."""
    if is_rank_zero():
        if not isinstance(error, LmlabError):
            traceback.print_exception(error)
        job = HydraConfig.get().job.num  # Hydra listed its overrides when it launched it
        print(f"lmlab-train: job {job} failed: {error_line(error)}", file=sys.stderr)
    return JobFailed(error_line(error))


def optimized_value(metrics: dict, name: str | None) -> float | None:
    """The value a sweeper optimises: metrics[optimized_metric]."""
    if name is None:
        return None
    if name not in metrics and _pruned:  # this job's trial was pruned: it has no value to lose
        return None
    if name not in metrics:
        known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
        raise LmlabError(
            f"optimized_metric: '{name}' is not among the final metrics (a diverged run drops "
            f"non-finite values); known: {known}"
        )
    return float(metrics[name])


# ---------------------------------------------------------------- after the sweep


def failure_lines(statuses: dict[int, dict | None]) -> list[str]:
    varying = records.varying_overrides(
        {num: status["overrides"] for num, status in statuses.items() if status}
    )
    lines = []
    for num, status in statuses.items():
        if status is None:
            lines.append(f"job {num}: no status.json (killed, or ended outside lmlab-train)")
        elif status["status"] not in records.FINISHED:
            label = f"job {num} ({' '.join(varying[num])})" if varying[num] else f"job {num}"
            lines.append(f"{label}: {status['error']}")
    return lines


def best_lines(sweep: Path, statuses: dict[int, dict | None]) -> list[str]:
    """Optuna's result (optimization_results.yaml), and the run dir of the best trial."""
    results_file = sweep / "optimization_results.yaml"
    if not results_file.is_file():
        return []
    results = OmegaConf.to_container(OmegaConf.load(results_file))
    if "best_params" not in results:  # several objectives: a Pareto front
        return [f"optimization results: {results_file}"]
    params = " ".join(f"{k}={v}" for k, v in results["best_params"].items())
    best = results["best_value"]
    metric, best_dir = "value", None
    for num, status in statuses.items():
        if status and status["value"] == best:
            metric, best_dir = status["optimized_metric"], sweep / str(num)
            break
    lines = [f"best {metric}: {best}", f"best params: {params}"]
    if best_dir is not None:
        lines.append(f"best run dir: {best_dir}")
    lines.append(f"optimization results: {results_file}")
    if str(results.get("storage", "")).startswith("sqlite:///"):  # lmlab's Optuna sweeper
        lines.append(f"dashboard: optuna-dashboard {results['storage']}")
    return lines


def summarize(sweep: Path) -> int:
    """Releases the sweep dir, prints the best parameters (Optuna) and one line per failed
    job; returns the exit status of the sweep: 1 when a job failed, else 0."""
    while _sweep_locks:
        _sweep_locks.pop().release()
    statuses = records.read_statuses(sweep) if sweep.is_dir() else {}
    for line in best_lines(sweep, statuses):
        print(line)
    failures = failure_lines(statuses)
    if failures:
        print(
            f"lmlab-train: error: {len(failures)} of {len(statuses)} jobs failed "
            f"(sweep dir: {sweep}):",
            file=sys.stderr,
        )
        for line in failures:
            print(f"lmlab-train: failed: {line}", file=sys.stderr)
    return 1 if failures else 0
