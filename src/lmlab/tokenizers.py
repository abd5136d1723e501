"""Tokenizers: the pretrained one of a model, or one trained on the run's training corpus
(WordPiece for BERT-style models, byte-level BPE for GPT-style), cached by a fingerprint
of corpus + settings so that a second run does not train it again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.fileutil import write_dir

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


def build(model_cfg, texts: Iterable[str], corpus_fingerprint: str, cache_dir: str | Path):
    """The tokenizer for `model_cfg`. `texts` is read only when one has to be trained."""
    from transformers import AutoTokenizer

    source = model_cfg.tokenizer.name_or_path or model_cfg.name_or_path
    if source:
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        settings = {
            "kind": _kind(model_cfg.model_type),
            "vocab_size": model_cfg.tokenizer.vocab_size,
            "min_frequency": model_cfg.tokenizer.min_frequency,
            "lowercase": model_cfg.tokenizer.lowercase,
            "corpus": corpus_fingerprint,
        }
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() / "tokenizers" / key
        if not (path / "tokenizer.json").is_file():
            trained = train(texts, **{k: v for k, v in settings.items() if k != "corpus"})
            write_dir(path, trained.save_pretrained)
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-style: pad with end-of-text; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _kind(model_type: str) -> str:
    return "wordpiece" if model_type in ("bert", "distilbert", "electra") else "bpe"


def train(
    texts: Iterable[str], kind: str, vocab_size: int, min_frequency: int = 2, lowercase: bool = True
):
    """Trains a WordPiece (BERT) or byte-level BPE (GPT-2) tokenizer on `texts`."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = BERT_SPECIALS
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(specials.values()),
            show_progress=False,
        )
    elif kind == "bpe":
        specials = GPT_SPECIALS
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[specials["eos_token"]],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        raise LmlabError(f"tokenizer kind '{kind}': expected wordpiece or bpe")
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() < 10:
        raise LmlabError("data.train: the corpus is too small to train a tokenizer on")
    if kind == "wordpiece":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "wordpiece" else [])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=names, **specials)
