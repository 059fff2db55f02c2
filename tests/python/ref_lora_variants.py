#!/usr/bin/env python3
"""Reference runs of the LoRA variants (DoRA, PiSSA, OLoRA) with PEFT, for
tests/lora/test_lora_variants.cpp.

    ref_lora_variants.py make  --models MODELS --out OUT
        For each case "<kind>-<family>" (kinds dora, pissa, olora; families
        llama-rope3-tied and qwen3), r 8, alpha 16, all-linear, dropout 0:
          fresh.safetensors   what PEFT's init made, before anything else:
                              every lora_A/lora_B/lora_magnitude_vector
                              (PEFT names) and, for pissa/olora, the residual
                              base weight of every adapted projection
                              ("<module path>.weight")
          init_adapter/       the adapter training starts from: for dora
                              random A and B (B nonzero) and a perturbed
                              magnitude; for pissa/olora PEFT's own init
          train.jsonl, ref.json   16 steps as tests/python/ref_train.py
                              (AdamW lr 1e-3 wd 0.01, cosine, 3 warmup, clip 1)
          final_adapter/      the trained adapter as PEFT saves it (for
                              pissa/olora: the form that needs the residual base)
          final_converted/    pissa/olora only: the rank-2r plain LoRA on the
                              original base (path_initial_model_for_weight_conversion)
          ref.safetensors     "input_ids" [T] and the trained model's float32
                              "logits" [T, V] (unmerged, eval mode)
          merged.safetensors  merge_and_unload's weights of the adapted projections
        OUT/cases.json lists the cases.
    ref_lora_variants.py check --models MODELS --dir OUT [--case NAME]
        For each case (or NAME): PeftModel.from_pretrained(original base, OUT/<case>/ours)
        (an adapter loratune wrote) must have exactly PEFT's keys and give the
        logits of OUT/<case>/ours.safetensors within 1e-4. Exits 1 otherwise.
"""
import argparse
import json
import os
import shutil
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

from ref_train import LR, WD, run_steps, write_examples, write_ref_json

warnings.filterwarnings("ignore")

KINDS = ["dora", "pissa", "olora"]
FAMILIES = ["llama-rope3-tied", "qwen3"]


def base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                attn_implementation="eager")


def config(kind):
    init = {"dora": True, "pissa": "pissa", "olora": "olora"}[kind]
    return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0,
                      use_dora=kind == "dora", init_lora_weights=init, task_type="CAUSAL_LM")


def adapter_state(model):
    """PEFT's saved names (as in adapter_model.safetensors) -> tensors."""
    from peft.utils import get_peft_model_state_dict
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def adapted_weights(model):
    """'<module path>.weight' -> the base weight of every LoRA layer."""
    out = {}
    for name, mod in model.base_model.model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "base_layer"):
            out[name + ".weight"] = mod.base_layer.weight.detach().clone().contiguous()
    return out


def make_case(models, d, kind, family, seed):
    torch.manual_seed(seed)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model = get_peft_model(base(f"{models}/{family}"), config(kind))
    fresh = adapter_state(model)
    if kind != "dora":
        fresh.update(adapted_weights(model))
    save_file(fresh, f"{d}/fresh.safetensors")
    g = torch.Generator().manual_seed(200 + seed)
    if kind == "dora":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                elif "lora_magnitude_vector" in name:
                    p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(f"{d}/init_adapter")
    if kind != "dora":
        model.save_pretrained(f"{d}/peft_initial")  # rewritten by the conversion below

    examples = write_examples(model, d, g)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = run_steps(model, examples, torch.optim.AdamW(params, lr=LR, weight_decay=WD))
    model.eval()
    model.save_pretrained(f"{d}/final_adapter")
    if kind != "dora":
        model.save_pretrained(f"{d}/final_converted",
                              path_initial_model_for_weight_conversion=f"{d}/peft_initial")
    ids = torch.randint(3, model.config.vocab_size, (19,), generator=g)
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float().contiguous()
    save_file({"input_ids": ids, "logits": logits}, f"{d}/ref.safetensors")
    merged = model.merge_and_unload()
    sd = merged.state_dict()
    names = [k for k in fresh if k.endswith(".lora_A.weight")]
    out = {}
    for k in names:
        path = k[len("base_model.model."):-len(".lora_A.weight")]
        out[path + ".weight"] = sd[path + ".weight"].contiguous()
    save_file(out, f"{d}/merged.safetensors")
    write_ref_json(d, steps, kind=kind, family=family)
    print(f"{kind}-{family}: losses {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}")


def cases():
    return [(k, f) for k in KINDS for f in FAMILIES]


def make(a):
    os.makedirs(a.out, exist_ok=True)
    for seed, (kind, family) in enumerate(cases()):
        make_case(a.models, f"{a.out}/{kind}-{family}", kind, family, seed)
    with open(f"{a.out}/cases.json", "w") as f:
        json.dump([{"name": f"{k}-{fam}", "kind": k, "family": fam} for k, fam in cases()], f)


def check(a):
    from peft.utils import get_peft_model_state_dict
    ok = True
    for kind, family in cases():
        name = f"{kind}-{family}"
        if a.case and name != a.case:
            continue
        adapter = f"{a.dir}/{name}/ours"
        model = PeftModel.from_pretrained(base(f"{a.models}/{family}"), adapter).eval()
        saved = set(load_file(f"{adapter}/adapter_model.safetensors"))
        want = set(get_peft_model_state_dict(model).keys())
        if saved != want:
            print(f"{name}: key mismatch: missing {sorted(want - saved)[:3]} "
                  f"unexpected {sorted(saved - want)[:3]}")
            ok = False
            continue
        ref = load_file(f"{a.dir}/{name}/ours.safetensors")
        with torch.no_grad():
            logits = model(ref["input_ids"][None]).logits[0].float()
        diff = (logits - ref["logits"]).abs().max().item()
        print(f"{name}: PEFT on loratune's adapter: keys match, max |logit diff| {diff:.3e}")
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
    c.add_argument("--case", help="only this case (default: all)")
    a = p.parse_args()
    torch.set_num_threads(1)
    make(a) if a.cmd == "make" else check(a)


if __name__ == "__main__":
    main()
