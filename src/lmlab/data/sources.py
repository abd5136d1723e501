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
"""

from __future__ import annotations

import bisect
import codecs
import csv
import glob
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from datasets import DatasetDict

from lmlab.errors import LmlabError

SOURCES = ("files", "hub", "pydoc")
FORMATS = ("auto", "text", "csv", "tsv", "json", "jsonl", "conll", "squad")
DOCUMENTS = ("blank_line", "line", "file")
SPLITS = ("train", "validation", "test")
# Any other extension (or none) is read as text.
_FORMAT_BY_EXT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".conll": "conll",
}
CANONICAL = (
    *("text", "text_pair", "label", "tokens", "tags", "document"),
    *("id", "title", "question", "context", "answers", "prompt", "completion"),
)
_STRING_COLUMNS = (
    *("text", "text_pair", "id", "title", "question", "context"),
    *("prompt", "completion"),
)
_LABEL_DTYPES = (
    *("string", "large_string", "null", "int8", "int16", "int32", "int64"),
    *("uint8", "uint16", "uint32", "uint64"),
)
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# The DataConfig defaults of the settings added for fine-tuning, for plain configs that lack them.
_NEW_SETTINGS = {
    "labels": None,
    "token_column": 0,
    "tag_column": -1,
    "skip_bad_rows": False,
    "val_group": None,
    "delimiter": None,
    "encoding": "utf-8",
}


@dataclass
class BadRows:
    """The bad rows dropped from one split (data.skip_bad_rows=true)."""

    counts: dict[str, int] = field(default_factory=dict)  # reason -> rows
    first: str = ""  # "<where>: <reason>" of the first one

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, split: str) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.items())
        noun = "row" if self.total == 1 else "rows"
        return f"data.{split}: skipped {self.total} bad {noun} ({reasons}); first: {self.first}"


class Splits(DatasetDict):
    """The splits ``load_source`` returns; ``skipped`` maps a split to the ``BadRows`` dropped
    from it (only splits that lost rows; kept out of the fingerprint)."""

    skipped = MappingProxyType({})


class _Bad:
    """Collects the bad rows of one split: raises on the first, or counts them when skipping."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.rows = BadRows()

    def add(self, where: str, reason: str, detail: str | None = None) -> None:
        message = f"{where}: {detail or reason}"
        if not self.skip:
            raise LmlabError(message)
        self.rows.counts[reason] = self.rows.counts.get(reason, 0) + 1
        self.rows.first = self.rows.first or message


class _Where:
    """Where each row of a split came from, described on demand (a split may join files)."""

    def __init__(self):
        self.starts: list[int] = []
        self.parts: list[Callable[[int], str]] = []
        self.size = 0

    def add(self, n: int, describe: Callable[[int], str]) -> None:
        self.starts.append(self.size)
        self.parts.append(describe)
        self.size += n

    def __call__(self, i: int) -> str:
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k](i - self.starts[k])


def load_source(cfg, seed: int):
    """Load and check the splits ``cfg`` (the ``data`` config section) describes.

    Returns ``(Splits, fingerprint)``: splits ``train`` and ``validation`` always, ``test``
    when given or found; ``Splits.skipped`` holds the bad rows dropped per split. The
    fingerprint is a sha1 hex digest of the inputs' identity, every setting and ``seed``.
    """
    _check_choice("data.source", cfg.source, SOURCES)
    _check_choice("data.format", cfg.format, FORMATS)
    _check_choice("data.documents", cfg.documents, DOCUMENTS)
    skip = bool(_setting(cfg, "skip_bad_rows"))
    loader = {"files": _load_files, "hub": _load_hub, "pydoc": _load_pydoc}[cfg.source]
    loaded, identity = loader(cfg, skip)
    splits, skipped, label_sets = {}, {}, {}
    for name, (ds, where, bad) in loaded.items():  # train first: it fixes the label sets
        ds = _rename_columns(ds, _columns(cfg), name)
        splits[name] = _check_rows(ds, where, bad, name, cfg, label_sets)
        if bad.rows.total:
            skipped[name] = bad.rows
            print(bad.rows.summary(name), file=sys.stderr, flush=True)
        if len(splits[name]) == 0:
            raise LmlabError(f"data.{name}: no rows left ({getattr(cfg, name, None)!r})")
    if "validation" not in splits:
        group = _setting(cfg, "val_group")
        carve = _carve_groups if group else _carve
        splits["train"], splits["validation"] = carve(
            splits["train"], cfg.val_fraction, seed, group
        )
    splits = Splits(_truncate(splits, cfg.max_train_samples, cfg.max_eval_samples))
    splits.skipped = MappingProxyType(skipped)
    return splits, _fingerprint(cfg, seed, identity)


def _setting(cfg, key):
    return getattr(cfg, key, _NEW_SETTINGS[key])


def _columns(cfg) -> dict[str, str]:
    """data.columns as {canonical: source column}, without the canonical names left unset."""
    return {k: v for k, v in dict(cfg.columns or {}).items() if v is not None}


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise LmlabError(f"{key}: unknown value {value!r} (allowed: {', '.join(allowed)})")


# ---------------------------------------------------------------- files


def _load_files(cfg, skip):
    if cfg.train is None:
        raise LmlabError("data.train: required when data.source is 'files'")
    _check_encoding(_setting(cfg, "encoding"))
    _delimiter(cfg, tsv=False)  # a bad one fails before any file is read
    splits, identity = {}, {}
    for name in SPLITS:
        spec = getattr(cfg, name)
        if spec is None:
            continue
        key = f"data.{name}"
        paths = _resolve(key, spec)
        bad = _Bad(skip)
        ds, where = _read_split(key, spec, paths, cfg, bad)
        splits[name] = (ds, where, bad)
        # Size + mtime_ns is cheap and changes whenever the content does in practice.
        identity[name] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return splits, identity


def _check_encoding(encoding):
    try:
        b"\n".decode(encoding)  # b"" is decoded without looking the codec up
    except UnicodeDecodeError:  # a known codec (utf-16: half a character)
        pass
    except (LookupError, TypeError):
        raise LmlabError(
            f"data.encoding: unknown encoding {encoding!r} "
            "(expected a Python text codec such as utf-8, latin-1, cp1252)"
        ) from None


def _delimiter(cfg, tsv):
    """data.delimiter as one character (the two characters \\t: a tab); None: the default."""
    value = _setting(cfg, "delimiter")
    if value is None:
        return "\t" if tsv else ","
    value = {"\\t": "\t"}.get(value, value)
    if not isinstance(value, str) or len(value) != 1 or value in '\r\n"':
        raise LmlabError(
            "data.delimiter: expected one character other than a quote or a newline "
            f"(e.g. ';', '|', '@', \\t for a tab), got {value!r}"
        )
    return value


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


def _read_split(key, spec, paths, cfg, bad):
    """Reads the files of one split -> (Dataset, where)."""
    from datasets import Dataset

    fmt = _file_format(key, paths, cfg.format)
    enc = _setting(cfg, "encoding")
    where = _Where()
    if fmt == "text":
        docs = []
        for p in paths:
            text = "\n".join(line for line in _decode(p, bad, enc) if line is not None)
            docs += _split_documents(text, cfg.documents)
        if not docs:
            raise LmlabError(f"{key}: no non-empty documents in {spec!r}")
        where.add(len(docs), lambda i: f"{spec}: document {i}")
        return Dataset.from_dict({"text": docs}), where
    parts = []
    for p in paths:
        columns, n, describe = _read_file(p, fmt, cfg, bad)
        parts.append(columns)
        where.add(n, describe)
    columns = _join_columns(parts)
    if fmt == "squad":
        return Dataset.from_dict(columns, features=_squad_features()), where
    return _to_dataset(columns, where), where


