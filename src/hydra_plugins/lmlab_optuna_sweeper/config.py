"""The sweeper's config, `hydra/sweeper=lmlab_optuna`, and its pruner presets,
`hydra/sweeper/pruner=median|hyperband` (none by default). A name of its own, so that
hydra-optuna-sweeper, installed beside it, cannot shadow it."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class LmlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.lmlab_optuna_sweeper.sweeper.LmlabOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"pruner": None}])
    _recursive_: bool = False  # the sampler and pruner are instantiated by the sweeper

    # Optuna's sampler, instantiated: TPE by default (the presets seed it with ${seed})
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # stops poor trials from their intermediate validation values; null: every trial runs on
    pruner: Any = None
    direction: str = "minimize"  # or maximize
    # where the study lives: a file in the sweep dir, so a re-run of the command continues it
    storage: str | None = "sqlite:///${hydra.sweep.dir}/optuna.db"
    study_name: str | None = None
    n_trials: int = 20  # finished trials (complete, pruned, failed) the study ends with
    n_jobs: int = 1  # trials launched together (in parallel with a parallel launcher)
    max_failure_rate: float = 1.0  # of a batch; above it the search stops with the error
    # the search space: key -> choice(...), range(...), interval(...), tag(log, interval(...))
    params: dict[str, str] | None = None


@dataclass
class MedianPrunerConf:
    """Prunes a trial whose value at a step is worse than the median of earlier trials'."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials that run to the end before any is pruned
    n_warmup_steps: int = 0  # steps of a trial before it may be pruned
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    """Hyperband: successive halving over brackets of budgets (steps of a trial)."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


store = ConfigStore.instance()
store.store(
    group="hydra/sweeper", name="lmlab_optuna", node=LmlabOptunaSweeperConf, provider="lmlab"
)
store.store(group="hydra/sweeper/pruner", name="median", node=MedianPrunerConf, provider="lmlab")
store.store(
    group="hydra/sweeper/pruner", name="hyperband", node=HyperbandPrunerConf, provider="lmlab"
)
