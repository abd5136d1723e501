"""From a config to objects, and the training run itself: usable from Python without Hydra.

from lmlab.build import compose, train
cfg = compose(["experiment=quickstart", "trainer.max_steps=20"], run_dir="outputs/try")
metrics = train(cfg)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmlab import config as lmconfig
from lmlab.errors import LmlabError
from lmlab.processes import (
    check_processes,
    launch_children_as_this_job,
    own_processes,
    whole_model,
)


@dataclass
class Experiment:
    config: dict  # the resolved config, plain data
    tokenizer: Any
    objective: Any
    model: Any  # the Hugging Face model (what is exported)
    module: Any  # lmlab.module.TaskModule
    datamodule: Any  # lmlab.data.datamodule.DataModule


def compose(
    overrides: list[str] = (), run_dir: str | None = None, config_name: str = "train"
) -> DictConfig:
    """The config `lmlab-train <overrides>` would run, composed without the CLI."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(lmconfig.config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides))
    if run_dir is not None:
        cfg.paths.run_dir = str(run_dir)
    return cfg


def resolve(cfg: DictConfig) -> DictConfig:
    """Validates and resolves; every error names the key."""
    lmconfig.validate(cfg)
    try:
        cfg = OmegaConf.create(lmconfig.to_container(cfg))
        cfg.model.name_or_path = lmconfig.pretrained_path(cfg.model.name_or_path)
        return cfg
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise LmlabError(f"{key}: {getattr(e, 'msg', e)}") from None


