"""Callbacks lmlab adds to Lightning's own."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import NamedTuple

import torch
from pytorch_lightning.callbacks import Callback, ProgressBar
from torch import nn

from lmlab.errors import LmlabError


def progress_bar(refresh_rate: int = 10) -> ProgressBar:
    """A live bar on a terminal; plain lines when output goes to a file or a CI log."""
    return LiveProgress(refresh_rate) if sys.stdout.isatty() else LineProgress(refresh_rate)


class LineProgress(ProgressBar):
    """One line every `refresh_rate` optimizer steps (and at the last one), with the time
    left, and one after each validation."""

    def __init__(self, refresh_rate: int = 10):
        super().__init__()
        self.refresh_rate = refresh_rate
        self._enabled = True
        self._last_step = -1
        self._started: tuple[float, int] | None = None  # (time, step) when fit started

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args, sep: str = " ", **kwargs) -> None:
        if self._enabled:
            print(*args, sep=sep, flush=True)

    @staticmethod
    def _format(metrics: Mapping, prefix: str) -> str:
        return "  ".join(
            f"{k}={float(v):.4g}"
            for k, v in metrics.items()
            if k.startswith(prefix) and k != "v_num"
        )

    def eta(self, step: int, total: float) -> str:
        """The time left at `step` of `total`, from the pace since fit started (validations
        included); '?' before the first step."""
        if self._started is None or step <= self._started[1] or not math.isfinite(total):
            return "?"
        since, first = self._started
        left = (time.perf_counter() - since) / (step - first) * max(total - step, 0)
        minutes, seconds = divmod(round(left), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

    def on_train_start(self, trainer, pl_module):
        self._started = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        if step == self._last_step or (step % self.refresh_rate and step < total):
            return
        self._last_step = step
        metrics = self._format(self.get_metrics(trainer, pl_module), "train/")
        eta = self.eta(step, total)
        self.print(f"epoch {trainer.current_epoch}  step {step}/{total:.0f}  {metrics}  eta {eta}")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = self._format(trainer.callback_metrics, "val/")
            self.print(f"validation  step {trainer.global_step}  {metrics}")


class LiveProgress(LineProgress):
    """On a terminal: one bar over the whole fit in optimizer steps, with the time left and
    the last loss; a line after each validation, printed above the bar."""

    def __init__(self, refresh_rate: int = 10):
        super().__init__(refresh_rate)
        self.bar = None

    def print(self, *args, sep: str = " ", **kwargs) -> None:
        if not self._enabled:
            return
        if self.bar is None:
            super().print(*args, sep=sep)
        else:
            self.bar.write(sep.join(map(str, args)))

    def on_train_start(self, trainer, pl_module):
        from tqdm import tqdm

        super().on_train_start(trainer, pl_module)
        total = trainer.estimated_stepping_batches
        self.bar = tqdm(
            total=total if math.isfinite(total) else None,
            initial=trainer.global_step,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            file=sys.stdout,
            disable=not self._enabled,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.bar is None or step == self._last_step:
            return
        self._last_step = step
        loss = self.get_metrics(trainer, pl_module).get("train/loss")
        if loss is not None:
            text = f"epoch {trainer.current_epoch}, loss {float(loss):.4g}"
            self.bar.set_postfix_str(text, refresh=False)  # drawn by the update
        self.bar.update(step - self.bar.n)

    def on_train_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Throughput(Callback):
    """Logs training speed to every logger every `trainer.log_every_n_steps` optimizer steps,
    under the same step numbers as train/loss:

    - perf/tokens_per_sec: real tokens (attention-mask ones; padding is not work), every
      micro-batch of a gradient-accumulation step counted;
    - perf/samples_per_sec;
    - perf/mfu: model FLOP utilisation, when the peak FLOP/s of a device is known: `peak_flops`
      if given, else Lightning's table for the GPU and precision (none for CPUs: no mfu).

    Rates are over the training wall-clock time since the last log, validation excluded.
    total_seconds, total_samples and total_tokens add up the whole fit (the run's summary).
    Under DDP they are global: each process's counts are summed by one all-reduce per log
    (not per step) and divided by this process's window time; mfu divides by the peak of all
    devices (peak x world size).
    """

    def __init__(self, peak_flops: float | None = None):
        super().__init__()
        self.peak_flops = positive_flops(peak_flops)
        self.clock = time.perf_counter  # tests put a fake clock here
        self._peak: float | None = None  # per device, resolved when training starts
        self._flops = FlopsModel(0, 0, 0)
        self._last_step = -1
        self._since: float | None = None  # when the training clock last started; None: stopped
        self._paused = False  # stopped by a validation inside fit, to restart after it
        self.total_seconds, self.total_samples, self.total_tokens = 0.0, 0, 0
        self._reset_window()

    def _reset_window(self) -> None:
        self._seconds = 0.0
        self._samples = 0
        self._tokens = 0  # an int, or a 0-d tensor on the device (no host sync per step)
        self._squared_lengths = 0

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":  # queued GPU work belongs to the time before now
            torch.cuda.synchronize(pl_module.device)
        return self.clock()

    def on_train_start(self, trainer, pl_module):
        self._peak = self.peak_flops or device_peak_flops(trainer)
        self._flops = FlopsModel.of(getattr(pl_module, "model", pl_module))
        self._last_step = trainer.global_step
        self._reset_window()
        self._since = self._now(pl_module)

    def on_train_end(self, trainer, pl_module):
        if self._since is not None:  # the steps since the last log count in the totals
            self._window(trainer, pl_module)
        self._since = None
        self._paused = False

    def on_validation_start(self, trainer, pl_module):
        if self._since is not None:  # a validation inside fit: its time is not training time
            self._seconds += self._now(pl_module) - self._since
            self._since = None
            self._paused = True

    def on_validation_end(self, trainer, pl_module):
        # What follows (checkpoint writes, the next batch's fetch) is training cost again.
        if self._paused:
            self._since = self._now(pl_module)
            self._paused = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        samples, tokens, squared_lengths = batch_counts(batch)
        self._samples += samples
        self._tokens = self._tokens + tokens
        self._squared_lengths = self._squared_lengths + squared_lengths
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch of an accumulation: no optimizer step yet
            return
        self._last_step = step
        every = trainer.log_every_n_steps
        if every and step % every == 0:  # the steps Lightning sends logged values on
            self._log(trainer, pl_module)

    def _window(self, trainer, pl_module) -> tuple[int, int, int, float]:
        """(samples, tokens, squared lengths, seconds) since the last log, summed over the
        processes; adds them to the totals and starts a new window."""
        counts = torch.stack(
            [
                torch.as_tensor(value, dtype=torch.int64, device=pl_module.device)
                for value in (self._samples, self._tokens, self._squared_lengths)
            ]
        )
        samples, tokens, squared_lengths = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        now = self._now(pl_module)
        seconds = self._seconds + now - self._since
        self._reset_window()
        self._since = now
        self.total_seconds += seconds
        self.total_samples += samples
        self.total_tokens += tokens
        return samples, tokens, squared_lengths, seconds

    def _log(self, trainer, pl_module) -> None:
        samples, tokens, squared_lengths, seconds = self._window(trainer, pl_module)
        if seconds <= 0:
            return
        metrics = {
            "perf/tokens_per_sec": tokens / seconds,
            "perf/samples_per_sec": samples / seconds,
        }
        if self._peak:
            flops = self._flops.flops(tokens, squared_lengths)
            metrics["perf/mfu"] = flops / seconds / (self._peak * trainer.world_size)
        if trainer.is_global_zero:
            # Straight to the loggers, as Lightning's LearningRateMonitor does, under the step
            # Lightning logs this step's train/loss with. Through self.log, these three values
            # cost ~3 ms per logged step on an H100 machine (benchmarks/README.md).
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)


def batch_counts(batch) -> tuple[int, torch.Tensor | int, torch.Tensor | int]:
    """(samples, real tokens, sum over samples of real length squared) of a batch of
    `input_ids` (and `attention_mask`); (0, 0, 0) for a batch without input_ids."""
    input_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if input_ids is None:
        return 0, 0, 0
    samples, length = input_ids.shape[0], input_ids.shape[-1]
    mask = batch.get("attention_mask")
    if mask is None:
        return samples, samples * length, samples * length * length
    lengths = mask.sum(dim=-1)
    return samples, lengths.sum(), (lengths * lengths).sum()


class FlopsModel(NamedTuple):
    """Training FLOPs of a transformer, PaLM's estimate (Chowdhery et al. 2022, appendix B):
    6N per token for the parameter matmuls (2N forward + 4N backward), plus 12·L·d·T per token
    for the attention scores and their weighted sum over a sequence of T real tokens.

    N counts the parameters that take part in a matmul: every parameter but embedding
    lookup tables (position, token-type and untied token embeddings), while a token
    embedding tied to the output layer counts, since that layer multiplies by it. It assumes
    every parameter trains, and that heads run on every position (an MLM head that predicts
    only masked positions does less). L and d come from the model config (num_hidden_layers,
    hidden_size); a model without them gets no attention term."""

    parameters: int  # N
    layers: int  # L
    hidden: int  # d

    @classmethod
    def of(cls, model: nn.Module) -> FlopsModel:
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", 0) or 0
        hidden = getattr(config, "hidden_size", 0) or 0
        return cls(matmul_parameters(model), int(layers), int(hidden))

    def flops(self, tokens: int, squared_lengths: int) -> int:
        """FLOPs of training on `tokens` tokens in sequences whose lengths squared sum to
        `squared_lengths` (each token attends over its sequence: L·d·T per token, T²)."""
        return 6 * self.parameters * tokens + 12 * self.layers * self.hidden * squared_lengths


def matmul_parameters(model: nn.Module) -> int:
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    tied = {id(output.weight)} if output is not None else set()
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - tied
    return sum(p.numel() for p in model.parameters() if id(p) not in lookups)


# trainer.precision ("bf16-mixed", "32-true", ...) -> the dtype the matmuls run in
_COMPUTE_DTYPE = {
    "64": torch.float64,
    "32": torch.float32,
    "16": torch.float16,
    "bf16": torch.bfloat16,
}


def device_peak_flops(trainer) -> float | None:
    """Peak FLOP/s of one device from Lightning's table (CUDA GPUs and TPUs it knows); None
    for CPUs, unknown chips and precisions outside the table."""
    from lightning_fabric.utilities.throughput import get_available_flops

    device = trainer.strategy.root_device
    dtype = _COMPUTE_DTYPE.get(str(trainer.precision).split("-")[0])
    if device.type not in ("cuda", "xla") or dtype is None:
        return None
    return get_available_flops(device, dtype)


def positive_flops(value) -> float | None:
    if value is None:
        return None
    try:
        flops = float(value)
    except (TypeError, ValueError):
        flops = 0.0
    if not (0 < flops < math.inf) or isinstance(value, bool):
        raise LmlabError(
            f"callbacks.throughput.peak_flops: expected a positive number of FLOP/s per device "
            f"(e.g. 1e12) or null, got {value!r}"
        )
    return flops
