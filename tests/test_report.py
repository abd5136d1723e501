"""lmlab-report on hand-made sweep dirs: row order, swept columns, best overrides, plots."""

import csv
import json

import pytest
import yaml

from lmlab.cli.report import main
from lmlab.report import (
    Target,
    best_job,
    choose_target,
    curves_figure,
    guess_mode,
    params_figure,
    rank,
    read_jobs,
    report,
)

# Three jobs: 0 and 1 completed (job 1 has the lowest val/loss, job 0 the lowest val/accuracy),
# 2 failed before logging anything. `experiment` is the same everywhere: not a swept column.
JOBS = {
    0: [
        "experiment=finetune_sentiment",
        "model=bert_tiny",
        "objective.lr=1e-5",
        "data.batch_size=16",
    ],
    1: [
        "experiment=finetune_sentiment",
        "model=gpt_tiny",
        "objective.lr=1e-3",
        "data.batch_size=32",
    ],
    2: [
        "experiment=finetune_sentiment",
        "model=bert_tiny",
        "objective.lr=1e-4",
        "data.batch_size=16",
    ],
}
CURVES = {  # step -> (val/loss, val/accuracy)
    0: {0: (0.9, 0.5), 5: (0.8, 0.55), 10: (0.7, 0.6)},
    1: {0: (0.9, 0.5), 5: (0.6, 0.65), 10: (0.5, 0.7)},
}
ERROR = "RuntimeError: CUDA out of memory | at step 3"
CONFIG = {
    "optimized_metric": "val/loss",
    "objective": {"monitor": "val/loss", "monitor_mode": "min"},
}
PARAMS = ["model", "objective.lr", "data.batch_size"]


