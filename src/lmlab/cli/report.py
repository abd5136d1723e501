"""lmlab-report: one table, the best job's overrides and plots for a sweep (a multirun dir).

usage: lmlab-report <sweep dir> [--out DIR] [--metric NAME] [--mode min|max]

Reads every job of the sweep (its numbered dirs holding .hydra/overrides.yaml) from the files
alone: overrides, final metrics (metrics.json, else the last values of metrics.csv), status
(status.json). Writes report.csv, report.md, best.yaml, curves.png and params.png into the
sweep dir (or --out) and prints the table. Rows are sorted by the optimised metric
(optimized_metric of the jobs' config.yaml; direction from the Optuna sweeper, else
objective.monitor_mode): completed jobs first, then incomplete ones, failed jobs last.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError

COMPLETED, INCOMPLETE, FAILED = "completed", "incomplete", "failed"
STATUS_ORDER = {COMPLETED: 0, INCOMPLETE: 1, FAILED: 2}
NO_RECORD = "no status.json or metrics.json: still running, or killed"
UNSET = "(unset)"  # a swept key that this job's overrides do not set
MAX_LEGEND = 10  # curves named in a legend; also the most values ticked on a numeric axis


@dataclass
class Job:
    num: int
    path: Path
    overrides: list[str]
    status: str
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # final (or last logged) values
    curve_rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, parsed

    def override_values(self) -> dict[str, str]:
        """key -> value; `+key=v` and `++key=v` set the same key as `key=v`."""
        pairs = (o.partition("=") for o in self.overrides)
        return {key.lstrip("+~"): value for key, _, value in pairs}


@dataclass
class Objective:
    metric: str
    mode: str  # min | max
    source: str  # where metric and mode came from, shown in the report

    def sort_value(self, value: float | None) -> float:
        """Smaller is better; a job without the metric sorts after every job with it."""
        if value is None or math.isnan(value):
            return math.inf
        return value if self.mode == "min" else -value


# ---------------------------------------------------------------- reading the sweep


def job_dirs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        raise LmlabError(f"{sweep_dir}: not a directory; expected a sweep (multirun) dir")
    dirs = [
        d
        for d in sweep_dir.iterdir()
        if d.name.isdigit() and (d / ".hydra" / "overrides.yaml").is_file()
    ]
    if not dirs:
        raise LmlabError(
            f"{sweep_dir}: not a sweep dir; expected numbered job dirs holding "
            ".hydra/overrides.yaml (e.g. outputs/multirun/<name>/<timestamp>)"
        )
    return sorted(dirs, key=lambda d: int(d.name))


def read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LmlabError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_curve_rows(path: Path) -> list[dict[str, float]]:
    """metrics.csv rows as {column: value}, empty cells left out (Lightning writes one row per
    logging call, each filling only its own columns)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, cell in row.items():
                try:
                    parsed[key] = float(cell)
                except (TypeError, ValueError):
                    continue  # empty cell, or a row cut short by a killed run
            if "step" in parsed:
                rows.append(parsed)
    return rows


def last_values(rows: list[dict[str, float]]) -> dict[str, float]:
    """The last value logged for each metric, and the last step as global_step."""
    last: dict[str, float] = {}
    for row in rows:
        last |= row
    if "step" in last:
        last["global_step"] = int(last.pop("step"))
    last.pop("epoch", None)
    return last


