// trainer/gguf/export_detail.h — internals of the GGUF export shared by
// export_model.cpp (names, hyperparameters, types), export_tokenizer.cpp
// (tokenizer.* keys) and export.cpp (the streaming writer). Not part of the
// gguf API; tests use it to check single rules.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/gguf/arch.h"
#include "trainer/gguf/export.h"
#include "trainer/gguf/gguf_write.h"

namespace loratune::model {
struct ModelConfig;
struct RopeConfig;
}  // namespace loratune::model
namespace loratune::io {
class Checkpoint;
}

namespace loratune::gguf::detail {

// One tensor of the exported model and where its values come from.
struct PlannedTensor {
  TensorSpec spec;            // GGUF name, PyTorch-order shape, ggml type
  std::string source;         // HF checkpoint name; "" for a computed tensor
  at::Tensor value;           // a computed tensor (rope factors), float32
  int64_t permute_heads = 0;  // > 0: llama Q/K rows into llama.cpp's rope layout
  bool plus_one = false;      // stored as 1 + w (Gemma's norms)
};

struct ModelPlan {
  const ArchSpec* spec = nullptr;
  std::string arch;  // spec->arch
  Metadata hparams;  // "<arch>.*" keys and general.file_type
  std::vector<PlannedTensor> tensors;
  // What llama.cpp will run differently from transformers (export-gguf
  // prints these), e.g. a sliding window the architecture ignores.
  std::vector<std::string> notes;
};

// The llama.cpp architecture a model runs as (arch.h); kUnsupported naming
// the exportable model types for another.
const ArchSpec& architecture_of(const model::ModelConfig& config);

// The ggml type llama.cpp's converter stores a tensor in: F32 for 1-D
// tensors, norms and anything not named ".weight"/".lora_a"/".lora_b";
// otherwise `type`, with Q8_0 falling back to F16 when the innermost
// dimension `ne0` is not a multiple of 32.
uint32_t tensor_type(const std::string& gguf_name, size_t n_dims, int64_t ne0, OutType type);

// general.file_type (llama_ftype) of `type`: 0, 1, 32 or 7.
uint32_t file_type(OutType type);

// The whole model: architecture, hyperparameters and tensors in file order
// (rope factors, token_embd, blocks, output_norm, output). Throws
// kUnsupported for a model llama.cpp would run differently than
// transformers in a way no key can express: a model_type without an
// architecture, a rope type without keys, Gemma's query scale or sliding
// layers other than llama.cpp's fixed ones, Phi-3's rotary dims.
ModelPlan plan_model(const model::ModelConfig& config, const io::Checkpoint& ckpt, OutType type);

// llama.cpp's convert_hf_to_gguf permute: HF rows (h, 2, hd/2) -> GGUF rows
// (h, hd/2, 2), so GGUF row h*hd + 2j + s is HF row h*hd + s*hd/2 + j. `w`
// is [rows, ...] (a weight or a bias); returns a contiguous tensor.
at::Tensor permute_rows(const at::Tensor& w, int64_t heads);

// llama3 rope scaling as per-frequency divisors (rope_freqs.weight), computed
// in float32 as convert_hf_to_gguf computes them.
at::Tensor llama3_rope_factors(const model::RopeConfig& rope, int64_t head_dim);

// The tokenizer.* keys for the model in `model_dir` whose embedding has
// `n_vocab` rows (see export.h). Throws kIo when tokenizer.json is missing,
// kUnsupported for a tokenizer llama.cpp's vocabularies here cannot carry,
// kCorrupt for ids past the embedding.
Metadata tokenizer_metadata(const std::string& model_dir, int64_t n_vocab);

}  // namespace loratune::gguf::detail
