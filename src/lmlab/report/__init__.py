"""Sweep reports (lmlab-report): one table, the best job's overrides and plots for a sweep.

    jobs.py    reading a sweep's jobs from their files, choosing the Target, ranking
    tables.py  the table as report.csv and report.md, the texts, best.yaml
    plots.py   curves.png and params.png

`report(sweep_dir)` writes report.csv, best.yaml, curves.png, params.png and, last,
report.md into the sweep dir (or `out`), each atomically through lmlab.fileutil. The command
line is lmlab.cli.report.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.fileutil import write_text
from lmlab.report.jobs import (
    Job,
    Target,
    best_job,
    choose_target,
    guess_mode,
    rank,
    read_jobs,
    swept_params,
)
from lmlab.report.plots import curves_figure, draw_run, params_figure, save_figure, scored_jobs
from lmlab.report.tables import Table, best_yaml, build_table, csv_text, report_markdown

__all__ = [
    "Job",
    "Table",
    "Target",
    "best_job",
    "choose_target",
    "curves_figure",
    "draw_run",
    "guess_mode",
    "params_figure",
    "rank",
    "read_jobs",
    "report",
    "swept_params",
]


def report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> dict:
    """Reads the sweep, writes the report files; returns what a caller (or test) needs."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    target = choose_target(sweep_dir, jobs, metric, mode)
    params = swept_params(jobs)
    ranked = rank(jobs, target)
    best = best_job(ranked, target)
    table = build_table(ranked, params, target)
    out_dir = Path(out) if out else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    written = [write_text(out_dir / "report.csv", csv_text(table))]
    if best is not None:
        written.append(write_text(out_dir / "best.yaml", best_yaml(best, target)))
    plots = [save_figure(curves_figure(ranked, params, target), out_dir / "curves.png")]
    if params and scored_jobs(ranked, target):
        plots.append(save_figure(params_figure(ranked, params, target), out_dir / "params.png"))
    markdown = report_markdown(
        sweep_dir, jobs, target, params, table, best, [p.name for p in plots]
    )
    # report.md last: when it is there, everything it points to is complete
    written += [*plots, write_text(out_dir / "report.md", markdown)]
    return {
        "target": target,
        "jobs": ranked,
        "params": params,
        "best": best,
        "table": table,
        "written": written,
    }
