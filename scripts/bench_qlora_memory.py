#!/usr/bin/env python3
"""Benchmark: peak memory of a QLoRA run (model.quantize: nf4) vs the same run
with float base weights, and the projected footprint of 8B / 70B models.

Uses the "bench-58m" llama and the pre-tokenized random data of
scripts/bench_train.py (same config: LoRA r=16 all-linear, micro-batch
--batch, seq --seq-len, --steps steps), and runs `loratune train` once per
setting, each in a fresh subprocess: for each --dtypes (default float32;
bfloat16 is slow on CPUs without native bf16), model.quantize none and nf4
(double quant). It prints the child's peak
RSS (ru_maxrss from wait4), tokens/s and the first-step loss (which NF4 moves
a little), then the NF4 bytes per quantized parameter of the format
(packed 4 bits + the block scales) and what that gives for the weights of
Llama-3.1-8B and Llama-3.1-70B (projections in NF4, embeddings and lm_head
in bfloat16) plus the largest per-projection dequantized scratch (one
[out,in] bfloat16 weight, alive only inside one projection's forward or
backward). This is a benchmark, not a test: it prints what it measured.

    .venv/bin/python scripts/bench_qlora_memory.py [--loratune build/loratune] [--json OUT]
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (the model, data and config of the training benchmark)

ROOT = bench_train.ROOT

# Llama-3.1 shapes (config.json of meta-llama/Llama-3.1-8B and -70B).
SHAPES = {
    "Llama-3.1-8B": dict(hidden=4096, inter=14336, layers=32, heads=32, kv=8, vocab=128256),
    "Llama-3.1-70B": dict(hidden=8192, inter=28672, layers=80, heads=64, kv=8, vocab=128256),
}


def nf4_bytes(n, double_quant=True):
    """Bytes of one NF4 weight of n elements, as loratune and bitsandbytes store it."""
    blocks = math.ceil(n / 64)
    b = math.ceil(n / 2)
    if double_quant:
        return b + blocks + 4 * math.ceil(blocks / 256) + 4  # uint8 absmax, nested, offset
    return b + 4 * blocks  # float32 absmax


def projections(s):
    """[out, in] of every projection of one decoder layer."""
    d, i = s["hidden"], s["inter"]
    hd = d // s["heads"]
    return [(d, d), (s["kv"] * hd, d), (s["kv"] * hd, d), (d, d), (i, d), (i, d), (d, i)]


def project(name, s):
    proj = projections(s)
    n_proj = s["layers"] * sum(o * i for o, i in proj)
    n_embed = 2 * s["vocab"] * s["hidden"]  # embed_tokens + untied lm_head
    nf4 = s["layers"] * sum(nf4_bytes(o * i) for o, i in proj)
    scratch = max(o * i for o, i in proj) * 2
    gib = 2**30
    print(f"  {name}: {n_proj / 1e9:.2f}B projection + {n_embed / 1e9:.2f}B embedding params; "
          f"bf16 weights {(n_proj + n_embed) * 2 / gib:.1f} GiB -> NF4 "
          f"{(nf4 + n_embed * 2) / gib:.1f} GiB ({(nf4 + 2 * n_embed) / (n_proj + n_embed):.3f} "
          f"bytes/param overall, {nf4 / n_proj:.4f} per projection param); "
          f"dequantized scratch <= {scratch / 2**20:.0f} MiB (one bf16 [out,in])")
    return {"projection_params": n_proj, "embedding_params": n_embed, "nf4_bytes": nf4,
            "bf16_bytes": (n_proj + n_embed) * 2, "scratch_bytes": scratch}


def run(args, env, model_dir, data_path, dtype, quantize):
    work = os.path.join(args.dir, f"qlora-{dtype}-{quantize}")
    os.makedirs(work, exist_ok=True)
    cfg = os.path.join(work, "config.yaml")
    bench_train.loratune_config(cfg, model_dir, data_path, os.path.join(work, "run"), args)
    with open(cfg) as f:
        text = f.read().replace("  dtype: float32\n",
                                f"  dtype: {dtype}\n  quantize: {quantize}\n  double_quant: true\n")
    with open(cfg, "w") as f:
        f.write(text)
    _, wall, rss = bench_train.run_child([args.loratune, "train", cfg], env)
    recs = []
    with open(os.path.join(work, "run", "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    recs = [r for r in recs if r.get("split") == "train"]
    tps = bench_train.steady([r["elapsed_s"] for r in recs], recs[-1]["tokens"], args.warmup)
    return {"peak_rss_bytes": rss, "tokens_per_s": tps, "first_loss": recs[0]["loss"],
            "wall_s": wall}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_train.add_common_args(ap, threads=2, steps=6, batch=4, rank=16, alpha=32.0)
    ap.add_argument("--dtypes", default="float32", help="model.dtype values, comma-separated")
    args = ap.parse_args(argv)

    model_dir, c, data_path = bench_train.prepare(args, args.steps * args.batch)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    shape = dict(hidden=c["hidden_size"], inter=c["intermediate_size"],
                 layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                 kv=c["num_key_value_heads"], vocab=c["vocab_size"])
    n_proj = shape["layers"] * sum(o * i for o, i in projections(shape))
    results = {}
    print(f"bench-58m ({n_proj / 1e6:.1f}M projection params), seq {args.seq_len}, micro-batch "
          f"{args.batch}, LoRA r={args.rank} all-linear, {args.steps} steps, {args.threads} "
          f"threads")
    for dtype in args.dtypes.split(","):
        for quantize in ("none", "nf4"):
            r = run(args, env, model_dir, data_path, dtype, quantize)
            results[f"{dtype}/{quantize}"] = r
            print(f"  model.dtype {dtype:9} quantize {quantize:5} peak RSS "
                  f"{r['peak_rss_bytes'] / 2**20:7.1f} MiB  {r['tokens_per_s']:7.1f} tokens/s  "
                  f"first loss {r['first_loss']:.5f}", flush=True)
        a, b = results[f"{dtype}/none"], results[f"{dtype}/nf4"]
        saved = a["peak_rss_bytes"] - b["peak_rss_bytes"]
        expect = n_proj * (4 if dtype == "float32" else 2) - shape["layers"] * sum(
            nf4_bytes(o * i) for o, i in projections(shape))
        print(f"  {dtype}: NF4 saves {saved / 2**20:.1f} MiB of peak RSS "
              f"(projection weights alone: {expect / 2**20:.1f} MiB), ratio "
              f"{b['peak_rss_bytes'] / a['peak_rss_bytes']:.2f}x")
    print(f"NF4 bytes per quantized parameter: {nf4_bytes(4096 * 4096) / (4096 * 4096):.4f} "
          f"(double quant), {nf4_bytes(4096 * 4096, False) / (4096 * 4096):.4f} (without)")
    projected = {name: project(name, s) for name, s in SHAPES.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "projected": projected, "config": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
