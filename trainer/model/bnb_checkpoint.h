// trainer/model/bnb_checkpoint.h — reading the 4-bit NF4 weights of a
// checkpoint that bitsandbytes saved already quantized (a "-bnb-4bit" model
// dir: model.save_pretrained() of a transformers model loaded with
// BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")).
//
// What transformers 5.x + bitsandbytes 0.50.2 write per quantized Linear P
// (tests/python/ref_nf4.py records the same facts):
//   P.weight                                uint8 [ceil(out*in/2), 1] packed
//   P.weight.absmax                         float32 [blocks], or uint8 [blocks]
//                                           with double quant
//   P.weight.quant_map                      float32 [16] (the NF4 code)
//   P.weight.nested_absmax                  float32 [ceil(blocks/256)] (double quant)
//   P.weight.nested_quant_map               float32 [256] (the dynamic map; double quant)
//   P.weight.quant_state.bitsandbytes__nf4  uint8 [N]: UTF-8 JSON {"quant_type":
//       "nf4", "blocksize": 64, "dtype": "float32", "shape": [out, in], and with
//       double quant "nested_blocksize": 256, "nested_dtype": "float32",
//       "nested_offset": <float>}
// and P.bias as usual. Not quantized: embeddings, lm_head, norms, and the
// modules of llm_int8_skip_modules; those load as float tensors.
//
// The states are taken as stored (no re-quantization): Nf4Weight's layout is
// bitsandbytes' own (nf4.h), so the model computes what bitsandbytes does.
#pragma once

#include <string>
#include <vector>

#include "trainer/model/nf4.h"

namespace loratune::io {
class Checkpoint;
}

namespace loratune::model {

// The tensor names bitsandbytes writes beside a quantized weight `weight`
// ("P.weight"), besides `weight` itself.
std::vector<std::string> bnb_companion_names(const std::string& weight);

// Whether `ckpt` holds `weight` in bitsandbytes 4-bit form (a
// "<weight>.quant_state.bitsandbytes__nf4" or "...__fp4" tensor is present).
bool is_bnb_quantized(const io::Checkpoint& ckpt, const std::string& weight);

// Reads and validates the 4-bit state of `weight` [out, in] (sizes from
// config.json). Throws Error naming the safetensors file and the tensor:
// kUnsupported for a valid state loratune does not read (fp4, a blocksize
// other than 64, a nested blocksize other than 256), kCorrupt for anything
// malformed (JSON not an object or over 4 KiB, a shape other than [out,in],
// a packed or absmax size that does not fit it, a quant_map not bitwise
// nf4_code(), a nested_quant_map not bitwise dynamic_map(), double-quant
// tensors present or absent against `double_quant`, scales NaN or inf).
// The tensors of the result are zero-copy CPU views of the mapping (offset:
// a float32 0-dim tensor made from the JSON's nested_offset).
Nf4Weight read_bnb_nf4(const io::Checkpoint& ckpt, const std::string& weight, int64_t out,
                       int64_t in, bool double_quant);

}  // namespace loratune::model
