#!/usr/bin/env python3
"""bitsandbytes references for loratune's NF4 / QLoRA (tests/quant).

    ref_nf4.py --models MODELS --out OUT
Writes, with bitsandbytes (CPU) and transformers + PEFT:
  OUT/tensors.safetensors  per case C (CASES: real-shaped weights with odd
      sizes, counts not divisible by 64 or 256, a block of zeros, values on
      the NF4 decision bounds), both without (C.sq.*) and with double quant
      (C.dq.*): C.w (the input), packed (uint8 [ceil(n/2),1]), absmax,
      nested_absmax, offset, quant_map, nested_quant_map, deq_f32 and, for
      the double-quantized state, deq_bf16 (dequantize_4bit in float32 /
      bfloat16).
  OUT/tensors.json         the case names
  OUT/<variant>/logits.safetensors  ids [1,T] and logits [1,T,V] of
      transformers with BitsAndBytesConfig(load_in_4bit, nf4, double quant,
      float32 compute), for VARIANTS.
  OUT/<variant>/{init_adapter, train.jsonl, final_adapter, ref.json}: a QLoRA
      run (PEFT on the 4-bit model) set up exactly as tests/python/ref_train.py
      sets up its float32 runs.
  OUT/<variant>/bnb-dq, bnb-sq: pre-quantized checkpoints ("-bnb-4bit" dirs):
      model.save_pretrained() of the model loaded with BitsAndBytesConfig(nf4,
      double quant on / off, float32 compute), and OUT/<variant>/bnb-dq-logits,
      bnb-sq-logits.safetensors: ids [1,T] and logits [1,T,V] of transformers
      loading that dir again.
  OUT/llama-rope3-tied/bnb-fp4: the same with bnb_4bit_quant_type "fp4".

What such a dir holds (transformers 5.24, bitsandbytes 0.50.2, CPU), per
quantized Linear P (the 7 projections of every decoder layer; embeddings,
lm_head and norms stay float32 under their usual names):
  P.weight                      uint8 [ceil(out*in/2), 1]   packed NF4 indices
  P.weight.absmax               float32 [blocks]; uint8 [blocks] with double quant
  P.weight.quant_map            float32 [16]   get_4bit_type("nf4")
  P.weight.nested_absmax        float32 [ceil(blocks/256)]  (double quant only)
  P.weight.nested_quant_map     float32 [256]  create_dynamic_map()  (double quant only)
  P.weight.quant_state.bitsandbytes__nf4  uint8 [N], the UTF-8 JSON (no NUL):
      {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 64]}
      plus, with double quant, "nested_blocksize": 256, "nested_dtype":
      "float32", "nested_offset": 0.25847235321998596 (the float32 offset as
      a Python float: exact). 77 / 167 bytes for these models.
  (fp4: the same with "...quant_state.bitsandbytes__fp4" and quant_type "fp4".)
config.json gains "quantization_config": {"_load_in_4bit": true,
  "_load_in_8bit": false, "bnb_4bit_compute_dtype": "float32",
  "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4",
  "bnb_4bit_use_double_quant": true|false, "llm_int8_enable_fp32_cpu_offload":
  false, "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null,
  "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false,
  "quant_method": "bitsandbytes"}; "dtype" stays the load dtype (float32).
The safetensors metadata is {"format": "pt"}.
"""
import argparse
import json
import os
import warnings

import torch

warnings.filterwarnings("ignore")

VARIANTS = ["llama-rope3-tied", "qwen2"]


def cases():
    g = torch.Generator().manual_seed(11)
    out = {
        "q_proj_96x160": torch.randn(96, 160, generator=g) * 0.05,  # 15360 = 240 blocks
        "gate_1000x64": torch.randn(1000, 64, generator=g) * 0.02,  # 1000 blocks, 4 nested
        "odd_33x35": torch.randn(33, 35, generator=g),  # 1155: odd, short last block
        "short_7x100": torch.randn(7, 100, generator=g) * 3,  # 700: a 60-element last block
        "nested_257x65": torch.randn(257, 65, generator=g) * 0.1,  # 261 blocks + 1
        "bf16_64x96": (torch.randn(64, 96, generator=g) * 0.03).to(torch.bfloat16),
    }
    # A zero block, a zero short last block, and the decision bounds of
    # the NF4 code hit exactly (absmax 1: scaled = the value itself).
    z = torch.randn(3, 100, generator=g)
    z[0, :64] = 0
    z[2, 36:] = 0
    out["zeros_3x100"] = z
    import bitsandbytes.functional as F
    code = F.get_4bit_type("nf4", device="cpu")
    bounds = (code[:-1] + code[1:]) / 2
    t = torch.zeros(2, 64)
    t[0, 0] = 1.0
    t[0, 1:16] = bounds
    t[0, 16:31] = -bounds.flip(0)
    t[1, 0] = -1.0
    t[1, 1:16] = torch.nextafter(bounds, torch.full_like(bounds, 2.0))
    t[1, 16:31] = torch.nextafter(bounds, torch.full_like(bounds, -2.0))
    out["bounds_2x64"] = t
    return out


