"""Shared pytest fixtures."""

import importlib.util
import sys
from pathlib import Path

import pytest


def load_benchmark(name: str = "resume_exact"):
    """benchmarks/<name>.py as a module (resume_exact's `outcome` is what "bit-identical"
    compares: final weights' hash and logged losses)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def killed_and_rerun(launch, args: list[str], batch: int, root: Path) -> tuple[dict, dict]:
    """The outcomes (resume_exact's) of `args` run whole and of `args` killed by SIGKILL
    after `batch` (every process kills itself: also under DDP) then re-run, each run dir
    under `root`. `launch(overrides)` runs lmlab-train and returns its CompletedProcess."""
    bench = load_benchmark()
    kill = [f"+callbacks.kill._target_={bench.KILL_AT}", f"+callbacks.kill.batch={batch}"]
    kill.append("+callbacks.kill.how=sigkill")
    for name, extra in (("whole", []), ("killed", kill), ("killed", [])):
        proc = launch([*args, *extra, f"paths.run_dir={root / name}"])
        assert proc.returncode == (-9 if extra else 0), proc.stderr[-3000:]
    assert "resuming from" in proc.stdout  # the re-run continued the killed one
    return bench.outcome(root / "whole"), bench.outcome(root / "killed")


# ---------------------------------------------------------------- tiny tokenizers
# Used by test_objectives.py and test_tokenizers.py: a WordPiece (BERT) and a byte-level BPE
# (GPT-2) tokenizer trained in-process on a few hand-written documents. Training is
# deterministic, so every session sees the same vocabularies. No network access.

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps all day.",
    "Unbelievable things happen every day in the city. People walk quickly to work.",
    "A tokenizer splits words into pieces. Rare words become several pieces!",
    "Language models learn from unlabelled text. They predict the next word.",
    "Masked language modelling hides some tokens. The model guesses the hidden tokens.",
    "Rivers flow into the sea. Mountains rise above the clouds. Snow covers the peaks.",
    "The library opens at nine. Students read books and write notes quietly.",
    "Cats chase mice in the garden. Birds sing in the old oak tree?",
    "Trains leave the station on time. Passengers wait on the platform.",
    "Bakers make fresh bread every morning. The smell fills the street.",
]


@pytest.fixture(scope="session")
def tiny_corpus():
    return list(TINY_CORPUS)


@pytest.fixture(scope="session")
def tiny_wordpiece():
    """WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK]; small enough that long words split."""
    from lmlab.tokenizers import train_tokenizer

    return train_tokenizer(TINY_CORPUS * 3, "wordpiece", 160)


@pytest.fixture(scope="session")
def tiny_bpe():
    """Byte-level BPE with <|endoftext|>, as `tokenizers.train_tokenizer` returns it (no pad)."""
    from lmlab.tokenizers import train_tokenizer

    return train_tokenizer(TINY_CORPUS * 3, "bpe", 400)


# ---------------------------------------------------------------- end of tiny tokenizers


# ---------------------------------------------------------------- tiny training runs
# Used by test_train.py and test_cli.py: a small multi-document text file (60 paragraphs of
# three short sentences, separated by blank lines), one lmlab cache shared by the session
# (trained tokenizers and tokenized datasets are reused across runs), and the overrides that
# shrink any shipped experiment to a few seconds on 2 CPU cores. No network access.

TINY_WORDS = [
    *["the", "cat", "dog", "river", "mountain", "city", "people", "walk", "read", "write"],
    *["book", "tree", "bird", "sing", "morning", "bread", "station", "train", "quickly"],
    *["slowly", "under", "over", "green", "blue", "small", "large"],
]

# `++` adds or overrides, so these hold whatever the model presets currently set.
TINY_ARCH = {
    "bert": [
        "++model.config.hidden_size=32",
        "++model.config.num_hidden_layers=2",
        "++model.config.num_attention_heads=2",
        "++model.config.intermediate_size=64",
    ],
    "gpt2": ["++model.config.n_embd=32", "++model.config.n_layer=2", "++model.config.n_head=2"],
}


def tiny_corpus_text(paragraphs: int = 60, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(paragraphs):
        sentences = [
            " ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(5, 9))).capitalize() + "."
            for _ in range(3)
        ]
        docs.append(" ".join(sentences))
    return "\n\n".join(docs) + "\n"


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory):
    """~7 KB of text: 60 documents separated by blank lines."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(tiny_corpus_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def lmlab_cache_dir(tmp_path_factory):
    """One LMLAB_CACHE_DIR for the session's runs (never ~/.cache/lmlab)."""
    return tmp_path_factory.mktemp("lmlab-cache")


