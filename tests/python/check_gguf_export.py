#!/usr/bin/env python3
"""Checks the GGUF files `loratune export-gguf` writes against what gguf-py
(gguf==0.19) writes from the same model, for tests/gguf/test_gguf_export.cpp.

    check_gguf_export.py model --model DIR [--adapter DIR] --merged DIR --gguf FILE
                               --type f32|f16|bf16|q8_0 [--name NAME]
        Rebuilds the file with gguf-py's GGUFWriter, independently of loratune:
        hyperparameters from transformers' AutoConfig, tensor names from gguf-py's
        TensorNameMap, the weights of MERGED (the float32 model `loratune merge`
        wrote) permuted as convert_hf_to_gguf.py's LlamaModel.permute, encoded with
        gguf.quants.quantize in the types convert_hf_to_gguf.py's prepare_tensors
        picks, rope_freqs from its llama3 loop, the vocabulary as its
        get_vocab_base (gpt2) or gguf-py's LlamaHfVocab with the scores ordered by
        the merges (llama), special tokens and chat template from
        gguf.SpecialVocab. Then compares every metadata key and every tensor
        (type, shape, bytes) with GGUFReader and requires the two files to be
        byte-identical. With --adapter also requires MERGED to be within 1e-5 of
        PEFT's merge_and_unload().
    check_gguf_export.py adapter --model DIR --adapter DIR --gguf FILE --type T [--name NAME]
        The same for an --adapter-only file (llama.cpp's LoRA adapter layout as
        convert_lora_to_gguf.py writes it: lora_a = A, lora_b = B with llama's Q/K
        rows permuted, adapter.lora.alpha), with the per-module scales PEFT itself
        uses (module.scaling); and requires alpha / r * B_gguf @ A_gguf (rows
        un-permuted) to equal PEFT's scaling * B @ A within 1e-6 for every module.
    check_gguf_export.py tokens --model DIR --gguf FILE --corpus C.jsonl
        transformers' tokenizer read from the GGUF (AutoTokenizer gguf_file=...)
        against the same tokenizer class read from DIR on every corpus line,
        without and with special tokens (text NFC-normalized first when
        tokenizer.json's normalizer is NFC: GGUF tokenizers carry no normalizer),
        setting aside (and counting) lines that hit a known quirk of transformers'
        GGUF loader (see check_tokens).
--gguf/--type may repeat (one file per type). Prints one summary line per file;
exits 1 on any difference.
"""
import argparse
import functools
import json
import math
import os
import re
import sys
import tempfile
import unicodedata
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

FTYPE = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}
QTYPE = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA,
        "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
        "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
        "phi3": gguf.MODEL_ARCH.PHI3}
GEMMA = (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3)


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def data_qtype(name, n_dims, ne0, out_type):
    """convert_hf_to_gguf.py's prepare_tensors choice (and its F16 fallback)."""
    if n_dims <= 1 or name.endswith("_norm.weight") or name[-7:] not in (".weight", ".lora_a",
                                                                         ".lora_b"):
        return gguf.GGMLQuantizationType.F32
    q = QTYPE[out_type]
    if q == gguf.GGMLQuantizationType.Q8_0 and ne0 % 32 != 0:
        return gguf.GGMLQuantizationType.F16  # gguf.QuantError -> F16
    return q


def encode(a, q):
    a = np.ascontiguousarray(a, dtype=np.float32)
    return gguf.quants.quantize(a, q)


