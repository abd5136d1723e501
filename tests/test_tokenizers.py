"""Tests for lmlab.tokenizers: trained WordPiece / byte-level BPE and the on-disk cache."""

import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

import lmlab.tokenizers
from lmlab.config import ModelConfig, TokenizerConfig
from lmlab.errors import LmlabError
from lmlab.tokenizers import _learn_merges, load_or_train, train_tokenizer

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def model_cfg(model_type: str, vocab_size: int, **tokenizer):
    return OmegaConf.structured(
        ModelConfig(
            name="tiny",
            model_type=model_type,
            tokenizer=TokenizerConfig(vocab_size=vocab_size, **tokenizer),
        )
    )


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- WordPiece


def test_wordpiece_has_the_bert_special_tokens(tiny_wordpiece):
    tok = tiny_wordpiece
    assert tok.pad_token == "[PAD]"
    assert tok.unk_token == "[UNK]"
    assert tok.cls_token == "[CLS]"
    assert tok.sep_token == "[SEP]"
    assert tok.mask_token == "[MASK]"
    special_ids = tok.convert_tokens_to_ids(BERT_SPECIALS)
    assert len(set(special_ids)) == 5
    vocab = tok.get_vocab()
    assert all(vocab[t] == i for t, i in zip(BERT_SPECIALS, special_ids))
    assert sorted(tok.all_special_ids) == sorted(special_ids)


def test_wordpiece_vocab_size_and_word_pieces(tiny_wordpiece):
    tok = tiny_wordpiece
    assert len(tok) <= 160
    pieces = tok.convert_ids_to_tokens(ids(tok, "unbelievable"))
    assert len(pieces) > 1  # a rare word is split ...
    assert not pieces[0].startswith("##")
    assert all(p.startswith("##") for p in pieces[1:])  # ... into a start and continuations


def test_wordpiece_single_is_cls_text_sep(tiny_wordpiece):
    tok = tiny_wordpiece
    enc = tok("the dog sleeps")
    assert enc["input_ids"] == [tok.cls_token_id, *ids(tok, "the dog sleeps"), tok.sep_token_id]
    assert enc["token_type_ids"] == [0] * len(enc["input_ids"])


def test_wordpiece_pair_is_cls_a_sep_b_sep_with_segment_ids(tiny_wordpiece):
    tok = tiny_wordpiece
    a, b = ids(tok, "the quick fox"), ids(tok, "birds sing in the tree")
    enc = tok("the quick fox", "birds sing in the tree")
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert enc["input_ids"] == [cls, *a, sep, *b, sep]
    assert enc["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert enc["attention_mask"] == [1] * (len(a) + len(b) + 3)


def test_wordpiece_lowercases_by_default(tiny_wordpiece):
    assert ids(tiny_wordpiece, "THE Quick DOG") == ids(tiny_wordpiece, "the quick dog")


def test_wordpiece_without_lowercase_keeps_case(tiny_corpus):
    tok = train_tokenizer(tiny_corpus, "wordpiece", 200, min_frequency=1, lowercase=False)
    assert ids(tok, "The") != ids(tok, "the")


# ---------------------------------------------------------------- byte-level BPE


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Unseen words: zyxwvut, qqqq!",
        "  leading and  double  spaces, trailing ",
        "new\nlines\n\nand\ttabs",
        "Ünïcödé — naïve café 🙂 日本語",
        "",
    ],
)
def test_bpe_round_trips_text(tiny_bpe, text):
    assert tiny_bpe.decode(tiny_bpe(text)["input_ids"]) == text


def test_bpe_has_end_of_text_and_no_token_type_ids(tiny_bpe):
    assert tiny_bpe.eos_token == "<|endoftext|>"
    assert tiny_bpe.bos_token == "<|endoftext|>"
    assert tiny_bpe.eos_token_id is not None
    assert "token_type_ids" not in tiny_bpe("the dog")
    assert len(tiny_bpe) <= 400


def test_bpe_does_not_lowercase(tiny_bpe):
    assert tiny_bpe("The")["input_ids"] != tiny_bpe("the")["input_ids"]


def test_train_rejects_unknown_kind(tiny_corpus):
    with pytest.raises(LmlabError, match="unigram"):
        train_tokenizer(tiny_corpus, "unigram", 100)


def test_train_rejects_a_corpus_too_small():
    with pytest.raises(LmlabError, match="too small"):
        train_tokenizer(["a"], "wordpiece", 100)


# ---------------------------------------------------------------- determinism

TRAIN_AND_SAVE = """
import sys
from lmlab.tokenizers import train_tokenizer
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
for kind, size in (("wordpiece", 300), ("bpe", 400)):
    tok = train_tokenizer(texts, kind, size, min_frequency=1)
    tok.backend_tokenizer.save(f"{sys.argv[2]}/{kind}.json")
"""


