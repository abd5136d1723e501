"""Loggers lmlab adds to Lightning's own (conf/logger/): CSV, TensorBoard, wandb and MLflow.

All of them write inside the run dir, except MLflow, whose store is shared by every run under
paths.output_dir so that one `mlflow ui` shows them together. wandb and MLflow know a run by
the id in <run dir>/tracking_id, so re-running the same command (which resumes the run dir)
continues the same tracked run. The jobs of one multirun are grouped: wandb group and MLflow
experiment '<name>/<sweep dir name>', each job named by the overrides its sweep varies
(lmlab.records.swept_keys); TensorBoard logs live in each job dir under the sweep dir.
Every logger gets the same hyperparameters from TaskModule.on_fit_start (`log_hyperparams`).
"""

from __future__ import annotations

import csv
import importlib.util
import netrc
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger
from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lmlab import records
from lmlab.errors import LmlabError
from lmlab.fileutil import write_file, write_new

# ---------------------------------------------------------------- hyperparameters


def flatten_config(config: dict, prefix: str = "") -> dict:
    """{"model": {"name": "gpt_tiny"}} -> {"model.name": "gpt_tiny"}. Lists and nulls are
    written as on the command line ([a,b], null), so every logger shows the same text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat |= flatten_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = _command_line_value(value)
    return flat


def _command_line_value(value):
    if value is None:
        return "null"
    if isinstance(value, dict):  # only empty ones get here
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(_command_line_value(v)) for v in value) + "]"
    return value


def run_hyperparams(config: dict, model) -> dict:
    """The resolved config with dotted keys (tags included) and the model's parameter counts."""
    params = list(model.parameters())
    return flatten_config(config) | {
        "params.total": sum(p.numel() for p in params),
        "params.trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def log_hyperparams(loggers: Iterable, config: dict, model) -> None:
    params = run_hyperparams(config, model)
    for logger in loggers:
        logger.log_hyperparams(params)


# ---------------------------------------------------------------- run identity


def _hydra_job(run_dir: str):
    """Hydra's config of the job running in `run_dir`; None from plain Python (compose), or
    when a config left behind by an earlier Hydra job of this process is for another dir."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    job = HydraConfig.get()
    if Path(job.runtime.output_dir).resolve() != Path(run_dir).resolve():
        return None
    return job


def run_labels(base: str, run_dir: str) -> tuple[str, str]:
    """(group, run name). A multirun's jobs share the group '<base>/<sweep dir name>' and are
    named by the overrides that tell them apart (seed=2); a single run is grouped under <base>
    and named by its overrides, or by its run dir when it has none (or is composed from Python)."""
    from hydra.types import RunMode

    job = _hydra_job(run_dir)
    if job is None:
        return base, Path(run_dir).name
    if job.mode != RunMode.MULTIRUN:
        return base, job.job.override_dirname or Path(run_dir).name
    name = ",".join(swept_overrides(job)) or job.job.override_dirname or Path(run_dir).name
    return f"{base}/{Path(job.sweep.dir).name}", name


def swept_overrides(job) -> list[str]:
    """The overrides of this multirun job that the sweep varies (records.swept_keys)."""
    keys = records.swept_keys(Path(job.sweep.dir), OmegaConf.select(job, "sweeper.params") or {})
    return records.overrides_of(job.overrides.task, keys)


def tracking_id(run_dir: str) -> str:
    """The id wandb runs get and MLflow runs are tagged with (lmlab.tracking_id): random, kept
    in <run dir>/tracking_id. Random rather than a hash of the path, which the same command
    run on another machine would share."""
    path = Path(run_dir) / "tracking_id"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new(path, secrets.token_hex(6) + "\n")  # of processes starting together, one wins
    return path.read_text().strip()


# ---------------------------------------------------------------- CSV


class _ResumableWriter(ExperimentWriter):
    """Keeps an existing metrics.csv (a resumed run) where Lightning's writer deletes it.
    Rows the interrupted run logged after its last checkpoint are dropped (the file rewritten
    atomically) once the resumed run logs those steps again."""

    def _check_log_dir_exists(self) -> None:
        self._resuming = self._fs.isfile(self.metrics_file_path)

    def save(self) -> None:
        if self._resuming and self.metrics:
            self._resuming = False
            first_step = min(m["step"] for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                rows = [r for r in reader if int(float(r["step"] or 0)) < first_step]
                self.metrics_keys = list(reader.fieldnames or [])
            write_file(self.metrics_file_path, lambda tmp: self._write_rows(tmp, rows))
        super().save()

    def _write_rows(self, path: Path, rows: list[dict]) -> None:
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, appending to the run's metrics.csv when the run resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment


# ---------------------------------------------------------------- TensorBoard


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without the placeholder `hp_metric`. Hyperparameters are
    written as an hparams session start only: with no experiment summary to restrict them,
    TensorBoard's HPARAMS tab lists every logged scalar (val/loss, ...) as a metric."""

    def __init__(self, save_dir: str, name: str = "tensorboard", version: str = "", **kwargs):
        super().__init__(save_dir, name=name, version=version, default_hp_metric=False, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        params = _flatten_dict(_convert_params(params), delimiter=".")
        if not params:  # Lightning's own call, with the datamodule's (empty) hyperparameters
            return
        values = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()
        }
        self.experiment._get_file_writer().add_summary(hparams_pb(values))

    @rank_zero_only
    def save(self) -> None:
        # no hparams.yaml beside the events: the run dir's config.yaml holds the config
        self.experiment.flush()


# ---------------------------------------------------------------- wandb

WANDB_HOST = "https://api.wandb.ai"


def wandb_credentials(environ=os.environ) -> bool:
    """Whether wandb would find an API key: WANDB_API_KEY (or an identity token file), or a
    netrc entry (what `wandb login` writes) for the W&B host."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(environ.get("WANDB_BASE_URL") or WANDB_HOST).netloc
    path = Path(environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(offline: bool, environ=os.environ) -> str:
    """'online' only when asked for (offline=false) and credentials exist: wandb never prompts
    for a login, which would block a batch job."""
    if offline:
        return "offline"
    if wandb_credentials(environ):
        return "online"
    rank_zero_only(print)(
        "logger.wandb.offline=false, but no W&B credentials (WANDB_API_KEY or `wandb login`): "
        "logging offline; upload later with `wandb sync <run dir>/wandb/offline-run-*`",
        flush=True,
    )
    return "offline"


class WandbLogger(LightningWandbLogger):
    """Lightning's wandb logger: offline into <run dir>/wandb unless asked otherwise, grouped
    and named as `run_labels` says, with the run dir's tracking id (a re-run continues it)."""

    def __init__(
        self,
        save_dir: str,
        group: str,
        name: str | None = None,
        offline: bool = True,
        tags: Iterable[str] = (),
        **kwargs,
    ):
        group, default_name = run_labels(group, save_dir)
        super().__init__(
            name=name or default_name,
            save_dir=save_dir,
            id=tracking_id(save_dir),
            group=group,
            tags=list(tags),
            mode=wandb_mode(offline),  # passed to wandb.init; Lightning's `offline` sets an env var
            **kwargs,
        )
        self._wandb_init.pop("anonymous")  # Lightning's None makes wandb warn that it is unused

    @property
    @rank_zero_experiment
    def experiment(self):
        import wandb

        if self._experiment is None and wandb.run is not None and wandb.run.id != self._id:
            wandb.run.finish()  # an earlier job of this process (a sequential multirun) is over
        return super().experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "failed":
            self.close(exit_code=1)

    @rank_zero_only
    def close(self, exit_code: int = 0) -> None:
        """Ends the wandb run. Lightning's finalize comes after each stage (fit, the final
        validation, test), so the run stays open until the training run as a whole is done."""
        if self._experiment is not None:
            self._experiment.finish(exit_code=exit_code)
            self._experiment = None


# ---------------------------------------------------------------- MLflow


def _sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialises the creation of a local SQLite store: MLflow creates its tables unguarded, so
    parallel jobs (joblib launcher) opening a fresh store at the same moment would collide."""
    path = _sqlite_path(tracking_uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger. The experiment is the run's group (`run_labels`); the run is
    tagged with the config's tags, its run dir and tracking id, by which a re-run finds it and
    continues it. Artifacts of a local store go beside it (<store dir>/mlartifacts)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        run_dir: str,
        run_name: str | None = None,
        tags: Iterable[str] = (),
        artifact_location: str | None = None,
        **kwargs,
    ):
        if importlib.util.find_spec("mlflow") is None:
            raise LmlabError("logger=mlflow: mlflow is not installed (pip install 'lmlab[mlflow]')")
        experiment_name, default_name = run_labels(experiment_name, run_dir)
        self._tracking_id = tracking_id(run_dir)
        run_tags = {tag: "" for tag in tags} | {
            "lmlab.tracking_id": self._tracking_id,
            "lmlab.run_dir": str(Path(run_dir).resolve()),
        }
        store = _sqlite_path(tracking_uri)
        if artifact_location is None and store is not None:
            artifact_location = str(store.resolve().parent / "mlartifacts")
        with _store_lock(tracking_uri):  # the client opens (and may create) the store
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name or default_name,
                tracking_uri=tracking_uri,
                tags=run_tags,
                artifact_location=artifact_location,
                **kwargs,
            )

    @property
    @rank_zero_experiment
    def experiment(self):
        if not self._initialized:
            self._experiment_id = self._experiment_id or self._get_or_create_experiment()
            self._run_id = self._run_id or self._earlier_run()
        return super().experiment

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client
        found = client.get_experiment_by_name(self._experiment_name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(self._experiment_name, self._artifact_location)
        except MlflowException:  # a parallel job of the same sweep created it first
            return client.get_experiment_by_name(self._experiment_name).experiment_id

    def _earlier_run(self) -> str | None:
        """The run this run dir logged to before (an interrupted run re-run), marked running."""
        client = self._mlflow_client
        runs = client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`lmlab.tracking_id` = '{self._tracking_id}'",
            max_results=1,
        )
        if not runs:
            return None
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        """MLflow refuses to change a logged param: a continued run logs only new keys."""
        params = _flatten_dict(_convert_params(params), delimiter=".")
        if not params:
            return
        logged = self.experiment.get_run(self.run_id).data.params
        super().log_hyperparams({k: v for k, v in params.items() if k not in logged})


# ---------------------------------------------------------------- end of a run


def close(loggers: Iterable) -> None:
    """Ends what a logger keeps open across Lightning's stages (a wandb run): called once the
    training run, its final evaluation included, is done."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.close()
