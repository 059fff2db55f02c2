#!/usr/bin/env python3
"""Benchmark: data-parallel LoRA training on 2 ranks (torchrun, Gloo, CPU),
loratune's gradient buckets overlapped with backward vs one all-reduce after
it, and vs PyTorch DDP + PEFT.

The model and data are bench_train.py's (bench-58m: a ~58M float32 Llama,
sequences of --seq-len random ids). LoRA is r=--rank (default 128, so that
the gradient, ~40 MB, takes an all-reduce worth hiding) on all linear
layers. Each step is 2 ranks x --accum micro-batches of --batch sequences;
every run is `torchrun --standalone --nproc-per-node 2` with
OMP_NUM_THREADS=--threads per rank:
  loratune-after    `loratune train` with train.grad_bucket_mb=0: one
                    all-reduce once the last micro-batch's backward is done
  loratune-buckets  train.grad_bucket_mb=--bucket-mb (default 25, the
                    default): buckets all-reduced while backward still runs
  ddp               transformers + PEFT (the same LoRA) in
                    torch.nn.parallel.DistributedDataParallel (Gloo,
                    bucket_cap_mb=--bucket-mb), no_sync() on all but the last
                    micro-batch, clip_grad_norm_(1.0), AdamW(fused)
Rank r takes micro-batches r*accum .. r*accum+accum-1 of each step (as
loratune does). Tokens/s counts rank 0's steady-state steps (after
--warmup) over all ranks' tokens. The runs are interleaved for --rounds
rounds. `exposed all-reduce` is the step time saved by the buckets
(loratune-after minus loratune-buckets, per step).

This is a benchmark, not a test: it prints numbers and exits 0 unless a run
fails. A 2-core machine gives each rank one core, and the all-reduce then
competes with the compute for them; a GPU node (NCCL on its own stream) is
where the overlap pays most.

    .venv/bin/python scripts/bench_dist.py [--loratune build/loratune] [--json OUT]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (the model, the data, the child runner)

DDP_CHILD = r"""
import json, os, sys, time
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
model_dir, data_path, batch, accum, steps, lr, r, alpha, bucket_mb, out = sys.argv[1:11]
batch, accum, steps, r = int(batch), int(accum), int(steps), int(r)
lr, alpha, bucket_mb = float(lr), float(alpha), float(bucket_mb)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(1234)
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
model.train()
ddp = DDP(model, bucket_cap_mb=bucket_mb)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
with open(data_path) as f:
    rows = [json.loads(line)["input_ids"] for line in f]
