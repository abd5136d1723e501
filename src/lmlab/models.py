"""Backbones: a Hugging Face model built from scratch (config overrides) or from_pretrained."""

from __future__ import annotations

from lmlab.errors import LmlabError


def build(model_cfg, head: str, tokenizer, extra: dict | None = None):
    """The `head` Auto class (e.g. AutoModelForMaskedLM) for `model_cfg`, and the names of
    the tensors a pretrained checkpoint did not provide (None when built from scratch)."""
    import transformers

    auto = getattr(transformers, head)
    settings = {**dict(model_cfg.config), **(extra or {})}
    if model_cfg.name_or_path:
        try:
            config = transformers.AutoConfig.from_pretrained(model_cfg.name_or_path, **settings)
            if config.pad_token_id is None:  # GPT-2's: batched sequence heads need one
                config.pad_token_id = tokenizer.pad_token_id
            # a new task head (e.g. other labels) replaces the checkpoint's own
            model, info = auto.from_pretrained(
                model_cfg.name_or_path,
                config=config,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
            new = sorted({*info["missing_keys"], *(k for k, *_ in info["mismatched_keys"])})
            return model.train(), new  # from_pretrained returns eval mode: dropout off
        except (OSError, ValueError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0]
            raise LmlabError(
                f"model.name_or_path: cannot load '{model_cfg.name_or_path}' as {head}: {reason}"
            ) from None
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
        return auto.from_config(config), None
    except ValueError as e:
        raise LmlabError(
            f"model: cannot build a {head} for model_type '{model_cfg.model_type}': {e}"
        ) from e
