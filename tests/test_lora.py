"""objective.peft=lora: what trains, the merged and the adapter export, resume, every
fine-tuning objective, bad settings. Tiny pretrained BERT and GPT-2 directories are written
here (hidden 32, 2 layers) so that the task head is new, as with MiniLM."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import load_benchmark

from lmlab.errors import LmlabError
from lmlab.experiment import build_experiment, compose, resolve

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_wordpiece, tiny_bpe):
    """family -> a local Hugging Face directory: a tiny BertModel (no task head) or GPT-2."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    bert = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=len(tiny_wordpiece), intermediate_size=64, **SMALL)
    BertModel(config).save_pretrained(bert)
    tiny_wordpiece.save_pretrained(bert)
    gpt = tmp_path_factory.mktemp("tiny-gpt2")
    config = GPT2Config(vocab_size=len(tiny_bpe), n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(gpt)
    tiny_bpe.save_pretrained(gpt)
    return {"bert": bert, "gpt2": gpt}


EXPERIMENTS = {  # objective -> (experiment, family)
    "sequence_classification": ("finetune_sentiment", "bert"),
    "token_classification": ("finetune_ner", "bert"),
    "extractive_qa": ("finetune_qa_extractive", "bert"),
    "generative_qa": ("finetune_qa_generative", "gpt2"),
}
HEADS = {"sequence_classification": "classifier", "token_classification": "classifier",
         "extractive_qa": "qa_outputs", "generative_qa": None}  # fmt: skip


@pytest.fixture(scope="module")
def lora(pretrained, tiny_task_data, lmlab_cache_dir):
    """lora(objective, *more) -> the overrides of a 4-step LoRA run of that objective."""

    def overrides(objective: str, *more: str) -> list[str]:
        experiment, family = EXPERIMENTS[objective]
        return [
            f"experiment={experiment}",
            "model=hf",
            f"model.name_or_path={pretrained[family]}",
            "objective.peft=lora",
            "objective.lora.r=4",
            "debug=default",
            "data.batch_size=4",
            "data.max_length=32",
            f"paths.cache_dir={lmlab_cache_dir}",
            *tiny_task_data[objective],
            *more,
        ]

    return overrides


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def train_quietly(overrides, run_dir):
    return load_benchmark().train_quietly(overrides, run_dir)


# ---------------------------------------------------------------- what trains


@pytest.mark.parametrize("objective", list(EXPERIMENTS))
def test_only_the_adapters_and_the_head_train(objective, lora, tmp_path):
    exp = build_experiment(compose(lora(objective), run_dir=str(tmp_path)))
    names = trainable(exp.model)
    adapters = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    assert adapters and all(".query." in n or ".value." in n or ".c_attn." in n for n in adapters)
    head = HEADS[objective]
    rest = names - adapters
    if head is None:  # GPT-2's lm_head is tied to the (frozen) input embeddings
        assert rest == set()
    else:
        assert rest and all(f"{head}.modules_to_save." in n for n in rest)
    # the optimiser gets exactly these, also with layer-wise lr decay
    exp.module.optim.layer_lr_decay = 0.5
    from lmlab.module import parameter_groups

    grouped = [p for g in parameter_groups(exp.model, exp.module.optim) for p in g["params"]]
    wanted = {id(p) for n, p in exp.model.named_parameters() if n in names}
    assert {id(p) for p in grouped} == wanted
    assert 0 < sum(p.numel() for p in grouped) < sum(p.numel() for p in exp.model.parameters()) / 5


def test_training_changes_only_adapters_and_head_and_the_merged_export_is_the_model(lora, tmp_path):
    """After 4 steps every frozen tensor is bitwise the starting one; the merged export
    loads with AutoModelForSequenceClassification (no lmlab, no peft imported) and gives
    the trained LoRA model's logits."""
    run_dir = tmp_path / "run"
    overrides = lora("sequence_classification", "trainer.limit_val_batches=1")
    overrides += ["keep_checkpoints=true", "load_best=false"]  # the export: last.ckpt's weights
    cfg = compose(overrides, run_dir=str(run_dir))
    start = {n: t.clone() for n, t in build_experiment(cfg).model.state_dict().items()}
    metrics = train_quietly(overrides, run_dir)
    assert metrics["global_step"] == 4
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    state = {n.removeprefix("model."): t for n, t in state.items() if n.startswith("model.")}
    assert state.keys() == start.keys()
    changed = {n for n in state if not torch.equal(state[n], start[n])}
    assert any(".lora_B." in n for n in changed)  # B starts at zero: it moved
    assert any("classifier.modules_to_save" in n for n in changed)
    assert all(".lora_" in n or "modules_to_save" in n for n in changed), changed

    exp = build_experiment(cfg)  # the trained LoRA model, from its checkpoint
    exp.model.load_state_dict(state)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 21, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = exp.model.eval()(input_ids=ids, attention_mask=mask).logits
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification as A\n"
        f"m = A.from_pretrained({str(run_dir / 'export')!r}).eval()\n"
        f"ids = torch.tensor({ids.tolist()}); mask = torch.tensor({mask.tolist()})\n"
        "logits = m(input_ids=ids, attention_mask=mask).logits.tolist()\n"
        "mods = [k for k in sys.modules if k.split('.')[0] in ('lmlab', 'peft')]\n"
        "print(json.dumps({'logits': logits, 'modules': mods, 'labels': m.config.id2label}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["modules"] == []
    assert loaded["labels"] == {"0": "negative", "1": "positive"}
    assert torch.allclose(torch.tensor(loaded["logits"]), expected, atol=1e-5)
    assert not (run_dir / "export" / "adapter_config.json").exists()


def test_the_adapter_export_loads_with_peft_and_lmlab_eval(lora, pretrained, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lmlab.run import evaluate

    run_dir = tmp_path / "run"
    overrides = lora("sequence_classification", "objective.lora.export=adapter")
    metrics = train_quietly(overrides, run_dir)
    export = run_dir / "export"
    assert (export / "adapter_config.json").is_file()
    assert not (export / "model.safetensors").exists()  # the adapter only, not a whole model
    # as docs/finetuning.md says: the base model with the export's config, then the adapter
    config = AutoConfig.from_pretrained(export)
    base = AutoModelForSequenceClassification.from_pretrained(pretrained["bert"], config=config)
    model = PeftModel.from_pretrained(base, export).eval()
    ids = torch.tensor([[2, 10, 11, 3]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5)
    # lmlab-eval's path: the run dir's adapter export scores as the run's final validation
    scores = evaluate(run_dir)
    assert scores["val/accuracy"] == pytest.approx(metrics["val/accuracy"])
    assert scores["val/loss"] == pytest.approx(metrics["val/loss"], abs=1e-5)
    # lmlab-predict's: the label names come back from the export's config
    from lmlab.predict import predict
    from lmlab.run import load

    trained = load(run_dir)
    rows = predict(trained.objective, trained.model, [{"text": "a bad river"}, {"text": "good"}])
    assert len(rows) == 2 and all(row["label"] in ("negative", "positive") for row in rows)


def test_a_killed_lora_run_resumes_bit_identical(tmp_path, lmlab_cache_dir):
    """benchmarks/resume_exact.py's classification run with LoRA, killed mid-epoch (after
    step 10, resumed from its step-9 checkpoint) and re-run: the uninterrupted run's weights
    and logged losses."""
    bench = load_benchmark()
    data = bench.write_data(tmp_path)
    args = bench.overrides("classification", 0, data)
    args += ["objective.peft=lora", f"paths.cache_dir={lmlab_cache_dir}"]
    train_quietly(args, tmp_path / "whole")
    bench.killed_in_process(args, ["+callbacks.kill.batch=10"], tmp_path / "resumed")
    assert bench.outcome(tmp_path / "resumed")["step"] == 9
    train_quietly(args, tmp_path / "resumed")
    whole, resumed = bench.outcome(tmp_path / "whole"), bench.outcome(tmp_path / "resumed")
    assert resumed == whole and whole["step"] == 12


# ---------------------------------------------------------------- every objective takes steps


@pytest.mark.parametrize("objective", ["token_classification", "extractive_qa", "generative_qa"])
def test_lora_trains_each_fine_tuning_objective(objective, lora, tmp_path):
    more = ["trainer.limit_val_batches=1"]
    metrics = train_quietly(lora(objective, *more), tmp_path / "run")
    assert metrics["global_step"] == 4
    assert (tmp_path / "run" / "export" / "config.json").is_file()


def test_gpt2_text_generation_composes_with_lora(pretrained, tiny_text_file, tmp_path):
    cfg = compose(
        ["experiment=finetune_generation", "model=hf", f"model.name_or_path={pretrained['gpt2']}",
         "objective.peft=lora", "debug=default", "data=files", f"data.train={tiny_text_file}",
         "data.max_length=32"],
        run_dir=str(tmp_path),
    )  # fmt: skip
    exp = build_experiment(cfg)
    assert {n.split(".")[-3] for n in trainable(exp.model)} == {"lora_A", "lora_B"}
    assert any(".c_attn.lora_A." in n for n in trainable(exp.model))


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective.lora.r=0", r"^objective\.lora\.r: expected an integer >= 1"),
        ("objective.lora.alpha=-1", r"^objective\.lora\.alpha: expected a number > 0"),
        ("objective.lora.dropout=1.5", r"^objective\.lora\.dropout: expected a probability"),
        ("objective.lora.export=zip", r"^objective\.lora\.export: expected merged or adapter"),
        ("objective.peft=qlora", r"^objective\.peft: expected lora, or null"),
        ("objective.lora.target_modules=[]", r"^objective\.lora\.target_modules: expected a non"),
    ],
)
def test_bad_lora_settings_are_one_line_naming_the_key(override, message):
    cfg = compose(["experiment=finetune_sentiment", "objective.peft=lora", override], "unused")
    with pytest.raises(LmlabError, match=message) as error:
        resolve(cfg)
    assert "\n" not in str(error.value)


def test_target_modules_the_model_lacks_name_the_key_and_the_linear_layers(lora, tmp_path):
    cfg = compose(
        lora("sequence_classification", "objective.lora.target_modules=[q_proj]"), str(tmp_path)
    )
    with pytest.raises(LmlabError, match=r"^objective\.lora\.target_modules: .*query") as error:
        build_experiment(cfg)
    assert "\n" not in str(error.value)


def test_pre_training_objectives_have_no_peft_setting():
    with pytest.raises(Exception, match="peft"):
        compose(["experiment=pretrain_mlm", "objective.peft=lora"], "unused")


def test_the_modules_of_new_tensors_train_in_full():
    from lmlab.adapters import new_modules

    new = ["classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "logit_scale"]
    assert new_modules(new) == {"classifier", "bert.pooler.dense"}
    assert new_modules(None) == set()
