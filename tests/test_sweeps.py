"""Tests for sweeps (lmlab-train -m): every job gets its own complete run dir and status.json,
a failed job is recorded while the others go on and the sweep exits non-zero naming it, the
joblib and submitit launchers, the Optuna presets, and the SLURM launcher's settings.

The sweeps are the real CLI in subprocesses on a tiny GPT (2 steps) and the conftest text
file; the session's LMLAB_CACHE_DIR is shared, so the tokenizer is trained once. Each test
has its own LMLAB_OUTPUT_DIR, so it finds exactly one sweep dir.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
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


def test_failed_job_is_recorded_and_the_sweep_goes_on(tiny, env, tiny_text_file):
    # job 1's config is valid (the whole sweep is checked before it starts); its data is not
    empty = Path(env["LMLAB_OUTPUT_DIR"]).parent / "empty.txt"
    empty.write_text("")
    args = ["-m", *[o for o in tiny if not o.startswith("data.train=")]]
    args.append(f"data.train={tiny_text_file},{empty},{tiny_text_file}")
    proc = lmlab_train(args, env)

    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = the_sweep_dir(env)
    jobs = statuses(sweep)
    assert [jobs[n]["status"] for n in (0, 1, 2)] == ["completed", "failed", "completed"]
    assert_complete(sweep / "0")
    assert_complete(sweep / "2")
    error = f"data.train: no non-empty documents in '{empty}'"
    assert jobs[1]["error"] == error
    assert jobs[1]["value"] is None and f"data.train={empty}" in jobs[1]["overrides"]
    assert not (sweep / "1" / "metrics.json").exists()
    assert (sweep / "multirun.yaml").is_file()
    errors = proc.stderr.splitlines()
    assert f"lmlab-train: error: 1 of 3 jobs failed (sweep dir: {sweep}):" in errors
    assert f"lmlab-train: failed: job 1 (data.train={empty}): {error}" in errors
    assert sum(line.startswith("lmlab-train: failed: ") for line in errors) == 1

    # the same command again, as after a crash that cut job 2 short: job 0 is not trained
    # again (its value goes to the sweeper), job 1 (failed) and job 2 (unfinished) run again
    before = mtimes(sweep / "0")
    for name in ("status.json", "metrics.json"):
        (sweep / "2" / name).unlink()
    failed_at = (sweep / "1" / "status.json").stat().st_mtime_ns
    again = lmlab_train(args, env)

    assert again.returncode == 1, again.stderr[-3000:]
    assert the_sweep_dir(env) == sweep
    assert mtimes(sweep / "0") == before
    value = jobs[0]["value"]
    assert f"job 0: completed in an earlier run of this sweep, skipped (val/loss={value})" in (
        again.stdout
    )
    assert (sweep / "1" / "status.json").stat().st_mtime_ns != failed_at
    assert [s["status"] for s in statuses(sweep).values()] == ["completed", "failed", "completed"]
    assert_complete(sweep / "2")
    assert "lmlab-train: error: 1 of 3 jobs failed" in again.stderr


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
    # data.train is drawn from {the corpus, an empty file}: a trial that draws the empty file
    # passes the up-front checks (its config is valid), fails on its data, and the search
    # goes on (lmlab's Optuna sweeper; pruning and continued studies: tests/test_optuna.py)
    empty = Path(env["LMLAB_OUTPUT_DIR"]).parent / "empty.txt"
    empty.write_text("")
    corpus = next(o.split("=", 1)[1] for o in tiny if o.startswith("data.train="))
    search = ["hparams_search=pretrain_optuna", "hydra.sweeper.n_trials=3", "seed=1"]
    proc = lmlab_train([*tiny, *search, f"data.train=choice({corpus},{empty})"], env)  # no -m

    sweep = the_sweep_dir(env)
    jobs = statuses(sweep)
    assert sorted(jobs) == [0, 1, 2]
    data = {
        n: next(o for o in s["overrides"] if o.startswith("data.train=")) for n, s in jobs.items()
    }
    for num, status in jobs.items():
        assert status["status"] == ("failed" if data[num].endswith("empty.txt") else "completed")
    completed = {n: s for n, s in jobs.items() if s["status"] == "completed"}
    failed = sorted(set(jobs) - set(completed))
    assert completed and failed, "the seeded draws changed: both kinds, or this shows nothing"
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(completed, key=lambda n: completed[n]["value"])
    assert results["best_value"] == completed[best]["value"]
    assert results["best_params"]["data.train"] == corpus
    assert set(results["best_params"]) == {
        "objective.lr",
        "objective.warmup_ratio",
        "objective.weight_decay",
        "data.train",
    }
    for num in completed:
        assert_complete(sweep / str(num))
    study = results["study_name"], results["storage"]
    assert study == ("train", f"sqlite:///{sweep}/optuna.db")
    out = proc.stdout.splitlines()
    assert f"best val/loss: {results['best_value']}" in out
    assert f"best run dir: {sweep / str(best)}" in out
    assert f"dashboard: optuna-dashboard sqlite:///{sweep}/optuna.db" in out
    assert f"lmlab-train: error: {len(failed)} of 3 jobs failed" in proc.stderr


@pytest.mark.slow  # ~15 s on 2 cores
def test_submitit_local_runs_a_job(tiny, env):
    args = ["-m", *tiny, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]
    proc = lmlab_train([*args, "objective.lr=1e-3"], env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = the_sweep_dir(env)
    assert_complete(sweep / "0")
    assert (sweep / ".submitit").is_dir()  # submitit's own logs and pickles

    # run again, the job (in submitit's process) finds its status.json and is skipped
    before = mtimes(sweep / "0")
    again = lmlab_train([*args, "objective.lr=1e-3"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert the_sweep_dir(env) == sweep and mtimes(sweep / "0") == before
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert "job 0: completed in an earlier run of this sweep, skipped" in logs


# ---------------------------------------------------------------- single runs


def test_single_run_error_keeps_its_one_line_and_writes_status(env):
    # a missing data file fails before training (a config mistake, such as data.train left
    # out, fails earlier still: before Hydra makes a run dir, so without a status.json)
    proc = lmlab_train(["data=files", "data.train=missing.txt"], env)

    assert proc.returncode == 2
    message = "data.train: no file matches 'missing.txt'"
    assert proc.stderr.strip().splitlines()[-1] == f"lmlab-train: error: {message}"
    (status_file,) = (Path(env["LMLAB_OUTPUT_DIR"]) / "train").glob("*/status.json")
    status = json.loads(status_file.read_text())
    assert status == {
        "status": "failed",
        "error": message,
        "optimized_metric": "val/loss",
        "value": None,
        "overrides": ["data=files", "data.train=missing.txt"],
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
    assert sweeper._target_.endswith("LmlabOptunaSweeper")
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


# ---------------------------------------------------------------- sweeps that survive a crash


def mtimes(run_dir: Path) -> dict[str, int]:
    """What training writes, and when: a skipped job leaves all of it as it was."""
    names = ["metrics.csv", "metrics.json", "status.json", "config.yaml"]
    return {name: (run_dir / name).stat().st_mtime_ns for name in names}


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended (rc {proc.returncode}) before the kill"
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.05)


def kill_sweep_when(args: list[str], env: dict, ready) -> Path:
    """Runs lmlab-train with `args` until `ready(sweep dir)`, then SIGKILLs its whole process
    group at once (joblib's workers too), as on a crashed machine; returns the sweep dir. Its
    output goes to first.log beside the outputs."""
    outputs = Path(env["LMLAB_OUTPUT_DIR"])
    multirun = outputs / "multirun" / "train"
    with open(outputs.parent / "first.log", "w") as log:
        first = subprocess.Popen(
            [str(SCRIPT), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=outputs.parent, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: multirun.is_dir() and any(multirun.iterdir()), first)
            sweep = the_sweep_dir(env)
            wait_for(lambda: ready(sweep), first)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    return sweep


def completed(sweep: Path, num: int) -> bool:
    status = sweep / str(num) / "status.json"
    return status.is_file() and json.loads(status.read_text())["status"] == "completed"


@pytest.mark.slow  # ~80 s on 2 busy cores; the fast variant is the test above
def test_a_killed_joblib_sweep_run_again_skips_completed_jobs_and_resumes(tiny_overrides, env):
    # 4 jobs, 2 at a time; checkpoints every 2 steps, so that the killed job 2 has one
    args = ["-m", *tiny_overrides("gpt2", steps=16), "trainer.validate_at_start=false"]
    args += ["objective.sample_max_new_tokens=4", "export=false"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    args += ["callbacks.last_checkpoint.every_n_train_steps=2", "objective.lr=1e-3,2e-3,3e-3,4e-3"]
    last_of_2 = Path("2", "checkpoints", "last.ckpt")
    sweep = kill_sweep_when(
        args, env, lambda s: completed(s, 0) and completed(s, 1) and (s / last_of_2).is_file()
    )
    last = sweep / last_of_2
    assert not completed(sweep, 2), "job 2 ended before the kill: nothing to resume"
    before = {num: mtimes(sweep / str(num)) for num in (0, 1)}

    # lmlab-report works on the half-finished sweep
    from lmlab.report import report

    half = report(sweep, out=sweep.parent.parent.parent / "half-report")
    assert [j.status for j in sorted(half["jobs"], key=lambda j: j.num)][:3] == [
        "completed",
        "completed",
        "incomplete",
    ]
    assert (
        half["best"].num in (0, 1)
        and (sweep.parent.parent.parent / "half-report" / "report.md").is_file()
    )

    again = lmlab_train(args, env)  # the same command

    assert again.returncode == 0, again.stderr[-3000:]
    assert the_sweep_dir(env) == sweep  # the command found its sweep dir again
    assert f"continuing the sweep in {sweep}: 2 job(s) completed earlier" in again.stdout
    for num in (0, 1):
        assert mtimes(sweep / str(num)) == before[num], f"job {num} was trained again"
        assert f"job {num}: completed in an earlier run of this sweep, skipped" in again.stdout
    assert f"resuming from {last}" in again.stdout  # job 2 goes on from its checkpoint
    jobs = statuses(sweep)
    assert [jobs[n]["status"] for n in range(4)] == ["completed"] * 4
    for num in range(4):
        assert_complete(sweep / str(num))


def test_a_mistake_in_one_combination_stops_the_sweep_before_any_job(tiny, env):
    start = time.monotonic()
    proc = lmlab_train(["-m", *tiny, "objective.lr=1e-3,2e-3,3e-3", "data.batch_size=4,8,x"], env)

    assert proc.returncode == 2, proc.stderr[-3000:]
    # job 6 (the 7th): the first with batch size x
    line = "job 6 (data.batch_size=x objective.lr=0.001): data.batch_size: expected an integer"
    assert proc.stderr.strip().splitlines() == [f"lmlab-train: error: {line}, got 'x'"]
    assert not (Path(env["LMLAB_OUTPUT_DIR"]) / "multirun").exists()  # no job started
    assert time.monotonic() - start < 30  # composed, not trained


def test_every_job_is_validated_not_only_composed(tiny, env):
    proc = lmlab_train(["-m", *tiny, "++model.config.n_embd=32,16", "+model.config.n_embdd=8"], env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "lmlab-train: error: job 0 (++model.config.n_embd=32): model.config.n_embdd: not a "
        "setting of the 'gpt2' Hugging Face config (did you mean one of: n_embd"
    )


# ---------------------------------------------------------------- the sweep dir


def sweep_dir_of(tmp_path: Path, task: list[str], hydra: list[str] = ()) -> Path:
    from lmlab.resolvers import _sweep_dir

    return Path(_sweep_dir(str(tmp_path), "train", task, list(hydra)))


def test_the_sweep_dir_is_named_by_the_command(tmp_path):
    task = ["experiment=quickstart", "objective.lr=1e-3,3e-3"]
    first = sweep_dir_of(tmp_path, task)
    assert first.parent == tmp_path / "multirun" / "train" and len(first.name) == 8
    assert sweep_dir_of(tmp_path, list(task)) == first
    assert sweep_dir_of(tmp_path, [*task, "seed=1"]) != first
    # the launcher is not part of the command, the sweeper's settings are, except an Optuna
    # search's budget: the same search with more trials continues its study
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "hydra.verbose=true"]
    assert sweep_dir_of(tmp_path, task, launcher) == first
    assert sweep_dir_of(tmp_path, task, ["hydra.sweeper.max_batch_size=9"]) != first
    assert sweep_dir_of(tmp_path, task, ["hydra/sweeper/pruner=median"]) != first
    budget = ["hydra.sweeper.n_trials=9", "hydra.sweeper.n_jobs=2"]
    assert sweep_dir_of(tmp_path, task, budget) == first


def test_fresh_starts_a_new_sweep_dir_and_a_plain_rerun_takes_the_latest(tmp_path):
    task = ["objective.lr=1e-3,3e-3"]
    base = sweep_dir_of(tmp_path, task)
    assert sweep_dir_of(tmp_path, [*task, "+fresh=true"]) == base  # nothing there yet
    base.mkdir(parents=True)
    fresh = sweep_dir_of(tmp_path, [*task, "+fresh=true"])
    assert fresh == Path(f"{base}-1")
    fresh.mkdir()
    assert sweep_dir_of(tmp_path, task) == fresh  # the latest sweep of the command goes on
    assert sweep_dir_of(tmp_path, ["+fresh=true", *task]) == Path(f"{base}-2")
    assert sweep_dir_of(tmp_path, [*task, "+fresh=false"]) == fresh


def test_a_fresh_sweep_trains_every_job_again(tiny, env):
    args = ["-m", *tiny, "objective.lr=1e-3"]
    first = sweep_dir_of(Path(env["LMLAB_OUTPUT_DIR"]), args[1:])  # the command's sweep dir
    (first / "0").mkdir(parents=True)  # as an earlier run of the command left it
    proc = lmlab_train([*args, "+fresh=true"], env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    second = Path(f"{first}-1")
    assert_complete(second / "0")
    assert "skipped" not in proc.stdout and "continuing" not in proc.stdout
    status = json.loads((second / "0" / "status.json").read_text())
    assert "+fresh=true" not in status["overrides"]  # a flag of the command, not of a job
    sweep_config = yaml.safe_load((second / "multirun.yaml").read_text())
    assert "+fresh=true" not in sweep_config["hydra"]["overrides"]["task"]

    # the plain command goes on with the latest sweep of the command
    before = mtimes(second / "0")
    proc = lmlab_train(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing the sweep in {second}: 1 job(s) completed earlier" in proc.stdout
    assert "job 0: completed in an earlier run of this sweep, skipped" in proc.stdout
    assert mtimes(second / "0") == before

    # a job dir whose status.json holds other overrides (as a search that drew otherwise
    # leaves) is not reused
    status["overrides"][-1] = "objective.lr=0.5"
    (second / "0" / "status.json").write_text(json.dumps(status))
    proc = lmlab_train(args, env)
    assert proc.returncode == 1
    assert f"job 0 failed: {second / '0'} holds a run of other overrides" in proc.stderr
    assert "start a new sweep with +fresh=true" in proc.stderr


def test_the_jobs_checked_up_front_are_the_basic_sweepers():
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict, read_write

    from lmlab.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["seed=3"], return_hydra_config=True)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = ["objective.lr=1e-3,2e-3"]  # as -m leaves it
            cfg.hydra.sweeper.params = {"seed": "1,2"}  # a sweep's params in a config file
        jobs = sweeps.job_overrides(cfg)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.OptunaSweeper"
        assert sweeps.job_overrides(cfg) is None  # its trials are drawn as the search goes
    assert sorted(map(tuple, jobs)) == [
        ("seed=1", "objective.lr=0.001"),
        ("seed=1", "objective.lr=0.002"),
        ("seed=2", "objective.lr=0.001"),
        ("seed=2", "objective.lr=0.002"),
    ]


def test_fresh_with_a_sweep_dir_of_ones_own_is_refused(tiny, env, tmp_path):
    mine = tmp_path / "my sweep, one"
    proc = lmlab_train(["-m", *tiny, "+fresh=true", f"hydra.sweep.dir='{mine}'"], env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lmlab-train: error: +fresh=true: hydra.sweep.dir is set on the command line ({mine}), "
        "so the sweep goes there; give another dir to start afresh"
    ]
    assert not mine.exists()


@pytest.mark.slow  # ~80 s on 2 busy cores
def test_a_sweep_stopped_with_ctrl_c_continues_where_it_stopped(tiny_overrides, env):
    args = ["-m", *tiny_overrides("gpt2", steps=30), "trainer.validate_at_start=false"]
    args += ["objective.sample_max_new_tokens=4", "export=false"]
    args += ["callbacks.last_checkpoint.every_n_train_steps=2", "objective.lr=1e-3,2e-3"]
    first = subprocess.Popen(
        [str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=Path(env["LMLAB_OUTPUT_DIR"]).parent, text=True,
    )  # fmt: skip
    try:
        multirun = Path(env["LMLAB_OUTPUT_DIR"]) / "multirun" / "train"
        ckpt = "0/checkpoints/last.ckpt"
        wait_for(lambda: multirun.is_dir() and any(multirun.glob(f"*/{ckpt}")), first)
        first.send_signal(signal.SIGINT)  # Ctrl-C: the job saves its step and stops the sweep
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGINT, err[-3000:]
    sweep = the_sweep_dir(env)
    stopped = json.loads((sweep / "0" / "status.json").read_text())
    assert stopped["status"] == "interrupted" and not (sweep / "1").exists()

    again = lmlab_train(args, env)

    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {sweep / '0' / 'checkpoints' / 'last.ckpt'}" in again.stdout
    assert [s["status"] for s in statuses(sweep).values()] == ["completed", "completed"]
    steps = [int(row["step"]) for row in csv.DictReader((sweep / "0" / "metrics.csv").open())]
    assert steps == sorted(steps) and max(steps) == 29  # one run of steps, ended at the last


def test_the_same_sweep_command_while_it_runs_stops_with_the_lock_line(tiny, env, tmp_path):
    from lmlab import runlock

    sweep = tmp_path / "sweep"
    held = runlock.acquire(sweep)  # as the first of two identical commands holds it
    try:
        proc = lmlab_train(["-m", *tiny, "seed=1,2", f"hydra.sweep.dir={sweep}"], env)
    finally:
        held.release()
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"lmlab-train: error: {sweep}: in use by process {os.getpid()}")
    assert not sweep.exists()  # no job started; released, nothing left behind
