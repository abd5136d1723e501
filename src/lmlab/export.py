"""The run's export: a Hugging Face directory that outlives lmlab."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.fileutil import write_dir, write_json

TASK_FILE = "lmlab.json"  # the objective and its settings, for lmlab-eval / lmlab-predict


def pretrained_from_scratch(name_or_path: str | Path | None) -> bool:
    """Whether a starting point is an lmlab export whose weights go back to a model that
    lmlab trained from scratch (not, say, MiniLM continued by lmlab)."""
    task = Path(name_or_path or "").expanduser() / TASK_FILE
    if not name_or_path or not task.is_file():
        return False
    try:  # read as data: nothing in it is imported or run
        info = json.loads(task.read_text())
    except ValueError as e:
        raise LmlabError(f"{task}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise LmlabError(f"{task}: expected a JSON object")
    return bool(info.get("from_scratch", True))  # older exports: no key


def save_pretrained(model, tokenizer, run_dir: str | Path, task: dict | None = None) -> Path:
    """<run dir>/export: safetensors weights, config (with the label maps) and tokenizer,
    loadable with the matching AutoModelFor... class and no lmlab import. A peft model
    (objective.lora.export=adapter) writes its adapter instead of the weights, beside the
    config of the model it adapts: README.md (Fine-tuning, LoRA) says how to load it."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        if hasattr(model, "peft_config"):  # the task's config (label maps) beside the adapter
            model.get_base_model().config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if task is not None:
            write_json(task, folder / TASK_FILE)

    return write_dir(Path(run_dir) / "export", write, replace=True)
