"""lmlab: config-driven pre-training and fine-tuning of language models.

The Python API: `lmlab.experiment` (`compose`, `build_experiment`) and `lmlab.run` (`train`,
`load`, `evaluate`); `lmlab-train` is a thin Hydra CLI over them (docs/architecture.md).
`compose` and `train` are re-exported here.
"""

from lmlab.errors import LmlabError

__all__ = ["LmlabError", "compose", "train"]


def __getattr__(name):  # lazy: importing lmlab must not import torch
    if name in ("compose", "train"):
        import lmlab.experiment
        import lmlab.run

        return getattr(lmlab.experiment if name == "compose" else lmlab.run, name)
    raise AttributeError(name)
