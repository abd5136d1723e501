"""Tests for the pre-training objectives (lmlab.objectives) on hand-made examples whose
answers are known: masking statistics, pair construction, packing and the losses of tiny
Hugging Face models (hidden size 32)."""

import math
import random
import re

import datasets
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config import CLMConfig, MLMConfig, MLMNSPConfig, ModelConfig, NSPConfig, TokenizerConfig
from lmlab.errors import LmlabError
from lmlab.objectives.base import masked_cross_entropy, pack, perplexity
from lmlab.objectives.clm import CausalLM
from lmlab.objectives.mlm import MaskedLM, mask_tokens
from lmlab.objectives.mlm_nsp import MaskedLMNextSentence
from lmlab.objectives.nsp import IS_NEXT, IS_RANDOM, NextSentencePrediction, make_pairs

IGNORE = -100


def mlm_cfg(**kw):
    return OmegaConf.structured(MLMConfig(name="mlm", _target_="x", **kw))


def nsp_cfg(**kw):
    return OmegaConf.structured(NSPConfig(name="nsp", _target_="x", **kw))


def mlm_nsp_cfg(**kw):
    return OmegaConf.structured(MLMNSPConfig(name="mlm_nsp", _target_="x", **kw))


def clm_cfg(**kw):
    return OmegaConf.structured(CLMConfig(name="clm", _target_="x", **kw))


def text_dataset(texts):
    return datasets.Dataset.from_dict({"text": list(texts)})


def rows(dataset):
    return [dataset[i] for i in range(len(dataset))]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def bert_config(tok, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **kw,
    )


# ================================================================ base helpers


def test_masked_cross_entropy_of_no_rows_is_zero_not_nan():
    loss, accuracy = masked_cross_entropy(
        torch.randn(0, 11, requires_grad=True), torch.zeros(0, dtype=torch.long)
    )
    assert loss.item() == 0.0
    assert accuracy.item() == 0.0
    loss.backward()  # still a usable (zero) training signal


