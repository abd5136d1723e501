"""Signals during a training: SIGTERM (kill, a scheduler's stop), SIGINT (Ctrl-C) and SIGUSR1
(SLURM's warning before a pre-emption or the time limit, `#SBATCH --signal=USR1@90`) stop the
run at the end of the current optimizer step, with a checkpoint of that step where a re-run of
the same command resumes (<run dir>/checkpoints/last.ckpt) and status.json saying
`interrupted` at that step; lmlab-train then prints how to continue and exits with 128+signal.
A second Ctrl-C (or SIGTERM) exits at once. Under SLURM with auto-requeue (Lightning's
SLURMEnvironment, on by default), SIGUSR1 also requeues the job, which continues the run.

A signal outside the training loop (data preparation, the final validation and export) stops
the run at once, as Ctrl-C would; the checkpoint a re-run resumes from is then the last one
saved. Lightning's own SIGTERM handling (which ends fit() with exit code 0 and no checkpoint)
and its SLURM handler (which saves an hpc_ckpt that lmlab's re-run would not read) are
replaced by this for the whole run.

Used by lmlab.run.train: `with catch_signals(cfg) as signals: ... signals.watch(trainer)`.
Imports no torch at import time: lmlab-train catches `Interrupted` at start-up.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmlab import records

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # what a re-run resumes from (run.py)


class Interrupted(BaseException):
    """Raised out of lmlab.run.train when a signal stopped the run. Not an Exception: a
    sweep job that is interrupted stops the sweep, and nobody records it as failed."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, saved: bool):
        super().__init__(signum, step, checkpoint, saved)
        self.signum, self.step, self.checkpoint, self.saved = signum, step, checkpoint, saved
        self.requeued: str | None = None  # the SLURM job id, when it was requeued

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            where = "no checkpoint yet, a re-run starts from step 0"
        else:
            verb = "saved" if self.saved else "the last one saved"
            where = f"checkpoint at step {self.step} {verb}: {self.checkpoint}"
        requeued = f"; SLURM job {self.requeued} requeued" if self.requeued else ""
        return f"interrupted by {name} at step {self.step} ({where}){requeued}"


def continue_line(error: Interrupted, argv: list[str]) -> str:
    """The one line lmlab-train prints: what happened and the command that continues."""
    command = shlex.join([Path(argv[0]).name, *argv[1:]])
    if error.requeued:
        return f"lmlab-train: {error}; it continues from there (or run: {command})"
    return f"lmlab-train: {error}; to continue, run the same command: {command}"


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (memory-mapped: reads little)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("global_step", 0))


