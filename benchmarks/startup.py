"""Start-up time of lmlab-train (issue 13, item 3), as a user sees it: whole processes.

  python benchmarks/startup.py                        # 5 rounds, about 3 min on 2 cores
  python benchmarks/startup.py --compare /tmp/base/src   # also another checkout, alternating
  (e.g. git archive <commit> src conf | tar -x -C /tmp/base; both sides off the installed one)

Cases, run in turn within each round (with --compare, each case runs this checkout and the
other one back to back, the order flipping every round, so that load affects both alike):

* `--cfg job`: `lmlab-train --cfg job` until it exits (target 0.5 s).
* `misspelt key`: `lmlab-train objective.lrr=1` until its one-line error (target 1.0 s).
* `first step`: `lmlab-train experiment=quickstart trainer.max_steps=1` with a warm cache (a run
  before the rounds fills it), from the command to the start of the first training step
  (target 6 s); a callback added on the command line (`FirstStep`, below) writes the time.
* `whole run`: the same process until it exits (final validation, export, pictures).

Prints the median wall and CPU seconds of each case (the CPU time of the process, which is
what the wall time is on an idle machine: one thread) and the load average (a shared machine).
"""

from __future__ import annotations

import argparse
import os
import resource
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
    writing the wall-clock and CPU time at the start of the first training step to `path`
    (made on demand, so that this script itself imports no Lightning)."""
    if name != "FirstStep":
        raise AttributeError(name)
    from pytorch_lightning import Callback

    class FirstStep(Callback):
        def __init__(self, path: str):
            self.path = Path(path)

        def on_train_batch_start(self, *args) -> None:
            if not self.path.exists():
                self.path.write_text(f"{time.time()!r} {time.process_time()!r}")

    return FirstStep


def run(args: list[str], src: Path, tmp: Path, expect: int) -> tuple[float, float, float]:
    """lmlab-train with `src`'s lmlab: (wall seconds, CPU seconds, start time)."""
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{HERE}", OMP_NUM_THREADS="1")
    env.update(LMLAB_OUTPUT_DIR=str(tmp / "outputs"), LMLAB_CACHE_DIR=str(tmp / "cache"))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True)
    wall = time.time() - start
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != expect:
        sys.exit(f"{' '.join(args)}: exit {proc.returncode}, expected {expect}\n{proc.stderr}")
    return wall, now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime, start


def measure(src: Path, tmp: Path) -> dict[str, tuple[float, float]]:
    """{case: (wall s, CPU s)} for one run of each case with `src`'s lmlab."""
    out = {}
    out["--cfg job"] = run(["--cfg", "job"], src, tmp, 0)[:2]
    out["misspelt key"] = run(["objective.lrr=1"], src, tmp, 2)[:2]
    marker = tmp / "first_step"
    marker.unlink(missing_ok=True)
    callback = [f"+callbacks.first_step._target_={Path(__file__).stem}.FirstStep"]
    callback += [f"+callbacks.first_step.path={marker}"]
    *out["whole run"], start = run([*QUICKSTART, *callback], src, tmp, 0)
    at, cpu = map(float, marker.read_text().split())
    out["first step"] = (at - start, cpu)
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
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.runs} rounds; median seconds, wall / CPU; load average {load}")
    print("| what | " + " | ".join(f"{side}: wall / CPU" for side in sides) + " | target |")
    print("|---" * (len(sides) + 2) + "|")
    for case, target in TARGETS.items():
        cells = []
        for side in sides:
            wall, cpu = (statistics.median(x) for x in zip(*times[side][case], strict=True))
            cells.append(f"{wall:.2f} / {cpu:.2f}")
        print(f"| {case} | " + " | ".join(cells) + f" | {f'≤ {target}' if target else '–'} |")
    for side in sides:
        print(f"{side}: {sides[side]}")


if __name__ == "__main__":
    main()
