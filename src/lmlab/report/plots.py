"""The figures of lmlab-report and of a run.

A sweep (or several runs): curves.png (the ranked metric against the step, one line per job)
and params.png (the ranked metric against each swept parameter). One run (`draw_run`, at the
end of training and `lmlab-report --plots`): curves.png, confusion_matrix.png, entity_f1.png
in its run dir. matplotlib is imported inside the functions that draw (start-up time), and
figures are drawn without pyplot (no GUI backend, no global state).
"""

from __future__ import annotations

import math
from pathlib import Path

from lmlab import records
from lmlab.fileutil import write_file
from lmlab.records import COMPLETED, FAILED
from lmlab.report.jobs import SEED, Group, Job, Target, guess_mode, headline, read_curve_rows
from lmlab.report.tables import UNSET

MAX_LEGEND = 10  # curves named in a legend; also the most values ticked on a numeric axis


def short_names(params: list[str]) -> dict[str, str]:
    """`objective.lr` -> `lr` in legends, unless two swept keys end the same way."""
    tails = [p.rsplit(".", 1)[-1] for p in params]
    return {p: t if tails.count(t) == 1 else p for p, t in zip(params, tails)}


def short_value(value: str, width: int = 28) -> str:
    """A long value (a path) as its end, which is what tells such values apart."""
    return value if len(value) <= width else "…" + value[-(width - 1) :]


def settings_text(values: dict[str, str], params: list[str]) -> str:
    names = short_names(params)
    return ", ".join(f"{names[p]}={short_value(str(values.get(p) or UNSET))}" for p in params)


def job_label(job: Job, params: list[str]) -> str:
    settings = settings_text(job.override_values(), params)
    return f"{job.label}: {settings}" if settings else f"job {job.label}"


def group_label(group: Group, params: list[str]) -> str:
    settings = settings_text(group.params, [p for p in params if p != SEED])
    return f"{settings or 'all'} (seeds {' '.join(group.seeds())})"


def series(rows: list[dict[str, float]], metric: str) -> tuple[list[float], list[float]]:
    """(steps, values) of a metric in metrics.csv's rows."""
    points = [(row["step"], row[metric]) for row in rows if metric in row]
    return [s for s, _ in points], [v for _, v in points]


def new_figure(width: float, height: float):
    """A figure drawn without pyplot (no GUI backend, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_figure(jobs: list[Job], params: list[str], target: Target, groups=None):
    """The ranked metric (and val/loss, if that is another metric) against the step, one line
    per job with logged values; unfinished jobs dashed. With seed groups, a group's jobs share
    a colour and one legend entry. The legend sits below the panels (labels can be long)."""
    metrics = [target.metric] + ["val/loss"] * (target.metric != "val/loss")
    metrics = [m for m in metrics if any(series(j.curve_rows, m)[0] for j in jobs)]
    metrics = metrics or [target.metric]
    colors, labels = {}, {}  # job path -> colour, label (of a group's first job only)
    for i, group in enumerate(groups or [[job] for job in jobs]):
        members = group.jobs if groups else group
        for job in members:
            colors[job.path] = f"C{i % 10}"
        labels[members[0].path] = group_label(group, params) if groups else None
    fig = new_figure(6.5 * len(metrics), 5)
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for job in jobs:
            steps, values = series(job.curve_rows, metric)
            if steps:
                style = "-" if job.status == COMPLETED else "--"
                label = labels.get(job.path) or (None if groups else job_label(job, params))
                ax.plot(steps, values, style, marker=".", color=colors[job.path],
                        label=label or "_nolegend_")  # fmt: skip
        ax.set(xlabel="step", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        if not ax.get_lines():
            ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes)
    named = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    if named:  # jobs come ranked: a long sweep's legend names its best ones
        title = f"best {MAX_LEGEND} of {len(named)}" if len(named) > MAX_LEGEND else None
        wide = max(len(line.get_label()) for line in named) > 12 * len(metrics) * 5
        columns = 1 if wide or len(named) <= 3 else 2  # two columns when they fit the width
        fig.legend(handles=named[:MAX_LEGEND], loc="outside lower center", fontsize="small",
                   title=title, ncols=columns)  # fmt: skip
    return fig


def as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def spans_decades(numbers: list[float], decades: float = 2) -> bool:
    """Whether positive `numbers` span `decades` powers of ten (a log axis reads better)."""
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
        names = [short_value(c, 20) for c in categories]
        rotation = 20 if sum(map(len, names)) > 24 else 0
        ax.set_xticks(range(len(categories)), names, rotation=rotation,
                      ha="right" if rotation else "center")  # fmt: skip
        ax.set_xlim(-0.5, len(categories) - 0.5)
        return [categories.index(v) for v in raw]
    if spans_decades(numbers):
        ax.set_xscale("log")
    elif len(set(numbers)) <= MAX_LEGEND:  # a grid: tick the values tried, as written
        ticks = dict(sorted(zip(numbers, raw)))
        ax.set_xticks(list(ticks), list(ticks.values()))
    return numbers


def params_figure(jobs: list[Job], params: list[str], target: Target, groups=None):
    """The ranked metric against each swept parameter, one panel each; points carry their job
    (when few enough to read). With seed groups, each group's mean ± std beside its points."""
    scored = scored_jobs(jobs, target)
    fig = new_figure(4.5 * len(params), 4.2)
    for ax, param in zip(fig.subplots(1, len(params), squeeze=False)[0], params):
        xs = param_axis(ax, [job.override_values().get(param, UNSET) for job in scored])
        scores = [job.metrics[target.metric] for job in scored]
        for x, y, job in zip(xs, scores, scored):
            filled = job.status == COMPLETED  # hollow: pruned, or an unfinished job's last value
            ax.plot([x], [y], "o", color="C0", mfc="C0" if filled else "none", alpha=0.7)
            if len(scored) <= MAX_LEGEND:
                ax.annotate(job.label, (x, y), xytext=(4, 4), textcoords="offset points")
        if groups and param != SEED:
            group_bars(ax, groups, dict(zip((j.path for j in scored), xs)), target)
        ax.set(xlabel=param, ylabel=target.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{target.metric} ({target.mode}) by swept parameter")
    return fig


def group_bars(ax, groups, x_of: dict, target: Target) -> None:
    """Each seed group's mean ± sample std (ddof=1), a little right of its jobs' points."""
    for group in groups:
        x = next((x_of[j.path] for j in group.jobs if j.path in x_of), None)
        mean = group.mean(target.metric)
        if x is not None and mean is not None:
            x = beside(x, list(x_of.values()), ax.get_xscale() == "log")
            ax.errorbar([x], [mean], yerr=[group.std(target.metric) or 0.0], fmt="s",
                        color="C3", capsize=4, label="seed group: mean ± std")  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:1], labels[:1], fontsize="small", loc="best")


