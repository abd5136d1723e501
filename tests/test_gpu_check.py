"""benchmarks/gpu_check.sh cannot rot without a GPU: its CPU smoke runs every row's code with
tiny models; and the perf/mfu it reports is the hand-computed model FLOP utilisation."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.experiment import compose
from lmlab.run import train

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_prints_every_row(tmp_path, lmlab_cache_dir):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.update(LMLAB_CACHE_DIR=str(lmlab_cache_dir), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| check |") :].splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table[2:]}
    assert list(rows) == [
        "gpt_small bf16",
        "gpt2 124M bf16",
        "gpt2 124M bf16 + compile",
        "ddp (NCCL)",
        "export (fsdp on GPU)",
        "finetune_sentiment bf16-mixed",
        "finetune_sentiment 32-true",
        "bf16 - fp32 accuracy",
    ]
    for name in ("gpt_small bf16", "gpt2 124M bf16"):
        attn, tokens, mfu, result, _ = (cell.strip() for cell in rows[name])
        assert attn == "sdpa"
        assert float(tokens.replace(",", "")) > 0
        assert 0 < float(mfu) < 1  # a peak of 1e12 FLOP/s is given on CPU
        assert result.startswith("val/loss ")
    assert "skipped" in rows["gpt2 124M bf16 + compile"][0]
    assert "skipped: 0 GPU(s)" in rows["ddp (NCCL)"][0]
    assert "AutoModelForCausalLM: loss " in rows["export (fsdp on GPU)"][3]
    for precision in ("bf16-mixed", "32-true"):
        accuracy = float(rows[f"finetune_sentiment {precision}"][3].split()[-1])
        assert 0 <= accuracy <= 1
    assert not list(tmp_path.glob("lmlab-gpu-check-*"))  # its runs are cleaned up


def test_logged_mfu_is_the_hand_computed_one(
    tmp_path, monkeypatch, lmlab_cache_dir, tiny_overrides
):
    """A real run of a tiny GPT-2 with a known peak: perf/mfu = (6·N + 12·L·d·T) · tokens/s
    / peak, N counted by hand from the architecture (every weight but the position table;
    the token embedding is the tied output layer), T = 32 (packed blocks, no padding)."""
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    peak = 2e9
    overrides = [
        "experiment=quickstart",
        *tiny_overrides("gpt2", steps=3),
        f"callbacks.throughput.peak_flops={peak}",
        "callbacks.best_checkpoint=null",
        "callbacks.last_checkpoint=null",
    ]
    run_dir = tmp_path / "run"
    train(compose(overrides, run_dir=str(run_dir)))
    config = json.loads((run_dir / "export" / "config.json").read_text())
    d, layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
    assert (d, layers) == (32, 2)
    # per block: qkv 3d²+3d, out d²+d, mlp 4d²+4d and 4d²+d, two layer norms 4d; final norm 2d
    n = layers * (12 * d * d + 13 * d) + 2 * d + vocab * d
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/mfu")]
    assert len(rows) == 3
    for row in rows:
        tokens_per_sec = float(row["perf/tokens_per_sec"])
        by_hand = (6 * n + 12 * layers * d * 32) * tokens_per_sec / peak
        assert float(row["perf/mfu"]) == pytest.approx(by_hand, rel=1e-6)


def test_trainer_compile_compiles_the_model_in_place(
    tmp_path, monkeypatch, lmlab_cache_dir, tiny_overrides
):
    """trainer.compile=true: torch.compile'd in place, so the weights keep their names (the
    checkpoints and the export read the same keys); off by default."""
    from lmlab.experiment import build_experiment

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    overrides = ["experiment=quickstart", *tiny_overrides("gpt2")]
    plain = build_experiment(compose(overrides, run_dir=str(tmp_path / "a"))).model
    compiled = build_experiment(
        compose([*overrides, "trainer.compile=true"], run_dir=str(tmp_path / "b"))
    ).model
    assert plain._compiled_call_impl is None
    assert compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())
