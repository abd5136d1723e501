"""trainer=ddp: two CPU processes (gloo) through the real lmlab-train, against one process
with the same global batch; the command a DDP child runs; the checks that fail before any
work; the clean-up that lets a multirun run one DDP job after another.

The DDP run is one subprocess (Lightning starts its second process by re-running the
command); the single-process run is in-process. Both share one tokenizer and dataset cache.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import killed_and_rerun, load_benchmark

from lmlab.build import compose, train
from lmlab.errors import LmlabError
from lmlab.processes import check_processes, own_processes

LMLAB_TRAIN = Path(sys.executable).parent / "lmlab-train"


def tiny(text_file, batch_size: int) -> list[str]:
    """pretrain_gpt, tiny: 4 steps, validation at 0, 2 and 4 over the whole validation split
    (6 blocks of 32 tokens: an even count, so both processes see 3 and none twice)."""
    return [
        "experiment=pretrain_gpt",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "++model.config.n_embd=32",
        "++model.config.n_layer=2",
        "++model.config.n_head=2",
        "model.tokenizer.vocab_size=300",
        "data=files",
        f"data.train={text_file}",
        "data.max_length=32",
        f"data.batch_size={batch_size}",
        "objective.sample_max_new_tokens=5",
    ]


def val_losses(run_dir: Path) -> dict[int, float]:
    """step -> val/loss from metrics.csv (the validation before training is step 0)."""
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    return {int(r["step"]): float(r["val/loss"]) for r in rows}


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def lmlab_train(args: list[str], cwd: Path, output: Path, cache: Path, timeout: int = 240):
    env = {**os.environ, "LMLAB_OUTPUT_DIR": str(output), "LMLAB_CACHE_DIR": str(cache)}
    return subprocess.run(
        [str(LMLAB_TRAIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_text_file, lmlab_cache_dir):
    """lmlab-train trainer=ddp trainer.devices=2: batches of 2 per process (4 in all)."""
    root = tmp_path_factory.mktemp("ddp")
    output = root / "outputs"
    args = [*tiny(tiny_text_file, 2), "trainer=ddp", "trainer.devices=2"]
    proc = lmlab_train(args, root, output, lmlab_cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return SimpleNamespace(output=output, stdout=proc.stdout)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_text_file, lmlab_cache_dir):
    """The same run in one process with batches of 4: the same global batch."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    overrides = [*tiny(tiny_text_file, 4), f"paths.cache_dir={lmlab_cache_dir}"]
    train(compose(overrides, run_dir=str(run_dir)))
    return run_dir


