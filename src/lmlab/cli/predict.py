"""lmlab-predict: run a trained model on new inputs, one JSON line out per input.

    lmlab-predict outputs/finetune_sentiment/1a2b3c4d "a gripping film" "dull and long"
    lmlab-predict <export> --input questions.jsonl --output answers.jsonl
    lmlab-predict <run dir> "ROMEO:" --set decoding.max_new_tokens=20

Positional texts become {"text": ...} rows; JSONL rows carry the task's canonical columns
(e.g. question + context for QA, prompt for generation). Argument parsing imports nothing
heavy, so --help is instant.
"""

from __future__ import annotations

import argparse
import sys

from lmlab.errors import LmlabError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmlab-predict",
        description=__doc__.split("\n\n")[0],
        epilog="Outputs follow the inputs' order, one JSON object per line.",
    )
    p.add_argument("model", help="an lmlab run dir or export (a run dir stands for its export)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="inputs, each a {'text': TEXT} row")
    p.add_argument("--input", metavar="FILE", help="JSONL input rows ('-': stdin)")
    p.add_argument(
        "--output", metavar="FILE", help="JSONL output, written atomically (default: stdout)"
    )
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an objective setting, e.g. decoding.max_new_tokens=20 (repeatable)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    return p


def run(args: argparse.Namespace) -> None:
    from lmlab.predict import predict, read_jsonl, write_jsonl
    from lmlab.run import load

    if bool(args.texts) == bool(args.input):
        raise LmlabError("inputs: give either TEXT arguments or --input FILE (not both)")
    if args.batch_size < 1:
        raise LmlabError(f"--batch-size: {args.batch_size}; expected at least 1")
    rows = read_jsonl(args.input) if args.input else [{"text": t} for t in args.texts]
    quiet()
    trained = load(args.model, [f"objective.{s}" for s in args.set], device=device(args.device))
    outputs = predict(trained.objective, trained.model, rows, args.batch_size)
    write_jsonl(outputs, args.output)


def quiet() -> None:
    """No progress bars for loading and tokenizing: stdout may be the output."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        run(args)
    except LmlabError as e:
        print(f"lmlab-predict: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
