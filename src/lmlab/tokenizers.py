"""Tokenizers: the pretrained one of a model, or one trained on the run's training corpus
(WordPiece for BERT-style models, byte-level BPE for GPT-style), cached by a fingerprint
of corpus + settings so that a second run does not train it again.

load_or_train(model_cfg, texts, fingerprint, cache_dir): the tokenizer a run uses;
sample(dataset, sample_mb, seed): the documents a tokenizer is trained on (a large corpus:
a seeded sample, so that training takes bounded time and memory);
train_tokenizer(texts, kind, vocab_size): trains one (deterministic merges, `_learn_merges`);
with_pad_token(tokenizer): the one pad-token fallback (GPT-style tokenizers pad with
end-of-text), for tokenizers loaded from anywhere."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.fileutil import write_dir

# In the cache key: a cached tokenizer from another trainer is trained again. 1: upstream's
# trainers (hash-order ties); 2: lmlab's deterministic merges.
TRAINER_VERSION = 2

BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
GPT_SPECIALS = {
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}


def sample(dataset, sample_mb: float | None, seed: int):
    """`dataset`, or, when its Arrow data exceed `sample_mb` MB (None: never), a seeded random
    sample of its rows of about that size (each row kept with probability sample_mb / size,
    in their order). Counting a corpus's words runs at ~1 MB/s and its distinct words fill
    memory, so training on a sample bounds both; a corpus below the size is used whole."""
    import numpy as np

    from lmlab.data.sources.splits import data_mb

    if sample_mb is None:
        return dataset
    if sample_mb <= 0:
        raise LmlabError(f"model.tokenizer.sample_mb: must be positive or null, got {sample_mb!r}")
    size = data_mb(dataset)
    if size <= sample_mb:
        return dataset
    draws = np.random.default_rng([seed, 1]).random(len(dataset))  # the seed's own stream
    return dataset.select(np.flatnonzero(draws < sample_mb / size))


def load_or_train(model_cfg, texts: Iterable[str], corpus_fingerprint: str, cache_dir: str | Path):
    """The tokenizer for `model_cfg`: the pretrained one, or one trained on `texts` (cached).
    `texts` is read only when one has to be trained."""
    from transformers import AutoTokenizer

    from lmlab.models import trusts_remote_code

    source = model_cfg.tokenizer.name_or_path or model_cfg.name_or_path
    if source:  # False, not None: transformers neither runs a tokenizer's code nor asks to
        trust = trusts_remote_code(model_cfg)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    else:
        settings = {
            "kind": _kind(model_cfg.model_type),
            "vocab_size": model_cfg.tokenizer.vocab_size,
            "min_frequency": model_cfg.tokenizer.min_frequency,
            "lowercase": model_cfg.tokenizer.lowercase,
        }
        keyed = {**settings, "corpus": corpus_fingerprint, "trainer": TRAINER_VERSION}
        keyed["sample_mb"] = getattr(model_cfg.tokenizer, "sample_mb", None)  # with the seed
        key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() / "tokenizers" / key
        if not (path / "tokenizer.json").is_file():
            write_dir(path, train_tokenizer(texts, **settings).save_pretrained)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return with_pad_token(tokenizer)


def with_pad_token(tokenizer):
    """`tokenizer`, padding with end-of-text where it has no pad token (GPT-style); padding
    is masked anyway."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _kind(model_type: str) -> str:
    return "wordpiece" if model_type in ("bert", "distilbert", "electra") else "bpe"