def test_ddp_run_leaves_one_run_dir_with_one_set_of_files(ddp_run):
    """Rank one shares rank zero's run dir and writes nothing of its own there."""
    runs = sorted((ddp_run.output / "pretrain_gpt").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert sorted(ddp_run.output.iterdir()) == [ddp_run.output / "pretrain_gpt"]
    found = {
        name: sorted(p.relative_to(run_dir) for p in ddp_run.output.rglob(name))
        for name in (".hydra", "*.log", "metrics.csv", "metrics.json", "config.yaml", "export")
    }
    assert found == {
        ".hydra": [Path(".hydra")],
        "*.log": [Path("train.log")],  # Hydra's job log; Lightning's child would add another
        "metrics.csv": [Path("metrics.csv")],
        "metrics.json": [Path("metrics.json")],
        "config.yaml": [Path(".hydra/config.yaml"), Path("config.yaml")],
        "export": [Path("export")],
    }
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert ddp_run.stdout.count("export: ") == 1  # printed by rank zero only
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 4


def test_validation_loss_is_the_mean_over_both_processes(ddp_run, single_run):
    """The validation before training (validate_at_start, under DDP) sees the same initial
    weights in both runs: the mean over both processes' halves of the validation split is
    the single process's loss over all of it. Rank zero's half alone is off by ~5e-3."""
    (ddp_dir,) = (ddp_run.output / "pretrain_gpt").iterdir()
    ddp, single = val_losses(ddp_dir), val_losses(single_run)
    assert sorted(ddp) == sorted(single) and 0 in ddp
    assert ddp[0] == pytest.approx(single[0], abs=1e-5)


def test_ddp_trains_like_one_process_with_the_same_global_batch(ddp_run, single_run):
    """Same steps, same global batch, other batches (each sampler shuffles its own way):
    the validation loss falls by about as much."""
    (ddp_dir,) = (ddp_run.output / "pretrain_gpt").iterdir()
    ddp, single = val_losses(ddp_dir), val_losses(single_run)
    # the end: the final weights' validation (metrics.json; fit's last one, reused)
    end_ddp, end_single = (final_metrics(d)["val/loss"] for d in (ddp_dir, single_run))
    gain_ddp, gain_single = ddp[0] - end_ddp, single[0] - end_single
    assert gain_single > 0.05
    assert 0.7 < gain_ddp / gain_single < 1.4
    assert end_ddp / end_single == pytest.approx(1.0, abs=0.02)
    with open(ddp_dir / "metrics.csv") as f:  # the train loss of every step, synced
        assert sum(1 for r in csv.DictReader(f) if r.get("train/loss")) == 4


# ---------------------------------------------------------------- the child's command


def test_child_runs_this_job_alone_in_its_run_dir(tmp_path, monkeypatch):
    """In a multirun (lmlab-train -m ... objective.lr=1e-3,3e-3) a child gets its job's
    overrides, not the sweep, and the job's run dir as it is, quoted; the command composes
    to that run dir without a .hydra folder or a log file."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lmlab.config import config_dir
    from lmlab.processes import hydra_child_command

    job_dir = tmp_path / "sweep" / "it's job 1"
    overrides = ["experiment=pretrain_gpt", "objective.lr=0.003"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
    monkeypatch.setattr(
        sys, "argv", [str(LMLAB_TRAIN), "-m", *overrides[:1], "objective.lr=1e-3,3e-3"]
    )
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)  # as the lmlab-train script
    HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = hydra_child_command(1)
    finally:
        HydraConfig.instance().cfg = None
    assert command[:4] == [sys.executable, str(LMLAB_TRAIN), "--config-name", "train"]
    assert command[4:] == [
        *overrides,
        "hydra.mode=RUN",
        f"hydra.run.dir='{tmp_path}/sweep/it\\'s job 1'",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]
    assert cwd == os.getcwd()
    shown = subprocess.run([*command, "--cfg", "hydra"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    hydra_node = yaml.safe_load(shown.stdout)["hydra"]
    assert hydra_node["run"]["dir"] == str(job_dir)
    assert hydra_node["output_subdir"] is None
    assert hydra_node["mode"] == "RUN"
    assert hydra_node["job_logging"]["root"]["handlers"] == ["console"]  # no file handler


# ---------------------------------------------------------------- before any work


def test_deepspeed_not_installed_says_how_to_install(monkeypatch):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    t = compose(["trainer=deepspeed"], run_dir="unused").trainer
    with pytest.raises(
        LmlabError, match=r"^trainer.strategy: 'deepspeed_stage_2' .*pip install deepspeed"
    ):
        check_processes(t)


def test_sharded_strategies_refuse_cpus():
    t = compose(["trainer=fsdp", "trainer.accelerator=cpu"], run_dir="unused").trainer
    with pytest.raises(LmlabError, match=r"^trainer.strategy: 'fsdp' runs on GPUs only"):
        check_processes(t)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_preset_without_a_gpu_names_the_key():
    for preset in ("gpu", "fsdp"):
        t = compose([f"trainer={preset}"], run_dir="unused").trainer
        with pytest.raises(LmlabError, match=r"^trainer.accelerator: 'gpu', but torch finds no"):
            check_processes(t)
    check_processes(compose(["trainer=ddp"], run_dir="unused").trainer)  # CPU: fine


# ---------------------------------------------------------------- one training after another


def test_process_group_and_launch_variables_are_cleared_after_a_training(monkeypatch):
    """What Lightning's launcher leaves behind would make the next training in this process
    (the next multirun job) take itself for a child of this one."""
    import torch.distributed as dist

    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    launched = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29731", "LOCAL_RANK": "0"}
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=None))
    with own_processes(trainer):
        os.environ.update(launched | {"WORLD_SIZE": "1", "NODE_RANK": "0"})
        dist.init_process_group("gloo", rank=0, world_size=1)
    assert not dist.is_initialized()
    assert not set(launched) & set(os.environ)


def test_children_of_a_failed_training_are_ended_and_read_as_ended_well():
    """Lightning's watcher kills the launching process when a child ends with an error;
    the failure of rank zero must still be reported (status.json, the rest of a sweep)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=[child])))
    with pytest.raises(RuntimeError, match="rank zero failed"), own_processes(trainer):
        raise RuntimeError("rank zero failed")
    assert child.poll() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)


