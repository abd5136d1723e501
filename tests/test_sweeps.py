"""Tests for sweeps (lmlab-train -m): every job gets its own complete run dir and status.json,
a failed job is recorded while the others go on and the sweep exits non-zero naming it, the
joblib and submitit launchers, the Optuna presets, and the SLURM launcher's settings.

The sweeps are the real CLI in subprocesses on a tiny GPT (2 steps) and the conftest text
file; the session's LMLAB_CACHE_DIR is shared, so the tokenizer is trained once. Each test
has its own LMLAB_OUTPUT_DIR, so it finds exactly one sweep dir.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmlab import sweeps
from lmlab.errors import LmlabError

SCRIPT = Path(sys.executable).parent / "lmlab-train"
RUN_FILES = [".hydra/overrides.yaml", "config.yaml", "metrics.csv", "metrics.json", "status.json"]


@pytest.fixture(scope="module")
def tiny(tiny_overrides):
    """A run of a few seconds: 2 steps, one validation, a 4-token sample, no export."""
    return [
        *tiny_overrides("gpt2", steps=2),
        "trainer.validate_at_start=false",
        "objective.sample_max_new_tokens=4",
        "export=false",
    ]


@pytest.fixture
def env(lmlab_cache_dir, tmp_path):
    env = dict(os.environ)
    env["LMLAB_CACHE_DIR"] = str(lmlab_cache_dir)
    env["LMLAB_OUTPUT_DIR"] = str(tmp_path / "outputs")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("LMLAB_SWEEP_UID", None)  # a fresh sweep uid, as when a person runs the command
    return env


def lmlab_train(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        cwd=Path(env["LMLAB_OUTPUT_DIR"]).parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def the_sweep_dir(env: dict) -> Path:
    found = list((Path(env["LMLAB_OUTPUT_DIR"]) / "multirun" / "train").iterdir())
    assert len(found) == 1, f"one sweep dir expected, found {found}"
    return found[0]


def statuses(sweep: Path) -> dict[int, dict]:
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    return {int(p.name): json.loads((p / "status.json").read_text()) for p in jobs}


def assert_complete(run_dir: Path, metric: str = "val/loss") -> None:
    missing = [name for name in RUN_FILES if not (run_dir / name).exists()]
    assert not missing, f"{run_dir} lacks {missing}"
    status = json.loads((run_dir / "status.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "completed" and status["error"] is None
    assert status["optimized_metric"] == metric
    assert isinstance(status["value"], float) and status["value"] == metrics[metric]
    assert status["overrides"] == yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text())


def lr_of(status: dict) -> str:
    return next(o.split("=")[1] for o in status["overrides"] if o.startswith("objective.lr="))


# ---------------------------------------------------------------- real sweeps


def test_failed_job_is_recorded_and_the_sweep_goes_on(tiny, env):
    proc = lmlab_train(["-m", *tiny, "objective.lr=1e-3,-1.0,3e-3"], env)

    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = the_sweep_dir(env)
    jobs = statuses(sweep)
    assert [jobs[n]["status"] for n in (0, 1, 2)] == ["completed", "failed", "completed"]
    assert_complete(sweep / "0")
    assert_complete(sweep / "2")
    assert jobs[1]["error"] == "ValueError: Invalid learning rate: -1.0"
    assert jobs[1]["value"] is None and lr_of(jobs[1]) == "-1.0"
    assert not (sweep / "1" / "metrics.json").exists()
    assert (sweep / "multirun.yaml").is_file()
    errors = proc.stderr.splitlines()
    assert f"lmlab-train: error: 1 of 3 jobs failed (sweep dir: {sweep}):" in errors
    failed = "lmlab-train: failed: job 1 (objective.lr=-1.0): ValueError: Invalid learning rate"
    assert f"{failed}: -1.0" in errors
    assert sum(line.startswith("lmlab-train: failed: ") for line in errors) == 1


def test_joblib_runs_jobs_in_parallel_processes_in_one_sweep_dir(tiny, env):
    args = ["-m", *tiny, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    # each job returns (and records) metrics[optimized_metric]
    proc = lmlab_train([*args, "optimized_metric=val/perplexity", "objective.lr=1e-3,3e-3"], env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    sweep = the_sweep_dir(env)  # the workers agree on the sweep uid
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert_complete(sweep / job, "val/perplexity")
    assert [lr_of(s) for s in statuses(sweep).values()] == ["0.001", "0.003"]


def test_optuna_search_survives_failed_trials_and_prints_the_best(tiny, env):
    # The lr is drawn from {0.001, -1.0}: with the preset's sampler seed (42), trials 0 and 2
    # draw -1.0 and fail at once; the search goes on and trial 1 is the best.
    search = ["hparams_search=pretrain_optuna", "hydra.sweeper.n_trials=3"]
    proc = lmlab_train([*tiny, *search, "objective.lr=choice(0.001,-1.0)"], env)  # no -m

    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = the_sweep_dir(env)
    jobs = statuses(sweep)
    assert sorted(jobs) == [0, 1, 2]
    for status in jobs.values():
        assert status["status"] == ("failed" if lr_of(status) == "-1.0" else "completed")
    completed = {n: s for n, s in jobs.items() if s["status"] == "completed"}
    failed = sorted(set(jobs) - set(completed))
    assert completed and failed  # both kinds, or this test shows nothing
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(completed, key=lambda n: completed[n]["value"])
    assert results["best_value"] == completed[best]["value"]
    assert results["best_params"]["objective.lr"] == 0.001
    assert set(results["best_params"]) == {
        "objective.lr",
        "objective.warmup_ratio",
        "objective.weight_decay",
    }
    for num in completed:
        assert_complete(sweep / str(num))
    out = proc.stdout.splitlines()
    assert f"best val/loss: {results['best_value']}" in out
    assert f"best run dir: {sweep / str(best)}" in out
    best_params = next(line for line in out if line.startswith("best params: "))
    assert "objective.lr=0.001 " in best_params
    assert f"lmlab-train: error: {len(failed)} of 3 jobs failed" in proc.stderr


def test_submitit_local_runs_a_job(tiny, env):
    args = ["-m", *tiny, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]
    proc = lmlab_train([*args, "objective.lr=1e-3"], env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = the_sweep_dir(env)
    assert_complete(sweep / "0")
    assert (sweep / ".submitit").is_dir()  # submitit's own logs and pickles


# ---------------------------------------------------------------- single runs


def test_single_run_error_keeps_its_one_line_and_writes_status(env):
    proc = lmlab_train(["data=files"], env)  # data.train left out: fails before training

    assert proc.returncode == 2
    message = "data.train: required here; set it to a file, directory or glob (data.train=...)"
    assert proc.stderr.strip().splitlines()[-1] == f"lmlab-train: error: {message}"
    (status_file,) = (Path(env["LMLAB_OUTPUT_DIR"]) / "train").glob("*/status.json")
    status = json.loads(status_file.read_text())
    assert status == {
        "status": "failed",
        "error": message,
        "optimized_metric": "val/loss",
        "value": None,
        "overrides": ["data=files"],
    }


def test_unknown_optimized_metric_names_the_key():
    with pytest.raises(LmlabError, match=r"optimized_metric: 'val/acc' .* known: val/loss$"):
        sweeps.optimized_value({"val/loss": 2.5, "export": "x"}, "val/acc")
    assert sweeps.optimized_value({"val/loss": 2.5}, "val/loss") == 2.5
    assert sweeps.optimized_value({"val/loss": 2.5}, None) is None


# ---------------------------------------------------------------- configs


def test_slurm_launcher_settings_compose(env):
    args = ["--cfg", "hydra", "hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2"]
    args += ["hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"]
    args += ["hydra.launcher.timeout_min=120", "hydra.launcher.partition=gpu"]
    proc = lmlab_train(args, env, timeout=60)

    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (2, 4, 4)
    assert (launcher["timeout_min"], launcher["partition"]) == (120, "gpu")


def compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from lmlab.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    "overrides, direction, metric",
    [
        (["objective=sequence_classification"], "maximize", "val/accuracy"),
        (["objective=token_classification"], "maximize", "val/f1"),
        (["objective=clm"], "minimize", "val/loss"),
    ],
)
def test_finetune_preset_follows_the_monitor_mode(overrides, direction, metric):
    cfg = compose_with_hydra([*overrides, "hparams_search=finetune_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert (sweeper.direction, cfg.optimized_metric) == (direction, metric)
    assert sweeper.sampler.seed == 42 and sweeper.max_failure_rate == 1.0
    assert sweeper.params["objective.lr"] == "tag(log, interval(1e-5, 3e-4))"
    assert cfg.hydra.mode.name == "MULTIRUN"


def test_pretrain_preset_minimises_the_validation_loss():
    cfg = compose_with_hydra(["objective=mlm", "hparams_search=pretrain_optuna", "seed=7"])
    sweeper = cfg.hydra.sweeper
    assert (sweeper.direction, cfg.optimized_metric) == ("minimize", "val/loss")
    assert sweeper.sampler.seed == 7
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {
        "objective.lr",
        "objective.warmup_ratio",
        "objective.weight_decay",
    }


def test_bad_monitor_mode_names_the_key():
    cfg = compose_with_hydra(["hparams_search=finetune_optuna", "objective.monitor_mode=up"])
    with pytest.raises(Exception, match="objective.monitor_mode: expected min or max, got 'up'"):
        _ = cfg.hydra.sweeper.direction


# ---------------------------------------------------------------- the summary


def write_job(sweep: Path, num: int, status: dict | None) -> None:
    (sweep / str(num)).mkdir(parents=True)
    if status is not None:
        (sweep / str(num) / "status.json").write_text(json.dumps(status))


def test_summary_lists_failed_jobs_by_what_sets_them_apart(tmp_path, capsys):
    shared = ["debug=default", "data=files"]
    done = {"status": "completed", "error": None, "optimized_metric": "val/f1"}
    write_job(tmp_path, 0, {**done, "value": 0.5, "overrides": [*shared, "objective.lr=0.1"]})
    write_job(tmp_path, 1, {**done, "value": 0.7, "overrides": [*shared, "objective.lr=0.2"]})
    failed = {"status": "failed", "error": "data.train: no file", "optimized_metric": "val/f1"}
    write_job(tmp_path, 2, {**failed, "value": None, "overrides": [*shared, "objective.lr=0.3"]})
    write_job(tmp_path, 10, None)  # killed before it could write status.json
    (tmp_path / ".submitit").mkdir()  # not a job
    results = {"name": "optuna", "best_params": {"objective.lr": 0.2}, "best_value": 0.7}
    (tmp_path / "optimization_results.yaml").write_text(yaml.safe_dump(results))

    assert sweeps.summarize(tmp_path) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "best val/f1: 0.7",
        "best params: objective.lr=0.2",
        f"best run dir: {tmp_path / '1'}",
        f"optimization results: {tmp_path / 'optimization_results.yaml'}",
    ]
    assert err.splitlines() == [
        f"lmlab-train: error: 2 of 4 jobs failed (sweep dir: {tmp_path}):",
        "lmlab-train: failed: job 2 (objective.lr=0.3): data.train: no file",
        "lmlab-train: failed: job 10: no status.json (killed, or ended outside lmlab-train)",
    ]


def test_summary_of_a_sweep_without_failures_is_silent(tmp_path, capsys):
    done = {"status": "completed", "error": None, "optimized_metric": "val/loss", "value": 1.0}
    write_job(tmp_path, 0, {**done, "overrides": ["objective.lr=0.1"]})
    assert sweeps.summarize(tmp_path) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "variables, zero",
    [
        ({}, True),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),  # a child process of Lightning's DDP
        ({"SLURM_PROCID": "3"}, False),  # a SLURM task of a multi-node job
        ({"RANK": "2"}, False),  # torchrun
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
    ],
)
def test_only_rank_zero_writes_status(variables, zero, monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert sweeps.is_rank_zero() is zero


def test_error_line_is_one_line():
    assert sweeps.error_line(LmlabError("data.train: no file")) == "data.train: no file"
    assert sweeps.error_line(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert sweeps.error_line(MemoryError()) == "MemoryError"
