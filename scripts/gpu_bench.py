#!/usr/bin/env python3
"""The checks and measurements of scripts/gpu_check.sh, loratune vs transformers + PEFT.

    gpu_bench.py --loratune BIN --work DIR --out DIR [--device cuda] [--parts logits,train,bench]
    gpu_bench.py ... --device cpu --dry-run      # the same pipeline at tiny sizes on the CPU

Parts, each on --device, each side in its own process:
  logits  every tiny family of scripts/make_tiny_model.py --all: `loratune logits`
          vs transformers (eager attention) on the same random ids, float32
          (max |diff| <= 1e-3) and bfloat16 (argmax agreement >= 0.99 on the
          positions whose float32 top-2 margin is >= 0.05, as tests/model)
  train   20 optimizer steps of float32 LoRA training (llama-bias, r=8,
          all-linear, random initial A and B, micro-batch 2 right-padded,
          accumulation 2, AdamW, cosine schedule, clipping): `loratune train`
          vs a PEFT loop; per-step losses within 1e-3 relative
  bench   a random-weight model of the Llama-3.1-8B shape in bfloat16, seq
          2048, micro-batch 2, LoRA r=16 all-linear, activation checkpointing
          off and on: tokens/s, MFU, peak GPU memory; loratune vs transformers
          (sdpa) + PEFT (gradient checkpointing likewise); ratios
Writes OUT/report.json and OUT/report.md; exits 1 when a parity check fails
(the benchmark numbers never fail the run), 0 otherwise.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from hf_train import accumulate, collate  # noqa: E402
from word_tokenizer import write_word_tokenizer  # noqa: E402
PEAK_BF16 = 989.4e12  # H100/H200 SXM dense bf16, datasheet
MEASURED_BF16 = 790e12  # an 8192^3 bf16 matmul on this workplace's H200 (KINDS.md)

# Llama-3.1-8B; the dry run uses a tiny model of the same family.
SHAPE_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
SHAPE_DRY = dict(SHAPE_8B, vocab_size=4000, hidden_size=128, intermediate_size=256,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=512)


def log(msg):
    print(f"[gpu_bench] {msg}", flush=True)


def run(cmd, **kw):
    """Runs cmd; on failure raises with the end of its output."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-3000:]}")
    return p.stdout


def yaml_config(path, model, data, out, device, dtype, lora, train):
    """A loratune config (YAML flow style; keys as trainer/config/config.h)."""
    with open(path, "w") as f:
        f.write(f"model: {{path: {model}, dtype: {dtype}}}\ndevice: {device}\nseed: 7\n"
                f"lora: {lora}\n"
                f"data: {{train: {data}, format: tokenized, max_seq_len: {train.pop('seq')}, "
                f"shuffle: false, packing: false}}\n"
                "train:\n" + "".join(f"  {k}: {v}\n" for k, v in train.items()) +
                f"output: {{dir: {out}, overwrite: true}}\n")


def metrics(run_dir):
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- logits -------------------------------------------------------------------

def part_logits(a, torch):
    from transformers import AutoModelForCausalLM
    models = f"{a.work}/models"
    run([sys.executable, f"{ROOT}/scripts/make_tiny_model.py", "--all", "--out", models, "--reuse"])
    lengths = [17, 100] if a.dry_run else [33, 700]
    gen = torch.Generator().manual_seed(11)
    rows = []
    for variant in sorted(os.listdir(models)):
        path = f"{models}/{variant}"
        if not os.path.exists(f"{path}/config.json"):
            continue
        row = {"variant": variant}
        ref = {}
        for key, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                     attn_implementation="eager").to(a.device)
            vocab = m.config.vocab_size
            with torch.no_grad():
                for t in lengths:
                    ids = ref.setdefault(("ids", t), torch.randint(3, vocab, (1, t), generator=gen))
                    ref[(key, t)] = m(input_ids=ids.to(a.device)).logits[0].float().cpu()
            del m
        f32_diff, agree, agree_clear, n, n_clear, bf16_diff = 0.0, 0, 0, 0, 0, 0.0
        for t in lengths:
            ids = " ".join(str(int(x)) for x in ref[("ids", t)][0])
            got = {}
            for key in ("float32", "bfloat16"):
                out = f"{a.work}/logits-{variant}-{key}-{t}.safetensors"
                run([a.loratune, "logits", "--model", path, "--ids", ids, "--out", out,
                     "--overwrite", "--dtype", key, "--device", a.device])
                from safetensors.torch import load_file
                got[key] = load_file(out)["logits"]
            want32, want16 = ref[("float32", t)], ref[("bfloat16", t)]
            f32_diff = max(f32_diff, float((got["float32"] - want32).abs().max()))
            bf16_diff = max(bf16_diff, float((got["bfloat16"] - want16).abs().max()))
            top2 = want32.topk(2, -1).values
            clear = (top2[:, 0] - top2[:, 1]) >= 0.05
            same = got["bfloat16"].argmax(-1) == want16.argmax(-1)
            agree += int(same.sum())
            agree_clear += int((same & clear).sum())
            n += t
            n_clear += int(clear.sum())
        row.update(f32_max_abs_diff=f32_diff, bf16_max_abs_diff=bf16_diff,
                   bf16_argmax_agreement=agree / n,
                   bf16_argmax_agreement_clear=agree_clear / max(1, n_clear), positions=n)
        row["ok"] = f32_diff <= 1e-3 and row["bf16_argmax_agreement_clear"] >= 0.99
        log(f"logits {variant}: f32 max|diff| {f32_diff:.2e}, bf16 argmax "
            f"{row['bf16_argmax_agreement_clear']:.4f} (clear) {agree / n:.4f} (all)"
            f" -> {'ok' if row['ok'] else 'FAIL'}")
        rows.append(row)
    return {"rows": rows, "ok": bool(rows) and all(r["ok"] for r in rows)}


