"""The run lifecycle, one module for lmlab-train, lmlab-eval and lmlab-predict alike: make the
Trainer (the only place one is made), train (fit, validate, test, export), load a finished
run's model, and evaluate it. The objects come from lmlab.experiment; what a finished run
left on disk, and the config it runs with, from lmlab.stored.

from lmlab.experiment import compose
from lmlab.run import evaluate, load, train
metrics = train(compose(["experiment=quickstart", "trainer.max_steps=20"], run_dir="out/try"))
scores = evaluate("out/try", split="validation")
trained = load("out/try")  # trained.objective, trained.model: for lmlab.predict.predict
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.console import header, load_best_line, model_summary_callback, routed, summary
from lmlab.errors import LmlabError
from lmlab.experiment import Data, Experiment, build_experiment, instantiate_plain, load_data
from lmlab.interrupts import catch_signals
from lmlab.memory import bound_heap
from lmlab.processes import (
    check_processes,
    launch_children_as_this_job,
    own_processes,
    whole_model,
)
from lmlab.runlock import hold as hold_run_dir
from lmlab.stored import Stored, locate, run_config

# ---------------------------------------------------------------- the Trainer


def make_trainer(cfg: DictConfig, evaluate_only: bool = False):
    """The Trainer for training as cfg.trainer, cfg.logger and cfg.callbacks describe it;
    with `evaluate_only`, the one lmlab-eval validates or tests a finished run with."""
    import pytorch_lightning as pl

    if evaluate_only:
        settings = _evaluation_settings(cfg)
    else:
        settings = _training_settings(cfg)
        launch_children_as_this_job()
    return pl.Trainer(**settings)


def _training_settings(cfg: DictConfig) -> dict:
    """cfg.trainer's settings (then its kwargs), with the loggers and callbacks of the run."""
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
        # the validation at start runs every batch that Lightning's sanity check would try
        "num_sanity_val_steps": 0 if t.validate_at_start else None,
    }
    settings = {
        k: v for k, v in settings.items() if v is not None or k == "check_val_every_n_epoch"
    }
    # no_grad rather than inference_mode for evaluation: metric states touched by the
    # validation before fit must stay usable in training
    settings = {**settings, "inference_mode": False, **t.kwargs}
    from lmlab.checkpointing import AtomicCheckpointIO, LastValidation

    if "plugins" not in t.kwargs:  # a kill while a checkpoint is written keeps the previous one
        settings["plugins"] = [AtomicCheckpointIO()]
    loggers = [instantiate_plain(c) for c in (cfg.logger or {}).values() if c]
    callbacks = [instantiate_plain(c) for c in (cfg.callbacks or {}).values() if c]
    callbacks.append(LastValidation())  # spares the final evaluation when it would repeat it
    if summary := model_summary_callback(cfg.verbose):  # its table: in train.log
        callbacks.append(summary)
    return settings | {"logger": loggers or False, "callbacks": callbacks}


def _evaluation_settings(cfg: DictConfig) -> dict:
    return {
        "accelerator": cfg.trainer.accelerator,
        "devices": 1,  # a distributed sampler would pad the split with repeated examples
        "precision": cfg.trainer.precision,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "inference_mode": False,  # as training evaluates
        "default_root_dir": cfg.paths.run_dir,
        "enable_progress_bar": False,  # stdout is for the metrics
    }


# ---------------------------------------------------------------- training


def train(cfg: DictConfig) -> dict:
    """Fit, validate (and test), export; returns the final metrics (also in metrics.json)."""
    if not cfg.paths.run_dir:
        raise LmlabError("paths.run_dir: not set (from Python: compose(..., run_dir=...))")
    check_processes(cfg.trainer)
    bound_heap(cfg.trainer.malloc_mmap_threshold)
    started = time.monotonic()
    # one writer per run dir; a signal saves a checkpoint at this step and stops (Interrupted);
    # library chatter goes to train.log
    with (
        hold_run_dir(cfg.paths.run_dir),
        catch_signals(cfg) as signals,
        routed(cfg.verbose, cfg.paths.run_dir),
    ):
        exp = build_experiment(cfg)
        trainer = make_trainer(exp.config)
        if signals is not None:
            signals.watch(trainer)
        with own_processes(trainer):
            metrics = fit_and_export(exp, trainer)
        if trainer.is_global_zero:
            print(summary(exp, trainer, metrics, time.monotonic() - started), flush=True)
        return metrics


