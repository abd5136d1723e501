"""lmlab's training step against a hand-written PyTorch loop, in one process.

Both sides train a copy of the same Hugging Face model (built from a fixed config and seed) on
the same pre-made batches with the same AdamW param groups, clipping (1.0) and linear warmup
schedule. lmlab side: `TaskModule(model, objective, config)` fitted by a real
`pytorch_lightning.Trainer` (the settings of conf/trainer/default.yaml). Hand-written side:
fetch -> forward -> loss -> zero_grad -> backward -> clip_grad_norm_ -> step -> scheduler step
(zero_grad where Lightning's closure has it; see HandLoop.step).

lmlab's step is timed from one on_train_batch_start to the next (everything Lightning does per
batch, fetching and logging included); "inner" is on_train_batch_start to on_train_batch_end.
The hand-written step is timed from its fetch to its scheduler step. The first --warmup steps
of every run are dropped and each run is summarised by its median. Two ways to interleave:

  --interleave step (default): one hand-written step runs right after each lmlab step (from a
      callback, with its own RNG stream, its time taken out of lmlab's), so load from other
      processes on the machine hits both sides alike; --rounds repeats the whole thing.
  --interleave run: whole runs alternate, lmlab first in even rounds, hand-written first in
      odd ones.

Prints lmlab / hand-written (median over rounds; target <= 1.05), and the largest difference
between the two sides' per-step losses (0 when both compute the same thing).

    python benchmarks/step_time.py                 # gpt2 (CLM) and bert (sparse MLM)
    python benchmarks/step_time.py --case clm --steps 60 --rounds 5 --interleave run
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import _common as c
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from transformers import get_scheduler


def identity(x):
    return x


def param_groups(model, weight_decay: float) -> list[dict]:
    """TaskModule.configure_optimizers' groups: no weight decay on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


class HandLoop:
    """The hand-written loop, one step at a time, with its own RNG stream (dropout) so that
    interleaving it with lmlab changes what neither side computes."""

    def __init__(self, model, loss_fn, batches, optim: dict, seed: int):
        self.model = model.train()
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.AdamW(
            param_groups(model, optim["weight_decay"]),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
        )
        self.total = len(batches)
        self.scheduler = get_scheduler(
            optim["scheduler"],
            self.optimizer,
            num_warmup_steps=int(optim["warmup_ratio"] * self.total),
            num_training_steps=self.total,
        )
        with torch.random.fork_rng(devices=[]):  # the stream lmlab's run starts with
            torch.manual_seed(seed)
            self.batches = iter(DataLoader(batches, batch_size=None, collate_fn=identity))
            self.rng = torch.get_rng_state()
        self.times: list[float] = []  # fetch + step, per batch
        self.losses: list[torch.Tensor] = []

    def step(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            t0 = time.perf_counter()
            batch = next(self.batches)
            loss = self.loss_fn(self.model, batch)
            # zero_grad (set_to_none) where Lightning's closure has it, between the forward
            # and the backward: the same computation as zeroing after the step, but the
            # gradients' memory then lives as long on both sides. Zeroing after the step frees
            # it just before lmlab's step, which reuses it: lmlab then measured ~4% faster
            # than hand-written, an artifact of the interleaving.
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.times.append(time.perf_counter() - t0)
            self.rng = torch.get_rng_state()
        self.losses.append(loss.detach())

    def run(self) -> dict:
        for _ in range(self.total):
            self.step()
        return {"cycle": self.times, "inner": self.times, "losses": self.losses}


class StepTimer(pl.Callback):
    """Per-step times of the Lightning loop; with `hand`, runs one hand-written step after each
    lmlab step and takes its time out of lmlab's start-to-next-start span."""

    def __init__(self, hand: HandLoop | None = None):
        self.hand = hand
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.inserted: list[float] = []
        self.losses: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        t0 = time.perf_counter()
        self.ends.append(t0)
        self.losses.append(outputs["loss"].detach())
        if self.hand is not None:
            self.hand.step()
        self.inserted.append(time.perf_counter() - t0)

    def cycle(self) -> list[float]:
        spans = [b - a for a, b in zip(self.starts, self.starts[1:])]
        return [s - h for s, h in zip(spans, self.inserted)] if self.hand else spans


def fit_lmlab(model, objective, batches, optim: dict, seed: int, hand: HandLoop | None = None):
    from lmlab.module import TaskModule

    module = TaskModule(model, objective, {"objective": optim})
    timer = StepTimer(hand)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            max_steps=len(batches),
            gradient_clip_val=1.0,
            log_every_n_steps=10,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=root,
        )
        torch.manual_seed(seed)
        loader = DataLoader(batches, batch_size=None, collate_fn=identity)
        trainer.fit(module, train_dataloaders=loader)
    return {
        "cycle": timer.cycle(),
        "inner": [e - s for s, e in zip(timer.starts, timer.ends)],
        "losses": timer.losses,
    }


def clm_loss(model, batch):
    return model(**batch).loss