def rope_factors(cfg, dim):
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors (llama3)."""
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rp.get("rope_type") != "llama3":
        return None
    base = rp.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rp.get("factor", 8.0)
    low_freq_factor = rp.get("low_freq_factor", 1.0)
    high_freq_factor = rp.get("high_freq_factor", 4.0)
    old_context_len = rp.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope.append(1)
        elif wavelen > low_freq_wavelen:
            rope.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor -
                                                                      low_freq_factor)
            rope.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope, dtype=torch.float32).numpy()


def looks_special(t):
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<\uff5c") and t.endswith("\uff5c>"))
            or (t.startswith("<unused") and t.endswith(">")))


def gpt2_vocab(model_dir, n_vocab):
    """convert_hf_to_gguf.py's TextModel.get_vocab_base (tokens, token types)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    reverse = {i: t for t, i in tok.vocab.items()}
    added_vocab = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added_vocab:
            if decoder[i].special or looks_special(t):
                types.append(gguf.TokenType.CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    return tokens, types


# The pre-tokenizer names llama.cpp's converter gives these tokenizers (by its
# chkhsh table): Llama 3 -> llama-bpe, Qwen2/2.5/3 -> qwen2, SmolLM -> smollm.
SPLIT_NAMES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def pre_name(tok_json):
    pre = tok_json.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(items) == 2 and items[0].get("type") == "Split":
        return SPLIT_NAMES[items[0]["pattern"]["Regex"]]
    if len(items) == 2 and items[0].get("type") == "Digits":
        return "smollm"
    return "gpt-2"


def spm_vocab(model_dir, tok_json, n_vocab):
    """gguf-py's LlamaHfVocab (tokens, types) with the unknown token (the model's
    unk_token, else tokenizer_config.json's) typed UNKNOWN and
    scores ordered by the merges: -(rank of the first merge that makes the token),
    -(n_merges + id) for a normal token no merge makes, 0 for the rest; padded to
    n_vocab with "[PADn]" (score -1000, UNUSED)."""
    from pathlib import Path

    vocab = gguf.LlamaHfVocab(Path(model_dir))
    merges = [m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m)
              for m in tok_json["model"]["merges"]]
    rank = {}
    for k, m in enumerate(merges):
        rank.setdefault(m.replace(" ", "", 1) if " " in m else m, k)
    unk = tok_json["model"].get("unk_token")
    if not isinstance(unk, str):  # else tokenizer_config.json's
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        unk = json.load(open(cfg_path)).get("unk_token") if os.path.exists(cfg_path) else None
        unk = unk.get("content") if isinstance(unk, dict) else unk
    # Tokens tokenizer.json declares added are CONTROL (special) or USER_DEFINED
    # (not), as sentencepiece types them and as llama.cpp needs them to split them
    # before its merges. LlamaHfVocab only sees the ones in all_special_ids (a
    # Gemma <eos> that is not the configured eos stays NORMAL there).
    added = {t["id"]: t.get("special", False) for t in tok_json.get("added_tokens", [])}
    tokens, scores, types = [], [], []
    for i, (text, _score, ttype) in enumerate(vocab.all_tokens()):
        text = text.decode("utf-8")
        if text == unk:
            ttype = gguf.TokenType.UNKNOWN
        elif i in added and ttype != gguf.TokenType.BYTE:
            ttype = gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED
        score = 0.0
        if ttype == gguf.TokenType.NORMAL:
            score = -float(rank[text] if text in rank else len(merges) + i)
        tokens.append(text)
        scores.append(score)
        types.append(ttype)
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    norm = tok_json.get("normalizer") or {}
    norms = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    prefix = any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in norms)
    pre = tok_json.get("pre_tokenizer") or {}
    for p in (pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]):
        if not prefix and p.get("type") == "Metaspace":
            prefix = p.get("prepend_scheme", "always") != "never" if "prepend_scheme" in p \
                else p.get("add_prefix_space", True)
    return tokens, scores, types, prefix


@functools.lru_cache(maxsize=None)
def vocabulary(model_dir, n_vocab):
    """("llama" | "gpt2", the vocabulary keys' values, gguf.SpecialVocab)."""
    tok_json = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    if tok_json["model"].get("byte_fallback") and tok_json["decoder"]["type"] == "Sequence":
        parts = spm_vocab(model_dir, tok_json, n_vocab)
        return "llama", parts, gguf.SpecialVocab(model_dir, n_vocab=len(parts[0]))
    tokens, types = gpt2_vocab(model_dir, n_vocab)
    return "gpt2", (tokens, types, pre_name(tok_json)), \
        gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)


@functools.lru_cache(maxsize=None)
def merged_weights(merged_dir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(merged_dir, "model.safetensors"))


def size_keys(w, cfg):
    """TextModel.set_gguf_parameters' sizes (every writer here keeps its order)."""
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)


def norm_head_keys(w, cfg, out_type, head_dim):
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(FTYPE[out_type])


