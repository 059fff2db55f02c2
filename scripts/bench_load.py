#!/usr/bin/env python3
"""Benchmark: loading a ~1 GB float32 checkpoint, loratune vs transformers.

Makes (or reuses) the "bench-1gb" llama with scripts/make_tiny_model.py, then
for each dtype runs, each in its own fresh subprocess:
  loratune      `loratune inspect --load --json DIR --dtype D` (load_model, then one token)
  transformers  AutoModelForCausalLM.from_pretrained(DIR, dtype=D), then one token
and prints load time, time of the first one-token forward (which is when a
zero-copy mmap load actually reads the pages), process wall time and peak RSS
(from wait4 for that child alone), with ratios. The file is read once first so
both run from a warm page cache.

Goal: loratune loads faster than transformers with peak RSS <= 1.1x the weights.
This is a benchmark, not a test: it prints numbers and exits 0 unless a run fails.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HF_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(int(sys.argv[3]))
t1 = time.perf_counter()
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[sys.argv[2]]
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype)
t2 = time.perf_counter()
with torch.no_grad():
    m(torch.tensor([[1]]))
t3 = time.perf_counter()
print(json.dumps({"import_seconds": t1 - t0, "load_seconds": t2 - t1,
                  "first_forward_seconds": t3 - t2, "baseline_rss_bytes": base_rss}))
"""


def run_measured(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Read pipes before reaping so a chatty child cannot block.
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    return out, wall, ru.ru_maxrss * 1024


def warm(model_dir):
    n = 0
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with open(os.path.join(model_dir, name), "rb") as f:
                while chunk := f.read(1 << 24):
                    n += len(chunk)
    return n


def gb(x):
    return f"{x / 1e9:.3f} GB"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loratune", default=os.path.join(ROOT, "build-model", "loratune"),
                    help="the loratune executable")
    ap.add_argument("--python", default=sys.executable, help="Python with torch + transformers")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-model", "testdata", "bench"),
                    help="where the benchmark checkpoint is made (not committed)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    subprocess.run([args.python, os.path.join(ROOT, "scripts", "make_tiny_model.py"),
                    "--size", "bench-1gb", "--reuse", "--out", args.dir], check=True)
    model_dir = os.path.join(args.dir, "bench-1gb")
    weights = warm(model_dir)
    print(f"checkpoint {model_dir}: {gb(weights)} of safetensors (page cache warmed)\n")

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for dtype in args.dtypes.split(","):
        out, wall, rss = run_measured([args.loratune, "inspect", "--load", "--json", model_dir,
                                       "--dtype", dtype])
        lt = json.loads(out)["load"]
        out, hwall, hrss = run_measured([args.python, "-c", HF_CHILD, model_dir, dtype,
                                         str(args.threads)])
        hf = json.loads(out)
        rows.append((dtype, lt, wall, rss, hf, hwall, hrss))

    for dtype, lt, wall, rss, hf, hwall, hrss in rows:
        target = weights * (0.5 if dtype in ("bfloat16", "float16") else 1.0)
        print(f"== dtype {dtype} (weights in memory: {gb(target)})")
        print(f"  {'':14}{'load s':>9}{'1st fwd s':>11}{'load+fwd':>10}{'wall s':>9}{'peak RSS':>12}"
              f"{'RSS/weights':>13}")
        lsum = lt["load_seconds"] + lt["first_forward_seconds"]
        hsum = hf["load_seconds"] + hf["first_forward_seconds"]
        print(f"  {'loratune':14}{lt['load_seconds']:9.3f}{lt['first_forward_seconds']:11.3f}"
              f"{lsum:10.3f}{wall:9.2f}{gb(rss):>12}{rss / target:13.2f}")
        print(f"  {'transformers':14}{hf['load_seconds']:9.3f}{hf['first_forward_seconds']:11.3f}"
              f"{hsum:10.3f}{hwall:9.2f}{gb(hrss):>12}{hrss / target:13.2f}"
              f"   (import {hf['import_seconds']:.2f} s, RSS after import "
              f"{gb(hf['baseline_rss_bytes'])})")
        print(f"  ratio transformers/loratune: load+fwd {hsum / lsum:.1f}x, wall {hwall / wall:.1f}x, "
              f"peak RSS {hrss / rss:.2f}x")
        print(f"  goal peak RSS <= 1.1x weights: {'met' if rss <= 1.1 * target else 'NOT met'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