def test_masked_cross_entropy_known_values():
    logits = torch.zeros(4, 7)  # uniform over 7 classes: loss log 7
    logits[0, 3] = logits[1, 3] = 1e-3  # argmax 3 on rows 0 and 1
    loss, accuracy = masked_cross_entropy(logits, torch.tensor([3, 5, 3, 0]))
    assert loss.item() == pytest.approx(math.log(7), abs=1e-3)
    assert accuracy.item() == pytest.approx(0.5)  # rows 0 (3==3) and 3 (argmax 0 == 0)
    sharp = torch.full((2, 3), -100.0)
    sharp[0, 1] = sharp[1, 2] = 100.0
    loss, accuracy = masked_cross_entropy(sharp, torch.tensor([1, 2]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert accuracy.item() == 1.0


def test_perplexity():
    assert perplexity(math.log(7)) == pytest.approx(7.0)
    assert perplexity(0.0) == 1.0
    assert math.isfinite(perplexity(1e4))  # capped, never inf


def test_pack_rejects_tiny_blocks_and_too_little_text(tiny_wordpiece):
    ds = text_dataset(["the dog"])
    with pytest.raises(LmlabError, match="max_length"):
        pack(ds, tiny_wordpiece, 1, tiny_wordpiece.sep_token_id)
    with pytest.raises(LmlabError, match="no full block"):
        pack(ds, tiny_wordpiece, 64, tiny_wordpiece.sep_token_id)


@pytest.mark.parametrize(
    "make",
    [
        lambda tok: MaskedLM(mlm_cfg(), tok, 16),
        lambda tok: NextSentencePrediction(nsp_cfg(), tok, 32),
    ],
)
def test_preprocess_names_a_missing_text_column(tiny_wordpiece, make):
    with pytest.raises(LmlabError, match="'text'"):
        make(tiny_wordpiece).preprocess(datasets.Dataset.from_dict({"body": ["x y"]}), "train")


# ================================================================ MLM: mask_tokens

MASK_ID = 4
BIG_VOCAB = 30_000


def random_ids(shape, low=5, high=BIG_VOCAB):
    return torch.randint(low, high, shape)


def test_mask_tokens_labels_exactly_the_chosen_positions():
    torch.manual_seed(0)
    original = random_ids((64, 50))
    inputs, labels = mask_tokens(
        original,
        torch.zeros_like(original, dtype=torch.bool),
        mask_id=MASK_ID,
        vocab_size=BIG_VOCAB,
        probability=0.3,
    )
    chosen = labels != IGNORE
    assert 0 < chosen.sum() < chosen.numel()
    assert torch.equal(labels[chosen], original[chosen])  # the original token where chosen
    assert torch.all(labels[~chosen] == IGNORE)  # -100 elsewhere
    assert torch.equal(inputs[~chosen], original[~chosen])  # untouched where not chosen
    changed = inputs != original
    assert not torch.any(changed & ~chosen)
    assert original.min() >= 5  # the input tensor itself is not modified in place


def test_mask_tokens_rate_and_80_10_10_split():
    torch.manual_seed(1234)
    original = random_ids((100, 1000))  # 100k tokens
    inputs, labels = mask_tokens(
        original,
        torch.zeros_like(original, dtype=torch.bool),
        mask_id=MASK_ID,
        vocab_size=BIG_VOCAB,
        probability=0.15,
    )
    chosen = labels != IGNORE
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.01)
    n = chosen.sum().item()
    became_mask = (inputs == MASK_ID) & chosen
    unchanged = (inputs == original) & chosen
    random_token = chosen & ~became_mask & ~unchanged
    assert became_mask.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert random_token.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert unchanged.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert inputs[random_token].min() >= 0 and inputs[random_token].max() < BIG_VOCAB


def test_mask_tokens_honours_non_default_probabilities():
    torch.manual_seed(7)
    original = random_ids((100, 1000))
    inputs, labels = mask_tokens(
        original,
        torch.zeros_like(original, dtype=torch.bool),
        mask_id=MASK_ID,
        vocab_size=BIG_VOCAB,
        probability=0.4,
        mask_replace_prob=0.5,
        random_replace_prob=0.3,
    )
    chosen = labels != IGNORE
    n = chosen.sum().item()
    assert n / original.numel() == pytest.approx(0.4, abs=0.01)
    assert ((inputs == MASK_ID) & chosen).sum().item() / n == pytest.approx(0.5, abs=0.02)
    assert ((inputs == original) & chosen).sum().item() / n == pytest.approx(0.2, abs=0.02)


def test_mask_tokens_never_chooses_special_positions_even_at_probability_one():
    torch.manual_seed(0)
    original = random_ids((8, 20))
    special = torch.zeros_like(original, dtype=torch.bool)
    special[:, 0] = special[:, -1] = special[3, 5:] = True
    _, labels = mask_tokens(
        original, special, mask_id=MASK_ID, vocab_size=BIG_VOCAB, probability=1.0
    )
    assert torch.all(labels[special] == IGNORE)
    assert torch.equal(labels[~special], original[~special])  # everything else chosen


def test_mask_tokens_word_starts_share_the_draw_of_the_word():
    # one row: [S] w0 w0 w0 w1 w2 w2 [S]; word_starts marks the first piece of each word
    starts = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1]], dtype=torch.bool).repeat(500, 1)
    special = torch.zeros_like(starts)
    special[:, 0] = special[:, -1] = True
    original = random_ids(starts.shape)
    torch.manual_seed(3)
    _, labels = mask_tokens(
        original,
        special,
        mask_id=MASK_ID,
        vocab_size=BIG_VOCAB,
        probability=0.3,
        word_starts=starts,
    )
    chosen = labels != IGNORE
    for word in ([1, 2, 3], [4], [5, 6]):
        picked = chosen[:, word]
        assert torch.all(picked.all(dim=1) | ~picked.any(dim=1))  # whole word or none of it
        assert picked[:, 0].float().mean().item() == pytest.approx(0.3, abs=0.07)
    assert not chosen[:, [0, 7]].any()


# ================================================================ MLM: the objective


def wwm_features(tok):
    """Rows of [CLS] text [SEP] with words split into several ## pieces, and the word of
    every position (None for specials) from the fast tokenizer's own word_ids."""
    texts = [
        "unbelievable tokenizer modelling unlabelled quickly",
        "passengers mountains students quietly",
        "the library opens at nine. bakers make fresh bread!",
        "unbelievable rivers, snow covers peaks",
    ]
    encs = [tok(t) for t in texts]
    return [{"input_ids": e["input_ids"]} for e in encs], [e.word_ids() for e in encs]


def words_of(word_ids):
    groups = {}
    for pos, w in enumerate(word_ids):
        if w is not None:
            groups.setdefault(w, []).append(pos)
    return list(groups.values())


def test_corpus_has_multi_piece_words(tiny_wordpiece):
    features, word_ids = wwm_features(tiny_wordpiece)
    multi = [w for wid in word_ids for w in words_of(wid) if len(w) >= 3]
    assert len(multi) >= 5  # the whole-word tests below need words of several pieces


@pytest.mark.parametrize("whole_word_mask", [True, False])
def test_mlm_whole_word_masking(tiny_wordpiece, whole_word_mask):
    obj = MaskedLM(
        mlm_cfg(mlm_probability=0.3, whole_word_mask=whole_word_mask), tiny_wordpiece, 64
    )
    features, word_ids = wwm_features(tiny_wordpiece)
    torch.manual_seed(11)
    whole = partial = words_masked = words_total = 0
    for _ in range(40):
        labels = obj.collate(features)["labels"]
        for row, wid in enumerate(word_ids):
            for word in words_of(wid):
                if len(word) < 2:
                    continue
                picked = labels[row, word] != IGNORE
                words_total += 1
                words_masked += bool(picked.any())
                whole += bool(picked.all())
                partial += bool(picked.any() and not picked.all())
    if whole_word_mask:
        assert partial == 0  # every multi-piece word: all pieces labelled, or none
        assert whole > 0
        assert words_masked / words_total == pytest.approx(0.3, abs=0.07)
    else:
        assert partial > 0  # token-level masking does split words: the check above can fail