@pytest.fixture(scope="session")
def tiny_overrides(tiny_text_file):
    """tiny_overrides(model_type, steps=4) -> the overrides that make a run tiny: a 2-layer
    width-32 model, a 300-token vocabulary, the tiny file, blocks of 32 and batches of 4.
    debug=default caps the schedule of any experiment (composed after it); the step settings
    are given again so that tests can ask for more steps."""

    def overrides(model_type: str, steps: int = 4) -> list[str]:
        return [
            "debug=default",
            f"trainer.max_steps={steps}",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=2",
            *TINY_ARCH[model_type],
            "model.tokenizer.vocab_size=300",
            "data=files",
            f"data.train={tiny_text_file}",
            "data.max_length=32",
            "data.batch_size=4",
            "plots=false",  # ~1.5 s a run; tests/test_console.py's run draws them
        ]

    return overrides


# ---------------------------------------------------------------- end of tiny training runs


# ---------------------------------------------------------------- tiny task data
# Used by test_train.py to train every fine-tuning experiment a few steps: a labelled csv,
# a CoNLL file and a SQuAD file, each small and hand-made (no download).


def _tiny_sentiment_csv(path):
    rows = ["text,label"]
    for i in range(40):
        word = TINY_WORDS[i % len(TINY_WORDS)]
        rows.append(f"the {word} was good,positive" if i % 2 else f"a bad {word},negative")
    path.write_text("\n".join(rows) + "\n")


def _tiny_conll(path):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for i in range(30):
        a, b = TINY_WORDS[i % len(TINY_WORDS)], TINY_WORDS[(i + 3) % len(TINY_WORDS)]
        lines += ["Anna NNP B-NP B-PER", "walks VBZ B-VP O", "to TO B-PP O"]
        lines += [f"{a.title()} NNP B-NP B-LOC", f"{b.title()} NNP I-NP I-LOC", ". . O O", ""]
    path.write_text("\n".join(lines))


def _tiny_squad(path):
    import json

    paragraphs = []
    for i in range(30):  # 21 train questions: more than 4 steps of 4 in one epoch
        place = TINY_WORDS[i % len(TINY_WORDS)]
        context = f"The {place} is green. Anna lives near the {place} in the small city."
        question = {"id": f"q{i}", "question": "Who lives near it?"}
        question["answers"] = [{"text": "Anna", "answer_start": context.index("Anna")}]
        paragraphs.append({"context": context, "qas": [question]})
    articles = [{"title": f"t{k}", "paragraphs": paragraphs[k::3]} for k in range(3)]
    path.write_text(json.dumps({"version": "1.1", "data": articles}))


@pytest.fixture(scope="session")
def tiny_task_data(tmp_path_factory, tiny_text_file):
    """objective name -> the data overrides of a tiny run of that task."""
    folder = tmp_path_factory.mktemp("task-data")
    _tiny_sentiment_csv(folder / "sentiment.csv")
    _tiny_conll(folder / "ner.txt")
    _tiny_squad(folder / "squad.json")
    squad = ["data=files", f"data.train={folder / 'squad.json'}", "data.format=squad"]
    return {
        "sequence_classification": [
            "data=files", f"data.train={folder / 'sentiment.csv'}", "data.val_fraction=0.2"
        ],
        "token_classification": ["data=files", f"data.train={folder / 'ner.txt'}",
                                 f"data.test={folder / 'ner.txt'}", "data.format=conll",
                                 "data.val_fraction=0.2"],
        "extractive_qa": [*squad, "data.val_fraction=0.3", "data.max_length=48",
                          "objective.doc_stride=16"],
        "generative_qa": [*squad, "data.val_fraction=0.3", "data.max_length=64",
                          "objective.decoding.max_new_tokens=4"],
    }  # fmt: skip
