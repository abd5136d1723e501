"""Tests for the QA objectives (lmlab.objectives.qa_extractive, qa_generative) on hand-made
examples whose answers are known: the SQuAD metric on hand-computed pairs, window labels that
decode back to the answer, span recovery from hand-set logits (no training), the generative
label mask and context truncation, and a few real training steps of each objective."""

import json
import math
from types import SimpleNamespace

import datasets
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config import ExtractiveQAConfig, GenerativeQAConfig
from lmlab.errors import LmlabError
from lmlab.objectives.qa import exact_match, f1, normalize_answer, squad_scores
from lmlab.objectives.qa_extractive import ExtractiveQA
from lmlab.objectives.qa_generative import GenerativeQA

IGNORE = -100

# ================================================================ SQuAD metric


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Quick, brown-fox!", "quick brownfox"),
        ("An apple a day", "apple day"),
        ("theory of the atom", "theory of atom"),  # articles only as whole words
        ("  Denver\tBroncos \n", "denver broncos"),
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("the Denver Broncos", ["Denver Broncos"], 1.0),
        ("denver broncos.", ["The Denver Broncos"], 1.0),
        ("Denver", ["Denver Broncos", "denver"], 1.0),  # the second gold matches
        ("Broncos", ["Denver Broncos"], 0.0),
        ("", [], 1.0),  # no-answer question, empty prediction
        ("Denver", [], 0.0),
        ("", ["Denver"], 0.0),
        ("", ["the"], 1.0),  # a gold that normalises to nothing is a no-answer gold
    ],
)
def test_exact_match(prediction, golds, expected):
    assert exact_match(prediction, golds) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        # [denver broncos team] vs [denver broncos]: P 2/3, R 1 -> 0.8
        ("Denver Broncos team", ["the Denver Broncos"], 0.8),
        # the best gold: vs [broncos] P 1/3, R 1 -> 0.5; vs [denver broncos] -> 0.8
        ("Denver Broncos team", ["Broncos", "Denver Broncos"], 0.8),
        ("cat cat", ["cat"], 2 / 3),  # repeated tokens count once per gold occurrence
        ("The cat!", ["a cat"], 1.0),
        ("dog", ["cat"], 0.0),
        ("", ["cat"], 0.0),
        ("", [], 1.0),
        ("cat", [], 0.0),
    ],
)
def test_f1(prediction, golds, expected):
    assert f1(prediction, golds) == pytest.approx(expected)


def test_squad_scores_are_percentages_with_a_breakdown():
    predictions = ["Denver Broncos team", "cat cat", "", "Paris"]
    golds = [["the Denver Broncos", "Broncos"], ["cat"], [], []]
    scores = squad_scores(predictions, golds, breakdown=True)
    # EM: 0, 0, 1, 0; F1: 0.8, 2/3, 1, 0
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(100 * (0.8 + 2 / 3 + 1) / 4)
    assert scores["has_answer_f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert scores["no_answer_f1"] == pytest.approx(50.0)
    assert set(squad_scores(predictions, golds)) == {"exact_match", "f1"}


# ================================================================ extractive QA: windows

CONTEXT = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps all day. "
    "Rivers flow into the sea. Mountains rise above the clouds. Snow covers the peaks."
)


def qa_cfg(**kw):
    return OmegaConf.structured(ExtractiveQAConfig(name="extractive_qa", _target_="x", **kw))


def qa_dataset(items):
    """items: (question, context, answer text or None) -> the canonical QA columns."""
    return datasets.Dataset.from_dict(
        {
            "id": [str(i) for i in range(len(items))],
            "title": [""] * len(items),
            "question": [q for q, _, _ in items],
            "context": [c for _, c, _ in items],
            "answers": [
                {"text": [a], "answer_start": [c.index(a)]}
                if a
                else {"text": [], "answer_start": []}
                for _, c, a in items
            ],
        }
    )


def rows(dataset):
    return [dataset[i] for i in range(len(dataset))]


def covers(window, start_char, end_char):
    inside = [o for o in window["offsets"] if o[0] >= 0]
    return inside[0][0] <= start_char and inside[-1][1] >= end_char


