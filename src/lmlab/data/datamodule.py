"""The one LightningDataModule: a source's canonical columns, preprocessed by the objective,
cached on disk by a fingerprint of source + tokenizer + objective settings."""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lmlab.fileutil import write_dir


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
        tok = self.objective.tokenizer
        parts = {
            "source": self.source_fingerprint,
            "tokenizer": hashlib.sha1(tok.backend_tokenizer.to_str().encode()).hexdigest(),
            "objective": self.objective.fingerprint(),
        }
        digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:16]

    def prepare_data(self) -> None:
        """Tokenizes every split once; later runs with the same inputs load the cache."""
        import datasets

        folder = self.cache_dir / self.cache_key()
        for split in self.raw:
            path = folder / split
            if not path.is_dir():
                processed = self.objective.preprocess(self.raw[split], split)
                write_dir(path, lambda tmp, data=processed: data.save_to_disk(str(tmp)))
            self.splits[split] = datasets.load_from_disk(str(path))

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.prepare_data()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        size = self.cfg.batch_size if shuffle else (self.cfg.eval_batch_size or self.cfg.batch_size)
        return DataLoader(
            self.splits[split],
            batch_size=size,
            shuffle=shuffle,
            collate_fn=self.objective.collate if shuffle else self._fixed_collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

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
        return self._loader("validation", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)
