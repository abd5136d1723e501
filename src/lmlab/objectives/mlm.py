"""Masked language modelling (BERT): fresh masks in every batch, 80/10/10 replacement,
optional whole-word masking, and the vocabulary projection computed only at the masked
positions (sparse prediction)."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import (
    IGNORE,
    Metrics,
    Objective,
    masked_cross_entropy,
    pack,
    perplexity,
)

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    probability: float,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (masked inputs, labels): labels hold the original token at chosen positions
    and -100 elsewhere. `special` positions are never chosen. With `word_starts`, every piece
    of a word shares the draw of its first piece, so words are masked whole."""
    draw = torch.rand(input_ids.shape)
    if word_starts is not None:
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        start_of_word = torch.where(word_starts, positions, 0).cummax(dim=1).values
        draw = draw.gather(1, start_of_word)
    chosen = (draw < probability) & ~special
    labels = torch.where(chosen, input_ids, IGNORE)
    how = torch.rand(input_ids.shape)
    to_mask = chosen & (how < mask_replace_prob)
    to_random = chosen & ~to_mask & (how < mask_replace_prob + random_replace_prob)
    inputs = input_ids.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = torch.randint(vocab_size, (int(to_random.sum()),))
    return inputs, labels


def mlm_head(model):
    """(encoder, head mapping hidden states to vocabulary logits) of a masked-LM model whose
    head is one module (BERT, RoBERTa, ...); None for other layouts, which then run in full."""
    encoder = model.base_model
    heads = [m for _, m in model.named_children() if m is not encoder]
    if len(heads) != 1:
        return None
    return encoder, getattr(
        heads[0], "predictions", heads[0]
    )  # BertForPreTraining: cls.predictions


def fit_transform(encoder, head, batches) -> int:
    """Ridge regression of the input embedding of each masked token on its hidden state,
    written into the head's dense layer; returns the number of masked tokens fitted on.
    A constant shift puts the GELU in its linear range; the LayerNorm then removes it."""
    embeddings = head.decoder.weight
    hidden, targets = [], []
    for batch in batches:
        chosen = batch["labels"] != IGNORE
        inputs = {k: v for k, v in batch.items() if k in ENCODER_INPUTS}
        hidden.append(encoder(**inputs).last_hidden_state[chosen])
        targets.append(embeddings[batch["labels"][chosen]])
    x = torch.cat(hidden).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # the bias
    gram = x.T @ x
    ridge = 0.05 * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    weights = torch.linalg.solve(gram + ridge, x.T @ torch.cat(targets).double())
    shift = 10 + float((x @ weights).abs().max())
    dense = head.transform.dense
    dense.weight.copy_(weights[:-1].T)
    dense.bias.copy_(weights[-1] + shift)
    head.transform.LayerNorm.bias.zero_()
    return len(x)


class MaskedLM(Objective):
    head = "AutoModelForMaskedLM"
    metric_names = ("loss", "accuracy")

    def __init__(self, cfg, tokenizer, max_length: int, seed: int = 0):
        super().__init__(cfg, tokenizer, max_length, seed)
        if tokenizer.mask_token_id is None:
            raise LmlabError(
                "objective: MLM needs a tokenizer with a mask token (a BERT-style model)"
            )
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # WordPiece marks a word's later pieces with '##'.
        self.continuation = torch.tensor([t is not None and t.startswith("##") for t in vocab])
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def preprocess(self, dataset, split: str):
        self.check_columns(dataset)
        return pack(dataset, self.tokenizer, **self.packing())

    def packing(self) -> dict:
        """[CLS] block [SEP]: max_length tokens in all."""
        tok = self.tokenizer
        return {
            "block_size": self.max_length - 2,
            "separator_id": tok.sep_token_id,
            "prefix": [tok.cls_token_id],
            "suffix": [tok.sep_token_id],
        }

    def collate(self, features):
        batch = self.pad(features, {"input_ids": self.tokenizer.pad_token_id})
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"])
        return batch

    def mask(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        special = torch.isin(input_ids, self.special_ids)
        word_starts = ~self.continuation[input_ids] | special if self.cfg.whole_word_mask else None
        return mask_tokens(
            input_ids,
            special,
            mask_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            probability=self.cfg.mlm_probability,
            mask_replace_prob=self.cfg.mask_replace_prob,
            random_replace_prob=self.cfg.random_replace_prob,
            word_starts=word_starts,
        )

    def mlm_loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, int, object]:
        """Encoder over all positions; vocabulary logits only where labels are set."""
        inputs = {k: v for k, v in batch.items() if k in ENCODER_INPUTS}
        chosen = batch["labels"] != IGNORE
        split = mlm_head(model)
        if split:
            out = split[0](**inputs)
            logits = split[1](out.last_hidden_state[chosen])
        else:
            out = model(**inputs)
            logits = out.logits[chosen]
        loss, accuracy = masked_cross_entropy(logits, batch["labels"][chosen])
        return loss, accuracy, int(chosen.sum()), out

    def init_new_head(self, model, new_tensors, datamodule):
        """A pretrained encoder shipped without its MLM head (sentence-transformers models
        such as MiniLM): BERT's head is a transform (dense, GELU, LayerNorm) and a decoder
        tied to the input embeddings. With a random transform the tied decoder predicts
        noise, so the transform is fitted to map masked positions onto the input embedding
        of their token, from a few training batches."""
        split = mlm_head(model)
        transform = getattr(split[1], "transform", None) if split else None
        tied = split and split[1].decoder.weight is model.get_input_embeddings().weight
        if transform is None or not tied or not any(".transform." in k for k in new_tensors):
            return None
        was_training = model.training
        model.eval()  # no dropout while fitting and measuring
        train = datamodule.first_batches("train", 12)
        fit, held_out = train[:8], train[8:] or train  # the scale is chosen on unseen batches
        check = datamodule.first_batches("validation", 4)
        with torch.no_grad():
            before = self.mean_loss(model, check)
            rows = fit_transform(split[0], split[1], fit)

            def held_out_loss(scale: float) -> float:  # the LayerNorm's scale: how peaked
                transform.LayerNorm.weight.fill_(scale)
                return self.mean_loss(model, held_out)

            transform.LayerNorm.weight.fill_(min((0.25, 0.5, 1.0, 2.0), key=held_out_loss))
            after = self.mean_loss(model, check)
        model.train(was_training)
        return (
            f"masked-LM head fitted onto the tied input embeddings ({rows} masked tokens): "
            f"first validation loss {after:.2f}, {before:.2f} with the random head"
        )

    def mean_loss(self, model, batches) -> float:
        return sum(float(self.mlm_loss(model, b)[0]) for b in batches) / len(batches)

    def step(self, model, batch) -> Metrics:
        loss, accuracy, n, _ = self.mlm_loss(model, batch)
        return {"loss": (loss, n), "accuracy": (accuracy, n)}

    def epoch_metrics(self, means):
        return {"perplexity": perplexity(means["loss"])}

    def fingerprint(self):
        return {**super().fingerprint(), "packing": "cls-block-sep"}
