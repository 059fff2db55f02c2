#!/usr/bin/env python3
"""Reference LoRA training runs (PEFT + a plain PyTorch loop), for tests/train.

    ref_train.py --models MODELS --out OUT
For each variant tagged "train" in tests/variants.json, in one process:
  OUT/<variant>/init_adapter/   PEFT adapter (r=8, alpha=16, all-linear) with
                                random A and B (PEFT would make B zero)
  OUT/<variant>/train.jsonl     pre-tokenized examples {"input_ids", "labels"}
                                (random ids, a random masked prompt prefix)
  OUT/<variant>/final_adapter/  the adapter after training
  OUT/<variant>/ref.json        per step: loss, lr, grad_norm
Training: float32, dropout 0, examples in file order, micro-batch 2 padded
on the right (attention_mask), gradient accumulation 3, STEPS optimizer steps,
torch.optim.AdamW(lr 1e-3, weight_decay 0.01), get_cosine_schedule_with_warmup
(3 warmup steps), clip_grad_norm_(1.0); the loss of a step is the sum of the
token cross entropies of its micro-batches over the step's target count.
OUT/schedules.json holds transformers' lr for the three schedules at every
step of a few (warmup, total) settings.
Also writes OUT/tokmodel: the llama-rope3-tied weights plus a minimal
tokenizer (for CLI runs on pre-tokenized data).
"""
import argparse
import json
import os
import shutil
import warnings
import zlib

import torch
from transformers import (AutoModelForCausalLM, get_constant_schedule_with_warmup,
                          get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup)
from peft import LoraConfig, get_peft_model

from hf_train import accumulate, collate
from word_tokenizer import write_word_tokenizer
import variants

warnings.filterwarnings("ignore")

VARIANTS = variants.tagged("train")  # tests/variants.json
STEPS, ACCUM, MICRO, WARMUP, LR, WD, CLIP = 16, 3, 2, 3, 1e-3, 0.01, 1.0


def make_examples(n, vocab, g):
    out = []
    for _ in range(n):
        t = int(torch.randint(4, 21, (1,), generator=g))
        ids = torch.randint(3, vocab, (t,), generator=g).tolist()
        prompt = int(torch.randint(0, t - 2, (1,), generator=g))
        labels = [-100] * prompt + ids[prompt:]
        out.append({"input_ids": ids, "labels": labels})
    return out


def train_variant(models, out, variant, seed):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(f"{models}/{variant}", dtype=torch.float32,
                                                attn_implementation="eager")
    train_lora(base, f"{out}/{variant}", seed, variant)


def randomize_lora(model, g):
    """Every LoRA factor N(0, 0.05^2) from g (B nonzero, so step 1 already moves)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def write_examples(model, d, g):
    """The run's STEPS * ACCUM * MICRO examples, also written to d/train.jsonl."""
    examples = make_examples(STEPS * ACCUM * MICRO, model.config.vocab_size, g)
    with open(f"{d}/train.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps(e) + "\n")
    return examples


def run_steps(model, examples, opt, extra=None):
    """STEPS optimizer steps of the reference loop (train mode, ACCUM
    micro-batches of MICRO consecutive examples, clip to CLIP, cosine schedule
    with WARMUP steps); returns one record per step. extra(opt, sched), if
    given, adds keys to a step's record before it steps."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    steps = []
    for s in range(STEPS):
        first = s * ACCUM * MICRO
        micro = [collate(examples[first + k * MICRO:first + (k + 1) * MICRO])
                 for k in range(ACCUM)]
        opt.zero_grad()
        total, n = accumulate(model, micro)
        record = {"loss": total, "lr": sched.get_last_lr()[0]}
        if extra:
            record.update(extra(opt, sched))
        record["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, CLIP).item()
        record["targets"] = n
        opt.step()
        sched.step()
        steps.append(record)
    return steps


def write_ref_json(d, steps, **extra):
    with open(f"{d}/ref.json", "w") as f:
        json.dump(dict({"steps": steps, "warmup": WARMUP, "lr": LR, "weight_decay": WD,
                        "accum": ACCUM, "micro": MICRO}, **extra), f, indent=1)


def lora_config():
    return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0,
                      task_type="CAUSAL_LM")


def train_lora(base, d, seed, label):
    """The reference run on `base` into directory d (see the module doc);
    also used by ref_nf4.py on a 4-bit base."""
    os.makedirs(d, exist_ok=True)
    model = get_peft_model(base, lora_config())
    g = torch.Generator().manual_seed(100 + seed)
    randomize_lora(model, g)
    model.save_pretrained(f"{d}/init_adapter")
    examples = write_examples(model, d, g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
    steps = run_steps(model, examples, opt)
    model.save_pretrained(f"{d}/final_adapter")
    write_ref_json(d, steps)
    print(f"{label}: losses {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}")


def schedules(out):
    res = []
    for name, fn in [("constant", lambda o, w, t: get_constant_schedule_with_warmup(o, w)),
                     ("linear", get_linear_schedule_with_warmup),
                     ("cosine", get_cosine_schedule_with_warmup)]:
        for warmup, total in [(0, 10), (3, 16), (5, 7), (1, 1), (2, 37)]:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
            s = fn(opt, warmup, total)
            lrs = []
            for _ in range(total + 2):
                lrs.append(s.get_last_lr()[0])
                opt.step()
                s.step()
            res.append({"name": name, "warmup": warmup, "total": total, "lr": 2e-4, "lrs": lrs})
    with open(f"{out}/schedules.json", "w") as f:
        json.dump(res, f, indent=1)


def tokenizer_model(models, out):
    """llama-rope3-tied + a minimal tokenizer (BPE over 1000 plain tokens)."""
    d = f"{out}/tokmodel"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(f"{models}/llama-rope3-tied", d)
    write_word_tokenizer(d, 1000)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    for v in VARIANTS:
        train_variant(a.models, a.out, v, zlib.crc32(v.encode()) % 1000)  # stable per variant
    schedules(a.out)
    tokenizer_model(a.models, a.out)


if __name__ == "__main__":
    main()
