"""Checkpoints a run can resume from exactly (see docs/resuming.md).

- `rng_states` / `set_rng_states`: every global RNG (Python, NumPy, torch, CUDA) as plain
  tensors and ints, so that checkpoints still load with torch.load(weights_only=True);
  TaskModule puts them in every checkpoint and restores them when training starts again.
- `AtomicCheckpointIO`: a checkpoint is written to a temporary name and renamed, so a kill
  during the write leaves the previous file (last.ckpt) whole.
- `LastCheckpoint`: Lightning's ModelCheckpoint that saves every N steps and/or every M
  minutes (Lightning's own takes one or the other).
- `LastValidation`: the metrics of fit's last validation and its step, so that the final
  evaluation is not run again on the same weights (lmlab.run).
- `KillAt`: stops a run the way a crash does, at a chosen batch or validation pass (the
  resume tests and benchmarks/resume_exact.py).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from lmlab.errors import LmlabError
from lmlab.fileutil import write_file

# ---------------------------------------------------------------- RNG states


def rng_states() -> dict:
    """The state of every global RNG, as tensors, ints and strings only."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------- atomic writes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its final name and renames it (lmlab.fileutil), so a
    reader (or a re-run after a kill) sees the previous file or the new one, never half."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        write_file(path, write)


# ---------------------------------------------------------------- cadence


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint saving every `every_n_train_steps` steps and/or every
    `every_n_minutes` minutes of training, whichever comes first (the clock restarts at
    each save), and at the end of training. A save due at a batch that a validation follows
    waits for its end: Lightning resumes such a checkpoint past that validation, which would
    then never run."""

    def __init__(self, every_n_minutes: float | None = None, **kwargs):
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise LmlabError(
                f"callbacks.last_checkpoint.every_n_minutes: {every_n_minutes} (expected a "
                "number of minutes > 0, or null)"
            )
        kwargs.setdefault("enable_version_counter", False)  # one last.ckpt, replaced each time
        super().__init__(**kwargs)
        self.every_n_minutes = every_n_minutes
        self._clock = time.monotonic()
        self._before_validation = False
        self._deferred: str | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._clock = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._before_validation = validation_follows(trainer)
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if self.every_n_minutes is None or self._should_skip_saving_checkpoint(trainer):
                return
            due = time.monotonic() - self._clock >= self.every_n_minutes * 60
            if trainer.strategy.broadcast(due):  # rank 0's clock decides for every process
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
        finally:
            self._before_validation = False

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._deferred and not trainer.sanity_checking:
            path, self._deferred = self._deferred, None
            self._save_checkpoint(trainer, path)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final weights are always the last checkpoint (Lightning's ModelCheckpoint
        saves them only when this process saved no last checkpoint before)."""
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if self._before_validation:
            self._deferred = filepath
            return
        super()._save_checkpoint(trainer, filepath)
        self._clock = time.monotonic()


def validation_follows(trainer) -> bool:
    """Whether a validation pass runs after the training batch that just ended."""
    fetcher = trainer.fit_loop._data_fetcher
    return fetcher is not None and trainer.fit_loop.epoch_loop._should_check_val_fx(fetcher)


class LastValidation(Callback):
    """Keeps the logged val/* metrics of the last validation during fit and its step."""

    def __init__(self):
        self.step: int | None = None
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            logged = trainer.logged_metrics.items()
            self.metrics = {k: float(v) for k, v in logged if k.startswith("val/")}
            self.step = trainer.global_step


# ---------------------------------------------------------------- crashes on purpose


class SimulatedKill(Exception):
    """Raised by KillAt(how="raise"): the run stops as if killed, saving nothing more."""


class KillAt(Callback):
    """Stops training the way a crash does: at the end of its `batch`-th training batch
    (0-based, over the whole run; before that batch's own checkpoint), or with `validation`,
    after the first batch of the first validation pass after that batch. `save`: first
    writes checkpoints/last.ckpt at that point (as a signal handler does). `how`: "raise"
    (SimulatedKill, for in-process tests), "sigkill" (the process sends itself SIGKILL: no
    handler, no cleanup), or "wait" (writes `<run dir>/killme` with its PID and sleeps, so
    that another process kills it)."""

    def __init__(self, batch: int, validation: bool = False, save: bool = False, how="raise"):
        if how not in ("raise", "sigkill", "wait"):
            raise LmlabError(f"callbacks.kill.how: '{how}' (expected raise, sigkill or wait)")
        self.batch, self.validation, self.save, self.how = batch, validation, save, how

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        if not self.validation and trainer.fit_loop.total_batch_idx >= self.batch:
            if self.save:
                trainer.save_checkpoint(Path(trainer.default_root_dir, "checkpoints", "last.ckpt"))
            self.kill(trainer)

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.validation and fitting and trainer.fit_loop.total_batch_idx >= self.batch:
            self.kill(trainer)

    def kill(self, trainer) -> None:
        if self.how == "raise":
            raise SimulatedKill(f"killed after batch {trainer.fit_loop.total_batch_idx}")
        if self.how == "wait":
            Path(trainer.default_root_dir, "killme").write_text(str(os.getpid()))
            time.sleep(600)
        os.kill(os.getpid(), signal.SIGKILL)


def run_identity(datamodule, tokenizer, model) -> dict:
    """What a run's weights were trained with, which a resume must not change silently: the
    data (source fingerprint), the tokenizer and the architecture (every tensor's shape)."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend else json.dumps(sorted(tokenizer.get_vocab().items()))
    shapes = json.dumps(sorted((n, list(t.shape)) for n, t in model.state_dict().items()))
    return {
        "data": datamodule.source_fingerprint,
        "tokenizer": hashlib.sha1(vocab.encode()).hexdigest(),
        "architecture": hashlib.sha1(shapes.encode()).hexdigest(),
    }


def check_resume(path: str, identity: dict) -> None:
    """Refuses, in one line, to resume `path` under other data, tokenizer or architecture
    than it was trained with (checkpoints from before this check carry no identity)."""
    stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    stored = stored.get("lmlab_identity") or {}
    changed = [key for key, value in identity.items() if key in stored and stored[key] != value]
    if changed:
        raise LmlabError(
            f"resume: {path} was trained with another {' and '.join(changed)} than this "
            "command has; to start fresh, delete its run dir or use another (name=...); to "
            "resume it anyway, add resume_check=false"
        )
