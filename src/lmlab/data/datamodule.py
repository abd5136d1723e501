"""The one LightningDataModule: a source's canonical columns, preprocessed by the objective,
cached on disk by a fingerprint of source + tokenizer + objective settings."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from lmlab.fileutil import write_dir
from lmlab.memory import open_mapped, release_mapped_pages


class DataModule(pl.LightningDataModule):
    def __init__(self, raw, fingerprint: str, objective, data_cfg, cache_dir: str | Path):
        """`raw`: DatasetDict of canonical columns; `fingerprint`: identifies raw's content."""
        super().__init__()
        self.raw = raw
        self.objective = objective
        self.cfg = data_cfg
        self.cache_dir = Path(cache_dir).expanduser() / "datasets"
        self.source_fingerprint = fingerprint
        self.splits: dict = {}

    def cache_key(self) -> str:
        tokenizer = json.loads(self.objective.tokenizer.backend_tokenizer.to_str())
        for setting in ("truncation", "padding"):  # changed by every call: not its identity
            tokenizer.pop(setting, None)
        tokenizer = json.dumps(tokenizer, sort_keys=True)
        parts = {
            "source": self.source_fingerprint,
            "tokenizer": hashlib.sha1(tokenizer.encode()).hexdigest(),
            "objective": self.objective.fingerprint(),
        }
        digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:16]

    def prepare_data(self) -> None:
        """Tokenizes every split once; later runs with the same inputs load the cache."""
        folder = self.cache_dir / self.cache_key()
        for split in self.raw:
            path = folder / split
            if not path.is_dir():
                processed = self.objective.preprocess(self.raw[split], split)
                write_dir(path, lambda tmp, data=processed: store(data, tmp))
            self.splits[split] = load(path)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.prepare_data()

    def _loader(self, split: str, shuffle: bool, by_length: bool = False) -> DataLoader:
        """Training: shuffled, in batches of similar lengths if data.group_by_length (less
        padding), resumable mid-epoch (ResumableSampler). Evaluation (`by_length`): longest
        first, for the same reason; metrics are those of any order (masks drawn per batch, as
        MLM's, change with the batches). No loader draws from the global RNGs (dropout's)."""
        data = self.splits[split]
        size = self.cfg.batch_size if shuffle else (self.cfg.eval_batch_size or self.cfg.batch_size)
        seed = self.objective.seed
        settings = {
            "batch_size": size,
            "num_workers": self.cfg.num_workers,
            "persistent_workers": self.cfg.num_workers > 0,
            "generator": torch.Generator().manual_seed(seed),  # the workers' base seed
        }
        if shuffle:
            grouped = lengths(data) if self.cfg.group_by_length else None
            release_mapped_pages(f["filename"] for f in data.cache_files)  # what that read
            sampler = ResumableSampler(len(data), size, seed, grouped)
            return ResumableLoader(
                Keyed(data), sampler=sampler, collate_fn=self._seeded_collate,
                position=self._train_position, **settings,
            )  # fmt: skip
        order = (-lengths(data)).argsort(kind="stable").tolist() if by_length else None
        return DataLoader(data, sampler=order, collate_fn=self._fixed_collate, **settings)

    def _seeded_collate(self, rows):
        """Training batches: the objective's random choices (MLM masks, ...) are drawn from a
        seed of (data seed, epoch, batch number), the same in any process and after a resume."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(getattr(rows, "seed", 0))  # Rows, unless read row by row
            return self.objective.collate(list(rows))

    def _train_position(self) -> dict:
        """Where training stands in the epoch, from Lightning's own progress counters."""
        trainer = self.trainer
        loop = trainer.fit_loop
        return {
            "epoch": loop.epoch_progress.current.processed,
            "batches": loop.epoch_loop.batch_progress.current.processed,
            "epoch_batches": trainer.num_training_batches,
        }

    def _fixed_collate(self, features):
        """Evaluation batches get the same random choices (masks) every time, seeded by their
        content, so that validation metrics compare across evaluations."""
        seed = zlib.crc32(repr(features[0]["input_ids"][:16]).encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.objective.collate(features)

    def first_batches(self, split: str, n: int) -> list[dict]:
        """The first `n` batches of a split, collated as for evaluation (fixed masks)."""
        self.setup()
        return list(itertools.islice(self._loader(split, shuffle=False), n))

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("validation", shuffle=False, by_length=True)

    def test_dataloader(self):
        return self._loader("test", shuffle=False, by_length=True)


FILES = "arrow_files.json"  # a split stored as the Arrow files it was written to


def store(data, folder: Path) -> None:
    """Writes a tokenized split into `folder`. A split that is exactly the Arrow files
    `datasets.map` wrote (a packed corpus) is stored by linking them: nothing is copied or
    read, where save_to_disk would read every page (gigabytes of RSS for a large corpus)."""
    files = [Path(f["filename"]) for f in data.cache_files]
    if not is_its_files(data, files):
        data.save_to_disk(str(folder))
        return
    names = [f"data-{k:05d}.arrow" for k in range(len(files))]
    for file, name in zip(files, names):
        try:
            os.link(file, folder / name)
        except OSError:  # another file system
            shutil.copyfile(file, folder / name)
    (folder / FILES).write_text(json.dumps(names), encoding="utf-8")


def is_its_files(data, files: list[Path]) -> bool:
    """Whether `data` is exactly the rows and columns of the Arrow `files`, in order."""
    if not files or data._indices is not None:
        return False
    parts = open_mapped(files)
    return sum(map(len, parts)) == len(data) and all(p.features == data.features for p in parts)


def load(folder: Path):
    """A split `store` wrote, memory-mapped."""
    import datasets

    if not (folder / FILES).is_file():
        return datasets.load_from_disk(str(folder))
    names = json.loads((folder / FILES).read_text(encoding="utf-8"))
    parts = open_mapped(folder / Path(name).name for name in names)  # files of this folder only
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def lengths(dataset) -> np.ndarray:
    """The number of input tokens of every row."""
    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_numpy()


class LengthGroupedSampler(Sampler[int]):
    """A new random order every epoch in which each run of `batch_size` indices has similar
    lengths (as Hugging Face's group_by_length): a random permutation is cut into windows of
    50 batches, each window is sorted by length and cut into batches, and the full batches
    are shuffled (a short last batch stays last, so that the loader cuts the same batches)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(self.order().tolist())

    def order(self) -> np.ndarray:
        if not len(self.lengths):
            return np.array([], dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.lengths.min() != self.lengths.max():  # (packed blocks: nothing to sort)
            span = self.batch_size * self.window
            windows = [order[i : i + span] for i in range(0, len(order), span)]
            order = np.concatenate([w[(-self.lengths[w]).argsort(kind="stable")] for w in windows])
        full = len(order) // self.batch_size * self.batch_size
        batches = order[:full].reshape(-1, self.batch_size)
        return np.concatenate([batches[rng.permutation(len(batches))].ravel(), order[full:]])


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    return zlib.crc32(f"{seed}:{epoch}:{batch}".encode())


class Rows(list):
    """The rows of one training batch and the seed of its random choices."""

    def __init__(self, rows, seed: int):
        super().__init__(rows)
        self.seed = seed


class Keyed(torch.utils.data.Dataset):
    """A dataset read by ResumableSampler's keys, (row index, batch seed)."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        return self.data[key[0]]

    def __getitems__(self, keys: list) -> Rows:
        return Rows(self.data.__getitems__([k[0] for k in keys]), keys[0][1] if keys else 0)


class ResumableSampler(Sampler[tuple[int, int]]):
    """The training order of an epoch, a function of (seed, epoch) alone: a permutation, or
    LengthGroupedSampler's order when `lengths` are given. Yields (row index, batch seed).
    `skip` batches are left out of the next pass (a run resumed mid-epoch); set_epoch to
    another epoch clears it."""

    def __init__(self, size: int, batch_size: int, seed: int, lengths: np.ndarray | None = None):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.grouped = None if lengths is None else LengthGroupedSampler(lengths, batch_size, seed)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The epoch's row indices, as an array: a list of millions of Python ints (a large
        corpus's blocks) would take hundreds of MB."""
        if self.grouped is not None:
            self.grouped.set_epoch(self.epoch)
            return self.grouped.order()
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        epoch, start = self.epoch, self.skip * self.batch_size
        self.skip = 0
        order = self.order()
        for position in range(start, len(order)):
            yield int(order[position]), batch_seed(self.seed, epoch, position // self.batch_size)

    def resume_at(self, epoch: int, batches: int, epoch_batches: float) -> None:
        """The next pass starts after `batches` batches of `epoch` (of `epoch_batches`)."""
        if batches >= epoch_batches:  # saved at the end of an epoch: the next one begins
            epoch, batches = epoch + 1, 0
        self.epoch, self.skip = epoch, batches


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints (state_dict) and restores
    before iterating again (load_state_dict): `position()` says where training stands."""

    def __init__(self, *args, position=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position
        self.skip = 0  # batches to leave out of the next pass, where the sampler cannot

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)

    def _resumable(self) -> ResumableSampler | None:
        sampler = self.sampler  # under DDP, Lightning's wrapper of ours
        sampler = getattr(getattr(sampler, "dataset", None), "_sampler", sampler)
        return sampler if isinstance(sampler, ResumableSampler) else None

    def state_dict(self) -> dict:
        return dict(self.position()) if self.position and self._resumable() else {}

    def load_state_dict(self, state: dict) -> None:
        sampler = self._resumable()
        if sampler is not None and state:
            sampler.resume_at(state["epoch"], state["batches"], state["epoch_batches"])
            if sampler is not self.sampler:  # DDP: Lightning's wrapper deals out the whole
                self.skip, sampler.skip = sampler.skip, 0  # order; this rank skips its batches
