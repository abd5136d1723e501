"""Tests for lmlab's Optuna sweeper (hydra_plugins.lmlab_optuna_sweeper, hydra/sweeper=
lmlab_optuna) and its pruning callback (lmlab.pruning): the search space syntax, the pruner
presets, the search space checked before the first trial, a real search whose poor trial is
pruned, a study continued by the same command (more trials; a trial a dead run left RUNNING;
a real kill, slow), and optuna-dashboard showing the study in headless Chromium.

The searches are the real CLI in subprocesses on the tiny GPT of tests/test_sweeps.py.
"""

import json
import os
import re
import sys
from pathlib import Path

import browser
import optuna
import pytest
import test_sweeps
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from test_sweeps import (
    assert_complete,
    compose_with_hydra,
    kill_sweep_when,
    lmlab_train,
    mtimes,
    statuses,
    the_sweep_dir,
)

from hydra_plugins.lmlab_optuna_sweeper.search_space import SearchSpace
from lmlab import sweeps

env = test_sweeps.env  # a fixture: LMLAB_OUTPUT_DIR of the test's own, the session's cache
GOOD, POOR = "0.003", "1e-07"  # learning rates: the poor one barely moves the loss


@pytest.fixture(scope="module")
def tiny(tiny_overrides):
    """A trial of a few seconds: 4 steps, validations at steps 2 and 4, no export."""
    return [
        *tiny_overrides("gpt2", steps=4),
        "trainer.validate_at_start=false",
        "objective.sample_max_new_tokens=4",
        "export=false",
    ]


def load_study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="train", storage=f"sqlite:///{sweep}/optuna.db")


def states(sweep: Path) -> list[str]:
    return [t.state.name for t in load_study(sweep).trials]


# ---------------------------------------------------------------- the search space


def test_search_space_reads_hydras_optuna_syntax():
    space = SearchSpace.parse(
        [
            "objective.lr=tag(log, interval(1e-5, 1e-3))",
            "data.batch_size=choice(16, 32)",
            "objective.warmup_ratio=interval(0.0, 0.2)",
            "trainer.max_steps=range(10, 40, 10)",  # 10, 20, 30: the end excluded, as Hydra's
            "model.config.n_layer=range(1, 4)",
            "seed=3",
            "objective.warmup_ratio=0.1",  # a fixed value takes the key out of the search
        ]
    )
    assert space.distributions() == {
        "objective.lr": FloatDistribution(1e-5, 1e-3, log=True),
        "data.batch_size": CategoricalDistribution([16, 32]),
        "trainer.max_steps": IntDistribution(10, 30, step=10),
        "model.config.n_layer": IntDistribution(1, 3),
    }
    assert space.fixed == {"seed": "seed=3", "objective.warmup_ratio": "objective.warmup_ratio=0.1"}
    fixed = ["seed=3", "objective.warmup_ratio=0.1"]
    first = ["objective.lr=1e-05", "data.batch_size=16", "trainer.max_steps=10"]
    assert (
        space.probes()
        == [  # every choice, both ends, the others at their first value
            [*first, "model.config.n_layer=1", *fixed],
            ["objective.lr=0.001", *first[1:], "model.config.n_layer=1", *fixed],
            [first[0], "data.batch_size=32", first[2], "model.config.n_layer=1", *fixed],
            [*first[:2], "trainer.max_steps=30", "model.config.n_layer=1", *fixed],
            [*first, "model.config.n_layer=3", *fixed],
        ]
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective.lr=tag(log, interval(0.0, 1e-3))", "expected 0 < start < end"),
        ("objective.lr=interval(0.2, 0.1)", "expected start < end"),
        ("data.train=glob(*)", "expected choice, range or interval"),
    ],
)
def test_search_space_refuses_what_optuna_cannot_draw(override, message):
    with pytest.raises(Exception, match=message):
        SearchSpace.parse([override]).distributions()


