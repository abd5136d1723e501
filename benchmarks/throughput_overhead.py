"""What the throughput callback (lmlab.callbacks.Throughput) costs per training step.

Two Lightning fits of the same GPT-2 (built from a fixed config and seed) on the same pre-made
padded batches alternate, round after round: one with the callback, one without (which of the
two goes first alternates too, so that load from other processes hits both alike). A fit's step
time is its wall time from the start of step --warmup + 1 to the end of training, over the steps
in between, with the device synchronised only at those two points (the callback itself syncs
only when it logs). Both modules log train/loss every step, as lmlab's does. Prints the median
ratio with / without (target: <= 1.01) and what the callback logged last (tokens/s, samples/s,
mfu where the peak FLOP/s is known).

Imports only torch, transformers, Lightning and lmlab.callbacks (no lmlab.config, no Hydra),
so it also runs where only those are installed (PYTHONPATH=src).

    python benchmarks/throughput_overhead.py                  # CPU, small model, ~2 min
    python benchmarks/throughput_overhead.py --log-every 1    # the worst case: a log per step
    python benchmarks/throughput_overhead.py --accelerator gpu --precision bf16-mixed \\
        --hidden 768 --layers 12 --seq 512 --batch 16 --steps 60 --warmup 10
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import tempfile
import time

import _common as c
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lmlab.callbacks import Throughput


class CausalLM(pl.LightningModule):
    """Logs train/loss every step as lmlab's TaskModule does, so that both sides pay for
    Lightning's logging (and the device sync it does on logging steps) and the difference is
    the callback's own cost."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class WallTimer(pl.Callback):
    """Wall time from the start of step `warmup` + 1 to the end of training."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = 0.0

    def _sync(self, pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = self._sync(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.end = self._sync(pl_module)


def gpt2(args):
    import transformers

    config = transformers.AutoConfig.for_model(
        "gpt2",
        vocab_size=args.vocab,
        n_embd=args.hidden,
        n_layer=args.layers,
        n_head=max(args.hidden // 64, 2),
        n_positions=args.seq,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(args.seed)
    return transformers.AutoModelForCausalLM.from_config(config).train()


def padded_batches(args) -> list[dict]:
    """Sequences of random real lengths between seq/2 and seq, right-padded (labels -100)."""
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(1, args.vocab, (args.batch, args.seq), generator=g)
        lengths = torch.randint(args.seq // 2, args.seq + 1, (args.batch, 1), generator=g)
        mask = (torch.arange(args.seq) < lengths).long()
        batches.append(
            {
                "input_ids": ids * mask,
                "attention_mask": mask,
                "labels": ids.masked_fill(mask == 0, -100),
            }
        )
    return batches


def fit(model, batches, args, with_callback: bool) -> tuple[float, dict]:
    """(seconds per timed step, the last row the callback logged)."""
    timer = WallTimer(args.warmup)
    callbacks = [timer] + ([Throughput(peak_flops=args.peak_flops)] if with_callback else [])
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=args.accelerator,
            devices=1,
            precision=args.precision,
            max_steps=len(batches),
            log_every_n_steps=args.log_every,
            logger=pl.loggers.CSVLogger(root, name="", version=""),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
            default_root_dir=root,
        )
        loader = DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
        trainer.fit(CausalLM(copy.deepcopy(model)), train_dataloaders=loader)
        metrics_file = os.path.join(root, "metrics.csv")  # none when nothing was logged
        rows = []
        if os.path.isfile(metrics_file):
            with open(metrics_file, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("perf/tokens_per_sec")]
    return (timer.end - timer.start) / (len(batches) - args.warmup), (rows[-1] if rows else {})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--steps", type=int, default=30, help="training steps per fit")
    p.add_argument("--warmup", type=int, default=5, help="first steps of each fit, not timed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--log-every", type=int, default=10, help="trainer log_every_n_steps")
    p.add_argument("--peak-flops", type=float, default=None, help="the callback's peak_flops")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    c.add_model_args(p)
    args = p.parse_args(argv)
    if args.steps < args.warmup + 3:
        p.error("--steps must exceed --warmup by at least 3")

    c.quiet(args.threads)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, {device}, {args.precision}, "
        f"gpt2 hidden {args.hidden} x {args.layers} layers, batch {args.batch} x seq {args.seq}, "
        f"log every {args.log_every}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    model, batches = gpt2(args), padded_batches(args)
    ratios, with_times, without_times, logged = [], [], [], {}
    for r in range(args.rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        times = {}
        for with_callback in order:
            times[with_callback], row = fit(model, batches, args, with_callback)
            logged = row or logged
        ratios.append(times[True] / times[False])
        with_times.append(times[True])
        without_times.append(times[False])
        print(
            f"round {r}: with {times[True] * 1e3:.1f} ms/step, without "
            f"{times[False] * 1e3:.1f} ms/step, ratio {ratios[-1]:.4f}",
            flush=True,
        )
    ratio = statistics.median(ratios)
    print(
        f"RESULT with {statistics.median(with_times) * 1e3:.1f} ms/step, without "
        f"{statistics.median(without_times) * 1e3:.1f} ms/step, with/without {ratio:.4f} "
        f"(rounds {', '.join(f'{x:.4f}' for x in ratios)}); target <= 1.01: "
        f"{'OK' if ratio <= 1.01 else 'ABOVE TARGET'}"
    )
    perf = {k: float(v) for k, v in logged.items() if k.startswith("perf/") and v}
    print("last logged: " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(perf.items())))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
