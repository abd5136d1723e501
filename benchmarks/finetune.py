"""The fine-tuning checks of benchmarks/README.md: each runs lmlab-train as a user would and
prints one Markdown row (command, wall time, metrics). Run from the repository root:

    python benchmarks/finetune.py sst2 conll squad transfer adaptive seed_gpt qa_generative

Runs go to $LMLAB_OUTPUT_DIR (default /tmp/lmlab-bench/outputs); data from $LMLAB_DATA_DIR.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = os.environ.setdefault("LMLAB_OUTPUT_DIR", "/tmp/lmlab-bench/outputs")
os.environ.setdefault("LMLAB_CACHE_DIR", "/tmp/lmlab-bench/cache")
os.environ.setdefault("LMLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared/data"))


_done: dict[tuple, tuple] = {}  # a pre-training shared by two checks runs once


def train(*overrides: str, env: dict | None = None) -> tuple[dict, float, str]:
    """Runs lmlab-train; returns its metrics.json, the wall time and the export path."""
    if overrides in _done:
        return _done[overrides]
    command = ["lmlab-train", *overrides]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    export = next(
        line.removeprefix("export: ")
        for line in proc.stdout.splitlines()
        if line.startswith("export: ")
    )
    metrics = json.loads((Path(export).parent / "metrics.json").read_text())
    _done[overrides] = metrics, wall, export
    return metrics, wall, export


def row(name: str, overrides: list[str], wall: float, shown: dict) -> None:
    values = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()
    )
    command = f"`lmlab-train {' '.join(overrides)}`"
    print(f"| {name} | {command} | {wall / 60:.1f} min | {values} |", flush=True)


def pick(metrics: dict, *keys: str) -> dict:
    return {k: metrics[k] for k in keys if k in metrics}


def single(name: str, overrides: list[str], *keys: str) -> None:
    metrics, wall, _ = train(*overrides)
    row(name, overrides, wall, pick(metrics, "global_step", *keys))


def sst2():
    single("SST-2, MiniLM", ["experiment=finetune_sentiment", "model=minilm"],
           "val/accuracy", "val/macro_f1")  # fmt: skip


def conll():
    single("CoNLL-2003, MiniLM", ["experiment=finetune_ner", "model=minilm"],
           "test/f1", "val/f1", "test/precision", "test/recall")  # fmt: skip


def squad():
    single("SQuAD v1.1 held-out articles, MiniLM",
           ["experiment=finetune_qa_extractive", "model=minilm"],
           "val/f1", "val/exact_match")  # fmt: skip


PRETRAININGS = {  # the objective's name in the table -> overrides of experiment=pretrain_bert
    "MLM+NSP": [],
    "MLM": ["objective=mlm"],
    "NSP": ["objective=nsp"],
}
# The SST-2 budget of the transfer table: the sentiment preset as it was when it was measured
# (the preset now runs one epoch of all 67k phrases)
SST2_TRANSFER_BUDGET = [
    "data.max_train_samples=20000", "trainer.val_check_interval=100", "callbacks=finetune"
]  # fmt: skip
TASKS = {  # task -> (the fine-tuning command, the metric reported)
    "SST-2 dev accuracy": (
        ["experiment=finetune_sentiment", "model=bert_tiny", *SST2_TRANSFER_BUDGET],
        "val/accuracy",
    ),
    "CoNLL-2003 test entity F1": (["experiment=finetune_ner", "model=bert_tiny"], "test/f1"),
}
SEEDS = (0, 1, 2)
ADAPT_BUDGET = ["data.max_train_samples=2000", "trainer.val_check_interval=21"]


def in_parallel(jobs: list[tuple[str, ...]], workers: int = 2) -> list[tuple[dict, float, str]]:
    """Runs lmlab-train commands `workers` at a time, one thread each (two processes with
    torch's default threads on 2 cores run ~5x slower each)."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # only these runs: other checks keep theirs
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: train(*job, env=env), jobs))


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def seed_table(task: str, command: list[str], starts: dict[str, list[str]], metric: str) -> None:
    """Runs `command` from each start with every seed of SEEDS; prints mean ± sd per start."""
    jobs = [(*command, *start, f"seed={s}") for start in starts.values() for s in SEEDS]
    results = iter(in_parallel(jobs))
    print(f"\n| start | {task} (mean ± sd, seeds {SEEDS}) | per seed | wall per run |")
    print("|---|---|---|---|")
    for name in starts:
        runs = [next(results) for _ in SEEDS]
        values = [m[metric] for m, _, _ in runs]
        walls = "/".join(f"{w / 60:.1f}" for _, w, _ in runs)
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {mean_sd(values)} | {per_seed} | {walls} min |", flush=True)
    print(f"command: `lmlab-train {' '.join(command)} <start> seed=<0|1|2>`", flush=True)