def test_mlm_whole_word_masking_keeps_specials_unmasked(tiny_wordpiece):
    obj = MaskedLM(mlm_cfg(mlm_probability=1.0, whole_word_mask=True), tiny_wordpiece, 64)
    features, _ = wwm_features(tiny_wordpiece)
    batch = obj.collate(features)
    original = obj.pad(features, {"input_ids": tiny_wordpiece.pad_token_id})["input_ids"]
    special = torch.isin(original, torch.tensor(tiny_wordpiece.all_special_ids))
    assert torch.all(batch["labels"][special] == IGNORE)
    assert torch.equal(batch["labels"][~special], original[~special])


def test_mlm_collate_never_masks_cls_sep_pad_even_at_probability_one(tiny_wordpiece):
    tok = tiny_wordpiece
    obj = MaskedLM(mlm_cfg(mlm_probability=1.0), tok, 64)
    features = [
        {"input_ids": tok("the quick brown fox jumps")["input_ids"]},
        {"input_ids": tok("dog")["input_ids"]},  # short: padded with [PAD]
        {"input_ids": tok("birds sing", "in the tree")["input_ids"]},  # [SEP] in the middle
    ]
    original = obj.pad(features, {"input_ids": tok.pad_token_id})["input_ids"]
    assert (original == tok.pad_token_id).any()
    torch.manual_seed(0)
    batch = obj.collate(features)
    for special_id in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id):
        at = original == special_id
        assert at.any()
        assert torch.all(batch["labels"][at] == IGNORE)
        assert torch.all(batch["input_ids"][at] == special_id)  # never replaced either
    ordinary = ~torch.isin(original, torch.tensor(tok.all_special_ids))
    assert torch.equal(batch["labels"][ordinary], original[ordinary])  # all others chosen
    assert torch.equal(batch["attention_mask"], (original != tok.pad_token_id).long())


def test_mlm_collate_masking_rate_and_labels(tiny_wordpiece, tiny_corpus):
    tok = tiny_wordpiece
    obj = MaskedLM(mlm_cfg(), tok, 32)
    blocks = rows(obj.preprocess(text_dataset(tiny_corpus * 20), "train"))
    torch.manual_seed(5)
    chosen = ordinary = 0
    for _ in range(30):
        batch = obj.collate(blocks)
        original = torch.tensor([b["input_ids"] for b in blocks])
        labelled = batch["labels"] != IGNORE
        assert torch.equal(batch["labels"][labelled], original[labelled])
        is_ordinary = ~torch.isin(original, torch.tensor(tok.all_special_ids))
        assert not (labelled & ~is_ordinary).any()
        chosen += labelled.sum().item()
        ordinary += is_ordinary.sum().item()
    assert ordinary > 50_000
    assert chosen / ordinary == pytest.approx(0.15, abs=0.01)


def test_mlm_fresh_masks_on_every_collate(tiny_wordpiece, tiny_corpus):
    obj = MaskedLM(mlm_cfg(), tiny_wordpiece, 32)
    features = rows(obj.preprocess(text_dataset(tiny_corpus), "train"))[:8]
    torch.manual_seed(0)
    first, second = obj.collate(features), obj.collate(features)
    assert not torch.equal(first["labels"], second["labels"])
    assert not torch.equal(first["input_ids"], second["input_ids"])
    # the features themselves are left unmasked
    assert features == rows(obj.preprocess(text_dataset(tiny_corpus), "train"))[:8]


def test_mlm_requires_a_mask_token(tiny_bpe):
    with pytest.raises(LmlabError, match="mask"):
        MaskedLM(mlm_cfg(), tiny_bpe, 32)