def extractive(tok, max_length=24, **kw):
    return ExtractiveQA(qa_cfg(**{"doc_stride": 4, **kw}), tok, max_length)


def test_windows_overlap_and_offsets_mark_only_the_context(tiny_wordpiece):
    tok = tiny_wordpiece
    obj = extractive(tok)
    windows = rows(obj.preprocess(qa_dataset([("Who sleeps?", CONTEXT, "dog")]), "validation"))
    assert len(windows) > 3
    question_tokens = len(tok("Who sleeps?", add_special_tokens=False)["input_ids"])
    for w in windows:
        assert w["example_id"] == 0
        assert len(w["input_ids"]) <= 24
        # [CLS] question [SEP] have no offsets; context tokens have their own text's
        assert w["offsets"][: question_tokens + 2] == [[-1, -1]] * (question_tokens + 2)
        assert w["offsets"][-1] == [-1, -1]  # the final [SEP]
        for token, (a, b) in zip(
            w["input_ids"][question_tokens + 2 : -1], w["offsets"][question_tokens + 2 : -1]
        ):
            piece = tok.convert_ids_to_tokens(token).removeprefix("##")
            assert CONTEXT[a:b].lower() == piece
    # consecutive windows share doc_stride = 4 context tokens
    for w1, w2 in zip(windows, windows[1:]):
        c1 = [tuple(o) for o in w1["offsets"] if o[0] >= 0]
        c2 = [tuple(o) for o in w2["offsets"] if o[0] >= 0]
        assert c1[-4:] == c2[:4]
    # together they cover the whole context
    assert [o for o in windows[-1]["offsets"] if o[0] >= 0][-1][1] == len(CONTEXT)


@pytest.mark.parametrize("answer", ["sleeps all day", "Snow covers the peaks", "quick brown fox"])
def test_positions_point_exactly_at_the_answer_in_windows_holding_it_whole(tiny_wordpiece, answer):
    tok = tiny_wordpiece
    obj = extractive(tok)
    start_char = CONTEXT.index(answer)
    end_char = start_char + len(answer)
    windows = rows(obj.preprocess(qa_dataset([("Who?", CONTEXT, answer)]), "train"))
    # training windows carry no offsets: recompute them from the validation preprocessing
    with_offsets = rows(obj.preprocess(qa_dataset([("Who?", CONTEXT, answer)]), "validation"))
    assert "offsets" not in windows[0]
    labelled = 0
    for w, wo in zip(windows, with_offsets, strict=True):
        s, e = w["start_positions"], w["end_positions"]
        assert (s, e) == (wo["start_positions"], wo["end_positions"])
        if covers(wo, start_char, end_char):
            labelled += 1
            assert tok.decode(w["input_ids"][s : e + 1]) == answer.lower()
            assert (wo["offsets"][s][0], wo["offsets"][e][1]) == (start_char, end_char)
        else:  # the answer is cut by the window border, or outside it: the CLS token
            assert (s, e) == (0, 0)
    assert labelled >= 1


def test_answer_cut_by_a_window_border_is_labelled_only_where_whole(tiny_wordpiece):
    tok = tiny_wordpiece
    answer = "The dog sleeps"  # windows: '... lazy dog. The dog' | 'dog. The dog sleeps all ...'
    data = qa_dataset([("Who is lazy?", CONTEXT, answer)])
    windows = rows(extractive(tok).preprocess(data, "validation"))
    start_char, end_char = span_of(answer)
    starts_only = [
        w
        for w in windows
        if any(o[0] == start_char for o in w["offsets"])
        and not any(o[1] == end_char for o in w["offsets"])
    ]
    assert starts_only, "the fixture must cut the answer at a window border"
    assert all((w["start_positions"], w["end_positions"]) == (0, 0) for w in starts_only)
    [whole] = [w for w in windows if covers(w, start_char, end_char)]
    s, e = whole["start_positions"], whole["end_positions"]
    assert tok.decode(whole["input_ids"][s : e + 1]) == "the dog sleeps"


