"""Every lmlab command shown in README.md and docs/*.md works (issue 12 item 1).

Each `lmlab-*` command is taken from the docs: fenced lines at a shell prompt and inline code
that starts with one. Placeholders stand for tiny real files made in the test's working dir
(`corpus.txt`, `reviews.csv`, `outputs/<name>/<hash>`: a directory literally named so). In
the default suite every lmlab-train command (and every stage of an lmlab-chain) is checked as
lmlab-train checks it before running (composed and validated: a bad key, value or option
fails), and the arguments of lmlab-eval, -predict and -report parse. The slow suite trains the
ones this machine can run, under debug=default, then evaluates, predicts and reports on what
they wrote (docs/README commands with `<hash>` point at those runs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import tiny_corpus_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = ("train", "chain", "eval", "predict", "report")
# a command at the start of a shell line: after a prompt, `&&`, env assignments or a wrapper
TOOL = "lmlab-(?:" + "|".join(TOOLS) + ")"
AT_PROMPT = re.compile(rf"(?:^|\$ |&& |--no-python |srun |exec )(?:[A-Z_]+=\S+ )*({TOOL}(?: .*)?)$")
INLINE = re.compile(rf"`({TOOL} [^`]*)`")
# commands that need what this machine has not: GPUs, the hub, a SLURM cluster, an API key
NEEDS_ELSEWHERE = re.compile(
    r"trainer=(gpu|fsdp|deepspeed)|accelerator=gpu|submitit_slurm|model=hf|data=hub|WANDB_API"
    r"|offline=false"
)


class Command(NamedTuple):
    where: str  # file:line
    argv: list[str]
    error: str | None  # the `lmlab-...: error: ...` line the docs show under it, if any


def doc_commands() -> list[Command]:
    """Every lmlab command in the docs, `...` kept as a token."""
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        in_block, pending, start = False, "", 0
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if in_block:
                if not pending:
                    start = number
                pending += line
                if pending.endswith("\\"):  # a command continued on the next line
                    pending = pending[:-1] + " "
                    continue
                match = AT_PROMPT.search(pending.strip())
                pending = ""
                if match:
                    after = lines[number] if number < len(lines) else ""
                    error = after if re.match(r"lmlab-\w+: error: ", after) else None
                    found.append(Command(f"{doc.name}:{start}", argv_of(match.group(1)), error))
            else:
                for text in INLINE.findall(line):
                    found.append(Command(f"{doc.name}:{number}", argv_of(text), None))
    return found


HASH, HASH2 = "0a1b2c3d", "4e5f6a7b"  # run dirs' names: `<hash>`, `<hash2>` in the docs
PLACEHOLDERS = {
    "<hash>": HASH,
    "<hash2>": HASH2,
    "<name>": "train",
    "<sweep dir>": f"outputs/multirun/train/{HASH}",
}


def argv_of(command: str) -> list[str]:
    """The words of one command, placeholders filled in; shell comments and anything after
    `&&` dropped."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    words = shlex.split(command, comments=True)
    return words[: words.index("&&")] if "&&" in words else words


COMMANDS = doc_commands()


def train_args(argv: list[str]) -> list[str]:
    """lmlab-train's arguments, `...` (the rest of some command) as the quickstart."""
    return [("experiment=quickstart" if a == "..." else a) for a in argv]


def stages(argv: list[str]) -> list[list[str]]:
    """The lmlab-train arguments a documented command runs (a chain: each stage's)."""
    if argv[0] == "lmlab-train":
        return [train_args(argv[1:])]
    if argv[0] == "lmlab-chain":
        return [shlex.split(stage) for stage in argv[1:]]
    return []


# ---------------------------------------------------------------- the files the docs name

