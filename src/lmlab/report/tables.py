"""The tables of a report and the texts made from them: report.csv (one row per job),
groups.csv (one row per seed group), report.md (the tables, the best job's overrides and the
command that trains it again, the plots) and best.yaml."""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmlab.records import PRUNED, override_key
from lmlab.report.jobs import SEED, STATUS_ORDER, Group, Job, Target, headline

UNSET = "(unset)"  # a swept key that this job's overrides do not set
GROUP_NOTE = (
    "Jobs that differ only in `seed`, one row per setting: mean ± sample standard deviation "
    "(ddof=1) over the n seeds that completed (std blank for n=1)."
)


@dataclass
class Spread:
    """A seed group's mean and sample standard deviation (None: no value, or n < 2)."""

    mean: float | None
    std: float | None


@dataclass
class Table:
    header: list[str]
    rows: list[list]  # cells: int, str, float, Spread or None (no value)


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
                job.label,
                job.status,
                *(values.get(p, UNSET) for p in params),
                *(job.metrics.get(m) for m in (target.metric, *metrics)),
                job.error,
            ]
        )
    return Table(header, rows)


def status_counts(jobs: list[Job]) -> str:
    """`2 completed, 1 failed`."""
    counts = {s: sum(job.status == s for job in jobs) for s in STATUS_ORDER}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def build_group_table(groups: list[Group], params: list[str], target: Target) -> Table:
    """One row per seed group, best mean first: its jobs and seeds, n, the swept values it
    shares, mean ± std of the ranked metric and of the other val/ and test/ metrics."""
    shared = [p for p in params if p != SEED]
    metrics = metric_columns([j for g in groups for j in g.jobs], target)
    metrics = [target.metric, *(m for m in metrics if headline(m))]
    header = ["jobs", "seeds", "n", *shared, *metrics, "status"]
    rows = []
    for group in groups:
        rows.append(
            [
                " ".join(job.label for job in group.jobs),
                " ".join(group.seeds()),
                len(group.values(target.metric)),
                *(group.params[p] or UNSET for p in shared),
                *(Spread(group.mean(m), group.std(m)) for m in metrics),
                status_counts(group.jobs),
            ]
        )
    return Table(header, rows)


def csv_text(table: Table) -> str:
    """A Spread column becomes two: `<metric>` (the mean) and `<metric> std (ddof=1)`."""
    columns = list(zip(*table.rows)) or [()] * len(table.header)
    spread = [any(isinstance(cell, Spread) for cell in column) for column in columns]
    header = []
    for name, is_spread in zip(table.header, spread):
        header += [name, f"{name} std (ddof=1)"] if is_spread else [name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        cells = []
        for cell in row:
            cells += [cell.mean, cell.std] if isinstance(cell, Spread) else [cell]
        writer.writerow(["" if cell is None else cell for cell in cells])
    return out.getvalue()


def md_cell(cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, Spread):
        if cell.std is None:
            return md_cell(cell.mean)
        return f"{md_cell(cell.mean)} ± {cell.std:.2g}"
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


def group_command(group: Group) -> str:
    """The sweep that trains the group's setting again with its seeds."""
    job = group.jobs[0]
    overrides = [o for o in job.overrides if override_key(o) != SEED]
    seeds = sorted({s for s in group.seeds() if s != UNSET}, key=group.seeds().index)
    sweep = [f"seed={','.join(seeds)}"] if seeds else []
    return " ".join(["lmlab-train -m", *(shlex.quote(o) for o in [*overrides, *sweep])])


def summary_line(jobs: list[Job], target: Target) -> str:
    return (
        f"{len(jobs)} jobs ({status_counts(jobs)}), sorted by {target.metric} "
        f"({target.mode}; from {target.source})."
    )


def best_group(groups: list[Group] | None, target: Target) -> Group | None:
    """The group with the best mean (groups come sorted; one without a value never wins)."""
    return next((g for g in groups or [] if g.mean(target.metric) is not None), None)


def best_group_text(groups: list[Group] | None, target: Target) -> str:
    group = best_group(groups, target)
    if group is None:
        return ""
    metric = target.metric
    value = md_cell(Spread(group.mean(metric), group.std(metric)))
    shared = " ".join(f"{p}={v or UNSET}" for p, v in group.params.items())
    return (
        f"Best setting: jobs {' '.join(j.label for j in group.jobs)} ({metric} = {value}, "
        f"n={len(group.values(metric))}){': ' + shared if shared else ''}. "
        f"Its seeds again:\n\n```\n{group_command(group)}\n```\n"
    )


def best_text(best: Job | None, target: Target, params: list[str]) -> str:
    if best is None:
        return "No completed or pruned job has a value for the metric: no best job.\n"
    value = md_cell(best.metrics[target.metric])
    if best.status == PRUNED:  # best_job chose it only for want of a completed one
        value += f"; {best.error or 'pruned'}: no completed job has a value"
    values = best.override_values()
    swept = " ".join(f"{p}={values.get(p, UNSET)}" for p in params)
    return (
        f"Best: job {best.label} ({target.metric} = {value}){': ' + swept if swept else ''}. "
        f"To train it again:\n\n```\n{train_command(best)}\n```\n"
    )


def report_markdown(title: str, result: dict, plots: list[str]) -> str:
    """`result`: what lmlab.report.report returns."""
    target, groups = result["target"], result["groups"]
    parts = [f"# {title}\n", summary_line(result["jobs"], target) + "\n"]
    if groups:
        parts += [f"## Seed groups\n\n{GROUP_NOTE}\n", markdown_table(result["group_table"])]
        parts += [best_group_text(groups, target), "## Jobs\n"]
    parts += [
        markdown_table(result["table"]),
        best_text(result["best"], target, result["params"]),
        *(f"![{Path(p).stem}]({p})\n" for p in plots),
    ]
    return "\n".join(parts)


def best_yaml(best: Job, target: Target, groups: list[Group] | None = None) -> str:
    """The best job; with seed groups also the best group (`best_group`: mean, std, n)."""
    import yaml

    record = {
        "job": best.name or best.num,
        "status": best.status,  # pruned only when no job completed
        "metric": target.metric,
        "mode": target.mode,
        "value": best.metrics[target.metric],
        "overrides": best.overrides,
        "command": train_command(best),
    }
    if group := best_group(groups, target):
        record["best_group"] = {
            "jobs": [job.name or job.num for job in group.jobs],
            "seeds": group.seeds(),
            "n": len(group.values(target.metric)),
            "mean": group.mean(target.metric),
            "std": group.std(target.metric),  # sample standard deviation (ddof=1)
            "command": group_command(group),
        }
    return yaml.safe_dump(record, sort_keys=False, width=math.inf)  # the command on one line
