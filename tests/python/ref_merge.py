#!/usr/bin/env python3
"""Checks merged models written by loratune against PEFT's merge_and_unload.

    ref_merge.py check --models MODELS --peft PEFT --merged MERGED
        For each case in PEFT/cases.json (made by ref_peft.py): loads
        MERGED/<case> with transformers' AutoModelForCausalLM.from_pretrained and
        compares its float32 logits with PeftModel.from_pretrained(base,
        PEFT/<case>/adapter).merge_and_unload() on PEFT/<case>/ref.safetensors'
        input_ids. Prints one line per case; exits 1 above 1e-4.

    ref_merge.py prepare-trained --models MODELS --out DIR
        For every tiny variant: DIR/<variant>/model (the variant's files, linked,
        plus a minimal tokenizer over its 1000 ids, so that `loratune train`
        can load it) and DIR/<variant>/train.jsonl (seeded random pre-tokenized
        sequences), for a short loratune training run.

    ref_merge.py check-trained --dir DIR
        For each entry of DIR/cases.json ({"variant", "model", "adapter",
        "merged", "ids", "logits"}: a loratune-trained adapter, loratune's merge
        of it and loratune's logits with the unmerged adapter on ids): checks
        that the adapter's lora_B is non-zero (training moved it), that
        transformers' from_pretrained(merged) logits are within 1e-4 of
        PeftModel.from_pretrained(base, adapter).merge_and_unload()'s, and that
        loratune's unmerged logits are within 1e-4 of the unmerged PeftModel's.
        Prints one line per case; exits 1 on any failure.
"""
import argparse
import json
import os
import sys
import warnings

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from word_tokenizer import write_word_tokenizer

warnings.filterwarnings("ignore")


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def check(a):
    ok = True
    for case in json.load(open(f"{a.peft}/cases.json")):
        name, variant = case["name"], case["variant"]
        ids = load_file(f"{a.peft}/{name}/ref.safetensors")["input_ids"][None]
        ref = PeftModel.from_pretrained(load(f"{a.models}/{variant}"),
                                        f"{a.peft}/{name}/adapter").merge_and_unload()
        ours = load(f"{a.merged}/{name}")
        with torch.no_grad():
            diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
        print(f"{name}: transformers(merged by loratune) vs peft merge_and_unload: "
              f"max |diff| {diff:.3e}")
        ok = ok and diff <= 1e-4
    return ok


def prepare_trained(a):
    variants = sorted(v for v in os.listdir(a.models)
                      if os.path.exists(f"{a.models}/{v}/config.json"))
    for i, v in enumerate(variants):
        d = f"{a.out}/{v}/model"
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(f"{a.models}/{v}"):
            if f.endswith((".json", ".safetensors")) and not os.path.exists(f"{d}/{f}"):
                os.symlink(os.path.abspath(f"{a.models}/{v}/{f}"), f"{d}/{f}")
        vocab_size = json.load(open(f"{a.models}/{v}/config.json"))["vocab_size"]
        write_word_tokenizer(d, vocab_size)
        g = torch.Generator().manual_seed(100 + i)
        with open(f"{a.out}/{v}/train.jsonl", "w") as f:
            for _ in range(16):
                n = int(torch.randint(12, 33, (1,), generator=g))
                ids = torch.randint(3, vocab_size, (n,), generator=g).tolist()
                f.write(json.dumps({"input_ids": ids}) + "\n")
        print(f"prepared {a.out}/{v}")
    return True


def check_trained(a):
    ok = True
    for case in json.load(open(f"{a.dir}/cases.json")):
        v = case["variant"]
        ids = torch.tensor([case["ids"]])
        factors = load_file(f"{case['adapter']}/adapter_model.safetensors")
        b_max = max(t.abs().max().item() for k, t in factors.items() if "lora_B" in k)
        peft = PeftModel.from_pretrained(load(case["model"]), case["adapter"]).eval()
        with torch.no_grad():
            unmerged = peft(ids).logits[0]
            ours_unmerged = load_file(case["logits"])["logits"]
            d_unmerged = (ours_unmerged - unmerged).abs().max().item()
            merged_ref = peft.merge_and_unload()(ids).logits
            d_merged = (load(case["merged"])(ids).logits - merged_ref).abs().max().item()
        print(f"{v}: max |lora_B| {b_max:.3e}; transformers(loratune merge) vs peft "
              f"merge_and_unload {d_merged:.3e}; loratune logits --adapter vs peft unmerged "
              f"{d_unmerged:.3e}")
        ok = ok and b_max > 0 and d_merged <= 1e-4 and d_unmerged <= 1e-4
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["check", "prepare-trained", "check-trained"])
    p.add_argument("--models")
    p.add_argument("--peft")
    p.add_argument("--merged")
    p.add_argument("--out")
    p.add_argument("--dir")
    a = p.parse_args()
    run = {"check": check, "prepare-trained": prepare_trained, "check-trained": check_trained}
    sys.exit(0 if run[a.cmd](a) else 1)


if __name__ == "__main__":
    main()
