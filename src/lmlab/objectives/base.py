"""The objective contract: everything that differs between tasks, and nothing else.

An objective names its model head (a transformers Auto class), turns canonical columns
into model inputs (`preprocess`, batched and cacheable), batches them (`collate`), and
computes the loss and metrics of one batch (`step`). Adding a task means one subclass plus
one YAML file under conf/objective/ (with its schema in lmlab.config).

Tasks scored over a whole split (F1, exact match, ...) also return per-example records
from `eval_step`; at the end of each evaluation the module hands all records and the raw
examples of the split to `score`. `predict_step` + `decode` serve lmlab-predict.
Preprocessed rows keep an `example_id` (the row's index in the raw split) so that records
find their example again; keys listed in `meta_keys` travel in the batch but are not
model inputs.

What several objectives share lives here too: `IGNORE` (the label outside the loss),
padding (`pad`, `input_pads`), packing documents into blocks (`pack`), `masked_cross_entropy`,
`perplexity` and `unique` (one record per example). Other shared parts have their own
modules: generation (one decoding helper), label_set (classification and NER label sets),
qa (the SQuAD metric of both QA objectives).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.memory import release_mapped_pages

Metrics = dict[str, tuple[torch.Tensor, float]]  # name -> (mean over the batch, weight)
IGNORE = -100  # the label of positions outside the loss (Hugging Face's ignore_index)


class Objective:
    head: str = "AutoModel"  # the transformers Auto class that builds the model
    required_columns: tuple[str, ...] = ("text",)
    metric_names: tuple[str, ...] = ("loss",)  # batch means logged as <stage>/<name>
    meta_keys: tuple[str, ...] = ("example_id",)  # batch keys that are not model inputs

    def __init__(self, cfg, tokenizer, max_length: int, seed: int = 0):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.seed = seed

    # -- data
    def prepare(self, raw) -> None:
        """Learns from the raw DatasetDict what the model needs (e.g. the label names);
        called before `model_config`."""

    def restore(self, model) -> None:
        """For evaluation and prediction of an exported model: recovers what `prepare`
        learnt from the data (e.g. the label names, from model.config.id2label)."""

    @staticmethod
    def texts(dataset):
        """The text a tokenizer trained from scratch learns from."""
        return dataset["text"] if "text" in dataset.column_names else []

    def preprocess(self, dataset, split: str):
        """Canonical columns -> model-ready columns. Deterministic for a given seed.
        split "predict": unlabelled inputs for lmlab-predict (no label columns)."""
        raise NotImplementedError

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def packing(self) -> dict | None:
        """How `preprocess` packs documents into blocks: `pack`'s settings (block_size,
        separator_id, prefix, suffix); None for an objective that does not pack (its inputs
        are not blocks, so it cannot train on pre-packed streams: lmlab.data.streaming)."""
        return None

    def fingerprint(self) -> dict:
        """Everything `preprocess` depends on besides the data and the tokenizer."""
        return {"objective": type(self).__name__, "max_length": self.max_length, "seed": self.seed}

    # -- model
    def model_config(self) -> dict:
        """Extra settings for the Hugging Face config (e.g. the number of labels)."""
        return {}

    def init_new_head(self, model, new_tensors: list[str], datamodule) -> str | None:
        """Starting from a pretrained checkpoint that lacks `new_tensors` (e.g. the task head):
        a better start for them than random (may read a few batches of `datamodule`); returns
        a line for the user saying what was done, or None."""
        return None

    def step(self, model, batch: dict[str, torch.Tensor]) -> Metrics:
        """Loss and metrics of one batch; "loss" is the one optimised."""
        raise NotImplementedError

    def eval_step(self, model, batch) -> tuple[Metrics, list[dict]]:
        """Evaluation: the batch metrics and per-example records (plain Python data) for
        `score`. One forward pass serves both."""
        return self.step(model, batch), []

    def score(self, records: list[dict], examples, model) -> dict[str, Any]:
        """Metrics over a whole split from the records of `eval_step` and the raw examples
        (a datasets.Dataset of canonical columns). Numbers are logged as <stage>/<name>;
        other values (a confusion matrix, generated samples) go to metrics.json; a list
        of strings under "samples" is also written to the run dir."""
        return {}

    def predict_step(self, model, batch) -> list[dict]:
        """Records for unlabelled inputs (preprocessed with split "predict")."""
        raise LmlabError(f"objective {self.cfg.name}: lmlab-predict does not support it")

    def decode(self, records: list[dict], examples) -> list[dict]:
        """One JSON-ready output per example of `examples`, from `predict_step` records."""
        raise LmlabError(f"objective {self.cfg.name}: lmlab-predict does not support it")

    def epoch_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the epoch means (e.g. perplexity from the loss)."""
        return {}

    def finish(self, model, run_dir) -> dict:
        """After training: task-specific outputs (e.g. a generated sample)."""
        return {}

    # -- helpers shared by objectives
    def model_inputs(self, batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k not in self.meta_keys}

    def check_columns(self, dataset, columns: tuple[str, ...] | None = None) -> None:
        """Every one of `columns` (default: required_columns) is in the data."""
        wanted = self.required_columns if columns is None else columns
        missing = [c for c in wanted if c not in dataset.column_names]
        if missing:
            raise LmlabError(
                f"data.columns.{missing[0]}: the data has no '{missing[0]}' column "
                f"(columns: {', '.join(dataset.column_names)}); map one onto it"
            )

    def input_pads(self, features: list[dict]) -> dict[str, int]:
        """The pad values of the tokenizer's outputs (for `pad`): input_ids, and token_type_ids
        where the tokenizer gives them."""
        keys = {"input_ids": self.tokenizer.pad_token_id}
        if "token_type_ids" in features[0]:
            keys["token_type_ids"] = 0
        return keys

    def pad(self, features: list[dict], keys: dict[str, int]) -> dict[str, torch.Tensor]:
        """Right-pads the listed keys (key -> pad value) and adds the attention mask."""
        length = max(len(f["input_ids"]) for f in features)
        batch = {
            key: torch.tensor([f[key] + [value] * (length - len(f[key])) for f in features])
            for key, value in keys.items()
        }
        batch["attention_mask"] = torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features]
        )
        return batch


