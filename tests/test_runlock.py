"""One writer per run dir (lmlab.runlock): the same command started twice at once trains once,
the other exits with one line naming the process holding the run dir; a lock left by a dead
process is taken over; released at the end. Caches stay consistent when two runs prepare the
same data at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.runlock import LOCK_FILE, RunDirLocked, acquire, hold

SCRIPT = Path(sys.executable).parent / "lmlab-train"
# a 2-layer width-32 GPT (conftest.TINY_ARCH, which tests/bad_inputs/conftest.py shadows)
TINY_GPT = ["++model.config.n_embd=32", "++model.config.n_layer=2", "++model.config.n_head=2"]

HOLD = """
import sys, time
from lmlab.runlock import acquire
lock = acquire(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def holder_process(run_dir: Path, seconds: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_dir_is_refused_naming_pid_and_host(tmp_path):
    run_dir = tmp_path / "run"
    other = holder_process(run_dir)
    try:
        with pytest.raises(RunDirLocked) as caught:
            acquire(run_dir)
        line = str(caught.value)
        assert f"in use by process {other.pid} on host {socket.gethostname()}" in line
        assert str(run_dir / LOCK_FILE) in line and "\n" not in line
    finally:
        other.kill()
        other.wait()
    lock = acquire(run_dir)  # the holder is gone: the kernel released its lock
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": "yesterday"}
    (run_dir / LOCK_FILE).write_text(json.dumps(stale))
    with hold(run_dir):
        held = json.loads((run_dir / LOCK_FILE).read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
    assert not (run_dir / LOCK_FILE).exists()  # released and removed
    assert run_dir.is_dir()  # it was there before


def test_release_leaves_no_empty_run_dir_behind(tmp_path):
    run_dir = tmp_path / "fresh"
    with hold(run_dir):
        assert (run_dir / LOCK_FILE).is_file()
    assert not run_dir.exists()  # nothing was written in it
    with hold(run_dir):
        (run_dir / "status.json").write_text("{}")
    assert sorted(p.name for p in run_dir.iterdir()) == ["status.json"]


def test_other_ranks_do_not_lock(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with hold(run_dir):
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child shares rank zero's run dir
        with hold(run_dir) as lock:
            assert lock is None


def test_two_identical_commands_one_trains_the_other_exits_with_the_lock_line(
    tmp_path, tiny_text_file, lmlab_cache_dir
):
    env = dict(os.environ, OMP_NUM_THREADS="1", LMLAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    env["LMLAB_CACHE_DIR"] = str(lmlab_cache_dir)
    args = [
        "experiment=quickstart",
        *TINY_GPT,
        "model.tokenizer.vocab_size=300",
        f"data={tiny_text_file}",
        "data.max_length=32",
        "data.batch_size=4",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
    ]
    procs = [
        subprocess.Popen(
            [str(SCRIPT), *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [(*p.communicate(timeout=300), p.returncode, p.pid, time.monotonic()) for p in procs]
    (winner,) = [o for o in outputs if o[2] == 0]
    (loser,) = [o for o in outputs if o[2] != 0]
    assert loser[2] == 2, loser[1][-2000:]
    (line,) = loser[1].strip().splitlines()  # one line, no traceback
    assert line.startswith("lmlab-train: error: ")
    assert f"in use by process {winner[3]} on host {socket.gethostname()}" in line
    assert "the same command is already running" in line

    (run_dir,) = (tmp_path / "outputs" / "quickstart").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert not (run_dir / LOCK_FILE).exists()
    # completed: the export holds the weights, the checkpoints (resume state) are gone
    assert (run_dir / "export").is_dir() and not (run_dir / "checkpoints").exists()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows))  # one writer: no row twice


def test_two_runs_preparing_the_same_data_at_once_keep_one_consistent_cache(
    tmp_path, tiny_bpe, tiny_corpus
):
    """The race of two runs tokenizing one corpus: both find no cache entry, both
    preprocess, both save; the second save keeps the first one's folder (an atomic rename),
    and each run reads a complete dataset equal to its own."""
    import datasets
    from omegaconf import OmegaConf

    from lmlab.data.datamodule import DataModule
    from lmlab.objectives.clm import CausalLM
    from lmlab.tokenizers import with_pad_token

    tokenizer = with_pad_token(tiny_bpe)
    cfg = OmegaConf.create({"lr": 1e-3, "pack": True, "sample_prompt": None})
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": tiny_corpus})})

    def data_module(objective):
        data_cfg = OmegaConf.create({"batch_size": 2, "num_workers": 0})
        return DataModule(raw, "corpus-fp", objective, data_cfg, tmp_path / "cache")

    second_run = data_module(CausalLM(cfg, tokenizer, 16, seed=0))

    first_objective = CausalLM(cfg, tokenizer, 16, seed=0)
    preprocess = first_objective.preprocess

    def preprocess_slowly(split, name):
        out = preprocess(split, name)
        second_run.prepare_data()  # meanwhile the other run prepared and saved the same
        return out

    first_objective.preprocess = preprocess_slowly
    first_run = data_module(first_objective)
    assert first_run.cache_key() == second_run.cache_key()
    first_run.prepare_data()
    entry = tmp_path / "cache" / "datasets" / first_run.cache_key()
    assert sorted(p.name for p in entry.iterdir()) == ["train"]  # no half-written folder left
    assert first_run.splits["train"].to_dict() == second_run.splits["train"].to_dict()
    assert (
        datasets.load_from_disk(str(entry / "train")).to_dict()
        == first_run.splits["train"].to_dict()
    )
