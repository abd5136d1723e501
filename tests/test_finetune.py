"""Fine-tuning knobs shared by every task: layer-wise lr decay, freezing, starting points."""

import pytest

from lmlab.config import pretrained_path
from lmlab.errors import LmlabError
from lmlab.module import depth, freeze, parameter_groups


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def tiny_gpt():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, bos_token_id=0)
    return GPT2LMHeadModel(config)


OPTIM = {"lr": 1.0, "weight_decay": 0.01, "layer_lr_decay": 0.5}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bert.embeddings.word_embeddings.weight", 0),
        ("bert.embeddings.LayerNorm.bias", 0),
        ("bert.encoder.layer.0.attention.self.query.weight", 1),
        ("bert.encoder.layer.2.output.dense.weight", 3),
        ("bert.pooler.dense.weight", 4),
        ("classifier.weight", 4),
        ("transformer.wte.weight", 0),
        ("transformer.wpe.weight", 0),
        ("transformer.h.1.mlp.c_fc.weight", 2),
        ("transformer.ln_f.weight", 4),
    ],
)
def test_depth_of_bert_and_gpt2_parameters(name, expected):
    assert depth(name, layers=3) == expected


def test_layer_lr_decay_gives_each_depth_its_rate():
    model = tiny_bert()
    lr_of = {}
    for group in parameter_groups(model, OPTIM):
        for param in group["params"]:
            lr_of[id(param)] = (group["lr"], group["weight_decay"])
    named = dict(model.named_parameters())
    # 3 layers: head 1.0, layer 3 0.5, layer 2 0.25, layer 1 0.125, embeddings 0.0625
    assert lr_of[id(named["classifier.weight"])] == (1.0, 0.01)
    assert lr_of[id(named["bert.encoder.layer.2.output.dense.weight"])] == (0.5, 0.01)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.bias"])] == (0.125, 0.0)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == (0.0625, 0.01)
    assert lr_of[id(named["bert.embeddings.LayerNorm.weight"])] == (0.0625, 0.0)
    assert sum(len(g["params"]) for g in parameter_groups(model, OPTIM)) == len(named)


def test_without_decay_there_are_two_groups_at_the_base_rate():
    groups = parameter_groups(tiny_gpt(), {**OPTIM, "layer_lr_decay": 1.0})
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [(1.0, 0.0), (1.0, 0.01)]


def test_freezing_embeddings_and_first_layers():
    model = tiny_bert()
    freeze(model, embeddings=True, first_layers=2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "bert.embeddings.word_embeddings.weight" in frozen
    assert "bert.encoder.layer.1.output.dense.weight" in frozen
    assert "bert.encoder.layer.2.output.dense.weight" not in frozen
    assert "classifier.weight" not in frozen
    grouped = {id(p) for g in parameter_groups(model, OPTIM) for p in g["params"]}
    assert not grouped & {id(p) for n, p in model.named_parameters() if n in frozen}


def test_a_run_dir_stands_for_its_export(tmp_path):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "config.json").write_text("{}")
    assert pretrained_path(str(run)) == str(run / "export")
    assert pretrained_path(str(run / "export")) == str(run / "export")
    assert pretrained_path("bert-base-uncased") == "bert-base-uncased"


def test_an_unfinished_run_dir_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(LmlabError, match="run dir without an export"):
        pretrained_path(str(tmp_path))


def grown_bert(factor=3.0):
    """A tiny BERT classifier whose input embeddings grew, as pre-training grows them."""
    import torch

    torch.manual_seed(0)
    model = tiny_bert().eval()
    with torch.no_grad():
        embeddings = model.bert.embeddings
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            getattr(embeddings, name).weight.mul_(factor)
    return model


def test_rescaled_embeddings_have_a_fresh_models_size_and_the_same_outputs():
    import torch

    from lmlab.models import rescale_embeddings

    model = grown_bert(3.0)
    batch = {
        "input_ids": torch.tensor([[2, 7, 9, 3, 0]]),
        "attention_mask": torch.tensor([[1] * 4 + [0]]),
    }
    before = model(**batch).logits
    words = model.bert.embeddings.word_embeddings.weight
    expected = 0.02 * 16**0.5 / float(words.norm(dim=1).mean())
    assert rescale_embeddings(model) == pytest.approx(expected)
    assert float(words.norm(dim=1).mean()) == pytest.approx(0.02 * 16**0.5)  # initializer_range
    torch.testing.assert_close(model(**batch).logits, before, atol=1e-5, rtol=1e-4)


