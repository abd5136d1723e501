"""The GPU checks of issue 13 (item 4), run by benchmarks/gpu_check.sh: one table, each row
one lmlab run (through lmlab's Python API: compose + train, the path lmlab-train takes).

  python benchmarks/gpu_check.py               # on a GPU machine: ~8 minutes on one H100/H200
  python benchmarks/gpu_check.py --cpu-smoke   # no GPU: the same rows, tiny models, 2 steps

Rows:
- `gpt_small`, `gpt2 124M` and `gpt2 124M + compile`: experiment=pretrain_gpt on Python's own
  help pages (data=pydoc: no download), bf16-mixed, SDPA attention (transformers' default for
  GPT-2; the `attn` column says what the model used), tokens/s and MFU as the Throughput
  callback logs them (median of the logged values after the first), against the device's
  dense bf16 peak (Lightning's table; `--peak-flops` to give one).
- `ddp`: gpt_small on every GPU (trainer=ddp, NCCL), when there is more than one.
- `fsdp export`: gpt_small with trainer=fsdp, then its export loaded by
  AutoModelForCausalLM and scored (loss on the validation text); on CPU the export of the
  gpt_small row is loaded instead (FSDP is GPU-only in lmlab).
- `finetune_sentiment`: MiniLM on SST-2 (LMLAB_DATA_DIR) in bf16-mixed and in 32-true:
  validation accuracy of each.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

GPT2_124M = ["++model.config.n_layer=12", "++model.config.n_head=12", "++model.config.n_embd=768"]
GPT2_124M += ["++model.config.n_positions=1024", "model.tokenizer.vocab_size=50257"]
TINY_GPT = ["++model.config.n_layer=2", "++model.config.n_head=2", "++model.config.n_embd=32"]
TINY_GPT += ["model.tokenizer.vocab_size=300"]
TINY_BERT = [
    "model=bert_tiny",
    "++model.config.hidden_size=32",
    "++model.config.num_hidden_layers=2",
]
TINY_BERT += ["++model.config.num_attention_heads=2", "++model.config.intermediate_size=64"]
TINY_BERT += ["model.tokenizer.vocab_size=300"]


class Checks:
    def __init__(self, smoke: bool, out: Path, peak_flops: float | None):
        import torch

        self.smoke, self.out = smoke, out
        self.gpus = 0 if smoke else torch.cuda.device_count()
        self.peak = peak_flops or (1e12 if smoke else None)  # CPU: any peak shows the path
        self.rows: list[list[str]] = []
        self.runs = 0
        if smoke:  # a tiny corpus and a tiny labelled csv instead of pydoc and SST-2
            words = ["river", "stone", "light", "north", "garden", "paper", "window", "silver"]
            lines = [
                f"The {words[i % 8]} and the {words[(i * 3) % 8]} met at {i}." for i in range(200)
            ]
            (out / "corpus.txt").write_text("\n\n".join(lines))
            rows = [
                f"the {words[i % 8]} was good,positive"
                if i % 2
                else f"a bad {words[i % 8]},negative"
                for i in range(40)
            ]
            (out / "sentiment.csv").write_text("text,label\n" + "\n".join(rows) + "\n")

    def run(self, overrides: list[str]) -> tuple[dict, list[dict], float]:
        """One lmlab run: (final metrics, metrics.csv rows, seconds)."""
        from lmlab.experiment import compose
        from lmlab.run import train

        self.runs += 1
        run_dir = self.out / f"run{self.runs}"
        common = ["plots=false", "trainer.validate_at_start=false", "trainer.log_every_n_steps=10"]
        if self.peak:
            common.append(f"callbacks.throughput.peak_flops={self.peak}")
        if self.smoke:
            common += ["trainer.max_steps=2", "trainer.log_every_n_steps=1"]
            common += ["trainer.limit_val_batches=2", "trainer.val_check_interval=2"]
        start = time.perf_counter()
        metrics = train(compose([*overrides, *common], run_dir=str(run_dir)))
        return metrics, read_csv(run_dir / "metrics.csv"), time.perf_counter() - start

    def gpt_overrides(self, sizes: list[str], length: int = 1024) -> list[str]:
        if self.smoke:
            data = ["data=files", f"data.train={self.out / 'corpus.txt'}", "data.max_length=32"]
            return ["experiment=pretrain_gpt", *TINY_GPT, *data, "data.batch_size=4",
                    "trainer.precision=bf16-mixed"]  # fmt: skip
        return ["experiment=pretrain_gpt", *sizes, "data=pydoc", "trainer=gpu",
                f"data.max_length={length}", "data.batch_size=16", "trainer.max_steps=150",
                "trainer.val_check_interval=150", "trainer.limit_val_batches=4"]  # fmt: skip

    def speed(self, name: str, overrides: list[str], compile_: bool = False) -> dict:
        if compile_ and self.smoke:
            self.rows.append([name, "skipped: no GPU (inductor on CPU takes minutes)"] + [""] * 4)
            return {}
        extra = ["trainer.compile=true"] if compile_ else []
        metrics, rows, seconds = self.run([*overrides, *extra])
        perf = [r for r in rows if r.get("perf/tokens_per_sec")][1:] or [
            r for r in rows if r.get("perf/tokens_per_sec")
        ]
        tokens = statistics.median(float(r["perf/tokens_per_sec"]) for r in perf)
        mfus = [float(r["perf/mfu"]) for r in perf if r.get("perf/mfu")]
        mfu = f"{statistics.median(mfus):.3g}" if mfus else "no peak known"
        loss = f"val/loss {metrics['val/loss']:.3f}"
        self.rows.append([name, attention(), f"{tokens:,.0f}", mfu, loss, f"{seconds:.0f}"])
        return metrics

    def ddp(self) -> None:
        if self.gpus < 2:
            self.rows.append(["ddp (NCCL)", f"skipped: {self.gpus} GPU(s)"] + [""] * 4)
            return
        import subprocess

        args = [
            *self.gpt_overrides(["model=gpt_small"], 512),
            "trainer=ddp",
            "trainer.accelerator=gpu",
        ]
        args += [f"trainer.devices={self.gpus}", "trainer.precision=bf16-mixed", "plots=false"]
        env = dict(os.environ, LMLAB_OUTPUT_DIR=str(self.out / "ddp"))
        start = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "lmlab-train"), *args], env=env,
                              capture_output=True, text=True)  # fmt: skip
        rows = [r for f in (self.out / "ddp").rglob("metrics.csv") for r in read_csv(f)]
        tokens = [float(r["perf/tokens_per_sec"]) for r in rows if r.get("perf/tokens_per_sec")]
        result = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-200:]}"
        rate = f"{statistics.median(tokens[1:] or tokens):,.0f}" if tokens else "?"
        name = f"ddp (NCCL, {self.gpus} GPUs)"
        self.rows.append(
            [name, attention(), rate, "", result, f"{time.perf_counter() - start:.0f}"]
        )

    def fsdp_export(self, gpt_small_run: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.smoke:
            export = self.out / f"run{gpt_small_run}" / "export"
            name = "export (fsdp on GPU)"
        else:
            fsdp = ["trainer=fsdp", "trainer.devices=1", "trainer.max_steps=50"]
            self.run([*self.gpt_overrides(["model=gpt_small"], 512), *fsdp])
            export, name = self.out / f"run{self.runs}" / "export", "fsdp export"
        model = AutoModelForCausalLM.from_pretrained(export)
        tokenizer = AutoTokenizer.from_pretrained(export)
        ids = tokenizer("The river and the stone met.", return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        result = f"AutoModelForCausalLM: loss {loss:.2f}" if loss == loss else "loss is NaN"
        self.rows.append([name, type(model).__name__, "", "", result, ""])

    def sentiment(self) -> None:
        if self.smoke:  # a tiny encoder from scratch: MiniLM's loading is the GPU run's
            data = ["data=files", f"data.train={self.out / 'sentiment.csv'}", *TINY_BERT]
            data += ["data.val_fraction=0.2", "data.batch_size=4", "data.max_length=32"]
        else:
            data = ["trainer=gpu", "trainer.max_steps=600", "trainer.val_check_interval=600"]
        accuracy = {}
        for precision in ("bf16-mixed", "32-true"):
            over = ["experiment=finetune_sentiment", *data, f"trainer.precision={precision}"]
            metrics, _, seconds = self.run([*over, "export=false", "load_best=false"])
            accuracy[precision] = metrics["val/accuracy"]
            result = f"val/accuracy {metrics['val/accuracy']:.4f}"
            name = f"finetune_sentiment {precision}"
            self.rows.append([name, "", "", "", result, f"{seconds:.0f}"])
        gap = accuracy["bf16-mixed"] - accuracy["32-true"]
        self.rows.append(["bf16 - fp32 accuracy", "", "", "", f"{gap:+.4f}", ""])

    def table(self) -> str:
        head = ["check", "attn / model", "tokens/s", "MFU", "result", "s"]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in self.rows)])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def attention() -> str:
    """The attention kernel transformers picks for GPT-2 here (the runs leave it as it is)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=8, n_head=1, vocab_size=8)
    return AutoModelForCausalLM.from_config(config).config._attn_implementation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models, 2 steps, no GPU")
    parser.add_argument("--peak-flops", type=float, help="dense bf16 FLOP/s of one device")
    args = parser.parse_args()
    import torch

    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = "CPU smoke (tiny models, 2 steps)" if smoke else torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="lmlab-gpu-check-") as tmp:
        os.environ.setdefault("LMLAB_CACHE_DIR", str(Path(tmp) / "cache"))
        checks = Checks(smoke, Path(tmp), args.peak_flops)
        checks.speed("gpt_small bf16", checks.gpt_overrides(["model=gpt_small"], 512))
        gpt_small_run = checks.runs
        checks.speed("gpt2 124M bf16", checks.gpt_overrides(GPT2_124M))
        checks.speed("gpt2 124M bf16 + compile", checks.gpt_overrides(GPT2_124M), compile_=True)
        checks.ddp()
        checks.fsdp_export(gpt_small_run)
        checks.sentiment()
    print(f"device: {device}; peak {checks.peak or 'from Lightning'} FLOP/s")
    print(checks.table())


if __name__ == "__main__":
    main()
