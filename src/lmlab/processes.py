"""More than one process (trainer=ddp, fsdp, deepspeed): Lightning starts the other processes
of this node by running this command again (LOCAL_RANK=1, ...); each builds the same
Experiment (lmlab.experiment) and joins the process group. Rank zero alone writes the run
dir's files (config.yaml, metrics.json, export, the CSV). Used by lmlab.run: checks before a
run, the launcher's child command, cleaning up after a training, whole FSDP parameters."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys

from omegaconf import DictConfig

from lmlab.errors import LmlabError
from lmlab.records import override_key

SHARDED_STRATEGIES = ("fsdp", "deepspeed")  # split the model's state across GPUs
# what Lightning's launcher sets in the environment of the process that starts the others
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def check_processes(t: DictConfig) -> None:
    """Fails at once, naming the key, where Lightning would fail only after the data is
    prepared, or with a stack trace."""
    strategy = str(t.strategy)
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise LmlabError(
            f"trainer.strategy: '{strategy}' needs DeepSpeed, which is not installed "
            "(pip install deepspeed)"
        )
    if strategy.startswith("deepspeed") and "stage_3" in strategy:
        raise LmlabError(
            f"trainer.strategy: '{strategy}' splits the parameters across GPUs, and lmlab's "
            "export and samples need them whole: deepspeed_stage_2, or trainer=fsdp"
        )
    if strategy.startswith(SHARDED_STRATEGIES) and t.accelerator == "cpu":
        raise LmlabError(
            f"trainer.strategy: '{strategy}' runs on GPUs only (trainer.accelerator=gpu); "
            "several CPU processes: trainer=ddp"
        )
    if t.accelerator in ("gpu", "cuda"):
        import torch

        apple_gpu = t.accelerator == "gpu" and torch.backends.mps.is_available()
        if not (torch.cuda.is_available() or apple_gpu):
            raise LmlabError(
                f"trainer.accelerator: '{t.accelerator}', but torch finds no CUDA GPU "
                f"(torch {torch.__version__}); on CPUs: trainer.accelerator=cpu"
            )


def hydra_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for local rank `local_rank` > 0 when Hydra started this
    process, in place of Lightning's own, which repeats this process's command line (in a
    multirun, each child would run the whole sweep again) and computes the run dir anew.
    Here: this job's overrides alone, in this job's run dir, with no .hydra folder or log
    file of its own. Returns (command, working dir)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:  # a script (lmlab-train), not python -m
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += ["--config-name", hydra_cfg.job.config_name]
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line":  # from --config-dir
            command += ["--config-dir", source.path]
    output_dir = hydra_cfg.runtime.output_dir.replace("'", "\\'")
    child = {
        "hydra.mode": "RUN",
        "hydra.run.dir": f"'{output_dir}'",
        "hydra.output_subdir": "null",
        "hydra/job_logging": "stdout",  # its messages on the console, not in a second log file
    }
    kept = [o for o in hydra_cfg.overrides.hydra if override_key(o) not in child]
    command += [*hydra_cfg.overrides.task, *kept, *(f"{k}={v}" for k, v in child.items())]
    return command, get_original_cwd()


def launch_children_as_this_job() -> None:
    """Makes Lightning's DDP launcher use hydra_child_command."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = hydra_child_command


@contextlib.contextmanager
def own_processes(trainer):
    """Leaves this process as it found it, for the next training in it (the next job of a
    multirun): Lightning's launcher records its process group in environment variables and
    leaves the group open, so a second Trainer would take itself for a child of the first.
    When the training fails, the children it started are ended first."""
    before = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    try:
        yield
    except BaseException:
        end_children(trainer)
        raise
    finally:
        if before["LOCAL_RANK"] is None:  # not a child: this process started the others, if any
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)


def end_children(trainer) -> None:
    """Kills the processes Lightning started for this training. Each is marked as ended
    well first: Lightning's watcher thread kills this process as soon as it sees a child
    end with an error, and this process still has the failure to report."""
    for proc in getattr(trainer.strategy.launcher, "procs", []):
        if proc.poll() is None:
            proc.returncode = 0
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)


def whole_model(model, trainer):
    """`model` with whole parameters, on rank zero (None on the others). Under FSDP each GPU
    holds a slice of every parameter: the full state dict is gathered (every rank must
    call this) into a fresh copy of the model on the CPU. DDP and DeepSpeed stage 2 keep
    whole parameters in every process: `model` itself."""
    from pytorch_lightning.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return model
    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return None
    whole = type(model)(model.config)
    prefix = "model."  # TaskModule.model
    whole.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return whole
