"""data.source=litdata: pre-training on corpora beyond one machine's disk, streamed with
LitData (docs/large_corpora.md).

A corpus is turned once into a LitData *optimized* dataset of token blocks, exactly the
blocks lmlab's `pack` makes for the objective (`optimize_corpus`, or
`python -m lmlab.data.streaming optimize ...`); training then reads them through
`litdata.StreamingDataset` + `StreamingDataLoader` from a directory or any URL LitData
streams from (s3://, gs://, ...), instead of lmlab's tokenized cache. The loader shuffles
with the run's seed, shards across DDP ranks itself, and its `state_dict` (saved by
Lightning in checkpoints, as for any stateful loader) is the position a resume continues
from. Only objectives that pack blocks (clm, mlm: `Objective.packing`) train this way, with
the pretrained tokenizer the blocks were made with.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from lmlab.data.datamodule import DataModule, Rows, batch_seed
from lmlab.data.sources.settings import SPLITS
from lmlab.errors import LmlabError

# litdata asks PyPI for a newer version whenever a dataset is opened (up to 30 s offline)
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")


def is_url(spec: str) -> bool:
    return "://" in spec


def open_dataset(spec: str, key: str, cache_dir=None, **settings):
    """The LitData dataset at `spec` (a directory or URL), named by its config key."""
    from litdata import StreamingDataset

    if not is_url(spec):
        spec = os.path.expanduser(spec)
        if not Path(spec, "index.json").is_file():
            found = "no such directory" if not Path(spec).is_dir() else "no index.json in it"
            raise LmlabError(
                f"{key}: {spec!r} is not a LitData optimized dataset ({found}); write one with "
                "python -m lmlab.data.streaming optimize"
            )
    # remote chunks are cached under lmlab's cache dir; local ones are read in place
    cache = str(Path(cache_dir).expanduser() / "streams") if cache_dir and is_url(spec) else None
    try:
        dataset = StreamingDataset(spec, cache_dir=cache, **settings)
    except (OSError, ValueError) as e:
        raise LmlabError(f"{key}: cannot open {spec!r} as a LitData dataset ({e})") from None
    check_stored_as_data(dataset, key)
    return dataset


# LitData decodes each field with the serializer its index.json names; these read plain data
# (arrays through np/torch.frombuffer, UTF-8 text, numbers). Others (pickle, and those that
# fall back to it) could run code of the dataset author's choosing when an item is read.
DATA_FORMATS = ("no_header_numpy", "numpy", "no_header_tensor", "tensor")
DATA_FORMATS += ("str", "text", "int", "float", "bool", "bytes")


def check_stored_as_data(dataset, key: str) -> None:
    """The dataset's items are read without unpickling anything (stored files are data, never
    code); checked on its index.json, before any item is read."""
    index = Path(dataset.input_dir.path or "", "index.json")
    try:
        formats = json.loads(index.read_text(encoding="utf-8"))["config"]["data_format"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LmlabError(f"{key}: cannot read how its items are stored ({index})") from None
    unsafe = [f for f in formats if str(f).split(":")[0] not in DATA_FORMATS]
    if unsafe:
        raise LmlabError(
            f"{key}: items stored as {unsafe[0]!r}; lmlab reads only plain data (arrays of "
            "token ids), never pickled objects, which could run code"
        )


def load_streams(data_cfg, seed: int, cache_dir=None) -> tuple[dict, str]:
    """The splits data_cfg names, opened (unshuffled, to inspect and count), and a
    fingerprint of their identity: each location and its chunks (names and item ranges)."""
    splits = {
        name: open_dataset(getattr(data_cfg, name), f"data.{name}", cache_dir)
        for name in SPLITS
        if getattr(data_cfg, name, None) is not None
    }
    identity = {
        name: [getattr(data_cfg, name), ds.subsampled_files, ds.region_of_interest]
        for name, ds in splits.items()
    }
    digest = hashlib.sha1(json.dumps([identity, seed], default=str).encode()).hexdigest()
    return splits, digest


def check_blocks(dataset, key: str, objective, max_length: int) -> None:
    """The first item of a split is a block of input_ids that this objective and tokenizer
    could have packed: max_length tokens, within the vocabulary, between the objective's
    prefix and suffix ids (an MLM's [CLS] ... [SEP])."""
    item = dataset[0]
    if not isinstance(item, dict) or "input_ids" not in item:
        found = ", ".join(item) if isinstance(item, dict) else type(item).__name__
        raise LmlabError(
            f"{key}: items have no 'input_ids' (found: {found}); write the dataset with "
            "python -m lmlab.data.streaming optimize"
        )
    ids = np.asarray(item["input_ids"])
    packing = objective.packing()
    prefix, suffix = list(packing.get("prefix", ())), list(packing.get("suffix", ()))
    if len(ids) != max_length:
        raise LmlabError(
            f"data.max_length: {max_length}, but the blocks of {key} have {len(ids)} tokens; "
            f"set data.max_length={len(ids)} (or optimize with --block-size {max_length})"
        )
    vocab = len(objective.tokenizer)
    edges = (
        ids[: len(prefix)].tolist() == prefix and ids[len(ids) - len(suffix) :].tolist() == suffix
    )
    if ids.max(initial=0) >= vocab or not edges:
        raise LmlabError(
            f"{key}: its blocks were not made with this tokenizer ({vocab} tokens) for "
            f"objective {objective.cfg.name}; optimize them with --objective "
            f"{objective.cfg.name} --tokenizer <model.tokenizer.name_or_path>"
        )


def check_objective(objective_class) -> None:
    """The objective trains on packed blocks (it has `packing`): what a stream holds."""
    from lmlab.objectives.base import Objective

    if objective_class.packing is Objective.packing:
        raise LmlabError(
            f"data.source: litdata streams packed blocks, which objective "
            f"{objective_class.__name__} does not train on (clm and mlm do)"
        )


class StreamingDataModule(DataModule):
    """The DataModule of data.source=litdata: the splits are LitData streams of blocks, read
    through StreamingDataLoader (no tokenizing, no cache of lmlab's)."""

    def prepare_data(self) -> None:
        for split, dataset in self.raw.items():
            check_blocks(dataset, f"data.{split}", self.objective, self.cfg.max_length)
        self.splits = dict(self.raw)

    def _loader(self, split: str, shuffle: bool, by_length: bool = False):
        """Training: shuffled by the run's seed, drop_last (every rank gets as many batches);
        evaluation: in stored order. `by_length` does not apply: all blocks are as long."""
        import torch
        from litdata import StreamingDataLoader

        spec, seed = getattr(self.cfg, split), self.objective.seed
        settings = {"shuffle": True, "drop_last": True} if shuffle else {}
        cache_dir = self.cache_dir.parent  # paths.cache_dir (DataModule's is its datasets/)
        dataset = open_dataset(spec, f"data.{split}", cache_dir, seed=seed, **settings)
        size = self.cfg.batch_size if shuffle else (self.cfg.eval_batch_size or self.cfg.batch_size)
        collate = self._seeded_collate if shuffle else self._fixed_collate
        return StreamingDataLoader(
            dataset,
            batch_size=size,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            collate_fn=BlockCollate(collate, dataset, seed),
            generator=torch.Generator().manual_seed(seed),  # not the global RNG (dropout's)
        )


class BlockCollate:
    """Stream items -> the objective's batch. The blocks become lists (what `pad` takes);
    a training batch's random choices (MLM masks) are seeded by (seed, epoch, its first
    block), the same after a resume and in any worker or rank, new every epoch."""

    def __init__(self, collate, dataset, seed: int):
        self.collate, self.dataset, self.seed = collate, dataset, seed

    def __call__(self, items: list[dict]):
        first = np.ascontiguousarray(items[0]["input_ids"]).tobytes()
        seed = batch_seed(self.seed, self.dataset.current_epoch, zlib.crc32(first))
        return self.collate(Rows([{"input_ids": i["input_ids"].tolist()} for i in items], seed))


# ---------------------------------------------------------------- writing a dataset

# Forked workers start in a second where spawned ones import torch again (~10 s a call);
# where there is no fork (macOS, Windows), LitData's default.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
OBJECTIVES = {"clm": "lmlab.objectives.clm.CausalLM", "mlm": "lmlab.objectives.mlm.MaskedLM"}


def packing_of(objective: str, tokenizer, block_size: int) -> dict:
    """`pack`'s settings for `objective` (clm, mlm) at data.max_length=block_size."""
    from hydra.utils import get_class

    if objective not in OBJECTIVES:
        raise LmlabError(f"--objective: {objective!r} (expected one of: {', '.join(OBJECTIVES)})")
    return get_class(OBJECTIVES[objective])(None, tokenizer, block_size).packing()


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path))
    except OSError as e:
        raise LmlabError(
            f"--tokenizer: cannot load {name_or_path!r} ({e})".splitlines()[0]
        ) from None