def fit_and_export(exp: Experiment, trainer) -> dict:
    """train(), once the objects exist: every process of a multi-process run runs it."""
    from lmlab import adapters
    from lmlab.checkpointing import check_resume, run_identity
    from lmlab.export import save_pretrained
    from lmlab.fileutil import write_json, write_text
    from lmlab.loggers import close as close_loggers

    cfg = exp.config
    run_dir = Path(cfg.paths.run_dir)
    checkpoint = resume_checkpoint(cfg)
    exp.module.identity = run_identity(exp.datamodule, exp.tokenizer, exp.model)
    if checkpoint and cfg.resume_check:  # before config.yaml is replaced
        check_resume(checkpoint, exp.module.identity)
    if trainer.is_global_zero:  # the other processes of a DDP run share rank zero's run dir
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        print(header(exp, trainer, resuming=checkpoint), flush=True)
    if not checkpoint and cfg.trainer.validate_at_start:  # the start of the validation curve
        trainer.validate(exp.module, datamodule=exp.datamodule, verbose=False)
    # weights_only: a resumed checkpoint is data, even under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
    trainer.fit(exp.module, datamodule=exp.datamodule, ckpt_path=checkpoint, weights_only=True)
    same_weights = not (cfg.load_best and load_best(exp.module, trainer, cfg))
    metrics = final_validation(exp, trainer, same_weights)
    if cfg.test:
        metrics |= trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    metrics = finite(metrics) | {"global_step": trainer.global_step}
    metrics |= {k: v for k, v in exp.module.details.items() if k != "val/samples"}
    model = whole_model(exp.model, trainer)  # every process takes part under FSDP
    if trainer.is_global_zero:
        if cfg.export:
            exportable = adapters.exported(model, cfg.objective)  # LoRA: merged, or adapter
            export = save_pretrained(exportable, exp.tokenizer, run_dir, task_info(cfg))
            metrics["export"] = str(export)
        metrics |= exp.objective.finish(model, run_dir)
        write_json(metrics, run_dir / "metrics.json")  # from here on, the run is finished
        if not keeps_checkpoints(cfg):
            drop_checkpoints(run_dir)
    close_loggers(trainer.loggers)  # a wandb run stays open across fit, validate and test
    if trainer.is_global_zero and cfg.plots:  # from metrics.csv, complete once loggers closed
        draw_pictures(run_dir)
    return metrics


def keeps_checkpoints(cfg: DictConfig) -> bool:
    """Whether a finished run keeps checkpoints/*.ckpt: asked to, or with no export to hold
    its weights."""
    return cfg.keep_checkpoints or not cfg.export


def drop_checkpoints(run_dir: Path) -> None:
    """Deletes <run dir>/checkpoints/*.ckpt of a finished run: a run dir with metrics.json is
    never resumed (resolvers._run_dir), and its export holds the weights that count (the best
    ones under load_best), so the checkpoints would only store them a second and third time."""
    folder = run_dir / "checkpoints"
    for path in folder.glob("*.ckpt"):
        path.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def final_validation(exp: Experiment, trainer, same_weights: bool) -> dict:
    """The val/* metrics of the final weights: those of fit's last validation when it ran at
    the final step and the weights are still its own, else a new validation."""
    from lmlab.checkpointing import LastValidation

    (last,) = [c for c in trainer.callbacks if isinstance(c, LastValidation)]
    if same_weights and last.step == trainer.global_step and last.metrics:
        return dict(last.metrics)
    return trainer.validate(exp.module, datamodule=exp.datamodule, verbose=False)[0]


def draw_pictures(run_dir: Path) -> None:
    """curves.png and the task's pictures; a picture that cannot be drawn never fails a run."""
    from lmlab.report.plots import draw_run

    try:
        draw_run(run_dir)
    except Exception as e:  # noqa: BLE001 - the run's results are already written
        print(f"lmlab: warning: pictures not drawn: {e}", file=sys.stderr)


