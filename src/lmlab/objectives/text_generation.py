"""Text generation: a causal LM trained on plain text (packed blocks, as in clm) or on
prompt -> completion pairs (one example per pair; the loss covers only the completion and
the end-of-text after it). Each validation generates a sample from every configured prompt
with the `decoding` settings (through lmlab.objectives.generation, as clm and generative QA
do); lmlab-predict continues prompts the same way."""

from __future__ import annotations

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE
from lmlab.objectives.clm import CausalLM
from lmlab.objectives.generation import continue_prompts, left_pad, prompt_room


def fit_pair(prompt: list[int], completion: list[int], max_length: int):
    """Cuts a pair to `max_length` tokens: the prompt from the left (keeping the tokens
    next to the completion), the completion from the right; when both are long, the
    prompt keeps half of max_length."""
    keep = max(max_length - len(completion), min(len(prompt), max_length // 2))
    prompt = prompt[max(0, len(prompt) - keep) :]
    return prompt, completion[: max_length - len(prompt)]


class TextGeneration(CausalLM):
    """Plain `text` (packed blocks) or `prompt` + `completion` pairs."""

    @staticmethod
    def texts(dataset):
        names = dataset.column_names
        if "text" not in names and {"prompt", "completion"} <= set(names):
            return [p + c for p, c in zip(dataset["prompt"], dataset["completion"])]
        return dataset["text"] if "text" in names else []

    # -- data
    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's tokens; end-of-text for an empty prompt, where documents start."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] or [
            self.tokenizer.eos_token_id
        ]

    def preprocess(self, dataset, split: str):
        names = dataset.column_names
        if split == "predict":
            return self._preprocess_prompts(dataset)
        if "text" not in names and {"prompt", "completion"} <= set(names):
            return self._preprocess_pairs(dataset)
        if "prompt" in names and "text" not in names:
            raise LmlabError(
                "data.columns.completion: the data has a 'prompt' column but no 'completion' "
                f"(columns: {', '.join(names)}); map one onto it, or give a 'text' column"
            )
        return super().preprocess(dataset, split)

    def _preprocess_pairs(self, dataset):
        eos = self.tokenizer.eos_token_id

        def encode(batch):
            out = {"input_ids": [], "labels": []}
            for prompt, completion in zip(batch["prompt"], batch["completion"]):
                ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
                p, c = fit_pair(self.prompt_ids(prompt), ids + [eos], self.max_length)
                out["input_ids"].append(p + c)
                out["labels"].append([IGNORE] * len(p) + c)
            return out

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)

    def _preprocess_prompts(self, dataset):
        column = self._prompt_column(dataset)

        def encode(batch, indices):
            ids = [self.prompt_ids(text)[-self.max_length :] for text in batch[column]]
            return {"input_ids": ids, "example_id": indices}

        return dataset.map(
            encode, batched=True, with_indices=True, remove_columns=dataset.column_names
        )

    @staticmethod
    def _prompt_column(dataset) -> str:
        for name in ("prompt", "text"):
            if name in dataset.column_names:
                return name
        raise LmlabError(
            f"input: rows need a 'prompt' (or 'text') field (fields: "
            f"{', '.join(dataset.column_names)})"
        )

    def collate(self, features):
        import torch

        if "labels" in features[0]:  # prompt/completion pairs
            return self.pad(features, {"input_ids": self.tokenizer.pad_token_id, "labels": IGNORE})
        if "example_id" not in features[0]:  # packed blocks
            return super().collate(features)
        batch = self.pad(features, {"input_ids": self.tokenizer.pad_token_id})
        batch["example_id"] = torch.tensor([f["example_id"] for f in features])
        return batch

    # -- model
    def eval_step(self, model, batch):
        """One cheap record per batch, so that the module calls `score` (the samples)."""
        return self.step(model, batch), [{"sequences": len(batch["input_ids"])}]

    def score(self, records, examples, model) -> dict:
        prompts = list(self.cfg.prompts)
        generated = self.generate(model, [self.prompt_ids(p) for p in prompts])
        return {"samples": [p + g for p, g in zip(prompts, generated)]}

    def generate(self, model, prompts: list[list[int]]) -> list[str]:
        """Continues each prompt (token ids, cut from the left to fit the model's positions)
        with the decoding settings, left-padded into one batch (lmlab.objectives.generation:
        seeded by `seed` in a forked generator, train mode restored)."""
        d = self.cfg.decoding
        room = prompt_room(model, d.max_new_tokens)
        pad = self.tokenizer.pad_token_id
        new = continue_prompts(
            model,
            *left_pad([ids[-room:] for ids in prompts], pad),
            d,
            seed=self.seed,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    # -- lmlab-predict
    def predict_step(self, model, batch) -> list[dict]:
        lengths = batch["attention_mask"].sum(1).tolist()
        prompts = [row[:n].tolist() for row, n in zip(batch["input_ids"], lengths)]
        generated = self.generate(model, prompts)
        return [
            {"example_id": int(i), "generated": g} for i, g in zip(batch["example_id"], generated)
        ]

    def decode(self, records, examples) -> list[dict]:
        column = self._prompt_column(examples)
        generated = {r["example_id"]: r["generated"] for r in records}
        return [
            {"prompt": prompt, "generated": generated[i]}
            for i, prompt in enumerate(examples[column])
        ]

    def finish(self, model, run_dir) -> dict:
        """The samples of every validation are already in samples.txt."""
        return {}