CORPUS = tiny_corpus_text(paragraphs=800)  # enough for a few blocks of 128 tokens to validate
# README's own CSV: ';'-separated, Latin-1
REVIEWS = "review;sentiment\n" + "".join(
    f"{text} {i};{label}\n"
    for i in range(12)
    for text, label in [("a gripping café", "positive"), ("dull", "negative"), ("fine", "neutral")]
)


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory, lmlab_cache_dir) -> Path:
    """A working dir holding every file the docs' commands name."""
    home = tmp_path_factory.mktemp("docs")
    files = {
        "corpus.txt": CORPUS,
        "notes.txt": CORPUS,
        "path/to/corpus.txt": CORPUS,
        "path/to/valid.txt": CORPUS,
        **{f"corpus/{n}.txt": tiny_corpus_text(6, seed=n) for n in range(48)},  # 2+ to validate
        "notes.jsonl": "".join(json.dumps({"body": p}) + "\n" for p in CORPUS.split("\n\n")),
        "mine.tsv": "text\tlabel\n" + "a gripping film\tpositive\ndull\tnegative\n" * 8,
        "questions.jsonl": '{"question": "Who?", "context": "Ann wrote it."}\n',
    }
    for name, text in files.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
    for name in ("reviews.csv", "reviews_dev.csv"):
        (home / name).write_text(REVIEWS, encoding="latin-1")
    from transformers import BertConfig  # the export of an earlier pre-training run

    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2).save_pretrained(
        home / "outputs" / "pretrain_bert" / HASH / "export"
    )
    return home


@pytest.fixture
def in_docs_dir(docs_dir, monkeypatch, lmlab_cache_dir):
    monkeypatch.chdir(docs_dir)
    monkeypatch.setenv("LMLAB_OUTPUT_DIR", str(docs_dir / "outputs"))
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    return docs_dir


def test_the_docs_commands_are_found():
    tools = {c.argv[0] for c in COMMANDS}
    assert tools == {f"lmlab-{t}" for t in TOOLS}
    own_data = ["lmlab-train", "experiment=pretrain_mlm", "data=files", "data.train=notes.jsonl"]
    assert own_data + ["data.columns.text=body"] in [c.argv for c in COMMANDS]
    assert len(COMMANDS) > 60
    assert sum(c.error is not None for c in COMMANDS) >= 2


def test_every_documented_lmlab_train_command_is_accepted(in_docs_dir):
    """Composed and validated as lmlab-train does before it runs anything."""
    from lmlab.cli.precheck import check_command
    from lmlab.cli.train import expand_data_path
    from lmlab.errors import LmlabError

    failures = []
    for where, argv, error in COMMANDS:
        for args in stages(argv) if error is None else []:
            try:
                check_command(expand_data_path(args))
            except (LmlabError, SystemExit) as e:
                failures.append(f"{where}: {shlex.join(argv)}: {e}")
    assert not failures, "\n".join(failures)