def gemma2_keys(w, cfg, out_type, rp):
    """convert_hf_to_gguf.py's Gemma2Model.set_gguf_parameters, plus rope_freq_base."""
    size_keys(w, cfg)
    w.add_rope_freq_base(rp.get("rope_theta", 10000.0))
    norm_head_keys(w, cfg, out_type, cfg.head_dim)
    w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    w.add_sliding_window(cfg.sliding_window)


def gemma3_keys(w, cfg, out_type, rp, head_dim):
    """convert_hf_to_gguf.py's Gemma3Model keys."""
    size_keys(w, cfg)
    if rp.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rp["factor"])
    w.add_rope_freq_base(rp.get("rope_theta", 1_000_000.0))
    norm_head_keys(w, cfg, out_type, head_dim)
    if getattr(cfg, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if cfg.sliding_window and "sliding_attention" in cfg.layer_types:
        w.add_sliding_window(cfg.sliding_window)


def phi3_keys(w, cfg, out_type, rp):
    """convert_hf_to_gguf.py's Phi3MiniModel keys, with transformers' longrope
    attention factor."""
    orig = getattr(cfg, "original_max_position_embeddings", None) or \
        rp.get("original_max_position_embeddings") or cfg.max_position_embeddings
    rot = int(rp.get("partial_rotary_factor", 1.0) * cfg.hidden_size) // cfg.num_attention_heads
    size_keys(w, cfg)
    w.add_rope_scaling_orig_ctx_len(orig)
    w.add_rope_dimension_count(rot)
    w.add_rope_freq_base(rp.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(FTYPE[out_type])
    w.add_sliding_window(cfg.sliding_window or 0)
    if rp.get("long_factor"):
        scale = cfg.max_position_embeddings / orig
        w.add_rope_scaling_attn_factors(
            rp.get("attention_factor") or
            (math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0))


def write_expected_model(a, path, gguf_order):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(a.model)
    arch = ARCH[cfg.model_type]
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(path, arch_name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(a.name or os.path.basename(os.path.normpath(a.model)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    rp = getattr(cfg, "rope_parameters", None) or {}
    if arch == gguf.MODEL_ARCH.GEMMA2:
        gemma2_keys(w, cfg, a.type, rp)
    elif arch == gguf.MODEL_ARCH.GEMMA3:
        gemma3_keys(w, cfg, a.type, rp.get("full_attention", rp), head_dim)
    elif arch == gguf.MODEL_ARCH.PHI3:
        phi3_keys(w, cfg, a.type, rp)
    else:
        size_keys(w, cfg)
        if rp.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_freq_base(rp.get("rope_theta", 10000.0))
        norm_head_keys(w, cfg, a.type, head_dim)
        if arch == gguf.MODEL_ARCH.LLAMA:
            w.add_vocab_size(cfg.vocab_size)
            w.add_rope_dimension_count(head_dim)

    kind, parts, special = vocabulary(a.model, cfg.vocab_size)
    if kind == "llama":
        tokens, scores, types, prefix = parts
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(prefix)
    else:
        tokens, types, pre = parts
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
    special.add_to_gguf(w, quiet=True)

    merged = merged_weights(a.merged)
    tmap = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tensors = {}
    rope = rope_factors(cfg, head_dim)
    if rope is not None:
        tensors["rope_freqs.weight"] = (rope, gguf.GGMLQuantizationType.F32)
    if arch == gguf.MODEL_ARCH.PHI3 and rp.get("long_factor"):
        for kind in ("long", "short"):
            tensors[f"rope_factors_{kind}.weight"] = (
                np.array(rp[f"{kind}_factor"], dtype=np.float32), gguf.GGMLQuantizationType.F32)
    for hf, value in merged.items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"gguf-py has no name for {hf}"
        value = value.astype(np.float32)
        if arch in GEMMA and hf.endswith("norm.weight"):
            value = value + np.float32(1)  # convert_hf_to_gguf's Gemma: stored as 1 + w
        if arch == gguf.MODEL_ARCH.LLAMA and hf.endswith(("q_proj.weight", "q_proj.bias")):
            value = permute(value, cfg.num_attention_heads)
        if arch == gguf.MODEL_ARCH.LLAMA and hf.endswith(("k_proj.weight", "k_proj.bias")):
            value = permute(value, cfg.num_key_value_heads)
        tensors[name] = (value, data_qtype(name, value.ndim, value.shape[-1], a.type))
    assert set(tensors) == set(gguf_order), \
        f"tensor names differ: gguf-py only {sorted(set(tensors) - set(gguf_order))}, " \
        f"loratune only {sorted(set(gguf_order) - set(tensors))}"
    for name in gguf_order:  # loratune's order (the order carries no meaning)
        value, q = tensors[name]
        w.add_tensor(name, encode(value, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@functools.lru_cache(maxsize=None)
def peft_modules(model_dir, adapter_dir):
    """(module path, A, B, scaling) of every LoRA layer, as PEFT loads them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    out = []
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            path = name.replace("base_model.model.", "", 1)
            out.append((path, module.lora_A["default"].weight.detach().float().numpy(),
                        module.lora_B["default"].weight.detach().float().numpy(),
                        float(module.scaling["default"])))
    return model, out


def write_expected_adapter(a, path, cfg, order):
    """`order`: the lora_a tensor names in loratune's file order (the modules' order
    carries no meaning, but alpha is the first module's s * r)."""
    arch = ARCH[cfg.model_type]
    _, modules = peft_modules(a.model, a.adapter)
    tmap = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    rank = {n: k for k, n in enumerate(order)}
    modules = sorted(modules, key=lambda m: rank.get(
        tmap.get_name(m[0] + ".weight", try_suffixes=(".weight",)) + ".lora_a", len(rank)))
    alpha = float(np.float32(modules[0][3] * modules[0][1].shape[0]))  # first module's s * r
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_name(a.name or os.path.basename(os.path.normpath(a.model)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for mpath, A, B, s in modules:
        name = tmap.get_name(mpath + ".weight", try_suffixes=(".weight",))
        fold = s * A.shape[0] / alpha
        if abs(fold - 1.0) > 1e-6:
            B = (torch.from_numpy(B) * fold).numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and mpath.endswith("q_proj"):
            B = permute(B, cfg.num_attention_heads)
        if arch == gguf.MODEL_ARCH.LLAMA and mpath.endswith("k_proj"):
            B = permute(B, cfg.num_key_value_heads)
        for suffix, value in ((".lora_a", A), (".lora_b", B)):
            q = data_qtype(name + suffix, 2, value.shape[-1], a.type)
            w.add_tensor(name + suffix, encode(value, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return modules, alpha


def field_value(f):
    v = f.contents()
    return v.tolist() if hasattr(v, "tolist") else v


def compare_files(ours_path, theirs_path, ours=None):
    """Metadata and tensors of two GGUF files as GGUFReader reads them; returns the
    differences (none to look for when the files are byte-identical) and the reader
    of ours (`ours` when given)."""
    if open(ours_path, "rb").read() == open(theirs_path, "rb").read():
        return [], ours
    ours = ours or gguf.GGUFReader(ours_path)
    theirs = gguf.GGUFReader(theirs_path)
    problems = []
    ok, tk = set(ours.fields), set(theirs.fields)
    if ok != tk:
        problems.append(f"metadata keys: loratune only {sorted(ok - tk)}, gguf-py only {sorted(tk - ok)}")
    for key in sorted(ok & tk):
        fo, ft = ours.fields[key], theirs.fields[key]
        if fo.types != ft.types:
            problems.append(f"{key}: type {fo.types} vs gguf-py {ft.types}")
        elif field_value(fo) != field_value(ft):
            vo, vt = field_value(fo), field_value(ft)
            if isinstance(vo, list) and isinstance(vt, list) and len(vo) == len(vt):
                i = next(i for i in range(len(vo)) if vo[i] != vt[i])
                problems.append(f"{key}[{i}]: {vo[i]!r} vs gguf-py {vt[i]!r}")
            else:
                problems.append(f"{key}: {str(vo)[:80]!r} vs gguf-py {str(vt)[:80]!r}")
    to = {t.name: t for t in ours.tensors}
    tt = {t.name: t for t in theirs.tensors}
    if set(to) != set(tt):
        problems.append(f"tensors: loratune only {sorted(set(to) - set(tt))}, "
                        f"gguf-py only {sorted(set(tt) - set(to))}")
    for name in sorted(set(to) & set(tt)):
        a, b = to[name], tt[name]
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape):
            problems.append(f"{name}: {a.tensor_type.name} {list(a.shape)} vs gguf-py "
                            f"{b.tensor_type.name} {list(b.shape)}")
        elif a.data.tobytes() != b.data.tobytes():
            problems.append(f"{name}: {a.tensor_type.name} bytes differ")
    return problems, ours


def check_model(a):
    # GGUFReader parses every metadata element (~30 s for a 150k-token vocabulary
    # here), so it reads the first file; the others (the same model in other types)
    # are compared byte for byte and read only when they differ.
    first = getattr(a, "reader", None) is None
    ours = gguf.GGUFReader(a.gguf) if first else None
    if first:
        a.reader = ours
    order = [t.name for t in a.reader.tensors]
    problems = []
    if a.adapter and not getattr(a, "peft_checked", False):  # the merged model against PEFT's
        from safetensors.numpy import load_file

        model, _ = peft_modules(a.model, a.adapter)
        peft_sd = {k: v.detach().float().numpy() for k, v in model.merge_and_unload().state_dict().items()}
        merged = load_file(os.path.join(a.merged, "model.safetensors"))
        diff = max(float(np.abs(merged[k] - peft_sd[k]).max()) for k in merged)
        print(f"merged model vs PEFT merge_and_unload: max abs diff {diff:.2e}")
        a.peft_checked = True
        if diff > 1e-5:
            problems.append(f"the merged model differs from PEFT's merge_and_unload by {diff:.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = os.path.join(tmp, "gguf-py.gguf")
        write_expected_model(a, theirs, order)
        p, reader = compare_files(a.gguf, theirs, ours)
        problems += p
        identical = open(a.gguf, "rb").read() == open(theirs, "rb").read()
    detail = "read by GGUFReader only where it differs"
    if reader is not None:
        types = {}
        for t in reader.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        detail = f"read by GGUFReader: {len(reader.fields)} keys, {len(reader.tensors)} tensors {types}"
    return report(a, problems, identical, detail)


def check_adapter(a):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(a.model)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        theirs = os.path.join(tmp, "gguf-py.gguf")
        reader = gguf.GGUFReader(a.gguf)
        order = [t.name for t in reader.tensors if t.name.endswith(".lora_a")]
        modules, alpha = write_expected_adapter(a, theirs, cfg, order)
        p, reader = compare_files(a.gguf, theirs, reader)
        problems += p
        identical = open(a.gguf, "rb").read() == open(theirs, "rb").read()
    # What llama.cpp computes from the file: alpha / r * B @ A, with B's rows in HF order.
    arch = ARCH[cfg.model_type]
    tmap = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    file_alpha = float(reader.fields["adapter.lora.alpha"].contents())
    worst = 0.0
    for mpath, A, B, s in modules:
        name = tmap.get_name(mpath + ".weight", try_suffixes=(".weight",))
        ta, tb = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
        ga = gguf.quants.dequantize(ta.data, ta.tensor_type).reshape(A.shape)
        gb = gguf.quants.dequantize(tb.data, tb.tensor_type).reshape(B.shape)
        if arch == gguf.MODEL_ARCH.LLAMA and mpath.endswith("q_proj"):
            gb = unpermute(gb, cfg.num_attention_heads)
        if arch == gguf.MODEL_ARCH.LLAMA and mpath.endswith("k_proj"):
            gb = unpermute(gb, cfg.num_key_value_heads)
        ours = (file_alpha / gb.shape[1]) * (gb.astype(np.float64) @ ga.astype(np.float64))
        ref = s * (B.astype(np.float64) @ A.astype(np.float64))
        worst = max(worst, float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)))
    tol = 1e-6 if a.type == "f32" else 1e-2
    if worst > tol:
        problems.append(f"llama.cpp's delta alpha/r*B@A differs from PEFT's by {worst:.2e} "
                        f"(relative, > {tol:.0e})")
    return report(a, problems, identical, f"alpha {file_alpha}, {len(modules)} modules, delta vs "
                  f"PEFT relative {worst:.2e}")


def report(a, problems, identical, detail):
    for p in problems[:20]:
        print("DIFF", p)
    print(f"{a.mode} {os.path.basename(a.gguf)} ({a.type}): {detail}; "
          f"{len(problems)} differences from gguf-py, byte-identical file: {identical}")
    return not problems and identical


def check_tokens(a):
    from transformers import AutoTokenizer, LlamaTokenizer

    tok_json = json.load(open(os.path.join(a.model, "tokenizer.json"), encoding="utf-8"))
    nfc = (tok_json.get("normalizer") or {}).get("type") == "NFC"
    spm = bool(tok_json["model"].get("byte_fallback"))
    ours = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(a.gguf)),
                                         gguf_file=os.path.basename(a.gguf))
    # transformers builds a tokenizer class per architecture from a "llama"
    # (SentencePiece) GGUF: a LlamaTokenizer for llama, a GemmaTokenizer for Gemma,
    # its generic backend for phi3; the same class reads tokenizer.json
    # (AutoTokenizer would pick the class from config.json's model_type).
    model_type = json.load(open(os.path.join(a.model, "config.json")))["model_type"]
    if not spm:
        ref = AutoTokenizer.from_pretrained(a.model)
    elif model_type in ("llama", "mistral"):
        ref = LlamaTokenizer.from_pretrained(a.model)
    else:
        ref = type(ours).from_pretrained(a.model)
    # Known differences of transformers' GGUF loader, not of the file: a gpt2 GGUF
    # gets <|endoftext|> appended when its vocabulary lacks it; a llama GGUF carries
    # no `legacy` flag, so the space after special-token text is handled as
    # legacy=False.
    vocab = ref.get_vocab()
    extra = [t for t in ours.get_added_vocab() if t not in vocab]
    specials = [t["content"] for t in tok_json.get("added_tokens", []) if t.get("special")]
    lines = [json.loads(line) for line in open(a.corpus, encoding="utf-8")]
    lines = [t if isinstance(t, str) else t["text"] for t in lines]
    checked = equal = excluded = excluded_equal = 0
    first = None
    for text in lines:
        if nfc:
            text = unicodedata.normalize("NFC", text)
        same = (ours(text, add_special_tokens=False)["input_ids"] ==
                ref(text, add_special_tokens=False)["input_ids"] and
                ours(text)["input_ids"] == ref(text)["input_ids"])
        # transformers' GemmaTokenizer built from a GGUF splits a run of 32+ spaces
        # by its merges (16 + 16) where tokenizer.json matches its longest
        # whitespace token first (31 + 1); llama.cpp agrees with tokenizer.json.
        gemma_run = type(ours).__name__ == "GemmaTokenizer" and " " * 32 in text
        if any(t in text for t in extra) or (spm and any(t in text for t in specials)) or \
                gemma_run:
            excluded += 1
            excluded_equal += same
            continue
        checked += 1
        equal += same
        if not same and first is None:
            first = text
    print(f"tokens {os.path.basename(a.gguf)}: transformers' GGUF tokenizer equals tokenizer.json "
          f"on {equal}/{checked} corpus lines, without and with special tokens"
          f"{' (NFC-normalized)' if nfc else ''}; {excluded} lines with text of tokens "
          f"transformers' GGUF loader adds ({extra}), of special tokens (llama) or (Gemma) "
          f"with 32+ spaces in a row set aside, "
          f"{excluded_equal} of them equal" + (f"; first difference: {first!r}" if first else ""))
    return equal == checked


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["model", "adapter", "tokens"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--merged")
    ap.add_argument("--gguf", required=True, action="append",
                    help="a file to check; repeat with --type for several (model, adapter)")
    ap.add_argument("--type", action="append", choices=sorted(QTYPE),
                    help="the --type each --gguf was written with (default f32)")
    ap.add_argument("--name")
    ap.add_argument("--corpus")
    a = ap.parse_args()
    types = a.type or ["f32"] * len(a.gguf)
    if len(types) != len(a.gguf):
        ap.error("give one --type per --gguf")
    failed = False
    files = a.gguf
    for path, t in zip(files, types):
        a.gguf, a.type = path, t
        failed |= not {"model": check_model, "adapter": check_adapter,
                       "tokens": check_tokens}[a.mode](a)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
