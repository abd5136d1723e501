"""Row checks, whatever the source: where each row came from (``Where``), the bad rows of a
split (``Bad``: stop at the first, or count them in ``BadRows`` when skipping), and
``check_rows``, which finds them, encodes labels and tags, and drops the bad rows.

The checks that know a task's columns live beside the code that knows the format:
tokens/tags in ``labels``, SQuAD answers in ``squad``; ``ROW_CHECKS`` lists them."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from lmlab.data.sources import labels, squad
from lmlab.data.sources.settings import CANONICAL, STRING_COLUMNS, mapped_columns
from lmlab.data.sources.splits import derive
from lmlab.errors import LmlabError


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


class Bad:
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


class Where:
    """Where each row of a split came from, described on demand (a split may join files)."""

    def __init__(self):
        self.starts: list[int] = []
        self.parts: list[Callable[[int], str]] = []
        self.size = 0

    def add(self, n: int, describe: Callable[[int], str]) -> None:
        self.starts.append(self.size)
        self.parts.append(describe)
        self.size += n

    def __call__(self, i: int, token: int = 0) -> str:
        """Row i's place; `token`: the token's own line where the format has one (CoNLL)."""
        k = bisect.bisect_right(self.starts, i) - 1
        if token:
            try:
                return self.parts[k](i - self.starts[k], token)
            except TypeError:  # one place per row
                pass
        return self.parts[k](i - self.starts[k])


class Columns(dict):
    """The values of a dataset's columns as Python lists, each converted once, when asked."""

    def __init__(self, ds):
        super().__init__()
        self.ds = ds

    def __missing__(self, name):
        self[name] = values = self.ds.data.column(name).to_pylist()
        return values


def note(problems, rows, reason, detail=None):
    """Marks rows as bad (problems: row -> (reason, detail)); a row keeps its first reason."""
    for i in rows:
        problems.setdefault(i, (reason, detail or reason))


def check_empty_text(columns, problems):
    """A classified text must not be empty (unlabelled corpora keep their blank rows)."""
    empty = (i for i, t in enumerate(columns["text"]) if t is not None and not t.strip())
    note(problems, empty, "empty text")


# (the canonical columns a check needs, check(columns, problems)), in the order they run
ROW_CHECKS = (
    (("label", "text"), check_empty_text),
    (("answers", "context"), squad.check_answers),
    (("tokens", "tags"), labels.check_lengths),
)


def check_rows(ds, where, bad, split, cfg, label_sets):
    """Finds the bad rows of one split (raising on the first unless skipping), turns labels
    and tags into ClassLabels and drops the bad rows."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    check_types(ds, split)
    present = [c for c in CANONICAL if c in ds.column_names]
    columns = Columns(ds)
    problems: dict[int, tuple[str, str]] = {}
    _check_missing(ds, present, columns, mapped_columns(cfg), problems)
    for needed, check in ROW_CHECKS:
        if all(c in present for c in needed):
            check(columns, problems)
    given = None if cfg.labels is None else [str(name) for name in cfg.labels]
    replaced = labels.encode_columns(ds, present, columns, given, split, label_sets, problems)
    for i in sorted(problems):
        reason, detail, *token = problems[i]  # token: the word's index in its row
        bad.add(where(i, *token), reason, detail)
    for column, (ids, feature) in replaced.items():
        ds = labels.replace_column(ds, column, ids, feature)
    if problems:
        keep = [i for i in range(len(ds)) if i not in problems]
        ds = ds.select(keep, new_fingerprint=derive(ds, "drop", sorted(problems)))
    return ds


def _check_missing(ds, present, columns, sources, problems):
    for c in present:
        if ds.data.column(c).null_count:
            detail = f"missing value in column {sources.get(c, c)!r}"
            note(problems, (i for i, v in enumerate(columns[c]) if v is None), detail)


def check_types(ds, split):
    """The canonical string columns hold strings."""
    from datasets import Value

    for c in STRING_COLUMNS:
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
