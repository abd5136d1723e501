"""The one LightningModule: a Hugging Face backbone driven by an objective.

TaskModule logs the objective's losses and metrics, gathers its evaluation records and
optimises with AdamW (layer-wise lr decay, warmup). It reads the run config (a DictConfig)
by attribute, as the objectives do; freeze and parameter_groups are its fine-tuning knobs.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric

SPLIT_OF_STAGE = {"val": "validation", "test": "test"}


class TaskModule(pl.LightningModule):
    def __init__(self, model: nn.Module, objective, config: DictConfig):
        """`config`: the resolved run config (a plain dict is taken too). Checkpoints store it
        as plain data in their hyperparameters, so they load with torch.load(weights_only=True)."""
        super().__init__()
        config = config if isinstance(config, DictConfig) else OmegaConf.create(config)
        self.model = model
        self.objective = objective
        self.optim = config.objective
        # loggers get the config flattened, with the parameter counts (on_fit_start)
        self.save_hyperparameters({"config": OmegaConf.to_container(config)}, logger=False)
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: MeanMetric() for name in objective.metric_names})
                for stage in ("val", "test")
            }
        )
        self.records: dict[str, list] = {"val": [], "test": []}
        self.details: dict[str, object] = {}  # non-scalar results of the last evaluations
        freeze(model, self.optim.freeze_embeddings, self.optim.freeze_layers)

    def on_fit_start(self):
        """Every logger gets the resolved config with dotted keys (model.name, objective.lr,
        tags, ...) and the parameter counts (params.total, params.trainable)."""
        from lmlab.loggers import log_hyperparams

        log_hyperparams(self.loggers, self.hparams["config"], self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What Lightning leaves out of a checkpoint but decides the rest of the training: the
        RNG states (dropout; Python, NumPy, torch, CUDA) of every process, in process order
        (their draws differ where their batches' shapes do), and, saved mid gradient
        accumulation, the gradients accumulated so far (this process's)."""
        from lmlab.checkpointing import rng_states

        checkpoint["lmlab_rng_states"] = gather([rng_states()])  # on every process: collective
        if getattr(self, "identity", None):  # what check_resume compares a re-run with
            checkpoint["lmlab_identity"] = self.identity
        if self._trainer is not None and self.trainer.fit_loop._should_accumulate():
            grads = {n: p.grad for n, p in self.named_parameters() if p.grad is not None}
            checkpoint["lmlab_accumulated_grads"] = grads

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Kept until training starts again (on_train_start): the sanity check and the
        loaders are set up in between."""
        self._resume_state = {
            k: checkpoint[k]
            for k in ("lmlab_rng_states", "lmlab_accumulated_grads")
            if k in checkpoint
        }

    def on_train_start(self) -> None:
        from lmlab.checkpointing import set_rng_states

        # The training loader's position: Lightning restores it when it builds the loader after
        # loading the checkpoint, but with max_epochs configure_optimizers built it before
        # (estimated_stepping_batches), and the resumed run would start its epoch over.
        self.trainer.fit_loop._load_combined_loader_states()  # a no-op once they are loaded
        state, self._resume_state = getattr(self, "_resume_state", {}), {}
        if "lmlab_rng_states" in state:
            set_rng_states(own_rng_states(state["lmlab_rng_states"], self.trainer))
        parameters = dict(self.named_parameters())
        for name, grad in state.get("lmlab_accumulated_grads", {}).items():
            parameters[name].grad = grad.to(parameters[name].device)

    def _log_batch(self, results, stage: str) -> None:
        for name, (value, weight) in results.items():
            if stage == "train":  # per step; the loss as optimised, the rest for monitoring
                # sync_dist: with several processes (DDP), the mean over the global batch
                self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", sync_dist=True)
            else:  # epoch means weighted by what each batch holds (tokens, pairs, ...)
                # a logged Metric syncs itself: its compute() sums every process's states
                metric = self.metrics[stage][name]
                metric.update(value.detach(), weight)
                self.log(f"{stage}/{name}", metric, batch_size=max(int(weight), 1))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The gradients are freed as soon as they are applied: Lightning frees them only
        after the next batch's forward pass, which then holds them (as much memory as the
        model) beside its activations."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)

    def training_step(self, batch, batch_idx):
        results = self.objective.step(self.model, batch)
        self._log_batch(results, "train")
        return results["loss"][0]

    def _eval_step(self, batch, stage: str) -> None:
        results, records = self.objective.eval_step(self.model, batch)
        self._log_batch(results, stage)
        self.records[stage] += records

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self):
        self.records["val"] = []

    def on_test_epoch_start(self):
        self.records["test"] = []

    def _epoch_end(self, stage: str) -> None:
        metrics = self.metrics[stage]
        if metrics["loss"].update_count == 0:
            return
        means = {name: float(m.compute()) for name, m in metrics.items()}
        for name, value in self.objective.epoch_metrics(means).items():
            self.log(f"{stage}/{name}", value, sync_dist=True)
        records = gather(self.records[stage])
        self.records[stage] = []
        if not records:
            return
        examples = self.trainer.datamodule.raw[SPLIT_OF_STAGE[stage]]
        for name, value in self.objective.score(records, examples, self.model).items():
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                # the same on every process (the records were gathered); sync_dist
                # only keeps Lightning from warning that an epoch value is not synced
                self.log(f"{stage}/{name}", float(value), sync_dist=True)
            else:
                self.details[f"{stage}/{name}"] = value
        if stage == "val" and self.details.get("val/samples"):
            self._write_samples(self.details["val/samples"])

    def _write_samples(self, samples: list[str]) -> None:
        """Appends this validation's generated samples to <run dir>/samples.txt and sends
        them to loggers that show text (TensorBoard, wandb)."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        text = "\n\n".join(samples)
        run_dir = self.trainer.default_root_dir
        with open(Path(run_dir, "samples.txt"), "a") as f:
            f.write(f"===== step {self.global_step}\n{text}\n\n")
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoard
                experiment.add_text("val/samples", text, self.global_step)
            elif hasattr(logger, "log_text"):  # wandb
                logger.log_text("val/samples", columns=["sample"], data=[[s] for s in samples])

    def on_validation_epoch_end(self):
        self._epoch_end("val")

    def on_test_epoch_end(self):
        self._epoch_end("test")

    def configure_optimizers(self):
        """AdamW without weight decay on biases and norms, layer-wise lr decay, warmup as
        a ratio of total steps."""
        from transformers import get_scheduler

        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, self.optim),
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
            eps=self.optim.eps,
            # one kernel for all tensors (3.5x faster on CPU); Lightning refuses to clip the
            # gradients of a fused optimizer under mixed precision
            fused=self.trainer.precision == "32-true",
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            self.optim.scheduler,
            optimizer,
            num_warmup_steps=int(self.optim.warmup_ratio * total),
            num_training_steps=total,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# Transformer blocks are named <...>.layer.<i>. (BERT), .h.<i>. (GPT-2), .layers.<i>. ...
