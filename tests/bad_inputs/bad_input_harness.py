"""The harness of tests/bad_inputs: a plain module, not a conftest.py, so that other tests'
`from conftest import ...` keeps finding tests/conftest.py.

Runs lmlab-train in this process (lmlab.cli.train.main with sys.argv patched), with its
output and cache dirs in tmp_path, and checks what a person sees of a bad input: exit 2,
one line on stderr, `lmlab-train: error: ...`, no traceback."""

import sys
import time
from dataclasses import dataclass


@dataclass
class Outcome:
    code: object
    lines: list[str]  # the non-empty stderr lines
    seconds: float

    @property
    def message(self) -> str:
        return self.lines[-1] if self.lines else ""

    def check(self, *needles: str) -> None:
        """Exit 2, exactly one stderr line, lmlab's, naming every needle; no traceback."""
        text = "\n".join(self.lines)
        assert self.code == 2, f"exit {self.code}: {text}"
        assert "Traceback" not in text, text
        assert len(self.lines) == 1, text
        assert self.message.startswith("lmlab-train: error: "), text
        for needle in needles:
            assert needle in self.message, f"{needle!r} not in {self.message!r}"


def make_runner(monkeypatch, capsys, tmp_path):
    """run(args) -> Outcome of `lmlab-train <args>` (each test module's lmlab_train fixture)."""
    import lmlab.cli.train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMLAB_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(args: list[str]) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["lmlab-train", *args])
        capsys.readouterr()
        start = time.perf_counter()
        try:
            lmlab.cli.train.main()
            code = 0
        except SystemExit as e:
            code = e.code
        seconds = time.perf_counter() - start
        err = capsys.readouterr().err
        return Outcome(code, [line for line in err.splitlines() if line.strip()], seconds)

    return run
