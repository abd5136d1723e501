"""Sparse MLM prediction (lmlab's `MaskedLM.step`: vocabulary projection only at the masked
positions) against the full-vocabulary head (`model(**batch).loss` of the same
`BertForMaskedLM`), one training step each: forward + backward + AdamW step + zero_grad.

Both sides get a copy of the same model (fixed config and seed) and the same pre-masked
batches (15% of the positions, 80/10/10, fixed seed). Steps alternate between the two sides
(which goes first alternates too), so load from other processes hits both alike; the first
--warmup steps of a round are dropped, each round is summarised by its medians, and the
speed-up is the median over rounds of full / sparse (target >= 1.3x). Before timing, checks
on one batch (dropout off) that both losses, and the gradients they give, agree.

    python benchmarks/sparse_mlm.py                       # vocab 30522 and 8000
    python benchmarks/sparse_mlm.py --vocab 30522 --steps 8 --rounds 5 --hidden 256
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import _common as c
import torch


def full_loss(model, batch):
    return model(**batch).loss


def make_sparse_loss(objective):
    def sparse_loss(model, batch):
        return objective.step(model, batch)["loss"][0]

    return sparse_loss


class Side:
    def __init__(self, model, loss_fn, lr: float):
        self.model = model.train()
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        self.times: list[float] = []

    def step(self, batch) -> None:
        t0 = time.perf_counter()
        loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.times.append(time.perf_counter() - t0)


def check_agreement(model, sparse, batch) -> tuple[float, float, float]:
    """(sparse loss, |loss difference|, max |gradient difference|) on one batch, dropout off."""
    results = []
    for loss_fn in (sparse, full_loss):
        m = copy.deepcopy(model).eval()
        loss = loss_fn(m, batch)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in m.parameters()])))
    (ls, gs), (lf, gf) = results
    dloss, dgrad = float((ls - lf).abs()), float((gs - gf).abs().max())
    torch.testing.assert_close(ls, lf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gs, gf, rtol=1e-4, atol=1e-6)
    return float(ls), dloss, dgrad


def bench(vocab: int, args) -> float:
    from lmlab.objectives.mlm import MaskedLM

    objective = MaskedLM(
        c.objective_cfg("mlm", lr=5e-4), c.StandInTokenizer(vocab), args.seq, args.seed
    )
    objective.cfg.mlm_probability = args.probability
    model = c.bert_mlm(vocab, args.hidden, args.layers, args.seed)
    batches = c.mlm_batches(objective, args.steps, args.batch, args.seq, vocab, args.seed)
    masked = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    sparse = make_sparse_loss(objective)
    loss, dloss, dgrad = check_agreement(model, sparse, batches[0])
    print(
        f"\n== vocab {vocab}: bert hidden {args.hidden}, {args.layers} layers, seq {args.seq}, "
        f"batch {args.batch}, {masked:.0f} of {args.batch * args.seq} positions masked "
        f"({args.probability:.0%}); {args.steps} steps/round ({args.warmup} warm-up dropped), "
        f"{args.rounds} rounds\nlosses agree: sparse {loss:.6f}, |sparse - full| {dloss:.1e}, "
        f"max |grad difference| {dgrad:.1e}",
        flush=True,
    )
    rounds = []
    for r in range(args.rounds):
        sides = {
            "sparse": Side(copy.deepcopy(model), sparse, 5e-4),
            "full": Side(copy.deepcopy(model), full_loss, 5e-4),
        }
        for i, batch in enumerate(batches):
            order = ("sparse", "full") if (i + r) % 2 == 0 else ("full", "sparse")
            for name in order:
                sides[name].step(batch)
        times = {name: c.median(s.times[args.warmup :]) for name, s in sides.items()}
        rounds.append(times)
        print(
            f"round {r}: sparse {times['sparse'] * 1e3:8.1f} ms/step  "
            f"full {times['full'] * 1e3:8.1f} ms/step  "
            f"speed-up {times['full'] / times['sparse']:.2f}x",
            flush=True,
        )
    speedup, pooled = c.summarize(rounds, "full", "sparse")
    sp = c.median([r["sparse"] for r in rounds]) * 1e3
    fu = c.median([r["full"] for r in rounds]) * 1e3
    verdict = "OK" if speedup >= 1.3 else "BELOW TARGET"
    print(
        f"RESULT vocab {vocab}: sparse {sp:.1f} ms/step, full {fu:.1f} ms/step, "
        f"speed-up {speedup:.2f}x (pooled {pooled:.2f}x); target >= 1.3x: {verdict}",
        flush=True,
    )
    return speedup


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[30522, 8000])
    p.add_argument("--steps", type=int, default=6, help="steps per side per round")
    p.add_argument("--warmup", type=int, default=1, help="first steps of each round, not timed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (default 1: stable on a shared machine)",
    )
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--probability", type=float, default=0.15, help="masking probability")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < args.warmup + 2:
        p.error("--steps must exceed --warmup by at least 2")

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}"
    )
    for vocab in args.vocab:
        bench(vocab, args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