def numeric(metrics: dict) -> dict[str, float]:
    """metrics.json also holds an export path, samples and confusion matrices: keep numbers."""
    return {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def read_job(path: Path) -> Job:
    overrides = read_yaml(path / ".hydra" / "overrides.yaml") or []
    rows = read_curve_rows(path / "metrics.csv")
    final = read_json(path / "metrics.json")
    try:
        record = read_json(path / "status.json") or {}
    except LmlabError as e:  # cut short by a kill while it was written: as if absent
        record = {"error": str(e)}
    status = record.get("status")
    error = record.get("error") or ""
    if status not in (COMPLETED, FAILED):  # no status.json (killed, or written by an old lmlab)
        status = COMPLETED if final is not None else INCOMPLETE
        error = "" if final is not None else error or NO_RECORD
    if status == COMPLETED and final is None:
        status, error = INCOMPLETE, "completed, but without metrics.json"
    metrics = numeric(final) if final is not None else last_values(rows)
    metric_name, value = record.get("optimized_metric"), record.get("value")
    if metric_name and isinstance(value, int | float) and metric_name not in metrics:
        metrics[metric_name] = float(value)
    return Job(int(path.name), path, [str(o) for o in overrides], status, error, metrics, rows)


def read_jobs(sweep_dir: Path) -> list[Job]:
    return [read_job(d) for d in job_dirs(sweep_dir)]


# ---------------------------------------------------------------- what to optimise


def job_config_value(jobs: list[Job], key: str) -> str | None:
    """`key` (dotted) from the first job whose config holds it: config.yaml is the resolved
    config lmlab ran; a job that failed before writing it still has Hydra's .hydra/config.yaml."""
    from omegaconf import OmegaConf

    for job in jobs:
        for path in (job.path / "config.yaml", job.path / ".hydra" / "config.yaml"):
            if not path.is_file():
                continue
            try:
                value = OmegaConf.select(OmegaConf.load(path), key)
            except Exception:  # an interpolation that needs Hydra's resolvers: try the next file
                continue
            if value is not None:
                return str(value)
    return None


def optuna_direction(sweep_dir: Path) -> str | None:
    """min | max from the Optuna sweeper's direction in multirun.yaml, if the sweep used it."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    sweeper = ((read_yaml(path) or {}).get("hydra") or {}).get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    direction = sweeper.get("direction")
    if isinstance(direction, list):  # multi-objective: the report ranks by the first one
        direction = direction[0] if direction else None
    return {"minimize": "min", "maximize": "max"}.get(str(direction).lower())


def guess_mode(metric: str) -> str:
    """min for losses and error rates (val/mlm_loss, test/wer), max for scores."""
    words = set(re.split(r"[^a-z]+", metric.lower()))
    return "min" if words & {"loss", "perplexity", "error", "wer", "cer"} else "max"


def choose_objective(
    sweep_dir: Path, jobs: list[Job], metric: str | None = None, mode: str | None = None
) -> Objective:
    monitor = job_config_value(jobs, "objective.monitor")
    sources = []
    if metric:
        sources.append("--metric")
    else:
        metric = job_config_value(jobs, "optimized_metric")
        sources.append("optimized_metric")
        if metric is None:
            metric, sources[-1] = monitor, "objective.monitor"
    if metric is None:
        raise LmlabError(
            "--metric: the jobs' config.yaml name no optimized_metric or objective.monitor; "
            "give --metric NAME (e.g. --metric val/loss)"
        )
    names = sorted({k for job in jobs for k in job.metrics})
    if names and metric not in names:  # (no names at all: every job failed before logging)
        raise LmlabError(
            f"--metric: {metric!r} is in no job's metrics; available: {', '.join(names)}"
        )
    if mode:
        sources.append("--mode")
    elif direction := optuna_direction(sweep_dir):
        mode = direction
        sources.append("the Optuna sweeper's direction")
    elif metric == monitor and (monitor_mode := job_config_value(jobs, "objective.monitor_mode")):
        mode = monitor_mode
        sources.append("objective.monitor_mode")
    else:
        mode = guess_mode(metric)
        sources.append("guessed from the name; --mode sets it")
    return Objective(metric, mode, ", ".join(sources))


# ---------------------------------------------------------------- the table


def swept_params(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (a key some jobs leave unset counts)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.override_values() if k not in keys]
    return [k for k in keys if len({job.override_values().get(k) for job in jobs}) > 1]


def rank(jobs: list[Job], objective: Objective) -> list[Job]:
    """Completed jobs by the metric, then incomplete ones (partial values), then failed ones."""

    def key(job: Job):
        value = job.metrics.get(objective.metric)
        return STATUS_ORDER[job.status], objective.sort_value(value), job.num

    return sorted(jobs, key=key)


def best_job(ranked: list[Job], objective: Objective) -> Job | None:
    """The best completed job; partial values of unfinished jobs do not compete."""
    for job in ranked:
        value = job.metrics.get(objective.metric)
        if job.status == COMPLETED and value is not None and not math.isnan(value):
            return job
    return None


def metric_columns(jobs: list[Job], objective: Objective) -> list[str]:
    names = {k for job in jobs for k in job.metrics if k.startswith(("val/", "test/"))}
    names.discard(objective.metric)
    present = (
        any("global_step" in job.metrics for job in jobs) and objective.metric != "global_step"
    )
    return sorted(names, key=lambda n: (not n.startswith("val/"), n)) + ["global_step"] * present


@dataclass
class Table:
    header: list[str]
    rows: list[list]  # cells: int, str, float or None (no value)


def build_table(ranked: list[Job], params: list[str], objective: Objective) -> Table:
    metrics = metric_columns(ranked, objective)
    header = ["job", "status", *params, objective.metric, *metrics, "error"]
    rows = []
    for job in ranked:
        values = job.override_values()
        rows.append(
            [
                job.num,
                job.status,
                *(values.get(p, UNSET) for p in params),
                *(job.metrics.get(m) for m in (objective.metric, *metrics)),
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


def summary_line(jobs: list[Job], objective: Objective) -> str:
    counts = {s: sum(job.status == s for job in jobs) for s in STATUS_ORDER}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (
        f"{len(jobs)} jobs ({parts}), sorted by {objective.metric} "
        f"({objective.mode}; from {objective.source})."
    )


def best_text(best: Job | None, objective: Objective, params: list[str]) -> str:
    if best is None:
        return "No completed job has a value for the metric: no best job.\n"
    value = md_cell(best.metrics[objective.metric])
    values = best.override_values()
    swept = " ".join(f"{p}={values.get(p, UNSET)}" for p in params)
    return (
        f"Best: job {best.num} ({objective.metric} = {value}){': ' + swept if swept else ''}. "
        f"To train it again:\n\n```\n{train_command(best)}\n```\n"
    )


def report_markdown(sweep_dir, jobs, objective, params, table, best, plots: list[str]) -> str:
    parts = [
        f"# Sweep report: {sweep_dir}\n",
        summary_line(jobs, objective) + "\n",
        markdown_table(table),
        best_text(best, objective, params),
        *(f"![{Path(p).stem}]({p})\n" for p in plots),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- the plots


def short_names(params: list[str]) -> dict[str, str]:
    """`objective.lr` -> `lr` in legends, unless two swept keys end the same way."""
    tails = [p.rsplit(".", 1)[-1] for p in params]
    return {p: t if tails.count(t) == 1 else p for p, t in zip(params, tails)}


def job_label(job: Job, params: list[str]) -> str:
    values = job.override_values()
    names = short_names(params)
    settings = ", ".join(f"{names[p]}={values.get(p, UNSET)}" for p in params)
    return f"{job.num}: {settings}" if settings else f"job {job.num}"


def curve(job: Job, metric: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[metric]) for row in job.curve_rows if metric in row]
    return [s for s, _ in points], [v for _, v in points]


def curves_figure(jobs: list[Job], params: list[str], objective: Objective):
    """The optimised metric (and val/loss, if that is another metric) against the step, one
    line per job with logged values; unfinished jobs dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [objective.metric] + ["val/loss"] * (objective.metric != "val/loss")
    metrics = [m for m in metrics if any(curve(job, m)[0] for job in jobs)] or [objective.metric]
    fig = Figure(figsize=(6.5 * len(metrics), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for job in jobs:
            steps, values = curve(job, metric)
            if steps:
                style = "-" if job.status == COMPLETED else "--"
                ax.plot(steps, values, style, marker=".", label=job_label(job, params))
        ax.set(xlabel="step", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        lines = ax.get_lines()
        if lines:  # jobs come ranked: a long sweep's legend names its best ones
            title = f"best {MAX_LEGEND} of {len(lines)}" if len(lines) > MAX_LEGEND else None
            ax.legend(handles=lines[:MAX_LEGEND], fontsize="small", title=title)
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes)
    return fig


def as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def spans_decades(numbers: list[float], decades: float = 2) -> bool:
    return min(numbers) > 0 and math.log10(max(numbers) / min(numbers)) >= decades


def scored_jobs(jobs: list[Job], objective: Objective) -> list[Job]:
    """The jobs with a value to plot: final, or the last logged one of an unfinished job."""
    return [j for j in jobs if j.status != FAILED and objective.metric in j.metrics]


def params_figure(jobs: list[Job], params: list[str], objective: Objective):
    """The optimised metric against each swept parameter, one panel each: a log axis for
    numbers spanning two decades or more, a categorical axis for anything else."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = scored_jobs(jobs, objective)
    fig = Figure(figsize=(4.5 * len(params), 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, param in zip(fig.subplots(1, len(params), squeeze=False)[0], params):
        raw = [job.override_values().get(param, UNSET) for job in scored]
        scores = [job.metrics[objective.metric] for job in scored]
        numbers = as_numbers(raw)
        if numbers is None:
            categories = sorted(set(raw))
            xs = [categories.index(v) for v in raw]
            ax.set_xticks(range(len(categories)), categories, rotation=20)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        else:
            xs = numbers
            if spans_decades(numbers):
                ax.set_xscale("log")
            elif len(set(numbers)) <= MAX_LEGEND:  # a grid: tick the values tried, as written
                ticks = dict(sorted(zip(numbers, raw)))
                ax.set_xticks(list(ticks), list(ticks.values()))
        for x, y, job in zip(xs, scores, scored):
            filled = job.status == COMPLETED  # hollow: the last value of an unfinished job
            ax.plot([x], [y], "o", color="C0", mfc="C0" if filled else "none")
            ax.annotate(str(job.num), (x, y), xytext=(4, 4), textcoords="offset points")
        ax.set(xlabel=param, ylabel=objective.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{objective.metric} ({objective.mode}) by swept parameter")
    return fig


# ---------------------------------------------------------------- writing


def write_atomic(path: Path, write) -> Path:
    """write(tmp) then rename, so a crash never leaves a half-written file under `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def save_figure(fig, path: Path) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def best_yaml(best: Job, objective: Objective) -> str:
    import yaml

    record = {
        "job": best.num,
        "metric": objective.metric,
        "mode": objective.mode,
        "value": best.metrics[objective.metric],
        "overrides": best.overrides,
        "command": train_command(best),
    }
    return yaml.safe_dump(record, sort_keys=False, width=math.inf)  # the command on one line


def report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> dict:
    """Reads the sweep, writes the report files; returns what a caller (or test) needs."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    objective = choose_objective(sweep_dir, jobs, metric, mode)
    params = swept_params(jobs)
    ranked = rank(jobs, objective)
    best = best_job(ranked, objective)
    table = build_table(ranked, params, objective)
    out_dir = Path(out) if out else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    written = [write_text(out_dir / "report.csv", csv_text(table))]
    if best is not None:
        written.append(write_text(out_dir / "best.yaml", best_yaml(best, objective)))
    plots = [save_figure(curves_figure(ranked, params, objective), out_dir / "curves.png")]
    if params and scored_jobs(ranked, objective):
        plots.append(save_figure(params_figure(ranked, params, objective), out_dir / "params.png"))
    markdown = report_markdown(
        sweep_dir, jobs, objective, params, table, best, [p.name for p in plots]
    )
    # report.md last: when it is there, everything it points to is complete
    written += [*plots, write_text(out_dir / "report.md", markdown)]
    return {
        "objective": objective,
        "jobs": ranked,
        "params": params,
        "best": best,
        "table": table,
        "written": written,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lmlab-report",
        description="Table, best overrides and plots for a sweep (a Hydra multirun dir).",
    )
    parser.add_argument("sweep_dir", help="e.g. outputs/multirun/<name>/<timestamp>")
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
    print(summary_line(result["jobs"], result["objective"]) + "\n")
    print(markdown_table(result["table"]))
    print(best_text(result["best"], result["objective"], result["params"]))
    print("wrote: " + ", ".join(str(p) for p in result["written"]))


if __name__ == "__main__":
    main()
