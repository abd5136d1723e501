"""Parameter-efficient fine-tuning: objective.peft=lora wraps the run's model in peft's LoRA.

The backbone's weights stay frozen; low-rank adapters on objective.lora.target_modules train,
and so does the task head (classifier, score, qa_outputs: peft's modules_to_save for the
task). The export is either the merged model (LoRA folded into the weights: a plain Hugging
Face model) or peft's adapter directory (objective.lora.export=merged | adapter).

Imports peft only when a run asks for it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from lmlab.errors import LmlabError

# the Hugging Face head an objective trains -> peft's task type (which head stays trainable)
TASK_TYPES = {
    "AutoModelForSequenceClassification": "SEQ_CLS",
    "AutoModelForTokenClassification": "TOKEN_CLS",
    "AutoModelForQuestionAnswering": "QUESTION_ANS",
    "AutoModelForCausalLM": "CAUSAL_LM",
}
ADAPTER_CONFIG = "adapter_config.json"  # what makes an export peft's adapter directory


def wrap(model, objective_cfg, head: str, new: list[str] | None = None):
    """`model` as objective.peft asks: itself (null), or a peft model whose only trainable
    parameters are the LoRA adapters, the task head and the modules holding `new` tensors
    (those a pretrained checkpoint did not provide: frozen, they would stay random)."""
    method = objective_cfg.get("peft")
    if method is None:
        return model
    if head not in TASK_TYPES:
        raise LmlabError(
            f"objective.peft: {method} serves fine-tuning objectives "
            f"({', '.join(TASK_TYPES)}); objective {objective_cfg.name} trains {head}"
        )
    from peft import LoraConfig, get_peft_model

    lora = objective_cfg.lora
    targets = list(lora.target_modules) if lora.target_modules else None
    config = LoraConfig(
        task_type=TASK_TYPES[head],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=sorted(new_modules(new)) or None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise LmlabError(
            f"objective.lora.target_modules: {str(e).strip().splitlines()[0]} (the "
            f"{model.config.model_type} model's linear layers include: "
            f"{', '.join(linear_names(model))})"
        ) from None


def new_modules(new: list[str] | None) -> set[str]:
    """The modules holding the `new` tensors; a tensor at the model's top level has none
    (peft matches module names as suffixes: an empty one would take every module)."""
    return {name.rpartition(".")[0] for name in new or ()} - {""}


def linear_names(model, limit: int = 12) -> list[str]:
    """The distinct last names of the model's linear layers: what target_modules can name."""
    from torch import nn

    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return list(dict.fromkeys(names))[:limit]


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def exported(model, objective_cfg):
    """What to save_pretrained for `model`: a merged copy of a LoRA model (LoRA folded into
    its weights, a plain transformers model) unless objective.lora.export=adapter; the
    training model itself is left as it is."""
    if not is_peft(model) or objective_cfg.lora.export == "adapter":
        return model
    return copy.deepcopy(model).merge_and_unload()  # a copy: the run's model stays wrapped


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def load_adapter(auto, folder: Path):
    """The model of an adapter export, merged: the base model its adapter_config.json names,
    built with the export's config.json (the task's label maps), then the adapter."""
    import transformers
    from peft import PeftModel

    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    model = auto.from_pretrained(base, config=config, trust_remote_code=False)
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