def build(cfg: DictConfig) -> Experiment:
    import pytorch_lightning as pl
    from hydra.utils import get_class

    from lmlab import models, tokenizers
    from lmlab.data.datamodule import DataModule
    from lmlab.data.sources import load_source
    from lmlab.module import TaskModule

    cfg = resolve(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    raw, fingerprint = load_source(cfg.data, cfg.seed)
    if cfg.test and "test" not in raw:
        raise LmlabError("test: true, but the data has no test split (set data.test)")
    objective_class = get_class(cfg.objective._target_)
    corpus = objective_class.texts(raw["train"])
    tokenizer = tokenizers.build(cfg.model, corpus, fingerprint, cfg.paths.cache_dir)
    objective = objective_class(cfg.objective, tokenizer, cfg.data.max_length, cfg.seed)
    objective.prepare(raw)
    model, new = models.build(cfg.model, objective.head, tokenizer, objective.model_config())
    datamodule = DataModule(raw, fingerprint, objective, cfg.data, cfg.paths.cache_dir)
    start_from_pretrained(cfg.model, model, new, objective, datamodule)
    plain = OmegaConf.to_container(cfg)
    return Experiment(
        config=plain,
        tokenizer=tokenizer,
        objective=objective,
        model=model,
        module=TaskModule(model, objective, plain),
        datamodule=datamodule,
    )


def start_from_pretrained(model_cfg, model, new: list[str] | None, objective, datamodule):
    """A pretrained starting point: names the tensors it lacked, lets the objective
    initialise a missing head, and rescales the embeddings of encoders pre-trained by lmlab
    (model.rescale_embeddings)."""
    from lmlab import models
    from lmlab.export import pretrained_from_scratch

    if new is None:  # built from scratch
        return
    if new:
        print(f"model: newly initialised (not in {model_cfg.name_or_path}): {', '.join(new)}")
        note = objective.init_new_head(model, new, datamodule)
        if note:
            print(f"model: {note}", flush=True)
    rescale = model_cfg.rescale_embeddings
    if rescale is None:
        rescale = pretrained_from_scratch(model_cfg.name_or_path)
    if rescale and (factor := models.rescale_embeddings(model)):
        print(f"model: input embeddings scaled by {factor:.3f}, to a fresh model's size")


def instantiate_plain(node: DictConfig):
    """hydra.utils.instantiate, letting an LmlabError through as its one line (Hydra wraps
    every error in a multi-line InstantiationException)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, LmlabError):
            raise e.__cause__ from None
        raise


def make_trainer(cfg: DictConfig):
    import pytorch_lightning as pl

    t = cfg.trainer
    step_interval = isinstance(t.val_check_interval, int)
    settings = {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": t.strategy,
        "precision": t.precision,
        "max_epochs": t.max_epochs,
        "max_steps": t.max_steps,
        "max_time": t.max_time,
        "accumulate_grad_batches": t.accumulate_grad_batches,
        "gradient_clip_val": t.gradient_clip_val,
        "val_check_interval": t.val_check_interval,
        # an interval in steps counts across epochs, so it may exceed one epoch's batches
        "check_val_every_n_epoch": None if step_interval else t.check_val_every_n_epoch,
        "limit_train_batches": t.limit_train_batches,
        "limit_val_batches": t.limit_val_batches,
        "log_every_n_steps": t.log_every_n_steps,
        "deterministic": t.deterministic,
        "default_root_dir": cfg.paths.run_dir,
    }
    settings = {
        k: v for k, v in settings.items() if v is not None or k == "check_val_every_n_epoch"
    }
    loggers = [instantiate_plain(c) for c in (cfg.logger or {}).values() if c]
    callbacks = [instantiate_plain(c) for c in (cfg.callbacks or {}).values() if c]
    # no_grad rather than inference_mode for evaluation: metric states touched by the
    # validation before fit must stay usable in training
    settings["inference_mode"] = False
    launch_children_as_this_job()
    return pl.Trainer(**{**settings, **t.kwargs}, logger=loggers or False, callbacks=callbacks)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """`resume=` (a checkpoint or a run dir), else this run dir's own last checkpoint."""
    if cfg.resume:
        path = Path(cfg.resume).expanduser()
        path = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
        if not path.is_file():
            raise LmlabError(f"resume: no checkpoint at '{path}'")
        return str(path)
    last = Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def load_best(module, trainer) -> None:
    """Loads the weights of the best checkpoint (by objective.monitor) into `module`."""
    import torch

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        print("load_best: no best checkpoint was saved; keeping the final weights", flush=True)
        return
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    print(f"load_best: evaluating and exporting {best}", flush=True)


def task_info(cfg: DictConfig) -> dict:
    """What lmlab-eval and lmlab-predict need besides the Hugging Face files: the objective
    and its settings; written to <export>/lmlab.json. Also whether the weights go back to a
    model trained from scratch by lmlab (model.rescale_embeddings' default)."""
    from lmlab.export import pretrained_from_scratch

    start = cfg.model.name_or_path
    return {
        "objective": OmegaConf.to_container(cfg.objective),
        "max_length": cfg.data.max_length,
        "model": cfg.model.name,
        "from_scratch": not start or pretrained_from_scratch(start),
    }


def train(cfg: DictConfig) -> dict:
    """Fit, validate (and test), export; returns the final metrics (also in metrics.json)."""

    if not cfg.paths.run_dir:
        raise LmlabError("paths.run_dir: not set (from Python: compose(..., run_dir=...))")
    check_processes(cfg.trainer)
    exp = build(cfg)
    cfg = OmegaConf.create(exp.config)
    trainer = make_trainer(cfg)
    with own_processes(trainer):
        return fit_and_export(cfg, exp, trainer)


def fit_and_export(cfg: DictConfig, exp: Experiment, trainer) -> dict:
    """train(), once the objects exist: every process of a multi-process run runs it."""
    from lmlab.export import save_pretrained
    from lmlab.fileutil import write_json
    from lmlab.loggers import close as close_loggers

    run_dir = Path(cfg.paths.run_dir)
    if trainer.is_global_zero:  # the other processes of a DDP run share rank zero's run dir
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")
    checkpoint = resume_checkpoint(cfg)
    if checkpoint:
        print(f"resuming from {checkpoint}", flush=True)
    elif cfg.trainer.validate_at_start:  # the starting point of the validation curve
        trainer.validate(exp.module, datamodule=exp.datamodule, verbose=False)
    trainer.fit(exp.module, datamodule=exp.datamodule, ckpt_path=checkpoint)
    if cfg.load_best:
        load_best(exp.module, trainer)
    metrics = trainer.validate(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    if cfg.test:
        metrics |= trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)} | {
        "global_step": trainer.global_step
    }
    metrics |= {k: v for k, v in exp.module.details.items() if k != "val/samples"}
    model = whole_model(exp.model, trainer)  # every process takes part under FSDP
    if trainer.is_global_zero:
        if cfg.export:
            export = save_pretrained(model, exp.tokenizer, run_dir, task_info(cfg))
            metrics["export"] = str(export)
        metrics |= exp.objective.finish(model, run_dir)
        write_json(metrics, run_dir / "metrics.json")
    close_loggers(trainer.loggers)  # a wandb run stays open across fit, validate and test
    return metrics