def write_tensors(out):
    import bitsandbytes.functional as F
    from safetensors.torch import save_file
    res = {}
    names = []
    for name, w in cases().items():
        names.append(name)
        res[f"{name}.w"] = w.contiguous()
        for tag, dq in (("sq", False), ("dq", True)):
            q, s = F.quantize_4bit(w, blocksize=64, compress_statistics=dq, quant_type="nf4")
            p = f"{name}.{tag}."
            res[p + "packed"] = q.contiguous()
            res[p + "absmax"] = s.absmax.contiguous()
            res[p + "quant_map"] = s.code.contiguous()
            if dq:
                res[p + "offset"] = s.offset.reshape(()).contiguous()
                res[p + "nested_absmax"] = s.state2.absmax.contiguous()
                res[p + "nested_quant_map"] = s.state2.code.contiguous()
            s.dtype = torch.float32
            res[p + "deq_f32"] = F.dequantize_4bit(q, s).contiguous()
            if dq:
                s.dtype = torch.bfloat16
                res[p + "deq_bf16"] = F.dequantize_4bit(q, s).contiguous()
    save_file(res, f"{out}/tensors.safetensors")
    with open(f"{out}/tensors.json", "w") as f:
        json.dump({"cases": names}, f)


def load_4bit(path, double_quant=True, quant_type="nf4"):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                           bnb_4bit_use_double_quant=double_quant,
                           bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.float32,
                                             device_map="cpu", attn_implementation="eager")
    # On CPUs with AVX512-BF16, bitsandbytes repacks the weights at the first
    # inference forward for its own CPU kernel (which fails on blocks that do
    # not divide a row). The reference is the portable path: dequantize, then
    # matmul, as in training.
    return portable_4bit(m)


def portable_4bit(m):
    for mod in m.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    return m


def write_logits(models, out, variant):
    from safetensors.torch import save_file
    m = load_4bit(f"{models}/{variant}").eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, m.config.vocab_size, (1, 37), generator=g)
    with torch.no_grad():
        logits = m(input_ids=ids).logits.float()
    os.makedirs(f"{out}/{variant}", exist_ok=True)
    save_file({"ids": ids.contiguous(), "logits": logits.contiguous()},
              f"{out}/{variant}/logits.safetensors")


def write_prequantized(models, out, variant):
    """Pre-quantized dirs and transformers' logits on them (loaded back)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    kinds = [("bnb-dq", True, "nf4"), ("bnb-sq", False, "nf4")]
    if variant == "llama-rope3-tied":
        kinds.append(("bnb-fp4", True, "fp4"))
    for name, dq, qt in kinds:
        d = f"{out}/{variant}/{name}"
        load_4bit(f"{models}/{variant}", dq, qt).save_pretrained(d)
        if qt != "nf4":
            continue
        m = portable_4bit(AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, device_map="cpu", attn_implementation="eager")).eval()
        g = torch.Generator().manual_seed(5)
        ids = torch.randint(3, m.config.vocab_size, (1, 37), generator=g)
        with torch.no_grad():
            logits = m(input_ids=ids).logits.float()
        save_file({"ids": ids.contiguous(), "logits": logits.contiguous()},
                  f"{d}/../{name}-logits.safetensors")


def train_variant(models, out, variant, seed):
    """ref_train.py's reference run on the 4-bit model."""
    from ref_train import train_lora
    torch.manual_seed(seed)
    train_lora(load_4bit(f"{models}/{variant}"), f"{out}/{variant}", seed, f"{variant} QLoRA")


def use_generic_dequantize_if_native_is_wrong():
    """bitsandbytes 0.50.2's native CPU dequantize_4bit (its AVX-512 build,
    used for an even last dimension) treats every row as whole blocks: when a
    block of 64 crosses a row end (a row length not divisible by 64) it
    applies the wrong absmax, up to 5x the quantization error. Its generic
    kernel (bitsandbytes.backends.default, what other CPUs and the
    quantization itself follow) is right. Where the native one is wrong, the
    reference uses the generic one for every dequantize_4bit on the CPU
    (weights, Linear4bit forward and backward); elsewhere nothing changes."""
    import sys
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    def generic(A, absmax, blocksize, quant_type, shape, dtype):
        if A.dtype != torch.uint8:
            A = A.view(torch.uint8)
        return _dequantize_4bit_compute(A.reshape(-1), absmax,
                                        _get_4bit_code(quant_type, A.device), blocksize, shape,
                                        dtype)

    w = torch.linspace(-1, 1, 2 * 96).reshape(2, 96)  # 3 blocks, the second crosses the row end
    q, s = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    if torch.equal(F.dequantize_4bit(q, s),
                   generic(q, s.absmax, 64, "nf4", w.shape, torch.float32)):
        return
    print("ref_nf4: bitsandbytes' native CPU dequantize_4bit is wrong for blocks that cross "
          "a row; using its generic kernel", file=sys.stderr)
    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", generic)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    use_generic_dequantize_if_native_is_wrong()
    write_tensors(a.out)
    for seed, v in enumerate(VARIANTS):
        write_logits(a.models, a.out, v)
        write_prequantized(a.models, a.out, v)
        train_variant(a.models, a.out, v, seed)


if __name__ == "__main__":
    main()
