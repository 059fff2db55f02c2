#!/usr/bin/env python3
"""Reference LoRA adapters and logits from Hugging Face PEFT, for tests/lora.

    ref_peft.py make  --models MODELS --out OUT
        For each case in CASES: wraps the transformers model MODELS/<variant> in
        PEFT, gives A and B random values (seeded; PEFT's own init makes B zero,
        which would hide errors), saves the adapter to OUT/<case>/adapter and
        writes OUT/<case>/ref.safetensors with "input_ids" [T] and the float32
        "logits" [T, V] of the unmerged PEFT model; OUT/cases.json lists the cases.
    ref_peft.py check --models MODELS --dir OUT
        For each case: loads OUT/<case>/ours (an adapter loratune wrote) with
        PeftModel.from_pretrained, requires its keys to be exactly PEFT's, and
        compares the logits with OUT/<case>/ours.safetensors (loratune's).
        Prints one line per case; exits 1 if any differs by more than 1e-4.
"""
import argparse
import json
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

warnings.filterwarnings("ignore")


def base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids[None]).logits[0].float().contiguous()


# name -> (variant, target_modules, LoraConfig extras)
CASES = {
    "llama_all_linear": ("llama-rope3-tied", "all-linear", dict(r=8, lora_alpha=16)),
    "qwen3_subset_rslora": ("qwen3", ["q_proj", "v_proj"], dict(r=4, lora_alpha=8,
                                                                use_rslora=True)),
    "qwen2_patterns": ("qwen2", ["q_proj", "k_proj", "down_proj"],
                       dict(r=8, lora_alpha=16, rank_pattern={"down_proj": 2},
                            alpha_pattern={"layers.0.self_attn.k_proj": 3})),
    "mistral_mlp": ("mistral-window", ["gate_proj", "up_proj"], dict(r=2, lora_alpha=4)),
    "llama_bias": ("llama-bias", ["o_proj", "v_proj"], dict(r=8, lora_alpha=32)),
    "gemma2_all_linear": ("gemma2", "all-linear", dict(r=4, lora_alpha=8)),
    "gemma3_attn_mlp": ("gemma3", ["q_proj", "o_proj", "down_proj"], dict(r=8, lora_alpha=8)),
    "phi3_fused": ("phi3", ["qkv_proj", "gate_up_proj"], dict(r=4, lora_alpha=16)),
    "phi4mini_all_linear": ("phi3-longrope", "all-linear", dict(r=8, lora_alpha=16)),
}


def make(a):
    for seed, (name, (variant, targets, extra)) in enumerate(sorted(CASES.items())):
        torch.manual_seed(seed)
        cfg = LoraConfig(target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM", **extra)
        model = get_peft_model(base(f"{a.models}/{variant}"), cfg)
        g = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.save_pretrained(f"{a.out}/{name}/adapter")
        ids = torch.randint(0, model.config.vocab_size, (23,), generator=g)
        save_file({"input_ids": ids, "logits": logits_of(model, ids)},
                  f"{a.out}/{name}/ref.safetensors")
    with open(f"{a.out}/cases.json", "w") as f:
        json.dump([{"name": n, "variant": v[0]} for n, v in sorted(CASES.items())], f)


def check(a):
    from peft.utils import get_peft_model_state_dict
    worst = 0.0
    ok = True
    for name, (variant, _, _) in sorted(CASES.items()):
        adapter = f"{a.dir}/{name}/ours"
        model = PeftModel.from_pretrained(base(f"{a.models}/{variant}"), adapter)
        saved = set(load_file(f"{adapter}/adapter_model.safetensors"))
        want = set(get_peft_model_state_dict(model).keys())
        if saved != want:
            print(f"{name}: key mismatch: missing {sorted(want - saved)[:3]} "
                  f"unexpected {sorted(saved - want)[:3]}")
            ok = False
            continue
        ref = load_file(f"{a.dir}/{name}/ours.safetensors")
        diff = (logits_of(model, ref["input_ids"]) - ref["logits"]).abs().max().item()
        print(f"{name}: peft on loratune's adapter: keys match, max |diff| {diff:.3e}")
        ok = ok and diff <= 1e-4
    sys.exit(0 if ok else 1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--models", required=True)
    m.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--models", required=True)
    c.add_argument("--dir", required=True)
    a = p.parse_args()
    make(a) if a.cmd == "make" else check(a)


if __name__ == "__main__":
    main()
