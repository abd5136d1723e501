"""lmlab-eval: evaluate a trained model on one split and write its metrics as JSON.

usage: lmlab-eval <run dir|export|ckpt> [data=<preset or file>] [split=validation|test]
                  [data.max_eval_samples=N] [output=<file>] [<config key>=<value> ...]

A run dir or checkpoint brings its training config, so its own data is evaluated unless
data= names other data; an export needs data=. The whole split is evaluated (limit it
with data.max_eval_samples) on one device, with the same module and data pipeline as
training, so the metrics compare with the run's own. Default output: <run dir>/eval_<split>.json
(for an export outside a run dir or a checkpoint: <name>.eval_<split>.json beside it).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from lmlab.errors import LmlabError

SPLITS = ("validation", "test")


def parse(argv: list[str]) -> tuple[str, str, str | None, list[str]]:
    """-> (model path, split, output file or None, config overrides)."""
    from lmlab.cli.train import expand_data_path

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    path, split, output, overrides = argv[0], "validation", None, []
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key == "split":
            if value not in SPLITS:
                raise LmlabError(f"split: {value!r}; expected one of {', '.join(SPLITS)}")
            split = value
        elif key == "output":
            output = value
        else:
            overrides.append(arg)
    expanded = []
    for arg in overrides:  # data=<file> evaluates that file: it is the split (and train)
        shorthand = expand_data_path([arg])
        expanded += shorthand
        if len(shorthand) > 1:
            expanded.append(f"data.{split}={arg.partition('=')[2]}")
    return path, split, output, expanded


def default_output(stored, split: str) -> Path:
    name = f"eval_{split}.json"
    if stored.kind == "run":
        return stored.path / name
    if stored.kind == "export" and (stored.path.parent / "config.yaml").is_file():
        return stored.path.parent / name  # the export of a run dir
    stem = stored.path.stem if stored.kind == "ckpt" else stored.path.name
    return stored.path.parent / f"{stem}.{name}"


def evaluate(path, overrides: list[str] = (), split: str = "validation") -> dict:
    """The metrics of the model at `path` on `split`, logged as training logs them
    (val/<name> or test/<name>), plus the objective's non-numeric results."""
    import tempfile

    import pytorch_lightning as pl
    from datasets import DatasetDict
    from omegaconf import OmegaConf

    from lmlab.data.datamodule import DataModule
    from lmlab.data.sources import load_source
    from lmlab.module import TaskModule
    from lmlab.predict import load_model, locate, run_config

    stored = locate(path)
    if stored.trained is None and not any(o.startswith("data=") for o in overrides):
        raise LmlabError(f"data: {stored.path} is an export, which keeps no data; give data=...")
    with tempfile.TemporaryDirectory() as tmp:  # the module's samples.txt lands here
        cfg = run_config(stored, overrides, run_dir=tmp)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        raw, fingerprint = load_source(cfg.data, cfg.seed)
        if split not in raw:
            raise LmlabError(f"split={split}: the data has no {split} split (set data.{split})")
        trained = load_model(stored, cfg)
        data = DataModule(
            DatasetDict({split: raw[split]}),
            fingerprint,
            trained.objective,
            cfg.data,
            cfg.paths.cache_dir,
        )
        module = TaskModule(trained.model, trained.objective, OmegaConf.to_container(cfg))
        trainer = pl.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,  # a distributed sampler would pad the split with repeated examples
            precision=cfg.trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            inference_mode=False,  # as lmlab-train evaluates
            default_root_dir=tmp,
            enable_progress_bar=False,  # stdout is for the metrics
        )
        run = trainer.validate if split == "validation" else trainer.test
        metrics = run(module, datamodule=data, verbose=False)[0]
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)} | module.details
    return metrics | {"split": split, "model": str(stored.path), "examples": len(raw[split])}


def main(argv: list[str] | None = None) -> None:
    from lmlab.fileutil import write_json

    try:
        path, split, output, overrides = parse(sys.argv[1:] if argv is None else argv)
        from lmlab.predict import locate

        output = Path(output) if output else default_output(locate(path), split)
        metrics = evaluate(path, overrides, split)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics, output)
    except LmlabError as e:
        print(f"lmlab-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"lmlab-eval: wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
