"""Run outputs that outlive lmlab: a Hugging Face directory and metrics.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def save_pretrained(model, tokenizer, run_dir: str | Path) -> Path:
    """<run dir>/export: safetensors weights, config and tokenizer, loadable with the
    matching AutoModelFor... class and no lmlab import. Written beside, then renamed."""
    target = Path(run_dir) / "export"
    tmp = target.with_name("export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def write_json(data: dict, path: str | Path) -> None:
    """Atomic: metrics.json is the mark of a finished run, so it is never half-written."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
