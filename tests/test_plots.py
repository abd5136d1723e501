"""The pictures of one run (lmlab.report.plots.draw_run) from hand-written run dirs."""

import csv
import json
import subprocess
import sys

import matplotlib.image
import pytest
import yaml

from lmlab.cli.report import main
from lmlab.report.plots import (
    confusion_cells,
    confusion_figure,
    draw_run,
    run_curves_figure,
    type_f1,
    type_f1_figure,
)

LABELS = ["negative", "neutral", "positive"]
MATRIX = [[8, 2, 0], [1, 3, 1], [0, 0, 5]]  # rows: true label; 20 examples, 16 right
CONFIG = {
    "name": "finetune_sentiment",
    "model": {"name": "minilm"},
    "data": {"name": "sst2"},
    "load_best": True,
    "objective": {"monitor": "val/accuracy", "monitor_mode": "max"},
}
COLUMNS = ["epoch", "step", "lr-AdamW/pg1", "lr-AdamW/pg2", "train/loss", "val/accuracy",
           "val/f1_negative", "val/loss"]  # fmt: skip


def train_rows(steps):
    """Lightning's CSV logger: an lr row and a train/loss row per logging step."""
    for step in steps:
        lr = 1e-4 * (1 - step / 100)
        yield {"step": step, "lr-AdamW/pg1": lr, "lr-AdamW/pg2": lr}
        yield {"step": step, "train/loss": 2.0 / (1 + step)}


def write_run(run_dir, rows, final, config=CONFIG):
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for row in rows for k in row}))
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "metrics.json").write_text(json.dumps(final))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


@pytest.fixture
def classification_run(tmp_path):
    rows = list(train_rows(range(0, 100, 4)))
    for step, (loss, accuracy) in {0: (1.1, 0.3), 50: (0.6, 0.7), 99: (0.5, 0.8)}.items():
        rows.append({"step": step, "val/loss": loss, "val/accuracy": accuracy,
                     "val/f1_negative": accuracy})  # fmt: skip
    rows.append({"step": 99, "val/loss": 0.5, "val/accuracy": 0.8})  # the end-of-run evaluation
    final = {"val/loss": 0.5, "val/accuracy": 0.8, "global_step": 99, "export": "x"}
    final["val/confusion_matrix"] = {"labels": LABELS, "matrix": MATRIX}
    return write_run(tmp_path / "run", rows, final)


def png_shape(path):
    return matplotlib.image.imread(path).shape


def test_classification_run_gets_curves_and_confusion_matrix(classification_run):
    written = draw_run(classification_run)
    assert [p.name for p in written] == ["curves.png", "confusion_matrix.png"]
    for path in written:
        height, width, _ = png_shape(path)
        assert height > 400 and width > 400
    assert not (classification_run / "entity_f1.png").exists()
    assert not [p for p in classification_run.iterdir() if ".tmp" in p.name]


def test_curves_panels_losses_scores_and_one_lr_schedule(classification_run):
    from lmlab.report.jobs import read_curve_rows

    rows = read_curve_rows(classification_run / "metrics.csv")
    final = json.loads((classification_run / "metrics.json").read_text())
    fig = run_curves_figure(rows, final, CONFIG, "title")
    loss_ax, score_ax, lr_ax = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    # train/loss falls from 2 to 0.02: two decades, a log axis
    assert loss_ax.get_yscale() == "log" and score_ax.get_yscale() == "linear"
    # f1_<label> is not a headline score; the end-of-run point is a star of its own
    val_line, end = [line for line in score_ax.get_lines()]
    assert val_line.get_label() == "val/accuracy"
    assert list(val_line.get_xdata()) == [0, 50, 99] and list(val_line.get_ydata()) == [
        0.3,
        0.7,
        0.8,
    ]
    assert (list(end.get_xdata()), list(end.get_ydata()), end.get_marker()) == ([99], [0.8], "*")
    legend = [t.get_text() for t in score_ax.get_legend().get_texts()]
    assert legend == ["val/accuracy", "end of run (best checkpoint)"]
    # two parameter groups with the same schedule: one line
    (lr_line,) = lr_ax.get_lines()
    assert lr_line.get_ydata()[0] == pytest.approx(1e-4) and lr_ax.get_legend() is None


