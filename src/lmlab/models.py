"""Backbones: a Hugging Face model built from scratch (config overrides) or from_pretrained.

load_or_create(model_cfg, head, tokenizer): the run's model; set_attention_dropout and
rescale_embeddings adjust a model's config or starting weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def load_or_create(model_cfg, head: str, tokenizer, extra: dict | None = None):
    """The `head` Auto class (e.g. AutoModelForMaskedLM) for `model_cfg`, and the names of
    the tensors a pretrained checkpoint did not provide (None when built from scratch)."""
    import transformers

    auto = getattr(transformers, head)
    settings = {**dict(model_cfg.config), **(extra or {})}
    settings.pop("trust_remote_code", None)  # a from_pretrained argument, not a config value
    trust = trusts_remote_code(model_cfg)
    if model_cfg.name_or_path:
        check_code(model_cfg)
        if trust:
            print(
                "lmlab: warning: model.config.trust_remote_code=true: transformers may run the "
                f"Python code that comes with '{model_cfg.name_or_path}'",
                file=sys.stderr,
                flush=True,
            )
        return _from_pretrained(model_cfg, auto, head, tokenizer, settings, trust)
    specials = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    try:
        config = transformers.AutoConfig.for_model(
            model_cfg.model_type, **{k: v for k, v in specials.items() if v is not None}, **settings
        )
        set_attention_dropout(config, model_cfg.attention_dropout)
        return auto.from_config(config), None
    except ValueError as e:
        raise LmlabError(
            f"model: cannot build a {head} for model_type '{model_cfg.model_type}': {e}"
        ) from e


def _from_pretrained(model_cfg, auto, head: str, tokenizer, settings: dict, trust: bool):
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(
            model_cfg.name_or_path, trust_remote_code=trust, **settings
        )
        if config.pad_token_id is None:  # GPT-2's: batched sequence heads need one
            config.pad_token_id = tokenizer.pad_token_id
        set_attention_dropout(config, model_cfg.attention_dropout)
        # a new task head (e.g. other labels) replaces the checkpoint's own
        model, info = auto.from_pretrained(
            model_cfg.name_or_path,
            config=config,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            trust_remote_code=trust,
        )
        new = sorted({*info["missing_keys"], *(k for k, *_ in info["mismatched_keys"])})
        return model.train(), new  # from_pretrained returns eval mode: dropout off
    except (OSError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0]
        raise LmlabError(
            f"model.name_or_path: cannot load '{model_cfg.name_or_path}' as {head}: {reason}"
        ) from None


# the files in which a model directory can ask transformers to import its own Python
CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def custom_code(folder) -> str | None:
    """Which file of the local model directory `folder` names Python code of its own (an
    auto_map, which transformers imports under trust_remote_code); None when none does or
    `folder` is not a local directory."""
    folder = Path(str(folder or "")).expanduser()
    if not str(folder) or not folder.is_dir():
        return None
    for name in CODE_FILES:
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return name
    return None


def trusts_remote_code(model_cfg) -> bool:
    """model.config.trust_remote_code (False unless set): the user's choice, for the model and
    its tokenizer alike."""
    return bool((model_cfg.get("config") or {}).get("trust_remote_code", False))


def check_code(model_cfg) -> None:
    """model.name_or_path may bring its own Python only with model.config.trust_remote_code
    (from the command line: a stored config never passes it on)."""
    where = custom_code(model_cfg.name_or_path)
    if where and not trusts_remote_code(model_cfg):
        raise LmlabError(
            f"model.name_or_path: '{model_cfg.name_or_path}' comes with its own Python code "
            f"(auto_map in its {where}), which lmlab does not run; if you trust it, add "
            "++model.config.trust_remote_code=true to the command line"
        )


ATTENTION_DROPOUT_NAMES = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")


def set_attention_dropout(config, value: float | None) -> None:
    """model.attention_dropout under the name(s) the architecture's config uses."""
    if value is None:
        return
    names = [name for name in ATTENTION_DROPOUT_NAMES if hasattr(config, name)]
    if not names:
        raise LmlabError(
            f"model.attention_dropout: the {config.model_type} config has none of "
            f"{', '.join(ATTENTION_DROPOUT_NAMES)}; leave it null"
        )
    for name in names:
        setattr(config, name, value)


def rescale_embeddings(model) -> float | None:
    """Shrinks the word, position and token-type embeddings of a BERT-style encoder by one
    factor, to the mean row norm of a fresh initialisation; returns the factor, or None where
    it would change the model's function or would not shrink them.

    Pre-training with a tied decoder grows the embeddings (2.2x after 1000 steps of
    pretrain_bert); Adam's steps have a fixed size, so at the same learning rate grown
    embeddings adapt to a new task that much slower (benchmarks/README.md: "Why BERT
    pre-training did not transfer"). The LayerNorm over their sum makes one common factor
    invisible to the rest of the network."""
    import torch

    embeddings = getattr(model.base_model, "embeddings", None)
    tables = [
        getattr(embeddings, name, None)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    output = model.get_output_embeddings()
    if not hasattr(embeddings, "LayerNorm") or tables[0] is None or output is not None:
        return None  # no LayerNorm right after them, or tied to an output head
    words = tables[0].weight.detach()
    fresh = model.config.initializer_range * words.shape[1] ** 0.5
    factor = fresh / float(words.norm(dim=1).mean())
    if factor >= 1:
        return None
    with torch.no_grad():
        for table in tables:
            if table is not None:
                table.weight.mul_(factor)
    return factor