def test_an_answer_no_window_holds_whole_is_never_labelled(tiny_wordpiece):
    answer = "sleeps all day. Rivers flow"  # windows: '... Rivers fl' | '. Rivers flow ...'
    data = qa_dataset([("Who?", CONTEXT, answer)])
    windows = rows(extractive(tiny_wordpiece).preprocess(data, "train"))
    assert [(w["start_positions"], w["end_positions"]) for w in windows] == [(0, 0)] * len(windows)


def test_no_answer_and_predict_windows(tiny_wordpiece):
    obj = extractive(tiny_wordpiece)
    windows = rows(obj.preprocess(qa_dataset([("Who?", CONTEXT, None)]), "validation"))
    assert all((w["start_positions"], w["end_positions"]) == (0, 0) for w in windows)
    unlabelled = qa_dataset([("Who?", CONTEXT, None)]).remove_columns("answers")
    predict = rows(obj.preprocess(unlabelled, "predict"))
    assert len(predict) == len(windows)
    assert "start_positions" not in predict[0] and "offsets" in predict[0]
    with pytest.raises(LmlabError, match="data.columns.answers"):
        obj.preprocess(unlabelled, "validation")


def test_a_question_without_room_for_the_stride_names_the_settings(tiny_wordpiece):
    long_question = "Where does the quick brown fox jump over the lazy dog every day?"
    obj = extractive(tiny_wordpiece, max_length=24)
    with pytest.raises(
        LmlabError, match=r"data.max_length=24: question 1 .*objective.doc_stride=4"
    ):
        obj.preprocess(
            qa_dataset([("Who?", CONTEXT, "dog"), (long_question, CONTEXT, "dog")]), "train"
        )


def test_collate_pads_offsets_and_labels(tiny_wordpiece):
    obj = extractive(tiny_wordpiece)
    data = qa_dataset([("Who?", "The dog sleeps.", "dog"), ("Who sleeps?", CONTEXT, "dog")])
    windows = rows(obj.preprocess(data, "validation"))
    batch = obj.collate(windows)
    n, length = batch["input_ids"].shape
    assert n == len(windows) and length == max(len(w["input_ids"]) for w in windows)
    assert batch["offsets"].shape == (n, length, 2)
    short = len(windows[0]["input_ids"])
    assert (batch["offsets"][0, short:] == -1).all()
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (length - short)
    assert batch["example_id"].tolist() == [w["example_id"] for w in windows]
    assert set(obj.model_inputs(batch)) == {
        "input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"
    }  # fmt: skip


def test_texts_are_questions_and_each_context_once():
    data = qa_dataset([("Q1?", "ctx a", "ctx"), ("Q2?", "ctx a", "a"), ("Q3?", "ctx b", "b")])
    assert list(ExtractiveQA.texts(data)) == ["Q1?", "Q2?", "Q3?", "ctx a", "ctx b"]


# ================================================================ extractive QA: span search


class FixedLogits(torch.nn.Module):
    """Stands in for a QA model: returns hand-set logits (loss 0)."""

    def __init__(self, start, end):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, **inputs):
        return SimpleNamespace(loss=torch.tensor(0.0), start_logits=self.start, end_logits=self.end)


def hand_set(batch, starts=(), ends=(), base=-10.0, null=None):
    """Logits `base` everywhere but at the tokens whose context span starts (ends) at a given
    char: starts/ends are (char, logit) or (window, char, logit); null: CLS logits per window."""
    offsets = batch["offsets"]
    start = torch.full(offsets.shape[:2], base)
    end = torch.full(offsets.shape[:2], base)
    for logits, marks, side in ((start, starts, 0), (end, ends, 1)):
        for mark in marks:
            windows = range(len(offsets)) if len(mark) == 2 else [mark[0]]
            char, value = mark[-2:]
            for w in windows:
                logits[w][offsets[w, :, side] == char] = value
    if null is not None:
        for w, (s, e) in enumerate(null):
            start[w, 0], end[w, 0] = s, e
    return FixedLogits(start, end)


def span_of(text):
    return CONTEXT.index(text), CONTEXT.index(text) + len(text)


