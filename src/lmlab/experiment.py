"""From a config to the objects of one run, usable from Python without Hydra.

compose(overrides) gives the config `lmlab-train <overrides>` would run; resolve(cfg) validates
it (errors name the key); build_experiment(cfg) makes the run's objects: data, tokenizer,
objective, model, LightningModule and DataModule. It is the only place that instantiates
them; lmlab.run drives them (train, evaluate, load a finished run).

from lmlab.experiment import build_experiment, compose
exp = build_experiment(compose(["experiment=quickstart"], run_dir="outputs/try"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmlab import config as lmconfig
from lmlab.errors import LmlabError


@dataclass
class Experiment:
    config: DictConfig  # the resolved config
    tokenizer: Any
    objective: Any
    model: Any  # the Hugging Face model (what is exported)
    module: Any  # lmlab.module.TaskModule
    datamodule: Any  # lmlab.data.datamodule.DataModule
    notes: list[str] = field(default_factory=list)  # what building did, for the run's header


@dataclass
class Data:
    """A data source as loaded for one command, to be reused by a second consumer of the same
    `data` settings and seed (evaluating a checkpoint) instead of being loaded again."""

    config: DictConfig  # the `data` section it was loaded with
    seed: int
    raw: Any  # splits of canonical columns
    fingerprint: str  # identifies raw's content

    def serves(self, cfg: DictConfig) -> bool:
        return self.seed == cfg.seed and self.config == cfg.data


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


def seed_everything(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def load_data(cfg: DictConfig) -> Data:
    """Seeds every generator with cfg.seed, then loads and checks cfg.data's splits."""
    from lmlab.data.sources import load_source

    seed_everything(cfg.seed)
    if cfg.data.source == "litdata":  # streams of packed blocks, not rows of text
        from lmlab.data.streaming import load_streams

        raw, fingerprint = load_streams(cfg.data, cfg.seed, cfg.paths.cache_dir)
        return Data(cfg.data, cfg.seed, raw, fingerprint)
    raw, fingerprint = load_source(cfg.data, cfg.seed, cfg.paths.cache_dir)
    return Data(cfg.data, cfg.seed, raw, fingerprint)


def build_experiment(cfg: DictConfig, data: Data | None = None) -> Experiment:
    """The objects of the run `cfg` describes (resolved here). `data`, when it serves the
    same data settings and seed, is used instead of loading the data again."""
    from hydra.utils import get_class

    from lmlab import adapters, models, tokenizers
    from lmlab.module import TaskModule

    cfg = resolve(cfg)
    if data is not None and data.serves(cfg):
        seed_everything(cfg.seed)
    else:
        data = load_data(cfg)
    raw, fingerprint = data.raw, data.fingerprint
    if cfg.test and "test" not in raw:
        raise LmlabError("test: true, but the data has no test split (set data.test)")
    objective_class = get_class(cfg.objective._target_)
    corpus = tokenizer_corpus(cfg, objective_class, raw)
    tokenizer = tokenizers.load_or_train(cfg.model, corpus, fingerprint, cfg.paths.cache_dir)
    objective = objective_class(cfg.objective, tokenizer, cfg.data.max_length, cfg.seed)
    objective.prepare(raw)
    check_monitor(cfg.objective.monitor, objective, raw)
    head, extra = objective.head, objective.model_config()
    model, new = models.load_or_create(cfg.model, head, tokenizer, extra)
    datamodule = datamodule_class(cfg.data)(
        raw, fingerprint, objective, cfg.data, cfg.paths.cache_dir
    )
    notes = start_from_pretrained(cfg.model, model, new, objective, datamodule)
    model = adapters.wrap(model, cfg.objective, head, new)  # objective.peft: head set
    if cfg.trainer.compile:
        model.compile()
    return Experiment(
        config=cfg,
        tokenizer=tokenizer,
        objective=objective,
        model=model,
        module=TaskModule(model, objective, cfg),
        datamodule=datamodule,
        notes=notes,
    )


