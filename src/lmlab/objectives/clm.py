"""Causal language modelling (GPT): documents packed into full blocks with an end-of-text
separator between them; labels are the inputs (the model shifts them). After training a
sample is generated from `sample_prompt` (lmlab.objectives.generation) and written atomically
(lmlab.fileutil) to samples.txt.

`causal_lm_metrics` (the loss of a causal LM over its labelled next tokens) is shared with
text generation and generative QA."""

from __future__ import annotations

from pathlib import Path

from lmlab.fileutil import write_text
from lmlab.objectives.base import IGNORE, Metrics, Objective, pack, perplexity


def causal_lm_metrics(model, inputs: dict) -> Metrics:
    """The model's own loss, weighted by the labelled positions it predicts (each label
    after the first position)."""
    out = model(**inputs)
    n = int((inputs["labels"][:, 1:] != IGNORE).sum())
    return {"loss": (out.loss, n)}


class CausalLM(Objective):
    head = "AutoModelForCausalLM"
    metric_names = ("loss",)

    def preprocess(self, dataset, split: str):
        self.check_columns(dataset)
        return pack(dataset, self.tokenizer, **self.packing())

    def packing(self) -> dict:
        return {"block_size": self.max_length, "separator_id": self.tokenizer.eos_token_id}

    def collate(self, features):
        batch = self.pad(features, {"input_ids": self.tokenizer.pad_token_id})
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
        return batch

    def step(self, model, batch) -> Metrics:
        return causal_lm_metrics(model, self.model_inputs(batch))

    def epoch_metrics(self, means):
        return {"perplexity": perplexity(means["loss"])}

    def finish(self, model, run_dir) -> dict:
        """Generates a sample from `objective.sample_prompt` and writes it to samples.txt:
        sampled with the default decoding settings (top_k 50, temperature 1, top_p 1), at
        least half of `sample_max_new_tokens` new tokens (not just an early end-of-text)."""
        from lmlab.config import DecodingConfig
        from lmlab.objectives.generation import continue_prompts, left_pad

        tok = self.tokenizer
        prompt = self.cfg.sample_prompt
        ids = (tok(prompt)["input_ids"] if prompt else []) or [tok.eos_token_id]
        new_tokens = self.cfg.sample_max_new_tokens
        decoding = DecodingConfig(max_new_tokens=new_tokens, do_sample=True)
        [new] = continue_prompts(
            model,
            *left_pad([ids], tok.pad_token_id),
            decoding,
            seed=self.seed,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            min_new_tokens=new_tokens // 2,
        )
        sample = tok.decode(ids + new, skip_special_tokens=True)
        write_text(Path(run_dir, "samples.txt"), sample + "\n")
        return {"sample": sample}