def evaluate(obj, data, make_model):
    batch = obj.collate(rows(obj.preprocess(data, "validation")))
    metrics, records = obj.eval_step(make_model(batch), batch)
    assert metrics["loss"][1] == len(batch["input_ids"])
    return obj.score(records, data, None), obj.decode(records, data), batch


@pytest.mark.parametrize(
    ("answer", "window"), [("The dog sleeps all day", 1), ("Snow covers the peaks", 3)]
)
def test_answer_only_in_a_later_window_is_found(tiny_wordpiece, answer, window):
    obj = extractive(tiny_wordpiece, max_length=32)
    data = qa_dataset([("What covers the peaks?", CONTEXT, answer)])
    a, b = span_of(answer)
    windows = rows(obj.preprocess(data, "validation"))
    assert [covers(w, a, b) for w in windows] == [i == window for i in range(len(windows))]
    scores, decoded, _ = evaluate(obj, data, lambda batch: hand_set(batch, [(a, 5.0)], [(b, 5.0)]))
    assert decoded == [{"answer": answer, "score": 10.0, "start": a}]
    assert scores["exact_match"] == scores["f1"] == 100.0
    assert scores["samples"][0].splitlines() == [
        "Q: What covers the peaks?", f"predicted: {answer}", f"gold: {answer}"
    ]  # fmt: skip


def test_spans_never_pair_a_start_and_an_end_of_different_windows(tiny_wordpiece):
    """The first window ('The quick brown fox jumps over') gives 'over' a high start logit;
    paired with the end of 'the lazy dog' from the next window it would beat the answer, but
    a span comes from one window."""
    obj = extractive(tiny_wordpiece)
    answer = "the lazy dog"
    data = qa_dataset([("Who is lazy?", CONTEXT, answer)])
    a, b = span_of(answer)
    over = CONTEXT.index("over")
    batch = obj.collate(rows(obj.preprocess(data, "validation")))
    has_over = [
        w for w in range(len(batch["offsets"])) if (batch["offsets"][w, :, 0] == over).any()
    ]
    has_end = [w for w in range(len(batch["offsets"])) if (batch["offsets"][w, :, 1] == b).any()]
    first = [w for w in has_over if w not in has_end]
    assert first, "the fixture must cut the answer at a window border"

    def model(batch):
        return hand_set(batch, [(first[0], over, 9.0), (a, 5.0)], [(b, 5.0)])

    _, decoded, _ = evaluate(obj, data, model)
    assert decoded[0]["answer"] == answer
    assert decoded[0]["score"] == 10.0


@pytest.mark.parametrize(
    ("max_answer_length", "expected"), [(11, "fox jumps over the lazy"), (10, "fox jumps")]
)
def test_max_answer_length_and_start_before_end(tiny_wordpiece, max_answer_length, expected):
    tok = tiny_wordpiece
    obj = extractive(tok, max_length=64, max_answer_length=max_answer_length)
    # "fox jumps" is 5 tokens (fo ##x ju ##m ##ps), "fox jumps over the lazy" 11
    assert len(tok("fox jumps", add_special_tokens=False)["input_ids"]) == 5
    assert len(tok("fox jumps over the lazy", add_special_tokens=False)["input_ids"]) == 11
    fox, jumps_end = span_of("fox")[0], span_of("fox jumps")[1]
    lazy_end, brown_end = span_of("fox jumps over the lazy")[1], span_of("brown")[1]

    def model(batch):
        # fox..lazy scores 10, fox..jumps 8; fox..brown (end before start) would score 14
        return hand_set(batch, [(fox, 5.0)], [(lazy_end, 5.0), (jumps_end, 3.0), (brown_end, 9.0)])

    _, decoded, _ = evaluate(obj, qa_dataset([("What jumps?", CONTEXT, "fox")]), model)
    assert decoded[0]["answer"] == expected


