#!/usr/bin/env python3
"""Reference LoRA+ training runs (PEFT's create_loraplus_optimizer), for
tests/train/test_loraplus.cpp.

    ref_loraplus.py --models MODELS --out OUT
For each variant in VARIANTS, the files ref_train.py writes (see its module
doc: init_adapter/ with random A and B, train.jsonl, final_adapter/,
ref.json), from the same loop (float32, dropout 0, micro-batch 2, accumulation
3, 16 steps, get_cosine_schedule_with_warmup with 3 warmup steps,
clip_grad_norm_ 1.0), except that the optimizer is
    create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3,
                              loraplus_lr_ratio=16, loraplus_weight_decay=0.01,
                              weight_decay=0.01)
PEFT gives every group the weight decay loraplus_weight_decay (default 0),
whatever weight_decay says; loratune's train.optimizer.weight_decay is that
value. ref.json also holds "loraplus_lr_ratio", each step's "lr_groups" (the
lr of every non-empty param group, PEFT's order) and "groups": per non-empty
group its lr, weight_decay and parameter names (adapter file names).

OUT/groups.json: PEFT's grouping of two adapters that plain all-linear LoRA
does not have, on llama-rope3-tied's q_proj (r 4): DoRA (a 1-D magnitude per
layer) and lora_bias (a 1-D lora_B bias): per case the parameters (file name,
shape) in model order and the groups as in ref.json.
"""
import argparse
import json
import os
import warnings

import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from peft.utils import get_peft_model_state_dict

from ref_train import (LR, WD, lora_config, randomize_lora, run_steps, write_examples,
                       write_ref_json)

warnings.filterwarnings("ignore")

VARIANTS = ["llama-rope3-tied", "qwen3"]
RATIO = 16.0


def loraplus_optimizer(model):
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                     loraplus_weight_decay=WD, weight_decay=WD)


def file_names(model):
    """Adapter file name (as save_pretrained writes it) of each trainable parameter."""
    by_ptr = {t.data_ptr(): k for k, t in get_peft_model_state_dict(model).items()}
    return {id(p): by_ptr[p.data_ptr()] for p in model.parameters() if p.requires_grad}


def groups_of(model, opt):
    names = file_names(model)
    return [{"lr": g["lr"], "weight_decay": g["weight_decay"],
             "params": [names[id(p)] for p in g["params"]]}
            for g in opt.param_groups if g["params"]]


def train_variant(models, out, variant, seed):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(f"{models}/{variant}", dtype=torch.float32,
                                                attn_implementation="eager")
    d = f"{out}/{variant}"
    os.makedirs(d, exist_ok=True)
    model = get_peft_model(base, lora_config())
    g = torch.Generator().manual_seed(100 + seed)
    randomize_lora(model, g)
    model.save_pretrained(f"{d}/init_adapter")
    examples = write_examples(model, d, g)
    opt = loraplus_optimizer(model)
    groups = groups_of(model, opt)

    def lr_groups(opt, sched):  # train.optimizer.lr's is group A's, "lr"
        return {"lr_groups": [x for x, grp in zip(sched.get_last_lr(), opt.param_groups)
                              if grp["params"]]}

    steps = run_steps(model, examples, opt, lr_groups)
    model.save_pretrained(f"{d}/final_adapter")
    write_ref_json(d, steps, loraplus_lr_ratio=RATIO, groups=groups)
    print(f"{variant}: losses {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}, "
          f"{len(groups)} groups of {[len(x['params']) for x in groups]} parameters")


def grouping_cases(models, out):
    cases = []
    for label, kw in [("dora", {"use_dora": True}), ("lora_bias", {"lora_bias": True})]:
        base = AutoModelForCausalLM.from_pretrained(f"{models}/llama-rope3-tied",
                                                    dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                **kw))
        names = file_names(model)
        params = [{"name": names[id(p)], "shape": list(p.shape)}
                  for p in model.parameters() if p.requires_grad]
        cases.append({"case": label, "params": params,
                      "groups": groups_of(model, loraplus_optimizer(model))})
    with open(f"{out}/groups.json", "w") as f:
        json.dump({"lr": LR, "weight_decay": WD, "loraplus_lr_ratio": RATIO, "cases": cases},
                  f, indent=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    for seed, v in enumerate(VARIANTS):
        train_variant(a.models, a.out, v, 10 + seed)
    grouping_cases(a.models, a.out)


if __name__ == "__main__":
    main()
