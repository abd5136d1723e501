"""data.source=litdata (lmlab.data.streaming, docs/large_corpora.md "Beyond one machine's
disk"): a text corpus optimized into LitData blocks equal to `pack`'s, a short run on the
stream, a killed run resumed at the batch it stopped (bit-identical), the documented
commands (optimize, then lmlab-train under trainer=ddp with 2 CPU processes: slow), and the
one-line errors for bad input."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARCH, killed_and_rerun, load_benchmark, tiny_corpus_text

litdata = pytest.importorskip("litdata")

from lmlab.build import compose, train  # noqa: E402
from lmlab.checkpointing import SimulatedKill  # noqa: E402
from lmlab.data import streaming  # noqa: E402
from lmlab.errors import LmlabError  # noqa: E402
from lmlab.run import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Text files, a byte-level BPE and a WordPiece tokenizer saved as pretrained dirs, and
    the clm blocks of the training and validation files (~340 and ~60 blocks of 32)."""
    from lmlab.tokenizers import train_tokenizer

    home = tmp_path_factory.mktemp("streams")
    (home / "train.txt").write_text(tiny_corpus_text(150), encoding="utf-8")
    (home / "valid.txt").write_text(tiny_corpus_text(30, seed=1), encoding="utf-8")
    texts = [tiny_corpus_text(150)]
    train_tokenizer(texts, "bpe", 300).save_pretrained(home / "bpe")
    train_tokenizer(texts, "wordpiece", 300).save_pretrained(home / "wordpiece")
    for split in ("train", "valid"):
        out = home / "blocks" / split
        streaming.optimize_corpus(
            [str(home / f"{split}.txt")], str(home / "bpe"), str(out), "clm", BLOCK
        )
    return home


def packed(corpus, objective: str, tokenizer: str) -> np.ndarray:
    """What a training run on the text file packs (objective.preprocess -> pack)."""
    from hydra.utils import get_class
    from transformers import AutoTokenizer

    from lmlab.data.sources.files import load_files
    from lmlab.data.sources.settings import data_config

    cfg = data_config({"name": "t", "train": str(corpus / "train.txt"), "format": "text"})
    splits, _ = load_files(cfg, False, corpus / "scratch")
    tok = AutoTokenizer.from_pretrained(corpus / tokenizer)
    objective = get_class(streaming.OBJECTIVES[objective])(None, tok, BLOCK)
    return np.array(objective.preprocess(splits["train"][0], "train")["input_ids"])


def stored(path) -> np.ndarray:
    return np.stack([item["input_ids"] for item in litdata.StreamingDataset(str(path))])


def test_optimized_blocks_are_packs_blocks(corpus, tmp_path):
    clm = stored(corpus / "blocks" / "train")
    assert clm.dtype == np.int32 and clm.shape[1] == BLOCK and len(clm) > 300
    assert np.array_equal(clm, packed(corpus, "clm", "bpe"))
    out = tmp_path / "mlm"
    count = streaming.optimize_corpus(
        [str(corpus / "train.txt")], str(corpus / "wordpiece"), str(out), "mlm", BLOCK
    )
    mlm = stored(out)
    assert count == len(mlm) and np.array_equal(mlm, packed(corpus, "mlm", "wordpiece"))
    assert set(mlm[:, 0]) == {2} and set(mlm[:, -1]) == {3}  # [CLS] ... [SEP]


def overrides(corpus, steps: int = 6, epochs: int | None = None, workers: int = 0) -> list[str]:
    """pretrain_gpt, tiny, on the stream: validation every 3 steps, a checkpoint every 2."""
    return [
        "experiment=pretrain_gpt",
        *TINY_ARCH["gpt2"],
        "data=litdata",
        f"data.train={corpus / 'blocks' / 'train'}",
        f"data.validation={corpus / 'blocks' / 'valid'}",
        f"model.tokenizer.name_or_path={corpus / 'bpe'}",
        f"data.max_length={BLOCK}",
        "data.batch_size=4",
        f"data.num_workers={workers}",
        f"trainer.max_epochs={epochs or 'null'}",  # null: as pretrain_gpt, steps decide
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=4",
        "trainer.log_every_n_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "objective.sample_max_new_tokens=2",
        f"paths.cache_dir={corpus / 'cache'}",
        "keep_checkpoints=true",
        "plots=false",
    ]


def test_a_short_run_trains_on_the_stream(corpus, tmp_path):
    metrics = train(compose(overrides(corpus), run_dir=str(tmp_path / "run")))
    first = load_benchmark().outcome(tmp_path / "run")["rows"][0]
    assert first[:2] == ("val/loss", 0)
    assert metrics["global_step"] == 6
    assert metrics["val/loss"] < float(first[2]) - 0.1  # it learns from the blocks
    again = evaluate(tmp_path / "run")  # lmlab-eval: the trained model on the whole stream
    assert again["examples"] == len(litdata.StreamingDataset(str(corpus / "blocks" / "valid")))
    assert again["val/loss"] < float(first[2]) - 0.1