# ---- training -----------------------------------------------------------------

def part_train(a, torch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup
    steps, accum, micro, lr, wd, warmup = 20, 2, 2, 1e-3, 0.01, 3
    d = f"{a.work}/train"
    model_dir = f"{d}/model"
    os.makedirs(d, exist_ok=True)
    run([sys.executable, f"{ROOT}/scripts/make_tiny_model.py", "--variant", "llama-bias",
         "--out", d, "--name", "model", "--reuse"])
    write_word_tokenizer(model_dir, 1000)
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(f"{d}/init_adapter")
    examples = []
    for _ in range(steps * accum * micro):
        t = int(torch.randint(8, 60, (1,), generator=g))
        ids = torch.randint(3, 1000, (t,), generator=g).tolist()
        prompt = int(torch.randint(0, t - 2, (1,), generator=g))
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    with open(f"{d}/train.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in examples)

    # PEFT on the device, as tests/python/ref_train.py does on the CPU.
    model = model.to(a.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    ref = []
    for s in range(steps):
        group = []
        for k in range(accum):
            rows = examples[(s * accum + k) * micro:(s * accum + k + 1) * micro]
            group.append(collate(rows, device=a.device))
        opt.zero_grad()
        total, _ = accumulate(model, group)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ref.append(total)
    del model, base

    cfg = f"{d}/train.yaml"
    yaml_config(cfg, model_dir, f"{d}/train.jsonl", f"{d}/run", a.device, "float32",
                f"{{r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear, "
                f"init_from: {d}/init_adapter}}",
                dict(seq=64, max_steps=steps, micro_batch_size=micro,
                     gradient_accumulation_steps=accum, max_grad_norm=1.0,
                     optimizer=f"{{lr: {lr}, weight_decay: {wd}}}",
                     scheduler=f"{{name: cosine, warmup_steps: {warmup}}}", log_every=1))
    run([a.loratune, "train", "--plain", cfg])
    ours = [r["loss"] for r in metrics(f"{d}/run") if r.get("split") == "train"]
    rel = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(ours, ref)]
    ok = len(ours) == steps and max(rel) <= 1e-3
    log(f"train: {len(ours)} steps, loss {ref[0]:.4f} -> {ref[-1]:.4f} (PEFT), max rel diff "
        f"{max(rel):.2e} -> {'ok' if ok else 'FAIL'}")
    return {"steps": steps, "peft_losses": ref, "loratune_losses": ours,
            "max_rel_diff": max(rel), "ok": ok}


# ---- throughput and memory -----------------------------------------------------

HF_CHILD = r"""
import json, sys, time, torch, transformers
transformers.utils.logging.disable_progress_bar()
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
model_dir, data, device, steps, warm, ckpt = sys.argv[1:7]
steps, warm, ckpt = int(steps), int(warm), ckpt == "1"
torch.manual_seed(7)
dtype = torch.bfloat16
try:  # straight to the GPU where accelerate is there, as users load
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa",
                                                 device_map=device)
except (ImportError, ValueError):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                 attn_implementation="sdpa").to(device)
if ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                         target_modules="all-linear", task_type="CAUSAL_LM"))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=device.startswith("cuda"))
rows = [json.loads(l)["input_ids"] for l in open(data)]
B = int(sys.argv[7])
cuda = device.startswith("cuda")
if cuda:
    torch.cuda.reset_peak_memory_stats()
times, losses = [], []
for s in range(steps):
    ids = torch.tensor(rows[s * B:(s + 1) * B], dtype=torch.long).to(device)
    if s == warm:
        if cuda: torch.cuda.synchronize()
        t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.detach())
if cuda: torch.cuda.synchronize()
dt = time.perf_counter() - t0
print("RESULT " + json.dumps({"seconds": dt, "steps": steps - warm,
    "tokens": (steps - warm) * B * len(rows[0]), "losses": [float(x) for x in losses],
    "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}))
"""


def make_bench_model(a, torch, shape, path):
    if os.path.exists(f"{path}/config.json"):
        return
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model("llama", **shape, initializer_range=0.02)
    cfg.dtype = torch.bfloat16
    torch.manual_seed(1)
    with torch.device(a.device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    m.save_pretrained(path, safe_serialization=True, max_shard_size="5GB")
    write_word_tokenizer(path, 1000)
    del m


def attention_flops(shape, B, T):
    """Forward FLOPs of causal attention (QK^T and PV, half the square), all layers."""
    heads_dim = shape["num_attention_heads"] * (shape["hidden_size"] // shape["num_attention_heads"])
    return 2 * 2 * B * T * T * heads_dim * 0.5 * shape["num_hidden_layers"]


def part_bench(a, torch):
    shape = SHAPE_DRY if a.dry_run else SHAPE_8B
    seq, B = (128, 2) if a.dry_run else (2048, 2)
    steps, warm = (4, 1) if a.dry_run else (8, 3)
    d = f"{a.work}/bench"
    path = f"{d}/model"
    os.makedirs(d, exist_ok=True)
    t0 = time.time()
    make_bench_model(a, torch, shape, path)
    log(f"bench model ready in {time.time() - t0:.0f}s ({path})")
    g = torch.Generator().manual_seed(9)
    data = f"{d}/data.jsonl"
    with open(data, "w") as f:
        for _ in range(steps * B):
            f.write(json.dumps({"input_ids": torch.randint(3, 1000, (seq,), generator=g).tolist()})
                    + "\n")
    with open(f"{path}/config.json") as f:
        c = json.load(f)
    hd = c["hidden_size"]
    n_params = (2 * c["vocab_size"] * hd + c["num_hidden_layers"] *
                (hd * hd * 2 + 2 * hd * c["num_key_value_heads"] * (hd // c["num_attention_heads"])
                 + 3 * hd * c["intermediate_size"] + 2 * hd) + hd)
    # Matmul parameters: all but the input embedding (a lookup, no FLOPs).
    n_params -= c["vocab_size"] * hd
    tokens_step = B * seq
    attn = attention_flops(shape, B, seq)
    results = []
    for ckpt in (False, True):
        row = {"checkpointing": ckpt}
        # loratune
        run_dir = f"{d}/run-{int(ckpt)}"
        cfg = f"{d}/bench-{int(ckpt)}.yaml"
        yaml_config(cfg, path, data, run_dir, a.device, "bfloat16",
                    "{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}",
                    dict(seq=seq, max_steps=steps, micro_batch_size=B,
                         gradient_accumulation_steps=1, max_grad_norm=1.0,
                         gradient_checkpointing=str(ckpt).lower(),
                         optimizer="{lr: 1.0e-4, weight_decay: 0.0}",
                         scheduler="{name: constant, warmup_steps: 0}", log_every=1))
        run([a.loratune, "train", "--plain", cfg])
        recs = [r for r in metrics(run_dir) if r.get("split") == "train"]
        timed = recs[warm:]
        if timed and "step_ms" in timed[0]:
            secs = sum(r["step_ms"] for r in timed) / 1e3
        else:
            secs = recs[-1]["elapsed_s"] - recs[warm - 1]["elapsed_s"]
        lt = {"tokens_per_s": len(timed) * tokens_step / secs,
              "peak_gib": recs[-1].get("mem_peak_gib"), "first_loss": recs[0]["loss"]}
        # transformers + PEFT
        out = run([sys.executable, "-c", HF_CHILD, path, data, a.device, str(steps), str(warm),
                   "1" if ckpt else "0", str(B)])
        hf = json.loads(out.split("RESULT ", 1)[1])
        ht = {"tokens_per_s": hf["tokens"] / hf["seconds"], "peak_gib": hf["peak_gib"],
              "first_loss": hf["losses"][0]}
        for side in (lt, ht):
            tps = side["tokens_per_s"]
            # Model FLOPs of LoRA: forward 2N + input-gradient 2N per token,
            # attention 3x its forward; checkpointing recomputes the forward.
            side["mfu_4n"] = (4 * n_params * tps + 3 * attn * tps / tokens_step) / PEAK_BF16
            side["mfu_6n"] = 6 * n_params * tps / PEAK_BF16
            if ckpt:
                side["hfu_ckpt"] = (6 * n_params * tps + 4 * attn * tps / tokens_step) / PEAK_BF16
        row.update(loratune=lt, hf_peft=ht,
                   speedup=lt["tokens_per_s"] / ht["tokens_per_s"],
                   memory_ratio=(lt["peak_gib"] / ht["peak_gib"]
                                 if lt["peak_gib"] and ht["peak_gib"] else None))
        log(f"bench ckpt={ckpt}: loratune {lt['tokens_per_s']:.0f} tok/s MFU {lt['mfu_4n']:.3f} "
            f"peak {lt['peak_gib']} GiB | HF PEFT {ht['tokens_per_s']:.0f} tok/s MFU "
            f"{ht['mfu_4n']:.3f} peak {ht['peak_gib']} GiB | speedup {row['speedup']:.2f}x")
        results.append(row)
    return {"shape": shape, "seq": seq, "micro_batch": B, "steps_timed": steps - warm,
            "n_params": n_params, "attention_fwd_flops_per_step": attn,
            "peak_flops": PEAK_BF16, "rows": results}


# ---- report ------------------------------------------------------------------------

def report_md(rep):
    L = [f"# loratune GPU check ({rep['date']})", "",
         f"- device: {rep['device_name']}", f"- torch {rep['torch']}, CUDA {rep['cuda']}, "
         f"transformers {rep['transformers']}, peft {rep['peft']}",
         f"- dry run: {rep['dry_run']}", ""]
    if "logits" in rep:
        L += ["## Logits parity vs transformers (same device)", "",
              "| model | f32 max abs diff | bf16 argmax (clear) | bf16 argmax (all) | ok |",
              "| --- | --- | --- | --- | --- |"]
        for r in rep["logits"]["rows"]:
            L.append(f"| {r['variant']} | {r['f32_max_abs_diff']:.2e} | "
                     f"{r['bf16_argmax_agreement_clear']:.4f} | {r['bf16_argmax_agreement']:.4f} "
                     f"| {'yes' if r['ok'] else 'NO'} |")
        L.append("")
    if "train" in rep:
        t = rep["train"]
        L += ["## 20 training steps vs PEFT (float32)", "",
              f"max relative loss difference {t['max_rel_diff']:.2e} "
              f"({'ok' if t['ok'] else 'FAIL'}); PEFT {t['peft_losses'][0]:.4f} -> "
              f"{t['peft_losses'][-1]:.4f}", ""]
    if "bench" in rep:
        b = rep["bench"]
        L += [f"## Throughput, {b['n_params'] / 1e9:.2f}B parameters, bf16, seq {b['seq']}, "
              f"micro-batch {b['micro_batch']}, LoRA r=16 all-linear", "",
              "| checkpointing | side | tokens/s | MFU (4N+attn) | MFU (6N) | peak GiB |",
              "| --- | --- | --- | --- | --- | --- |"]
        for r in b["rows"]:
            for side in ("loratune", "hf_peft"):
                s = r[side]
                peak = f"{s['peak_gib']:.1f}" if s["peak_gib"] else "-"
                L.append(f"| {'on' if r['checkpointing'] else 'off'} | {side} | "
                         f"{s['tokens_per_s']:.0f} | {s['mfu_4n']:.3f} | {s['mfu_6n']:.3f} | {peak} |")
        L.append("")
        for r in b["rows"]:
            mem = f"{r['memory_ratio']:.2f}x" if r["memory_ratio"] else "-"
            L.append(f"- checkpointing {'on' if r['checkpointing'] else 'off'}: loratune / HF "
                     f"tokens/s {r['speedup']:.2f}x, peak memory {mem}")
        L.append("")
    L += [f"Overall: {'PASS' if rep['ok'] else 'FAIL'}", ""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loratune", required=True)
    ap.add_argument("--work", required=True, help="scratch folder (models, runs)")
    ap.add_argument("--out", required=True, help="report.json and report.md go here")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parts", default="logits,train,bench")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (a CPU check of the script)")
    a = ap.parse_args()
    import torch
    import peft
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    cuda = a.device.startswith("cuda")
    rep = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": a.device, "dry_run": a.dry_run,
           "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "peft": peft.__version__}
    ok = True
    for part in a.parts.split(","):
        t0 = time.time()
        try:
            rep[part] = {"logits": part_logits, "train": part_train, "bench": part_bench}[part](a, torch)
            ok = ok and rep[part].get("ok", True)
        except Exception as e:  # report and go on with the other parts
            rep[part + "_error"] = str(e)
            log(f"{part} failed: {str(e)[-2000:]}")
            ok = False
        log(f"{part} took {time.time() - t0:.0f}s")
    rep["ok"] = ok
    with open(f"{a.out}/report.json", "w") as f:
        json.dump(rep, f, indent=1)
    md = report_md({k: v for k, v in rep.items() if not k.endswith("_error")})
    for k, v in rep.items():
        if k.endswith("_error"):
            md += f"\n## {k}\n\n```\n{v[-3000:]}\n```\n"
    with open(f"{a.out}/report.md", "w") as f:
        f.write(md)
    print(md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
