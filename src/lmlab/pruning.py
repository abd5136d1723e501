"""Pruning of Optuna trials: the Lightning callback that lmlab's Optuna sweeper
(hydra/sweeper=lmlab_optuna with a pruner) adds to each trial's job.

At each validation during training it reports the monitored value to the trial
(`trial.report(value, step)`, the step being the global step), and when the study's pruner
says the trial is poor it stops the training cleanly: the run validates, exports and writes
metrics.json as any run does, and its status.json says `pruned` (records.PRUNED) at that
step, from which the sweeper tells Optuna the trial was PRUNED.

The trial is that of the job: the sweeper launches trial k as job k, in any process (joblib,
submitit), and the job's hydra config holds the sweeper's storage, study name and pruner.
Outside a sweep (the same overrides run as a single run) the callback does nothing.
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import Callback

from lmlab import sweeps


class OptunaPruning(Callback):
    def __init__(
        self,
        monitor: str | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        trial: int | None = None,
        pruner=None,
        run_dir: str | None = None,
    ):
        """`monitor`: the metric the study optimises, by default the run's optimized_metric.
        The others default to those of the Hydra job this runs in: the sweeper's storage,
        study name and pruner (a config with `_target_`), the job's number and output dir."""
        self.monitor = monitor
        self.where = {"storage": storage, "study_name": study_name, "trial": trial}
        self.pruner, self.run_dir = pruner, run_dir
        self.trial = None  # optuna.Trial, from setup() on

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        if None in self.where.values() and not self._from_job():
            return  # not a job of an Optuna sweep: nothing to report to
        self.trial = load_trial(**self.where, pruner=self.pruner)
        self.monitor = self.monitor or pl_module.hparams["config"]["optimized_metric"]

    def _from_job(self) -> bool:
        """Fills what was not given from the Hydra job; False outside a multirun of lmlab's
        Optuna sweeper."""
        if not sweeps.in_multirun():
            return False
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        if not hydra.sweeper.get("storage"):
            return False
        given = {k: v for k, v in self.where.items() if v is not None}
        self.where = {
            "storage": hydra.sweeper.storage,
            "study_name": hydra.sweeper.study_name,
            "trial": hydra.job.num,
        } | given
        self.pruner = self.pruner or hydra.sweeper.get("pruner")
        self.run_dir = self.run_dir or hydra.runtime.output_dir
        return True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return  # only the validations during training: not lmlab's at start and end
        prune = self.trial is not None and self._report(trainer)
        if trainer.world_size > 1:  # every process of a DDP run stops together
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            trainer.should_stop = True

    def _report(self, trainer) -> bool:
        """Reports this validation's value; whether the pruner stops the trial here."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return False
        step = trainer.global_step
        self.trial.report(float(value), step)
        if not self.trial.should_prune():
            return False
        print(
            f"pruned by Optuna at step {step}: {self.monitor}={float(value):.6g} is worse "
            f"than the pruner allows (trial {self.trial.number})",
            flush=True,
        )
        if self.run_dir:
            sweeps.mark_pruned(Path(self.run_dir), step)
        return True


def load_trial(storage: str, study_name: str, trial: int, pruner=None):
    """Trial number `trial` of the study, to report to from another process; its pruner
    (a config with `_target_`, or None: never prune) decides should_prune()."""
    import optuna
    from hydra.utils import instantiate

    from hydra_plugins.lmlab_optuna_sweeper.sweeper import open_storage

    study = optuna.load_study(
        study_name=study_name,
        storage=open_storage(storage),
        pruner=instantiate(pruner) if pruner else optuna.pruners.NopPruner(),
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial)
    return optuna.trial.Trial(study, trial_id)