@pytest.mark.parametrize("max_length", [8, 13, 32])
def test_mlm_preprocess_packs_full_cls_sep_blocks(tiny_wordpiece, tiny_corpus, max_length):
    tok = tiny_wordpiece
    cls, sep = tok.cls_token_id, tok.sep_token_id
    texts = [*tiny_corpus[:4], "", *tiny_corpus[4:]]  # an empty document adds nothing
    packed = rows(MaskedLM(mlm_cfg(), tok, max_length).preprocess(text_dataset(texts), "train"))

    stream = [t for text in texts if ids(tok, text) for t in [*ids(tok, text), sep]]
    size = max_length - 2
    expected = [
        [cls, *stream[i : i + size], sep] for i in range(0, len(stream) // size * size, size)
    ]
    assert [r["input_ids"] for r in packed] == expected
    assert all(len(r["input_ids"]) == max_length for r in packed)
    inner = [t for r in packed for t in r["input_ids"][1:-1]]
    assert inner.count(sep) >= len(texts) - 2  # a [SEP] after each document (bar the tail)
    assert tok.pad_token_id not in inner


def test_mlm_preprocess_document_boundaries(tiny_wordpiece):
    tok = tiny_wordpiece
    sep, cls = tok.sep_token_id, tok.cls_token_id
    a, b, c = ids(tok, "the dog"), ids(tok, "cats chase mice"), ids(tok, "snow")
    n = len(a) + len(b) + len(c) + 3
    packed = rows(
        MaskedLM(mlm_cfg(), tok, n + 2).preprocess(
            text_dataset(["the dog", "cats chase mice", "snow"]), "train"
        )
    )
    assert [r["input_ids"] for r in packed] == [[cls, *a, sep, *b, sep, *c, sep, sep]]


def tiny_bert_mlm(tok):
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(bert_config(tok)).eval()


def test_mlm_sparse_loss_equals_full_vocabulary_loss(tiny_wordpiece):
    tok = tiny_wordpiece
    obj = MaskedLM(mlm_cfg(mlm_probability=0.3), tok, 64)
    model = tiny_bert_mlm(tok)
    texts = [
        "the quick brown fox jumps over the lazy dog",
        "unbelievable things",
        "birds sing in the old oak tree. the smell fills the street",
    ]
    features = [{"input_ids": tok(t)["input_ids"]} for t in texts]  # ragged: padded
    torch.manual_seed(2)
    batch = obj.collate(features)
    assert (batch["attention_mask"] == 0).any()
    n = int((batch["labels"] != IGNORE).sum())
    assert n > 0
    with torch.no_grad():
        metrics = obj.step(model, batch)
        full = model(**batch)
    assert torch.allclose(metrics["loss"][0], full.loss, atol=1e-5)
    assert metrics["loss"][1] == n
    chosen = batch["labels"] != IGNORE
    expected_accuracy = (full.logits[chosen].argmax(-1) == batch["labels"][chosen]).float().mean()
    assert torch.allclose(metrics["accuracy"][0], expected_accuracy)
    assert metrics["accuracy"][1] == n


def tiny_mlm_model(kind, tok):
    """Other BERT-style masked-LM architectures that `model.name_or_path` / `model_type`
    may select (tokenizers._kind trains WordPiece for bert, distilbert and electra)."""
    import transformers as tf

    small = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    layers = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "roberta":
        config = tf.RobertaConfig(hidden_size=32, max_position_embeddings=130, **layers, **small)
        cls = tf.RobertaForMaskedLM
    elif kind == "distilbert":
        config = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **small)
        cls = tf.DistilBertForMaskedLM
    else:
        config = tf.ElectraConfig(hidden_size=32, embedding_size=16, **layers, **small)
        cls = tf.ElectraForMaskedLM
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("kind", ["roberta", "distilbert", "electra"])
def test_mlm_sparse_loss_matches_other_masked_lm_architectures(tiny_wordpiece, kind):
    tok = tiny_wordpiece
    obj = MaskedLM(mlm_cfg(mlm_probability=0.3), tok, 64)
    model = tiny_mlm_model(kind, tok)
    features = [
        {"input_ids": tok("the quick brown fox jumps over the lazy dog")["input_ids"]},
        {"input_ids": tok("unbelievable things happen")["input_ids"]},
    ]
    torch.manual_seed(2)
    batch = obj.collate(features)
    assert (batch["labels"] != IGNORE).any()
    with torch.no_grad():
        metrics = obj.step(model, batch)
        full = model(**batch)
    assert torch.allclose(metrics["loss"][0], full.loss, atol=1e-5)


def test_mlm_step_with_nothing_masked_is_zero(tiny_wordpiece):
    tok = tiny_wordpiece
    obj = MaskedLM(mlm_cfg(), tok, 16)
    model = tiny_bert_mlm(tok)
    input_ids = torch.tensor([tok("the dog sleeps")["input_ids"]])
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.full_like(input_ids, IGNORE),
    }
    with torch.no_grad():
        metrics = obj.step(model, batch)
    assert metrics["loss"][0].item() == 0.0
    assert metrics["loss"][1] == 0
    assert obj.epoch_metrics({"loss": math.log(5)})["perplexity"] == pytest.approx(5.0)


# ================================================================ NSP: make_pairs


def id_documents(n_docs, rng, max_sentences=6, max_sentence_len=12):
    """Document k (from 1) holds ids 1000*k, 1000*k+1, ... in reading order, split into
    sentences: the id tells which document a token came from and where."""
    documents = []
    for k in range(1, n_docs + 1):
        next_id, doc = 1000 * k, []
        for _ in range(rng.randint(1, max_sentences)):
            length = rng.randint(1, max_sentence_len)
            doc.append(list(range(next_id, next_id + length)))
            next_id += length
        documents.append(doc)
    return documents


