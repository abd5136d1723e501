"""Data sources: where examples come from, and which columns get the canonical names.

A source never knows the task; it only yields a ``datasets.DatasetDict`` whose mapped
columns carry canonical names (``text``, ``label``, ...), plus a fingerprint of its inputs.

Sources (``data.source``):

- ``files``: local files. Each of ``data.train/validation/test`` is a file, a directory
  (every non-hidden file in it, sorted) or a glob. ``data.format`` picks the reader
  (``auto`` goes by extension). Text files become one column ``text`` split into documents
  per ``data.documents``; csv/tsv/json/jsonl go through ``datasets.load_dataset``.
- ``hub``: ``datasets.load_dataset(data.hub_name, data.hub_subset)``; hub_name may be a hub
  id or a local directory. ``data.train/validation/test`` are split names.
- ``pydoc``: an offline corpus every Python installation carries: the ~79 help topics of
  ``pydoc_data.topics.topics`` (~465k characters), one document per topic in column
  ``text``. It has no splits of its own, so ``data.train/validation/test`` are ignored and
  validation is carved off train.

Whenever no validation split is given or found, ``data.val_fraction`` of train is carved
off, deterministically for a seed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import sys
from pathlib import Path

from lmlab.errors import LmlabError

SOURCES = ("files", "hub", "pydoc")
FORMATS = ("auto", "text", "csv", "tsv", "json", "jsonl")
DOCUMENTS = ("blank_line", "line", "file")
SPLITS = ("train", "validation", "test")
# Any other extension (or none) is read as text.
_FORMAT_BY_EXT = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
_CSV_QUOTE_NONE = 3  # csv.QUOTE_NONE: SST-2's TSV has bare '"' inside sentences


def load_source(cfg, seed: int):
    """Load the splits ``cfg`` (the ``data`` config section) describes.

    Returns ``(DatasetDict, fingerprint)``: splits ``train`` and ``validation`` always,
    ``test`` when given or found; the fingerprint is a sha1 hex digest of the inputs'
    identity, every setting and ``seed``.
    """
    from datasets import DatasetDict

    _check_choice("data.source", cfg.source, SOURCES)
    _check_choice("data.format", cfg.format, FORMATS)
    _check_choice("data.documents", cfg.documents, DOCUMENTS)
    loader = {"files": _load_files, "hub": _load_hub, "pydoc": _load_pydoc}[cfg.source]
    splits, identity = loader(cfg)
    splits = {name: _rename_columns(ds, cfg.columns, name) for name, ds in splits.items()}
    if "validation" not in splits:
        splits["train"], splits["validation"] = _carve(splits["train"], cfg.val_fraction, seed)
    splits = _truncate(splits, cfg.max_train_samples, cfg.max_eval_samples)
    return DatasetDict(splits), _fingerprint(cfg, seed, identity)


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise LmlabError(f"{key}: unknown value {value!r} (allowed: {', '.join(allowed)})")


# ---------------------------------------------------------------- files


def _load_files(cfg):
    if cfg.train is None:
        raise LmlabError("data.train: required when data.source is 'files'")
    splits, identity = {}, {}
    for name in SPLITS:
        spec = getattr(cfg, name)
        if spec is None:
            continue
        key = f"data.{name}"
        paths = _resolve(key, spec)
        splits[name] = _read_split(key, spec, paths, cfg)
        # Size + mtime_ns is cheap and changes whenever the content does in practice.
        identity[name] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return splits, identity


def _resolve(key, spec):
    """A file, a directory (its non-hidden files, sorted) or a glob -> absolute paths."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        paths = [path]
    else:
        paths = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not paths:
        raise LmlabError(f"{key}: no file matches {spec!r}")
    return [p.resolve() for p in paths]


def _file_format(key, paths, fmt):
    if fmt != "auto":
        return fmt
    found = {_FORMAT_BY_EXT.get(p.suffix.lower(), "text") for p in paths}
    if len(found) > 1:
        raise LmlabError(
            f"{key}: files of mixed formats ({', '.join(sorted(found))}); set data.format"
        )
    return found.pop()


def _read_split(key, spec, paths, cfg):
    from datasets import Dataset

    fmt = _file_format(key, paths, cfg.format)
    if fmt != "text":
        return _read_tabular(key, spec, paths, fmt)
    docs = [doc for p in paths for doc in _split_documents(_read_text(p), cfg.documents)]
    if not docs:
        raise LmlabError(f"{key}: no non-empty documents in {spec!r}")
    return Dataset.from_dict({"text": docs})


