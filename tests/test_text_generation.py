"""Text generation: prompt/completion pairs (exact label masks, truncation, padding), the
loss and perplexity, seeded samples from the configured prompts, left-padded batched
generation for lmlab-predict, and samples.txt written at each validation of a tiny run."""

import math

import datasets
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config import DecodingConfig, ModelConfig, TextGenerationConfig, TokenizerConfig
from lmlab.errors import LmlabError
from lmlab.objectives.base import pack
from lmlab.objectives.text_generation import TextGeneration, fit_pair

IGNORE = -100


def cfg(prompts=("The",), **decoding):
    decoding = {"max_new_tokens": 6, "do_sample": False, **decoding}
    return OmegaConf.structured(
        TextGenerationConfig(
            name="text_generation",
            _target_="x",
            prompts=list(prompts),
            decoding=DecodingConfig(**decoding),
        )
    )


@pytest.fixture(scope="module")
def tok(tmp_path_factory, tiny_corpus):
    """The BPE tokenizer as a run gets it: through lmlab.tokenizers.load_or_train (pad = eos)."""
    from lmlab.tokenizers import load_or_train

    model = ModelConfig(name="gpt", model_type="gpt2", tokenizer=TokenizerConfig(vocab_size=400))
    cache = tmp_path_factory.mktemp("cache")
    return load_or_train(OmegaConf.structured(model), tiny_corpus * 3, "textgen-tests", cache)


def tiny_gpt(tok, positions=64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=positions)
    return GPT2LMHeadModel(config).eval()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def rows(dataset):
    return [dataset[i] for i in range(len(dataset))]