@pytest.mark.parametrize(
    ("nulls", "threshold", "expected"),
    [
        ((4.0, 4.0), 0.0, "answer"),  # null 8 < best span 10
        ((6.0, 6.0), 0.0, ""),  # null 12 - 10 = 2 > 0
        ((6.0, 6.0), 3.0, "answer"),  # 2 <= threshold 3
        ((6.0, 6.0), 2.0, "answer"),  # not more than the threshold
    ],
)
def test_version_2_no_answer_threshold(tiny_wordpiece, nulls, threshold, expected):
    obj = extractive(
        tiny_wordpiece, version_2_with_negative=True, null_score_diff_threshold=threshold
    )
    answer = "sleeps all day"
    data = qa_dataset([("What does the dog do?", CONTEXT, None)])
    a, b = span_of(answer)

    def model(batch):
        return hand_set(batch, [(a, 5.0)], [(b, 5.0)], null=[nulls] * len(batch["offsets"]))

    scores, decoded, _ = evaluate(obj, data, model)
    assert decoded[0]["answer"] == (answer if expected else "")
    assert scores["exact_match"] == (0.0 if expected else 100.0)
    assert set(scores) >= {"no_answer_f1"} and "has_answer_f1" not in scores


def test_version_2_null_score_is_the_lowest_over_windows(tiny_wordpiece):
    obj = extractive(tiny_wordpiece, version_2_with_negative=True)
    answer = "sleeps all day"
    data = qa_dataset([("What does the dog do?", CONTEXT, answer)])
    a, b = span_of(answer)

    def model(batch):
        nulls = [(6.0, 6.0)] * len(batch["offsets"])  # 12 > 10 in every window ...
        nulls[-1] = (2.0, 2.0)  # ... but one: its 4 is the null score
        return hand_set(batch, [(a, 5.0)], [(b, 5.0)], null=nulls)

    scores, decoded, _ = evaluate(obj, data, model)
    assert decoded[0]["answer"] == answer
    assert scores["has_answer_f1"] == 100.0


def test_version_1_always_answers(tiny_wordpiece):
    obj = extractive(tiny_wordpiece)
    answer = "sleeps all day"
    a, b = span_of(answer)
    data = qa_dataset([("What does the dog do?", CONTEXT, answer)])

    def model(batch):
        return hand_set(batch, [(a, 5.0)], [(b, 5.0)], null=[(50.0, 50.0)] * len(batch["offsets"]))

    _, decoded, _ = evaluate(obj, data, model)
    assert decoded[0]["answer"] == answer


def test_records_of_several_examples_in_one_batch(tiny_wordpiece):
    obj = extractive(tiny_wordpiece, max_length=64)
    data = qa_dataset(
        [
            ("Who sleeps?", CONTEXT, "The dog"),
            ("What flows?", CONTEXT, "Rivers"),
            ("Who?", "Cats chase mice.", "Cats"),
        ]
    )
    marks = [span_of("The dog"), span_of("Rivers"), (0, 4)]

    def model(batch):
        start = torch.full(batch["offsets"].shape[:2], -10.0)
        end = start.clone()
        for w, example in enumerate(batch["example_id"].tolist()):
            a, b = marks[example]
            start[w][batch["offsets"][w, :, 0] == a] = 1.0
            end[w][batch["offsets"][w, :, 1] == b] = 1.0
        return FixedLogits(start, end)

    scores, decoded, _ = evaluate(obj, data, model)
    assert [d["answer"] for d in decoded] == ["The dog", "Rivers", "Cats"]
    assert scores["exact_match"] == 100.0


# ================================================================ generative QA


def gen_cfg(**kw):
    return OmegaConf.structured(GenerativeQAConfig(name="generative_qa", _target_="x", **kw))


def generative(tok, max_length=128, max_new_tokens=8, **kw):
    cfg = gen_cfg(**kw)
    cfg.decoding.max_new_tokens = max_new_tokens
    return GenerativeQA(cfg, tok, max_length)


def prompt_of(question, context, template=GenerativeQAConfig.prompt_template):
    return template.format(context=context, question=question)


