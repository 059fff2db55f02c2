#!/usr/bin/env python3
"""Runs loratune against hostile input and prints one table row per case.

    .venv/bin/python scripts/hostile_probe.py [--bin build/loratune]
        [--testdata build/testdata] [--markdown]

Each case mutates a copy of a tiny test model, adapter, data file, config or
chat template (the ctest fixtures under build/testdata: run the test suite
once first), runs one loratune command, and records its exit code and the
first line it printed on stderr. A case passes when the exit code is the one
its error kind documents (README, "Errors, exit codes and safety"), stderr
holds exactly one line for a refusal, and no input file changed. The exit
status is the number of failing cases (0: all as documented).

This is the table of the hardening work, measured: the same refusals are
asserted one by one in the ctest suites (tests/train/test_hardening_cli.cpp,
test_bad_inputs.cpp, tests/model, tests/lora, tests/tokenizer, tests/gguf).
"""
import argparse
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

CONFIG, INTERNAL, DATA, IO, CORRUPT, UNSUPPORTED, RESOURCE = 1, 2, 3, 4, 5, 6, 7


def tree_digest(path):
    """sha256 over every file under path (or the file itself)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(p.encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class Probe:
    def __init__(self, binary, testdata, work):
        self.bin = binary
        self.td = testdata
        self.work = work
        self.rows = []
        self.n = 0

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def copy_model(self, tag, src=None):
        dst = self.path(tag)
        shutil.copytree(src or os.path.join(self.td, "ref_train", "tokmodel"), dst)
        return dst

    def edit_json(self, file, **changes):
        with open(file) as f:
            j = json.load(f)
        j.update(changes)
        with open(file, "w") as f:
            json.dump(j, f)

    def write(self, name, text, mode="w"):
        p = self.path(name)
        with open(p, mode) as f:
            f.write(text)
        return p

    def run(self, area, case, args, want, inputs=(), env=None):
        """Runs `loratune ARGS`; records exit code and the first stderr line."""
        digests = {p: tree_digest(p) for p in inputs}
        start = time.time()
        r = subprocess.run([self.bin] + args, capture_output=True, text=True,
                           errors="replace", env=dict(os.environ, **(env or {})), timeout=600)
        secs = time.time() - start
        err_lines = [l for l in r.stderr.splitlines() if l.startswith("loratune: error")
                     or l.startswith("loratune: internal")]
        first = err_lines[0] if err_lines else (r.stderr.strip().splitlines() or [""])[-1]
        problems = []
        if r.returncode != want:
            problems.append(f"exit {r.returncode}, documented {want}")
        if want not in (0, 130, 143) and len(err_lines) != 1:
            problems.append(f"{len(err_lines)} error lines")
        if "Exception raised from" in r.stderr or "frame #" in r.stderr:
            problems.append("backtrace")
        for p, d in digests.items():
            if tree_digest(p) != d:
                problems.append(f"input {p} changed")
        self.n += 1
        self.rows.append((self.n, area, case, r.returncode, first, secs, problems))
        return r

    def check(self, area, case, ok, detail):
        """A case that is a property of several runs, not one exit code."""
        self.n += 1
        self.rows.append((self.n, area, case, 0 if ok else 1, detail, 0.0,
                          [] if ok else ["property does not hold"]))


def safetensors_blob(tensors):
    """A minimal safetensors file: {name: (dtype, shape, bytes)}."""
    header, data = {}, b""
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="build/loratune")
    ap.add_argument("--testdata", default="build/testdata")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    td = os.path.abspath(a.testdata)
    work = tempfile.mkdtemp(prefix="loratune-probe-")
    P = Probe(binary, td, work)
    base = P.copy_model("model")
    tied = os.path.join(td, "models", "llama-rope3-tied")
    adapter_src = os.path.join(td, "peft", "llama_all_linear", "adapter")
    data = os.path.join(td, "ref_train", "llama-rope3-tied", "train.jsonl")
    ids = ["--ids", "1 22 33 44"]

    # --- config.json trusted before checked --------------------------------
    for key, value, cmd in [
        ("num_hidden_layers", 1000000, "generate"), ("num_hidden_layers", 1000000, "inspect"),
        ("hidden_size", 10**9, "logits"), ("vocab_size", 10**12, "generate"),
        ("intermediate_size", 10**10, "eval"), ("num_attention_heads", 0, "generate"),
        ("hidden_size", "64", "generate"), ("max_position_embeddings", -1, "generate"),
        ("model_type", "gpt_neox", "generate"), ("num_key_value_heads", 3, "generate"),
    ]:
        m = P.copy_model(f"cfg_{key}_{cmd}")
        P.edit_json(os.path.join(m, "config.json"), **{key: value})
        args = {"generate": ["generate", "--model", m] + ids + ["--max-new-tokens", "2"],
                "inspect": ["inspect", m],
                "logits": ["logits", "--model", m] + ids + ["--out", P.path(f"l_{key}.st")],
                "eval": ["eval", "--model", m, "--data", data]}[cmd]
        want = UNSUPPORTED if key == "model_type" else CORRUPT
        P.run("config.json", f"{key}: {json.dumps(value)} ({cmd})", args, want, [m])
    m = P.copy_model("cfg_not_json")
    P.write("cfg_not_json/config.json", '{"hidden_size": 64,')
    P.run("config.json", "truncated JSON", ["inspect", m], CORRUPT, [m])
    m = P.copy_model("cfg_1e400")
    P.write("cfg_1e400/config.json",
            open(os.path.join(base, "config.json")).read().replace('"vocab_size": 1000', '"vocab_size": 1e400'))
    P.run("config.json", "vocab_size: 1e400", ["inspect", m], CORRUPT, [m])

    # --- safetensors -------------------------------------------------------
    m = P.copy_model("st_trunc")
    st = os.path.join(m, "model.safetensors")
    os.truncate(st, os.path.getsize(st) // 2)
    P.run("safetensors", "file truncated to half", ["generate", "--model", m] + ids, CORRUPT, [m])
    m = P.copy_model("st_hdr")
    with open(os.path.join(m, "model.safetensors"), "r+b") as f:
        f.write(struct.pack("<Q", 1 << 60))
    P.run("safetensors", "header length 2^60", ["inspect", m], CORRUPT, [m])
    m = P.copy_model("st_missing")
    os.remove(os.path.join(m, "model.safetensors"))
    P.run("safetensors", "no weights file", ["generate", "--model", m] + ids, IO, [m])

    # --- adapters ----------------------------------------------------------
    def adapter_copy(tag, **cfg):
        dst = P.path(tag)
        shutil.copytree(adapter_src, dst)
        if cfg:
            P.edit_json(os.path.join(dst, "adapter_config.json"), **cfg)
        return dst

    out = P.path("merged_never")
    ad = adapter_copy("ad_rank", r=16)
    P.run("adapter", "r=16 in config, rank-8 tensors (merge)",
          ["merge", "--model", tied, "--adapter", ad, "--out", out], CORRUPT, [ad])
    ad = adapter_copy("ad_targets", target_modules=["q_proj"])
    P.run("adapter", "target_modules [q_proj], tensors for all 7 (merge)",
          ["merge", "--model", tied, "--adapter", ad, "--out", out], CORRUPT, [ad])
    P.run("adapter", "target_modules [q_proj], tensors for all 7 (logits)",
          ["logits", "--model", tied, "--adapter", ad] + ids + ["--out", P.path("l.st")],
          CORRUPT, [ad])
    ad = adapter_copy("ad_dora", use_dora=True)
    P.run("adapter", "use_dora: true, no lora_magnitude_vector tensors",
          ["generate", "--model", tied, "--adapter", ad] + ids, CORRUPT, [ad])
    ad = adapter_copy("ad_nocfg")
    os.remove(os.path.join(ad, "adapter_config.json"))
    P.run("adapter", "adapter_config.json missing",
          ["merge", "--model", tied, "--adapter", ad, "--out", out], IO, [ad])
    ad = adapter_copy("ad_nan")
    st = os.path.join(ad, "adapter_model.safetensors")
    with open(st, "rb") as f:
        raw = bytearray(f.read())
    hlen = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + hlen])
    name = sorted(k for k in header if k.endswith("lora_B.weight"))[0]
    begin = 8 + hlen + header[name]["data_offsets"][0]
    raw[begin:begin + 4] = struct.pack("<f", float("nan"))
    with open(st, "wb") as f:
        f.write(raw)
    P.run("adapter", "a NaN in one lora_B (merge)",
          ["merge", "--model", tied, "--adapter", ad, "--out", out], CORRUPT, [ad])
    ad = adapter_copy("ad_alpha", lora_alpha="16")
    P.run("adapter", "lora_alpha: \"16\" (a string)",
          ["generate", "--model", tied, "--adapter", ad] + ids, CORRUPT, [ad])
    P.run("adapter", "adapter for another model (vocab 1000 model, wrong dims)",
          ["generate", "--model", os.path.join(td, "models", "qwen3"), "--adapter", adapter_src] + ids,
          CORRUPT, [adapter_src])

    # --- chat templates are untrusted code -----------------------------------
    msgs = P.write("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    templates = [
        ("recursive macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", RESOURCE),
        ("5000 nested ifs", "{% if true %}" * 5000 + "x" + "{% endif %}" * 5000, RESOURCE),
        ("range(100000000)", "{% for i in range(100000000) %}{% endfor %}", RESOURCE),
        ("'x' * 1000000000", "{{ 'x' * 1000000000 }}", RESOURCE),
        ("string doubling x64", "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}", RESOURCE),
        ("nested range(100000) loops", "{% for i in range(100000) %}{% for j in range(100000) %}"
                                       "{% endfor %}{% endfor %}", RESOURCE),
        ("1000 x 100 kB output", "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}", RESOURCE),
        ("syntax error", "{% if %}{% endif %}", CORRUPT),
        ("raise_exception()", "{{ raise_exception('roles must alternate') }}", DATA),
        ("{% include %}", "{% include 'x' %}", UNSUPPORTED),
    ]
    for case, src, want in templates:
        tpl = P.write(f"tpl_{P.n}.jinja", src)
        P.run("chat template", case,
              ["tokenize", "--model", base, "--chat", msgs, "--chat-template", tpl], want, [base])
    tm = P.copy_model("tpl_model")
    P.edit_json(os.path.join(tm, "tokenizer_config.json"),
                chat_template="{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    P.run("chat template", "recursive macro in tokenizer_config.json (generate --chat)",
          ["generate", "--model", tm, "--chat", P.write("c.json", '[{"role": "user", "content": "hi"}]')],
          RESOURCE, [tm])

    # --- commands never destroy their inputs ----------------------------------
    P.run("outputs", "merge --out MODEL --overwrite",
          ["merge", "--model", base, "--adapter", adapter_src, "--out", base, "--overwrite"], CONFIG,
          [base, adapter_src])
    P.run("outputs", "merge --out PARENT-OF-MODEL --overwrite",
          ["merge", "--model", base, "--adapter", adapter_src, "--out", work, "--overwrite"], CONFIG,
          [base])
    P.run("outputs", "merge --out ADAPTER/sub --overwrite",
          ["merge", "--model", tied, "--adapter", adapter_src, "--out", adapter_src + "/x",
           "--overwrite"], CONFIG, [adapter_src])
    P.run("outputs", "logits --out MODEL/model.safetensors",
          ["logits", "--model", base] + ids + ["--out", os.path.join(base, "model.safetensors")],
          CONFIG, [base])
    os.symlink(base, P.path("model_link"))
    P.run("outputs", "merge --out a symlink to MODEL --overwrite",
          ["merge", "--model", base, "--adapter", adapter_src, "--out", P.path("model_link"),
           "--overwrite"], CONFIG, [base])

    # Outputs replace nothing unasked, and never what is not the kind of thing
    # the command writes (as root, `--out /dev/null` would replace /dev/null).
    kept = P.write("kept.safetensors", "precious")
    P.run("outputs", "logits --out an existing file (no --overwrite)",
          ["logits", "--model", base] + ids + ["--out", kept], CONFIG, [kept])
    os.mkfifo(P.path("fifo"))
    P.run("outputs", "logits --out a FIFO --overwrite",
          ["logits", "--model", base] + ids + ["--out", P.path("fifo"), "--overwrite"], IO)
    P.check("outputs", "the FIFO is still a FIFO", stat.S_ISFIFO(os.stat(P.path("fifo")).st_mode),
            "os.stat(fifo)")
    P.run("outputs", "merge --out an existing file --overwrite",
          ["merge", "--model", tied, "--adapter", adapter_src, "--out", kept, "--overwrite"], IO,
          [kept])

    # --- training configs ------------------------------------------------------
    def config(tag, extra="", lora="dropout: 0.0", steps=2, model=None, train=None):
        text = (f"model: {{path: {model or base}, dtype: float32}}\ndevice: cpu\nseed: 3\n"
                f"lora: {{r: 4, alpha: 8, target_modules: all-linear, {lora}}}\n"
                f"data: {{train: {train or data}, format: tokenized, max_seq_len: 64, val_fraction: 0.25}}\n"
                f"train:\n  max_steps: {steps}\n  micro_batch_size: 2\n  eval_every: 1\n"
                f"  save_every: 1\n  keep_checkpoints: 1\n  optimizer: {{lr: 5.0e-3}}\n{extra}"
                f"output: {{dir: {P.path('run_' + tag)}}}\n")
        return P.write(f"{tag}.yaml", text)

    def train(tag, cfg, args, want, inputs=()):
        return P.run("train", tag, ["train", "--plain", cfg] + args, want, [base] + list(inputs))

    train("lora.r=2147483648", config("r"), ["lora.r=2147483648"], CONFIG)
    train("lora.alpah=8 (typo)", config("typo"), ["lora.alpah=8"], CONFIG)
    train("gradient_accumulation_steps=100000000", config("ga"),
          ["train.gradient_accumulation_steps=100000000"], CONFIG)
    train("micro_batch_size=65536, max_seq_len=65536", config("mbs"),
          ["train.micro_batch_size=65536", "data.max_seq_len=65536"], CONFIG)
    train("lr=.nan", config("lrnan"), ["train.optimizer.lr=.nan"], CONFIG)
    train("YAML: tab-indented mapping", P.write("tab.yaml", "model:\n\tpath: x\n"), [], CONFIG)
    train("YAML: duplicate key", P.write("dup.yaml", "seed: 1\nseed: 2\n"), [], CONFIG)
    train("output.dir = model.path, overwrite", config("over"),
          [f"output.dir={base}", "output.overwrite=true"], CONFIG)
    train("output.dir read-only (/proc)", config("ro"), ["output.dir=/proc/loratune-probe"], IO)
    train("lr=1e308 (diverges)", config("diverge"), ["train.optimizer.lr=1e308"], DATA)
    c = config("resume", steps=4)
    P.run("train", "(setup) a run stopped at step 2", ["train", "--plain", c, "--stop-after-step", "2"],
          143, [base])
    train("--resume with lr changed", c, ["--resume", "train.optimizer.lr=1e-2"], CONFIG)
    train("--resume --allow-config-change lora.r=8", c,
          ["--resume", "--allow-config-change", "lora.r=8"], CONFIG)
    train("YAML: a NUL byte in model.path", P.write("nul.yaml", 'model: {path: "/tmp\\0x"}\n'),
          [], CONFIG)
    unclosed = P.write("unclosed.yaml", open(config("unclosed")).read().rstrip("\n")
                       .rsplit("output:", 1)[0] + 'output:\n  dir: "' + P.path("run_q") + "\n")
    train("YAML: a quote left open at the end", unclosed, [], CONFIG)
    bad = P.write("oov.jsonl", '{"input_ids": [1, 2, 5000, 3]}\n' * 8)
    train("token id 5000 >= vocab 1000", config("oov", train=bad), [], DATA, [bad])
    bad = P.write("broken.jsonl", '{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2\n')
    train("JSONL line 2 truncated", config("broken", train=bad), [], DATA, [bad])
    bad = P.write("empty.jsonl", "")
    train("empty data file", config("empty", train=bad), [], DATA, [bad])
    bad = P.write("bytes.yaml", b"seed: 1\nse\xffd: 2\n", "wb")
    train("non-UTF-8 bytes in a config key (shown as \\xFF)", bad, [], CONFIG, [bad])
    done = config("done", steps=1)
    P.run("train", "(setup) a finished run", ["train", "--plain", done], 0, [base])
    finished = P.path("run_done")
    train("output.overwrite=true with bad data keeps the finished run", done,
          ["output.overwrite=true", f"data.train={P.write('garbage.jsonl', 'garbage')}"], DATA,
          [finished])
    P.run("train", "data file missing", ["train", "--plain", config("missing", train=P.path("nope.jsonl"))],
          IO, [base])

    # A live run holds its directory.
    live_cfg = config("live", steps=100000)
    live = subprocess.Popen([binary, "train", "--plain", live_cfg], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lock = os.path.join(P.path("run_live"), ".loratune.lock")
    for _ in range(600):
        if os.path.exists(os.path.join(P.path("run_live"), "metrics.jsonl")):
            break
        time.sleep(0.1)
    train("second train on a live run, overwrite=true", live_cfg, ["output.overwrite=true"], IO)
    train("--resume while the run is alive", live_cfg, ["--resume"], IO)
    live.terminate()
    live.wait()

    # --- CLI options -------------------------------------------------------------
    for opt, val in [("--temperature", "nan"), ("--max-new-tokens", "-1"), ("--top-p", "5"),
                     ("--top-k", "-3"), ("--repetition-penalty", "0"), ("--seed", "-1")]:
        P.run("generate option", f"{opt} {val}", ["generate", "--model", base] + ids + [opt, val],
              CONFIG)
    P.run("generate option", '--ids ""', ["generate", "--model", base, "--ids", ""], CONFIG)
    P.run("generate option", "--ids with an id >= vocab", ["generate", "--model", base, "--ids", "1 5000"],
          CONFIG)
    P.run("eval option", "--batch-size 0", ["eval", "--model", base, "--data", data, "--batch-size", "0"],
          CONFIG)
    P.run("cli", "unknown subcommand 'trian'", ["trian"], CONFIG)

    # --- GGUF ---------------------------------------------------------------------
    P.run("gguf", "--model absent.gguf", ["generate", "--model", P.path("absent.gguf")] + ids, IO)
    g = P.write("bad.gguf", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, "wb")
    P.run("gguf", "tensor count 2^64-1", ["import", g, "--out", P.path("imp")], CORRUPT, [g])

    # --- JSON beyond the grammar: deep nesting, NUL bytes (round 2) ----------------
    deep = "[" * 100000 + "]" * 100000
    m = P.copy_model("cfg_deep")
    with open(os.path.join(m, "config.json")) as f:
        text = f.read().rstrip()
    P.write("cfg_deep/config.json", text[:-1] + ', "rope_scaling_extra": ' + deep + "}")
    P.run("json", "config.json nested 100000 deep", ["inspect", m], CORRUPT, [m])
    rec = P.write("deep.jsonl", '{"messages": [{"role": "user", "content": "hi", "x": ' + deep + "}]}\n")
    P.run("json", "chat record nested 100000 deep",
          ["eval", "--model", base, "--data", rec, "--chat-template", "chatml"], DATA, [rec])
    chat = P.write("deep_chat.json", '[{"role": "user", "content": "hi", "x": ' + deep + "}]")
    P.run("json", "--chat file nested 100000 deep",
          ["generate", "--model", base, "--chat", chat, "--chat-template", "chatml"], DATA, [chat])
    nul = P.write("nul.jsonl", '{"text": "w3 w4"}\0{"garbage\n')
    P.run("json", "JSONL record, NUL byte then garbage", ["eval", "--model", base, "--data", nul],
          DATA, [nul])
    ad = adapter_copy("ad_deep")
    with open(os.path.join(ad, "adapter_config.json")) as f:
        text = f.read().rstrip()
    P.write("ad_deep/adapter_config.json", text[:-1] + ', "x": ' + deep + "}")
    P.run("json", "adapter_config.json nested 100000 deep",
          ["generate", "--model", tied, "--adapter", ad] + ids, CORRUPT, [ad])
    P.run("cli", "logits --out ''", ["logits", "--model", base] + ids + ["--out", ""], CONFIG)
    P.run("cli", "tokenize --file DIR", ["tokenize", "--model", base, "--file", work], IO)
    P.run("dist", "train with RANK=1 but no WORLD_SIZE", ["train", "--plain", config("rank1")],
          CONFIG, env={"RANK": "1"})

    # --- dropout is off at inference ----------------------------------------------
    ad = adapter_copy("ad_dropout", lora_dropout=0.9)
    outs = []
    for _ in range(3):
        r = subprocess.run([binary, "generate", "--model", tied, "--adapter", ad, "--ids", "1 22",
                            "--max-new-tokens", "12", "--json", "--ignore-eos"], capture_output=True, text=True)
        outs.append(r.stdout)
    P.check("dropout", "generate x3 with lora_dropout 0.9: identical", len(set(outs)) == 1 and outs[0],
            outs[0].strip()[:60])
    evals = []
    for d in (0.0, 0.9):
        ad = adapter_copy(f"ad_eval_{d}", lora_dropout=d)
        r = subprocess.run([binary, "eval", "--model", tied, "--adapter", ad, "--data", data, "--json"],
                           capture_output=True, text=True)
        evals.append(r.stdout)
    P.check("dropout", "eval with lora_dropout 0 and 0.9: identical", evals[0] == evals[1] and evals[0],
            evals[0].strip()[:60])

    failed = [r for r in P.rows if r[6]]
    if a.markdown:
        print("| # | area | case | exit | first line of stderr |")
        print("| --- | --- | --- | --- | --- |")
    for n, area, case, code, first, secs, problems in P.rows:
        msg = first.replace("|", "\\|")
        if len(msg) > 160:
            msg = msg[:157] + "..."
        if a.markdown:
            flag = " **FAIL: " + "; ".join(problems) + "**" if problems else ""
            print(f"| {n} | {area} | {case} | {code} | `{msg}`{flag} |")
        else:
            print(f"{n:3d} {'FAIL' if problems else 'ok  '} {code:3d} {area:16s} {case}: {msg}"
                  + (f"  [{'; '.join(problems)}]" if problems else ""))
    print(f"{len(P.rows)} cases, {len(failed)} not as documented; work dir {work}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return min(len(failed), 100)


if __name__ == "__main__":
    sys.exit(main())
