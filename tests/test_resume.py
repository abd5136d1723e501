"""Exact resume (docs/resuming.md): the loader's position, the RNG states and the gradients
accumulated so far come back from a checkpoint; checkpoints are written atomically and as
often as callbacks.last_checkpoint says; and a killed run, re-run, ends bit-identical to the
uninterrupted one (benchmarks/resume_exact.py, a few of its scenarios)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import load_benchmark

from lmlab.checkpointing import AtomicCheckpointIO, LastCheckpoint, rng_states, set_rng_states
from lmlab.data.datamodule import DataModule, Keyed, ResumableSampler, Rows, batch_seed
from lmlab.errors import LmlabError

# ---------------------------------------------------------------- the loader's position


def keys(sampler) -> list[tuple[int, int]]:
    return list(sampler)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_resumed_sampler_yields_the_rest_of_the_epoch_with_the_same_batch_seeds(grouped):
    lengths = np.random.default_rng(0).integers(1, 50, size=23) if grouped else None
    sampler = ResumableSampler(23, 4, seed=7, lengths=lengths)
    sampler.set_epoch(2)
    whole = keys(sampler)
    assert sorted(i for i, _ in whole) == list(range(23))
    assert keys(sampler) == whole  # a function of (seed, epoch) alone
    seeds = [s for _, s in whole]
    assert seeds[:4] == [batch_seed(7, 2, 0)] * 4 and seeds[4] == batch_seed(7, 2, 1)

    resumed = ResumableSampler(23, 4, seed=7, lengths=lengths)
    resumed.resume_at(epoch=2, batches=3, epoch_batches=6)
    resumed.set_epoch(2)  # Lightning sets the same epoch again: the skip stays
    assert keys(resumed) == whole[12:]
    assert keys(resumed) == whole  # only the first pass after a resume skips

    resumed.set_epoch(3)
    other = keys(resumed)
    assert [i for i, _ in other] != [i for i, _ in whole]


def test_a_checkpoint_at_the_end_of_an_epoch_resumes_at_the_next_one():
    sampler = ResumableSampler(10, 4, seed=1)
    sampler.set_epoch(1)
    epoch_1 = keys(sampler)
    resumed = ResumableSampler(10, 4, seed=1)
    resumed.resume_at(epoch=0, batches=3, epoch_batches=3)
    assert keys(resumed) == epoch_1


class Masking:
    """An objective whose collate draws from the global torch RNG, as MLM's masks do."""

    seed = 5

    def collate(self, features):
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "noise": torch.rand(len(features))}


def datamodule(num_workers: int = 0, group_by_length: bool = False) -> DataModule:
    cfg = SimpleNamespace(
        batch_size=3, eval_batch_size=None, num_workers=num_workers, group_by_length=group_by_length
    )
    dm = DataModule({}, "", Masking(), cfg, "/unused")
    split = datasets.Dataset.from_dict({"input_ids": [[i, i] for i in range(14)]})
    dm.splits = {"train": split, "validation": split}
    return dm


def as_lists(loader) -> list[tuple[list, list]]:
    return [(b["input_ids"][:, 0].tolist(), b["noise"].tolist()) for b in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_training_loader_saves_and_restores_its_position(num_workers):
    dm = datamodule(num_workers)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    torch.manual_seed(0)
    whole = as_lists(loader)
    torch.manual_seed(123)  # the global RNG (dropout's) plays no part in the batches
    assert as_lists(loader) == whole
    assert sorted(i for ids, _ in whole for i in ids) == list(range(14))

    dm._train_position = lambda: {"epoch": 1, "batches": 2, "epoch_batches": 5}
    loader = dm.train_dataloader()
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2, "epoch_batches": 5}
    fresh = datamodule(num_workers).train_dataloader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)
    assert as_lists(fresh) == whole[2:]  # same rows, same random draws (masks)


def test_batches_do_not_depend_on_the_number_of_workers():
    assert as_lists(datamodule(0).train_dataloader()) == as_lists(datamodule(2).train_dataloader())


def test_keyed_rows_carry_the_seed_of_their_batch():
    data = datasets.Dataset.from_dict({"input_ids": [[1], [2], [3]]})
    rows = Keyed(data).__getitems__([(2, 11), (0, 11)])
    assert isinstance(rows, Rows) and rows.seed == 11
    assert [r["input_ids"] for r in rows] == [[3], [1]]


