"""The one LightningModule: a Hugging Face backbone driven by an objective."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric


class TaskModule(pl.LightningModule):
    def __init__(self, model: nn.Module, objective, config: dict):
        """`config` is the resolved run config as plain data; it is what checkpoints store
        as hyperparameters, so they load with torch.load(weights_only=True)."""
        super().__init__()
        self.model = model
        self.objective = objective
        self.optim = config["objective"]
        self.save_hyperparameters({"config": config})
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: MeanMetric() for name in objective.metric_names})
                for stage in ("val", "test")
            }
        )

    def _step(self, batch, stage: str) -> torch.Tensor:
        results = self.objective.step(self.model, batch)
        for name, (value, weight) in results.items():
            if stage == "train":  # per step; the loss as optimised, the rest for monitoring
                self.log(f"train/{name}", value.detach(), prog_bar=name == "loss")
            else:  # epoch means weighted by what each batch holds (tokens, pairs, ...)
                metric = self.metrics[stage][name]
                metric.update(value.detach(), weight)
                self.log(f"{stage}/{name}", metric, batch_size=max(int(weight), 1))
        return results["loss"][0]

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_derived(self, stage: str) -> None:
        metrics = self.metrics[stage]
        if metrics["loss"].update_count == 0:
            return
        means = {name: float(m.compute()) for name, m in metrics.items()}
        for name, value in self.objective.epoch_metrics(means).items():
            self.log(f"{stage}/{name}", value, sync_dist=True)

    def on_validation_epoch_end(self):
        self._log_derived("val")

    def on_test_epoch_end(self):
        self._log_derived("test")

    def configure_optimizers(self):
        """AdamW without weight decay on biases and norms; warmup as a ratio of total steps."""
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for p in params if p.ndim >= 2],
                "weight_decay": self.optim["weight_decay"],
            },
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            groups, lr=self.optim["lr"], betas=tuple(self.optim["betas"]), eps=self.optim["eps"]
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            self.optim["scheduler"],
            optimizer,
            num_warmup_steps=int(self.optim["warmup_ratio"] * total),
            num_training_steps=total,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