def _read_file(path, fmt, cfg, bad):
    """One file -> (columns, number of rows, describe(row) -> where)."""
    enc = _setting(cfg, "encoding")
    if fmt in ("csv", "tsv"):
        keep_str = {_columns(cfg).get(c, c) for c in _STRING_COLUMNS}
        return _read_csv(path, fmt == "tsv", _delimiter(cfg, fmt == "tsv"), keep_str, bad, enc)
    if fmt == "conll":
        columns = _setting(cfg, "token_column"), _setting(cfg, "tag_column")
        return _read_conll(path, *columns, bad, enc)
    if fmt == "squad":
        return _read_squad(path, _load_json_document(path, enc), bad)
    if fmt == "json":
        document = _json_document(path, enc)
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            return _read_squad(path, document, bad)
        if isinstance(document, list):
            return _read_records(path, document, bad)
    return _read_jsonl(path, bad, enc)


def _decode(path, bad, encoding) -> list[str | None]:
    """The lines of a file in ``encoding`` (without their newline; a leading BOM dropped); an
    undecodable line is a bad row, and None in the list when skipped. Lines are found at
    b"\\n", as in any ASCII-compatible encoding (not UTF-16/32 when skipping bad rows)."""
    data = path.read_bytes()
    try:
        return data.decode(encoding).removeprefix("\ufeff").split("\n")
    except UnicodeDecodeError as e:
        if not bad.skip:
            raise _decode_error(path, data, e, encoding) from None
    lines, offset = [], 0
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode(encoding)
            lines.append(line.removeprefix("\ufeff") if n == 1 else line)
        except UnicodeDecodeError as e:
            reason = f"not valid {_codec_name(encoding)}"
            bad.add(f"{path}:{n}", reason, f"{reason} ({e.reason} at byte {offset + e.start})")
            lines.append(None)
        offset += len(raw) + 1
    return lines


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


def _read_csv(path, tsv, delimiter, keep_str, bad, encoding):
    # An undecodable line (when skipped) reads as a blank one, so line_num stays physical.
    lines = (("" if line is None else line) + "\n" for line in _decode(path, bad, encoding))
    options = {"delimiter": delimiter} | ({"quoting": csv.QUOTE_NONE} if tsv else {})
    reader = csv.reader(lines, **options)
    header = next(reader, None)
    if not header:
        raise LmlabError(f"{path}:1: expected a header line naming the columns")
    rows, at, start = [], [], reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.add(f"{path}:{start}", "malformed csv", f"malformed csv ({e})")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not row:  # a blank line
            continue
        if len(row) > len(header):
            detail = f"{len(row)} fields, but the header has {len(header)}"
            bad.add(f"{path}:{line}", "too many fields", detail)
            continue
        rows.append(row + [None] * (len(header) - len(row)))
        at.append(line)
    columns = {
        name: _infer([r[j] for r in rows], name in keep_str) for j, name in enumerate(header)
    }
    return columns, len(rows), lambda i: f"{path}:{at[i]}"


def _infer(values, keep_str):
    """A column of integers (or decimal numbers) becomes numbers; everything else stays str."""
    present = [v for v in values if v is not None]
    if keep_str or not present:
        return values
    for pattern, kind in ((_INT, int), (_FLOAT, float)):
        if all(pattern.fullmatch(v) for v in present):
            return [None if v is None else kind(v) for v in values]
    return values


