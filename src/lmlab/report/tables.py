"""The table of a sweep report and the texts made from it: report.csv, report.md (the table,
the best job's overrides and the command that trains it again, the plots) and best.yaml."""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmlab.report.jobs import STATUS_ORDER, Job, Target

UNSET = "(unset)"  # a swept key that this job's overrides do not set


@dataclass
class Table:
    header: list[str]
    rows: list[list]  # cells: int, str, float or None (no value)


def metric_columns(jobs: list[Job], target: Target) -> list[str]:
    names = {k for job in jobs for k in job.metrics if k.startswith(("val/", "test/"))}
    names.discard(target.metric)
    present = any("global_step" in job.metrics for job in jobs) and target.metric != "global_step"
    return sorted(names, key=lambda n: (not n.startswith("val/"), n)) + ["global_step"] * present


def build_table(ranked: list[Job], params: list[str], target: Target) -> Table:
    metrics = metric_columns(ranked, target)
    header = ["job", "status", *params, target.metric, *metrics, "error"]
    rows = []
    for job in ranked:
        values = job.override_values()
        rows.append(
            [
                job.num,
                job.status,
                *(values.get(p, UNSET) for p in params),
                *(job.metrics.get(m) for m in (target.metric, *metrics)),
                job.error,
            ]
        )
    return Table(header, rows)


def csv_text(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    for row in table.rows:
        writer.writerow(["" if cell is None else cell for cell in row])
    return out.getvalue()


def md_cell(cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float):
        return f"{cell:.0f}" if cell.is_integer() and abs(cell) >= 1 else f"{cell:.4g}"
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "---|" * len(table.header),
        *("| " + " | ".join(md_cell(c) for c in row) + " |" for row in table.rows),
    ]
    return "\n".join(lines) + "\n"


def train_command(job: Job) -> str:
    return " ".join(["lmlab-train", *(shlex.quote(o) for o in job.overrides)])


def summary_line(jobs: list[Job], target: Target) -> str:
    counts = {s: sum(job.status == s for job in jobs) for s in STATUS_ORDER}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (
        f"{len(jobs)} jobs ({parts}), sorted by {target.metric} "
        f"({target.mode}; from {target.source})."
    )


def best_text(best: Job | None, target: Target, params: list[str]) -> str:
    if best is None:
        return "No completed job has a value for the metric: no best job.\n"
    value = md_cell(best.metrics[target.metric])
    values = best.override_values()
    swept = " ".join(f"{p}={values.get(p, UNSET)}" for p in params)
    return (
        f"Best: job {best.num} ({target.metric} = {value}){': ' + swept if swept else ''}. "
        f"To train it again:\n\n```\n{train_command(best)}\n```\n"
    )


def report_markdown(sweep_dir, jobs, target, params, table, best, plots: list[str]) -> str:
    parts = [
        f"# Sweep report: {sweep_dir}\n",
        summary_line(jobs, target) + "\n",
        markdown_table(table),
        best_text(best, target, params),
        *(f"![{Path(p).stem}]({p})\n" for p in plots),
    ]
    return "\n".join(parts)


def best_yaml(best: Job, target: Target) -> str:
    import yaml

    record = {
        "job": best.num,
        "metric": target.metric,
        "mode": target.mode,
        "value": best.metrics[target.metric],
        "overrides": best.overrides,
        "command": train_command(best),
    }
    return yaml.safe_dump(record, sort_keys=False, width=math.inf)  # the command on one line
