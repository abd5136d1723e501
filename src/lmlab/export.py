"""The run's export: a Hugging Face directory that outlives lmlab."""

from __future__ import annotations

from pathlib import Path

from lmlab.fileutil import write_dir


def save_pretrained(model, tokenizer, run_dir: str | Path) -> Path:
    """<run dir>/export: safetensors weights, config and tokenizer, loadable with the
    matching AutoModelFor... class and no lmlab import."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_dir(Path(run_dir) / "export", write, replace=True)
