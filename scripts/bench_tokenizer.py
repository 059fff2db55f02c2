#!/usr/bin/env python3
"""Single-thread encode throughput: loratune vs Python `tokenizers`.

usage: scripts/bench_tokenizer.py --bench BUILD/tests/tokenizer/bench_tokenizer
           --model DIR [--model DIR ...] [--lines 20000] [--repeat 3]

Both sides encode the same generated corpus (tests/python/make_tokenizer_corpus.py)
without special tokens, after one warm-up pass. Python uses the
`tokenizers.Tokenizer` that transformers' AutoTokenizer builds for the
directory (its backend_tokenizer), with RAYON_NUM_THREADS=1 and
TOKENIZERS_PARALLELISM=false, timed both as encode_batch and per line.
Prints MB/s and the ratio loratune / tokenizers (the goal is >= 1.0).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import make_tokenizer_corpus  # noqa: E402


def python_mb_per_s(model_dir, lines, repeat):
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(model_dir).backend_tokenizer
    nbytes = sum(len(s.encode("utf-8")) for s in lines)
    backend.encode_batch(lines, add_special_tokens=False)  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        backend.encode_batch(lines, add_special_tokens=False)
    batch = nbytes * repeat / (time.perf_counter() - t) / 1e6
    t = time.perf_counter()
    for _ in range(repeat):
        for s in lines:
            backend.encode(s, add_special_tokens=False)
    per_line = nbytes * repeat / (time.perf_counter() - t) / 1e6
    return batch, per_line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="the bench_tokenizer executable")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    lines = make_tokenizer_corpus.build(a.lines, 99)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w", encoding="utf-8") as f:
            for s in lines:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        print(f"corpus: {len(lines)} lines, {sum(len(s.encode()) for s in lines) / 1e6:.2f} MB, repeat {a.repeat}")
        for model in a.model:
            out = subprocess.run([a.bench, model, corpus, str(a.repeat)], check=True, capture_output=True, text=True)
            ours = json.loads(out.stdout)
            batch, per_line = python_mb_per_s(model, lines, a.repeat)
            print(f"{os.path.basename(os.path.normpath(model))}: loratune {ours['mb_per_s']:.2f} MB/s | "
                  f"tokenizers encode_batch {batch:.2f} MB/s, per line {per_line:.2f} MB/s | "
                  f"ratio {ours['mb_per_s'] / batch:.2f}x (batch), {ours['mb_per_s'] / per_line:.2f}x (per line)")


if __name__ == "__main__":
    main()
