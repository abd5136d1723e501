"""lmlab-eval: evaluate a trained model on one split and write its metrics as JSON.

usage: lmlab-eval <run dir|export|ckpt> [data=<preset or file>] [split=validation|test]
                  [data.max_eval_samples=N] [output=<file>] [<config key>=<value> ...]

A run dir or checkpoint brings its training config, so its own data is evaluated unless
data= names other data; an export needs data=. The whole split is evaluated (limit it
with data.max_eval_samples) on one device, with the same module and data pipeline as
training, so the metrics compare with the run's own. Default output: <run dir>/eval_<split>.json
(for an export outside a run dir or a checkpoint: <name>.eval_<split>.json beside it).
"""
# The evaluation itself is lmlab.run.evaluate: this module parses the command line and
# chooses where the metrics go.

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmlab.errors import LmlabError

SPLITS = ("validation", "test")


def parse(argv: list[str]) -> tuple[str, str, str | None, list[str]]:
    """-> (model path, split, output file or None, config overrides)."""
    from lmlab.cli.train import expand_data_path

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    path, split, output, overrides = argv[0], "validation", None, []
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key == "split":
            if value not in SPLITS:
                raise LmlabError(f"split: {value!r}; expected one of {', '.join(SPLITS)}")
            split = value
        elif key == "output":
            output = value
        else:
            overrides.append(arg)
    expanded = []
    for arg in overrides:  # data=<file> evaluates that file: it is the split (and train)
        shorthand = expand_data_path([arg])
        expanded += shorthand
        if len(shorthand) > 1:
            expanded.append(f"data.{split}={arg.partition('=')[2]}")
    return path, split, output, expanded


def default_output(stored, split: str) -> Path:
    name = f"eval_{split}.json"
    if stored.kind == "run":
        return stored.path / name
    if stored.kind == "export" and (stored.path.parent / "config.yaml").is_file():
        return stored.path.parent / name  # the export of a run dir
    stem = stored.path.stem if stored.kind == "ckpt" else stored.path.name
    return stored.path.parent / f"{stem}.{name}"


def main(argv: list[str] | None = None) -> None:
    from lmlab.fileutil import write_json

    try:
        path, split, output, overrides = parse(sys.argv[1:] if argv is None else argv)
        from lmlab.run import evaluate
        from lmlab.stored import locate

        stored = locate(path)
        output = Path(output) if output else default_output(stored, split)
        metrics = evaluate(stored, overrides, split)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics, output)
    except LmlabError as e:
        print(f"lmlab-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"lmlab-eval: wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