def test_mlm_trains_on_a_stream_of_its_blocks(corpus, tmp_path):
    """objective=mlm on [CLS] ... [SEP] blocks of the WordPiece tokenizer: masks are drawn
    per batch from the stream's blocks, and the model learns from them."""
    streams = {}
    for split in ("train", "valid"):
        streams[split] = tmp_path / split
        streaming.optimize_corpus(
            [str(corpus / f"{split}.txt")], str(corpus / "wordpiece"), str(streams[split]),
            "mlm", BLOCK,
        )  # fmt: skip
    replaced = ("experiment=", "++", "objective.", "data.train=", "data.validation=", "model.")
    args = [o for o in overrides(corpus, steps=9) if not o.startswith(replaced)]
    args += ["experiment=pretrain_mlm", *TINY_ARCH["bert"], "objective.lr=3e-3"]
    args += [f"data.train={streams['train']}", f"data.validation={streams['valid']}"]
    args += [f"model.tokenizer.name_or_path={corpus / 'wordpiece'}"]
    metrics = train(compose(args, run_dir=str(tmp_path / "run")))
    first = load_benchmark().outcome(tmp_path / "run")["rows"][0]
    assert first[:2] == ("val/loss", 0) and metrics["global_step"] == 9
    assert metrics["val/loss"] < float(first[2]) - 0.1


@pytest.mark.parametrize("epochs, workers", [(None, 0), (1, 0), (None, 2)])
def test_a_killed_run_resumes_at_the_batch_it_stopped(corpus, tmp_path, epochs, workers):
    """Killed after batch 4 (its last checkpoint at step 4), re-run: the loader's state_dict,
    saved by Lightning, continues at batch 5, so the run ends bit-identical (also with
    max_epochs set, where Lightning builds the loader before it loads the checkpoint, and
    with LitData's loader reading in 2 worker processes)."""
    bench = load_benchmark()
    args = overrides(corpus, epochs=epochs, workers=workers)
    train(compose(args, run_dir=str(tmp_path / "whole")))
    kill = ["+callbacks.kill._target_=lmlab.checkpointing.KillAt", "+callbacks.kill.batch=4"]
    with pytest.raises(SimulatedKill):
        train(compose([*args, *kill], run_dir=str(tmp_path / "killed")))
    train(compose(args, run_dir=str(tmp_path / "killed")))
    whole, resumed = bench.outcome(tmp_path / "whole"), bench.outcome(tmp_path / "killed")
    assert resumed["rows"] == whole["rows"] and resumed["hash"] == whole["hash"]
    assert ("train/loss", 5) in [row[:2] for row in resumed["rows"]]


