"""Reports (lmlab-report): one table, the best job's overrides and plots for a sweep or for
runs side by side, jobs that differ only in `seed` grouped; and the pictures of one run.

    jobs.py    reading jobs from their files, choosing the Target, ranking, seed groups
    tables.py  the tables as report.csv, groups.csv and report.md, the texts, best.yaml
    plots.py   curves.png and params.png of a report; draw_run: a run's own pictures

`report(dirs)` writes report.csv, groups.csv, best.yaml, curves.png, params.png and, last,
report.md into the sweep dir (or `out`), each atomically through lmlab.fileutil. The command
line is lmlab.cli.report.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.fileutil import write_text
from lmlab.report.jobs import (
    Group,
    Job,
    Target,
    best_job,
    choose_target,
    guess_mode,
    rank,
    read_jobs,
    read_runs,
    seed_groups,
    swept_params,
)
from lmlab.report.plots import curves_figure, draw_run, params_figure, save_figure, scored_jobs
from lmlab.report.tables import (
    Table,
    best_yaml,
    build_group_table,
    build_table,
    csv_text,
    report_markdown,
)

__all__ = [
    "Group",
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
    "read_runs",
    "report",
    "seed_groups",
    "swept_params",
]


def report(
    dirs: str | Path | list[str | Path],
    out: str | Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> dict:
    """Reads a sweep dir, or run dirs (and sweeps) side by side, and ranks the jobs; writes
    the report files into `out`, else into the sweep dir (runs side by side: only with
    `out`, so that a run's own curves.png is never replaced). Returns what a caller (or test)
    needs: target, jobs (ranked), params, best, groups, table, group_table, written."""
    paths = [Path(d) for d in ([dirs] if isinstance(dirs, str | Path) else dirs)]
    jobs, sweep_dir = read_runs(paths)
    target = choose_target(sweep_dir, jobs, metric, mode)
    params = swept_params(jobs)
    ranked = rank(jobs, target)
    groups = seed_groups(ranked, params, target)
    result = {
        "target": target,
        "jobs": ranked,
        "params": params,
        "best": best_job(ranked, target),
        "groups": groups,
        "table": build_table(ranked, params, target),
        "group_table": build_group_table(groups, params, target) if groups else None,
    }
    out_dir = Path(out) if out else sweep_dir
    title = f"Sweep report: {sweep_dir}" if sweep_dir else "Runs side by side"
    result["written"] = write_report(out_dir, title, result) if out_dir else []
    return result


def write_report(out_dir: Path, title: str, result: dict) -> list[Path]:
    """report.csv, groups.csv (seed groups), best.yaml, curves.png, params.png, and report.md
    last: when it is there, everything it points to is complete."""
    target, params, ranked, best = (result[k] for k in ("target", "params", "jobs", "best"))
    groups = result["groups"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_text(out_dir / "report.csv", csv_text(result["table"]))]
    if groups:
        written.append(write_text(out_dir / "groups.csv", csv_text(result["group_table"])))
    if best is not None:
        written.append(write_text(out_dir / "best.yaml", best_yaml(best, target, groups)))
    curves = curves_figure(ranked, params, target, groups)
    plots = [save_figure(curves, out_dir / "curves.png")]
    if params and scored_jobs(ranked, target):
        figure = params_figure(ranked, params, target, groups)
        plots.append(save_figure(figure, out_dir / "params.png"))
    markdown = report_markdown(title, result, [p.name for p in plots])
    return [*written, *plots, write_text(out_dir / "report.md", markdown)]
