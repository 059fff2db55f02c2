#!/usr/bin/env python3
"""Benchmark: peak memory of `loratune merge` on a ~2 GB float32 model.

Makes (or reuses) the "bench-2gb" llama with scripts/make_tiny_model.py and a
PEFT-format adapter for it (random A and B, r 16, every attention and MLP
projection, written directly with safetensors), then runs

    loratune merge --model M --adapter A --out O --shard-size 256MB --overwrite --report-memory

and prints the process's baseline RSS, its peak RSS, peak - baseline, the
shard size and the ratio (peak - baseline) / shard.

What is measured (in the merge process itself, from /proc/self/status):
  baseline  VmRSS after the executable, LibTorch and the CLI are loaded and the
            arguments parsed, before merge_adapter opens any file;
  peak      VmHWM at the end of the merge, with VmHWM reset to the baseline
            first (/proc/self/clear_refs "5"), so start-up transients do not
            count. RSS includes the pages of the mmap'd input that the process
            touches (file-backed, not anonymous), which is why the merge
            releases them (madvise MADV_DONTNEED) once each tensor is done.
As a cross-check the script also prints the child's lifetime peak from wait4
(ru_maxrss, start-up included) and samples VmRSS of the child every 20 ms.

Goal (issue 5): peak - baseline < 1.5 x one shard. Exits 1 when the goal is
missed or a run fails; --json OUT writes the numbers.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model_dir, out_dir, r, alpha, seed):
    """A PEFT LoRA adapter for every projection of model_dir, random A and B."""
    import torch
    from safetensors.torch import save_file

    stamp = {"model": os.path.abspath(model_dir), "r": r, "alpha": alpha, "seed": seed}
    stamp_path = os.path.join(out_dir, "bench_stamp.json")
    if os.path.exists(stamp_path) and json.load(open(stamp_path)) == stamp:
        return
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    q = cfg["num_attention_heads"] * head_dim
    shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
              "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(cfg["num_hidden_layers"]):
        for mod in TARGETS:
            part = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out_f, in_f = shapes[mod]
            name = f"base_model.model.model.layers.{i}.{part}.{mod}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(r, in_f, generator=g) * 0.02
            tensors[f"{name}.lora_B.weight"] = torch.randn(out_f, r, generator=g) * 0.02
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "lora_dropout": 0.0, "target_modules": TARGETS, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "base_model_name_or_path": os.path.abspath(model_dir), "rank_pattern": {},
              "alpha_pattern": {}, "modules_to_save": None, "layers_to_transform": None}
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)


def sample_rss(pid, stop, out):
    """Largest VmRSS seen in /proc/PID/status while the child runs."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[0] = max(out[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        time.sleep(0.02)


def run_merge(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampled, stop = [0], threading.Event()
    th = threading.Thread(target=sample_rss, args=(p.pid, stop, sampled), daemon=True)
    th.start()
    out, err = p.communicate()
    stop.set()
    th.join()
    return p, out.decode(), err.decode(), time.perf_counter() - t0, sampled[0]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loratune", default=os.path.join(ROOT, "build", "loratune"),
                    help="the loratune executable (default build/loratune)")
    ap.add_argument("--python", default=sys.executable, help="Python with torch + transformers")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build", "testdata", "bench"),
                    help="where the model, adapter and merged output go (not committed)")
    ap.add_argument("--shard-size", default="256MB")
    ap.add_argument("--dtype", help="merge --dtype (default: the model's, float32)")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to OUT")
    args = ap.parse_args(argv)

    subprocess.run([args.python, os.path.join(ROOT, "scripts", "make_tiny_model.py"),
                    "--size", "bench-2gb", "--reuse", "--out", args.dir], check=True)
    model_dir = os.path.join(args.dir, "bench-2gb")
    adapter_dir = os.path.join(args.dir, "bench-2gb-adapter")
    out_dir = os.path.join(args.dir, "bench-2gb-merged")
    make_adapter(model_dir, adapter_dir, r=16, alpha=32, seed=0)
    weights = sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir)
                  if n.endswith(".safetensors"))

    cmd = [args.loratune, "merge", "--model", model_dir, "--adapter", adapter_dir, "--out",
           out_dir, "--shard-size", args.shard_size, "--overwrite", "--report-memory"]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    # The child's lifetime peak: RUSAGE_CHILDREN's ru_maxrss after it is
    # reaped (the largest of all children so far; the model maker ran before).
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p, out, err, wall, sampled = run_merge(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode != 0:
        sys.exit(f"merge failed ({p.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    line = next((ln for ln in err.splitlines() if ln.startswith("memory: ")), None)
    if line is None:
        sys.exit(f"{args.loratune}: no 'memory:' line from merge --report-memory\n{err[-2000:]}")
    mem = json.loads(line[len("memory: "):])
    shard = parse_size(args.shard_size)
    base, peak = mem["baseline_rss_bytes"], mem["peak_rss_bytes"]
    shards = sorted(n for n in os.listdir(out_dir) if n.endswith(".safetensors"))
    res = {
        "model": model_dir, "weights_bytes": weights, "shard_size_bytes": shard,
        "output_shards": len(shards), "baseline_rss_bytes": base, "peak_rss_bytes": peak,
        "peak_minus_baseline_bytes": peak - base, "ratio_to_shard": (peak - base) / shard,
        "peak_reset_at_baseline": mem["peak_reset_at_baseline"],
        # ru_maxrss of RUSAGE_CHILDREN is the largest of all children: only
        # meaningful when this child set the record (it does: nothing bigger ran).
        "lifetime_peak_rss_bytes_wait4": after * 1024 if after > before else None,
        "sampled_max_rss_bytes": sampled, "wall_seconds": wall,
    }
    res["goal_met"] = res["ratio_to_shard"] < 1.5

    mb = lambda x: f"{x / 1e6:9.1f} MB"  # noqa: E731
    print(f"model        {model_dir}: {weights / 1e9:.2f} GB float32, adapter r 16 on 7 "
          f"projections x {json.load(open(model_dir + '/config.json'))['num_hidden_layers']} layers")
    print(f"merge        {wall:.1f} s, {len(shards)} output shards of <= {args.shard_size}")
    print(f"baseline RSS {mb(base)}   (libraries loaded, before the first file is read)")
    print(f"peak RSS     {mb(peak)}   (VmHWM, reset at the baseline: "
          f"{mem['peak_reset_at_baseline']})")
    print(f"peak - base  {mb(peak - base)}")
    print(f"shard size   {mb(shard)}")
    print(f"ratio        {res['ratio_to_shard']:.3f} x shard   (goal < 1.5: "
          f"{'met' if res['goal_met'] else 'NOT met'})")
    if res["lifetime_peak_rss_bytes_wait4"]:
        print(f"cross-check  wait4 lifetime peak {mb(res['lifetime_peak_rss_bytes_wait4'])}, "
              f"sampled VmRSS max {mb(sampled)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if res["goal_met"] else 1


def parse_size(text):
    """As loratune's parse_size for the units used here (decimal KB/MB/GB, binary KiB/MiB/GiB)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}
    t = text.strip().upper()
    i = len(t) - len(t.lstrip("0123456789."))
    return int(float(t[:i]) * units[t[i:].strip()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
