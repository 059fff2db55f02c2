#!/usr/bin/env python3
"""GGUF files loratune writes, run by a real llama.cpp (node-llama-cpp@3.21.1).

usage: check_llamacpp.py --bin LORATUNE --data DIR --lib LIB_DIR --work WORK
                         [--families llama3 mistral qwen2 qwen3 gemma2 gemma3 phi3 phi4mini]
                         [--report OUT.json]
                         [--smollm2 SMOLLM2.gguf --smollm2-config CONFIG.yaml]

DIR is the gguf_export fixture (tests/python/make_export_models.py): models/NAME
and adapters/NAME. LIB_DIR holds node_modules/node-llama-cpp (the fixture
tests/llamacpp/CMakeLists.txt installs it). Exits 77 (ctest's skip code) when
node or the library is absent, 1 when a check fails.

Per family, with loratune's own computation (`loratune logits` / `generate` /
`tokenize` on the Hugging Face model + the PEFT adapter, unmerged) as the
reference:
  merged f32    export-gguf --adapter --type f32: next-token probabilities after
                each of 3 prompts within 2e-4 (max |dp| over the vocabulary), and
                the same 20 greedy tokens
  f16/bf16/q8_0 the same file types: probabilities within TOLERANCE[type]
  base + LoRA   export-gguf of the base (f32) with the adapter GGUF
                (--adapter-only) applied by llama.cpp: within 2e-4 of the merged
                model, and the same 20 greedy tokens
  tokenizer     llama.cpp's model.tokenize(text, true) equals `loratune tokenize
                --no-special` on every corpus line except where llama.cpp's own
                tokenizer is known to differ from transformers' (counted and
                reported, never failed): lines with text of a token llama.cpp
                re-types as control on load ('</s>' in Qwen's vocabulary); for
                SentencePiece vocabularies, lines that start with whitespace or hold
                special-token text (llama.cpp adds its space prefix there, as
                sentencepiece does, transformers 5 does not). Text is NFC-normalized
                first for tokenizers whose normalizer is NFC (llama.cpp applies none).
                add_bos equals the tokenizer's.
Besides max |dp| (the distributions of these random tiny models are flat, top
probability ~1e-4), max |d log p| over the whole vocabulary is reported and held
to LOGP_TOLERANCE.

--smollm2 adds the real model (`--families` with no names: only it): it trains
a LoRA adapter for 4 steps (r 8, q_proj/v_proj, lr 5e-3) with CONFIG on its
data/homebattery, checks that it moves the next-token probabilities by > 100x
the f32 tolerance, and runs the checks above for merged f32 and q8_0 and base +
LoRA on the first SMOLLM2_PROMPTS held-out questions, chat-formatted (`loratune
tokenize --chat --add-generation-prompt`); the tokenizer on the rendered chats,
the questions and the answers. Its top-1 tokens must agree; q8_0 is held to
REAL_TOLERANCE.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import unicodedata

import numpy as np

SKIP = 77
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "Once upon a time, in a small village near the sea,",
]
N_GREEDY = 20
# SmolLM2: the first held-out questions, chat-formatted, as prompts.
SMOLLM2_PROMPTS = 3
# max |dp| over the vocabulary, per file type (llama.cpp's own probabilities sum to
# about 1 + 1e-4, so nothing tighter than ~1e-4 is meaningful).
TOLERANCE = {"f32": 2e-4, "f16": 5e-4, "bf16": 5e-3, "q8_0": 5e-3}
# max |d log p| over the vocabulary, per file type. With flash attention off
# (check.mjs; on the CPU it rounds Q to F16) an F32 file is within 2e-5 on the
# tiny models, 3e-4 on SmolLM2; a file without the Q/K permutation is off by far
# more than these.
LOGP_TOLERANCE = {"f32": 2e-3, "f16": 2e-2, "bf16": 1e-1, "q8_0": 3e-1}
# SmolLM2 (a real model, peaked distributions) as Q8_0: the quantization itself
# moves it by more than the tiny models' table allows. Measured: loratune on the
# dequantized Q8_0 weights vs float32, max |dp| 7.9e-3, |d log p| 0.30; llama.cpp,
# which also rounds the activations to Q8_0, vs float32: 2.6e-2, 0.68. A wrong
# scale or layout moves it by > 0.1; the top-1 token must stay the same too.
REAL_TOLERANCE = {"q8_0": (5e-2, 1.0)}


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return r.stdout


def softmax_last(path):
    from safetensors.numpy import load_file

    logits = load_file(path)["logits"][-1].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def tok_text(tok_json, token_id):
    for text, i in tok_json["model"]["vocab"].items():
        if i == token_id:
            return text
    for t in tok_json.get("added_tokens", []):
        if t["id"] == token_id:
            return t["content"]
    return str(token_id)


def known_differences(tok_json, texts, retyped):
    """Per line, why llama.cpp's tokenizer may differ from transformers' (or None)."""
    retyped_text = [tok_text(tok_json, i) for i in retyped]
    spm = tok_json["model"].get("byte_fallback", False)
    specials = [t["content"] for t in tok_json.get("added_tokens", []) if t.get("special")]
    out = []
    for t in texts:
        if any(r in t for r in retyped_text):
            out.append("text of a token llama.cpp re-types as control")
        elif spm and t[:1].isspace():
            out.append("SentencePiece: leading whitespace (llama.cpp adds its space prefix)")
        elif spm and any(s in t for s in specials):
            out.append("SentencePiece: special-token text (llama.cpp adds a space prefix after it)")
        else:
            out.append(None)
    return out


def family(a, name, work):
    lt = a.bin
    model = os.path.join(a.data, "models", name)
    adapter = os.path.join(a.data, "adapters", name)
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    prompts = [json.loads(run([lt, "tokenize", "--model", model, "--text", text, "--json"]))["ids"]
               for text in PROMPTS]
    texts = [json.loads(line) for line in open(a.corpus, encoding="utf-8")]
    texts = [t if isinstance(t, str) else t["text"] for t in texts]
    tok_json = json.load(open(os.path.join(model, "tokenizer.json"), encoding="utf-8"))
    norm = tok_json.get("normalizer") or {}
    if norm.get("type") == "NFC":
        texts = [unicodedata.normalize("NFC", t) for t in texts]
    return compare(a, name, model, adapter, d, prompts, texts,
                   lambda retyped: known_differences(tok_json, texts, retyped),
                   lambda i: tok_text(tok_json, i), ("f32", "f16", "bf16", "q8_0"))


def compare(a, name, model, adapter, d, prompts, texts, known_fn, text_of, types, real=False):
    """Exports MODEL (+ ADAPTER) as GGUF files of TYPES, base f32 and the adapter
    GGUF, runs them in llama.cpp and compares with loratune on PROMPTS (token ids;
    greedy from the first), tokenization of TEXTS. known_fn(retyped ids) gives,
    per text, why llama.cpp may differ (or None); text_of(id) a token's text.
    real: a trained model, whose top-1 tokens must agree; REAL_TOLERANCE applies,
    and the greedy tokens of every type are reported (those of f32 and base +
    LoRA must agree). Returns (report, failures)."""
    lt = a.bin
    files = {}
    for t in types:
        files[t] = os.path.join(d, f"merged.{t}.gguf")
        run([lt, "export-gguf", "--model", model, "--adapter", adapter, "--out", files[t],
             "--type", t, "--overwrite"])
    files["base"] = os.path.join(d, "base.f32.gguf")
    run([lt, "export-gguf", "--model", model, "--out", files["base"], "--type", "f32",
         "--overwrite"])
    files["lora"] = os.path.join(d, "lora.gguf")
    run([lt, "export-gguf", "--model", model, "--adapter", adapter, "--adapter-only", "--out",
         files["lora"], "--overwrite"])

    # loratune's reference: probabilities, greedy tokens (base + adapter, unmerged)
    ref = []
    for k, ids in enumerate(prompts):
        out = os.path.join(d, f"logits{k}.safetensors")
        run([lt, "logits", "--model", model, "--adapter", adapter, "--ids",
             " ".join(map(str, ids)), "--out", out, "--overwrite"])
        ref.append(softmax_last(out))
    vocab = len(ref[0])  # the embedding rows
    greedy_ref = json.loads(run([lt, "generate", "--model", model, "--adapter", adapter, "--ids",
                                 " ".join(map(str, prompts[0])), "--max-new-tokens",
                                 str(N_GREEDY), "--ignore-eos", "--json"]))["ids"]
    corpus_file = os.path.join(d, "corpus.jsonl")
    with open(corpus_file, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
    ours_tokens = [json.loads(line)["ids"] for line in
                   run([lt, "tokenize", "--model", model, "--file", corpus_file, "--json",
                        "--no-special"]).splitlines()]
    first = texts[0]
    with_special = json.loads(run([lt, "tokenize", "--model", model, "--text", first,
                                   "--json"]))["ids"]
    add_bos = bool(with_special) and (not ours_tokens[0] or with_special[0] != ours_tokens[0][0])

    runs = []
    for t in types:
        r = {"name": f"{name}.{t}", "model": files[t], "vocab": vocab, "prompts": prompts}
        if t == "f32" or real:
            r.update(greedy=prompts[0], n_greedy=N_GREEDY)
        if t == "f32":
            r.update(texts=texts)
        runs.append(r)
    runs.append({"name": f"{name}.base+lora", "model": files["base"], "lora": files["lora"],
                 "vocab": vocab, "prompts": prompts, "greedy": prompts[0], "n_greedy": N_GREEDY})
    job = os.path.join(d, "job.json")
    json.dump({"runs": runs}, open(job, "w"))
    node_out = os.path.join(d, "llamacpp")
    os.makedirs(node_out, exist_ok=True)
    r = subprocess.run(["node", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "check.mjs"), a.lib, job, node_out],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"node check.mjs failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    report, failures = {}, []
    for run_ in runs:
        res = json.load(open(os.path.join(node_out, run_["name"] + ".json")))
        probs = np.fromfile(os.path.join(node_out, run_["name"] + ".probs.f32"),
                            dtype=np.float32).reshape(len(prompts), vocab).astype(np.float64)
        t = run_["name"].split(".", 1)[1]
        dp = max(float(np.abs(probs[k] - ref[k]).max()) for k in range(len(prompts)))
        dlogp = max(float(np.abs(np.log(np.maximum(probs[k], 1e-30)) - np.log(ref[k])).max())
                    for k in range(len(prompts)))
        top1 = all(int(probs[k].argmax()) == int(ref[k].argmax()) for k in range(len(prompts)))
        tol = TOLERANCE.get(t, TOLERANCE["f32"])
        ltol = LOGP_TOLERANCE.get(t, LOGP_TOLERANCE["f32"])
        if real and t in REAL_TOLERANCE:
            tol, ltol = REAL_TOLERANCE[t]
        entry = {"max_abs_dp": dp, "tolerance": tol, "max_abs_dlogp": dlogp,
                 "logp_tolerance": ltol, "top1_equal": top1,
                 "top_p_ref": [float(ref[k].max()) for k in range(len(prompts))],
                 "prob_sum": res["prob_sum"]}
        if dp > tol:
            failures.append(f"{run_['name']}: max |dp| {dp:.3e} > {tol:.0e}")
        if dlogp > ltol:
            failures.append(f"{run_['name']}: max |d log p| {dlogp:.3e} > {ltol:.0e}")
        if real and not top1:
            failures.append(f"{run_['name']}: the most likely next token differs from loratune's")
        if "greedy" in run_:
            same = res["greedy"] == greedy_ref
            entry["greedy_equal"] = same
            entry["greedy_tokens"] = len(res["greedy"])
            if not same and t in ("f32", "base+lora"):
                failures.append(f"{run_['name']}: greedy {res['greedy']} != loratune {greedy_ref}")
        if "texts" in run_:
            known = known_fn(res["retyped"])
            equal = [x == y for x, y in zip(res["tokens"], ours_tokens)]
            checked = [i for i in range(len(texts)) if known[i] is None]
            bad = [i for i in checked if not equal[i]]
            excluded = {}
            for i, why in enumerate(known):
                if why is not None:
                    excluded.setdefault(why, [0, 0])
                    excluded[why][0] += 1
                    excluded[why][1] += equal[i]
            entry["tokenizer"] = {
                "lines": len(texts), "all_equal": sum(equal),
                "checked": len(checked), "checked_equal": len(checked) - len(bad),
                "excluded [lines, of them equal]": excluded,
                "retyped_by_llama.cpp": [text_of(i) for i in res["retyped"]]}
            entry["tokenizer_equal_lines"] = f"{len(checked) - len(bad)}/{len(checked)} checked, " \
                                             f"{sum(equal)}/{len(texts)} in all"
            if bad:
                entry["tokenizer_first_diffs"] = [
                    {"text": texts[i], "llama.cpp": res["tokens"][i], "loratune": ours_tokens[i]}
                    for i in bad[:3]]
                failures.append(f"{run_['name']}: llama.cpp tokenizes {len(bad)} corpus "
                                f"lines differently (first: {texts[bad[0]]!r})")
            entry["add_bos"] = {"llama.cpp": res["add_bos"], "loratune": add_bos}
            if res["add_bos"] != add_bos:
                failures.append(f"{run_['name']}: llama.cpp add_bos {res['add_bos']} != {add_bos}")
        report[run_["name"]] = entry
        print(f"{run_['name']}: max|dp| {dp:.2e} (tol {tol:.0e}), max|dlogp| {dlogp:.2e} "
              f"(tol {ltol:.0e}), top-1 equal {top1}" +
              (f", greedy {N_GREEDY} equal {entry['greedy_equal']}" if "greedy_equal" in entry
               else "") +
              (f", tokenizer lines equal {entry['tokenizer_equal_lines']}"
               if "tokenizer_equal_lines" in entry else ""), flush=True)
    return report, failures


def smollm2(a, work):
    """SmolLM2-135M-Instruct (the .gguf as loratune's --model) with a LoRA adapter
    trained here for a few steps on the home-battery data, checked as a family:
    prompts are chat-formatted held-out questions (loratune tokenize --chat)."""
    lt = a.bin
    d = os.path.join(work, "smollm2")
    os.makedirs(d, exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(a.smollm2_config)))
    data = os.path.join(root, "data", "homebattery")
    # A real adapter, cheaply: 4 steps of r 8 on q_proj/v_proj at a high lr.
    run([lt, "train", a.smollm2_config, f"model.path={a.smollm2}",
         f"data.train={os.path.join(data, 'qa_chat.jsonl')}", "data.validation=null",
         "train.epochs=0", "train.max_steps=4", "train.scheduler.warmup_steps=0",
         "train.optimizer.lr=5e-3", "lora.r=8", "lora.target_modules=[q_proj,v_proj]",
         f"output.dir={os.path.join(d, 'run')}", "output.merge=false", "output.overwrite=true",
         "--plain"])
    adapter = os.path.join(d, "run", "adapter")
    records = [json.loads(line)["messages"] for line in
               open(os.path.join(data, "heldout_chat.jsonl"), encoding="utf-8") if line.strip()]
    chats = os.path.join(d, "chats.jsonl")
    with open(chats, "w", encoding="utf-8") as f:
        for m in records:
            f.write(json.dumps({"messages": m[:1]}) + "\n")
    rendered = [json.loads(line) for line in
                run([lt, "tokenize", "--model", a.smollm2, "--chat", chats,
                     "--add-generation-prompt", "--json"]).splitlines()]
    prompts = [r["ids"] for r in rendered[:SMOLLM2_PROMPTS]]
    # Tokenizer: the rendered prompts (special-token text becomes the token), the
    # questions and the answers as plain text.
    texts = [r["text"] for r in rendered] + [m[k]["content"] for m in records for k in (0, 1)]
    imported = re.search(r"^model:\s+(.+)$", run([lt, "inspect", a.smollm2]), re.M).group(1)
    tok_json = json.load(open(os.path.join(imported, "tokenizer.json"), encoding="utf-8"))

    # The adapter must move the model by far more than the tolerance, else the
    # merged and base + LoRA checks below would not see a mistake in it.
    base_out, tuned_out = os.path.join(d, "base0.safetensors"), os.path.join(d, "tuned0.safetensors")
    ids0 = " ".join(map(str, prompts[0]))
    run([lt, "logits", "--model", a.smollm2, "--ids", ids0, "--out", base_out, "--overwrite"])
    run([lt, "logits", "--model", a.smollm2, "--adapter", adapter, "--ids", ids0, "--out",
         tuned_out, "--overwrite"])
    moved = float(np.abs(softmax_last(base_out) - softmax_last(tuned_out)).max())
    print(f"smollm2: the adapter moves next-token probabilities by max |dp| {moved:.3e}",
          flush=True)
    report, failures = compare(a, "smollm2", a.smollm2, adapter, d, prompts, texts,
                               lambda retyped: known_differences(tok_json, texts, retyped),
                               lambda i: tok_text(tok_json, i), ("f32", "q8_0"), real=True)
    report["smollm2.adapter_effect"] = {"max_abs_dp_base_vs_adapter": moved}
    if moved < 100 * TOLERANCE["f32"]:
        failures.append(f"smollm2: the trained adapter moves probabilities by only {moved:.3e}")
    return report, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data")
    ap.add_argument("--lib", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--corpus")
    ap.add_argument("--families", nargs="*", default=["llama3", "mistral", "qwen2", "qwen3",
                                                      "gemma2", "gemma3", "phi3", "phi4mini"])
    ap.add_argument("--smollm2", metavar="GGUF",
                    help="also check SmolLM2-135M-Instruct (this .gguf) with an adapter trained here")
    ap.add_argument("--smollm2-config", help="the training config for it "
                    "(configs/smollm2-homebattery.yaml; its data/homebattery is used)")
    ap.add_argument("--report")
    a = ap.parse_args()
    if a.families and not a.data:
        ap.error("--data is needed for --families (pass --families with no names to skip them)")
    if a.smollm2 and not a.smollm2_config:
        ap.error("--smollm2 needs --smollm2-config")
    a.corpus = a.corpus or (a.data and os.path.join(a.data, "corpus.jsonl"))
    if shutil.which("node") is None:
        print("node is not installed: skipping the llama.cpp check")
        return SKIP
    if not os.path.isfile(os.path.join(a.lib, "node_modules", "node-llama-cpp", "package.json")):
        print(f"node-llama-cpp is not installed in {a.lib}: skipping the llama.cpp check")
        return SKIP
    os.makedirs(a.work, exist_ok=True)
    report, failures = {}, []
    for name in a.families:
        r, f = family(a, name, a.work)
        report.update(r)
        failures += f
    if a.smollm2:
        r, f = smollm2(a, a.work)
        report.update(r)
        failures += f
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
