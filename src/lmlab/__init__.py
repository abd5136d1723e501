"""lmlab: config-driven pre-training and fine-tuning of language models.

The Python API lives in `lmlab.build` (`compose`, `build`, `train`); `lmlab-train` is a thin
Hydra CLI over it. `compose` and `train` are re-exported here.
"""

from lmlab.errors import LmlabError

__all__ = ["LmlabError", "compose", "train"]


def __getattr__(name):  # lazy: importing lmlab must not import torch
    if name in ("compose", "train"):
        import lmlab.build

        return getattr(lmlab.build, name)
    raise AttributeError(name)
