"""Tests for lmlab.loggers: one real tiny run with logger=many (interrupted, then re-run so that
it resumes), read back with each logger's own reader: csv.DictReader, TensorBoard's
EventAccumulator, MLflow's MlflowClient on the run's store and wandb's own reader of offline
.wandb files (`wandb leet inspect --json`, wandb-core's record dump). Unit tests for the
flattened hyperparameters, the wandb online/offline decision, the group and run names, and
the composed logger options. The slow tests: parallel jobs opening a fresh MLflow SQLite store
at the same moment, and a real CLI multirun (joblib launcher) with no stdin."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.build import compose, train
from lmlab.errors import LmlabError
from lmlab.experiment import instantiate_plain
from lmlab.loggers import (
    flatten_config,
    run_hyperparams,
    run_labels,
    tracking_id,
    wandb_credentials,
    wandb_mode,
)

TAGS = ["baseline", "tiny"]
# gpt2 with n_embd 32, 2 layers, 300 tokens, 512 positions: embeddings 300*32 + 512*32, per
# layer 2 norms (2*64) + attention (32*96+96 + 32*32+32) + MLP (32*128+128 + 128*32+32), final
# norm 64; the head is tied to the token embeddings.
TINY_GPT2_PARAMS = 300 * 32 + 512 * 32 + 2 * (128 + 3168 + 1056 + 4224 + 4128) + 64


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, lmlab_cache_dir):
    """LMLAB_OUTPUT_DIR (and with it the MLflow store) and LMLAB_CACHE_DIR in tmp."""
    out = tmp_path_factory.mktemp("outputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
        mp.setenv("LMLAB_OUTPUT_DIR", str(out))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield out


def train_in(run_dir: Path, overrides: list[str]) -> dict:
    return train(compose(overrides, run_dir=str(run_dir)))


@pytest.fixture(scope="module")
def many_run(outputs, tiny_overrides):
    """A gpt2 run with every logger: 2 steps, "killed" (metrics.json removed), then the same
    command again for 4 steps, which resumes the run dir from its step-2 checkpoint."""
    run_dir = outputs / "train" / "many"
    common = ["logger=many", f"tags=[{','.join(TAGS)}]"]
    common += ["callbacks.last_checkpoint.every_n_train_steps=2", "keep_checkpoints=true"]
    train_in(run_dir, [*tiny_overrides("gpt2", steps=2), *common])
    (run_dir / "metrics.json").unlink()
    metrics = train_in(run_dir, [*tiny_overrides("gpt2", steps=4), *common])
    config = OmegaConf.load(run_dir / "config.yaml")
    return {"dir": run_dir, "metrics": metrics, "config": config}


def csv_series(run_dir: Path, name: str) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r[name])) for r in csv.DictReader(f) if r[name]]


def assert_same_series(logged: list[tuple[int, float]], expected: list[tuple[int, float]]):
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected])


# ---------------------------------------------------------------- csv


def test_csv_has_train_and_val_losses(many_run):
    train_loss = csv_series(many_run["dir"], "train/loss")
    assert [step for step, _ in train_loss] == [0, 1, 2, 3]
    assert csv_series(many_run["dir"], "val/loss")[-1][1] == pytest.approx(
        many_run["metrics"]["val/loss"]
    )


def test_checkpoint_hyperparameters_stay_the_plain_config(many_run):
    import torch

    ckpt = torch.load(many_run["dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"] == {"config": OmegaConf.to_container(many_run["config"])}


# ---------------------------------------------------------------- TensorBoard


@pytest.fixture(scope="module")
def tensorboard(many_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(many_run["dir"] / "tensorboard"))
    events.Reload()  # every event file of the dir: both processes of the resumed run
    return events


def test_tensorboard_has_the_scalars_of_the_csv(many_run, tensorboard):
    assert {"train/loss", "val/loss"} <= set(tensorboard.Tags()["scalars"])
    assert "hp_metric" not in tensorboard.Tags()["scalars"]
    train_loss = [(e.step, e.value) for e in tensorboard.Scalars("train/loss")]
    assert_same_series(train_loss, csv_series(many_run["dir"], "train/loss"))
    last_val_loss = tensorboard.Scalars("val/loss")[-1].value
    assert last_val_loss == pytest.approx(many_run["metrics"]["val/loss"])


def test_tensorboard_hparams_hold_config_tags_and_param_counts(many_run, tensorboard):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = tensorboard.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model.name"].string_value == "gpt_tiny"
    assert hparams["data.batch_size"].number_value == 4
    assert hparams["tags"].string_value == "[baseline,tiny]"
    assert hparams["params.total"].number_value == TINY_GPT2_PARAMS
    assert hparams["params.trainable"].number_value == TINY_GPT2_PARAMS
    # no experiment summary: TensorBoard then offers every scalar as a metric beside them
    assert "_hparams_/experiment" not in tensorboard.PluginTagToContent("hparams")


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_run(many_run, outputs):
    from mlflow import MlflowClient

    uri = many_run["config"].logger.mlflow.tracking_uri
    assert uri == f"sqlite:///{outputs}/mlflow.db"  # shared by every run under output_dir
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("train")  # compose(): grouped under `name`
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def test_mlflow_continues_one_run_with_dotted_params_and_tags(many_run, mlflow_run):
    _, runs = mlflow_run
    assert len(runs) == 1  # the re-run continued the interrupted run
    run = runs[0]
    assert run.info.run_name == "many"  # the run dir's name (no Hydra job: composed)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.name"] == "gpt_tiny"
    assert params["objective.lr"] == str(many_run["config"].objective.lr)
    assert params["objective.betas"] == "[0.9,0.999]"
    assert params["data.batch_size"] == "4"
    assert params["tags"] == "[baseline,tiny]"
    assert params["params.total"] == params["params.trainable"] == str(TINY_GPT2_PARAMS)
    assert run.data.tags["baseline"] == run.data.tags["tiny"] == ""
    assert (
        run.data.tags["lmlab.tracking_id"] == (many_run["dir"] / "tracking_id").read_text().strip()
    )


def test_mlflow_metric_history_matches_the_csv(many_run, mlflow_run):
    client, runs = mlflow_run
    run_id = runs[0].info.run_id
    train_loss = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert_same_series(train_loss, csv_series(many_run["dir"], "train/loss"))
    val_loss = client.get_metric_history(run_id, "val/loss")
    assert max(val_loss, key=lambda m: (m.step, m.timestamp)).value == pytest.approx(
        many_run["metrics"]["val/loss"]
    )


# ---------------------------------------------------------------- wandb


def wandb_records(offline_run: Path) -> list[dict]:
    """The records of an offline run's .wandb file, as wandb's own reader prints them."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", str(offline_run), "--json"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def wandb_runs(many_run):
    offline_runs = sorted((many_run["dir"] / "wandb").glob("offline-run-*"))
    return [wandb_records(path) for path in offline_runs]


