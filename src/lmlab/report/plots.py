"""The figures of a sweep report: curves.png (the ranked metric against the step, one line per
job) and params.png (the ranked metric against each swept parameter). matplotlib is imported
inside the functions that draw."""

from __future__ import annotations

import math

from lmlab.records import COMPLETED, FAILED
from lmlab.report.jobs import Job, Target
from lmlab.report.tables import UNSET

MAX_LEGEND = 10  # curves named in a legend; also the most values ticked on a numeric axis


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


def new_figure(width: float, height: float):
    """A figure drawn without pyplot (no GUI backend, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_figure(jobs: list[Job], params: list[str], target: Target):
    """The ranked metric (and val/loss, if that is another metric) against the step, one line
    per job with logged values; unfinished jobs dashed."""
    metrics = [target.metric] + ["val/loss"] * (target.metric != "val/loss")
    metrics = [m for m in metrics if any(curve(job, m)[0] for job in jobs)] or [target.metric]
    fig = new_figure(6.5 * len(metrics), 4.5)
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


def scored_jobs(jobs: list[Job], target: Target) -> list[Job]:
    """The jobs with a value to plot: final, or the last logged one of an unfinished job."""
    return [j for j in jobs if j.status != FAILED and target.metric in j.metrics]


def param_axis(ax, raw: list[str]) -> list[float]:
    """The x positions of `raw` (a swept parameter's values): a log axis for numbers spanning
    two decades or more, the values tried as ticks for a short grid, else categories."""
    numbers = as_numbers(raw)
    if numbers is None:
        categories = sorted(set(raw))
        ax.set_xticks(range(len(categories)), categories, rotation=20)
        ax.set_xlim(-0.5, len(categories) - 0.5)
        return [categories.index(v) for v in raw]
    if spans_decades(numbers):
        ax.set_xscale("log")
    elif len(set(numbers)) <= MAX_LEGEND:  # a grid: tick the values tried, as written
        ticks = dict(sorted(zip(numbers, raw)))
        ax.set_xticks(list(ticks), list(ticks.values()))
    return numbers


def params_figure(jobs: list[Job], params: list[str], target: Target):
    """The ranked metric against each swept parameter, one panel each."""
    scored = scored_jobs(jobs, target)
    fig = new_figure(4.5 * len(params), 4)
    for ax, param in zip(fig.subplots(1, len(params), squeeze=False)[0], params):
        xs = param_axis(ax, [job.override_values().get(param, UNSET) for job in scored])
        scores = [job.metrics[target.metric] for job in scored]
        for x, y, job in zip(xs, scores, scored):
            filled = job.status == COMPLETED  # hollow: the last value of an unfinished job
            ax.plot([x], [y], "o", color="C0", mfc="C0" if filled else "none")
            ax.annotate(str(job.num), (x, y), xytext=(4, 4), textcoords="offset points")
        ax.set(xlabel=param, ylabel=target.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{target.metric} ({target.mode}) by swept parameter")
    return fig
