#!/usr/bin/env python3
"""Checks merged models written by loratune against PEFT's merge_and_unload.

    ref_merge.py check --models MODELS --peft PEFT --merged MERGED
        For each case in PEFT/cases.json (made by ref_peft.py): loads
        MERGED/<case> with transformers' AutoModelForCausalLM.from_pretrained and
        compares its float32 logits with PeftModel.from_pretrained(base,
        PEFT/<case>/adapter).merge_and_unload() on PEFT/<case>/ref.safetensors'
        input_ids. Prints one line per case; exits 1 above 1e-4.
"""
import argparse
import json
import sys
import warnings

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

warnings.filterwarnings("ignore")


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["check"])
    p.add_argument("--models", required=True)
    p.add_argument("--peft", required=True)
    p.add_argument("--merged", required=True)
    a = p.parse_args()
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
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
