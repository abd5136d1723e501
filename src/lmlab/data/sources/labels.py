"""Labels and tags: the ``label`` and ``tags`` columns become ``ClassLabel`` ids, tags first
converted to IOB2 (``to_iob2``); the label set is data.labels or train's labels (tags: "O"
first, then by entity type, B- before I-); and the NER row check (as many tags as tokens)."""

from __future__ import annotations

from lmlab.data.sources.splits import derive
from lmlab.errors import LmlabError

_LABEL_DTYPES = (
    *("string", "large_string", "null", "int8", "int16", "int32", "int64"),
    *("uint8", "uint16", "uint32", "uint64"),
)


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


def check_lengths(columns, problems):
    """A sentence has as many tags as tokens, and at least one."""
    for i, (words, tags) in enumerate(zip(columns["tokens"], columns["tags"])):
        if words is None or tags is None:
            continue
        if len(words) != len(tags):
            detail = f"{len(words)} tokens but {len(tags)} tags"
            problems.setdefault(i, ("tokens and tags of different lengths", detail))
        elif not words:
            problems.setdefault(i, ("empty sentence", "empty sentence (no tokens)"))


def encode_columns(ds, present, columns, given, split, label_sets, problems):
    """The ``label`` and ``tags`` columns present -> {column: (ids, feature)}, those that need
    replacing; ``label_sets`` keeps train's label sets for the later splits."""
    replaced = {}
    for column in ("label", "tags"):
        if column in present:
            encoded = _encode(ds, column, columns[column], given, split, label_sets, problems)
            if encoded is not None:
                replaced[column] = encoded
    return replaced


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
        values = [_checked_tags(i, v, problems) for i, v in enumerate(values)]
    if column not in label_sets:
        label_sets[column] = _label_set(values, given, nested)
    names, lookup = label_sets[column]
    ids = _check_values(values, lookup, nested, problems)
    feature = ClassLabel(names=names)
    return ids, List(feature) if nested else feature


TAG_PREFIXES = "BIESLU"  # IOB1/IOB2, IOBES and BILOU prefixes


def _checked_tags(i, tags, problems):
    """One row's tags in IOB2, or None (the row is bad: a missing or malformed tag)."""
    if tags is None or not all(isinstance(t, str) for t in tags):
        missing = None if tags is None else next((j for j, t in enumerate(tags) if t is None), None)
        if missing is not None:
            problems.setdefault(i, ("missing tag", f"missing tag (word {missing + 1})", missing))
            return None
        return tags
    for j, tag in enumerate(tags):
        prefix, dash, kind = tag.partition("-")
        if dash and (len(prefix) != 1 or prefix not in TAG_PREFIXES or not kind):
            detail = f"malformed tag {tag!r} (expected O, B-<type> or I-<type>)"
            problems.setdefault(i, ("malformed tag", detail, j))
            return None
    return to_iob2(tags)


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
            j = mapped.index(None)
            value = rows[i][j]
            reason = f"{noun} {value!r} not in the {noun} set"
            detail = (
                "no label (-1)" if value == -1 and not nested else reason + _kinds(value, lookup)
            )
            problems.setdefault(i, (reason, detail, j) if nested else (reason, detail))
            ids[i] = [0] * len(mapped)
    return ids if nested else [row[0] if row else 0 for row in ids]


def _kinds(value, lookup) -> str:
    """When a value is of another kind than the set's (a number among names): say so."""
    names = [k for k in lookup if isinstance(k, str)]
    if isinstance(value, str) and not names:
        return " (the set holds numbers: train's labels are ids; set data.labels to name them)"
    if not isinstance(value, str) and names and len(names) == len(lookup):
        return f" (the set holds names: {', '.join(names[:6])}; a number must index data.labels)"
    return ""


def replace_column(ds, column, values, feature):
    """ds with ``column`` holding ``values`` as ``feature``, in the same place."""
    order = ds.column_names
    fingerprint = derive(ds, "encode", column, str(feature))
    ds = ds.remove_columns(column, new_fingerprint=fingerprint + "-r")
    ds = ds.add_column(column, values, feature=feature, new_fingerprint=fingerprint + "-a")
    return ds.select_columns(order, new_fingerprint=fingerprint)
