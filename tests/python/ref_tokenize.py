#!/usr/bin/env python3
"""Reference token ids and decodes for the tokenizer parity tests.

HF mode:  ref_tokenize.py --model DIR --corpus C.jsonl --out REF.json
  transformers AutoTokenizer.from_pretrained(DIR) (offline), per line:
  ids for add_special_tokens in {True, False} x split_special_tokens in
  {False, True}, and decode(ids with specials, skip_special_tokens False/True).
SP mode:  ref_tokenize.py --sp tokenizer.model --corpus C.jsonl --out REF.json
  the sentencepiece library directly; <s>, </s>, <unk> in the text are
  recognised unless split_special_tokens (as transformers' slow tokenizers do)
  and BOS is added for add_special_tokens (LlamaTokenizer's default).
"""
import argparse
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def read_corpus(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hf_reference(model_dir, lines):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    modes = {}
    for add in (True, False):
        for split in (False, True):
            enc = tok(lines, add_special_tokens=add, split_special_tokens=split)["input_ids"]
            modes[f"add{int(add)}_split{int(split)}"] = enc
    with_specials = modes["add1_split0"]
    decode = [tok.decode(ids, skip_special_tokens=False) for ids in with_specials]
    decode_skip = [tok.decode(ids, skip_special_tokens=True) for ids in with_specials]
    meta = {
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id if tok.bos_token_id is not None else -1,
        "eos_id": tok.eos_token_id if tok.eos_token_id is not None else -1,
        "pad_id": tok.pad_token_id if tok.pad_token_id is not None else -1,
        "unk_id": tok.unk_token_id if tok.unk_token_id is not None else -1,
    }
    return modes, decode, decode_skip, meta


def sp_reference(model_path, lines):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    specials = {sp.id_to_piece(i): i for i in (sp.bos_id(), sp.eos_id(), sp.unk_id()) if i >= 0}
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))

    def encode(text, add, split):
        ids = [sp.bos_id()] if add else []
        if split:
            return ids + sp.encode(text)
        pos = 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                ids += sp.encode(text[pos:m.start()])
            ids.append(specials[m.group(0)])
            pos = m.end()
        if pos < len(text):
            ids += sp.encode(text[pos:])
        return ids

    def decode(ids, skip):
        out, run = "", []
        for i in ids:
            if i in specials.values():
                out += sp.decode(run)
                run = []
                if not skip:
                    out += sp.id_to_piece(i)
            else:
                run.append(i)
        return out + sp.decode(run)

    modes = {f"add{int(a)}_split{int(s)}": [encode(t, a, s) for t in lines] for a in (True, False) for s in (False, True)}
    ids = modes["add1_split0"]
    meta = {"vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "pad_id": sp.pad_id(),
            "unk_id": sp.unk_id()}
    return modes, [decode(x, False) for x in ids], [decode(x, True) for x in ids], meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--sp")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    lines = read_corpus(a.corpus)
    if a.model:
        modes, dec, dec_skip, meta = hf_reference(a.model, lines)
    else:
        modes, dec, dec_skip, meta = sp_reference(a.sp, lines)
    out = {"lines": lines, "modes": modes, "decode": dec, "decode_skip": dec_skip, "meta": meta}
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