def finite(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


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


def load_best(module, trainer, cfg: DictConfig) -> bool:
    """Loads the weights of the best checkpoint (by objective.monitor) into `module`; whether
    they are other than the final ones (saved at an earlier step)."""
    import torch

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        print("load_best: no best checkpoint was saved; keeping the final weights", flush=True)
        return False
    # mmap: only the weights are read, not the optimizer state beside them
    saved = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
    step, final = saved["global_step"], trainer.global_step
    if step != final:
        module.load_state_dict(saved["state_dict"])
    kept = best if keeps_checkpoints(cfg) else None
    print(load_best_line(step, final, cfg.export, kept), flush=True)
    return step != final


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


# ---------------------------------------------------------------- a finished run


@dataclass
class Trained:
    config: DictConfig  # the config the model runs with, resolved
    objective: Any
    model: Any
    tokenizer: Any
    stored: Stored


def load(
    path: str | Path | Stored,
    overrides: list[str] = (),
    device: str = "cpu",
    run_dir: str | None = None,
) -> Trained:
    """The model at `path` (run dir, export or .ckpt, or `locate`'s answer) with its
    objective, in eval mode. `overrides`: Hydra syntax, as lmlab-eval takes them."""
    stored = path if isinstance(path, Stored) else locate(path)
    return load_model(stored, run_config(stored, overrides, run_dir), device)


def load_model(stored: Stored, cfg: DictConfig, device: str = "cpu", data: Data | None = None):
    """`stored`'s model and objective under `cfg`. A checkpoint's model is rebuilt as its
    run built it, from `data` where that is the run's own data, else loading it."""
    from lmlab.stored import objective_class as lmlab_objective

    # never get_class/instantiate: the target may come from the stored file
    objective_class = lmlab_objective(cfg.objective.get("_target_"), stored.path)
    if stored.export is not None:
        model, tokenizer = _from_export(stored.export, objective_class.head)
    else:
        model, tokenizer = _from_checkpoint(stored, cfg, data)
    objective = objective_class(cfg.objective, tokenizer, cfg.data.max_length, cfg.seed)
    objective.restore(model)
    return Trained(cfg, objective, model.to(device).eval(), tokenizer, stored)


def _from_export(export: Path, head: str):
    import transformers

    from lmlab.adapters import is_adapter, load_adapter
    from lmlab.models import custom_code
    from lmlab.tokenizers import with_pad_token

    if where := custom_code(export):
        raise LmlabError(
            f"{export}: its {where} names Python code of its own (auto_map); lmlab runs none "
            "from an export"
        )
    try:  # trust_remote_code=False: never run (or ask to run) Python that came with it
        auto = getattr(transformers, head)
        if is_adapter(export):  # objective.lora.export=adapter: base model + peft adapter
            model = load_adapter(auto, export)
        else:
            model = auto.from_pretrained(str(export), trust_remote_code=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(export), trust_remote_code=False)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        raise LmlabError(f"{export}: cannot load it as {head}: {reason}") from None
    return model, with_pad_token(tokenizer)


def _from_checkpoint(stored: Stored, cfg: DictConfig, data: Data | None):
    """Rebuilds the model as training built it (tokenizer from the training data, label set
    from `prepare`), then loads the checkpoint's weights."""
    from lmlab.stored import read_checkpoint

    trained = OmegaConf.create(stored.trained)  # data only: stored.locate checked it
    trained.paths.cache_dir = cfg.paths.cache_dir
    trained.paths.run_dir = cfg.paths.run_dir
    if cfg.model.config.get("trust_remote_code"):  # given on the command line
        trained.model.config.trust_remote_code = True
    exp = build_experiment(trained, data)
    state = read_checkpoint(stored.path)["state_dict"]
    exp.module.load_state_dict(state)
    return exp.model, exp.tokenizer


def evaluate(
    path: str | Path | Stored, overrides: list[str] = (), split: str = "validation"
) -> dict:
    """The metrics of the model at `path` (or `locate`'s answer) on `split`, logged as
    training logs them (val/<name> or test/<name>), plus the objective's non-numeric
    results. The data is loaded once, also for a checkpoint evaluated on its own data."""
    from lmlab.experiment import datamodule_class
    from lmlab.module import TaskModule

    stored = path if isinstance(path, Stored) else locate(path)
    if stored.trained is None and not any(o.startswith("data=") for o in overrides):
        raise LmlabError(f"data: {stored.path} is an export, which keeps no data; give data=...")
    with tempfile.TemporaryDirectory() as tmp:  # the module's samples.txt lands here
        cfg = run_config(stored, overrides, run_dir=tmp)
        data = load_data(cfg)
        if split not in data.raw:
            raise LmlabError(f"split={split}: the data has no {split} split (set data.{split})")
        trained = load_model(stored, cfg, data=data)
        examples = {split: data.raw[split]}  # rows, or a stream of blocks (data.source=litdata)
        datamodule = datamodule_class(cfg.data)(
            examples, data.fingerprint, trained.objective, cfg.data, cfg.paths.cache_dir
        )
        module = TaskModule(trained.model, trained.objective, cfg)
        trainer = make_trainer(cfg, evaluate_only=True)
        run = trainer.validate if split == "validation" else trainer.test
        metrics = run(module, datamodule=datamodule, verbose=False)[0]
    metrics = finite(metrics) | module.details
    return metrics | {"split": split, "model": str(stored.path), "examples": len(examples[split])}
