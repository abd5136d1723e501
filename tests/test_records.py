"""Tests for lmlab.records (status.json, a sweep's jobs, what tells them apart) and the atomic
writer it uses (lmlab.fileutil), on hand-made files."""

import json

import pytest
from omegaconf import OmegaConf

from lmlab import records
from lmlab.errors import LmlabError
from lmlab.fileutil import write_file, write_new


def test_status_json_keeps_its_field_order_and_leaves_no_temp_file(tmp_path):
    run_dir = tmp_path / "run"
    record = records.status_record("ValueError: bad lr", "val/loss", None, ["objective.lr=-1"])
    records.write_status(run_dir, record)
    text = (run_dir / "status.json").read_text()
    assert list(json.loads(text)) == ["status", "error", "optimized_metric", "value", "overrides"]
    assert text == json.dumps(record, indent=2) + "\n"
    assert records.read_status(run_dir) == record and record["status"] == records.FAILED
    assert records.status_record(None, None, 0.5, [])["status"] == records.COMPLETED
    assert [p.name for p in run_dir.iterdir()] == ["status.json"]


def test_a_status_json_cut_short_is_an_error_naming_the_file(tmp_path):
    assert records.read_status(tmp_path) is None
    (tmp_path / "status.json").write_text('{"status": "comp')
    with pytest.raises(LmlabError, match=r"status.json:1: not valid JSON"):
        records.read_status(tmp_path)


def test_job_dirs_are_the_numbered_dirs_by_number(tmp_path):
    for name in ("10", "2", ".submitit", "multirun.yaml"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file, not a job")
    assert [d.name for d in records.job_dirs(tmp_path)] == ["2", "10"]
    (tmp_path / "2" / "status.json").write_text('{"status": "completed"}')
    assert records.read_statuses(tmp_path) == {2: {"status": "completed"}, 10: None}


def test_varying_overrides_are_what_tells_the_jobs_apart():
    jobs = {0: ["data=x", "lr=1", "seed=1"], 1: ["data=x", "lr=2", "seed=1", "+extra=a"]}
    assert records.varying_keys(jobs.values()) == ["lr", "extra"]  # unset in job 0 counts
    assert records.varying_overrides(jobs) == {0: ["lr=1"], 1: ["lr=2", "+extra=a"]}
    assert records.varying_overrides({0: ["lr=1"]}) == {0: ["lr=1"]}  # a lone job: all of them
    assert records.override_values(["++a.b=1", "~c"]) == {"a.b": "1", "c": ""}


def test_swept_keys_come_from_the_sweeper_params_and_the_command_line(tmp_path):
    task = ["debug=default", "objective.lr=1e-4,1e-3", "+seed=range(3)"]
    OmegaConf.save({"hydra": {"overrides": {"task": task}}}, tmp_path / "multirun.yaml")
    assert records.swept_keys(tmp_path, ["objective.warmup_ratio"]) == {
        "objective.lr",
        "seed",
        "objective.warmup_ratio",
    }
    job = ["debug=default", "objective.lr=0.001", "+seed=2"]
    assert records.overrides_of(job, {"objective.lr", "seed"}) == job[1:]


def test_write_file_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_file(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_write_new_keeps_the_first_file(tmp_path):
    path = tmp_path / "tracking_id"
    assert write_new(path, "first\n") and not write_new(path, "second\n")
    assert path.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "overrides, fresh",
    [
        (["objective.lr=1e-3,3e-3"], False),
        (["+fresh=true", "seed=1"], True),
        (["++fresh=True"], True),
        (["fresh='yes'"], True),
        (["+fresh=false"], False),
        (["+refresh=true"], False),  # another key
    ],
)
def test_a_sweep_command_asks_for_a_fresh_sweep_with_fresh_true(overrides, fresh):
    assert records.is_fresh(overrides) is fresh