dist.barrier()
t_ready = time.perf_counter()
times, losses = [], []
per_step = batch * accum * world
for s in range(steps):
    total = torch.zeros(())
    for a in range(accum):
        first = (s * per_step + (rank * accum + a) * batch) % len(rows)
        ids = torch.tensor([rows[(first + j) % len(rows)] for j in range(batch)])
        ctx = ddp.no_sync() if a + 1 < accum else torch.enable_grad()
        with ctx:
            loss = ddp(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss / accum
            loss.backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dist.all_reduce(total)
    losses.append(total.item() / world)
    times.append(time.perf_counter() - t_ready)
if rank == 0:
    with open(out, "w") as f:
        json.dump({"times": times, "losses": losses, "tokens_per_step": per_step * ids.shape[1],
                   "trainable": sum(p.numel() for p in params)}, f)
dist.destroy_process_group()
"""


ALLREDUCE_CHILD = r"""
import sys, time
import torch
import torch.distributed as dist
numel, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo")
t = torch.ones(numel)
for _ in range(2):
    dist.all_reduce(t)
dist.barrier()
t0 = time.perf_counter()
for _ in range(10):
    dist.all_reduce(t)
if dist.get_rank() == 0:
    with open(out, "w") as f:
        f.write(str((time.perf_counter() - t0) / 10))
dist.destroy_process_group()
"""


def time_all_reduce(args, env, numel):
    """Seconds of one Gloo all-reduce of `numel` float32 over the 2 ranks, alone."""
    script = os.path.join(args.dir, "allreduce_child.py")
    out = os.path.join(args.dir, "allreduce.txt")
    with open(script, "w") as f:
        f.write(ALLREDUCE_CHILD)
    bench_train.run_child(torchrun(args) + [script, str(numel), out], env)
    with open(out) as f:
        return float(f.read())


def torchrun(args):
    return [args.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def loratune_config(path, model_dir, data_path, out_dir, args, bucket_mb):
    text = f"""# generated by scripts/bench_dist.py
model: {{path: {model_dir}, dtype: float32}}
device: cpu
seed: 1234
lora: {{r: {args.rank}, alpha: {args.alpha}, dropout: 0.0, target_modules: all-linear}}
data:
  train: [{data_path}]
  format: tokenized
  max_seq_len: {args.seq_len}
  packing: false
  shuffle: false
train:
  max_steps: {args.steps}
  micro_batch_size: {args.batch}
  gradient_accumulation_steps: {args.accum}
  grad_bucket_mb: {bucket_mb}
  optimizer: {{lr: {args.lr}}}
  scheduler: {{name: constant, warmup_steps: 0}}
  max_grad_norm: 1.0
  log_every: 1
output: {{dir: {out_dir}, overwrite: true}}
"""
    with open(path, "w") as f:
        f.write(text)


def summarize(times, losses, tokens_per_step, warmup):
    step_s = (times[-1] - times[warmup - 1]) / (len(times) - warmup)
    return {"tokens_per_s": tokens_per_step / step_s, "step_s": step_s, "first_loss": losses[0],
            "losses": losses}


def run_loratune(args, env, model_dir, data_path, bucket_mb):
    tag = f"bucket{bucket_mb:g}"
    cfg = os.path.join(args.dir, f"dist-{tag}.yaml")
    out_dir = os.path.join(args.dir, f"dist-{tag}-run")
    loratune_config(cfg, model_dir, data_path, out_dir, args, bucket_mb)
    bench_train.run_child(torchrun(args) + ["--no-python", args.loratune, "train", "--plain", cfg],
                          env)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        recs = [j for j in map(json.loads, f) if j.get("split") == "train"]
    return summarize([j["elapsed_s"] for j in recs], [j["loss"] for j in recs],
                     recs[-1]["tokens"], args.warmup)


def run_ddp(args, env, model_dir, data_path):
    script = os.path.join(args.dir, "ddp_child.py")
    out = os.path.join(args.dir, "ddp.json")
    with open(script, "w") as f:
        f.write(DDP_CHILD)
    bench_train.run_child(
        torchrun(args) + [script, model_dir, data_path, str(args.batch), str(args.accum),
                          str(args.steps), str(args.lr), str(args.rank), str(args.alpha),
                          str(args.bucket_mb), out], env)
    with open(out) as f:
        j = json.load(f)
    r = summarize(j["times"], j["losses"], j["tokens_per_step"], args.warmup)
    r["trainable"] = j["trainable"]
    return r


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_train.add_common_args(ap, threads=1, steps=8, batch=2, rank=128, alpha=256.0)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved runs of each side")
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per rank per step")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--only", choices=["loratune", "ddp"], help="run one side only")
    args = ap.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        ap.error("need 1 <= --warmup < --steps")

    model_dir, _, data_path = bench_train.prepare(args, args.steps * args.batch * args.accum * 2)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    sides = {"loratune-after": lambda: run_loratune(args, env, model_dir, data_path, 0),
             "loratune-buckets": lambda: run_loratune(args, env, model_dir, data_path,
                                                      args.bucket_mb),
             "ddp": lambda: run_ddp(args, env, model_dir, data_path)}
    if args.only == "loratune":
        del sides["ddp"]
    elif args.only == "ddp":
        sides = {"ddp": sides["ddp"]}
    names = list(sides)
    results = {s: [] for s in names}
    for rnd in range(args.rounds):
        for side in (names if rnd % 2 == 0 else names[::-1]):
            r = sides[side]()
            results[side].append(r)
            print(f"round {rnd + 1} {side:17} {r['tokens_per_s']:8.1f} tokens/s "
                  f"{r['step_s']:6.3f} s/step  first loss {r['first_loss']:.5f}", flush=True)

    print(f"\nbench-58m float32 on 2 ranks (Gloo, {args.threads} thread(s) each), seq "
          f"{args.seq_len}, {args.accum} micro-batches of {args.batch} per rank per step, LoRA "
          f"r={args.rank} all-linear, buckets {args.bucket_mb:g} MiB, {args.steps} steps "
          f"({args.warmup} warm-up) x {args.rounds} rounds; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  {'':18}{'best tok/s':>12}{'mean tok/s':>12}{'best s/step':>13}")
    summary = {}
    for side, rs in results.items():
        best = max(r["tokens_per_s"] for r in rs)
        summary[side] = {"best_tokens_per_s": best,
                         "mean_tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rs),
                         "best_step_s": min(r["step_s"] for r in rs), "runs": rs}
        print(f"  {side:18}{best:12.1f}{summary[side]['mean_tokens_per_s']:12.1f}"
              f"{summary[side]['best_step_s']:13.3f}")
    out = {"config": vars(args), "sides": summary}
    if "ddp" in summary:  # the gradient's size: PEFT's trainable parameters
        numel = summary["ddp"]["runs"][0]["trainable"]
        out["all_reduce_alone_s"] = time_all_reduce(args, env, numel)
        print(f"  one all-reduce of the {numel * 4 / 2**20:.1f} MiB gradient alone: "
              f"{out['all_reduce_alone_s'] * 1000:.1f} ms")
    if "loratune-after" in summary:
        a, b = summary["loratune-after"], summary["loratune-buckets"]
        out["buckets_vs_after"] = b["best_tokens_per_s"] / a["best_tokens_per_s"]
        out["exposed_all_reduce_s"] = a["best_step_s"] - b["best_step_s"]
        print(f"  buckets / one all-reduce after backward: {out['buckets_vs_after']:.3f}x "
              f"tokens/s; step time hidden by the buckets: {out['exposed_all_reduce_s']:.3f} s")
        print(f"  first-step loss: after {a['runs'][0]['first_loss']:.6f} buckets "
              f"{b['runs'][0]['first_loss']:.6f}")
    if "ddp" in summary and "loratune-buckets" in summary:
        b, d = summary["loratune-buckets"], summary["ddp"]
        out["loratune_vs_ddp"] = b["best_tokens_per_s"] / d["best_tokens_per_s"]
        print(f"  loratune (buckets) / DDP + PEFT: {out['loratune_vs_ddp']:.2f}x tokens/s; "
              f"first-step loss ddp {d['runs'][0]['first_loss']:.6f}, "
              f"{d['runs'][0]['trainable']} trainable")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
