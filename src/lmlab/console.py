"""What a training run shows on the console, in one place: the header before training, the
summary after it, and the routing of library chatter to <run dir>/train.log.

routed(verbose, run_dir) is the routing, for the duration of a run: the INFO lines of
Lightning and matplotlib, the known harmless warnings and log records listed below, and
Lightning's model summary reach the log file only; datasets' and transformers' progress
bars are off. Any other warning and every error still reach the console (and the log).
verbose=true shows everything again. The log file is Hydra's job log (conf/hydra/); from
Python, where logging is not configured, routed() writes the same train.log itself.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from pathlib import Path

LOG_NAME = "train.log"

# Libraries whose INFO lines are chatter for the console ("GPU available: False", Lightning's
# "Tip" advert, its model summary, matplotlib's font cache); kept in the log file.
CHATTY_LIBRARIES = ("pytorch_lightning", "lightning", "lightning_fabric", "matplotlib")

# Known harmless warnings (category, message pattern): in the log file only.
HARMLESS_WARNINGS = [
    # Lightning 2.6's own pytree helper uses a class torch 2.13 deprecated; nothing a user
    # can change
    (FutureWarning, re.compile(r"`isinstance\(treespec, LeafSpec\)` is deprecated")),
    # peft's LoRA wrapper (objective.peft=lora) reads an attribute transformers 5 renamed
    (FutureWarning, re.compile(r"^`is_gradient_checkpointing` is deprecated")),
]

# Known harmless log records (logger, level, message pattern): in the log file only.
HARMLESS_RECORDS = [
    # transformers' table of tensors not in the checkpoint: lmlab's header names them in one
    # line ("new weights (not in the checkpoint): ...")
    ("transformers.modeling_utils", logging.WARNING, re.compile(r"\bLOAD REPORT\b")),
    # GPT2LMHeadModel's name maps to no loss type, so transformers falls back to the causal
    # LM loss: the right one for it (lmlab's clm objective passes labels to causal LMs only)
    (
        "transformers.modeling_utils",
        logging.WARNING,
        re.compile(r"^`loss_type=None` was set .* Using the default loss: `ForCausalLMLoss`"),
    ),
]

LOG_ONLY = "lmlab_log_only"  # a log record attribute: for the log file, not the console
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


def harmless_warning(message, category) -> bool:
    text = str(message)
    return any(
        issubclass(category, kind) and pattern.search(text) for kind, pattern in HARMLESS_WARNINGS
    )


def chatter(record: logging.LogRecord) -> bool:
    """Whether `record` is library chatter: for the log file, not the console."""
    if record.levelno < logging.WARNING and record.name.split(".")[0] in CHATTY_LIBRARIES:
        return True
    return any(
        (record.name == name or record.name.startswith(name + "."))
        and record.levelno == level
        and pattern.search(record.getMessage())
        for name, level, pattern in HARMLESS_RECORDS
    )


class ConsoleFilter(logging.Filter):
    """On the console's log handlers: drops the chatter, unless verbose."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, LOG_ONLY, False):
            return False
        return self.verbose or not chatter(record)


# Libraries that log through handlers of their own (transformers always, Lightning when it
# is imported before logging is configured): during a run their records go through the root
# logger's handlers instead, so that the console filter and the log file see them.
OWN_HANDLERS = ("transformers", "pytorch_lightning", "lightning_fabric", "lightning")


