"""The one atomic writer of lmlab: every run, sweep and report file is complete or absent, so
a killed run never leaves a half-written result.

write_file(path, write) is the core (write(tmp) on a temporary name beside `path`, then a
rename); write_text, write_json and write_new (create once, first writer wins) are built on
it, and write_dir does the same for a whole folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _temporary(path: Path) -> Path:
    """A hidden name beside `path`, unique to this process, with the same suffix (so that
    writers that infer the format from the name, like fig.savefig, see the real one)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def write_file(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Calls write(tmp) on a temporary file beside `path`, then renames it to `path` (replacing
    what was there). On an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(data: dict, path: str | Path, sort_keys: bool = True) -> Path:
    """`data` as indented JSON; `sort_keys=False` keeps the order of `data`."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def write_new(path: str | Path, text: str) -> bool:
    """Writes `path` only if it does not exist yet: of processes racing to create it (DDP
    ranks starting together), exactly one wins and the others keep its file. True when this
    call created it."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, path)  # atomic, and fails where `path` exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def write_dir(path: str | Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Calls write(tmp) on a fresh folder beside `path`, then renames it to `path`. Without
    `replace`, when another process got there first, its folder is kept and ours dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # made as any folder of the user's is (0777 less the umask), not 0700 as mkdtemp makes it
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
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