def test_label_mask_is_exactly_the_prompt(tiny_bpe):
    tok = tiny_bpe
    obj = generative(tok)
    answer = "the lazy dog"
    [row] = rows(obj.preprocess(qa_dataset([("Who sleeps?", CONTEXT, answer)]), "train"))
    prompt = tok(prompt_of("Who sleeps?", CONTEXT))["input_ids"]
    target = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = row["prompt_length"]
    assert n == len(prompt)
    assert row["input_ids"] == prompt + target
    assert row["labels"] == [IGNORE] * n + target
    assert tok.decode(row["labels"][n:]) == " the lazy dog<|endoftext|>"
    assert row["example_id"] == 0


def test_collate_right_pads_training_and_left_pads_prompts(tiny_bpe):
    tok = tiny_bpe
    obj = generative(tok)
    data = qa_dataset(
        [("Who sleeps?", CONTEXT, "the lazy dog"), ("Who?", "Cats chase mice.", "Cats")]
    )
    long, short = rows(obj.preprocess(data, "validation"))
    batch = obj.collate([long, short])
    length = len(long["input_ids"])
    pad = len(long["input_ids"]) - len(short["input_ids"])
    assert batch["input_ids"][1].tolist()[: len(short["input_ids"])] == short["input_ids"]
    assert batch["labels"][1].tolist() == short["labels"] + [IGNORE] * pad
    assert batch["attention_mask"][1].tolist() == [1] * len(short["input_ids"]) + [0] * pad
    assert batch["input_ids"].shape == (2, length)
    p_long, p_short = long["prompt_length"], short["prompt_length"]
    assert batch["prompt_ids"].shape == (2, p_long)
    assert batch["prompt_ids"][1].tolist()[p_long - p_short :] == short["input_ids"][:p_short]
    assert batch["prompt_mask"][1].tolist() == [0] * (p_long - p_short) + [1] * p_short
    assert batch["prompt_mask"][0].tolist() == [1] * p_long
    assert set(obj.model_inputs(batch)) == {"input_ids", "attention_mask", "labels"}


def test_long_context_is_cut_around_the_answer_in_training(tiny_bpe):
    tok = tiny_bpe
    answer = "Snow covers the peaks"
    before = CONTEXT.replace(" Snow covers the peaks.", "")
    context = f"{before} {before} {answer}."  # the answer only at the very end
    question = "What covers the peaks?"
    full = len(tok(prompt_of(question, context))["input_ids"])
    max_length = full // 2
    obj = generative(tok, max_length=max_length)
    data = qa_dataset([(question, context, answer)])
    [row] = rows(obj.preprocess(data, "train"))
    assert len(row["input_ids"]) <= max_length
    prompt = tok.decode(row["input_ids"][: row["prompt_length"]])
    assert prompt.startswith("Context: ") and prompt.endswith(
        "\nQuestion: What covers the peaks?\nAnswer:"
    )
    kept = prompt.removeprefix("Context: ").split("\nQuestion:")[0]
    assert answer in kept and kept in context
    assert tok.decode([t for t in row["labels"] if t != IGNORE]) == " " + answer + "<|endoftext|>"


def test_evaluation_cuts_the_end_of_the_context_and_keeps_room_to_generate(tiny_bpe):
    tok = tiny_bpe
    question = "What covers the peaks?"
    full = len(tok(prompt_of(question, CONTEXT))["input_ids"])
    obj = generative(tok, max_length=full, max_new_tokens=10)
    [row] = rows(
        obj.preprocess(qa_dataset([(question, CONTEXT, "Snow covers the peaks")]), "validation")
    )
    assert row["prompt_length"] <= full - 10
    assert len(row["input_ids"]) <= full
    kept = (
        tok.decode(row["input_ids"][: row["prompt_length"]])
        .removeprefix("Context: ")
        .split("\nQuestion:")[0]
    )
    assert CONTEXT.startswith(kept) and len(kept) < len(CONTEXT)
    [unlabelled] = rows(
        obj.preprocess(qa_dataset([(question, CONTEXT, None)]).remove_columns("answers"), "predict")
    )
    assert "labels" not in unlabelled
    assert unlabelled["input_ids"] == row["input_ids"][: row["prompt_length"]]


