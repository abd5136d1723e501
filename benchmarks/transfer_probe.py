"""Why does (or doesn't) a pre-trained encoder transfer? Frozen-feature measurements on SST-2
for encoders given as Hugging Face directories, against the same architecture with random
weights (same tokenizer: the first encoder's):

* linear probe: logistic regression on frozen features ([CLS] hidden state, pooler output,
  mean of token states) of `--train` SST-2 training sentences, scored on the 872 dev ones;
* the pooler's activations: mean |tanh| and the share of saturated units (|x| > 0.99), and
  how much the pooled vectors of different sentences differ (mean cosine similarity);
* the geometry of the input embeddings by how often each token occurs in the pre-training
  corpus (`--corpus`): norm and mean pairwise cosine per frequency band, and the share of
  SST-2's tokens in each band (rare tokens pushed along one shared direction = degenerate);
* what `AutoModelForSequenceClassification.from_pretrained` newly initialises (every tensor).

    python benchmarks/transfer_probe.py <export dir> [<export dir> ...] [--train 4000]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from _common import DATA, sst2


@torch.no_grad()
def features(encoder, tokenizer, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    out: dict[str, list] = {"cls": [], "pooler": [], "mean": []}
    encoder.eval()
    for i in range(0, len(texts), 128):
        batch = tokenizer(
            texts[i : i + 128], truncation=True, max_length=max_length,
            padding=True, return_tensors="pt",
        )  # fmt: skip
        states = encoder(**batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out["cls"].append(states.last_hidden_state[:, 0])
        out["pooler"].append(states.pooler_output)
        out["mean"].append((states.last_hidden_state * mask).sum(1) / mask.sum(1))
    return {k: torch.cat(v) for k, v in out.items()}


def probe(train_x, train_y, dev_x, dev_y) -> float:
    """Dev accuracy of a logistic regression on standardised features (fixed C: nothing is
    tuned on dev)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.numpy())
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(scaler.transform(train_x.numpy()), train_y)
    return float(clf.score(scaler.transform(dev_x.numpy()), dev_y))


def mean_cosine(vectors: torch.Tensor) -> float:
    """The mean cosine similarity over all pairs of distinct rows (nan for fewer than 2)."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    return float((unit @ unit.T).sum() - n) / (n * (n - 1))


def pooler_stats(pooled: torch.Tensor) -> str:
    cosine = mean_cosine(pooled)
    saturated = (pooled.abs() > 0.99).float().mean()
    return (
        f"mean abs {pooled.abs().mean():.3f}, saturated {saturated:.1%}, "
        f"mean cosine between sentences {cosine:.3f}"
    )


BANDS = ((0, 1), (1, 5), (5, 50), (50, 500), (500, None))


def token_counts(tokenizer, texts: list[str]) -> Counter:
    return Counter(
        i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids
    )


def embedding_bands(encoder, corpus: Counter, task: Counter) -> list[str]:
    """Per band of pre-training-corpus frequency: tokens, their share of the task's tokens,
    mean norm and mean pairwise cosine of their input embeddings."""
    weights = encoder.get_input_embeddings().weight.detach()
    cells = []
    for low, high in BANDS:
        ids = [i for i in range(len(weights)) if low <= corpus[i] < (high or float("inf"))]
        k, cosine = len(ids), mean_cosine(weights[ids])
        share = sum(task[i] for i in ids) / max(sum(task.values()), 1)
        norm = float(weights[ids].norm(dim=-1).mean()) if k else float("nan")
        cells.append(f"{k} / {share:.0%} / {norm:.2f} / {cosine:.2f}")
    return cells


def newly_initialised(path: str) -> list[str]:
    from transformers import AutoModelForSequenceClassification

    _, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, output_loading_info=True
    )
    return sorted(info["missing_keys"]) + [f"{k} (shape)" for k, *_ in info["mismatched_keys"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+")
    parser.add_argument("--train", type=int, default=4000, help="SST-2 training sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", default=str(DATA / "wikitext2" / "test.txt"),
                        help="the pre-training corpus, for token frequencies")  # fmt: skip
    args = parser.parse_args()
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    tokenizer = AutoTokenizer.from_pretrained(args.exports[0])
    train_x, train_y = sst2("train", args.train)
    dev_x, dev_y = sst2("dev", None)
    torch.manual_seed(args.seed)
    encoders = {
        "random weights": AutoModel.from_config(AutoConfig.from_pretrained(args.exports[0]))
    }
    encoders |= {path: AutoModel.from_pretrained(path) for path in args.exports}
    print(f"linear probe, SST-2 dev accuracy ({args.train} training sentences, frozen features)")
    print("| encoder | [CLS] | pooler | mean of tokens | pooler activations |")
    print("|---|---|---|---|---|")
    for name, encoder in encoders.items():
        train_f, dev_f = features(encoder, tokenizer, train_x), features(encoder, tokenizer, dev_x)
        accs = [probe(train_f[k], train_y, dev_f[k], dev_y) for k in ("cls", "pooler", "mean")]
        cells = " | ".join(f"{a:.3f}" for a in accs)
        print(f"| {name} | {cells} | {pooler_stats(dev_f['pooler'])} |", flush=True)
    corpus = token_counts(tokenizer, Path(args.corpus).read_text(encoding="utf-8").splitlines())
    task = token_counts(tokenizer, train_x)
    print("\ninput embeddings by the token's count in the pre-training corpus: tokens / share of")
    print("SST-2's tokens / mean norm / mean pairwise cosine")
    print("| encoder | " + " | ".join(f"count {lo}-{hi or ''}" for lo, hi in BANDS) + " |")
    print("|---|" + "---|" * len(BANDS))
    for name, encoder in encoders.items():
        print(f"| {name} | " + " | ".join(embedding_bands(encoder, corpus, task)) + " |")
    for path in args.exports:
        print(f"\nnewly initialised by AutoModelForSequenceClassification.from_pretrained({path}):")
        for key in newly_initialised(path):
            print(f"  {key}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
