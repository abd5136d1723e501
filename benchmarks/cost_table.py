"""How the cost of a GPT training step grows with model size and sequence length, on CPU
(issue 13, item 6): step time and peak memory for gpt_tiny, gpt_small and a 124M GPT-2 at
sequence lengths 128, 512 and 1024.

  python benchmarks/cost_table.py                 # batch 8, 3 timed steps each
  python benchmarks/cost_table.py --batch 4 --steps 2

Each combination runs in its own process (so that its peak RSS is its own): a GPT2LMHeadModel
built from the preset's sizes (conf/model/*.yaml; n_positions raised to the length), random
token ids, and the step lmlab's CLM objective takes: forward with labels, backward, gradient
clipping at 1.0, AdamW. benchmarks/step_time.py shows lmlab's whole Lightning step is within
a few percent of this hand-written one. One untimed step first; the median of the timed steps
is reported. A combination whose first step takes more than `--limit` seconds (default 60)
is reported from that one step and not repeated, and longer sequences of that model are
skipped (the step time grows with the length).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SIZES = {  # conf/model/gpt_tiny.yaml, gpt_small.yaml (vocab: their tokenizer's), GPT-2 small
    "gpt_tiny": {"n_embd": 128, "n_layer": 2, "n_head": 2, "vocab_size": 8000},
    "gpt_small": {"n_embd": 256, "n_layer": 4, "n_head": 4, "vocab_size": 8000},
    "gpt2_124m": {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257},
}
LENGTHS = (128, 512, 1024)


def one(model: str, length: int, batch: int, steps: int, limit: float) -> dict:
    """Runs in the child process: the step times and peak RSS of one combination."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(**SIZES[model], n_positions=length, attn_implementation="sdpa")
    net = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(config.vocab_size, (batch, length))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = net(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
        if times[0] > limit:
            break
    timed = times[1:] or times
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "step_s": statistics.median(timed),
        "steps": len(timed),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one untimed)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a step may take")
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, length = args.child
        print(json.dumps(one(model, int(length), args.batch, args.steps, args.limit)))
        return
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(
        f"batch {args.batch}, {args.steps} timed steps, OMP_NUM_THREADS={threads}, fp32, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print("| model | parameters | seq | tokens/step | step s | tokens/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        slow = None  # a shorter sequence that took over the limit: longer ones are skipped
        for length in sorted(args.lengths):
            if slow:
                print(f"| {model} | | {length} | {args.batch * length} | skipped: {slow} "
                      f"took > {args.limit:.0f} s a step | | |", flush=True)  # fmt: skip
                continue
            child = [sys.executable, __file__, "--child", model, str(length)]
            child += ["--batch", str(args.batch), "--steps", str(args.steps)]
            child += ["--limit", str(args.limit)]
            out = subprocess.run(child, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.splitlines()[-1])
            tokens = args.batch * length
            note = ""
            if r["step_s"] > args.limit:
                note, slow = " (1 step: over the limit)", f"seq {length}"
            print(
                f"| {model} | {r['parameters'] / 1e6:.1f}M | {length} | {tokens} | "
                f"{r['step_s']:.2f}{note} | {tokens / r['step_s']:,.0f} | "
                f"{r['peak_rss_mib']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
