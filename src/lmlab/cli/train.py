"""lmlab-train: compose model x objective x data x trainer with Hydra, then train (the run
itself is lmlab.run.train); every job records its outcome in its status.json.

Imports only Hydra and the schemas at start-up, so `--help` and `--cfg job` stay fast;
torch, transformers and lightning are imported when a run starts.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab import sweeps
from lmlab.config import config_dir, validate
from lmlab.errors import LmlabError
from lmlab.interrupts import Interrupted, continue_line
from lmlab.runlock import RunDirLocked


def expand_data_path(args: list[str]) -> list[str]:
    """`data=<file, dir or glob>` is shorthand for `data=files data.train=<it>`."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        is_preset = (config_dir() / "data" / f"{value}.yaml").exists()
        if key == "data" and not is_preset and (Path(value).exists() or set("*?/") & set(value)):
            out += ["data=files", f"data.train={value}"]
        else:
            out.append(arg)
    return out


def check_start(args: list[str]) -> bool:
    """Composes and validates the command's config before Hydra runs it: a bad option, key
    or value is one line, exit 2, and no run dir is made (lmlab.cli.precheck). True when
    nothing is left to run (`--cfg job`: the config is printed)."""
    from lmlab.cli.precheck import check_command

    try:
        return check_command(args)
    except LmlabError as e:
        fail(e)


def fail(error: Exception) -> None:
    print(f"lmlab-train: error: {error}", file=sys.stderr)
    sys.exit(2)


def train_and_report(cfg: DictConfig) -> float | None:
    validate(cfg)  # cheap checks before the heavy imports
    from lmlab.run import train

    metrics = train(cfg)  # prints the header, progress and the summary
    return sweeps.optimized_value(metrics, cfg.optimized_metric)


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: returns metrics[optimized_metric], the value a sweeper optimises.

    Every job writes <run dir>/status.json. A failed job of a multirun raises, so that
    Hydra records it and the sweep goes on; a single run keeps its one-line error, exit 2."""
    if (done := sweeps.completed_job(cfg)) is not None:  # a sweep run again: done before
        return done["value"]
    try:
        value = train_and_report(cfg)
    except Exception as error:
        from lmlab.cli.precheck import clean_failed_start, user_error

        e = user_error(error)
        sweeps.write_status(cfg, None, e)
        if sweeps.in_multirun():
            raise sweeps.job_failed(e) from error
        if isinstance(e, LmlabError):
            clean_failed_start(OmegaConf.select(cfg, "paths.run_dir"))
            fail(e)
        raise
    sweeps.write_status(cfg, value, None)
    return value


def main() -> None:
    command = list(sys.argv)  # as typed: the command that continues an interrupted run
    sys.argv = [sys.argv[0], *expand_data_path(sys.argv[1:])]
    if check_start(sys.argv[1:]):
        sys.exit(0)
    code = 0
    try:
        hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run)()
    except SystemExit as e:  # Hydra's errors (1), fail() (2); also a sweep with a failed job (1)
        code = e.code
    except Interrupted as e:  # SIGTERM, Ctrl-C, SIGUSR1: checkpoint and status.json written
        if sweeps.is_rank_zero():  # not again by the other processes of a DDP run
            print(continue_line(e, command), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before the run had started: nothing to save
        print("lmlab-train: interrupted before training started", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except RunDirLocked as e:  # the same command is running: this one touches nothing
        fail(e)
    sweep_dir = sweeps.sweep_dir()
    if sweep_dir is not None:  # a multirun: every job has run; list the failed ones
        code = sweeps.summarize(sweep_dir) or code
    sys.exit(code)


if __name__ == "__main__":
    main()
