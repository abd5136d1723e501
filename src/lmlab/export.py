"""The run's export: a Hugging Face directory that outlives lmlab."""

from __future__ import annotations

from pathlib import Path

from lmlab.fileutil import write_dir, write_json

TASK_FILE = "lmlab.json"  # the objective and its settings, for lmlab-eval / lmlab-predict


def is_lmlab_export(path: str | Path | None) -> bool:
    return bool(path) and (Path(path).expanduser() / TASK_FILE).is_file()


def save_pretrained(model, tokenizer, run_dir: str | Path, task: dict | None = None) -> Path:
    """<run dir>/export: safetensors weights, config (with the label maps) and tokenizer,
    loadable with the matching AutoModelFor... class and no lmlab import."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if task is not None:
            write_json(task, folder / TASK_FILE)

    return write_dir(Path(run_dir) / "export", write, replace=True)