def test_wandb_logs_offline_in_the_run_dir_under_one_id(many_run, wandb_runs):
    assert len(wandb_runs) == 2  # the interrupted run and its re-run
    run_id = (many_run["dir"] / "tracking_id").read_text().strip()
    for records in wandb_runs:
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_id"] == run_id
        assert run["run_group"] == "train"
        assert run["display_name"] == "many"
        assert run["tags"] == TAGS
        assert run["telemetry"]["feature"]["offline"]
        assert any(r["type"] == "exit" and r["exit"].get("exit_code", 0) == 0 for r in records)


def test_wandb_history_and_config_match_the_run(many_run, wandb_runs):
    history = [r["history"]["item"] for records in wandb_runs for r in records if "history" in r]
    train_loss = [(h["trainer/global_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert_same_series(train_loss, csv_series(many_run["dir"], "train/loss"))
    val_loss = [h["val/loss"] for h in history if "val/loss" in h]
    assert val_loss[-1] == pytest.approx(many_run["metrics"]["val/loss"])
    config = {}
    for records in wandb_runs:
        for r in records:
            if r["type"] == "config":
                config |= r["config"].get("update", {})
    assert config["model.name"] == "gpt_tiny"
    assert config["data.batch_size"] == 4
    assert config["params.trainable"] == TINY_GPT2_PARAMS


# ---------------------------------------------------------------- hyperparameters


def test_flatten_config_writes_dotted_keys_and_command_line_values():
    config = {
        "model": {"name": "gpt_tiny", "config": {"n_layer": 2}},
        "objective": {"lr": 1e-3, "betas": [0.9, 0.999], "labels": None},
        "trainer": {"kwargs": {}},
        "tags": ["a", "b"],
        "test": False,
    }
    assert flatten_config(config) == {
        "model.name": "gpt_tiny",
        "model.config.n_layer": 2,
        "objective.lr": 1e-3,
        "objective.betas": "[0.9,0.999]",
        "objective.labels": "null",
        "trainer.kwargs": "{}",
        "tags": "[a,b]",
        "test": False,
    }


def test_run_hyperparams_count_trainable_and_frozen_parameters():
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # 8 + 3 parameters
    model[0].weight.requires_grad_(False)  # 6 of them frozen
    params = run_hyperparams({"name": "x"}, model)
    assert params == {"name": "x", "params.total": 11, "params.trainable": 5}


# ---------------------------------------------------------------- wandb online or offline


def netrc_file(tmp_path: Path, machine: str) -> dict:
    path = tmp_path / "netrc"
    path.write_text(f"machine {machine}\n  login user\n  password abc123\n")
    path.chmod(0o600)
    return {"NETRC": str(path)}


@pytest.mark.parametrize(
    "offline, environ, expected",
    [
        (True, {"WANDB_API_KEY": "abc"}, "offline"),  # credentials never switch it on
        (False, {"WANDB_API_KEY": "abc"}, "online"),
        (False, "netrc:api.wandb.ai", "online"),
        (False, "netrc:elsewhere.example", "offline"),
        (False, {}, "offline"),
    ],
)
def test_wandb_goes_online_only_when_asked_and_logged_in(
    offline, environ, expected, tmp_path, capsys
):
    if isinstance(environ, str):
        environ = netrc_file(tmp_path, environ.split(":")[1])
    environ = {"NETRC": str(tmp_path / "none"), **environ}  # never the user's ~/.netrc
    assert wandb_mode(offline, environ) == expected
    printed = capsys.readouterr().out
    fell_back = not offline and expected == "offline"
    assert ("no W&B credentials" in printed) == fell_back
    assert len(printed.splitlines()) == int(fell_back)


def test_wandb_credentials_follow_the_configured_host(tmp_path):
    environ = netrc_file(tmp_path, "wandb.example.com")
    assert not wandb_credentials(environ)
    assert wandb_credentials({**environ, "WANDB_BASE_URL": "https://wandb.example.com"})


# ---------------------------------------------------------------- groups and names


def set_hydra_job(mp, mode: str, run_dir: Path, sweep_dir: Path, overrides: list[str], **hydra):
    """Makes HydraConfig say that the job of `overrides` runs in `run_dir` (until mp undoes it)."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    config = OmegaConf.merge(OmegaConf.structured(HydraConf), hydra)
    config.mode = RunMode[mode]
    config.sweep.dir = str(sweep_dir)
    config.runtime.output_dir = str(run_dir)
    config.overrides.task = overrides
    config.job.override_dirname = ",".join(sorted(overrides))
    mp.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": config}))


def test_run_labels_without_hydra_use_name_and_run_dir(tmp_path):
    assert run_labels("train", str(tmp_path / "ab12cd34")) == ("train", "ab12cd34")


SWEEP = "2026-01-02_03-04-05-a1b2c3"


def test_multirun_job_is_grouped_by_sweep_and_named_by_what_the_command_swept(tmp_path):
    sweep = tmp_path / "multirun" / "train" / SWEEP
    sweep.mkdir(parents=True)
    task = ["debug=default", "export=false", "objective.lr=1e-4,1e-3", "seed=1,2"]
    OmegaConf.save({"hydra": {"overrides": {"task": task}}}, sweep / "multirun.yaml")
    job = ["debug=default", "export=False", "objective.lr=0.001", "seed=2"]  # as Hydra writes them
    with pytest.MonkeyPatch.context() as mp:
        set_hydra_job(mp, "MULTIRUN", sweep / "3", sweep, job)
        assert run_labels("train", str(sweep / "3")) == (
            f"train/{SWEEP}",
            "objective.lr=0.001,seed=2",
        )
        # a Hydra config left from another job of this process is not this run's
        assert run_labels("train", str(tmp_path / "other")) == ("train", "other")


def test_optuna_job_is_named_by_the_sweeper_params(tmp_path):
    sweep = tmp_path / SWEEP
    sweep.mkdir()  # lmlab's Optuna sweeper writes multirun.yaml: the command swept nothing
    command = {"hydra": {"overrides": {"task": ["hparams_search=finetune_optuna"]}}}
    (sweep / "multirun.yaml").write_text(json.dumps(command))  # YAML reads JSON
    job = ["debug=default", "objective.lr=0.0003", "objective.warmup_ratio=0.1"]
    params = {"objective.lr": "tag(log, interval(1e-5, 1e-3))", "objective.warmup_ratio": "0,0.1"}
    target = "hydra_plugins.lmlab_optuna_sweeper.sweeper.LmlabOptunaSweeper"
    sweeper = {"_target_": target, "params": params}
    with pytest.MonkeyPatch.context() as mp:
        set_hydra_job(mp, "MULTIRUN", sweep / "0", sweep, job, sweeper=sweeper)
        assert run_labels("sst2", str(sweep / "0")) == (
            f"sst2/{SWEEP}",
            "objective.lr=0.0003,objective.warmup_ratio=0.1",
        )


def test_multirun_job_with_nothing_swept_known_is_named_by_all_its_overrides(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        set_hydra_job(mp, "MULTIRUN", tmp_path / "0", tmp_path, ["seed=3", "debug=default"])
        assert (
            run_labels("train", str(tmp_path / "0"))[1] == "debug=default,seed=3"
        )  # sorted, as Hydra writes it


def test_run_labels_of_a_single_run(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        set_hydra_job(mp, "RUN", tmp_path / "ab12", tmp_path / "unused", [])
        assert run_labels("quickstart", str(tmp_path / "ab12")) == ("quickstart", "ab12")
        set_hydra_job(mp, "RUN", tmp_path / "cd34", tmp_path / "unused", ["seed=3"])
        assert run_labels("quickstart", str(tmp_path / "cd34")) == ("quickstart", "seed=3")


def test_tracking_id_is_kept_per_run_dir(tmp_path):
    first = tracking_id(str(tmp_path / "a"))
    assert tracking_id(str(tmp_path / "a")) == first
    assert tracking_id(str(tmp_path / "b")) != first
    assert len(first) == 12 and int(first, 16) >= 0


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "choice, loggers",
    [
        ("logger=many", {"csv", "tensorboard", "mlflow", "wandb"}),
        ("logger=[csv,tensorboard]", {"csv", "tensorboard"}),
        ("logger=[mlflow,wandb]", {"mlflow", "wandb"}),
    ],
)
def test_logger_options_compose(choice, loggers, tmp_path):
    cfg = compose([choice], run_dir=str(tmp_path))
    assert set(cfg.logger) == loggers
    for logger in cfg.logger.values():
        assert str(tmp_path) in str(logger.get("save_dir") or logger.get("run_dir"))


def test_mlflow_store_is_under_output_dir_unless_a_uri_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(["logger=mlflow"], run_dir=str(tmp_path / "run"))
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/out/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    cfg = compose(["logger=mlflow"], run_dir=str(tmp_path / "run"))
    assert cfg.logger.mlflow.tracking_uri == "http://tracking.example:5000"
    uri = "sqlite:////elsewhere/m.db"
    cfg = compose(["logger=mlflow", f"logger.mlflow.tracking_uri='{uri}'"], run_dir=str(tmp_path))
    assert cfg.logger.mlflow.tracking_uri == uri


def test_mlflow_not_installed_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else find_spec(name, *a),
    )
    cfg = compose(["logger=mlflow"], run_dir=str(tmp_path))
    with pytest.raises(LmlabError) as error:
        instantiate_plain(cfg.logger.mlflow)
    assert (
        str(error.value) == "logger=mlflow: mlflow is not installed (pip install 'lmlab[mlflow]')"
    )


# ---------------------------------------------------------------- slow: parallel jobs, CLI

OPEN_STORE = """
import sys, time
from lmlab.loggers import MLFlowLogger
uri, start, run_dir = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(max(0.0, start - time.time()))
logger = MLFlowLogger(uri, "sweep", run_dir=run_dir)
logger.log_metrics({"val/loss": 1.0}, step=0)
"""


@pytest.mark.slow
def test_parallel_jobs_open_a_fresh_mlflow_store_together(tmp_path):
    """Unguarded, MLflow's table creation by 3 processes at once fails in most tries."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = time.time() + 20  # after every process has imported lightning and mlflow
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, uri, str(start), str(tmp_path / f"job{i}")],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], errors
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep")
    assert len(client.search_runs([experiment.experiment_id])) == 3


@pytest.mark.slow
def test_cli_multirun_groups_its_jobs_in_every_logger(tmp_path, tiny_overrides, lmlab_cache_dir):
    """A real multirun with 2 parallel jobs (joblib), stdin closed: no prompt, no hang."""
    from mlflow import MlflowClient

    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    args += ["logger=[csv,tensorboard,mlflow,wandb]", "export=false", "seed=1,2"]
    env = {"LMLAB_OUTPUT_DIR": str(tmp_path / "out"), "LMLAB_CACHE_DIR": str(lmlab_cache_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "lmlab.cli.train", *args, *tiny_overrides("gpt2", steps=2)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "out" / "multirun" / "train").iterdir()
    group = f"train/{sweep.name}"
    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(group).experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed=1", "seed=2"]
    for job in ("0", "1"):
        assert list((sweep / job / "tensorboard").glob("events.out.tfevents.*"))
        (offline_run,) = (sweep / job / "wandb").glob("offline-run-*")
        (run,) = [r["run"] for r in wandb_records(offline_run) if r["type"] == "run"]
        assert run["run_group"] == group
        assert run["display_name"] == f"seed={int(job) + 1}"