def doc_of(segment):
    docs = {t // 1000 for t in segment}
    assert len(docs) == 1, f"segment mixes documents {docs}"
    return docs.pop()


def is_run(segment):
    return segment == list(range(segment[0], segment[0] + len(segment)))


def test_make_pairs_labels_are_about_half_positive():
    documents = id_documents(400, random.Random(0))
    pairs = make_pairs(documents, 32, random.Random(1))
    assert len(pairs) > 300
    positive = sum(label == IS_NEXT for _, _, label in pairs) / len(pairs)
    assert positive == pytest.approx(0.5, abs=0.07)
    assert {label for _, _, label in pairs} == {IS_NEXT, IS_RANDOM}


@pytest.mark.parametrize("max_tokens,short_seq_prob", [(2, 0.1), (5, 0.5), (32, 0.1), (64, 1.0)])
def test_make_pairs_provenance_and_fit(max_tokens, short_seq_prob):
    documents = id_documents(60, random.Random(max_tokens))
    pairs = make_pairs(documents, max_tokens, random.Random(2), short_seq_prob)
    assert pairs
    for a, b, label in pairs:
        assert a and b
        assert len(a) + len(b) <= max_tokens
        assert is_run(a) and is_run(b)  # consecutive text, in order
        if label == IS_NEXT:
            assert doc_of(b) == doc_of(a)  # B follows A in the same document
            assert b[0] > a[-1]
        else:
            assert label == IS_RANDOM
            assert doc_of(b) != doc_of(a)  # B comes from another document


def test_make_pairs_untruncated_next_segment_continues_a():
    documents = id_documents(50, random.Random(3), max_sentence_len=6)
    pairs = make_pairs(documents, 10_000, random.Random(4), short_seq_prob=0.0)
    nexts = [(a, b) for a, b, label in pairs if label == IS_NEXT]
    assert len(nexts) > 10
    for a, b in nexts:
        assert b[0] == a[-1] + 1  # nothing dropped between A and B
    for a, _, _ in pairs:  # A starts at a sentence start
        starts = {s[0] for s in documents[doc_of(a) - 1]}
        assert a[0] in starts


def test_make_pairs_single_sentence_documents_give_one_pair_each():
    documents = [[list(range(1000 * k, 1000 * k + 2 + k))] for k in range(1, 21)]
    pairs = make_pairs(documents, 10_000, random.Random(0), short_seq_prob=0.0)
    assert len(pairs) == 20
    for a, b, label in pairs:
        if label == IS_NEXT:  # the sentence split in two
            (sentence,) = documents[doc_of(a) - 1]
            assert a + b == sentence
        else:
            assert doc_of(b) != doc_of(a)


def test_make_pairs_is_deterministic_for_a_seed():
    documents = id_documents(40, random.Random(0))
    first = make_pairs(documents, 24, random.Random(9))
    assert make_pairs(documents, 24, random.Random(9)) == first
    assert make_pairs(documents, 24, random.Random(10)) != first


# ================================================================ NSP: the objective

NSP_TEXTS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps all day. Cats chase mice.",
    "Rivers flow into the sea. Mountains rise above the clouds. Snow covers the peaks.",
    "The library opens at nine.\nStudents read books and write notes quietly.",
    "Trains leave the station on time! Passengers wait on the platform.",
    "Bakers make fresh bread every morning. The smell fills the street.",
    "Birds sing in the old oak tree? People walk quickly to work.",
] * 4


