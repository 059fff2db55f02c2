"""The reference side of a LoRA training step, shared by tests/python/ref_train.py
and scripts/gpu_bench.py: batches as loratune builds them, and the loss as
loratune normalises it (the sum of token losses over every micro-batch of
the step divided by the step's target count, as transformers'
ForCausalLMLoss with num_items_in_batch).
"""
import torch
import torch.nn.functional as F


def collate(rows, pad=0, device="cpu"):
    """Right-padded [B,T] input_ids, labels (-100 on padding) and attention_mask."""
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    lab = torch.full((len(rows), T), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        lab[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return ids.to(device), lab.to(device), mask.to(device)


def accumulate(model, micro):
    """Forward and backward of every (ids, labels, mask) micro-batch of one step.

    Returns (the step's loss as a float, its target-token count)."""
    n = sum(int((lab[:, 1:] != -100).sum()) for _, lab, _ in micro)
    total = 0.0
    for ids, lab, mask in micro:
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        V = logits.shape[-1]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), lab[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / n
        loss.backward()
        total += loss.item()
    return total, n