def tokenizer_corpus(cfg: DictConfig, objective_class, raw):
    """The texts a tokenizer trained from scratch would learn from (read only then), once the
    splits are checked to have the objective's columns. A stream (data.source=litdata) holds
    blocks, not text, for objectives that pack (checked here); its tokenizer is a pretrained
    one (lmlab.config.validate insists)."""
    from lmlab import tokenizers
    from lmlab.memory import release_mapped_pages, releasing

    if cfg.data.source == "litdata":
        from lmlab.data.streaming import check_objective

        check_objective(objective_class)
        return ()
    check_columns(objective_class, raw, cfg.data)
    sampled = tokenizers.sample(raw["train"], cfg.model.tokenizer.sample_mb, cfg.seed)
    mapped = [f["filename"] for f in sampled.cache_files]  # read only to train a tokenizer
    release_mapped_pages(mapped)  # what sampling read (20% of a 2 GB corpus, measured)
    return releasing(objective_class.texts(sampled), mapped)


def datamodule_class(data_cfg):
    """lmlab's DataModule, or for a LitData stream its StreamingDataModule."""
    if data_cfg.source == "litdata":
        from lmlab.data.streaming import StreamingDataModule

        return StreamingDataModule
    from lmlab.data.datamodule import DataModule

    return DataModule


def check_columns(objective_class, raw, data_cfg) -> None:
    """Every split has the canonical columns the objective needs, before it reads them."""
    for split, dataset in raw.items():
        for column in getattr(objective_class, "required_columns", ()):
            if column not in dataset.column_names:
                source = OmegaConf.select(data_cfg, f"columns.{column}") or column
                raise LmlabError(
                    f"data.{split}: no {source!r} column in {data_cfg.get(split)!r} (columns: "
                    f"{', '.join(dataset.column_names)}); objective {objective_class.__name__} "
                    f"needs one: map it with data.columns.{column}=<column>"
                )


def logged_metrics(objective, raw) -> tuple[set[str], bool]:
    """The metric names a validation of `objective` logs (val/...), and whether more may
    come (per-label scores such as val/f1_<label>, or a score that needs a model to list)."""
    from lmlab.objectives.base import Objective

    names = set(objective.metric_names)
    names |= set(objective.epoch_metrics(dict.fromkeys(names, 1.0)))
    open_ended = False
    if type(objective).score is not Objective.score and "validation" in raw:
        open_ended = True
        try:
            scores = objective.score([], raw["validation"].select([]), None)
        except Exception:  # a score that needs records or a model: names unknown here
            return set(), True
        scored = {k for k, v in scores.items() if isinstance(v, int | float)}
        if not scored:  # a score that names nothing without records (QA): unknown here
            return set(), True
        names |= scored
    return {f"val/{n}" for n in names}, open_ended


def check_monitor(monitor: str, objective, raw) -> None:
    """objective.monitor must name a metric the objective logs: checked before training."""
    known, open_ended = logged_metrics(objective, raw)
    labels = getattr(objective, "labels", None)
    if open_ended and labels:  # f1_<label>, or f1_<type> of B-/I- tags
        kinds = {name[2:] if name[1:2] == "-" else name for name in map(str, labels)}
        known |= {f"val/f1_{kind}" for kind in kinds if kind != "O"}
        open_ended = False
    if not known or monitor in known or open_ended and monitor.startswith("val/f1_"):
        return
    raise LmlabError(
        f"objective.monitor: {monitor!r} is not logged by objective "
        f"{objective.cfg.name}; expected one of: {', '.join(sorted(known))}"
    )


def start_from_pretrained(
    model_cfg, model, new: list[str] | None, objective, datamodule
) -> list[str]:
    """A pretrained starting point: names the tensors it lacked, lets the objective
    initialise a missing head, and rescales the embeddings of encoders pre-trained by lmlab
    (model.rescale_embeddings). Returns what it did, as lines for the run's header."""
    from lmlab import models
    from lmlab.export import pretrained_from_scratch

    notes = []
    if new is None:  # built from scratch
        return notes
    if new:
        notes.append(f"new weights (not in the checkpoint): {', '.join(new)}")
        if note := objective.init_new_head(model, new, datamodule):
            notes.append(f"model: {note}")
    rescale = model_cfg.rescale_embeddings
    if rescale is None:
        rescale = pretrained_from_scratch(model_cfg.name_or_path)
    if rescale and (factor := models.rescale_embeddings(model)):
        notes.append(f"model: input embeddings scaled by {factor:.3f}, to a fresh model's size")
    return notes


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