def segments(row, tok):
    """(A, B) of a [CLS] A [SEP] B [SEP] row, checking its layout and segment ids."""
    input_ids, types = row["input_ids"], row["token_type_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert input_ids[0] == cls and input_ids[-1] == sep
    assert input_ids.count(sep) == 2 and input_ids.count(cls) == 1
    first = input_ids.index(sep)
    assert types == [0] * (first + 1) + [1] * (len(input_ids) - first - 1)
    return input_ids[1:first], input_ids[first + 1 : -1]


def contains(haystack, needle):
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@pytest.mark.parametrize("max_length,short_seq_prob", [(12, 0.1), (24, 1.0), (64, 0.0)])
def test_nsp_preprocess_layout(tiny_wordpiece, max_length, short_seq_prob):
    tok = tiny_wordpiece
    obj = NextSentencePrediction(nsp_cfg(short_seq_prob=short_seq_prob), tok, max_length, seed=0)
    out = obj.preprocess(text_dataset(NSP_TEXTS), "train")
    assert set(out.column_names) == {"input_ids", "token_type_ids", "next_sentence_label"}
    assert len(out) > 0
    doc_ids = [ids(tok, t) for t in NSP_TEXTS]
    for row in rows(out):
        a, b = segments(row, tok)
        assert a and b
        assert len(row["input_ids"]) <= max_length
        assert row["next_sentence_label"] in (IS_NEXT, IS_RANDOM)
        if row["next_sentence_label"] == IS_NEXT:
            assert any(contains(d, a) and contains(d, b) for d in doc_ids)
        if max_length == 64 and row["next_sentence_label"] == IS_NEXT:
            assert any(contains(d, a + b) for d in doc_ids)  # untruncated: B continues A
    if max_length == 64:
        assert len(out) >= len(NSP_TEXTS)  # every document gives at least one pair


def test_nsp_preprocess_single_sentence_documents(tiny_wordpiece):
    tok = tiny_wordpiece
    texts = ["the quick brown fox jumps", "birds sing in the tree", "snow covers the peaks"]
    out = NextSentencePrediction(nsp_cfg(short_seq_prob=0.0, dupe_factor=1), tok, 64).preprocess(
        text_dataset(texts), "train"
    )
    assert len(out) == 3  # one pair per one-sentence document
    for row in rows(out):
        a, b = segments(row, tok)
        if row["next_sentence_label"] == IS_NEXT:
            assert a + b in [ids(tok, t) for t in texts]


def test_nsp_training_pairs_are_drawn_dupe_factor_times_validation_once(tiny_wordpiece):
    texts = ["the quick brown fox jumps", "birds sing in the tree", "snow covers the peaks"]
    obj = NextSentencePrediction(nsp_cfg(short_seq_prob=0.0, dupe_factor=4), tiny_wordpiece, 64)
    assert len(obj.preprocess(text_dataset(texts), "train")) == 12
    assert len(obj.preprocess(text_dataset(texts), "validation")) == 3


NSP_TOO_FEW = (
    "next-sentence prediction needs at least 2 documents (of 2 tokens or more) in each split, "
    "the {split} split has {n}; with data.documents=file each text file is one document "
    "(blank_line or line splits it into several)"
)


@pytest.mark.parametrize(
    "texts, split, key, n",
    [
        (["the dog sleeps. the fox runs."], "train", "data.train", 1),
        (["the dog sleeps.", ""], "train", "data.train", 1),  # "" is no document
        (["the dog sleeps.", "the fox runs."], "train", None, 2),
        (["the dog sleeps."], "validation",
         "data.validation (or data.val_fraction, carving it from train)", 1),
        ([""], "test", "data.test", 0),
    ],
)  # fmt: skip
def test_nsp_preprocess_needs_two_documents_and_names_the_splits_key(
    tiny_wordpiece, texts, split, key, n
):
    obj = NextSentencePrediction(nsp_cfg(), tiny_wordpiece, 32)
    if key is None:
        assert len(obj.preprocess(text_dataset(texts), split)) > 0
        return
    with pytest.raises(LmlabError) as e:
        obj.preprocess(text_dataset(texts), split)
    assert str(e.value) == f"{key}: " + NSP_TOO_FEW.format(split=split, n=n)


def test_nsp_on_three_files_as_documents_blames_the_carved_validation(
    tmp_path, tiny_overrides, lmlab_cache_dir, monkeypatch
):
    """data.documents=file, 3 files: val_fraction carves 1 off train, and that split fails."""
    from lmlab.build import compose, train

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    for i, text in enumerate(NSP_TEXTS[:3]):
        (tmp_path / f"doc{i}.txt").write_text(text)
    overrides = ["experiment=pretrain_nsp", *tiny_overrides("bert")]
    overrides += [f"data.train={tmp_path}/doc*.txt", "data.documents=file"]
    with pytest.raises(LmlabError) as e:
        train(compose(overrides, run_dir=str(tmp_path / "run")))
    assert str(e.value).startswith("data.validation (or data.val_fraction, carving it from train)")
    assert "the validation split has 1;" in str(e.value)


def test_nsp_preprocess_smallest_max_length_fits(tiny_wordpiece):
    out = NextSentencePrediction(nsp_cfg(short_seq_prob=1.0), tiny_wordpiece, 5).preprocess(
        text_dataset(NSP_TEXTS), "train"
    )
    assert len(out) > 0
    assert all(len(r["input_ids"]) == 5 for r in rows(out))  # [CLS] a [SEP] b [SEP]


@pytest.mark.parametrize("short_seq_prob", [0.0, 1.0])
def test_nsp_preprocess_rejects_a_max_length_without_room_for_two_segments(
    tiny_wordpiece, short_seq_prob
):
    obj = NextSentencePrediction(nsp_cfg(short_seq_prob=short_seq_prob), tiny_wordpiece, 4)
    with pytest.raises(LmlabError, match="max_length"):
        obj.preprocess(text_dataset(NSP_TEXTS), "train")


def test_nsp_preprocess_is_deterministic_for_a_seed(tiny_wordpiece):
    def run(seed):
        obj = NextSentencePrediction(nsp_cfg(), tiny_wordpiece, 24, seed=seed)
        return rows(obj.preprocess(text_dataset(NSP_TEXTS), "train"))

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_nsp_collate_and_step(tiny_wordpiece):
    from transformers import BertForNextSentencePrediction

    tok = tiny_wordpiece
    obj = NextSentencePrediction(nsp_cfg(), tok, 32, seed=0)
    features = rows(obj.preprocess(text_dataset(NSP_TEXTS), "train"))[:8]
    batch = obj.collate(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (8, max(lengths))
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"]
        assert batch["token_type_ids"][i, :n].tolist() == f["token_type_ids"]
        assert torch.all(batch["input_ids"][i, n:] == tok.pad_token_id)
        assert torch.all(batch["token_type_ids"][i, n:] == 0)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
    assert batch["next_sentence_label"].tolist() == [f["next_sentence_label"] for f in features]

    torch.manual_seed(0)
    model = BertForNextSentencePrediction(bert_config(tok)).eval()
    with torch.no_grad():
        metrics = obj.step(model, batch)
        reference = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            labels=batch["next_sentence_label"],
        )
    assert torch.allclose(metrics["loss"][0], reference.loss, atol=1e-6)
    accuracy = (reference.logits.argmax(-1) == batch["next_sentence_label"]).float().mean()
    assert torch.allclose(metrics["accuracy"][0], accuracy)
    assert metrics["loss"][1] == 8


# ================================================================ MLM + NSP


def test_mlm_nsp_collate_masks_and_keeps_the_nsp_label(tiny_wordpiece):
    tok = tiny_wordpiece
    obj = MaskedLMNextSentence(mlm_nsp_cfg(mlm_probability=0.3), tok, 32, seed=0)
    features = rows(obj.preprocess(text_dataset(NSP_TEXTS), "train"))
    assert {f["next_sentence_label"] for f in features} == {IS_NEXT, IS_RANDOM}
    torch.manual_seed(0)
    batch = obj.collate(features)
    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "labels",
        "next_sentence_label",
    }
    original = obj.pad(features, {"input_ids": tok.pad_token_id})["input_ids"]
    labelled = batch["labels"] != IGNORE
    assert labelled.any()
    assert torch.equal(batch["labels"][labelled], original[labelled])
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled])
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    assert not (labelled & special).any()
    assert labelled.sum().item() / (~special).sum().item() == pytest.approx(0.3, abs=0.07)
    assert batch["next_sentence_label"].tolist() == [f["next_sentence_label"] for f in features]
    for i, f in enumerate(features):
        n = len(f["token_type_ids"])
        assert batch["token_type_ids"][i, :n].tolist() == f["token_type_ids"]