def test_confusion_cells_and_image_reflect_the_counts():
    labels, counts, fractions = confusion_cells({"labels": LABELS, "matrix": MATRIX})
    assert labels == LABELS and counts == MATRIX
    assert fractions == [[0.8, 0.2, 0.0], [0.2, 0.6, 0.2], [0.0, 0.0, 1.0]]

    fig = confusion_figure({"labels": LABELS, "matrix": MATRIX}, "val")
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == fractions  # shading: row-normalised
    cells = [t.get_text() for t in ax.texts]
    assert cells[:3] == ["8\n80%", "2\n20%", "0\n0%"] and cells[-1] == "5\n100%"
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    assert ax.get_title() == "Confusion matrix, validation split\n(20 examples, accuracy 0.800)"

    # two classes, one of them never true: its row is 0, not a division by zero
    _, _, fractions = confusion_cells({"labels": [0, 1], "matrix": [[3, 1], [0, 0]]})
    assert fractions == [[0.75, 0.25], [0.0, 0.0]]
    two = confusion_figure({"labels": ["no", "yes"], "matrix": [[3, 1], [0, 0]]}, "test")
    assert two.axes[0].get_title().startswith("Confusion matrix, test split\n(4 examples")


NER_FINAL = {
    "val/f1": 0.5, "val/f1_LOC": 0.6, "val/f1_PER": 0.4,
    "test/f1": 0.45, "test/f1_LOC": 0.55, "test/f1_MISC": 0.3, "test/f1_PER": 0.35,
    "test/precision": 0.5,
}  # fmt: skip


def test_ner_run_gets_entity_f1_bars_from_the_test_split(tmp_path):
    rows = [{"step": 0, "val/loss": 2.0, "val/f1": 0.1}, {"step": 10, "train/loss": 1.0}]
    config = {"objective": {"monitor": "val/f1"}}
    run = write_run(tmp_path / "ner", rows, NER_FINAL, config)
    assert [p.name for p in draw_run(run)] == ["curves.png", "entity_f1.png"]

    assert type_f1(NER_FINAL, "test") == {"LOC": 0.55, "MISC": 0.3, "PER": 0.35}
    fig = type_f1_figure(type_f1(NER_FINAL, "test"), NER_FINAL["test/f1"], "test")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["LOC", "MISC", "PER", "all (micro)"]
    assert [bar.get_height() for bar in ax.patches] == [0.55, 0.3, 0.35, 0.45]
    assert ax.get_title() == "F1 per entity type, test split"

    val_only = {k: v for k, v in NER_FINAL.items() if k.startswith("val/")}
    (run / "metrics.json").write_text(json.dumps(val_only))
    draw_run(run)
    fig = type_f1_figure(type_f1(val_only, "val"), val_only["val/f1"], "val")
    assert fig.axes[0].get_title() == "F1 per entity type, validation split"


def test_what_a_run_lacks_is_skipped(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert draw_run(empty) == []

    # no metrics.csv (another logger), a confusion matrix in metrics.json: only that picture
    only_final = tmp_path / "only_final"
    only_final.mkdir()
    matrix = {"val/confusion_matrix": {"labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]}}
    (only_final / "metrics.json").write_text(json.dumps(matrix))
    assert [p.name for p in draw_run(only_final)] == ["confusion_matrix.png"]

    # a run stopped before any validation, no config.yaml: curves of what it logged
    early = tmp_path / "early"
    early.mkdir()
    (early / "metrics.csv").write_text("epoch,step,train/loss\n0,0,2.0\n0,5,1.5\n")
    assert [p.name for p in draw_run(early)] == ["curves.png"]

    main(["--plots", str(only_final), str(early)])
    out = capsys.readouterr().out
    assert str(only_final / "confusion_matrix.png") in out and str(early / "curves.png") in out


def test_importing_the_report_package_leaves_matplotlib_unloaded():
    """lmlab-train imports draw_run at the end of a run; start-up must not pay for matplotlib."""
    code = "import sys, lmlab.report.plots, lmlab.cli.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
