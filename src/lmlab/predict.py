"""Prediction: a trained model's outputs for new inputs, one per input row, in order.

read_jsonl reads input rows (errors name file:line), predict runs the objective's
preprocess, collate, predict_step and decode over them, write_jsonl writes the outputs
(atomically, through lmlab.fileutil). The model comes from lmlab.run.load.

from lmlab.predict import predict
from lmlab.run import load
trained = load("outputs/finetune_sentiment/1a2b3c4d")
rows = predict(trained.objective, trained.model, [{"text": "a fine film"}])
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.run import load  # noqa: F401  (kept: `from lmlab.predict import load, predict`)


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per line ("-": stdin); blank lines are skipped; errors name file:line."""
    name = "<stdin>" if path == "-" else path
    try:
        lines = sys.stdin.readlines() if path == "-" else Path(path).read_text().splitlines()
    except OSError as e:
        raise LmlabError(f"--input: cannot read '{path}': {e.strerror}") from None
    rows, keys, first = [], None, 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{name}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise LmlabError(f"{name}:{number}: expected a JSON object, got {type(row).__name__}")
        if keys is None:
            keys, first = set(row), number
        elif set(row) != keys:
            raise LmlabError(
                f"{name}:{number}: fields {sorted(row)} differ from line {first}'s {sorted(keys)}"
            )
        rows.append(row)
    if not rows:
        raise LmlabError(f"{name}: no input rows")
    return rows


def predict(objective, model, rows: list[dict], batch_size: int = 32) -> list[dict]:
    """One output per row of `rows` (canonical columns), in order."""
    import datasets
    import torch

    try:
        examples = datasets.Dataset.from_list(rows)
    except (datasets.exceptions.DatasetGenerationError, TypeError, ValueError) as e:
        raise LmlabError(f"input: rows do not make a table: {str(e).splitlines()[0]}") from None
    processed = objective.preprocess(examples, "predict")
    records = []
    with torch.no_grad():
        for start in range(0, len(processed), batch_size):
            features = [processed[i] for i in range(start, min(start + batch_size, len(processed)))]
            batch = objective.collate(features)
            batch = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in batch.items()}
            records += objective.predict_step(model, batch)
    outputs = objective.decode(records, examples)
    if len(outputs) != len(rows):
        raise LmlabError(
            f"objective {objective.cfg.name}: {len(outputs)} outputs for {len(rows)} rows"
        )
    return outputs


def write_jsonl(rows: list[dict], path: str | None) -> None:
    """To stdout, or to `path` atomically (complete or absent)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if path is None:
        sys.stdout.write(text)
        return
    from lmlab.fileutil import write_text

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, text)