def beside(x: float, xs: list[float], log: bool) -> float:
    """`x` moved right by a sixth of the smallest gap between the values of `xs`."""
    scale = math.log10 if log else float
    points = sorted({scale(v) for v in xs})
    gap = min((b - a for a, b in zip(points, points[1:])), default=1.0)
    moved = scale(x) + gap / 6
    return 10**moved if log else moved


# ---------------------------------------------------------------- the pictures of one run

SPLIT_NAMES = {"val": "validation", "test": "test"}


def save_figure(fig, path: Path) -> Path:
    return write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def draw_run(run_dir: str | Path) -> list[Path]:
    """The pictures of a finished (or stopped) run, from its files alone, written into the run
    dir: curves.png from metrics.csv; from metrics.json, confusion_matrix.png when the run
    recorded a confusion matrix (classification), else entity_f1.png when it recorded F1 per
    type (NER). What the run has no data for is skipped; returns the paths written."""
    run_dir = Path(run_dir)
    rows = read_curve_rows(run_dir / "metrics.csv")
    final = records.read_json(run_dir / "metrics.json") or {}
    config = run_config(run_dir)
    written = []
    if rows:
        fig = run_curves_figure(rows, final, config, run_title(run_dir, config))
        written.append(save_figure(fig, run_dir / "curves.png"))
    if split := final_split(final, "confusion_matrix"):
        fig = confusion_figure(final[f"{split}/confusion_matrix"], split)
        written.append(save_figure(fig, run_dir / "confusion_matrix.png"))
    elif split := final_split(final, "f1_"):
        fig = type_f1_figure(type_f1(final, split), final.get(f"{split}/f1"), split)
        written.append(save_figure(fig, run_dir / "entity_f1.png"))
    return written


def run_config(run_dir: Path) -> dict:
    """The run's config.yaml as plain data, `${...}` left unresolved (a run dir is data)."""
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return loaded if isinstance(loaded, dict) else {}


def run_title(run_dir: Path, config: dict) -> str:
    """`finetune_sentiment: minilm, sst2 (run d714f428)`: what a reader needs to tell runs apart."""
    parts = [(config.get(group) or {}).get("name") for group in ("model", "objective", "data")]
    described = ", ".join(str(p) for p in parts if p)
    name = config.get("name")
    head = f"{name}: {described}" if name and described else name or described
    return f"{head} (run {run_dir.name})" if head else f"run {run_dir.name}"