@pytest.mark.slow
def test_a_killed_ddp_run_on_a_stream_resumes_bit_identical(corpus, tmp_path):
    """trainer=ddp, 2 CPU processes, each reading its shard of the stream: killed (SIGKILL)
    after batch 4, re-run from the checkpoint of step 4, it ends as the uninterrupted run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", LMLAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    lmlab_train = str(Path(sys.executable).parent / "lmlab-train")

    def launch(args):
        return subprocess.run(
            [lmlab_train, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    args = [*overrides(corpus), "trainer=ddp", "trainer.devices=2"]
    whole, resumed = killed_and_rerun(launch, args, 4, tmp_path)
    assert resumed["rows"] == whole["rows"] and resumed["hash"] == whole["hash"]


# ---------------------------------------------------------------- bad input


def error_of(cfg_overrides: list[str], tmp_path) -> str:
    with pytest.raises(LmlabError) as caught:
        train(compose(cfg_overrides, run_dir=str(tmp_path / "run")))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line(corpus, tmp_path):
    base = overrides(corpus, steps=1)
    missing = error_of([*base, f"data.train={tmp_path / 'nowhere'}"], tmp_path)
    assert missing.startswith("data.train: ") and "no such directory" in missing
    no_tokenizer = [o for o in base if not o.startswith("model.tokenizer.name_or_path")]
    assert error_of(no_tokenizer, tmp_path).startswith("model.tokenizer.name_or_path: required")
    assert error_of([*base, "data.validation=null"], tmp_path).startswith("data.validation: ")
    length = error_of([*base, "data.max_length=64"], tmp_path)
    assert length.startswith("data.max_length: 64, but the blocks of data.train have 32 tokens")
    kept = [o for o in base if not o.startswith(("objective.", "experiment="))]
    classify = [*kept, "model=gpt_tiny", "objective=nsp"]
    other = error_of(classify, tmp_path)
    assert other.startswith("data.source: litdata streams packed blocks, which objective Next")


def texts_of(index: int):
    yield {"text": f"document {index}"}


def pickled_of(index: int):
    yield {"input_ids": Fraction(index, 3)}  # no serializer of its own: LitData pickles it


@pytest.mark.parametrize(
    "items, expected",
    [
        (texts_of, "data.train: items have no 'input_ids' (found: text)"),
        # refused on its index.json, before any item is read
        (pickled_of, "data.train: items stored as 'pickle'; lmlab reads only plain data"),
    ],
)
def test_a_dataset_of_other_items_is_named(corpus, tmp_path, items, expected):
    litdata.optimize(
        fn=items, inputs=[0, 1], output_dir=str(tmp_path / "items"), chunk_bytes="1MB",
        num_workers=1, start_method=streaming.START_METHOD, verbose=False,
    )  # fmt: skip
    message = error_of([*overrides(corpus, 1), f"data.train={tmp_path / 'items'}"], tmp_path)
    assert message.startswith(expected)


def test_the_optimize_command_fails_in_one_line(corpus, tmp_path, capsys):
    """In this process (the documented commands run it as `python -m`: slow test below)."""
    missing = tmp_path / "none.txt"
    args = ["optimize", str(missing), "--tokenizer", str(corpus / "bpe")]
    with pytest.raises(SystemExit) as exit_:
        streaming.main([*args, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lmlab.data.streaming: error: inputs: no file matches '{missing}'"
    ]


def test_an_error_in_an_optimize_worker_is_one_line(corpus, tmp_path):
    """An input too short for one block is found by a LitData worker, whose traceback the
    parent turns into one line (the whole stderr), leaving no partial dataset."""
    short = tmp_path / "short.txt"
    short.write_text("too short for one block", encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lmlab.data.streaming", "optimize", str(short)]
    command += ["--tokenizer", str(corpus / "bpe"), "--block-size", str(BLOCK), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        f"lmlab.data.streaming: error: --block-size: the corpus yields no full block of "
        f"{BLOCK} tokens; use a smaller --block-size or more text (input '{short}')"
    ]


# ---------------------------------------------------------------- the documented commands

DOC = ROOT / "docs" / "large_corpora.md"


def documented_commands() -> list[list[str]]:
    """The optimize and lmlab-train commands of docs/large_corpora.md's fenced blocks that
    run on local files (an s3:// one is only checked by tests/test_doc_commands.py)."""
    text = re.sub(r"\\\n\s*", " ", DOC.read_text())
    lines = re.findall(
        r"^(?:python -m lmlab\.data\.streaming |lmlab-train .*data=litdata).*$", text, re.M
    )
    return [shlex.split(line, comments=True) for line in lines if "://" not in line]


def test_the_docs_show_optimize_then_a_ddp_run():
    commands = documented_commands()
    assert [c[:4] for c in commands if c[0] == "python"] == [
        ["python", "-m", "lmlab.data.streaming", "optimize"]
    ] * 2
    trains = [c for c in commands if c[0] == "lmlab-train"]
    assert len(trains) == 1 and {"data=litdata", "trainer=ddp"} <= set(trains[0])


@pytest.mark.slow
def test_the_documented_commands_run_under_ddp(tmp_path):
    """The docs' commands in a dir holding the files they name: optimize, then train
    (debug=default, tiny) with trainer=ddp: 2 CPU processes (about 40 s)."""
    from lmlab.tokenizers import train_tokenizer

    (tmp_path / "corpus").mkdir()
    for n in range(4):
        (tmp_path / "corpus" / f"{n}.txt").write_text(tiny_corpus_text(150, seed=n))
    (tmp_path / "valid.txt").write_text(tiny_corpus_text(60, seed=9))
    train_tokenizer([tiny_corpus_text(150)], "bpe", 300).save_pretrained(tmp_path / "tokenizer")
    env = dict(os.environ, OMP_NUM_THREADS="1", LMLAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    env["LMLAB_CACHE_DIR"] = str(tmp_path / "cache")
    bin_dir = Path(sys.executable).parent
    for argv in documented_commands():
        if argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        else:
            argv = [str(bin_dir / argv[0]), *argv[1:], "debug=default", *TINY_ARCH["gpt2"]]
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"{shlex.join(argv)}\n{run.stderr[-3000:]}"
    (run_dir,) = (tmp_path / "outputs" / "pretrain_gpt").iterdir()
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert '"global_step": 4' in (run_dir / "metrics.json").read_text()