def test_mlm_nsp_step_loss_is_mlm_plus_nsp(tiny_wordpiece):
    from transformers import BertForPreTraining

    tok = tiny_wordpiece
    obj = MaskedLMNextSentence(mlm_nsp_cfg(mlm_probability=0.3), tok, 32, seed=0)
    features = rows(obj.preprocess(text_dataset(NSP_TEXTS), "train"))[:8]
    torch.manual_seed(1)
    batch = obj.collate(features)
    torch.manual_seed(0)
    model = BertForPreTraining(bert_config(tok)).eval()
    with torch.no_grad():
        metrics = obj.step(model, batch)
        reference = model(**batch)
    assert set(metrics) == set(obj.metric_names)
    loss, mlm_loss, nsp_loss = (metrics[k][0] for k in ("loss", "mlm_loss", "nsp_loss"))
    assert torch.allclose(loss, mlm_loss + nsp_loss)
    assert torch.allclose(loss, reference.loss, atol=1e-5)  # HF: masked LM + next sentence
    chosen = batch["labels"] != IGNORE
    full_mlm = torch.nn.functional.cross_entropy(
        reference.prediction_logits[chosen], batch["labels"][chosen]
    )
    full_nsp = torch.nn.functional.cross_entropy(
        reference.seq_relationship_logits, batch["next_sentence_label"]
    )
    assert torch.allclose(mlm_loss, full_mlm, atol=1e-5)
    assert torch.allclose(nsp_loss, full_nsp, atol=1e-5)
    assert metrics["mlm_loss"][1] == int(chosen.sum())
    assert metrics["nsp_loss"][1] == metrics["loss"][1] == 8
    ppl = obj.epoch_metrics({"loss": 9.0, "mlm_loss": math.log(3), "nsp_loss": 0.5})
    assert ppl["perplexity"] == pytest.approx(3.0)  # from the MLM loss alone


# ================================================================ CLM


@pytest.fixture(scope="module")
def gpt_tok(tmp_path_factory, tiny_corpus):
    """The BPE tokenizer as a run gets it: through lmlab.tokenizers.load_or_train (pad = eos)."""
    from lmlab.tokenizers import load_or_train

    cfg = OmegaConf.structured(
        ModelConfig(name="gpt", model_type="gpt2", tokenizer=TokenizerConfig(vocab_size=400))
    )
    return load_or_train(cfg, tiny_corpus * 3, "clm-tests", tmp_path_factory.mktemp("cache"))


