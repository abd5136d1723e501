"""Captures the console of an lmlab-train command as a user sees it on a fresh machine (empty
lmlab cache, output dir and matplotlib cache): once with output to a pipe (CI, a log file),
once on a 100x40 pseudo-terminal (live bar), rendered as the screen shows it at the end.

    python benchmarks/console/capture.py finetune_sentiment_after \\
        lmlab-train experiment=finetune_sentiment debug=default

writes benchmarks/console/<name>.txt and <name>_tty.txt. The lmlab that runs is the one
the environment imports (PYTHONPATH=/work/main/src for the "before" captures).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen(raw: str) -> str:
    """What a terminal shows of `raw` at the end: a carriage return writes over its line
    from the first column; colours and other escape codes are dropped."""
    lines = []
    for line in ANSI.sub("", raw).split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown.rstrip())
    return "\n".join(lines).strip("\n") + "\n"


def run(command: list[str], tty: bool) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "LMLAB_OUTPUT_DIR"} | {
            "LMLAB_CACHE_DIR": f"{tmp}/cache",  # outputs/ in the (temporary) working dir
            "MPLCONFIGDIR": f"{tmp}/matplotlib",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        if not tty:
            done = subprocess.run(
                command, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            return done.stdout.decode()
        typescript = Path(tmp) / "typescript"
        inner = f"stty cols 100 rows 40; {shlex.join(command)}"
        subprocess.run(
            ["script", "-q", "-c", inner, str(typescript)],
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        text = typescript.read_bytes().decode(errors="replace")  # carriage returns kept
        lines = text.split("\n")
        return "\n".join(line for line in lines if not line.startswith("Script "))  # its own


def main() -> None:
    name, command = sys.argv[1], sys.argv[2:]
    for tty, suffix in ((False, ""), (True, "_tty")):
        text = run(command, tty)
        (HERE / f"{name}{suffix}.txt").write_text(screen(text))
        print(f"wrote {HERE / f'{name}{suffix}.txt'}")


if __name__ == "__main__":
    main()
