"""Dashboards seen by a real browser: one tiny `lmlab-train experiment=pretrain_gpt` run that
logs to CSV, TensorBoard and MLflow; then `mlflow ui` and `tensorboard` serve it, and headless
Chromium checks that each shows the run, its parameters and its loss curves, with the values
metrics.csv holds. Screenshots go to $LMLAB_SCREENSHOT_DIR (default outputs/screenshots).

Skipped when /usr/bin/chromium or the playwright package is missing, unless
LMLAB_REQUIRE_BROWSER is set (as .ci/run does, having installed Chromium): then they fail.
"""

import csv
import json
import math
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import browser
import pytest
import yaml

LR = "0.0031"  # objective.lr given on the command line: the parameter MLflow must show
LOSSES = ["train/loss", "val/loss"]
TIMEOUT_MS = 60_000  # first page loads on a busy 2-core machine take seconds
# MLflow's UI opens its assistant panel on first load; closed, the run page gets the width.
MLFLOW_INIT_SCRIPT = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)


@pytest.fixture(scope="module", autouse=True)
def chromium_available():
    """Before any training: skip (or, in CI, fail) when there is no browser to drive."""
    reason = browser.missing()
    if reason and os.environ.get("LMLAB_REQUIRE_BROWSER"):
        pytest.fail(f"LMLAB_REQUIRE_BROWSER is set, but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_overrides, lmlab_cache_dir) -> Path:
    """A 4-step run of the real CLI with every offline logger that has a dashboard."""
    output = tmp_path_factory.mktemp("outputs")
    env = {**os.environ, "LMLAB_OUTPUT_DIR": str(output), "LMLAB_CACHE_DIR": str(lmlab_cache_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the store goes under LMLAB_OUTPUT_DIR
    command = [
        str(Path(sys.executable).parent / "lmlab-train"),
        "experiment=pretrain_gpt",
        "logger=[csv,tensorboard,mlflow]",
        f"objective.lr={LR}",
        "objective.sample_max_new_tokens=4",
        "export=false",
        *tiny_overrides("gpt2", steps=4),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (found,) = (output / "pretrain_gpt").iterdir()
    return found


def logged(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every metrics.csv row that holds `metric`, in file order."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r[metric])) for r in csv.DictReader(f) if r[metric]]


def saved_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def screenshot(page, name: str) -> None:
    path = browser.screenshot_dir() / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


# ---------------------------------------------------------------- MLflow


def mlflow_api(url: str, endpoint: str, body: dict | None = None) -> dict:
    """GET (no body) or POST the MLflow REST API of the server under test."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def find_mlflow_run(url: str, experiment: str, run_dir: Path) -> dict:
    """The run's info, found as lmlab tags it: by its run dir."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    experiment_id = mlflow_api(url, f"experiments/get-by-name?{query}")["experiment"][
        "experiment_id"
    ]
    found = mlflow_api(
        url,
        "runs/search",
        {
            "experiment_ids": [experiment_id],
            "filter": f"tags.`lmlab.run_dir` = '{run_dir.resolve()}'",
        },
    )["runs"]
    assert len(found) == 1, found
    return found[0]["info"]


@pytest.fixture
def mlflow_url(run_dir, tmp_path):
    """`mlflow ui` on the store the run's config names, on a free port of 127.0.0.1."""
    uri = saved_config(run_dir)["logger"]["mlflow"]["tracking_uri"]
    port = browser.free_port()
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    # The job runner (GenAI scorers) is a second server process this check does not need.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = tmp_path / "mlflow.log"
    with browser.server(command, "/health", log, port, env=env) as url:
        yield url


def test_mlflow_ui_shows_run_params_and_loss_charts(run_dir, mlflow_url):
    experiment = saved_config(run_dir)["name"]
    info = find_mlflow_run(mlflow_url, experiment, run_dir)
    with browser.chromium_page(height=1500, init_script=MLFLOW_INIT_SCRIPT) as page:
        page.set_default_timeout(TIMEOUT_MS)
        # as a person would: home, the training view, the experiment, its run
        page.goto(mlflow_url)
        page.get_by_text("Model training", exact=True).click()
        page.get_by_role("link", name=experiment, exact=True).click()
        page.get_by_role("link", name=info["run_name"], exact=True).click()

        assert page.get_by_test_id("key-value-Run ID").inner_text().split()[-1] == info["run_id"]
        page.get_by_placeholder("Search parameters").fill("objective.")
        assert row_cells(page, "Parameter", "objective.lr") == ["objective.lr", LR]
        for metric in LOSSES:  # the overview's metrics table: the last value logged
            _, value = row_cells(page, "Metric", metric)
            assert math.isclose(float(value), logged(run_dir, metric)[-1][1], rel_tol=1e-6)
        screenshot(page, "mlflow_run.png")

        page.get_by_role("tab", name="Model metrics").click()
        page.get_by_placeholder("Search metric charts").fill("loss")
        for metric in LOSSES:  # one chart per loss, one marker per logged step
            chart = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                has_text=f"({metric})"
            )
            points = chart.locator(".js-plotly-plot .scatterlayer path.point")
            points.first.wait_for()
            steps = {step for step, _ in logged(run_dir, metric)}
            assert points.count() == len(steps), metric
        screenshot(page, "mlflow_metrics.png")


def row_cells(page, header: str, first_cell: str) -> list[str]:
    """The texts of the row whose first cell is exactly `first_cell`, in the table whose
    first column is headed `header` (MLflow's run page: Metric, Parameter)."""
    # a header cell's accessible name includes its "Resize Column" button: match its text
    heading = page.get_by_role("columnheader").get_by_text(header, exact=True)
    table = page.get_by_role("table").filter(has=heading)
    row = table.get_by_role("row").filter(has=page.get_by_role("cell", name=first_cell, exact=True))
    row.wait_for()
    return [text.strip() for text in row.get_by_role("cell").all_inner_texts()]


# ---------------------------------------------------------------- TensorBoard


@pytest.fixture
def tensorboard_url(run_dir, tmp_path):
    port = browser.free_port()
    command = ["tensorboard", "--logdir", str(run_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    log = tmp_path / "tensorboard.log"
    with browser.server(command, "/data/logdir", log, port) as url:
        yield url


def test_tensorboard_shows_loss_scalars(run_dir, tensorboard_url):
    with browser.chromium_page(height=700) as page:
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{tensorboard_url}/#timeseries")
        # the raw curves, whole: no smoothing, no outlier clipping (4 points would be clipped)
        page.get_by_role("spinbutton", name="Smoothing").fill("0")
        page.get_by_label("Ignore outliers in chart scaling").uncheck()
        page.get_by_role("button", name="Toggle settings side pane").click()
        # cards are drawn only once scrolled into view: keep just the two losses
        tag_filter = page.get_by_role("combobox", name="Filter tags (regex)")
        tag_filter.fill("^(train|val)/loss$")
        tag_filter.press("Escape")  # closes the suggestions over the charts
        for metric in LOSSES:
            card = page.locator("scalar-card").filter(
                has=page.locator(f'tb-truncated-path[title="{metric}"]')
            )
            card.locator("line-chart canvas").wait_for()
            # the data table under the chart, at the last step: Run, Value, Step, ...
            headers = card.locator("tb-data-table-header-cell").all_inner_texts()
            cells = card.locator("tb-data-table-content-row tb-data-table-content-cell")
            table = dict(
                zip([h.strip() for h in headers], [c.strip() for c in cells.all_inner_texts()])
            )
            last_step, last_value = logged(run_dir, metric)[-1]
            assert table["Run"] == "tensorboard", table  # the logger's folder in the run dir
            assert int(table["Step"]) == last_step, table
            assert math.isclose(float(table["Value"]), last_value, abs_tol=1e-4), table
        screenshot(page, "tensorboard_scalars.png")
