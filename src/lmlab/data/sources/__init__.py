"""Data sources: where examples come from, and which columns get the canonical names.

A source never knows the task; it only yields a ``datasets.DatasetDict`` whose mapped
columns carry canonical names, plus a fingerprint of its inputs. Canonical columns:

- classification: ``text``, optional ``text_pair``, ``label`` (a ``ClassLabel``);
- NER: ``tokens`` (list of str), ``tags`` (a list of ``ClassLabel``, IOB2 tags), optional
  ``document`` (sentences in a row with the same value are one document, in order);
- QA: ``id``, ``title``, ``question``, ``context``, ``answers`` = {"text": [...],
  "answer_start": [...]} (empty lists: no answer);
- text generation and pre-training: ``text``, or ``prompt`` + ``completion``.

Sources (``data.source``):

- ``files``: local files. Each of ``data.train/validation/test`` is a file, a directory
  (every non-hidden file in it, sorted) or a glob. ``data.format`` picks the reader
  (``auto`` goes by extension: .csv .tsv .json .jsonl .conll; anything else is text).
  Every reader decodes its files with ``data.encoding`` (default utf-8; a BOM is dropped):

  - ``text``: one column ``text`` split into documents per ``data.documents``;
  - ``csv`` / ``tsv``: a header line, then one row per record, fields separated by
    ``data.delimiter`` (one character, ``\\t`` for a tab; default ``,`` for csv, a tab for
    tsv); tsv: no quoting, since SST-2 has bare ``"`` in its sentences. Values stay strings
    ("NA" and "" included), except that a column of integers (or of decimal numbers)
    becomes numbers, unless it maps onto a string column such as ``text``;
  - ``json``: a JSON array of records, or JSON lines; a SQuAD file is recognised;
  - ``jsonl``: one JSON object per line;
  - ``conll``: whitespace-separated columns, the word in ``data.token_column``, the tag in
    ``data.tag_column`` (-1: the last); blank lines end sentences; one row (``tokens``,
    ``tags``) per sentence, and ``document`` (the number of ``-DOCSTART-`` lines above it)
    when the file has such lines;
  - ``squad``: SQuAD v1.1 / v2.0 JSON, one row per question (``is_impossible``: no answer;
    ``plausible_answers`` are ignored).

- ``hub``: ``datasets.load_dataset(data.hub_name, data.hub_subset)``, or ``load_from_disk``
  when hub_name is a directory written by ``save_to_disk``. ``data.train/validation/test``
  are split names; a validation or test split that is not named is used when present,
  unless all its labels are -1 (GLUE's unlabelled test sets).
- ``pydoc``: an offline corpus every Python installation carries: the ~79 help topics of
  ``pydoc_data.topics.topics`` (~465k characters), one document per topic in column
  ``text``. It has no splits of its own, so ``data.train/validation/test`` are ignored and
  validation is carved off train.

- ``litdata``: not a source of rows: LitData streams of packed token blocks, read by
  ``lmlab.data.streaming`` (docs/large_corpora.md).

``data.columns.<canonical>=<source column>`` renames columns. Then every row is checked,
whatever the source, and each row knows where it came from (``file:line``; ``file: record
N`` in a JSON array; ``file: article A, paragraph P, question ID`` in SQuAD; ``name[split]
record N`` on the hub; records, articles and paragraphs count from 0). Bad rows: a missing
value in a canonical column, undecodable bytes, a malformed line, an empty ``text`` next to
a ``label``, a label or tag outside the label set, ``tokens`` and ``tags`` of different
lengths (or none), an answer that is not at its ``answer_start`` in the context. The first
one stops the run (``LmlabError("<where>: <reason>")``); with ``data.skip_bad_rows=true``
they are dropped, one summary per split is printed to stderr, and the counts are in the
``skipped`` attribute of the returned splits (see ``Splits``), outside the fingerprint.

Labels become a ``ClassLabel``: strings must be in ``data.labels`` and integers index it;
without ``data.labels``, the label set is the sorted distinct labels of train. Tags are
first converted to IOB2 (``to_iob2``), then the tag set is ``data.labels`` or train's tags,
"O" first, then by entity type, B- before I-. Columns that already are a ``ClassLabel``
(hub data) keep their names.

Whenever no validation split is given or found, ``data.val_fraction`` of train is carved
off, deterministically for a seed; with ``data.val_group`` (e.g. ``title``), whole groups
of rows sharing a value of that column are moved, about val_fraction of the rows.

The package: ``settings`` (the DataConfig settings, choices, canonical columns), ``files``
(the files source) with ``readers`` (text, csv/tsv, json, jsonl, conll) and ``squad``, ``hub``
(the hub and pydoc sources), ``checks`` (row checks and bad rows), ``labels`` (labels, tags,
IOB2) and ``splits`` (validation carving, truncation, fingerprints).
"""

