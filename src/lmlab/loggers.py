"""Loggers lmlab adds to Lightning's own."""

from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class _ResumableWriter(ExperimentWriter):
    """Keeps an existing metrics.csv (a resumed run) where Lightning's writer deletes it.
    Rows the interrupted run logged after its last checkpoint are dropped once the resumed
    run logs those steps again."""

    def _check_log_dir_exists(self) -> None:
        self._resuming = self._fs.isfile(self.metrics_file_path)

    def save(self) -> None:
        if self._resuming and self.metrics:
            self._resuming = False
            first_step = min(m["step"] for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                rows = [r for r in reader if int(float(r["step"] or 0)) < first_step]
                self.metrics_keys = list(reader.fieldnames or [])
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
        super().save()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, appending to the run's metrics.csv when the run resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment
