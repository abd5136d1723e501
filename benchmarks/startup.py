"""Start-up time of lmlab-train (issue 13, item 3), as a user sees it: whole processes.

  python benchmarks/startup.py                        # 5 rounds, about 3 min on 2 cores
  python benchmarks/startup.py --compare /work/main/src   # also another checkout, alternating

Cases, run in turn within each round (with --compare, each case runs this checkout and the
other one back to back, the order flipping every round, so that load affects both alike):

* `--cfg job`: `lmlab-train --cfg job` until it exits (target 0.5 s).
* `misspelt key`: `lmlab-train objective.lrr=1` until its one-line error (target 1.0 s).
* `first step`: `lmlab-train experiment=quickstart trainer.max_steps=1` with a warm cache (a run
  before the rounds fills it), from the command to the start of the first training step
  (target 6 s); a callback added on the command line (`FirstStep`, below) writes the time.
* `whole run`: the same process until it exits (final validation, export, pictures).

Prints the median of each case and `uptime`'s load (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SCRIPT = Path(sys.executable).parent / "lmlab-train"
QUICKSTART = ["experiment=quickstart", "trainer.max_steps=1"]
TARGETS = {"--cfg job": 0.5, "misspelt key": 1.0, "first step": 6.0, "whole run": None}


def __getattr__(name: str):
    """`startup.FirstStep`, looked up by Hydra in the lmlab-train process: a Lightning callback
    writing the wall-clock time at the start of the first training step to `path` (made on
    demand, so that this script itself imports no Lightning)."""
    if name != "FirstStep":
        raise AttributeError(name)
    from pytorch_lightning import Callback

    class FirstStep(Callback):
        def __init__(self, path: str):
            self.path = Path(path)

        def on_train_batch_start(self, *args) -> None:
            if not self.path.exists():
                self.path.write_text(repr(time.time()))

    return FirstStep


def run(args: list[str], src: Path, tmp: Path, expect: int) -> tuple[float, float]:
    """lmlab-train with `src`'s lmlab: (seconds until it exits, its start time)."""
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{HERE}", OMP_NUM_THREADS="1")
    env.update(LMLAB_OUTPUT_DIR=str(tmp / "outputs"), LMLAB_CACHE_DIR=str(tmp / "cache"))
    start = time.time()
    proc = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True)
    elapsed = time.time() - start
    if proc.returncode != expect:
        sys.exit(f"{' '.join(args)}: exit {proc.returncode}, expected {expect}\n{proc.stderr}")
    return elapsed, start


def measure(src: Path, tmp: Path) -> dict[str, float]:
    out = {}
    out["--cfg job"], _ = run(["--cfg", "job"], src, tmp, 0)
    out["misspelt key"], _ = run(["objective.lrr=1"], src, tmp, 2)
    marker = tmp / "first_step"
    marker.unlink(missing_ok=True)
    callback = [f"+callbacks.first_step._target_={Path(__file__).stem}.FirstStep"]
    callback += [f"+callbacks.first_step.path={marker}"]
    out["whole run"], start = run([*QUICKSTART, *callback], src, tmp, 0)
    out["first step"] = float(marker.read_text()) - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--compare", type=Path, help="another checkout's src/ (e.g. before)")
    args = parser.parse_args()
    sides = {"this": SRC} | ({"other": args.compare} if args.compare else {})
    times = {side: {case: [] for case in TARGETS} for side in sides}
    with tempfile.TemporaryDirectory(prefix="lmlab-startup-") as tmp:
        tmp = Path(tmp)
        for src in sides.values():  # warm-up: fills the cache, compiles the .pyc files
            measure(src, tmp)
        for i in range(args.runs):
            for side in list(sides)[:: 1 if i % 2 == 0 else -1]:
                for case, seconds in measure(sides[side], tmp).items():
                    times[side][case].append(seconds)
    load = os.getloadavg()
    print(f"{args.runs} rounds, median s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    header = "| what | " + " | ".join(f"{side} (median s)" for side in sides) + " | target |"
    print(header)
    print("|---" * (len(sides) + 2) + "|")
    for case, target in TARGETS.items():
        cells = [f"{statistics.median(times[side][case]):.2f}" for side in sides]
        aim = f"≤ {target}" if target else "–"
        print(f"| {case} | " + " | ".join(cells) + f" | {aim} |")
    for side in sides:
        print(f"{side}: {sides[side]}")


if __name__ == "__main__":
    main()
