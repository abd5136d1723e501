"""Tests for the lmlab-train CLI that need no training: start-up stays light, config errors
are short and name the key, and the `data=<path>` shorthand. Each CLI call is a subprocess
with LMLAB_OUTPUT_DIR in tmp_path, so no run dir lands in the repository."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_startup import probe

from lmlab.cli.train import expand_data_path

SCRIPT = Path(sys.executable).parent / "lmlab-train"


@pytest.fixture
def cli_env(tmp_path):
    env = dict(os.environ)
    env["LMLAB_OUTPUT_DIR"] = str(tmp_path / "outputs")
    env["LMLAB_CACHE_DIR"] = str(tmp_path / "cache")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def lmlab_train(args, env, cwd):
    return subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_console_script_is_installed():
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . in the venv"


def test_help_is_light(tmp_path):
    result, proc = probe(["--help"], tmp_path)
    assert (result["code"], result["heavy"]) == (0, [])
    assert "experiment" in proc.stdout  # the config groups are listed
    assert "objective" in proc.stdout


def test_cfg_job_is_light(tmp_path):
    result, proc = probe(["--cfg", "job", "experiment=pretrain_bert"], tmp_path)
    assert (result["code"], result["heavy"]) == (0, [])
    assert "name: pretrain_bert" in proc.stdout
    assert "name: mlm_nsp" in proc.stdout  # the experiment's objective
    assert not (tmp_path / "outputs").exists()  # printing a config makes no run dir


def test_cfg_job_resolve_prints_the_resolved_config(cli_env, tmp_path):
    proc = lmlab_train(["--cfg", "job", "--resolve", "experiment=quickstart"], cli_env, tmp_path)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 0
    assert f"output_dir: {tmp_path / 'outputs'}" in proc.stdout  # ${oc.env:...} resolved


def test_misspelt_key_fails_fast_without_traceback(cli_env, tmp_path):
    start = time.monotonic()
    proc = lmlab_train(["experiment=pretrain_bert", "model.hiden_size=3"], cli_env, tmp_path)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hiden_size" in output
    assert "Traceback" not in output
    assert elapsed < 5, f"took {elapsed:.1f}s: torch & co. imported before composing?"


def test_unknown_architecture_key_is_a_one_line_error(cli_env, tmp_path):
    proc = lmlab_train(
        ["experiment=pretrain_bert", "+model.config.hiden_size=3"], cli_env, tmp_path
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lmlab-train: error: model.config.hiden_size: ")
    assert "hidden_size" in lines[0].split("model.config.hiden_size", 1)[1]
    assert not list((tmp_path / "outputs").rglob("metrics.json"))
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_module_entry_point_runs_too(cli_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab.cli.train", "experiment=pretrain_bert", "objective.lrr=1"],
        env=cli_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "lrr" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- data=<path> shorthand


def test_expand_data_path_existing_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a\n\nb\n")
    args = ["experiment=pretrain_gpt", f"data={corpus}", "trainer.max_steps=3"]
    assert expand_data_path(args) == [
        "experiment=pretrain_gpt",
        "data=files",
        f"data.train={corpus}",
        "trainer.max_steps=3",
    ]


def test_expand_data_path_directory_and_glob(tmp_path):
    assert expand_data_path([f"data={tmp_path}"]) == ["data=files", f"data.train={tmp_path}"]
    glob = "corpus/*.txt"  # need not exist yet: the source reports an empty match
    assert expand_data_path([f"data={glob}"]) == ["data=files", f"data.train={glob}"]


def test_expand_data_path_leaves_presets_and_other_args(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wikitext2").write_text("a file that happens to share the preset's name\n")
    args = [
        "data=wikitext2",
        "data=pydoc",
        "data.train=corpus.txt",
        "experiment=quickstart",
        "trainer.max_steps=3",
        "--cfg",
        "job",
    ]
    assert expand_data_path(args) == args
    assert expand_data_path([]) == []