def pairs(*pairs):
    return datasets.Dataset.from_dict(
        {"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]}
    )


# ================================================================ data


@pytest.mark.parametrize(
    ("prompt", "completion", "max_length", "kept_prompt", "kept_completion"),
    [
        (3, 4, 10, 3, 4),  # fits: unchanged
        (10, 5, 12, 7, 5),  # long prompt: its last 7 tokens make room for the completion
        (3, 20, 12, 3, 9),  # long completion: cut from the right after the whole prompt
        (20, 20, 12, 6, 6),  # both long: the prompt keeps half
        (0, 20, 8, 0, 8),
    ],
)
def test_fit_pair(prompt, completion, max_length, kept_prompt, kept_completion):
    p, c = list(range(100, 100 + prompt)), list(range(completion))
    got_p, got_c = fit_pair(p, c, max_length)
    assert got_p == p[len(p) - kept_prompt :]
    assert got_c == c[:kept_completion]


def test_pairs_label_exactly_the_completion_and_eos(tok):
    eos = tok.eos_token_id
    obj = TextGeneration(cfg(), tok, 64)
    data = pairs(("The dog", " sleeps all day."), ("Rivers flow", " into the sea"))
    out = rows(obj.preprocess(data, "train"))
    for row, (prompt, completion) in zip(out, zip(data["prompt"], data["completion"])):
        p, c = ids(tok, prompt), ids(tok, completion)
        assert row["input_ids"] == p + c + [eos]
        assert row["labels"] == [IGNORE] * len(p) + c + [eos]
    assert set(out[0]) == {"input_ids", "labels"}


def test_pairs_empty_prompt_starts_from_end_of_text(tok):
    eos = tok.eos_token_id
    (row,) = rows(TextGeneration(cfg(), tok, 64).preprocess(pairs(("", "Snow")), "train"))
    assert row["input_ids"] == [eos, *ids(tok, "Snow"), eos]
    assert row["labels"] == [IGNORE, *ids(tok, "Snow"), eos]


def test_pairs_truncation_keeps_the_prompt_end_and_the_completion_start(tok):
    eos = tok.eos_token_id
    obj = TextGeneration(cfg(), tok, 12)
    # 15 prompt tokens, 5 completion tokens + eos: the prompt keeps its last 12 - 6 = 6
    p, c = ids(tok, "The dog sleeps all day. Rivers flow"), ids(tok, " into the sea.")
    assert (len(p), len(c)) == (15, 5)
    (row,) = rows(
        obj.preprocess(pairs(("The dog sleeps all day. Rivers flow", " into the sea.")), "train")
    )
    assert row["input_ids"] == p[-6:] + c + [eos]
    assert row["labels"] == [IGNORE] * 6 + c + [eos]
    # a 2-token prompt stays whole; the 30-token completion keeps its first 10 (no eos)
    long = "The quick brown fox jumps over the lazy dog. The dog sleeps all day."
    p, c = ids(tok, "The dog"), ids(tok, long)
    assert (len(p), len(c)) == (2, 30)
    (row,) = rows(obj.preprocess(pairs(("The dog", long)), "train"))
    assert row["input_ids"] == p + c[:10]
    assert row["labels"] == [IGNORE] * 2 + c[:10]


def test_pairs_collate_right_pads_with_ignored_labels(tok):
    pad = tok.pad_token_id
    obj = TextGeneration(cfg(), tok, 64)
    features = rows(obj.preprocess(pairs(("The", " dog sleeps all day."), ("A", " cat")), "train"))
    batch = obj.collate(features)
    n0, n1 = (len(f["input_ids"]) for f in features)
    assert n1 < n0
    assert batch["input_ids"][1].tolist() == features[1]["input_ids"] + [pad] * (n0 - n1)
    assert batch["labels"][1].tolist() == features[1]["labels"] + [IGNORE] * (n0 - n1)
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (n0 - n1)
    assert batch["labels"][0].tolist() == features[0]["labels"]


def test_plain_text_is_packed_as_clm(tok, tiny_corpus):
    data = datasets.Dataset.from_dict({"text": tiny_corpus})
    got = rows(TextGeneration(cfg(), tok, 16).preprocess(data, "train"))
    assert got == rows(pack(data, tok, 16, tok.eos_token_id))


def test_texts_for_a_trained_tokenizer_cover_prompt_and_completion():
    assert TextGeneration.texts(pairs(("The ", "dog"), ("A ", "cat"))) == ["The dog", "A cat"]


@pytest.mark.parametrize(
    ("columns", "key"), [(["prompt"], "data.columns.completion"), (["body"], "data.columns.text")]
)
def test_missing_columns_name_the_key(tok, columns, key):
    data = datasets.Dataset.from_dict({c: ["x"] for c in columns})
    with pytest.raises(LmlabError, match=key):
        TextGeneration(cfg(), tok, 16).preprocess(data, "train")


# ================================================================ loss and metrics


def test_loss_is_the_completion_tokens_only_and_perplexity_its_exp(tok):
    obj = TextGeneration(cfg(), tok, 64)
    data = pairs(("The dog", " sleeps all day."), ("Snow", " covers the peaks"))
    features = rows(obj.preprocess(data, "train"))
    batch = obj.collate(features)
    model = tiny_gpt(tok)
    with torch.no_grad():
        metrics, _ = obj.eval_step(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # by hand: next-token cross entropy at the completion + eos positions only
    terms = []
    for b, f in enumerate(features):
        for t in range(1, len(f["input_ids"])):
            if f["labels"][t] != IGNORE:
                terms.append(-logits[b, t - 1].log_softmax(-1)[f["input_ids"][t]])
    loss, weight = metrics["loss"]
    counted = sum(len(ids(tok, c)) + 1 for c in data["completion"])
    assert weight == counted == len(terms)
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    ppl = obj.epoch_metrics({"loss": float(loss)})["perplexity"]
    assert ppl == pytest.approx(math.exp(float(loss)))


def test_eval_step_returns_one_record_so_that_samples_are_scored(tok):
    obj = TextGeneration(cfg(), tok, 64)
    batch = obj.collate(rows(obj.preprocess(pairs(("A", " b"), ("C", " d")), "train")))
    _, records = obj.eval_step(tiny_gpt(tok), batch)
    assert records == [{"sequences": 2}]


# ================================================================ generation


def test_samples_continue_each_prompt_reproducibly_without_touching_the_global_rng(tok):
    obj = TextGeneration(cfg(["The", "Snow covers", ""], do_sample=True, top_k=20), tok, 64)
    model = tiny_gpt(tok)
    torch.manual_seed(123)
    first = obj.score([{}], None, model)["samples"]
    after = torch.rand(3)
    torch.manual_seed(123)
    second = obj.score([{}], None, model)["samples"]
    assert torch.equal(torch.rand(3), after)  # sampling drew from a forked generator
    assert first == second
    assert len(first) == 3
    assert first[0].startswith("The") and first[1].startswith("Snow covers")
    assert all(len(s) > len(p) for s, p in zip(first, ["The", "Snow covers", ""]))
    other = TextGeneration(obj.cfg, tok, 64, seed=1).score([{}], None, model)["samples"]
    assert other != first  # the seed decides the draw


def test_batched_generation_left_pads_so_each_prompt_continues_as_alone(tok):
    obj = TextGeneration(cfg(), tok, 64)  # greedy
    model = tiny_gpt(tok)
    short, long = ids(tok, "The"), ids(tok, "The quick brown fox jumps over")
    together = obj.generate(model, [short, long])
    assert together == obj.generate(model, [short]) + obj.generate(model, [long])
    assert model.training is False


def test_generate_restores_training_mode(tok):
    obj = TextGeneration(cfg(), tok, 64)
    model = tiny_gpt(tok).train()
    obj.generate(model, [ids(tok, "The")])
    assert model.training


def test_too_many_new_tokens_for_the_positions_names_the_key(tok):
    obj = TextGeneration(cfg(max_new_tokens=64), tok, 64)
    with pytest.raises(LmlabError, match="objective.decoding.max_new_tokens"):
        obj.generate(tiny_gpt(tok, positions=64), [ids(tok, "The")])


def test_long_prompts_keep_their_end_within_the_positions(tok):
    obj = TextGeneration(cfg(max_new_tokens=4), tok, 64)
    long = ids(tok, " ".join(["The dog sleeps all day."] * 20))
    assert len(long) > 16
    model = tiny_gpt(tok, positions=16)
    assert obj.generate(model, [long]) == obj.generate(model, [long[-12:]])


def test_predict_prompts_in_order(tok):
    obj = TextGeneration(cfg(max_new_tokens=3), tok, 64)
    model = tiny_gpt(tok)
    examples = datasets.Dataset.from_dict({"prompt": ["The quick brown fox", "A", "Snow"]})
    processed = obj.preprocess(examples, "predict")
    assert rows(processed)[1] == {"input_ids": ids(tok, "A"), "example_id": 1}
    records = []
    for batch_rows in ([0, 1], [2]):  # a partial last batch
        batch = obj.collate([processed[i] for i in batch_rows])
        records += obj.predict_step(model, batch)
    out = obj.decode(list(reversed(records)), examples)
    assert [o["prompt"] for o in out] == examples["prompt"]
    alone = obj.generate(model, [ids(tok, "A")])[0]
    assert out[1]["generated"] == alone


def test_predict_takes_text_when_there_is_no_prompt(tok):
    obj = TextGeneration(cfg(), tok, 64)
    examples = datasets.Dataset.from_dict({"text": ["Snow"]})
    assert rows(obj.preprocess(examples, "predict"))[0]["input_ids"] == ids(tok, "Snow")
    with pytest.raises(LmlabError, match="'prompt'"):
        obj.preprocess(datasets.Dataset.from_dict({"question": ["x"]}), "predict")


# ================================================================ a tiny run


def test_samples_are_written_at_each_validation(
    tmp_path, tiny_overrides, lmlab_cache_dir, monkeypatch
):
    from lmlab.build import compose, train

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(lmlab_cache_dir))
    overrides = [
        "objective=text_generation",
        "model=gpt_tiny",
        *tiny_overrides("gpt2", steps=4),
        "objective.prompts=[ROMEO:,The]",
        "objective.decoding.max_new_tokens=5",
    ]
    metrics = train(compose(overrides, run_dir=str(tmp_path)))
    assert metrics["val/perplexity"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    text = (tmp_path / "samples.txt").read_text()
    blocks = [b for b in text.split("===== step ") if b]
    # the validation at start and two during fit (steps 2 and 4); the final evaluation reuses
    # step 4's (the same weights), so it samples nothing again
    assert [int(b.split("\n", 1)[0]) for b in blocks] == [0, 2, 4]
    for block in blocks:  # a sample per prompt, each starting with its prompt
        samples = block.split("\n", 1)[1]
        assert samples.startswith("ROMEO:") and "\n\nThe" in samples
    assert "val/samples" not in metrics