def _read_jsonl(path, bad, encoding):
    records, at = [], []
    for n, line in enumerate(_decode(path, bad, encoding), 1):
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad.add(f"{path}:{n}", "not valid JSON", f"not valid JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            bad.add(f"{path}:{n}", "not a JSON object")
            continue
        records.append(record)
        at.append(n)
    return _record_columns(records), len(records), lambda i: f"{path}:{at[i]}"


def _json_document(path, encoding):
    """A whole-file JSON array or object; None when the file is JSON lines."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf").lstrip()
    if data.startswith(b"["):
        return _load_json_document(path, encoding)
    if data.startswith(b"{"):
        try:
            return json.loads(data.decode(encoding))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # several objects (JSON lines); bad bytes are reported per line
    return None


def _load_json_document(path, encoding):
    text = _read_text(path, encoding)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _read_text(path, encoding):
    data = path.read_bytes()
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise _decode_error(path, data, e, encoding) from None


def _codec_name(encoding):
    """How the decoding errors name the encoding: "UTF-8" as before, else its codec name."""
    name = codecs.lookup(encoding).name
    return "UTF-8" if name == "utf-8" else name


def _decode_error(path, data, e, encoding):
    line = data.count(b"\n", 0, e.start) + 1
    reason = f"not valid {_codec_name(encoding)}"
    return LmlabError(f"{path}:{line}: {reason} ({e.reason} at byte {e.start})")


def _read_records(path, document, bad):
    records, at = [], []
    for n, record in enumerate(document):
        if isinstance(record, dict):
            records.append(record)
            at.append(n)
        else:
            bad.add(f"{path}: record {n}", "not a JSON object")
    return _record_columns(records), len(records), lambda i: f"{path}: record {at[i]}"


def _record_columns(records):
    names = list(dict.fromkeys(k for r in records for k in r))
    return {name: [r.get(name) for r in records] for name in names}


def _read_conll(path, token_column, tag_column, bad, encoding):
    tokens, tags, documents, at = [], [], [], []
    sentence, labels, start, broken = [], [], 0, False
    document = in_document = 0  # the number of -DOCSTART- lines so far
    lines = [*_decode(path, bad, encoding), ""]  # "" flushes the last sentence
    for n, line in enumerate(lines, 1):
        if line is None:  # undecodable: already counted, drop its sentence
            broken = True
            continue
        parts = line.split()
        if parts and parts[0] == "-DOCSTART-":
            document += 1
            continue
        if not parts:
            if sentence and not broken:
                tokens.append(sentence)
                tags.append(labels)
                documents.append(in_document)
                at.append(start)
            sentence, labels, broken = [], [], False
            continue
        if not sentence and not broken:
            start, in_document = n, document
        if broken:
            continue
        columns = _conll_columns(len(parts), token_column, tag_column)
        if columns is None:
            setting = f"data.token_column={token_column}, data.tag_column={tag_column}"
            bad.add(
                f"{path}:{n}", "too few columns", f"too few columns ({len(parts)}) for {setting}"
            )
            broken = True
            continue
        word, tag = parts[columns[0]], parts[columns[1]]
        sentence.append(word)
        labels.append(tag)
    columns = {"tokens": tokens, "tags": tags}
    if document:  # the file marks its documents: sentences can be read in their context
        columns["document"] = documents
    return columns, len(tokens), lambda i: f"{path}:{at[i]}"


def _conll_columns(n, token_column, tag_column):
    """The word and tag positions in a line of n columns; None when it has too few for two."""
    positions = [c if c >= 0 else n + c for c in (token_column, tag_column)]
    if positions[0] == positions[1] or not all(0 <= c < n for c in positions):
        return None
    return positions


def _read_squad(path, document, bad):
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise LmlabError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    rows, at = [], []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_squad_items(article, "paragraphs", f"{path}: article {a}")):
            context = paragraph.get("context")
            for qa in _squad_items(paragraph, "qas", f"{path}: article {a}, paragraph {p}"):
                where = f"{path}: article {a}, paragraph {p}, question {qa.get('id')}"
                answers = _squad_answers(qa)
                if answers is None:
                    bad.add(
                        where,
                        "malformed answers",
                        "malformed answers (expected text and answer_start)",
                    )
                    continue
                qid = qa.get("id")
                row = {
                    "id": None if qid is None else str(qid),
                    "title": article.get("title", ""),
                    "context": context,
                    "question": qa.get("question"),
                    "answers": answers,
                }
                rows.append(row)
                at.append(where)
    columns = {name: [r[name] for r in rows] for name in _squad_features()}
    return columns, len(rows), lambda i: at[i]


def _squad_items(parent, key, where):
    """parent[key], a list of objects, checked so that a malformed file names its place."""
    items = parent.get(key, []) if isinstance(parent, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise LmlabError(f"{where}: malformed SQuAD file (expected a list of objects in {key!r})")
    return items


def _squad_answers(qa):
    if qa.get("is_impossible"):
        return {"text": [], "answer_start": []}
    answers = qa.get("answers", [])
    try:
        texts = [a["text"] for a in answers]
        starts = [a["answer_start"] for a in answers]
    except (KeyError, TypeError):
        return None
    if not all(isinstance(t, str) for t in texts) or not all(type(s) is int for s in starts):
        return None
    return {"text": texts, "answer_start": starts}


def _squad_features():
    from datasets import Features, List, Value

    answers = {"text": List(Value("string")), "answer_start": List(Value("int32"))}
    text = Value("string")
    return Features(id=text, title=text, context=text, question=text, answers=answers)


def _join_columns(parts):
    names = list(dict.fromkeys(name for part in parts for name in part))
    columns = {name: [] for name in names}
    for part in parts:
        n = len(next(iter(part.values()))) if part else 0
        for name in names:
            columns[name] += part.get(name, [None] * n)
    return columns if names else {}


def _to_dataset(columns, where):
    """Python columns -> Dataset; a column that mixes kinds of values is named at its row."""
    import pyarrow as pa
    from datasets import Dataset

    try:
        return Dataset.from_dict(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        for name, values in columns.items():
            kinds = [type(v) for v in values]
            first = next((k for k in kinds if k is not type(None)), None)
            odd = next((i for i, k in enumerate(kinds) if k not in (first, type(None))), None)
            if odd is not None:
                raise LmlabError(
                    f"{where(odd)}: column {name!r} holds a {kinds[odd].__name__} here but "
                    f"a {first.__name__} in earlier rows"
                ) from None
        raise


# ---------------------------------------------------------------- hub


def _load_hub(cfg, skip):
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
        if not named and _unlabelled(ds, _columns(cfg).get("label", "label")):
            print(f"data.{name}: split {split!r} has no labels (all -1); not used", flush=True)
            continue
        where = _Where()
        where.add(len(ds), lambda i, s=split: f"{cfg.hub_name}[{s}] record {i}")
        splits[name] = (ds, where, _Bad(skip))
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


# ---------------------------------------------------------------- pydoc


def _load_pydoc(cfg, skip):
    from pydoc_data.topics import topics

    from datasets import Dataset

    docs = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    where = _Where()
    where.add(len(docs), lambda i: f"pydoc topic {i}")
    return {"train": (Dataset.from_dict({"text": docs}), where, _Bad(skip))}, {
        "python": sys.version
    }


# ---------------------------------------------------------------- checks


def _check_rows(ds, where, bad, split, cfg, label_sets):
    """Finds the bad rows of one split (raising on the first unless skipping), turns labels
    and tags into ClassLabels and drops the bad rows."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    _check_types(ds, split)
    present = [c for c in CANONICAL if c in ds.column_names]
    sources = _columns(cfg)
    problems: dict[int, tuple[str, str]] = {}
    for c in present:
        values = ds.data.column(c)
        if values.null_count:
            detail = f"missing value in column {sources.get(c, c)!r}"
            _note(problems, (i for i, v in enumerate(values.to_pylist()) if v is None), detail)
    columns = {
        c: ds.data.column(c).to_pylist() for c in ("label", "tokens", "tags") if c in present
    }
    if "label" in present and "text" in present:
        texts = ds.data.column("text").to_pylist()
        _note(
            problems,
            (i for i, t in enumerate(texts) if t is not None and not t.strip()),
            "empty text",
        )
    if "answers" in present and "context" in present:
        _check_answers(ds, problems)
    if "tokens" in present and "tags" in present:
        _check_lengths(columns["tokens"], columns["tags"], problems)
    labels = _setting(cfg, "labels")
    given = None if labels is None else [str(name) for name in labels]
    replaced = {}
    for column in ("label", "tags"):
        if column in present:
            encoded = _encode(ds, column, columns[column], given, split, label_sets, problems)
            if encoded is not None:
                replaced[column] = encoded
    for i in sorted(problems):
        reason, detail = problems[i]
        bad.add(where(i), reason, detail)
    for column, (ids, feature) in replaced.items():
        ds = _replace_column(ds, column, ids, feature)
    if problems:
        keep = [i for i in range(len(ds)) if i not in problems]
        ds = ds.select(keep, new_fingerprint=_derive(ds, "drop", sorted(problems)))
    return ds


def _note(problems, rows, reason, detail=None):
    for i in rows:
        problems.setdefault(i, (reason, detail or reason))


def _check_types(ds, split):
    from datasets import Value

    for c in _STRING_COLUMNS:
        feature = ds.features.get(c)
        if feature is None:
            continue
        if not isinstance(feature, Value) or feature.dtype not in (
            "string",
            "large_string",
            "null",
        ):
            raise LmlabError(
                f"data.columns.{c}: the {split} column {c!r} holds {feature} values; "
                "expected strings"
            )


def _check_lengths(tokens, tags, problems):
    for i, (words, labels) in enumerate(zip(tokens, tags)):
        if words is None or labels is None:
            continue
        if len(words) != len(labels):
            detail = f"{len(words)} tokens but {len(labels)} tags"
            problems.setdefault(i, ("tokens and tags of different lengths", detail))
        elif not words:
            problems.setdefault(i, ("empty sentence", "empty sentence (no tokens)"))


def _check_answers(ds, problems):
    contexts = ds.data.column("context").to_pylist()
    answers = ds.data.column("answers").to_pylist()
    for i, (context, answer) in enumerate(zip(contexts, answers)):
        if context is None or answer is None:
            continue
        texts, starts = answer.get("text") or [], answer.get("answer_start") or []
        if len(texts) != len(starts):
            detail = f"{len(texts)} answer texts but {len(starts)} answer_start values"
            problems.setdefault(i, ("malformed answers", detail))
            continue
        for text, start in zip(texts, starts):
            found = context[start : start + len(text)] if start >= 0 else ""
            if found != text:
                detail = f"answer {text!r} is not at answer_start {start} (found {found!r})"
                problems.setdefault(i, ("answer not at answer_start", detail))
                break


# ---------------------------------------------------------------- labels and tags


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (or IOB2) tags -> IOB2: an ``I-X`` that does not continue an entity of type X
    starts one (``B-X``); valid IOB2 and tags without an ``I-`` prefix are unchanged."""
    out: list[str] = []
    for tag in tags:
        if tag.startswith("I-"):
            prev = out[-1] if out else "O"
            if prev[:2] not in ("B-", "I-") or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def _tag_order(tag: str):
    """ "O" first, then by entity type, B- before I- (other prefixes after, bare tags first)."""
    if tag == "O":
        return (0, "", 0, "")
    if len(tag) > 2 and tag[1] == "-":
        prefix, kind = tag[0], tag[2:]
        return (1, kind, "BI".index(prefix) if prefix in "BI" else 2, prefix)
    return (1, tag, -1, "")


def _encode(ds, column, values, given, split, label_sets, problems):
    """Label (or tag) values -> (ClassLabel ids, feature); bad values are noted."""
    from datasets import ClassLabel, List

    feature = ds.features[column]
    nested = column == "tags"
    inner = feature.feature if nested and isinstance(feature, List) else feature
    kind = getattr(inner, "dtype", None)
    if not isinstance(inner, ClassLabel) and kind not in _LABEL_DTYPES:
        raise LmlabError(
            f"data.columns.{column}: the {split} column {column!r} holds {feature}; "
            "expected names (str) or ids (int)" + (", a list per sentence" if nested else "")
        )
    if isinstance(inner, ClassLabel):  # hub data: its names stand
        if given is not None and given != inner.names:
            raise LmlabError(
                f"data.labels: {given} differ from the names {inner.names} "
                f"of the {split} column {column!r}"
            )
        lookup = {i: i for i in range(len(inner.names))}
        _check_values(values, lookup, nested, problems)
        return None
    if nested:
        values = [
            v if v is None or not all(isinstance(t, str) for t in v) else to_iob2(v) for v in values
        ]
    if column not in label_sets:
        label_sets[column] = _label_set(values, given, nested)
    names, lookup = label_sets[column]
    ids = _check_values(values, lookup, nested, problems)
    feature = ClassLabel(names=names)
    return ids, List(feature) if nested else feature


def _label_set(values, given, nested):
    """(names, lookup value -> id): data.labels (names, and ids indexing them), else the
    distinct values of train, sorted (tags: "O" first, then by type, B- before I-)."""
    flat = [v for row in values if row is not None for v in row] if nested else values
    distinct = {v for v in flat if v is not None}
    if given is not None:
        if len(set(given)) != len(given):
            dup = next(n for n in given if given.count(n) > 1)
            raise LmlabError(f"data.labels: {dup!r} appears more than once")
        return given, {**{n: i for i, n in enumerate(given)}, **{i: i for i in range(len(given))}}
    order = (
        sorted(distinct, key=_tag_order)
        if nested and all(isinstance(v, str) for v in distinct)
        else sorted(distinct)
    )
    return [str(v) for v in order], {v: i for i, v in enumerate(order)}


def _check_values(values, lookup, nested, problems):
    """Values -> ids through lookup; a value outside it makes its row bad (its ids: 0s)."""
    noun = "tag" if nested else "label"
    rows = values if nested else [[v] for v in values]
    ids = [None if row is None else [lookup.get(v) for v in row] for row in rows]
    for i, mapped in enumerate(ids):
        if mapped is None:  # a missing value, noted already
            ids[i] = []
        elif None in mapped:
            value = rows[i][mapped.index(None)]
            reason = f"{noun} {value!r} not in the {noun} set"
            detail = "no label (-1)" if value == -1 and not nested else reason
            problems.setdefault(i, (reason, detail))
            ids[i] = [0] * len(mapped)
    return ids if nested else [row[0] if row else 0 for row in ids]


def _replace_column(ds, column, values, feature):
    order = ds.column_names
    fingerprint = _derive(ds, "encode", column, str(feature))
    ds = ds.remove_columns(column, new_fingerprint=fingerprint + "-r")
    ds = ds.add_column(column, values, feature=feature, new_fingerprint=fingerprint + "-a")
    return ds.select_columns(order, new_fingerprint=fingerprint)


def _derive(ds, *steps) -> str:
    """A fingerprint for a step on ds; hashing the data again (datasets' default) is slow."""
    return hashlib.sha1(json.dumps([ds._fingerprint, *steps]).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- shared steps


def _rename_columns(ds, columns, split):
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


def _check_fraction(fraction, n):
    if not 0 < fraction < 1:
        raise LmlabError(f"data.val_fraction: must be between 0 and 1, got {fraction!r}")
    if n < 2:
        raise LmlabError(
            f"data.val_fraction: cannot carve validation from {n} train example(s); need at least 2"
        )


def _carve(train, fraction, seed, group=None):
    """Move a seeded random ``fraction`` of train (at least 1 example) to validation."""
    n = len(train)
    _check_fraction(fraction, n)
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)  # stdlib RNG: same split on every platform/process
    return train.select(sorted(order[n_val:])), train.select(sorted(order[:n_val]))


def _carve_groups(train, fraction, seed, column):
    """Move whole groups (rows sharing a value of ``column``), seeded, about ``fraction`` of
    the rows, to validation: the validation questions of SQuAD come from unseen articles."""
    _check_fraction(fraction, len(train))
    if column not in train.column_names:
        raise LmlabError(
            f"data.val_group: no column {column!r} in train "
            f"(available: {', '.join(train.column_names)})"
        )
    values = train.with_format("arrow")[column].to_pylist()
    sizes = Counter(values)
    if len(sizes) < 2:
        raise LmlabError(
            f"data.val_group: train has {len(sizes)} group(s) of {column!r}; need at least 2"
        )
    order = list(sizes)  # first appearance: deterministic
    random.Random(seed).shuffle(order)
    target, chosen, count = fraction * len(values), set(), 0
    for group in order:
        if count >= target or len(chosen) == len(order) - 1:
            break
        # take a group when it brings the count closer to the target (always the first)
        if not chosen or count + sizes[group] - target <= target - count:
            chosen.add(group)
            count += sizes[group]
    val = [i for i, v in enumerate(values) if v in chosen]
    held = set(val)
    return train.select([i for i in range(len(values)) if i not in held]), train.select(val)


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
    settings |= {key: _setting(cfg, key) for key in _NEW_SETTINGS}
    if settings["labels"] is not None:
        settings["labels"] = [str(name) for name in settings["labels"]]
    settings["columns"] = _columns(cfg)
    blob = json.dumps(
        {"settings": settings, "seed": seed, "inputs": identity}, sort_keys=True, default=str
    )
    return hashlib.sha1(blob.encode()).hexdigest()
