"""The fine-tuning checks of benchmarks/README.md: each runs lmlab-train as a user would and
prints one Markdown row (command, wall time, metrics). Run from the repository root:

    python benchmarks/finetune.py sst2 conll squad seed_bert seed_gpt qa_generative

Runs go to $LMLAB_OUTPUT_DIR (default /tmp/lmlab-bench/outputs); data from $LMLAB_DATA_DIR.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

OUT = os.environ.setdefault("LMLAB_OUTPUT_DIR", "/tmp/lmlab-bench/outputs")
os.environ.setdefault("LMLAB_CACHE_DIR", "/tmp/lmlab-bench/cache")
os.environ.setdefault("LMLAB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared/data"))


_done: dict[tuple, tuple] = {}  # a pre-training shared by two checks runs once


def train(*overrides: str) -> tuple[dict, float, str]:
    """Runs lmlab-train; returns its metrics.json, the wall time and the export path."""
    if overrides in _done:
        return _done[overrides]
    command = ["lmlab-train", *overrides]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
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


def seed_bert():
    """bert_tiny pre-trained with MLM+NSP on WikiText-2, then SST-2, against the same
    bert_tiny (same tokenizer) from random weights, same fine-tuning budget."""
    pre = ["experiment=pretrain_bert"]
    metrics, wall, export = train(*pre)
    row("pre-train bert_tiny, MLM+NSP, WikiText-2", pre, wall, pick(metrics, "val/nsp_accuracy"))
    budget = ["experiment=finetune_sentiment", "model=bert_tiny", "objective.lr=3e-4"]
    for name, start in [
        ("SST-2 from the pre-trained bert_tiny", f"model.name_or_path={export}"),
        ("SST-2 from random weights, same tokenizer", f"model.tokenizer.name_or_path={export}"),
    ]:
        overrides = [*budget, start]
        metrics, wall, _ = train(*overrides)
        row(name, overrides, wall, pick(metrics, "val/accuracy"))


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
