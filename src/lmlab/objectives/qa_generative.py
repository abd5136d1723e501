"""Generative question answering with a GPT-style model: the prompt (`prompt_template` with
the context and the question) is followed by " " + the first answer + end-of-text, and the
loss covers only the answer. At evaluation the same batch also generates answers from the
prompts alone (left-padded) with the `decoding` settings, through lmlab.objectives.generation
as clm and text generation do, scored with the SQuAD exact match and F1
(lmlab.objectives.qa).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE, Metrics, Objective
from lmlab.objectives.clm import causal_lm_metrics
from lmlab.objectives.generation import continue_prompts
from lmlab.objectives.qa import REQUIRED_COLUMNS, answer_scores, qa_columns, qa_texts
from lmlab.tokenizers import with_pad_token


class GenerativeQA(Objective):
    head = "AutoModelForCausalLM"
    required_columns = REQUIRED_COLUMNS
    metric_names = ("loss",)
    meta_keys = ("example_id", "prompt_ids", "prompt_mask")

    texts = staticmethod(qa_texts)

    def __init__(self, cfg, tokenizer, max_length: int, seed: int = 0):
        super().__init__(cfg, tokenizer, max_length, seed)
        template = cfg.prompt_template
        try:
            template.format(context="", question="")
        except (KeyError, IndexError, ValueError) as e:
            raise LmlabError(
                f"objective.prompt_template: {template!r} is not a format string with only "
                f"{{context}} and {{question}} ({type(e).__name__}: {e})"
            ) from None
        if "{context}" not in template or "{question}" not in template:
            raise LmlabError(
                f"objective.prompt_template: {template!r} must contain {{context}} and {{question}}"
            )
        if tokenizer.eos_token_id is None:
            raise LmlabError("model.tokenizer: generative QA needs a tokenizer with an eos token")

    def fingerprint(self) -> dict:
        return super().fingerprint() | {
            "prompt_template": self.cfg.prompt_template,
            "max_new_tokens": self.cfg.decoding.max_new_tokens,
        }

    # -- data
    def preprocess(self, dataset, split: str):
        self.check_columns(dataset, qa_columns(split))
        return dataset.map(
            self._encode,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            fn_kwargs={"split": split},
        )

    def _encode(self, batch, indices, split: str):
        labelled = split != "predict"
        targets = self._targets(batch["answers"]) if labelled else [[] for _ in indices]
        # splits that generate keep room for the new tokens: a prompt + max_new_tokens
        # never runs past the positions the model has
        new_tokens = 0 if split == "train" else self.cfg.decoding.max_new_tokens
        reserves = [max(len(t), new_tokens) for t in targets]
        # only training chooses the part of a long context by the gold answer
        if split == "train":
            answers = [_answer_span(a) for a in batch["answers"]]
        else:
            answers = [None] * len(indices)
        prompts = self._prompts(batch["context"], batch["question"], reserves, answers, indices)
        out = {
            "input_ids": [p + t for p, t in zip(prompts, targets, strict=True)],
            "example_id": list(indices),
            "prompt_length": [len(p) for p in prompts],
        }
        if labelled:
            out["labels"] = [[IGNORE] * len(p) + t for p, t in zip(prompts, targets, strict=True)]
        return out

    def _prompts(self, contexts, questions, reserves, answers, indices) -> list[list[int]]:
        """Prompt token ids, a whole batch through the tokenizer at once; only the prompts
        longer than max_length - reserve are tokenized again, with a cut context."""
        tok = self.tokenizer
        fmt = self.cfg.prompt_template.format
        prompts = tok([fmt(context=c, question=q) for c, q in zip(contexts, questions)])
        prompts = prompts["input_ids"]
        too_long = [i for i, p in enumerate(prompts) if len(p) > self.max_length - reserves[i]]
        if not too_long:
            return prompts
        long_contexts = [contexts[i] for i in too_long]
        enc = tok(long_contexts, add_special_tokens=False, return_offsets_mapping=True)
        for i, offsets in zip(too_long, enc["offset_mapping"], strict=True):
            prompts[i] = self._cut(
                contexts[i],
                questions[i],
                offsets,
                len(prompts[i]),
                reserves[i],
                answers[i],
                indices[i],
            )
        return prompts

    def _targets(self, answers: list[dict]) -> list[list[int]]:
        """A space, the first answer and end-of-text; end-of-text alone for no answer."""
        texts = [a["text"][0].strip() if a["text"] else "" for a in answers]
        ids = self.tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [(target if text else []) + [eos] for text, target in zip(texts, ids, strict=True)]

    def _cut(
        self,
        context: str,
        question: str,
        offsets: list,
        length: int,
        reserve: int,
        answer: tuple[int, int] | None,
        index: int,
    ) -> list[int]:
        """The prompt's token ids in at most max_length - reserve tokens, its context cut to
        a window: the start of it, or with `answer` (its char span) the part around the
        answer. Template and question are never cut. `length`: the uncut prompt's tokens."""
        fmt = self.cfg.prompt_template.format
        room = self.max_length - reserve
        fixed = length - len(offsets)  # template and question
        keep = room - fixed
        while True:
            if keep <= 0:
                raise LmlabError(
                    f"data.max_length={self.max_length}: no room for the context of row {index}: "
                    f"template + question take {fixed} tokens and the answer "
                    f"(or objective.decoding.max_new_tokens) {reserve}; raise data.max_length"
                )
            lo = _window_start(offsets, keep, answer)
            text = context[offsets[lo][0] : offsets[min(lo + keep, len(offsets)) - 1][1]].strip()
            ids = self.tokenizer(fmt(context=text, question=question))["input_ids"]
            if len(ids) <= room:
                return ids
            keep -= len(ids) - room  # tokens merge differently at the cut: try again

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The right-padded training batch (prompt + answer, labels -100 on the prompt and
        the padding), plus the left-padded prompts that generation continues from."""
        pad = self.pad_id()
        batch = {}
        if "labels" in features[0]:
            batch = self.pad(features, {"input_ids": pad, "labels": IGNORE})
        prompts = [f["input_ids"][: f["prompt_length"]] for f in features]
        length = max(len(p) for p in prompts)
        batch["prompt_ids"] = torch.tensor([[pad] * (length - len(p)) + p for p in prompts])
        batch["prompt_mask"] = torch.tensor(
            [[0] * (length - len(p)) + [1] * len(p) for p in prompts]
        )
        batch["example_id"] = torch.tensor([f["example_id"] for f in features])
        return batch

    def pad_id(self) -> int:
        """GPT tokenizers may have no pad token: lmlab's one fallback (end-of-text)."""
        return with_pad_token(self.tokenizer).pad_token_id

    # -- model
    def step(self, model, batch) -> Metrics:
        return causal_lm_metrics(model, self.model_inputs(batch))

    def eval_step(self, model, batch) -> tuple[Metrics, list[dict]]:
        return self.step(model, batch), self.predict_step(model, batch)

    def predict_step(self, model, batch) -> list[dict]:
        answers = self.generate(model, batch["prompt_ids"], batch["prompt_mask"])
        ids = batch["example_id"].tolist()
        return [{"example_id": i, "answer": a} for i, a in zip(ids, answers, strict=True)]

    def generate(self, model, prompt_ids, prompt_mask) -> list[str]:
        """Continues left-padded prompts with the `decoding` settings (lmlab.objectives.
        generation: seeded by `seed` in a forked generator, train mode restored); the answer
        is the new text up to end-of-text or the first newline, stripped."""
        tok = self.tokenizer
        new_rows = continue_prompts(
            model,
            prompt_ids,
            prompt_mask,
            self.cfg.decoding,
            seed=self.seed,
            pad_token_id=self.pad_id(),
            eos_token_id=tok.eos_token_id,
        )
        answers = []
        for new in new_rows:
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            text = tok.decode(new, skip_special_tokens=True)
            answers.append(text.split("\n")[0].strip())
        return answers

    # -- split metrics and predictions
    def score(self, records: list[dict], examples, model) -> dict[str, Any]:
        return answer_scores({r["example_id"]: r["answer"] for r in records}, examples)

    def decode(self, records: list[dict], examples) -> list[dict]:
        answers = {r["example_id"]: r["answer"] for r in records}
        return [{"answer": answers.get(i, "")} for i in range(len(examples))]


def _answer_span(answers: dict) -> tuple[int, int] | None:
    if not answers["text"]:
        return None
    start = answers["answer_start"][0]
    return start, start + len(answers["text"][0])


def _window_start(offsets: list, keep: int, answer: tuple[int, int] | None) -> int:
    """The first context token of a `keep`-token window: the start of the context, unless
    the answer ends past it; then the window centred on the answer."""
    if answer is None:
        return 0
    tokens = [i for i, (a, b) in enumerate(offsets) if b > answer[0] and a < answer[1]]
    if not tokens or tokens[-1] < keep:
        return 0
    centre = (tokens[0] + tokens[-1]) // 2
    return max(0, min(centre - keep // 2, len(offsets) - keep))
