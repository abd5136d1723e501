"""The throughput callback: exact token and sample counts on hand-made padded batches, the
FLOP estimate on known numbers, rates that leave validation time out (a fake clock that only
the training and validation steps move), global rates under DDP, no mfu without a known peak,
and the perf/ columns in a real tiny lmlab run's metrics.csv."""

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lmlab.build import compose, train
from lmlab.callbacks import FlopsModel, Throughput, batch_counts, matmul_parameters
from lmlab.errors import LmlabError

# Two samples of 4 positions, 3 and 2 of them real: 5 tokens, lengths squared 9 + 4 = 13.
PADDED = {
    "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def perf_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("perf/tokens_per_sec")]


# ---------------------------------------------------------------- counting and FLOPs


def test_batch_counts_real_tokens_not_padding():
    samples, tokens, squared = batch_counts(PADDED)
    assert (samples, int(tokens), int(squared)) == (2, 5, 13)


def test_batch_counts_without_mask_every_position_is_a_token():
    assert batch_counts({"input_ids": torch.zeros(3, 4, dtype=torch.long)}) == (3, 12, 48)
    assert batch_counts({"pixels": torch.zeros(3, 4)}) == (0, 0, 0)


class TinyLM(nn.Module):
    """Token embedding 10x4 tied to the output layer, position embedding 8x4, a 4x4 linear."""

    def __init__(self, tied: bool):
        super().__init__()
        self.tokens = nn.Embedding(10, 4)
        self.positions = nn.Embedding(8, 4)
        self.block = nn.Linear(4, 4)  # 16 + 4
        self.out = nn.Linear(4, 10, bias=False)  # 40
        if tied:
            self.out.weight = self.tokens.weight

    def get_output_embeddings(self):
        return self.out


def test_matmul_parameters_leave_out_lookup_tables_but_count_a_tied_output():
    assert matmul_parameters(TinyLM(tied=False)) == 20 + 40
    assert matmul_parameters(TinyLM(tied=True)) == 20 + 40  # the tied table, counted once
    assert matmul_parameters(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))) == 10


def test_flops_palm_estimate_on_known_numbers():
    # 6 * 1000 * 5 + 12 * 2 layers * 32 hidden * 13 = 30000 + 9984
    assert FlopsModel(parameters=1000, layers=2, hidden=32).flops(5, 13) == 39984


def test_flops_model_reads_layers_and_hidden_from_a_transformers_config():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100))
    flops = FlopsModel.of(model)
    assert (flops.layers, flops.hidden) == (2, 32)
    positions = model.transformer.wpe.weight.numel()
    assert flops.parameters == sum(p.numel() for p in model.parameters()) - positions


@pytest.mark.parametrize("bad", [0, -1, "fast", True, float("nan")])
def test_bad_peak_flops_names_the_key(bad):
    with pytest.raises(LmlabError, match=r"^callbacks\.throughput\.peak_flops: expected"):
        Throughput(peak_flops=bad)


# ---------------------------------------------------------------- the callback, fake trainer


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ListLogger:
    def __init__(self):
        self.logged: dict[str, list[float]] = {}

    def log_metrics(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.logged.setdefault(name, []).append(value)


def fake_fit(callback, world_size=1, summed_over=1, log_every=2):
    """A trainer and module double: `reduce` multiplies by `summed_over` as a sum over that
    many identical processes would. Returns (trainer, module, logged {name: [values]})."""
    logger = ListLogger()
    strategy = SimpleNamespace(
        reduce=lambda t, reduce_op: t * summed_over if reduce_op == "sum" else None,
        root_device=torch.device("cpu"),
    )
    trainer = SimpleNamespace(
        global_step=0,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0)),
        log_every_n_steps=log_every,
        world_size=world_size,
        is_global_zero=True,
        loggers=[logger],
        strategy=strategy,
        precision="32-true",
    )
    module = SimpleNamespace(
        device=torch.device("cpu"),
        model=nn.Linear(10, 10),  # 110 matmul parameters, no config: no attention term
    )
    callback.clock = FakeClock()
    callback.on_train_start(trainer, module)
    return trainer, module, logger.logged


def train_step(callback, trainer, module, seconds=1.0, micro_batches=1):
    for _ in range(micro_batches):
        callback.clock.now += seconds / micro_batches
        if _ == micro_batches - 1:
            trainer.global_step += 1
        callback.on_train_batch_end(trainer, module, None, PADDED, 0)


def validation(callback, trainer, module, seconds):
    callback.on_validation_start(trainer, module)
    callback.clock.now += seconds
    callback.on_validation_end(trainer, module)


def test_rates_every_log_window_and_validation_time_left_out():
    callback = Throughput()
    trainer, module, logged = fake_fit(callback, log_every=2)
    train_step(callback, trainer, module, seconds=0.5)
    assert logged == {}  # step 1: not a logging step
    train_step(callback, trainer, module, seconds=0.5)  # step 2: 10 tokens, 4 samples in 1 s
    assert logged == {"perf/tokens_per_sec": [10.0], "perf/samples_per_sec": [4.0]}
    validation(callback, trainer, module, seconds=100.0)
    train_step(callback, trainer, module, seconds=1.0)
    train_step(callback, trainer, module, seconds=1.0)  # step 4: 10 tokens in 2 s of training
    assert logged["perf/tokens_per_sec"] == [10.0, 5.0]
    assert logged["perf/samples_per_sec"] == [4.0, 2.0]
    assert "perf/mfu" not in logged  # a CPU: no peak known, none given