def test_no_room_for_any_context_is_an_error(tiny_bpe):
    obj = generative(tiny_bpe, max_length=16)
    with pytest.raises(LmlabError, match=r"data.max_length=16: no room for the context of row 0"):
        obj.preprocess(qa_dataset([("Who sleeps all day long?", CONTEXT, "the lazy dog")]), "train")


@pytest.mark.parametrize("template", ["{context} {question} {answer}", "Q: {question}", "{context"])
def test_prompt_template_errors_name_the_key(tiny_bpe, template):
    with pytest.raises(LmlabError, match="objective.prompt_template"):
        generative(tiny_bpe, prompt_template=template)


class ScriptedGenerator(torch.nn.Module):
    """Stands in for a causal LM: generate() appends fixed continuations, records its kwargs."""

    def __init__(self, continuations):
        super().__init__()
        self.continuations = continuations
        self.kwargs = None

    def forward(self, input_ids, attention_mask, labels):
        return SimpleNamespace(loss=torch.tensor(1.5))

    def generate(self, input_ids, **kwargs):
        self.kwargs = kwargs
        width = max(len(c) for c in self.continuations)
        pad = kwargs["pad_token_id"]
        new = [c + [pad] * (width - len(c)) for c in self.continuations]
        return torch.cat([input_ids, torch.tensor(new)], dim=1)


def test_answers_stop_at_end_of_text_and_the_first_newline(tiny_bpe):
    tok = tiny_bpe
    eos = tok.eos_token_id
    obj = generative(tok)
    data = qa_dataset(
        [
            ("Who sleeps?", CONTEXT, "The dog"),
            ("What flows?", CONTEXT, "Rivers"),
            ("Who?", CONTEXT, "fox"),
        ]
    )
    model = ScriptedGenerator(
        [
            tok(" The dog\nQuestion: who", add_special_tokens=False)["input_ids"],
            tok(" rivers ", add_special_tokens=False)["input_ids"]
            + [eos]
            + tok(" sea")["input_ids"],
            [eos],
        ]
    )
    batch = obj.collate(rows(obj.preprocess(data, "validation")))
    metrics, records = obj.eval_step(model, batch)
    assert [r["answer"] for r in records] == ["The dog", "rivers", ""]
    answer_tokens = sum(
        len(tok(" " + a, add_special_tokens=False)["input_ids"]) + 1
        for a in ["The dog", "Rivers", "fox"]
    )
    assert metrics["loss"][1] == answer_tokens
    assert model.kwargs["pad_token_id"] == eos and model.kwargs["eos_token_id"] == eos
    assert model.kwargs["max_new_tokens"] == 8 and model.kwargs["do_sample"] is False
    assert "temperature" not in model.kwargs
    scores = obj.score(records, data, model)
    # EM 1, 1, 0; F1 1, 1, 0
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(200 / 3)
    assert obj.decode(records, data) == [
        {"answer": "The dog"},
        {"answer": "rivers"},
        {"answer": ""},
    ]


def test_decoding_settings_reach_generate(tiny_bpe):
    obj = generative(tiny_bpe)
    obj.cfg.decoding.do_sample = True
    obj.cfg.decoding.temperature = 0.7
    obj.cfg.decoding.top_k = 5
    obj.cfg.decoding.top_p = 0.9
    obj.cfg.decoding.num_beams = 2
    obj.cfg.decoding.repetition_penalty = 1.3
    model = ScriptedGenerator([[tiny_bpe.eos_token_id]])
    obj.generate(model, torch.tensor([[5, 6]]), torch.tensor([[1, 1]]))
    expected = {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "num_beams": 2}
    expected |= {"repetition_penalty": 1.3, "do_sample": True, "max_new_tokens": 8}
    assert {k: model.kwargs[k] for k in expected} == expected