@contextlib.contextmanager
def routed(verbose: bool, run_dir: str | Path):
    """Library chatter to the log file only while a run trains (module docstring)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_filtered_console(verbose, Path(run_dir) / LOG_NAME))
        stack.enter_context(_through_root(OWN_HANDLERS))
        if not verbose:
            stack.enter_context(_no_progress_bars())
        stack.enter_context(_warnings_logged(verbose))
        yield


@contextlib.contextmanager
def _filtered_console(verbose: bool, log_file: Path):
    """ConsoleFilter on the root logger's console handlers; where logging is not configured
    (a run from Python), a console handler and train.log of its own, as Hydra makes them."""
    root = logging.getLogger()
    level, added = root.level, []
    if not root.handlers:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        added = [logging.FileHandler(log_file), logging.StreamHandler(sys.stderr)]
        added[0].setFormatter(logging.Formatter(LOG_FORMAT))
        added[1].setLevel(logging.WARNING)
        root.setLevel(logging.INFO)
        for handler in added:
            root.addHandler(handler)
    console_filter = ConsoleFilter(verbose)
    consoles = [h for h in root.handlers if _is_console(h)]
    for handler in consoles:
        handler.addFilter(console_filter)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(console_filter)
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


@contextlib.contextmanager
def _through_root(names: tuple[str, ...]):
    import transformers

    transformers.utils.logging.get_verbosity()  # makes its handler now, not in the run
    loggers = [logging.getLogger(name) for name in names]
    kept = [(lib, list(lib.handlers), lib.propagate) for lib in loggers]
    for lib in loggers:
        for handler in list(lib.handlers):
            lib.removeHandler(handler)
        lib.propagate = True
    try:
        yield
    finally:
        for lib, handlers, propagate in kept:
            lib.propagate = propagate
            for handler in handlers:
                lib.addHandler(handler)


@contextlib.contextmanager
def _no_progress_bars():
    """datasets' Map and save bars, transformers' weight loading and saving bars."""
    import datasets.utils
    import transformers

    libraries = [datasets.utils, transformers.utils.logging]
    enabled = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was in zip(libraries, enabled):
            if was:
                library.enable_progress_bar()


@contextlib.contextmanager
def _warnings_logged(verbose: bool):
    show = warnings.showwarning
    warnings.showwarning = _warning_display(show, verbose)
    try:
        yield
    finally:
        warnings.showwarning = show


def _warning_display(show, verbose: bool):
    """warnings.showwarning that writes every warning to the log file, and to the console
    (stderr, as usual) unless it is a known harmless one."""
    log = logging.getLogger("py.warnings")

    def display(message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        log.warning(text, extra={LOG_ONLY: True})
        if verbose or not harmless_warning(message, category):
            show(message, category, filename, lineno, file, line)

    return display


def model_summary_callback(verbose: bool):
    """Lightning's model summary as a log record (in train.log; on the console only with
    verbose): its rich table would print straight to the console."""
    if verbose:
        return None
    from pytorch_lightning.callbacks import ModelSummary

    return ModelSummary()


# ---------------------------------------------------------------- header and summary


def header(exp, trainer, resuming: str | None = None) -> str:
    """Where the run is and what it trains, before training starts."""
    cfg = exp.config
    t = cfg.trainer
    start = f"from {cfg.model.name_or_path}" if cfg.model.name_or_path else "from scratch"
    total, trainable = parameter_counts(exp.model)
    sizes = " · ".join(f"{split} {len(rows):,}" for split, rows in exp.datamodule.raw.items())
    steps = [f"max {t.max_steps:,} steps"] if t.max_steps and t.max_steps > 0 else []
    steps += [f"max {t.max_epochs} epoch{'s' * (t.max_epochs != 1)}"] if t.max_epochs else []
    steps += [f"max time {t.max_time}"] if t.max_time else []
    batch = f"batch {cfg.data.batch_size} × accumulation {t.accumulate_grad_batches}"
    if trainer.world_size > 1:
        batch += f" × {trainer.world_size} processes"
    lines = [
        rule(f"lmlab-train: {cfg.name}"),
        f"run dir: {cfg.paths.run_dir}",
        f"model: {cfg.model.name} ({model_kind(exp.model, cfg.objective)}) {start}",
        f"parameters: {short(total)} ({short(trainable)} trainable)",
        *exp.notes,  # e.g. new weights (not in the checkpoint): ...
        f"data: {cfg.data.name}: {sizes} examples",
        f"steps: {', '.join(steps) or 'no limit'}; {batch}",
        f"device: {device_text(trainer)}, precision {trainer.precision}",
    ]
    if resuming:
        lines.append(f"resuming from {resuming}")
    return "\n".join([*lines, rule()])


def summary(exp, trainer, metrics: dict, seconds: float) -> str:
    """What came out, after training: best and final metrics, time and speed, where the
    files are, and the commands that use the model."""
    from lmlab.objectives.classification import confusion_table

    cfg = exp.config
    run_dir = Path(cfg.paths.run_dir)
    lines = [rule(f"done in {duration(seconds)}, {metrics.get('global_step', 0):,} steps")]
    if (best := best_score(trainer, cfg.objective.monitor)) is not None:
        lines.append(f"best: {cfg.objective.monitor}={best:.4g} ({best_note(cfg, run_dir)})")
    final = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    lines.append(f"final: {metric_text(final)}")
    if speed := speed_text(trainer):
        lines.append(f"speed: {speed}")
    for key, value in metrics.items():  # val/confusion_matrix, test/confusion_matrix
        if key.endswith("confusion_matrix"):
            lines += [f"{key}:", confusion_table(value)]
    if "sample" in metrics:
        lines.append(f"sample: {metrics['sample']}")
    lines.append(f"run dir: {run_dir}")
    if "export" in metrics:
        lines.append(f"export: {metrics['export']}")  # lmlab-chain reads this line
    files = [run_dir / name for name in ("metrics.json", "metrics.csv")]
    lines.append(f"metrics: {', '.join(str(f) for f in files if f.is_file())}")
    if plots := sorted(p.name for p in run_dir.glob("*.png")):
        lines.append(f"plots: {', '.join(plots)}")
    if log := log_file():
        lines.append(f"log: {log}")
    lines.append(f"evaluate: lmlab-eval {run_dir}")
    if "export" in metrics and (predict := predict_command(exp.objective, metrics["export"])):
        lines.append(f"predict: {predict}")
    return "\n".join([*lines, rule()])


def rule(title: str = "") -> str:
    return f"== {title} ".ljust(72, "=") if title else "=" * 72


def short(count: int) -> str:
    """22.7M, 410.2K, 1.3B: a parameter count as people say it."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def parameter_counts(model) -> tuple[int, int]:
    """(all, trainable) parameters; trainable: those with requires_grad (LoRA: the adapters)."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def model_kind(model, objective_cfg) -> str:
    """The Hugging Face class, with the parameter-efficient method wrapped around it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    method = objective_cfg.get("peft")
    return type(base).__name__ + (f" + {method}" if method else "")