def tiny_gpt(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("max_length", [7, 16])
def test_clm_preprocess_packs_full_blocks_with_eos_between_documents(
    gpt_tok, tiny_corpus, max_length
):
    tok = gpt_tok
    eos = tok.eos_token_id
    texts = [*tiny_corpus[:3], "", *tiny_corpus[3:]]
    packed = rows(CausalLM(clm_cfg(), tok, max_length).preprocess(text_dataset(texts), "train"))
    stream = [t for text in texts if ids(tok, text) for t in [*ids(tok, text), eos]]
    full = len(stream) // max_length * max_length
    expected = [stream[i : i + max_length] for i in range(0, full, max_length)]
    assert [r["input_ids"] for r in packed] == expected
    assert all(len(r["input_ids"]) == max_length for r in packed)
    flat = [t for r in packed for t in r["input_ids"]]
    assert flat.count(eos) >= len(tiny_corpus) - 1
    # the text between separators decodes back to the documents, in order
    decoded = [tok.decode(d) for d in _split(flat, eos)]
    assert decoded[: len(tiny_corpus) - 1] == tiny_corpus[:-1]


def _split(seq, sep):
    out, cur = [], []
    for t in seq:
        if t == sep:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out


def test_clm_collate_labels_are_the_inputs(gpt_tok, tiny_corpus):
    obj = CausalLM(clm_cfg(), gpt_tok, 16)
    features = rows(obj.preprocess(text_dataset(tiny_corpus), "train"))[:4]
    batch = obj.collate(features)
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["input_ids"].tolist() == [f["input_ids"] for f in features]
    assert torch.all(batch["attention_mask"] == 1)


def test_clm_collate_labels_padding_but_not_end_of_text(gpt_tok):
    tok = gpt_tok
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos  # padding shares the id of the real separator
    features = [
        {"input_ids": [*ids(tok, "the dog"), eos, *ids(tok, "a cat")]},
        {"input_ids": [*ids(tok, "snow"), eos]},
    ]
    batch = CausalLM(clm_cfg(), tok, 16).collate(features)
    n0, n1 = (len(f["input_ids"]) for f in features)
    assert n1 < n0
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (n0 - n1)
    assert batch["labels"][0].tolist() == features[0]["input_ids"]
    assert batch["labels"][1].tolist() == features[1]["input_ids"] + [IGNORE] * (n0 - n1)


def test_clm_step_loss_is_the_shifted_next_token_loss(gpt_tok):
    tok = gpt_tok
    obj = CausalLM(clm_cfg(), tok, 32)
    features = [
        {"input_ids": ids(tok, "The quick brown fox jumps over the lazy dog.")},
        {"input_ids": [*ids(tok, "Snow covers"), tok.eos_token_id]},
    ]
    batch = obj.collate(features)
    model = tiny_gpt(tok)
    with torch.no_grad():
        metrics = obj.step(model, batch)
        reference = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets[keep])
    assert torch.allclose(metrics["loss"][0], reference)
    assert torch.allclose(metrics["loss"][0], manual, atol=1e-5)
    n0, n1 = (len(f["input_ids"]) for f in features)
    assert metrics["loss"][1] == (n0 - 1) + (n1 - 1)  # predicted tokens, padding excluded
    assert obj.epoch_metrics({"loss": math.log(7)})["perplexity"] == pytest.approx(7.0)


class FixedBatches:
    """The one DataModule method init_new_head reads: the same masked batches every call."""

    def __init__(self, objective, texts, seed=0):
        torch.manual_seed(seed)
        features = [{"input_ids": objective.tokenizer(t)["input_ids"]} for t in texts]
        self.batches = [objective.collate(features[i : i + 4]) for i in range(0, len(texts), 4)]

    def first_batches(self, split, n):
        return self.batches[:n]


def test_mlm_head_missing_from_a_checkpoint_is_fitted_onto_the_tied_embeddings(
    tiny_wordpiece, tmp_path
):
    """An encoder that predicts masked words well, saved without its MLM head (as MiniLM is
    shipped), reloaded as a masked LM: the fitted head's loss is far below the random head's."""
    from transformers import BertForMaskedLM

    tok = tiny_wordpiece
    obj = MaskedLM(mlm_cfg(mlm_probability=0.3), tok, 64)
    texts = ["the quick brown fox jumps over the lazy dog . birds sing in the old oak tree"] * 16
    trained = tiny_bert_mlm(tok).train()
    optimizer = torch.optim.Adam(trained.parameters(), lr=3e-3)
    for step in range(150):
        batch = FixedBatches(obj, texts[:8], seed=step).batches[0]
        loss = obj.step(trained, batch)["loss"][0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained.bert.save_pretrained(tmp_path)  # the encoder alone: no cls.predictions.*
    model, info = BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    new = sorted(info["missing_keys"])
    assert "cls.predictions.transform.dense.weight" in new
    note = obj.init_new_head(model.train(), new, FixedBatches(obj, texts))
    after, before = (float(x) for x in re.findall(r"loss (\d+\.\d+), (\d+\.\d+)", note)[0])
    assert before > 2.5  # a random head: about ln(vocabulary)
    assert after < before / 2
    assert model.training  # given back in training mode
    assert model.cls.predictions.decoder.weight is model.get_input_embeddings().weight
    # nothing to do when the checkpoint had the head
    assert obj.init_new_head(model, ["classifier.weight"], FixedBatches(obj, texts)) is None
