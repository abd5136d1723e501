"""Callbacks lmlab adds to Lightning's own."""

from __future__ import annotations

import sys

from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar


def progress_bar(refresh_rate: int = 10) -> ProgressBar:
    """A live bar on a terminal; plain lines when output goes to a file or a CI log."""
    return TQDMProgressBar(refresh_rate) if sys.stdout.isatty() else LineProgress(refresh_rate)


class LineProgress(ProgressBar):
    """One line every `refresh_rate` optimizer steps, and one after each validation."""

    def __init__(self, refresh_rate: int = 10):
        super().__init__()
        self.refresh_rate = refresh_rate
        self._enabled = True
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    @staticmethod
    def _format(metrics: dict, prefix: str) -> str:
        return "  ".join(
            f"{k}={float(v):.4g}"
            for k, v in metrics.items()
            if k.startswith(prefix) and k != "v_num"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.refresh_rate == 0 and step != self._last_step:
            self._last_step = step
            total = trainer.estimated_stepping_batches
            metrics = self._format(self.get_metrics(trainer, pl_module), "train/")
            self._print(f"epoch {trainer.current_epoch}  step {step}/{total:.0f}  {metrics}")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = self._format(trainer.callback_metrics, "val/")
            self._print(f"validation  step {trainer.global_step}  {metrics}")
