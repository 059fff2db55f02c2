#!/usr/bin/env python3
"""Greedy generations from transformers for tests/generate.

    ref_generate.py --models MODELS --peft PEFT --out OUT.json [--new 48]

For every tiny variant (no adapter) and every PEFT case (PeftModel with the
case's adapter): a seeded random prompt of 7 ids, then
generate(do_sample=False, max_new_tokens=NEW) with EOS disabled so all NEW
tokens are produced. A longrope variant (Phi-3) also gets prompts of
original_max_position_embeddings - 4, + 0 and + 1 ids and 12 new tokens: the
first two cross the original context while generating, where transformers
drops the cache and runs the whole sequence again with the long factors. Writes [{"variant", "adapter" (dir or null), "prompt",
"generated"}] to OUT.json.
"""
import argparse
import json
import os
import warnings

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

warnings.filterwarnings("ignore")


def greedy(model, prompt, new):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        # An explicit mask: without one, generate() infers it from pad_token_id
        # and would mask (and shift the positions past) any id 0 in the prompt.
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new, min_new_tokens=0)
    return out[0, len(prompt):].tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", required=True)
    p.add_argument("--peft", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--new", type=int, default=48)
    a = p.parse_args()
    runs = [(v, None) for v in sorted(os.listdir(a.models))
            if os.path.exists(f"{a.models}/{v}/config.json")]
    runs += [(c["variant"], f"{a.peft}/{c['name']}/adapter")
             for c in json.load(open(f"{a.peft}/cases.json"))]
    results = []
    for i, (variant, adapter) in enumerate(runs):
        model = AutoModelForCausalLM.from_pretrained(f"{a.models}/{variant}", dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        if adapter:
            model = PeftModel.from_pretrained(model, adapter).eval()
        g = torch.Generator().manual_seed(i)
        prompt = torch.randint(0, model.config.vocab_size, (7,), generator=g).tolist()
        results.append({"variant": variant, "adapter": adapter, "prompt": prompt,
                        "generated": greedy(model, prompt, a.new)})
        rope = getattr(model.config, "rope_parameters", None) or {}
        if adapter is None and rope.get("rope_type") == "longrope":
            orig = model.config.original_max_position_embeddings
            for n in (orig - 4, orig, orig + 1):
                prompt = torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()
                results.append({"variant": variant, "adapter": None, "prompt": prompt,
                                "generated": greedy(model, prompt, 12)})
    with open(a.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
