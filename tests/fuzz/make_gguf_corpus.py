#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_gguf, tests/fuzz/corpus/fuzz_gguf/ (committed;
re-run to regenerate), with gguf-py's GGUFWriter: small models of every
architecture import reads (llama with a SentencePiece vocabulary, qwen2 with a
byte-level BPE one, qwen3 without a tokenizer, gemma2 and gemma3 with Gemma's
SentencePiece form (no space prefix), its four norms, soft-caps and sliding
window, phi3 with fused attn_qkv / ffn_up, partial rotary and longrope
factor tensors), one tensor of every ggml type
loratune knows (dequantizable or refused by name), every metadata value type
with nested arrays, a GGUF v2 header, a non-default general.alignment and a
truncated file. Every seed stays under 32 KB (the -max_len scripts/fuzz.sh
should give this target).

    .venv/bin/python tests/fuzz/make_gguf_corpus.py
"""
import os
import shutil
import struct
import tempfile

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "fuzz_gguf")
Q = gguf.GGMLQuantizationType
rng = np.random.default_rng(1234)


def rand(*shape, scale=0.1):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def finish(w, path):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        return f.read()


def put(w, name, a, q):
    if a.ndim == 1 or q == Q.F32:
        w.add_tensor(name, a)
    elif q == Q.F16:
        w.add_tensor(name, a.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(a, q), raw_dtype=q)


def spm_tokenizer(w):
    """A SentencePiece vocabulary: <unk> <s> </s>, 4 byte pieces, pieces, no merges."""
    pieces = ["\u2581", "a", "b", "c", "ab", "\u2581a", "\u2581ab", "bc", "\u2581abc", "<|x|>"]
    tokens = ["<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0x20>", "<0xFF>"] + pieces
    types = [2, 3, 3, 6, 6, 6, 6] + [1] * (len(pieces) - 1) + [4]
    scores = [0.0] * 7 + [float(-i) for i in range(len(pieces))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return len(tokens)


def gemma_tokenizer(w):
    """Gemma's SentencePiece form: no space prefix, <pad> <eos> <bos> <unk>, turn markers."""
    pieces = ["\u2581", "a", "b", "ab", "\u2581a", "bc", "\n"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<0x00>", "<0x0A>", "<0xFF>",
              "<start_of_turn>", "<end_of_turn>"] + pieces
    types = [3, 3, 3, 2, 6, 6, 6, 4, 4] + [1] * len(pieces)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 9 + [float(-i) for i in range(len(pieces))])
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                        "{{ m['content'] }}<end_of_turn>\n{% endfor %}")
    return len(tokens)