def _read_text(path):
    # Our own reader (not load_dataset("text")) so bad bytes are reported as file:line.
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LmlabError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _split_documents(text, mode):
    if mode == "file":
        return [text.strip()] if text.strip() else []
    lines = text.splitlines()
    if mode == "line":
        return [line.strip() for line in lines if line.strip()]
    docs, current = [], []
    for line in lines + [""]:  # the sentinel blank line flushes the last document
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current).strip())
            current = []
    return docs


def _read_tabular(key, spec, paths, fmt):
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    files = [str(p) for p in paths]
    if fmt == "json" or fmt == "jsonl":
        args, kwargs = ("json",), {}
    else:
        # keep_default_na=False: a sentence like "null" or "NA" must stay a string.
        args, kwargs = ("csv",), {"keep_default_na": False}
        if fmt == "tsv":
            kwargs.update(delimiter="\t", quoting=_CSV_QUOTE_NONE)
    try:
        return load_dataset(*args, data_files={"train": files}, split="train", **kwargs)
    except DatasetGenerationError as e:
        raise LmlabError(f"{key}: cannot read {spec!r} as {fmt}: {e.__cause__ or e}") from None


# ---------------------------------------------------------------- hub


def _load_hub(cfg):
    from datasets import load_dataset

    if not cfg.hub_name:
        raise LmlabError("data.hub_name: required when data.source is 'hub'")
    try:
        loaded = load_dataset(cfg.hub_name, cfg.hub_subset)
    except (FileNotFoundError, ValueError) as e:
        raise LmlabError(
            f"data.hub_name: cannot load {cfg.hub_name!r} (subset {cfg.hub_subset!r}): {e}"
        ) from None
    wanted = {"train": cfg.train or "train", "validation": cfg.validation, "test": cfg.test}
    splits, identity = {}, {}
    for name, split in wanted.items():
        if split is None and name in loaded:  # unnamed validation/test: use it if present
            split = name
        if split is None:
            continue
        if split not in loaded:
            raise LmlabError(
                f"data.{name}: no split {split!r} in {cfg.hub_name!r} "
                f"(available: {', '.join(loaded)})"
            )
        splits[name] = loaded[split]
        identity[name] = [split, loaded[split]._fingerprint]
    return splits, identity


# ---------------------------------------------------------------- pydoc


def _load_pydoc(cfg):
    from pydoc_data.topics import topics

    from datasets import Dataset

    docs = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    return {"train": Dataset.from_dict({"text": docs})}, {"python": sys.version}


# ---------------------------------------------------------------- shared steps


def _rename_columns(ds, columns, split):
    mapping = {}
    for canonical, source in dict(columns or {}).items():
        if source not in ds.column_names:
            raise LmlabError(
                f"data.columns.{canonical}: column {source!r} not in the {split} data "
                f"(available: {', '.join(ds.column_names)})"
            )
        if source in mapping:
            raise LmlabError(
                f"data.columns.{canonical}: column {source!r} "
                f"is already mapped to {mapping[source]!r}"
            )
        if source != canonical:
            mapping[source] = canonical
    # A mapped column replaces any existing column that already has the canonical name.
    clashes = [c for c in mapping.values() if c in ds.column_names and c not in mapping]
    return ds.remove_columns(clashes).rename_columns(mapping) if mapping else ds


def _carve(train, fraction, seed):
    """Move a seeded random ``fraction`` of train (at least 1 example) to validation."""
    if not 0 < fraction < 1:
        raise LmlabError(f"data.val_fraction: must be between 0 and 1, got {fraction!r}")
    n = len(train)
    if n < 2:
        raise LmlabError(
            f"data.val_fraction: cannot carve validation from {n} train example(s); need at least 2"
        )
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)  # stdlib RNG: same split on every platform/process
    return train.select(sorted(order[n_val:])), train.select(sorted(order[:n_val]))


def _truncate(splits, max_train, max_eval):
    for key, limit in (("data.max_train_samples", max_train), ("data.max_eval_samples", max_eval)):
        if limit is not None and limit < 1:
            raise LmlabError(f"{key}: must be at least 1 or null, got {limit!r}")
    limits = {"train": max_train, "validation": max_eval, "test": max_eval}
    return {
        name: ds.select(range(min(limits[name], len(ds)))) if limits[name] is not None else ds
        for name, ds in splits.items()
    }


def _fingerprint(cfg, seed, identity):
    settings = {
        key: getattr(cfg, key)
        for key in (
            "source",
            "train",
            "validation",
            "test",
            "format",
            "documents",
            "hub_name",
            "hub_subset",
            "val_fraction",
            "max_train_samples",
            "max_eval_samples",
        )
    }
    settings["columns"] = dict(cfg.columns or {})
    blob = json.dumps(
        {"settings": settings, "seed": seed, "inputs": identity}, sort_keys=True, default=str
    )
    return hashlib.sha1(blob.encode()).hexdigest()