def transfer():
    """bert_tiny pre-trained on WikiText-2 by MLM+NSP, MLM alone and NSP alone, then
    fine-tuned on SST-2 and CoNLL-2003, against the same bert_tiny from random weights with
    the same tokenizer and the same fine-tuning command; 3 fine-tuning seeds each. The
    MLM+NSP model also without the embedding rescaling (as before the fix)."""
    pretrained = {}
    jobs = [("experiment=pretrain_bert", *extra) for extra in PRETRAININGS.values()]
    for name, job, (metrics, wall, export) in zip(PRETRAININGS, jobs, in_parallel(jobs)):
        pretrained[name] = export
        shown = pick(metrics, "val/mlm_accuracy", "val/accuracy", "val/nsp_accuracy")
        row(f"pre-train bert_tiny, {name}", list(job), wall, shown)
    # the tokenizer is trained on the corpus deterministically: the same in every export
    starts = {"random weights": [f"model.tokenizer.name_or_path={pretrained['MLM+NSP']}"]}
    starts |= {f"{name} pre-trained": [f"model.name_or_path={e}"] for name, e in pretrained.items()}
    starts["MLM+NSP, embeddings not rescaled"] = [
        f"model.name_or_path={pretrained['MLM+NSP']}",
        "model.rescale_embeddings=false",
    ]
    for task, (command, metric) in TASKS.items():
        seed_table(task, command, starts, metric)


def adaptive():
    """MiniLM's masked LM continued on the SST-2 training sentences (labels unread), then
    fine-tuned on 2,000 labelled ones, against fine-tuning MiniLM directly; 3 seeds each."""
    adapt = ["experiment=adapt_mlm"]
    ((metrics, wall, export),) = in_parallel([tuple(adapt)])
    row("adapt MiniLM: MLM on SST-2's sentences", adapt, wall, pick(metrics, "val/loss"))
    starts = {"MiniLM": [], "MiniLM + adaptive MLM": [f"model.name_or_path={export}"]}
    command = ["experiment=finetune_sentiment", *ADAPT_BUDGET]
    seed_table("SST-2 dev accuracy", command, starts, "val/accuracy")


GPT_PRETRAIN = ["experiment=pretrain_gpt", "data=wikitext2", "name=pretrain_gpt_wikitext2"]
GPT_BUDGET = ["trainer.max_steps=300", "trainer.val_check_interval=100"]


def seed_gpt():
    """A GPT pre-trained on WikiText-2 then fine-tuned on Tiny Shakespeare, against the same
    GPT (same tokenizer) trained on Tiny Shakespeare alone, same budget."""
    metrics, wall, export = train(*GPT_PRETRAIN)
    row("pre-train gpt_tiny, CLM, WikiText-2", GPT_PRETRAIN, wall, pick(metrics, "val/perplexity"))
    for name, start in [
        ("Tiny Shakespeare from the pre-trained GPT", f"model.name_or_path={export}"),
        ("Tiny Shakespeare from scratch, same tokenizer", f"model.tokenizer.name_or_path={export}"),
    ]:
        overrides = ["experiment=finetune_generation", start, *GPT_BUDGET]
        metrics, wall, _ = train(*overrides)
        row(name, overrides, wall, pick(metrics, "val/loss", "val/perplexity"))


def qa_generative():
    _, _, export = train(*GPT_PRETRAIN)
    overrides = ["experiment=finetune_qa_generative", f"model.name_or_path={export}"]
    single("generative QA, GPT from an lmlab pre-training run", overrides,
           "val/exact_match", "val/f1", "val/loss")  # fmt: skip


if __name__ == "__main__":
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    for check in sys.argv[1:] or ["sst2"]:
        globals()[check]()
