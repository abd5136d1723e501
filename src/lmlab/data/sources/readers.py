"""The file readers: one file -> (columns, number of rows, describe(row) -> where), every
row located at its ``file:line`` (``file: record N`` in a JSON array). Text lines and
documents, csv/tsv, JSON arrays, JSON lines and CoNLL columns, decoded with data.encoding; an
undecodable line or a malformed row goes to ``bad``. (SQuAD files: ``squad``.)"""

from __future__ import annotations

import codecs
import csv
import json
import re

from lmlab.errors import LmlabError

_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


CHUNK = 1 << 24  # bytes a text file is read in: the memory a large corpus needs


def decode_lines(path, bad, encoding) -> list[str | None]:
    """The lines of a file in ``encoding`` (without their newline; a leading BOM dropped); an
    undecodable line is a bad row, and None in the list when skipped. Lines are found at
    b"\\n", as in any ASCII-compatible encoding (not UTF-16/32 when skipping bad rows)."""
    return _decode(path, path.read_bytes(), bad, encoding)


def _decode(path, data, bad, encoding, lines_before=0, bytes_before=0) -> list[str | None]:
    """decode_lines of `data`, a part of the file after `lines_before` lines and
    `bytes_before` bytes (which number the lines and bytes of the errors)."""
    bom = "\ufeff" if bytes_before == 0 else ""
    try:
        return data.decode(encoding).removeprefix(bom).split("\n")
    except UnicodeDecodeError as e:
        if not bad.skip:
            raise _decode_error(path, data, e, encoding, lines_before, bytes_before) from None
    lines, offset = [], bytes_before
    for n, raw in enumerate(data.split(b"\n"), lines_before + 1):
        try:
            line = raw.decode(encoding)
            lines.append(line.removeprefix(bom) if n == 1 else line)
        except UnicodeDecodeError as e:
            reason = f"not valid {_codec_name(encoding)}"
            bad.add(f"{path}:{n}", reason, f"{reason} ({e.reason} at byte {offset + e.start})")
            lines.append(None)
        offset += len(raw) + 1
    return lines


def text_pieces(path, bad, encoding, digest):
    """A text file as decode_lines reads it, in pieces of about CHUNK bytes that end at a
    line end (the undecodable lines left out), its bytes hashed into `digest` on the way:
    memory bounded by a piece, whatever the file's size."""
    if "\n".encode(encoding) != b"\n":  # UTF-16/32: b"\n" is no line end; read it whole
        data = path.read_bytes()
        digest.update(data)
        yield _join(_decode(path, data, bad, encoding))
        return
    with open(path, "rb") as f:
        tail, lines_before, bytes_before = b"", 0, 0
        while block := f.read(CHUNK):
            digest.update(block)
            data = tail + block
            cut = data.rfind(b"\n") + 1
            if not cut:
                tail = data
                continue
            data, tail = data[:cut], data[cut:]
            lines = _decode(path, data, bad, encoding, lines_before, bytes_before)
            lines.pop()  # the empty part after the piece's last newline
            kept = [line for line in lines if line is not None]
            if kept:
                yield "\n".join(kept) + "\n"
            lines_before, bytes_before = lines_before + len(lines), bytes_before + cut
        yield _join(_decode(path, tail, bad, encoding, lines_before, bytes_before))


def _join(lines):
    return "\n".join(line for line in lines if line is not None)


def split_documents(pieces, mode):
    """A text file's documents per data.documents (blank_line, line or file), from its text
    given in pieces that end at line ends (text_pieces), one document at a time."""
    if mode == "file":
        text = "".join(pieces).strip()
        yield from [text] if text else []
        return
    current = []
    for piece in pieces:
        for line in piece.splitlines():
            if mode == "line":
                if line.strip():
                    yield line.strip()
            elif line.strip():
                current.append(line)
            elif current:
                yield "\n".join(current).strip()
                current = []
    if current:
        yield "\n".join(current).strip()


def read_csv(path, tsv, delimiter, keep_str, bad, encoding):
    """A header line, then one row per record (tsv: no quoting); the columns in keep_str stay
    strings, other columns of numbers become numbers."""
    # An undecodable line (when skipped) reads as a blank one, so line_num stays physical.
    lines = (("" if line is None else line) + "\n" for line in decode_lines(path, bad, encoding))
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


def read_jsonl(path, bad, encoding):
    """One JSON object per line (blank lines skipped)."""
    records, at = [], []
    for n, line in enumerate(decode_lines(path, bad, encoding), 1):
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


def json_document(path, encoding):
    """A whole-file JSON array or object; None when the file is JSON lines."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf").lstrip()
    if data.startswith(b"["):
        return load_json_document(path, encoding)
    if data.startswith(b"{"):
        try:
            return json.loads(data.decode(encoding))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # several objects (JSON lines); bad bytes are reported per line
    return None


def load_json_document(path, encoding):
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


def _decode_error(path, data, e, encoding, lines_before=0, bytes_before=0):
    line = lines_before + data.count(b"\n", 0, e.start) + 1
    reason = f"not valid {_codec_name(encoding)}"
    return LmlabError(f"{path}:{line}: {reason} ({e.reason} at byte {bytes_before + e.start})")


def read_records(path, document, bad):
    """A JSON array of objects, one row each."""
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


def read_conll(path, token_column, tag_column, bad, encoding):
    """One row (tokens, tags) per sentence (blank lines end them), and ``document`` (the
    number of -DOCSTART- lines above it) when the file has such lines."""
    tokens, tags, documents, at = [], [], [], []
    sentence, labels, start, broken = [], [], 0, False
    document = in_document = 0  # the number of -DOCSTART- lines so far
    width = None  # (columns, line) of the first token line
    lines = [*decode_lines(path, bad, encoding), ""]  # "" flushes the last sentence
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
        columns, problem = _conll_line(len(parts), width, token_column, tag_column)
        if problem:
            bad.add(f"{path}:{n}", *problem)
            broken = True
            continue
        width = width or (len(parts), n)  # the first token line sets the file's columns
        word, tag = parts[columns[0]], parts[columns[1]]
        sentence.append(word)
        labels.append(tag)
    columns = {"tokens": tokens, "tags": tags}
    if document:  # the file marks its documents: sentences can be read in their context
        columns["document"] = documents
    return columns, len(tokens), lambda i, token=0: f"{path}:{at[i] + token}"


def _conll_line(n, width, token_column, tag_column):
    """(word and tag positions, None) for a token line of n columns, or (None, (reason,
    detail)): too few columns, or another number than the file's first token line."""
    columns = _conll_columns(n, token_column, tag_column)
    if columns is None:
        setting = f"data.token_column={token_column}, data.tag_column={tag_column}"
        return None, ("too few columns", f"too few columns ({n}) for {setting}")
    if width and n != width[0]:
        detail = f"{n} columns, but {width[0]} on line {width[1]} (the file's first)"
        return None, ("a line with another number of columns", detail)
    return columns, None


def _conll_columns(n, token_column, tag_column):
    """The word and tag positions in a line of n columns; None when it has too few for two."""
    positions = [c if c >= 0 else n + c for c in (token_column, tag_column)]
    if positions[0] == positions[1] or not all(0 <= c < n for c in positions):
        return None
    return positions