def final_split(final: dict, name: str) -> str | None:
    """test when metrics.json has `test/<name>...` (the held-out split), else val, else None."""
    for split in ("test", "val"):
        if any(key.startswith(f"{split}/{name}") for key in final):
            return split
    return None


def is_score(metric: str) -> bool:
    """A headline score of the task (accuracy, f1, exact_match): not a loss or another
    lower-is-better number (perplexity); per-class F1 have a picture of their own."""
    return guess_mode(metric) == "max" and headline(metric)


def smoothed(values: list[float]) -> list[float]:
    """A centred moving average over about a seventh of the points (noisy train losses)."""
    half = max(len(values) // 15, 1)
    return [
        sum(window) / len(window)
        for window in (values[max(i - half, 0) : i + half + 1] for i in range(len(values)))
    ]


def split_final(rows, final: dict, metric: str):
    """(curve, final point): the last `val/...` row is the evaluation at the end of the run
    (after loading the best checkpoint) when it holds metrics.json's value; it is drawn as a
    point of its own, since it repeats a step the curve may already have."""
    steps, values = series(rows, metric)
    value = final.get(metric)
    if steps and isinstance(value, int | float) and math.isclose(values[-1], value, rel_tol=1e-6):
        return (steps[:-1], values[:-1]), (steps[-1], values[-1])
    return (steps, values), None


END_STYLE = {"marker": "*", "markersize": 14, "mec": "black", "mew": 0.6, "linestyle": ""}
TEST_STYLE = {"marker": "D", "markersize": 7, "mec": "black", "mew": 0.6, "linestyle": ""}


def plot_metric(ax, rows, final: dict, metric: str, color: str) -> None:
    """One metric against the step: train/ values faint with their moving average, val/
    evaluations as a line with points, the end-of-run evaluation a star, test/ a diamond."""
    if metric.startswith("train/"):
        steps, values = series(rows, metric)
        if len(values) > 20:  # a noisy line: the average is what a reader follows
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smoothed(values), color=color, label=f"{metric} (moving average)")
        elif values:
            ax.plot(steps, values, color=color, label=metric)
        return
    (steps, values), end = split_final(rows, final, metric)
    if steps:
        ax.plot(steps, values, "o-", color=color, markersize=4, label=metric)
    if end:
        ax.plot(*end, color=color, **END_STYLE)
    test_steps, test_values = series(rows, metric.replace("val/", "test/", 1))
    if test_steps:
        ax.plot(test_steps[-1:], test_values[-1:], color=color, **TEST_STYLE)


def legend(ax, loc: str, end_label: str) -> None:
    """The lines by name, then one entry each for the end-of-run star and the test diamond."""
    from matplotlib.lines import Line2D

    handles = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    markers = {END_STYLE["marker"]: end_label, TEST_STYLE["marker"]: "test split"}
    drawn = {line.get_marker() for line in ax.get_lines()}
    for style in (END_STYLE, TEST_STYLE):
        if style["marker"] in drawn:
            handles.append(Line2D([], [], color="grey", label=markers[style["marker"]], **style))
    if handles:
        ax.legend(handles=handles, loc=loc, fontsize="small")