def unique(records: list[dict]) -> list[dict]:
    """The first record of each example (DDP pads the last batch with repeated examples)."""
    seen: dict[int, dict] = {}
    for record in records:
        seen.setdefault(record["example_id"], record)
    return list(seen.values())


# Packing a corpus above PARALLEL_MB runs in PACK_PROCESSES processes, each on a contiguous
# shard (a fixed number, not the machine's cores, so that the blocks are the same anywhere).
PARALLEL_MB, PACK_PROCESSES = 32, 2


def pack(
    dataset, tokenizer, block_size: int, separator_id: int, prefix=(), suffix=(),
    option: str = "data.max_length",
):  # fmt: skip
    """Tokenizes documents and packs them, a separator after each, into full blocks of
    `block_size` tokens (no padding), each block between the ids `prefix` and `suffix` (such
    as [CLS] ... [SEP]). Batches of 2000 documents are packed apart (the tail of each is
    dropped); the blocks are written to disk as they come (memory does not grow with the
    corpus), as int32, without a Python int per token. Errors name `option`, the setting
    that sets the block size."""
    import pyarrow as pa
    from datasets import Features, List, Value

    from lmlab.data.sources.splits import data_mb

    if block_size < 2:
        raise LmlabError(f"{option}: {block_size} leaves no room for text")
    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: ids without offsets
    sources = [f["filename"] for f in dataset.cache_files]  # the corpus, memory-mapped

    def pack_batch(batch):
        release_mapped_pages(sources)  # the pages read so far: RSS stays flat
        encoded = backend.encode_batch_fast(batch["text"], add_special_tokens=False)
        docs = [e.ids for e in encoded]
        sizes = np.fromiter(map(len, docs), np.int64, len(docs))
        tokens = np.fromiter(itertools.chain.from_iterable(docs), np.int32, sizes.sum())
        stream = np.insert(tokens, np.cumsum(sizes)[sizes > 0], separator_id)
        blocks = stream[: len(stream) // block_size * block_size].reshape(-1, block_size)
        edges = [np.full((len(blocks), len(ids)), ids, np.int32) for ids in (prefix, suffix)]
        blocks = np.hstack([edges[0], blocks, edges[1]])
        offsets = np.arange(0, blocks.size + 1, blocks.shape[1], dtype=np.int32)
        rows = pa.ListArray.from_arrays(offsets, blocks.ravel())
        return pa.table({"input_ids": rows})

    release_mapped_pages(sources)  # what earlier steps read (measured: 20% of a 2 GB corpus)
    packed = dataset.map(
        pack_batch,
        batched=True,
        batch_size=2000,
        remove_columns=dataset.column_names,
        features=Features({"input_ids": List(Value("int32"))}),
        num_proc=PACK_PROCESSES if data_mb(dataset) > PARALLEL_MB else None,
    )
    # the workers' files, opened again here to join them: opening read ~15% of each
    release_mapped_pages(f["filename"] for f in packed.cache_files)
    if len(packed) == 0:
        raise LmlabError(
            f"{option}: the corpus yields no full block of {block_size} tokens; "
            f"use a smaller {option} or more text"
        )
    return packed


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean cross entropy and accuracy over rows; zero (not NaN) when there are no rows."""
    n = labels.numel()
    loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum") / max(n, 1)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == labels).float().sum() / max(n, 1)
    return loss, accuracy


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