def lmlab(argv: list[str], cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1", **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_errors_the_docs_show_are_the_ones_printed(in_docs_dir):
    """A documented lmlab-train mistake prints the line the docs show under it, exit 2.
    (The lmlab-predict transcripts in README.md run on tests/test_untrusted.py's files.)"""
    shown = [c for c in COMMANDS if c.error and c.argv[0] == "lmlab-train"]
    assert shown
    for where, argv, error in shown:
        run = lmlab(train_args(argv), in_docs_dir)
        assert (run.returncode, run.stderr.strip()) == (2, error), where


def test_every_documented_eval_predict_and_report_command_parses():
    from lmlab.cli import eval, predict, report
    from lmlab.errors import LmlabError

    parsers = {
        "lmlab-eval": eval.parse,
        "lmlab-predict": predict.parser().parse_args,
        "lmlab-report": report.parse_args,
    }
    failures = []
    for where, argv, _ in COMMANDS:
        if argv[0] in parsers:
            try:
                parsers[argv[0]](argv[1:])
            except (LmlabError, SystemExit) as e:
                failures.append(f"{where}: {shlex.join(argv)}: {e}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- slow: run them

DATA_DIR = Path(os.environ.get("LMLAB_DATA_DIR", ROOT.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "sst2").is_dir(), reason=f"the shared data is not in {DATA_DIR}"
)


def runnable(command: Command) -> bool:
    """Trains here: no GPU, hub, cluster or API key needed, not a documented mistake."""
    return (
        command.argv[0] in ("lmlab-train", "lmlab-chain")
        and command.error is None
        and "--cfg" not in command.argv
        and not NEEDS_ELSEWHERE.search(" ".join(command.argv))
        and "data=litdata" not in command.argv  # after its optimize step: test_streaming.py
    )


def short(argv: list[str]) -> list[str]:
    """A documented command cut to a few steps (debug=default), a search to 2 trials."""
    if argv[0] == "lmlab-chain":
        return [argv[0], *(f"{stage} debug=default" for stage in argv[1:])]
    args = [*train_args(argv[1:]), "debug=default"]
    if any(a.startswith("hparams_search=") for a in args):
        args.append("hydra.sweeper.n_trials=2")
    return [argv[0], *args]


RUNNABLE = list({shlex.join(c.argv): c for c in COMMANDS if runnable(c)}.values())


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("command", RUNNABLE, ids=[c.where for c in RUNNABLE])
def test_every_documented_training_command_trains(command, docs_dir, lmlab_cache_dir):
    for name in re.findall(rf"outputs/(\w+)/{HASH}", " ".join(command.argv)):
        if not (docs_dir / "outputs" / name / HASH / "export" / "model.safetensors").is_file():
            shutil.rmtree(docs_dir / "outputs" / name / HASH, ignore_errors=True)  # config only
            finished(docs_dir, lmlab_cache_dir, [f"experiment={name}"], f"outputs/{name}/{HASH}")
    run = lmlab(short(command.argv), docs_dir, **run_env(docs_dir, lmlab_cache_dir))
    assert run.returncode == 0, f"{shlex.join(short(command.argv))}\n{run.stderr[-3000:]}"


def run_env(docs_dir: Path, cache_dir: Path) -> dict:
    return {
        "LMLAB_OUTPUT_DIR": str(docs_dir / "outputs"),
        "LMLAB_CACHE_DIR": str(cache_dir),
        "LMLAB_DATA_DIR": str(DATA_DIR),
    }


def finished(docs_dir: Path, cache_dir: Path, train: list[str], *links: str) -> Path:
    """Trains `train` (a run, or a sweep with -m) and makes each of `links` (paths under
    docs_dir such as outputs/finetune_sentiment/<HASH>) stand for it, as the docs' `<hash>`
    does; returns its run (sweep) dir."""
    run = lmlab(["lmlab-train", *train, "debug=default"], docs_dir, **run_env(docs_dir, cache_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    name = next(a.split("=")[1] for a in train if a.startswith("experiment="))
    parent = docs_dir / "outputs" / ("multirun" if "-m" in train else "") / name
    made = max((p for p in parent.iterdir() if not p.is_symlink()), key=lambda p: p.stat().st_mtime)
    for link in links:
        (docs_dir / link).parent.mkdir(parents=True, exist_ok=True)
        (docs_dir / link).unlink(missing_ok=True)
        (docs_dir / link).symlink_to(made)
    return made


@pytest.mark.slow
@needs_data
def test_every_documented_eval_predict_and_report_command_runs(docs_dir, lmlab_cache_dir):
    sentiment = [f"outputs/finetune_sentiment/{HASH}", f"outputs/train/{HASH}"]
    finished(docs_dir, lmlab_cache_dir, ["experiment=finetune_sentiment"], *sentiment)
    again = [f"outputs/finetune_sentiment/{HASH2}", f"outputs/train/{HASH2}"]
    finished(docs_dir, lmlab_cache_dir, ["experiment=finetune_sentiment", "seed=2"], *again)
    for experiment in ("finetune_ner", "finetune_qa_extractive"):
        finished(
            docs_dir, lmlab_cache_dir, [f"experiment={experiment}"], f"outputs/{experiment}/{HASH}"
        )
    sweep = ["-m", "experiment=finetune_sentiment", "objective.lr=1e-4,3e-4"]
    links = [f"outputs/multirun/finetune_sentiment/{HASH}", f"outputs/multirun/train/{HASH}"]
    finished(docs_dir, lmlab_cache_dir, sweep, *links)
    failures = []
    for where, argv, error in COMMANDS:
        if argv[0] in ("lmlab-eval", "lmlab-predict", "lmlab-report") and error is None:
            if not (docs_dir / argv[1]).exists():  # README's transcript of test_untrusted.py files
                continue
            run = lmlab(argv, docs_dir, **run_env(docs_dir, lmlab_cache_dir))
            if run.returncode != 0:
                failures.append(f"{where}: {shlex.join(argv)}\n{run.stderr[-2000:]}")
    assert not failures, "\n".join(failures)
