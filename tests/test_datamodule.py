"""Batching in the DataModule: length-grouped training batches, longest-first evaluation."""

from __future__ import annotations

import os
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from lmlab.data.datamodule import DataModule, LengthGroupedSampler, lengths, load, store


def batches(sampler, batch_size):
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def test_length_grouped_batches_are_a_fresh_permutation_of_similar_lengths():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 200, size=1010)
    sampler = LengthGroupedSampler(sizes, batch_size=8, seed=3, window=10)
    first = batches(sampler, 8)
    assert sorted(i for b in first for i in b) == list(range(1010))
    assert len(first[-1]) == 2  # the short batch stays last, so the loader cuts the same ones
    spread = np.mean([np.ptp(sizes[b]) for b in first[:-1]])
    random_spread = np.mean([np.ptp(sizes[b]) for b in np.array_split(rng.permutation(1008), 126)])
    assert spread < random_spread / 5

    assert batches(sampler, 8) == first  # same seed and epoch: same order
    sampler.set_epoch(1)
    second = batches(sampler, 8)
    assert second != first and sorted(map(tuple, second)) != sorted(map(tuple, first))
    other_seed = LengthGroupedSampler(sizes, batch_size=8, seed=4, window=10)
    assert batches(other_seed, 8) != first


@pytest.mark.parametrize(
    "sizes, expected",
    [  # the orders of lmlab before this test: a change would alter every run's batches
        ([5, 1, 9, 3, 3, 7, 2, 8, 6, 4, 1, 9, 2, 5, 7, 3, 8, 6],
         [4, 12, 6, 1, 7, 16, 8, 0, 11, 2, 5, 14, 13, 9, 15, 10, 17, 3]),
        ([4] * 18,  # packed blocks: one length, nothing sorted
         [8, 0, 1, 16, 12, 7, 4, 6, 9, 10, 11, 15, 5, 2, 14, 13, 3, 17]),
    ],
)  # fmt: skip
def test_the_length_grouped_order_is_stable_across_versions(sizes, expected):
    sampler = LengthGroupedSampler(np.array(sizes), batch_size=4, seed=5, window=2)
    sampler.set_epoch(1)
    assert sampler.order().tolist() == expected


class Collate:
    seed = 0

    def collate(self, features):
        return [f["input_ids"] for f in features]


def datamodule(rows, **data):
    cfg = SimpleNamespace(batch_size=2, eval_batch_size=None, num_workers=0, group_by_length=True)
    vars(cfg).update(data)
    dm = DataModule({}, "", Collate(), cfg, "/unused")
    split = datasets.Dataset.from_dict({"input_ids": rows})
    dm.splits = {"train": split, "validation": split}
    return dm


def test_evaluation_batches_come_longest_first_and_cover_every_row_once():
    rows = [[1] * n for n in (3, 7, 1, 5, 7)]
    dm = datamodule(rows)
    assert lengths(dm.splits["validation"]).tolist() == [3, 7, 1, 5, 7]
    seen = [len(r) for b in dm.val_dataloader() for r in b]
    assert seen == [7, 7, 5, 3, 1]
    # first_batches keeps the split's own order (a head fit reads the data as it comes)
    assert [len(r) for b in dm.first_batches("validation", 1) for r in b] == [3, 7]


def test_training_batches_group_by_length_unless_switched_off():
    rows = [[1] * n for n in range(1, 41)]
    torch.manual_seed(0)
    grouped = [[len(r) for r in b] for b in datamodule(rows).train_dataloader()]
    assert all(max(b) - min(b) == 1 for b in grouped)
    plain = [
        [len(r) for r in b] for b in datamodule(rows, group_by_length=False).train_dataloader()
    ]
    assert sorted(n for b in plain for n in b) == list(range(1, 41))
    assert max(max(b) - min(b) for b in plain) > 1


def test_cache_key_ignores_the_truncation_a_call_leaves_on_the_tokenizer(tiny_wordpiece):
    """Tokenizing with truncation or padding changes the backend tokenizer's settings; the
    preprocessing cache must still find the splits it wrote (a validation before fit once
    made fit preprocess every split again)."""
    objective = SimpleNamespace(tokenizer=tiny_wordpiece, fingerprint=lambda: {"o": 1})
    dm = DataModule({}, "source", objective, SimpleNamespace(), "/unused")
    before = dm.cache_key()
    tiny_wordpiece(["the cat"], truncation=True, max_length=8, padding="max_length")
    assert dm.cache_key() == before
    tiny_wordpiece.backend_tokenizer.no_truncation()
    tiny_wordpiece.backend_tokenizer.no_padding()
    assert dm.cache_key() == before


def test_a_split_of_arrow_files_is_stored_by_linking_them(tmp_path):
    """A split that is exactly the files datasets.map wrote is stored by linking those files
    (nothing copied or read); one with selected rows is saved; both load the same rows."""
    source = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(50)]})
    source.save_to_disk(str(tmp_path / "source"))
    mapped = datasets.load_from_disk(str(tmp_path / "source")).map(
        lambda b: {"n": [len(t) for t in b["text"]]}, batched=True, batch_size=7, num_proc=2
    )
    for name, data in (("mapped", mapped), ("selected", mapped.select([3, 1, 4]))):
        folder = tmp_path / name
        folder.mkdir()
        store(data, folder)
        assert load(folder).to_dict() == data.to_dict()
    linked = sorted((tmp_path / "mapped").glob("data-*.arrow"))
    sources = [f["filename"] for f in mapped.cache_files]
    assert [f.stat().st_ino for f in linked] == [os.stat(f).st_ino for f in sources]
    assert not (tmp_path / "selected" / "arrow_files.json").exists()
