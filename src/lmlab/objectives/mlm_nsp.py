"""BERT's joint pre-training: masked LM on next-sentence segment pairs; loss = MLM + NSP.

Built by composition: an NSP part makes and pads the segment pairs, an MLM part masks them,
computes the masked-LM loss and fits a missing MLM head; this class adds the NSP loss from
the pre-training model's seq_relationship head."""

from __future__ import annotations

from lmlab.objectives.base import Metrics, Objective, masked_cross_entropy
from lmlab.objectives.mlm import MaskedLM
from lmlab.objectives.nsp import NextSentencePrediction


class MaskedLMNextSentence(Objective):
    head = "AutoModelForPreTraining"
    metric_names = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")

    def __init__(self, cfg, tokenizer, max_length: int, seed: int = 0):
        super().__init__(cfg, tokenizer, max_length, seed)
        self.mlm = MaskedLM(cfg, tokenizer, max_length, seed)
        self.nsp = NextSentencePrediction(cfg, tokenizer, max_length, seed)

    # -- data: NSP's segment pairs, padded, then masked as MLM does
    def preprocess(self, dataset, split: str):
        return self.nsp.preprocess(dataset, split)

    def collate(self, features):
        batch = self.nsp.collate(features)
        batch["input_ids"], batch["labels"] = self.mlm.mask(batch["input_ids"])
        return batch

    def fingerprint(self):
        """NSP's settings (the pairs are NSP's), under this objective's name."""
        return self.nsp.fingerprint() | super().fingerprint()

    # -- model
    def init_new_head(self, model, new_tensors, datamodule):
        return self.mlm.init_new_head(model, new_tensors, datamodule)

    def step(self, model, batch) -> Metrics:
        mlm_loss, mlm_accuracy, n_masked, out = self.mlm.mlm_loss(model, batch)
        nsp_logits = model.cls.seq_relationship(out.pooler_output)
        nsp_loss, nsp_accuracy = masked_cross_entropy(nsp_logits, batch["next_sentence_label"])
        n = len(nsp_logits)
        return {
            "loss": (mlm_loss + nsp_loss, n),
            "mlm_loss": (mlm_loss, n_masked),
            "mlm_accuracy": (mlm_accuracy, n_masked),
            "nsp_loss": (nsp_loss, n),
            "nsp_accuracy": (nsp_accuracy, n),
        }

    def epoch_metrics(self, means):
        return self.mlm.epoch_metrics({"loss": means["mlm_loss"]})