def tiny_gpt(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        initializer_range=0.2,  # the default 0.02 repeats one token whatever the prompt
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def test_left_padded_generation_equals_one_prompt_at_a_time(tiny_bpe):
    """A random tiny GPT, greedy: padding a short prompt on the left changes nothing."""
    tok = tiny_bpe
    obj = generative(tok, max_new_tokens=6)
    model = tiny_gpt(tok)
    data = qa_dataset(
        [("Who sleeps all day?", CONTEXT, "The dog"), ("Who?", "Cats chase mice.", "Cats")]
    )
    features = rows(obj.preprocess(data, "validation"))
    together = obj.predict_step(model, obj.collate(features))
    alone = [obj.predict_step(model, obj.collate([f]))[0] for f in features]
    assert together == alone
    assert [r["example_id"] for r in together] == [0, 1]
    assert together[0]["answer"] != together[1]["answer"]


# ================================================================ short real training runs


TINY_SENTENCES = [
    "The cat sleeps under the green tree.",
    "People walk quickly to the station.",
    "A small bird sings every morning.",
    "The river runs over the blue mountain.",
    "Students read books in the large library.",
    "The baker makes fresh bread slowly.",
    "Trains leave the city at nine.",
    "The old dog waits by the river.",
]


def qa_jsonl(path, n=24, seed=0):
    """n SQuAD-style rows: a three-sentence context, 'which word follows X?', the next word."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            context = " ".join(rng.sample(TINY_SENTENCES, 3))
            words = context.split()
            k = rng.randrange(len(words) - 1)
            answer = words[k + 1].strip(".")
            start = len(" ".join(words[: k + 1])) + 1
            row = {
                "id": str(i),
                "title": "",
                "question": f"Which word follows {words[k].strip('.').lower()}?",
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
            assert context[start : start + len(answer)] == answer
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    return qa_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl")


TINY_BERT = [
    "model=bert_tiny",
    "++model.config.hidden_size=32",
    "++model.config.num_hidden_layers=2",
    "++model.config.num_attention_heads=2",
    "++model.config.intermediate_size=64",
]
TINY_GPT = [
    "model=gpt_tiny",
    "++model.config.n_embd=32",
    "++model.config.n_layer=2",
    "++model.config.n_head=2",
]


@pytest.mark.parametrize(
    ("objective", "extra"),
    [
        ("extractive_qa", [*TINY_BERT, "objective.doc_stride=8", "data.max_length=32"]),
        ("generative_qa", [*TINY_GPT, "objective.decoding.max_new_tokens=4", "data.max_length=48"]),
    ],
)
def test_a_few_training_steps_log_em_f1_and_the_export_predicts(
    objective, extra, qa_file, tmp_path, lmlab_cache_dir, monkeypatch
):
    from lmlab.build import compose, train

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    monkeypatch.setenv("LMLAB_OUTPUT_DIR", str(tmp_path / "outputs"))
    overrides = [
        f"objective={objective}",
        *extra,
        "model.tokenizer.vocab_size=300",
        "data=files",
        f"data.train={qa_file}",
        "data.val_fraction=0.25",
        "data.batch_size=4",
        "debug=default",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=2",
    ]
    run_dir = tmp_path / "run"
    metrics = train(compose(overrides, run_dir=str(run_dir)))
    assert metrics["global_step"] == 4
    for key in ("val/loss", "val/exact_match", "val/f1"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["val/exact_match"] <= metrics["val/f1"] <= 100.0
    samples = (run_dir / "samples.txt").read_text()
    assert "Q: Which word follows" in samples and "predicted:" in samples
    saved = json.loads((run_dir / "export" / "lmlab.json").read_text())
    assert saved["objective"]["monitor"] == "val/f1"
    # lmlab-predict's path: the export back from disk, answers for new questions
    from lmlab.predict import load, predict

    trained = load(run_dir)
    context = "The old dog waits by the river. A small bird sings every morning."
    questions = [{"question": "Which word follows old?", "context": context}] * 2
    outputs = predict(trained.objective, trained.model, questions)
    assert len(outputs) == 2 and outputs[0] == outputs[1]
    if objective == "extractive_qa":
        assert set(outputs[0]) == {"answer", "score", "start"}
        start = outputs[0]["start"]
        assert context[start : start + len(outputs[0]["answer"])] == outputs[0]["answer"]
    else:
        assert set(outputs[0]) == {"answer"} and isinstance(outputs[0]["answer"], str)
