#!/usr/bin/env python3
"""Benchmark: peak memory of `loratune export-gguf` on a ~540 MB float32 model.

The model is SmolLM2-135M-Instruct: scripts/fetch_smollm2.sh puts its Q4_1
GGUF in ~/.cache/loratune/gguf, and `loratune import` turns it into a float32
Hugging Face directory (--dir/smollm2-f32, 540 MB, reused). Its largest tensor
is the 49152 x 576 embedding (113 MB in float32; tied, so no lm_head). A
PEFT-format adapter (random A and B, r 16, every attention and MLP projection
of the 30 layers; bench_merge_memory.make_adapter) goes to
--dir/smollm2-f32-adapter. Then, for --type f32 and q8_0, with and without the
adapter, it runs

    loratune export-gguf --model M [--adapter A] --out O --type T --overwrite

and prints, per run:
  peak      the command's peak RSS (GNU time's %M, start-up included; RSS
            counts the pages of the mmap'd checkpoint the process touches,
            which export releases tensor by tensor),
  baseline  the peak RSS of `loratune inspect M` (the same executable and
            libraries, the model's headers read, no weights),
  ratio     (peak - baseline) / largest tensor's float32 bytes; goal <= 1.5.
A 20 ms VmRSS sampler of the child is printed as a cross-check.

It measures, it does not assert (exit 0 unless a command fails); --json OUT
writes the numbers. Run it niced: `nice -n 5 .venv/bin/python
scripts/bench_export_memory.py`.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_merge_memory import make_adapter, sample_rss  # noqa: E402

GGUF = os.path.join(os.path.expanduser("~"), ".cache", "loratune", "gguf",
                    "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_measured(cmd, scratch):
    """(returncode, stderr, wall seconds, peak RSS bytes, sampled max VmRSS bytes).

    The peak is GNU time's %M (the command's ru_maxrss). It is taken by
    /usr/bin/time rather than by wait4 here: Linux carries the RSS a process
    had before exec into its ru_maxrss, and a child forked from this Python
    (torch imported) would report this process's size."""
    t0 = time.perf_counter()
    peak_file = os.path.join(scratch, "peak_kb.txt")
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", peak_file] + cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampled, stop = [0], threading.Event()
    th = threading.Thread(target=sample_child_rss, args=(p.pid, stop, sampled), daemon=True)
    th.start()
    err = p.stderr.read().decode(errors="replace")
    p.wait()
    stop.set()
    th.join()
    with open(peak_file) as f:
        peak = int(f.read().split()[-1]) * 1024
    return p.returncode, err, time.perf_counter() - t0, peak, sampled[0]


def sample_child_rss(time_pid, stop, out):
    """sample_rss on the command /usr/bin/time runs (its one child)."""
    child = None
    while child is None and not stop.is_set():
        try:
            with open(f"/proc/{time_pid}/task/{time_pid}/children") as f:
                kids = f.read().split()
            child = int(kids[0]) if kids else None
        except OSError:
            return
        if child is None:
            time.sleep(0.005)
    if child is not None:
        sample_rss(child, stop, out)


def largest_tensor_bytes(model_dir):
    """float32 bytes of the largest tensor, from the safetensors headers."""
    best = 0
    for name in os.listdir(model_dir):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(model_dir, name), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            numel = 1
            for d in info["shape"]:
                numel *= d
            best = max(best, numel * 4)
    return best


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loratune", default=os.path.join(ROOT, "build", "loratune"))
    ap.add_argument("--gguf", default=GGUF, help="the SmolLM2 GGUF (scripts/fetch_smollm2.sh)")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build", "testdata", "bench"),
                    help="where the import, adapter and exports go (not committed)")
    ap.add_argument("--types", default="f32,q8_0")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to OUT")
    args = ap.parse_args(argv)

    if not os.path.exists(args.gguf):
        sys.exit(f"{args.gguf} missing: run bash scripts/fetch_smollm2.sh .venv/bin/python")
    model_dir = os.path.join(args.dir, "smollm2-f32")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        os.makedirs(args.dir, exist_ok=True)
        subprocess.run([args.loratune, "import", args.gguf, "--out", model_dir], check=True)
    adapter_dir = os.path.join(args.dir, "smollm2-f32-adapter")
    make_adapter(model_dir, adapter_dir, r=16, alpha=32, seed=0)
    weights = sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir)
                  if n.endswith(".safetensors"))
    largest = largest_tensor_bytes(model_dir)

    rc, err, _, baseline, base_sampled = run_measured([args.loratune, "inspect", model_dir],
                                                      args.dir)
    if rc != 0:
        sys.exit(f"inspect failed ({rc}):\n{err[-2000:]}")

    mb = lambda x: f"{x / 1e6:8.1f} MB"  # noqa: E731
    print(f"model     {model_dir}: {weights / 1e6:.0f} MB float32, largest tensor {mb(largest)}")
    print(f"baseline  {mb(baseline)}   (peak RSS of `loratune inspect` on it; sampled "
          f"{mb(base_sampled).strip()})")
    print(f"{'type':6} {'adapter':8} {'peak RSS':>11} {'peak-base':>11} {'ratio':>6} "
          f"{'sampled':>11} {'wall':>6}  goal <= 1.5")
    results = []
    for typ in args.types.split(","):
        for with_adapter in (False, True):
            out = os.path.join(args.dir, f"smollm2{'-lora' if with_adapter else ''}.{typ}.gguf")
            cmd = [args.loratune, "export-gguf", "--model", model_dir, "--out", out, "--type", typ,
                   "--overwrite"]
            if with_adapter:
                cmd += ["--adapter", adapter_dir]
            rc, err, wall, peak, sampled = run_measured(cmd, args.dir)
            if rc != 0:
                sys.exit(f"export-gguf failed ({rc}): {' '.join(cmd)}\n{err[-4000:]}")
            ratio = (peak - baseline) / largest
            results.append({"type": typ, "adapter": with_adapter, "peak_rss_bytes": peak,
                            "baseline_rss_bytes": baseline, "largest_tensor_bytes": largest,
                            "ratio": ratio, "sampled_max_rss_bytes": sampled,
                            "wall_seconds": wall, "file_bytes": os.path.getsize(out),
                            "goal_met": ratio <= 1.5})
            print(f"{typ:6} {'yes' if with_adapter else 'no':8} {mb(peak)} {mb(peak - baseline)} "
                  f"{ratio:6.2f} {mb(sampled)} {wall:5.1f}s  {'met' if ratio <= 1.5 else 'NOT met'}")
            os.remove(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model_dir, "weights_bytes": weights, "runs": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
