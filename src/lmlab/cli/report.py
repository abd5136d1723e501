"""lmlab-report: one table, the best job's overrides and plots for a sweep, or for runs side
by side; and the pictures of a run.

usage: lmlab-report <sweep dir | run dir> [<run dir> ...] [--out DIR] [--metric NAME]
                    [--mode min|max] [--plots]

Reads every job (a sweep's numbered dirs holding .hydra/overrides.yaml, or the run dirs
given) from the files alone: overrides, final metrics (metrics.json, else the last values of
metrics.csv), status (status.json). Prints the table; writes report.csv, report.md,
best.yaml, curves.png and params.png into the sweep dir (or --out; runs side by side: only
with --out). Rows are sorted by the optimised metric (optimized_metric of the jobs'
config.yaml; direction from the Optuna sweeper, else objective.monitor_mode): completed jobs
first, then pruned ones, incomplete ones, failed jobs last. Jobs that differ only in `seed`
also form one row per setting with mean ± sample standard deviation and n (groups.csv).
--plots draws each run's own pictures (curves.png, confusion_matrix.png, entity_f1.png) into
its run dir instead. The work is lmlab.report's; this module parses the arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lmlab-report",
        description="Table, best overrides and plots for a sweep (a Hydra multirun dir) or "
        "for runs side by side; --plots: a run's own pictures.",
    )
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="a sweep dir (outputs/multirun/<name>/<hash>) "
        "or run dirs (outputs/<name>/<hash>)",
    )  # fmt: skip
    parser.add_argument("--out", help="write the report here (default: into the sweep dir)")
    parser.add_argument("--metric", help="rank by this metric (default: optimized_metric)")
    parser.add_argument("--mode", choices=("min", "max"), help="min: lower is better")
    parser.add_argument(
        "--plots", action="store_true",
        help="draw each run's curves.png, confusion_matrix.png, entity_f1.png into its run dir",
    )  # fmt: skip
    return parser.parse_args(argv)


def draw_plots(dirs: list[str]) -> list[Path]:
    from lmlab.report.jobs import read_runs
    from lmlab.report.plots import draw_run

    jobs, _ = read_runs([Path(d) for d in dirs])
    return [path for job in jobs for path in draw_run(job.path)]


def print_report(result: dict) -> None:
    from lmlab.report.tables import (
        GROUP_NOTE,
        best_group_text,
        best_text,
        markdown_table,
        summary_line,
    )

    target = result["target"]
    print(summary_line(result["jobs"], target) + "\n")
    if result["groups"]:
        print(f"Seed groups. {GROUP_NOTE}\n")
        print(markdown_table(result["group_table"]))
        print(best_group_text(result["groups"], target))
        print("Jobs:\n")
    print(markdown_table(result["table"]))
    print(best_text(result["best"], target, result["params"]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.plots:
            written = draw_plots(args.dirs)
        else:
            from lmlab.report import report

            result = report(args.dirs, args.out, args.metric, args.mode)
            print_report(result)
            written = result["written"]
    except LmlabError as e:
        print(f"lmlab-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    if written:
        print("wrote: " + ", ".join(str(p) for p in written))
    elif not args.plots:
        print("(runs side by side: --out DIR writes report.md, report.csv and the plots)")
    else:
        print("nothing to draw: no metrics.csv or metrics.json in the run dirs")


if __name__ == "__main__":
    main()
