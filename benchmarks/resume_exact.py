"""Is a resumed run the uninterrupted run, bit for bit? (CPU)

python benchmarks/resume_exact.py            # every scenario (about 20 tiny runs)
python benchmarks/resume_exact.py --quick    # a few

Each scenario trains a tiny model (2 layers, width 32) on a generated corpus twice: once
uninterrupted, once killed at a chosen point and re-run with the same command (the re-run
resumes the run dir's last.ckpt). It compares the final parameters (a SHA-256 of the last
checkpoint's weights), every logged train/val loss row (step, value) and the final
validation (metrics.json). Epochs are 6 batches (trainer.limit_train_batches=6), a last
checkpoint every 3 steps, validation every 4. Objectives: CLM, MLM with whole-word masking,
NSP, sequence classification, and classification with early stopping whose patience (min
delta 1.0) runs out at step 8 only if its state from before the kill comes back.

Kill points (the "kill" is in-process, KillAt raising, except `kill -9`, a subprocess
killed from outside with SIGKILL while it waits at the kill point):
  mid-epoch        after batch 10 (epoch 2, batch 5): resumes from step 9, mid-epoch
  epoch-boundary   after batch 7: resumes from step 6, the end of epoch 1
  validation       during the validation after step 4: resumes from step 3
  mid-accumulation accumulate_grad_batches=4, saved and stopped after batch 6 (one batch
                   into an accumulation, as a signal handler saves): the gradients come back
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["the", "cat", "dog", "river", "city", "people", "walk", "read", "book", "tree", "sing"]
ARCH = {
    "bert": ["++model.config.hidden_size=32", "++model.config.num_hidden_layers=2",
             "++model.config.num_attention_heads=2", "++model.config.intermediate_size=64"],
    "gpt2": ["++model.config.n_embd=32", "++model.config.n_layer=2", "++model.config.n_head=2"],
}  # fmt: skip
KILL_AT = "lmlab.checkpointing.KillAt"
OBJECTIVES = {  # name -> experiment overrides (data added by `data_overrides`)
    "clm": ["experiment=pretrain_gpt", *ARCH["gpt2"], "objective.sample_max_new_tokens=4"],
    "mlm-wwm": ["experiment=pretrain_mlm", *ARCH["bert"], "objective.whole_word_mask=true"],
    "nsp": ["experiment=pretrain_nsp", *ARCH["bert"]],
    "classification": ["experiment=finetune_sentiment", "model=bert_tiny", *ARCH["bert"]],
    # early stopping whose patience runs out at step 8 only if its state (best score) is restored
    "classification+es": [
        "experiment=finetune_sentiment", "model=bert_tiny", *ARCH["bert"], "callbacks=finetune",
        "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1.0",
    ],
}  # fmt: skip
KILLS = {  # name -> (KillAt overrides, extra run overrides)
    "mid-epoch": (["+callbacks.kill.batch=10"], []),
    "epoch-boundary": (["+callbacks.kill.batch=7"], []),
    "validation": (["+callbacks.kill.batch=3", "+callbacks.kill.validation=true"], []),
    # by epochs: Lightning builds the training loader before restoring the checkpoint then
    "mid-epoch, max_epochs": (["+callbacks.kill.batch=10"], ["trainer.max_epochs=2"]),
    "mid-accumulation": (
        ["+callbacks.kill.batch=6", "+callbacks.kill.save=true"],
        ["trainer.accumulate_grad_batches=4", "trainer.max_steps=6"],
    ),
}


def write_data(folder: Path) -> dict[str, list[str]]:
    """A corpus of 80 three-sentence documents and a labelled csv; data overrides by objective."""
    rng = random.Random(0)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))).capitalize() + "."

    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(sentence() for _ in range(3)) for _ in range(80)))
    rows = ["text,label"] + [
        f"{sentence()} good,positive" if i % 2 else f"{sentence()} bad,negative" for i in range(80)
    ]
    (folder / "sentiment.csv").write_text("\n".join(rows) + "\n")
    text = ["data=files", f"data.train={corpus}"]
    labelled = ["data=files", f"data.train={folder / 'sentiment.csv'}", "data.val_fraction=0.2"]
    return {"text": text, "labelled": labelled}


def overrides(objective: str, workers: int, data: dict) -> list[str]:
    source = data["labelled"] if objective.startswith("classification") else data["text"]
    return [
        *OBJECTIVES[objective],
        *source,
        "model.tokenizer.vocab_size=300",
        "data.max_length=32",
        "data.batch_size=4",
        f"data.num_workers={workers}",
        "trainer.max_epochs=null",
        "trainer.max_steps=12",
        "trainer.max_time=null",
        "trainer.limit_train_batches=6",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "export=false",
        "load_best=false",
    ]


def train_quietly(args: list[str], run_dir: Path):
    from lmlab.experiment import compose
    from lmlab.run import train

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return train(compose(args, run_dir=str(run_dir)))


def outcome(run_dir: Path) -> dict:
    """The final weights' hash and the logged (step, train/loss) and (step, val/loss) rows."""
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(ckpt["state_dict"].items()):
        digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [
        (key, int(r["step"]), r[key]) for r in rows for key in ("train/loss", "val/loss") if r[key]
    ]
    final = run_dir / "metrics.json"  # the validation of the final weights (a finished run)
    final = json.loads(final.read_text()) if final.is_file() else {}
    final = {k: v for k, v in final.items() if k.startswith("val/") or k == "global_step"}
    return {
        "hash": digest.hexdigest(),
        "rows": losses + sorted(final.items()),
        "step": ckpt["global_step"],
    }