def write_metrics_csv(path, curve):
    """As Lightning's CSV logger writes it: one row per logging call, other cells empty."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss", "val/accuracy", "val/loss"])
        for step, (loss, accuracy) in curve.items():
            if step:
                writer.writerow([0, step - 1, loss + 0.1, "", ""])
            writer.writerow([0, step, "", accuracy, loss])


def write_job(sweep, num, overrides, status=None, curve=None, final=True):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    if curve:
        write_metrics_csv(job / "metrics.csv", curve)
    if curve and final:
        last_step = max(curve)
        loss, accuracy = curve[last_step]
        metrics = {"val/loss": loss, "val/accuracy": accuracy, "global_step": last_step}
        metrics |= {"export": str(job / "export"), "val/confusion_matrix": {"matrix": [[1]]}}
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status:
        record = {"status": status, "error": ERROR if status == "failed" else None}
        record |= {"optimized_metric": "val/loss", "overrides": overrides}
        record["value"] = curve[max(curve)][0] if curve else None
        if status == "pruned":  # as lmlab.pruning leaves it: the step the pruner stopped at
            record["step"] = max(curve)
        (job / "status.json").write_text(json.dumps(record))
    return job


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "multirun" / "finetune" / "2025-01-01_00-00-00-abcd"
    write_job(sweep, 0, JOBS[0], "completed", CURVES[0])
    write_job(sweep, 1, JOBS[1], "completed", CURVES[1])
    write_job(sweep, 2, JOBS[2], "failed")
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {}}}))
    return sweep


def read_report_csv(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_report_table_best_and_files(sweep, capsys):
    main([str(sweep)])
    printed = capsys.readouterr().out

    rows = read_report_csv(sweep / "report.csv")
    header = ["job", "status", *PARAMS, "val/loss", "val/accuracy", "global_step", "error"]
    assert rows == [
        header,
        ["1", "completed", "gpt_tiny", "1e-3", "32", "0.5", "0.7", "10", ""],
        ["0", "completed", "bert_tiny", "1e-5", "16", "0.7", "0.6", "10", ""],
        ["2", "failed", "bert_tiny", "1e-4", "16", "", "", "", ERROR],
    ]
    md = (sweep / "report.md").read_text()
    assert "sorted by val/loss (min; from optimized_metric, objective.monitor_mode)" in md
    assert "| 1 | completed | gpt_tiny | 1e-3 | 32 | 0.5 | 0.7 | 10 |  |" in md
    escaped_error = "RuntimeError: CUDA out of memory \\| at step 3"
    assert f"| 2 | failed | bert_tiny | 1e-4 | 16 |  |  |  | {escaped_error} |" in md
    command = "lmlab-train " + " ".join(JOBS[1])
    best_line = "Best: job 1 (val/loss = 0.5): model=gpt_tiny objective.lr=1e-3 data.batch_size=32."
    assert best_line in md and command in md
    assert "![curves](curves.png)" in md and "![params](params.png)" in md
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best == {
        "job": 1, "status": "completed", "metric": "val/loss", "mode": "min", "value": 0.5,
        "overrides": JOBS[1], "command": command,
    }  # fmt: skip
    assert "| 0 | completed | bert_tiny | 1e-5 | 16 | 0.7 |" in printed and command in printed
    for name in ("report.csv", "report.md", "best.yaml", "curves.png", "params.png"):
        assert str(sweep / name) in printed
    assert not [p for p in sweep.iterdir() if ".tmp" in p.name]  # no temp file left behind

    import matplotlib.image

    for name in ("curves.png", "params.png"):
        height, width, channels = matplotlib.image.imread(sweep / name).shape
        assert height > 300 and width > 300 and channels in (3, 4)


def ranking(sweep, metric=None, mode=None):
    jobs = read_jobs(sweep)
    objective = choose_target(sweep, jobs, metric, mode)
    ranked = rank(jobs, objective)
    return objective, [job.num for job in ranked], best_job(ranked, objective).num


def test_direction_from_mode_flag_and_optuna(sweep):
    assert ranking(sweep, mode="max")[1:] == ([0, 1, 2], 0)  # failed jobs stay last

    optuna = {"_target_": "hydra_plugins.lmlab_optuna_sweeper.sweeper.LmlabOptunaSweeper"}
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"sweeper": optuna | {"direction": "maximize"}}})
    )
    source = "optimized_metric, the Optuna sweeper's direction"
    assert ranking(sweep) == (Target("val/loss", "max", source), [0, 1, 2], 0)
    assert ranking(sweep, mode="min")[1:] == ([1, 0, 2], 1)  # --mode wins


def test_metric_flag_and_out_dir(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(sweep), "--metric", "val/accuracy", "--out", str(out)])
    assert (
        "sorted by val/accuracy (max; from --metric, guessed from the name"
        in capsys.readouterr().out
    )
    rows = read_report_csv(out / "report.csv")
    assert [row[0] for row in rows] == ["job", "1", "0", "2"]
    assert rows[0][5:8] == ["val/accuracy", "val/loss", "global_step"]
    assert not (sweep / "report.csv").exists()  # --out leaves the sweep dir untouched


def test_curves_one_line_per_logged_job_and_params_axes(sweep):
    jobs = read_jobs(sweep)
    by_loss = Target("val/loss", "min", "test")
    (ax,) = curves_figure(jobs, PARAMS, by_loss).axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == [
        "0: model=bert_tiny, lr=1e-5, batch_size=16",
        "1: model=gpt_tiny, lr=1e-3, batch_size=32",
    ]
    assert list(lines[1].get_xdata()) == [0, 5, 10]
    assert list(lines[1].get_ydata()) == [0.9, 0.6, 0.5]

    by_accuracy = Target("val/accuracy", "max", "test")
    axes = curves_figure(jobs, PARAMS, by_accuracy).axes
    assert [ax.get_ylabel() for ax in axes] == ["val/accuracy", "val/loss"]
    assert [len(ax.get_lines()) for ax in axes] == [2, 2]

    model_ax, lr_ax, batch_ax = params_figure(jobs, PARAMS, by_loss).axes
    assert [t.get_text() for t in model_ax.get_xticklabels()] == ["bert_tiny", "gpt_tiny"]
    assert lr_ax.get_xscale() == "log"  # 1e-5 .. 1e-3: two decades
    assert batch_ax.get_xscale() == "linear"
    points = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in lr_ax.get_lines())
    assert points == [(1e-5, 0.7), (1e-3, 0.5)]  # the failed job has no point


def test_unfinished_job_uses_last_logged_values_and_never_wins(sweep):
    # Killed at step 5 with the best val/loss so far: no status.json, no metrics.json
    overrides = [*JOBS[0][:3], "data.batch_size=8"]
    write_job(sweep, 3, overrides, curve={0: (0.4, 0.5), 5: (0.3, 0.9)}, final=False)
    result = report(sweep)
    assert [job.num for job in result["jobs"]] == [1, 0, 3, 2]
    assert result["best"].num == 1
    row = read_report_csv(sweep / "report.csv")[3]
    assert row[:8] == ["3", "incomplete", "bert_tiny", "1e-5", "8", "0.3", "0.9", "5"]
    assert "still running, or killed" in row[8]


PRUNED_JOB = [*JOBS[0][:3], "data.batch_size=4"]  # stopped at step 5 with the lowest val/loss
PRUNED_CURVE = {0: (0.9, 0.5), 5: (0.3, 0.8)}


def test_a_pruned_trial_shows_its_status_and_never_beats_a_completed_one(sweep, capsys):
    write_job(sweep, 3, PRUNED_JOB, "pruned", PRUNED_CURVE)
    main([str(sweep)])
    printed = capsys.readouterr().out

    rows = read_report_csv(sweep / "report.csv")
    assert [row[:2] for row in rows[1:]] == [
        ["1", "completed"], ["0", "completed"], ["3", "pruned"], ["2", "failed"]
    ]  # fmt: skip
    assert rows[3] == ["3", "pruned", "bert_tiny", "1e-5", "4", "0.3", "0.8", "5",
                       "stopped by the pruner at step 5"]  # fmt: skip
    assert "4 jobs (2 completed, 1 pruned, 1 failed)" in printed
    assert "Best: job 1 (val/loss = 0.5)" in printed
    assert yaml.safe_load((sweep / "best.yaml").read_text())["job"] == 1


def test_a_pruned_trial_is_best_only_when_no_job_completed(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, JOBS[0], "failed")
    write_job(sweep, 1, PRUNED_JOB, "pruned", PRUNED_CURVE)
    result = report(sweep)
    assert (result["best"].num, result["best"].status) == (1, "pruned")
    md = (sweep / "report.md").read_text()
    assert (
        "Best: job 1 (val/loss = 0.3; stopped by the pruner at step 5: no completed job has a "
        "value): data.batch_size=4." in md
    )
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert (best["job"], best["status"], best["value"]) == (1, "pruned", 0.3)


def test_not_a_sweep_dir_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "0").mkdir()  # numbered, but no .hydra/overrides.yaml
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lmlab-report: error: {tmp_path}: neither a run dir (holding metrics.json, metrics.csv, "
        "status.json or config.yaml) nor a sweep dir (numbered job dirs holding "
        ".hydra/overrides.yaml, e.g. outputs/multirun/<name>/<hash>)"
    )
    assert not (tmp_path / "report.md").exists()


def test_unknown_metric_names_the_available_ones(sweep, capsys):
    with pytest.raises(SystemExit):
        main([str(sweep), "--metric", "val/f1"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmlab-report: error: --metric: 'val/f1' is in no job's metrics")
    assert "val/accuracy" in err and "\n" not in err


def test_sweep_where_every_job_failed_still_reports_them(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, JOBS[0], "failed")
    write_job(sweep, 1, JOBS[1], "failed")
    result = report(sweep)
    assert result["best"] is None and not (sweep / "best.yaml").exists()
    rows = read_report_csv(sweep / "report.csv")
    assert [(row[0], row[1], row[-1]) for row in rows[1:]] == [
        ("0", "failed", ERROR),
        ("1", "failed", ERROR),
    ]
    assert "no best job" in (sweep / "report.md").read_text()
    assert (sweep / "curves.png").exists() and not (sweep / "params.png").exists()  # no points


def test_direction_guessed_from_the_metric_name():
    names = ("val/mlm_loss", "test/wer", "val/answer_f1", "val/accuracy")
    assert [guess_mode(name) for name in names] == ["min", "min", "max", "max"]


def test_a_half_finished_sweep_is_reported(tmp_path, capsys):
    """As a crash leaves a sweep: one job completed, one interrupted by a signal (status.json
    says at which step), one killed mid-write (metrics.csv cut mid-row, status.json cut
    short), one just started (only Hydra's files), the rest not started at all."""
    sweep = tmp_path / "multirun" / "finetune" / "0a1b2c3d"
    write_job(sweep, 0, JOBS[0], "completed", CURVES[0])
    interrupted = write_job(sweep, 1, JOBS[1], curve=CURVES[1], final=False)
    record = {"status": "interrupted", "error": "interrupted by SIGTERM at step 10 (...)"}
    record |= {"optimized_metric": "val/loss", "value": None, "overrides": JOBS[1], "step": 10}
    (interrupted / "status.json").write_text(json.dumps(record))
    killed = write_job(sweep, 2, JOBS[2], curve={0: (0.95, 0.4), 5: (0.85, 0.45)}, final=False)
    with (killed / "metrics.csv").open("a") as f:
        f.write("0,6,0.8")  # the row being written when the process died
    (killed / "status.json").write_text('{"status": "comp')
    write_job(sweep, 3, [*JOBS[0][:3], "data.batch_size=8"])  # started, nothing logged yet

    assert main([str(sweep)]) in (None, 0)
    result = report(sweep)
    assert [job.num for job in result["jobs"]] == [0, 1, 2, 3]
    assert [job.status for job in result["jobs"]] == ["completed"] + ["incomplete"] * 3
    assert result["best"].num == 0  # partial values of unfinished jobs do not compete
    rows = {row[0]: row for row in read_report_csv(sweep / "report.csv")[1:]}
    assert rows["1"][-1] == "interrupted by SIGTERM at step 10 (...)"
    assert rows["1"][5] == "0.5"  # the last val/loss it logged
    assert "not valid JSON" in rows["2"][-1] and rows["2"][5] == "0.85"
    assert "still running, or killed" in rows["3"][-1]
    assert (sweep / "report.md").is_file() and (sweep / "best.yaml").is_file()


def test_config_values_are_read_as_written_and_never_resolved(tmp_path):
    """A sweep dir is data: a ${...} in a job's config.yaml runs no resolver (lmlab's
    package_model imports a package), and the next file's plain value is used instead."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lmlab.report.jobs import job_config_value

    calls = []
    OmegaConf.register_new_resolver("lmlab_test_probe", lambda x: calls.append(x) or x)
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "config.yaml").write_text("objective:\n  monitor: ${lmlab_test_probe:val/x}\n")
    (job / ".hydra" / "config.yaml").write_text("objective:\n  monitor: val/loss\n")
    assert job_config_value([SimpleNamespace(path=job)], "objective.monitor") == "val/loss"
    assert job_config_value([SimpleNamespace(path=job)], "objective.nope") is None
    assert calls == []


# ---------------------------------------------------------------- seed groups, runs side by side

# val/accuracy of `objective.lr=<lr> seed=<seed>`: lr 3e-4 is better on every seed
SEEDED = {("1e-4", "1"): 0.80, ("1e-4", "2"): 0.84, ("1e-4", "3"): 0.82,
          ("3e-4", "1"): 0.86, ("3e-4", "2"): 0.90, ("3e-4", "3"): 0.88}  # fmt: skip
SEED_CONFIG = {"optimized_metric": "val/accuracy", "objective": {"monitor_mode": "max"}}


def write_seeded(root, values, status="completed"):
    """A finished job or run dir with a known final val/accuracy."""
    for num, ((lr, seed), accuracy) in enumerate(values.items()):
        overrides = ["experiment=finetune_sentiment", f"objective.lr={lr}", f"seed={seed}"]
        job = write_job(root, num, overrides, status)
        (job / "config.yaml").write_text(yaml.safe_dump(SEED_CONFIG))
        if status == "completed":
            (job / "metrics.json").write_text(json.dumps({"val/accuracy": accuracy}))
    return root


def test_jobs_differing_only_in_seed_form_one_row_with_mean_std_n(tmp_path, capsys):
    sweep = write_seeded(tmp_path / "sweep", SEEDED)
    write_job(sweep, 6, ["experiment=finetune_sentiment", "objective.lr=3e-4", "seed=4"], "failed")
    result = report(sweep)
    best, worse = result["groups"]
    assert [job.num for job in best.jobs] == [3, 4, 5, 6]  # in seed order
    assert best.mean("val/accuracy") == pytest.approx(0.88)
    assert best.std("val/accuracy") == pytest.approx(0.02)  # sample std (ddof=1) of .86 .90 .88
    assert len(best.values("val/accuracy")) == 3  # the failed seed does not count
    assert worse.mean("val/accuracy") == pytest.approx(0.82)

    rows = read_report_csv(sweep / "groups.csv")
    assert rows[0] == ["jobs", "seeds", "n", "objective.lr", "val/accuracy",
                       "val/accuracy std (ddof=1)", "status"]  # fmt: skip
    assert rows[1][:4] == ["3 4 5 6", "1 2 3 4", "3", "3e-4"]
    assert float(rows[1][4]) == pytest.approx(0.88) and float(rows[1][5]) == pytest.approx(0.02)
    assert rows[1][6] == "3 completed, 1 failed"
    assert rows[2][:4] == ["0 1 2", "1 2 3", "3", "1e-4"]
    assert len(read_report_csv(sweep / "report.csv")) == 8  # one row per job stays

    md = (sweep / "report.md").read_text()
    assert "mean ± sample standard deviation (ddof=1)" in md
    assert "| 3 4 5 6 | 1 2 3 4 | 3 | 3e-4 | 0.88 ± 0.02 | 3 completed, 1 failed |" in md
    command = "lmlab-train -m experiment=finetune_sentiment objective.lr=3e-4 seed=1,2,3,4"
    assert "Best setting: jobs 3 4 5 6 (val/accuracy = 0.88 ± 0.02, n=3)" in md and command in md
    best_record = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best_record["job"] == 4 and best_record["best_group"]["n"] == 3
    assert best_record["best_group"]["command"] == command
    assert best_record["best_group"]["std"] == pytest.approx(0.02)

    main([str(sweep)])
    printed = capsys.readouterr().out
    assert "| 0 1 2 | 1 2 3 | 3 | 1e-4 | 0.82 ± 0.02 | 3 completed |" in printed

    drawn = (result[k] for k in ("jobs", "params", "target", "groups"))
    lr_ax, seed_ax = params_figure(*drawn).axes
    group_points = [line for line in lr_ax.get_lines() if line.get_marker() == "s"]
    assert sorted(line.get_ydata()[0] for line in group_points) == pytest.approx([0.82, 0.88])
    assert not [line for line in seed_ax.get_lines() if line.get_marker() == "s"]


def test_report_curves_one_colour_and_legend_entry_per_seed_group(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (lr, seed) in enumerate([("1e-4", 1), ("1e-4", 2), ("3e-4", 1), ("3e-4", 2)]):
        write_job(sweep, num, [f"objective.lr={lr}", f"seed={seed}"], "completed", CURVES[num % 2])
    result = report(sweep)
    fig = curves_figure(*(result[k] for k in ("jobs", "params", "target", "groups")))
    colours = {}
    for job, line in zip(result["jobs"], fig.axes[0].get_lines()):
        colours.setdefault(job.override_values()["objective.lr"], set()).add(line.get_color())
    assert [len(c) for c in colours.values()] == [1, 1] and colours["1e-4"] != colours["3e-4"]
    (legend,) = fig.legends
    assert sorted(t.get_text() for t in legend.get_texts()) == [
        "lr=1e-4 (seeds 1 2)",
        "lr=3e-4 (seeds 1 2)",
    ]


def test_a_seed_only_sweep_is_one_group_and_a_lone_seed_has_no_std(tmp_path):
    six_seeds = {("1e-4", str(seed)): v for seed, v in enumerate(SEEDED.values())}
    sweep = write_seeded(tmp_path / "sweep", six_seeds)
    (group,) = report(sweep)["groups"]  # lr the same everywhere: only seed varies
    assert group.mean("val/accuracy") == pytest.approx(sum(SEEDED.values()) / 6)

    uneven = write_seeded(tmp_path / "uneven", {("1e-4", "1"): 0.8, ("1e-4", "2"): 0.9,
                                                ("3e-4", "1"): 0.7})  # fmt: skip
    result = report(uneven)
    assert [(g.mean("val/accuracy"), g.std("val/accuracy")) for g in result["groups"]] == [
        (pytest.approx(0.85), pytest.approx(0.0707107)),
        (0.7, None),
    ]
    assert "| 2 | 1 | 1 | 3e-4 | 0.7 | 1 completed |" in (uneven / "report.md").read_text()

    no_seed = write_seeded(tmp_path / "no_seed", {("1e-4", "1"): 0.8, ("3e-4", "1"): 0.9})
    assert report(no_seed)["groups"] is None and not (no_seed / "groups.csv").exists()


def test_run_dirs_side_by_side(tmp_path, capsys):
    """Runs that are not a sweep: named by their paths, grouped by seed, files only with --out."""
    runs = write_seeded(tmp_path / "outputs" / "finetune_sentiment", SEEDED)
    dirs = [runs / str(num) for num in range(6)]
    (dirs[5] / ".hydra" / "overrides.yaml").unlink()  # started from Python: status.json's copy
    overrides = ["experiment=finetune_sentiment", "objective.lr=3e-4", "seed=3"]
    record = {"status": "completed", "overrides": overrides}
    (dirs[5] / "status.json").write_text(json.dumps(record))

    main([str(d) for d in dirs])
    printed = capsys.readouterr().out
    assert "| 3 4 5 | 1 2 3 | 3 | 3e-4 | 0.88 ± 0.02 | 3 completed |" in printed
    assert "--out DIR writes report.md" in printed
    assert not list(tmp_path.rglob("report.md"))  # a run's own files are never replaced

    out = tmp_path / "compare"
    result = report([dirs[0], dirs[4]], out=out)
    assert [job.label for job in result["jobs"]] == ["4", "0"]  # relative to their shared dir
    assert result["groups"] is None  # lr and seed both differ: no two share a setting
    assert read_report_csv(out / "report.csv")[1][:4] == ["4", "completed", "3e-4", "2"]
    assert (out / "report.md").read_text().startswith("# Runs side by side")

    with pytest.raises(SystemExit):
        main([str(dirs[0]), str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert err.startswith(f"lmlab-report: error: {tmp_path / 'nope'}: not a directory")
    with pytest.raises(SystemExit):
        main([str(dirs[0]), str(dirs[0])])
    assert capsys.readouterr().err.startswith(f"lmlab-report: error: {dirs[0]}: the same run dir")
