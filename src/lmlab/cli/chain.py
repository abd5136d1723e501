"""lmlab-chain: lmlab-train stages run one after the other, each stage after the first
starting from the export of the stage before it (model.name_or_path=<that export>).

    lmlab-chain "experiment=pretrain_bert" "experiment=finetune_sentiment model=bert_tiny"
"""

from __future__ import annotations

import shlex
import subprocess
import sys


def run_stage(overrides: list[str]) -> str:
    """Runs one lmlab-train, echoing its output; returns the export path it printed."""
    command = [sys.executable, "-m", "lmlab.cli.train", *overrides]
    export = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("export: "):
                export = line.removeprefix("export: ").strip()
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    if export is None:
        print("lmlab-chain: error: the stage wrote no export (export=false?)", file=sys.stderr)
        sys.exit(2)
    return export


def main(argv: list[str] | None = None) -> None:
    stages = sys.argv[1:] if argv is None else argv
    if not stages or stages[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if stages else 2)
    export = None
    for number, stage in enumerate(stages, 1):
        overrides = shlex.split(stage)
        if export:
            overrides.append(f"model.name_or_path={export}")
        print(f"lmlab-chain: stage {number}/{len(stages)}: lmlab-train {shlex.join(overrides)}")
        export = run_stage(overrides)


if __name__ == "__main__":
    main()