def bpe_tokenizer(w):
    """A byte-level vocabulary: the 256 byte symbols, three merges, one control token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    tokens = alphabet + ["\u0120t", "he", "\u0120the", "<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(["\u0120 t", "h e", "\u0120t he"])
    w.add_eos_token_id(len(tokens) - 1)
    return len(tokens)


def model(path, arch, qtypes, tokenizer):
    hidden, heads, kv, inter = 32, 2, 1, 32
    gemma = arch in ("gemma2", "gemma3")
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if gemma:
        w.add_sliding_window(8)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    if arch == "phi3":
        w.add_rope_dimension_count(8)  # partial rotary: 8 of 16
        w.add_rope_scaling_orig_ctx_len(32)
        w.add_rope_scaling_attn_factors(1.19)
    vocab = tokenizer(w) if tokenizer else 40
    hd = 16 if arch != "qwen3" else 32
    q = iter(qtypes * 8)
    put(w, "token_embd.weight", rand(vocab, hidden), next(q))
    p = "blk.0."
    if arch == "phi3":  # [q | k | v] and [gate | up]
        put(w, p + "attn_qkv.weight", rand((heads + 2 * kv) * hd, hidden), next(q))
        put(w, p + "attn_output.weight", rand(hidden, heads * hd), next(q))
        put(w, p + "ffn_up.weight", rand(2 * inter, hidden), next(q))
        put(w, "rope_factors_long.weight", 1 + rand(4), Q.F32)
        put(w, "rope_factors_short.weight", 1 + rand(4), Q.F32)
    else:
        put(w, p + "attn_q.weight", rand(heads * hd, hidden), next(q))
        put(w, p + "attn_k.weight", rand(kv * hd, hidden), next(q))
        put(w, p + "attn_v.weight", rand(kv * hd, hidden), next(q))
        put(w, p + "attn_output.weight", rand(hidden, heads * hd), next(q))
        put(w, p + "ffn_gate.weight", rand(inter, hidden), next(q))
        put(w, p + "ffn_up.weight", rand(inter, hidden), next(q))
    put(w, p + "ffn_down.weight", rand(hidden, inter), next(q))
    put(w, p + "attn_norm.weight", 1 + rand(hidden), Q.F32)
    put(w, p + "ffn_norm.weight", 1 + rand(hidden), Q.F32)
    if gemma:
        put(w, p + "post_attention_norm.weight", 1 + rand(hidden), Q.F32)
        put(w, p + "post_ffw_norm.weight", 1 + rand(hidden), Q.F32)
    if arch == "qwen2":
        for n, rows in (("attn_q", heads * hd), ("attn_k", kv * hd), ("attn_v", kv * hd)):
            put(w, p + n + ".bias", rand(rows), Q.F32)
    if arch in ("qwen3", "gemma3"):
        put(w, p + "attn_q_norm.weight", 1 + rand(hd), Q.F32)
        put(w, p + "attn_k_norm.weight", 1 + rand(hd), Q.F32)
    put(w, "output_norm.weight", 1 + rand(hidden), Q.F32)
    if arch in ("llama", "phi3"):
        put(w, "output.weight", rand(vocab, hidden), next(q))
    return finish(w, path)


def all_types(path):
    """One small tensor of every ggml type in loratune's table, from random blocks."""
    sizes = {Q.F32: (1, 4), Q.F16: (1, 2), Q.Q4_0: (32, 18), Q.Q4_1: (32, 20), Q.Q5_0: (32, 22),
             Q.Q5_1: (32, 24), Q.Q8_0: (32, 34), Q.Q8_1: (32, 40), Q.Q2_K: (256, 84),
             Q.Q4_K: (256, 144), Q.Q6_K: (256, 210), Q.Q8_K: (256, 292), Q.BF16: (1, 2),
             Q.IQ4_NL: (32, 18), Q.I8: (1, 1)}
    w = gguf.GGUFWriter(path, "llama")
    for q, (block, nbytes) in sizes.items():
        blocks = 1 if block == 256 else 2
        raw = rng.integers(0, 256, (1, blocks * nbytes), dtype=np.uint8)
        if block > 1:  # fp16 scales of a sane size at the start of each block
            for b in range(blocks):
                raw[0, b * nbytes:b * nbytes + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        w.add_tensor(f"t.{q.name}", raw, raw_dtype=q)
    return finish(w, path)


def all_values(path):
    """Every metadata value type, arrays of each, nested arrays; no tensors."""
    w = gguf.GGUFWriter(path, "qwen2")
    V = gguf.GGUFValueType
    w.add_uint8("v.u8", 200)
    w.add_int8("v.i8", -3)
    w.add_uint16("v.u16", 60000)
    w.add_int16("v.i16", -30000)
    w.add_uint32("v.u32", 4000000000)
    w.add_int32("v.i32", -2000000000)
    w.add_float32("v.f32", 1.5)
    w.add_bool("v.bool", True)
    w.add_string("v.str", "caf\u00e9 \u4f60\u597d")
    w.add_uint64("v.u64", 2**63 + 5)
    w.add_int64("v.i64", -(2**62))
    w.add_float64("v.f64", -2.25)
    w.add_array("v.arr_i32", [1, -2, 3])
    w.add_array("v.arr_str", ["a", "", "\u2581b"])
    w.add_array("v.arr_nested", [[1, 2], [3]])
    w.add_key_value("v.arr_f32", [0.5, -1.0], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("v.arr_bool", [True, False], V.ARRAY, sub_type=V.BOOL)
    w.add_uint32("general.alignment", 64)
    return finish(w, path)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        def path(name):
            return os.path.join(tmp, name + ".gguf")

        seeds["llama_spm"] = model(path("llama_spm"), "llama", [Q.Q8_0, Q.F16, Q.Q4_1], spm_tokenizer)
        seeds["qwen2_bpe"] = model(path("qwen2_bpe"), "qwen2", [Q.Q4_0, Q.Q5_0, Q.BF16], bpe_tokenizer)
        seeds["qwen3_notok"] = model(path("qwen3_notok"), "qwen3", [Q.Q5_1, Q.Q4_0], None)
        seeds["all_types"] = all_types(path("all_types"))
        seeds["all_values"] = all_values(path("all_values"))
        seeds["gemma2_spm"] = model(path("gemma2_spm"), "gemma2", [Q.BF16, Q.Q8_0],
                                    gemma_tokenizer)
        seeds["gemma3_spm"] = model(path("gemma3_spm"), "gemma3", [Q.F16, Q.Q4_1],
                                    gemma_tokenizer)
        seeds["phi3_spm"] = model(path("phi3_spm"), "phi3", [Q.Q8_0, Q.F32], spm_tokenizer)
    v2 = bytearray(seeds["llama_spm"])
    v2[4:8] = struct.pack("<I", 2)
    seeds["llama_spm_v2"] = bytes(v2)
    seeds["truncated"] = seeds["qwen2_bpe"][: len(seeds["qwen2_bpe"]) // 2]
    for name, data in seeds.items():
        assert len(data) < 32768, (name, len(data))
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
