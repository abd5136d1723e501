"""The ``files`` source: each of data.train/validation/test names a file, a directory or a
glob; the files of a split are read by the reader data.format picks (``auto``: by extension)
and joined into one Dataset whose rows know their ``file:line``."""

from __future__ import annotations

import atexit
import functools
import glob
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

from lmlab.data.sources import readers, squad
from lmlab.data.sources.checks import Bad, BadRows, Where
from lmlab.data.sources.settings import SPLITS, STRING_COLUMNS, mapped_columns
from lmlab.errors import LmlabError
from lmlab.fileutil import write_dir, write_json
from lmlab.memory import open_mapped

# In the key of a text file's cached documents: another version converts the files again.
TEXT_CACHE_VERSION = 1

# Any other extension (or none) is read as text.
_FORMAT_BY_EXT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".conll": "conll",
}


def load_files(cfg, skip, cache_dir=None):
    """The splits given -> ({split: (Dataset, Where, Bad)}, the files' identity). Text files
    are streamed into Arrow files under `cache_dir` (None: a temporary dir)."""
    if cfg.train is None:
        raise LmlabError("data.train: required when data.source is 'files'")
    _check_encoding(cfg.encoding)
    _delimiter(cfg, tsv=False)  # a bad one fails before any file is read
    splits, identity = {}, {}
    for name in SPLITS:
        spec = getattr(cfg, name)
        if spec is None:
            continue
        key = f"data.{name}"
        paths = _resolve(key, spec)
        bad = Bad(skip)
        if _file_format(key, paths, cfg.format) == "text":
            ds, where, identity[name] = _read_text(key, spec, paths, cfg, bad, cache_dir)
        else:
            ds, where = _read_split(key, spec, paths, cfg, bad)
            # Size + mtime_ns is cheap and changes whenever the content does in practice.
            identity[name] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
        splits[name] = (ds, where, bad)
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
    value = cfg.delimiter
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
    where = Where()
    parts = []
    for p in paths:
        columns, n, describe = _read_file(p, fmt, cfg, bad)
        parts.append(columns)
        where.add(n, describe)
    columns = _join_columns(parts)
    if fmt == "squad":
        return Dataset.from_dict(columns, features=squad.features()), where
    return _to_dataset(columns, where, bad)


def _read_text(key, spec, paths, cfg, bad, cache_dir):
    """The documents of text files -> (Dataset, where, identity), streamed into an Arrow file
    that the Dataset memory-maps: memory stays bounded whatever the corpus size. The file is
    cached by the files' path, size and mtime_ns (a later run reads none of the text); the
    identity holds each file's sha1, hashed while converting, so that a file touched or
    copied anew, with the same content, keeps the tokenizer and the tokenized data cached."""
    files = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    settings = [TEXT_CACHE_VERSION, files, cfg.documents, cfg.encoding, bad.skip]
    name = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:16]
    folder = Path(cache_dir or _scratch()).expanduser() / "sources" / name
    if not (folder / "info.json").is_file():
        write_dir(folder, lambda tmp: _write_documents(tmp, paths, cfg, bad))
    info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
    if bad.skip:
        bad.rows = BadRows(**info["skipped"])  # a cache hit reports them again
    if not info["rows"]:
        raise LmlabError(f"{key}: no non-empty documents in {spec!r}")
    where = Where()
    where.add(info["rows"], lambda i: f"{spec}: document {i}")
    (ds,) = open_mapped([folder / "documents.arrow"])
    identity = [[str(p), size, digest] for (p, size, _), digest in zip(files, info["sha1"])]
    return ds, where, identity


def _write_documents(folder, paths, cfg, bad, batch=10_000):
    """Streams the documents of `paths` into folder/documents.arrow, `batch` at a time, and
    writes info.json: the number of rows, the files' sha1 and the bad rows skipped."""
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter

    features = Features({"text": Value("string")})
    writer = ArrowWriter(features=features, path=str(folder / "documents.arrow"))
    digests = []
    try:
        for path in paths:
            digest = hashlib.sha1()
            pieces = readers.text_pieces(path, bad, cfg.encoding, digest)
            docs = readers.split_documents(pieces, cfg.documents)
            while chunk := list(itertools.islice(docs, batch)):
                writer.write_batch({"text": chunk})
            digests.append(digest.hexdigest())
        rows, _ = writer.finalize()
    finally:
        writer.close()
    skipped = {"counts": bad.rows.counts, "first": bad.rows.first}
    write_json({"rows": rows, "sha1": digests, "skipped": skipped}, folder / "info.json")


@functools.cache
def _scratch() -> str:
    """A dir for the Arrow files of a process that names no cache dir, removed at exit."""
    path = tempfile.mkdtemp(prefix="lmlab-sources-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _read_file(path, fmt, cfg, bad):
    """One file -> (columns, number of rows, describe(row) -> where)."""
    enc = cfg.encoding
    if fmt in ("csv", "tsv"):
        keep_str = {mapped_columns(cfg).get(c, c) for c in STRING_COLUMNS}
        tsv = fmt == "tsv"
        return readers.read_csv(path, tsv, _delimiter(cfg, tsv), keep_str, bad, enc)
    if fmt == "conll":
        columns = cfg.token_column, cfg.tag_column
        return readers.read_conll(path, *columns, bad, enc)
    if fmt == "squad":
        return squad.read_squad(path, readers.load_json_document(path, enc), bad)
    if fmt == "json":
        document = readers.json_document(path, enc)
        if squad.is_squad(document):
            return squad.read_squad(path, document, bad)
        if isinstance(document, list):
            return readers.read_records(path, document, bad)
    return readers.read_jsonl(path, bad, enc)


def _join_columns(parts):
    names = list(dict.fromkeys(name for part in parts for name in part))
    columns = {name: [] for name in names}
    for part in parts:
        n = len(next(iter(part.values()))) if part else 0
        for name in names:
            columns[name] += part.get(name, [None] * n)
    return columns if names else {}


def _to_dataset(columns, where, bad):
    """Python columns -> (Dataset, where); a row whose value is of another kind than the
    column's first (a number among strings, a string among lists, ints among string tags)
    is a bad row, named at its place."""
    from datasets import Dataset

    odd = {}
    for name, values in columns.items():
        kinds = [_kind(v) for v in values]  # an empty list fits any list
        first = next((k for k in kinds if k not in (None, "a list")), None)
        first = first or next((k for k in kinds if k is not None), None)
        for i, k in enumerate(kinds):
            fits = k is None or k == first or k == "a list" and first.startswith("a list")
            if not fits and i not in odd:
                odd[i] = f"column {name!r} holds {k} here but {first} in earlier rows"
    for i in sorted(odd):
        bad.add(where(i), "a value of another kind", odd[i])
    if odd:
        keep = [i for i in range(len(next(iter(columns.values())))) if i not in odd]
        columns = {name: [values[i] for i in keep] for name, values in columns.items()}
        kept = Where()
        kept.add(len(keep), lambda i, at=where: at(keep[i]))
        where = kept
    return Dataset.from_dict(columns), where


_KINDS = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _kind(value) -> str | None:
    """A value's kind for the column check: None (missing), a string, a number, a list of
    strings, a dict, ..."""
    if value is None:
        return None
    if isinstance(value, list):
        inner = {_kind(v) for v in value} - {None}
        if len(inner) > 1:
            return "a list of mixed values"
        return "a list" if not inner else f"a list of {inner.pop()[2:]}s".replace("ss", "s")
    return _KINDS.get(type(value), f"a {type(value).__name__}")
