"""Shared pieces of the benchmarks: a stand-in tokenizer, objective configs, models built from a
fixed config and seed, pre-made batches, and the interleaved-rounds timing summary."""

from __future__ import annotations

import csv
import logging
import os
import random
import statistics
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lmlab import config as lmconfig

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DATA = Path(os.environ.get("LMLAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))


def sst2(split: str, limit: int | None = None, shuffle: bool = False):
    """(sentences, labels as a tensor) of SST-2's train or dev split from the shared data;
    `shuffle`: a fixed permutation before the first `limit` are taken."""
    with open(DATA / "sst2" / f"{split}.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if shuffle:
        random.Random(0).shuffle(rows)
    rows = rows[:limit]
    return [r["sentence"].strip() for r in rows], torch.tensor([int(r["label"]) for r in rows])


class StandInTokenizer:
    """What the objectives read from a tokenizer, for a vocabulary of `vocab_size` ids:
    ids 0-4 are BERT's specials, the rest plain tokens (no '##' continuations)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pad_token_id, self.unk_token_id, self.cls_token_id = 0, 1, 2
        self.sep_token_id, self.mask_token_id = 3, 4
        self.eos_token_id = self.bos_token_id = 3
        self.all_special_ids = list(range(len(SPECIALS)))

    def __len__(self) -> int:
        return self.vocab_size

    def convert_ids_to_tokens(self, ids):
        return [SPECIALS[i] if i < len(SPECIALS) else f"t{i}" for i in ids]


def add_model_args(parser) -> None:
    """The model and batch size options shared by the step-time benchmarks."""
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def quiet(threads: int) -> None:
    """Warnings and library logs off, so the printed rows stand alone; a fixed thread count."""
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(threads)


def objective_cfg(kind: str, lr: float):
    """The objective section as `lmlab-train` would resolve it (schema defaults)."""
    if kind == "clm":
        schema = lmconfig.CLMConfig(name="clm", _target_="lmlab.objectives.clm.CausalLM", lr=lr)
    else:
        schema = lmconfig.MLMConfig(name="mlm", _target_="lmlab.objectives.mlm.MaskedLM", lr=lr)
    return OmegaConf.structured(schema)


def gpt2(vocab: int, hidden: int, layers: int, seed: int):
    import transformers

    config = transformers.AutoConfig.for_model(
        "gpt2",
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=512,
        bos_token_id=3,
        eos_token_id=3,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).train()


def bert_mlm(vocab: int, hidden: int, layers: int, seed: int):
    import transformers

    config = transformers.AutoConfig.for_model(
        "bert",
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 2),
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForMaskedLM.from_config(config).train()


def random_ids(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[torch.Tensor]:
    """`n` batches of random plain-token ids (no specials), from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(len(SPECIALS), vocab, (batch, seq), generator=g) for _ in range(n)]


def clm_batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    """What CausalLM.collate yields for full packed blocks: labels are the inputs."""
    return [
        {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        for ids in random_ids(n, batch, seq, vocab, seed)
    ]


def mlm_batches(objective, n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    """What MaskedLM.collate yields for full [CLS] ... [SEP] blocks, masked once (fixed seed)."""
    out = []
    torch.manual_seed(seed)
    for ids in random_ids(n, batch, seq, vocab, seed):
        ids[:, 0], ids[:, -1] = 2, 3  # [CLS], [SEP]
        inputs, labels = objective.mask(ids)
        out.append({"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def median(xs) -> float:
    return statistics.median(xs)


def summarize(rounds: list[dict[str, float]], a: str, b: str) -> tuple[float, float]:
    """Per-round ratios a/b and the ratio of the medians over rounds."""
    ratios = [r[a] / r[b] for r in rounds]
    pooled = median([r[a] for r in rounds]) / median([r[b] for r in rounds])
    return median(ratios), pooled