def test_gradient_accumulation_counts_every_micro_batch():
    callback = Throughput()
    trainer, module, logged = fake_fit(callback, log_every=1)
    train_step(callback, trainer, module, seconds=2.0, micro_batches=4)
    assert logged == {"perf/tokens_per_sec": [10.0], "perf/samples_per_sec": [4.0]}


def test_mfu_from_a_given_peak():
    callback = Throughput(peak_flops=1e6)
    trainer, module, logged = fake_fit(callback, log_every=1)
    train_step(callback, trainer, module, seconds=0.5)
    # 6 * 110 parameters * 5 tokens = 3300 FLOPs in 0.5 s = 6600 FLOP/s of 1e6
    assert logged["perf/mfu"] == [pytest.approx(6600 / 1e6, rel=1e-12)]


def test_under_ddp_rates_are_summed_over_processes_and_mfu_is_per_device():
    single, ddp = Throughput(peak_flops=1e6), Throughput(peak_flops=1e6)
    runs = [fake_fit(single, log_every=1), fake_fit(ddp, world_size=2, summed_over=2, log_every=1)]
    for callback, (trainer, module, _) in zip([single, ddp], runs):
        train_step(callback, trainer, module, seconds=0.5)
    one, two = runs[0][2], runs[1][2]
    assert two["perf/tokens_per_sec"] == [2 * one["perf/tokens_per_sec"][0]]
    assert two["perf/samples_per_sec"] == [2 * one["perf/samples_per_sec"][0]]
    assert two["perf/mfu"] == pytest.approx(one["perf/mfu"])  # twice the work on twice the peak


def test_under_ddp_only_rank_zero_logs():
    callback = Throughput()
    trainer, module, logged = fake_fit(callback, world_size=2, summed_over=2, log_every=1)
    trainer.is_global_zero = False
    train_step(callback, trainer, module)
    assert logged == {}


# ---------------------------------------------------------------- a real Lightning fit


class ClockedModule(pl.LightningModule):
    """Each training step takes 1 s of the fake clock, each validation step 100 s."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock
        self.layer = nn.Linear(4, 1)  # 5 matmul parameters

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return self.layer(batch["input_ids"].float()).sum()

    def validation_step(self, batch, batch_idx):
        self.clock.now += 100.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([PADDED] * 8, batch_size=None)

    def val_dataloader(self):
        return torch.utils.data.DataLoader([PADDED], batch_size=None)


def clocked_fit(tmp_path, peak_flops=None, **trainer_args) -> list[dict]:
    """metrics.csv rows with perf values of a real fit on PADDED batches, validated every
    2 steps."""
    clock = FakeClock()
    callback = Throughput(peak_flops=peak_flops)
    callback.clock = clock
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=4,
        val_check_interval=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=pl.loggers.CSVLogger(tmp_path, name="", version=""),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.fit(ClockedModule(clock))
    return perf_rows(read_rows(tmp_path / "metrics.csv"))


def test_real_fit_every_step_and_validation_left_out(tmp_path):
    rows = clocked_fit(tmp_path)
    assert len(rows) == 4  # one per optimizer step (log_every_n_steps=1)
    # 5 tokens and 2 samples per 1 s step, also right after the 100 s validations
    assert [float(r["perf/tokens_per_sec"]) for r in rows] == [5.0] * 4
    assert [float(r["perf/samples_per_sec"]) for r in rows] == [2.0] * 4
    assert "perf/mfu" not in rows[0]  # a CPU and no peak_flops


def test_real_fit_with_gradient_accumulation_and_a_peak(tmp_path):
    rows = clocked_fit(tmp_path, peak_flops=1000.0, accumulate_grad_batches=2)
    assert len(rows) == 4
    # two 1 s micro-batches per step: 10 tokens in 2 s; 6 * 5 parameters * 5 = 150 FLOP/s
    assert [float(r["perf/tokens_per_sec"]) for r in rows] == [5.0] * 4
    assert [float(r["perf/mfu"]) for r in rows] == [pytest.approx(0.15)] * 4


# ---------------------------------------------------------------- a real lmlab run


def test_lmlab_run_logs_perf_metrics_to_metrics_csv(
    tmp_path, monkeypatch, lmlab_cache_dir, tiny_overrides
):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    monkeypatch.setenv("LMLAB_OUTPUT_DIR", str(tmp_path / "outputs"))
    overrides = [
        "experiment=quickstart",
        *tiny_overrides("gpt2", steps=2),
        "callbacks.throughput.peak_flops=1e12",
        "callbacks.best_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "export=false",
    ]
    train(compose(overrides, run_dir=str(tmp_path / "run")))
    all_rows = read_rows(tmp_path / "run" / "metrics.csv")
    rows = perf_rows(all_rows)
    # logged at every step (debug=default), under the step numbers of train/loss
    assert [r["step"] for r in rows] == [r["step"] for r in all_rows if r["train/loss"]]
    assert len(rows) == 2
    for row in rows:
        tokens, samples = float(row["perf/tokens_per_sec"]), float(row["perf/samples_per_sec"])
        assert tokens / samples == pytest.approx(32, rel=1e-5)  # packed blocks of 32, no padding
        assert 0 < float(row["perf/mfu"]) < 1