# ---------------------------------------------------------------- multirun


@pytest.mark.slow
def test_ddp_jobs_of_a_multirun_each_train_in_their_own_job_dir(
    tmp_path, tiny_text_file, lmlab_cache_dir
):
    """Two DDP jobs one after the other in the same lmlab-train process (~60 s)."""
    output = tmp_path / "outputs"
    args = ["-m", *tiny(tiny_text_file, 2), "trainer=ddp", "objective.lr=1e-3,3e-3"]
    proc = lmlab_train(args, tmp_path, output, lmlab_cache_dir, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep,) = (output / "multirun" / "pretrain_gpt").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert sorted(output.iterdir()) == [output / "multirun"]  # no run dir of a child
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["global_step"] == 4
        assert sorted(p.name for p in (sweep / job).glob("*.log")) == ["train.log"]
    lrs = [json.loads((sweep / j / "status.json").read_text())["overrides"][-1] for j in "01"]
    assert lrs == ["objective.lr=0.001", "objective.lr=0.003"]


@pytest.mark.slow
def test_a_killed_ddp_fine_tune_resumes_bit_identical(tmp_path, lmlab_cache_dir):
    """Two processes, killed (SIGKILL) after batch 7, re-run from the checkpoint of step 6:
    the same weights and loss rows as the uninterrupted run. Every process's RNG states are
    in the checkpoint: the processes' dropout draws differ with their batches' lengths, and
    with rank zero's states alone the re-run diverged from the first step after the resume."""
    bench = load_benchmark()
    args = bench.overrides("classification", 0, bench.write_data(tmp_path))
    args += ["trainer=ddp", "trainer.devices=2", "plots=false"]
    output = tmp_path / "outputs"
    whole, resumed = killed_and_rerun(
        lambda overrides: lmlab_train(overrides, tmp_path, output, lmlab_cache_dir),
        args, 7, tmp_path,
    )  # fmt: skip
    assert resumed["step"] == whole["step"] == 12
    assert resumed["rows"] == whole["rows"] and resumed["hash"] == whole["hash"]


@pytest.mark.slow
def test_a_ddp_run_resumes_mid_epoch(tmp_path, lmlab_cache_dir):
    """A DDP checkpoint taken mid-epoch resumes (it failed with an IndexError in Lightning's
    sampler wrapper once the training loader skipped the batches already done)."""
    output = tmp_path / "outputs"
    args = ["experiment=quickstart", "trainer=ddp", "trainer.devices=2"]
    first = [*args, "trainer.max_steps=3", "callbacks.last_checkpoint.every_n_train_steps=3"]
    first.append("keep_checkpoints=true")
    run_a = f"paths.run_dir={tmp_path / 'a'}"
    proc = lmlab_train([*first, run_a], tmp_path, output, lmlab_cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resume = f"resume={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"
    later = [*args, "trainer.max_steps=6", resume, f"paths.run_dir={tmp_path / 'b'}"]
    proc = lmlab_train(later, tmp_path, output, lmlab_cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout
    assert max(val_losses(tmp_path / "b")) == 6
