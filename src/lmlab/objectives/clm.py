"""Causal language modelling (GPT): documents packed into full blocks with an end-of-text
separator between them; labels are the inputs (the model shifts them)."""

from __future__ import annotations

from pathlib import Path

from lmlab.objectives.base import Metrics, Objective, pack, perplexity


class CausalLM(Objective):
    head = "AutoModelForCausalLM"
    metric_names = ("loss",)

    def preprocess(self, dataset, split: str):
        self.check_columns(dataset)
        return pack(dataset, self.tokenizer, self.max_length, self.tokenizer.eos_token_id)

    def collate(self, features):
        batch = self.pad(features, {"input_ids": self.tokenizer.pad_token_id})
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    def step(self, model, batch) -> Metrics:
        out = model(**batch)
        n = int((batch["labels"][:, 1:] != -100).sum())
        return {"loss": (out.loss, n)}

    def epoch_metrics(self, means):
        return {"perplexity": perplexity(means["loss"])}

    def finish(self, model, run_dir) -> dict:
        """Generates a sample from `objective.sample_prompt` and writes it to samples.txt."""
        import torch

        tok = self.tokenizer
        prompt = self.cfg.sample_prompt
        ids = tok(prompt, return_tensors="pt")["input_ids"] if prompt else None
        if ids is None or ids.shape[1] == 0:
            ids = torch.tensor([[tok.eos_token_id]])
        model.eval()
        with torch.no_grad():
            out = model.generate(
                ids.to(model.device),
                attention_mask=torch.ones_like(ids).to(model.device),
                max_new_tokens=self.cfg.sample_max_new_tokens,
                min_new_tokens=self.cfg.sample_max_new_tokens // 2,  # not just an early end-of-text
                do_sample=True,
                top_k=50,
                pad_token_id=tok.pad_token_id,
            )
        sample = tok.decode(out[0], skip_special_tokens=True)
        Path(run_dir, "samples.txt").write_text(sample + "\n")
        return {"sample": sample}
