"""Which part of a pre-trained encoder helps or hurts fine-tuning? Fine-tunes
BertForSequenceClassification on SST-2 from a pre-trained export with one part swapped for
the random initialisation of a fresh model of the same config (same seed), or rescaled, and
prints dev accuracy during training. A plain PyTorch loop (AdamW, linear schedule with 10%
warmup, clipping at 1.0, batch 32, max length 64), so that each variant costs ~1.5 minutes on
one core; the classifier starts from the same random weights in every variant.

    python benchmarks/transfer_ablation.py <export> --lr 1e-4 --steps 400 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import sst2

PARTS = {  # variant -> the modules of `bert` taken from the fresh model
    "random weights": None,
    "pre-trained": [],
    "pre-trained, fresh word embeddings": ["embeddings.word_embeddings"],
    "pre-trained, fresh position embeddings": ["embeddings.position_embeddings"],
    "pre-trained, fresh embedding LayerNorm + token types": [
        "embeddings.LayerNorm",
        "embeddings.token_type_embeddings",
    ],
    "pre-trained, fresh embeddings": ["embeddings"],
    "pre-trained, fresh pooler": ["pooler"],
    "pre-trained, fresh last layer + pooler": ["encoder.layer.-1", "pooler"],
    "pre-trained, embeddings rescaled (lmlab's default)": "rescale",
}


def module(root, dotted: str):
    for name in dotted.split("."):
        root = root[int(name)] if name.lstrip("-").isdigit() else getattr(root, name)
    return root


def variant(export: str, parts, seed: int):
    from transformers import AutoConfig, BertForSequenceClassification

    from lmlab.models import rescale_embeddings

    torch.manual_seed(seed)
    fresh = BertForSequenceClassification(AutoConfig.from_pretrained(export, num_labels=2))
    if parts is None:
        return fresh
    model = BertForSequenceClassification.from_pretrained(export, num_labels=2)
    model.classifier.load_state_dict(fresh.classifier.state_dict())
    if parts == "rescale":
        rescale_embeddings(model)
        return model
    for dotted in parts:
        module(model.bert, dotted).load_state_dict(module(fresh.bert, dotted).state_dict())
    return model


def fine_tune(model, tokenizer, data, lr: float, steps: int, seed: int) -> list[float]:
    """Dev accuracy after each quarter of `steps`."""
    from transformers import get_linear_schedule_with_warmup

    (train_x, train_y), (dev_x, dev_y) = data
    dev = tokenizer(dev_x, padding=True, truncation=True, max_length=64, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    order = torch.Generator().manual_seed(seed)
    curve = []
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(train_x), (32,), generator=order)
        batch = tokenizer([train_x[i] for i in idx], padding=True, truncation=True,
                          max_length=64, return_tensors="pt")  # fmt: skip
        loss = model(**batch, labels=train_y[idx]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % (steps // 4) == 0:
            model.eval()
            with torch.no_grad():
                curve.append(float((model(**dev).logits.argmax(-1) == dev_y).float().mean()))
            model.train()
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(PARTS), choices=list(PARTS))
    args = parser.parse_args()
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    tokenizer = AutoTokenizer.from_pretrained(args.export)
    data = sst2("train", 20000, shuffle=True), sst2("dev")
    print(f"SST-2 dev accuracy, lr {args.lr}, {args.steps} steps; at each quarter of training")
    print("| variant | final, mean over seeds | curve per seed |")
    print("|---|---|---|")
    for name in args.variants:
        curves = [
            fine_tune(variant(args.export, PARTS[name], s), tokenizer, data, args.lr, args.steps, s)
            for s in args.seeds
        ]
        mean = sum(c[-1] for c in curves) / len(curves)
        shown = "; ".join(" ".join(f"{a:.3f}" for a in c) for c in curves)
        print(f"| {name} | {mean:.3f} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