def killed_in_process(args: list[str], kill: list[str], run_dir: Path) -> None:
    from lmlab.checkpointing import SimulatedKill

    try:
        train_quietly([*args, f"+callbacks.kill._target_={KILL_AT}", *kill], run_dir)
    except SimulatedKill:
        return
    raise AssertionError("the run was not killed")


def killed_by_sigkill(args: list[str], kill: list[str], run_dir: Path) -> None:
    """lmlab-train in a subprocess, stopped at the kill point, killed there with SIGKILL."""
    command = [sys.executable, "-m", "lmlab.cli.train", *args, f"paths.run_dir={run_dir}"]
    command += [f"+callbacks.kill._target_={KILL_AT}", *kill]
    command += ["+callbacks.kill.how=wait"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker, deadline = run_dir / "killme", time.monotonic() + 300
    while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not marker.is_file():
        process.kill()
        raise AssertionError(f"the subprocess never reached the kill point: {command}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    marker.unlink()


def scenario(objective, kill, workers, data, root, references, real_kill=False) -> dict:
    """Trains (or reuses) the uninterrupted run and the killed + re-run one; compares them."""
    kill_args, extra = KILLS[kill]
    args = overrides(objective, workers, data) + extra
    key = (objective, workers, tuple(extra))
    if key not in references:
        reference_dir = root / f"ref-{objective}-{workers}-{len(references)}"
        train_quietly(args, reference_dir)
        references[key] = outcome(reference_dir)
    run_dir = root / f"{objective}-{kill}-{workers}-{'sigkill' if real_kill else 'raise'}"
    (killed_by_sigkill if real_kill else killed_in_process)(args, kill_args, run_dir)
    killed_at = outcome(run_dir)["step"]  # the step the re-run resumes from
    train_quietly(args, run_dir)  # the same command again: resumes from last.ckpt
    resumed, reference = outcome(run_dir), references[key]
    return {
        "objective": objective,
        "kill": ("kill -9 " if real_kill else "") + kill,
        "workers": workers,
        "resumed_from": killed_at,
        "same_weights": resumed["hash"] == reference["hash"],
        "same_losses": resumed["rows"] == reference["rows"],
        "rows": len(reference["rows"]),
        "hash": resumed["hash"][:12],
    }


def plan(quick: bool) -> list[tuple[str, str, int, bool]]:
    if quick:
        return [
            ("clm", "mid-epoch", 0, False),
            ("mlm-wwm", "mid-accumulation", 0, False),
            ("nsp", "validation", 2, False),
            ("classification", "epoch-boundary", 0, False),
        ]
    objectives = [o for o in OBJECTIVES if o != "classification+es"]  # it stops at step 8
    every = [(o, k, 0, False) for o in objectives for k in KILLS]
    every.append(("classification+es", "epoch-boundary", 0, False))
    workers = [(o, "mid-epoch", 2, False) for o in objectives]
    return [*every, *workers, ("mlm-wwm", "mid-epoch", 0, True), ("clm", "validation", 2, True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four scenarios only")
    parser.add_argument("--keep", help="a folder to keep the runs in (default: a temporary one)")
    options = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(options.keep or tmp)
        os.environ.setdefault("LMLAB_CACHE_DIR", str(root / "cache"))
        data, references, results = write_data(_mkdir(root / "data")), {}, []
        header = f"{'objective':<18} {'kill point':<25} {'workers':>7}  from  weights  losses  rows"
        print(header, flush=True)
        for objective, kill, workers, real in plan(options.quick):
            start = time.monotonic()
            r = scenario(objective, kill, workers, data, root, references, real)
            results.append(r)
            print(
                f"{r['objective']:<18} {r['kill']:<25} {r['workers']:>7}  {r['resumed_from']:>4}  "
                f"{'same' if r['same_weights'] else 'DIFF':<7}  "
                f"{'same' if r['same_losses'] else 'DIFF':<6}  {r['rows']:>4}"
                f"  ({time.monotonic() - start:.0f} s)",
                flush=True,
            )
    exact = sum(r["same_weights"] and r["same_losses"] for r in results)
    print(f"{exact} of {len(results)} bit-identical")
    return 0 if exact == len(results) else 1


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
