"""BERT's joint pre-training: masked LM on next-sentence segment pairs; loss = MLM + NSP."""

from __future__ import annotations

from lmlab.objectives.base import Metrics, masked_cross_entropy
from lmlab.objectives.mlm import MaskedLM
from lmlab.objectives.nsp import NextSentencePrediction


class MaskedLMNextSentence(NextSentencePrediction, MaskedLM):
    head = "AutoModelForPreTraining"
    metric_names = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")

    # preprocess: NSP's segment pairs; collate: pad, then mask as MLM does
    def collate(self, features):
        batch = NextSentencePrediction.collate(self, features)
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"])
        return batch

    def step(self, model, batch) -> Metrics:
        mlm_loss, mlm_accuracy, n_masked, out = self.mlm_loss(model, batch)
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
        return MaskedLM.epoch_metrics(self, {"loss": means["mlm_loss"]})

    def fingerprint(self):
        return NextSentencePrediction.fingerprint(self)