class SignalCatcher:
    """The handler of SIGNALS for one run: remembers the first signal; while the training
    loop runs (StopAtStep says when) the run stops at the next step's end, elsewhere at once."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.paths.run_dir)
        self.pid = os.getpid()  # forked data loader workers inherit the handler and ignore it
        self.signum: int | None = None
        self.in_training = False
        self.trainer = None
        self.saved: tuple[int, Path] | None = None  # (step, path) of the checkpoint saved here
        # submitit (hydra/launcher=submitit_slurm) requeues a job on SIGUSR2: saved here first
        launcher_signal = callable(signal.getsignal(signal.SIGUSR2))
        self.signals = SIGNALS + ((signal.SIGUSR2,) if launcher_signal else ())

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:
            return
        if self.signum is not None:  # a second Ctrl-C (or SIGTERM): out at once
            if signum in (signal.SIGINT, signal.SIGTERM):
                self.exit_now(signum)
            return
        self.signum = signum
        if not self.in_training:
            raise self.interrupted()
        again = "Ctrl-C again: quit at once" if signum == signal.SIGINT else "saving"
        name = signal.Signals(signum).name
        _say(f"lmlab-train: {name}: stopping after this step to save a checkpoint ({again})")

    def exit_now(self, signum: int) -> None:
        """Exits without saving; status.json says interrupted at the last checkpoint saved."""
        error = self.interrupted(signum)
        with contextlib.suppress(Exception):
            self.record(error)
        _say(f"lmlab-train: {error}; quit at once, without saving")
        os._exit(128 + signum)

    def interrupted(self, signum: int | None = None) -> Interrupted:
        """The Interrupted error for the checkpoint a re-run would resume from."""
        signum = signum or self.signum or signal.SIGINT
        if self.saved is not None:
            return Interrupted(signum, *self.saved, saved=True)
        last = self.run_dir / LAST_CHECKPOINT
        if last.is_file():
            return Interrupted(signum, checkpoint_step(last), last, saved=False)
        return Interrupted(signum, 0, None, saved=False)

    def save(self, trainer) -> None:
        """The checkpoint of this step where a re-run resumes (written atomically by the
        Trainer's checkpoint IO), on every process of the run (rank zero writes it)."""
        path = self.run_dir / LAST_CHECKPOINT
        trainer.save_checkpoint(str(path))
        self.saved = (trainer.global_step, path)

    def record(self, error: Interrupted) -> None:
        """status.json: interrupted, with the step a re-run continues from (rank zero only)."""
        from lmlab.sweeps import is_rank_zero

        if not is_rank_zero():
            return
        overrides: list[str] = []
        with contextlib.suppress(Exception):
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                overrides = list(HydraConfig.get().overrides.task)
        metric = OmegaConf.select(self.cfg, "optimized_metric", default=None)
        record = records.status_record(str(error), metric, None, overrides)
        record |= {"status": records.INTERRUPTED, "step": error.step}
        records.write_status(self.run_dir, record)

    def watch(self, trainer) -> None:
        """Adds StopAtStep to `trainer` (last, after the checkpoint callbacks)."""
        self.trainer = trainer
        trainer.callbacks.append(stop_at_step(self))

    def install(self) -> dict:
        """Installs the handler (main thread only); returns the previous handlers."""
        return {signum: signal.signal(signum, self.handle) for signum in self.signals}


def _say(line: str) -> None:
    """A line on stderr, safe inside a signal handler (no buffered IO)."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        os.write(2, (line + "\n").encode())


@contextlib.contextmanager
def catch_signals(cfg: DictConfig):
    """SIGTERM, SIGINT and SIGUSR1 stop the run as the module says; an Interrupted leaving
    the block has been recorded in status.json (and the SLURM job requeued on SIGUSR1)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield None  # Python lets only the main thread handle signals
        return
    catcher = SignalCatcher(cfg)
    previous = catcher.install()
    try:
        yield catcher
    except Interrupted as error:
        catcher.in_training = False
        catcher.record(error)
        if error.signum == signal.SIGUSR1:
            error.requeued = requeue_slurm_job(catcher.trainer)
        chain(previous.get(error.signum), error.signum)  # e.g. submitit's requeue
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def chain(handler, signum: int) -> None:
    """Calls the handler a launcher had put in for `signum` (submitit: requeue the job and
    exit), now that the checkpoint is saved; not Python's Ctrl-C (KeyboardInterrupt)."""
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)


def requeue_slurm_job(trainer) -> str | None:
    """Requeues this SLURM job as Lightning's auto-requeue does (`scontrol requeue`), when
    the run is a SLURM job and auto-requeue is on; returns the job id, None otherwise."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    from lmlab.sweeps import is_rank_zero

    connector = getattr(trainer, "_accelerator_connector", None)
    environment = getattr(connector, "cluster_environment", None)
    if environment is None and SLURMEnvironment.detect():
        environment = SLURMEnvironment()
    if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
        return None
    if not is_rank_zero():
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else None
    job = job or os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        _say("lmlab-train: cannot requeue the SLURM job: no scontrol on this machine")
        return None
    return job if result == 0 else None


def _stop_decision(trainer, stop: bool) -> bool:
    """Whether any process of the run received a signal (every process must take part)."""
    if trainer.world_size > 1:
        return trainer.strategy.reduce_boolean_decision(stop, all=False)
    return stop


def stop_at_step(catcher: SignalCatcher):
    """A StopAtStep callback for `catcher` (the class is made on first use: importing this
    module imports no Lightning)."""
    return _stop_at_step_class()(catcher)


@functools.cache
def _stop_at_step_class():
    from pytorch_lightning.callbacks import Callback

    class StopAtStep(Callback):
        """Saves the checkpoint and stops the run at the end of the first optimizer step
        after a signal (never inside a gradient accumulation); also at the end of the
        training loop, when the signal came during its last validation."""

        def __init__(self, catcher: SignalCatcher):
            self.catcher = catcher
            self.step = 0

        def on_train_start(self, trainer, pl_module) -> None:
            # after Lightning's SignalConnector has put in its handlers (for SIGTERM: fit()
            # ends, exit code 0, no checkpoint); its teardown puts ours back afterwards
            self.catcher.install()
            self.catcher.in_training = True
            self.step = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == self.step:  # inside a gradient accumulation
                return
            self.step = trainer.global_step
            if _stop_decision(trainer, self.catcher.signum is not None):
                self._stop(trainer)

        def on_train_end(self, trainer, pl_module) -> None:
            if _stop_decision(trainer, self.catcher.signum is not None):
                self._stop(trainer)
            self.catcher.in_training = False

        def _stop(self, trainer) -> None:
            self.catcher.in_training = False
            self.catcher.signum = self.catcher.signum or signal.SIGTERM  # another rank's
            self.catcher.save(trainer)
            raise self.catcher.interrupted()

    return StopAtStep
