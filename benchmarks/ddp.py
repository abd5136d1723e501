"""trainer=ddp against one process with the same global batch, as a user runs them:

    lmlab-train experiment=pretrain_gpt trainer=ddp trainer.devices=2 data.batch_size=8 ...
    lmlab-train experiment=pretrain_gpt data.batch_size=16 ...

Both run the same steps (pretrain_gpt's 1000 by default; --steps caps them) with validation
every --val-every steps. Prints both validation losses (before training, which must match:
the DDP value is the mean over both processes; and final), their ratio, the wall times, and
checks that the DDP run left one run dir with one metrics.csv, metrics.json, log and export.
Ends with one Markdown row for benchmarks/README.md. Run from the repository root:

    python benchmarks/ddp.py --steps 300

Runs go to a fresh dir under $LMLAB_OUTPUT_DIR (default /tmp/lmlab-bench/outputs); data
from $LMLAB_DATA_DIR. Each side gets its own output dir, so that the DDP one can be checked
for stray files. On GPUs: --accelerator gpu (NCCL instead of gloo).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("LMLAB_OUTPUT_DIR", "/tmp/lmlab-bench/outputs"))
os.environ.setdefault("LMLAB_CACHE_DIR", "/tmp/lmlab-bench/cache")
os.environ.setdefault("LMLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared/data"))

GLOBAL_BATCH = 16  # pretrain_gpt's data.batch_size


def run(overrides: list[str], output: Path) -> tuple[Path, float]:
    """lmlab-train with its runs under `output`; returns the run dir and the wall time."""
    command = ["lmlab-train", *overrides]
    print("$", " ".join(command), flush=True)
    env = {**os.environ, "LMLAB_OUTPUT_DIR": str(output)}
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    exports = [ln for ln in proc.stdout.splitlines() if ln.startswith("export: ")]
    if len(exports) != 1:
        sys.exit(f"expected one 'export:' line, got {len(exports)}")
    return Path(exports[0].removeprefix("export: ")).parent, wall


def first_val_loss(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as f:
        return next(float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss"))


def check_one_run_dir(output: Path, run_dir: Path) -> None:
    """Everything the run wrote is in its one run dir, once."""
    expected = {
        "run dirs": [run_dir],
        "metrics.csv": [run_dir / "metrics.csv"],
        "metrics.json": [run_dir / "metrics.json"],
        "*.log": [run_dir / "train.log"],
        ".hydra": [run_dir / ".hydra"],
        "export": [run_dir / "export"],
    }
    found = {"run dirs": sorted(p for p in output.glob("*/*") if p.is_dir())}
    found |= {name: sorted(output.rglob(name)) for name in expected if name != "run dirs"}
    for name, paths in expected.items():
        if found[name] != paths:
            sys.exit(f"DDP run: expected {name} {paths}, found {found[name]}")
    print(f"DDP run: one run dir ({run_dir}), one metrics.csv/metrics.json/log/export")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()

    # trainer=ddp replaces the experiment's trainer preset (pretrain: its steps), so the
    # schedule is given to both runs explicitly.
    schedule = [
        f"trainer.max_steps={args.steps}",
        "trainer.max_epochs=null",
        f"trainer.val_check_interval={args.val_every}",
        f"trainer.accelerator={args.accelerator}",
    ]
    per_device = GLOBAL_BATCH // args.devices
    ddp_overrides = [
        "experiment=pretrain_gpt",
        "trainer=ddp",
        f"trainer.devices={args.devices}",
        f"data.batch_size={per_device}",
        *schedule,
    ]
    single_overrides = ["experiment=pretrain_gpt", f"data.batch_size={GLOBAL_BATCH}", *schedule]

    root = OUT / f"ddp-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    # the trained tokenizer and the tokenized data are cached: neither timed run pays for them
    run(["experiment=pretrain_gpt", "trainer.max_steps=1", "trainer.limit_val_batches=1"],
        root / "warm-up")  # fmt: skip
    single_dir, single_wall = run(single_overrides, root / "single")
    ddp_dir, ddp_wall = run(ddp_overrides, root / "ddp")
    check_one_run_dir(root / "ddp", ddp_dir)

    single = json.loads((single_dir / "metrics.json").read_text())
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    start_single, start_ddp = first_val_loss(single_dir), first_val_loss(ddp_dir)
    ratio = ddp["val/loss"] / single["val/loss"]
    print(f"val/loss before training: single {start_single:.5f}, ddp {start_ddp:.5f}")
    print(
        f"val/loss after {ddp['global_step']} steps: single {single['val/loss']:.4f}, "
        f"ddp {ddp['val/loss']:.4f}, ddp / single {ratio:.3f}"
    )
    print(f"wall: single {single_wall / 60:.1f} min, ddp {ddp_wall / 60:.1f} min")
    command = " ".join(ddp_overrides)
    print(
        f"| `lmlab-train {command}` vs 1 process, data.batch_size={GLOBAL_BATCH} "
        f"| {ddp['global_step']} | {start_ddp:.4f} / {start_single:.4f} "
        f"| {ddp['val/loss']:.4f} / {single['val/loss']:.4f} | {ratio:.3f} "
        f"| {ddp_wall / 60:.1f} / {single_wall / 60:.1f} min | one run dir, one export |",
        flush=True,
    )


if __name__ == "__main__":
    main()