def test_embeddings_are_not_rescaled_where_that_would_change_the_model():
    from transformers import BertConfig, BertForMaskedLM

    from lmlab.models import rescale_embeddings

    assert rescale_embeddings(tiny_gpt()) is None  # GPT-2: no LayerNorm right after them
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)  # fmt: skip
    masked_lm = BertForMaskedLM(config)
    masked_lm.bert.embeddings.word_embeddings.weight.data.mul_(3)
    assert rescale_embeddings(masked_lm) is None  # the tied decoder would scale the logits
    assert rescale_embeddings(tiny_bert()) is None  # already a fresh model's size


def test_exports_of_models_lmlab_trained_from_scratch_are_rescaled_by_default(tmp_path):
    import json

    from omegaconf import OmegaConf

    from lmlab.experiment import start_from_pretrained
    from lmlab.export import TASK_FILE

    class NoHead:
        def init_new_head(self, *args):
            return None

    scratch, continued, other = tmp_path / "scratch", tmp_path / "minilm-continued", tmp_path / "hf"
    for path, task in [(scratch, {"from_scratch": True}), (continued, {"from_scratch": False})]:
        path.mkdir()
        (path / TASK_FILE).write_text(json.dumps(task))
    for path, setting, rescaled in [
        (scratch, None, True),
        (continued, None, False),  # e.g. MiniLM after lmlab-chain's adaptive pre-training
        (other, None, False),  # e.g. MiniLM itself
        (scratch, False, False),
        (other, True, True),
    ]:
        model = grown_bert(3.0)
        cfg = OmegaConf.create({"name_or_path": str(path), "rescale_embeddings": setting})
        notes = start_from_pretrained(cfg, model, ["classifier.weight"], NoHead(), None)
        norm = float(model.bert.embeddings.word_embeddings.weight.norm(dim=1).mean())
        assert (norm == pytest.approx(0.08)) == rescaled
        assert notes[0] == "new weights (not in the checkpoint): classifier.weight"
        assert any("input embeddings scaled by" in note for note in notes) == rescaled


def test_exports_record_whether_their_weights_go_back_to_a_model_trained_from_scratch(tmp_path):
    import json

    from omegaconf import OmegaConf

    from lmlab.export import TASK_FILE
    from lmlab.run import task_info

    def from_scratch(start):
        cfg = OmegaConf.create(
            {
                "objective": {},
                "data": {"max_length": 8},
                "model": {"name": "m", "name_or_path": start},
            }
        )
        return task_info(cfg)["from_scratch"]

    (tmp_path / TASK_FILE).write_text(json.dumps({"from_scratch": True}))
    assert from_scratch(None)
    assert from_scratch(str(tmp_path))  # continued from an lmlab export trained from scratch
    (tmp_path / TASK_FILE).write_text(json.dumps({"from_scratch": False}))
    assert not from_scratch(str(tmp_path))
    assert not from_scratch(str(tmp_path / "minilm"))


@pytest.mark.parametrize(
    "config_class, names",
    [
        ("BertConfig", ["attention_probs_dropout_prob"]),
        ("GPT2Config", ["attn_pdrop"]),
        ("DistilBertConfig", ["attention_dropout"]),
    ],
)
def test_attention_dropout_is_set_under_the_architectures_own_name(config_class, names):
    import transformers

    from lmlab.models import set_attention_dropout

    config = getattr(transformers, config_class)()
    set_attention_dropout(config, None)  # null: the architecture's default stands
    assert all(getattr(config, name) > 0 for name in names)
    set_attention_dropout(config, 0.0)
    assert [getattr(config, name) for name in names] == [0.0] * len(names)


def test_attention_dropout_on_an_architecture_without_one_is_a_one_line_error():
    from transformers import T5Config

    from lmlab.models import set_attention_dropout

    with pytest.raises(LmlabError, match=r"^model.attention_dropout: the t5 config has none of"):
        set_attention_dropout(T5Config(), 0.0)