def input_blocks(spec: str, tokenizer: str, packing: dict, documents: str, encoding: str):
    """The blocks of one input (a text file, directory or glob, read as data.train is), packed
    by `pack` exactly as a training run packs them; its scratch files are removed after."""
    from lmlab.data.sources.files import load_files
    from lmlab.data.sources.settings import data_config
    from lmlab.objectives.base import pack

    cfg = {"name": "optimize", "train": spec, "format": "text"}
    cfg = data_config(cfg | {"documents": documents, "encoding": encoding})
    with tempfile.TemporaryDirectory(prefix="lmlab-optimize-") as scratch:
        splits, _ = load_files(cfg, False, scratch)
        texts = splits["train"][0]
        try:
            blocks = pack(texts, load_tokenizer(tokenizer), **packing, option="--block-size")
        except LmlabError as e:  # raised in a LitData worker: the parent reports it
            raise LmlabError(f"{e} (input {spec!r})") from None
        for batch in blocks.with_format("numpy").iter(batch_size=1024):
            for ids in batch["input_ids"]:
                yield {"input_ids": ids.astype(np.int32)}


def optimize_corpus(
    inputs: list[str],
    tokenizer: str,
    out: str,
    objective: str = "clm",
    block_size: int = 128,
    documents: str = "blank_line",
    encoding: str = "utf-8",
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
) -> int:
    """Writes the blocks of `inputs` (text files, directories or globs; each one packed on its
    own, in this order with one worker) as a LitData optimized dataset at `out` (a directory
    or a URL); returns the number of blocks. The items are {"input_ids": int32 array of
    block_size tokens}: plain arrays, never code."""
    from litdata import StreamingDataset, optimize

    packing = packing_of(objective, load_tokenizer(tokenizer), block_size)
    if not is_url(out) and Path(out, "index.json").exists():
        raise LmlabError(f"--out: {out!r} already holds a dataset; remove it or choose another")
    for spec in inputs:  # a bad input fails here, in one line, not in a worker
        check_input(spec)
    fn = functools.partial(
        input_blocks, tokenizer=tokenizer, packing=packing, documents=documents, encoding=encoding
    )
    made = not is_url(out) and not Path(out).exists()
    try:
        with killing_orphans_on_error():
            optimize(
                fn=fn,
                inputs=list(inputs),
                output_dir=out,
                chunk_bytes=chunk_bytes,
                num_workers=num_workers,
                reorder_files=False,
                keep_data_ordered=True,
                start_method=START_METHOD,
                verbose=False,
            )
    except BaseException as e:
        if made:  # no chunks left looking like a dataset
            shutil.rmtree(out, ignore_errors=True)
        # a worker's error: LitData raises a RuntimeError holding its traceback as text
        raised = re.findall(r"^lmlab\.errors\.LmlabError: (.*)$", str(e), re.M)
        if not isinstance(e, RuntimeError) or not raised:
            raise
        raise LmlabError(raised[-1]) from None
    return len(StreamingDataset(out))


