"""Writes that are complete or absent: a killed run never leaves a half-written result."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_dir(path: str | Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Calls write(tmp) on a fresh folder beside `path`, then renames it to `path`. Without
    `replace`, when another process got there first, its folder is kept and ours dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        write(tmp)
        if replace:
            shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    except OSError:
        if replace or not path.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_json(data: dict, path: str | Path) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
