"""The data settings a source reads: the ``data`` section as the typed ``DataConfig`` (its
defaults are the only ones), the allowed choices, the canonical column names and the mapping
of the user's columns onto them."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass

from lmlab.config_checks import DOCUMENTS, FORMATS, SOURCES
from lmlab.errors import LmlabError

SPLITS = ("train", "validation", "test")
CANONICAL = (
    *("text", "text_pair", "label", "tokens", "tags", "document"),
    *("id", "title", "question", "context", "answers", "prompt", "completion"),
)
# Canonical columns that hold strings: never turned into numbers, checked to be strings.
STRING_COLUMNS = (
    *("text", "text_pair", "id", "title", "question", "context"),
    *("prompt", "completion"),
)


def data_config(cfg):
    """``cfg`` as the typed ``lmlab.config.DataConfig`` sees it: a DataConfig, or a config
    of its schema (the composed ``data`` section), is used as it is; a config, mapping or
    object that lacks some of its keys is merged into the schema, so the keys it lacks take
    DataConfig's defaults (the only ones), and a key or value the schema refuses is an error
    that names it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from lmlab.config import DataConfig

    if isinstance(cfg, DataConfig) or all(_has(cfg, key) for key in _keys()):
        return cfg
    if not isinstance(cfg, Mapping) and not is_dataclass(cfg) and not OmegaConf.is_config(cfg):
        cfg = vars(cfg)
    try:
        return OmegaConf.merge(OmegaConf.structured(DataConfig), cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise LmlabError(f"data{'.' + key if key else ''}: {getattr(e, 'msg', e)}") from None


@functools.cache
def _keys() -> tuple[str, ...]:
    """The DataConfig keys that have a default (all but ``name``)."""
    from omegaconf import MISSING

    from lmlab.config import DataConfig

    return tuple(f.name for f in fields(DataConfig) if f.default is not MISSING)


def _has(cfg, key) -> bool:
    return key in cfg if isinstance(cfg, Mapping) else hasattr(cfg, key)


def check_choices(cfg) -> None:
    """data.source, data.format and data.documents name one of their choices."""
    for key, allowed in (("source", SOURCES), ("format", FORMATS), ("documents", DOCUMENTS)):
        value = getattr(cfg, key)
        if value not in allowed:
            raise LmlabError(f"data.{key}: unknown value {value!r} (allowed: {', '.join(allowed)})")


def mapped_columns(cfg) -> dict[str, str]:
    """data.columns as {canonical: source column}, without the canonical names left unset."""
    columns = cfg.columns
    columns = asdict(columns) if is_dataclass(columns) else dict(columns or {})
    return {k: v for k, v in columns.items() if v is not None}


def rename_columns(ds, columns, split):
    """Gives the mapped columns of one split their canonical names."""
    mapping = {}
    for canonical, source in columns.items():
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