def train_tokenizer(
    texts: Iterable[str], kind: str, vocab_size: int, min_frequency: int = 2, lowercase: bool = True
):
    """Trains a WordPiece (BERT) or byte-level BPE (GPT-2) tokenizer on `texts`, reading them
    once. The same texts and settings give the same tokenizer.json in every process (upstream's
    trainers break ties in hash-map order, huggingface/tokenizers#1794), so lmlab learns the
    merges itself (`_learn_merges`) and gives upstream's models the finished vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials, prefix, alphabet = BERT_SPECIALS, "##", ()
        normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        pre_tokenizer, decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    elif kind == "bpe":
        specials, prefix, alphabet = GPT_SPECIALS, "", pre_tokenizers.ByteLevel.alphabet()
        normalizer, decoder = None, decoders.ByteLevel()
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        raise LmlabError(f"tokenizer kind '{kind}': expected wordpiece or bpe")
    special_tokens = list(dict.fromkeys(specials.values()))  # GPT-2's three are one token
    counts = _count_words(texts, normalizer, pre_tokenizer)
    vocab, merges = _learn_merges(
        counts, vocab_size, min_frequency, special_tokens, alphabet, prefix
    )
    if len(vocab) < 10:
        raise LmlabError("data.train: the corpus is too small to train a tokenizer on")
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(vocab, unk_token=specials["unk_token"]))
        tok.normalizer = normalizer
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    else:
        tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    tok.add_special_tokens(special_tokens)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "wordpiece" else [])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=names, **specials)


def _count_words(texts: Iterable[str], normalizer, pre_tokenizer) -> Counter:
    """How often each pre-tokenized word occurs: memory grows with distinct words only."""
    counts = Counter()
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


def _learn_merges(
    counts: Counter, vocab_size: int, min_frequency: int, specials, alphabet, prefix: str
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE as upstream's BpeTrainer does it (WordPiece's trainer is this with prefix '##'),
    with canonical ids: specials, characters in code point order, prefixed characters in code
    point order, then each merge's token. The most frequent pair merges first; a tie goes to
    the pair with the lower (left id, right id), upstream's rule, here on ids that never
    depend on hash order. Returns the vocabulary (token -> id) and the merges in order."""
    chars = sorted({char for word in counts for char in word}.union(alphabet))
    inner = sorted({char for word in counts for char in word[1:]}) if prefix else []
    vocab: dict[str, int] = {}
    for token in [*specials, *chars, *(prefix + char for char in inner)]:
        vocab.setdefault(token, len(vocab))
    tokens = list(vocab)  # id -> token
    words = [[vocab[w[0]]] + [vocab[prefix + c] for c in w[1:]] for w in counts]
    freqs = list(counts.values())
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # words holding a pair
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]  # stale counts fixed when popped
    heapq.heapify(heap)
    merges = []
    while heap and len(vocab) < vocab_size:
        negative, pair = heapq.heappop(heap)
        n = pair_counts[pair]
        if n != -negative:
            if n > 0:
                heapq.heappush(heap, (-n, pair))
            continue
        if n < max(min_frequency, 1):
            break
        left, right = tokens[pair[0]], tokens[pair[1]]
        merged = left + right.removeprefix(prefix)
        if merged not in vocab:
            vocab[merged] = len(tokens)
            tokens.append(merged)
        merges.append((left, right))
        new = vocab[merged]
        for grown in _merge_in_words(words, freqs, where.pop(pair), pair, new, pair_counts, where):
            if pair_counts[grown] > 0:
                heapq.heappush(heap, (-pair_counts[grown], grown))
    return vocab, merges


def _merge_in_words(words, freqs, positions, pair, new, pair_counts, where) -> set:
    """Replaces `pair` by `new`, left to right, in words[i] for i in `positions` (some may no
    longer hold it), updating pair counts and positions. Returns the pairs that gained. The
    order of the words does not matter: counts add up, and the heap orders pairs totally."""
    grown = set()
    a, b = pair
    for i in positions:
        word, n = words[i], freqs[i]
        j = _find(word, a, b, 0)
        while j >= 0:
            pair_counts[pair] -= n
            neighbours = []
            if j > 0:  # (left, a) becomes (left, new)
                pair_counts[word[j - 1], a] -= n
                neighbours.append((word[j - 1], new))
            if j + 2 < len(word):  # (b, right) becomes (new, right)
                pair_counts[b, word[j + 2]] -= n
                neighbours.append((new, word[j + 2]))
            word[j : j + 2] = [new]
            for p in neighbours:
                pair_counts[p] += n
                where[p].add(i)
                grown.add(p)
            j = _find(word, a, b, j + 1)
    return grown


def _find(word: list[int], a: int, b: int, start: int) -> int:
    """Index of the first (a, b) in `word` at or after `start`, or -1."""
    try:
        j = word.index(a, start)
        while word[j + 1] != b:
            j = word.index(a, j + 1)
        return j
    except (ValueError, IndexError):
        return -1