from __future__ import annotations

import sys
from types import MappingProxyType

from lmlab.data.sources.checks import BadRows, check_rows
from lmlab.data.sources.files import load_files
from lmlab.data.sources.hub import load_hub, load_pydoc
from lmlab.data.sources.labels import to_iob2
from lmlab.data.sources.settings import (
    CANONICAL,
    DOCUMENTS,
    FORMATS,
    SOURCES,
    SPLITS,
    check_choices,
    data_config,
    mapped_columns,
    rename_columns,
)
from lmlab.data.sources.splits import Splits, carve_validation, fingerprint, truncate
from lmlab.errors import LmlabError

__all__ = [
    "load_source",
    "to_iob2",
    "Splits",
    "BadRows",
    "CANONICAL",
    "SOURCES",
    "FORMATS",
    "DOCUMENTS",
    "SPLITS",
]

_LOADERS = {"files": load_files, "hub": load_hub, "pydoc": load_pydoc}


def load_source(cfg, seed: int, cache_dir=None):
    """Load and check the splits ``cfg`` (the ``data`` config section: a ``DataConfig`` or a
    config of its schema; keys it lacks take DataConfig's defaults) describes. Text files are
    streamed into memory-mapped Arrow files cached under ``cache_dir`` (None: a temporary
    dir; see ``files``).

    Returns ``(Splits, fingerprint)``: splits ``train`` and ``validation`` always, ``test``
    when given or found; ``Splits.skipped`` holds the bad rows dropped per split. The
    fingerprint is a sha1 hex digest of the inputs' identity, every setting and ``seed``.
    """
    cfg = data_config(cfg)
    check_choices(cfg)
    loaded, identity = _LOADERS[cfg.source](cfg, bool(cfg.skip_bad_rows), cache_dir)
    columns = mapped_columns(cfg)
    splits, skipped, label_sets = {}, {}, {}
    for name, (ds, where, bad) in loaded.items():  # train first: it fixes the label sets
        ds = rename_columns(ds, columns, name)
        if name != "train":
            _check_same_columns(ds, splits["train"], name, cfg)
        splits[name] = check_rows(ds, where, bad, name, cfg, label_sets)
        if bad.rows.total:
            skipped[name] = bad.rows
            print(bad.rows.summary(name), file=sys.stderr, flush=True)
        if len(splits[name]) == 0:
            raise LmlabError(f"data.{name}: no rows left ({getattr(cfg, name)!r})")
    if "validation" not in splits:
        carve_validation(splits, cfg, seed)
    splits = Splits(truncate(splits, cfg.max_train_samples, cfg.max_eval_samples))
    splits.skipped = MappingProxyType(skipped)
    return splits, fingerprint(cfg, seed, identity)


# canonical columns a later split must have when train has them (document, id, title: optional)
_REQUIRED_AFTER_TRAIN = ("text", "text_pair", "label", "tokens", "tags")
_REQUIRED_AFTER_TRAIN += ("question", "context", "answers", "prompt", "completion")


def _check_same_columns(ds, train, split: str, cfg) -> None:
    """A validation or test split has the columns train is labelled with."""
    for column in _REQUIRED_AFTER_TRAIN:
        if column in train.column_names and column not in ds.column_names:
            source = mapped_columns(cfg).get(column, column)
            raise LmlabError(
                f"data.{split}: no column {source!r} in {getattr(cfg, split, None)!r} (train "
                f"has it; columns here: {', '.join(ds.column_names)}); map one with "
                f"data.columns.{column}=<column>"
            )