def tie_rich_corpus() -> str:
    """A few hundred made-up words of few letters, each 1-3 times: many equal pair counts."""
    rng = random.Random(0)
    syllables = ["ka", "to", "Ri", "an", "el", "mu", "so", "pe", "in", "or", "ü", "é,"]
    words = list(
        dict.fromkeys("".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(600))
    )
    lines = [" ".join(rng.sample(words, 8)) for _ in range(len(words) // 4)]
    return "\n".join(lines + words) + "\n"


def test_training_gives_the_same_tokenizer_json_in_every_process(tmp_path):
    """Upstream's trainers break count ties in hash-map order (huggingface/tokenizers#1794);
    three processes with different hash seeds must write identical files."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tie_rich_corpus(), encoding="utf-8")
    runs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        command = [sys.executable, "-c", TRAIN_AND_SAVE, str(corpus), str(out)]
        runs.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, errors = run.communicate(timeout=120)  # reads stderr: a full pipe would block
        assert run.returncode == 0, errors
    for kind in ("wordpiece", "bpe"):
        first, *others = [(tmp_path / seed / f"{kind}.json").read_bytes() for seed in "123"]
        assert all(other == first for other in others), kind


def test_a_count_tie_goes_to_the_pair_with_the_older_tokens():
    # a=1 b=2 c=3 d=4 (code point order after the special). (a, b) merges first (6) into ab=5;
    # then (ab, c) and (b, d) both count 2: ids (2, 4) < (5, 3), so bd comes before abc.
    counts = {"ab": 4, "abc": 2, "bd": 2}
    vocab, merges = _learn_merges(counts, 8, 1, ["[S]"], (), "")
    assert list(vocab) == ["[S]", "a", "b", "c", "d", "ab", "bd", "abc"]
    assert list(vocab.values()) == list(range(8))
    assert merges == [("a", "b"), ("b", "d"), ("ab", "c")]
    reversed_counts = dict(reversed(list(counts.items())))  # the order words came in is moot
    assert _learn_merges(reversed_counts, 8, 1, ["[S]"], (), "") == (vocab, merges)
    assert list(_learn_merges(counts, 7, 1, ["[S]"], (), "")[0]) == list(vocab)[:7]
    assert _learn_merges(counts, 8, 3, ["[S]"], (), "")[1] == [("a", "b")]  # min_frequency 3


def test_wordpiece_ties_use_continuation_tokens_in_code_point_order():
    # Every character is a token, then '##' + each one seen inside a word, in code point order
    # (upstream adds the latter in hash order): ##b=5 ##c=6 ##d=7.
    vocab, merges = _learn_merges({"ab": 4, "abc": 2, "bd": 2}, 11, 1, ["[S]"], (), "##")
    assert list(vocab) == [
        *["[S]", "a", "b", "c", "d", "##b", "##c", "##d"],
        *["ab", "bd", "abc"],  # (b, ##d) = (2, 7) wins the tie with (ab, ##c) = (8, 6)
    ]
    assert merges == [("a", "##b"), ("b", "##d"), ("ab", "##c")]


def test_train_reads_texts_once(tiny_corpus):
    once = train_tokenizer(iter(tiny_corpus * 3), "bpe", 300)
    assert once.get_vocab() == train_tokenizer(tiny_corpus * 3, "bpe", 300).get_vocab()


# ---------------------------------------------------------------- load_or_train: pretrained


@pytest.mark.parametrize(
    "settings, tokenizer_path, trust",
    [
        ({}, None, False),
        ({"trust_remote_code": False}, None, False),
        ({"trust_remote_code": True}, None, True),
        ({"trust_remote_code": True}, "other/tokenizer", True),  # tokenizer.name_or_path
    ],
)
def test_a_pretrained_tokenizer_gets_the_models_trust_remote_code(
    monkeypatch, tmp_path, settings, tokenizer_path, trust
):
    import transformers

    calls = []

    def from_pretrained(source, **kwargs):
        calls.append((source, kwargs))
        return SimpleNamespace(pad_token="[PAD]")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    cfg = model_cfg("bert", 150, name_or_path=tokenizer_path)
    cfg.name_or_path, cfg.config = "some/model", settings

    load_or_train(cfg, [], "fp", tmp_path)
    assert calls == [(tokenizer_path or "some/model", {"trust_remote_code": trust})]


# ---------------------------------------------------------------- load_or_train: cache


@pytest.fixture
def count_training(monkeypatch):
    """Wraps lmlab.tokenizers.train_tokenizer; the returned list grows by one per training."""
    calls = []
    real = lmlab.tokenizers.train_tokenizer

    def counting(*args, **kwargs):
        calls.append(kwargs.get("kind"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lmlab.tokenizers, "train_tokenizer", counting)
    return calls


def cached_dirs(cache: Path) -> list[Path]:
    return sorted((cache / "tokenizers").iterdir())


@pytest.mark.parametrize("model_type,kind", [("bert", "wordpiece"), ("gpt2", "bpe")])
def test_load_or_train_trains_once_per_fingerprint(
    tmp_path, tiny_corpus, count_training, model_type, kind
):
    cfg = model_cfg(model_type, 300 if kind == "bpe" else 150)
    first = load_or_train(cfg, tiny_corpus, "corpus-v1", tmp_path)
    assert count_training == [kind]
    assert len(cached_dirs(tmp_path)) == 1

    second = load_or_train(cfg, tiny_corpus, "corpus-v1", tmp_path)
    assert count_training == [kind]  # loaded from the cache, not trained again
    assert second.get_vocab() == first.get_vocab()

    load_or_train(cfg, tiny_corpus, "corpus-v2", tmp_path)
    assert count_training == [kind, kind]  # another corpus: trained again
    assert len(cached_dirs(tmp_path)) == 2
    assert not list((tmp_path / "tokenizers").glob("*.tmp"))  # no half-written entry left


def test_load_or_train_does_not_read_texts_on_a_cache_hit(tmp_path, tiny_corpus, monkeypatch):
    cfg = model_cfg("bert", 150)
    load_or_train(cfg, tiny_corpus, "fp", tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache holds this tokenizer")

    def unreadable():
        raise AssertionError("texts read although the cache holds this tokenizer")
        yield  # pragma: no cover

    monkeypatch.setattr(lmlab.tokenizers, "train_tokenizer", no_training)
    tok = load_or_train(cfg, unreadable(), "fp", tmp_path)
    assert tok.mask_token == "[MASK]"

    with pytest.raises(AssertionError, match="trained again"):
        load_or_train(cfg, tiny_corpus, "other-fp", tmp_path)


def test_load_or_train_survives_another_process_saving_the_same_entry_first(
    tmp_path, tiny_corpus, monkeypatch
):
    cfg = model_cfg("bert", 150)
    real = lmlab.tokenizers.train_tokenizer

    def slow_training(*args, **kwargs):
        tok = real(*args, **kwargs)
        # while this process trained, another one built and saved the same cache entry
        monkeypatch.setattr(lmlab.tokenizers, "train_tokenizer", real)
        load_or_train(cfg, tiny_corpus, "fp", tmp_path)
        return tok

    monkeypatch.setattr(lmlab.tokenizers, "train_tokenizer", slow_training)
    tok = load_or_train(cfg, tiny_corpus, "fp", tmp_path)
    assert tok.mask_token == "[MASK]"
    assert len(cached_dirs(tmp_path)) == 1


def test_load_or_train_retrains_when_the_trainer_version_changes(
    tmp_path, tiny_corpus, count_training, monkeypatch
):
    """A tokenizer cached by an older trainer (e.g. upstream's, not deterministic) is not reused."""
    load_or_train(model_cfg("bert", 150), tiny_corpus, "fp", tmp_path)
    monkeypatch.setattr(lmlab.tokenizers, "TRAINER_VERSION", lmlab.tokenizers.TRAINER_VERSION + 1)
    load_or_train(model_cfg("bert", 150), tiny_corpus, "fp", tmp_path)
    assert len(count_training) == 2
    assert len(cached_dirs(tmp_path)) == 2


def test_load_or_train_retrains_when_a_setting_changes(tmp_path, tiny_corpus, count_training):
    load_or_train(model_cfg("bert", 150), tiny_corpus, "fp", tmp_path)
    load_or_train(model_cfg("bert", 120), tiny_corpus, "fp", tmp_path)
    load_or_train(model_cfg("bert", 150, lowercase=False), tiny_corpus, "fp", tmp_path)
    assert len(count_training) == 3
    assert len(cached_dirs(tmp_path)) == 3


def test_saved_wordpiece_loads_with_auto_tokenizer(tmp_path, tiny_corpus):
    from transformers import AutoTokenizer

    built = load_or_train(model_cfg("bert", 150), tiny_corpus, "fp", tmp_path)
    (path,) = cached_dirs(tmp_path)
    assert (path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(path)
    assert loaded.get_vocab() == built.get_vocab()
    for name, token in zip(
        ["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"], BERT_SPECIALS
    ):
        assert getattr(loaded, name) == token
    a, b = ids(loaded, "the lazy dog"), ids(loaded, "cats chase mice")
    enc = loaded("the lazy dog", "cats chase mice")
    assert enc["input_ids"] == [loaded.cls_token_id, *a, loaded.sep_token_id, *b] + [
        loaded.sep_token_id
    ]
    assert enc["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_saved_bpe_loads_with_auto_tokenizer_and_load_or_train_sets_pad(tmp_path, tiny_corpus):
    from transformers import AutoTokenizer

    built = load_or_train(model_cfg("gpt2", 300), tiny_corpus, "fp", tmp_path)
    assert built.pad_token == built.eos_token == "<|endoftext|>"  # GPT-style: pad = eos
    (path,) = cached_dirs(tmp_path)
    loaded = AutoTokenizer.from_pretrained(path)
    assert loaded.get_vocab() == built.get_vocab()
    assert loaded.eos_token == "<|endoftext|>"
    text = "Trains leave the station — on time!\n"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
