"""lmlab-report: one table, the best job's overrides and plots for a sweep (a multirun dir).

usage: lmlab-report <sweep dir> [--out DIR] [--metric NAME] [--mode min|max]

Reads every job of the sweep (its numbered dirs holding .hydra/overrides.yaml) from the files
alone: overrides, final metrics (metrics.json, else the last values of metrics.csv), status
(status.json). Writes report.csv, report.md, best.yaml, curves.png and params.png into the
sweep dir (or --out) and prints the table. Rows are sorted by the optimised metric
(optimized_metric of the jobs' config.yaml; direction from the Optuna sweeper, else
objective.monitor_mode): completed jobs first, then incomplete ones, failed jobs last.
The work is lmlab.report's; this module parses the arguments and prints.
"""

from __future__ import annotations

import argparse
import sys

from lmlab.errors import LmlabError
from lmlab.report import report
from lmlab.report.tables import best_text, markdown_table, summary_line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lmlab-report",
        description="Table, best overrides and plots for a sweep (a Hydra multirun dir).",
    )
    parser.add_argument("sweep_dir", help="e.g. outputs/multirun/<name>/<hash>")
    parser.add_argument("--out", help="write the report here instead of into the sweep dir")
    parser.add_argument("--metric", help="rank by this metric (default: optimized_metric)")
    parser.add_argument("--mode", choices=("min", "max"), help="min: lower is better")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        result = report(args.sweep_dir, args.out, args.metric, args.mode)
    except LmlabError as e:
        print(f"lmlab-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary_line(result["jobs"], result["target"]) + "\n")
    print(markdown_table(result["table"]))
    print(best_text(result["best"], result["target"], result["params"]))
    print("wrote: " + ", ".join(str(p) for p in result["written"]))


if __name__ == "__main__":
    main()
