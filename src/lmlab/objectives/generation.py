"""Text generation shared by the causal-LM objectives (clm, text_generation, qa_generative).

`continue_prompts` is the one call of `model.generate()` in lmlab's objectives, driven by
the objective's `decoding` settings (lmlab.config.DecodingConfig). It samples from a forked
random generator seeded by the objective's seed, so the samples of given weights are
reproducible and generation never changes the training's random stream; it runs the model
in eval mode without gradients and restores the mode the model had. `left_pad` batches
prompts of different lengths so that each continues as it would alone; `prompt_room` says
how many prompt tokens fit before the new ones in the model's positions.
"""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError


def generation_settings(decoding) -> dict:
    """The `model.generate()` keywords of a DecodingConfig; the sampling knobs only when
    sampling, the repetition penalty only when it changes something."""
    settings = {
        "max_new_tokens": decoding.max_new_tokens,
        "num_beams": decoding.num_beams,
        "do_sample": decoding.do_sample,
    }
    if decoding.repetition_penalty != 1.0:
        settings["repetition_penalty"] = decoding.repetition_penalty
    if decoding.do_sample:
        settings |= {
            "temperature": decoding.temperature,
            "top_k": decoding.top_k,
            "top_p": decoding.top_p,
        }
    return settings


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts (token ids) padded on the left to one width."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    return input_ids, mask


def prompt_room(model, max_new_tokens: int) -> int:
    """How many prompt tokens fit before `max_new_tokens` generated ones in the model's
    positions (any number for a model without a limit)."""
    positions = getattr(model.config, "max_position_embeddings", None) or 10**9
    room = positions - max_new_tokens
    if room < 1:
        raise LmlabError(
            f"objective.decoding.max_new_tokens: {max_new_tokens} leaves "
            f"no room for a prompt in the model's {positions} positions"
        )
    return room


def continue_prompts(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoding,
    *,
    seed: int,
    pad_token_id: int,
    eos_token_id: int | None,
    **extra,
) -> list[list[int]]:
    """The new token ids of each left-padded prompt, continued with the `decoding` settings
    (and `extra` generate() keywords). Sampling is seeded by `seed` in a forked generator;
    the model's train/eval mode is restored afterwards."""
    device = getattr(model, "device", input_ids.device)
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(
                input_ids.to(device),
                attention_mask=attention_mask.to(device),
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_id,
                **generation_settings(decoding),
                **extra,
            )
    finally:
        model.train(was_training)
    return out[:, input_ids.shape[1] :].tolist()