def test_presets_use_lmlabs_sweeper_and_pruner_presets_compose():
    cfg = compose_with_hydra(["hparams_search=finetune_optuna", "hydra/sweeper/pruner=median"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lmlab_optuna_sweeper.sweeper.LmlabOptunaSweeper"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    from hydra.utils import instantiate

    assert isinstance(instantiate(sweeper.pruner), optuna.pruners.MedianPruner)
    hyperband = compose_with_hydra(
        ["hparams_search=pretrain_optuna", "hydra/sweeper/pruner=hyperband"]
    )
    assert isinstance(instantiate(hyperband.hydra.sweeper.pruner), optuna.pruners.HyperbandPruner)
    assert compose_with_hydra(["hparams_search=pretrain_optuna"]).hydra.sweeper.pruner is None


def test_the_configs_checked_up_front_cover_the_search_space():
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict, read_write

    from lmlab.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hparams_search=finetune_optuna", "hydra/sweeper/pruner=median"],
            return_hydra_config=True,
        )
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = ["objective.warmup_ratio=0.1", "seed=1"]
        jobs = sweeps.job_overrides(cfg)
    pruning = next(o for o in jobs[0] if o.startswith("+callbacks.optuna_pruning="))
    assert [job[:2] for job in jobs] == [
        ["objective.lr=1e-05", "data.batch_size=16"],
        ["objective.lr=0.0003", "data.batch_size=16"],
        ["objective.lr=1e-05", "data.batch_size=32"],
    ]
    assert all(job[2:] == ["objective.warmup_ratio=0.1", "seed=1", pruning] for job in jobs)
    (parsed,) = OverridesParser.create().parse_overrides([pruning])  # one valid override
    assert parsed.value()["_target_"] == "lmlab.pruning.OptunaPruning"


def test_a_bad_key_or_value_in_the_search_space_fails_before_any_trial(tiny, env):
    search = [*tiny, "hparams_search=pretrain_optuna"]
    proc = lmlab_train([*search, "objective.lrr=interval(1e-4, 1e-3)"], env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lmlab-train: error: search space at ")
    assert "objective.lrr: no such key (did you mean objective.lr?); expected one of: " in line

    proc = lmlab_train([*search, "data.batch_size=choice(4, 0)"], env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lmlab-train: error: search space at data.batch_size=0: data.batch_size: "
        "expected an integer >= 1, got 0"
    ]

    proc = lmlab_train([*search, "hydra/sweeper/pruner=median", "hydra.sweeper.storage=null"], env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lmlab-train: error: hydra.sweeper.storage: null keeps the study")
    assert not (Path(env["LMLAB_OUTPUT_DIR"]) / "multirun").exists()  # no trial ran


# ---------------------------------------------------------------- the summary


def test_a_pruned_job_is_no_failure_and_the_summary_names_the_dashboard(tmp_path, capsys):
    record = {"error": None, "optimized_metric": "val/loss", "overrides": ["objective.lr=1"]}
    for num, status, value in [(0, "completed", 2.0), (1, "pruned", 3.0)]:
        (tmp_path / str(num)).mkdir()
        job = record | {"status": status, "value": value, "overrides": [f"objective.lr={num}"]}
        (tmp_path / str(num) / "status.json").write_text(json.dumps(job))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    results = {"name": "optuna", "best_params": {"objective.lr": 0}, "best_value": 2.0}
    (tmp_path / "optimization_results.yaml").write_text(
        json.dumps(results | {"storage": storage})  # YAML reads JSON
    )
    assert sweeps.summarize(tmp_path) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[-1] == f"dashboard: optuna-dashboard {storage}"


# ---------------------------------------------------------------- real searches


def search_args(tiny, n_trials: int) -> list[str]:
    """A search whose trial 0 draws the good lr and trial 1 the poor one (the TPE sampler
    seeded with 3: asserted below), with a median pruner that prunes from trial 1 on."""
    return [
        *tiny,
        "hparams_search=pretrain_optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        f"objective.lr=choice({GOOD},{POOR})",
        "objective.warmup_ratio=0.0",
        "seed=3",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
    ]


def lr_of(status: dict) -> str:
    return next(o.split("=")[1] for o in status["overrides"] if o.startswith("objective.lr="))


@pytest.fixture(scope="module")
def pruned_search(tiny, lmlab_cache_dir, tmp_path_factory):
    """A 2-trial search with pruning, then the same command with 3 trials after trial 2 was
    left RUNNING (as by a run killed right after drawing it): (sweep, first run, second run,
    the job mtimes before the second run)."""
    root = tmp_path_factory.mktemp("pruned")
    search = {**os.environ, "LMLAB_CACHE_DIR": str(lmlab_cache_dir)}
    search["LMLAB_OUTPUT_DIR"] = str(root / "outputs")
    first = lmlab_train(search_args(tiny, 2), search)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = the_sweep_dir(search)
    study = load_study(sweep)
    space = {
        "objective.weight_decay": FloatDistribution(0.0, 0.1),
        "objective.lr": CategoricalDistribution([float(GOOD), float(POOR)]),
    }
    study.enqueue_trial({"objective.weight_decay": 0.05, "objective.lr": float(GOOD)})
    left = study.ask(space)  # the enqueued params: a trial that completes
    left.set_user_attr("sweep_dir", str(sweep))  # RUNNING, owned by this sweep dir
    before = {num: mtimes(sweep / str(num)) for num in (0, 1)}
    again = lmlab_train(search_args(tiny, 3), search)
    assert again.returncode == 0, again.stderr[-3000:]
    return sweep, first, again, before


@pytest.mark.slow  # the pruned search fixture: ~25 s on 2 cores
def test_a_poor_trial_is_pruned_early(pruned_search):
    sweep, first, _, _ = pruned_search
    jobs = statuses(sweep)
    assert [lr_of(jobs[n]) for n in (0, 1)] == [GOOD, POOR], "the seeded draws changed"
    assert_complete(sweep / "0")
    pruned = jobs[1]
    assert (pruned["status"], pruned["step"], pruned["error"]) == ("pruned", 2, None)
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert metrics["global_step"] == 2  # of 4: stopped at the first validation
    assert pruned["value"] == metrics["val/loss"] > jobs[0]["value"]
    assert "pruned by Optuna at step 2: val/loss=" in first.stdout
    trial = load_study(sweep).trials[1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [2]
    assert load_study(sweep).trials[0].intermediate_values.keys() == {2, 4}
    assert "lmlab-train: error" not in first.stderr  # a pruned trial is no failure


@pytest.mark.slow  # the pruned search fixture: ~25 s on 2 cores
def test_the_same_command_continues_the_study(pruned_search):
    sweep, first, again, before = pruned_search
    assert "trials: 1 complete, 1 pruned" in first.stdout + first.stderr
    assert f"continuing the sweep in {sweep}" in again.stdout
    assert "study train: continued, 2 trials finished earlier" in again.stdout
    for num in (0, 1):  # finished trials are not launched again
        assert mtimes(sweep / str(num)) == before[num], f"job {num} ran again"
    # the trial left RUNNING ran again as job 2; no trial 3: 3 finished trials in all
    assert states(sweep) == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert sorted(statuses(sweep)) == [0, 1, 2]
    assert_complete(sweep / "2")
    results = (sweep / "optimization_results.yaml").read_text()
    assert f"storage: sqlite:///{sweep}/optuna.db" in results
    assert f"dashboard: optuna-dashboard sqlite:///{sweep}/optuna.db" in again.stdout


@pytest.mark.slow  # ~60 s on 2 busy cores: two worker processes start
def test_parallel_trials_through_joblib_report_to_one_study(tiny, env):
    # 2 trials at once in joblib's worker processes, each reporting to the SQLite study
    args = [*tiny, "hparams_search=pretrain_optuna", "hydra.sweeper.n_trials=2"]
    args += ["hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = lmlab_train([*args, "hydra/sweeper/pruner=median"], env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    sweep = the_sweep_dir(env)
    study = load_study(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # 5 startup trials
    assert [sorted(t.intermediate_values) for t in study.trials] == [[2, 4], [2, 4]]
    for num in (0, 1):
        assert_complete(sweep / str(num))
        assert statuses(sweep)[num]["value"] == study.trials[num].value


@pytest.mark.slow  # ~90 s on 2 busy cores
def test_a_killed_search_run_again_resumes_its_trial(tiny_overrides, env):
    # trial 1 killed once it has a checkpoint; the same command resumes it from there
    args = [*tiny_overrides("gpt2", steps=16), "trainer.validate_at_start=false", "export=false"]
    args += ["objective.sample_max_new_tokens=4", "callbacks.last_checkpoint.every_n_train_steps=2"]
    args += ["hparams_search=pretrain_optuna", "hydra.sweeper.n_trials=3"]
    last_of_1 = Path("1", "checkpoints", "last.ckpt")
    sweep = kill_sweep_when(
        args, env, lambda s: (s / "0" / "status.json").is_file() and (s / last_of_1).is_file()
    )
    last = sweep / last_of_1
    assert states(sweep) == ["COMPLETE", "RUNNING"]
    before = mtimes(sweep / "0")

    again = lmlab_train(args, env)

    assert again.returncode == 0, again.stderr[-3000:]
    assert mtimes(sweep / "0") == before
    assert f"resuming from {last}" in again.stdout  # trial 1 goes on from its checkpoint
    assert states(sweep) == ["COMPLETE", "COMPLETE", "COMPLETE"]
    for num in range(3):
        assert_complete(sweep / str(num))


# ---------------------------------------------------------------- optuna-dashboard


@pytest.mark.slow  # the pruned search fixture: ~25 s on 2 cores
def test_optuna_dashboard_shows_the_study(pruned_search, tmp_path):
    reason = browser.missing()
    if reason and os.environ.get("LMLAB_REQUIRE_BROWSER"):
        pytest.fail(f"LMLAB_REQUIRE_BROWSER is set, but {reason}")
    if reason:
        pytest.skip(reason)
    sweep = pruned_search[0]
    port = browser.free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    command = [str(dashboard), f"sqlite:///{sweep}/optuna.db", "--port", str(port)]
    log = tmp_path / "dashboard.log"
    with browser.server(command, "/api/studies", log, port) as url, browser.chromium_page() as page:
        page.goto(f"{url}/dashboard", timeout=60_000)
        page.get_by_text("Direction: MINIMIZE").wait_for(timeout=60_000)  # the study list
        assert re.search(r"^(1\. )?train$", page.inner_text("body"), re.M)  # the study name
        page.goto(f"{url}/dashboard/studies/1/trials", timeout=60_000)
        page.get_by_text("3 Trials").wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert [f"Trial {n}" in text for n in range(3)] == [True] * 3
        assert "Pruned" in text and "Complete" in text
        page.goto(f"{url}/dashboard/studies/1", timeout=60_000)
        page.get_by_text("Best Trial").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # the plots draw
        path = browser.screenshot_dir() / "optuna_dashboard.png"
        page.screenshot(path=str(path))
        print(f"screenshot: {path}")