def sparse_mlm_loss(model, batch):
    """Sparse MLM written out for BertForMaskedLM: the encoder, then the head only at the
    masked positions."""
    out = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    chosen = batch["labels"] != -100
    logits = model.cls.predictions(out.last_hidden_state[chosen])
    return torch.nn.functional.cross_entropy(logits, batch["labels"][chosen])


def make_case(name: str, args):
    from lmlab.objectives.clm import CausalLM
    from lmlab.objectives.mlm import MaskedLM

    vocab = args.vocab
    tok = c.StandInTokenizer(vocab)
    if name == "clm":
        cfg = c.objective_cfg("clm", lr=2e-3)
        objective = CausalLM(cfg, tok, args.seq, args.seed)
        model = c.gpt2(vocab, args.hidden, args.layers, args.seed)
        batches = c.clm_batches(args.steps, args.batch, args.seq, vocab, args.seed)
        loss_fn = clm_loss
        label = f"gpt2 CLM, n_embd {args.hidden}, {args.layers} layers"
    else:
        cfg = c.objective_cfg("mlm", lr=5e-4)
        objective = MaskedLM(cfg, tok, args.seq, args.seed)
        model = c.bert_mlm(vocab, args.hidden, args.layers, args.seed)
        batches = c.mlm_batches(objective, args.steps, args.batch, args.seq, vocab, args.seed)
        loss_fn = sparse_mlm_loss
        label = f"bert sparse MLM, hidden {args.hidden}, {args.layers} layers"
    label += f", vocab {vocab}, seq {args.seq}, batch {args.batch}"
    return label, model, objective, batches, loss_fn, OmegaConf.to_container(cfg)


def one_round(r: int, model, objective, batches, loss_fn, optim, args) -> dict:
    def hand():
        return HandLoop(copy.deepcopy(model), loss_fn, batches, optim, args.seed)

    if args.interleave == "step":
        loop = hand()
        runs = {
            "lmlab": fit_lmlab(copy.deepcopy(model), objective, batches, optim, args.seed, loop)
        }
        runs["hand"] = {"cycle": loop.times, "inner": loop.times, "losses": loop.losses}
        order = "step by step"
    else:
        sides = ("lmlab", "hand") if r % 2 == 0 else ("hand", "lmlab")
        runs = {}
        for side in sides:
            if side == "lmlab":
                runs[side] = fit_lmlab(copy.deepcopy(model), objective, batches, optim, args.seed)
            else:
                runs[side] = hand().run()
        order = f"{sides[0]} first"
    w = args.warmup
    out = {
        f"{side}_{k}": c.median(run[k][w:])
        for side, run in runs.items()
        for k in ("cycle", "inner")
    }
    out["dloss"] = max(
        abs(float(a) - float(b)) for a, b in zip(runs["lmlab"]["losses"], runs["hand"]["losses"])
    )
    print(
        f"round {r} ({order}): lmlab {out['lmlab_cycle'] * 1e3:7.1f} ms/step"
        f"  hand-written {out['hand_cycle'] * 1e3:7.1f} ms/step"
        f"  ratio {out['lmlab_cycle'] / out['hand_cycle']:.3f}"
        f" | inner ratio {out['lmlab_inner'] / out['hand_inner']:.3f}"
        f" | max |loss diff| {out['dloss']:.1e}",
        flush=True,
    )
    return out


def bench(name: str, args) -> float:
    label, model, objective, batches, loss_fn, optim = make_case(name, args)
    print(
        f"\n== {name}: {label}; {args.steps} steps/run ({args.warmup} warm-up dropped), "
        f"{args.rounds} rounds, interleave {args.interleave}",
        flush=True,
    )
    rounds = [
        one_round(r, model, objective, batches, loss_fn, optim, args) for r in range(args.rounds)
    ]
    ratio, pooled = c.summarize(rounds, "lmlab_cycle", "hand_cycle")
    inner, _ = c.summarize(rounds, "lmlab_inner", "hand_inner")
    lm = c.median([r["lmlab_cycle"] for r in rounds]) * 1e3
    hd = c.median([r["hand_cycle"] for r in rounds]) * 1e3
    verdict = "OK" if ratio <= 1.05 else "ABOVE TARGET"
    print(
        f"RESULT {name}: lmlab {lm:.1f} ms/step, hand-written {hd:.1f} ms/step, "
        f"lmlab/hand-written {ratio:.3f} (pooled {pooled:.3f}, inner {inner:.3f}); "
        f"target <= 1.05: {verdict}",
        flush=True,
    )
    return ratio


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["clm", "mlm", "all"], default="all")
    p.add_argument("--steps", type=int, default=20, help="training steps per run")
    p.add_argument("--warmup", type=int, default=4, help="first steps of each run, not timed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interleave", choices=["step", "run"], default="step")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (default 1: stable on a shared machine)",
    )
    c.add_model_args(p)
    args = p.parse_args(argv)
    if args.steps < args.warmup + 3:
        p.error("--steps must exceed --warmup by at least 3")

    c.quiet(args.threads)
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for name in ("clm", "mlm") if args.case == "all" else (args.case,):
        bench(name, args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
