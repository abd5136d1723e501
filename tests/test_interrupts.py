"""Signals during lmlab-train (lmlab.interrupts): SIGTERM, Ctrl-C and SIGUSR1 save a checkpoint
at the current step, write status.json as interrupted with that step, print how to continue
and exit with 128+signal; the same command then continues from that step and completes; a
second Ctrl-C quits at once; SIGUSR1 under SLURM requeues the job.

The CLI chain is real `lmlab-train experiment=quickstart` subprocesses (tiny model, the tiny
corpus); the signal arrives when the run prints a progress line, i.e. mid-training. The
re-run ends bit-identical to an uninterrupted run (weights hash, logged losses).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

SCRIPT = Path(sys.executable).parent / "lmlab-train"
# a 2-layer width-32 GPT (conftest.TINY_ARCH, which tests/bad_inputs/conftest.py shadows)
TINY_GPT = ["++model.config.n_embd=32", "++model.config.n_layer=2", "++model.config.n_head=2"]
STEP_LINE = re.compile(r"^epoch \d+\s+step (\d+)/")


def quickstart(corpus: Path, steps: int) -> list[str]:
    return [
        "experiment=quickstart",
        *TINY_GPT,
        "model.tokenizer.vocab_size=300",
        "data=files",
        f"data.train={corpus}",
        "data.max_length=32",
        "data.batch_size=4",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",
        "callbacks.progress.refresh_rate=1",  # a line per step: the test sees where it is
        "keep_checkpoints=true",  # the finished runs' weights are compared
    ]


@pytest.fixture
def env(tmp_path, lmlab_cache_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["LMLAB_OUTPUT_DIR"] = str(tmp_path / "outputs")
    env["LMLAB_CACHE_DIR"] = str(lmlab_cache_dir)
    return env


def start(args, env, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [str(SCRIPT), *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe: no deadlock on a full stderr
        text=True,
    )


def signal_at(proc: subprocess.Popen, signum: int, at_step: int) -> tuple[list[str], int]:
    """Sends `signum` once the run has printed step `at_step`; returns (all output lines,
    exit code)."""
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        match = STEP_LINE.match(line)
        if match and int(match.group(1)) >= at_step:
            proc.send_signal(signum)
            break
    rest, _ = proc.communicate(timeout=300)
    return lines + rest.splitlines(), proc.returncode


def steps_printed(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m]


def run_dir_of(outputs: Path) -> Path:
    (run_dir,) = [p for p in (outputs / "quickstart").iterdir() if p.is_dir()]
    return run_dir


def checkpoint_step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def check_interrupted(lines, code, signum, run_dir, args) -> int:
    """The interrupted run's exit code, status.json, checkpoint and continue line; returns
    the step it stopped at."""
    assert code == 128 + signum, "\n".join(lines[-30:])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    step = status["step"]
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == step
    assert step == max(steps_printed(lines))  # the step it was at, not an older checkpoint
    name = signal.Signals(signum).name
    (line,) = [x for x in lines if x.startswith("lmlab-train: interrupted")]
    assert f"interrupted by {name} at step {step}" in line
    assert line.endswith("to continue, run the same command: lmlab-train " + " ".join(args))
    assert "Traceback" not in "\n".join(lines)
    assert not (run_dir / "run.lock").exists()  # released
    return step


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_a_signal_saves_the_step_and_the_same_command_continues(
    tmp_path, env, tiny_text_file, signum
):
    args = quickstart(tiny_text_file, steps=20)
    first = start(args, env, tmp_path)
    lines, code = signal_at(first, signum, at_step=4)
    run_dir = run_dir_of(tmp_path / "outputs")
    stopped = check_interrupted(lines, code, signum, run_dir, args)
    assert 4 <= stopped < 20

    again = subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in lines
    assert min(steps_printed(lines)) == stopped + 1  # continued from the saved step
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 20

    # ... and exactly: the same weights and logged losses as the run never interrupted
    env = dict(env, LMLAB_OUTPUT_DIR=str(tmp_path / "uninterrupted"))
    whole = subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    outcome = load_benchmark().outcome
    assert outcome(run_dir) == outcome(run_dir_of(tmp_path / "uninterrupted"))


@pytest.mark.slow
def test_sigterm_then_ctrl_c_then_completion(tmp_path, env, tiny_text_file):
    """One run stopped twice (SIGTERM, then Ctrl-C), each re-run continuing where it stopped."""
    args = quickstart(tiny_text_file, steps=30)
    lines, code = signal_at(start(args, env, tmp_path), signal.SIGTERM, at_step=4)
    run_dir = run_dir_of(tmp_path / "outputs")
    stopped = check_interrupted(lines, code, signal.SIGTERM, run_dir, args)

    lines, code = signal_at(start(args, env, tmp_path), signal.SIGINT, at_step=stopped + 4)
    assert min(steps_printed(lines)) == stopped + 1
    again = check_interrupted(lines, code, signal.SIGINT, run_dir, args)
    assert stopped + 4 <= again < 30

    third = subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert min(steps_printed(third.stdout.splitlines())) == again + 1
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 30


# ---------------------------------------------------------------- in-process


class SignalAt:
    """A callback that sends this process `signum` as training batch `batch` starts."""

    def __new__(cls, batch: int, signum: int):
        from pytorch_lightning.callbacks import Callback

        class Sender(Callback):
            def on_train_batch_start(self, trainer, pl_module, data, batch_idx):
                if batch_idx == batch:
                    os.kill(os.getpid(), signum)

        return Sender()


def test_sigusr1_stops_a_python_run_with_its_checkpoint_and_status(
    tmp_path, tiny_text_file, lmlab_cache_dir, monkeypatch
):
    from lmlab.build import compose, train
    from lmlab.interrupts import Interrupted

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    for name in ("SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    overrides = quickstart(tiny_text_file, steps=20)
    overrides += [
        "trainer.accumulate_grad_batches=2",  # stops on a step, not inside an accumulation
        "+callbacks.signal._target_=test_interrupts.SignalAt",
        "+callbacks.signal.batch=10",  # the first half of step 6
        f"+callbacks.signal.signum={int(signal.SIGUSR1)}",
    ]
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted) as caught:
        train(compose(overrides, run_dir=str(run_dir)))
    error = caught.value
    assert (error.signum, error.step, error.exit_code, error.requeued) == (
        signal.SIGUSR1,
        6,
        138,
        None,
    )
    assert error.checkpoint == run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_step(error.checkpoint) == 6
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["step"]) == ("interrupted", 6)
    assert status["error"] == str(error)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers put back


# ---------------------------------------------------------------- the handler alone

SECOND_CTRL_C = """
import os, signal, sys, time
from omegaconf import OmegaConf
from lmlab.interrupts import SignalCatcher
cfg = OmegaConf.create({"paths": {"run_dir": sys.argv[1]}, "optimized_metric": None})
catcher = SignalCatcher(cfg)
catcher.install()
catcher.in_training = True  # the training loop: the first Ctrl-C only asks to stop
os.kill(os.getpid(), signal.SIGINT)
print("still running", flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("not reached", flush=True)
"""


def test_a_second_ctrl_c_quits_at_once(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SECOND_CTRL_C, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 130
    assert proc.stdout.splitlines() == ["still running"]
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("lmlab-train: SIGINT: stopping after this step")
    assert lines[-1].startswith("lmlab-train: interrupted by SIGINT at step 0")
    assert lines[-1].endswith("quit at once, without saving")
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["status"], status["step"]) == ("interrupted", 0)


def test_a_signal_outside_the_training_loop_stops_at_once(tmp_path):
    from omegaconf import OmegaConf

    from lmlab.interrupts import Interrupted, catch_signals

    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path)}, "optimized_metric": "val/loss"})
    with pytest.raises(Interrupted) as caught, catch_signals(cfg):
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the data is prepared
        raise AssertionError("not stopped")
    assert (caught.value.signum, caught.value.step, caught.value.checkpoint) == (15, 0, None)
    assert "no checkpoint yet, a re-run starts from step 0" in str(caught.value)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and status["optimized_metric"] == "val/loss"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigusr1_requeues_a_slurm_job(tmp_path, monkeypatch):
    from lmlab.interrupts import requeue_slurm_job

    calls = tmp_path / "calls"
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_slurm_job(None) == "4242"
    assert calls.read_text() == "requeue 4242\n"

    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: no requeue
    assert requeue_slurm_job(None) is None
    monkeypatch.delenv("SLURM_NTASKS")
    assert requeue_slurm_job(None) is None
    assert calls.read_text() == "requeue 4242\n"


def test_a_launcher_handler_runs_after_the_save(tmp_path):
    """submitit requeues its job on SIGUSR2: lmlab records the step first, then calls it."""
    from omegaconf import OmegaConf

    from lmlab.interrupts import Interrupted, catch_signals

    calls = []
    submitit_like = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path)}, "optimized_metric": None})
        with pytest.raises(Interrupted), catch_signals(cfg):
            os.kill(os.getpid(), signal.SIGUSR2)
        assert calls == [signal.SIGUSR2]
        assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    finally:
        signal.signal(signal.SIGUSR2, submitit_like)


@pytest.mark.slow
def test_sigterm_to_rank_zero_stops_every_process_of_a_ddp_run_at_one_step(
    tmp_path, env, tiny_text_file
):
    """Only rank zero gets the signal (kill PID); the other process learns it at the step's
    end, both save the checkpoint together, and only rank zero prints the continue line.
    (Resuming a DDP run mid-epoch is the resumable loader's business, not checked here.)"""
    args = [*quickstart(tiny_text_file, steps=20), "trainer=ddp", "trainer.devices=2"]
    lines, code = signal_at(start(args, env, tmp_path), signal.SIGTERM, at_step=4)
    run_dir = run_dir_of(tmp_path / "outputs")
    check_interrupted(lines, code, signal.SIGTERM, run_dir, args)
