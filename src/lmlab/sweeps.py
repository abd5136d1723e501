"""Sweeps (lmlab-train -m): writing each job's status.json, failed jobs that do not end the
sweep, and the summary printed when a sweep ends (failed jobs, Optuna's best parameters).

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
from omegaconf import DictConfig, OmegaConf

from lmlab import records
from lmlab.errors import LmlabError

_sweep_dirs: list[Path] = []  # filled by SweepSummary in the process that runs the sweeper


class JobFailed(CompactHydraException):
    """Raised by a multirun job: Hydra prints it as one line, without a stack trace."""


class SweepSummary(Callback):
    """Configured in conf/hydra/default.yaml (hydra.callbacks.sweep_summary)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _sweep_dirs.append(Path(str(config.hydra.sweep.dir)).absolute())


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


def write_status(cfg: DictConfig, value: float | None, error: BaseException | None) -> None:
    """<run dir>/status.json, read by lmlab-report: completed or failed, with the error."""
    run_dir = _select(cfg, "paths.run_dir")
    if not run_dir and HydraConfig.initialized():
        run_dir = HydraConfig.get().runtime.output_dir
    if not run_dir or not is_rank_zero():
        return
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    line = error_line(error) if error is not None else None
    optimized_metric = _select(cfg, "optimized_metric")
    records.write_status(run_dir, records.status_record(line, optimized_metric, value, overrides))


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
        elif status["status"] != records.COMPLETED:
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
    return lines + [f"optimization results: {results_file}"]


def summarize(sweep: Path) -> int:
    """Prints the best parameters (Optuna) and one line per failed job; returns the exit
    status of the sweep: 1 when a job failed, else 0."""
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
