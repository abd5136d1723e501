"""The ``hub`` source (``datasets.load_dataset``, or ``load_from_disk`` for a directory that
``save_to_disk`` wrote; data.train/validation/test name splits) and the ``pydoc`` source (the
help topics every Python installation carries, one document each)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmlab.data.sources.checks import Bad, Where
from lmlab.data.sources.settings import mapped_columns
from lmlab.errors import LmlabError


def load_hub(cfg, skip, cache_dir=None):  # the hub caches its own files
    """The splits named or found -> ({split: (Dataset, Where, Bad)}, their identity); an
    unnamed validation or test split whose labels are all -1 (GLUE's test sets) is left out."""
    if not cfg.hub_name:
        raise LmlabError("data.hub_name: required when data.source is 'hub'")
    loaded = _hub_dataset(cfg.hub_name, cfg.hub_subset)
    wanted = {"train": cfg.train or "train", "validation": cfg.validation, "test": cfg.test}
    splits, identity = {}, {}
    for name, split in wanted.items():
        named = split is not None
        if split is None and name in loaded:  # unnamed validation/test: use it if present
            split = name
        if split is None:
            continue
        if split not in loaded:
            raise LmlabError(
                f"data.{name}: no split {split!r} in {cfg.hub_name!r} "
                f"(available: {', '.join(loaded)})"
            )
        ds = loaded[split]
        if not named and _unlabelled(ds, mapped_columns(cfg).get("label", "label")):
            print(f"data.{name}: split {split!r} has no labels (all -1); not used", flush=True)
            continue
        where = Where()
        where.add(len(ds), lambda i, s=split: f"{cfg.hub_name}[{s}] record {i}")
        splits[name] = (ds, where, Bad(skip))
        identity[name] = [split, ds._fingerprint]
    return splits, identity


def _hub_dataset(name, subset):
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(os.path.expanduser(name))
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = load_from_disk(str(path))
            return DatasetDict(train=loaded) if isinstance(loaded, Dataset) else loaded
        return load_dataset(name, subset)
    except (FileNotFoundError, ValueError) as e:
        raise LmlabError(f"data.hub_name: cannot load {name!r} (subset {subset!r}): {e}") from None


def _unlabelled(ds, column):
    from datasets import ClassLabel

    if not isinstance(ds.features.get(column), ClassLabel) or len(ds) == 0:
        return False
    values = ds.data.column(column)
    return values.null_count == 0 and set(values.unique().to_pylist()) == {-1}


def load_pydoc(cfg, skip, cache_dir=None):
    """The ~79 help topics of ``pydoc_data.topics``, one document each, as the train split."""
    from pydoc_data.topics import topics

    from datasets import Dataset

    docs = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    where = Where()
    where.add(len(docs), lambda i: f"pydoc topic {i}")
    return {"train": (Dataset.from_dict({"text": docs}), where, Bad(skip))}, {"python": sys.version}