_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def num_layers(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)


def depth(name: str, layers: int) -> int:
    """0 for embeddings, k for transformer layer k (1-based), layers + 1 for the rest
    (pooler, final norm, task head)."""
    found = _LAYER.search(name)
    if found:
        return int(found.group(1)) + 1
    return 0 if "embed" in name or re.search(r"\bw[tp]e\b", name) else layers + 1


def freeze(model: nn.Module, embeddings: bool, first_layers: int) -> None:
    if not embeddings and not first_layers:
        return
    layers = num_layers(model)
    for name, param in model.named_parameters():
        d = depth(name, layers)
        if (embeddings and d == 0) or 1 <= d <= first_layers:
            param.requires_grad_(False)


def parameter_groups(model: nn.Module, optim) -> list[dict]:
    """One group per (depth, decay): no weight decay on biases and norms; with
    layer_lr_decay < 1, lr * decay^(layers + 1 - depth). `optim`: the objective config
    (lr, weight_decay, layer_lr_decay; a plain dict is taken too)."""
    optim = optim if isinstance(optim, DictConfig) else OmegaConf.create(optim)
    layers = num_layers(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        d = depth(name, layers) if optim.layer_lr_decay != 1.0 else layers + 1
        decays = param.ndim >= 2
        group = groups.setdefault(
            (d, decays),
            {
                "params": [],
                "weight_decay": optim.weight_decay if decays else 0.0,
                "lr": optim.lr * optim.layer_lr_decay ** (layers + 1 - d),
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def own_rng_states(saved, trainer) -> dict:
    """This process's RNG states from a checkpoint's: its own where the checkpoint has one per
    process of this run's count, else the first process's (older checkpoints hold one)."""
    if isinstance(saved, dict):
        return saved
    return saved[trainer.global_rank] if len(saved) == trainer.world_size else saved[0]


def gather(records: list) -> list:
    """Every process's records (DDP), in process order; the records themselves otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, records)
    return [r for part in everyone for r in part]