def device_text(trainer) -> str:
    device = trainer.strategy.root_device
    text = device.type
    if device.type == "cuda":
        import torch

        text = f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{text} × {trainer.num_devices}" if trainer.num_devices > 1 else text


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def metric_text(metrics: dict) -> str:
    return "  ".join(
        f"{k}={float(v):.4g}" for k, v in metrics.items() if isinstance(v, int | float)
    )


def best_score(trainer, monitor: str) -> float | None:
    """The best value of `monitor` a checkpoint callback saw (None without one)."""
    for callback in trainer.checkpoint_callbacks:
        score = getattr(callback, "best_model_score", None)
        if callback.monitor == monitor and score is not None:
            return float(score)
    return None


def best_note(cfg, run_dir: Path) -> str:
    """Where the best weights are: best.ckpt while kept (keep_checkpoints=true), the export
    when load_best loaded them."""
    notes = ["checkpoints/best.ckpt"] if (run_dir / "checkpoints" / "best.ckpt").is_file() else []
    if cfg.load_best:
        notes.append("the final metrics and the export are its")
    elif not notes:
        notes.append("its checkpoint not kept: keep_checkpoints=true keeps it")
    return "; ".join(notes)


def load_best_line(step: int, final_step: int, exported: bool, kept: str | None) -> str:
    """What load_best did, in words still true when the run ends: the best checkpoint's path
    only when it is `kept` (a finished run with an export drops its checkpoints)."""
    if step == final_step:
        text = f"load_best: the final weights (step {final_step}) are the best"
    else:
        used = "the final metrics and the export are" if exported else "the final metrics are"
        text = f"load_best: loaded the best weights, of step {step} (training ended at step "
        text += f"{final_step}); {used} theirs"
    return text + (f" (kept: {kept})" if kept else "")


def speed_text(trainer) -> str | None:
    """Training speed over the whole run (validation excluded), as the Throughput callback
    measured it."""
    from lmlab.callbacks import Throughput

    for callback in trainer.callbacks:
        if isinstance(callback, Throughput) and callback.total_seconds > 0:
            seconds = callback.total_seconds
            samples, tokens = callback.total_samples / seconds, callback.total_tokens / seconds
            return f"{samples:,.1f} examples/s, {tokens:,.0f} tokens/s (training time only)"
    return None


def log_file() -> str | None:
    """The file the run's log records go to (Hydra's job log, or routed()'s own)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def predict_command(objective, export: str) -> str | None:
    """The lmlab-predict command for the export: texts as arguments, or JSONL rows of the
    task's input columns (question + context); None for an objective it does not serve."""
    from lmlab.objectives.base import Objective

    if type(objective).predict_step is Objective.predict_step:
        return None
    inputs = [c for c in objective.required_columns if c not in ("label", "tokens", "tags")]
    if inputs in ([], ["text"]):
        return f'lmlab-predict {export} "<text>" ...'
    return f"lmlab-predict {export} --input <rows.jsonl>  (JSON lines with {', '.join(inputs)})"