def plain_log_ticks(ax) -> None:
    """A log y axis labelled 0.2, 0.3, 0.5, 1, 2 rather than 3x10^-1, and only at 1, 2, 3 and 5
    times a power of ten, so that the labels never crowd."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _) -> str:
        if value <= 0:
            return ""
        leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if leading in (1, 2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))


def run_curves_figure(rows, final: dict, config: dict, title: str):
    """Panels sharing the step axis: train and val losses (a log axis when they span a
    decade); the task's scores (the monitored one first); the learning rate of each distinct
    parameter-group schedule (Lightning's LearningRateMonitor logs lr-<optimizer>[/pg<n>])."""
    columns = {key for row in rows for key in row}
    monitor = str((config.get("objective") or {}).get("monitor") or "")
    scores = [c for c in columns if c.startswith("val/") and is_score(c)]
    scores.sort(key=lambda c: (c != monitor, c))
    losses = [c for c in ("train/loss", "val/loss") if c in columns]
    lrs = distinct_lr_curves(rows, sorted(c for c in columns if c.startswith("lr-")))
    end_label = "end of run (best checkpoint)" if config.get("load_best") else "end of run"
    panels = {"loss": losses, "score": scores, "lr": lrs}
    panels = {name: shown for name, shown in panels.items() if shown} or {"loss": []}
    heights = {"loss": 3.2, "score": 3.0, "lr": 2.0}
    fig = new_figure(8, 0.8 + sum(heights[p] for p in panels))
    axes = fig.subplots(
        len(panels), 1, sharex=True, squeeze=False, height_ratios=[heights[p] for p in panels]
    )[:, 0]
    for ax, (panel, shown) in zip(axes, panels.items()):
        if panel == "lr":
            for name, (steps, values) in shown.items():
                ax.plot(steps, values, label=name)
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            if len(shown) > 1:
                ax.legend(fontsize="small", title="parameter group", title_fontsize="small")
        else:
            colors = ("C0", "C1") if panel == "loss" else [f"C{i + 2}" for i in range(len(shown))]
            for metric, color in zip(shown, colors):
                plot_metric(ax, rows, final, metric, color)
            values = [v for m in shown for v in series(rows, m)[1]]
            if panel == "loss" and values and spans_decades(values, 1):
                ax.set_yscale("log")
                plain_log_ticks(ax)
            name = shown[0].split("/", 1)[1] if len(shown) == 1 and panel == "score" else panel
            ax.set_ylabel(name)
            legend(ax, "upper right" if panel == "loss" else "lower right", end_label)
            if not shown:
                ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step (optimizer steps)")
    fig.suptitle(title)
    return fig


def distinct_lr_curves(rows, names: list[str]) -> dict[str, tuple[list[float], list[float]]]:
    """Each learning-rate column once per distinct schedule: parameter groups that share one
    (weights and biases without decay) show as one line."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for name in names:
        steps, values = series(rows, name)
        if steps and (steps, values) not in curves.values():
            curves[name] = (steps, values)
    if len(curves) == 1:  # one schedule: the optimizer's name says enough
        ((name, curve),) = curves.items()
        return {name.split("/")[0]: curve}
    return curves


def confusion_cells(confusion: dict) -> tuple[list[str], list[list[int]], list[list[float]]]:
    """(labels, counts, row fractions) of a confusion matrix as metrics.json holds it
    ({"labels", "matrix"}: rows the true label, columns the predicted one). A row fraction is
    the share of that true label's examples given each prediction (0 for an absent label)."""
    labels = [str(label) for label in confusion["labels"]]
    counts = [[int(c) for c in row] for row in confusion["matrix"]]
    fractions = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]
    return labels, counts, fractions


def confusion_figure(confusion: dict, split: str):
    """Counts in the cells, shaded by the row fraction (recall on the diagonal), so that a
    rare class's errors show as plainly as a frequent one's."""
    labels, counts, fractions = confusion_cells(confusion)
    n = len(labels)
    total = sum(map(sum, counts))
    correct = sum(counts[i][i] for i in range(n))
    size = 3.2 + 0.9 * n
    fig = new_figure(size + 1.2, size)
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    font = "large" if n <= 4 else "medium" if n <= 8 else "x-small"
    for i in range(n):
        for j in range(n):
            color = "white" if fractions[i][j] > 0.55 else "black"
            ax.text(j, i, f"{counts[i][j]}\n{fractions[i][j]:.0%}", ha="center", va="center",
                    color=color, fontsize=font)  # fmt: skip
    rotation = 30 if max(map(len, labels)) * n > 40 else 0
    ax.set_xticks(range(n), labels, rotation=rotation, ha="right" if rotation else "center")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted label", ylabel="true label")
    accuracy = f", accuracy {correct / total:.3f}" if total else ""
    ax.set_title(f"Confusion matrix, {SPLIT_NAMES[split]} split\n({total} examples{accuracy})")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true label's examples")
    return fig


def type_f1(final: dict, split: str) -> dict[str, float]:
    """Entity type -> F1 from metrics.json's `<split>/f1_<type>` values."""
    prefix = f"{split}/f1_"
    return {k[len(prefix) :]: float(v) for k, v in sorted(final.items()) if k.startswith(prefix)}


def type_f1_figure(scores: dict[str, float], overall: float | None, split: str):
    """One bar per entity type with its F1 written on it, and the overall (micro) F1 as a
    last, grey bar."""
    names, values = list(scores), list(scores.values())
    colors = ["C0"] * len(names)
    if isinstance(overall, int | float):
        names, values, colors = [*names, "all (micro)"], [*values, overall], [*colors, "grey"]
    fig = new_figure(max(4.5, 1.2 + 0.8 * len(names)), 4.2)
    ax = fig.subplots()
    bars = ax.bar(names, values, color=colors, width=0.6)
    ax.bar_label(bars, fmt="%.3f", padding=2)
    ax.set_ylim(0, 1.1)
    ax.set(ylabel="F1", xlabel="entity type")
    if len(names) * max(map(len, names), default=1) > 60:
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(f"F1 per entity type, {SPLIT_NAMES[split]} split")
    ax.grid(axis="y", alpha=0.3)
    return fig