# ---------------------------------------------------------------- RNG states


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_states_come_back_and_load_with_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    saved = rng_states()
    expected = draws()
    torch.save({"lmlab_rng_states": saved}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["lmlab_rng_states"]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(loaded)
    assert draws() == expected


# ---------------------------------------------------------------- writing checkpoints


def test_a_failed_checkpoint_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as a kill would stop it

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2


def test_checkpoint_cadence_in_minutes_is_checked():
    with pytest.raises(LmlabError, match=r"^callbacks\.last_checkpoint\.every_n_minutes: 0 "):
        LastCheckpoint(every_n_minutes=0)
    assert LastCheckpoint(every_n_minutes=0.5, every_n_train_steps=None).every_n_minutes == 0.5


def test_checkpoints_every_few_minutes_and_every_n_steps(tmp_path, tiny_overrides):
    """A clock that passes a minute per batch: with every_n_minutes=1 and no step cadence a
    checkpoint is saved at every step; run.make_trainer writes them through the atomic IO."""
    from lmlab.experiment import compose
    from lmlab.run import train

    overrides = [
        "experiment=pretrain_gpt",
        *tiny_overrides("gpt2", steps=3),
        "callbacks.last_checkpoint.every_n_train_steps=null",
        "callbacks.last_checkpoint.every_n_minutes=1",
        "export=false",
    ]
    saved = []
    original = AtomicCheckpointIO.save_checkpoint

    def record(self, checkpoint, path, storage_options=None):
        saved.append((Path(path).name, checkpoint["global_step"]))
        original(self, checkpoint, path, storage_options)

    clock = iter(range(0, 10_000, 61))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AtomicCheckpointIO, "save_checkpoint", record)
        mp.setattr("lmlab.checkpointing.time.monotonic", lambda: float(next(clock)))
        train(compose(overrides, run_dir=str(tmp_path)))
    assert [s for name, s in saved if name == "last.ckpt"] == [1, 2, 3]


# ---------------------------------------------------------------- killed and re-run


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    module = load_benchmark()
    root = tmp_path_factory.mktemp("resume-exact")
    return module, root, module.write_data(module._mkdir(root / "data")), {}


@pytest.mark.parametrize(
    "objective, kill, workers",
    [
        ("clm", "mid-epoch", 0),
        ("clm", "mid-epoch, max_epochs", 0),
        ("mlm-wwm", "mid-accumulation", 0),
    ],
)
def test_a_killed_run_re_run_ends_bit_identical(bench, objective, kill, workers):
    module, root, data, references = bench
    result = module.scenario(objective, kill, workers, data, root, references)
    assert result["resumed_from"] > 0
    assert result["same_losses"] and result["same_weights"], result


def test_without_the_rng_states_the_resumed_run_differs(bench, monkeypatch):
    """The check can fail: dropout draws differ when the RNG states are not restored."""
    module, root, data, references = bench
    monkeypatch.setattr("lmlab.checkpointing.set_rng_states", lambda states: None)
    result = module.scenario("clm", "mid-epoch", 0, data, root / "no-rng", references)
    assert result["resumed_from"] == 9
    assert not result["same_weights"] and not result["same_losses"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective, kill, workers, real_kill",
    [
        ("classification+es", "epoch-boundary", 0, False),
        ("nsp", "validation", 2, False),
        ("classification", "epoch-boundary", 0, False),
        ("mlm-wwm", "mid-epoch", 0, True),
    ],
)
def test_more_kill_points_end_bit_identical(bench, objective, kill, workers, real_kill):
    module, root, data, references = bench
    result = module.scenario(objective, kill, workers, data, root, references, real_kill)
    assert result["same_losses"] and result["same_weights"], result


def test_a_resume_under_changed_data_or_architecture_is_refused(tmp_path, tiny_overrides):
    """Weights trained under one corpus, tokenizer or architecture are not resumed under
    another without being asked: one line names what changed; resume_check=false forces it."""
    from lmlab.build import compose, train

    first = tmp_path / "first"
    train(compose([*tiny_overrides("gpt2", 2), "keep_checkpoints=true"], run_dir=str(first)))
    checkpoint = f"resume={first / 'checkpoints' / 'last.ckpt'}"
    other_text = tmp_path / "other.txt"
    other_text.write_text("\n\n".join(f"another corpus, document {i}." * 8 for i in range(60)))
    other_data = [*tiny_overrides("gpt2", 4), f"data.train={other_text}", checkpoint]
    with pytest.raises(LmlabError, match=r"^resume: .*another data and tokenizer than"):
        train(compose(other_data, run_dir=str(tmp_path / "b")))
    wider = [*tiny_overrides("gpt2", 4), "++model.config.n_embd=48", checkpoint]
    with pytest.raises(LmlabError, match=r"another architecture than .*resume_check=false"):
        train(compose(wider, run_dir=str(tmp_path / "c")))
    forced = train(compose([*other_data, "resume_check=false"], run_dir=str(tmp_path / "d")))
    assert "export" in forced and (tmp_path / "d" / "metrics.json").is_file()  # not refused