PR_SET_CHILD_SUBREAPER = 36  # prctl(2), Linux


@contextlib.contextmanager
def killing_orphans_on_error():
    """If the block raises, kills the processes it left behind: a LitData worker terminated
    after an error leaves its file-remover process waiting forever, holding the caller's
    stdout and stderr open (a pipe never ends). On Linux this process adopts its orphaned
    descendants meanwhile (a child subreaper), so it can find them; elsewhere it does not."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None
    if prctl is None or prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        yield
        return
    before = children()
    try:
        yield
    except BaseException:
        while left := children() - before:  # a child's children are adopted when it ends
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
        raise
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def children() -> set[int]:
    """The pids of this process's children, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(stat.parent.name))
    return found


def check_input(spec: str) -> None:
    import glob

    if not (Path(spec).expanduser().exists() or glob.glob(os.path.expanduser(spec))):
        raise LmlabError(f"inputs: no file matches {spec!r}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lmlab.data.streaming",
        description="Write text files as a LitData optimized dataset of packed token blocks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    opt = commands.add_parser("optimize", help="tokenize and pack text files into a dataset")
    opt.add_argument("inputs", nargs="+", help="text files, directories or globs")
    opt.add_argument("--tokenizer", required=True, help="a pretrained tokenizer dir or hub name")
    opt.add_argument("--out", required=True, help="output directory or URL (s3://...)")
    opt.add_argument("--objective", default="clm", choices=sorted(OBJECTIVES))
    opt.add_argument(
        "--block-size", type=int, default=128, help="tokens per block: data.max_length"
    )
    opt.add_argument("--documents", default="blank_line", choices=("blank_line", "line", "file"))
    opt.add_argument("--encoding", default="utf-8")
    opt.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help="inputs packed at a time (1: blocks in input order)",
    )
    opt.add_argument("--chunk-bytes", default="64MB", help="size of each stored chunk")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import datasets

    args = parse(sys.argv[1:] if argv is None else argv)
    datasets.disable_progress_bars()  # pack's Map bars, one per input: errors stay one line
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        blocks = optimize_corpus(**settings)
    except LmlabError as e:
        print(f"lmlab.data.streaming: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{blocks} blocks of {args.block_size} tokens in {args.out}")


if __name__ == "__main__":
    main()
