"""The Python API under its first name, kept so that existing code goes on working:

from lmlab.build import build, compose, train
cfg = compose(["experiment=quickstart", "trainer.max_steps=20"], run_dir="outputs/try")
metrics = train(cfg)  # fit, validate, export; returns the final metrics
exp = build(cfg)  # or just the objects: tokenizer, objective, model, module, datamodule

`build` is lmlab.experiment.build_experiment (config -> objects) and `train` is lmlab.run.train
(the run lifecycle); new code can import them from there (and `resolve`, also kept here).
"""

from lmlab.experiment import build_experiment as build
from lmlab.experiment import compose, resolve
from lmlab.run import train

__all__ = ["build", "compose", "resolve", "train"]
