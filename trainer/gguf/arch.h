// trainer/gguf/arch.h — how llama.cpp's architectures name and store the
// decoders loratune trains: one table line per architecture, read by both
// directions (export_model.cpp writes HF -> GGUF, convert.cpp imports
// GGUF -> HF), so the two can never disagree on a name or a stored offset.
//
//   arch     model_type(s)        differences from the llama layout
//   llama    llama, mistral       Q/K rows permuted into llama.cpp's rope layout
//   qwen2    qwen2                q/k/v biases
//   qwen3    qwen3                q/k norms
//   gemma2   gemma2               four norms per layer; every norm stored as 1 + w
//   gemma3   gemma3_text          gemma2's layout plus q/k norms (also 1 + w)
//   phi3     phi3                 fused attn_qkv [q | k | v], ffn_up = [gate | up],
//                                 longrope factors as rope_factors_{long,short}
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace loratune::gguf::detail {

struct ArchSpec {
  std::string arch;        // general.architecture
  std::string model_type;  // the HF model_type an import writes
  std::string hf_class;    // config.json "architectures"[0] of an import
  // Q/K rows of llama.cpp's "llama" rope layout (interleaved pairs) rather
  // than transformers' rotate-half (the NEOX layout of every other arch).
  bool permute_qk = false;
  // Gemma's RMSNorm scales by (1 + w); llama.cpp's by w, so every tensor
  // whose name ends in "norm.weight" is stored as 1 + w (convert_hf_to_gguf).
  bool norm_plus_one = false;
  // HF name under "model.layers.N." -> GGUF name under "blk.N.".
  std::vector<std::pair<std::string, std::string>> layer_names;
};

// The architecture of `name` (general.architecture); nullptr when unknown.
const ArchSpec* find_arch(const std::string& name);
// The llama.cpp architecture a HF model_type exports to; nullptr when none.
const ArchSpec* arch_of_model_type(const std::string& model_type);
// "llama, qwen2, ..." for error messages.
std::string arch_names();
std::string exportable_model_types();

// The GGUF name of an HF checkpoint tensor ("model.layers.3.mlp.up_proj.weight"
// -> "blk.3.ffn_up.weight") under `arch`; "" when the architecture has none.
std::string gguf_tensor_name(const ArchSpec& arch, const std::string& hf_name);
// The inverse: the HF name of a GGUF tensor; "" when the architecture has none.
std::string hf_tensor_name(const ArchSpec& arch, const std::string& gguf_name);

// True for a tensor stored as 1 + w under `arch` (HF or GGUF name alike).
bool stored_plus_one(const ArchSpec& arch, const std::string& name);

}  // namespace loratune::gguf::detail
