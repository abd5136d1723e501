"""Pre-processing cost vs corpus size: `experiment=pretrain_gpt` on plain-text corpora of the
given sizes (MB), each built in a temporary dir from the shared tiny Shakespeare and WikiText-2
text, its paragraphs shuffled per chapter and its lines varied so that the tokenizer has real
work. For each size, in a fresh cache:

- first run: `lmlab-train experiment=pretrain_gpt data=<file> trainer.max_steps=2` (reading,
  fingerprinting, tokenizer training, tokenization, 2 steps): wall and peak RSS;
- cache hit, `--hits` times (3): the same command with trainer.max_steps=1: the time from
  the command to the start of the first training step (startup.py's `FirstStep` callback
  writes it) and the whole process's wall, medians; the largest peak RSS.

Then the run's own trained tokenizer alone (Rust, `encode_batch_fast` on batches of 2,000
documents, as `pack` calls it) on one core, on the corpus's first 10 MB: times the cores,
the ceiling of the tokenization's MB/s, whatever lmlab does around it (packing runs one
single-threaded tokenizer per process; one tokenizer's own threads gain less: 4.6 MB/s on
2 cores where one core does 3.6).

Both runs skip the validation at the start and evaluate 2 batches (trainer.limit_val_batches=2:
5% of a 2 GB corpus would take hours to evaluate); plots=false. Peak RSS: getrusage of the
children, i.e. the largest single process (the lmlab-train process or one of its packing
workers). MB/s: corpus MB / first-run wall.

    python benchmarks/corpus_scaling.py 6 200 2000 [--dir /tmp/corpora] [--hits 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)  # startup.py's FirstStep callback
DATA = Path(os.environ.get("LMLAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
SOURCES = ("tinyshakespeare/input.txt", "wikitext2/valid.txt", "wikitext2/test.txt")


def paragraphs() -> list[str]:
    text = "\n\n".join((DATA / name).read_text(encoding="utf-8") for name in SOURCES)
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def build_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Chapters of shuffled paragraphs until `megabytes`; each chapter rotates the words of
    some lines and numbers its heading, so that chapters differ."""
    rng = random.Random(seed)
    paras, target, written, chapter = paragraphs(), megabytes * 1e6, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            chapter += 1
            rng.shuffle(paras)
            shift = chapter % 7 + 1
            body = "\n\n".join(
                "\n".join(
                    " ".join(w[shift:] + w[:shift]) if (w := line.split()) and k % 3 == 0 else line
                    for k, line in enumerate(p.splitlines())
                )
                for p in paras[: len(paras) // 2]
            )
            chunk = f"CHAPTER {chapter}\n\n{body}\n\n"
            chunk = chunk[: int(target - written) + 1] if written + len(chunk) > target else chunk
            written += len(chunk.encode("utf-8"))
            f.write(chunk)


def run(args: list[str], env: dict) -> tuple[float, float, float]:
    """(wall s, peak RSS MiB of its largest process, start time) of one lmlab-train command."""
    begun, start = time.time(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (its workers too)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{log.read()[-5000:]}")
    return wall, usage.ru_maxrss / 1024, begun  # KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=float, default=[6, 200, 2000])
    parser.add_argument("--dir", default=None, help="where corpora and caches go (temporary)")
    parser.add_argument("--hits", type=int, default=3, help="cache hits per size (medians)")
    opts = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="corpus-scaling-", dir=opts.dir))
    exe = shutil.which("lmlab-train") or str(Path(sys.executable).parent / "lmlab-train")
    rows = []
    try:
        for megabytes in sorted(opts.sizes):
            corpus = base / f"corpus_{megabytes:g}MB.txt"
            build_corpus(corpus, megabytes)
            env = dict(os.environ, OMP_NUM_THREADS="1", LMLAB_CACHE_DIR=str(base / "cache"))
            env["LMLAB_OUTPUT_DIR"] = str(base / "outputs")
            env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
            common = [exe, "experiment=pretrain_gpt", f"data={corpus}", "plots=false"]
            common += ["trainer.validate_at_start=false", "trainer.limit_val_batches=2"]
            first = run([*common, "trainer.max_steps=2"], env)[:2]
            first_steps, walls, peaks = zip(
                *(cache_hit(common, env, base) for _ in range(opts.hits))
            )
            hit = (statistics.median(first_steps), statistics.median(walls), max(peaks))
            rows.append((corpus.stat().st_size / 1e6, first, hit, tokenizer_speed(base, corpus)))
            corpus.unlink()
            shutil.rmtree(base / "cache", ignore_errors=True)
            print_table(rows)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def cache_hit(common: list[str], env: dict, base: Path) -> tuple[float, float, float]:
    """(first step s, wall s, peak RSS MiB) of one cache hit, trainer.max_steps=1."""
    marker = base / "first_step"
    callback = ["+callbacks.first_step._target_=startup.FirstStep"]
    callback += [f"+callbacks.first_step.path={marker}"]
    wall, rss, start = run([*common, *callback, "trainer.max_steps=1"], env)
    first_step = float(marker.read_text().split()[0]) - start
    marker.unlink()
    return first_step, wall, rss


def tokenizer_speed(base: Path, corpus: Path, megabytes: float = 10) -> float:
    """MB/s of the trained tokenizer alone, on one core, on the corpus's first `megabytes`
    MB."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread (read by every encode call)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(next(base.glob("cache/tokenizers/*/tokenizer.json"))))
    with open(corpus, encoding="utf-8") as f:
        text = f.read(int(megabytes * 1e6))
    documents = text.split("\n\n")
    start = time.perf_counter()
    for i in range(0, len(documents), 2000):
        tokenizer.encode_batch_fast(documents[i : i + 2000], add_special_tokens=False)
    return len(text.encode()) / 1e6 / (time.perf_counter() - start)


def print_table(rows) -> None:
    load = os.getloadavg()
    print(f"\n(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores)")
    print(
        "| corpus | first run wall | MB/s | peak RSS "
        "| cache hit: first step | cache hit wall | cache hit peak RSS "
        "| tokenizer alone, 1 core MB/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mb, (wall, rss), (first_step, hit_wall, hit_rss), tokenizer in rows:
        print(
            f"| {mb:,.0f} MB | {wall:.1f} s | {mb / wall:.1f} | {rss:,.0f} MiB "
            f"| {first_step:.1f} s | {hit_wall:.1f} s | {hit_rss:,.0f} MiB | {tokenizer:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
