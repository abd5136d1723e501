"""LmlabOptunaSweeper: Hydra's sweeper over an Optuna study (current Optuna), with its trials
run by whichever launcher the command chose (basic, joblib, submitit).

- Trial k runs as job k (<sweep dir>/k), `n_jobs` trials per launch.
- Each job's status.json says how it ended: completed (its value goes to the study),
  pruned (lmlab.pruning stopped it: PRUNED) or failed (FAIL; the search goes on below
  `max_failure_rate`).
- The study lives in `storage`, <sweep dir>/optuna.db by default. The same command run again
  (the same sweep dir) loads it: its finished trials count toward `n_trials`, and the trials
  a dead run left RUNNING run again as the same jobs, which resume from their checkpoints.
- With a pruner, each job gets the callback lmlab.pruning.OptunaPruning, which reports the
  monitored value at every validation and stops the run when the pruner says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lmlab_optuna_sweeper.search_space import SearchSpace
from lmlab import records
from lmlab.errors import LmlabError
from lmlab.fileutil import write_text

log = logging.getLogger(__name__)

PRUNING_KEY = "+callbacks.optuna_pruning"
# the same text in every job (it reads its trial from the job's hydra config, the metric from
# the run's config), so that it never tells the jobs of a sweep apart
PRUNING_CALLBACK = "{_target_:lmlab.pruning.OptunaPruning}"
RESULTS_FILE = "optimization_results.yaml"


def search_space(sweeper: DictConfig, arguments: Sequence[str]) -> SearchSpace:
    """The search space of a sweep: the sweeper's params, then the command's overrides, and
    with a pruner the pruning callback among the fixed overrides."""
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    space = SearchSpace.parse([*params, *arguments])
    if sweeper.get("pruner"):
        if not sweeper.get("storage"):
            raise LmlabError(
                "hydra.sweeper.storage: null keeps the study in this process, where the "
                "trials cannot report to the pruner; give a storage URL or no pruner"
            )
        space.fixed[PRUNING_KEY] = f"{PRUNING_KEY}={PRUNING_CALLBACK}"
    return space


def open_storage(url: str):
    """Optuna's storage at `url`; a SQLite file waits for the lock (parallel trials write
    their intermediate values into it) and gets its folder made."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    return url


def consecutive(trials: list[tuple[int, dict]]) -> list[list[tuple[int, dict]]]:
    """Trials split into runs of consecutive numbers: one launch each, job number = trial
    number."""
    groups: list[list[tuple[int, dict]]] = []
    for trial in sorted(trials, key=lambda t: t[0]):
        if groups and groups[-1][-1][0] + 1 == trial[0]:
            groups[-1].append(trial)
        else:
            groups.append([trial])
    return groups


class LmlabOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Any,
    ) -> None:
        self.sampler, self.pruner = sampler, pruner
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.sweep_dir = Path(config.hydra.sweep.dir).absolute()
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # lmlab prints the outcome
        self.space = search_space(self.config.hydra.sweeper, arguments)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # multirun.yaml, as Hydra's sweeper
        write_text(self.sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        distributions = self.space.distributions()
        study = self.load_study()
        left = self.unfinished(study)
        if left:
            numbers = ", ".join(str(number) for number, _ in left)
            log.info(f"trials {numbers}, cut short by the last run, run again")
            self.run(study, left)
        while (todo := self.n_trials - len(self.finished(study))) > 0:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, todo))]
            for trial in trials:
                trial.set_user_attr("sweep_dir", str(self.sweep_dir))
            self.run(study, [(trial.number, trial.params) for trial in trials])
        self.save_results(study)

    # ------------------------------------------------------------ the study

    def load_study(self):
        """The study in `storage`, created or, when the sweep ran before, loaded. A study that
        has trials gets its sampler seeded with seed + their number: a seeded sampler would
        otherwise draw the first run's trials again."""
        import optuna

        storage = open_storage(self.storage) if self.storage else None
        study = optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            direction=self.direction,
            sampler=self.make_sampler(0),
            pruner=instantiate(self.pruner) if self.pruner else optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
        if study.trials:
            study.sampler = self.make_sampler(len(study.trials))
            log.info(
                f"study {study.study_name}: continued, {len(self.finished(study))} trials "
                f"finished earlier ({self.storage})"
            )
        else:
            log.info(f"study {study.study_name}: new ({self.storage})")
        return study

    def make_sampler(self, offset: int):
        seed = OmegaConf.select(self.sampler, "seed") if self.sampler else None
        if seed is None or not offset:
            return instantiate(self.sampler)
        return instantiate(self.sampler, seed=seed + offset)

    @staticmethod
    def finished(study) -> list:
        from optuna.trial import TrialState

        return study.get_trials(deepcopy=False, states=[s for s in TrialState if s.is_finished()])

    def unfinished(self, study) -> list[tuple[int, dict]]:
        """Trials of this sweep dir left RUNNING by a run that died (no other process runs
        them: lmlab-train holds the sweep dir's lock). One drawn from another search space
        cannot run again: it is marked failed."""
        from optuna.trial import TrialState

        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get("sweep_dir") == str(self.sweep_dir)]
        for trial in [t for t in mine if t.params.keys() != self.space.swept.keys()]:
            log.warning(f"trial {trial.number}: drawn from another search space, marked failed")
            study.tell(trial.number, state=TrialState.FAIL)
        return [(t.number, t.params) for t in mine if t.params.keys() == self.space.swept.keys()]

    # ------------------------------------------------------------ trials

    def run(self, study, trials: list[tuple[int, dict]]) -> None:
        """Launches `trials` (job number = trial number) and tells the study how each ended."""
        returns: list[JobReturn] = []
        for group in consecutive(trials):
            overrides = [self.space.overrides(params) for _, params in group]
            returns += self.launcher.launch(overrides, initial_job_idx=group[0][0])
        failures = []
        for (number, _), ret in zip(sorted(trials, key=lambda t: t[0]), returns):
            state, value = self.outcome(ret)
            study.tell(number, state=state, values=None if value is None else [value])
            if state.name == "FAIL":
                failures.append(ret)
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            log.error(f"{len(failures)} of {len(returns)} trials failed: the search stops")
            _ = failures[0].return_value  # raises the job's error

    @staticmethod
    def outcome(ret: JobReturn):
        """(state, value) of a trial from its job: FAIL for a failed job or one without a
        finite value; PRUNED when its status.json says pruned."""
        from optuna.trial import TrialState

        if ret.status != JobStatus.COMPLETED:
            return TrialState.FAIL, None
        status = records.read_status(Path(ret.hydra_cfg.hydra.runtime.output_dir)) or {}
        if status.get("status") == records.PRUNED:
            return TrialState.PRUNED, None
        try:
            value = float(ret.return_value)
        except (TypeError, ValueError):
            log.warning(f"job {ret.hydra_cfg.hydra.job.num}: no value to optimise")
            return TrialState.FAIL, None
        return (TrialState.COMPLETE, value) if math.isfinite(value) else (TrialState.FAIL, None)

    def save_results(self, study) -> None:
        """<sweep dir>/optimization_results.yaml: the best trial's parameters and value."""
        from optuna.trial import TrialState

        counts = {s.name.lower(): len(study.get_trials(states=(s,))) for s in TrialState}
        log.info("trials: " + ", ".join(f"{n} {name}" for name, n in counts.items() if n))
        if not counts["complete"]:
            log.warning("no trial completed: no best parameters")
            return
        best = study.best_trial
        results = {
            "name": "optuna",
            "best_params": best.params,
            "best_value": best.value,
            "best_trial": best.number,
            "study_name": study.study_name,
            "storage": self.storage,
        }
        write_text(self.sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(results))
