"""Every bad input of tests/bad_inputs/, as a person sees it: the one line lmlab-train prints
and how long it took to say so.

python benchmarks/bad_inputs.py            # the configs and overrides, then the data files
python benchmarks/bad_inputs.py --configs  # only the configs and overrides

Each case runs lmlab-train in this process (lmlab.cli.train.main, as the tests do), with its
output and cache dirs in a temporary directory; seconds are wall-clock from the call to the
exit (the first data case also pays for importing torch, transformers and lightning).
Prints a markdown table: case, exit code, stderr lines, seconds, the message.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cases(name: str):
    sys.path.insert(0, str(ROOT / "tests" / "bad_inputs"))  # their harness module
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "bad_inputs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args: list[str]) -> tuple[object, list[str], float]:
    import lmlab.cli.train

    sys.argv = ["lmlab-train", *args]
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            lmlab.cli.train.main()
            code = 0
        except SystemExit as e:
            code = e.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, lines, time.perf_counter() - start


def config_rows(tmp: Path):
    module = _cases("test_bad_configs.py")
    (tmp / "conf" / "experiment").mkdir(parents=True)
    (tmp / "conf" / "experiment" / "broken.yaml").write_text("foo: [1, 2\nbar: 3\n")
    (tmp / "afile").write_text("a file\n")
    for case, (args, _) in module.CASES.items():
        yield case, run([a.replace("{tmp}", str(tmp)) for a in args])


def data_rows(tmp: Path):
    module = _cases("test_bad_data.py")
    for n, case in enumerate(module.CASES):
        where = tmp / f"data{n}"
        where.mkdir()
        args, _ = module._files(case, where)
        yield case, run([*args, "trainer.max_steps=2", "model.tokenizer.vocab_size=200"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", action="store_true", help="only configs and overrides")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)
        os.environ["LMLAB_OUTPUT_DIR"] = str(tmp / "outputs")
        os.environ["LMLAB_CACHE_DIR"] = str(tmp / "cache")
        groups = [("config", config_rows(tmp))]
        if not options.configs:
            groups.append(("data", data_rows(tmp)))
        print("| kind | case | exit | lines | seconds | message |")
        print("|---|---|---|---|---|---|")
        worst = {}
        for kind, rows in groups:
            for case, (code, lines, seconds) in rows:
                message = (lines[-1] if lines else "").replace(str(tmp), "<tmp>")
                message = message.replace("|", "\\|")
                print(f"| {kind} | {case} | {code} | {len(lines)} | {seconds:.2f} | {message} |")
                worst[kind] = max(worst.get(kind, 0.0), seconds)
        print()
        for kind, seconds in worst.items():
            print(f"slowest {kind} case: {seconds:.2f} s")


if __name__ == "__main__":
    main()
